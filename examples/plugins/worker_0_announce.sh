#!/bin/bash
# kvnode plugin for worker 0 only (file name worker_0_*): says once which process it runs
# beside and with which config, then exits. A template for one-per-cluster jobs (a
# registration, a warm-up) that must not run on every worker.
config=${KVNODE_PLUGIN_CONFIG:-{\}}
node_name=$(printf '%s' "$config" | sed -n 's/.*"node_name":"\([^"]*\)".*/\1/p')
chunk=$(printf '%s' "$config" | sed -n 's/.*"chunk_size":\([0-9]*\).*/\1/p')
echo "role ${KVNODE_PLUGIN_ROLE:-?}, worker ${KVNODE_PLUGIN_WORKER_ID:-?} of" \
	"${KVNODE_PLUGIN_WORKER_COUNT:-?}, node ${node_name:-?}, chunk_size ${chunk:-?}"
