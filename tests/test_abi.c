/* The module ABI's version rules (kvnode/version.h): a module built against an older minor
 * version loads and its missing trailing members read as absent; another major version, a
 * newer minor one or a table without its size is refused naming file, symbol and both
 * versions; callers' option structs of older headers keep their defaults; and the library
 * says its own version at run time. */
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backends.h"
#include "kvnode/kvnode.h"
#include "kvnode/transport.h"
#include "node/engine/config.h"
#include "rdma/rdma.h"

#define ABI20_PATH KVN_MODULE_DIR "/libkvn_test_zmem_abi20.so"
#define ABI20_SYM  "kvn_test_zmem_abi20_ops"

static char err[4096];

Test(abi, the_library_says_its_version_and_abi_at_run_time)
{
	cr_assert_str_eq(kvn_version(), KVN_VERSION_STRING);
	cr_assert_eq(kvn_abi_version(), KVN_ABI);
	cr_assert_eq(KVN_ABI_MAJOR_OF(kvn_abi_version()), KVN_ABI_MAJOR);
	cr_assert_eq(KVN_ABI_MINOR_OF(kvn_abi_version()), KVN_ABI_MINOR);
}

Test(abi, a_module_built_against_2_0_with_the_shorter_table_loads_on_2_1)
{
	const struct kvn_backend_ops *ops = NULL;
	void *h = NULL;
	int rc = kvn_external_load(ABI20_PATH, ABI20_SYM, ".", &ops, &h, err, sizeof(err));
	cr_assert_eq(rc, 0, "%s", err);
	cr_assert_eq(ops->abi, KVN_ABI_MAKE(2, 0));
	cr_assert_lt(ops->size, sizeof(struct kvn_backend_ops), "the test module is not shorter");
	cr_assert_eq(ops->size, KVN_BACKEND_OPS_SIZE_2_0);
	cr_assert(KVN_ABI_HAS(ops, stats), "a 2.0 member reads as absent");
	cr_assert_not(KVN_ABI_HAS(ops, sync), "2.1's sync reads as present in a 2.0 table");
	cr_assert_eq(dlclose(h), 0);
}

/* The whole path a user's config takes: external_backends + extra_config, puts through the
 * writer threads, and kvn_engine_flush, which calls sync only where the table has it (the 2.0
 * module aborts the process if its member past the table is called). */
Test(abi, an_engine_runs_a_2_0_module_and_flush_leaves_its_absent_sync_alone)
{
	char yaml[1024];
	snprintf(yaml, sizeof(yaml),
		 "local_cpu: false\n"
		 "external_backends: [old]\n"
		 "extra_config:\n"
		 "  external_backend.old.module_path: %s\n"
		 "  external_backend.old.class_name: %s\n"
		 "  external_backend.old.capacity_bytes: 1048576\n",
		 ABI20_PATH, ABI20_SYM);
	struct kvn_config *cfg = NULL;
	cr_assert_eq(kvn_config_parse(yaml, strlen(yaml), "abi.yaml", &cfg, err, sizeof(err)), 0,
		     "%s", err);
	struct kvn_engine *eng = NULL;
	cr_assert_eq(kvn_engine_open(cfg, &eng, err, sizeof(err)), 0, "%s", err);
	struct kvn_key k;
	cr_assert_eq(kvn_key_from_str(&k, "abi-2.0-module"), 0);
	cr_assert_eq(kvn_engine_put(eng, &k, "twenty", 6), 0);
	cr_assert_eq(kvn_engine_flush(eng), 0);
	char got[16];
	size_t len = 0;
	cr_assert_eq(kvn_engine_get_into(eng, &k, got, sizeof(got), &len), 0);
	cr_assert_eq(len, 6);
	cr_assert_arr_eq(got, "twenty", 6);
	kvn_engine_close(eng);
	kvn_config_free(cfg);
}

/* Loads a refused module: -EINVAL, nothing left loaded, and err names file and symbol. */
static void
expect_refused(const char *file, const char *symbol)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", KVN_MODULE_DIR, file);
	const struct kvn_backend_ops *ops = NULL;
	void *h = NULL;
	cr_assert_eq(kvn_external_load(path, symbol, ".", &ops, &h, err, sizeof(err)), -EINVAL,
		     "%s", err);
	cr_assert_null(ops);
	cr_assert_null(h);
	cr_assert(strstr(err, path), "the file is not named: %s", err);
	cr_assert(strstr(err, symbol), "the symbol is not named: %s", err);
	void *still = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
	if (still)
		dlclose(still);
	cr_assert_null(still, "a refused module stays loaded");
}

