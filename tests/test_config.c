/* Config from YAML: defaults, every key, LMCache files, errors with file:line and the key,
 * unknown-key warnings, paths and extra_config. */
#include <glob.h>

#include "config_fixture.h"

TestSuite(config, .init = setup, .fini = teardown);

Test(config, no_config_at_all_gives_a_single_node_on_defaults)
{
	struct kvn_config *cfg = NULL;
	cr_assert_eq(kvn_config_load(NULL, &cfg, err, sizeof(err)), 0, "%s", err);
	expect_defaults(cfg);
	cr_assert_null(cfg->path);
	cr_assert_str_eq(kvn_config_origin(cfg, "chunk_size"), "default");
	kvn_config_free(cfg);

	cfg = kvn_config_new_defaults();
	expect_defaults(cfg);
	kvn_config_free(cfg);
}

Test(config, an_empty_or_comment_only_file_gives_the_defaults)
{
	static const char *const texts[] = {"", "# only a comment\n\n", "---\n", "~\n"};
	for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		struct kvn_config *cfg = load_ok(texts[i]);
		expect_defaults(cfg);
		cr_assert_str_eq(cfg->path, cfgpath);
		cr_assert_str_eq(cfg->dir, tmpdir);
		kvn_config_free(cfg);
	}
}

Test(config, every_key_is_read_from_the_file)
{
	struct kvn_config *cfg = load_ok("chunk_size: 512\n"
					 "local_cpu: false\n"
					 "max_local_cpu_size: 2.5\n"
					 "local_disk: /var/cache/kvnode\n"
					 "max_local_disk_size: 100\n"
					 "remote_url: redis://cache:6379\n"
					 "remote_serde: cachegen\n"
					 "external_backends: [zmem, nvme_pool]\n"
					 "extra_config:\n"
					 "  external_backend.zmem.module_path: libkvn_zmem.so\n"
					 "  external_backend.zmem.class_name: kvn_zmem_ops\n"
					 "  external_backend:\n"
					 "    nvme_pool:\n"
					 "      module_path: /opt/kvn/libnvme.so\n"
					 "      class_name: nvme_ops\n"
					 "plugin_locations: [/opt/plugins, /etc/kvnode/plugins]\n"
					 "node_name: gpu-node-7\n"
					 "listen: 10.0.0.7:7300\n"
					 "scheduler_url: kvnode://10.0.0.1:7200\n"
					 "transport: verbs\n"
					 "rdma_device: mlx5_0\n"
					 "gid_index: 3\n"
					 "gpu: auto\n"
					 "heartbeat_ms: 250\n"
					 "auth_token: s3cret\n"
					 "metrics_listen: 0.0.0.0:9300\n"
					 "log_level: debug\n"
					 "socket_path: /run/kvnode/kvnode.sock\n"
					 "hugepages: no\n"
					 "promote_to_cpu: off\n"
					 "put_queue_depth: 128\n"
					 "put_threads: 8\n");
	cr_assert_eq(cfg->chunk_size, 512);
	cr_assert_not(cfg->local_cpu);
	cr_assert_eq(cfg->max_local_cpu_size, 5ull << 29);
	cr_assert_str_eq(cfg->local_disk, "/var/cache/kvnode");
	cr_assert_eq(cfg->max_local_disk_size, 100ull << 30);
	cr_assert_str_eq(cfg->remote_url, "redis://cache:6379");
	cr_assert_str_eq(cfg->remote_serde, "cachegen");
	cr_assert_eq(cfg->n_external_backends, 2);
	cr_assert_str_eq(cfg->external_backends[0], "zmem");
	cr_assert_str_eq(cfg->external_backends[1], "nvme_pool");
	cr_assert_eq(cfg->n_extra, 4);
	cr_assert_str_eq(kvn_config_extra(cfg, "external_backend.zmem.class_name"), "kvn_zmem_ops");
	cr_assert_str_eq(kvn_config_extra(cfg, "external_backend.nvme_pool.module_path"),
			 "/opt/kvn/libnvme.so");
	cr_assert_null(kvn_config_extra(cfg, "external_backend.nvme_pool"));
	cr_assert_eq(cfg->n_plugin_locations, 2);
	cr_assert_str_eq(cfg->plugin_locations[1], "/etc/kvnode/plugins");
	cr_assert_str_eq(cfg->node_name, "gpu-node-7");
	cr_assert_str_eq(cfg->listen, "10.0.0.7:7300");
	cr_assert_str_eq(cfg->scheduler_url, "kvnode://10.0.0.1:7200");
	cr_assert_str_eq(cfg->transport, "verbs");
	cr_assert_str_eq(cfg->rdma_device, "mlx5_0");
	cr_assert_eq(cfg->gid_index, 3);
	cr_assert_str_eq(cfg->gpu, "auto");
	cr_assert_eq(cfg->heartbeat_ms, 250);
	cr_assert_str_eq(cfg->auth_token, "s3cret");
	cr_assert_str_eq(cfg->metrics_listen, "0.0.0.0:9300");
	cr_assert_eq(cfg->log_level, KVN_LOG_DEBUG);
	cr_assert_str_eq(cfg->socket_path, "/run/kvnode/kvnode.sock");
	cr_assert_not(cfg->hugepages);
	cr_assert_not(cfg->promote_to_cpu);
	cr_assert_eq(cfg->put_queue_depth, 128);
	cr_assert_eq(cfg->put_threads, 8);

	char where[PATH_MAX + 96];
	snprintf(where, sizeof(where), "%s:17", cfgpath);
	cr_assert_str_eq(kvn_config_origin(cfg, "node_name"), where);
	snprintf(where, sizeof(where), "%s:14", cfgpath);
	cr_assert_str_eq(extra_origin(cfg, "external_backend.nvme_pool.module_path"), where);
	kvn_config_free(cfg);
}

