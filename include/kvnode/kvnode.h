/* kvnode public API: keys, buffers, the engine (an in-process node), error strings.
 * Everything here is prefixed kvn_ and returns 0 or a negative errno. The headers compile as C11
 * and as C++ (they declare everything extern "C"). */
#ifndef KVNODE_KVNODE_H
#define KVNODE_KVNODE_H

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
 * Version
 * ------------------------------------------------------------------------------------------ */

/* The library's version ("0.1.0"), for a program that was built against other headers. */
KVN_API const char *kvn_version(void);
/* The module ABI this library drives (KVN_ABI_MAKE(major, minor) of its headers). */
KVN_API unsigned kvn_abi_version(void);

/* ------------------------------------------------------------------------------------------
 * Keys (docs/architecture.md §3)
 * ------------------------------------------------------------------------------------------ */

#define KVN_KEY_MAX 512 /* bytes of key text, without the terminating NUL */

/* 128-bit xxh3 of the key text: the identity used by every map and directory. */
struct kvn_digest {
	uint64_t lo;
	uint64_t hi;
};

/* The LMCache generations of CacheEngineKey text (lmcache/utils.py in LMCache's repository:
 * CacheEngineKey.to_string / from_string, LayerCacheEngineKey, parse_cache_key). Every form is
 * accepted as input; LMCache writes KVN_KEY_LMCACHE and KVN_KEY_LMCACHE_LAYER today. */
enum kvn_key_form {
	KVN_KEY_OPAQUE = 0, /* any other text */
	/* Older LMCache (lmcache/utils.py before v1): fmt@model@world_size@worker_id@chunk_hash */
	KVN_KEY_LMCACHE_V0 = 1,
	/* Current LMCache: model@world_size@worker_id@chunk_hash_hex@dtype[@tag%value...] */
	KVN_KEY_LMCACHE = 2,
	/* Current LMCache, one layer: model@world_size@worker_id@chunk_hash_hex@dtype@layer_id
	 * [@tag%value...] (the sixth part all digits) */
	KVN_KEY_LMCACHE_LAYER = 3,
	/* fmt@model@world_size@worker_id@chunk_hash_hex@dtype[@tag%value...]: the form earlier
	 * kvnode documentation showed (LMCache never wrote it); still recognised as input. */
	KVN_KEY_KVNODE_FMT = 4,
};

/* A span of kvn_key.str (not NUL-terminated); len 0 when the key has no such part. */
struct kvn_key_field {
	uint16_t off;
	uint16_t len;
};

/* Indexes of kvn_key.field. */
enum kvn_key_part {
	KVN_KEYF_FMT = 0, /* "vllm" of the V0 and KVNODE_FMT forms; empty otherwise */
	KVN_KEYF_MODEL = 1,
	KVN_KEYF_WORLD_SIZE = 2,
	KVN_KEYF_WORKER_ID = 3,
	KVN_KEYF_HASH = 4,  /* the chunk hash as written: hex (current) or the older text */
	KVN_KEYF_DTYPE = 5, /* half, bfloat16, float, ... fp8_e5m2fnuz; empty for V0 */
};

struct kvn_key {
	struct kvn_digest digest;
	uint16_t len;
	uint8_t form; /* enum kvn_key_form */
	uint8_t nfields; /* '@'-separated parts of an LMCache key (tags included), 0 for opaque */
	struct kvn_key_field field[6]; /* enum kvn_key_part */
	int32_t world_size; /* parsed numbers of LMCache keys, -1 otherwise */
	int32_t worker_id;
	char str[KVN_KEY_MAX + 1]; /* NUL-terminated key text */
	/* Appended after str so that modules built against the earlier layout still find the
	 * fields above where they were. */
	int32_t layer_id; /* KVN_KEY_LMCACHE_LAYER's layer, -1 otherwise */
	uint8_t ntags; /* tag%value parts */
	struct kvn_key_field tags; /* "tag%value[@tag%value...]", len 0 without tags */
};

/* Parses key text (len bytes, need not be NUL-terminated): any UTF-8 text without control
 * characters (C0, DEL, C1), 1 to KVN_KEY_MAX bytes, spaces anywhere. Anything else is -EINVAL
 * with a reason in err (may be NULL). The LMCache form is recognised (enum kvn_key_form); text
 * that fits none stays an opaque key. */
KVN_API int kvn_key_parse(struct kvn_key *key, const char *s, size_t len, char *err, size_t errlen);
/* Same with a NUL-terminated string. */
KVN_API int kvn_key_from_str(struct kvn_key *key, const char *s);
/* Writes the key's text into out (at most outlen bytes with the NUL); returns its length. The
 * text is the key's identity, so every form is written as it was given. */
