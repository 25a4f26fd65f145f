/* External backends: loads a module (core/module.c finds and opens it) and checks that the
 * symbol it exports is a struct kvn_backend_ops this node can drive (ABI, required operations).
 * Every refusal names the file and the symbol, and leaves nothing loaded. */
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>

#include "core/abi.h"
#include "core/log.h"
#include "core/module.h"
#include "backends/backends.h"

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

int
kvn_external_load(const char *module_path, const char *symbol, const char *config_dir,
		  const struct kvn_backend_ops **ops, void **handle, char *err, size_t errlen)
{
	static const struct kvn_module_kind kind = {
	    .what = "external backend",
	    .cfg_prefix = "external_backend.<name>",
	    .sym_type = "struct kvn_backend_ops",
	};
	const void *sym;
	void *h;
	char path[4096];

	*ops = NULL;
	*handle = NULL;
	int rc = kvn_module_open(&kind, module_path, symbol, config_dir, &h, &sym, path,
				 sizeof(path), err, errlen);
	if (rc)
		return rc;
	const struct kvn_backend_ops *o = sym;
	char what[4200];
	snprintf(what, sizeof(what), "external backend module %s (symbol %s)", path, symbol);
	rc = kvn_abi_check(o->abi, o->size, KVN_BACKEND_OPS_SIZE_2_0, sizeof(*o),
			   "struct kvn_backend_ops", what, err, errlen);
	if (rc)
		goto out_close;
	const char *miss = missing_op(o);
	if (miss) {
		rc = kvn_seterr(
		    -EINVAL, err, errlen,
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
