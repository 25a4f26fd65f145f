/* Host staging through a bounded bounce area: a transfer in pieces of half the area, two
 * halves in flight on two streams (gpu/staging.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack (kvn_staging_get_sum) */

#include "core/log.h"
#include "core/xxh.h"
#include "gpu/staging.h"

struct kvn_staging {
	struct kvn_copy_engine *e;
	unsigned char *area;
	size_t half;
	size_t pieces; /* of the last transfer */
};

void
kvn_copy_engine_destroy(struct kvn_copy_engine *e)
{
	if (e)
		e->ops->destroy(e);
}

int
kvn_staging_create(struct kvn_copy_engine *e, size_t bounce_size, struct kvn_staging **out,
		   char *err, size_t errlen)
{
	if (!e || e->nstreams < 2)
		return kvn_seterr(-EINVAL, err, errlen,
				  "staging needs a copy engine with two streams");
	if (bounce_size < 2)
		return kvn_seterr(-EINVAL, err, errlen,
				  "staging: a bounce area of %zu bytes (at least 2)", bounce_size);
	struct kvn_staging *st = calloc(1, sizeof(*st));
	if (!st)
		return kvn_seterr(-ENOMEM, err, errlen, "out of memory");
	st->e = e;
	st->half = bounce_size / 2;
	long page = sysconf(_SC_PAGESIZE);
	size_t size = (st->half * 2 + (size_t)page - 1) & ~((size_t)page - 1);
	if (posix_memalign((void **)&st->area, (size_t)page, size)) {
		free(st);
		return kvn_seterr(-ENOMEM, err, errlen,
				  "staging: no memory for a %zu-byte bounce "
				  "area",
				  size);
	}
	int rc = e->ops->register_host(e, st->area, size, err, errlen);
	if (rc) {
		free(st->area);
		free(st);
		return rc;
	}
	*out = st;
	return 0;
}

void
kvn_staging_destroy(struct kvn_staging *st)
{
	if (!st)
		return;
	st->e->ops->unregister_host(st->e, st->area);
	free(st->area);
	free(st);
}

size_t
kvn_staging_pieces(const struct kvn_staging *st)
{
	return st->pieces;
}

size_t
kvn_staging_half(const struct kvn_staging *st)
{
	return st->half;
}

/* After an error: wait for what is still in flight, so that no copy touches the bounce area
 * (or the caller's memory) once we have returned. Its own errors add nothing. */
static void
drain(struct kvn_staging *st)
{
	for (unsigned s = 0; s < 2; s++)
		st->e->ops->sync(st->e, s, NULL, 0);
}

/* Piece i of a len-byte transfer: its offset, and its length as the return. */
static size_t
piece_at(const struct kvn_staging *st, size_t len, size_t i, size_t *off)
{
	*off = i * st->half;
	return len - *off < st->half ? len - *off : st->half;
}

static int
issue_get(struct kvn_staging *st, kvn_devptr_t src, size_t len, size_t i, char *err, size_t errlen)
{
	size_t off, n = piece_at(st, len, i, &off);
	return st->e->ops->copy_to_host(st->e, st->area + (i % 2) * st->half, src + off, n,
					(unsigned)(i % 2), err, errlen);
}

/* Piece i+1 is issued before piece i is waited for: its half held piece i-1, which the sink
 * is done with, so one copy is always in flight while the sink works. */
int
kvn_staging_get(struct kvn_staging *st, kvn_devptr_t src, size_t len, kvn_staging_sink sink,
		void *ctx, char *err, size_t errlen)
{
	size_t np = len ? (len - 1) / st->half + 1 : 0;
	int rc = 0;
	st->pieces = 0;
	if (np && (rc = issue_get(st, src, len, 0, err, errlen)))
		goto fail;
	for (size_t i = 0; i < np; i++) {
		if (i + 1 < np && (rc = issue_get(st, src, len, i + 1, err, errlen)))
			goto fail;
		if ((rc = st->e->ops->sync(st->e, (unsigned)(i % 2), err, errlen)))
			goto fail;
		size_t off, n = piece_at(st, len, i, &off);
		if ((rc = sink(ctx, off, st->area + (i % 2) * st->half, n))) {
			rc = rc < 0 ? rc : -ECANCELED;
			kvn_seterr(rc, err, errlen,
				   "staging: the receiver of %zu bytes at offset "
				   "%zu stopped the transfer",
				   n, off);
			goto fail;
		}
		st->pieces++;
	}
	return 0;
fail:
	drain(st);
	return rc;
}

