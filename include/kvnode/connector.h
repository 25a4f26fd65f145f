/* Remote connector ABI (docs/architecture.md §4, §10). A connector moves values between the node
 * and one remote store chosen by the scheme of remote_url. Built-in connectors (redis, fs,
 * blackhole …) and external ones loaded from a .so fill the same struct kvn_connector_ops.
 * Versioning: kvnode/version.h. */
#ifndef KVNODE_CONNECTOR_H
#define KVNODE_CONNECTOR_H

#include "kvnode/kvnode.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------
 * Values. A stored value is LMCache's 28-byte RemoteMetadata header (seven little-endian int32:
 * length, fmt, dtype, shape[0..3]) followed by `length` payload bytes, so LMCache and kvnode
 * can share one store. kvnode's integrity tag travels beside the value, in a place LMCache
 * ignores (a separate redis key, a file's xattr …): the connector stores and returns the tag
 * bytes as they are; the node computes and checks them (the helpers at the end of this file
 * are for a connector that computes the tag itself, KVN_CONNECTOR_F_TAG_ON_SEND).
 * ------------------------------------------------------------------------------------------ */

#define KVN_REMOTE_META_LEN 28 /* bytes of LMCache's RemoteMetadata */
#define KVN_REMOTE_TAG_MAX  32 /* bytes of kvnode's integrity tag, at most */

/* LMCache dtype codes and MemoryFormat values (docs/architecture.md §10). */
enum kvn_remote_dtype {
	KVN_DTYPE_NONE = 0,
	KVN_DTYPE_HALF = 1,
	KVN_DTYPE_FLOAT16 = 2,
	KVN_DTYPE_BFLOAT16 = 3,
	KVN_DTYPE_FLOAT32 = 4,
	KVN_DTYPE_FLOAT64 = 5,
	KVN_DTYPE_UINT8 = 6,
	KVN_DTYPE_FP8_E4M3FN = 7,
	KVN_DTYPE_FP8_E5M2 = 8,
};

enum kvn_remote_fmt {
	KVN_FMT_UNDEFINED = 0,
	KVN_FMT_KV_2LTD = 1,
	KVN_FMT_KV_T2D = 2,
	KVN_FMT_KV_2TD = 3,
	KVN_FMT_BINARY = 4,
	KVN_FMT_BINARY_BUFFER = 5,
	KVN_FMT_KV_MLA_FMT = 6,
};

/* The header fields, decoded. */
struct kvn_remote_meta {
	int32_t length; /* payload bytes */
	int32_t fmt;	/* enum kvn_remote_fmt */
	int32_t dtype;	/* enum kvn_remote_dtype */
	int32_t shape[4];
};

/* One value as a connector stores and returns it. */
struct kvn_remote_value {
	struct kvn_remote_meta meta;
	/* The payload: meta.length bytes. On get the connector sets it (one reference for the
	 * caller; the connector may hand out a view of its own reply buffer, zero-copy). On put
	 * it is the caller's, valid for the call. */
	struct kvn_buf *payload;
	/* kvnode's integrity tag (opaque to the connector). On put: store these tag_len bytes
	 * where LMCache does not look. On get: return them, or tag_len = 0 when the store has
	 * none (a value written by LMCache itself), or tag_len > KVN_REMOTE_TAG_MAX when the
	 * store holds a longer one (which then fails the node's check). */
	uint8_t tag[KVN_REMOTE_TAG_MAX];
	uint32_t tag_len;
};

/* ------------------------------------------------------------------------------------------
 * What the node hands a connector
 * ------------------------------------------------------------------------------------------ */

struct kvn_connector; /* an instance (one connection); each implementation defines it */

struct kvn_connector_env {
	uint32_t abi;		  /* KVN_ABI of the node */
	uint32_t size;		  /* sizeof(struct kvn_connector_env) of the node */
	const char *url;	  /* remote_url as configured (may hold a password: never log it) */
	const char *url_redacted; /* the same with any password replaced: use this in messages */
	const char *config_dir;	  /* directory of the config file ("." without one) */
	/* An option: the URL's query parameter ?opt=…, else extra_config "remote.<opt>", else
	 * (external connectors) extra_config "external_connector.<scheme>.<opt>"; NULL when unset.
	 */
	const char *(*get_opt)(const struct kvn_connector_env *env, const char *opt);
	/* One log line, tagged with the connector's scheme. level is enum kvn_log_level. */
	void (*log)(const struct kvn_connector_env *env, int level, const char *fmt, ...)
	    __attribute__((format(printf, 3, 4)));
	uint32_t timeout_ms; /* per-operation deadline (connect, and each request) */
	void *node_priv;
};

/* Callback of list(): the key text of one stored value; non-zero stops the walk and is
 * returned by list(). */
typedef int (*kvn_connector_list_cb)(void *ctx, const char *key, size_t keylen);

enum kvn_connector_flags {
	/* The store keeps nothing (blackhole): get always misses; tests skip read-back cases. */
	KVN_CONNECTOR_F_DISCARDS = 1u << 0,
	/* list() is not supported by the store (returns -EOPNOTSUPP). */
	KVN_CONNECTOR_F_NO_LIST = 1u << 1,
	/* put() computes kvnode's tag itself while it sends the payload (hashing while the
	 * socket is full or the store is still reading), for a store where the tag follows the
	 * payload on the wire. The node then hands it values with tag_len =
	 * KVN_REMOTE_TAG_PENDING, and the connector stores the tag that kvn_remote_tagger_*
	 * (below) computes. Other connectors always get the tag computed. */
	KVN_CONNECTOR_F_TAG_ON_SEND = 1u << 2,
};

/* tag_len of a value handed to put() of a connector with KVN_CONNECTOR_F_TAG_ON_SEND. */
#define KVN_REMOTE_TAG_PENDING UINT32_MAX

/* Errors: 0 or a negative errno. -ENOENT a miss; -EINVAL a bad URL/option (with an env->log
 * line naming it); -ENOTCONN, -ECONNREFUSED, -ECONNRESET, -EPIPE, -ETIMEDOUT, -EIO, -EPROTO
 * (the store spoke something that is not its protocol): the store is unreachable or the
 * connection broke — the node then closes this instance and reconnects with back-off, so a
 * connector need not retry on its own. -EBADMSG: the stored value is malformed (the node
 * treats it as a miss, logs and counts it; the connection stays). -EREMOTEIO: the store
 * refused the request (an error reply); the connection stays. After any other error (-ENOMEM
 * part-way through a request …) the node closes the instance without taking the store out of
 * service: a connector that cannot finish a request must not answer the next one on the same
 * connection with the earlier one's replies.
 *
 * Threads: one instance is used by one thread at a time (the node keeps a small pool of
 * instances, one connect() each), so an instance needs no locking of its own. */
/* A module exports one of these, const, starting with KVN_CONNECTOR_OPS_INIT. */
struct kvn_connector_ops {
	uint32_t abi;	    /* KVN_ABI the module was built against */
	uint32_t size;	    /* sizeof(struct kvn_connector_ops) in those headers */
	uint32_t flags;	    /* enum kvn_connector_flags */
	const char *scheme; /* "redis", "fs" … (what remote_url starts with, before "://") */

	/* Parses env->url, validates options and opens one connection. On failure nothing is
	 * left allocated and the error says what to fix (address, option, credentials). */
	int (*connect)(const struct kvn_connector_env *env, struct kvn_connector **out);
	/* Closes the connection and frees the instance. */
	void (*close)(struct kvn_connector *c);

	/* 1 when key is stored (LMCache: the metadata exists), 0 when not, < 0 on error. */
	int (*exists)(struct kvn_connector *c, const struct kvn_key *key);
	/* Fills *out (meta, payload with one reference, tag); -ENOENT on a miss. On any
	 * failure out->payload is NULL. */
	int (*get)(struct kvn_connector *c, const struct kvn_key *key,
		   struct kvn_remote_value *out);
	/* Stores val under key, replacing an older value. Writes the payload before the header
	 * so that a reader never sees a header without its payload (LMCache's order). */
	int (*put)(struct kvn_connector *c, const struct kvn_key *key,
		   const struct kvn_remote_value *val);
	/* -ENOENT when absent. */
	int (*remove)(struct kvn_connector *c, const struct kvn_key *key);
	/* Calls cb for each stored key (order unspecified); -EOPNOTSUPP when the store cannot. */
	int (*list)(struct kvn_connector *c, kvn_connector_list_cb cb, void *ctx);
	/* 0 when the store answers. The node PINGs (with env->timeout_ms set to its
	 * remote.ping_timeout_ms) to tell a hung store from a slow request, and declares a store
	 * back in service only once it answers a PING, never on a bare connect. */
	int (*ping)(struct kvn_connector *c);

	/* Batched variants, optional (NULL: the node loops over the single ones). rcs[i] gets
	 * what the single call would return for keys[i]; the function's own return value is 0,
	 * or < 0 when the whole batch failed (then rcs is undefined). */
	int (*get_batch)(struct kvn_connector *c, size_t n, const struct kvn_key *const *keys,
			 struct kvn_remote_value *out, int *rcs);
	int (*put_batch)(struct kvn_connector *c, size_t n, const struct kvn_key *const *keys,
			 const struct kvn_remote_value *vals, int *rcs);
	int (*exists_batch)(struct kvn_connector *c, size_t n, const struct kvn_key *const *keys,
			    int *rcs);
};

#define KVN_CONNECTOR_OPS_INIT .abi = KVN_ABI, .size = sizeof(struct kvn_connector_ops)
#define KVN_CONNECTOR_ENV_INIT .abi = KVN_ABI, .size = sizeof(struct kvn_connector_env)

/* ------------------------------------------------------------------------------------------
 * Helpers for connectors, in libkvnode (a module links -lkvnode, or leaves the symbols to
 * resolve against the kvnode process that loads it).
 * ------------------------------------------------------------------------------------------ */

/* Writes meta as seven little-endian int32 (LMCache's RemoteMetadata.serialize). */
KVN_API void kvn_remote_meta_encode(const struct kvn_remote_meta *meta,
				    uint8_t out[KVN_REMOTE_META_LEN]);
/* Reads the header; -EPROTO when len is not 28 or a field is out of range (negative length
 * or shape, unknown dtype or fmt). */
KVN_API int kvn_remote_meta_decode(const void *in, size_t len, struct kvn_remote_meta *meta);
/* The header kvnode writes for a plain byte value: BINARY, uint8, shape {len, 1, 1, 1}.
 * -EFBIG when len does not fit LMCache's int32 length. */
KVN_API int kvn_remote_meta_for_bytes(size_t len, struct kvn_remote_meta *meta);

/* kvnode's tag computed in pieces, for a connector with KVN_CONNECTOR_F_TAG_ON_SEND: begin
 * with the key the value is put under and its header, update with the payload bytes in order
 * (any piece sizes), end writes the tag and returns its length. One tagger per connector
 * instance (it holds xxhash's state). new returns NULL when out of memory. */
struct kvn_remote_tagger;
KVN_API struct kvn_remote_tagger *kvn_remote_tagger_new(void);
KVN_API void kvn_remote_tagger_free(struct kvn_remote_tagger *t);
KVN_API void kvn_remote_tagger_begin(struct kvn_remote_tagger *t, const struct kvn_key *key,
				     const struct kvn_remote_meta *meta);
KVN_API void kvn_remote_tagger_update(struct kvn_remote_tagger *t, const void *p, size_t n);
KVN_API uint32_t kvn_remote_tagger_end(struct kvn_remote_tagger *t,
				       uint8_t tag[KVN_REMOTE_TAG_MAX]);

/* The largest payload a connector takes from its store: the config's max_chunk_size (through
 * env->get_opt), else 64 MiB. A value announced longer is refused (-EMSGSIZE) before anything
 * is allocated for it: a store, or whatever answers at its address, cannot make a node
 * allocate gigabytes. */
#define KVN_REMOTE_VALUE_MAX_DEFAULT (64ull << 20)
KVN_API uint64_t kvn_remote_value_max(const struct kvn_connector_env *env);

/* Drops the payload reference of a value returned by a connector (NULL-safe). */
KVN_API void kvn_remote_value_release(struct kvn_remote_value *val);

#ifdef __cplusplus
}
#endif
#endif
