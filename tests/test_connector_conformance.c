/* Connector conformance: the same cases against every remote connector (a table of
 * implementations, each with the capabilities its store has), at the connector ABI and through
 * the node's remote tier: round trips of 1 byte to 32 MiB, batches, misses, list, the store
 * dying mid-operation and coming back, and values corrupted behind kvnode's back. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cjson/cJSON.h>
#include <hiredis/hiredis.h>

#include "connectors/registry.h"
#include "helpers/engine_env.h"
#include "helpers/pattern.h"
#include "helpers/proc.h"
#include "helpers/memcached_server.h"
#include "helpers/redis_server.h"
#include "connectors/external.h"
#include "node/serve/lm_server.h"
#include "node/engine/config.h"
#include "core/log.h"
#include "connectors/remote_value.h"

/* ============================================================================================
 * The implementations under test
 * ============================================================================================ */

enum cap {
	CAP_KEEPS = 1u << 0, /* values can be read back (not blackhole) */
	CAP_LIST = 1u << 1,
	CAP_KILL = 1u << 2,	 /* the store is a process the test can kill and restart */
	CAP_CORRUPT = 1u << 3,	 /* the test can alter a stored value behind kvnode's back */
	CAP_REMOVE = 1u << 4,	 /* the store can delete (LMCache's lm:// protocol cannot) */
	CAP_TAG = 1u << 5,	 /* kvnode's integrity tag is kept beside the value */
	CAP_LONG_KEYS = 1u << 6, /* keys up to KVN_KEY_MAX (lm:// carries 150 bytes) */
};

enum corruption { CORRUPT_PAYLOAD_BYTE, CORRUPT_HEADER };

struct store {
	char url[PATH_MAX];
	char dir[PATH_MAX - 64];
	char extra_yaml[1024]; /* more extra_config lines for a node on this store */
	struct redis_server redis;
	struct memcached_server mc;
	/* lm: a kvnode engine served by an in-process lm server */
	struct kvn_config *lm_cfg;
	struct kvn_engine *lm_eng;
	struct kvn_lm_server *lm_srv;
	char lm_addr[300];
};

struct impl {
	const char *name;
	unsigned caps;
	int (*setup)(struct store *s); /* start the store, fill s->url */
	void (*teardown)(struct store *s);
	void (*kill)(struct store *s);	/* the store dies at once (SIGKILL) */
	int (*revive)(struct store *s); /* back on the same URL */
	int (*corrupt)(struct store *s, const char *key, enum corruption how);
};

/* --- redis: a real redis-server on a free loopback port -------------------------------- */

static int
redis_setup(struct store *s)
{
	if (!redis_server_available())
		cr_skip_test("redis-server/redis-cli not installed (scripts/install-deps)");
	int rc = redis_server_start(&s->redis);
	snprintf(s->url, sizeof(s->url), "%s", s->redis.url);
	return rc;
}

static void
redis_teardown(struct store *s)
{
	redis_server_destroy(&s->redis);
}

static void
redis_kill(struct store *s)
{
	redis_server_stop(&s->redis, SIGKILL);
}

static int
redis_revive(struct store *s)
{
	return redis_server_restart(&s->redis);
}

/* Raw hiredis, not kvnode's connector: the test changes bytes the way a faulty store would. */
static int
redis_corrupt(struct store *s, const char *key, enum corruption how)
{
	redisContext *c = redisConnect("127.0.0.1", s->redis.port);
	if (!c || c->err)
		return -ECONNREFUSED;
	redisReply *r;
	if (how == CORRUPT_HEADER) {
		r = redisCommand(c, "SET %smetadata %s", key, "garbage");
	} else {
		r = redisCommand(c, "GETRANGE %skv_bytes 10 10", key);
		char flipped = (char)(r && r->len == 1 ? r->str[0] ^ 0x5a : 'x');
		freeReplyObject(r);
		r = redisCommand(c, "SETRANGE %skv_bytes 10 %b", key, &flipped, (size_t)1);
	}
	int rc = r && r->type != REDIS_REPLY_ERROR ? 0 : -EIO;
	freeReplyObject(r);
	redisFree(c);
	return rc;
}

/* --- fs: a temp directory --------------------------------------------------------------- */

static int
fs_setup(struct store *s)
{
	int rc = proc_mkdtemp("kvn-fsconn", s->dir, sizeof(s->dir));
	snprintf(s->url, sizeof(s->url), "fs://%s/store", s->dir);
	return rc;
}

static void
fs_teardown(struct store *s)
{
	proc_rm_tree(s->dir);
}

static int
fs_corrupt(struct store *s, const char *key, enum corruption how)
{
	char path[PATH_MAX + 600];
	snprintf(path, sizeof(path), "%s/store/%s.data", s->dir, key); /* plain keys only */
	int fd = open(path, O_RDWR);
	if (fd < 0)
		return -errno;
	char b = 0;
	off_t off = how == CORRUPT_HEADER ? 8 : KVN_REMOTE_META_LEN + 10; /* dtype, or payload */
	int rc = pread(fd, &b, 1, off) == 1 ? 0 : -EIO;
	b = how == CORRUPT_HEADER ? (char)0x7f : (char)(b ^ 0x5a);
	if (rc == 0 && pwrite(fd, &b, 1, off) != 1)
		rc = -EIO;
	close(fd);
	return rc;
}

/* --- blackhole: nothing to start ------------------------------------------------------- */

