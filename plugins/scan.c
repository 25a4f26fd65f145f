/* Plugin launcher, finding plugins: walking plugin_locations, the targeting rules of
 * docs/architecture.md §6, the interpreter of each file and the environment it is started with. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "node/log.h"
#include "plugins/launcher.h"

/* Directories nested deeper are not entered: a symlink loop ends here. */
#define MAX_DEPTH 8

extern char **environ;

struct scan {
	const struct kvn_config *cfg;
	const struct kvn_plugins_opts *opts;
	cJSON *config; /* the redacted effective config, shared by every plugin */
	struct plugin *p;
	size_t n, cap;
};

KVN_API const char *
kvn_plugin_role_name(enum kvn_plugin_role role)
{
	return role == KVN_PLUGIN_SCHEDULER ? "SCHEDULER" : "WORKER";
}

/* ------------------------------------------------------------------------------------------
 * Targeting
 * ------------------------------------------------------------------------------------------ */

/* The part of name from *pos up to the next '_' or the end; *pos moves past it. */
static size_t
next_part(const char *name, size_t *pos, const char **part)
{
	*part = name + *pos;
	size_t len = strcspn(*part, "_");
	*pos += len + ((*part)[len] == '_');
	return len;
}

KVN_API bool
kvn_plugin_targets(const char *file_name, enum kvn_plugin_role role, int worker_id)
{
	char stem[NAME_MAX + 1];
	snprintf(stem, sizeof(stem), "%.*s", (int)strcspn(file_name, "."), file_name);
	size_t pos = 0;
	const char *part;
	size_t len = next_part(stem, &pos, &part);

	if (len == 9 && !strncasecmp(part, "scheduler", 9))
		return role == KVN_PLUGIN_SCHEDULER;
	if (len != 6 || strncasecmp(part, "worker", 6))
		return true; /* all_*, or no role word: every process */
	if (role != KVN_PLUGIN_WORKER)
		return false;
	len = next_part(stem, &pos, &part);
	if (!len || strspn(part, "0123456789") < len)
		return true; /* worker_<description>: every worker */
	while (len > 1 && *part == '0') {
		part++;
		len--;
	}
	if (len > 9)
		return false; /* no worker has such an id */
	return worker_id >= 0 && atoi(part) == worker_id;
}

/* ------------------------------------------------------------------------------------------
 * Interpreter
 * ------------------------------------------------------------------------------------------ */

/* An executable named prog (a path, or looked up in $PATH); malloc'd, NULL if none. */
static char *
find_program(const char *prog)
{
	char *out = NULL;
	if (strchr(prog, '/'))
		return access(prog, X_OK) ? NULL : strdup(prog);
	const char *path = getenv("PATH");
	if (!path || !*path)
		path = "/usr/local/bin:/usr/bin:/bin";
	for (const char *d = path; *d;) {
		size_t len = strcspn(d, ":");
		if (asprintf(&out, "%.*s/%s", (int)(len ? len : 1), len ? d : ".", prog) < 0)
			return NULL;
		struct stat st;
		if (!stat(out, &st) && S_ISREG(st.st_mode) && !access(out, X_OK))
			return out;
		free(out);
		out = NULL;
		d += len + (d[len] == ':');
	}
	return NULL;
}

/* "#!interp arg" of path: like the kernel, everything after the interpreter up to the end of
 * the line is one argument. false without a shebang. */
static bool
read_shebang(const char *path, char *interp, size_t ilen, char *arg, size_t alen)
{
	char line[512];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	ssize_t n = read(fd, line, sizeof(line) - 1);
	close(fd);
	if (n < 3 || line[0] != '#' || line[1] != '!')
		return false;
	line[n] = '\0';
	line[strcspn(line, "\r\n")] = '\0';
	char *s = line + 2;
	s += strspn(s, " \t");
	size_t l = strcspn(s, " \t");
	if (!l || l >= ilen)
		return false;
	snprintf(interp, ilen, "%.*s", (int)l, s);
	s += l;
	s += strspn(s, " \t");
	l = strlen(s);
	while (l && (s[l - 1] == ' ' || s[l - 1] == '\t'))
		l--;
	snprintf(arg, alen, "%.*s", (int)l, s);
	return true;
}

