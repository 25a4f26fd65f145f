/* gpu/ on a real NVIDIA device (ctest -L gpu, scripts/gpu-checks): device info, device memory,
 * dma-buf export, and staging through the "cuda" copy engine from 1 byte to 64 MiB,
 * byte-verified. Every test is skipped, with kvn_gpu_open's answer as the reason, on a host
 * where the driver or a device is missing. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gpu/gpu.h"
#include "gpu/staging.h"
#include "tests/helpers/pattern.h"

static char err[1024];

static struct kvn_gpu *
gpu_or_skip(void)
{
	struct kvn_gpu *gpu = NULL;
	char why[1024];
	int rc = kvn_gpu_open(&gpu, why, sizeof(why));
	if (rc)
		cr_skip_test("no usable GPU (%d): %s", rc, why);
	return gpu;
}

Test(gpu_device, open_finds_devices_with_names_and_pci_ids)
{
	struct kvn_gpu *gpu = gpu_or_skip();
	int n = kvn_gpu_device_count(gpu);
	cr_assert_gt(n, 0);
	cr_assert_geq(kvn_gpu_driver_version(gpu), KVN_GPU_MIN_DRIVER);
	for (int d = 0; d < n; d++) {
		struct kvn_gpu_info in;
		cr_assert_eq(kvn_gpu_device_info(gpu, d, &in, err, sizeof(err)), 0, "%s", err);
		cr_assert_eq(in.index, d);
		cr_assert_neq(in.name[0], '\0');
		/* dddd:bb:dd.f, what /sys/bus/pci/devices/ names it */
		cr_assert_eq(strlen(in.pci_bus_id), 12, "PCI id \"%s\"", in.pci_bus_id);
		cr_assert_gt(in.cc_major, 0);
		cr_log_info("GPU %d: %s, PCI %s, compute %d.%d", d, in.name, in.pci_bus_id,
			    in.cc_major, in.cc_minor);
	}
	struct kvn_gpu_info in;
	cr_assert_eq(kvn_gpu_device_info(gpu, n, &in, err, sizeof(err)), -ENODEV);
	cr_assert(strstr(err, "absent: this host has"), "%s", err);
	kvn_gpu_close(gpu);
}

Test(gpu_device, device_memory_is_allocated_freed_and_known_as_device_memory)
{
	struct kvn_gpu *gpu = gpu_or_skip();
	static const size_t sizes[] = {1, 4096, 1 << 20, 64 << 20, 256 << 20};
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		struct kvn_gpu_mem *m = NULL;
		cr_assert_eq(kvn_gpu_mem_alloc(gpu, 0, sizes[i], &m, err, sizeof(err)), 0,
			     "%zu bytes: %s", sizes[i], err);
		cr_assert_neq(kvn_gpu_mem_ptr(m), 0);
		cr_assert_eq(kvn_gpu_mem_len(m), sizes[i]);
		int dev = -1;
		cr_assert_eq(kvn_gpu_pointer_device(gpu, (void *)(uintptr_t)kvn_gpu_mem_ptr(m),
						    &dev, err, sizeof(err)),
			     1, "%s", err);
		cr_assert_eq(dev, 0);
		kvn_gpu_mem_free(m);
	}
	int dev = -1, host = 0;
	cr_assert_eq(kvn_gpu_pointer_device(gpu, &host, &dev, err, sizeof(err)), 0,
		     "a stack address is not device memory: %s", err);
	struct kvn_gpu_mem *m = NULL;
	cr_assert_eq(kvn_gpu_mem_alloc(gpu, 0, (size_t)1 << 50, &m, err, sizeof(err)), -ENOMEM);
	cr_assert(strstr(err, "CUDA_ERROR_OUT_OF_MEMORY"), "%s", err);
	cr_assert_eq(kvn_gpu_mem_alloc(gpu, 0, 0, &m, err, sizeof(err)), -EINVAL);
	kvn_gpu_close(gpu);
}

