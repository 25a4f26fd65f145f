/* Disk backend specifics: large values, restart recovery, corruption handling, capacity and
 * LRU eviction, O_DIRECT fallback, concurrency, option errors. The generic backend contract is
 * in test_backend_conformance.c. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "node/engine/storage.h"
#include "tests/helpers/backend_env.h"

#define KIB 1024ull
#define MIB (1024ull * 1024)

/* ------------------------------------------------------------------------------------------
 * Fixture: a temp directory and at most one live instance at a time.
 * ------------------------------------------------------------------------------------------ */

static char dir[256];
static struct kvn_backend_env *env;
static struct kvn_backend *be;
static const struct kvn_backend_ops *ops = &kvn_disk_backend_ops;

static void
make_dir(const char *base)
{
	snprintf(dir, sizeof(dir), "%s/kvn-disk-XXXXXX", base);
	cr_assert_not_null(mkdtemp(dir), "mkdtemp %s: %s", dir, strerror(errno));
}

static void
setup(void)
{
	const char *tmp = getenv("TMPDIR");
	make_dir(tmp && *tmp ? tmp : "/tmp");
}

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	chmod(path, 0700);
	return remove(path);
}

static void
teardown(void)
{
	if (be)
		ops->destroy(be);
	be = NULL;
	backend_env_free(env);
	env = NULL;
	if (dir[0]) {
		chmod(dir, 0700);
		nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	}
	dir[0] = '\0';
}

/* Creates an instance on dir with capacity and extra options (NULL-terminated pairs). */
static int
open_disk(uint64_t capacity, ...)
{
	struct backend_opt opts[12];
	char cap[32];
	size_t n = 0;
	snprintf(cap, sizeof(cap), "%" PRIu64, capacity);
	opts[n++] = (struct backend_opt){"path", dir};
	opts[n++] = (struct backend_opt){"capacity_bytes", cap};
	va_list ap;
	va_start(ap, capacity);
	for (const char *o; n < 11 && (o = va_arg(ap, const char *));) {
		const char *v = va_arg(ap, const char *);
		opts[n++] = (struct backend_opt){o, v};
	}
	va_end(ap);
	opts[n] = (struct backend_opt){NULL, NULL};
	backend_env_free(env);
	env = backend_env_new("disk", opts, NULL);
	cr_assert_not_null(env);
	return ops->create(env, &be);
}

static void
reopen(uint64_t capacity)
{
	ops->destroy(be);
	be = NULL;
	cr_assert_eq(open_disk(capacity, NULL), 0, "reopening %s", dir);
}

static struct kvn_key
key_of(const char *fmt, ...)
{
	char s[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s, sizeof(s), fmt, ap);
	va_end(ap);
	struct kvn_key k;
	cr_assert_eq(kvn_key_from_str(&k, s), 0, "key %s", s);
	return k;
}

/* Deterministic bytes for (seed, len), so a reader can check a value without a copy. */
static void
fill(void *p, size_t len, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + len + 1;
	unsigned char *b = p;
	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		b[i] = (unsigned char)x;
	}
}

static bool
check(const void *p, size_t len, uint64_t seed)
{
	unsigned char *want = malloc(len ? len : 1);
	fill(want, len, seed);
	bool ok = !memcmp(p, want, len);
	free(want);
	return ok;
}

static int
put_seed(const struct kvn_key *k, size_t len, uint64_t seed)
{
	struct kvn_buf *b = kvn_buf_new(len);
	cr_assert_not_null(b);
	fill(b->data, len, seed);
	int r = ops->put(be, k, b);
	kvn_buf_unref(b);
	return r;
}

static void
expect_value(const struct kvn_key *k, size_t len, uint64_t seed)
{
	struct kvn_buf *b = NULL;
	int r = ops->get(be, k, &b);
	cr_assert_eq(r, 0, "get %s: %s", k->str, kvn_strerror(r));
	cr_assert_eq(b->len, len, "get %s: %zu bytes, want %zu", k->str, b->len, len);
	cr_assert(check(b->data, len, seed), "get %s: bytes differ from what was put", k->str);
	kvn_buf_unref(b);
}

