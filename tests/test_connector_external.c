/* External connectors: the loader (extra_config external_connector.<scheme>.module_path /
 * .class_name → a registered scheme, every refusal naming file, symbol and key) and the example
 * memcached:// connector against a real memcached: its item layout, long keys, batches,
 * corruption behind kvnode's back, and a server that dies and comes back. */
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "connectors/external.h"
#include "connectors/registry.h"
#include "helpers/memcached_server.h"
#include "helpers/proc.h"
#include "node/engine/config.h"
#include "connectors/remote_value.h"

#define MEMCACHED_SO   "libkvn_conn_memcached.so"
#define MEMCACHED_PATH KVN_MODULE_DIR "/" MEMCACHED_SO
#define MEMCACHED_SYM  "kvn_memcached_connector_ops"
#define MIB	       (1024 * 1024)

/* extra_config as a tiny table: key, value pairs, NULL-terminated. */
static const char *
table_get(void *ctx, const char *key)
{
	const char *const *t = ctx;
	for (; t[0]; t += 2)
		if (!strcmp(t[0], key))
			return t[1];
	return NULL;
}

static int
load(const char *url, const char *const *table, char *err, size_t errlen)
{
	return kvn_connector_load_external(url, KVN_BINARY_DIR, table_get, (void *)table, err,
					   errlen);
}

static void
assert_has(const char *msg, const char *what)
{
	cr_assert(msg && strstr(msg, what), "message lacks \"%s\": %s", what, msg ? msg : "");
}

/* ------------------------------------------------------------------------------------------
 * Loader
 * ------------------------------------------------------------------------------------------ */

Test(ext_loader, a_scheme_nothing_configures_loads_nothing_and_stays_unknown)
{
	static const char *const none[] = {NULL};
	char err[1024] = "";
	cr_assert_eq(load("memcached://127.0.0.1:1", none, err, sizeof(err)), 0);
	const struct kvn_connector_ops *o;
	cr_assert_eq(kvn_connector_find("memcached://127.0.0.1:1", &o, err, sizeof(err)), -EINVAL);
	assert_has(err, "external_connector.memcached");
}

Test(ext_loader, module_path_without_class_name_is_refused_naming_the_missing_key)
{
	static const char *const t[] = {"external_connector.memcached.module_path", MEMCACHED_PATH,
					NULL};
	char err[1024] = "";
	cr_assert_eq(load("memcached://h:1", t, err, sizeof(err)), -EINVAL);
	assert_has(err, "external_connector.memcached.class_name");
}

Test(ext_loader, a_missing_module_names_where_it_looked_and_the_key)
{
	static const char *const t[] = {"external_connector.mc.module_path", "libkvn_no_such.so",
					"external_connector.mc.class_name", MEMCACHED_SYM, NULL};
	char err[2048] = "";
	cr_assert_eq(load("mc://h:1", t, err, sizeof(err)), -ENOENT);
	assert_has(err, "external connector module libkvn_no_such.so");
	assert_has(err, "KVNODE_MODULE_PATH");
	assert_has(err, MEMCACHED_SYM);
}

Test(ext_loader, a_wrong_class_name_names_the_symbol_and_the_file)
{
	static const char *const t[] = {"external_connector.mc.module_path", MEMCACHED_PATH,
					"external_connector.mc.class_name", "kvn_nope_ops", NULL};
	char err[2048] = "";
	cr_assert_eq(load("mc://h:1", t, err, sizeof(err)), -EINVAL);
	assert_has(err, "kvn_nope_ops");
	assert_has(err, MEMCACHED_PATH);
}

Test(ext_loader, an_abi_mismatch_is_refused_with_how_to_fix_it)
{
	static const char *const t[] = {
	    "external_connector.bad.module_path", KVN_MODULE_DIR "/libkvn_test_conn_bad_abi.so",
	    "external_connector.bad.class_name", "kvn_test_conn_bad_abi_ops", NULL};
	char err[2048] = "";
	cr_assert_eq(load("bad://h:1", t, err, sizeof(err)), -EINVAL);
	assert_has(err, "kvnode ABI 999");
	assert_has(err, "rebuild");
	const struct kvn_connector_ops *o;
	cr_assert_eq(kvn_connector_find("bad://h:1", &o, NULL, 0), -EINVAL, "not registered");
}