static int
bh_setup(struct store *s)
{
	snprintf(s->url, sizeof(s->url), "blackhole://");
	return 0;
}

static void
bh_teardown(struct store *s)
{
	(void)s;
}

/* --- lm: kvnode's own lm server (LMCache's cache-server protocol), in this process ------ */

static int
lm_serve(struct store *s, const char *listen)
{
	char err[512];
	struct kvn_lm_server_opts o = {.listen = listen};
	int rc = kvn_lm_server_start(s->lm_eng, &o, &s->lm_srv, err, sizeof(err));
	if (rc)
		cr_log_info("lm server: %s", err);
	return rc;
}

static int
lm_setup(struct store *s)
{
	char err[512];
	s->lm_cfg = kvn_config_new_defaults();
	s->lm_cfg->max_local_cpu_size = 512ull << 20;
	s->lm_cfg->hugepages = false;
	int rc = kvn_engine_open(s->lm_cfg, &s->lm_eng, err, sizeof(err));
	if (rc || (rc = lm_serve(s, "127.0.0.1:0")))
		return rc;
	snprintf(s->lm_addr, sizeof(s->lm_addr), "%s", kvn_lm_server_address(s->lm_srv));
	snprintf(s->url, sizeof(s->url), "lm://%s", s->lm_addr);
	return 0;
}

static void
lm_teardown(struct store *s)
{
	kvn_lm_server_stop(s->lm_srv);
	kvn_engine_close(s->lm_eng);
	kvn_config_free(s->lm_cfg);
}

static void
lm_kill(struct store *s)
{
	kvn_lm_server_stop(s->lm_srv); /* every connection is cut, new ones refused */
	s->lm_srv = NULL;
}

static int
lm_revive(struct store *s)
{
	return lm_serve(s, s->lm_addr);
}

/* --- memcached: the example external connector, loaded from its .so ------------------- */

#define MEMCACHED_SO  KVN_MODULE_DIR "/libkvn_conn_memcached.so"
#define MEMCACHED_SYM "kvn_memcached_connector_ops"

static const char *
mc_table(void *ctx, const char *key)
{
	(void)ctx;
	if (!strcmp(key, "external_connector.memcached.module_path"))
		return MEMCACHED_SO;
	if (!strcmp(key, "external_connector.memcached.class_name"))
		return MEMCACHED_SYM;
	return NULL;
}

static int
mc_setup(struct store *s)
{
	if (!memcached_server_available() || access(MEMCACHED_SO, R_OK))
		cr_skip_test("memcached or %s missing (scripts/install-deps)", MEMCACHED_SO);
	int rc = memcached_server_start(&s->mc);
	if (rc)
		return rc;
	snprintf(s->url, sizeof(s->url), "%s", s->mc.url);
	snprintf(s->extra_yaml, sizeof(s->extra_yaml),
		 "  external_connector.memcached.module_path: %s\n"
		 "  external_connector.memcached.class_name: %s\n",
		 MEMCACHED_SO, MEMCACHED_SYM);
	char err[1024];
	rc = kvn_connector_load_external(s->url, ".", mc_table, NULL, err, sizeof(err));
	if (rc)
		cr_log_info("%s", err);
	return rc;
}

static void
mc_teardown(struct store *s)
{
	memcached_server_destroy(&s->mc);
	kvn_connector_unregister("memcached");
}

static void
mc_kill(struct store *s)
{
	memcached_server_stop(&s->mc, SIGKILL);
}

static int
mc_revive(struct store *s)
{
	return memcached_server_restart(&s->mc);
}

/* Raw text protocol, not the connector: flip a payload byte or garble the dtype field. */
static int
mc_corrupt(struct store *s, const char *key, enum corruption how)
{
	size_t len;
	uint8_t *item = memcached_raw_get(&s->mc, key, &len);
	if (!item || len < KVN_REMOTE_META_LEN + 20) {
		free(item);
		return -ENOENT;
	}
	if (how == CORRUPT_HEADER)
		item[8] = 0x7f;
	else
		item[KVN_REMOTE_META_LEN + 10] ^= 0x5a;
	int rc = memcached_raw_set(&s->mc, key, item, len);
	free(item);
	return rc;
}

#define CAP_FULL (CAP_KEEPS | CAP_REMOVE | CAP_TAG | CAP_LONG_KEYS)

/* One line per implementation. */
static struct impl impls[] = {
    {"redis", CAP_FULL | CAP_LIST | CAP_KILL | CAP_CORRUPT, redis_setup, redis_teardown, redis_kill,
     redis_revive, redis_corrupt},
    /* A file name is LMCache's, the key text: keys up to NAME_MAX bytes of name only. */
    {"fs", CAP_KEEPS | CAP_REMOVE | CAP_TAG | CAP_LIST | CAP_CORRUPT, fs_setup, fs_teardown, NULL,
     NULL, fs_corrupt},
    {"blackhole", CAP_REMOVE | CAP_LONG_KEYS, bh_setup, bh_teardown, NULL, NULL, NULL},
    /* LMCache's protocol has no delete, no room for the tag and 150-byte keys. */
    {"lm", CAP_KEEPS | CAP_LIST | CAP_KILL, lm_setup, lm_teardown, lm_kill, lm_revive, NULL},
    /* memcached cannot list its keys. */
    {"memcached", CAP_FULL | CAP_KILL | CAP_CORRUPT, mc_setup, mc_teardown, mc_kill, mc_revive,
     mc_corrupt},
};

