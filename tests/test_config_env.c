/* Config from the environment (KVNODE_ over LMCACHE_ over the file) and the config as output:
 * JSON, redaction, text of a key. */
#include "config_fixture.h"

TestSuite(config_env, .init = setup, .fini = teardown);

/* ------------------------------------------------------------------------------------------
 * Environment
 * ------------------------------------------------------------------------------------------ */

Test(config_env, env_overrides_the_file_and_kvnode_wins_over_lmcache)
{
	write_file(cfgpath, "chunk_size: 128\nlocal_cpu: true\nremote_url: redis://a:1\n");
	struct kvn_config *cfg = NULL;

	setenv("LMCACHE_CHUNK_SIZE", "512", 1);
	setenv("LMCACHE_LOCAL_CPU", "False", 1);
	cr_assert_eq(kvn_config_load(cfgpath, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg->chunk_size, 512);
	cr_assert_not(cfg->local_cpu);
	cr_assert_str_eq(cfg->remote_url, "redis://a:1");
	cr_assert_str_eq(kvn_config_origin(cfg, "chunk_size"), "env LMCACHE_CHUNK_SIZE");
	kvn_config_free(cfg);

	setenv("KVNODE_CHUNK_SIZE", "1024", 1);
	setenv("KVNODE_REMOTE_URL", "", 1); /* empty: unset */
	cr_assert_eq(kvn_config_load(cfgpath, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg->chunk_size, 1024);
	cr_assert_null(cfg->remote_url);
	cr_assert_str_eq(kvn_config_origin(cfg, "chunk_size"), "env KVNODE_CHUNK_SIZE");
	kvn_config_free(cfg);
}

Test(config_env, env_from_an_envp_array_is_applied_with_the_same_precedence)
{
	struct kvn_config *cfg = load_ok("heartbeat_ms: 100\nput_threads: 3\n");
	char *envp[] = {"LMCACHE_HEARTBEAT_MS=200",
			"KVNODE_HEARTBEAT_MS=300",
			"LMCACHE_PUT_THREADS=5",
			"KVNODE_PLUGIN_LOCATIONS=/a, /b ,,/c",
			"LMCACHE_MAX_LOCAL_DISK_SIZE=0.25",
			"KVNODE_LOCAL_DISK=file:///data/kv",
			"KVNODE_TRANSPORT=tcp",
			"KVNODE_LOG_LEVEL=error",
			NULL};
	cr_assert_eq(kvn_config_apply_env(cfg, envp, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg->heartbeat_ms, 300);
	cr_assert_eq(cfg->put_threads, 5);
	cr_assert_eq(cfg->n_plugin_locations, 3);
	cr_assert_str_eq(cfg->plugin_locations[0], "/a");
	cr_assert_str_eq(cfg->plugin_locations[1], "/b");
	cr_assert_str_eq(cfg->plugin_locations[2], "/c");
	cr_assert_eq(cfg->max_local_disk_size, 1ull << 28);
	cr_assert_str_eq(cfg->local_disk, "/data/kv");
	cr_assert_str_eq(cfg->transport, "tcp");
	cr_assert_eq(cfg->log_level, KVN_LOG_ERROR);
	kvn_config_free(cfg);
}

Test(config_env, a_bad_env_value_is_an_error_naming_the_variable)
{
	struct kvn_config *cfg = NULL;
	setenv("KVNODE_CHUNK_SIZE", "lots", 1);
	cr_assert_eq(kvn_config_load(NULL, &cfg, err, sizeof(err)), -EINVAL);
	cr_assert_null(cfg);
	assert_contains(err, "env KVNODE_CHUNK_SIZE: must be an integer > 0, got \"lots\"");
	unsetenv("KVNODE_CHUNK_SIZE");

	setenv("LMCACHE_MAX_LOCAL_CPU_SIZE", "-1", 1);
	cr_assert_eq(kvn_config_load(NULL, &cfg, err, sizeof(err)), -EINVAL);
	assert_contains(err, "env LMCACHE_MAX_LOCAL_CPU_SIZE: must be a number of GB >= 0");
	unsetenv("LMCACHE_MAX_LOCAL_CPU_SIZE");

	setenv("KVNODE_TRANSPORT", "ib", 1);
	cr_assert_eq(kvn_config_load(NULL, &cfg, err, sizeof(err)), -EINVAL);
	assert_contains(err, "env KVNODE_TRANSPORT: must be one of auto, verbs, tcp");
	unsetenv("KVNODE_TRANSPORT");

	setenv("KVNODE_EXTRA_CONFIG", "{not json", 1);
	cr_assert_eq(kvn_config_load(NULL, &cfg, err, sizeof(err)), -EINVAL);
	assert_contains(err, "env KVNODE_EXTRA_CONFIG: must be a JSON object");
	unsetenv("KVNODE_EXTRA_CONFIG");

	setenv("KVNODE_EXTERNAL_BACKENDS", "zmem", 1);
	cr_assert_eq(kvn_config_load(NULL, &cfg, err, sizeof(err)), -EINVAL);
	assert_contains(err, "env KVNODE_EXTERNAL_BACKENDS: external_backends: backend \"zmem\" "
			     "needs extra_config key \"external_backend.zmem.module_path\"");
}

/* LMCache converts LMCACHE_<KEY> with lmcache/v1/config_base.py: _parse_quoted_string, then
 * the key's converter of lmcache/v1/config.py (_to_bool takes only "true" and "1"; int() and
 * float() as Python has them; runtime_plugin_locations one path; _to_str_list for the other
 * lists). kvnode reads the same values from the same variables. */
Test(config_env, lmcache_variables_are_read_with_lmcaches_converters)
{
	static const struct {
		const char *value;
		bool want;
	} bools[] = {{"yes", false}, {"on", false}, {"True", true}, {" TRUE ", true},
		     {"1", true},    {"'true'", true}, {"\"1\"", true}, {"no", false},
		     {"garbage", false}};
	for (size_t i = 0; i < sizeof(bools) / sizeof(bools[0]); i++) {
		char e[64];
		snprintf(e, sizeof(e), "LMCACHE_LOCAL_CPU=%s", bools[i].value);
		char *envp[] = {e, NULL};
		struct kvn_config *cfg = load_ok(bools[i].want ? "local_cpu: false\n" : "");
		cr_assert_eq(kvn_config_apply_env(cfg, envp, err, sizeof(err)), 0, "%s", err);
		cr_assert_eq(cfg->local_cpu, bools[i].want, "LMCACHE_LOCAL_CPU=%s",
			     bools[i].value);
		kvn_config_free(cfg);
	}
	struct kvn_config *cfg = load_ok("");
	char *envp[] = {"LMCACHE_CHUNK_SIZE= 1_024 ", "LMCACHE_MAX_LOCAL_CPU_SIZE=0.2_5",
			"LMCACHE_PLUGIN_LOCATIONS=/a,/b", "LMCACHE_STORAGE_PLUGINS= x, ,y",
			"LMCACHE_REMOTE_URL='lm://h:1'", "KVNODE_HUGEPAGES=yes", NULL};
	cr_assert_eq(kvn_config_apply_env(cfg, envp, err, sizeof(err)), -EINVAL,
		     "x and y have no module_path");
	kvn_config_free(cfg);
	cfg = load_ok("extra_config:\n  external_backend.x.module_path: x.so\n"
		      "  external_backend.x.class_name: x\n  external_backend.y.module_path: y.so\n"
		      "  external_backend.y.class_name: y\n");
	cr_assert_eq(kvn_config_apply_env(cfg, envp, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg->chunk_size, 1024);
	cr_assert_eq(cfg->max_local_cpu_size, 1ull << 28);
	cr_assert_eq(cfg->n_plugin_locations, 1, "one path, as LMCache reads it");
	cr_assert_str_eq(cfg->plugin_locations[0], "/a,/b");
	cr_assert_eq(cfg->n_external_backends, 2);
	cr_assert_str_eq(cfg->external_backends[1], "y");
	cr_assert_str_eq(cfg->remote_url, "lm://h:1", "the quotes are LMCache's to strip");
	cr_assert(cfg->hugepages, "KVNODE_ keeps kvnode's spellings");
	kvn_config_free(cfg);
}

Test(config_env, an_lmcache_value_lmcache_cannot_convert_is_ignored_with_a_warning)
{
	struct kvn_config *cfg = load_ok("chunk_size: 128\n");
	char *envp[] = {"LMCACHE_CHUNK_SIZE=lots", "LMCACHE_MAX_LOCAL_DISK_SIZE=1.2.3",
			"LMCACHE_EXTRA_CONFIG={not json", NULL};
	struct capture cap;
	capture_begin(&cap);
	int rc = kvn_config_apply_env(cfg, envp, err, sizeof(err));
	char *log = capture_end(&cap);
	cr_assert_eq(rc, 0, "LMCache ignores it too: %s", err);
	cr_assert_eq(cfg->chunk_size, 128);
	assert_contains(log, "env LMCACHE_CHUNK_SIZE=\"lots\"");
	assert_contains(log, "env LMCACHE_MAX_LOCAL_DISK_SIZE=\"1.2.3\"");
	assert_contains(log, "env LMCACHE_EXTRA_CONFIG=\"{not json\"");
	kvn_config_free(cfg);
}

Test(config_env, lmcaches_newer_variable_names_set_the_same_keys)
{
	struct kvn_config *cfg = load_ok("");
	char *envp[] = {"LMCACHE_RUNTIME_PLUGIN_LOCATIONS=/opt/p", NULL};
	cr_assert_eq(kvn_config_apply_env(cfg, envp, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg->n_plugin_locations, 1);
	cr_assert_str_eq(cfg->plugin_locations[0], "/opt/p");
	kvn_config_free(cfg);
	cfg = load_ok("");
	char *both[] = {"LMCACHE_STORAGE_PLUGINS=a", "LMCACHE_EXTERNAL_BACKENDS=b", NULL};
	cr_assert_eq(kvn_config_apply_env(cfg, both, err, sizeof(err)), -EINVAL);
	assert_contains(err, "LMCACHE_EXTERNAL_BACKENDS and env LMCACHE_STORAGE_PLUGINS");
	kvn_config_free(cfg);
}

Test(config_env, env_lists_and_extra_config_json_make_an_external_backend)
{
	struct kvn_config *cfg = NULL;
	setenv("KVNODE_EXTERNAL_BACKENDS", "zmem, nvme", 1);
	setenv("LMCACHE_EXTRA_CONFIG",
	       "{\"external_backend\": {\"zmem\": {\"module_path\": \"z.so\", \"class_name\": "
	       "\"z_ops\", \"capacity_bytes\": 1048576}, \"nvme\": {\"module_path\": \"n.so\", "
	       "\"class_name\": \"n\", \"o_direct\": true, \"dirs\": [\"/a\", \"/b\"]}}}",
	       1);
	cr_assert_eq(kvn_config_load(NULL, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg->n_external_backends, 2);
	cr_assert_str_eq(cfg->external_backends[1], "nvme");
	cr_assert_str_eq(kvn_config_extra(cfg, "external_backend.zmem.capacity_bytes"), "1048576");
	cr_assert_str_eq(kvn_config_extra(cfg, "external_backend.nvme.o_direct"), "true");
	cr_assert_str_eq(kvn_config_extra(cfg, "external_backend.nvme.dirs"), "/a,/b");
	cr_assert_str_eq(extra_origin(cfg, "external_backend.zmem.class_name"),
			 "env LMCACHE_EXTRA_CONFIG");
	kvn_config_free(cfg);
}

Test(config_env, env_extra_config_replaces_single_file_entries)
{
	write_file(cfgpath, "extra_config:\n  disk.o_direct: false\n  disk.fsync: true\n");
	setenv("KVNODE_EXTRA_CONFIG", "{\"disk.o_direct\": \"true\", \"disk.fsync\": null}", 1);
	struct kvn_config *cfg = NULL;
	cr_assert_eq(kvn_config_load(cfgpath, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(kvn_config_extra(cfg, "disk.o_direct"), "true");
	cr_assert_null(kvn_config_extra(cfg, "disk.fsync"), "null removes the file's entry");
	kvn_config_free(cfg);
}

Test(config_env, config_file_comes_from_kvnode_then_lmcache_variable)
{
	char other[PATH_MAX + 16];
	snprintf(other, sizeof(other), "%s/lmcache.yaml", tmpdir);
	write_file(other, "chunk_size: 64\n");
	write_file(cfgpath, "chunk_size: 32\n");
	struct kvn_config *cfg = NULL;

	setenv("LMCACHE_CONFIG_FILE", other, 1);
	cr_assert_eq(kvn_config_load(NULL, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg->chunk_size, 64);
	cr_assert_str_eq(cfg->path, other);
	kvn_config_free(cfg);

	setenv("KVNODE_CONFIG_FILE", cfgpath, 1);
	cr_assert_eq(kvn_config_load(NULL, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg->chunk_size, 32);
	kvn_config_free(cfg);

	/* An explicit path beats both. */
	cr_assert_eq(kvn_config_load(other, &cfg, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(cfg->chunk_size, 64);
	kvn_config_free(cfg);
}

Test(config_env, variables_that_are_not_keys_are_not_reported_but_misspelt_ones_are)
{
	setenv("KVNODE_CONFIG_FILE", "", 1);
	setenv("KVNODE_MODULE_PATH", "/opt/kvn", 1);
	setenv("KVNODE_SOCKET", "/tmp/x.sock", 1);
	setenv("KVNODE_PLUGIN_ROLE", "WORKER", 1);
	setenv("LMCACHE_CONFIG_FILE", "", 1);
	setenv("LMCACHE_USE_EXPERIMENTAL", "True", 1);
	struct capture cap;
	capture_begin(&cap);
	struct kvn_config *cfg = NULL;
	int rc = kvn_config_load(NULL, &cfg, err, sizeof(err));
	char *log = capture_end(&cap);
	cr_assert_eq(rc, 0, "%s", err);
	cr_assert_eq(log[0], '\0', "unexpected log: %s", log);
	cr_assert_str_eq(cfg->socket_path, "/tmp/x.sock", "KVNODE_SOCKET is the default socket");
	kvn_config_free(cfg);

	setenv("KVNODE_CHUNK_SIZ", "12", 1);
	capture_begin(&cap);
	rc = kvn_config_load(NULL, &cfg, err, sizeof(err));
	log = capture_end(&cap);
	cr_assert_eq(rc, 0, "%s", err);
	assert_contains(log, "env KVNODE_CHUNK_SIZ: unknown key \"chunk_siz\" (did you mean "
			     "\"chunk_size\"?)");
	kvn_config_free(cfg);
}

Test(config_env, default_socket_follows_kvnode_socket_then_xdg_runtime_dir)
{
	char want[64];
	unsetenv("XDG_RUNTIME_DIR");
	snprintf(want, sizeof(want), "/tmp/kvnode-%u.sock", (unsigned)getuid());
	char *s = kvn_config_default_socket();
	cr_assert_str_eq(s, want);
	free(s);
	setenv("XDG_RUNTIME_DIR", "/run/user/77", 1);
	s = kvn_config_default_socket();
	cr_assert_str_eq(s, "/run/user/77/kvnode.sock");
	free(s);
	setenv("KVNODE_SOCKET", "/srv/k.sock", 1);
	s = kvn_config_default_socket();
	cr_assert_str_eq(s, "/srv/k.sock");
	free(s);
}

/* ------------------------------------------------------------------------------------------
 * Output
 * ------------------------------------------------------------------------------------------ */

static const char full_yaml[] = "chunk_size: 128\n"
				"max_local_cpu_size: 0.1\n"
				"local_disk: /data/kv\n"
				"max_local_disk_size: 20\n"
				"remote_url: redis://:hunter2@cache:6379/0\n"
				"scheduler_url: kvnode://admin:pa55@sched:7200\n"
				"auth_token: t0ken\n"
				"plugin_locations: [/opt/p]\n"
				"extra_config:\n"
				"  redis.password: hunter2\n"
				"  disk.o_direct: true\n"
				"  peer_url: rediss://u:pw@h:1\n";

Test(config_env, json_is_the_effective_config_and_round_trips)
{
	struct kvn_config *cfg = load_ok(full_yaml);
	char *json = kvn_config_to_json(cfg, false);
	cJSON *o = cJSON_Parse(json);
	cr_assert(cJSON_IsObject(o), "not JSON: %s", json);
	cr_assert_eq(cJSON_GetObjectItem(o, "chunk_size")->valuedouble, 128);
	cr_assert_eq(cJSON_GetObjectItem(o, "max_local_cpu_size")->valuedouble, 0.1);
	cr_assert_str_eq(cJSON_GetObjectItem(o, "remote_url")->valuestring,
			 "redis://:hunter2@cache:6379/0");
	cr_assert_str_eq(cJSON_GetObjectItem(o, "log_level")->valuestring, "info");
	cr_assert(cJSON_IsNull(cJSON_GetObjectItem(o, "rdma_device")));
	cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(o, "hugepages")));
	cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(o, "plugin_locations")), 1);
	cJSON *extra = cJSON_GetObjectItem(o, "extra_config");
	cr_assert_str_eq(cJSON_GetObjectItem(extra, "disk.o_direct")->valuestring, "true");
	cJSON_Delete(o);

	/* JSON is YAML: the output read back as a config gives the same output. */
	struct kvn_config *again = load_ok(json);
	char *json2 = kvn_config_to_json(again, false);
	cr_assert_str_eq(json2, json);
	free(json2);
	kvn_config_free(again);
	free(json);
	kvn_config_free(cfg);
}

Test(config_env, redacted_json_hides_tokens_and_url_passwords)
{
	struct kvn_config *cfg = load_ok(full_yaml);
	char *json = kvn_config_to_json(cfg, true);
	cJSON *o = cJSON_Parse(json);
	cr_assert(o, "not JSON: %s", json);
	assert_lacks(json, "hunter2");
	assert_lacks(json, "pa55");
	assert_lacks(json, "t0ken");
	cr_assert_str_eq(cJSON_GetObjectItem(o, "auth_token")->valuestring, "***");
	cr_assert_str_eq(cJSON_GetObjectItem(o, "remote_url")->valuestring,
			 "redis://:***@cache:6379/0");
	cr_assert_str_eq(cJSON_GetObjectItem(o, "scheduler_url")->valuestring,
			 "kvnode://admin:***@sched:7200");
	cJSON *extra = cJSON_GetObjectItem(o, "extra_config");
	cr_assert_str_eq(cJSON_GetObjectItem(extra, "redis.password")->valuestring, "***");
	cr_assert_str_eq(cJSON_GetObjectItem(extra, "peer_url")->valuestring, "rediss://u:***@h:1");
	cr_assert_str_eq(cJSON_GetObjectItem(extra, "disk.o_direct")->valuestring, "true");
	cJSON_Delete(o);
	free(json);
	kvn_config_free(cfg);
}

Test(config_env, any_key_reads_back_as_text)
{
	struct kvn_config *cfg = load_ok(full_yaml);
	char buf[128];
	cr_assert_eq(kvn_config_value(cfg, "chunk_size", buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, "128");
	cr_assert_eq(kvn_config_value(cfg, "max_local_cpu_size", buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, "0.1");
	cr_assert_eq(kvn_config_value(cfg, "max_local_disk_size", buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, "20");
	cr_assert_eq(kvn_config_value(cfg, "local_cpu", buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, "true");
	cr_assert_eq(kvn_config_value(cfg, "gid_index", buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, "-1");
	cr_assert_eq(kvn_config_value(cfg, "log_level", buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, "info");
	cr_assert_eq(kvn_config_value(cfg, "plugin_locations", buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, "/opt/p");
	cr_assert_eq(kvn_config_value(cfg, "local_disk", buf, 4), -ENOSPC);
	cr_assert_eq(kvn_config_value(cfg, "rdma_device", buf, sizeof(buf)), -ENOENT);
	cr_assert_eq(kvn_config_value(cfg, "external_backends", buf, sizeof(buf)), -ENOENT);
	cr_assert_eq(kvn_config_value(cfg, "no_such_key", buf, sizeof(buf)), -ENOENT);
	cr_assert_null(kvn_config_origin(cfg, "no_such_key"));

	/* A size set directly in the struct still reads back. */
	cfg->max_local_cpu_size = 3ull << 30;
	cr_assert_eq(kvn_config_value(cfg, "max_local_cpu_size", buf, sizeof(buf)), 0);
	cr_assert_str_eq(buf, "3");
	kvn_config_free(cfg);
	kvn_config_free(NULL);
}

/* Values from the environment are text: a control character or bytes that are not UTF-8 would
 * end up in the config's JSON (kvnode stat) and in log lines; refused naming the variable. */
Test(config_env, a_value_with_a_control_character_or_not_utf8_is_refused_naming_the_variable)
{
	static const char *const bad[] = {"KVNODE_NODE_NAME=node\x7f", "KVNODE_NODE_NAME=n\x01",
					  "KVNODE_NODE_NAME=\xff\xfe", "KVNODE_NODE_NAME=\xc2\x85"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *envp[] = {(char *)bad[i], NULL};
		struct kvn_config *cfg = kvn_config_new_defaults();
		char e[512];
		cr_assert_eq(kvn_config_apply_env(cfg, envp, e, sizeof(e)), -EINVAL, "value %zu", i);
		cr_assert(strstr(e, "env KVNODE_NODE_NAME") && strstr(e, "UTF-8"), "%s", e);
		kvn_config_free(cfg);
	}
	char *ok[] = {"KVNODE_NODE_NAME=k\xc3\xb6ln", NULL};
	struct kvn_config *cfg = kvn_config_new_defaults();
	char e[512];
	cr_assert_eq(kvn_config_apply_env(cfg, ok, e, sizeof(e)), 0, "%s", e);
	cr_assert_str_eq(cfg->node_name, "k\xc3\xb6ln");
	kvn_config_free(cfg);
}
