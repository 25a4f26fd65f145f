/* Inside gpu/: the table of driver functions resolved from libcuda.so.1, and the error
 * helper every call site uses. Only compiled with the CUDA headers (KVN_GPU_CUDA). */
#ifndef KVN_GPU_DRIVER_H
#define KVN_GPU_DRIVER_H

#include "gpu/gpu.h"

#if KVN_GPU_CUDA
#include <cuda.h>
#include <pthread.h>

/* Every function kvnode calls, and whether a driver without it is refused (1) or only loses
 * that feature (0). The name given is the header's: cuda.h #defines cuMemAlloc to
 * cuMemAlloc_v2 and so on, so that both the type (the header's own prototype, through
 * __typeof__) and the symbol looked up (the stringized expansion: "cuMemAlloc_v2") are the
 * ones a program linked against libcuda would use. We resolve with dlsym, not
 * cuGetProcAddress: that function's own signature changed in CUDA 12 (cuGetProcAddress_v2
 * takes a fifth argument), while the versioned names below are exported by every driver
 * from 11.7 on. Without CUDA_API_PER_THREAD_DEFAULT_STREAM the async copies are the legacy
 * default-stream variants, which does not matter: they always run on our own streams. */
#define KVN_CU_FUNCTIONS(X)                                                                        \
	X(cuDriverGetVersion, 1)                                                                   \
	X(cuInit, 1)                                                                               \
	X(cuGetErrorName, 1)                                                                       \
	X(cuGetErrorString, 1)                                                                     \
	X(cuDeviceGetCount, 1)                                                                     \
	X(cuDeviceGet, 1)                                                                          \
	X(cuDeviceGetName, 1)                                                                      \
	X(cuDeviceGetAttribute, 1)                                                                 \
	X(cuDeviceGetPCIBusId, 1)                                                                  \
	X(cuDevicePrimaryCtxRetain, 1)                                                             \
	X(cuDevicePrimaryCtxRelease, 1)                                                            \
	X(cuCtxSetCurrent, 1)                                                                      \
	X(cuMemAlloc, 1)                                                                           \
	X(cuMemFree, 1)                                                                            \
	X(cuMemcpyHtoDAsync, 1)                                                                    \
	X(cuMemcpyDtoHAsync, 1)                                                                    \
	X(cuMemcpyDtoDAsync, 1)                                                                    \
	X(cuStreamCreate, 1)                                                                       \
	X(cuStreamSynchronize, 1)                                                                  \
	X(cuStreamDestroy, 1)                                                                      \
	X(cuMemHostRegister, 1)                                                                    \
	X(cuMemHostUnregister, 1)                                                                  \
	X(cuMemGetAddressRange, 1)                                                                 \
	X(cuPointerGetAttribute, 1)                                                                \
	X(cuMemGetHandleForAddressRange, 0)

#define KVN_CU_FIELD(fn, required) __typeof__(fn) *p_##fn;
struct kvn_cu_fns {
	KVN_CU_FUNCTIONS(KVN_CU_FIELD)
};
#undef KVN_CU_FIELD

#define KVN_GPU_MAX_DEVICES 64

struct kvn_gpu {
	void *lib;
	int driver_version;
	int ndev;
	struct kvn_cu_fns f;
	pthread_mutex_t lock;		    /* retaining a context (threads share the handle) */
	CUcontext ctx[KVN_GPU_MAX_DEVICES]; /* retained primary contexts, NULL until used */
	CUdevice dev[KVN_GPU_MAX_DEVICES];
};

/* "what: CUDA_ERROR_OUT_OF_MEMORY (out of memory)" into err; returns the errno that fits the
 * CUDA error (-ENOMEM, -ENODEV, -EINVAL, -EOPNOTSUPP, else -EIO). */
int kvn_gpu_cuerr(const struct kvn_gpu *gpu, CUresult r, char *err, size_t errlen, const char *fmt,
		  ...) __attribute__((format(printf, 5, 6)));
#endif

/* The message of every call in a build without the headers: -ENOTSUP. */
int kvn_gpu_no_headers(char *err, size_t errlen);

#endif
