/* Shared by the plugin launcher tests (test_plugins.c: the launcher in-process;
 * test_plugins_node.c: kvnode serve/scheduler/demo with plugins): a temp plugin directory,
 * log capture, the launcher's stat, and waits with generous deadlines. */
#ifndef KVN_TESTS_PLUGIN_FIXTURE_H
#define KVN_TESTS_PLUGIN_FIXTURE_H

#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvnode/plugin.h"
#include "node/engine/config.h"
#include "core/log.h"
#include "tests/helpers/proc.h"

#define KVNODE	 KVN_BINARY_DIR "/kvnode"
#define DEADLINE 60000 /* ms: generous, for a loaded 2-core machine under sanitizers */

static char dir[PATH_MAX], plugdir[PATH_MAX + 16], logpath[PATH_MAX + 16];
/* The node must not pick up the developer's own config or socket. */
static const char *const clean_env[] = {"KVNODE_CONFIG_FILE", "LMCACHE_CONFIG_FILE",
					"KVNODE_SOCKET", NULL};
static int saved_stderr = -1;

static inline void
setup(void)
{
	unsetenv("KVNODE_CONFIG_FILE");
	unsetenv("LMCACHE_CONFIG_FILE");
	cr_assert_eq(proc_mkdtemp("plugins", dir, sizeof(dir)), 0, "mkdtemp: %s", strerror(errno));
	snprintf(plugdir, sizeof(plugdir), "%s/plugins", dir);
	snprintf(logpath, sizeof(logpath), "%s/node.log", dir);
	cr_assert_eq(mkdir(plugdir, 0755), 0);
}

static inline void
teardown(void)
{
	if (saved_stderr >= 0) {
		dup2(saved_stderr, STDERR_FILENO);
		close(saved_stderr);
		saved_stderr = -1;
	}
	proc_rm_tree(dir);
}

/* ------------------------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------------------------ */

static inline void
put_plugin(const char *name, mode_t mode, const char *text)
{
	char path[PATH_MAX * 2];
	snprintf(path, sizeof(path), "%s/%s", plugdir, name);
	cr_assert_eq(proc_write_file(path, text, strlen(text)), 0, "writing %s", path);
	cr_assert_eq(chmod(path, mode), 0);
}

/* The node's log (our stderr) goes to logpath until log_end. */
static inline void
log_begin(void)
{
	int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
	cr_assert(fd >= 0);
	saved_stderr = dup(STDERR_FILENO);
	dup2(fd, STDERR_FILENO);
	close(fd);
}

static inline char *
log_end(void)
{
	dup2(saved_stderr, STDERR_FILENO);
	close(saved_stderr);
	saved_stderr = -1;
	char *text = proc_read_file(logpath, NULL);
	cr_assert(text, "reading %s", logpath);
	return text;
}

static inline struct kvn_config *
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

static inline struct kvn_plugins *
start_as(enum kvn_plugin_role role, int id, int count, const char *extra)
{
	struct kvn_config *cfg = config_with(extra);
	struct kvn_plugins_opts o = {KVN_PLUGINS_OPTS_INIT, .role = role, .worker_id = id,
				     .worker_count = count};
	struct kvn_plugins *pl;
	char err[1024];
	cr_assert_eq(kvn_plugins_start(cfg, &o, &pl, err, sizeof(err)), 0, "start: %s", err);
	kvn_config_free(cfg);
	return pl;
}

/* The stat entry of plugin `name` (a cJSON the caller deletes with its root), or NULL. */
static inline cJSON *
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

static inline const char *
state_of(struct kvn_plugins *pl, const char *name, char *buf, size_t len)
{
	cJSON *root, *e = stat_of(pl, name, &root);
	cJSON *s = e ? cJSON_GetObjectItem(e, "state") : NULL;
	snprintf(buf, len, "%s", cJSON_IsString(s) ? s->valuestring : "(absent)");
	cJSON_Delete(root);
	return buf;
}

static inline double
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

static inline bool
has_state(void *arg)
{
	struct wait_ctx *w = arg;
	char buf[32];
	return !strcmp(state_of(w->pl, w->name, buf, sizeof(buf)), w->state);
}

static inline void
wait_state(struct kvn_plugins *pl, const char *name, const char *state)
{
	struct wait_ctx w = {pl, name, state};
	char buf[32];
	cr_assert(proc_wait_for(has_state, &w, DEADLINE), "plugin %s: state %s, expected %s", name,
		  state_of(pl, name, buf, sizeof(buf)), state);
}

static inline bool
file_exists(void *path)
{
	return access(path, F_OK) == 0;
}

static inline void
wait_file(const char *name)
{
	char path[PATH_MAX * 2];
	snprintf(path, sizeof(path), "%s/%s", plugdir, name);
	cr_assert(proc_wait_for(file_exists, path, DEADLINE), "%s never appeared", path);
}

static inline char *
read_plugdir_file(const char *name)
{
	char path[PATH_MAX * 2];
	snprintf(path, sizeof(path), "%s/%s", plugdir, name);
	char *text = proc_read_file(path, NULL);
	cr_assert(text, "reading %s", path);
	return text;
}

static inline void
assert_contains(const char *hay, const char *needle)
{
	cr_assert(hay && strstr(hay, needle), "expected \"%s\" in:\n%.4000s", needle,
		  hay ? hay : "(null)");
}

/* Gone: kill(pid, 0) says ESRCH, or it is a zombie nobody here can reap (its new parent's
 * business: a container's init may be slow to reap, and a zombie runs no code). */
static inline bool
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

static inline bool
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

#endif