#define NIMPLS (sizeof(impls) / sizeof(impls[0]))

/* Each case is one parameterized test over impls. Criterion may run a test in a freshly
 * started copy of this program (other addresses), so the parameter is an index, not a pointer. */
static size_t impl_index[] = {0, 1, 2, 3, 4, 5, 6, 7};
_Static_assert(NIMPLS <= sizeof(impl_index) / sizeof(impl_index[0]), "grow impl_index");

#define CONFORMANCE(test)                                                                          \
	static void test##_body(struct impl *impl);                                                \
	ParameterizedTestParameters(conformance, test)                                             \
	{                                                                                          \
		return cr_make_param_array(size_t, impl_index, NIMPLS);                            \
	}                                                                                          \
	ParameterizedTest(size_t *idx, conformance, test, .timeout = 240)                          \
	{                                                                                          \
		cr_log_info("connector %s", impls[*idx].name);                                     \
		test##_body(&impls[*idx]);                                                         \
	}                                                                                          \
	static void test##_body(struct impl *impl)

/* ============================================================================================
 * Harness: a connected connector, values, log capture
 * ============================================================================================ */

static struct store store;
static struct impl *cur_impl; /* the one start() set up */
static const struct kvn_connector_ops *ops;
static struct kvn_connector_env cenv;
static char logpath[PATH_MAX];
static char logdir[PATH_MAX - 64];
static int saved_stderr = -1;

/* Log lines (fd 2) go to a file the test can search. */
static void
capture_log(void)
{
	snprintf(logpath, sizeof(logpath), "%s/node.log", logdir);
	fflush(stderr);
	saved_stderr = dup(2);
	int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	cr_assert_geq(fd, 0);
	dup2(fd, 2);
	close(fd);
}

static char *
captured_log(void)
{
	return proc_read_file(logpath, NULL);
}

static void
start(struct impl *impl)
{
	memset(&store, 0, sizeof(store));
	cur_impl = impl;
	cr_assert_eq(proc_mkdtemp("kvn-conf", logdir, sizeof(logdir)), 0);
	cr_assert_eq(impl->setup(&store), 0, "%s store did not start", impl->name);
	char err[512];
	cr_assert_eq(kvn_connector_find(store.url, &ops, err, sizeof(err)), 0, "%s", err);
	kvn_connector_env_plain(&cenv, store.url, NULL, 30000);
	capture_log();
}

static void
finish(struct impl *impl)
{
	if (saved_stderr >= 0) {
		dup2(saved_stderr, 2);
		close(saved_stderr);
		saved_stderr = -1;
	}
	impl->teardown(&store);
	proc_rm_tree(logdir);
}

static struct kvn_connector *
connect_ok(void)
{
	struct kvn_connector *c = NULL;
	int rc = ops->connect(&cenv, &c);
	cr_assert_eq(rc, 0, "connect to %s: %s", store.url, kvn_strerror(rc));
	return c;
}

static void
key_of(struct kvn_key *k, const char *fmt, unsigned i)
{
	char text[KVN_KEY_MAX + 1];
	snprintf(text, sizeof(text), fmt, i);
	cr_assert_eq(kvn_key_from_str(k, text), 0, "key %s", text);
}

/* A value as the remote tier writes it: header for plain bytes, pattern payload, tag (or a
 * pending one, for a connector that hashes while it sends: read-backs then check its tag). */
static struct kvn_remote_value
value_of(size_t len, uint64_t seed)
{
	struct kvn_buf *b = kvn_buf_new(len);
	cr_assert_not_null(b);
	pattern_fill(b->data, len, seed);
	struct kvn_remote_value v;
	cr_assert_eq(kvn_remote_value_for_put(&v, NULL, b, ops), 0);
	return v;
}

static void
assert_value(struct kvn_remote_value *got, size_t len, uint64_t seed)
{
	cr_assert_not_null(got->payload);
	cr_assert_eq(got->payload->len, len, "payload of %zu bytes, expected %zu",
		     got->payload->len, len);
	cr_assert_eq(got->meta.length, (int32_t)len);
	cr_assert(pattern_check(got->payload->data, len, seed), "payload bytes differ");
	char why[128] = "";
	cr_assert_eq(kvn_remote_value_check(got, why, sizeof(why)), 0, "%s", why);
	if (cur_impl->caps & CAP_TAG)
		cr_assert_eq(got->tag_len, KVN_REMOTE_TAG_LEN, "the integrity tag was not kept");
}

static bool
is_conn_error(int rc)
{
	return rc == -ENOTCONN || rc == -ECONNREFUSED || rc == -ECONNRESET || rc == -EPIPE ||
	       rc == -ETIMEDOUT || rc == -EIO || rc == -EPROTO;
}

/* ============================================================================================
 * Connector ABI cases
 * ============================================================================================ */

