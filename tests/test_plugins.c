/* The plugin launcher in-process (docs/architecture.md §6): targeting by file name in each role,
 * interpreters, the environment a plugin sees, its output in the log, and its lifecycle (exit,
 * restart, SIGTERM ignored). kvnode serve/scheduler/demo with plugins: test_plugins_node.c. */
#include <pthread.h>

#include "tests/plugin_fixture.h"

TestSuite(plugins, .init = setup, .fini = teardown, .timeout = 240);

/* ------------------------------------------------------------------------------------------
 * Targeting
 * ------------------------------------------------------------------------------------------ */

struct target_case {
	const char *file;
	bool scheduler, worker0, worker3; /* worker 3 of 4 */
};

/* LMCache's documentation ("Extending LMCache", docs/source/developer_guide/extending_lmcache/
 * in LMCache's repository) first, its code (lmcache/v1/plugin/runtime_plugin_launcher.py)
 * where the documentation is silent. */
static const struct target_case target_cases[] = {
    {"scheduler_report.py", true, false, false},
    {"worker_report.sh", false, true, true},
    {"worker_3_report.sh", false, false, true},
    {"worker_0_report.sh", false, true, false},
    {"worker_003_x.sh", false, false, true},
    /* worker_<N>.ext has two parts: every worker, as LMCache's code runs it */
    {"worker_3.sh", false, true, true},
    {"worker_0.py", false, true, true},
    {"all_report.sh", true, true, true},
    {"all_0_report.sh", true, true, true}, /* all_: every process, says the documentation */
    /* no role prefix: every process */
    {"report.py", true, true, true},
    {"my_tool.py", true, true, true},
    {"workers_x.sh", true, true, true},
    /* a role word alone is no prefix */
    {"scheduler.py", true, true, true},
    {"worker.sh", true, true, true},
    {"ALL.sh", true, true, true},
    /* the stem drops the last extension only */
    {"worker_1.backup.py", false, true, true},
    {"worker_3_x.tar.gz", false, false, true},
    {"scheduler_x.y.py", true, false, false},
    /* case-insensitive role words */
    {"SCHEDULER_x.py", true, false, false},
    {"Worker_3_x.sh", false, false, true},
    {"WORKER_x.sh", false, true, true},
    {"ALL_x.sh", true, true, true},
    /* non-numeric part after worker_: every worker */
    {"worker_3a_x.sh", false, true, true},
    {"worker_x_3.sh", false, true, true},
    {"worker_-3_x.sh", false, true, true},
    {"worker__x.sh", false, true, true},
    {"worker_99999999999_x.sh", false, false, false},
};

Test(plugins, each_rule_targets_the_documented_processes_in_each_role)
{
	for (size_t i = 0; i < sizeof(target_cases) / sizeof(target_cases[0]); i++) {
		const struct target_case *c = &target_cases[i];
		cr_expect_eq(kvn_plugin_targets(c->file, KVN_PLUGIN_SCHEDULER, -1), c->scheduler,
			     "%s in the scheduler", c->file);
		cr_expect_eq(kvn_plugin_targets(c->file, KVN_PLUGIN_WORKER, 0), c->worker0,
			     "%s in worker 0", c->file);
		cr_expect_eq(kvn_plugin_targets(c->file, KVN_PLUGIN_WORKER, 3), c->worker3,
			     "%s in worker 3 of 4", c->file);
	}
}