static void
chunk_path(char *out, size_t outlen, const struct kvn_key *k)
{
	snprintf(out, outlen, "%s/%016" PRIx64 "%016" PRIx64 ".kvc", dir, k->digest.hi,
		 k->digest.lo);
}

static size_t
count_files(const char *suffix)
{
	DIR *dp = opendir(dir);
	cr_assert_not_null(dp);
	size_t n = 0, sl = strlen(suffix);
	for (struct dirent *de; (de = readdir(dp));) {
		size_t l = strlen(de->d_name);
		n += l > sl && !strcmp(de->d_name + l - sl, suffix);
	}
	closedir(dp);
	return n;
}

static struct kvn_backend_stats
stats(void)
{
	struct kvn_backend_stats s;
	ops->stats(be, &s);
	return s;
}

TestSuite(disk, .init = setup, .fini = teardown, .timeout = 240);

/* ------------------------------------------------------------------------------------------
 * Values
 * ------------------------------------------------------------------------------------------ */

static const size_t sizes[] = {1, 4 * KIB + 1, MIB, 32 * MIB};

static void
expect_round_trips(void)
{
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		struct kvn_key k = key_of("size-%zu", sizes[i]);
		expect_value(&k, sizes[i], i);
	}
}

static void
round_trips(void)
{
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		struct kvn_key k = key_of("size-%zu", sizes[i]);
		cr_assert_eq(put_seed(&k, sizes[i], i), 0, "put %zu bytes", sizes[i]);
		expect_value(&k, sizes[i], i);
	}
	struct kvn_backend_stats s = stats();
	cr_assert_eq(s.count, 4);
	cr_assert_eq(s.bytes, 1 + 4 * KIB + 1 + MIB + 32 * MIB);
}

Test(disk, values_from_1_byte_to_32_mib_round_trip)
{
	cr_assert_eq(open_disk(128 * MIB, NULL), 0);
	round_trips();
}

Test(disk, values_round_trip_with_buffered_io_and_fsync)
{
	cr_assert_eq(open_disk(128 * MIB, "o_direct", "false", "fsync", "true", NULL), 0);
	round_trips();
}

Test(disk, a_64_mib_value_from_page_aligned_memory_round_trips)
{
	cr_assert_eq(open_disk(128 * MIB, NULL), 0);
	/* Page-aligned caller memory takes the O_DIRECT path without a bounce copy. */
	size_t len = 64 * MIB - 3;
	void *mem;
	cr_assert_eq(posix_memalign(&mem, 4096, len), 0);
	fill(mem, len, 64);
	struct kvn_buf *b = kvn_buf_wrap(mem, len);
	struct kvn_key k = key_of("aligned-64m");
	cr_assert_eq(ops->put(be, &k, b), 0);
	kvn_buf_unref(b);
	free(mem);
	expect_value(&k, len, 64);
	struct kvn_buf *got;
	cr_assert_eq(ops->get(be, &k, &got), 0);
	cr_assert_eq((uintptr_t)got->data % 4096, 0, "a get returns page-aligned bytes");
	kvn_buf_unref(got);
}

Test(disk, a_value_larger_than_capacity_is_refused_with_enospc)
{
	cr_assert_eq(open_disk(64 * KIB, NULL), 0);
	struct kvn_key k = key_of("too-big");
	cr_assert_eq(put_seed(&k, 64 * KIB + 1, 1), -ENOSPC);
	cr_assert_eq(put_seed(&k, 64 * KIB, 1), 0, "exactly capacity fits");
}

Test(disk, a_file_is_published_under_the_digest_name_and_remove_deletes_it)
{
	cr_assert_eq(open_disk(MIB, NULL), 0);
	struct kvn_key k = key_of("fmt@model@1@0@abc@half");
	char path[512];
	chunk_path(path, sizeof(path), &k);
	cr_assert_eq(put_seed(&k, 5000, 3), 0);
	struct stat st;
	cr_assert_eq(stat(path, &st), 0, "%s exists after put", path);
	cr_assert_eq(st.st_size, 4096 + 5000, "header page + payload");
	cr_assert_eq(count_files(".kvt"), 0, "no temp file is left after a put");
	cr_assert_eq(ops->remove(be, &k), 0);
	cr_assert_eq(stat(path, &st), -1, "%s is gone after remove", path);
	cr_assert_eq(ops->remove(be, &k), -ENOENT);
}

