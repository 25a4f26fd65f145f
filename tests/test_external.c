/* External backend loader (kvn_external_load): where it finds modules, and that every refusal
 * names the file and the symbol and leaves nothing loaded. Also zmem's own options. */
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "node/engine/config.h"
#include "node/engine/storage.h"
#include "tests/helpers/backend_env.h"

#define ZMEM_FILE "libkvn_zmem.so"
#define ZMEM_PATH KVN_MODULE_DIR "/" ZMEM_FILE
#define ZMEM_SYM  "kvn_zmem_backend_ops"

static char err[2048];

static bool
is_loaded(const char *path)
{
	void *h = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	if (h)
		dlclose(h);
	return h != NULL;
}

/* Makes one put/get through a loaded table, to show the ops are usable and not just present. */
static void
use_backend(const struct kvn_backend_ops *ops)
{
	struct kvn_backend_env *env = backend_env_new(
	    "zmem", (const struct backend_opt[]){{"capacity_bytes", "65536"}, {NULL, NULL}}, NULL);
	cr_assert_not_null(env);
	struct kvn_backend *be = NULL;
	cr_assert_eq(ops->create(env, &be), 0, "%s", backend_env_last_log(env, KVN_LOG_ERROR));
	struct kvn_key k;
	cr_assert_eq(kvn_key_from_str(&k, "loader-smoke"), 0);
	struct kvn_buf *in = kvn_buf_new(5);
	memcpy(in->data, "hello", 5);
	cr_assert_eq(ops->put(be, &k, in), 0);
	kvn_buf_unref(in);
	struct kvn_buf *out = NULL;
	cr_assert_eq(ops->get(be, &k, &out), 0);
	cr_assert_eq(out->len, 5);
	cr_assert_arr_eq(out->data, "hello", 5);
	kvn_buf_unref(out);
	ops->destroy(be);
	backend_env_free(env);
}

/* ------------------------------------------------------------------------------------------
 * Finding and loading a good module
 * ------------------------------------------------------------------------------------------ */

Test(external, loads_a_module_by_absolute_path)
{
	const struct kvn_backend_ops *ops = NULL;
	void *h = NULL;
	int rc = kvn_external_load(ZMEM_PATH, ZMEM_SYM, "/nonexistent", &ops, &h, err, sizeof(err));
	cr_assert_eq(rc, 0, "%s", err);
	cr_assert_not_null(h);
	cr_assert_eq(ops->abi, KVN_ABI);
	cr_assert_str_eq(ops->name, "zmem");
	use_backend(ops);
	cr_assert_eq(dlclose(h), 0);
	cr_assert_not(is_loaded(ZMEM_PATH), "the module stays mapped after its only dlclose");
}

Test(external, resolves_a_relative_module_path_against_the_config_dir)
{
	/* Run from elsewhere, so that only config_dir can make the path resolve. */
	cr_assert_eq(chdir("/"), 0);
	const struct kvn_backend_ops *ops = NULL;
	void *h = NULL;
	int rc = kvn_external_load("modules/" ZMEM_FILE, ZMEM_SYM, KVN_BINARY_DIR, &ops, &h, err,
				   sizeof(err));
	cr_assert_eq(rc, 0, "%s", err);
	cr_assert_eq(ops->abi, KVN_ABI);
	use_backend(ops);
	dlclose(h);
}

Test(external, finds_a_bare_name_in_KVNODE_MODULE_PATH)
{
	cr_assert_eq(setenv("KVNODE_MODULE_PATH", "/nonexistent/kvn-modules:" KVN_MODULE_DIR, 1),
		     0);
	const struct kvn_backend_ops *ops = NULL;
	void *h = NULL;
	int rc = kvn_external_load(ZMEM_FILE, ZMEM_SYM, "/nonexistent", &ops, &h, err, sizeof(err));
	cr_assert_eq(rc, 0, "%s", err);
	cr_assert_str_eq(ops->name, "zmem");
	use_backend(ops);
	dlclose(h);
}

/* ------------------------------------------------------------------------------------------
 * Refusals: each names the file and the symbol, and nothing stays loaded
 * ------------------------------------------------------------------------------------------ */

/* Loads path/symbol expecting rc, asserts err names file and symbol, and that no handle,
 * no ops and no mapping are left. */