Test(config, lmcache_example_config_loads_and_its_other_keys_are_ignored)
{
	/* LMCache's documented example, as a vLLM deployment would have it. */
	struct capture cap;
	capture_begin(&cap);
	struct kvn_config *cfg = NULL;
	int rc = load("chunk_size: 256\n"
		      "local_cpu: True\n"
		      "max_local_cpu_size: 5.0\n"
		      "local_disk: \"file:///local/disk_test/local_disk/\"\n"
		      "max_local_disk_size: 5\n"
		      "remote_url: \"lm://localhost:65432\"\n"
		      "remote_serde: \"naive\"\n"
		      "use_layerwise: False\n"
		      "save_decode_cache: False\n"
		      "enable_p2p: False\n"
		      "cache_policy: LRU\n"
		      "blocking_timeout_secs: 10\n",
		      &cfg);
	char *log = capture_end(&cap);
	cr_assert_eq(rc, 0, "%s", err);
	cr_assert_eq(cfg->chunk_size, 256);
	cr_assert(cfg->local_cpu);
	cr_assert_eq(cfg->max_local_cpu_size, 5ull << 30);
	cr_assert_str_eq(cfg->local_disk, "/local/disk_test/local_disk/");
	cr_assert_eq(cfg->max_local_disk_size, 5ull << 30);
	cr_assert_str_eq(cfg->remote_url, "lm://localhost:65432");
	assert_contains(log, "kvnode.yaml:8: \"use_layerwise\": LMCache key, not used by kvnode");
	assert_contains(log, "\"blocking_timeout_secs\": LMCache key, not used by kvnode");
	assert_lacks(log, "unknown key");
	kvn_config_free(cfg);
}

Test(config, booleans_take_every_yaml_spelling)
{
	static const struct {
		const char *text;
		bool want;
	} cases[] = {{"true", true},   {"True", true},	 {"TRUE", true}, {"yes", true},
		     {"Yes", true},    {"on", true},	 {"ON", true},	 {"false", false},
		     {"False", false}, {"no", false},	 {"NO", false},	 {"off", false},
		     {"Off", false},   {"\"yes\"", true}};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char text[128];
		snprintf(text, sizeof(text), "hugepages: %s\nlocal_cpu: %s\n", cases[i].text,
			 cases[i].text);
		struct kvn_config *cfg = load_ok(text);
		cr_assert_eq(cfg->hugepages, cases[i].want, "%s", cases[i].text);
		cr_assert_eq(cfg->local_cpu, cases[i].want, "%s", cases[i].text);
		kvn_config_free(cfg);
	}
	expect_bad("local_cpu: maybe\n", 1, "local_cpu", "true or false");
	expect_bad("hugepages:\n", 1, "hugepages", "got null");
}

Test(config, sizes_take_integers_and_fractions_of_a_gb)
{
	struct kvn_config *cfg = load_ok("max_local_cpu_size: 0.5\nmax_local_disk_size: 3\n");
	cr_assert_eq(cfg->max_local_cpu_size, 1ull << 29);
	cr_assert_eq(cfg->max_local_disk_size, 3ull << 30);
	kvn_config_free(cfg);
	cfg = load_ok("max_local_cpu_size: 0\nmax_local_disk_size: 1.5e1\n");
	cr_assert_eq(cfg->max_local_cpu_size, 0);
	cr_assert_eq(cfg->max_local_disk_size, 15ull << 30);
	kvn_config_free(cfg);
}

Test(config, negative_or_garbage_sizes_are_refused_with_file_line_and_key)
{
	static const char *const bad[] = {"-3",	   "-0.5", ".nan", "nan",  ".inf", "inf",
					  "1e400", "5GB",  "abc",  "0x10", "\"\""};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char text[128];
		snprintf(text, sizeof(text), "chunk_size: 256\nmax_local_cpu_size: %s\n", bad[i]);
		expect_bad(text, 2, "max_local_cpu_size", "must be a number of GB >= 0, got");
	}
	expect_bad("max_local_cpu_size: -3\n", 1, "max_local_cpu_size",
		   "must be a number of GB >= 0, got \"-3\"");
	expect_bad("\n\nmax_local_disk_size: [1, 2]\n", 3, "max_local_disk_size", "got a list");
}

