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

/* The engine's GPUs (node/engine/engine_gpu.c): opened by kvn_engine_open as `gpu:` says,
 * closed with it. kvn_engine_gpus is NULL when none was opened. */
struct kvn_config;
struct kvn_engine_gpus;
struct kvn_gpu;
struct kvn_gpu_info;
struct kvn_reg_report;
struct cJSON;
struct kvn_engine_gpus *kvn_engine_gpus(struct kvn_engine *eng);
int kvn_engine_gpus_open(const struct kvn_config *cfg, struct kvn_engine_gpus **out, char *err,
			 size_t errlen);
void kvn_engine_gpus_close(struct kvn_engine_gpus *g);
/* The driver, and how many devices are open (*n; 0 and NULL for g NULL). */
/* The gpu tiers' device regions (max_gpu_size on each device), n of them; NULL when none. */
struct kvn_gpu_region;
const struct kvn_gpu_region *kvn_engine_gpus_regions(struct kvn_engine_gpus *g, size_t *n);
/* The gpu tier on the GPU with CUDA ordinal gpu and (region, may be NULL) its device region;
 * NULL when that GPU has none. */
struct kvn_backend;
struct kvn_backend *kvn_engine_gpu_tier(struct kvn_engine *eng, int gpu,
					const struct kvn_gpu_region **region);
struct kvn_gpu *kvn_engine_gpus_driver(struct kvn_engine_gpus *g, size_t *n);
const struct kvn_gpu_info *kvn_engine_gpus_info(struct kvn_engine_gpus *g, size_t i);
/* How the i-th device's memory registers with the node's transport (the cluster glue's probe
 * at start): rep's winner and steps, or rep NULL and why nothing registered. */
void kvn_engine_gpus_set_reg(struct kvn_engine_gpus *g, size_t i, const char *transport,
			     const struct kvn_reg_report *rep, const char *why);
/* The i-th device's winner (enum kvn_reg_method) and *index its CUDA ordinal. */
int kvn_engine_gpus_reg(struct kvn_engine_gpus *g, size_t i, int *index);
/* Adds "gpus" (one object per device, its registration included) to a stats object. */
void kvn_engine_gpus_json(struct kvn_engine_gpus *g, struct cJSON *root);
/* *st: the staging area of the GPU with CUDA ordinal index, made on first use and held for
 * the caller until kvn_engine_gpus_copy_end (copies of one device go one at a time). Else a
 * negative errno with err set: -ENODEV when it is not one of the engine's GPUs (g NULL: none),
 * or the driver's error. */
struct kvn_staging;
int kvn_engine_gpus_copy_begin(struct kvn_engine_gpus *g, int index, struct kvn_staging **st,
			       char *err, size_t errlen);
void kvn_engine_gpus_copy_end(struct kvn_engine_gpus *g, int index);

#endif
