/* Storage backend ABI (docs/architecture.md §4). Built-in tiers (cpu, disk) and external modules
 * loaded with dlopen fill the same struct kvn_backend_ops; the storage manager never switches on
 * type. Semantics follow LMCache's StorageBackendInterface. Versioning: kvnode/version.h. */
#ifndef KVNODE_BACKEND_H
#define KVNODE_BACKEND_H

#include "kvnode/kvnode.h"

#ifdef __cplusplus
extern "C" {
#endif

struct kvn_backend; /* an instance; each implementation defines it */

/* What the node hands a backend at creation. Options are read through get_opt so that built-in
 * and external backends see the same thing: the config's own keys ("local_disk",
 * "max_local_disk_size", "chunk_size" …) and, for an external backend named N, every
 * extra_config key "external_backend.N.<opt>" under "<opt>". */
struct kvn_backend_env {
	uint32_t abi;  /* KVN_ABI of the node */
	uint32_t size; /* sizeof(struct kvn_backend_env) of the node: members past it are absent */
	const char *name; /* instance name: "cpu", "disk", or the external_backends entry */
	const char *config_dir; /* directory of the config file ("." without one) */
	/* Value of an option as written in the config (NULL when unset). The string stays valid
	 * and unchanged until the instance is destroyed, whatever is asked after it. */
	const char *(*get_opt)(const struct kvn_backend_env *env, const char *opt);
	/* One log line, tagged with the backend's name. level is enum kvn_log_level. */
	void (*log)(const struct kvn_backend_env *env, int level, const char *fmt, ...)
	    __attribute__((format(printf, 3, 4)));
	void *node_priv; /* the node's, for get_opt/log */
};

struct kvn_backend_stats {
	uint64_t count; /* chunks held */
	uint64_t bytes; /* payload bytes held */
	uint64_t capacity; /* payload bytes it may hold; 0 = unbounded */
	uint64_t hits;
	uint64_t misses;
	uint64_t puts;
	uint64_t evictions;
	uint64_t errors; /* failed I/O, corrupt data found and dropped … */
};

enum kvn_backend_flags {
	/* put is slow (I/O): the storage manager calls it from its writer threads, not inline. */
	KVN_BACKEND_F_SLOW = 1u << 0,
};

/* Callback of list(); non-zero stops the walk and is returned by list(). */
typedef int (*kvn_list_cb)(void *ctx, const struct kvn_key *key, size_t len);

/* A module exports one of these, const, starting with KVN_BACKEND_OPS_INIT (abi = KVN_ABI,
 * size = sizeof(struct kvn_backend_ops)):
 *	const struct kvn_backend_ops my_ops = {KVN_BACKEND_OPS_INIT, .name = "mine", ...}; */
struct kvn_backend_ops {
	uint32_t abi;	/* KVN_ABI the module was built against */
	uint32_t size;	/* sizeof(struct kvn_backend_ops) in those headers */
	uint32_t flags; /* enum kvn_backend_flags */
	const char *name; /* implementation name, e.g. "cpu", "zmem" */

	/* Validates options (-EINVAL with an env->log line naming the option) and builds an
	 * instance. On failure nothing is left allocated. */
	int (*create)(const struct kvn_backend_env *env, struct kvn_backend **out);
	/* Frees the instance. Every put has returned before this is called. */
	void (*destroy)(struct kvn_backend *be);

	/* 1 when key is held, 0 when not, < 0 on error. With pin, a hit is also pinned (the
	 * caller unpins). */
	int (*contains)(struct kvn_backend *be, const struct kvn_key *key, bool pin);
	/* Stores the bytes of buf under key, replacing an older value. The backend copies the
	 * bytes or takes its own reference; the caller keeps its reference. -ENOSPC when the
	 * value can never fit; otherwise older unpinned chunks are evicted to make room. */
	int (*put)(struct kvn_backend *be, const struct kvn_key *key, struct kvn_buf *buf);
	/* *out = the value (one reference for the caller); -ENOENT on a miss. A backend never
	 * returns bytes that fail its integrity check: that is a miss, counted in errors. */
	int (*get)(struct kvn_backend *be, const struct kvn_key *key, struct kvn_buf **out);
	/* -ENOENT when absent. A pinned or referenced chunk is removed from the index at once
	 * and its storage freed when the last holder lets go. */
	int (*remove)(struct kvn_backend *be, const struct kvn_key *key);
	/* A pinned chunk is never evicted. Pins nest. -ENOENT when absent. */
	int (*pin)(struct kvn_backend *be, const struct kvn_key *key);
	int (*unpin)(struct kvn_backend *be, const struct kvn_key *key);
	/* Calls cb for each key held (order unspecified). */
	int (*list)(struct kvn_backend *be, kvn_list_cb cb, void *ctx);
	void (*stats)(struct kvn_backend *be, struct kvn_backend_stats *out);

	/* ABI 2.1 (read only when KVN_ABI_HAS(ops, sync)). Optional. Makes every value put so
	 * far durable, as far as the backend can (the disk tier: syncfs of its directory's file
	 * system), and returns 0 or a negative errno naming nothing: the node logs and counts a
	 * failure. Called by kvn_engine_flush once the queued writes have landed. */
	int (*sync)(struct kvn_backend *be);
};

#define KVN_BACKEND_OPS_INIT .abi = KVN_ABI, .size = sizeof(struct kvn_backend_ops)
#define KVN_BACKEND_ENV_INIT .abi = KVN_ABI, .size = sizeof(struct kvn_backend_env)

#ifdef __cplusplus
}
#endif
#endif