/* The same rules through the scanner: what worker 3 of 4 starts from one directory tree. */
Test(plugins, worker_3_starts_only_its_plugins_and_ignores_hidden_backup_and_special_files)
{
	const char *body = "#!/bin/sh\nexit 0\n";
	put_plugin("scheduler_a.sh", 0644, body);
	put_plugin("worker_b.sh", 0644, body);
	put_plugin("worker_3_c.sh", 0644, body);
	put_plugin("worker_0_d.sh", 0644, body);
	put_plugin("worker_3.sh", 0644, body);
	put_plugin("all_e.sh", 0644, body);
	put_plugin("f.sh", 0644, body);
	put_plugin(".hidden.sh", 0644, body);
	put_plugin("all_g.sh~", 0644, body);
	put_plugin("all_h.sh.swp", 0644, body);
	static const char *const leftovers[] = {"all_x.py.bak",      "all_x.py.orig",
						"all_x.py.rej",	     "all_x.sh.disabled",
						"all_x.sh.tmp",	     "all_x.sh.dpkg-old",
						"all_x.sh.dpkg-dist"};
	for (size_t i = 0; i < sizeof(leftovers) / sizeof(leftovers[0]); i++)
		put_plugin(leftovers[i], 0644, body);
	put_plugin("worker_0.sh", 0644, body);
	put_plugin("scheduler.sh", 0644, body);
	char sub[PATH_MAX * 2];
	snprintf(sub, sizeof(sub), "%s/nested", plugdir);
	cr_assert_eq(mkdir(sub, 0755), 0);
	put_plugin("nested/worker_3_deep.sh", 0644, body);
	put_plugin("nested/scheduler_deep.sh", 0644, body);
	snprintf(sub, sizeof(sub), "%s/all_fifo.sh", plugdir);
	cr_assert_eq(mkfifo(sub, 0644), 0);

	kvn_log_set_level(KVN_LOG_DEBUG);
	log_begin();
	struct kvn_plugins *pl = start_as(KVN_PLUGIN_WORKER, 3, 4, "");
	char *text = kvn_plugins_stats_json(pl);
	kvn_plugins_stop(pl);
	char *log = log_end();
	kvn_log_set_level(KVN_LOG_INFO);

	cJSON *root = cJSON_Parse(text);
	cr_assert(cJSON_IsArray(root));
	char names[1024] = "";
	cJSON *e;
	cJSON_ArrayForEach(e, root)
	{
		strcat(names, cJSON_GetObjectItem(e, "name")->valuestring);
		strcat(names, " ");
	}
	cr_expect_str_eq(names, "all_e.sh f.sh worker_3_deep.sh scheduler.sh worker_0.sh "
				"worker_3.sh worker_3_c.sh worker_b.sh ");
	cr_expect(!strstr(text, "\"stopped\""), "a plugin not started when start returned: %s",
		  text);
	assert_contains(log, "/.hidden.sh ignored: hidden file");
	assert_contains(log, "/all_g.sh~ ignored: backup or leftover file");
	assert_contains(log, "/all_h.sh.swp ignored: backup or leftover file");
	for (size_t i = 0; i < sizeof(leftovers) / sizeof(leftovers[0]); i++) {
		char want[128];
		snprintf(want, sizeof(want), "/%s ignored: backup or leftover file", leftovers[i]);
		assert_contains(log, want);
	}
	assert_contains(log, "worker_0.sh runs on every worker");
	assert_contains(log, "worker_<N>_<name>");
	assert_contains(log, "/all_fifo.sh ignored: not a regular file");
	cJSON_Delete(root);
	free(text);
	free(log);
}

Test(plugins, a_backup_file_named_in_plugin_locations_is_not_run_either)
{
	put_plugin("all_x.py.bak", 0644, "#!/bin/sh\nexit 0\n");
	char *text, err[1024], loc[PATH_MAX * 2];
	snprintf(loc, sizeof(loc), "%s/all_x.py.bak", plugdir);
	cr_assert(asprintf(&text, "plugin_locations: [\"%s\"]\n", loc) > 0);
	struct kvn_config *cfg;
	cr_assert_eq(kvn_config_parse(text, strlen(text), "kvnode.yaml", &cfg, err, sizeof(err)), 0,
		     "%s", err);
	free(text);
	struct kvn_plugins_opts o = {KVN_PLUGINS_OPTS_INIT, .role = KVN_PLUGIN_WORKER,
				     .worker_id = 0, .worker_count = 1};
	struct kvn_plugins *pl;
	log_begin();
	cr_assert_eq(kvn_plugins_start(cfg, &o, &pl, err, sizeof(err)), 0, "%s", err);
	char *stats = kvn_plugins_stats_json(pl);
	kvn_plugins_stop(pl);
	char *log = log_end();
	kvn_config_free(cfg);
	cr_expect_str_eq(stats, "[]");
	assert_contains(log, "is a backup or leftover file");
	free(stats);
	free(log);
}

Test(plugins, worker_count_when_configured_is_what_every_plugin_sees)
{
	put_plugin("all_count.sh", 0644,
		   "#!/bin/sh\necho \"$KVNODE_PLUGIN_WORKER_COUNT $LMCACHE_PLUGIN_WORKER_COUNT "
		   "$LMCACHE_RUNTIME_PLUGIN_WORKER_COUNT\" > count.tmp && mv count.tmp count\n");
	struct kvn_plugins *pl = start_as(KVN_PLUGIN_SCHEDULER, -1, 0, "worker_count: 16\n");
	wait_file("count");
	kvn_plugins_stop(pl);
	char *text = read_plugdir_file("count");
	cr_expect_str_eq(text, "16 16 16\n");
	free(text);
}

