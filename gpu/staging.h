/* Host staging (docs/gpu.md "Staging"): moving bytes between device memory and host memory
 * through a bounded, registered bounce area, in pieces, two in flight. Without GPUDirect this
 * is how device memory reaches the network: the owner copies a chunk device → bounce and peers
 * READ the bounce area; a reader's landing slot is copied bounce → device.
 *
 * The copies go through a copy engine: "cuda" (cuMemcpy*Async on the engine's own streams,
 * kvn_gpu_copy_engine) on a GPU, or "host" (memcpy), which the tests use to drive the staging
 * logic on machines without a GPU. The host engine does not stand for a GPU: its "device
 * addresses" are host addresses, and it runs each copy only when its stream is synced, the
 * latest completion a CUDA stream allows, so that a missing sync shows as wrong bytes. */
#ifndef KVN_GPU_STAGING_H
#define KVN_GPU_STAGING_H

#include <stddef.h>

#include "gpu/gpu.h"

struct kvn_copy_engine;

/* Copies are asynchronous: each is queued on stream s (0 .. nstreams-1), runs in order with
 * the others of that stream, and is done when sync(s) returns 0. Host buffers must stay valid
 * until then. Errors are -errno with err set. */
struct kvn_copy_engine_ops {
	const char *name; /* "cuda" | "host" */
	int (*copy_to_host)(struct kvn_copy_engine *e, void *dst, kvn_devptr_t src, size_t len,
			    unsigned s, char *err, size_t errlen);
	int (*copy_to_dev)(struct kvn_copy_engine *e, kvn_devptr_t dst, const void *src, size_t len,
			   unsigned s, char *err, size_t errlen);
	/* Device to device, both on the engine's device. */
	int (*copy_dev)(struct kvn_copy_engine *e, kvn_devptr_t dst, kvn_devptr_t src, size_t len,
			unsigned s, char *err, size_t errlen);
	int (*sync)(struct kvn_copy_engine *e, unsigned s, char *err, size_t errlen);
	/* Page-locks host memory so that copies to and from it are truly asynchronous (the
	 * cuda engine: cuMemHostRegister); the host engine has nothing to do. */
	int (*register_host)(struct kvn_copy_engine *e, void *p, size_t len, char *err,
			     size_t errlen);
	void (*unregister_host)(struct kvn_copy_engine *e, void *p);
	void (*destroy)(struct kvn_copy_engine *e); /* syncs every stream first */
};

struct kvn_copy_engine {
	const struct kvn_copy_engine_ops *ops;
	unsigned nstreams;
};

/* The host engine: kvn_devptr_t values are this process's addresses ((kvn_devptr_t)ptr). */
int kvn_copy_engine_host(unsigned nstreams, struct kvn_copy_engine **out, char *err, size_t errlen);
void kvn_copy_engine_destroy(struct kvn_copy_engine *e);

/* ------------------------------------------------------------------------------------------
 * Staging: a bounce area of bounce_size bytes, split in two halves; a transfer of any length
 * goes through it half by half, one half's copy in flight while the other's bytes are
 * consumed (get) or produced (put). The engine needs two streams.
 * ------------------------------------------------------------------------------------------ */

struct kvn_staging;

/* Where a get's pieces go, in order: n bytes at offset off of the transfer, valid only during
 * the call (the half is refilled after it). Nonzero stops the transfer: a -errno is returned
 * as it is, a positive value as -ECANCELED. */
typedef int (*kvn_staging_sink)(void *ctx, size_t off, const void *piece, size_t n);
/* Where a put's pieces come from: fill piece with the n bytes at offset off. */
typedef int (*kvn_staging_source)(void *ctx, size_t off, void *piece, size_t n);

/* bounce_size: at least 2 bytes, rounded down to even; the area is allocated page aligned and
 * registered with the engine. The staging does not own the engine. */
int kvn_staging_create(struct kvn_copy_engine *e, size_t bounce_size, struct kvn_staging **out,
		       char *err, size_t errlen);
void kvn_staging_destroy(struct kvn_staging *st);
/* Device → host: len bytes from src, handed to sink piece by piece. */
int kvn_staging_get(struct kvn_staging *st, kvn_devptr_t src, size_t len, kvn_staging_sink sink,
		    void *ctx, char *err, size_t errlen);
/* Host → device: len bytes to dst, taken from source piece by piece. */
int kvn_staging_put(struct kvn_staging *st, kvn_devptr_t dst, size_t len, kvn_staging_source source,
		    void *ctx, char *err, size_t errlen);
/* The same with a plain host buffer on the other side. */
int kvn_staging_get_buf(struct kvn_staging *st, void *dst, kvn_devptr_t src, size_t len, char *err,
			size_t errlen);
int kvn_staging_put_buf(struct kvn_staging *st, kvn_devptr_t dst, const void *src, size_t len,
			char *err, size_t errlen);
/* kvn_staging_get_buf that also gives *sum, the xxh3-64 of the bytes (a pool slot's checksum),
 * each piece hashed as it lands in dst. */
int kvn_staging_get_sum(struct kvn_staging *st, void *dst, kvn_devptr_t src, size_t len,
			uint64_t *sum, char *err, size_t errlen);
/* What the node, the client library and the bench stage a GPU's bytes through: the cuda engine
 * on device dev with two streams, and a bounce area of KVN_STAGING_BOUNCE bytes on it. 0, or
 * -errno with err set and nothing left open. */
#define KVN_STAGING_BOUNCE ((size_t)8 << 20) /* two 4 MiB halves */
int kvn_gpu_staging_open(struct kvn_gpu *gpu, int dev, struct kvn_copy_engine **e,
			 struct kvn_staging **st, char *err, size_t errlen);
/* Destroys both (either may be NULL). */
void kvn_gpu_staging_close(struct kvn_copy_engine *e, struct kvn_staging *st);
/* len bytes from device address src to dst on the staging's device, no host memory between
 * (one copy on the engine's first stream, synced). */
int kvn_staging_copy_dev(struct kvn_staging *st, kvn_devptr_t dst, kvn_devptr_t src, size_t len,
			 char *err, size_t errlen);
/* Pieces the last transfer took (for the tests and the stats). */
size_t kvn_staging_pieces(const struct kvn_staging *st);
size_t kvn_staging_half(const struct kvn_staging *st);

#endif
