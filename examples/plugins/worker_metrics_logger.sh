#!/bin/bash
# kvnode plugin (every worker): logs the node's process metrics (resident memory, threads,
# open files) and its get hit rate every `interval` seconds, one line each.
# Settings: extra_config plugin.worker_metrics_logger.interval (default 30).
set -u
config=${KVNODE_PLUGIN_CONFIG:-${LMCACHE_PLUGIN_CONFIG:-\{\}}}
interval=$(printf '%s' "$config" |
	sed -n 's/.*"plugin_config":{[^}]*"interval":"\([0-9.]*\)".*/\1/p')
interval=${interval:-30}
kvnode=${KVNODE_BIN:-kvnode}
node=$PPID # the launcher starts plugins directly: the parent is the node

while :; do
	if [ ! -d "/proc/$node" ]; then
		echo "node process $node is gone" >&2
		exit 1
	fi
	rss=$(awk '/^VmRSS:/ {print $2 " " $3}' "/proc/$node/status")
	threads=$(awk '/^Threads:/ {print $2}' "/proc/$node/status")
	fds=$(ls "/proc/$node/fd" 2>/dev/null | wc -l)
	stats=$("$kvnode" stat --json 2>/dev/null)
	hits=$(printf '%s' "$stats" | grep -o '"hits":[0-9]*' | tail -n 1 | cut -d: -f2)
	misses=$(printf '%s' "$stats" | grep -o '"misses":[0-9]*' | tail -n 1 | cut -d: -f2)
	echo "rss=${rss:-?} threads=${threads:-?} fds=$fds hits=${hits:-?} misses=${misses:-?}"
	sleep "$interval"
done
