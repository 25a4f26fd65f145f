/* SIGHUP on a real `kvnode serve`: the config file is re-read; log_level and the plugin
 * policy change at once, other changed keys are named as needing a restart, and a file that
 * no longer loads is reported with file:line while the node runs on with its old config. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests/helpers/proc.h"

#define KVNODE	 KVN_BINARY_DIR "/kvnode"
#define DEADLINE 60000 /* ms: generous, for a loaded 2-core machine under sanitizers */

static const char *const clean_env[] = {"KVNODE_CONFIG_FILE", "LMCACHE_CONFIG_FILE",
					"KVNODE_SOCKET", "KVNODE_LOG_LEVEL", NULL};
static char dir[256], cfg[PATH_MAX], sock[PATH_MAX], logpath[PATH_MAX];
static struct proc node;

static void
setup(void)
{
	cr_assert_eq(access(KVNODE, X_OK), 0, "%s is not built", KVNODE);
	cr_assert_eq(proc_mkdtemp("reload", dir, sizeof(dir)), 0);
	snprintf(cfg, sizeof(cfg), "%s/kvnode.yaml", dir);
	snprintf(sock, sizeof(sock), "%s/kvnode.sock", dir);
	snprintf(logpath, sizeof(logpath), "%s/kvnode.log", dir);
}

static void
teardown(void)
{
	if (node.pid)
		proc_stop(&node, SIGTERM, 20000);
	proc_rm_tree(dir);
}

TestSuite(reload, .init = setup, .fini = teardown, .timeout = 180);

/* The file: the fixed part (socket, a small cpu tier) and then extra. */
static void
write_cfg(const char *extra)
{
	char *text;
	cr_assert(asprintf(&text, "socket_path: %s\nhugepages: false\n%s", sock, extra) > 0);
	cr_assert_eq(proc_write_file(cfg, text, strlen(text)), 0);
	free(text);
}

static void
serve(const char *extra)
{
	write_cfg(extra);
	const char *argv[] = {KVNODE, "serve", "-c", cfg, NULL};
	struct proc_opts po = {.stderr_path = logpath, .env = clean_env};
	cr_assert_eq(proc_spawn(&node, argv, &po), 0);
	cr_assert(proc_wait_for(proc_cond_socket_accepts, sock, DEADLINE), "node never served");
}

static int
cli(const char *const args[], const char *out)
{
	const char *argv[12] = {KVNODE};
	size_t n = 1;
	for (; args[n - 1]; n++)
		argv[n] = args[n - 1];
	argv[n++] = "--node";
	argv[n++] = sock;
	argv[n] = NULL;
	struct proc_opts po = {.stdout_path = out, .env = clean_env};
	return proc_run(argv, &po, DEADLINE);
}

static void
put(const char *key)
{
	char value[PATH_MAX];
	snprintf(value, sizeof(value), "%s/value", dir);
	cr_assert_eq(proc_write_file(value, "0123456789", 10), 0);
	cr_assert_eq(cli((const char *[]){"put", key, value, NULL}, NULL), 0, "put %s failed", key);
}

static bool
log_has(void *text)
{
	char *log = proc_read_file(logpath, NULL);
	bool has = log && strstr(log, text);
	free(log);
	return has;
}

/* Waits for the n-th "SIGHUP: re-read" or "does not load" line after sending SIGHUP. */
static void
hup_and_wait(const char *line)
{
	cr_assert_eq(kill(node.pid, SIGHUP), 0);
	cr_assert(proc_wait_for(log_has, (void *)line, DEADLINE),
		  "no \"%s\" in the log after SIGHUP:\n%s", line, proc_read_file(logpath, NULL));
	cr_assert(proc_alive(&node), "the node died on SIGHUP");
}

Test(reload, sighup_applies_log_level_at_once_and_names_keys_that_need_a_restart)
{
	serve("log_level: warn\nmax_local_cpu_size: 0.05\n");
	put("quiet-key");
	write_cfg("log_level: debug\nmax_local_cpu_size: 0.06\n");
	hup_and_wait("SIGHUP: re-read");
	put("loud-key");
	/* Debug logs each client as it connects, by the name `kvnode put KEY` gives it: only the
	 * put after the reload shows. */
	cr_assert(proc_wait_for(log_has, "kvnode put loud-key", DEADLINE),
		  "debug level not applied");
	char *log = proc_read_file(logpath, NULL);
	cr_expect(strstr(log, "log_level is now debug"), "%s", log);
	cr_expect(strstr(log, "max_local_cpu_size changed: needs a restart"), "%s", log);
	cr_expect(strstr(log, "kvnode.yaml:4"), "the changed key's file:line: %s", log);
	cr_expect(strstr(log, "1 change applied, 1 needs a restart"), "%s", log);
	cr_expect_not(strstr(log, "kvnode put quiet-key"), "logged at debug before the reload: %s",
		      log);
	cr_expect_not(strstr(log, "socket_path changed"), "unchanged keys are not named: %s", log);
	free(log);
}

