#!/usr/bin/env python3
# kvnode plugin (every worker): asks the node for its statistics with `kvnode stat --json`
# every `interval` seconds and logs one line: healthy on stdout (info), unhealthy on stderr
# (warning). Settings: extra_config plugin.worker_health_check.interval (default 10).
import json
import os
import subprocess
import sys
import time

config = json.loads(os.environ.get("KVNODE_PLUGIN_CONFIG") or
                    os.environ.get("LMCACHE_PLUGIN_CONFIG") or "{}")
settings = config.get("plugin_config", {})
interval = float(settings.get("interval", 10))
kvnode = os.environ.get("KVNODE_BIN", "kvnode")
worker = os.environ.get("KVNODE_PLUGIN_WORKER_ID", "?")

failures = 0
while True:
    try:
        out = subprocess.run([kvnode, "stat", "--json"], capture_output=True, text=True,
                             timeout=max(interval, 5))
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip() or "exit code %d" % out.returncode)
        stats = json.loads(out.stdout)
        chunks = sum(t.get("count", 0) for t in stats.get("backends", []))
        print("ok: worker %s, node %s, %d chunks in %d tiers, %d hits, %d misses" %
              (worker, stats.get("node_name", "?"), chunks, len(stats.get("backends", [])),
               stats.get("hits", 0), stats.get("misses", 0)), flush=True)
        failures = 0
    except Exception as e:  # any failure is reported, and the check goes on
        failures += 1
        print("unhealthy (%d in a row): %s" % (failures, e), file=sys.stderr, flush=True)
    time.sleep(interval)
