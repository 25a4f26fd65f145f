/* Plugins beside real kvnode processes: `kvnode serve` lists them in stat and leaves none
 * behind when SIGKILLed, `kvnode scheduler` runs the scheduler's, the examples and the demo
 * work; and the config keys that steer the launcher. */
#include "tests/plugin_fixture.h"

TestSuite(plugins_node, .init = setup, .fini = teardown, .timeout = 240);

/* A real `kvnode serve` child with the given config lines; its log goes to logpath. */
static void
serve(struct proc *node, char *sock, size_t socklen, const char *extra)
{
	cr_assert_eq(access(KVNODE, X_OK), 0, "%s is not built", KVNODE);
	char cfg[PATH_MAX + 32], *text;
	snprintf(cfg, sizeof(cfg), "%s/kvnode.yaml", dir);
	snprintf(sock, socklen, "%s/kvnode.sock", dir);
	cr_assert(asprintf(&text, "max_local_cpu_size: 0.05\nhugepages: false\nsocket_path: %s\n%s",
			   sock, extra) > 0);
	cr_assert_eq(proc_write_file(cfg, text, strlen(text)), 0);
	free(text);
	const char *argv[] = {KVNODE, "serve", "-c", cfg, NULL};
	struct proc_opts po = {.stderr_path = logpath, .env = clean_env};
	cr_assert_eq(proc_spawn(node, argv, &po), 0);
	cr_assert(proc_wait_for(proc_cond_socket_accepts, sock, DEADLINE), "node never served");
}

static pid_t
read_pid(const char *name)
{
	wait_file(name);
	char *s = read_plugdir_file(name);
	pid_t pid = atoi(s);
	free(s);
	cr_assert(pid > 0, "%s: no pid", name);
	return pid;
}

/* The node shows the plugin in `kvnode stat --json`; once the node is SIGKILLed (no chance to
 * stop anything) neither the plugin nor the child it started is left. */
Test(plugins_node, no_plugin_or_plugin_child_outlives_a_node_killed_with_sigkill)
{
	put_plugin(
	    "worker_0_sleeper.sh", 0644,
	    "sleep 1000 &\necho $! > child.pid.tmp\nmv child.pid.tmp child.pid\n"
	    "echo \"sleeper up\"\necho $$ > sleeper.pid.tmp\nmv sleeper.pid.tmp sleeper.pid\n"
	    "while :; do sleep 0.2; done\n");
	char sock[PATH_MAX + 32], extra[PATH_MAX + 64];
	snprintf(extra, sizeof(extra), "plugin_locations: [\"%s\"]\n", plugdir);
	struct proc node = {0};
	serve(&node, sock, sizeof(sock), extra);
	pid_t pid = read_pid("sleeper.pid"), child = read_pid("child.pid");

	char out[PATH_MAX + 32];
	snprintf(out, sizeof(out), "%s/stat.json", dir);
	const char *stat_argv[] = {KVNODE, "stat", "--json", "--node", sock, NULL};
	struct proc_opts so = {.stdout_path = out, .env = clean_env};
	cr_assert_eq(proc_run(stat_argv, &so, DEADLINE), 0);
	char *s = proc_read_file(out, NULL);
	cJSON *root = cJSON_Parse(s);
	cJSON *p = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "plugins"), 0);
	cr_assert(p, "no plugins in kvnode stat --json: %s", s);
	cr_expect_str_eq(cJSON_GetObjectItem(p, "name")->valuestring, "worker_0_sleeper.sh");
	cr_expect_str_eq(cJSON_GetObjectItem(p, "state")->valuestring, "running");
	cr_expect_eq(cJSON_GetObjectItem(p, "pid")->valueint, pid);
	cJSON_Delete(root);
	free(s);

	cr_assert_eq(kill(pid, 0), 0, "the plugin should run while the node does");
	cr_assert_eq(kill(child, 0), 0, "the plugin's child should run while the node does");
	kill(node.pid, SIGKILL);
	proc_wait(&node, DEADLINE);
	bool gone = proc_wait_for(pid_gone, &pid, DEADLINE);
	bool child_gone = proc_wait_for(pid_gone, &child, DEADLINE);
	if (!gone)
		kill(-pid, SIGKILL);
	if (!child_gone)
		kill(child, SIGKILL);
	cr_expect(gone, "plugin %d outlived its node", (int)pid);
	cr_expect(child_gone, "plugin child %d outlived the node", (int)child);
	char *log = proc_read_file(logpath, NULL);
	assert_contains(log, "[plugin worker_0_sleeper.sh] sleeper up");
	free(log);
}

