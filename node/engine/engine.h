/* What the engine room gives the rooms above it beside the public engine API (kvnode.h): its
 * pool and storage manager, for the cluster glue, and its get outcomes, for the metrics. */
#ifndef KVN_NODE_ENGINE_ENGINE_H
#define KVN_NODE_ENGINE_ENGINE_H

#include <stddef.h>
#include <stdint.h>

struct kvn_engine;
struct kvn_pool;
struct kvn_storage;

struct kvn_pool *kvn_engine_pool(struct kvn_engine *eng);
struct kvn_storage *kvn_engine_storage(struct kvn_engine *eng);
void kvn_engine_gets(struct kvn_engine *eng, uint64_t *hits, uint64_t *misses);

/* kvn_engine_get of n keys in one call (kvn_storage_get_batch): rcs[i] 0 with outs[i] (the
 * caller drops it), or -ENOENT; each key counts as a hit or a miss as one get does. *lookups
 * (may be NULL) gets the scheduler lookups made for the keys no local tier had. */
struct kvn_buf;
struct kvn_key;
void kvn_engine_get_batch(struct kvn_engine *eng, const struct kvn_key *keys, size_t n,
			  struct kvn_buf **outs, int *rcs, uint64_t *lookups);

#endif
