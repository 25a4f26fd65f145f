/* LMCache interoperability over Redis: values laid out the way LMCache writes them (written with
 * redis-cli, not kvnode's code) are read by a kvnode node, and values a node writes are read back
 * with redis-cli and checked byte for byte against LMCache's layout (docs/architecture.md §10). */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers/engine_env.h"
#include "helpers/pattern.h"
#include "helpers/proc.h"
#include "helpers/redis_server.h"
#include "core/clock.h"
#include "kvnode/kvnode.h"
#include "node/engine/config.h"
#include "core/xxh.h"

#define KEY "vllm@meta-llama/Llama-3.1-8B@1@0@5e0e1f7a9c@bfloat16"

static struct redis_server rs;
static char dir[PATH_MAX - 64];
static char path[PATH_MAX];
static struct kvn_config *cfg;
static struct kvn_engine *eng;

static void
setup(void)
{
	if (!redis_server_available())
		cr_skip_test("redis-server/redis-cli not installed (scripts/install-deps)");
	cr_assert_eq(proc_mkdtemp("kvn-interop", dir, sizeof(dir)), 0);
	cr_assert_eq(redis_server_start(&rs), 0, "redis-server did not start");
	char yaml[512];
	snprintf(yaml, sizeof(yaml), "local_cpu: false\nremote_url: \"%s\"\n", rs.url);
	engine_env_open(yaml, &cfg, &eng);
}

static void
teardown(void)
{
	kvn_engine_close(eng);
	kvn_config_free(cfg);
	redis_server_destroy(&rs);
	if (dir[0])
		proc_rm_tree(dir);
}

/* LMCache's RemoteMetadata.serialize: struct.pack("iiiiiii", ...), written out by hand here so
 * the test does not lean on kvnode's own encoder. */
static void
lmcache_header(uint8_t out[28], int32_t length, int32_t fmt, int32_t dtype, const int32_t shape[4])
{
	int32_t f[7] = {length, fmt, dtype, shape[0], shape[1], shape[2], shape[3]};
	for (int i = 0; i < 7; i++)
		for (int b = 0; b < 4; b++)
			out[4 * i + b] = (uint8_t)((uint32_t)f[i] >> (8 * b));
}

static int32_t
le32_at(const uint8_t *p)
{
	return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
			 (uint32_t)p[3] << 24);
}

static void
file_path(const char *name)
{
	snprintf(path, sizeof(path), "%s/%s", dir, name);
}

/* redis-cli -x: the file's bytes become the last argument, untouched. */
static void
cli_set_from(const char *rkey, const void *data, size_t len)
{
	file_path("in.bin");
	cr_assert_eq(proc_write_file(path, data, len), 0);
	cr_assert_eq(redis_cli(&rs, path, NULL, "-x", "SET", rkey, NULL), 0, "redis-cli SET %s",
		     rkey);
}

/* redis-cli GET into a file: the raw bytes, then the newline redis-cli adds. */
static char *
cli_get(const char *rkey, size_t *len)
{
	char out[PATH_MAX];
	snprintf(out, sizeof(out), "%s/out.bin", dir);
	cr_assert_eq(redis_cli(&rs, NULL, out, "GET", rkey, NULL), 0, "redis-cli GET %s", rkey);
	char *data = proc_read_file(out, len);
	cr_assert_not_null(data);
	cr_assert_geq(*len, 1);
	cr_assert_eq(data[*len - 1], '\n');
	(*len)--;
	return data;
}

TestSuite(redis_interop, .init = setup, .fini = teardown, .timeout = 240);

Test(redis_interop, a_value_lmcache_wrote_with_redis_cli_is_served_by_kvnode)
{
	const size_t len = 3 * 256 * 1024 + 5;
	uint8_t *payload = malloc(len), hdr[28];
	pattern_fill(payload, len, 77);
	const int32_t shape[4] = {2, 32, 256, (int32_t)(len / 2 / 32 / 256)};
	lmcache_header(hdr, (int32_t)len, 1 /* KV_2LTD */, 3 /* bfloat16 */, shape);
	/* LMCache's order: payload first, then the header that makes the value exist. */
	cli_set_from(KEY "kv_bytes", payload, len);
	cli_set_from(KEY "metadata", hdr, sizeof(hdr));

	struct kvn_key k;
	struct kvn_buf *b = NULL;
	cr_assert_eq(kvn_key_from_str(&k, KEY), 0);
	cr_assert_eq(kvn_engine_contains(eng, &k), 1);
	cr_assert_eq(kvn_engine_get(eng, &k, &b), 0, "kvnode did not read LMCache's value");
	cr_assert_eq(b->len, len);
	cr_assert(pattern_check(b->data, len, 77));
	kvn_buf_unref(b);
	free(payload);
}