/* ------------------------------------------------------------------------------------------
 * Restart recovery and corruption
 * ------------------------------------------------------------------------------------------ */

#define NREST 24

static size_t
rest_len(int i)
{
	return 1 + (size_t)i * 7919;
}

Test(disk, values_survive_a_restart_with_identical_bytes_and_stats)
{
	cr_assert_eq(open_disk(16 * MIB, NULL), 0);
	uint64_t total = 0;
	for (int i = 0; i < NREST; i++) {
		struct kvn_key k = key_of("fmt@model@1@0@%04x@half", i);
		cr_assert_eq(put_seed(&k, rest_len(i), (uint64_t)i), 0);
		total += rest_len(i);
	}
	reopen(16 * MIB);
	struct kvn_backend_stats s = stats();
	cr_assert_eq(s.count, NREST, "count after restart: %" PRIu64, s.count);
	cr_assert_eq(s.bytes, total, "bytes after restart: %" PRIu64 ", want %" PRIu64, s.bytes,
		     total);
	cr_assert_eq(s.errors, 0);
	for (int i = 0; i < NREST; i++) {
		struct kvn_key k = key_of("fmt@model@1@0@%04x@half", i);
		cr_assert_eq(ops->contains(be, &k, false), 1, "%s after restart", k.str);
		expect_value(&k, rest_len(i), (uint64_t)i);
	}
}

static int
count_cb(void *ctx, const struct kvn_key *key, size_t len)
{
	(void)key;
	((uint64_t *)ctx)[0]++;
	((uint64_t *)ctx)[1] += len;
	return 0;
}

Test(disk, a_restart_deletes_crash_leftovers_and_keeps_foreign_files)
{
	cr_assert_eq(open_disk(MIB, NULL), 0);
	struct kvn_key k = key_of("kept");
	cr_assert_eq(put_seed(&k, 777, 7), 0);
	ops->destroy(be);
	be = NULL;
	/* What a crash between write and rename leaves behind, and a file that is not ours. */
	char tmp[512], foreign[512];
	snprintf(tmp, sizeof(tmp), "%s/0123456789abcdef0123456789abcdef.4242-7.kvt", dir);
	snprintf(foreign, sizeof(foreign), "%s/README.txt", dir);
	FILE *f = fopen(tmp, "w");
	cr_assert_not_null(f);
	fputs("half a chunk", f);
	fclose(f);
	f = fopen(foreign, "w");
	cr_assert_not_null(f);
	fclose(f);

	cr_assert_eq(open_disk(MIB, NULL), 0);
	cr_assert_eq(access(tmp, F_OK), -1, "temp file %s was removed", tmp);
	cr_assert_eq(access(foreign, F_OK), 0, "foreign file %s was left alone", foreign);
	uint64_t seen[2] = {0, 0};
	cr_assert_eq(ops->list(be, count_cb, seen), 0);
	cr_assert_eq(seen[0], 1);
	cr_assert_eq(seen[1], 777);
	expect_value(&k, 777, 7);
}

static void
flip_byte(const struct kvn_key *k, off_t off)
{
	char path[512];
	chunk_path(path, sizeof(path), k);
	int fd = open(path, O_RDWR);
	cr_assert_geq(fd, 0, "open %s: %s", path, strerror(errno));
	unsigned char c;
	cr_assert_eq(pread(fd, &c, 1, off), 1);
	c ^= 0x5a;
	cr_assert_eq(pwrite(fd, &c, 1, off), 1);
	close(fd);
}

