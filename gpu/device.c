/* A device's description, its memory (cuMemAlloc), dma-buf export, host registration and
 * pointer queries: each call makes the device's primary context current first. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "gpu/driver.h"

struct kvn_gpu_mem {
	struct kvn_gpu *gpu;
	int dev;
	kvn_devptr_t ptr;
	size_t len;
};

kvn_devptr_t
kvn_gpu_mem_ptr(const struct kvn_gpu_mem *m)
{
	return m ? m->ptr : 0;
}

size_t
kvn_gpu_mem_len(const struct kvn_gpu_mem *m)
{
	return m ? m->len : 0;
}

int
kvn_gpu_mem_device(const struct kvn_gpu_mem *m)
{
	return m ? m->dev : -1;
}

#if KVN_GPU_CUDA

static int
attr(struct kvn_gpu *g, int dev, CUdevice_attribute a, int *v, const char *what, char *err,
     size_t errlen)
{
	CUresult r = g->f.p_cuDeviceGetAttribute(v, a, g->dev[dev]);
	return r == CUDA_SUCCESS ? 0
				 : kvn_gpu_cuerr(g, r, err, errlen,
						 "cuDeviceGetAttribute(GPU %d, %s)", dev, what);
}

int
kvn_gpu_device_info(struct kvn_gpu *g, int dev, struct kvn_gpu_info *info, char *err, size_t errlen)
{
	int rc = kvn_gpu_use_device(g, dev, err, errlen);
	if (rc)
		return rc;
	memset(info, 0, sizeof(*info));
	info->index = dev;
	CUresult r = g->f.p_cuDeviceGetName(info->name, (int)sizeof(info->name), g->dev[dev]);
	if (r != CUDA_SUCCESS)
		return kvn_gpu_cuerr(g, r, err, errlen, "cuDeviceGetName(GPU %d)", dev);
	r = g->f.p_cuDeviceGetPCIBusId(info->pci_bus_id, (int)sizeof(info->pci_bus_id),
				       g->dev[dev]);
	if (r != CUDA_SUCCESS)
		return kvn_gpu_cuerr(g, r, err, errlen, "cuDeviceGetPCIBusId(GPU %d)", dev);
	int ua = 0;
	if ((rc = attr(g, dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, &info->cc_major,
		       "compute capability", err, errlen)) ||
	    (rc = attr(g, dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, &info->cc_minor,
		       "compute capability", err, errlen)) ||
	    (rc = attr(g, dev, CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING, &ua, "unified addressing",
		       err, errlen)))
		return rc;
	info->unified_addressing = ua != 0;
	return 0;
}

int
kvn_gpu_mem_alloc(struct kvn_gpu *g, int dev, size_t len, struct kvn_gpu_mem **out, char *err,
		  size_t errlen)
{
	if (!len)
		return kvn_seterr(-EINVAL, err, errlen, "GPU %d: an allocation of 0 bytes", dev);
	int rc = kvn_gpu_use_device(g, dev, err, errlen);
	if (rc)
		return rc;
	struct kvn_gpu_mem *m = calloc(1, sizeof(*m));
	if (!m)
		return kvn_seterr(-ENOMEM, err, errlen, "out of memory");
	CUdeviceptr p;
	CUresult r = g->f.p_cuMemAlloc(&p, len);
	if (r != CUDA_SUCCESS) {
		free(m);
		return kvn_gpu_cuerr(g, r, err, errlen, "cuMemAlloc(%zu bytes) on GPU %d", len,
				     dev);
	}
	*m = (struct kvn_gpu_mem){.gpu = g, .dev = dev, .ptr = (kvn_devptr_t)p, .len = len};
	*out = m;
	return 0;
}

void
kvn_gpu_mem_free(struct kvn_gpu_mem *m)
{
	if (!m)
		return;
	char err[256];
	CUresult r;
	if (kvn_gpu_use_device(m->gpu, m->dev, err, sizeof(err)))
		kvn_warn("gpu", "freeing %zu bytes on GPU %d: %s", m->len, m->dev, err);
	else if ((r = m->gpu->f.p_cuMemFree((CUdeviceptr)m->ptr)) != CUDA_SUCCESS) {
		kvn_gpu_cuerr(m->gpu, r, err, sizeof(err), "cuMemFree on GPU %d", m->dev);
		kvn_warn("gpu", "%s", err);
	}
	free(m);
}

/* dma-buf needs the allocation's base: the driver exports whole allocations (and page
 * aligned ranges), so the fd starts at the base and the caller's pointer is an offset in it,
 * which ibv_reg_dmabuf_mr takes as its offset argument. */