Test(redis_interop, an_lmcache_value_whose_header_disagrees_with_its_payload_is_a_miss)
{
	uint8_t payload[1000], hdr[28];
	pattern_fill(payload, sizeof(payload), 3);
	const int32_t shape[4] = {1000, 1, 1, 1};
	lmcache_header(hdr, 999, 4, 6, shape); /* one byte short */
	cli_set_from("short-headerkv_bytes", payload, sizeof(payload));
	cli_set_from("short-headermetadata", hdr, sizeof(hdr));
	struct kvn_key k;
	struct kvn_buf *b = NULL;
	cr_assert_eq(kvn_key_from_str(&k, "short-header"), 0);
	cr_assert_eq(kvn_engine_get(eng, &k, &b), -ENOENT);
}

Test(redis_interop, a_payload_without_its_metadata_key_does_not_exist_for_kvnode)
{
	uint8_t payload[100];
	pattern_fill(payload, sizeof(payload), 4);
	cli_set_from("halfwrittenkv_bytes", payload, sizeof(payload));
	struct kvn_key k;
	struct kvn_buf *b = NULL;
	cr_assert_eq(kvn_key_from_str(&k, "halfwritten"), 0);
	cr_assert_eq(kvn_engine_contains(eng, &k), 0);
	cr_assert_eq(kvn_engine_get(eng, &k, &b), -ENOENT);
}

static bool
monitor_saw_metadata(void *arg)
{
	char *log = proc_read_file(arg, NULL);
	bool seen = log && strstr(log, "metadata\"");
	free(log);
	return seen;
}

static bool
monitor_ready(void *arg)
{
	char *log = proc_read_file(arg, NULL);
	bool ok = log && strstr(log, "OK");
	free(log);
	return ok;
}

Test(redis_interop, a_value_kvnode_wrote_has_lmcache_layout_payload_first_as_redis_cli_shows)
{
	const size_t len = 256 * 1024;
	uint8_t *payload = malloc(len);
	pattern_fill(payload, len, 21);

	/* MONITOR records the commands in the order the server ran them. */
	char mon[PATH_MAX];
	snprintf(mon, sizeof(mon), "%s/monitor.txt", dir);
	const char *argv[] = {"/usr/bin/env", "redis-cli",  "-h",      "127.0.0.1",
			      "-p",	      rs.port_text, "MONITOR", NULL};
	struct proc_opts o = {.stdout_path = mon};
	struct proc monitor;
	cr_assert_eq(proc_spawn(&monitor, argv, &o), 0);
	cr_assert(proc_wait_for(monitor_ready, mon, 30000), "redis-cli MONITOR did not start");

	struct kvn_key k;
	cr_assert_eq(kvn_key_from_str(&k, KEY), 0);
	cr_assert_eq(kvn_engine_put(eng, &k, payload, len), 0);
	kvn_engine_flush(eng);
	cr_assert(proc_wait_for(monitor_saw_metadata, mon, 30000), "no SET of the metadata key");
	proc_stop(&monitor, SIGTERM, 5000);

	size_t n;
	char *hdr = cli_get(KEY "metadata", &n);
	cr_assert_eq(n, 28, "metadata is %zu bytes, LMCache reads 28", n);
	const uint8_t *h = (const uint8_t *)hdr;
	cr_assert_eq(le32_at(h), (int32_t)len, "length");
	cr_assert_eq(le32_at(h + 4), 4, "fmt BINARY");
	cr_assert_eq(le32_at(h + 8), 6, "dtype uint8");
	cr_assert_eq((int64_t)le32_at(h + 12) * le32_at(h + 16) * le32_at(h + 20) * le32_at(h + 24),
		     (int64_t)len, "shape must multiply out to the byte count");
	free(hdr);

	char *data = cli_get(KEY "kv_bytes", &n);
	cr_assert_eq(n, len);
	cr_assert_eq(memcmp(data, payload, len), 0, "kv_bytes is not the payload");
	free(data);

	char *log = proc_read_file(mon, NULL);
	char *d = strstr(log, "kv_bytes\""), *m = strstr(log, "metadata\"");
	cr_assert(d && m && d < m, "kv_bytes must be written before metadata:\n%.2000s", log);
	free(log);
	free(payload);
}

