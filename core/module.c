/* Loadable modules for external backends and connectors: finding the file, dlopen and dlsym,
 * with every refusal naming the file, the symbol and the fix. Shared so that both kinds of
 * module follow the same search rules (docs/architecture.md §4). */
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "core/module.h"

/* Where a bare module name was looked for, for the "not found" message. */
#define LOOKED_MAX 2048

static void
append(char *dst, size_t cap, const char *s)
{
	/* A list that no longer fits is cut, not overflowed: it only feeds a message. */
	size_t n = strlen(dst), sep = n ? 2 : 0, len = strlen(s);
	if (n + sep + 1 >= cap)
		return;
	if (len > cap - n - sep - 1)
		len = cap - n - sep - 1;
	memcpy(dst + n, ", ", sep);
	memcpy(dst + n + sep, s, len);
	dst[n + sep + len] = '\0';
}

/* Joins dir and name into out; -ENAMETOOLONG when it does not fit. */
static int
join(char *out, size_t cap, const char *dir, const char *name)
{
	size_t dl = strlen(dir);
	int n = snprintf(out, cap, "%s%s%s", dir, dl && dir[dl - 1] == '/' ? "" : "/", name);
	return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

/* Resolves module_path to a file that exists (absolute, relative to config_dir, or a bare name
 * in $KVNODE_MODULE_PATH). A bare name found nowhere there is returned as is, for dlopen's own
 * search (LD_LIBRARY_PATH, ld.so.cache, system dirs); looked lists the places already tried. */
static int
resolve(const char *module_path, const char *config_dir, char *out, size_t cap, char *looked,
	size_t lcap)
{
	looked[0] = '\0';
	if (module_path[0] == '/' || strchr(module_path, '/')) {
		if (module_path[0] == '/') {
			if (strlen(module_path) >= cap)
				return -ENAMETOOLONG;
			strcpy(out, module_path);
		} else if (join(out, cap, config_dir && *config_dir ? config_dir : ".",
				module_path)) {
			return -ENAMETOOLONG;
		}
		append(looked, lcap, out);
		return access(out, F_OK) ? -ENOENT : 0;
	}

	const char *mp = getenv("KVNODE_MODULE_PATH");
	if (mp && *mp) {
		char *dirs = strdup(mp);
		if (!dirs)
			return -ENOMEM;
		char *save = NULL;
		for (char *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
			if (join(out, cap, d, module_path))
				continue;
			append(looked, lcap, out);
			if (!access(out, F_OK)) {
				free(dirs);
				return 0;
			}
		}
		free(dirs);
	} else {
		append(looked, lcap, "$KVNODE_MODULE_PATH (unset)");
	}
	if (strlen(module_path) >= cap)
		return -ENAMETOOLONG;
	strcpy(out, module_path);
	return 1; /* leave it to dlopen's search */
}

int
kvn_module_open(const struct kvn_module_kind *kind, const char *module_path, const char *symbol,
		const char *config_dir, void **handle, const void **sym, char *path, size_t pathlen,
		char *err, size_t errlen)
{
	char looked[LOOKED_MAX];
	const char *what = kind->what;

	*handle = NULL;
	*sym = NULL;
	if (!module_path || !*module_path)
		return kvn_seterr(-EINVAL, err, errlen,
			    "%s: module_path is empty (set extra_config %s.module_path)", what,
			    kind->cfg_prefix);
	if (!symbol || !*symbol)
		return kvn_seterr(-EINVAL, err, errlen,
			    "%s module %s: class_name is empty (set extra_config %s.class_name to "
			    "the exported %s)",
			    what, module_path, kind->cfg_prefix, kind->sym_type);

	int rc = resolve(module_path, config_dir, path, pathlen, looked, sizeof(looked));
	if (rc == -ENAMETOOLONG || rc == -ENOMEM)
		return kvn_seterr(rc, err, errlen, "%s module %s (symbol %s): %s", what, module_path,
			    symbol, rc == -ENOMEM ? "out of memory" : "path too long");
	if (rc == -ENOENT)
		return kvn_seterr(-ENOENT, err, errlen,
			    "%s module %s (symbol %s) not found: looked at %s (a relative "
			    "module_path is taken from the config file's directory)",
			    what, module_path, symbol, looked);
	const bool searched = rc == 1;

	dlerror();
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		const char *why = dlerror();
		/* Only a failed search is "not found"; a file the search did find but could not
		 * load (bad ELF, unresolved symbol) is reported as such. */
		if (searched && (!why || strstr(why, "No such file")))
			return kvn_seterr(-ENOENT, err, errlen,
				    "%s module %s (symbol %s) not found: looked in %s and the "
				    "system library path (%s); give an absolute path or add its "
				    "directory to KVNODE_MODULE_PATH",
				    what, module_path, symbol, looked,
				    why ? why : "no reason given");
		return kvn_seterr(-EINVAL, err, errlen, "%s module %s (symbol %s) cannot be loaded: %s",
			    what, path, symbol, why ? why : "no reason given");
	}

	dlerror();
	const void *s = dlsym(h, symbol);
	const char *why = dlerror();
	if (!s || why) {
		dlclose(h);
		return kvn_seterr(
		    -EINVAL, err, errlen,
		    "%s module %s has no symbol %s (check class_name; `nm -D %s` lists what "
		    "it exports, and the symbol needs default visibility)",
		    what, path, symbol, path);
	}
	kvn_debug("module", "loaded %s from %s (%s)", symbol, path, what);
	*handle = h;
	*sym = s;
	return 0;
}