CONFORMANCE(put_get_exists_remove_round_trip_values_from_1_byte_to_32_MiB)
{
	static const size_t sizes[] = {1, 1000, 256 * 1024, 4 * 1024 * 1024 + 7, 32 * 1024 * 1024};
	start(impl);
	struct kvn_connector *c = connect_ok();
	for (unsigned i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		struct kvn_key k;
		key_of(&k, "vllm@llama@1@0@%08x@half", i);
		struct kvn_remote_value v = value_of(sizes[i], i + 1), got;
		cr_assert_eq(ops->put(c, &k, &v), 0, "put of %zu bytes", sizes[i]);
		kvn_buf_unref(v.payload);
		if (!(impl->caps & CAP_KEEPS)) {
			cr_assert_eq(ops->exists(c, &k), 0);
			cr_assert_eq(ops->get(c, &k, &got), -ENOENT);
			continue;
		}
		cr_assert_eq(ops->exists(c, &k), 1, "exists after put of %zu bytes", sizes[i]);
		cr_assert_eq(ops->get(c, &k, &got), 0, "get of %zu bytes", sizes[i]);
		assert_value(&got, sizes[i], i + 1);
		kvn_remote_value_release(&got);
		if (!(impl->caps & CAP_REMOVE)) {
			cr_assert_eq(ops->remove(c, &k), -EOPNOTSUPP);
			continue;
		}
		cr_assert_eq(ops->remove(c, &k), 0);
		cr_assert_eq(ops->exists(c, &k), 0, "exists after remove");
		cr_assert_eq(ops->get(c, &k, &got), -ENOENT, "get after remove");
	}
	ops->close(c);
	finish(impl);
}

CONFORMANCE(a_put_replaces_the_older_value_of_the_key)
{
	start(impl);
	struct kvn_connector *c = connect_ok();
	struct kvn_key k;
	key_of(&k, "replace-me-%u", 0);
	for (uint64_t seed = 1; seed <= 2; seed++) {
		struct kvn_remote_value v = value_of(5000 * seed, seed);
		cr_assert_eq(ops->put(c, &k, &v), 0);
		kvn_buf_unref(v.payload);
	}
	struct kvn_remote_value got;
	if (impl->caps & CAP_KEEPS) {
		cr_assert_eq(ops->get(c, &k, &got), 0);
		assert_value(&got, 10000, 2);
		kvn_remote_value_release(&got);
	} else {
		cr_assert_eq(ops->get(c, &k, &got), -ENOENT);
	}
	ops->close(c);
	finish(impl);
}

CONFORMANCE(a_missing_key_is_a_miss_not_an_error)
{
	start(impl);
	struct kvn_connector *c = connect_ok();
	struct kvn_key k;
	key_of(&k, "never-stored-%u", 7);
	struct kvn_remote_value got;
	cr_assert_eq(ops->exists(c, &k), 0);
	cr_assert_eq(ops->get(c, &k, &got), -ENOENT);
	cr_assert_null(got.payload);
	cr_assert_eq(ops->remove(c, &k), (impl->caps & CAP_REMOVE) ? -ENOENT : -EOPNOTSUPP);
	cr_assert_eq(ops->ping(c), 0);
	ops->close(c);
	finish(impl);
}

struct seen {
	char keys[8][KVN_KEY_MAX + 1];
	int count[8];
	int other;
};

static int
note_key(void *ctx, const char *key, size_t len)
{
	struct seen *s = ctx;
	for (int i = 0; i < 8; i++)
		if (strlen(s->keys[i]) == len && !memcmp(s->keys[i], key, len)) {
			s->count[i]++;
			return 0;
		}
	s->other++;
	return 0;
}

CONFORMANCE(list_reports_every_stored_key_once_including_odd_and_long_keys)
{
	start(impl);
	struct kvn_connector *c = connect_ok();
	struct seen s = {0};
	snprintf(s.keys[0], sizeof(s.keys[0]), "vllm@llama@1@0@abc@half");
	snprintf(s.keys[1], sizeof(s.keys[1]), "model/with/slashes@1@0@ff");
	snprintf(s.keys[2], sizeof(s.keys[2]), ".hidden%%percent");
	memset(s.keys[3], 'k', 400); /* longer than a file name may be */
	for (int i = 4; i < 8; i++)
		snprintf(s.keys[i], sizeof(s.keys[i]), "plain-%d", i);
	const bool long_ok = impl->caps & CAP_LONG_KEYS;
	for (int i = 0; i < 8; i++) {
		struct kvn_key k;
		cr_assert_eq(kvn_key_from_str(&k, s.keys[i]), 0);
		if (i == 3 && !long_ok)
			continue;
		struct kvn_remote_value v = value_of(100 + (size_t)i, (uint64_t)i);
		cr_assert_eq(ops->put(c, &k, &v), 0, "put %s", s.keys[i]);
		kvn_buf_unref(v.payload);
		if (impl->caps & CAP_KEEPS) {
			struct kvn_remote_value got;
			cr_assert_eq(ops->get(c, &k, &got), 0, "get %s", s.keys[i]);
			assert_value(&got, 100 + (size_t)i, (uint64_t)i);
			kvn_remote_value_release(&got);
		}
	}
	int rc = ops->list(c, note_key, &s);
	cr_assert(rc == 0 || (!(impl->caps & CAP_LIST) && rc == -EOPNOTSUPP), "list: %s",
		  kvn_strerror(rc));
	for (int i = 0; i < 8; i++)
		cr_assert_eq(s.count[i], (impl->caps & CAP_LIST) && (i != 3 || long_ok) ? 1 : 0,
			     "key %.40s listed %d times", s.keys[i], s.count[i]);
	cr_assert_eq(s.other, 0, "list reported keys that were never stored");
	ops->close(c);
	finish(impl);
}