Test(config, a_value_of_the_wrong_shape_is_refused)
{
	expect_bad("chunk_size: [1, 2]\n", 1, "chunk_size", "got a list");
	expect_bad("node_name:\n  a: b\n", 1, "node_name", "got a mapping");
	expect_bad("external_backends:\n  zmem: x\n", 1, "external_backends",
		   "must be a list of strings (or one string), got a mapping");
	expect_bad("heartbeat_ms: soon\n", 1, "heartbeat_ms",
		   "must be an integer > 0, got \"soon\"");
	expect_bad("chunk_size: 25.6\n", 1, "chunk_size", "integer");
	expect_bad("extra_config: [a, b]\n", 1, "extra_config", "got a list");
	expect_bad("extra_config: text\n", 1, "extra_config", "mapping");
	expect_bad("plugin_locations:\n  - /a\n  - [x]\n", 3, "plugin_locations", "entry 2");
	expect_bad("node_name: \"\"\n", 1, "node_name", "non-empty");
	expect_bad("extra_config:\n  a:\n    - {x: 1}\n", 3, "extra_config.a", "scalars");
	expect_bad("- a\n- b\n", 1, NULL, "mapping of keys");
	expect_bad("node_name: \"a\\0b\"\n", 1, "node_name", "NUL byte");
}

Test(config, integers_out_of_range_are_refused)
{
	expect_bad("chunk_size: 0\n", 1, "chunk_size", "must be an integer > 0, got \"0\"");
	expect_bad("chunk_size: 4294967296\n", 1, "chunk_size",
		   "must be at most 4294967295, got \"4294967296\"");
	expect_bad("chunk_size: 99999999999999999999999\n", 1, "chunk_size", "at most");
	expect_bad("gid_index: -99999999999999999999999\n", 1, "gid_index", ">= -1");
	expect_bad("put_threads: 65\n", 1, "put_threads", "from 1 to 64, got \"65\"");
	expect_bad("put_threads: 0\n", 1, "put_threads", "from 1 to 64");
	expect_bad("gid_index: -2\n", 1, "gid_index", "must be an integer >= -1, got \"-2\"");
	expect_bad("put_queue_depth: -1\n", 1, "put_queue_depth", "got \"-1\"");
	expect_bad("heartbeat_ms: 0\n", 1, "heartbeat_ms", "> 0");

	struct kvn_config *cfg = load_ok("gid_index: -1\nput_threads: 64\nput_threads_x: 1\n");
	cr_assert_eq(cfg->gid_index, -1);
	cr_assert_eq(cfg->put_threads, 64);
	kvn_config_free(cfg);
}

Test(config, yaml_syntax_errors_carry_libyamls_line)
{
	expect_bad("chunk_size: 256\nlocal_cpu: true\nlisten: a: b\n", 3, NULL,
		   "YAML syntax error");
	expect_bad("chunk_size: 256\nplugin_locations: [/a, /b\n", 3, NULL, "YAML syntax error");
	expect_bad("chunk_size: 1\n---\nchunk_size: 2\n", 2, NULL, "second YAML document");
	expect_bad("extra_config:\n\tdisk.o_direct: true\n", 2, NULL, "tab");
}

Test(config, a_repeated_key_is_an_error_naming_both_lines)
{
	expect_bad("chunk_size: 256\nlocal_cpu: true\nchunk_size: 512\n", 3, "chunk_size",
		   "duplicate key (first set at line 1)");
	expect_bad("extra_config:\n  disk:\n    o_direct: true\n  disk.o_direct: false\n", 4,
		   "extra_config.disk.o_direct", "duplicate key");
	expect_bad("extra_config:\n  a: {x: 1}\n  a: {y: 2}\n", 3, "extra_config.a", "duplicate");
}

Test(config, external_backends_need_module_path_and_class_name)
{
	expect_bad("external_backends: [zmem]\n", 1, "external_backends",
		   "backend \"zmem\" needs extra_config key \"external_backend.zmem.module_path\"");
	expect_bad("external_backends: zmem\n"
		   "extra_config:\n"
		   "  external_backend.zmem.module_path: libkvn_zmem.so\n",
		   1, "external_backends",
		   "needs extra_config key \"external_backend.zmem.class_name\"");
	struct kvn_config *cfg =
	    load_ok("external_backends: \"a, b\"\n"
		    "extra_config:\n"
		    "  external_backend.a: {module_path: x.so, class_name: a}\n"
		    "  external_backend.b: {module_path: y.so, class_name: b}\n");
	cr_assert_eq(cfg->n_external_backends, 2);
	cr_assert_str_eq(cfg->external_backends[1], "b");
	kvn_config_free(cfg);
}

Test(config, an_external_backend_may_not_take_a_built_in_tier_name)
{
	static const char *const names[] = {"cpu", "disk", "peer", "remote"};
	for (size_t i = 0; i < 4; i++) {
		char text[256];
		snprintf(text, sizeof(text),
			 "external_backends: [%s]\nextra_config:\n"
			 "  external_backend.%s: {module_path: x.so, class_name: y}\n",
			 names[i], names[i]);
		expect_bad(text, 1, "external_backends", "unknown backend name");
		assert_contains(err, "built-in tier");
	}
	expect_bad("external_backends: [a.b]\n", 1, "external_backends", "letters, digits");
	expect_bad("external_backends: [a, a]\n", 1, "external_backends", "listed twice");
}