Test(plugins, the_scheduler_starts_scheduler_and_all_plugins_only)
{
	const char *body = "#!/bin/sh\nexit 0\n";
	put_plugin("scheduler_a.sh", 0644, body);
	put_plugin("Scheduler_b.sh", 0644, body);
	put_plugin("worker_c.sh", 0644, body);
	put_plugin("worker_0_d.sh", 0644, body);
	put_plugin("all_e.sh", 0644, body);
	struct kvn_plugins *pl = start_as(KVN_PLUGIN_SCHEDULER, -1, 4, "");
	char *text = kvn_plugins_stats_json(pl);
	kvn_plugins_stop(pl);
	assert_contains(text, "\"name\":\"scheduler_a.sh\"");
	assert_contains(text, "\"name\":\"Scheduler_b.sh\"");
	assert_contains(text, "\"name\":\"all_e.sh\"");
	cr_expect(!strstr(text, "worker_"), "worker plugins in the scheduler: %s", text);
	free(text);
}

/* ------------------------------------------------------------------------------------------
 * Interpreters
 * ------------------------------------------------------------------------------------------ */

Test(plugins, shebang_wins_over_extension_then_extension_then_executable_bit)
{
	/* Python would fail on this: only the shebang's sh can run it. */
	put_plugin("shebang.py", 0644, "#!/bin/sh -e\necho \"ran by sh\" > shebang.out\n");
	put_plugin("plain.py", 0644,
		   "import sys\nopen('plain.out', 'w').write('python%d' % "
		   "sys.version_info[0])\n");
	put_plugin("plain.sh", 0644, "echo \"bash $BASH_VERSION\" > plain_sh.out\n");
	put_plugin("notes.txt", 0644, "not a program\n");
	char src[] = "/bin/true", dst[PATH_MAX * 2];
	snprintf(dst, sizeof(dst), "%s/binary_tool", plugdir);
	size_t len;
	char *bin = proc_read_file(src, &len);
	cr_assert(bin);
	cr_assert_eq(proc_write_file(dst, bin, len), 0);
	cr_assert_eq(chmod(dst, 0755), 0);
	free(bin);
	put_plugin("noshebang_tool", 0755, "echo a script without a #! line\n");
	put_plugin("missing_interp.sh", 0644, "#!/nonexistent/kvn-interp\n");
	put_plugin("missing_env.py", 0644, "#!/usr/bin/env kvn-no-such-python9\n");

	log_begin();
	struct kvn_plugins *pl = start_as(KVN_PLUGIN_WORKER, 0, 1, "");
	wait_state(pl, "shebang.py", "exited");
	wait_state(pl, "plain.py", "exited");
	wait_state(pl, "plain.sh", "exited");
	wait_state(pl, "binary_tool", "exited");
	wait_state(pl, "noshebang_tool", "failed");
	char buf[32];
	cr_expect_str_eq(state_of(pl, "missing_interp.sh", buf, sizeof(buf)), "not-started");
	cr_expect_str_eq(state_of(pl, "missing_env.py", buf, sizeof(buf)), "not-started");
	cr_expect_str_eq(state_of(pl, "notes.txt", buf, sizeof(buf)), "(absent)");
	kvn_plugins_stop(pl);
	char *log = log_end();

	char *out = read_plugdir_file("shebang.out");
	cr_expect_str_eq(out, "ran by sh\n");
	free(out);
	out = read_plugdir_file("plain.out");
	cr_expect_str_eq(out, "python3");
	free(out);
	out = read_plugdir_file("plain_sh.out");
	cr_expect(!strncmp(out, "bash ", 5) && strlen(out) > 7, "plain.sh ran by: %s", out);
	free(out);
	assert_contains(log, "notes.txt skipped: no #! line, no known extension");
	assert_contains(log, "[plugin noshebang_tool] kvnode: cannot execute ");
	assert_contains(log, "not a program the kernel runs (add a #! line)");
	assert_contains(log, "[plugin noshebang_tool] exited with status 127");
	assert_contains(log, "interpreter \"/nonexistent/kvn-interp\" not found");
	assert_contains(log, "interpreter \"kvn-no-such-python9\" not found");
	free(log);
}