/* The batch helpers with the connector's own batch ops and with the single-call fallback. */
static void
batch_round(struct impl *impl, const struct kvn_connector_ops *o, struct kvn_connector *c,
	    unsigned tag)
{
	enum { N = 12 };
	struct kvn_key keys[N];
	const struct kvn_key *kp[N];
	struct kvn_remote_value vals[N], got[N];
	int rcs[N];
	for (unsigned i = 0; i < N; i++) {
		key_of(&keys[i], "batch-%06x", tag * 100 + i);
		kp[i] = &keys[i];
		vals[i] = value_of(1000 * (i + 1), tag * 100 + i);
	}
	/* Store the even ones only: the batch mixes hits and misses. */
	const struct kvn_key *even[N / 2];
	struct kvn_remote_value evals[N / 2];
	for (unsigned i = 0; i < N / 2; i++) {
		even[i] = kp[2 * i];
		evals[i] = vals[2 * i];
	}
	cr_assert_eq(kvn_connector_put_batch(o, c, N / 2, even, evals, rcs), 0);
	for (unsigned i = 0; i < N / 2; i++)
		cr_assert_eq(rcs[i], 0, "batched put %u", i);
	cr_assert_eq(kvn_connector_exists_batch(o, c, N, kp, rcs), 0);
	for (unsigned i = 0; i < N; i++)
		cr_assert_eq(rcs[i], (impl->caps & CAP_KEEPS) && i % 2 == 0, "exists %u", i);
	memset(got, 0, sizeof(got));
	cr_assert_eq(kvn_connector_get_batch(o, c, N, kp, got, rcs), 0);
	for (unsigned i = 0; i < N; i++) {
		if ((impl->caps & CAP_KEEPS) && i % 2 == 0) {
			cr_assert_eq(rcs[i], 0, "batched get %u", i);
			assert_value(&got[i], 1000 * (i + 1), tag * 100 + i);
			kvn_remote_value_release(&got[i]);
		} else {
			cr_assert_eq(rcs[i], -ENOENT, "batched get %u of a missing key", i);
		}
		kvn_buf_unref(vals[i].payload);
	}
}

CONFORMANCE(batched_put_get_exists_agree_with_single_calls_with_and_without_batch_ops)
{
	start(impl);
	struct kvn_connector *c = connect_ok();
	batch_round(impl, ops, c, 1);
	struct kvn_connector_ops singles = *ops;
	singles.get_batch = NULL;
	singles.put_batch = NULL;
	singles.exists_batch = NULL;
	batch_round(impl, &singles, c, 2);
	ops->close(c);
	finish(impl);
}

/* ============================================================================================
 * Through the node: the remote tier of an engine
 * ============================================================================================ */

static struct kvn_config *cfg;
static struct kvn_engine *eng;

static void
engine_open(bool local_cpu)
{
	char yaml[2 * PATH_MAX];
	snprintf(yaml, sizeof(yaml),
		 "local_cpu: %s\nmax_local_cpu_size: 0.25\nhugepages: false\nremote_url: \"%s\"\n"
		 "extra_config:\n  remote.retry_min_ms: 50\n  remote.retry_max_ms: 200\n"
		 "  remote.timeout_ms: 5000\n%s",
		 local_cpu ? "true" : "false", store.url, store.extra_yaml);
	engine_env_open(yaml, &cfg, &eng);
}

static void
engine_close(void)
{
	kvn_engine_close(eng);
	eng = NULL;
	kvn_config_free(cfg);
	cfg = NULL;
}

/* A counter of the remote tier in kvn_engine_stats_json. */
static double
remote_stat(const char *field)
{
	char *text = kvn_engine_stats_json(eng);
	cJSON *root = cJSON_Parse(text);
	free(text);
	double v = -1;
	cJSON *t;
	cJSON_ArrayForEach(t, cJSON_GetObjectItem(root, "backends"))
	{
		cJSON *name = cJSON_GetObjectItem(t, "name");
		if (name && !strcmp(name->valuestring, "remote"))
			v = cJSON_GetNumberValue(cJSON_GetObjectItem(t, field));
	}
	cJSON_Delete(root);
	return v;
}

/* A field of the engine's "remote" status object (stat): a number, or 1/0 for a bool. */
static double
remote_status(const char *field)
{
	char *text = kvn_engine_stats_json(eng);
	cJSON *root = cJSON_Parse(text);
	free(text);
	cJSON *f = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "remote"), field);
	cr_assert_not_null(f, "stat has no remote.%s", field);
	double v = cJSON_IsBool(f) ? cJSON_IsTrue(f) : cJSON_GetNumberValue(f);
	cJSON_Delete(root);
	return v;
}

CONFORMANCE(the_remote_tier_writes_through_and_serves_what_the_store_holds)
{
	start(impl);
	engine_open(false);
	engine_put_pattern(eng, "tier-a", 300000, 11);
	kvn_engine_flush(eng);
	cr_assert_eq(engine_get_pattern(eng, "tier-a", 300000, 11), (impl->caps & CAP_KEEPS) ? 0 : -ENOENT);
	cr_assert_eq(remote_stat("puts"), 1);
	engine_close();
	/* A second node on the same store sees the value (the store outlives the node). */
	engine_open(false);
	cr_assert_eq(engine_get_pattern(eng, "tier-a", 300000, 11), (impl->caps & CAP_KEEPS) ? 0 : -ENOENT);
	engine_close();
	finish(impl);
}