/* A half is refilled only after the copy that last read it (two pieces back, same stream)
 * is done; the source fills one half while the other's copy runs. */
int
kvn_staging_put(struct kvn_staging *st, kvn_devptr_t dst, size_t len, kvn_staging_source source,
		void *ctx, char *err, size_t errlen)
{
	size_t np = len ? (len - 1) / st->half + 1 : 0;
	int rc = 0;
	st->pieces = 0;
	for (size_t i = 0; i < np; i++) {
		unsigned s = (unsigned)(i % 2);
		unsigned char *piece = st->area + s * st->half;
		size_t off, n = piece_at(st, len, i, &off);
		if (i >= 2 && (rc = st->e->ops->sync(st->e, s, err, errlen)))
			goto fail;
		if ((rc = source(ctx, off, piece, n))) {
			rc = rc < 0 ? rc : -ECANCELED;
			kvn_seterr(rc, err, errlen,
				   "staging: the source of %zu bytes at offset %zu "
				   "stopped the transfer",
				   n, off);
			goto fail;
		}
		if ((rc = st->e->ops->copy_to_dev(st->e, dst + off, piece, n, s, err, errlen)))
			goto fail;
		st->pieces++;
	}
	for (unsigned s = 0; s < 2; s++)
		if ((rc = st->e->ops->sync(st->e, s, err, errlen)))
			goto fail;
	return 0;
fail:
	drain(st);
	return rc;
}

static int
to_buf(void *ctx, size_t off, const void *piece, size_t n)
{
	memcpy((unsigned char *)ctx + off, piece, n);
	return 0;
}

static int
from_buf(void *ctx, size_t off, void *piece, size_t n)
{
	memcpy(piece, (const unsigned char *)ctx + off, n);
	return 0;
}

int
kvn_staging_get_buf(struct kvn_staging *st, void *dst, kvn_devptr_t src, size_t len, char *err,
		    size_t errlen)
{
	return kvn_staging_get(st, src, len, to_buf, dst, err, errlen);
}

int
kvn_staging_put_buf(struct kvn_staging *st, kvn_devptr_t dst, const void *src, size_t len,
		    char *err, size_t errlen)
{
	return kvn_staging_put(st, dst, len, from_buf, (void *)src, err, errlen);
}

struct sum_sink {
	uint8_t *dst;
	XXH3_state_t xs;
};

/* Each piece lands in the buffer and is hashed there while it is still in cache. */
static int
to_buf_sum(void *ctx, size_t off, const void *piece, size_t n)
{
	struct sum_sink *s = ctx;
	memcpy(s->dst + off, piece, n);
	XXH3_64bits_update(&s->xs, s->dst + off, n);
	return 0;
}

int
kvn_staging_get_sum(struct kvn_staging *st, void *dst, kvn_devptr_t src, size_t len, uint64_t *sum,
		    char *err, size_t errlen)
{
	struct sum_sink s = {.dst = dst};
	XXH3_64bits_reset(&s.xs);
	int rc = kvn_staging_get(st, src, len, to_buf_sum, &s, err, errlen);
	*sum = rc ? 0 : XXH3_64bits_digest(&s.xs);
	return rc;
}

int
kvn_gpu_staging_open(struct kvn_gpu *gpu, int dev, struct kvn_copy_engine **e,
		     struct kvn_staging **st, char *err, size_t errlen)
{
	*e = NULL;
	*st = NULL;
	int rc = kvn_gpu_copy_engine(gpu, dev, 2, e, err, errlen);
	if (!rc)
		rc = kvn_staging_create(*e, KVN_STAGING_BOUNCE, st, err, errlen);
	if (rc) {
		kvn_gpu_staging_close(*e, NULL);
		*e = NULL;
	}
	return rc;
}

void
kvn_gpu_staging_close(struct kvn_copy_engine *e, struct kvn_staging *st)
{
	if (st)
		kvn_staging_destroy(st); /* first: it syncs its copies on e */
	if (e)
		kvn_copy_engine_destroy(e);
}

int
kvn_staging_copy_dev(struct kvn_staging *st, kvn_devptr_t dst, kvn_devptr_t src, size_t len,
		     char *err, size_t errlen)
{
	int rc = st->e->ops->copy_dev(st->e, dst, src, len, 0, err, errlen);
	int rs = st->e->ops->sync(st->e, 0, rc ? NULL : err, rc ? 0 : errlen);
	return rc ? rc : rs;
}
