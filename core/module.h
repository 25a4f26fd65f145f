/* Loadable modules (.so) for external backends and external connectors: one place that finds
 * the file (absolute, relative to the config file, $KVNODE_MODULE_PATH, then dlopen's search),
 * loads it and looks up the exported symbol, with messages that name file, symbol and fix. */
#ifndef KVN_CORE_MODULE_H
#define KVN_CORE_MODULE_H

#include <stddef.h>

/* What a module is, for messages: the kind ("external backend") and the extra_config prefix
 * of its keys ("external_backend.<name>"). */
struct kvn_module_kind {
	const char *what;
	const char *cfg_prefix;
	const char *sym_type; /* what the symbol must be: "struct kvn_backend_ops" */
};

/* Finds module_path, dlopens it (RTLD_NOW | RTLD_LOCAL) and looks up symbol. On success
 * *handle and *sym are set and path (pathlen bytes, 4096 is plenty) holds the file opened; the
 * caller checks what the symbol points to and dlcloses the handle when it refuses it. Errors
 * (nothing left loaded, err says which and what to do): -EINVAL empty module_path or symbol, a file
 * that cannot be loaded, a missing symbol; -ENOENT module not found; -ENAMETOOLONG, -ENOMEM. */
int kvn_module_open(const struct kvn_module_kind *kind, const char *module_path, const char *symbol,
		    const char *config_dir, void **handle, const void **sym, char *path,
		    size_t pathlen, char *err, size_t errlen);

#endif