static void
corrupted_value_case(struct impl *impl, enum corruption how)
{
	if (!(impl->caps & CAP_CORRUPT))
		cr_skip_test("%s: the test cannot alter this store's values", impl->name);
	start(impl);
	engine_open(false);
	engine_put_pattern(eng, "corrupt-me", 70000, 5);
	kvn_engine_flush(eng);
	cr_assert_eq(engine_get_pattern(eng, "corrupt-me", 70000, 5), 0);
	cr_assert_eq(impl->corrupt(&store, "corrupt-me", how), 0);
	cr_assert_eq(engine_get_pattern(eng, "corrupt-me", 70000, 5), -ENOENT, "a corrupt value was served");
	cr_assert_geq(remote_stat("errors"), 1, "the corrupt value was not counted");
	cr_assert_eq(remote_status("corrupt"), 1, "stat does not count the corrupt value");
	char *log = captured_log();
	cr_assert(log && strstr(log, "corrupt-me") && strstr(log, "corrupt value"),
		  "no log line names the corrupt key: %s", log ? log : "");
	free(log);
	engine_close();
	finish(impl);
}

CONFORMANCE(a_payload_changed_in_the_store_is_detected_logged_counted_and_a_miss)
{
	corrupted_value_case(impl, CORRUPT_PAYLOAD_BYTE);
}

CONFORMANCE(a_garbled_header_in_the_store_is_detected_logged_counted_and_a_miss)
{
	corrupted_value_case(impl, CORRUPT_HEADER);
}

/* A writer hammering the store while it is killed: every call returns, with a clear error. */
struct hammer {
	struct kvn_connector *c;
	_Atomic int done_ok;
	int first_err;
};

static void *
hammer_main(void *arg)
{
	struct hammer *h = arg;
	struct kvn_remote_value v = value_of(4 << 20, 3);
	for (unsigned i = 0; i < 100000; i++) {
		struct kvn_key k;
		key_of(&k, "hammer-%u", i % 8);
		int rc = ops->put(h->c, &k, &v);
		if (rc < 0) {
			h->first_err = rc;
			break;
		}
		atomic_fetch_add(&h->done_ok, 1);
	}
	kvn_buf_unref(v.payload);
	return NULL;
}

static bool
hammer_started(void *arg)
{
	return atomic_load(&((struct hammer *)arg)->done_ok) > 0;
}

CONFORMANCE(a_store_killed_mid_operation_gives_a_clear_error_and_a_reconnect_once_it_is_back)
{
	if (!(impl->caps & CAP_KILL))
		cr_skip_test("%s: the store is not a process the test can kill", impl->name);
	start(impl);
	struct hammer h = {.c = connect_ok()};
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, hammer_main, &h), 0);
	cr_assert(proc_wait_for(hammer_started, &h, 60000), "no put went through");
	impl->kill(&store);
	pthread_join(t, NULL);
	cr_assert(is_conn_error(h.first_err), "put during the kill returned %d (%s)", h.first_err,
		  kvn_strerror(h.first_err));
	ops->close(h.c);
	struct kvn_connector *c = NULL;
	int rc = ops->connect(&cenv, &c);
	cr_assert(is_conn_error(rc), "connect to a dead store returned %d", rc);
	char *log = captured_log();
	cr_assert(log && strstr(log, store.url), "the error does not name the store: %s",
		  log ? log : "");
	free(log);
	cr_assert_eq(impl->revive(&store), 0);
	c = connect_ok();
	cr_assert_eq(ops->ping(c), 0);
	ops->close(c);
	finish(impl);
}

struct node_probe {
	unsigned n;
};

/* After the store is back, a put must reach it: probe with fresh keys until one lands. */
static bool
store_has_new_write(void *arg)
{
	struct node_probe *p = arg;
	char key[64];
	snprintf(key, sizeof(key), "after-restart-%u", p->n++);
	engine_put_pattern(eng, key, 1000, 9);
	kvn_engine_flush(eng);
	struct kvn_connector *c = NULL;
	if (ops->connect(&cenv, &c) < 0)
		return false;
	struct kvn_key k;
	kvn_key_from_str(&k, key);
	bool there = ops->exists(c, &k) == 1;
	ops->close(c);
	if (!there)
		usleep(100 * 1000);
	return there;
}

CONFORMANCE(a_node_keeps_serving_while_its_store_is_down_says_so_and_reconnects)
{
	if (!(impl->caps & CAP_KILL))
		cr_skip_test("%s: the store is not a process the test can kill", impl->name);
	start(impl);
	engine_open(true);
	engine_put_pattern(eng, "before", 200000, 1);
	kvn_engine_flush(eng);
	impl->kill(&store);
	/* Puts and gets keep working from the cpu tier; nothing blocks on the dead store. */
	for (int i = 0; i < 20; i++) {
		char key[32];
		snprintf(key, sizeof(key), "during-%d", i);
		engine_put_pattern(eng, key, 100000, (uint64_t)i);
	}
	kvn_engine_flush(eng);
	cr_assert_eq(engine_get_pattern(eng, "before", 200000, 1), 0);
	for (int i = 0; i < 20; i++) {
		char key[32];
		snprintf(key, sizeof(key), "during-%d", i);
		cr_assert_eq(engine_get_pattern(eng, key, 100000, (uint64_t)i), 0, "%s", key);
	}
	cr_assert_geq(remote_stat("errors"), 1, "failed writes to the dead store not counted");
	cr_assert_eq(remote_status("connected"), 0, "stat does not say the store is down");
	cr_assert_geq(remote_status("disconnects"), 1);
	char *log = captured_log();
	cr_assert(log && strstr(log, "unreachable") && strstr(log, store.url),
		  "no log line says the store is unreachable: %s", log ? log : "");
	free(log);

	cr_assert_eq(impl->revive(&store), 0);
	struct node_probe p = {0};
	cr_assert(proc_wait_for(store_has_new_write, &p, 60000),
		  "writes did not reach the store after it came back");
	log = captured_log();
	cr_assert(log && strstr(log, "reconnected"), "no log line says it reconnected");
	cr_assert_eq(remote_status("connected"), 1, "stat does not say the store is back");
	cr_assert_geq(remote_status("reconnects"), 1);
	free(log);
	engine_close();
	finish(impl);
}

