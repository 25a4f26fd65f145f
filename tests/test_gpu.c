/* gpu/ without a GPU: the driver loader's answers on a host without libcuda.so.1, the version
 * rule, the gpu config keys, and the staging logic driven through the "host" copy engine.
 * These test the staging logic, not CUDA: the device side of the copies is host memory here.
 * What needs a device is in test_gpu_device.c (ctest -L gpu). */
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "config_fixture.h"
#include "gpu/gpu.h"
#include "core/xxh.h"
#include "gpu/staging.h"
#include "kvnode/kvnode.h"
#include "node/engine/config.h"
#include "tests/helpers/engine_env.h"
#include "tests/helpers/pattern.h"

TestSuite(gpu, .init = setup, .fini = teardown);

/* ------------------------------------------------------------------------------------------
 * The driver loader
 * ------------------------------------------------------------------------------------------ */

static bool
libcuda_present(void)
{
	void *h = dlopen(KVN_GPU_LIBCUDA, RTLD_NOW | RTLD_LOCAL);
	if (h)
		dlclose(h);
	return h != NULL;
}

Test(gpu, open_without_a_driver_names_libcuda)
{
	if (!kvn_gpu_built_with_cuda())
		cr_skip_test("built without CUDA headers: gpu_noheaders tests that answer");
	if (libcuda_present())
		cr_skip_test("this host has libcuda.so.1: the no-driver answer is tested on hosts "
			     "without one");
	struct kvn_gpu *gpu = (struct kvn_gpu *)1;
	int rc = kvn_gpu_open(&gpu, err, sizeof(err));
	cr_assert_eq(rc, -ENOENT, "rc %d: %s", rc, err);
	assert_contains(err, "libcuda.so.1 not found (no NVIDIA driver on this host): dlopen: ");
	/* dlerror's own words follow, naming the library too */
	assert_contains(strstr(err, "dlopen: "), "libcuda.so.1");
	cr_assert_eq(gpu, (struct kvn_gpu *)1, "no handle on failure");
}

Test(gpu, calls_on_no_handle_fail_with_a_message)
{
	struct kvn_gpu_info in;
	struct kvn_gpu_mem *m = NULL;
	cr_assert_lt(kvn_gpu_device_info(NULL, 0, &in, err, sizeof(err)), 0);
	cr_assert_neq(err[0], '\0');
	err[0] = '\0';
	cr_assert_lt(kvn_gpu_mem_alloc(NULL, 0, 4096, &m, err, sizeof(err)), 0);
	cr_assert_null(m);
	cr_assert_neq(err[0], '\0');
	cr_assert_eq(kvn_gpu_device_count(NULL), 0);
	kvn_gpu_close(NULL);
}

Test(gpu, drivers_older_than_11_7_are_refused_naming_both_versions)
{
	cr_assert_eq(kvn_gpu_check_version(11070, err, sizeof(err)), 0);
	cr_assert_eq(kvn_gpu_check_version(12040, err, sizeof(err)), 0);
	cr_assert_eq(kvn_gpu_check_version(13000, err, sizeof(err)), 0);
	cr_assert_eq(kvn_gpu_check_version(11060, err, sizeof(err)), -ENOTSUP);
	assert_contains(err, "CUDA 11.6 (cuDriverGetVersion 11060)");
	assert_contains(err, "needs CUDA 11.7 (11070) or newer");
	cr_assert_eq(kvn_gpu_check_version(10020, err, sizeof(err)), -ENOTSUP);
	assert_contains(err, "CUDA 10.2");
}

/* ------------------------------------------------------------------------------------------
 * Staging through the host engine
 * ------------------------------------------------------------------------------------------ */

