/* kvnode public API: keys, buffers, the engine (an in-process node), error strings.
 * Everything here is prefixed kvn_ and returns 0 or a negative errno. */
#ifndef KVNODE_KVNODE_H
#define KVNODE_KVNODE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvnode/version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(KVN_BUILDING_LIBRARY)
#define KVN_API __attribute__((visibility("default")))
#else
#define KVN_API
#endif

/* ------------------------------------------------------------------------------------------
 * Keys (docs/architecture.md §3)
 * ------------------------------------------------------------------------------------------ */

#define KVN_KEY_MAX 512 /* bytes of key text, without the terminating NUL */

/* 128-bit xxh3 of the key text: the identity used by every map and directory. */
struct kvn_digest {
	uint64_t lo;
	uint64_t hi;
};

enum kvn_key_form {
	KVN_KEY_OPAQUE = 0, /* any other printable string */
	KVN_KEY_LMCACHE_V0 = 1, /* fmt@model@world_size@worker_id@chunk_hash */
	KVN_KEY_LMCACHE = 2, /* fmt@model@world_size@worker_id@chunk_hash_hex@dtype[@tag%value...] */
};

/* Fields of an LMCache key; the strings point into kvn_key.str and are not NUL-terminated. */
struct kvn_key_field {
	uint16_t off;
	uint16_t len;
};

struct kvn_key {
	struct kvn_digest digest;
	uint16_t len;
	uint8_t form; /* enum kvn_key_form */
	uint8_t nfields; /* fields of an LMCache key, 0 for opaque */
	struct kvn_key_field field[6]; /* fmt, model, world_size, worker_id, chunk_hash, dtype */
	int32_t world_size; /* parsed numbers of LMCache keys, -1 otherwise */
	int32_t worker_id;
	char str[KVN_KEY_MAX + 1]; /* NUL-terminated key text */
};

/* Parses key text (len bytes, need not be NUL-terminated). Rejects empty, over-long
 * (> KVN_KEY_MAX) and non-printable keys with -EINVAL; err (may be NULL) gets a reason. */
KVN_API int kvn_key_parse(struct kvn_key *key, const char *s, size_t len, char *err, size_t errlen);
/* Same with a NUL-terminated string. */
KVN_API int kvn_key_from_str(struct kvn_key *key, const char *s);
/* Writes the canonical text of key into out (at most outlen bytes with the NUL); returns its length. */
KVN_API size_t kvn_key_print(const struct kvn_key *key, char *out, size_t outlen);
KVN_API struct kvn_digest kvn_digest_of(const void *data, size_t len);
static inline bool kvn_digest_eq(struct kvn_digest a, struct kvn_digest b)
{
	return a.lo == b.lo && a.hi == b.hi;
}

/* ------------------------------------------------------------------------------------------
 * Buffers: ref-counted views of chunk bytes. A view of a pool slot keeps the slot from being
 * evicted or reused until its last reference goes. The helpers are inline so that external
 * modules need no symbol from libkvnode.
 * ------------------------------------------------------------------------------------------ */

struct kvn_buf {
	void *data;
	size_t len;
	_Atomic uint32_t refs;
	/* Called once, when the last reference is dropped; frees the view and what it holds. */
	void (*release)(struct kvn_buf *buf);
	void *owner; /* for release */
	uint64_t aux; /* for release */
};

static inline struct kvn_buf *kvn_buf_ref(struct kvn_buf *buf)
{
	atomic_fetch_add_explicit(&buf->refs, 1, memory_order_relaxed);
	return buf;
}

static inline void kvn_buf_unref(struct kvn_buf *buf)
{
	if (buf && atomic_fetch_sub_explicit(&buf->refs, 1, memory_order_acq_rel) == 1)
		buf->release(buf);
}

/* A heap buffer of len bytes (contents undefined), one reference; NULL when out of memory. */
KVN_API struct kvn_buf *kvn_buf_new(size_t len);
/* A view of caller memory that is never freed by kvnode (release only frees the view). */
KVN_API struct kvn_buf *kvn_buf_wrap(void *data, size_t len);

/* ------------------------------------------------------------------------------------------
 * Errors and logging
 * ------------------------------------------------------------------------------------------ */

/* Text for 0 or a negative errno (kvnode's own codes included). Never NULL. */
KVN_API const char *kvn_strerror(int err);

enum kvn_log_level { KVN_LOG_ERROR = 0, KVN_LOG_WARN, KVN_LOG_INFO, KVN_LOG_DEBUG };
KVN_API void kvn_log_set_level(int level);
KVN_API int kvn_log_get_level(void);
/* "error" | "warn"/"warning" | "info" | "debug" → level; -EINVAL otherwise. */
KVN_API int kvn_log_level_parse(const char *name);

/* ------------------------------------------------------------------------------------------
 * Config (docs/architecture.md §7). The struct is opaque to users of the API.
 * ------------------------------------------------------------------------------------------ */

struct kvn_config;

/* Loads path (NULL: $KVNODE_CONFIG_FILE, then $LMCACHE_CONFIG_FILE, then defaults), applies
 * KVNODE_<KEY>/LMCACHE_<KEY> overrides and validates. On error returns -EINVAL (or -errno
 * for I/O) and writes a message with file:line and the key to err. */
KVN_API int kvn_config_load(const char *path, struct kvn_config **out, char *err, size_t errlen);
KVN_API void kvn_config_free(struct kvn_config *cfg);

/* ------------------------------------------------------------------------------------------
 * Engine: one node's storage in this process (storage manager over ordered backends).
 * ------------------------------------------------------------------------------------------ */

struct kvn_engine;

KVN_API int kvn_engine_open(const struct kvn_config *cfg, struct kvn_engine **out, char *err,
			    size_t errlen);
/* Waits for queued writes to slow tiers, then frees everything. */
KVN_API void kvn_engine_close(struct kvn_engine *eng);

/* Stores a copy of data under key in every enabled tier (slow tiers asynchronously). */
KVN_API int kvn_engine_put(struct kvn_engine *eng, const struct kvn_key *key, const void *data,
			   size_t len);
/* Zero-copy get: *out is a view (one reference, drop with kvn_buf_unref). -ENOENT on a miss. */
KVN_API int kvn_engine_get(struct kvn_engine *eng, const struct kvn_key *key, struct kvn_buf **out);
/* Copying get into dst. *len gets the value's length; -ENOSPC (with *len set) when cap is short. */
KVN_API int kvn_engine_get_into(struct kvn_engine *eng, const struct kvn_key *key, void *dst,
				size_t cap, size_t *len);
/* 1 present (in a tier or in a queued write), 0 absent, < 0 error. */
KVN_API int kvn_engine_contains(struct kvn_engine *eng, const struct kvn_key *key);
/* Removes key from every tier; -ENOENT when no tier had it. */
KVN_API int kvn_engine_remove(struct kvn_engine *eng, const struct kvn_key *key);
/* Calls cb once per distinct key held (any tier); stops early when cb returns non-zero. */
KVN_API int kvn_engine_list(struct kvn_engine *eng,
			    int (*cb)(void *ctx, const struct kvn_key *key, size_t len), void *ctx);
/* Waits until every queued write to a slow tier has completed. */
KVN_API void kvn_engine_flush(struct kvn_engine *eng);
/* Statistics as a JSON object (malloc'd, caller frees): {"backends":[{"name",...}], ...}. */
KVN_API char *kvn_engine_stats_json(struct kvn_engine *eng);

#ifdef __cplusplus
}
#endif
#endif