Test(disk, a_flipped_payload_byte_is_a_miss_counted_as_error_and_the_file_is_removed)
{
	cr_assert_eq(open_disk(MIB, NULL), 0);
	struct kvn_key bad = key_of("bad"), good = key_of("good");
	cr_assert_eq(put_seed(&bad, 10000, 1), 0);
	cr_assert_eq(put_seed(&good, 10000, 2), 0);
	flip_byte(&bad, 4096 + 1234);

	struct kvn_buf *b = NULL;
	cr_assert_eq(ops->get(be, &bad, &b), -ENOENT, "corrupt bytes are never returned");
	cr_assert_null(b);
	struct kvn_backend_stats s = stats();
	cr_assert_eq(s.errors, 1);
	cr_assert_eq(s.count, 1, "the corrupt chunk left the index");
	cr_assert_eq(s.bytes, 10000);
	cr_assert_eq(ops->contains(be, &bad, false), 0);
	char path[512];
	chunk_path(path, sizeof(path), &bad);
	cr_assert_eq(access(path, F_OK), -1, "%s was removed", path);
	cr_assert_str_neq(backend_env_last_log(env, KVN_LOG_WARN), "");
	cr_assert(strstr(backend_env_last_log(env, KVN_LOG_WARN), path),
		  "the warning names the file: %s", backend_env_last_log(env, KVN_LOG_WARN));

	reopen(MIB);
	cr_assert_eq(ops->contains(be, &bad, false), 0, "still dropped after a restart");
	expect_value(&good, 10000, 2);
	cr_assert_eq(stats().count, 1);
}

Test(disk, a_truncated_file_is_dropped_at_restart)
{
	cr_assert_eq(open_disk(MIB, NULL), 0);
	struct kvn_key bad = key_of("short"), good = key_of("whole");
	cr_assert_eq(put_seed(&bad, 9000, 1), 0);
	cr_assert_eq(put_seed(&good, 9000, 2), 0);
	ops->destroy(be);
	be = NULL;
	char path[512];
	chunk_path(path, sizeof(path), &bad);
	cr_assert_eq(truncate(path, 4096 + 8999), 0);

	cr_assert_eq(open_disk(MIB, NULL), 0);
	struct kvn_backend_stats s = stats();
	cr_assert_eq(s.count, 1);
	cr_assert_eq(s.bytes, 9000);
	cr_assert_eq(s.errors, 1, "the dropped file is counted");
	cr_assert_eq(ops->contains(be, &bad, false), 0);
	cr_assert_eq(access(path, F_OK), -1, "%s was removed", path);
	cr_assert(strstr(backend_env_last_log(env, KVN_LOG_WARN), "truncated"), "%s",
		  backend_env_last_log(env, KVN_LOG_WARN));
	expect_value(&good, 9000, 2);
}

Test(disk, a_truncated_file_is_a_miss_on_get)
{
	cr_assert_eq(open_disk(MIB, NULL), 0);
	struct kvn_key k = key_of("cut");
	cr_assert_eq(put_seed(&k, 20000, 1), 0);
	char path[512];
	chunk_path(path, sizeof(path), &k);
	cr_assert_eq(truncate(path, 4096 + 100), 0);
	struct kvn_buf *b = NULL;
	cr_assert_eq(ops->get(be, &k, &b), -ENOENT);
	cr_assert_eq(stats().errors, 1);
	cr_assert_eq(stats().count, 0);
}

Test(disk, a_garbled_header_is_a_miss_on_get)
{
	cr_assert_eq(open_disk(MIB, NULL), 0);
	struct kvn_key k = key_of("garbled-header");
	cr_assert_eq(put_seed(&k, 3000, 1), 0);
	flip_byte(&k, 50); /* inside the key text of the header */
	struct kvn_buf *b = NULL;
	cr_assert_eq(ops->get(be, &k, &b), -ENOENT);
	cr_assert_eq(stats().errors, 1);
}

Test(disk, verify_on_start_drops_a_flipped_payload_at_restart)
{
	cr_assert_eq(open_disk(MIB, NULL), 0);
	struct kvn_key bad = key_of("bad"), good = key_of("good");
	cr_assert_eq(put_seed(&bad, 10000, 1), 0);
	cr_assert_eq(put_seed(&good, 10000, 2), 0);
	ops->destroy(be);
	be = NULL;
	flip_byte(&bad, 4096 + 9999);
	cr_assert_eq(open_disk(MIB, "verify_on_start", "true", NULL), 0);
	cr_assert_eq(stats().count, 1);
	cr_assert_eq(stats().errors, 1);
	cr_assert_eq(ops->contains(be, &bad, false), 0);
	expect_value(&good, 10000, 2);
}

