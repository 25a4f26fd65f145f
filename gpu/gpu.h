/* GPU access through the CUDA driver API, loaded at run time (docs/gpu.md): libcuda.so.1 is
 * dlopen'ed and its functions resolved by name, never linked, so one package runs on hosts
 * with and without an NVIDIA driver. Built without CUDA headers, every call here fails with
 * "built without CUDA headers". */
#ifndef KVN_GPU_GPU_H
#define KVN_GPU_GPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvnode/transport.h"

/* The oldest driver accepted: CUDA 11.7, as cuDriverGetVersion writes it. 11.7 is the first
 * with cuMemGetHandleForAddressRange (dma-buf export), and every symbol resolved here exists
 * in it. */
#define KVN_GPU_MIN_DRIVER 11070
#define KVN_GPU_LIBCUDA	   "libcuda.so.1"

/* A device address (CUdeviceptr: an integer, not a pointer of this process). */
typedef uint64_t kvn_devptr_t;

struct kvn_gpu;	    /* the loaded driver: one per process is enough */
struct kvn_gpu_mem; /* one device allocation */

struct kvn_gpu_info {
	int index;		 /* CUDA ordinal */
	char name[256];		 /* "NVIDIA H100 80GB HBM3" */
	char pci_bus_id[32];	 /* "0000:17:00.0": what a NIC's PCI affinity is compared with */
	int cc_major, cc_minor;	 /* compute capability */
	bool unified_addressing; /* device pointers are unique in the process's address space */
};

/* Whether this build has the CUDA headers (else every call below fails). */
bool kvn_gpu_built_with_cuda(void);

/* Loads libcuda.so.1, checks the driver's version, runs cuInit and counts the devices.
 * -ENOENT: "libcuda.so.1 not found (no NVIDIA driver on this host): dlopen: ...";
 * -ENOTSUP: built without CUDA headers, or a driver older than KVN_GPU_MIN_DRIVER (both
 * versions named), or a driver lacking a function (named); -ENODEV: no CUDA device. */
int kvn_gpu_open(struct kvn_gpu **out, char *err, size_t errlen);
void kvn_gpu_close(struct kvn_gpu *gpu);
/* cuDriverGetVersion's answer: 12040 is CUDA 12.4. */
int kvn_gpu_driver_version(const struct kvn_gpu *gpu);
int kvn_gpu_device_count(const struct kvn_gpu *gpu);
/* -ENODEV "GPU N absent: this host has M CUDA devices" for an index out of range. */
int kvn_gpu_device_info(struct kvn_gpu *gpu, int dev, struct kvn_gpu_info *info, char *err,
			size_t errlen);
/* Retains device dev's primary context (released by kvn_gpu_close) and makes it current on
 * the calling thread: every call below does this itself, since the current context is a
 * per-thread setting. */
int kvn_gpu_use_device(struct kvn_gpu *gpu, int dev, char *err, size_t errlen);
/* Whether the driver has dma-buf export (cuMemGetHandleForAddressRange). */
bool kvn_gpu_has_dmabuf(const struct kvn_gpu *gpu);

/* Device memory: cuMemAlloc on device dev. -ENOMEM with the driver's error name when the
 * device has no room. */
int kvn_gpu_mem_alloc(struct kvn_gpu *gpu, int dev, size_t len, struct kvn_gpu_mem **out, char *err,
		      size_t errlen);
void kvn_gpu_mem_free(struct kvn_gpu_mem *mem);
kvn_devptr_t kvn_gpu_mem_ptr(const struct kvn_gpu_mem *mem);
size_t kvn_gpu_mem_len(const struct kvn_gpu_mem *mem);
int kvn_gpu_mem_device(const struct kvn_gpu_mem *mem);

/* A dma-buf fd for [ptr, ptr + len) of device memory, for ibv_reg_dmabuf_mr: exported from
 * the start of the allocation that holds ptr (cuMemGetAddressRange), so *offset is ptr's
 * offset in the fd. -EOPNOTSUPP when the driver or the device cannot export. */
int kvn_gpu_dmabuf_export(struct kvn_gpu *gpu, int dev, kvn_devptr_t ptr, size_t len, int *fd,
			  uint64_t *offset, char *err, size_t errlen);

/* Page-locks host memory for asynchronous copies (cuMemHostRegister, portable). */
int kvn_gpu_host_register(struct kvn_gpu *gpu, int dev, void *p, size_t len, char *err,
			  size_t errlen);
void kvn_gpu_host_unregister(struct kvn_gpu *gpu, int dev, void *p);

/* Whether ptr is device memory, and of which device (cuPointerGetAttribute): 1 and *dev set,
 * 0 for host memory the driver does not know, or -errno. */
int kvn_gpu_pointer_device(struct kvn_gpu *gpu, const void *ptr, int *dev, char *err,
			   size_t errlen);

/* Device memory for the transports' registration ladder (kvn_transport_ops.reg_dev): out offers
 * dma-buf export (when the driver has it) and a page-locked host staging area, which the owner
 * keeps current with device -> host copies (gpu/staging.h's engine). ctx holds what the
 * callbacks use and must outlive every registration made with out. */
struct kvn_gpu_dev_src {
	struct kvn_gpu *gpu;
	int dev;
	char name[320]; /* "GPU 0 (NVIDIA H200, 0000:17:00.0)": the ladder's log lines name it */
};
void kvn_gpu_dev_mem(struct kvn_gpu *gpu, const struct kvn_gpu_info *info,
		     struct kvn_gpu_dev_src *ctx, struct kvn_dev_mem *out);

/* For the staging copy engine (gpu/staging.h). */
struct kvn_copy_engine;
int kvn_gpu_copy_engine(struct kvn_gpu *gpu, int dev, unsigned nstreams,
			struct kvn_copy_engine **out, char *err, size_t errlen);

/* A driver's version as "12.4". */
void kvn_gpu_version_str(int v, char *buf, size_t len);
/* 0 when version v is KVN_GPU_MIN_DRIVER or newer, else -ENOTSUP naming both. */
int kvn_gpu_check_version(int v, char *err, size_t errlen);

#endif