Test(reload, a_file_that_no_longer_loads_is_reported_with_file_line_and_the_node_runs_on)
{
	serve("log_level: warn\nmax_local_cpu_size: 0.05\n");
	write_cfg("log_level: [debug\n");
	hup_and_wait("the config does not load");
	char *log = proc_read_file(logpath, NULL);
	cr_expect(strstr(log, "kvnode.yaml:"), "the message should name file:line: %s", log);
	free(log);
	put("still-serving");
	cr_expect_not(log_has("kvnode put still-serving"), "log_level must stay warn");
	/* A later good file still applies. */
	write_cfg("log_level: debug\nmax_local_cpu_size: 0.05\n");
	hup_and_wait("SIGHUP: re-read");
	put("after-fix");
	cr_expect(proc_wait_for(log_has, "kvnode put after-fix", DEADLINE),
		  "the fixed file was not applied");
}

struct restarts {
	const char *out;
	int at_least;
};

static bool
plugin_restarted(void *ctx)
{
	struct restarts *r = ctx;
	if (cli((const char *[]){"stat", "--json", NULL}, r->out))
		return false;
	char *s = proc_read_file(r->out, NULL);
	cJSON *root = s ? cJSON_Parse(s) : NULL;
	cJSON *p = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "plugins"), 0);
	cJSON *n = cJSON_GetObjectItem(p, "restarts");
	bool ok = cJSON_IsNumber(n) && n->valueint >= r->at_least;
	cJSON_Delete(root);
	free(s);
	return ok;
}

Test(reload, plugin_restart_changed_by_sighup_restarts_a_plugin_that_fails_afterwards)
{
	char plugdir[300], plug[340], crash[300], script[700], extra[800];
	snprintf(plugdir, sizeof(plugdir), "%s/plugins", dir);
	cr_assert_eq(mkdir(plugdir, 0755), 0);
	snprintf(crash, sizeof(crash), "%s/crash", dir);
	snprintf(plug, sizeof(plug), "%s/worker_crasher.sh", plugdir);
	/* Fails (exit 3) once the test creates the crash file, and only then. */
	snprintf(script, sizeof(script),
		 "while [ ! -e %s ]; do sleep 0.1; done\nrm -f %s\nexit 3\n", crash, crash);
	cr_assert_eq(proc_write_file(plug, script, strlen(script)), 0);
	snprintf(extra, sizeof(extra),
		 "log_level: info\nplugin_restart: never\nplugin_locations: [\"%s\"]\n", plugdir);
	serve(extra);
	snprintf(extra, sizeof(extra),
		 "log_level: info\nplugin_restart: on-failure\nplugin_locations: [\"%s\"]\n",
		 plugdir);
	write_cfg(extra);
	hup_and_wait("plugin_restart on-failure");
	cr_assert_eq(proc_write_file(crash, "", 0), 0);
	char out[PATH_MAX];
	snprintf(out, sizeof(out), "%s/stat.json", dir);
	struct restarts r = {out, 1};
	cr_expect(proc_wait_for(plugin_restarted, &r, DEADLINE),
		  "the failed plugin was not restarted under the reloaded plugin_restart: %s",
		  proc_read_file(logpath, NULL));
}

static bool
scheduler_listening(void *out)
{
	char *s = proc_read_file(out, NULL);
	bool on = s && strstr(s, "scheduler on");
	free(s);
	return on;
}