static void
expect_refusal(const char *path, const char *symbol, const char *config_dir, int want,
	       const char *file_in_msg)
{
	const struct kvn_backend_ops *ops = (const void *)1;
	void *h = (void *)1;
	err[0] = '\0';
	int rc = kvn_external_load(path, symbol, config_dir, &ops, &h, err, sizeof(err));
	cr_assert_eq(rc, want, "loading %s/%s gave %d (%s), wanted %d", path, symbol, rc, err,
		     want);
	cr_assert_null(ops, "ops left set after a refusal");
	cr_assert_null(h, "handle left set after a refusal");
	cr_assert(strstr(err, file_in_msg), "message does not name the file %s: %s", file_in_msg,
		  err);
	cr_assert(strstr(err, symbol), "message does not name the symbol %s: %s", symbol, err);
	if (path[0] == '/')
		cr_assert_not(is_loaded(path), "%s stays loaded after a refusal", path);
}

Test(external, a_missing_file_is_enoent_and_says_where_it_looked)
{
	expect_refusal(KVN_MODULE_DIR "/libkvn_no_such.so", "kvn_x_ops", ".", -ENOENT,
		       KVN_MODULE_DIR "/libkvn_no_such.so");
}

Test(external, a_missing_relative_file_names_the_path_resolved_against_the_config_dir)
{
	expect_refusal("modules/libkvn_no_such.so", "kvn_x_ops", KVN_BINARY_DIR, -ENOENT,
		       KVN_BINARY_DIR "/modules/libkvn_no_such.so");
}

Test(external, a_bare_name_found_nowhere_lists_every_directory_searched)
{
	cr_assert_eq(setenv("KVNODE_MODULE_PATH", "/nonexistent/a:/nonexistent/b", 1), 0);
	expect_refusal("libkvn_no_such.so", "kvn_x_ops", ".", -ENOENT, "libkvn_no_such.so");
	cr_assert(strstr(err, "/nonexistent/a/libkvn_no_such.so"), "%s", err);
	cr_assert(strstr(err, "/nonexistent/b/libkvn_no_such.so"), "%s", err);
	cr_assert(strstr(err, "KVNODE_MODULE_PATH"), "%s", err);
}

Test(external, a_missing_symbol_is_refused)
{
	expect_refusal(ZMEM_PATH, "kvn_no_such_backend_ops", ".", -EINVAL, ZMEM_PATH);
	cr_assert(strstr(err, "class_name"), "no hint at the config key: %s", err);
}

Test(external, a_module_built_for_another_abi_is_refused)
{
	const char *path = KVN_MODULE_DIR "/libkvn_test_bad_abi.so";
	expect_refusal(path, "kvn_test_bad_abi_ops", ".", -EINVAL, path);
	char want[256];
	snprintf(want, sizeof(want), "was built against kvnode ABI 999; this kvnode has ABI %u.%u",
		 KVN_ABI_MAJOR, KVN_ABI_MINOR);
	cr_assert(strstr(err, want), "message lacks \"%s\": %s", want, err);
}

Test(external, a_module_without_a_required_operation_is_refused)
{
	const char *path = KVN_MODULE_DIR "/libkvn_test_null_op.so";
	expect_refusal(path, "kvn_test_null_op_ops", ".", -EINVAL, path);
	cr_assert(strstr(err, "operation get"), "message does not name the missing op: %s", err);
}

Test(external, a_module_with_unresolved_symbols_is_refused_with_the_dlopen_error)
{
	const char *path = KVN_MODULE_DIR "/libkvn_test_unresolved.so";
	expect_refusal(path, "kvn_test_unresolved_ops", ".", -EINVAL, path);
	/* RTLD_NOW: found at load time, not at the first call into the module. */
	cr_assert(strstr(err, "kvn_test_function_nobody_defines"), "dlerror() missing: %s", err);
}

Test(external, a_file_that_is_not_a_shared_object_is_refused)
{
	char dir[] = "/tmp/kvn-external-XXXXXX";
	cr_assert_not_null(mkdtemp(dir));
	char path[sizeof(dir) + 32];
	snprintf(path, sizeof(path), "%s/libkvn_text.so", dir);
	FILE *fp = fopen(path, "w");
	cr_assert_not_null(fp);
	fputs("this is not an ELF file\n", fp);
	fclose(fp);
	const struct kvn_backend_ops *ops = NULL;
	void *h = NULL;
	int rc = kvn_external_load(path, "kvn_text_ops", ".", &ops, &h, err, sizeof(err));
	unlink(path);
	rmdir(dir);
	cr_assert_eq(rc, -EINVAL, "%s", err);
	cr_assert(strstr(err, path) && strstr(err, "kvn_text_ops"), "%s", err);
	cr_assert(strstr(err, "cannot be loaded"), "%s", err);
}