/* A second node on the same server with its own remote_url. */
static int
open_node(const char *url, struct kvn_config **c, struct kvn_engine **e, char *err, size_t errlen)
{
	char yaml[512];
	snprintf(yaml, sizeof(yaml), "local_cpu: false\nremote_url: \"%s\"\n", url);
	cr_assert_eq(kvn_config_parse(yaml, strlen(yaml), "t.yaml", c, err, errlen), 0, "%s", err);
	return kvn_engine_open(*c, e, err, errlen);
}

static char *
cli_text(const char *db, const char *cmd, const char *arg)
{
	char out[PATH_MAX];
	snprintf(out, sizeof(out), "%s/cli.txt", dir);
	cr_assert_eq(redis_cli(&rs, NULL, out, "--no-auth-warning", "-a", "s3cret", "-n", db, cmd,
			       arg, NULL),
		     0);
	return proc_read_file(out, NULL);
}

Test(redis_interop, a_url_with_password_and_database_authenticates_and_writes_into_that_database)
{
	cr_assert_eq(redis_cli(&rs, NULL, NULL, "CONFIG", "SET", "requirepass", "s3cret", NULL), 0);
	char url[128], err[1024];
	struct kvn_config *c2;
	struct kvn_engine *e2;
	snprintf(url, sizeof(url), "redis://:s3cret@127.0.0.1:%d/2", rs.port);
	cr_assert_eq(open_node(url, &c2, &e2, err, sizeof(err)), 0, "%s", err);
	struct kvn_key k;
	cr_assert_eq(kvn_key_from_str(&k, "in-db-2"), 0);
	cr_assert_eq(kvn_engine_put(e2, &k, "abc", 3), 0);
	kvn_engine_flush(e2);
	char *t = cli_text("2", "EXISTS", "in-db-2metadata");
	cr_assert(t && !strcmp(t, "1\n"), "db 2: %s", t ? t : "");
	free(t);
	t = cli_text("0", "EXISTS", "in-db-2metadata");
	cr_assert(t && !strcmp(t, "0\n"), "db 0: %s", t ? t : "");
	free(t);
	char *stats = kvn_engine_stats_json(e2);
	cr_assert(stats && strstr(stats, "127.0.0.1") && !strstr(stats, "s3cret"),
		  "stat must name the store without its password: %s", stats);
	free(stats);
	kvn_engine_close(e2);
	kvn_config_free(c2);
}

Test(redis_interop, a_wrong_password_stops_the_node_from_starting_with_a_message)
{
	cr_assert_eq(redis_cli(&rs, NULL, NULL, "CONFIG", "SET", "requirepass", "s3cret", NULL), 0);
	char url[128], err[1024];
	struct kvn_config *c2;
	struct kvn_engine *e2 = NULL;
	snprintf(url, sizeof(url), "redis://:wrong@127.0.0.1:%d", rs.port);
	cr_assert_lt(open_node(url, &c2, &e2, err, sizeof(err)), 0);
	cr_assert(strstr(err, "remote"), "%s", err);
	cr_assert_not(strstr(err, "wrong"), "the message shows the password: %s", err);
	kvn_config_free(c2);
}

Test(redis_interop, a_malformed_redis_url_is_refused_at_start)
{
	const char *bad[] = {"redis://", "redis://host:99999", "redis://host:12/notadb"};
	for (size_t i = 0; i < 3; i++) {
		char err[1024];
		struct kvn_config *c2;
		struct kvn_engine *e2 = NULL;
		cr_assert_lt(open_node(bad[i], &c2, &e2, err, sizeof(err)), 0, "%s was accepted",
			     bad[i]);
		kvn_config_free(c2);
	}
}

struct probe {
	struct kvn_engine *e;
	struct kvn_key k;
};