/* Fills p->argv and p->interp. Returns 1 ready, 0 skip (warned), -ENOENT missing interpreter
 * (warned; the plugin is listed as not started), -ENOMEM. */
static int
choose_interpreter(struct plugin *p)
{
	char interp[256], arg[256];
	const char *want = NULL, *ext = strrchr(p->file, '.');
	char *prog = NULL;
	bool shebang = read_shebang(p->path, interp, sizeof(interp), arg, sizeof(arg));

	if (shebang) {
		want = interp;
		prog = find_program(interp);
		/* "#!/usr/bin/env python3": the program env looks for is what may be missing. */
		const char *base = strrchr(interp, '/');
		if (prog && !strcmp(base ? base + 1 : interp, "env") && *arg && *arg != '-' &&
		    !strpbrk(arg, " \t")) {
			char *target = find_program(arg);
			if (!target) {
				free(prog);
				prog = NULL;
				want = arg;
			}
			free(target);
		}
	} else if (ext && !strcmp(ext, ".py")) {
		want = "python3";
		prog = find_program(want);
	} else if (ext && !strcmp(ext, ".sh")) {
		want = "bash";
		prog = find_program(want);
	} else if (!access(p->path, X_OK)) {
		p->argv = calloc(2, sizeof(char *));
		if (!p->argv || !(p->argv[0] = strdup(p->path)) ||
		    !(p->interp = strdup("(executable)")))
			return -ENOMEM;
		return 1;
	} else {
		kvn_warn(COMP,
			 "plugin %s skipped: no #! line, no known extension (.py, .sh) and not "
			 "executable (add a #! line or chmod +x it)",
			 p->path);
		return 0;
	}
	if (!prog) {
		kvn_warn(COMP,
			 "plugin %s not started: interpreter \"%s\" not found (install it or fix "
			 "%s)",
			 p->path, want, shebang ? "the #! line" : "$PATH");
		return (p->interp = strdup(want)) ? -ENOENT : -ENOMEM;
	}
	size_t i = 0;
	p->argv = calloc(4, sizeof(char *));
	if (!p->argv) {
		free(prog);
		return -ENOMEM;
	}
	p->argv[i++] = prog;
	if (shebang && *arg && !(p->argv[i++] = strdup(arg)))
		return -ENOMEM;
	if (!(p->argv[i] = strdup(p->path)))
		return -ENOMEM;
	if (asprintf(&p->interp, "%s%s%s", prog, shebang && *arg ? " " : "", shebang ? arg : "") <
	    0) {
		p->interp = NULL;
		return -ENOMEM;
	}
	return 1;
}

/* ------------------------------------------------------------------------------------------
 * Environment
 * ------------------------------------------------------------------------------------------ */

/* The config JSON with this plugin's extra_config plugin.<name>.<key> entries under
 * plugin_config. They are its own settings, so they are given as written, unredacted. */
static char *
config_json(struct scan *sc, const struct plugin *p)
{
	cJSON *o = cJSON_Duplicate(sc->config, true);
	cJSON *pc = o ? cJSON_AddObjectToObject(o, "plugin_config") : NULL;
	char prefix[NAME_MAX + 16];
	snprintf(prefix, sizeof(prefix), "plugin.%s.", p->name);
	size_t plen = strlen(prefix);
	bool ok = pc != NULL;
	for (size_t i = 0; ok && i < sc->cfg->n_extra; i++) {
		const struct kvn_config_kv *kv = &sc->cfg->extra[i];
		if (!strncmp(kv->key, prefix, plen) && kv->key[plen])
			ok = cJSON_AddStringToObject(pc, kv->key + plen, kv->value) != NULL;
	}
	char *s = ok ? cJSON_PrintUnformatted(o) : NULL;
	cJSON_Delete(o);
	return s;
}

static bool
env_has_name(char *const *vars, size_t n, const char *entry)
{
	size_t len = strcspn(entry, "=");
	for (size_t i = 0; i < n; i++)
		if (!strncmp(vars[i], entry, len) && vars[i][len] == '=')
			return true;
	return false;
}