KVN_API size_t kvn_key_print(const struct kvn_key *key, char *out, size_t outlen);
/* abs(chunk_hash) % n of an LMCache key whose hash is hex (every form but the older V0), the
 * way LMCache's FSConnector picks one of n base paths; -EINVAL for other keys or n == 0. */
KVN_API int kvn_key_hash_mod(const struct kvn_key *key, uint32_t n);
KVN_API struct kvn_digest kvn_digest_of(const void *data, size_t len);
static inline bool kvn_digest_eq(struct kvn_digest a, struct kvn_digest b)
{
	return a.lo == b.lo && a.hi == b.hi;
}

/* ------------------------------------------------------------------------------------------
 * Buffers: ref-counted views of chunk bytes. A view of a pool slot keeps the slot from being
 * evicted or reused until its last reference goes. The helpers are inline so that external
 * modules need no symbol from libkvnode. refs is changed only atomically (the GCC/Clang
 * __atomic builtins, which C and C++ share), never read or written plainly once the buffer is
 * shared.
 * ------------------------------------------------------------------------------------------ */

struct kvn_buf {
	void *data;
	size_t len;
	uint32_t refs;
	/* Called once, when the last reference is dropped; frees the view and what it holds. */
	void (*release)(struct kvn_buf *buf);
	void *owner; /* for release */
	uint64_t aux; /* for release */
};

/* Makes buf a view of [data, data + len) with one reference; release is called when the last
 * one goes. For a module that hands out views of its own memory. */
static inline void
kvn_buf_init(struct kvn_buf *buf, void *data, size_t len, void (*release)(struct kvn_buf *buf),
	     void *owner, uint64_t aux)
{
	buf->data = data;
	buf->len = len;
	buf->release = release;
	buf->owner = owner;
	buf->aux = aux;
	__atomic_store_n(&buf->refs, 1, __ATOMIC_RELAXED);
}

static inline struct kvn_buf *kvn_buf_ref(struct kvn_buf *buf)
{
	__atomic_fetch_add(&buf->refs, 1, __ATOMIC_RELAXED);
	return buf;
}

static inline void kvn_buf_unref(struct kvn_buf *buf)
{
	if (buf && __atomic_fetch_sub(&buf->refs, 1, __ATOMIC_ACQ_REL) == 1)
		buf->release(buf);
}

/* References held now (for tests and assertions; racy while others change it). */
static inline uint32_t
kvn_buf_refs(const struct kvn_buf *buf)
{
	return __atomic_load_n(&buf->refs, __ATOMIC_ACQUIRE);
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
/* (ABI 2.4) The same with device memory on the caller's side: src and dst are device addresses
 * (CUdeviceptr values) on the GPU with CUDA ordinal gpu, one of the engine's (`gpu`,
 * `gpu_devices`). The bytes go through a page-locked bounce area of that GPU, one copy at a
 * time per GPU; a put lands in its pool slot checksummed piece by piece, and is then stored as
 * kvn_engine_put stores. A get of a key that gpu's own gpu tier holds (max_gpu_size) is one
 * device to device copy. -ENODEV when gpu is not one of the engine's GPUs; the driver's errors
 * are logged, naming the key. */
KVN_API int kvn_engine_put_from_gpu(struct kvn_engine *eng, const struct kvn_key *key, int gpu,
				    uint64_t src, size_t len);
KVN_API int kvn_engine_get_into_gpu(struct kvn_engine *eng, const struct kvn_key *key, int gpu,
				    uint64_t dst, size_t cap, size_t *len);
/* 1 present (in a tier or in a queued write), 0 absent, < 0 error. */
KVN_API int kvn_engine_contains(struct kvn_engine *eng, const struct kvn_key *key);
/* Removes key from every tier; -ENOENT when no tier had it. */
KVN_API int kvn_engine_remove(struct kvn_engine *eng, const struct kvn_key *key);
/* Calls cb once per distinct key held (any tier); stops early when cb returns non-zero. */
KVN_API int kvn_engine_list(struct kvn_engine *eng,
			    int (*cb)(void *ctx, const struct kvn_key *key, size_t len), void *ctx);
/* Waits until every queued write to a slow tier has completed, then has each tier make what it
 * holds durable (the disk tier: syncfs of its directory's file system). 0, or the first
 * tier's error (logged by the tier, naming it). */
KVN_API int kvn_engine_flush(struct kvn_engine *eng);
/* Statistics as a JSON object (malloc'd, caller frees): {"backends":[{"name",...}], ...}. */
KVN_API char *kvn_engine_stats_json(struct kvn_engine *eng);

#ifdef __cplusplus
}
#endif
#endif
