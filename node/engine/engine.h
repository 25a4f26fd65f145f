/* What the engine room gives the rooms above it beside the public engine API (kvnode.h): its
 * pool and storage manager, for the cluster glue, and its get outcomes, for the metrics. */
#ifndef KVN_NODE_ENGINE_ENGINE_H
#define KVN_NODE_ENGINE_ENGINE_H

#include <stdint.h>

struct kvn_engine;
struct kvn_pool;
struct kvn_storage;

struct kvn_pool *kvn_engine_pool(struct kvn_engine *eng);
struct kvn_storage *kvn_engine_storage(struct kvn_engine *eng);
void kvn_engine_gets(struct kvn_engine *eng, uint64_t *hits, uint64_t *misses);

#endif