static int
build_env(struct scan *sc, struct plugin *p)
{
	static const char *const prefixes[] = {"KVNODE_PLUGIN_", "LMCACHE_PLUGIN_"};
	char *ours[8 + 64 + 1] = {0};
	size_t nours = 0, nenv = 0, nextra = 0;
	int rc = -ENOMEM;
	char *json = config_json(sc, p);
	const struct kvn_plugins_opts *o = sc->opts;

	for (size_t k = 0; json && k < 2; k++) {
		const char *pre = prefixes[k];
		if (asprintf(&ours[nours++], "%sROLE=%s", pre, kvn_plugin_role_name(o->role)) < 0 ||
		    asprintf(&ours[nours++], "%sCONFIG=%s", pre, json) < 0 ||
		    asprintf(&ours[nours++], "%sWORKER_ID=%d", pre, o->worker_id) < 0 ||
		    asprintf(&ours[nours++], "%sWORKER_COUNT=%d", pre, o->worker_count) < 0)
			goto out;
	}
	if (!json)
		goto out;
	for (; o->extra_env && o->extra_env[nextra] && nours < 8 + 64; nextra++)
		if (!(ours[nours++] = strdup(o->extra_env[nextra])))
			goto out;
	/* Python buffers a pipe's output in 8 KiB blocks: its lines would reach the log late,
	 * or never if the plugin is killed. */
	if (!getenv("PYTHONUNBUFFERED") && !(ours[nours++] = strdup("PYTHONUNBUFFERED=1")))
		goto out;
	while (environ && environ[nenv])
		nenv++;
	if (!(p->envp = calloc(nenv + nours + 1, sizeof(char *))))
		goto out;
	size_t j = 0;
	for (size_t i = 0; i < nenv; i++)
		if (!env_has_name(ours, nours, environ[i]) && !(p->envp[j++] = strdup(environ[i])))
			goto out;
	for (size_t i = 0; i < nours; i++) {
		p->envp[j++] = ours[i];
		ours[i] = NULL;
	}
	rc = 0;
out:
	for (size_t i = 0; i < nours; i++)
		free(ours[i]);
	free(json);
	return rc;
}

/* ------------------------------------------------------------------------------------------
 * Walking plugin_locations
 * ------------------------------------------------------------------------------------------ */

void
plugin_free(struct plugin *p)
{
	for (size_t i = 0; p->argv && p->argv[i]; i++)
		free(p->argv[i]);
	for (size_t i = 0; p->envp && p->envp[i]; i++)
		free(p->envp[i]);
	free(p->argv);
	free(p->envp);
	free(p->path);
	free(p->dir);
	free(p->file);
	free(p->name);
	free(p->interp);
	free(p->exec_fail);
}

static int
consider(struct scan *sc, const char *path)
{
	struct plugin p = {.pidfd = -1, .fd = {-1, -1}, .exit_code = -1};
	const char *slash = strrchr(path, '/');
	const char *file = slash ? slash + 1 : path;
	int rc = -ENOMEM;

	if (!kvn_plugin_targets(file, sc->opts->role, sc->opts->worker_id)) {
		kvn_debug(COMP, "plugin %s: not for this process (%s %d)", path,
			  kvn_plugin_role_name(sc->opts->role), sc->opts->worker_id);
		return 0;
	}
	char dir[PATH_MAX];
	if (slash == path)
		snprintf(dir, sizeof(dir), "/");
	else
		snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - path) : 1,
			 slash ? path : ".");
	char *absdir = realpath(dir, NULL);
	if (!absdir) {
		kvn_warn(COMP, "plugin %s skipped: cannot resolve its directory: %s", path,
			 strerror(errno));
		return 0;
	}
	p.dir = absdir;
	if (!(p.file = strdup(file)) || !(p.name = strndup(file, strcspn(file, "."))) ||
	    asprintf(&p.path, "%s%s%s", absdir, strcmp(absdir, "/") ? "/" : "", file) < 0) {
		p.path = NULL;
		goto fail;
	}
	rc = choose_interpreter(&p);
	if (rc == 0)
		goto fail;
	if (rc == -ENOENT) {
		p.state = PLUGIN_NOT_STARTED;
	} else if (rc < 0) {
		goto fail;
	} else {
		p.state = PLUGIN_STOPPED; /* until the monitor starts it */
		if (build_env(sc, &p) ||
		    asprintf(&p.exec_fail, "kvnode: cannot execute %s for plugin %s: ",
			     p.argv[0], p.path) < 0) {
			p.exec_fail = NULL;
			rc = -ENOMEM;
			goto fail;
		}
	}
	if (sc->n == sc->cap) {
		size_t cap = sc->cap ? sc->cap * 2 : 8;
		struct plugin *np = realloc(sc->p, cap * sizeof(*np));
		if (!np) {
			rc = -ENOMEM;
			goto fail;
		}
		sc->p = np;
		sc->cap = cap;
	}
	sc->p[sc->n++] = p;
	return 0;
