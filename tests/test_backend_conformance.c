/* Backend conformance suite: the same cases, run against every storage backend implementation
 * (built-in cpu and disk, the gpu tier on a GPU, the gpu tier's logic over host memory, the
 * external zmem module loaded as a user's config would load it, and zmem as a module built
 * against ABI 2.0 exports it).
 * Adding an implementation: write its setup function and add one line to BACKENDS below. */
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/pool.h"
#include "gpu/gpu.h"
#include "gpu/staging.h"
#include "tests/helpers/host_region.h"
#include "node/engine/storage.h"
#include "tests/helpers/backend_env.h"

/* ------------------------------------------------------------------------------------------
 * Fixture: one backend instance and whatever it needs (pool, directory, module handle).
 * ------------------------------------------------------------------------------------------ */

#define KIB 1024ull
#define MIB (1024ull * 1024)

struct fixture {
	const struct kvn_backend_ops *ops;
	struct kvn_backend *be;
	struct kvn_backend_env *env;
	uint64_t capacity;
	struct kvn_pool *pool;
	void *dl;
	char dir[256];
	/* The gpu tier's: its region, the staging and copy engine it goes through, and on a GPU
	 * the driver and the device allocation; else host memory standing for the region. */
	struct kvn_gpu_region region;
	struct kvn_copy_engine *ce;
	struct kvn_staging *staging;
	struct kvn_gpu *gpu;
	struct kvn_gpu_mem *mem;
	struct host_region host;
};

struct impl {
	const char *name;
	/* Fills f->ops and f->env (and what they need) for a tier of f->capacity bytes. */
	void (*setup)(struct fixture *f);
};

/* The fixture of the running test, so that .fini cleans up after a failed assertion too. */
static struct fixture fx;

static void
env_for(struct fixture *f, const char *name, const struct backend_opt *extra)
{
	char cap[32];
	snprintf(cap, sizeof(cap), "%" PRIu64, f->capacity);
	struct backend_opt opts[8] = {{"capacity_bytes", cap}};
	size_t n = 1;
	while (extra && extra->opt && n < 7)
		opts[n++] = *extra++;
	f->env = backend_env_new(name, opts, f->pool);
	cr_assert_not_null(f->env, "out of memory building the backend env");
}

static void
setup_cpu(struct fixture *f)
{
	char err[256] = "";
	int rc = kvn_pool_create(f->capacity, false, &f->pool, err, sizeof(err));
	cr_assert_eq(rc, 0, "kvn_pool_create(%" PRIu64 "): %s", f->capacity, err);
	f->ops = &kvn_cpu_backend_ops;
	env_for(f, "cpu", NULL);
}