static bool
store_reached(void *arg)
{
	struct probe *p = arg;
	if (kvn_engine_contains(p->e, &p->k) == 1)
		return true;
	usleep(50 * 1000);
	return false;
}

Test(redis_interop, a_node_starts_while_its_store_is_down_serves_from_cpu_and_attaches_later)
{
	redis_server_stop(&rs, SIGKILL);
	char yaml[512], err[1024];
	struct kvn_config *c2;
	struct kvn_engine *e2;
	snprintf(yaml, sizeof(yaml),
		 "max_local_cpu_size: 0.1\nremote_url: \"%s\"\n"
		 "extra_config:\n  remote.retry_min_ms: 20\n  remote.retry_max_ms: 100\n",
		 rs.url);
	cr_assert_eq(kvn_config_parse(yaml, strlen(yaml), "t.yaml", &c2, err, sizeof(err)), 0);
	c2->hugepages = false;
	cr_assert_eq(kvn_engine_open(c2, &e2, err, sizeof(err)), 0, "%s", err);
	char *stats = kvn_engine_stats_json(e2);
	cr_assert(stats && strstr(stats, "\"connected\":false"), "%s", stats);
	free(stats);

	struct probe p = {.e = e2};
	cr_assert_eq(kvn_key_from_str(&p.k, "written-while-down"), 0);
	cr_assert_eq(kvn_engine_put(e2, &p.k, "hello", 5), 0);
	kvn_engine_flush(e2);
	char out[8];
	size_t n;
	cr_assert_eq(kvn_engine_get_into(e2, &p.k, out, sizeof(out), &n), 0,
		     "cpu tier did not serve");

	/* The value only the store holds: written by a redis-cli once the store is up. */
	cr_assert_eq(redis_server_restart(&rs), 0);
	uint8_t hdr[28];
	const int32_t shape[4] = {2, 1, 1, 1};
	lmcache_header(hdr, 2, 4, 6, shape);
	cli_set_from("only-in-storekv_bytes", "hi", 2);
	cli_set_from("only-in-storemetadata", hdr, sizeof(hdr));
	cr_assert_eq(kvn_key_from_str(&p.k, "only-in-store"), 0);
	cr_assert(proc_wait_for(store_reached, &p, 30000), "the node never reached the store");
	stats = kvn_engine_stats_json(e2);
	cr_assert(stats && strstr(stats, "\"connected\":true"), "%s", stats);
	free(stats);
	kvn_engine_close(e2);
	kvn_config_free(c2);
}

Test(redis_interop, a_tag_key_rewritten_behind_kvnodes_back_makes_the_value_a_miss)
{
	struct kvn_key k;
	struct kvn_buf *b = NULL;
	cr_assert_eq(kvn_key_from_str(&k, "tagged"), 0);
	cr_assert_eq(kvn_engine_put(eng, &k, "payload", 7), 0);
	kvn_engine_flush(eng);
	cr_assert_eq(kvn_engine_get(eng, &k, &b), 0);
	kvn_buf_unref(b);
	char longtag[101];
	memset(longtag, 'a', 100);
	longtag[100] = '\0';
	cli_set_from("taggedkvnode_tag", longtag, 100);
	cr_assert_eq(kvn_engine_get(eng, &k, &b), -ENOENT, "an over-long tag was accepted");
	cli_set_from("taggedkvnode_tag", "KVX1\0\0\0\0\0\0\0\0", 12);
	cr_assert_eq(kvn_engine_get(eng, &k, &b), -ENOENT, "a wrong checksum was accepted");
}

static bool
stats_say(struct kvn_engine *e, const char *what)
{
	char *stats = kvn_engine_stats_json(e);
	bool yes = stats && strstr(stats, what);
	free(stats);
	if (!yes)
		usleep(50 * 1000);
	return yes;
}

static bool
remote_down(void *arg)
{
	return stats_say(arg, "\"connected\":false");
}

static bool
remote_up(void *arg)
{
	return stats_say(arg, "\"connected\":true");
}

/* redis-cli EXISTS <key>metadata says 1. */
static bool
cli_has(const char *key)
{
	char out[PATH_MAX], rkey[256];
	snprintf(out, sizeof(out), "%s/exists.txt", dir);
	snprintf(rkey, sizeof(rkey), "%smetadata", key);
	if (redis_cli(&rs, NULL, out, "EXISTS", rkey, NULL) != 0)
		return false;
	char *t = proc_read_file(out, NULL);
	bool yes = t && !strcmp(t, "1\n");
	free(t);
	return yes;
}

