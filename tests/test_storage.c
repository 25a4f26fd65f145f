/* Storage manager: tier order, first-hit get, promotion into cpu, write-through with queued
 * (slow-tier) writes visible to get/contains, removal racing queued writes, bounded queues. */
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "node/engine/config.h"
#include "core/pool.h"
#include "gpu/staging.h"
#include "tests/helpers/host_region.h"
#include "node/engine/storage.h"

#define GATE_SO KVN_MODULE_DIR "/libkvn_test_gate.so"

static char dir[64];
static struct kvn_config *cfg;
static struct kvn_storage *st;
static char err[512];

static void
setup(void)
{
	strcpy(dir, "/tmp/kvn-storage-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
}

static void
teardown(void)
{
	kvn_storage_close(st);
	st = NULL;
	kvn_config_free(cfg);
	cfg = NULL;
	char cmd[128];
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	cr_assert_eq(system(cmd), 0);
}

/* Opens a storage manager (with its own pool when local_cpu) from YAML text; %s = dir. */
static struct kvn_pool *pool;

static void
open_yaml(const char *fmt)
{
	char yaml[2048];
	snprintf(yaml, sizeof(yaml), fmt, dir, dir);
	cr_assert_eq(kvn_config_parse(yaml, strlen(yaml), "test.yaml", &cfg, err, sizeof(err)), 0,
		     "config: %s", err);
	pool = NULL;
	if (cfg->local_cpu)
		cr_assert_eq(kvn_pool_create(cfg->max_local_cpu_size, false, &pool, err, sizeof(err)), 0,
			     "pool: %s", err);
	cr_assert_eq(kvn_storage_open(cfg, pool, &st, err, sizeof(err)), 0, "open: %s", err);
}

static void
close_all(void)
{
	kvn_storage_close(st);
	st = NULL;
	kvn_pool_destroy(pool);
	pool = NULL;
}

static struct kvn_key
key_n(int n)
{
	struct kvn_key k;
	char text[64];
	snprintf(text, sizeof(text), "vllm@test@1@0@%x@half", n);
	cr_assert_eq(kvn_key_from_str(&k, text), 0);
	return k;
}

static void
put_n(int n, size_t len, int fill)
{
	struct kvn_key k = key_n(n);
	struct kvn_buf *b = kvn_buf_new(len);
	memset(b->data, fill, len);
	cr_assert_eq(kvn_storage_put(st, &k, b), 0, "put %d", n);
	kvn_buf_unref(b);
}

/* Gets key n and checks every byte is fill. */
static void
expect_n(int n, size_t len, int fill)
{
	struct kvn_key k = key_n(n);
	struct kvn_buf *b = NULL;
	cr_assert_eq(kvn_storage_get(st, &k, &b), 0, "get %d", n);
	cr_assert_eq(b->len, len);
	for (size_t i = 0; i < len; i++)
		if (((unsigned char *)b->data)[i] != (unsigned char)fill)
			cr_assert_fail("key %d byte %zu is %d, want %d", n, i,
				       ((unsigned char *)b->data)[i], fill);
	kvn_buf_unref(b);
}

static struct kvn_backend_stats
tier(size_t i, const char *want_name)
{
	const char *name;
	struct kvn_backend_stats s;
	cr_assert_eq(kvn_storage_tier(st, i, &name, &s), 0);
	cr_assert_str_eq(name, want_name, "tier %zu", i);
	return s;
}

static void (*gate_set_closed)(int);
static int (*gate_waiting)(void);

static void
gate_bind(void)
{
	void *h = dlopen(GATE_SO, RTLD_NOW | RTLD_NOLOAD);
	cr_assert_not_null(h, "the gate module is loaded by the storage manager");
	gate_set_closed = (void (*)(int))dlsym(h, "kvn_test_gate_set_closed");
	gate_waiting = (int (*)(void))dlsym(h, "kvn_test_gate_waiting");
	cr_assert(gate_set_closed && gate_waiting);
	dlclose(h); /* drops our extra reference only */
}

/* A function the gate module exports beyond gate_bind's two. */
static void *
gate_sym(const char *name)
{
	void *h = dlopen(GATE_SO, RTLD_NOW | RTLD_NOLOAD);
	cr_assert_not_null(h, "the gate module is loaded by the storage manager");
	void *f = dlsym(h, name);
	cr_assert_not_null(f, "%s", name);
	dlclose(h);
	return f;
}

static void
wait_for(int (*cond)(void), int want)
{
	for (int i = 0; i < 60000 && cond() != want; i++)
		usleep(1000);
	cr_assert_eq(cond(), want, "condition reached within 60 s");
}

static const char gate_cfg[] = "local_cpu: %s\n"
			       "max_local_cpu_size: 0.01\n"
			       "put_threads: 1\n"
			       "put_queue_depth: 2\n"
			       "external_backends: [gate]\n"
			       "extra_config:\n"
			       "  external_backend.gate.module_path: " GATE_SO "\n"
			       "  external_backend.gate.class_name: kvn_gate_backend_ops\n";

static void
open_gate(bool cpu)
{
	char fmt[1024];
	snprintf(fmt, sizeof(fmt), gate_cfg, cpu ? "true" : "false");
	open_yaml(fmt);
	gate_bind();
}

TestSuite(storage, .init = setup, .fini = teardown);

Test(storage, tiers_are_ordered_cpu_disk_then_external_in_list_order)
{
	open_yaml("max_local_cpu_size: 0.01\nlocal_disk: \"file://%s/disk\"\nmax_local_disk_size: 0.01\n"
		  "external_backends: [gate]\nextra_config:\n"
		  "  external_backend.gate.module_path: " GATE_SO "\n"
		  "  external_backend.gate.class_name: kvn_gate_backend_ops\n");
	cr_assert_eq(kvn_storage_count(st), 3);
	tier(0, "cpu");
	tier(1, "disk");
	tier(2, "gate");
	cr_assert(kvn_storage_async(st), "disk and gate are written asynchronously");
	close_all();
}

Test(storage, get_returns_the_first_hit_and_writes_through_to_every_tier)
{
	open_yaml("max_local_cpu_size: 0.01\nlocal_disk: %s/disk\nmax_local_disk_size: 0.01\n");
	put_n(1, 4096, 0x11);
	kvn_storage_flush(st);
	cr_assert_eq(tier(0, "cpu").count, 1);
	cr_assert_eq(tier(1, "disk").count, 1, "written through to disk");
	expect_n(1, 4096, 0x11);
	cr_assert_eq(tier(0, "cpu").hits, 1);
	cr_assert_eq(tier(1, "disk").hits, 0, "the cpu hit answers first");
	close_all();
}

Test(storage, a_hit_in_a_slower_tier_is_promoted_into_cpu)
{
	/* 4 MiB of cpu: eight 1 MiB chunks push the first ones out of cpu, not out of disk. */
	open_yaml("max_local_cpu_size: 0.004\nlocal_disk: %s/disk\nmax_local_disk_size: 0.1\n");
	for (int i = 0; i < 8; i++)
		put_n(i, 1 << 20, i);
	kvn_storage_flush(st);
	cr_assert(tier(0, "cpu").evictions > 0, "the cpu tier evicted");
	cr_assert_eq(tier(1, "disk").count, 8);

	expect_n(0, 1 << 20, 0);
	cr_assert_eq(tier(1, "disk").hits, 1, "key 0 came from disk");
	uint64_t cpu_hits = tier(0, "cpu").hits;
	expect_n(0, 1 << 20, 0);
	cr_assert_eq(tier(0, "cpu").hits, cpu_hits + 1, "the second get hits cpu: promoted");
	cr_assert_eq(tier(1, "disk").hits, 1);
	close_all();
}

Test(storage, promotion_can_be_turned_off)
{
	open_yaml("max_local_cpu_size: 0.004\nlocal_disk: %s/disk\nmax_local_disk_size: 0.1\n"
		  "promote_to_cpu: false\n");
	for (int i = 0; i < 8; i++)
		put_n(i, 1 << 20, i);
	kvn_storage_flush(st);
	expect_n(0, 1 << 20, 0);
	expect_n(0, 1 << 20, 0);
	cr_assert_eq(tier(1, "disk").hits, 2, "both gets went to disk");
	close_all();
}

Test(storage, a_queued_write_is_visible_to_contains_and_get_before_it_lands)
{
	open_gate(false);
	gate_set_closed(1);
	put_n(7, 1000, 0x77);
	struct kvn_key k = key_n(7);
	cr_assert_eq(kvn_storage_put_pending(st, &k), 1);
	cr_assert_eq(kvn_storage_contains(st, &k), 1);
	expect_n(7, 1000, 0x77);
	wait_for(gate_waiting, 1);
	cr_assert_eq(tier(0, "gate").count, 0, "still in flight");
	gate_set_closed(0);
	kvn_storage_flush(st);
	cr_assert_eq(kvn_storage_put_pending(st, &k), 0);
	cr_assert_eq(tier(0, "gate").count, 1);
	expect_n(7, 1000, 0x77);
	close_all();
}

Test(storage, remove_wins_over_a_write_still_in_flight)
{
	open_gate(false);
	gate_set_closed(1);
	put_n(1, 100, 1); /* taken by the writer, blocked in the tier */
	wait_for(gate_waiting, 1);
	put_n(2, 100, 2); /* still queued */
	struct kvn_key k1 = key_n(1), k2 = key_n(2);
	cr_assert_eq(kvn_storage_remove(st, &k1), 0, "a queued write counts as held");
	cr_assert_eq(kvn_storage_remove(st, &k2), 0);
	gate_set_closed(0);
	kvn_storage_flush(st);
	cr_assert_eq(kvn_storage_contains(st, &k1), 0, "removed while being written");
	cr_assert_eq(kvn_storage_contains(st, &k2), 0, "removed while queued");
	cr_assert_eq(tier(0, "gate").count, 0);
	close_all();
}

Test(storage, a_newer_value_is_never_overwritten_by_an_older_queued_one)
{
	open_gate(false);
	gate_set_closed(1);
	put_n(3, 64, 0xa1);
	wait_for(gate_waiting, 1);
	put_n(3, 64, 0xa2);
	put_n(3, 64, 0xa3);
	expect_n(3, 64, 0xa3);
	gate_set_closed(0);
	kvn_storage_flush(st);
	expect_n(3, 64, 0xa3);
	close_all();
}

Test(storage, a_superseded_write_keeps_what_it_wrote_only_a_remove_undoes_it)
{
	open_gate(false);
	int (*removes)(void) = (int (*)(void))gate_sym("kvn_test_gate_removes");
	int before = removes();
	gate_set_closed(1);
	put_n(4, 64, 0xb1); /* in the tier when the newer put comes */
	wait_for(gate_waiting, 1);
	put_n(4, 64, 0xb2);
	gate_set_closed(0);
	kvn_storage_flush(st);
	/* Undoing the older write would leave the tier without the key until the newer one
	 * lands: a crash in between, or a failed newer write, loses a value that was stored. */
	cr_assert_eq(removes(), before, "the superseded write deleted what it had written");
	expect_n(4, 64, 0xb2);
	cr_assert_eq(tier(0, "gate").count, 1);
	close_all();
}

static _Atomic int produced;

static void *
producer(void *arg)
{
	(void)arg;
	for (int i = 0; i < 6; i++) {
		put_n(100 + i, 64, i);
		atomic_fetch_add(&produced, 1);
	}
	return NULL;
}

static int
produced_count(void)
{
	return atomic_load(&produced);
}

Test(storage, the_write_queue_is_bounded_and_applies_backpressure)
{
	open_gate(false); /* one writer, queue depth 2 */
	gate_set_closed(1);
	atomic_store(&produced, 0);
	pthread_t t;
	pthread_create(&t, NULL, producer, NULL);
	wait_for(gate_waiting, 1);
	wait_for(produced_count, 3); /* one in the tier, two queued */
	usleep(200 * 1000);
	/* A slow machine can only make the count lower; an unbounded queue makes it 6. */
	cr_assert_eq(produced_count(), 3, "the fourth put waits for room");
	gate_set_closed(0);
	pthread_join(t, NULL);
	kvn_storage_flush(st);
	cr_assert_eq(tier(0, "gate").count, 6, "nothing was lost");
	close_all();
}

static int
count_128(void *ctx, const struct kvn_key *k, size_t len)
{
	(void)k;
	cr_assert_eq(len, 128);
	(*(int *)ctx)++;
	return 0;
}

Test(storage, list_reports_a_key_held_by_several_tiers_once)
{
	open_yaml("max_local_cpu_size: 0.01\nlocal_disk: %s/disk\nmax_local_disk_size: 0.01\n");
	for (int i = 0; i < 5; i++)
		put_n(i, 128, i);
	kvn_storage_flush(st);
	int n = 0;
	cr_assert_eq(kvn_storage_list(st, count_128, &n), 0);
	cr_assert_eq(n, 5);
	close_all();
}

Test(storage, an_external_backend_without_its_module_is_a_clear_error)
{
	char yaml[512];
	snprintf(yaml, sizeof(yaml),
		 "external_backends: [nope]\nextra_config:\n"
		 "  external_backend.nope.module_path: %s/missing.so\n"
		 "  external_backend.nope.class_name: kvn_nope_ops\n", dir);
	cr_assert_eq(kvn_config_parse(yaml, strlen(yaml), "t.yaml", &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kvn_pool_create(cfg->max_local_cpu_size, false, &pool, err, sizeof(err)), 0);
	cr_assert_lt(kvn_storage_open(cfg, pool, &st, err, sizeof(err)), 0);
	cr_assert(strstr(err, "missing.so"), "names the file: %s", err);
	kvn_pool_destroy(pool);
	pool = NULL;
}

Test(storage, no_enabled_tier_is_refused)
{
	const char *yaml = "local_cpu: false\n";
	cr_assert_eq(kvn_config_parse(yaml, strlen(yaml), "t.yaml", &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kvn_storage_open(cfg, NULL, &st, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "no storage tier"), "%s", err);
}

Test(storage, option_values_a_backend_reads_stay_valid_after_later_reads)
{
	open_gate(false);
	const struct kvn_backend_env *(*env_of)(void) =
	    (const struct kvn_backend_env *(*)(void))gate_sym("kvn_test_gate_env");
	const struct kvn_backend_env *env = env_of();
	cr_assert_not_null(env);
	/* Top-level keys, rendered as text by the node: each answer must outlive the next. */
	const char *a = env->get_opt(env, "put_threads");
	const char *b = env->get_opt(env, "put_queue_depth");
	const char *c = env->get_opt(env, "max_local_cpu_size");
	cr_assert(a && b && c);
	char want[64];
	cr_assert_eq(kvn_config_value(cfg, "max_local_cpu_size", want, sizeof(want)), 0);
	cr_assert_str_eq(a, "1", "put_threads reads \"%s\" after two more reads", a);
	cr_assert_str_eq(b, "2", "put_queue_depth reads \"%s\" after one more read", b);
	cr_assert_str_eq(c, want);
	cr_assert_eq(env->get_opt(env, "put_threads"), a, "the same answer, the same string");
	cr_assert_str_eq(env->get_opt(env, "class_name"), "kvn_gate_backend_ops");
	close_all();
}

/* cpu and a disk tier of about 2 KiB (2^-19 GB = 2048 bytes), extra_config lines in extra. */
static void
open_small_disk(const char *extra)
{
	char fmt[1024];
	snprintf(fmt, sizeof(fmt),
		 "local_cpu: true\nmax_local_cpu_size: 0.01\nlocal_disk: %%s/disk\n"
		 "max_local_disk_size: 0.0000019073486328125\nextra_config:\n%s",
		 extra);
	open_yaml(fmt);
}

/* Pins key n in the disk tier, which then has no room for a value of 1100 bytes or more. */
static void
pin_in_disk(int n)
{
	struct kvn_backend *d = kvn_storage_backend(st, &kvn_disk_backend_ops);
	struct kvn_key k = key_n(n);
	cr_assert_eq(kvn_disk_backend_ops.pin(d, &k), 0);
}

Test(storage, with_disk_sync_put_a_put_returns_once_the_disk_holds_it_and_fails_when_it_cannot)
{
	open_small_disk("  disk.sync_put: true\n");
	cr_assert_eq(tier(1, "disk").capacity, 2048);
	put_n(1, 1000, 0x11);
	/* No flush: the acknowledgement itself says the disk has it. */
	cr_assert_eq(tier(1, "disk").count, 1, "the put returned before the disk write");
	pin_in_disk(1);
	struct kvn_key k = key_n(2);
	struct kvn_buf *b = kvn_buf_new(1500);
	memset(b->data, 0x22, 1500);
	cr_assert_eq(kvn_storage_put(st, &k, b), -ENOSPC,
		     "a value the disk could not store was acknowledged");
	kvn_buf_unref(b);
	close_all();
}

Test(storage, without_sync_put_a_put_the_disk_cannot_store_is_still_acknowledged_from_cpu)
{
	open_small_disk("  disk.sync_put: false\n");
	put_n(1, 1000, 0x11);
	kvn_storage_flush(st);
	pin_in_disk(1);
	put_n(2, 1500, 0x22);
	kvn_storage_flush(st);
	expect_n(2, 1500, 0x22);
	cr_assert_eq(tier(1, "disk").count, 1);
	close_all();
}

static int
count_lines_with(const char *text, const char *what)
{
	int n = 0;
	for (const char *p = text; (p = strstr(p, what)); p += strlen(what))
		n++;
	return n;
}

Test(storage, failed_disk_writes_are_logged_at_most_about_once_a_second)
{
	char logpath[128];
	snprintf(logpath, sizeof(logpath), "%s/log.txt", dir);
	fflush(stderr);
	int saved = dup(2), fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	cr_assert_geq(fd, 0);
	dup2(fd, 2);
	close(fd);
	open_small_disk("  disk.fsync: false\n");
	put_n(1, 1000, 0x11);
	kvn_storage_flush(st);
	pin_in_disk(1);
	for (int i = 0; i < 200; i++)
		put_n(100 + i, 1500, i); /* each one refused by the disk */
	kvn_storage_flush(st);
	close_all();
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	FILE *f = fopen(logpath, "r");
	cr_assert_not_null(f);
	static char text[1 << 20];
	size_t n = fread(text, 1, sizeof(text) - 1, f);
	text[n] = '\0';
	fclose(f);
	int storage = count_lines_with(text, "to disk failed");
	int disk = count_lines_with(text, "no room");
	cr_assert_geq(storage, 1, "no failed write was logged:\n%s", text);
	cr_assert_geq(disk, 1);
	/* 200 failures in a run of well under a minute even on a loaded machine. */
	cr_assert_lt(storage + disk, 100, "%d + %d lines for 200 failed writes", storage, disk);
}

Test(storage, sync_put_for_the_remote_tier_is_refused_naming_it)
{
	const char yaml[] = "local_cpu: false\nremote_url: \"blackhole://\"\n"
			    "extra_config:\n  remote.sync_put: true\n";
	cr_assert_eq(kvn_config_parse(yaml, strlen(yaml), "test.yaml", &cfg, err, sizeof(err)), 0,
		     "config: %s", err);
	cr_assert_lt(kvn_storage_open(cfg, NULL, &st, err, sizeof(err)), 0);
	cr_assert(strstr(err, "remote.sync_put"), "%s", err);
	st = NULL;
}

/* ------------------------------------------------------------------------------------------
 * The gpu tier in the storage manager. Its region here is host memory behind the host copy
 * engine of gpu/staging.h (the tier's logic, not a GPU: tests/test_gpu_device.c and the gpu
 * case of the backend conformance suite run it on device memory).
 * ------------------------------------------------------------------------------------------ */

static void
open_with_gpu_tier(struct host_region *h, size_t len)
{
	host_region_open(h, len, 7);
	const char *yaml = "local_cpu: true\nmax_local_cpu_size: 0.01\n";
	cr_assert_eq(kvn_config_parse(yaml, strlen(yaml), "test.yaml", &cfg, err, sizeof(err)), 0,
		     "config: %s", err);
	cr_assert_eq(kvn_pool_create(cfg->max_local_cpu_size, false, &pool, err, sizeof(err)), 0,
		     "pool: %s", err);
	cr_assert_eq(kvn_storage_open_gpu(cfg, pool, &h->rg, 1, &st, err, sizeof(err)), 0,
		     "open: %s", err);
}

static void
close_gpu_tier(struct host_region *h)
{
	close_all();
	host_region_close(h);
}

Test(storage, the_gpu_tier_is_asked_first_and_written_through_with_cpu)
{
	struct host_region h;
	open_with_gpu_tier(&h, 1 << 20);
	put_n(1, 40000, 0x31);
	struct kvn_backend_stats g = tier(0, "gpu7"), c = tier(1, "cpu");
	cr_assert_eq(g.count, 1, "gpu tier holds %" PRIu64, g.count);
	cr_assert_eq(c.count, 1, "cpu tier holds %" PRIu64 ": puts write through", c.count);
	expect_n(1, 40000, 0x31);
	g = tier(0, "gpu7"), c = tier(1, "cpu");
	cr_assert_eq(g.hits, 1, "the gpu tier answered %" PRIu64 " gets", g.hits);
	cr_assert_eq(c.hits, 0, "the cpu tier was asked first (%" PRIu64 " hits)", c.hits);
	cr_assert_eq(c.puts, 1, "a gpu hit was promoted into cpu again (%" PRIu64 " puts)", c.puts);
	struct kvn_key k = key_n(1);
	cr_assert_eq(kvn_storage_remove(st, &k), 0);
	cr_assert_eq(tier(0, "gpu7").count, 0);
	cr_assert_eq(tier(1, "cpu").count, 0);
	close_gpu_tier(&h);
}

Test(storage, what_the_gpu_tier_evicts_moves_into_cpu_when_cpu_lacks_it)
{
	struct host_region h;
	open_with_gpu_tier(&h, 1 << 20);
	struct kvn_backend *gpu = kvn_storage_backend(st, &kvn_gpu_backend_ops);
	struct kvn_backend *cpu = kvn_storage_backend(st, &kvn_cpu_backend_ops);
	cr_assert(gpu && cpu);
	put_n(100, 64 * 1024, 0x64);
	/* Only the gpu tier holds key 100 now. */
	struct kvn_key k = key_n(100);
	cr_assert_eq(kvn_cpu_backend_ops.remove(cpu, &k), 0);
	for (int i = 0; i < 20; i++) /* 1.25 MiB through a 1 MiB region */
		put_n(i, 64 * 1024, i);
	cr_assert_eq(kvn_gpu_backend_ops.contains(gpu, &k, false), 0, "key 100 not evicted");
	cr_assert_eq(kvn_cpu_backend_ops.contains(cpu, &k, false), 1,
		     "key 100 was evicted from the gpu tier and lost");
	cr_assert_eq(kvn_gpu_tier_spilled(gpu), 1,
		     "%" PRIu64 " chunks moved into cpu: only key 100 was not there already",
		     kvn_gpu_tier_spilled(gpu));
	bool is_gpu;
	cr_assert_eq(kvn_storage_tier_moved(st, 0, &is_gpu), 1);
	cr_assert(is_gpu);
	cr_assert_eq(kvn_storage_tier_moved(st, 1, &is_gpu), 0);
	cr_assert_not(is_gpu, "tier 1 is cpu");
	expect_n(100, 64 * 1024, 0x64);
	cr_assert_gt(tier(0, "gpu7").evictions, 0);
	close_gpu_tier(&h);
}

Test(storage, the_gpu_tier_copies_a_value_to_device_memory_of_its_own_device)
{
	struct host_region h;
	open_with_gpu_tier(&h, 1 << 20);
	struct kvn_backend *gpu = kvn_storage_backend(st, &kvn_gpu_backend_ops);
	put_n(3, 100000, 0x5a);
	unsigned char *dst = malloc(100000);
	cr_assert_not_null(dst);
	struct kvn_key k = key_n(3), missing = key_n(4);
	size_t len = 0;
	uint64_t hits = tier(0, "gpu7").hits;
	cr_assert_eq(kvn_gpu_tier_get_into_dev(gpu, &k, (uint64_t)(uintptr_t)dst, 100000, &len, err,
					       sizeof(err)),
		     0, "%s", err);
	cr_assert_eq(len, 100000);
	for (size_t i = 0; i < len; i++)
		if (dst[i] != 0x5a)
			cr_assert_fail("byte %zu is %d", i, dst[i]);
	cr_assert_eq(tier(0, "gpu7").hits, hits + 1);
	cr_assert_eq(kvn_gpu_tier_get_into_dev(gpu, &k, (uint64_t)(uintptr_t)dst, 99999, &len, err,
					       sizeof(err)),
		     -ENOSPC);
	cr_assert(strstr(err, "100000 bytes") != NULL, "%s", err);
	cr_assert_eq(kvn_gpu_tier_get_into_dev(gpu, &missing, (uint64_t)(uintptr_t)dst, 100000,
					       &len, err, sizeof(err)),
		     -ENOENT);
	free(dst);
	close_gpu_tier(&h);
}

struct gpu_events {
	int admits, drops;
	struct kvn_gpu_slot_info last;
	enum kvn_cpu_event last_ev;
};

static void
record_gpu_event(void *ctx, enum kvn_cpu_event ev, const struct kvn_gpu_slot_info *si)
{
	struct gpu_events *e = ctx;
	e->admits += ev == KVN_CPU_ADMIT;
	e->drops += ev == KVN_CPU_DROP;
	e->last = *si;
	e->last_ev = ev;
}

Test(storage, the_gpu_tier_publishes_admits_and_drops_and_keeps_a_mirror_readers_can_verify)
{
	struct host_region h;
	open_with_gpu_tier(&h, 1 << 20);
	struct kvn_backend *gpu = kvn_storage_backend(st, &kvn_gpu_backend_ops);
	struct gpu_events ev = {0};
	unsigned char *mirror = calloc(1, 1 << 20);
	cr_assert_not_null(mirror);
	put_n(1, 5000, 0x11); /* held before the mirror exists: copied into it */
	kvn_gpu_tier_set_publish(gpu, record_gpu_event, &ev);
	cr_assert_eq(kvn_gpu_tier_set_mirror(gpu, mirror, err, sizeof(err)), 0, "%s", err);
	struct kvn_key k1 = key_n(1), k2 = key_n(2);
	struct kvn_gpu_slot_info si;
	cr_assert_eq(kvn_gpu_tier_locate(gpu, k1.digest, &si), 1);
	cr_assert_eq(si.len, 64 + 5000);
	cr_assert_eq(kvn_slot_verify(mirror + si.off, si.len, k1.digest, si.generation), 0,
		     "the mirror lacks what the tier held before it");

	put_n(2, 70000, 0x22);
	cr_assert_eq(ev.admits, 1);
	cr_assert_eq(ev.last_ev, KVN_CPU_ADMIT);
	cr_assert(kvn_digest_eq(ev.last.digest, k2.digest));
	struct kvn_gpu_slot_info s2 = ev.last;
	cr_assert_eq(kvn_slot_verify(mirror + s2.off, s2.len, k2.digest, s2.generation), 0);
	put_n(2, 3000, 0x23); /* a new value: one admit, which replaces the older entry */
	cr_assert_eq(ev.admits, 2);
	cr_assert_eq(ev.drops, 0);
	cr_assert_gt(ev.last.generation, s2.generation);
	cr_assert_eq(
	    kvn_slot_verify(mirror + ev.last.off, ev.last.len, k2.digest, ev.last.generation), 0);
	struct kvn_gpu_slot_info s3 = ev.last;

	cr_assert_eq(kvn_storage_remove(st, &k2), 0);
	cr_assert_eq(ev.drops, 1);
	cr_assert_eq(ev.last_ev, KVN_CPU_DROP);
	cr_assert_eq(kvn_slot_verify(mirror + s3.off, s3.len, k2.digest, s3.generation), -ESTALE,
		     "a dropped chunk's image still reads as whole");
	for (int i = 10; i < 30; i++) /* 1.25 MiB through 1 MiB: evictions are drops */
		put_n(i, 64 * 1024, i);
	cr_assert_eq(ev.admits, 22);
	cr_assert_gt(ev.drops, 1);
	struct kvn_backend_stats g = tier(0, "gpu7");
	cr_assert_eq((uint64_t)ev.drops, 1 + g.evictions, "%d drops, %" PRIu64 " evictions",
		     ev.drops, g.evictions);
	kvn_gpu_tier_set_mirror(gpu, NULL, err, sizeof(err));
	kvn_gpu_tier_set_publish(gpu, NULL, NULL);
	close_gpu_tier(&h);
	free(mirror);
}
