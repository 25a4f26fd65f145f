/* Loading the CUDA driver: dlopen of libcuda.so.1, the version check, the symbol table, the
 * devices' primary contexts and the error strings (docs/gpu.md "The driver"). */
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "gpu/driver.h"

#define COMP "gpu"

int
kvn_gpu_no_headers(char *err, size_t errlen)
{
	return kvn_seterr(-ENOTSUP, err, errlen,
			  "GPU support: kvnode was built without CUDA headers (no cuda.h found at "
			  "build time; build with -DKVN_WITH_CUDA=ON and the CUDA toolkit)");
}

bool
kvn_gpu_built_with_cuda(void)
{
	return KVN_GPU_CUDA;
}

void
kvn_gpu_version_str(int v, char *buf, size_t len)
{
	snprintf(buf, len, "%d.%d", v / 1000, (v % 1000) / 10);
}

int
kvn_gpu_check_version(int v, char *err, size_t errlen)
{
	char have[16], need[16];
	if (v >= KVN_GPU_MIN_DRIVER)
		return 0;
	kvn_gpu_version_str(v, have, sizeof(have));
	kvn_gpu_version_str(KVN_GPU_MIN_DRIVER, need, sizeof(need));
	return kvn_seterr(
	    -ENOTSUP, err, errlen,
	    "the NVIDIA driver supports CUDA %s (cuDriverGetVersion %d); kvnode needs "
	    "CUDA %s (%d) or newer: update the driver",
	    have, v, need, KVN_GPU_MIN_DRIVER);
}

#if KVN_GPU_CUDA

#define KVN_STR_(x) #x
#define KVN_STR(x)  KVN_STR_(x) /* expands first: "cuMemAlloc_v2" */