Test(external, an_empty_module_path_or_symbol_is_refused)
{
	const struct kvn_backend_ops *ops = NULL;
	void *h = NULL;
	cr_assert_eq(kvn_external_load("", ZMEM_SYM, ".", &ops, &h, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "module_path"), "%s", err);
	cr_assert_eq(kvn_external_load(ZMEM_PATH, "", ".", &ops, &h, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, ZMEM_PATH) && strstr(err, "class_name"), "%s", err);
	cr_assert_null(h);
}

/* ------------------------------------------------------------------------------------------
 * zmem, the example external backend: what the conformance suite cannot see
 * ------------------------------------------------------------------------------------------ */

static const struct kvn_backend_ops *zops;
static void *zdl;

static void
zmem_init(void)
{
	int rc = kvn_external_load(ZMEM_PATH, ZMEM_SYM, ".", &zops, &zdl, err, sizeof(err));
	cr_assert_eq(rc, 0, "%s", err);
}

static void
zmem_fini(void)
{
	if (zdl)
		dlclose(zdl);
	zdl = NULL;
}

/* create with opts must fail with -EINVAL and an error line naming what. */
static void
expect_bad_option(const struct backend_opt *opts, const char *what)
{
	struct kvn_backend_env *env = backend_env_new("zmem", opts, NULL);
	cr_assert_not_null(env);
	struct kvn_backend *be = NULL;
	int rc = zops->create(env, &be);
	char msg[1024];
	snprintf(msg, sizeof(msg), "%s", backend_env_last_log(env, KVN_LOG_ERROR));
	if (!rc)
		zops->destroy(be);
	backend_env_free(env);
	cr_assert_eq(rc, -EINVAL, "create accepted a bad %s", what);
	cr_assert_null(be);
	cr_assert(strstr(msg, what), "error does not name %s: %s", what, msg);
}

Test(zmem, rejects_bad_options_naming_them, .init = zmem_init, .fini = zmem_fini)
{
	expect_bad_option((const struct backend_opt[]){{"level", "99"}, {NULL, NULL}}, "level");
	expect_bad_option((const struct backend_opt[]){{"level", "fast"}, {NULL, NULL}}, "level");
	expect_bad_option((const struct backend_opt[]){{"capacity_bytes", "12abc"}, {NULL, NULL}},
			  "capacity_bytes");
	expect_bad_option((const struct backend_opt[]){{"capacity_bytes", "0"}, {NULL, NULL}},
			  "capacity_bytes");
	expect_bad_option((const struct backend_opt[]){{"capacity_bytes", "-5"}, {NULL, NULL}},
			  "capacity_bytes");
	expect_bad_option((const struct backend_opt[]){{"max_size_gb", "lots"}, {NULL, NULL}},
			  "max_size_gb");
	expect_bad_option((const struct backend_opt[]){{"max_size_gb", "1"},
						       {"capacity_bytes", "1000"},
						       {NULL, NULL}},
			  "max_size_gb");
}

Test(zmem, max_size_gb_sets_the_capacity, .init = zmem_init, .fini = zmem_fini)
{
	struct kvn_backend_env *env = backend_env_new(
	    "zmem", (const struct backend_opt[]){{"max_size_gb", "0.5"}, {NULL, NULL}}, NULL);
	struct kvn_backend *be = NULL;
	cr_assert_eq(zops->create(env, &be), 0, "%s", backend_env_last_log(env, KVN_LOG_ERROR));
	struct kvn_backend_stats s;
	zops->stats(be, &s);
	cr_expect_eq(s.capacity, 512ull << 20);
	zops->destroy(be);
	backend_env_free(env);
}

