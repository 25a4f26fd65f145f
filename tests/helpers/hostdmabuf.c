/* A dma-buf of host memory from whichever exporter this kernel has (tests/helpers/hostdmabuf.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/dma-heap.h>
#include <linux/udmabuf.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "tests/helpers/hostdmabuf.h"

/* The DRM uAPI this needs (Linux include/uapi/drm/drm.h and drm_mode.h; Debian ships them in
 * libdrm-dev, which the build does not need otherwise): the driver's name, a dumb buffer and
 * its PRIME export. These numbers are the kernel's stable ABI. */
struct kvn_drm_version {
	int major, minor, patchlevel;
	size_t name_len;
	char *name;
	size_t date_len;
	char *date;
	size_t desc_len;
	char *desc;
};
struct kvn_drm_create_dumb {
	uint32_t height, width, bpp, flags, handle, pitch;
	uint64_t size;
};
struct kvn_drm_destroy_dumb {
	uint32_t handle;
};
struct kvn_drm_prime_handle {
	uint32_t handle, flags;
	int32_t fd;
};
#define KVN_DRM_IOCTL_VERSION		 _IOWR('d', 0x00, struct kvn_drm_version)
#define KVN_DRM_IOCTL_PRIME_HANDLE_TO_FD _IOWR('d', 0x2d, struct kvn_drm_prime_handle)
#define KVN_DRM_IOCTL_MODE_CREATE_DUMB	 _IOWR('d', 0xB2, struct kvn_drm_create_dumb)
#define KVN_DRM_IOCTL_MODE_DESTROY_DUMB	 _IOWR('d', 0xB4, struct kvn_drm_destroy_dumb)

static void
add_why(char *why, size_t whylen, const char *fmt, const char *a, int e)
{
	size_t o = strlen(why);
	if (o + 4 >= whylen)
		return;
	snprintf(why + o, whylen - o, "%s", o ? "; " : "");
	o = strlen(why);
	snprintf(why + o, whylen - o, fmt, a, strerror(e));
}

static int
from_heap(size_t len, struct hostdmabuf *b, char *why, size_t whylen)
{
	const char *p = "/dev/dma_heap/system";
	int h = open(p, O_RDONLY | O_CLOEXEC);
	if (h < 0) {
		int e = errno;
		add_why(why, whylen, "no %s (CONFIG_DMABUF_HEAPS_SYSTEM): %s", p, e);
		return -e;
	}
	struct dma_heap_allocation_data a = {.len = len, .fd_flags = O_RDWR | O_CLOEXEC};
	int rc = ioctl(h, DMA_HEAP_IOCTL_ALLOC, &a) ? -errno : 0;
	close(h);
	if (rc) {
		add_why(why, whylen, "%s: DMA_HEAP_IOCTL_ALLOC: %s", p, -rc);
		return rc;
	}
	b->fd = (int)a.fd;
	b->via = "dma_heap";
	return 0;
}

static int
from_udmabuf(size_t len, struct hostdmabuf *b, char *why, size_t whylen)
{
	const char *p = "/dev/udmabuf";
	int u = open(p, O_RDWR | O_CLOEXEC);
	if (u < 0) {
		int e = errno;
		add_why(why, whylen, "no %s (CONFIG_UDMABUF): %s", p, e);
		return -e;
	}
	/* udmabuf wants a sealed-against-shrinking memfd whose pages it can pin. */
	int m = memfd_create("kvn-udmabuf", MFD_ALLOW_SEALING | MFD_CLOEXEC);
	int rc =
	    m < 0 || ftruncate(m, (off_t)len) || fcntl(m, F_ADD_SEALS, F_SEAL_SHRINK) ? -errno : 0;
	if (!rc) {
		struct udmabuf_create c = {
		    .memfd = (uint32_t)m, .flags = UDMABUF_FLAGS_CLOEXEC, .size = len};
		int fd = ioctl(u, UDMABUF_CREATE, &c);
		rc = fd < 0 ? -errno : 0;
		b->fd = fd;
	}
	close(u);
	if (rc) {
		add_why(why, whylen, "%s: UDMABUF_CREATE: %s", p, -rc);
		if (m >= 0)
			close(m);
		return rc;
	}
	b->memfd = m;
	b->via = "udmabuf";
	return 0;
}