/* ------------------------------------------------------------------------------------------
 * Capacity and LRU
 * ------------------------------------------------------------------------------------------ */

Test(disk, eviction_takes_the_least_recently_used_unpinned_chunk)
{
	cr_assert_eq(open_disk(4000, NULL), 0);
	struct kvn_key k[6];
	for (int i = 0; i < 4; i++) {
		k[i] = key_of("lru-%d", i);
		cr_assert_eq(put_seed(&k[i], 1000, (uint64_t)i), 0);
	}
	expect_value(&k[0], 1000, 0); /* k0 is now the most recent: k1 is the oldest */
	k[4] = key_of("lru-4");
	cr_assert_eq(put_seed(&k[4], 1000, 4), 0);
	cr_assert_eq(ops->contains(be, &k[1], false), 0, "the oldest chunk was evicted");
	cr_assert_eq(ops->contains(be, &k[0], false), 1, "a recently read chunk stays");
	char path[512];
	chunk_path(path, sizeof(path), &k[1]);
	cr_assert_eq(access(path, F_OK), -1, "the evicted file %s was deleted", path);

	/* k2 is the oldest now; pinned, it must be skipped in favour of k3. */
	cr_assert_eq(ops->pin(be, &k[2]), 0);
	k[5] = key_of("lru-5");
	cr_assert_eq(put_seed(&k[5], 1000, 5), 0);
	cr_assert_eq(ops->contains(be, &k[2], false), 1, "a pinned chunk is never evicted");
	cr_assert_eq(ops->contains(be, &k[3], false), 0);
	struct kvn_backend_stats s = stats();
	cr_assert_eq(s.evictions, 2);
	cr_assert_eq(s.bytes, 4000);
	cr_assert_eq(s.count, 4);
	cr_assert_leq(count_files(".kvc"), 4);
	cr_assert_eq(ops->unpin(be, &k[2]), 0);
}

Test(disk, a_put_that_only_pinned_chunks_could_make_room_for_is_refused)
{
	cr_assert_eq(open_disk(2000, NULL), 0);
	struct kvn_key a = key_of("a"), b = key_of("b"), c = key_of("c");
	cr_assert_eq(put_seed(&a, 1000, 1), 0);
	cr_assert_eq(put_seed(&b, 1000, 2), 0);
	cr_assert_eq(ops->contains(be, &a, true), 1);
	cr_assert_eq(ops->pin(be, &b), 0);
	cr_assert_eq(put_seed(&c, 1000, 3), -ENOSPC);
	expect_value(&a, 1000, 1);
	expect_value(&b, 1000, 2);
	cr_assert_eq(ops->unpin(be, &b), 0);
	cr_assert_eq(put_seed(&c, 1000, 3), 0, "unpinned, b makes room");
	cr_assert_eq(ops->contains(be, &b, false), 0);
}

Test(disk, a_put_pinned_chunks_leave_no_room_for_evicts_nothing)
{
	cr_assert_eq(open_disk(4000, NULL), 0);
	struct kvn_key k[4];
	for (int i = 0; i < 4; i++) {
		k[i] = key_of("keep-%d", i);
		cr_assert_eq(put_seed(&k[i], 1000, (uint64_t)i), 0);
	}
	cr_assert_eq(ops->pin(be, &k[0]), 0);
	cr_assert_eq(ops->pin(be, &k[1]), 0);
	/* 2000 pinned bytes: 2500 more can never fit in 4000, whatever is evicted. */
	struct kvn_key big = key_of("too-big-beside-the-pins");
	cr_assert_eq(put_seed(&big, 2500, 9), -ENOSPC);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(ops->contains(be, &k[i], false), 1,
			     "chunk %d was evicted for a put that could not fit anyway", i);
	cr_assert_eq(stats().evictions, 0);
	cr_assert_eq(count_files(".kvc"), 4);
	cr_assert_eq(ops->unpin(be, &k[0]), 0);
	cr_assert_eq(put_seed(&big, 2500, 9), 0, "with one pin gone it fits after evictions");
	expect_value(&big, 2500, 9);
	cr_assert_eq(ops->contains(be, &k[1], false), 1, "a pinned chunk is never evicted");
	cr_assert_eq(ops->unpin(be, &k[1]), 0);
}

