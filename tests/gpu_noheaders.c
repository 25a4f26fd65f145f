/* gpu/ compiled without the CUDA headers (tests/CMakeLists.txt builds gpu/'s sources once more
 * with KVN_GPU_CUDA=0 into this program): every GPU call answers "built without CUDA
 * headers", and the host staging engine, which needs no CUDA, still works. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "gpu/gpu.h"
#include "gpu/staging.h"

static char err[512];

Test(gpu_noheaders, every_gpu_call_says_built_without_cuda_headers)
{
	struct kvn_gpu *gpu = (struct kvn_gpu *)1;
	struct kvn_copy_engine *e = NULL;
	cr_assert_not(kvn_gpu_built_with_cuda());
	cr_assert_eq(kvn_gpu_open(&gpu, err, sizeof(err)), -ENOTSUP);
	cr_assert(strstr(err, "built without CUDA headers"), "%s", err);
	cr_assert_null(gpu);
	err[0] = '\0';
	cr_assert_eq(kvn_gpu_use_device(NULL, 0, err, sizeof(err)), -ENOTSUP);
	cr_assert(strstr(err, "built without CUDA headers"), "%s", err);
	err[0] = '\0';
	cr_assert_eq(kvn_gpu_copy_engine(NULL, 0, 2, &e, err, sizeof(err)), -ENOTSUP);
	cr_assert(strstr(err, "built without CUDA headers"), "%s", err);
	cr_assert_null(e);
	cr_assert_not(kvn_gpu_has_dmabuf(NULL));
}

Test(gpu_noheaders, the_host_staging_engine_needs_no_cuda)
{
	struct kvn_copy_engine *e = NULL;
	struct kvn_staging *st = NULL;
	char src[300], dst[300] = "", dev[300];
	for (size_t i = 0; i < sizeof(src); i++)
		src[i] = (char)(i * 7 + 1);
	cr_assert_eq(kvn_copy_engine_host(2, &e, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kvn_staging_create(e, 64, &st, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kvn_staging_put_buf(st, (kvn_devptr_t)(uintptr_t)dev, src, sizeof(src), err,
					 sizeof(err)),
		     0, "%s", err);
	cr_assert_eq(kvn_staging_get_buf(st, dst, (kvn_devptr_t)(uintptr_t)dev, sizeof(dst), err,
					 sizeof(err)),
		     0, "%s", err);
	cr_assert_eq(memcmp(src, dst, sizeof(src)), 0);
	kvn_staging_destroy(st);
	kvn_copy_engine_destroy(e);
}