static void
setup_disk(struct fixture *f)
{
	const char *tmp = getenv("TMPDIR");
	snprintf(f->dir, sizeof(f->dir), "%s/kvn-conformance-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	cr_assert_not_null(mkdtemp(f->dir), "mkdtemp %s: %s", f->dir, strerror(errno));
	f->ops = &kvn_disk_backend_ops;
	env_for(f, "disk", (const struct backend_opt[]){{"path", f->dir}, {NULL, NULL}});
}

/* Loaded exactly as external_backends + extra_config module_path/class_name would load it. */
static void
setup_zmem(struct fixture *f)
{
	char err[1024] = "";
	int rc = kvn_external_load(KVN_MODULE_DIR "/libkvn_zmem.so", "kvn_zmem_backend_ops", ".",
				   &f->ops, &f->dl, err, sizeof(err));
	cr_assert_eq(rc, 0, "loading zmem: %s", err);
	env_for(f, "zmem", (const struct backend_opt[]){{"level", "1"}, {NULL, NULL}});
}

/* zmem's code as a module built against ABI 2.0 exports it: the shorter table of 2.0. */
static void
setup_zmem_abi20(struct fixture *f)
{
	char err[1024] = "";
	int rc =
	    kvn_external_load(KVN_MODULE_DIR "/libkvn_test_zmem_abi20.so",
			      "kvn_test_zmem_abi20_ops", ".", &f->ops, &f->dl, err, sizeof(err));
	cr_assert_eq(rc, 0, "loading the ABI 2.0 module: %s", err);
	env_for(f, "zmem_abi20", (const struct backend_opt[]){{"level", "1"}, {NULL, NULL}});
}

/* The gpu tier on GPU 0: device memory, the cuda copy engine. Skipped without a GPU. */
static void
setup_gpu(struct fixture *f)
{
	char err[512] = "";
	int rc = kvn_gpu_open(&f->gpu, err, sizeof(err));
	if (rc)
		cr_skip_test("no usable GPU (%d): %s", rc, err);
	rc = kvn_gpu_mem_alloc(f->gpu, 0, f->capacity, &f->mem, err, sizeof(err));
	cr_assert_eq(rc, 0, "%" PRIu64 " bytes on GPU 0: %s", f->capacity, err);
	rc = kvn_gpu_staging_open(f->gpu, 0, &f->ce, &f->staging, err, sizeof(err));
	cr_assert_eq(rc, 0, "staging on GPU 0: %s", err);
	f->region = (struct kvn_gpu_region){kvn_gpu_mem_ptr(f->mem), kvn_gpu_mem_len(f->mem),
					    f->staging, 0};
	f->ops = &kvn_gpu_backend_ops;
	env_for(f, "gpu0", NULL);
	backend_env_set_gpu(f->env, &f->region);
}

/* The gpu tier's own logic (allocator, index, LRU, pins, checksums, its staging transfers)
 * over the host copy engine (tests/helpers/host_region.h): the "device region" is host memory
 * and the copies are memcpy run at each stream's sync, in many pieces. This is not a GPU; the
 * gpu case above is. */
static void
setup_gpu_host(struct fixture *f)
{
	host_region_open(&f->host, f->capacity, -1);
	f->ops = &kvn_gpu_backend_ops;
	env_for(f, "gpu_host", NULL);
	backend_env_set_gpu(f->env, &f->host.rg);
}

static const struct impl cpu_impl = {"cpu", setup_cpu};
static const struct impl gpu_impl = {"gpu", setup_gpu};
static const struct impl gpu_host_impl = {"gpu_host", setup_gpu_host};
static const struct impl disk_impl = {"disk", setup_disk};
static const struct impl zmem_impl = {"zmem", setup_zmem};
static const struct impl zmem_abi20_impl = {"zmem_abi20", setup_zmem_abi20};

/* One line per implementation: X(suite name, case). */
#define BACKENDS(X, c) X(cpu, c) X(disk, c) X(gpu, c) X(gpu_host, c) X(zmem, c) X(zmem_abi20, c)

static int
rm_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	(void)sb, (void)type, (void)ftw;
	return remove(path);
}

