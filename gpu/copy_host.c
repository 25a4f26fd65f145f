/* The "host" copy engine: memcpy between host buffers, for driving the staging logic where
 * there is no GPU (gpu/staging.h). It stands for no device: a kvn_devptr_t is a host address.
 * Copies are queued per stream and run only at sync, in order: a CUDA stream may finish a
 * copy as late as that, so staging code that reads a half before syncing its stream, or
 * refills one still being copied, gets wrong bytes here every time. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "gpu/staging.h"

struct host_copy {
	void *dst;
	const void *src;
	size_t len;
};

struct host_stream {
	struct host_copy *q;
	size_t n, cap;
};

struct host_engine {
	struct kvn_copy_engine base;
	struct host_stream s[];
};

static struct host_engine *
host_of(struct kvn_copy_engine *e)
{
	return (struct host_engine *)e;
}

static int
enqueue(struct kvn_copy_engine *e, void *dst, const void *src, size_t len, unsigned s, char *err,
	size_t errlen)
{
	if (s >= e->nstreams)
		return kvn_seterr(-EINVAL, err, errlen, "host copy engine: no stream %u (of %u)", s,
				  e->nstreams);
	struct host_stream *hs = &host_of(e)->s[s];
	if (hs->n == hs->cap) {
		size_t cap = hs->cap ? hs->cap * 2 : 8;
		struct host_copy *q = realloc(hs->q, cap * sizeof(*q));
		if (!q)
			return kvn_seterr(-ENOMEM, err, errlen, "out of memory");
		hs->q = q;
		hs->cap = cap;
	}
	hs->q[hs->n++] = (struct host_copy){.dst = dst, .src = src, .len = len};
	return 0;
}

static int
host_to_host(struct kvn_copy_engine *e, void *dst, kvn_devptr_t src, size_t len, unsigned s,
	     char *err, size_t errlen)
{
	return enqueue(e, dst, (const void *)(uintptr_t)src, len, s, err, errlen);
}

static int
host_to_dev(struct kvn_copy_engine *e, kvn_devptr_t dst, const void *src, size_t len, unsigned s,
	    char *err, size_t errlen)
{
	return enqueue(e, (void *)(uintptr_t)dst, src, len, s, err, errlen);
}

static int
host_dev_to_dev(struct kvn_copy_engine *e, kvn_devptr_t dst, kvn_devptr_t src, size_t len,
		unsigned s, char *err, size_t errlen)
{
	return enqueue(e, (void *)(uintptr_t)dst, (const void *)(uintptr_t)src, len, s, err,
		       errlen);
}

static int
host_sync(struct kvn_copy_engine *e, unsigned s, char *err, size_t errlen)
{
	if (s >= e->nstreams)
		return kvn_seterr(-EINVAL, err, errlen, "host copy engine: no stream %u (of %u)", s,
				  e->nstreams);
	struct host_stream *hs = &host_of(e)->s[s];
	for (size_t i = 0; i < hs->n; i++)
		memcpy(hs->q[i].dst, hs->q[i].src, hs->q[i].len);
	hs->n = 0;
	return 0;
}

static int
host_register(struct kvn_copy_engine *e, void *p, size_t len, char *err, size_t errlen)
{
	(void)e, (void)p, (void)len, (void)err, (void)errlen;
	return 0; /* host memory needs no pinning for memcpy */
}

static void
host_unregister(struct kvn_copy_engine *e, void *p)
{
	(void)e, (void)p;
}

static void
host_destroy(struct kvn_copy_engine *e)
{
	for (unsigned s = 0; s < e->nstreams; s++) {
		host_sync(e, s, NULL, 0);
		free(host_of(e)->s[s].q);
	}
	free(e);
}

static const struct kvn_copy_engine_ops host_ops = {
    .name = "host",
    .copy_to_host = host_to_host,
    .copy_to_dev = host_to_dev,
    .copy_dev = host_dev_to_dev,
    .sync = host_sync,
    .register_host = host_register,
    .unregister_host = host_unregister,
    .destroy = host_destroy,
};

int
kvn_copy_engine_host(unsigned nstreams, struct kvn_copy_engine **out, char *err, size_t errlen)
{
	if (!nstreams || nstreams > 64)
		return kvn_seterr(-EINVAL, err, errlen, "host copy engine: %u streams (1 to 64)",
				  nstreams);
	struct host_engine *h = calloc(1, sizeof(*h) + nstreams * sizeof(h->s[0]));
	if (!h)
		return kvn_seterr(-ENOMEM, err, errlen, "out of memory");
	h->base.ops = &host_ops;
	h->base.nstreams = nstreams;
	*out = &h->base;
	return 0;
}
