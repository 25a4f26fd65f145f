/* Storage manager: backends in priority order (cpu, disk, [peer, remote], external…). get
 * returns the first hit and promotes it into cpu; put writes through to every tier, each slow
 * tier through its own bounded queue served by writer threads, with queued puts visible to
 * contains/get. docs/durability.md says what a put's success promises. */
#ifndef KVN_NODE_STORAGE_H
#define KVN_NODE_STORAGE_H

#include "kvnode/backend.h"
#include "node/config.h"

struct kvn_storage;

/* A backend the manager may load: a built-in ops table or one found by the external loader. */
KVN_API const struct kvn_backend_ops *kvn_builtin_backend(const char *name);
extern const struct kvn_backend_ops kvn_cpu_backend_ops;
extern const struct kvn_backend_ops kvn_disk_backend_ops;
extern const struct kvn_backend_ops kvn_remote_backend_ops;

/* Where the remote tier stands, for stat: the store (password redacted), whether it is
 * reachable now, and how often it went away, came back, or served a value that failed its
 * checks. */
struct kvn_remote_status {
	char url[512];
	bool connected;
	uint64_t disconnects;
	uint64_t reconnects;
	uint64_t corrupt;
	uint64_t stale_tags; /* kvnode tags another writer left beside its value, ignored */
};
/* Status of the remote tier be (an instance of kvn_remote_backend_ops). */
void kvn_remote_backend_status(struct kvn_backend *be, struct kvn_remote_status *out);
/* false while the remote tier be counts its store as out of service (found unreachable or
 * hung, and no PING answered since): its operations then fail at once. */
bool kvn_remote_backend_in_service(struct kvn_backend *be);
/* The cpu tier's hooks for the cluster glue (node/cluster.c). The publish hook sees every
 * slot the index admits (KVN_CF_ADMIT) and drops (KVN_CF_EVICT: evicted or removed), with the
 * index lock held: it must only queue. walk calls fn for each indexed slot, lock held.
 * alloc_scratch takes an unindexed slot of len payload bytes (evicting as put does) that the
 * caller frees with kvn_pool_unref; the peer tier READs into it. */
struct kvn_slot;
typedef void (*kvn_cpu_publish_fn)(void *ctx, int op, const struct kvn_slot *slot);
void kvn_cpu_set_publish(struct kvn_backend *be, kvn_cpu_publish_fn fn, void *ctx);
void kvn_cpu_walk(struct kvn_backend *be, void (*fn)(void *ctx, const struct kvn_slot *slot),
		  void *ctx);
int kvn_cpu_alloc_scratch(struct kvn_backend *be, size_t len, struct kvn_slot **out);
/* The instance of tier ops in st, NULL when st has none. */
struct kvn_backend *kvn_storage_backend(struct kvn_storage *st, const struct kvn_backend_ops *ops);
extern const struct kvn_backend_ops kvn_peer_backend_ops;

/* Status of st's remote tier; -ENOENT when it has none. */
KVN_API int kvn_storage_remote_status(struct kvn_storage *st, struct kvn_remote_status *out);

/* Loads module_path (absolute, relative to config_dir, or a bare name searched in
 * $KVNODE_MODULE_PATH) and returns the exported `const struct kvn_backend_ops` named symbol.
 * Errors name the file and the symbol (ABI mismatch, missing file, missing symbol). *handle
 * gets the dlopen handle (dlclose it after the backend is destroyed). */
KVN_API int kvn_external_load(const char *module_path, const char *symbol, const char *config_dir,
			      const struct kvn_backend_ops **ops, void **handle, char *err,
			      size_t errlen);

/* Builds the tiers the config enables. */
KVN_API int kvn_storage_open(const struct kvn_config *cfg, struct kvn_pool *pool,
			     struct kvn_storage **out, char *err, size_t errlen);
KVN_API void kvn_storage_close(struct kvn_storage *st);

KVN_API int kvn_storage_put(struct kvn_storage *st, const struct kvn_key *key, struct kvn_buf *buf);
KVN_API int kvn_storage_get(struct kvn_storage *st, const struct kvn_key *key, struct kvn_buf **out);
KVN_API int kvn_storage_contains(struct kvn_storage *st, const struct kvn_key *key);
/* 1 when a write of key is queued or running for some slow tier (LMCache exists_in_put_tasks). */
KVN_API int kvn_storage_put_pending(struct kvn_storage *st, const struct kvn_key *key);
KVN_API int kvn_storage_remove(struct kvn_storage *st, const struct kvn_key *key);
KVN_API int kvn_storage_list(struct kvn_storage *st, kvn_list_cb cb, void *ctx);
KVN_API void kvn_storage_flush(struct kvn_storage *st);

/* true when some tier is written asynchronously (puts keep a reference to the buffer). */
KVN_API bool kvn_storage_async(const struct kvn_storage *st);
KVN_API size_t kvn_storage_count(const struct kvn_storage *st);
/* Name and stats of tier i (0 = highest priority); -ENOENT past the last. */
KVN_API int kvn_storage_tier(struct kvn_storage *st, size_t i, const char **name,
			     struct kvn_backend_stats *stats);
/* Value bytes gets returned from tier i and stores put into it (puts, write-behind,
 * promotions); 0 past the last tier. */
void kvn_storage_tier_io(struct kvn_storage *st, size_t i, uint64_t *read, uint64_t *written);
/* Writes to slow tier i that were skipped (the remote tier out of service, or its queue
 * full); 0 for other tiers and past the last. */
uint64_t kvn_storage_tier_skipped(struct kvn_storage *st, size_t i);

#endif