Test(config, transport_and_log_level_are_checked_against_their_values)
{
	expect_bad("transport: rdma\n", 1, "transport", "one of auto, verbs, tcp, got \"rdma\"");
	expect_bad("log_level: loud\n", 1, "log_level", "one of error, warn, info, debug");
	expect_bad("gpu: -1\n", 1, "gpu", "GPU index");
	struct kvn_config *cfg = load_ok("transport: TCP\nlog_level: warning\ngpu: cuda:1\n");
	cr_assert_str_eq(cfg->transport, "tcp");
	cr_assert_eq(cfg->log_level, KVN_LOG_WARN);
	cr_assert_str_eq(cfg->gpu, "1");
	kvn_config_free(cfg);
}

Test(config, a_missing_file_is_enoent_naming_the_path)
{
	struct kvn_config *cfg = (struct kvn_config *)1;
	char path[PATH_MAX + 16];
	snprintf(path, sizeof(path), "%s/nope.yaml", tmpdir);
	cr_assert_eq(kvn_config_load(path, &cfg, err, sizeof(err)), -ENOENT);
	cr_assert_null(cfg);
	assert_contains(err, path);

	setenv("KVNODE_CONFIG_FILE", path, 1);
	cr_assert_eq(kvn_config_load(NULL, &cfg, err, sizeof(err)), -ENOENT);
	assert_contains(err, path);
	assert_contains(err, "KVNODE_CONFIG_FILE");

	cr_assert_lt(kvn_config_load(tmpdir, &cfg, err, sizeof(err)), 0);
	assert_contains(err, "directory");
}

Test(config, an_unknown_key_warns_with_the_closest_known_key)
{
	struct capture cap;
	capture_begin(&cap);
	struct kvn_config *cfg = NULL;
	int rc = load("chunk_size: 256\n\nmax_local_cpu_sise: 2\nlisten_addr: x\n", &cfg);
	char *log = capture_end(&cap);
	cr_assert_eq(rc, 0, "an unknown key is not an error: %s", err);
	assert_contains(log, "kvnode.yaml:3: unknown key \"max_local_cpu_sise\" (did you mean "
			     "\"max_local_cpu_size\"?)");
	assert_contains(log,
			"kvnode.yaml:4: unknown key \"listen_addr\" (did you mean \"listen\"?)");
	assert_contains(log, "warn");
	cr_assert_eq(cfg->max_local_cpu_size, 5ull << 30);
	kvn_config_free(cfg);
}

Test(config, an_lmcache_key_with_a_kvnode_name_warns_with_that_name)
{
	struct capture cap;
	capture_begin(&cap);
	struct kvn_config *cfg = NULL;
	int rc = load("local_cpu_use_hugepages: true\n", &cfg);
	char *log = capture_end(&cap);
	cr_assert_eq(rc, 0, "%s", err);
	assert_contains(log, "\"local_cpu_use_hugepages\" ignored");
	assert_contains(log, "use \"hugepages\"");
	kvn_config_free(cfg);
}

static void
expect_value(const struct kvn_config *cfg, const char *key, const char *want)
{
	char buf[PATH_MAX + 64];
	cr_assert_eq(kvn_config_value(cfg, key, buf, sizeof(buf)), 0, "%s has no value", key);
	cr_assert_str_eq(buf, want, "%s", key);
}

/* LMCache's newer names (lmcache/v1/config.py _CONFIG_ALIASES: external_backends and
 * plugin_locations are the deprecated ones there) set the same keys. */
Test(config, lmcaches_newer_names_are_the_same_keys)
{
	struct kvn_config *cfg = load_ok("storage_plugins: [zmem]\n"
					 "runtime_plugin_locations: [\"/opt/plugins\"]\n"
					 "extra_config:\n"
					 "  storage_plugin.zmem.module_path: /opt/zmem.so\n"
					 "  storage_plugin.zmem.class_name: kvn_zmem_ops\n"
					 "  storage_plugin.zmem.max_size_gb: 1\n");
	expect_value(cfg, "external_backends", "zmem");
	expect_value(cfg, "plugin_locations", "/opt/plugins");
	cr_assert_str_eq(kvn_config_extra(cfg, "external_backend.zmem.module_path"),
			 "/opt/zmem.so");
	cr_assert_str_eq(kvn_config_extra(cfg, "external_backend.zmem.class_name"), "kvn_zmem_ops");
	cr_assert_str_eq(kvn_config_extra(cfg, "external_backend.zmem.max_size_gb"), "1");
	kvn_config_free(cfg);
}

Test(config, both_names_of_one_key_are_refused_naming_both)
{
	expect_bad("external_backends: [a]\nstorage_plugins: [a]\n", 2, "storage_plugins",
		   "\"external_backends\" on line 1");
	struct kvn_config *cfg = NULL;
	cr_assert_eq(load("external_backends: [z]\nextra_config:\n"
			  "  external_backend.z.module_path: a.so\n"
			  "  external_backend.z.class_name: z\n"
			  "  storage_plugin.z.module_path: b.so\n",
			  &cfg),
		     -EINVAL);
	assert_contains(err, "extra_config.storage_plugin.z.module_path is \"b.so\" but "
			     "extra_config.external_backend.z.module_path");
}