Test(reload, the_scheduler_applies_log_level_on_sighup_and_keeps_running)
{
	write_cfg("log_level: warn\nheartbeat_ms: 500\n");
	const char *argv[] = {KVNODE, "scheduler", "-c", cfg, "--listen", "127.0.0.1:0", NULL};
	char out[PATH_MAX];
	snprintf(out, sizeof(out), "%s/scheduler.out", dir);
	struct proc_opts po = {.stdout_path = out, .stderr_path = logpath, .env = clean_env};
	cr_assert_eq(proc_spawn(&node, argv, &po), 0);
	cr_assert(proc_wait_for(scheduler_listening, out, DEADLINE), "scheduler never listened");
	write_cfg("log_level: info\nheartbeat_ms: 200\n");
	hup_and_wait("SIGHUP: re-read");
	char *log = proc_read_file(logpath, NULL);
	cr_expect(strstr(log, "scheduler: log_level is now info"), "%s", log);
	cr_expect(strstr(log, "heartbeat_ms changed: needs a restart"), "%s", log);
	free(log);
}

/* The node exited (reaped) within the deadline. */
static bool
node_exited(void *unused)
{
	(void)unused;
	return !proc_alive(&node);
}

static bool
file_exists(void *path)
{
	return access(path, F_OK) == 0;
}

/* A plugin that ignores SIGTERM keeps the shutdown busy for plugin_stop_timeout_ms: a SIGHUP
 * sent then must not re-read or apply anything (it used to: the launcher it applied to was then
 * freed while the signal thread still ran, a use-after-free on the next SIGHUP). */
Test(reload, a_sighup_during_shutdown_is_ignored_and_never_applied)
{
	char plugdir[300], plug[340], pidf[300], script[1200], extra[800];
	snprintf(plugdir, sizeof(plugdir), "%s/plugins", dir);
	cr_assert_eq(mkdir(plugdir, 0755), 0);
	snprintf(pidf, sizeof(pidf), "%s/stubborn.pid", dir);
	snprintf(plug, sizeof(plug), "%s/worker_stubborn.sh", plugdir);
	snprintf(script, sizeof(script), "trap '' TERM\necho $$ > %s.tmp\nmv %s.tmp %s\n"
		 "while :; do sleep 0.1; done\n", pidf, pidf, pidf);
	cr_assert_eq(proc_write_file(plug, script, strlen(script)), 0);
	snprintf(extra, sizeof(extra),
		 "plugin_stop_timeout_ms: 4000\nplugin_locations: [\"%s\"]\n", plugdir);
	serve(extra);
	cr_assert(proc_wait_for(file_exists, pidf, DEADLINE), "the plugin never ran");

	cr_assert_eq(kill(node.pid, SIGTERM), 0);
	cr_assert(proc_wait_for(log_has, "shutting down", DEADLINE), "no shutdown in the log");
	snprintf(extra, sizeof(extra),
		 "log_level: debug\nplugin_restart: on-failure\nplugin_locations: [\"%s\"]\n",
		 plugdir);
	write_cfg(extra);
	for (int i = 0; i < 3 && proc_alive(&node); i++)
		kill(node.pid, SIGHUP);
	cr_assert(proc_wait_for(node_exited, NULL, DEADLINE), "the node did not exit");
	char *log = proc_read_file(logpath, NULL);
	cr_expect(strstr(log, "SIGHUP during shutdown: ignored"), "%s", log);
	cr_expect_not(strstr(log, "SIGHUP: re-read"), "reloaded while shutting down:\n%s", log);
	cr_expect_not(strstr(log, "log_level is now"), "%s", log);
	free(log);
}

/* A reload is never in the way of a stop: a SIGHUP with a file whose aliases expand without
 * end (it used to keep the signal thread parsing for hours) is refused, and SIGTERM ends the
 * node as usual. */
Test(reload, a_sighup_with_an_alias_bomb_is_refused_and_sigterm_still_stops_the_node)
{
	serve("log_level: info\n");
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	fprintf(f, "socket_path: %s\nhugepages: false\nextra_config:\n  l0: &l0 {}\n", sock);
	for (int i = 1; i < 16; i++)
		fprintf(f, "  l%d: &l%d {a: *l%d, b: *l%d, c: *l%d, d: *l%d, e: *l%d, f: *l%d}\n",
			i, i, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1);
	cr_assert_eq(fclose(f), 0);
	cr_assert_eq(proc_write_file(cfg, text, len), 0);
	free(text);
	cr_assert_eq(kill(node.pid, SIGHUP), 0);
	cr_assert_eq(kill(node.pid, SIGTERM), 0);
	cr_assert(proc_wait_for(node_exited, NULL, DEADLINE),
		  "SIGTERM was not handled after a SIGHUP with an alias bomb:\n%s",
		  proc_read_file(logpath, NULL));
	cr_expect(WIFEXITED(node.status) && WEXITSTATUS(node.status) == 0, "status %d",
		  node.status);
}