static void
fixture_fini(void)
{
	struct fixture *f = &fx;
	if (f->be)
		f->ops->destroy(f->be);
	backend_env_free(f->env);
	if (f->pool)
		kvn_pool_destroy(f->pool);
	if (f->dl)
		dlclose(f->dl);
	kvn_gpu_staging_close(f->ce, f->staging);
	kvn_gpu_mem_free(f->mem);
	kvn_gpu_close(f->gpu);
	host_region_close(&f->host);
	if (f->dir[0])
		nftw(f->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	memset(f, 0, sizeof(*f));
}

/* Opens a fresh instance of im holding capacity bytes. */
static struct fixture *
open_backend(const struct impl *im, uint64_t capacity)
{
	struct fixture *f = &fx;
	memset(f, 0, sizeof(*f));
	f->capacity = capacity;
	im->setup(f);
	int rc = f->ops->create(f->env, &f->be);
	cr_assert_eq(rc, 0, "%s create: %s (%s)", im->name, kvn_strerror(rc),
		     backend_env_last_log(f->env, KVN_LOG_ERROR));
	cr_assert_not_null(f->be);
	cr_assert_not_null(f->ops->pin, "%s: pin is not implemented", im->name);
	cr_assert_not_null(f->ops->unpin, "%s: unpin is not implemented", im->name);
	cr_assert_not_null(f->ops->list, "%s: list is not implemented", im->name);
	return f;
}

#define CONFORMANCE_TEST(b, c)                                                                     \
	Test(b, c, .fini = fixture_fini, .timeout = 240)                                           \
	{                                                                                          \
		c##_case(&b##_impl);                                                               \
	}
/* Defines one case body and a Test() of it for every implementation in BACKENDS. */
#define CONFORMANCE(c)                                                                             \
	static void c##_case(const struct impl *im);                                               \
	BACKENDS(CONFORMANCE_TEST, c)                                                              \
	static void c##_case(const struct impl *im)

/* ------------------------------------------------------------------------------------------
 * Values and keys
 * ------------------------------------------------------------------------------------------ */

static uint64_t
splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void
fill_random(void *dst, size_t len, uint64_t seed)
{
	unsigned char *p = dst;
	uint64_t s = seed;
	while (len >= 8) {
		uint64_t v = splitmix(&s);
		memcpy(p, &v, 8);
		p += 8;
		len -= 8;
	}
	if (len) {
		uint64_t v = splitmix(&s);
		memcpy(p, &v, len);
	}
}

/* A fresh buffer of len random bytes from seed. */
static struct kvn_buf *
random_buf(size_t len, uint64_t seed)
{
	struct kvn_buf *b = kvn_buf_new(len);
	cr_assert_not_null(b, "out of memory for %zu bytes", len);
	fill_random(b->data, len, seed);
	return b;
}

/* Index of the first byte of buf that differs from random bytes of seed; -1 when all match. */
static long long
first_mismatch(const struct kvn_buf *buf, size_t len, uint64_t seed)
{
	if (buf->len != len)
		return -2;
	unsigned char *want = malloc(len ? len : 1);
	cr_assert_not_null(want);
	fill_random(want, len, seed);
	long long at = -1;
	if (memcmp(want, buf->data, len))
		for (size_t i = 0; i < len; i++)
			if (want[i] != ((unsigned char *)buf->data)[i]) {
				at = (long long)i;
				break;
			}
	free(want);
	return at;
}

static struct kvn_key key_of(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static struct kvn_key
key_of(const char *fmt, ...)
{
	char s[KVN_KEY_MAX + 1];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s, sizeof(s), fmt, ap);
	va_end(ap);
	struct kvn_key k;
	cr_assert_eq(kvn_key_from_str(&k, s), 0, "bad test key '%s'", s);
	return k;
}

static void
put_random(struct fixture *f, const struct kvn_key *k, size_t len, uint64_t seed)
{
	struct kvn_buf *b = random_buf(len, seed);
	int rc = f->ops->put(f->be, k, b);
	kvn_buf_unref(b); /* the backend copied the bytes or took its own reference */
	cr_assert_eq(rc, 0, "put %s (%zu bytes): %s", k->str, len, kvn_strerror(rc));
}

/* Asserts that k holds len random bytes of seed. */
static void
expect_value(struct fixture *f, const struct kvn_key *k, size_t len, uint64_t seed)
{
	struct kvn_buf *b = NULL;
	int rc = f->ops->get(f->be, k, &b);
	cr_assert_eq(rc, 0, "get %s: %s", k->str, kvn_strerror(rc));
	cr_assert_not_null(b, "get %s returned 0 without a buffer", k->str);
	long long at = first_mismatch(b, len, seed);
	size_t got = b->len;
	kvn_buf_unref(b);
	cr_assert_neq(at, -2, "get %s: %zu bytes, %zu were put", k->str, got, len);
	cr_assert_eq(at, -1, "get %s: byte %lld differs from what was put", k->str, at);
}

static bool
present(struct fixture *f, const struct kvn_key *k)
{
	int rc = f->ops->contains(f->be, k, false);
	cr_assert(rc == 0 || rc == 1, "contains %s: %s", k->str, kvn_strerror(rc));
	return rc == 1;
}

static struct kvn_backend_stats
stats_of(struct fixture *f)
{
	struct kvn_backend_stats s;
	memset(&s, 0xa5, sizeof(s)); /* a backend that forgets a field shows garbage */
	f->ops->stats(f->be, &s);
	return s;
}

/* ------------------------------------------------------------------------------------------
 * Cases
 * ------------------------------------------------------------------------------------------ */

CONFORMANCE(put_then_get_round_trips_random_bytes_of_every_size)
{
	static const size_t sizes[] = {1, 4097, 256 * KIB, 1 * MIB, 32 * MIB};
	struct fixture *f = open_backend(im, 64 * MIB);
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		struct kvn_key k = key_of("vllm@conformance@1@0@%04zx@bfloat16", i);
		put_random(f, &k, sizes[i], 1000 + i);
	}
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		struct kvn_key k = key_of("vllm@conformance@1@0@%04zx@bfloat16", i);
		expect_value(f, &k, sizes[i], 1000 + i);
	}
}