Test(gpu_device, dma_buf_export_of_an_offset_inside_an_allocation)
{
	struct kvn_gpu *gpu = gpu_or_skip();
	struct kvn_gpu_mem *m = NULL;
	cr_assert_eq(kvn_gpu_mem_alloc(gpu, 0, 8 << 20, &m, err, sizeof(err)), 0, "%s", err);
	int fd = -1;
	uint64_t off = 0;
	int rc = kvn_gpu_dmabuf_export(gpu, 0, kvn_gpu_mem_ptr(m) + 65536, 1 << 20, &fd, &off, err,
				       sizeof(err));
	if (rc == -EOPNOTSUPP) {
		kvn_gpu_mem_free(m);
		kvn_gpu_close(gpu);
		cr_skip_test("this driver or device cannot export dma-buf: %s", err);
	}
	cr_assert_eq(rc, 0, "%s", err);
	cr_assert_geq(fd, 0);
	cr_assert_eq(off, 65536, "the offset of the pointer in its allocation");
	close(fd);
	cr_assert_eq(kvn_gpu_dmabuf_export(gpu, 0, kvn_gpu_mem_ptr(m), 16 << 20, &fd, &off, err,
					   sizeof(err)),
		     -EINVAL, "a range past the allocation");
	kvn_gpu_mem_free(m);
	kvn_gpu_close(gpu);
}

static void
staged_round_trip(struct kvn_staging *st, struct kvn_gpu_mem *m, size_t len, uint64_t seed)
{
	unsigned char *src = malloc(len), *back = malloc(len);
	cr_assert(src && back);
	pattern_fill(src, len, seed);
	memset(back, 0, len);
	cr_assert_eq(kvn_staging_put_buf(st, kvn_gpu_mem_ptr(m), src, len, err, sizeof(err)), 0,
		     "put %zu: %s", len, err);
	cr_assert_eq(kvn_staging_get_buf(st, back, kvn_gpu_mem_ptr(m), len, err, sizeof(err)), 0,
		     "get %zu: %s", len, err);
	cr_assert(pattern_check(back, len, seed), "%zu bytes through the device: wrong bytes", len);
	free(src);
	free(back);
}

Test(gpu_device, staging_put_get_through_the_cuda_engine_1_byte_to_64_MiB)
{
	struct kvn_gpu *gpu = gpu_or_skip();
	struct kvn_copy_engine *e = NULL;
	struct kvn_staging *st = NULL;
	struct kvn_gpu_mem *m = NULL;
	cr_assert_eq(kvn_gpu_copy_engine(gpu, 0, 2, &e, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(e->ops->name, "cuda");
	cr_assert_eq(kvn_staging_create(e, 8 << 20, &st, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kvn_gpu_mem_alloc(gpu, 0, 64 << 20, &m, err, sizeof(err)), 0, "%s", err);
	static const size_t sizes[] = {
	    1, 2, 4095, 4096, 4097, 65536, 1 << 20, (4 << 20) + 3, 8 << 20, 16 << 20, 64 << 20};
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
		staged_round_trip(st, m, sizes[i], 77 + i);
	kvn_gpu_mem_free(m);
	kvn_staging_destroy(st);
	kvn_copy_engine_destroy(e);
	kvn_gpu_close(gpu);
}

Test(gpu_device, cuda_engine_copies_directly_on_each_stream)
{
	struct kvn_gpu *gpu = gpu_or_skip();
	struct kvn_copy_engine *e = NULL;
	struct kvn_gpu_mem *m = NULL;
	size_t len = 3 << 20;
	cr_assert_eq(kvn_gpu_copy_engine(gpu, 0, 2, &e, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kvn_gpu_mem_alloc(gpu, 0, len, &m, err, sizeof(err)), 0, "%s", err);
	unsigned char *a = malloc(len), *b = calloc(1, len);
	pattern_fill(a, len, 5);
	cr_assert_eq(e->ops->copy_to_dev(e, kvn_gpu_mem_ptr(m), a, len, 1, err, sizeof(err)), 0,
		     "%s", err);
	cr_assert_eq(e->ops->sync(e, 1, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(e->ops->copy_to_host(e, b, kvn_gpu_mem_ptr(m), len, 0, err, sizeof(err)), 0,
		     "%s", err);
	cr_assert_eq(e->ops->sync(e, 0, err, sizeof(err)), 0, "%s", err);
	cr_assert(pattern_check(b, len, 5));
	cr_assert_eq(e->ops->sync(e, 2, err, sizeof(err)), -EINVAL);
	free(a);
	free(b);
	kvn_gpu_mem_free(m);
	kvn_copy_engine_destroy(e);
	kvn_gpu_close(gpu);
}