Test(ext_loader, a_table_without_a_required_operation_is_refused_naming_it)
{
	static const char *const t[] = {"external_connector.noping.module_path",
					"modules/libkvn_test_conn_no_ping.so", /* config-relative */
					"external_connector.noping.class_name",
					"kvn_test_conn_no_ping_ops", NULL};
	char err[2048] = "";
	cr_assert_eq(load("noping://h:1", t, err, sizeof(err)), -EINVAL);
	assert_has(err, "operation ping");
}

Test(ext_loader, a_built_in_scheme_cannot_be_taken_over)
{
	static const char *const t[] = {"external_connector.redis.module_path", MEMCACHED_PATH,
					"external_connector.redis.class_name", MEMCACHED_SYM, NULL};
	char err[2048] = "";
	cr_assert_eq(load("redis://127.0.0.1:6379", t, err, sizeof(err)), -EEXIST);
	assert_has(err, "built in");
	const struct kvn_connector_ops *o;
	cr_assert_eq(kvn_connector_find("redis://127.0.0.1:6379", &o, NULL, 0), 0);
	cr_assert_str_eq(o->scheme, "redis", "the built-in redis connector is untouched");
}

Test(ext_loader, a_configured_module_serves_its_scheme_and_loading_twice_is_harmless)
{
	/* A bare file name is found through $KVNODE_MODULE_PATH, as for external backends. */
	setenv("KVNODE_MODULE_PATH", "/nonexistent:" KVN_MODULE_DIR, 1);
	static const char *const t[] = {"external_connector.memcached.module_path", MEMCACHED_SO,
					"external_connector.memcached.class_name", MEMCACHED_SYM,
					NULL};
	char err[2048] = "";
	cr_assert_eq(load("memcached://127.0.0.1:1", t, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(load("memcached://127.0.0.1:1", t, err, sizeof(err)), 0, "%s", err);
	const struct kvn_connector_ops *o;
	cr_assert_eq(kvn_connector_find("memcached://127.0.0.1:1", &o, err, sizeof(err)), 0, "%s",
		     err);
	cr_assert_str_eq(o->scheme, "memcached");
	char list[512];
	kvn_connector_schemes(list, sizeof(list));
	assert_has(list, "memcached");
	cr_assert_eq(kvn_connector_unregister("memcached"), 0);
}

/* ------------------------------------------------------------------------------------------
 * memcached:// against a real memcached
 * ------------------------------------------------------------------------------------------ */

static struct memcached_server mcs;
static const struct kvn_connector_ops *mops;
static char last_log[2048];

static const char *
no_opt(const struct kvn_connector_env *env, const char *opt)
{
	(void)env, (void)opt;
	return NULL;
}

static void
keep_log(const struct kvn_connector_env *env, int level, const char *fmt, ...)
{
	(void)env, (void)level;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(last_log, sizeof(last_log), fmt, ap);
	va_end(ap);
	fprintf(stderr, "memcached connector: %s\n", last_log);
}

static struct kvn_connector_env menv = {KVN_CONNECTOR_ENV_INIT,
					.get_opt = no_opt,
					.log = keep_log,
					.timeout_ms = 10000};

static void
mc_up(void)
{
	if (!memcached_server_available())
		cr_skip_test("memcached is not installed (scripts/install-deps)");
	cr_assert_eq(access(MEMCACHED_PATH, R_OK), 0,
		     "%s is not built (libmemcached-dev missing at configure time?)",
		     MEMCACHED_PATH);
	cr_assert_eq(memcached_server_start(&mcs), 0, "memcached did not start");
	static const char *const t[] = {"external_connector.memcached.module_path", MEMCACHED_PATH,
					"external_connector.memcached.class_name", MEMCACHED_SYM,
					NULL};
	char err[2048];
	cr_assert_eq(load(mcs.url, t, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kvn_connector_find(mcs.url, &mops, err, sizeof(err)), 0, "%s", err);
	menv.url = menv.url_redacted = mcs.url;
}

static void
mc_down(void)
{
	memcached_server_destroy(&mcs);
	kvn_connector_unregister("memcached");
}

static struct kvn_connector *
mc_open(void)
{
	struct kvn_connector *c = NULL;
	int rc = mops->connect(&menv, &c);
	cr_assert_eq(rc, 0, "connect %s: %s", mcs.url, kvn_strerror(rc));
	return c;
}

static struct kvn_remote_value
value_of(size_t len, unsigned seed)
{
	struct kvn_buf *b = kvn_buf_new(len);
	for (size_t i = 0; i < len; i++)
		((uint8_t *)b->data)[i] = (uint8_t)(i * 31 + seed);
	struct kvn_remote_value v;
	cr_assert_eq(kvn_remote_value_from_buf(&v, b), 0);
	return v;
}

TestSuite(memcached, .init = mc_up, .fini = mc_down, .timeout = 300);

Test(memcached, an_item_is_header_payload_tag_and_the_tag_length)
{
	struct kvn_connector *c = mc_open();
	struct kvn_key k;
	kvn_key_from_str(&k, "vllm@llama@1@0@abc@half");
	struct kvn_remote_value v = value_of(5000, 1);
	cr_assert_eq(mops->put(c, &k, &v), 0);
	size_t len = 0;
	uint8_t *item = memcached_raw_get(&mcs, k.str, &len);
	cr_assert_not_null(item, "nothing stored under the key text");
	cr_assert_eq(len, KVN_REMOTE_META_LEN + 5000 + KVN_REMOTE_TAG_LEN + 1);
	uint8_t hdr[KVN_REMOTE_META_LEN];
	kvn_remote_meta_encode(&v.meta, hdr);
	cr_assert(!memcmp(item, hdr, sizeof(hdr)), "LMCache's header first");
	cr_assert(!memcmp(item + KVN_REMOTE_META_LEN, v.payload->data, 5000));
	cr_assert(!memcmp(item + KVN_REMOTE_META_LEN + 5000, v.tag, KVN_REMOTE_TAG_LEN));
	cr_assert_eq(item[len - 1], KVN_REMOTE_TAG_LEN);
	free(item);

	struct kvn_remote_value got;
	cr_assert_eq(mops->get(c, &k, &got), 0);
	cr_assert_eq(kvn_remote_value_check(&got, NULL, 0), 0);
	cr_assert_eq(got.tag_len, KVN_REMOTE_TAG_LEN);
	cr_assert(!memcmp(got.payload->data, v.payload->data, 5000));
	kvn_remote_value_release(&got);
	kvn_buf_unref(v.payload);
	mops->close(c);
}

Test(memcached, an_item_with_only_lmcache_s_header_reads_without_a_tag)
{
	struct kvn_connector *c = mc_open();
	uint8_t item[KVN_REMOTE_META_LEN + 4] = {0};
	struct kvn_remote_meta m = {.length = 4, .fmt = 4, .dtype = 6, .shape = {4, 1, 1, 1}};
	kvn_remote_meta_encode(&m, item);
	memcpy(item + KVN_REMOTE_META_LEN, "abcd", 4);
	cr_assert_eq(memcached_raw_set(&mcs, "plain-header", item, sizeof(item)), 0);
	struct kvn_key k;
	kvn_key_from_str(&k, "plain-header");
	struct kvn_remote_value got;
	cr_assert_eq(mops->get(c, &k, &got), 0);
	cr_assert_eq(got.tag_len, 0);
	cr_assert_eq(got.payload->len, 4);
	cr_assert(!memcmp(got.payload->data, "abcd", 4));
	cr_assert_eq(kvn_remote_value_check(&got, NULL, 0), 0);
	kvn_remote_value_release(&got);
	mops->close(c);
}

Test(memcached, a_changed_payload_fails_the_check_and_a_truncated_item_is_ebadmsg)
{
	struct kvn_connector *c = mc_open();
	struct kvn_key k;
	kvn_key_from_str(&k, "flip-me");
	struct kvn_remote_value v = value_of(3000, 2);
	cr_assert_eq(mops->put(c, &k, &v), 0);
	kvn_buf_unref(v.payload);
	size_t len;
	uint8_t *item = memcached_raw_get(&mcs, "flip-me", &len);
	cr_assert_not_null(item);
	item[KVN_REMOTE_META_LEN + 100] ^= 0x5a;
	cr_assert_eq(memcached_raw_set(&mcs, "flip-me", item, len), 0);
	struct kvn_remote_value got;
	cr_assert_eq(mops->get(c, &k, &got), 0);
	char why[128] = "";
	cr_assert_eq(kvn_remote_value_check(&got, why, sizeof(why)), -EBADMSG);
	kvn_remote_value_release(&got);

	cr_assert_eq(memcached_raw_set(&mcs, "flip-me", item, 200), 0);
	cr_assert_eq(mops->get(c, &k, &got), -EBADMSG);
	cr_assert_null(got.payload);
	cr_assert(strstr(last_log, "flip-me"), "the log names the key: %s", last_log);
	free(item);
	mops->close(c);
}

Test(memcached, keys_memcached_cannot_hold_are_stored_under_their_digest)
{
	struct kvn_connector *c = mc_open();
	char text[400];
	memset(text, 'k', sizeof(text) - 1);
	text[sizeof(text) - 1] = '\0';
	text[5] = ' '; /* a space and over 250 bytes: both out of memcached's key syntax */
	struct kvn_key k;
	cr_assert_eq(kvn_key_from_str(&k, text), 0);
	struct kvn_remote_value v = value_of(777, 3), got;
	cr_assert_eq(mops->put(c, &k, &v), 0);
	cr_assert_eq(mops->exists(c, &k), 1);
	cr_assert_eq(mops->get(c, &k, &got), 0);
	cr_assert(!memcmp(got.payload->data, v.payload->data, 777));
	kvn_remote_value_release(&got);
	cr_assert_eq(mops->remove(c, &k), 0);
	cr_assert_eq(mops->exists(c, &k), 0);
	cr_assert_eq(mops->remove(c, &k), -ENOENT);
	kvn_buf_unref(v.payload);
	mops->close(c);
}

Test(memcached, list_is_not_supported_and_says_so)
{
	struct kvn_connector *c = mc_open();
	cr_assert(mops->flags & KVN_CONNECTOR_F_NO_LIST);
	cr_assert_eq(mops->list(c, NULL, NULL), -EOPNOTSUPP);
	mops->close(c);
}

Test(memcached, a_32_mib_chunk_round_trips_and_a_multi_get_mixes_hits_and_misses)
{
	struct kvn_connector *c = mc_open();
	enum { N = 6 };
	struct kvn_key keys[N];
	const struct kvn_key *kp[N];
	struct kvn_remote_value vals[N], got[N];
	int rcs[N];
	for (int i = 0; i < N; i++) {
		char t[32];
		snprintf(t, sizeof(t), "mget-%d", i);
		kvn_key_from_str(&keys[i], t);
		kp[i] = &keys[i];
		vals[i] = value_of(i == 0 ? 32 * MIB : 1000 * (size_t)(i + 1), (unsigned)i);
		if (i % 2 == 0)
			cr_assert_eq(mops->put(c, &keys[i], &vals[i]), 0, "put %d", i);
	}
	cr_assert_eq(mops->get_batch(c, N, kp, got, rcs), 0);
	for (int i = 0; i < N; i++) {
		if (i % 2) {
			cr_assert_eq(rcs[i], -ENOENT, "get %d", i);
			continue;
		}
		cr_assert_eq(rcs[i], 0, "get %d", i);
		cr_assert_eq(got[i].payload->len, vals[i].payload->len);
		cr_assert(
		    !memcmp(got[i].payload->data, vals[i].payload->data, vals[i].payload->len));
		cr_assert_eq(kvn_remote_value_check(&got[i], NULL, 0), 0);
		kvn_remote_value_release(&got[i]);
	}
	for (int i = 0; i < N; i++)
		kvn_buf_unref(vals[i].payload);
	mops->close(c);
}

Test(memcached, a_dead_server_is_a_connection_error_and_a_restarted_one_is_reachable)
{
	struct kvn_connector *c = mc_open();
	cr_assert_eq(mops->ping(c), 0);
	memcached_server_stop(&mcs, SIGKILL);
	struct kvn_key k;
	kvn_key_from_str(&k, "gone");
	struct kvn_remote_value v = value_of(100, 4);
	int rc = mops->put(c, &k, &v);
	cr_assert(rc == -ECONNRESET || rc == -ECONNREFUSED || rc == -ENOTCONN || rc == -ETIMEDOUT,
		  "put to a dead memcached: %s", kvn_strerror(rc));
	mops->close(c);
	c = NULL;
	rc = mops->connect(&menv, &c);
	cr_assert(rc == -ECONNREFUSED || rc == -ENOTCONN || rc == -ECONNRESET,
		  "connect to a dead memcached: %s", kvn_strerror(rc));
	cr_assert(strstr(last_log, mcs.url), "the log names the store: %s", last_log);
	cr_assert_eq(memcached_server_restart(&mcs), 0);
	c = mc_open();
	cr_assert_eq(mops->put(c, &k, &v), 0);
	cr_assert_eq(mops->exists(c, &k), 1);
	kvn_buf_unref(v.payload);
	mops->close(c);
}

/* ------------------------------------------------------------------------------------------
 * Through the node, configured as a user would
 * ------------------------------------------------------------------------------------------ */

static struct kvn_config *node_cfg;

static struct kvn_engine *
open_node(const char *dir, bool local_cpu)
{
	char path[PATH_MAX], yaml[2048], err[2048];
	snprintf(path, sizeof(path), "%s/kvnode.yaml", dir);
	snprintf(yaml, sizeof(yaml),
		 "local_cpu: %s\n"
		 "max_local_cpu_size: 0.25\n"
		 "hugepages: false\n"
		 "remote_url: \"%s\"\n"
		 "extra_config:\n"
		 "  external_connector.memcached.module_path: %s\n"
		 "  external_connector.memcached.class_name: %s\n",
		 local_cpu ? "true" : "false", mcs.url, MEMCACHED_PATH, MEMCACHED_SYM);
	cr_assert_eq(proc_write_file(path, yaml, strlen(yaml)), 0);
	cr_assert_eq(kvn_config_load(path, &node_cfg, err, sizeof(err)), 0, "%s", err);
	struct kvn_engine *eng;
	cr_assert_eq(kvn_engine_open(node_cfg, &eng, err, sizeof(err)), 0, "%s", err);
	return eng;
}

static void
close_node(struct kvn_engine *eng)
{
	kvn_engine_close(eng);
	kvn_config_free(node_cfg);
	node_cfg = NULL;
}

Test(memcached, a_node_configured_with_the_module_writes_through_and_reads_back)
{
	char dir[256];
	cr_assert_eq(proc_mkdtemp("kvn-mcnode", dir, sizeof(dir)), 0);
	struct kvn_engine *eng = open_node(dir, true);
	struct kvn_key k;
	kvn_key_from_str(&k, "vllm@llama@1@0@cafe@bfloat16");
	size_t len = 3 * MIB + 1;
	uint8_t *v = malloc(len);
	for (size_t i = 0; i < len; i++)
		v[i] = (uint8_t)(i * 13 + 5);
	cr_assert_eq(kvn_engine_put(eng, &k, v, len), 0);
	kvn_engine_flush(eng);
	close_node(eng);

	size_t ilen = 0;
	uint8_t *item = memcached_raw_get(&mcs, k.str, &ilen);
	cr_assert_not_null(item, "the write-through did not reach memcached");
	cr_assert_eq(ilen, KVN_REMOTE_META_LEN + len + KVN_REMOTE_TAG_LEN + 1);
	cr_assert(!memcmp(item + KVN_REMOTE_META_LEN, v, len));
	free(item);

	/* A second node with no cpu tier serves it from memcached. */
	eng = open_node(dir, false);
	struct kvn_buf *b;
	cr_assert_eq(kvn_engine_get(eng, &k, &b), 0);
	cr_assert_eq(b->len, len);
	cr_assert(!memcmp(b->data, v, len));
	kvn_buf_unref(b);
	close_node(eng);
	free(v);
	proc_rm_tree(dir);
}