CONFORMANCE(overwrite_replaces_the_value)
{
	struct fixture *f = open_backend(im, 4 * MIB);
	struct kvn_key k = key_of("overwritten");
	put_random(f, &k, 1000, 1);
	put_random(f, &k, 3000, 2);
	expect_value(f, &k, 3000, 2);
	struct kvn_backend_stats s = stats_of(f);
	cr_expect_eq(s.count, 1, "one key overwritten: count %" PRIu64, s.count);
	cr_expect_eq(s.bytes, 3000, "bytes should be the new value's: %" PRIu64, s.bytes);
}

CONFORMANCE(get_of_a_missing_key_is_enoent_and_counts_a_miss)
{
	struct fixture *f = open_backend(im, 4 * MIB);
	struct kvn_key held = key_of("held"), missing = key_of("never-put");
	put_random(f, &held, 100, 1);
	struct kvn_backend_stats before = stats_of(f);
	struct kvn_buf *b = NULL;
	int rc = f->ops->get(f->be, &missing, &b);
	cr_assert_eq(rc, -ENOENT, "get of a missing key: %s", kvn_strerror(rc));
	struct kvn_backend_stats after = stats_of(f);
	cr_expect_eq(after.misses, before.misses + 1, "misses %" PRIu64 " -> %" PRIu64,
		     before.misses, after.misses);
	cr_expect_eq(after.hits, before.hits, "a miss counted as a hit");
}

CONFORMANCE(contains_reports_presence_and_pins_on_request)
{
	struct fixture *f = open_backend(im, 4 * MIB);
	struct kvn_key k = key_of("contained"), missing = key_of("not-contained");
	cr_assert_eq(f->ops->contains(f->be, &missing, false), 0);
	cr_assert_eq(f->ops->contains(f->be, &missing, true), 0);
	put_random(f, &k, 4096, 3);
	cr_assert_eq(f->ops->contains(f->be, &k, false), 1);
	cr_assert_eq(f->ops->contains(f->be, &k, true), 1);
	/* The pin taken by contains is the caller's to release. */
	cr_assert_eq(f->ops->unpin(f->be, &k), 0);
	expect_value(f, &k, 4096, 3);
}

CONFORMANCE(pin_and_unpin_of_a_missing_key_are_enoent)
{
	struct fixture *f = open_backend(im, 4 * MIB);
	struct kvn_key missing = key_of("not-there");
	cr_assert_eq(f->ops->pin(f->be, &missing), -ENOENT);
	cr_assert_eq(f->ops->unpin(f->be, &missing), -ENOENT);
}

CONFORMANCE(remove_makes_a_key_gone_and_removing_it_again_is_enoent)
{
	struct fixture *f = open_backend(im, 4 * MIB);
	struct kvn_key k = key_of("removed"), other = key_of("kept");
	put_random(f, &k, 5000, 4);
	put_random(f, &other, 6000, 5);
	cr_assert_eq(f->ops->remove(f->be, &k), 0);
	cr_assert_not(present(f, &k), "removed key still contained");
	struct kvn_buf *b = NULL;
	cr_assert_eq(f->ops->get(f->be, &k, &b), -ENOENT, "removed key still readable");
	cr_assert_eq(f->ops->remove(f->be, &k), -ENOENT);
	expect_value(f, &other, 6000, 5);
	struct kvn_backend_stats s = stats_of(f);
	cr_expect_eq(s.count, 1, "count after remove: %" PRIu64, s.count);
	cr_expect_eq(s.bytes, 6000, "bytes after remove: %" PRIu64, s.bytes);
}