Test(abi, another_major_version_is_refused_naming_file_symbol_and_both_versions)
{
	expect_refused("libkvn_test_abi_major3.so", "kvn_test_abi_major3_ops");
	char ours[32];
	snprintf(ours, sizeof(ours), "this kvnode has ABI %u.%u", KVN_ABI_MAJOR, KVN_ABI_MINOR);
	cr_assert(strstr(err, "built against kvnode ABI 3.0"), "%s", err);
	cr_assert(strstr(err, ours), "%s", err);
	cr_assert(strstr(err, "rebuild the module"), "%s", err);
}

Test(abi, a_newer_minor_version_is_refused)
{
	expect_refused("libkvn_test_abi_newer.so", "kvn_test_abi_newer_ops");
	char theirs[48];
	snprintf(theirs, sizeof(theirs), "ABI %u.%u, newer than this kvnode's ABI %u.%u",
		 KVN_ABI_MAJOR, KVN_ABI_MINOR + 1, KVN_ABI_MAJOR, KVN_ABI_MINOR);
	cr_assert(strstr(err, theirs), "%s", err);
}

Test(abi, a_table_without_its_size_is_refused_saying_how_to_set_it)
{
	expect_refused("libkvn_test_abi_nosize.so", "kvn_test_abi_nosize_ops");
	cr_assert(strstr(err, "size 0"), "%s", err);
	cr_assert(strstr(err, "sizeof(struct kvn_backend_ops)"), "%s", err);
}

/* A caller built against headers from before the listener bounds (max_conns and
 * hello_timeout_ms, the last two members) passes the shorter struct: open reads only its
 * size and the members it lacks take their defaults. */
Test(abi, a_transport_cfg_of_older_headers_opens_with_defaults_for_what_it_lacks)
{
	const struct kvn_transport_ops *ops = kvn_transport_by_name("tcp", NULL, err, sizeof(err));
	cr_assert_not_null(ops, "%s", err);
	struct {
		struct kvn_transport_cfg cfg;
		unsigned char garbage[64];
	} old;
	memset(&old, 0xff, sizeof(old)); /* what lies past the caller's struct */
	size_t short_size = offsetof(struct kvn_transport_cfg, max_conns);
	memset(&old.cfg, 0, short_size);
	old.cfg.abi = KVN_ABI_MAKE(KVN_ABI_MAJOR, 0);
	old.cfg.size = (uint32_t)short_size;
	old.cfg.timeout_ms = 2000;
	struct kvn_transport_cfg got;
	cr_assert_eq(kvn_transport_cfg_read(&old.cfg, &got, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(got.timeout_ms, 2000);
	cr_assert_eq(got.max_conns, 0, "read past the caller's struct: %u", got.max_conns);
	cr_assert_eq(got.hello_timeout_ms, 0, "read past the caller's struct");
	cr_assert_eq(got.size, sizeof(got));

	struct kvn_transport *tp = NULL;
	cr_assert_eq(ops->open(&old.cfg, &tp, err, sizeof(err)), 0, "%s", err);
	char bound[64];
	cr_assert_eq(ops->listen(tp, "127.0.0.1:0", bound, sizeof(bound), err, sizeof(err)), 0,
		     "%s", err);
	struct kvn_tp_ep *ep = NULL;
	cr_assert_eq(ops->connect(tp, bound, 0, &ep, err, sizeof(err)), 0, "%s", err);
	ops->ep_close(ep);
	ops->close(tp);
}

Test(abi, a_transport_cfg_without_abi_and_size_is_refused)
{
	const struct kvn_transport_ops *ops = kvn_transport_by_name("tcp", NULL, err, sizeof(err));
	cr_assert_not_null(ops, "%s", err);
	struct kvn_transport_cfg cfg;
	memset(&cfg, 0, sizeof(cfg));
	cfg.timeout_ms = 1000;
	struct kvn_transport *tp = NULL;
	cr_assert_eq(ops->open(&cfg, &tp, err, sizeof(err)), -EINVAL);
	cr_assert_null(tp);
	cr_assert(strstr(err, "struct kvn_transport_cfg") && strstr(err, "KVN_TRANSPORT_CFG_INIT"),
		  "%s", err);
}