Test(config, remote_serde_null_is_lmcaches_none_and_valid)
{
	/* As in three of LMCache's own test and example files. */
	struct kvn_config *cfg = load_ok("remote_serde: null\nchunk_size: 256\n");
	char buf[32];
	cr_assert_eq(kvn_config_value(cfg, "remote_serde", buf, sizeof(buf)), -ENOENT, "unset");
	kvn_config_free(cfg);
}

/* lmcache/v1/storage_backend/connector/fs_adapter.py and fs_connector.py: plugin type "fs"
 * (before the first '.'), base_path from remote_storage_plugin.<name>.base_path or
 * fs_base_path, comma-separated. */
Test(config, a_remote_storage_plugin_fs_is_the_remote_tier)
{
	struct kvn_config *cfg = load_ok("remote_storage_plugins: [\"fs\"]\nextra_config:\n"
					 "  remote_storage_plugin.fs.base_path: /data/lmcache\n");
	expect_value(cfg, "remote_url", "fs:///data/lmcache");
	assert_contains(kvn_config_origin(cfg, "remote_url"), "remote_storage_plugins");
	kvn_config_free(cfg);

	char want[PATH_MAX + 64];
	cfg = load_ok("remote_storage_plugins: [fs.primary]\nextra_config:\n"
		      "  remote_storage_plugin.fs.primary.base_path: \"cache, /mnt/b\"\n");
	snprintf(want, sizeof(want), "fs://%s/cache,/mnt/b", tmpdir);
	expect_value(cfg, "remote_url", want);
	kvn_config_free(cfg);

	cfg = load_ok("remote_storage_plugins: fs\nextra_config:\n  fs_base_path: /x\n");
	expect_value(cfg, "remote_url", "fs:///x");
	kvn_config_free(cfg);
}

Test(config, remote_storage_plugins_kvnode_cannot_honour_are_refused_naming_the_key)
{
	expect_bad("remote_storage_plugins: [fs]\n", 1, "remote_storage_plugins",
		   "remote_storage_plugin.fs.base_path");
	expect_bad("remote_storage_plugins: [fs.a, fs.b]\n", 1, "remote_storage_plugins",
		   "one remote tier");
	expect_bad("remote_url: redis://h:1\nremote_storage_plugins: [fs]\nextra_config:\n"
		   "  fs_base_path: /x\n",
		   2, "remote_storage_plugins", "keep one of them");
	expect_bad("remote_storage_plugins: [mystore]\nextra_config:\n"
		   "  remote_storage_plugin.mystore.module_path: my_pkg.adapter\n"
		   "  remote_storage_plugin.mystore.class_name: MyAdapter\n",
		   1, "remote_storage_plugins", "Python connector adapter");
	expect_bad("remote_storage_plugins: [s3]\n", 1, "remote_storage_plugins",
		   "plugin \"s3\"");
}

Test(config, save_chunk_meta_is_an_option_of_the_remote_connector)
{
	struct kvn_config *cfg = load_ok("extra_config:\n  save_chunk_meta: false\n");
	cr_assert_str_eq(kvn_config_extra(cfg, "remote.save_chunk_meta"), "false");
	kvn_config_free(cfg);
}

Test(config, worker_count_is_a_key_and_unset_by_default)
{
	struct kvn_config *cfg = load_ok("");
	expect_value(cfg, "worker_count", "0");
	kvn_config_free(cfg);
	cfg = load_ok("worker_count: 8\n");
	expect_value(cfg, "worker_count", "8");
	kvn_config_free(cfg);
	expect_bad("worker_count: -1\n", 1, "worker_count", NULL);
}

/* Every key of LMCache's lmcache/v1/config.py (_CONFIG_DEFINITIONS and _CONFIG_ALIASES at
 * LMCache commit 000620e3, and the keys of commit 3ecd72f8 it no longer has) is one kvnode
 * reads or an "LMCache key, not used by kvnode", never an unknown key. */