struct fresh_put {
	struct kvn_engine *e;
	unsigned n;
};

/* After the store is back a put must reach it: fresh keys until one lands. */
static bool
fresh_put_lands(void *arg)
{
	struct fresh_put *f = arg;
	char key[64];
	snprintf(key, sizeof(key), "after-cont-%u", f->n++);
	engine_put_pattern(f->e, key, 1000, 5);
	kvn_engine_flush(f->e);
	if (cli_has(key))
		return true;
	usleep(100 * 1000);
	return false;
}

Test(redis_interop, a_hung_store_never_holds_up_puts_and_is_back_only_once_it_answers_a_ping)
{
	char yaml[1024], err[1024];
	struct kvn_config *c2;
	struct kvn_engine *e2;
	/* A request timeout far above the deadline below: waiting on the store shows clearly. */
	snprintf(yaml, sizeof(yaml),
		 "max_local_cpu_size: 0.1\nput_threads: 1\nput_queue_depth: 2\n"
		 "remote_url: \"%s\"\nextra_config:\n  remote.timeout_ms: 60000\n"
		 "  remote.ping_timeout_ms: 500\n  remote.retry_min_ms: 50\n"
		 "  remote.retry_max_ms: 200\n",
		 rs.url);
	cr_assert_eq(kvn_config_parse(yaml, strlen(yaml), "t.yaml", &c2, err, sizeof(err)), 0,
		     "%s", err);
	c2->hugepages = false;
	cr_assert_eq(kvn_engine_open(c2, &e2, err, sizeof(err)), 0, "%s", err);
	engine_put_pattern(e2, "before-stop", 1000, 1);
	kvn_engine_flush(e2);
	cr_assert(cli_has("before-stop"));

	/* SIGSTOP: the kernel still accepts connections, nothing answers them. */
	cr_assert_eq(kill(rs.proc.pid, SIGSTOP), 0);
	uint64_t t0 = kvn_now_ms();
	for (int i = 0; i < 24; i++) {
		char key[32];
		snprintf(key, sizeof(key), "while-hung-%d", i);
		engine_put_pattern(e2, key, 100000, (uint64_t)i);
		if (i == 11) /* half before the store is seen out of service, half after */
			cr_assert(proc_wait_for(remote_down, e2, 30000),
				  "the hung store was never taken out of service");
	}
	uint64_t took = kvn_now_ms() - t0;
	cr_assert_lt(took, 20000,
		     "24 puts took %llu ms: they waited on the hung store (remote.timeout_ms is "
		     "60 s)",
		     (unsigned long long)took);
	for (int i = 0; i < 24; i++) {
		char key[32];
		snprintf(key, sizeof(key), "while-hung-%d", i);
		cr_assert_eq(engine_get_pattern(e2, key, 100000, (uint64_t)i), 0, "%s", key);
	}
	/* A bare TCP connect succeeds on a stopped redis: that is not being back. */
	usleep(1000 * 1000);
	cr_assert(remote_down(e2), "the store was declared back while it answered nothing");

	cr_assert_eq(kill(rs.proc.pid, SIGCONT), 0);
	cr_assert(proc_wait_for(remote_up, e2, 60000), "the store never came back");
	struct fresh_put f = {.e = e2};
	cr_assert(proc_wait_for(fresh_put_lands, &f, 60000),
		  "puts did not reach the store after it answered again");
	kvn_engine_close(e2);
	kvn_config_free(c2);
}

/* Copies the three redis keys of one value to another key, bytes untouched. */
static void
cli_copy_value(const char *from, const char *to)
{
	static const char *suffix[] = {"kv_bytes", "kvnode_tag", "metadata"};
	for (int i = 0; i < 3; i++) {
		char a[256], b[256];
		snprintf(a, sizeof(a), "%s%s", from, suffix[i]);
		snprintf(b, sizeof(b), "%s%s", to, suffix[i]);
		size_t n;
		char *v = cli_get(a, &n);
		cli_set_from(b, v, n);
		free(v);
	}
}