int
kvn_gpu_dmabuf_export(struct kvn_gpu *g, int dev, kvn_devptr_t ptr, size_t len, int *fd,
		      uint64_t *offset, char *err, size_t errlen)
{
	if (!kvn_gpu_has_dmabuf(g))
		return kvn_seterr(-EOPNOTSUPP, err, errlen,
				  "dma-buf: the driver has no cuMemGetHandleForAddressRange");
	int rc = kvn_gpu_use_device(g, dev, err, errlen);
	if (rc)
		return rc;
	CUdeviceptr base;
	size_t size;
	CUresult r = g->f.p_cuMemGetAddressRange(&base, &size, (CUdeviceptr)ptr);
	if (r != CUDA_SUCCESS)
		return kvn_gpu_cuerr(g, r, err, errlen, "cuMemGetAddressRange(0x%llx) on GPU %d",
				     (unsigned long long)ptr, dev);
	if (ptr + len > (kvn_devptr_t)base + size)
		return kvn_seterr(-EINVAL, err, errlen,
				  "dma-buf: [0x%llx, +%zu) runs past its allocation (%zu bytes)",
				  (unsigned long long)ptr, len, size);
	/* The driver wants a host-page aligned range (UCX rounds the same way): cuMemAlloc's
	 * base is aligned, its size need not be. Device memory is mapped in pages of 64 KiB or
	 * more, so the rounded tail is mapped memory; the tier allocates large regions, where
	 * it is its own. */
	long page = sysconf(_SC_PAGESIZE);
	size_t asize = (size + (size_t)page - 1) & ~((size_t)page - 1);
	int f = -1;
	r = g->f.p_cuMemGetHandleForAddressRange(&f, base, asize,
						 CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0);
	if (r != CUDA_SUCCESS)
		return kvn_gpu_cuerr(g, r, err, errlen,
				     "cuMemGetHandleForAddressRange(dma-buf, %zu bytes) on GPU %d",
				     size, dev);
	*fd = f;
	*offset = ptr - (kvn_devptr_t)base;
	return 0;
}

int
kvn_gpu_host_register(struct kvn_gpu *g, int dev, void *p, size_t len, char *err, size_t errlen)
{
	int rc = kvn_gpu_use_device(g, dev, err, errlen);
	if (rc)
		return rc;
	CUresult r = g->f.p_cuMemHostRegister(p, len, CU_MEMHOSTREGISTER_PORTABLE);
	return r == CUDA_SUCCESS
		   ? 0
		   : kvn_gpu_cuerr(g, r, err, errlen, "cuMemHostRegister(%zu bytes) on GPU %d", len,
				   dev);
}

void
kvn_gpu_host_unregister(struct kvn_gpu *g, int dev, void *p)
{
	char err[256];
	if (kvn_gpu_use_device(g, dev, err, sizeof(err)) == 0)
		g->f.p_cuMemHostUnregister(p);
}

int
kvn_gpu_pointer_device(struct kvn_gpu *g, const void *ptr, int *dev, char *err, size_t errlen)
{
	unsigned int type = 0;
	int ordinal = -1;
	CUdeviceptr p = (CUdeviceptr)(uintptr_t)ptr;
	CUresult r = g->f.p_cuPointerGetAttribute(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, p);
	if (r == CUDA_ERROR_INVALID_VALUE)
		return 0; /* memory the driver has never seen: plain host memory */
	if (r != CUDA_SUCCESS)
		return kvn_gpu_cuerr(g, r, err, errlen, "cuPointerGetAttribute(%p)", ptr);
	if (type != CU_MEMORYTYPE_DEVICE)
		return 0;
	r = g->f.p_cuPointerGetAttribute(&ordinal, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, p);
	if (r != CUDA_SUCCESS)
		return kvn_gpu_cuerr(g, r, err, errlen, "cuPointerGetAttribute(%p, ordinal)", ptr);
	*dev = ordinal;
	return 1;
}

#else /* !KVN_GPU_CUDA: every call says so */

int
kvn_gpu_device_info(struct kvn_gpu *g, int dev, struct kvn_gpu_info *info, char *err, size_t errlen)
{
	(void)g, (void)dev, (void)info;
	return kvn_gpu_no_headers(err, errlen);
}

int
kvn_gpu_mem_alloc(struct kvn_gpu *g, int dev, size_t len, struct kvn_gpu_mem **out, char *err,
		  size_t errlen)
{
	(void)g, (void)dev, (void)len, (void)out;
	return kvn_gpu_no_headers(err, errlen);
}

void
kvn_gpu_mem_free(struct kvn_gpu_mem *m)
{
	free(m);
}

int
kvn_gpu_dmabuf_export(struct kvn_gpu *g, int dev, kvn_devptr_t ptr, size_t len, int *fd,
		      uint64_t *offset, char *err, size_t errlen)
{
	(void)g, (void)dev, (void)ptr, (void)len, (void)fd, (void)offset;
	return kvn_gpu_no_headers(err, errlen);
}

int
kvn_gpu_host_register(struct kvn_gpu *g, int dev, void *p, size_t len, char *err, size_t errlen)
{
	(void)g, (void)dev, (void)p, (void)len;
	return kvn_gpu_no_headers(err, errlen);
}

void
kvn_gpu_host_unregister(struct kvn_gpu *g, int dev, void *p)
{
	(void)g, (void)dev, (void)p;
}

int
kvn_gpu_pointer_device(struct kvn_gpu *g, const void *ptr, int *dev, char *err, size_t errlen)
{
	(void)g, (void)ptr, (void)dev;
	return kvn_gpu_no_headers(err, errlen);
}

#endif
