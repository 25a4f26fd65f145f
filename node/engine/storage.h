/* Storage manager: backends in priority order ([gpu…], cpu, disk, [peer, remote], external…). get
 * returns the first hit and promotes it into cpu; put writes through to every tier, each slow
 * tier through its own bounded queue served by writer threads, with queued puts visible to
 * contains/get. docs/durability.md says what a put's success promises. */
#ifndef KVN_NODE_ENGINE_STORAGE_H
#define KVN_NODE_ENGINE_STORAGE_H

#include "backends/backends.h"
#include "kvnode/backend.h"
#include "node/engine/config.h"

struct kvn_storage;

/* The instance of tier ops in st, NULL when st has none. */
struct kvn_backend *kvn_storage_backend(struct kvn_storage *st, const struct kvn_backend_ops *ops);

/* The n-th instance (0 first) of tier ops in st (the gpu tiers: one per device), or NULL. */
struct kvn_backend *kvn_storage_backend_at(struct kvn_storage *st,
					   const struct kvn_backend_ops *ops, size_t n);

/* Status of st's remote tier; -ENOENT when it has none. */
int kvn_storage_remote_status(struct kvn_storage *st, struct kvn_remote_status *out);

/* Builds the tiers the config enables. */
int kvn_storage_open(const struct kvn_config *cfg, struct kvn_pool *pool,
			     struct kvn_storage **out, char *err, size_t errlen);
/* The same with a gpu tier on each of gpus[0 .. ngpus) (first in lookup order, spilling into
 * the cpu tier); the regions must outlive the storage. */
int kvn_storage_open_gpu(const struct kvn_config *cfg, struct kvn_pool *pool,
			 const struct kvn_gpu_region *gpus, size_t ngpus, struct kvn_storage **out,
			 char *err, size_t errlen);
void kvn_storage_close(struct kvn_storage *st);

int kvn_storage_put(struct kvn_storage *st, const struct kvn_key *key, struct kvn_buf *buf);
/* A put whose bytes a local client writes into the pool itself (node/serve/clientsrv.c):
 * reserve an unindexed slot of the cpu tier for key (-ENOTSUP without the cpu tier), let the
 * client fill its payload, then commit with the payload's xxh3-64 (kvn_copy_checksum): the slot
 * is sealed, indexed and published, and the slower tiers get it as a put does. commit takes
 * over the slot whatever it returns; abort frees a reserved slot never committed. */
struct kvn_slot;
int kvn_storage_reserve(struct kvn_storage *st, const struct kvn_key *key, size_t len,
			struct kvn_slot **out);
int kvn_storage_commit(struct kvn_storage *st, const struct kvn_key *key, struct kvn_slot *slot,
		       uint64_t checksum);
void kvn_storage_abort(struct kvn_storage *st, struct kvn_slot *slot);
/* A view of buf's bytes inside the pool: buf itself (one more reference) when it already is
 * one, else a copy in an unindexed slot of the cpu tier (freed with the view). -ENOTSUP without
 * the cpu tier, -ENOMEM / -ENOSPC as the pool allocates. */
int kvn_storage_to_pool(struct kvn_storage *st, struct kvn_buf *buf, struct kvn_buf **out);
int kvn_storage_get(struct kvn_storage *st, const struct kvn_key *key, struct kvn_buf **out);
/* kvn_storage_get of n keys: rcs[i] 0 with outs[i], or -ENOENT with outs[i] NULL, each key
 * asked of the tiers as kvn_storage_get does (promotion included), except that the keys every
 * tier above the peer tier missed are asked of it together: one scheduler lookup for those
 * with no cached location, their READs posted at once. *lookups (may be NULL) gets the
 * scheduler lookups made. */
void kvn_storage_get_batch(struct kvn_storage *st, const struct kvn_key *keys, size_t n,
			   struct kvn_buf **outs, int *rcs, uint64_t *lookups);
int kvn_storage_contains(struct kvn_storage *st, const struct kvn_key *key);
/* The same without asking the peer tier (no scheduler lookup): for callers that ask the
 * cluster about many keys at once themselves. */
int kvn_storage_contains_here(struct kvn_storage *st, const struct kvn_key *key);
/* 1 when a write of key is queued or running for some slow tier (LMCache exists_in_put_tasks). */
int kvn_storage_put_pending(struct kvn_storage *st, const struct kvn_key *key);
int kvn_storage_remove(struct kvn_storage *st, const struct kvn_key *key);
int kvn_storage_list(struct kvn_storage *st, kvn_list_cb cb, void *ctx);
/* Waits for the queued writes, then asks each tier to make what it holds durable (the sync
 * op); 0 or the first tier's error. */
int kvn_storage_flush(struct kvn_storage *st);

/* true when some tier is written asynchronously (puts keep a reference to the buffer). */
bool kvn_storage_async(const struct kvn_storage *st);
size_t kvn_storage_count(const struct kvn_storage *st);
/* Name and stats of tier i (0 = highest priority); -ENOENT past the last. */
int kvn_storage_tier(struct kvn_storage *st, size_t i, const char **name,
			     struct kvn_backend_stats *stats);
/* Value bytes gets returned from tier i and stores put into it (puts, write-behind,
 * promotions); 0 past the last tier. */
void kvn_storage_tier_io(struct kvn_storage *st, size_t i, uint64_t *read, uint64_t *written);
/* Writes to slow tier i that were skipped (the remote tier out of service, or its queue
 * full); 0 for other tiers and past the last. */
uint64_t kvn_storage_tier_skipped(struct kvn_storage *st, size_t i);
/* Chunks tier i (a gpu tier) moved into the cpu tier when it evicted them; 0 for other tiers
 * and past the last. is_gpu (may be NULL) says whether tier i is a gpu tier. */
uint64_t kvn_storage_tier_moved(struct kvn_storage *st, size_t i, bool *is_gpu);

#endif
