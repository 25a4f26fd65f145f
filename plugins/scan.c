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

#include "core/log.h"
#include "plugins/launcher.h"

/* Directories nested deeper are not entered: a symlink loop ends here. */
#define MAX_DEPTH 8

extern char **environ;

struct scan {
	const struct kvn_plugins_launch *l;
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

/* The rules are LMCache's documentation of its runtime plugins ("Extending LMCache",
 * docs/source/developer_guide/extending_lmcache in LMCache's repository), and LMCache's code
 * (lmcache/v1/plugin/runtime_plugin_launcher.py: _launch_plugin, _should_skip_plugin) where the
 * documentation is silent: the stem is the name without its last extension (Path.stem), split
 * at '_'; a role prefix is a first part "scheduler", "worker" or "all" (any case) followed by
 * another part; worker_<N>_<more> targets worker N (int(N): leading zeros are fine), and
 * worker_<N>.ext, two parts, every worker. Where LMCache's code contradicts its documentation,
 * the documentation wins: a file without a role prefix runs everywhere (the code skips
 * my_tool.py), all_<N>_<more> too, and scheduler_* runs on the scheduler only. */

/* Stem of file_name (Path.stem: without the last ".ext"; a leading dot is not an extension). */
static void
stem_of(const char *file_name, char stem[NAME_MAX + 1])
{
	const char *dot = strrchr(file_name, '.');
	size_t n = dot && dot != file_name ? (size_t)(dot - file_name) : strlen(file_name);
	snprintf(stem, NAME_MAX + 1, "%.*s", (int)n, file_name);
}

static bool
part_is(const char *part, size_t len, const char *word)
{
	return len == strlen(word) && !strncasecmp(part, word, len);
}

static bool
all_digits(const char *p, size_t n)
{
	return n && strspn(p, "0123456789") >= n;
}

/* The '_'-separated parts of stem: the first two and how many there are. */
struct parts {
	const char *p[2];
	size_t len[2];
	size_t n;
};

static struct parts
split_stem(const char *stem)
{
	struct parts ps = {.n = 0};
	for (const char *p = stem;; ps.n++) {
		size_t len = strcspn(p, "_");
		if (ps.n < 2) {
			ps.p[ps.n] = p;
			ps.len[ps.n] = len;
		}
		if (!p[len]) {
			ps.n++;
			break;
		}
		p += len + 1;
	}
	return ps;
}

KVN_API bool
kvn_plugin_targets(const char *file_name, enum kvn_plugin_role role, int worker_id)
{
	char stem[NAME_MAX + 1];
	stem_of(file_name, stem);
	struct parts ps = split_stem(stem);
	if (ps.n < 2)
		return true; /* a role word alone is no prefix: every process */
	if (part_is(ps.p[0], ps.len[0], "scheduler"))
		return role == KVN_PLUGIN_SCHEDULER;
	if (!part_is(ps.p[0], ps.len[0], "worker"))
		return true; /* all_*, or no role prefix: every process */
	if (role != KVN_PLUGIN_WORKER)
		return false;
	if (ps.n < 3 || !all_digits(ps.p[1], ps.len[1]))
		return true; /* worker_<N>.ext and worker_<description>: every worker */
	const char *d = ps.p[1];
	size_t len = ps.len[1];
	while (len > 1 && *d == '0') {
		d++;
		len--;
	}
	if (len > 9)
		return false; /* no worker has such an id */
	return worker_id >= 0 && atoi(d) == worker_id;
}

/* worker_<N>.ext: LMCache runs it on every worker, which its author may not expect. */
static bool
worker_n_alone(const char *file_name)
{
	char stem[NAME_MAX + 1];
	stem_of(file_name, stem);
	struct parts ps = split_stem(stem);
	return ps.n == 2 && part_is(ps.p[0], ps.len[0], "worker") &&
	       all_digits(ps.p[1], ps.len[1]);
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
	for (size_t i = 0; ok && i < sc->l->nsettings; i++) {
		const struct kvn_plugin_setting *kv = &sc->l->settings[i];
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
	/* kvnode's names, LMCache's older and current ones (runtime_plugin_launcher.py). */
	static const char *const prefixes[] = {"KVNODE_PLUGIN_", "LMCACHE_PLUGIN_",
					       "LMCACHE_RUNTIME_PLUGIN_"};
	enum { NPRE = sizeof(prefixes) / sizeof(prefixes[0]), NOURS = 4 * NPRE + 64 + 1 };
	char *ours[NOURS + 1] = {0};
	size_t nours = 0, nenv = 0, nextra = 0;
	int rc = -ENOMEM;
	char *json = config_json(sc, p);
	const struct kvn_plugins_opts *o = sc->opts;

	/* worker_count, when configured, is the deployment's (LMCache's meaning: the workers it
	 * was configured with); else the count the caller knows (the cluster's at join). */
	int count = sc->l->worker_count ? (int)sc->l->worker_count : o->worker_count;
	for (size_t k = 0; json && k < NPRE; k++) {
		const char *pre = prefixes[k];
		if (asprintf(&ours[nours++], "%sROLE=%s", pre, kvn_plugin_role_name(o->role)) < 0 ||
		    asprintf(&ours[nours++], "%sCONFIG=%s", pre, json) < 0 ||
		    asprintf(&ours[nours++], "%sWORKER_ID=%d", pre, o->worker_id) < 0 ||
		    asprintf(&ours[nours++], "%sWORKER_COUNT=%d", pre, count) < 0)
			goto out;
	}
	if (!json)
		goto out;
	for (; o->extra_env && o->extra_env[nextra] && nours < NOURS - 1; nextra++)
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
kvn_plugin_free(struct plugin *p)
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
	if (worker_n_alone(file))
		kvn_info(COMP,
			 "plugin %s runs on every worker, as LMCache runs such a name; to target "
			 "one worker name it worker_<N>_<name> (e.g. worker_0_report.sh)",
			 path);
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
	kvn_plugin_free(&p);
	return rc == -ENOMEM ? rc : 0;
}

/* Backup and package-manager leftovers: never plugins, though they may still end in .py. */
static const char *const leftover_suffixes[] = {"~",	 ".swp", ".bak", ".orig",
						".rej", ".disabled", ".tmp"};

static bool
is_leftover(const char *name)
{
	size_t len = strlen(name);
	for (size_t i = 0; i < sizeof(leftover_suffixes) / sizeof(leftover_suffixes[0]); i++) {
		size_t n = strlen(leftover_suffixes[i]);
		if (len > n && !strcmp(name + len - n, leftover_suffixes[i]))
			return true;
	}
	return strstr(name, ".dpkg-") != NULL; /* .dpkg-old, .dpkg-new, .dpkg-dist ... */
}

static bool
ignored_name(const char *name, const char **why)
{
	if (name[0] == '.')
		*why = "hidden";
	else if (is_leftover(name))
		*why = "backup or leftover";
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
kvn_plugin_scan(const struct kvn_plugins_launch *l, struct plugin **out, size_t *n)
{
	struct scan sc = {.l = l, .opts = l->opts};
	int rc = 0;
	*out = NULL;
	*n = 0;
	sc.config = cJSON_Parse(l->config_json ? l->config_json : "{}");
	if (!sc.config)
		return -ENOMEM;
	for (size_t i = 0; !rc && i < l->nlocations; i++) {
		const char *loc = l->locations[i];
		struct stat st;
		if (stat(loc, &st))
			kvn_warn(COMP, "plugin_locations: %s: %s (no plugins from it)", loc,
				 strerror(errno));
		else if (S_ISDIR(st.st_mode))
			rc = walk(&sc, loc, 0);
		else if (S_ISREG(st.st_mode) && is_leftover(loc))
			kvn_warn(COMP,
				 "plugin_locations: %s is a backup or leftover file (~, .bak, "
				 ".orig, .rej, .swp, .disabled, .tmp, .dpkg-*): not run",
				 loc);
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
			kvn_plugin_free(&sc.p[i]);
		free(sc.p);
		return rc;
	}
	*out = sc.p;
	*n = sc.n;
	return 0;
}
