/* A GPU's memory as the transports' registration ladder sees it (kvnode/transport.h, reg_dev):
 * its dma-buf is kvn_gpu_dmabuf_export's, its host staging area page-locked host memory that
 * the owner fills with device -> host copies (docs/gpu.md "Registration"). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/log.h"
#include "gpu/gpu.h"

static int
src_dmabuf(void *ctx, void *ptr, size_t len, int *fd, uint64_t *offset, char *err, size_t errlen)
{
	struct kvn_gpu_dev_src *s = ctx;
	return kvn_gpu_dmabuf_export(s->gpu, s->dev, (kvn_devptr_t)(uintptr_t)ptr, len, fd, offset,
				     err, errlen);
}

/* The mapping's first page holds its length (staging_done is given only the pointer); the area
 * starts after it, at ptr's offset in a page, as the transports need (kvnode/transport.h). */
static size_t
page_size(void)
{
	return (size_t)sysconf(_SC_PAGESIZE);
}

static int
src_staging(void *ctx, void *ptr, size_t len, void **host, char *err, size_t errlen)
{
	struct kvn_gpu_dev_src *s = ctx;
	size_t pg = page_size(), off = (uintptr_t)ptr & (pg - 1);
	size_t maplen = pg + ((off + len + pg - 1) & ~(pg - 1));
	char *m = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return kvn_seterr(-ENOMEM, err, errlen,
				  "a host staging area of %zu bytes for GPU %d: mmap: %s", len,
				  s->dev, strerror(errno));
	madvise(m, maplen, MADV_DONTFORK); /* plugins forked later never share it */
	memcpy(m, &maplen, sizeof(maplen));
	/* Page-locked, so copies into it are DMA the GPU runs on its own (cuMemHostRegister). */
	int rc = kvn_gpu_host_register(s->gpu, s->dev, m + pg, maplen - pg, err, errlen);
	if (rc < 0) {
		munmap(m, maplen);
		return rc;
	}
	*host = m + pg + off;
	return 0;
}

static void
src_staging_done(void *ctx, void *ptr, void *host)
{
	struct kvn_gpu_dev_src *s = ctx;
	size_t pg = page_size();
	char *m = (char *)((uintptr_t)host & ~(uintptr_t)(pg - 1)) - pg;
	size_t maplen;
	(void)ptr;
	memcpy(&maplen, m, sizeof(maplen));
	kvn_gpu_host_unregister(s->gpu, s->dev, m + pg);
	munmap(m, maplen);
}

void
kvn_gpu_dev_mem(struct kvn_gpu *gpu, const struct kvn_gpu_info *info, struct kvn_gpu_dev_src *ctx,
		struct kvn_dev_mem *out)
{
	*ctx = (struct kvn_gpu_dev_src){.gpu = gpu, .dev = info->index};
	snprintf(ctx->name, sizeof(ctx->name), "GPU %d (%s, %s)", info->index, info->name,
		 info->pci_bus_id);
	*out = (struct kvn_dev_mem){KVN_DEV_MEM_INIT,
				    .device = ctx->name,
				    .ctx = ctx,
				    .dmabuf = kvn_gpu_has_dmabuf(gpu) ? src_dmabuf : NULL,
				    .staging = src_staging,
				    .staging_done = src_staging_done};
}