/* `kvnode scheduler` starts the scheduler's plugins (and not the workers'), stops them with
 * itself. */
Test(plugins_node, kvnode_scheduler_runs_scheduler_plugins_only)
{
	cr_assert_eq(access(KVNODE, X_OK), 0, "%s is not built", KVNODE);
	put_plugin("scheduler_hello.sh", 0644,
		   "echo \"$KVNODE_PLUGIN_ROLE $LMCACHE_PLUGIN_WORKER_ID\" > sched.tmp\n"
		   "mv sched.tmp sched.txt\necho scheduler plugin up\nexec sleep 1000\n");
	put_plugin("worker_hello.sh", 0644, "echo worker > worker.txt\n");
	char cfg[PATH_MAX + 32], *text;
	snprintf(cfg, sizeof(cfg), "%s/kvnode.yaml", dir);
	cr_assert(asprintf(&text, "plugin_locations: [\"%s\"]\n", plugdir) > 0);
	cr_assert_eq(proc_write_file(cfg, text, strlen(text)), 0);
	free(text);
	const char *argv[] = {KVNODE, "scheduler", "-c", cfg, "--listen", "127.0.0.1:0", NULL};
	const char *env[] = {"KVNODE_CONFIG_FILE", "LMCACHE_CONFIG_FILE", "KVNODE_SCHEDULER_URL",
			     NULL};
	char outpath[PATH_MAX + 32];
	snprintf(outpath, sizeof(outpath), "%s/sched.out", dir);
	struct proc_opts po = {.stdout_path = outpath, .stderr_path = logpath, .env = env};
	struct proc sched = {0};
	cr_assert_eq(proc_spawn(&sched, argv, &po), 0);
	wait_file("sched.txt");
	const char *const want[] = {"[plugin scheduler_hello.sh] scheduler plugin up", NULL};
	cr_expect(proc_wait_for(log_has_all, (void *)want, DEADLINE), "no scheduler plugin output");
	char *role = read_plugdir_file("sched.txt");
	cr_expect_str_eq(role, "SCHEDULER -1\n");
	free(role);

	/* `kvnode stat --scheduler` lists the scheduler process's plugins. */
	char *out = NULL, addr[128] = "";
	for (int i = 0; i < 600 && !addr[0]; i++) {
		free(out);
		out = proc_read_file(outpath, NULL);
		const char *at = out ? strstr(out, "scheduler on ") : NULL;
		if (at && strchr(at, '\n'))
			sscanf(at + strlen("scheduler on "), "%127s", addr);
		else
			usleep(100 * 1000);
	}
	free(out);
	cr_assert(addr[0], "the scheduler never printed its address");
	char statpath[PATH_MAX + 32];
	snprintf(statpath, sizeof(statpath), "%s/stat.json", dir);
	const char *stat_argv[] = {KVNODE, "stat", "--json", "--scheduler", addr, NULL};
	struct proc_opts so = {.stdout_path = statpath, .env = env};
	cr_expect_eq(proc_run(stat_argv, &so, DEADLINE), 0, "kvnode stat --scheduler %s", addr);
	char *stat = proc_read_file(statpath, NULL);
	cJSON *sj = stat ? cJSON_Parse(stat) : NULL;
	const cJSON *pls = cJSON_GetObjectItemCaseSensitive(sj, "plugins");
	const cJSON *p0 = cJSON_GetArrayItem(pls, 0);
	cr_expect_eq(cJSON_GetArraySize(pls), 1, "one plugin listed: %s", stat);
	cr_expect_str_eq(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p0, "name")),
			 "scheduler_hello.sh");
	cr_expect_str_eq(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(p0, "state")),
			 "running");
	cJSON_Delete(sj);
	free(stat);
	cr_expect_eq(proc_stop(&sched, SIGTERM, DEADLINE), 0, "scheduler exit code after SIGTERM");
	char path[PATH_MAX * 2];
	snprintf(path, sizeof(path), "%s/worker.txt", plugdir);
	cr_expect_neq(access(path, F_OK), 0, "a worker plugin ran in the scheduler");
	char *log = proc_read_file(logpath, NULL);
	assert_contains(log, "[plugin scheduler_hello.sh] killed by signal 15");
	cr_expect(!strstr(log, "worker_hello.sh"), "a worker plugin in the scheduler:\n%s", log);
	free(log);
}

