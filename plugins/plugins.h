/* The plugin launcher's options, given explicitly: the node fills them from its config
 * (kvn_plugins_start in node/engine/plugins.c), tools and tests may fill them by hand. */
#ifndef KVN_PLUGINS_PLUGINS_H
#define KVN_PLUGINS_PLUGINS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvnode/plugin.h"

/* One extra_config entry "plugin.<name>.<key>": the settings of plugin <name>. */
struct kvn_plugin_setting {
	const char *key; /* "plugin.<name>.<key>" */
	const char *value;
};

struct kvn_plugins_launch {
	const struct kvn_plugins_opts *opts; /* NULL: worker 0 of 1 */
	const char *const *locations;	     /* plugin_locations: directories or files */
	size_t nlocations;
	uint32_t stop_timeout_ms; /* plugin_stop_timeout_ms */
	bool restart_on_failure;  /* plugin_restart: on-failure */
	uint32_t worker_count;	  /* worker_count of the config; 0: opts->worker_count */
	const char *config_json;  /* the redacted effective config, each plugin's *_CONFIG */
	const struct kvn_plugin_setting *settings;
	size_t nsettings;
};

/* kvn_plugins_start with explicit options (kvnode/plugin.h says what it does). The strings
 * and arrays are read during the call only. */
int kvn_plugins_launch(const struct kvn_plugins_launch *l, struct kvn_plugins **out, char *err,
		       size_t errlen);

/* One plugin as stat and the metrics show it. */
struct kvn_plugin_stat {
	char *name;	   /* the file's base name (the log prefix) */
	char *file;	   /* its path */
	char *interpreter; /* "/usr/bin/bash", "(executable)" */
	const char *state; /* "running", "restarting", "exited", "failed", "stopped", "not-started" */
	int pid;	   /* 0 when no process runs */
	int exit_code;	   /* last exit status, 128 + signal when killed; -1 none yet */
	unsigned restarts;
	uint64_t dropped_lines;
};
/* The plugins of pl (NULL: none) at one moment, *n of them in *out (free with
 * kvn_plugins_snapshot_free); -ENOMEM. */
int kvn_plugins_snapshot(struct kvn_plugins *pl, struct kvn_plugin_stat **out, size_t *n);
void kvn_plugins_snapshot_free(struct kvn_plugin_stat *st, size_t n);
/* kvn_plugins_stats_json's array as a cJSON tree, for a caller that embeds it (NULL when out
 * of memory). */
struct cJSON;
struct cJSON *kvn_plugins_stats_cjson(struct kvn_plugins *pl);

#endif