CONFORMANCE(a_view_held_across_remove_and_overwrite_stays_readable)
{
	struct fixture *f = open_backend(im, 4 * MIB);
	struct kvn_key k = key_of("viewed");
	put_random(f, &k, 100 * KIB, 6);
	struct kvn_buf *view = NULL;
	cr_assert_eq(f->ops->get(f->be, &k, &view), 0);
	cr_assert_eq(f->ops->remove(f->be, &k), 0);
	cr_assert_eq(first_mismatch(view, 100 * KIB, 6), -1, "view changed by remove");
	put_random(f, &k, 100 * KIB, 7); /* may reuse the freed storage — not the viewed one */
	cr_assert_eq(first_mismatch(view, 100 * KIB, 6), -1, "view changed by a new put");
	kvn_buf_unref(view);
	expect_value(f, &k, 100 * KIB, 7);
}

CONFORMANCE(a_view_held_while_the_tier_fills_stays_intact)
{
	struct fixture *f = open_backend(im, 1 * MIB);
	struct kvn_key k = key_of("viewed-under-pressure");
	put_random(f, &k, 64 * KIB, 8);
	struct kvn_buf *view = NULL;
	cr_assert_eq(f->ops->get(f->be, &k, &view), 0);
	for (int i = 0; i < 40; i++) {
		struct kvn_key fill = key_of("filler-%d", i);
		put_random(f, &fill, 64 * KIB, 100 + (uint64_t)i);
	}
	cr_assert_eq(first_mismatch(view, 64 * KIB, 8), -1, "view changed while the tier filled");
	kvn_buf_unref(view);
}

struct seen {
	int count[32];
	size_t len[32];
	int strangers;
	int calls;
};

static int
record_key(void *ctx, const struct kvn_key *key, size_t len)
{
	struct seen *s = ctx;
	int i;
	char tail;
	s->calls++;
	if (sscanf(key->str, "listed-%d%c", &i, &tail) != 1 || i < 0 || i >= 32) {
		s->strangers++;
		return 0;
	}
	s->count[i]++;
	s->len[i] = len;
	return 0;
}

CONFORMANCE(list_reports_exactly_the_keys_held)
{
	struct fixture *f = open_backend(im, 4 * MIB);
	for (int i = 0; i < 20; i++) {
		struct kvn_key k = key_of("listed-%d", i);
		put_random(f, &k, 1000 + (size_t)i * 10, (uint64_t)i);
	}
	struct kvn_key gone = key_of("listed-7");
	cr_assert_eq(f->ops->remove(f->be, &gone), 0);
	struct seen s = {0};
	cr_assert_eq(f->ops->list(f->be, record_key, &s), 0);
	cr_expect_eq(s.strangers, 0, "list reported %d keys never put", s.strangers);
	for (int i = 0; i < 20; i++) {
		cr_expect_eq(s.count[i], i == 7 ? 0 : 1, "key listed-%d reported %d times", i,
			     s.count[i]);
		if (i != 7 && s.count[i])
			cr_expect_eq(s.len[i], 1000 + (size_t)i * 10, "listed-%d length %zu", i,
				     s.len[i]);
	}
}

static int
stop_at_first(void *ctx, const struct kvn_key *key, size_t len)
{
	(void)key, (void)len;
	++*(int *)ctx;
	return 7;
}

CONFORMANCE(list_stops_when_the_callback_returns_nonzero)
{
	struct fixture *f = open_backend(im, 4 * MIB);
	for (int i = 0; i < 5; i++) {
		struct kvn_key k = key_of("walked-%d", i);
		put_random(f, &k, 100, (uint64_t)i);
	}
	int calls = 0;
	cr_assert_eq(f->ops->list(f->be, stop_at_first, &calls), 7);
	cr_assert_eq(calls, 1);
}