/* examples/plugins beside a real node: each does what its README line says. */
Test(plugins_node, example_plugins_run_beside_a_real_node_and_stop_with_it)
{
	char sock[PATH_MAX + 32], extra[PATH_MAX + 256];
	snprintf(extra, sizeof(extra),
		 "plugin_locations: [\"%s/examples/plugins\"]\nextra_config:\n"
		 "  plugin.worker_health_check.interval: 1\n"
		 "  plugin.worker_metrics_logger.interval: 1\n",
		 KVN_SOURCE_DIR);
	struct proc node = {0};
	serve(&node, sock, sizeof(sock), extra);
	const char *const want[] = {"[plugin worker_health_check.py] ok: worker 0, node ",
				    "[plugin worker_metrics_logger.sh] rss=",
				    "[plugin worker_0_announce.sh] role WORKER, worker 0 of 1",
				    "[plugin worker_0_announce.sh] exited with status 0", NULL};
	bool seen = proc_wait_for(log_has_all, (void *)want, DEADLINE);
	int code = proc_stop(&node, SIGTERM, DEADLINE);
	char *log = proc_read_file(logpath, NULL);
	cr_assert(seen, "example plugin output missing from the node's log:\n%.6000s", log);
	cr_expect_eq(code, 0, "kvnode serve exit code after SIGTERM");
	assert_contains(log, "[plugin worker_health_check.py] killed by signal 15");
	cr_expect(!strstr(log, "unhealthy"), "health check failed:\n%.6000s", log);
	free(log);
}

Test(plugins_node, the_demo_shows_a_plugins_prefixed_output)
{
	cr_assert_eq(access(KVNODE, X_OK), 0, "%s is not built", KVNODE);
	const char *argv[] = {KVNODE, "demo", NULL};
	struct proc_opts po = {.stderr_path = logpath, .env = clean_env};
	cr_assert_eq(proc_run(argv, &po, DEADLINE * 2), 0);
	char *log = proc_read_file(logpath, NULL);
	assert_contains(log, "[plugin all_hello.sh] hello from WORKER 0 of 1, in /");
	assert_contains(log, "[plugin all_hello.sh] exited with status 0");
	free(log);
}

/* ------------------------------------------------------------------------------------------
 * Config keys
 * ------------------------------------------------------------------------------------------ */

Test(plugins_node, config_keys_have_defaults_and_are_checked)
{
	char err[1024];
	struct kvn_config *cfg = kvn_config_new_defaults();
	cr_assert(cfg);
	cr_expect_eq(cfg->plugin_stop_timeout_ms, 3000);
	cr_expect_str_eq(cfg->plugin_restart, "never");
	kvn_config_free(cfg);

	const char *ok = "plugin_stop_timeout_ms: 0\nplugin_restart: On-Failure\n";
	cr_assert_eq(kvn_config_parse(ok, strlen(ok), "k.yaml", &cfg, err, sizeof(err)), 0, "%s",
		     err);
	cr_expect_eq(cfg->plugin_stop_timeout_ms, 0);
	cr_expect_str_eq(cfg->plugin_restart, "on-failure");
	char *json = kvn_config_to_json(cfg, true);
	assert_contains(json, "\"plugin_restart\":\"on-failure\"");
	assert_contains(json, "\"plugin_stop_timeout_ms\":0");
	free(json);
	kvn_config_free(cfg);

	const char *bad = "chunk_size: 256\nplugin_restart: always\n";
	cr_expect_eq(kvn_config_parse(bad, strlen(bad), "k.yaml", &cfg, err, sizeof(err)), -EINVAL);
	assert_contains(err, "k.yaml:2");
	assert_contains(err, "plugin_restart");
	assert_contains(err, "one of never, on-failure");
	bad = "plugin_stop_timeout_ms: -5\n";
	cr_expect_eq(kvn_config_parse(bad, strlen(bad), "k.yaml", &cfg, err, sizeof(err)), -EINVAL);
	assert_contains(err, "k.yaml:1");
	assert_contains(err, "plugin_stop_timeout_ms");

	cfg = kvn_config_new_defaults();
	char *envp[] = {"KVNODE_PLUGIN_RESTART=on-failure", "LMCACHE_PLUGIN_STOP_TIMEOUT_MS=250",
			NULL};
	cr_assert_eq(kvn_config_apply_env(cfg, envp, err, sizeof(err)), 0, "%s", err);
	cr_expect_str_eq(cfg->plugin_restart, "on-failure");
	cr_expect_eq(cfg->plugin_stop_timeout_ms, 250);
	kvn_config_free(cfg);
}