Test(disk, a_restart_with_a_smaller_capacity_keeps_the_newest_by_mtime)
{
	cr_assert_eq(open_disk(4000, NULL), 0);
	struct kvn_key k[4];
	for (int i = 0; i < 4; i++) {
		k[i] = key_of("age-%d", i);
		cr_assert_eq(put_seed(&k[i], 1000, (uint64_t)i), 0);
	}
	ops->destroy(be);
	be = NULL;
	/* Ages by hand: 2 newest, then 0, then 3, then 1 oldest. */
	const int age[4] = {20, 30, 10, 25};
	for (int i = 0; i < 4; i++) {
		char path[512];
		chunk_path(path, sizeof(path), &k[i]);
		struct timespec ts[2] = {{1700000000 - age[i], 0}, {1700000000 - age[i], 0}};
		cr_assert_eq(utimensat(AT_FDCWD, path, ts, 0), 0);
	}
	cr_assert_eq(open_disk(2000, NULL), 0);
	cr_assert_eq(ops->contains(be, &k[2], false), 1);
	cr_assert_eq(ops->contains(be, &k[0], false), 1);
	cr_assert_eq(ops->contains(be, &k[3], false), 0);
	cr_assert_eq(ops->contains(be, &k[1], false), 0);
	cr_assert_eq(count_files(".kvc"), 2);
	/* The LRU continues from the file ages: a new put evicts 0, the older of the two. */
	struct kvn_key n = key_of("new");
	cr_assert_eq(put_seed(&n, 1000, 9), 0);
	cr_assert_eq(ops->contains(be, &k[0], false), 0);
	cr_assert_eq(ops->contains(be, &k[2], false), 1);
}

/* ------------------------------------------------------------------------------------------
 * O_DIRECT fallback
 * ------------------------------------------------------------------------------------------ */

/* While set, openat refuses O_DIRECT as a filesystem without it would (tmpfs before Linux 6.6
 * did). The test executable's definition interposes on libc's for the statically linked
 * backend. */
static _Atomic bool refuse_odirect;

int
openat(int dirfd, const char *path, int flags, ...)
{
	static int (*real)(int, const char *, int, ...);
	if (!real)
		real = (int (*)(int, const char *, int, ...))dlsym(RTLD_NEXT, "openat");
	mode_t mode = 0;
	if (flags & (O_CREAT | O_TMPFILE)) {
		va_list ap;
		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
	}
	if (refuse_odirect && (flags & O_DIRECT)) {
		errno = EINVAL;
		return -1;
	}
	return real(dirfd, path, flags, mode);
}

Test(disk, a_filesystem_refusing_o_direct_falls_back_to_buffered_io)
{
	refuse_odirect = true;
	cr_assert_eq(open_disk(128 * MIB, NULL), 0);
	cr_assert(strstr(backend_env_last_log(env, KVN_LOG_INFO), "O_DIRECT refused"),
		  "an info line says why: \"%s\"", backend_env_last_log(env, KVN_LOG_INFO));
	round_trips();
	reopen(128 * MIB);
	cr_assert_eq(stats().count, 4);
	expect_round_trips();
}

Test(disk, values_round_trip_and_survive_a_restart_on_tmpfs)
{
	if (access("/dev/shm", W_OK)) {
		teardown(); /* a skipped test gets no .fini */
		cr_skip_test("no writable /dev/shm");
	}
	teardown();
	make_dir("/dev/shm");
	cr_assert_eq(open_disk(128 * MIB, NULL), 0);
	round_trips();
	reopen(128 * MIB);
	cr_assert_eq(stats().count, 4);
	expect_round_trips();
}

