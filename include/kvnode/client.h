/* kvnode client API: how an inference worker uses the kvnode of its host (docs/client.md).
 *
 * The node hands the client its chunk pool (a memfd, mapped by the library), so:
 *  - a get returns a read-only view straight into the pool, under a lease that keeps the chunk
 *    from eviction and reuse until the client releases it or disconnects; get_into copies
 *    once into the caller's buffer;
 *  - a put copies the caller's bytes once, into a slot the node reserved for it (the library
 *    checksums while it copies), then commits: the node publishes the chunk to its tiers and
 *    to the cluster;
 *  - a chunk another node holds is fetched by the node with one-sided RDMA READs into its pool
 *    and comes back as a view like a local one;
 *  - a gather put (putv) copies pieces (a header and a payload, say) back to back into the
 *    slot, in the same one pass;
 *  - batches (get, get_into, put, remove, contains_prefix) are one round trip to the node;
 *  - list walks the keys the node holds, a bounded page per round trip.
 * Every call returns 0 or a negative errno; kvn_client_error() then names the key and the
 * cause. A client is used by one thread at a time (open one per thread); it is not
 * fork-safe. Keys are LMCache's key text (kvnode.h, Keys). */
#ifndef KVNODE_CLIENT_H
#define KVNODE_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "kvnode/kvnode.h"

