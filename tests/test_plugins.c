/* The plugin launcher (DESIGN.md §6): targeting by file name in each role, interpreters, the
 * environment a plugin sees, its output in the log, its lifecycle (exit, restart, SIGTERM
 * ignored, no orphan after the node is SIGKILLed) and the config keys that steer it. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvnode/plugin.h"
#include "node/config.h"
#include "node/log.h"
#include "tests/helpers/proc.h"

#define KVNODE	 KVN_BINARY_DIR "/kvnode"
#define DEADLINE 60000 /* ms: generous, for a loaded 2-core machine under sanitizers */

static char dir[PATH_MAX], plugdir[PATH_MAX + 16], logpath[PATH_MAX + 16];
/* The node must not pick up the developer's own config or socket. */
static const char *const clean_env[] = {"KVNODE_CONFIG_FILE", "LMCACHE_CONFIG_FILE",
					"KVNODE_SOCKET", NULL};
static int saved_stderr = -1;

static void
setup(void)
{
	unsetenv("KVNODE_CONFIG_FILE");
	unsetenv("LMCACHE_CONFIG_FILE");
	cr_assert_eq(proc_mkdtemp("plugins", dir, sizeof(dir)), 0, "mkdtemp: %s", strerror(errno));
	snprintf(plugdir, sizeof(plugdir), "%s/plugins", dir);
	snprintf(logpath, sizeof(logpath), "%s/node.log", dir);
	cr_assert_eq(mkdir(plugdir, 0755), 0);
}

static void
teardown(void)
{
	if (saved_stderr >= 0) {
		dup2(saved_stderr, STDERR_FILENO);
		close(saved_stderr);
		saved_stderr = -1;
	}
	proc_rm_tree(dir);
}

TestSuite(plugins, .init = setup, .fini = teardown, .timeout = 240);

/* ------------------------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------------------------ */

static void
put_plugin(const char *name, mode_t mode, const char *text)
{
	char path[PATH_MAX * 2];
	snprintf(path, sizeof(path), "%s/%s", plugdir, name);
	cr_assert_eq(proc_write_file(path, text, strlen(text)), 0, "writing %s", path);
	cr_assert_eq(chmod(path, mode), 0);
}

/* The node's log (our stderr) goes to logpath until log_end. */
static void
log_begin(void)
{
	int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
	cr_assert(fd >= 0);
	saved_stderr = dup(STDERR_FILENO);
	dup2(fd, STDERR_FILENO);
	close(fd);
}

static char *
log_end(void)
{
	dup2(saved_stderr, STDERR_FILENO);
	close(saved_stderr);
	saved_stderr = -1;
	char *text = proc_read_file(logpath, NULL);
	cr_assert(text, "reading %s", logpath);
	return text;
}

static struct kvn_config *
config_with(const char *extra)
{
	char *text, err[1024];
	struct kvn_config *cfg;
	cr_assert(asprintf(&text, "plugin_locations: [\"%s\"]\n%s", plugdir, extra) > 0);
	cr_assert_eq(kvn_config_parse(text, strlen(text), "kvnode.yaml", &cfg, err, sizeof(err)), 0,
		     "config: %s", err);
	free(text);
	return cfg;
}

static struct kvn_plugins *
start_as(enum kvn_plugin_role role, int id, int count, const char *extra)
{
	struct kvn_config *cfg = config_with(extra);
	struct kvn_plugins_opts o = {.role = role, .worker_id = id, .worker_count = count};
	struct kvn_plugins *pl;
	char err[1024];
	cr_assert_eq(kvn_plugins_start(cfg, &o, &pl, err, sizeof(err)), 0, "start: %s", err);
	kvn_config_free(cfg);
	return pl;
}

/* The stat entry of plugin `name` (a cJSON the caller deletes with its root), or NULL. */
static cJSON *
stat_of(struct kvn_plugins *pl, const char *name, cJSON **root)
{
	char *text = kvn_plugins_stats_json(pl);
	cr_assert(text);
	*root = cJSON_Parse(text);
	free(text);
	cr_assert(cJSON_IsArray(*root));
	cJSON *e;
	cJSON_ArrayForEach(e, *root)
	{
		cJSON *n = cJSON_GetObjectItem(e, "name");
		if (cJSON_IsString(n) && !strcmp(n->valuestring, name))
			return e;
	}
	return NULL;
}

static const char *
state_of(struct kvn_plugins *pl, const char *name, char *buf, size_t len)
{
	cJSON *root, *e = stat_of(pl, name, &root);
	cJSON *s = e ? cJSON_GetObjectItem(e, "state") : NULL;
	snprintf(buf, len, "%s", cJSON_IsString(s) ? s->valuestring : "(absent)");
	cJSON_Delete(root);
	return buf;
}

static double
num_of(struct kvn_plugins *pl, const char *name, const char *field)
{
	cJSON *root, *e = stat_of(pl, name, &root);
	cJSON *v = e ? cJSON_GetObjectItem(e, field) : NULL;
	double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
	cJSON_Delete(root);
	return d;
}

struct wait_ctx {
	struct kvn_plugins *pl;
	const char *name, *state;
};

static bool
has_state(void *arg)
{
	struct wait_ctx *w = arg;
	char buf[32];
	return !strcmp(state_of(w->pl, w->name, buf, sizeof(buf)), w->state);
}

static void
wait_state(struct kvn_plugins *pl, const char *name, const char *state)
{
	struct wait_ctx w = {pl, name, state};
	char buf[32];
	cr_assert(proc_wait_for(has_state, &w, DEADLINE), "plugin %s: state %s, expected %s", name,
		  state_of(pl, name, buf, sizeof(buf)), state);
}

