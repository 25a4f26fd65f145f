/* kvn_plugins_start (kvnode/plugin.h): the plugin launcher's explicit options, read from the
 * node's config. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/abi.h"
#include "core/log.h"
#include "node/engine/config.h"
#include "plugins/plugins.h"

KVN_API int
kvn_plugins_start(const struct kvn_config *cfg, const struct kvn_plugins_opts *opts,
		  struct kvn_plugins **out, char *err, size_t errlen)
{
	struct kvn_plugins_opts o = {KVN_PLUGINS_OPTS_INIT, .role = KVN_PLUGIN_WORKER,
				     .worker_count = 1};
	*out = NULL;
	if (opts && kvn_abi_read_in(opts, &o, sizeof(o), "struct kvn_plugins_opts",
				    "KVN_PLUGINS_OPTS_INIT", err, errlen))
		return -EINVAL;
	struct kvn_plugin_setting *set = calloc(cfg->n_extra ? cfg->n_extra : 1, sizeof(*set));
	char *json = kvn_config_to_json(cfg, true);
	if (!set || !json) {
		free(set);
		free(json);
		return kvn_seterr(-ENOMEM, err, errlen, "plugins: out of memory");
	}
	size_t n = 0;
	for (size_t i = 0; i < cfg->n_extra; i++)
		if (!strncmp(cfg->extra[i].key, "plugin.", 7))
			set[n++] = (struct kvn_plugin_setting){cfg->extra[i].key, cfg->extra[i].value};
	struct kvn_plugins_launch l = {
	    .opts = &o,
	    .locations = (const char *const *)cfg->plugin_locations,
	    .nlocations = cfg->n_plugin_locations,
	    .stop_timeout_ms = cfg->plugin_stop_timeout_ms,
	    .restart_on_failure = cfg->plugin_restart && !strcmp(cfg->plugin_restart, "on-failure"),
	    .worker_count = cfg->worker_count,
	    .config_json = json,
	    .settings = set,
	    .nsettings = n};
	int rc = kvn_plugins_launch(&l, out, err, errlen);
	free(set);
	free(json);
	return rc;
}