CONFORMANCE(stats_count_bytes_hits_and_misses_are_consistent)
{
	struct fixture *f = open_backend(im, 4 * MIB);
	struct kvn_backend_stats s = stats_of(f);
	cr_assert(s.count == 0 && s.bytes == 0 && s.hits == 0 && s.misses == 0 && s.puts == 0 &&
		      s.evictions == 0 && s.errors == 0,
		  "a new backend has non-zero stats: count %" PRIu64 " bytes %" PRIu64
		  " hits %" PRIu64 " misses %" PRIu64 " puts %" PRIu64,
		  s.count, s.bytes, s.hits, s.misses, s.puts);
	cr_expect(s.capacity == 0 || s.capacity <= f->capacity,
		  "capacity %" PRIu64 " exceeds the configured %" PRIu64, s.capacity, f->capacity);
	struct kvn_key a = key_of("a"), b = key_of("b"), c = key_of("c"), x = key_of("x");
	put_random(f, &a, 100, 1);
	put_random(f, &b, 2000, 2);
	put_random(f, &c, 30000, 3);
	expect_value(f, &a, 100, 1);
	expect_value(f, &b, 2000, 2);
	struct kvn_buf *buf = NULL;
	cr_assert_eq(f->ops->get(f->be, &x, &buf), -ENOENT);
	s = stats_of(f);
	cr_expect_eq(s.count, 3, "count %" PRIu64, s.count);
	cr_expect_eq(s.bytes, 32100, "bytes %" PRIu64, s.bytes);
	cr_expect_eq(s.puts, 3, "puts %" PRIu64, s.puts);
	cr_expect_eq(s.hits, 2, "hits %" PRIu64, s.hits);
	cr_expect_eq(s.misses, 1, "misses %" PRIu64, s.misses);
	cr_expect_eq(s.evictions, 0, "evictions %" PRIu64, s.evictions);
	cr_expect_eq(s.errors, 0, "errors %" PRIu64, s.errors);
	cr_assert_eq(f->ops->remove(f->be, &b), 0);
	s = stats_of(f);
	cr_expect_eq(s.count, 2, "count after remove %" PRIu64, s.count);
	cr_expect_eq(s.bytes, 30100, "bytes after remove %" PRIu64, s.bytes);
}

/* Puts n chunks "<prefix>-<i>" of 64 KiB (seed base + i). */
static void
fill(struct fixture *f, const char *prefix, int n, uint64_t base)
{
	for (int i = 0; i < n; i++) {
		struct kvn_key k = key_of("%s-%d", prefix, i);
		put_random(f, &k, 64 * KIB, base + (uint64_t)i);
	}
}

CONFORMANCE(filling_past_capacity_evicts_oldest_first_but_never_a_pinned_chunk)
{
	struct fixture *f = open_backend(im, 1 * MIB);
	struct kvn_key pinned = key_of("pinned");
	put_random(f, &pinned, 64 * KIB, 9);
	cr_assert_eq(f->ops->contains(f->be, &pinned, true), 1);
	enum { N = 40 }; /* 2.5 MiB through a 1 MiB tier */
	fill(f, "fill", N, 1000);

	cr_assert(present(f, &pinned), "the pinned chunk was evicted");
	expect_value(f, &pinned, 64 * KIB, 9);
	bool held[N];
	int first_held = -1, nheld = 0;
	for (int i = 0; i < N; i++) {
		struct kvn_key k = key_of("fill-%d", i);
		held[i] = present(f, &k);
		nheld += held[i];
		if (held[i] && first_held < 0)
			first_held = i;
	}
	cr_assert(held[N - 1], "the newest chunk is not held");
	cr_assert(!held[0], "nothing was evicted from a full tier");
	for (int i = first_held; i < N; i++)
		cr_assert(held[i], "fill-%d evicted while the older fill-%d is held", i,
			  first_held);
	struct kvn_key newest = key_of("fill-%d", N - 1);
	expect_value(f, &newest, 64 * KIB, 1000 + N - 1);

	struct kvn_backend_stats s = stats_of(f);
	cr_expect_eq(s.count, (uint64_t)nheld + 1, "count %" PRIu64 ", %d held", s.count,
		     nheld + 1);
	cr_expect_eq(s.count + s.evictions, N + 1,
		     "count %" PRIu64 " + evictions %" PRIu64 " != %d chunks put", s.count,
		     s.evictions, N + 1);
	cr_expect_leq(s.bytes, f->capacity, "holds %" PRIu64 " payload bytes", s.bytes);

	/* Unpinned, it ages out like any other chunk. */
	cr_assert_eq(f->ops->unpin(f->be, &pinned), 0);
	fill(f, "more", N, 5000);
	cr_assert_not(present(f, &pinned), "an unpinned old chunk survived a full refill");
}