/* ------------------------------------------------------------------------------------------
 * Concurrency: writers replace values of a small key set (so the same key is often written
 * by two threads at once) under eviction pressure while readers and a remover run. Every
 * value carries its own seed, so a reader can tell a complete value from a torn one.
 * ------------------------------------------------------------------------------------------ */

#define CKEYS 12
#define CITER 150

static _Atomic int writers_left;

struct worker {
	pthread_t tid;
	int id;
	int bad; /* torn or wrong values seen */
	int hits;
};

static size_t
conc_len(uint64_t seed)
{
	return 8 + (size_t)(seed % 5) * 40 * KIB + (size_t)(seed % 7) * 4099;
}

static void *
writer(void *arg)
{
	struct worker *w = arg;
	for (int i = 0; i < CITER; i++) {
		int ki = (i * 7 + w->id) % CKEYS;
		struct kvn_key k = key_of("conc-%d", ki);
		uint64_t seed = (uint64_t)ki << 32 | (uint64_t)(w->id * CITER + i);
		size_t len = conc_len(seed);
		struct kvn_buf *b = kvn_buf_new(len);
		memcpy(b->data, &seed, sizeof(seed));
		fill((char *)b->data + 8, len - 8, seed);
		int r = ops->put(be, &k, b);
		kvn_buf_unref(b);
		if (r)
			w->bad++;
	}
	writers_left--;
	return NULL;
}

static void *
reader(void *arg)
{
	struct worker *w = arg;
	for (int i = 0; writers_left > 0; i++) {
		int ki = (i * 5 + w->id) % CKEYS;
		struct kvn_key k = key_of("conc-%d", ki);
		struct kvn_buf *b = NULL;
		int r = ops->get(be, &k, &b);
		if (r == -ENOENT)
			continue;
		uint64_t seed;
		if (r || b->len < 8) {
			w->bad++;
		} else {
			memcpy(&seed, b->data, 8);
			if (seed >> 32 != (uint64_t)ki || b->len != conc_len(seed) ||
			    !check((char *)b->data + 8, b->len - 8, seed))
				w->bad++;
			else
				w->hits++;
		}
		if (b)
			kvn_buf_unref(b);
		if (i % 50 == 0)
			ops->remove(be, &k); /* racing removes are fine; -ENOENT too */
	}
	return NULL;
}

Test(disk, concurrent_puts_gets_and_removes_never_return_torn_values)
{
	/* Room for about four values: puts keep evicting what readers are reading. */
	cr_assert_eq(open_disk(700 * KIB, NULL), 0);
	struct worker w[5];
	writers_left = 3;
	for (int i = 0; i < 5; i++) {
		w[i] = (struct worker){.id = i};
		cr_assert_eq(pthread_create(&w[i].tid, NULL, i < 3 ? writer : reader, &w[i]), 0);
	}
	int bad = 0, hits = 0;
	for (int i = 0; i < 5; i++) {
		pthread_join(w[i].tid, NULL);
		bad += w[i].bad;
		hits += w[i].hits;
	}
	cr_assert_eq(bad, 0, "%d failed puts or torn/wrong values", bad);
	cr_assert_gt(hits, 0, "readers saw values while writers ran");
	cr_log_info("%d verified hits", hits);

	/* The index, the stats and the directory agree, and each value left is whole. */
	uint64_t seen[2] = {0, 0};
	cr_assert_eq(ops->list(be, count_cb, seen), 0);
	struct kvn_backend_stats s = stats();
	cr_assert_eq(s.count, seen[0]);
	cr_assert_eq(s.bytes, seen[1]);
	cr_assert_leq(s.bytes, 700 * KIB);
	cr_assert_eq(s.errors, 0);
	cr_assert_eq(count_files(".kvc"), s.count, "one file per indexed chunk");
	cr_assert_eq(count_files(".kvt"), 0, "no temp file left");
	reopen(700 * KIB);
	cr_assert_eq(stats().count, s.count);
	cr_assert_eq(stats().bytes, s.bytes);
	for (int ki = 0; ki < CKEYS; ki++) {
		struct kvn_key k = key_of("conc-%d", ki);
		struct kvn_buf *b = NULL;
		if (ops->get(be, &k, &b))
			continue;
		uint64_t seed;
		memcpy(&seed, b->data, 8);
		cr_assert(b->len == conc_len(seed) && check((char *)b->data + 8, b->len - 8, seed),
			  "%s is whole after restart", k.str);
		kvn_buf_unref(b);
	}
}

