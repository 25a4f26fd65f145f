/* External connector loader: extra_config external_connector.<scheme>.module_path/.class_name
 * → dlopen (core/module.c, the same search as external backends) → checked ops → registry. */
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>

#include "connectors/external.h"
#include "connectors/registry.h"
#include "core/abi.h"
#include "core/log.h"
#include "core/module.h"

#define SCHEME_MAX 64

/* Names the first required operation the table lacks, NULL when all are there. Batched ops
 * are optional (the registry falls back to single calls). */
static const char *
missing_op(const struct kvn_connector_ops *ops)
{
	if (!ops->connect)
		return "connect";
	if (!ops->close)
		return "close";
	if (!ops->exists)
		return "exists";
	if (!ops->get)
		return "get";
	if (!ops->put)
		return "put";
	if (!ops->remove)
		return "remove";
	if (!ops->list)
		return "list";
	if (!ops->ping)
		return "ping";
	return NULL;
}

int
kvn_connector_load_external(const char *url, const char *config_dir, kvn_extra_get_fn get,
			    void *ctx, char *err, size_t errlen)
{
	char scheme[SCHEME_MAX], key_mp[SCHEME_MAX + 48], key_cn[SCHEME_MAX + 48],
	    prefix[SCHEME_MAX + 32], path[4096];
	if (!url || kvn_connector_scheme_of(url, scheme, sizeof(scheme)) < 0)
		return 0; /* kvn_connector_find reports the malformed URL */
	snprintf(prefix, sizeof(prefix), "external_connector.%s", scheme);
	snprintf(key_mp, sizeof(key_mp), "%s.module_path", prefix);
	snprintf(key_cn, sizeof(key_cn), "%s.class_name", prefix);
	const char *mp = get(ctx, key_mp), *cn = get(ctx, key_cn);
	if (!mp && !cn)
		return 0;
	if (!mp || !cn)
		return kvn_seterr(-EINVAL, err, errlen,
				  "extra_config sets %s but not %s: an external connector needs "
				  "both (the .so and its exported const struct kvn_connector_ops)",
				  mp ? key_mp : key_cn, mp ? key_cn : key_mp);

	const struct kvn_module_kind kind = {
	    .what = "external connector",
	    .cfg_prefix = prefix,
	    .sym_type = "const struct kvn_connector_ops",
	};
	void *h;
	const void *sym;
	int rc =
	    kvn_module_open(&kind, mp, cn, config_dir, &h, &sym, path, sizeof(path), err, errlen);
	if (rc)
		return rc;
	const struct kvn_connector_ops *ops = sym;
	const char *miss;
	char what[4200];
	snprintf(what, sizeof(what), "external connector module %s (symbol %s)", path, cn);
	rc = kvn_connector_check_abi(ops, what, err, errlen);
	if (rc)
		goto out_close;
	if ((miss = missing_op(ops))) {
		rc = kvn_seterr(-EINVAL, err, errlen,
				"external connector module %s exports %s without the required "
				"operation %s (connect, close, exists, get, put, remove, list and "
				"ping must be set; remove/list may return -EOPNOTSUPP)",
				path, cn, miss);
		goto out_close;
	}
	rc = kvn_connector_register(scheme, ops);
	if (rc) {
		kvn_seterr(rc, err, errlen,
			   "external connector %s from %s (%s): cannot serve scheme \"%s\": %s", cn,
			   path, key_mp, scheme,
			   rc == -EEXIST ? "the scheme is built in or served by another module; "
					   "pick another scheme name"
					 : kvn_strerror(rc));
		goto out_close;
	}
	kvn_info("connector", "scheme %s:// served by %s from %s", scheme, cn, path);
	/* Kept loaded: the registry now hands these ops out (dlopen counts references, so a
	 * second load of the same module for another engine costs nothing). */
	return 0;

out_close:
	dlclose(h);
	return rc;
}