fail:
	plugin_free(&p);
	return rc == -ENOMEM ? rc : 0;
}

static bool
ignored_name(const char *name, const char **why)
{
	size_t len = strlen(name);
	if (name[0] == '.')
		*why = "hidden";
	else if (name[len - 1] == '~' || (len > 4 && !strcmp(name + len - 4, ".swp")))
		*why = "editor backup";
	else
		return false;
	return true;
}

static int
walk(struct scan *sc, const char *path, int depth)
{
	struct dirent **ents;
	int n = scandir(path, &ents, NULL, alphasort);
	int rc = 0;
	if (n < 0) {
		kvn_warn(COMP, "plugin directory %s: cannot read it: %s (its plugins are skipped)",
			 path, strerror(errno));
		return 0;
	}
	for (int i = 0; i < n; i++) {
		const char *name = ents[i]->d_name, *why;
		char *child = NULL;
		struct stat st;
		if (rc || !strcmp(name, ".") || !strcmp(name, ".."))
			goto next;
		if (asprintf(&child, "%s/%s", path, name) < 0) {
			child = NULL;
			rc = -ENOMEM;
			goto next;
		}
		if (ignored_name(name, &why)) {
			kvn_debug(COMP, "plugin %s ignored: %s file", child, why);
		} else if (stat(child, &st)) {
			kvn_warn(COMP, "plugin %s skipped: %s", child, strerror(errno));
		} else if (S_ISDIR(st.st_mode)) {
			if (depth < MAX_DEPTH)
				rc = walk(sc, child, depth + 1);
			else
				kvn_warn(COMP, "plugin directory %s not entered: nested %d deep",
					 child, depth + 1);
		} else if (!S_ISREG(st.st_mode)) {
			kvn_debug(COMP, "plugin %s ignored: not a regular file", child);
		} else {
			rc = consider(sc, child);
		}
	next:
		free(child);
		free(ents[i]);
	}
	free(ents);
	return rc;
}

int
plugin_scan(const struct kvn_config *cfg, const struct kvn_plugins_opts *opts, struct plugin **out,
	    size_t *n)
{
	struct scan sc = {.cfg = cfg, .opts = opts};
	char *text = kvn_config_to_json(cfg, true);
	int rc = 0;
	*out = NULL;
	*n = 0;
	sc.config = text ? cJSON_Parse(text) : NULL;
	free(text);
	if (!sc.config)
		return -ENOMEM;
	for (size_t i = 0; !rc && i < cfg->n_plugin_locations; i++) {
		const char *loc = cfg->plugin_locations[i];
		struct stat st;
		if (stat(loc, &st))
			kvn_warn(COMP, "plugin_locations: %s: %s (no plugins from it)", loc,
				 strerror(errno));
		else if (S_ISDIR(st.st_mode))
			rc = walk(&sc, loc, 0);
		else if (S_ISREG(st.st_mode))
			rc = consider(&sc, loc);
		else
			kvn_warn(COMP,
				 "plugin_locations: %s is neither a directory nor a regular file "
				 "(no plugins from it)",
				 loc);
	}
	cJSON_Delete(sc.config);
	if (rc) {
		for (size_t i = 0; i < sc.n; i++)
			plugin_free(&sc.p[i]);
		free(sc.p);
		return rc;
	}
	*out = sc.p;
	*n = sc.n;
	return 0;
}