Test(redis_interop, a_value_copied_under_another_key_is_a_miss_there)
{
	engine_put_pattern(eng, "copy-source", 5000, 8);
	kvn_engine_flush(eng);
	cli_copy_value("copy-source", "copy-target");
	cr_assert_eq(engine_get_pattern(eng, "copy-source", 5000, 8), 0);
	/* Header, payload and tag all agree: only the tag's key digest tells them apart. */
	struct kvn_key k;
	struct kvn_buf *b = NULL;
	cr_assert_eq(kvn_key_from_str(&k, "copy-target"), 0);
	cr_assert_eq(kvn_engine_get(eng, &k, &b), -ENOENT,
		     "a value stored under another key was served");
}

Test(redis_interop, a_value_with_the_older_keyless_tag_is_a_miss_until_rewritten)
{
	/* kvnode before tag version 2: "KVX1" and the xxh3 of header and payload, no key. */
	uint8_t payload[600], hdr[28], tag[12] = {'K', 'V', 'X', '1'};
	pattern_fill(payload, sizeof(payload), 6);
	const int32_t shape[4] = {600, 1, 1, 1};
	lmcache_header(hdr, 600, 4, 6, shape);
	uint64_t sum = XXH3_64bits_withSeed(payload, sizeof(payload), XXH3_64bits(hdr, 28));
	for (int i = 0; i < 8; i++)
		tag[4 + i] = (uint8_t)(sum >> (8 * i));
	cli_set_from("old-tagkv_bytes", payload, sizeof(payload));
	cli_set_from("old-tagkvnode_tag", tag, sizeof(tag));
	cli_set_from("old-tagmetadata", hdr, sizeof(hdr));
	cr_assert_eq(engine_get_pattern(eng, "old-tag", 600, 6), -ENOENT,
		     "a tag that does not name its key was trusted");
	engine_put_pattern(eng, "old-tag", 600, 7);
	kvn_engine_flush(eng);
	cr_assert_eq(engine_get_pattern(eng, "old-tag", 600, 7), 0);
	size_t n;
	char *t = cli_get("old-tagkvnode_tag", &n);
	cr_assert(n > 4 && !memcmp(t, "KVX3", 4), "the rewrite did not store a version 3 tag");
	free(t);
}

/* LMCache's RedisConnector._put (lmcache/v1/storage_backend/connector/redis_connector.py):
 * SET <key>kv_bytes, then SET <key>metadata; it knows nothing of <key>kvnode_tag. */
static void
lmcache_put(const char *key, size_t len, uint64_t seed, const int32_t shape[4])
{
	char rk[256];
	uint8_t *payload = malloc(len), hdr[28];
	pattern_fill(payload, len, seed);
	lmcache_header(hdr, (int32_t)len, 1, 3, shape);
	snprintf(rk, sizeof(rk), "%skv_bytes", key);
	cli_set_from(rk, payload, len);
	snprintf(rk, sizeof(rk), "%smetadata", key);
	cli_set_from(rk, hdr, sizeof(hdr));
	free(payload);
}

Test(redis_interop, a_value_lmcache_wrote_over_a_kvnode_one_is_read_and_the_stale_tag_counted)
{
	engine_put_pattern(eng, KEY, 5000, 1);
	kvn_engine_flush(eng);
	cr_assert_eq(engine_get_pattern(eng, KEY, 5000, 1), 0);
	/* LMCache rewrites the value: another length, the tag left behind. */
	const int32_t shape[4] = {2, 1, 3000, 1};
	lmcache_put(KEY, 6000, 2, shape);
	cr_assert_eq(engine_get_pattern(eng, KEY, 6000, 2), 0, "LMCache's value was a miss");
	/* The same length under another shape: a header kvnode did not write either. */
	const int32_t shape2[4] = {2, 3, 1000, 1};
	lmcache_put(KEY, 6000, 3, shape2);
	cr_assert_eq(engine_get_pattern(eng, KEY, 6000, 3), 0, "LMCache's value was a miss");
	cr_assert(stats_say(eng, "\"stale_tags\":2"), "the ignored tags are counted");
	cr_assert(stats_say(eng, "\"corrupt\":0"), "and are not corruption");
}