/* ------------------------------------------------------------------------------------------
 * Environment
 * ------------------------------------------------------------------------------------------ */

Test(plugins, plugin_sees_both_prefixes_redacted_config_its_settings_cwd_and_null_stdin)
{
	put_plugin("worker_3_env.py", 0644,
		   "import json, os, sys\n"
		   "e = {k: v for k, v in os.environ.items() if 'PLUGIN' in k}\n"
		   "e['cwd'] = os.getcwd()\n"
		   "e['unbuffered'] = os.environ.get('PYTHONUNBUFFERED', '')\n"
		   "e['stdin'] = sys.stdin.read()\n"
		   "json.dump(e, open('env.json.tmp', 'w'))\n"
		   "os.rename('env.json.tmp', 'env.json')\n");
	struct kvn_plugins *pl = start_as(
	    KVN_PLUGIN_WORKER, 3, 4,
	    "auth_token: s3cr3t-token\n"
	    "remote_url: \"redis://user:hunter2@127.0.0.1:6379\"\n"
	    "extra_config:\n  plugin.worker_3_env.interval: 5\n  plugin.other.interval: 9\n");
	wait_file("env.json");
	wait_state(pl, "worker_3_env.py", "exited");
	kvn_plugins_stop(pl);

	char *text = read_plugdir_file("env.json");
	cr_assert(!strstr(text, "s3cr3t-token") && !strstr(text, "hunter2"),
		  "a secret reached the plugin: %s", text);
	cJSON *env = cJSON_Parse(text);
	cr_assert(env, "not JSON: %s", text);
	static const char *const pre[] = {"KVNODE_PLUGIN_", "LMCACHE_PLUGIN_",
					  "LMCACHE_RUNTIME_PLUGIN_"};
	for (int k = 0; k < 3; k++) {
		char name[64];
		snprintf(name, sizeof(name), "%sROLE", pre[k]);
		cr_assert(cJSON_GetObjectItem(env, name), "no %s", name);
		cr_expect_str_eq(cJSON_GetObjectItem(env, name)->valuestring, "WORKER");
		snprintf(name, sizeof(name), "%sWORKER_ID", pre[k]);
		cr_expect_str_eq(cJSON_GetObjectItem(env, name)->valuestring, "3");
		snprintf(name, sizeof(name), "%sWORKER_COUNT", pre[k]);
		cr_expect_str_eq(cJSON_GetObjectItem(env, name)->valuestring, "4");
		snprintf(name, sizeof(name), "%sCONFIG", pre[k]);
		cJSON *cfg = cJSON_Parse(cJSON_GetObjectItem(env, name)->valuestring);
		cr_assert(cJSON_IsObject(cfg), "%s is not a JSON object", name);
		cr_expect_str_eq(cJSON_GetObjectItem(cfg, "auth_token")->valuestring, "***");
		cr_expect_str_eq(cJSON_GetObjectItem(cfg, "remote_url")->valuestring,
				 "redis://user:***@127.0.0.1:6379");
		cJSON *pc = cJSON_GetObjectItem(cfg, "plugin_config");
		cr_expect_str_eq(cJSON_GetObjectItem(pc, "interval")->valuestring, "5");
		cr_expect_eq(cJSON_GetArraySize(pc), 1, "only its own settings");
		cJSON_Delete(cfg);
	}
	cr_expect_str_eq(cJSON_GetObjectItem(env, "cwd")->valuestring, plugdir);
	cr_expect_str_eq(cJSON_GetObjectItem(env, "stdin")->valuestring, "");
	if (!getenv("PYTHONUNBUFFERED"))
		cr_expect_str_eq(cJSON_GetObjectItem(env, "unbuffered")->valuestring, "1");
	cJSON_Delete(env);
	free(text);
}

/* ------------------------------------------------------------------------------------------
 * Output
 * ------------------------------------------------------------------------------------------ */