/* ------------------------------------------------------------------------------------------
 * Options
 * ------------------------------------------------------------------------------------------ */

static void
expect_invalid(const char *needle)
{
	const char *msg = backend_env_last_log(env, KVN_LOG_ERROR);
	cr_assert(strstr(msg, needle), "the error names %s: \"%s\"", needle, msg);
}

Test(disk, a_missing_path_is_einval_naming_local_disk)
{
	struct backend_opt opts[] = {{"capacity_bytes", "1000"}, {NULL, NULL}};
	env = backend_env_new("disk", opts, NULL);
	cr_assert_eq(ops->create(env, &be), -EINVAL);
	cr_assert_null(be);
	expect_invalid("path");
	expect_invalid("local_disk");
}

Test(disk, a_zero_or_missing_capacity_is_einval_naming_max_local_disk_size)
{
	cr_assert_eq(open_disk(0, NULL), -EINVAL);
	cr_assert_null(be);
	expect_invalid("max_local_disk_size");
	struct backend_opt opts[] = {{"path", dir}, {NULL, NULL}};
	backend_env_free(env);
	env = backend_env_new("disk", opts, NULL);
	cr_assert_eq(ops->create(env, &be), -EINVAL);
	expect_invalid("max_local_disk_size");
}

Test(disk, a_bad_boolean_is_einval_naming_the_option)
{
	cr_assert_eq(open_disk(1000, "o_direct", "maybe", NULL), -EINVAL);
	expect_invalid("o_direct");
	cr_assert_eq(open_disk(1000, "fsync", "2", NULL), -EINVAL);
	expect_invalid("fsync");
}

Test(disk, a_missing_directory_is_created)
{
	char sub[300];
	snprintf(sub, sizeof(sub), "%s/a/b/c", dir);
	struct backend_opt opts[] = {{"path", sub}, {"capacity_bytes", "1000"}, {NULL, NULL}};
	env = backend_env_new("disk", opts, NULL);
	cr_assert_eq(ops->create(env, &be), 0);
	struct stat st;
	cr_assert_eq(stat(sub, &st), 0);
	cr_assert(S_ISDIR(st.st_mode));
}

Test(disk, a_directory_that_cannot_be_created_is_einval_naming_it)
{
	char file[300], sub[320];
	snprintf(file, sizeof(file), "%s/plain-file", dir);
	snprintf(sub, sizeof(sub), "%s/sub", file);
	FILE *f = fopen(file, "w");
	cr_assert_not_null(f);
	fclose(f);
	struct backend_opt opts[] = {{"path", sub}, {"capacity_bytes", "1000"}, {NULL, NULL}};
	env = backend_env_new("disk", opts, NULL);
	cr_assert_eq(ops->create(env, &be), -EINVAL);
	expect_invalid(sub);
	expect_invalid("local_disk");
}

Test(disk, an_unwritable_directory_is_einval_naming_it)
{
	if (geteuid() == 0) {
		teardown(); /* a skipped test gets no .fini */
		cr_skip_test("root writes to any directory; covered by the uncreatable case");
	}
	cr_assert_eq(chmod(dir, 0500), 0);
	cr_assert_eq(open_disk(1000, NULL), -EINVAL);
	expect_invalid(dir);
}

Test(disk, a_second_instance_on_the_same_directory_is_refused)
{
	cr_assert_eq(open_disk(1000, NULL), 0);
	struct backend_opt opts[] = {{"path", dir}, {"capacity_bytes", "1000"}, {NULL, NULL}};
	struct kvn_backend_env *env2 = backend_env_new("disk", opts, NULL);
	struct kvn_backend *be2 = NULL;
	cr_assert_eq(ops->create(env2, &be2), -EBUSY);
	cr_assert_null(be2);
	cr_assert(strstr(backend_env_last_log(env2, KVN_LOG_ERROR), dir));
	backend_env_free(env2);
}