static struct kvn_copy_engine *
host_engine(unsigned nstreams)
{
	struct kvn_copy_engine *e = NULL;
	cr_assert_eq(kvn_copy_engine_host(nstreams, &e, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(e->ops->name, "host");
	return e;
}

/* What the staging tests lean on: a copy has not happened before its stream is synced. */
Test(gpu, host_engine_runs_a_copy_only_when_its_stream_is_synced)
{
	struct kvn_copy_engine *e = host_engine(2);
	char src[16] = "staged bytes", dst[16] = "";
	cr_assert_eq(e->ops->copy_to_host(e, dst, (kvn_devptr_t)(uintptr_t)src, sizeof(src), 1, err,
					  sizeof(err)),
		     0);
	cr_assert_eq(e->ops->sync(e, 0, err, sizeof(err)), 0);
	cr_assert_str_eq(dst, "", "stream 0's sync must not run stream 1's copy");
	cr_assert_eq(e->ops->sync(e, 1, err, sizeof(err)), 0);
	cr_assert_str_eq(dst, "staged bytes");
	cr_assert_eq(e->ops->sync(e, 2, err, sizeof(err)), -EINVAL);
	assert_contains(err, "no stream 2");
	kvn_copy_engine_destroy(e);
}

/* A put of len bytes to a "device" buffer and a get back, both through a bounce area of
 * bounce bytes, byte-verified, and the pieces counted. */
static void
round_trip(size_t len, size_t bounce, uint64_t seed)
{
	struct kvn_copy_engine *e = host_engine(2);
	struct kvn_staging *st = NULL;
	cr_assert_eq(kvn_staging_create(e, bounce, &st, err, sizeof(err)), 0, "%s", err);
	unsigned char *src = malloc(len), *dev = malloc(len), *back = malloc(len);
	cr_assert(src && dev && back);
	pattern_fill(src, len, seed);
	memset(dev, 0xa5, len);
	memset(back, 0x5a, len);
	size_t half = kvn_staging_half(st), want = (len + half - 1) / half;

	cr_assert_eq(
	    kvn_staging_put_buf(st, (kvn_devptr_t)(uintptr_t)dev, src, len, err, sizeof(err)), 0,
	    "put %zu: %s", len, err);
	cr_assert_eq(kvn_staging_pieces(st), want, "put %zu in halves of %zu", len, half);
	cr_assert(pattern_check(dev, len, seed), "put %zu bytes through %zu: wrong bytes", len,
		  bounce);
	cr_assert_eq(
	    kvn_staging_get_buf(st, back, (kvn_devptr_t)(uintptr_t)dev, len, err, sizeof(err)), 0,
	    "get %zu: %s", len, err);
	cr_assert_eq(kvn_staging_pieces(st), want);
	cr_assert(pattern_check(back, len, seed), "get %zu bytes through %zu: wrong bytes", len,
		  bounce);
	/* the checksumming get: the same bytes, and the slot checksum of all of them */
	uint64_t sum = 0;
	memset(back, 0x5a, len);
	cr_assert_eq(kvn_staging_get_sum(st, back, (kvn_devptr_t)(uintptr_t)dev, len, &sum, err,
					 sizeof(err)),
		     0, "get %zu: %s", len, err);
	cr_assert(pattern_check(back, len, seed), "checksumming get of %zu bytes through %zu", len,
		  bounce);
	cr_assert_eq(sum, XXH3_64bits(src, len), "checksum of %zu bytes in pieces of %zu", len,
		     half);
	free(src);
	free(dev);
	free(back);
	kvn_staging_destroy(st);
	kvn_copy_engine_destroy(e);
}

Test(gpu, staging_moves_1_byte_to_64_MiB_through_a_bounded_bounce_area)
{
	static const size_t sizes[] = {1,     2,     3,	    4095,	   4096,     4097,
				       65535, 65536, 65537, (1 << 20) + 7, 16 << 20, 64 << 20};
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
		round_trip(sizes[i], 1 << 20, 1000 + i); /* halves of 512 KiB */
}

Test(gpu, staging_works_with_odd_and_tiny_bounce_areas)
{
	round_trip(100003, 2, 7);	  /* one byte a half: 100003 pieces */
	round_trip(100003, 4097, 8);	  /* halves of 2048: pieces end mid-page */
	round_trip(5, 1 << 20, 9);	  /* less than one half */
	round_trip(1 << 20, 1 << 20, 10); /* exactly two halves */
}

struct stop_at {
	size_t piece, seen;
};

static int
sink_stops(void *ctx, size_t off, const void *piece, size_t n)
{
	struct stop_at *s = ctx;
	(void)off, (void)piece, (void)n;
	return s->seen++ == s->piece ? -EIO : 0;
}

static int
source_stops(void *ctx, size_t off, void *piece, size_t n)
{
	memset(piece, 1, n);
	(void)off;
	return sink_stops(ctx, 0, piece, n) ? 1 : 0;
}

Test(gpu, a_receiver_or_source_that_fails_stops_the_transfer_with_its_error)
{
	struct kvn_copy_engine *e = host_engine(2);
	struct kvn_staging *st = NULL;
	cr_assert_eq(kvn_staging_create(e, 4096, &st, err, sizeof(err)), 0, "%s", err);
	size_t len = 10 * 2048;
	unsigned char *dev = calloc(1, len);
	struct stop_at s = {.piece = 3};
	cr_assert_eq(kvn_staging_get(st, (kvn_devptr_t)(uintptr_t)dev, len, sink_stops, &s, err,
				     sizeof(err)),
		     -EIO);
	assert_contains(err, "receiver of 2048 bytes at offset 6144 stopped the transfer");
	cr_assert_eq(kvn_staging_pieces(st), 3);
	cr_assert_eq(s.seen, 4, "no piece after the failing one");
	s = (struct stop_at){.piece = 2};
	cr_assert_eq(kvn_staging_put(st, (kvn_devptr_t)(uintptr_t)dev, len, source_stops, &s, err,
				     sizeof(err)),
		     -ECANCELED, "a positive answer is -ECANCELED");
	assert_contains(err, "source of 2048 bytes at offset 4096");
	cr_assert_eq(dev[0], 1, "the pieces before it were copied (drained)");
	cr_assert_eq(dev[4096], 0, "the failing piece was not");
	free(dev);
	kvn_staging_destroy(st);
	kvn_copy_engine_destroy(e);
}

Test(gpu, staging_needs_two_streams_and_two_bytes)
{
	struct kvn_copy_engine *e1 = host_engine(1), *e2 = host_engine(2);
	struct kvn_staging *st = NULL;
	cr_assert_eq(kvn_staging_create(e1, 4096, &st, err, sizeof(err)), -EINVAL);
	assert_contains(err, "two streams");
	cr_assert_eq(kvn_staging_create(e2, 1, &st, err, sizeof(err)), -EINVAL);
	assert_contains(err, "1 bytes (at least 2)");
	cr_assert_null(st);
	struct kvn_copy_engine *bad = NULL;
	cr_assert_eq(kvn_copy_engine_host(0, &bad, err, sizeof(err)), -EINVAL);
	kvn_copy_engine_destroy(e1);
	kvn_copy_engine_destroy(e2);
}

/* ------------------------------------------------------------------------------------------
 * The gpu config keys
 * ------------------------------------------------------------------------------------------ */

static void
expect_gpu(const char *text, enum kvn_gpu_mode mode, const char *norm, const char *devs)
{
	struct kvn_config *cfg = load_ok(text);
	int d[8];
	char got[64] = "";
	size_t n = kvn_config_gpu_devices(cfg, d, 8);
	for (size_t i = 0; i < n && i < 8; i++)
		snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%d", i ? "," : "", d[i]);
	cr_assert_eq(kvn_config_gpu_mode(cfg), mode, "%s", text);
	cr_assert_str_eq(cfg->gpu, norm, "%s", text);
	cr_assert_str_eq(got, devs, "%s", text);
	kvn_config_free(cfg);
}

Test(gpu, config_gpu_takes_true_false_auto_and_its_older_values)
{
	expect_gpu("log_level: warn\n", KVN_GPU_OFF, "false", "0");
	expect_gpu("gpu: true\n", KVN_GPU_ON, "true", "0");
	expect_gpu("gpu: yes\n", KVN_GPU_ON, "true", "0");
	expect_gpu("gpu: false\n", KVN_GPU_OFF, "false", "0");
	expect_gpu("gpu: AUTO\n", KVN_GPU_AUTO, "auto", "0");
	/* before true and false: none, and an index meaning "this device" */
	expect_gpu("gpu: none\n", KVN_GPU_OFF, "false", "0");
	expect_gpu("gpu: 1\n", KVN_GPU_ON, "1", "1");
	expect_gpu("gpu: cuda:2\n", KVN_GPU_ON, "2", "2");
	expect_gpu("gpu: 0\n", KVN_GPU_ON, "0", "0");
	expect_gpu("gpu: true\ngpu_devices: [0, cuda:3, 1]\n", KVN_GPU_ON, "true", "0,3,1");
	expect_gpu("gpu: auto\ngpu_devices: 2,3\n", KVN_GPU_AUTO, "auto", "2,3");
	expect_gpu("gpu: 2\ngpu_devices: [2]\n", KVN_GPU_ON, "2", "2");
}

Test(gpu, config_max_gpu_size_is_gb_per_device_and_shows_as_written)
{
	struct kvn_config *cfg = load_ok("gpu: true\nmax_gpu_size: 0.5\ngpu_devices: [1, 0]\n");
	cr_assert_eq(cfg->max_gpu_size, 1ull << 29);
	char *json = kvn_config_to_json(cfg, true);
	cr_assert(json);
	assert_contains(json, "\"max_gpu_size\":0.5");
	assert_contains(json, "\"gpu_devices\":[1,0]");
	assert_contains(json, "\"gpu\":\"true\"");
	free(json);
	kvn_config_free(cfg);
	cfg = load_ok("log_level: warn\n");
	cr_assert_eq(cfg->max_gpu_size, 0);
	kvn_config_free(cfg);
}

Test(gpu, config_bad_gpu_values_are_refused_naming_the_key)
{
	expect_bad("gpu: maybe\n", 1, "gpu", "true, false or auto");
	expect_bad("gpu: -1\n", 1, "gpu", "GPU index");
	expect_bad("gpu_devices: [0, x]\n", 1, "gpu_devices",
		   "entry 2 must be a GPU index (0, 1, … or cuda:N), got \"x\"");
	expect_bad("gpu_devices: [-1]\n", 1, "gpu_devices", "entry 1 must be a GPU index");
	expect_bad("gpu_devices: {a: 1}\n", 1, "gpu_devices", "got a mapping");
	expect_bad("max_gpu_size: -1\n", 1, "max_gpu_size", "a number of GB >= 0");
	expect_bad("max_gpu_size: lots\n", 1, "max_gpu_size", "a number of GB >= 0");
	expect_bad("gpu: true\ngpu_devices: [1, 1]\n", 2, "gpu_devices", "GPU 1 is listed twice");
	expect_bad("gpu: true\ngpu_devices: []\n", 2, "gpu_devices", "empty, but gpu is true");
	expect_bad("gpu: 1\ngpu_devices: [0]\n", 1, "gpu", "gpu: 1 names GPU 1, but gpu_devices (");
	assert_contains(err, "kvnode.yaml:2) names other devices: write gpu: true");
}

Test(gpu, config_gpu_keys_come_from_the_environment)
{
	setenv("KVNODE_GPU", "auto", 1);
	setenv("KVNODE_GPU_DEVICES", "1, 0", 1);
	setenv("LMCACHE_MAX_GPU_SIZE", "2.5", 1);
	struct kvn_config *cfg = load_ok("gpu: false\n");
	cr_assert_eq(kvn_config_gpu_mode(cfg), KVN_GPU_AUTO);
	cr_assert_eq(cfg->n_gpu_devices, 2);
	cr_assert_str_eq(cfg->gpu_devices[0], "1");
	cr_assert_eq(cfg->max_gpu_size, 5ull << 29);
	kvn_config_free(cfg);
	setenv("KVNODE_GPU_DEVICES", "0,gpu1", 1);
	cr_assert_eq(load("gpu: false\n", &cfg), -EINVAL);
	assert_contains(err, "env KVNODE_GPU_DEVICES: entry 2 must be a GPU index");
}

/* The engine API's device pointers name one of the engine's GPUs: an engine without any
 * refuses both ways with -ENODEV, and a refused put leaves nothing stored. */
Test(gpu, engine_device_pointers_need_one_of_the_engines_gpus)
{
	struct kvn_config *cfg;
	struct kvn_engine *eng;
	engine_env_open("max_local_cpu_size: 0.05\nhugepages: false\ngpu: false\n", &cfg, &eng);
	struct kvn_key k;
	cr_assert_eq(kvn_key_from_str(&k, "vllm@test-model@1@0@00ab@bfloat16"), 0);
	cr_assert_eq(kvn_engine_put_from_gpu(eng, &k, 0, 0x1000, 4096), -ENODEV);
	cr_assert_eq(kvn_engine_contains(eng, &k), 0, "the refused put's reservation is gone");
	engine_put_pattern(eng, k.str, 4096, 3);
	size_t len = 0;
	cr_assert_eq(kvn_engine_get_into_gpu(eng, &k, 0, 0x1000, 4096, &len), -ENODEV);
	cr_assert_eq(len, 4096, "the get found the value before the copy was refused");
	cr_assert_eq(kvn_engine_get_into_gpu(eng, &k, 0, 0x1000, 100, &len), -ENOSPC);
	cr_assert_eq(engine_get_pattern(eng, k.str, 4096, 3), 0, "the value is unchanged");
	kvn_engine_close(eng);
	kvn_config_free(cfg);
}