Test(plugins, output_lines_are_logged_with_prefix_by_stream_none_lost_long_lines_split)
{
	/* 1 MiB line of two-byte characters: a split may never cut one in half. */
	put_plugin("all_out.py", 0644,
		   "import sys\n"
		   "for i in range(200):\n"
		   "    print('out %d' % i, flush=True)\n"
		   "    print('err %d' % i, file=sys.stderr, flush=True)\n"
		   "sys.stdout.write('big:' + '\\u00e9' * (512 * 1024) + ':end\\n')\n"
		   "sys.stdout.write('tail without newline')\n");
	log_begin();
	struct kvn_plugins *pl = start_as(KVN_PLUGIN_WORKER, 0, 1, "");
	wait_state(pl, "all_out.py", "exited");
	kvn_plugins_stop(pl);
	char *log = log_end();

	const char *pfx = "[plugin all_out.py] ";
	int next_out = 0, next_err = 0;
	size_t big = 0;
	bool big_end = false, tail = false;
	for (char *line = strtok(log, "\n"); line; line = strtok(NULL, "\n")) {
		char *m = strstr(line, pfx);
		if (!m)
			continue;
		m += strlen(pfx);
		int i;
		if (sscanf(m, "out %d", &i) == 1) {
			cr_expect(strstr(line, " info "), "stdout not at info: %s", line);
			cr_expect_eq(i, next_out++, "stdout line out of order: %s", line);
		} else if (sscanf(m, "err %d", &i) == 1) {
			cr_expect(strstr(line, " warn "), "stderr not at warning: %s", line);
			cr_expect_eq(i, next_err++, "stderr line out of order: %s", line);
		} else if (!strncmp(m, "big:", 4) || !strncmp(m, "\xc3\xa9", 2)) {
			char *p = m + (m[0] == 'b' ? 4 : 0);
			for (; !strncmp(p, "\xc3\xa9", 2); p += 2)
				big++;
			if (!strcmp(p, ":end"))
				big_end = true;
			else
				cr_expect_eq(*p, '\0',
					     "a piece of the long line split badly: %.40s", p);
		} else if (!strcmp(m, "tail without newline")) {
			tail = true;
		}
	}
	cr_expect_eq(next_out, 200);
	cr_expect_eq(next_err, 200);
	cr_expect_eq(big, 512 * 1024, "characters of the 1 MiB line logged: %zu", big);
	cr_expect(big_end);
	cr_expect(tail, "the partial last line was not flushed");
	free(log);
	log = proc_read_file(logpath, NULL);
	assert_contains(log, "[plugin all_out.py] exited with status 0");
	free(log);
}

static void *
drain_fd(void *arg)
{
	int fd = *(int *)arg;
	char buf[65536];
	size_t cap = 1 << 20, len = 0;
	char *text = calloc(1, cap + 1);
	for (ssize_t n; (n = read(fd, buf, sizeof(buf))) > 0;) {
		size_t keep = (size_t)n < cap - len ? (size_t)n : cap - len;
		memcpy(text + len, buf, keep); /* the first MiB is enough to look at */
		len += keep;
	}
	return text;
}

/* The node's stderr is a pipe nobody reads: the logger is stuck, yet the plugin runs to its
 * end and what did not fit is dropped and counted. */
Test(plugins, a_plugin_flooding_a_stuck_log_never_blocks_lines_are_dropped_and_counted)
{
	put_plugin("all_flood.py", 0644,
		   "import sys\n"
		   "for i in range(6):\n"
		   "    sys.stdout.write(('x' * 99 + '\\n') * 40000)\n"
		   "print('flood done', flush=True)\n");
	int pfd[2];
	cr_assert_eq(pipe(pfd), 0);
	saved_stderr = dup(STDERR_FILENO);
	dup2(pfd[1], STDERR_FILENO);
	close(pfd[1]);
	struct kvn_plugins *pl = start_as(KVN_PLUGIN_WORKER, 0, 1, "");
	wait_state(pl, "all_flood.py", "exited");
	double dropped = num_of(pl, "all_flood.py", "dropped_lines");
	/* From now on the log goes to a file; the pipe's last writer is the stuck logger. */
	int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
	cr_assert(fd >= 0);
	dup2(fd, STDERR_FILENO);
	close(fd);
	pthread_t reader;
	cr_assert_eq(pthread_create(&reader, NULL, drain_fd, &pfd[0]), 0);
	kvn_plugins_stop(pl);
	char *head;
	pthread_join(reader, (void **)&head);
	close(pfd[0]);
	char *log = log_end();
	cr_expect_gt(dropped, 0, "24 MB of output should not fit a stuck log");
	cr_expect_lt(dropped, 240000);
	assert_contains(log, "[plugin all_flood.py] ");
	assert_contains(log, " lines of output dropped: the log could not keep up");
	assert_contains(log, "[plugin all_flood.py] exited with status 0");
	free(log);
	free(head);
}