static int
from_vgem(size_t len, struct hostdmabuf *b, char *why, size_t whylen)
{
	DIR *d = opendir("/dev/dri");
	struct dirent *e;
	int rc = -ENOENT;
	if (!d) {
		int err = errno;
		add_why(why, whylen, "no %s (no DRM driver, vgem not loaded): %s", "/dev/dri", err);
		return -err;
	}
	while (rc && (e = readdir(d))) {
		char p[300], name[32] = "";
		if (strncmp(e->d_name, "card", 4))
			continue;
		snprintf(p, sizeof(p), "/dev/dri/%s", e->d_name);
		int fd = open(p, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			continue;
		struct kvn_drm_version v = {.name_len = sizeof(name) - 1, .name = name};
		if (ioctl(fd, KVN_DRM_IOCTL_VERSION, &v) || strcmp(name, "vgem")) {
			close(fd);
			continue;
		}
		/* One row of len bytes: vgem's dumb buffers are shmem pages of that size. */
		struct kvn_drm_create_dumb c = {
		    .height = 1, .width = (uint32_t)(len / 4), .bpp = 32};
		struct kvn_drm_prime_handle ph = {.flags = O_CLOEXEC | O_RDWR};
		if (ioctl(fd, KVN_DRM_IOCTL_MODE_CREATE_DUMB, &c)) {
			rc = -errno;
			add_why(why, whylen, "%s (vgem): DRM_IOCTL_MODE_CREATE_DUMB: %s", p, -rc);
			close(fd);
			break;
		}
		ph.handle = c.handle;
		if (ioctl(fd, KVN_DRM_IOCTL_PRIME_HANDLE_TO_FD, &ph)) {
			rc = -errno;
			add_why(why, whylen, "%s (vgem): DRM_IOCTL_PRIME_HANDLE_TO_FD: %s", p, -rc);
			ioctl(fd, KVN_DRM_IOCTL_MODE_DESTROY_DUMB,
			      &(struct kvn_drm_destroy_dumb){c.handle});
			close(fd);
			break;
		}
		b->fd = ph.fd;
		b->drm = fd;
		b->handle = c.handle;
		b->via = "vgem";
		rc = 0;
	}
	closedir(d);
	if (rc == -ENOENT)
		add_why(why, whylen, "no vgem among %s: %s", "/dev/dri", ENOENT);
	return rc;
}

int
hostdmabuf_create(size_t len, struct hostdmabuf *b, char *why, size_t whylen)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	memset(b, 0, sizeof(*b));
	b->fd = b->memfd = b->drm = -1;
	b->len = (len + pg - 1) & ~(pg - 1);
	why[0] = '\0';
	int rc = from_heap(b->len, b, why, whylen);
	if (rc)
		rc = from_udmabuf(b->len, b, why, whylen);
	if (rc)
		rc = from_vgem(b->len, b, why, whylen);
	if (rc)
		return rc;
	b->map = mmap(NULL, b->len, PROT_READ | PROT_WRITE, MAP_SHARED, b->fd, 0);
	if (b->map == MAP_FAILED) {
		rc = -errno;
		b->map = NULL;
		add_why(why, whylen, "mmap of the %s dma-buf: %s", b->via, -rc);
		hostdmabuf_destroy(b);
		return rc;
	}
	return 0;
}

void
hostdmabuf_destroy(struct hostdmabuf *b)
{
	if (b->map)
		munmap(b->map, b->len);
	if (b->fd >= 0)
		close(b->fd);
	if (b->drm >= 0) {
		ioctl(b->drm, KVN_DRM_IOCTL_MODE_DESTROY_DUMB,
		      &(struct kvn_drm_destroy_dumb){b->handle});
		close(b->drm);
	}
	if (b->memfd >= 0)
		close(b->memfd);
	memset(b, 0, sizeof(*b));
	b->fd = b->memfd = b->drm = -1;
}