static const char *const lmcache_config_py_keys[] = {
    "chunk_size", "local_cpu", "max_local_cpu_size", "local_cpu_use_hugepages",
    "reserve_local_cpu_size", "local_disk", "local_disk_path_sharding", "max_local_disk_size",
    "remote_url", "remote_serde", "use_layerwise", "save_decode_cache",
    "pre_caching_hash_algorithm", "enable_blending", "blend_recompute_ratios", "blend_thresholds",
    "blend_check_layers", "blend_min_tokens", "blend_special_str", "retrieve_locations",
    "store_location", "enable_p2p", "p2p_host", "p2p_init_ports", "p2p_lookup_ports", "mp_host",
    "mp_port", "enable_controller", "lmcache_instance_id", "controller_pull_url",
    "controller_reply_url", "lmcache_worker_ports", "lmcache_worker_ids",
    "lmcache_worker_heartbeat_delay_time", "lmcache_worker_heartbeat_time", "enable_pd",
    "pd_role", "pd_buffer_size", "pd_buffer_device", "pd_peer_host", "pd_peer_init_port",
    "pd_peer_alloc_port", "pd_peer_query_port", "pd_proxy_host", "pd_proxy_port",
    "pd_allocation_timeout_sec", "pd_shutdown_timeout_sec", "pd_condition_poll_interval_sec",
    "pd_max_prefill_len", "pd_backend_mode", "pd_skip_proxy_notification", "pd_bidirectional",
    "transfer_channel", "nixl_backends", "nixl_buffer_size", "nixl_buffer_device", "gds_path",
    "gds_path_sharding", "gds_buffer_size", "maru_path", "maru_pool_size", "use_gds",
    "gds_backend", "audit_actual_remote_url", "internal_api_server_host", "extra_config",
    "save_unfull_chunk", "blocking_timeout_secs", "external_lookup_client", "py_enable_gc",
    "cache_policy", "cost_aware_half_life_seconds", "cost_aware_ewma_alpha", "numa_mode",
    "enable_async_loading", "internal_api_server_enabled", "internal_api_server_port_start",
    "priority_limit", "internal_api_server_include_index_list",
    "internal_api_server_socket_path_prefix", "runtime_plugin_locations", "storage_plugins",
    "remote_storage_plugins", "lookup_timeout_ms", "min_retrieve_tokens", "hit_miss_ratio",
    "lookup_server_worker_ids", "enable_scheduler_bypass_lookup", "script_allowed_imports",
    "enable_lazy_memory_allocator", "lazy_memory_initial_ratio",
    "lazy_memory_expand_trigger_ratio", "lazy_memory_step_ratio", "lazy_memory_safe_size",
    "enable_chunk_statistics", "chunk_statistics_auto_start_statistics",
    "chunk_statistics_auto_exit_timeout_hours",
    "chunk_statistics_auto_exit_target_unique_chunks", "chunk_statistics_strategy",
    "enable_kv_events", "use_gpu_connector_v3", "pin_timeout_sec", "pin_check_interval_sec",
    "remote_config_url", "app_id", "enable_hidden_state_cache", "max_hidden_state_cpu_size",
    "hidden_state_layers", "hidden_states_retrieve_mode",
    /* _CONFIG_ALIASES / _DEPRECATED_CONFIGS */
    "enable_xpyd", "nixl_peer_host", "nixl_peer_init_port", "nixl_peer_alloc_port",
    "nixl_proxy_host", "nixl_proxy_port", "nixl_role", "controller_url", "lmcache_worker_port",
    "plugin_locations", "external_backends", "nixl_peer_port",
    /* 3ecd72f8 */
    "blend_recompute_ratio", "lookup_url", "distributed_url", "error_handling", "enable_nixl",
    "nixl_receiver_host", "nixl_receiver_port", "nixl_enable_gc", "weka_path",
    "cufile_buffer_size"};

Test(config, every_key_of_lmcaches_config_py_is_known)
{
	/* Keys kvnode reads get values it takes; the others a value LMCache would take. */
	static const char *const read_here[] = {
	    "chunk_size: 256", "local_cpu: true", "max_local_cpu_size: 1.0", "local_disk: null",
	    "max_local_disk_size: 0", "remote_url: null", "remote_serde: naive",
	    "extra_config: {}", "runtime_plugin_locations: []", "storage_plugins: []",
	    "remote_storage_plugins: []"};
	const size_t nread = sizeof(read_here) / sizeof(read_here[0]);
	size_t n = sizeof(lmcache_config_py_keys) / sizeof(lmcache_config_py_keys[0]), seen = 0;
	/* In slices, so that each one's log fits the capture. */
	for (size_t at = 0; at < n; at += 30) {
		char *yaml = NULL;
		size_t len = 0;
		FILE *f = open_memstream(&yaml, &len);
		for (size_t i = 0; at == 0 && i < nread; i++)
			fprintf(f, "%s\n", read_here[i]);
		for (size_t i = at; i < n && i < at + 30; i++) {
			const char *k = lmcache_config_py_keys[i];
			bool done = !strcmp(k, "plugin_locations") ||
				    !strcmp(k, "external_backends");
			for (size_t j = 0; j < nread; j++)
				done |= !strncmp(read_here[j], k, strlen(k)) &&
					read_here[j][strlen(k)] == ':';
			if (!done)
				fprintf(f, "%s: 1\n", k);
			seen++;
		}
		fclose(f);
		struct capture cap;
		capture_begin(&cap);
		struct kvn_config *cfg = NULL;
		int rc = load(yaml, &cfg);
		char *log = capture_end(&cap);
		cr_assert_eq(rc, 0, "%s", err);
		assert_lacks(log, "unknown key");
		for (size_t i = at; i < n && i < at + 30; i++)
			if (!strcmp(lmcache_config_py_keys[i], "enable_nixl") ||
			    !strcmp(lmcache_config_py_keys[i], "lookup_url"))
				assert_contains(log, "LMCache key, not used by kvnode");
		kvn_config_free(cfg);
		free(yaml);
	}
	cr_assert_eq(seen, n);
}

/* ------------------------------------------------------------------------------------------
 * Paths and extra_config
 * ------------------------------------------------------------------------------------------ */