/* ============================================================================================
 * Registry
 * ============================================================================================ */

Test(registry, an_unknown_scheme_is_a_config_error_listing_the_known_ones)
{
	const struct kvn_connector_ops *o;
	char err[1024];
	cr_assert_eq(kvn_connector_find("nosuch://x", &o, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "\"nosuch\"") && strstr(err, "redis") && strstr(err, "fs") &&
		      strstr(err, "blackhole") && strstr(err, "external_connector.nosuch"),
		  "%s", err);
	cr_assert_eq(kvn_connector_find("no-scheme-here", &o, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "no scheme"), "%s", err);
}

Test(registry, schemes_this_build_lacks_say_what_they_need)
{
	const struct kvn_connector_ops *o;
	char err[1024];
	const char *urls[] = {"rediss://h:1", "infinistore://h:1", "mooncakestore://h:1"};
	for (size_t i = 0; i < 3; i++) {
		cr_assert_eq(kvn_connector_find(urls[i], &o, err, sizeof(err)), -ENOTSUP, "%s",
			     urls[i]);
		cr_assert(strstr(err, "not built in this build: needs"), "%s", err);
	}
}

Test(registry, external_connectors_register_by_scheme_and_cannot_take_a_built_in_one)
{
	static const struct kvn_connector_ops mine = {
	    KVN_CONNECTOR_OPS_INIT, .scheme = "x"};
	static const struct kvn_connector_ops old = {.abi = KVN_ABI + 1,
						     .size = sizeof(struct kvn_connector_ops)};
	const struct kvn_connector_ops *o;
	char list[512];
	cr_assert_eq(kvn_connector_register("mystore", &mine), 0);
	cr_assert_eq(kvn_connector_register("mystore", &mine), 0, "same ops twice is fine");
	cr_assert_eq(kvn_connector_register("mystore", &old), -EINVAL, "ABI mismatch refused");
	cr_assert_eq(kvn_connector_register("redis", &mine), -EEXIST);
	cr_assert_eq(kvn_connector_register("9bad", &mine), -EINVAL);
	cr_assert_eq(kvn_connector_find("mystore://a/b", &o, NULL, 0), 0);
	cr_assert_eq(o, &mine);
	kvn_connector_schemes(list, sizeof(list));
	cr_assert(strstr(list, "mystore"), "%s", list);
	cr_assert_eq(kvn_connector_unregister("mystore"), 0);
	cr_assert_eq(kvn_connector_find("mystore://a/b", &o, NULL, 0), -EINVAL);
}

Test(registry, a_node_whose_remote_url_is_unknown_does_not_start)
{
	char err[1024];
	const char *yaml = "remote_url: \"nosuch://x\"\n";
	cr_assert_eq(kvn_config_parse(yaml, strlen(yaml), "t.yaml", &cfg, err, sizeof(err)), 0);
	cr_assert_lt(kvn_engine_open(cfg, &eng, err, sizeof(err)), 0);
	cr_assert(strstr(err, "remote"), "%s", err);
	kvn_config_free(cfg);
}

/* ============================================================================================
 * fs options
 * ============================================================================================ */

static int
open_fs_node(const char *url, const char *extra, char *err, size_t errlen)
{
	char yaml[2 * PATH_MAX];
	snprintf(yaml, sizeof(yaml), "local_cpu: false\nremote_url: \"%s\"\n%s", url, extra);
	cr_assert_eq(kvn_config_parse(yaml, strlen(yaml), "t.yaml", &cfg, err, errlen), 0, "%s",
		     err);
	return kvn_engine_open(cfg, &eng, err, errlen);
}

Test(fs_connector, fsync_is_set_in_the_url_or_extra_config_and_other_words_are_refused)
{
	char d[PATH_MAX - 64], url[PATH_MAX], err[1024];
	cr_assert_eq(proc_mkdtemp("kvn-fsopt", d, sizeof(d)), 0);
	const char *extra[] = {"", "extra_config:\n  remote.fsync: true\n"};
	for (int i = 0; i < 2; i++) {
		snprintf(url, sizeof(url), "fs://%s/s%d%s", d, i, i == 0 ? "?fsync=true" : "");
		cr_assert_eq(open_fs_node(url, extra[i], err, sizeof(err)), 0, "%s", err);
		engine_put_pattern(eng, "synced", 5000, 3);
		kvn_engine_flush(eng);
		cr_assert_eq(engine_get_pattern(eng, "synced", 5000, 3), 0);
		engine_close();
	}
	snprintf(url, sizeof(url), "fs://%s/s2?fsync=maybe", d);
	int saved = dup(2), fd = open("/dev/null", O_WRONLY);
	dup2(fd, 2); /* the refusal is logged; only the return code matters here */
	int rc = open_fs_node(url, "", err, sizeof(err));
	dup2(saved, 2);
	close(fd);
	close(saved);
	cr_assert_lt(rc, 0, "fsync=maybe was accepted");
	kvn_config_free(cfg);
	cfg = NULL;
	proc_rm_tree(d);
}