int
kvn_gpu_cuerr(const struct kvn_gpu *gpu, CUresult r, char *err, size_t errlen, const char *fmt, ...)
{
	const char *name = NULL, *text = NULL;
	char what[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	if (gpu && gpu->f.p_cuGetErrorName && gpu->f.p_cuGetErrorName(r, &name) != CUDA_SUCCESS)
		name = NULL;
	if (gpu && gpu->f.p_cuGetErrorString && gpu->f.p_cuGetErrorString(r, &text) != CUDA_SUCCESS)
		text = NULL;
	int code = r == CUDA_ERROR_OUT_OF_MEMORY		    ? -ENOMEM
		   : r == CUDA_ERROR_NO_DEVICE			    ? -ENODEV
		   : r == CUDA_ERROR_INVALID_DEVICE		    ? -ENODEV
		   : r == CUDA_ERROR_INVALID_VALUE		    ? -EINVAL
		   : r == CUDA_ERROR_NOT_SUPPORTED		    ? -EOPNOTSUPP
		   : r == CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED ? -EEXIST
								    : -EIO;
	if (name)
		return kvn_seterr(code, err, errlen, "%s: %s (%s)", what, name,
				  text ? text : "no description");
	return kvn_seterr(code, err, errlen, "%s: CUDA error %d", what, (int)r);
}

/* The table of functions: a required one missing refuses the driver, naming it. */
static int
resolve(struct kvn_gpu *g, char *err, size_t errlen)
{
	void *p;
#define KVN_CU_RESOLVE(fn, required)                                                               \
	p = dlsym(g->lib, KVN_STR(fn));                                                            \
	if (!p && (required))                                                                      \
		return kvn_seterr(-ENOTSUP, err, errlen,                                           \
				  "%s has no %s (driver CUDA version %d): update the NVIDIA "      \
				  "driver",                                                        \
				  KVN_GPU_LIBCUDA, KVN_STR(fn), g->driver_version);                \
	memcpy(&g->f.p_##fn, &p, sizeof(p));
	KVN_CU_FUNCTIONS(KVN_CU_RESOLVE)
#undef KVN_CU_RESOLVE
	return 0;
}

/* dlopen, then the version before anything else: an older driver may lack the symbols, and
 * "needs 11.7" is a better message than a missing function. */
static int
load(struct kvn_gpu *g, char *err, size_t errlen)
{
	g->lib = dlopen(KVN_GPU_LIBCUDA, RTLD_NOW | RTLD_LOCAL);
	if (!g->lib) {
		const char *why = dlerror();
		return kvn_seterr(-ENOENT, err, errlen,
				  "%s not found (no NVIDIA driver on this host): dlopen: %s",
				  KVN_GPU_LIBCUDA, why ? why : "unknown error");
	}
	void *p = dlsym(g->lib, "cuDriverGetVersion");
	CUresult (*get_version)(int *);
	if (!p)
		return kvn_seterr(-ENOTSUP, err, errlen, "%s has no cuDriverGetVersion",
				  KVN_GPU_LIBCUDA);
	memcpy(&get_version, &p, sizeof(p));
	CUresult r = get_version(&g->driver_version);
	if (r != CUDA_SUCCESS)
		return kvn_seterr(-EIO, err, errlen, "cuDriverGetVersion: CUDA error %d", (int)r);
	int rc = kvn_gpu_check_version(g->driver_version, err, errlen);
	return rc ? rc : resolve(g, err, errlen);
}

int
kvn_gpu_open(struct kvn_gpu **out, char *err, size_t errlen)
{
	struct kvn_gpu *g = calloc(1, sizeof(*g));
	if (!g)
		return kvn_seterr(-ENOMEM, err, errlen, "out of memory");
	pthread_mutex_init(&g->lock, NULL);
	int rc = load(g, err, errlen);
	if (rc)
		goto fail;
	CUresult r = g->f.p_cuInit(0);
	if (r == CUDA_ERROR_NO_DEVICE) {
		rc = kvn_seterr(-ENODEV, err, errlen,
				"no CUDA device on this host (cuInit: "
				"CUDA_ERROR_NO_DEVICE)");
		goto fail;
	}
	if (r != CUDA_SUCCESS) {
		rc = kvn_gpu_cuerr(g, r, err, errlen, "cuInit");
		goto fail;
	}
	if ((r = g->f.p_cuDeviceGetCount(&g->ndev)) != CUDA_SUCCESS) {
		rc = kvn_gpu_cuerr(g, r, err, errlen, "cuDeviceGetCount");
		goto fail;
	}
	if (g->ndev <= 0) {
		rc = kvn_seterr(-ENODEV, err, errlen,
				"no CUDA device on this host "
				"(cuDeviceGetCount: 0)");
		goto fail;
	}
	if (g->ndev > KVN_GPU_MAX_DEVICES)
		g->ndev = KVN_GPU_MAX_DEVICES;
	*out = g;
	return 0;
fail:
	kvn_gpu_close(g);
	return rc;
}

void
kvn_gpu_close(struct kvn_gpu *g)
{
	if (!g)
		return;
	for (int i = 0; i < g->ndev; i++)
		if (g->ctx[i])
			g->f.p_cuDevicePrimaryCtxRelease(g->dev[i]);
	if (g->lib)
		dlclose(g->lib);
	pthread_mutex_destroy(&g->lock);
	free(g);
}

int
kvn_gpu_driver_version(const struct kvn_gpu *g)
{
	return g ? g->driver_version : 0;
}

int
kvn_gpu_device_count(const struct kvn_gpu *g)
{
	return g ? g->ndev : 0;
}

bool
kvn_gpu_has_dmabuf(const struct kvn_gpu *g)
{
	return g && g->f.p_cuMemGetHandleForAddressRange;
}

static int
absent(const struct kvn_gpu *g, int dev, char *err, size_t errlen)
{
	return kvn_seterr(-ENODEV, err, errlen,
			  "GPU %d absent: this host has %d CUDA device%s (0 to %d)", dev, g->ndev,
			  g->ndev == 1 ? "" : "s", g->ndev - 1);
}

/* Contexts are retained lazily and kept until close: retaining is a driver round trip, and
 * the primary context is shared with any other CUDA user of the process (the inference
 * engine), which is why it is used instead of a context of our own. */
static int
retain(struct kvn_gpu *g, int dev, char *err, size_t errlen)
{
	CUresult r;
	CUcontext ctx;
	if ((r = g->f.p_cuDeviceGet(&g->dev[dev], dev)) != CUDA_SUCCESS)
		return kvn_gpu_cuerr(g, r, err, errlen, "cuDeviceGet(%d)", dev);
	if ((r = g->f.p_cuDevicePrimaryCtxRetain(&ctx, g->dev[dev])) != CUDA_SUCCESS)
		return kvn_gpu_cuerr(g, r, err, errlen, "cuDevicePrimaryCtxRetain(GPU %d)", dev);
	__atomic_store_n(&g->ctx[dev], ctx, __ATOMIC_RELEASE);
	return 0;
}

int
kvn_gpu_use_device(struct kvn_gpu *g, int dev, char *err, size_t errlen)
{
	if (!g || dev < 0 || dev >= g->ndev)
		return g ? absent(g, dev, err, errlen) : kvn_gpu_no_headers(err, errlen);
	CUcontext ctx = __atomic_load_n(&g->ctx[dev], __ATOMIC_ACQUIRE);
	if (!ctx) { /* the first use on any thread: retain it once */
		pthread_mutex_lock(&g->lock);
		int rc = g->ctx[dev] ? 0 : retain(g, dev, err, errlen);
		ctx = g->ctx[dev];
		pthread_mutex_unlock(&g->lock);
		if (rc)
			return rc;
	}
	CUresult r = g->f.p_cuCtxSetCurrent(ctx);
	if (r != CUDA_SUCCESS)
		return kvn_gpu_cuerr(g, r, err, errlen, "cuCtxSetCurrent(GPU %d)", dev);
	return 0;
}

#else /* !KVN_GPU_CUDA */

struct kvn_gpu {
	int unused;
};

int
kvn_gpu_open(struct kvn_gpu **out, char *err, size_t errlen)
{
	*out = NULL;
	return kvn_gpu_no_headers(err, errlen);
}

void
kvn_gpu_close(struct kvn_gpu *g)
{
	free(g);
}

int
kvn_gpu_driver_version(const struct kvn_gpu *g)
{
	(void)g;
	return 0;
}

int
kvn_gpu_device_count(const struct kvn_gpu *g)
{
	(void)g;
	return 0;
}

bool
kvn_gpu_has_dmabuf(const struct kvn_gpu *g)
{
	(void)g;
	return false;
}

int
kvn_gpu_use_device(struct kvn_gpu *g, int dev, char *err, size_t errlen)
{
	(void)g;
	(void)dev;
	return kvn_gpu_no_headers(err, errlen);
}

#endif