Test(zmem, holds_more_payload_than_its_capacity_when_chunks_compress, .init = zmem_init,
     .fini = zmem_fini)
{
	struct kvn_backend_env *env = backend_env_new(
	    "zmem", (const struct backend_opt[]){{"capacity_bytes", "1048576"}, {NULL, NULL}},
	    NULL);
	struct kvn_backend *be = NULL;
	cr_assert_eq(zops->create(env, &be), 0, "%s", backend_env_last_log(env, KVN_LOG_ERROR));
	/* KV cache of padded or repeated tokens compresses well; 8 MiB of it in a 1 MiB tier. */
	enum { N = 8, LEN = 1 << 20 };
	for (int i = 0; i < N; i++) {
		struct kvn_key k;
		char s[32];
		snprintf(s, sizeof(s), "compressible-%d", i);
		cr_assert_eq(kvn_key_from_str(&k, s), 0);
		struct kvn_buf *b = kvn_buf_new(LEN);
		for (size_t j = 0; j < LEN; j++)
			((unsigned char *)b->data)[j] = (unsigned char)((j / 4096) ^ (unsigned)i);
		cr_assert_eq(zops->put(be, &k, b), 0, "put %s", s);
		kvn_buf_unref(b);
	}
	struct kvn_backend_stats s;
	zops->stats(be, &s);
	cr_assert_eq(s.count, N, "held %llu of %d", (unsigned long long)s.count, N);
	cr_assert_eq(s.bytes, (uint64_t)N * LEN);
	cr_assert_eq(s.evictions, 0);
	for (int i = 0; i < N; i++) {
		struct kvn_key k;
		char s2[32];
		snprintf(s2, sizeof(s2), "compressible-%d", i);
		kvn_key_from_str(&k, s2);
		struct kvn_buf *b = NULL;
		cr_assert_eq(zops->get(be, &k, &b), 0);
		cr_assert_eq(b->len, LEN);
		for (size_t j = 0; j < LEN; j += 4093)
			cr_assert_eq(((unsigned char *)b->data)[j],
				     (unsigned char)((j / 4096) ^ (unsigned)i));
		kvn_buf_unref(b);
	}
	zops->destroy(be);
	cr_expect(strstr(backend_env_last_log(env, KVN_LOG_INFO), "ratio"),
		  "destroy does not log the compression ratio: %s",
		  backend_env_last_log(env, KVN_LOG_INFO));
	backend_env_free(env);
}

/* The README's config, end to end: a relative module_path taken from the config file's
 * directory, options passed through extra_config, the tier reachable through the manager. */
Test(zmem, loads_from_a_config_like_the_readme_shows)
{
	static const char yaml[] = "local_cpu: false\n"
				   "external_backends: [zcache]\n"
				   "extra_config:\n"
				   "  external_backend.zcache.module_path: modules/" ZMEM_FILE "\n"
				   "  external_backend.zcache.class_name: " ZMEM_SYM "\n"
				   "  external_backend.zcache.capacity_bytes: 4194304\n"
				   "  external_backend.zcache.level: 3\n";
	struct kvn_config *cfg = NULL;
	int rc = kvn_config_parse(yaml, strlen(yaml), KVN_BINARY_DIR "/kvnode.yaml", &cfg, err,
				  sizeof(err));
	cr_assert_eq(rc, 0, "config: %s", err);
	struct kvn_storage *st = NULL;
	rc = kvn_storage_open(cfg, NULL, &st, err, sizeof(err));
	cr_assert_eq(rc, 0, "storage: %s", err);

	struct kvn_key k;
	cr_assert_eq(kvn_key_from_str(&k, "vllm@readme@1@0@beef@bfloat16"), 0);
	struct kvn_buf *in = kvn_buf_new(300000);
	for (size_t i = 0; i < in->len; i++)
		((unsigned char *)in->data)[i] = (unsigned char)(i % 251);
	cr_assert_eq(kvn_storage_put(st, &k, in), 0);
	kvn_storage_flush(st);
	struct kvn_buf *out = NULL;
	cr_assert_eq(kvn_storage_get(st, &k, &out), 0);
	cr_assert_eq(out->len, in->len);
	cr_assert_arr_eq(out->data, in->data, in->len);
	kvn_buf_unref(out);
	kvn_buf_unref(in);

	const char *name = NULL;
	struct kvn_backend_stats s;
	bool found = false;
	for (size_t i = 0; kvn_storage_tier(st, i, &name, &s) == 0; i++)
		if (!strcmp(name, "zcache")) {
			found = true;
			cr_expect_eq(s.count, 1);
			cr_expect_eq(s.bytes, 300000);
			cr_expect_eq(s.capacity, 4194304,
				     "capacity_bytes did not reach the module");
		}
	cr_assert(found, "no tier named zcache");
	kvn_storage_close(st);
	kvn_config_free(cfg);
}
