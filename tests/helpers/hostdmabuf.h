/* A dma-buf of host memory, for testing the dma-buf way of registration where there is no GPU
 * (the rxe VM): /dev/dma_heap/system, else a memfd through /dev/udmabuf (UDMABUF_CREATE), else
 * a dumb buffer of vgem (DRM's virtual GEM driver) exported by PRIME. It is host memory and
 * stands for no GPU: it lets real ibv_reg_dmabuf_mr calls see a real dma-buf fd. */
#ifndef KVN_TESTS_HELPERS_HOSTDMABUF_H
#define KVN_TESTS_HELPERS_HOSTDMABUF_H

#include <stddef.h>

struct hostdmabuf {
	int fd;	   /* the dma-buf */
	void *map; /* its bytes, mapped through fd */
	size_t len;
	const char *via; /* "dma_heap", "udmabuf", "vgem" */
	int memfd;	 /* udmabuf: the memfd behind it; else -1 */
	int drm;	 /* vgem: the DRM device; else -1 */
	unsigned handle; /* vgem: the dumb buffer */
};

/* len is rounded up to a page. 0, or -errno with why naming what each source answered
 * ("no /dev/dma_heap/system (the kernel has no CONFIG_DMABUF_HEAPS_SYSTEM); ..."). */
int hostdmabuf_create(size_t len, struct hostdmabuf *out, char *why, size_t whylen);
void hostdmabuf_destroy(struct hostdmabuf *b);

#endif
