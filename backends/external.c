/* External backends: finds a module file, dlopens it and checks that the symbol it exports is a
 * struct kvn_backend_ops this node can drive (ABI, required operations). Every refusal names
 * the file and the symbol, and leaves nothing loaded. */
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "node/log.h"
#include "node/storage.h"

/* Where a bare module name was looked for, for the "not found" message. */
#define LOOKED_MAX 2048

static int fail(int rc, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int
fail(int rc, char *err, size_t errlen, const char *fmt, ...)
{
	if (err && errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return rc;
}

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

/* Names the first required operation the table lacks, NULL when all are there. */
static const char *
missing_op(const struct kvn_backend_ops *ops)
{
	if (!ops->create)
		return "create";
	if (!ops->destroy)
		return "destroy";
	if (!ops->put)
		return "put";
	if (!ops->get)
		return "get";
	if (!ops->contains)
		return "contains";
	if (!ops->remove)
		return "remove";
	if (!ops->stats)
		return "stats";
	return NULL;
}

KVN_API int
kvn_external_load(const char *module_path, const char *symbol, const char *config_dir,
		  const struct kvn_backend_ops **ops, void **handle, char *err, size_t errlen)
{
	char path[4096], looked[LOOKED_MAX];

	*ops = NULL;
	*handle = NULL;
	if (!module_path || !*module_path)
		return fail(-EINVAL, err, errlen,
			    "external backend: module_path is empty (set "
			    "extra_config external_backend.<name>.module_path)");
	if (!symbol || !*symbol)
		return fail(-EINVAL, err, errlen,
			    "external backend module %s: class_name is empty (set "
			    "extra_config external_backend.<name>.class_name to the exported "
			    "struct kvn_backend_ops)",
			    module_path);

	int rc = resolve(module_path, config_dir, path, sizeof(path), looked, sizeof(looked));
	if (rc == -ENAMETOOLONG || rc == -ENOMEM)
		return fail(rc, err, errlen, "external backend module %s (symbol %s): %s",
			    module_path, symbol, rc == -ENOMEM ? "out of memory" : "path too long");
	if (rc == -ENOENT)
		return fail(-ENOENT, err, errlen,
			    "external backend module %s (symbol %s) not found: looked at %s (a "
			    "relative module_path is taken from the config file's directory)",
			    module_path, symbol, looked);
	const bool searched = rc == 1;

	dlerror();
	void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		const char *why = dlerror();
		/* Only a failed search is "not found"; a file the search did find but could not
		 * load (bad ELF, unresolved symbol) is reported as such. */
		if (searched && (!why || strstr(why, "No such file")))
			return fail(
			    -ENOENT, err, errlen,
			    "external backend module %s (symbol %s) not found: looked in %s "
			    "and the system library path (%s); give an absolute path or add "
			    "its directory to KVNODE_MODULE_PATH",
			    module_path, symbol, looked, why ? why : "no reason given");
		return fail(-EINVAL, err, errlen,
			    "external backend module %s (symbol %s) cannot be loaded: %s", path,
			    symbol, why ? why : "no reason given");
	}

	dlerror();
	const struct kvn_backend_ops *o = dlsym(h, symbol);
	const char *why = dlerror();
	if (!o || why) {
		rc = fail(-EINVAL, err, errlen,
			  "external backend module %s has no symbol %s (check class_name; "
			  "`nm -D %s` lists what it exports, and the symbol needs default "
			  "visibility)",
			  path, symbol, path);
		goto out_close;
	}
	if (o->abi != KVN_BACKEND_ABI) {
		rc = fail(-EINVAL, err, errlen,
			  "module %s exports ops with abi %u, this kvnode needs KVN_BACKEND_ABI %d "
			  "(symbol %s): rebuild the module against this kvnode's headers",
			  path, o->abi, KVN_BACKEND_ABI, symbol);
		goto out_close;
	}
	const char *miss = missing_op(o);
	if (miss) {
		rc = fail(-EINVAL, err, errlen,
			  "module %s exports ops %s without the required operation %s (create, "
			  "destroy, put, get, contains, remove and stats must be set)",
			  path, symbol, miss);
		goto out_close;
	}

	kvn_debug("external", "loaded %s from %s (backend %s)", symbol, path,
		  o->name ? o->name : "unnamed");
	*ops = o;
	*handle = h;
	return 0;

out_close:
	dlclose(h);
	return rc;
}