#ifdef __cplusplus
extern "C" {
#endif

struct kvn_client;

struct kvn_client_opts {
	uint32_t abi;  /* KVN_ABI of the caller's headers (KVN_CLIENT_OPTS_INIT) */
	uint32_t size; /* sizeof(struct kvn_client_opts) in them */
	/* The node's socket; NULL: $KVNODE_SOCKET_PATH, else the node's default
	 * ($KVNODE_SOCKET, else $XDG_RUNTIME_DIR/kvnode.sock, else /tmp/kvnode-<uid>.sock). */
	const char *socket_path;
	const char *name; /* shown in the node's log and stat; NULL: "pid <pid>" */
	int timeout_ms;	  /* each request (and the connect); 0 = 30000 */
};
#define KVN_CLIENT_OPTS_INIT .abi = KVN_ABI, .size = sizeof(struct kvn_client_opts)

/* Connects and maps the node's pool. -ENOENT / -ECONNREFUSED when no node listens there,
 * -EPROTO when what answers is not a kvnode of a compatible protocol; err says which. */
KVN_API int kvn_client_open(const struct kvn_client_opts *opts, struct kvn_client **out, char *err,
			    size_t errlen);
/* Drops every lease (views become invalid) and reservation, fails requests in flight with
 * -ECANCELED (their callbacks run), unmaps the pool and frees c. NULL is a no-op. */
KVN_API void kvn_client_close(struct kvn_client *c);
/* The message of the last failed call of c: names the key (or the node) and the cause. */
KVN_API const char *kvn_client_error(const struct kvn_client *c);
/* The largest value the node takes (its max_chunk_size). */
KVN_API uint64_t kvn_client_max_value(const struct kvn_client *c);

/* A value in the node's pool, read-only, valid until released. */
struct kvn_view {
	const void *data;
	size_t len;
	uint64_t lease; /* the node's; 0 when the view holds nothing */
};

/* ------------------------------------------------------------------------------------------
 * One key, synchronous
 * ------------------------------------------------------------------------------------------ */

/* *out is a view of key's value (-ENOENT when no node of the cluster holds it). */
KVN_API int kvn_client_get(struct kvn_client *c, const char *key, struct kvn_view *out);
/* Releases views (their data must not be read after); views with lease 0 are skipped. The
 * node frees the leases when the RELEASE reaches it: at once when nothing else is in flight,
 * else with the next request or once the last reply is in. */
KVN_API void kvn_client_release(struct kvn_client *c, struct kvn_view *views, size_t n);
/* Copies key's value into dst; *len gets its length; -ENOSPC (with *len set) when cap is
 * short. */
KVN_API int kvn_client_get_into(struct kvn_client *c, const char *key, void *dst, size_t cap,
				size_t *len);
/* Stores len bytes under key (replacing an older value): -EMSGSIZE over the node's
 * max_chunk_size, -ENOSPC when it can never fit the pool, -ENOMEM when the pool is full of
 * chunks that cannot be evicted now. */
KVN_API int kvn_client_put(struct kvn_client *c, const char *key, const void *data, size_t len);
/* (ABI 2.3) kvn_client_put of the concatenation of iov[0..iovcnt): the pieces are copied once,
 * back to back, into the reserved slot and checksummed in the same pass, so the node stores
 * byte for byte what a put of the joined bytes stores, without the caller joining them.
 * Zero-length pieces are skipped; iovcnt 0 stores an empty value. The same errors as put,
 * and -EINVAL for a negative iovcnt or a piece with no base but a length. */
KVN_API int kvn_client_putv(struct kvn_client *c, const char *key, const struct iovec *iov,
			    int iovcnt);
/* -ENOENT when the node held no value of key. */
KVN_API int kvn_client_remove(struct kvn_client *c, const char *key);
/* 1 when the node or a peer holds key, 0 when none does. */
KVN_API int kvn_client_contains(struct kvn_client *c, const char *key);

/* ------------------------------------------------------------------------------------------
 * Batches: one round trip for all n keys (n at most 4096). rcs[i] (may be NULL) gets key i's
 * result; the function returns 0 when every key succeeded, else the first key's error (or an
 * error of the whole request: then rcs are all that error).
 * ------------------------------------------------------------------------------------------ */

KVN_API int kvn_client_batch_get(struct kvn_client *c, const char *const *keys, size_t n,
				 struct kvn_view *views, int *rcs);
KVN_API int kvn_client_batch_get_into(struct kvn_client *c, const char *const *keys, size_t n,
				      void *const *dst, const size_t *caps, size_t *lens, int *rcs);
KVN_API int kvn_client_batch_put(struct kvn_client *c, const char *const *keys, size_t n,
				 const void *const *data, const size_t *lens, int *rcs);
/* (ABI 2.3) Key i's value is the concatenation of iovs[i][0..iovcnts[i]), as kvn_client_putv. */
KVN_API int kvn_client_batch_putv(struct kvn_client *c, const char *const *keys, size_t n,
				  const struct iovec *const *iovs, const int *iovcnts, int *rcs);
KVN_API int kvn_client_batch_remove(struct kvn_client *c, const char *const *keys, size_t n,
				    int *rcs);
/* LMCache's prefix lookup: *found gets how many leading keys are held by this node or a peer,
 * stopping at the first held by none. One round trip to the node, which asks the scheduler
 * once for all the keys it does not hold. */
KVN_API int kvn_client_contains_prefix(struct kvn_client *c, const char *const *keys, size_t n,
				       size_t *found);

/* ------------------------------------------------------------------------------------------
 * The node itself (ABI 2.3)
 * ------------------------------------------------------------------------------------------ */

/* One round trip to the node: 0 when it answered, else a negative errno (-ENOTCONN when the
 * connection broke; -ETIMEDOUT after the client's timeout, which breaks the connection) and
 * kvn_client_error() says why. */
KVN_API int kvn_client_ping(struct kvn_client *c);

/* A key of the node's listing and the length of its value; non-zero stops the listing. */
typedef int (*kvn_client_list_fn)(void *ctx, const char *key, uint64_t len);
/* Lists the keys the node holds in its own tiers (what `kvnode ls` shows; not its peers'), in
 * byte order of their text: fn runs for each key after `after` (NULL or "": from the first),
 * for at most max of them (0: no limit). Each round trip is a page of at most 4096 keys, and
 * the node keeps nothing between pages: a key held throughout the listing is listed exactly
 * once, a key put or removed meanwhile may or may not be. Each page walks the node's whole
 * listing (its remote store's included), so a listing of N keys costs N / 4096 walks.
 * Returns 0 when the listing reached the last key; 1 when keys follow the last one fn saw
 * (max reached, or fn stopped it): call again with after = that key; else a negative errno,
 * -EOPNOTSUPP when the node is older than LIST (client protocol 1.0). fn runs from this
 * call once a page has arrived, not from the event loop: it may call c's functions. */
KVN_API int kvn_client_list(struct kvn_client *c, const char *after, size_t max,
			    kvn_client_list_fn fn, void *ctx);

/* ------------------------------------------------------------------------------------------
 * Asynchronous requests, to overlap loading with compute. Fill a struct kvn_client_req
 * (KVN_CLIENT_REQ_INIT), submit it, and call kvn_client_progress when kvn_client_fd is
 * readable (or kvn_client_wait): done runs there, once, from the thread that calls them. The
 * request and every array it points to are the caller's and must stay valid until done ran.
 * A put's bytes are copied during progress, once its slots are reserved.
 * ------------------------------------------------------------------------------------------ */

enum kvn_client_op {
	KVN_CLIENT_GET = 1,		/* keys -> views */
	KVN_CLIENT_GET_INTO = 2,	/* keys -> dst[i] (caps[i] bytes), lens */
	KVN_CLIENT_PUT = 3,		/* keys, data[i] of lens_in[i] bytes */
	KVN_CLIENT_REMOVE = 4,		/* keys */
	KVN_CLIENT_CONTAINS_PREFIX = 5, /* keys -> found */
};

/* (ABI 2.4) Where a request's buffers are: host memory (the default), or the memory of one GPU,
 * so that a worker loads KV chunks straight into device memory and stores them from there. With
 * KVN_CLIENT_MEM_GPU, dst (GET_INTO) or data (PUT) hold device addresses (CUdeviceptr values
 * cast to pointers) of GPU mem_device. The library loads the CUDA driver (libcuda.so.1) at run
 * time on the first such request, never at link time, and copies between the pool and device
 * memory through a page-locked bounce area on streams of its own, before done runs; the bytes
 * are the same as with host buffers. One client copies for one GPU (an inference worker has
 * one): a request for another is refused. Without a driver or that GPU, kvn_client_submit
 * fails (-ENOENT, -ENODEV, -ENOTSUP) and kvn_client_error() names what is missing. */
enum kvn_client_mem {
	KVN_CLIENT_MEM_HOST = 0,
	KVN_CLIENT_MEM_GPU = 1,
};

struct kvn_client_req {
	uint32_t abi, size; /* KVN_CLIENT_REQ_INIT */
	enum kvn_client_op op;
	size_t n;
	const char *const *keys;
	const void *const *data;		  /* PUT */
	const size_t *lens_in;			  /* PUT */
	void *const *dst;			  /* GET_INTO */
	const size_t *caps;			  /* GET_INTO */
	size_t *lens;				  /* GET_INTO: each value's length (may be NULL) */
	struct kvn_view *views;			  /* GET */
	int *rcs;				  /* per key (may be NULL) */
	size_t found;				  /* CONTAINS_PREFIX */
	int status;				  /* 0, or the first key's error or the request's */
	void (*done)(struct kvn_client_req *req); /* may be NULL */
	void *ctx;				  /* the caller's */
	uint64_t priv[4];			  /* the library's */
	enum kvn_client_mem mem;		  /* (ABI 2.4) GET_INTO's dst, PUT's data */
	int mem_device;				  /* (ABI 2.4) with KVN_CLIENT_MEM_GPU: the GPU */
};
#define KVN_CLIENT_REQ_INIT .abi = KVN_ABI, .size = sizeof(struct kvn_client_req)

/* 0 when submitted (done will run), else a negative errno (done will not run): -EINVAL for a
 * malformed request or key, -ENOTCONN when the connection broke, -EAGAIN with too many in
 * flight (64). */
KVN_API int kvn_client_submit(struct kvn_client *c, struct kvn_client_req *req);
/* A descriptor that is readable when kvn_client_progress has work (the socket). */
KVN_API int kvn_client_fd(const struct kvn_client *c);
/* Handles what arrived, waiting up to timeout_ms (0: not at all, < 0: until something
 * completes) for something to: the number of requests completed, or a negative errno when the
 * connection broke (then every request in flight has completed with that error). */
KVN_API int kvn_client_progress(struct kvn_client *c, int timeout_ms);
/* Progresses until req has completed: 0 (req->status says how), or -ETIMEDOUT after
 * timeout_ms (< 0: the client's timeout). */
KVN_API int kvn_client_wait(struct kvn_client *c, struct kvn_client_req *req, int timeout_ms);

#ifdef __cplusplus
}
#endif
#endif