static bool
file_exists(void *path)
{
	return access(path, F_OK) == 0;
}

static void
wait_file(const char *name)
{
	char path[PATH_MAX * 2];
	snprintf(path, sizeof(path), "%s/%s", plugdir, name);
	cr_assert(proc_wait_for(file_exists, path, DEADLINE), "%s never appeared", path);
}

static char *
read_plugdir_file(const char *name)
{
	char path[PATH_MAX * 2];
	snprintf(path, sizeof(path), "%s/%s", plugdir, name);
	char *text = proc_read_file(path, NULL);
	cr_assert(text, "reading %s", path);
	return text;
}

static void
assert_contains(const char *hay, const char *needle)
{
	cr_assert(hay && strstr(hay, needle), "expected \"%s\" in:\n%.4000s", needle,
		  hay ? hay : "(null)");
}

/* Gone: kill(pid, 0) says ESRCH, or it is a zombie nobody here can reap (its new parent's
 * business: a container's init may be slow to reap, and a zombie runs no code). */
static bool
pid_gone(void *arg)
{
	pid_t pid = *(pid_t *)arg;
	if (kill(pid, 0) && errno == ESRCH)
		return true;
	char path[64], *stat;
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	stat = proc_read_file(path, NULL);
	const char *close_paren = stat ? strrchr(stat, ')') : NULL;
	bool zombie = close_paren && close_paren[1] == ' ' && close_paren[2] == 'Z';
	free(stat);
	return zombie;
}

/* ------------------------------------------------------------------------------------------
 * Targeting
 * ------------------------------------------------------------------------------------------ */

struct target_case {
	const char *file;
	bool scheduler, worker0, worker3; /* worker 3 of 4 */
};

static const struct target_case target_cases[] = {
    {"scheduler_report.py", true, false, false},
    {"worker_report.sh", false, true, true},
    {"worker_3_report.sh", false, false, true},
    {"worker_0_report.sh", false, true, false},
    {"worker_3.sh", false, false, true},
    {"worker_0.py", false, true, false},
    {"worker_003_x.sh", false, false, true},
    {"all_report.sh", true, true, true},
    {"report.py", true, true, true},
    {"my_tool.py", true, true, true},
    {"workers_x.sh", true, true, true},
    /* case-insensitive role words */
    {"SCHEDULER_x.py", true, false, false},
    {"Worker_3_x.sh", false, false, true},
    {"WORKER_x.sh", false, true, true},
    {"ALL_x.sh", true, true, true},
    /* non-numeric part after worker_: every worker */
    {"worker_3a_x.sh", false, true, true},
    {"worker_x_3.sh", false, true, true},
    {"worker_-3_x.sh", false, true, true},
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
	cr_expect_str_eq(names, "all_e.sh f.sh worker_3_deep.sh worker_3.sh worker_3_c.sh "
				"worker_b.sh ");
	cr_expect(!strstr(text, "\"stopped\""), "a plugin not started when start returned: %s",
		  text);
	assert_contains(log, "/.hidden.sh ignored: hidden file");
	assert_contains(log, "/all_g.sh~ ignored: editor backup file");
	assert_contains(log, "/all_h.sh.swp ignored: editor backup file");
	assert_contains(log, "/all_fifo.sh ignored: not a regular file");
	cJSON_Delete(root);
	free(text);
	free(log);
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
	put_plugin("missing_interp.sh", 0644, "#!/nonexistent/kvn-interp\n");
	put_plugin("missing_env.py", 0644, "#!/usr/bin/env kvn-no-such-python9\n");

	log_begin();
	struct kvn_plugins *pl = start_as(KVN_PLUGIN_WORKER, 0, 1, "");
	wait_state(pl, "shebang.py", "exited");
	wait_state(pl, "plain.py", "exited");
	wait_state(pl, "plain.sh", "exited");
	wait_state(pl, "binary_tool", "exited");
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
	static const char *const pre[] = {"KVNODE_PLUGIN_", "LMCACHE_PLUGIN_"};
	for (int k = 0; k < 2; k++) {
		char name[64];
		snprintf(name, sizeof(name), "%sROLE", pre[k]);
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
		   "trap '' TERM\necho $$ > stubborn.pid\nwhile :; do sleep 0.1; done\n");
	put_plugin("all_polite.sh", 0644, "echo $$ > polite.pid\nwhile :; do sleep 0.1; done\n");
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
Test(plugins, no_plugin_or_plugin_child_outlives_a_node_killed_with_sigkill)
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

static bool
log_has_all(void *arg)
{
	const char *const *want = arg;
	char *log = proc_read_file(logpath, NULL);
	bool all = log != NULL;
	for (; all && *want; want++)
		all = strstr(log, *want) != NULL;
	free(log);
	return all;
}

/* `kvnode scheduler` starts the scheduler's plugins (and not the workers'), stops them with
 * itself. */
Test(plugins, kvnode_scheduler_runs_scheduler_plugins_only)
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
	struct proc_opts po = {.stderr_path = logpath, .env = env};
	struct proc sched = {0};
	cr_assert_eq(proc_spawn(&sched, argv, &po), 0);
	wait_file("sched.txt");
	const char *const want[] = {"[plugin scheduler_hello.sh] scheduler plugin up", NULL};
	cr_expect(proc_wait_for(log_has_all, (void *)want, DEADLINE), "no scheduler plugin output");
	char *role = read_plugdir_file("sched.txt");
	cr_expect_str_eq(role, "SCHEDULER -1\n");
	free(role);
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
Test(plugins, example_plugins_run_beside_a_real_node_and_stop_with_it)
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

Test(plugins, the_demo_shows_a_plugins_prefixed_output)
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

Test(plugins, config_keys_have_defaults_and_are_checked)
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