Test(config, file_urls_are_stripped_and_relative_paths_follow_the_config_file)
{
	char sub[PATH_MAX + 8], want[PATH_MAX + 64];
	snprintf(sub, sizeof(sub), "%s/etc", tmpdir);
	cr_assert_eq(mkdir(sub, 0700), 0);
	snprintf(cfgpath, sizeof(cfgpath), "%s/etc/kvnode.yaml", tmpdir);

	struct kvn_config *cfg = load_ok("local_disk: file://cache/kv\n"
					 "plugin_locations: plugins\n"
					 "socket_path: run/k.sock\n");
	snprintf(want, sizeof(want), "%s/cache/kv", sub);
	cr_assert_str_eq(cfg->local_disk, want);
	cr_assert_str_eq(cfg->dir, sub);
	snprintf(want, sizeof(want), "%s/plugins", sub);
	cr_assert_eq(cfg->n_plugin_locations, 1);
	cr_assert_str_eq(cfg->plugin_locations[0], want);
	snprintf(want, sizeof(want), "%s/run/k.sock", sub);
	cr_assert_str_eq(cfg->socket_path, want);
	kvn_config_free(cfg);

	cfg = load_ok("local_disk: \"file:///mnt/nvme/kv/\"\n");
	cr_assert_str_eq(cfg->local_disk, "/mnt/nvme/kv/");
	kvn_config_free(cfg);
	cfg = load_ok("local_disk: null\n");
	cr_assert_null(cfg->local_disk);
	kvn_config_free(cfg);

	expect_bad("local_disk: s3://bucket/kv\n", 1, "local_disk", "file:// URL");
	expect_bad("local_disk: \"file://\"\n", 1, "local_disk", "path");
}

Test(config, extra_config_is_flattened_with_origins)
{
	struct kvn_config *cfg = load_ok("chunk_size: 256\n"
					 "extra_config:\n"
					 "  disk:\n"
					 "    o_direct: true\n"
					 "    shards: 16\n"
					 "  redis.password: hunter2\n"
					 "  hosts: [a, b, 3]\n"
					 "  unset: ~\n"
					 "  quoted: \"null\"\n");
	cr_assert_eq(cfg->n_extra, 5);
	cr_assert_str_eq(kvn_config_extra(cfg, "disk.o_direct"), "true");
	cr_assert_str_eq(kvn_config_extra(cfg, "disk.shards"), "16");
	cr_assert_str_eq(kvn_config_extra(cfg, "hosts"), "a,b,3");
	cr_assert_null(kvn_config_extra(cfg, "unset"));
	cr_assert_str_eq(kvn_config_extra(cfg, "quoted"), "null");
	cr_assert_null(kvn_config_extra(cfg, "disk"));
	char where[PATH_MAX + 96];
	snprintf(where, sizeof(where), "%s:5", cfgpath);
	cr_assert_str_eq(extra_origin(cfg, "disk.shards"), where);
	kvn_config_free(cfg);
}

Test(config, a_self_referencing_alias_is_refused_not_followed_forever)
{
	struct kvn_config *cfg = NULL;
	int rc = load("extra_config: &a\n  x: *a\n", &cfg);
	cr_assert_eq(rc, -EINVAL);
	assert_contains(err, "extra_config");
	/* Aliases that fan out are bounded by the entry limit. */
	rc = load("a: &a {k0: 1, k1: 1, k2: 1, k3: 1, k4: 1, k5: 1, k6: 1, k7: 1}\n"
		  "b: &b {k0: *a, k1: *a, k2: *a, k3: *a, k4: *a, k5: *a, k6: *a, k7: *a}\n"
		  "c: &c {k0: *b, k1: *b, k2: *b, k3: *b, k4: *b, k5: *b, k6: *b, k7: *b}\n"
		  "d: &d {k0: *c, k1: *c, k2: *c, k3: *c, k4: *c, k5: *c, k6: *c, k7: *c}\n"
		  "e: &e {k0: *d, k1: *d, k2: *d, k3: *d, k4: *d, k5: *d, k6: *d, k7: *d}\n"
		  "extra_config: {k0: *e, k1: *e, k2: *e, k3: *e, k4: *e, k5: *e, k6: *e}\n",
		  &cfg);
	cr_assert_eq(rc, -EINVAL);
	assert_contains(err, "more than 4096 entries");
}

Test(config, parse_takes_text_and_a_name_for_messages)
{
	struct kvn_config *cfg = NULL;
	const char text[] = "chunk_size: 64\nlocal_disk: kv\n";
	cr_assert_eq(
	    kvn_config_parse(text, strlen(text), "/etc/kvnode/kvnode.yaml", &cfg, err, sizeof(err)),
	    0, "%s", err);
	cr_assert_eq(cfg->chunk_size, 64);
	cr_assert_str_eq(cfg->local_disk, "/etc/kvnode/kv");
	kvn_config_free(cfg);
	cr_assert_eq(kvn_config_parse("chunk_size: x\n", 14, "inline.yaml", &cfg, err, sizeof(err)),
		     -EINVAL);
	assert_contains(err, "inline.yaml:1: chunk_size: must be an integer > 0, got \"x\"");
	cr_assert_eq(
	    kvn_config_parse("chunk_size: 2\nchunk_size: 3", 14, "t.yaml", &cfg, err, sizeof(err)),
	    0, "only len bytes are read: %s", err);
	cr_assert_eq(cfg->chunk_size, 2);
	kvn_config_free(cfg);
}