/* ============================================================================================
 * redis: a request that fails part-way, and replies that are not what was asked
 * ============================================================================================ */

static void
redis_value_put(struct kvn_connector *c, const char *key, size_t len, uint64_t seed)
{
	struct kvn_key k;
	cr_assert_eq(kvn_key_from_str(&k, key), 0);
	struct kvn_remote_value v = value_of(len, seed);
	cr_assert_eq(ops->put(c, &k, &v), 0, "put %s", key);
	kvn_buf_unref(v.payload);
}

Test(redis_connector, a_batch_that_failed_part_way_never_lets_the_next_request_read_its_replies,
     .timeout = 240)
{
	start(&impls[0]);
	struct kvn_connector *c = connect_ok();
	redis_value_put(c, "desync-a", 1000, 1);
	redis_value_put(c, "desync-b", 2000, 2);
	struct kvn_key a, b;
	kvn_key_from_str(&a, "desync-a");
	kvn_key_from_str(&b, "desync-b");
	const struct kvn_key *keys[2] = {&a, &b};
	struct kvn_remote_value got[2];
	int rcs[2];
	/* The third append (the MGET of b) fails: a's MGET and GET are already buffered. */
	atomic_store(&kvn_redis_fail_append_in, 3);
	cr_assert_lt(ops->get_batch(c, 2, keys, got, rcs), 0, "the batch did not fail");
	atomic_store(&kvn_redis_fail_append_in, 0);

	struct kvn_remote_value v;
	int rc = ops->get(c, &b, &v);
	if (rc == 0) {
		cr_assert_eq(v.payload->len, 2000, "the get of b returned a's %zu bytes",
			     v.payload->len);
		cr_assert(pattern_check(v.payload->data, 2000, 2),
			  "the get of b returned a's value");
		kvn_remote_value_release(&v);
	} else {
		cr_assert(is_conn_error(rc), "get after the failed batch: %s", kvn_strerror(rc));
	}
	ops->close(c);
	finish(&impls[0]);
}

Test(redis_connector, after_a_get_failed_part_way_the_tiers_next_get_returns_its_own_value,
     .timeout = 240)
{
	start(&impls[0]);
	snprintf(store.extra_yaml, sizeof(store.extra_yaml), "  remote.connections: 1\n");
	engine_open(false);
	engine_put_pattern(eng, "tier-desync-a", 3000, 3);
	engine_put_pattern(eng, "tier-desync-b", 4000, 4);
	kvn_engine_flush(eng);
	atomic_store(&kvn_redis_fail_append_in, 2); /* the GET after a's MGET */
	cr_assert_eq(engine_get_pattern(eng, "tier-desync-a", 3000, 3), -ENOENT);
	atomic_store(&kvn_redis_fail_append_in, 0);
	cr_assert_eq(engine_get_pattern(eng, "tier-desync-b", 4000, 4), 0,
		     "the get after a failed one did not get its own value");
	cr_assert_eq(engine_get_pattern(eng, "tier-desync-a", 3000, 3), 0);
	engine_close();
	finish(&impls[0]);
}

/* A server that reads a request and answers every one with the same line, like a proxy that
 * speaks something other than what was asked. */
struct liar {
	int lfd, port;
	const char *answer;
	pthread_t thread;
};

static void *
liar_main(void *arg)
{
	struct liar *l = arg;
	int fd = accept(l->lfd, NULL, NULL);
	if (fd < 0)
		return NULL;
	char buf[65536];
	ssize_t n;
	bool answered = false;
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		if (!answered) {
			answered = true;
			if (write(fd, l->answer, strlen(l->answer)) < 0)
				break;
		}
	close(fd);
	return NULL;
}

static void
liar_start(struct liar *l, const char *answer)
{
	l->answer = answer;
	l->lfd = socket(AF_INET, SOCK_STREAM, 0);
	cr_assert_geq(l->lfd, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);
	cr_assert_eq(bind(l->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(l->lfd, 4), 0);
	cr_assert_eq(getsockname(l->lfd, (struct sockaddr *)&sa, &sl), 0);
	l->port = ntohs(sa.sin_port);
	cr_assert_eq(pthread_create(&l->thread, NULL, liar_main, l), 0);
}

Test(redis_connector, a_put_answered_with_anything_but_ok_is_an_error, .timeout = 240)
{
	static const char *answers[] = {"+QUEUED\r\n", ":1\r\n", "$2\r\nOK\r\n"};
	for (size_t i = 0; i < 3; i++) {
		struct liar l;
		liar_start(&l, answers[i]);
		char url[64];
		snprintf(url, sizeof(url), "redis://127.0.0.1:%d", l.port);
		cr_assert_eq(kvn_connector_find(url, &ops, NULL, 0), 0);
		kvn_connector_env_plain(&cenv, url, NULL, 30000);
		struct kvn_connector *c = NULL;
		cr_assert_eq(ops->connect(&cenv, &c), 0);
		struct kvn_key k;
		kvn_key_from_str(&k, "lied-to");
		struct kvn_remote_value v = value_of(100, 1);
		int rc = ops->put(c, &k, &v);
		kvn_buf_unref(v.payload);
		cr_assert_lt(rc, 0, "a put answered %.*s was taken as stored",
			     (int)strcspn(answers[i], "\r"), answers[i]);
		ops->close(c);
		pthread_join(l.thread, NULL);
		close(l.lfd);
	}
}
