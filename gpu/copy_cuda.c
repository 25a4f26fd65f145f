/* The "cuda" copy engine: cuMemcpyDtoHAsync / cuMemcpyHtoDAsync on streams of its own on one
 * device (gpu/staging.h). Its streams are non-blocking, so they never wait for the legacy
 * default stream an inference engine may be using on the same context. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "gpu/driver.h"
#include "gpu/staging.h"

#if KVN_GPU_CUDA

struct cuda_engine {
	struct kvn_copy_engine base;
	struct kvn_gpu *gpu;
	int dev;
	CUstream s[];
};

static struct cuda_engine *
cuda_of(struct kvn_copy_engine *e)
{
	return (struct cuda_engine *)e;
}

static int
enter(struct cuda_engine *c, unsigned s, char *err, size_t errlen)
{
	if (s >= c->base.nstreams)
		return kvn_seterr(-EINVAL, err, errlen, "cuda copy engine: no stream %u (of %u)", s,
				  c->base.nstreams);
	return kvn_gpu_use_device(c->gpu, c->dev, err, errlen);
}

static int
cuda_to_host(struct kvn_copy_engine *e, void *dst, kvn_devptr_t src, size_t len, unsigned s,
	     char *err, size_t errlen)
{
	struct cuda_engine *c = cuda_of(e);
	int rc = enter(c, s, err, errlen);
	if (rc)
		return rc;
	CUresult r = c->gpu->f.p_cuMemcpyDtoHAsync(dst, (CUdeviceptr)src, len, c->s[s]);
	return r == CUDA_SUCCESS
		   ? 0
		   : kvn_gpu_cuerr(c->gpu, r, err, errlen, "cuMemcpyDtoHAsync(%zu bytes) on GPU %d",
				   len, c->dev);
}

static int
cuda_to_dev(struct kvn_copy_engine *e, kvn_devptr_t dst, const void *src, size_t len, unsigned s,
	    char *err, size_t errlen)
{
	struct cuda_engine *c = cuda_of(e);
	int rc = enter(c, s, err, errlen);
	if (rc)
		return rc;
	CUresult r = c->gpu->f.p_cuMemcpyHtoDAsync((CUdeviceptr)dst, src, len, c->s[s]);
	return r == CUDA_SUCCESS
		   ? 0
		   : kvn_gpu_cuerr(c->gpu, r, err, errlen, "cuMemcpyHtoDAsync(%zu bytes) on GPU %d",
				   len, c->dev);
}

static int
cuda_dev_to_dev(struct kvn_copy_engine *e, kvn_devptr_t dst, kvn_devptr_t src, size_t len,
		unsigned s, char *err, size_t errlen)
{
	struct cuda_engine *c = cuda_of(e);
	int rc = enter(c, s, err, errlen);
	if (rc)
		return rc;
	CUresult r =
	    c->gpu->f.p_cuMemcpyDtoDAsync((CUdeviceptr)dst, (CUdeviceptr)src, len, c->s[s]);
	return r == CUDA_SUCCESS
		   ? 0
		   : kvn_gpu_cuerr(c->gpu, r, err, errlen, "cuMemcpyDtoDAsync(%zu bytes) on GPU %d",
				   len, c->dev);
}

static int
cuda_sync(struct kvn_copy_engine *e, unsigned s, char *err, size_t errlen)
{
	struct cuda_engine *c = cuda_of(e);
	int rc = enter(c, s, err, errlen);
	if (rc)
		return rc;
	CUresult r = c->gpu->f.p_cuStreamSynchronize(c->s[s]);
	return r == CUDA_SUCCESS
		   ? 0
		   : kvn_gpu_cuerr(c->gpu, r, err, errlen,
				   "cuStreamSynchronize(stream %u) on GPU %d", s, c->dev);
}

static int
cuda_register(struct kvn_copy_engine *e, void *p, size_t len, char *err, size_t errlen)
{
	struct cuda_engine *c = cuda_of(e);
	return kvn_gpu_host_register(c->gpu, c->dev, p, len, err, errlen);
}

static void
cuda_unregister(struct kvn_copy_engine *e, void *p)
{
	struct cuda_engine *c = cuda_of(e);
	kvn_gpu_host_unregister(c->gpu, c->dev, p);
}

static void
cuda_destroy(struct kvn_copy_engine *e)
{
	struct cuda_engine *c = cuda_of(e);
	char err[256];
	if (kvn_gpu_use_device(c->gpu, c->dev, err, sizeof(err)) == 0)
		for (unsigned s = 0; s < e->nstreams; s++)
			if (c->s[s]) {
				c->gpu->f.p_cuStreamSynchronize(c->s[s]);
				c->gpu->f.p_cuStreamDestroy(c->s[s]);
			}
	free(c);
}

static const struct kvn_copy_engine_ops cuda_ops = {
    .name = "cuda",
    .copy_to_host = cuda_to_host,
    .copy_to_dev = cuda_to_dev,
    .copy_dev = cuda_dev_to_dev,
    .sync = cuda_sync,
    .register_host = cuda_register,
    .unregister_host = cuda_unregister,
    .destroy = cuda_destroy,
};

int
kvn_gpu_copy_engine(struct kvn_gpu *gpu, int dev, unsigned nstreams, struct kvn_copy_engine **out,
		    char *err, size_t errlen)
{
	if (!nstreams || nstreams > 64)
		return kvn_seterr(-EINVAL, err, errlen, "cuda copy engine: %u streams (1 to 64)",
				  nstreams);
	int rc = kvn_gpu_use_device(gpu, dev, err, errlen);
	if (rc)
		return rc;
	struct cuda_engine *c = calloc(1, sizeof(*c) + nstreams * sizeof(c->s[0]));
	if (!c)
		return kvn_seterr(-ENOMEM, err, errlen, "out of memory");
	c->base.ops = &cuda_ops;
	c->base.nstreams = nstreams;
	c->gpu = gpu;
	c->dev = dev;
	for (unsigned s = 0; s < nstreams; s++) {
		CUresult r = gpu->f.p_cuStreamCreate(&c->s[s], CU_STREAM_NON_BLOCKING);
		if (r != CUDA_SUCCESS) {
			rc = kvn_gpu_cuerr(gpu, r, err, errlen, "cuStreamCreate on GPU %d", dev);
			cuda_destroy(&c->base);
			return rc;
		}
	}
	*out = &c->base;
	return 0;
}

#else /* !KVN_GPU_CUDA */

int
kvn_gpu_copy_engine(struct kvn_gpu *gpu, int dev, unsigned nstreams, struct kvn_copy_engine **out,
		    char *err, size_t errlen)
{
	(void)gpu, (void)dev, (void)nstreams, (void)out;
	return kvn_gpu_no_headers(err, errlen);
}

#endif