CONFORMANCE(pins_nest)
{
	struct fixture *f = open_backend(im, 1 * MIB);
	struct kvn_key k = key_of("pinned-twice");
	put_random(f, &k, 64 * KIB, 10);
	cr_assert_eq(f->ops->pin(f->be, &k), 0);
	cr_assert_eq(f->ops->contains(f->be, &k, true), 1);
	cr_assert_eq(f->ops->unpin(f->be, &k), 0);
	fill(f, "first", 40, 2000);
	cr_assert(present(f, &k), "evicted with one of two pins left");
	cr_assert_eq(f->ops->unpin(f->be, &k), 0);
	fill(f, "second", 40, 3000);
	cr_assert_not(present(f, &k), "still held after both pins were released and a refill");
}

CONFORMANCE(a_value_larger_than_capacity_is_enospc_and_evicts_nothing)
{
	struct fixture *f = open_backend(im, 1 * MIB);
	struct kvn_key small = key_of("small"), big = key_of("too-big");
	put_random(f, &small, 1000, 11);
	struct kvn_buf *b = random_buf(f->capacity + 1, 12);
	int rc = f->ops->put(f->be, &big, b);
	kvn_buf_unref(b);
	cr_assert_eq(rc, -ENOSPC, "put of capacity + 1 bytes: %s", kvn_strerror(rc));
	cr_assert_not(present(f, &big));
	cr_assert(present(f, &small), "a refused put evicted what was held");
	expect_value(f, &small, 1000, 11);
}

/* 4 threads on 32 shared keys. Every value names its key and seed in its first bytes, so any
 * value a get returns can be checked byte for byte, whichever put it came from. */
enum { THREADS = 4, KEYS = 32, OPS = 1500 };

struct val_hdr {
	uint32_t magic;
	uint32_t key;
	uint64_t seed;
	uint64_t len;
};
#define VAL_MAGIC 0x434f4e46u

struct worker {
	struct fixture *f;
	int id;
	char fail[256];
	unsigned long gets_ok;
};

static void
make_value(struct kvn_buf *b, uint32_t key, uint64_t seed)
{
	struct val_hdr h = {VAL_MAGIC, key, seed, b->len};
	fill_random((char *)b->data + sizeof(h), b->len - sizeof(h), seed);
	memcpy(b->data, &h, sizeof(h));
}

/* NULL when buf is a whole value of key; otherwise what is wrong. */
static const char *
check_value(const struct kvn_buf *b, uint32_t key)
{
	struct val_hdr h;
	if (b->len < sizeof(h))
		return "value shorter than its header";
	memcpy(&h, b->data, sizeof(h));
	if (h.magic != VAL_MAGIC || h.len != b->len)
		return "header or length corrupt";
	if (h.key != key)
		return "value of another key";
	const size_t n = b->len - sizeof(h);
	unsigned char *want = malloc(n ? n : 1);
	if (!want)
		return "out of memory";
	fill_random(want, n, h.seed);
	bool ok = !memcmp(want, (char *)b->data + sizeof(h), n);
	free(want);
	return ok ? NULL : "payload bytes differ";
}