Test(config, every_example_config_loads)
{
	glob_t g;
	cr_assert_eq(glob(KVN_SOURCE_DIR "/examples/configs/*.yaml", 0, NULL, &g), 0);
	cr_assert_geq(g.gl_pathc, 4);
	for (size_t i = 0; i < g.gl_pathc; i++) {
		struct kvn_config *cfg = NULL;
		struct capture cap;
		capture_begin(&cap);
		int rc = kvn_config_load(g.gl_pathv[i], &cfg, err, sizeof(err));
		char *log = capture_end(&cap);
		cr_assert_eq(rc, 0, "%s: %s", g.gl_pathv[i], err);
		assert_lacks(log, "unknown key");
		kvn_config_free(cfg);
	}
	globfree(&g);
}

Test(config, byte_sizes_take_bytes_or_binary_units_and_are_range_checked)
{
	struct kvn_config *cfg = load_ok("max_chunk_size: 32MiB\nscheduler_reply_queue_max: 1 GiB\n");
	cr_assert_eq(cfg->max_chunk_size, 32ull << 20);
	cr_assert_eq(cfg->scheduler_reply_queue_max, 1ull << 30);
	char v[32];
	cr_assert_eq(kvn_config_value(cfg, "max_chunk_size", v, sizeof(v)), 0);
	cr_assert_str_eq(v, "33554432");
	kvn_config_free(cfg);
	cfg = load_ok("max_chunk_size: 1048576\n");
	cr_assert_eq(cfg->max_chunk_size, 1ull << 20);
	kvn_config_free(cfg);
	cfg = load_ok("max_chunk_size: 256k\n");
	cr_assert_eq(cfg->max_chunk_size, 256ull << 10);
	kvn_config_free(cfg);
	cfg = load_ok("");
	cr_assert_eq(cfg->max_chunk_size, 64ull << 20, "the default is 64 MiB");
	kvn_config_free(cfg);

	static const char *const bad[] = {"-1", "1.5MiB", "64XB", "MiB", "0x100", "5GiBs",
					  "99999999999999999999", "1024", "5TiB"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char text[128];
		snprintf(text, sizeof(text), "max_chunk_size: %s\n", bad[i]);
		expect_bad(text, 1, "max_chunk_size", "must be a size from 4096 to 4294967296 bytes");
	}
}

/* 16 levels of 8 aliases to the level below: 8^15 mappings to walk, none of them adding an
 * entry, from about 1.2 KB. Without a budget the loader walks for hours (a SIGHUP reload
 * with this file also kept the node from seeing SIGTERM). */
static char *
laughs_yaml(void)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	cr_assert_not_null(f);
	fprintf(f, "extra_config:\n  l0: &l0 {}\n");
	for (int i = 1; i < 16; i++)
		fprintf(f, "  l%d: &l%d {a: *l%d, b: *l%d, c: *l%d, d: *l%d, e: *l%d, f: *l%d, "
			   "g: *l%d, h: *l%d}\n",
			i, i, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1);
	cr_assert_eq(fclose(f), 0);
	return text;
}

Test(config, aliases_that_expand_past_the_budget_are_refused_at_once, .timeout = 60)
{
	char *text = laughs_yaml();
	cr_assert_lt(strlen(text), 1300);
	struct kvn_config *cfg = NULL;
	cr_assert_eq(kvn_config_parse(text, strlen(text), "laughs.yaml", &cfg, err, sizeof(err)),
		     -EINVAL);
	assert_contains(err, "laughs.yaml:");
	assert_contains(err, "through its aliases");
	free(text);

	/* One 1 MiB scalar named 64 times in a list would be 64 MiB of strings. */
	FILE *f = open_memstream(&text, &(size_t){0});
	fprintf(f, "plugin_locations: &big \"");
	for (int i = 0; i < (1 << 20); i++)
		fputc('p', f);
	fprintf(f, "\"\nextra_config:\n  x: [");
	for (int i = 0; i < 64; i++)
		fprintf(f, "%s*big", i ? ", " : "");
	fprintf(f, "]\n");
	cr_assert_eq(fclose(f), 0);
	cr_assert_eq(kvn_config_parse(text, strlen(text), "wide.yaml", &cfg, err, sizeof(err)),
		     -EINVAL);
	assert_contains(err, "wide.yaml:");
	assert_contains(err, "MiB of text");
	free(text);

	/* Aliases within the budget still work. */
	const char ok[] = "extra_config:\n  base: &b {x: 1, y: 2}\n  copy: *b\n";
	cr_assert_eq(kvn_config_parse(ok, strlen(ok), "ok.yaml", &cfg, err, sizeof(err)), 0, "%s",
		     err);
	cr_assert_str_eq(kvn_config_extra(cfg, "copy.y"), "2");
	kvn_config_free(cfg);
}