Test(redis_interop, a_payload_changed_under_the_header_kvnode_wrote_is_still_corrupt)
{
	engine_put_pattern(eng, KEY, 5000, 4);
	kvn_engine_flush(eng);
	uint8_t other[5000];
	pattern_fill(other, sizeof(other), 5);
	cli_set_from(KEY "kv_bytes", other, sizeof(other));
	cr_assert_eq(engine_get_pattern(eng, KEY, 5000, 5), -ENOENT,
		     "bytes changed under kvnode's header were served");
	cr_assert(stats_say(eng, "\"corrupt\":1"));
	cr_assert(stats_say(eng, "\"stale_tags\":0"));
}

Test(redis_interop, a_value_with_a_version_2_tag_is_still_checked)
{
	/* "KVX2", the key digest's low half, xxh3 of the payload seeded with that of the header
	 * (itself seeded with the key part): what kvnode wrote before tag version 3. */
	struct kvn_key k;
	cr_assert_eq(kvn_key_from_str(&k, "v2-tag"), 0);
	uint8_t payload[700], hdr[28], tag[20] = {'K', 'V', 'X', '2'};
	pattern_fill(payload, sizeof(payload), 9);
	const int32_t shape[4] = {700, 1, 1, 1};
	lmcache_header(hdr, 700, 4, 6, shape);
	uint64_t sum = XXH3_64bits_withSeed(payload, sizeof(payload),
					    XXH3_64bits_withSeed(hdr, 28, k.digest.lo));
	for (int i = 0; i < 8; i++) {
		tag[4 + i] = (uint8_t)(k.digest.lo >> (8 * i));
		tag[12 + i] = (uint8_t)(sum >> (8 * i));
	}
	cli_set_from("v2-tagkv_bytes", payload, sizeof(payload));
	cli_set_from("v2-tagkvnode_tag", tag, sizeof(tag));
	cli_set_from("v2-tagmetadata", hdr, sizeof(hdr));
	cr_assert_eq(engine_get_pattern(eng, "v2-tag", 700, 9), 0);
	payload[5] ^= 1;
	cli_set_from("v2-tagkv_bytes", payload, sizeof(payload));
	cr_assert_eq(engine_get_pattern(eng, "v2-tag", 700, 9), -ENOENT);
}

/* A store (or whatever answers at its address) cannot make the node allocate more than
 * max_chunk_size for one value: a longer one is refused from its length, unread, a miss; the
 * connection it came on is dropped and the next get works on a fresh one. */
Test(redis_interop, a_value_longer_than_max_chunk_size_is_refused_unread_and_the_next_get_works)
{
	kvn_engine_close(eng);
	kvn_config_free(cfg);
	char yaml[512];
	snprintf(yaml, sizeof(yaml), "local_cpu: false\nmax_chunk_size: 64KiB\nremote_url: \"%s\"\n",
		 rs.url);
	engine_env_open(yaml, &cfg, &eng);
	const size_t big = 100000, small = 1000;
	uint8_t *payload = malloc(big), hdr[28];
	pattern_fill(payload, big, 5);
	const int32_t shape[4] = {(int32_t)big, 1, 1, 1};
	lmcache_header(hdr, (int32_t)big, 4 /* BINARY */, 6 /* uint8 */, shape);
	cli_set_from(KEY "kv_bytes", payload, big);
	cli_set_from(KEY "metadata", hdr, sizeof(hdr));
	struct kvn_key k, k2;
	struct kvn_buf *b = NULL;
	cr_assert_eq(kvn_key_from_str(&k, KEY), 0);
	cr_assert_eq(kvn_engine_get(eng, &k, &b), -ENOENT, "a value over the bound was served");
	cr_assert_null(b);

	const char *key2 = "vllm-model@1@0@abcdef12@uint8";
	const int32_t shape2[4] = {(int32_t)small, 1, 1, 1};
	lmcache_header(hdr, (int32_t)small, 4, 6, shape2);
	cli_set_from("vllm-model@1@0@abcdef12@uint8kv_bytes", payload, small);
	cli_set_from("vllm-model@1@0@abcdef12@uint8metadata", hdr, sizeof(hdr));
	cr_assert_eq(kvn_key_from_str(&k2, key2), 0);
	cr_assert_eq(kvn_engine_get(eng, &k2, &b), 0, "the next get on a new connection failed");
	cr_assert(b && b->len == small && pattern_check(b->data, small, 5));
	kvn_buf_unref(b);
	free(payload);
}