/* ------------------------------------------------------------------------------------------
 * Lifecycle
 * ------------------------------------------------------------------------------------------ */

Test(plugins, a_plugin_that_exits_at_once_is_reported_and_not_restarted_by_default)
{
	put_plugin("all_quick.sh", 0644, "exit 3\n");
	log_begin();
	struct kvn_plugins *pl = start_as(KVN_PLUGIN_WORKER, 0, 1, "");
	wait_state(pl, "all_quick.sh", "failed");
	cr_expect_eq(num_of(pl, "all_quick.sh", "exit_code"), 3);
	cr_expect_eq(num_of(pl, "all_quick.sh", "restarts"), 0);
	kvn_plugins_stop(pl);
	char *log = log_end();
	assert_contains(log, "[plugin all_quick.sh] exited with status 3");
	free(log);
}

/* With SIGCHLD ignored the kernel reaps plugins itself: the launcher must still see them end
 * (and not spin on a pidfd that stays readable). */
Test(plugins, a_plugin_is_seen_ending_when_the_process_ignores_sigchld)
{
	signal(SIGCHLD, SIG_IGN);
	put_plugin("all_brief.sh", 0644, "exit 0\n");
	log_begin();
	struct kvn_plugins *pl = start_as(KVN_PLUGIN_WORKER, 0, 1, "");
	wait_state(pl, "all_brief.sh", "exited");
	kvn_plugins_stop(pl);
	char *log = log_end();
	assert_contains(log, "[plugin all_brief.sh] ended; its exit status is lost");
	free(log);
}

static bool
ran_twice(void *arg)
{
	(void)arg;
	char path[PATH_MAX * 2];
	snprintf(path, sizeof(path), "%s/runs.txt", plugdir);
	char *runs = proc_read_file(path, NULL);
	bool twice = runs && !strncmp(runs, "run\nrun\n", 8);
	free(runs);
	return twice;
}

Test(plugins, on_failure_restarts_a_failed_plugin_after_a_back_off)
{
	put_plugin("all_flaky.sh", 0644, "echo run >> runs.txt\nexit 1\n");
	log_begin();
	struct kvn_plugins *pl = start_as(KVN_PLUGIN_WORKER, 0, 1, "plugin_restart: on-failure\n");
	cr_assert(proc_wait_for(ran_twice, NULL, DEADLINE), "never restarted");
	cr_expect_geq(num_of(pl, "all_flaky.sh", "restarts"), 1);
	kvn_plugins_stop(pl);
	char *log = log_end();
	assert_contains(log, "[plugin all_flaky.sh] exited with status 1");
	assert_contains(log, "[plugin all_flaky.sh] restarting in 1.0 s");
	free(log);
}

Test(plugins, stop_kills_a_plugin_that_ignores_sigterm_after_the_grace_period)
{
	put_plugin("all_stubborn.sh", 0644,
		   "trap '' TERM\necho $$ > stubborn.tmp\nmv stubborn.tmp stubborn.pid\n"
		   "while :; do sleep 0.1; done\n");
	/* pid files appear by rename, so the test never reads one half-written */
	put_plugin("all_polite.sh", 0644,
		   "echo $$ > polite.tmp\nmv polite.tmp polite.pid\nwhile :; do sleep 0.1; done\n");
	log_begin();
	struct kvn_plugins *pl = start_as(KVN_PLUGIN_WORKER, 0, 1, "plugin_stop_timeout_ms: 300\n");
	wait_file("stubborn.pid");
	wait_file("polite.pid");
	char *text = read_plugdir_file("stubborn.pid");
	pid_t stubborn = atoi(text);
	free(text);
	text = read_plugdir_file("polite.pid");
	pid_t polite = atoi(text);
	free(text);
	cr_assert_eq(num_of(pl, "all_stubborn.sh", "pid"), stubborn);
	kvn_plugins_stop(pl);
	char *log = log_end();
	cr_expect(pid_gone(&stubborn), "plugin %d still runs after stop", (int)stubborn);
	cr_expect(pid_gone(&polite), "plugin %d still runs after stop", (int)polite);
	assert_contains(log, "[plugin all_stubborn.sh] killed by signal 9");
	assert_contains(log, "[plugin all_polite.sh] killed by signal 15");
	free(log);
}