static void *
worker_main(void *arg)
{
	struct worker *w = arg;
	struct fixture *f = w->f;
	uint64_t rng = 0x5eed0000u + (uint64_t)w->id;
	for (int op = 0; op < OPS && !w->fail[0]; op++) {
		uint64_t r = splitmix(&rng);
		uint32_t ki = (uint32_t)(r % KEYS);
		struct kvn_key k;
		char s[32];
		snprintf(s, sizeof(s), "shared-%u", ki);
		if (kvn_key_from_str(&k, s)) {
			snprintf(w->fail, sizeof(w->fail), "bad key %s", s);
			break;
		}
		int rc;
		switch ((r >> 8) % 8) {
		case 0:
		case 1:
		case 2: {
			size_t len = sizeof(struct val_hdr) + (size_t)((r >> 16) % (32 * KIB));
			struct kvn_buf *b = kvn_buf_new(len);
			if (!b) {
				snprintf(w->fail, sizeof(w->fail), "out of memory");
				break;
			}
			make_value(b, ki, r);
			rc = f->ops->put(f->be, &k, b);
			kvn_buf_unref(b);
			if (rc)
				snprintf(w->fail, sizeof(w->fail), "put %s: %s", s,
					 kvn_strerror(rc));
			break;
		}
		case 3:
		case 4:
		case 5: {
			struct kvn_buf *b = NULL;
			rc = f->ops->get(f->be, &k, &b);
			if (rc == -ENOENT)
				break;
			if (rc || !b) {
				snprintf(w->fail, sizeof(w->fail), "get %s: %s", s,
					 kvn_strerror(rc));
				break;
			}
			const char *why = check_value(b, ki);
			kvn_buf_unref(b);
			if (why)
				snprintf(w->fail, sizeof(w->fail), "get %s: %s", s, why);
			else
				w->gets_ok++;
			break;
		}
		case 6:
			rc = f->ops->remove(f->be, &k);
			if (rc && rc != -ENOENT)
				snprintf(w->fail, sizeof(w->fail), "remove %s: %s", s,
					 kvn_strerror(rc));
			break;
		default:
			rc = f->ops->contains(f->be, &k, false);
			if (rc != 0 && rc != 1)
				snprintf(w->fail, sizeof(w->fail), "contains %s: %s", s,
					 kvn_strerror(rc));
			break;
		}
	}
	return NULL;
}

struct tally {
	uint64_t count, bytes;
};

static int
tally_key(void *ctx, const struct kvn_key *key, size_t len)
{
	struct tally *t = ctx;
	(void)key;
	t->count++;
	t->bytes += len;
	return 0;
}

CONFORMANCE(four_threads_on_overlapping_keys_only_ever_see_whole_values)
{
	/* Small enough that puts evict while other threads read. */
	struct fixture *f = open_backend(im, 256 * KIB);
	struct worker w[THREADS];
	pthread_t t[THREADS];
	for (int i = 0; i < THREADS; i++) {
		w[i] = (struct worker){.f = f, .id = i};
		cr_assert_eq(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
	}
	unsigned long gets_ok = 0;
	for (int i = 0; i < THREADS; i++) {
		pthread_join(t[i], NULL);
		gets_ok += w[i].gets_ok;
	}
	for (int i = 0; i < THREADS; i++)
		cr_assert_str_empty(w[i].fail, "thread %d: %s", i, w[i].fail);
	cr_expect_gt(gets_ok, 0, "no get ever hit: the race was not exercised");

	/* Quiet again: stats, list and contents agree. */
	struct tally tl = {0};
	cr_assert_eq(f->ops->list(f->be, tally_key, &tl), 0);
	struct kvn_backend_stats s = stats_of(f);
	cr_expect_eq(s.count, tl.count, "stats count %" PRIu64 ", list %" PRIu64, s.count,
		     tl.count);
	cr_expect_eq(s.bytes, tl.bytes, "stats bytes %" PRIu64 ", list %" PRIu64, s.bytes,
		     tl.bytes);
	for (uint32_t i = 0; i < KEYS; i++) {
		struct kvn_key k = key_of("shared-%u", i);
		struct kvn_buf *b = NULL;
		int rc = f->ops->get(f->be, &k, &b);
		if (rc == -ENOENT)
			continue;
		cr_assert_eq(rc, 0, "get shared-%u: %s", i, kvn_strerror(rc));
		const char *why = check_value(b, i);
		kvn_buf_unref(b);
		cr_assert_null(why, "shared-%u: %s", i, why);
	}
}
