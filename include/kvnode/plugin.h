/* Plugin launcher (docs/architecture.md §6): role-targeted scripts beside every kvnode process
 * (worker or scheduler), their output logged with a "[plugin <file>]" prefix, stopped with the
 * process and never left behind, even when the process is SIGKILLed. */
#ifndef KVNODE_PLUGIN_H
#define KVNODE_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvnode/kvnode.h"

#ifdef __cplusplus
extern "C" {
#endif

enum kvn_plugin_role { KVN_PLUGIN_SCHEDULER = 0, KVN_PLUGIN_WORKER = 1 };

/* Start from KVN_PLUGINS_OPTS_INIT (abi, size); members older headers lack take defaults. */
struct kvn_plugins_opts {
	uint32_t abi;  /* KVN_ABI of the caller's headers */
	uint32_t size; /* sizeof(struct kvn_plugins_opts) in them */
	enum kvn_plugin_role role;
	int worker_id;	  /* this worker's id (the scheduler passes -1) */
	int worker_count; /* workers in the cluster (the config's worker_count wins when set) */
	/* More "NAME=VALUE" for every plugin (NULL-terminated, may be NULL), e.g. the socket
	 * of this node so that `kvnode stat` in a plugin finds it. */
	const char *const *extra_env;
};

#define KVN_PLUGINS_OPTS_INIT .abi = KVN_ABI, .size = sizeof(struct kvn_plugins_opts)

struct kvn_plugins;

/* Scans cfg->plugin_locations (directories recursively, or single files), keeps the files
 * that target this process (see kvn_plugin_targets) and starts each in its own process group
 * with the KVNODE_PLUGIN_*, LMCACHE_PLUGIN_* and LMCACHE_RUNTIME_PLUGIN_* environment (ROLE,
 * CONFIG, WORKER_ID, WORKER_COUNT). A location or plugin that cannot be used is a warning
 * naming it, never an error: the node still starts. Returns 0, or a
 * negative errno (out of memory, no thread; -EINVAL for opts of another major ABI) with err
 * set. cfg is read only during the call; opts NULL is worker 0 of 1. Returns once every plugin has
 * been started (or failed to). */
KVN_API int kvn_plugins_start(const struct kvn_config *cfg, const struct kvn_plugins_opts *opts,
			      struct kvn_plugins **out, char *err, size_t errlen);
/* A plugin whose main process ends has what is left of its group sent SIGTERM.
 * kvn_plugins_stop: SIGTERM to every plugin's process group, SIGKILL to those still alive after
 * plugin_stop_timeout_ms; returns once all are reaped and their output is logged. Frees pl
 * (NULL is a no-op). */
KVN_API void kvn_plugins_stop(struct kvn_plugins *pl);
/* Changes plugin_restart (on-failure when restart_on_failure) and plugin_stop_timeout_ms of
 * running plugins, for a config reload; a plugin already given up on stays failed. NULL is a
 * no-op. */
KVN_API void kvn_plugins_set_policy(struct kvn_plugins *pl, bool restart_on_failure,
				    uint32_t stop_timeout_ms);
/* The plugins as a JSON array of {name, file, interpreter, pid, state, restarts, exit_code,
 * dropped_lines}; state is one of "running", "restarting", "exited", "failed", "stopped",
 * "not-started". malloc'd, free() it; NULL when out of memory. */
KVN_API char *kvn_plugins_stats_json(struct kvn_plugins *pl);
/* Whether a plugin file name targets this process (docs/architecture.md §6; LMCache's
 * "Extending LMCache" documentation, then lmcache/v1/plugin/runtime_plugin_launcher.py): the
 * name without its last extension, split on '_'; role words case-insensitive and a prefix only
 * when another part follows; "scheduler_*" the scheduler only; "worker_*" and "worker_<N>.ext"
 * every worker; "worker_<N>_*" worker N only; "all_*", a role word alone or no role prefix:
 * every process. */
KVN_API bool kvn_plugin_targets(const char *file_name, enum kvn_plugin_role role, int worker_id);
/* "SCHEDULER" or "WORKER", as in KVNODE_PLUGIN_ROLE. */
KVN_API const char *kvn_plugin_role_name(enum kvn_plugin_role role);

#ifdef __cplusplus
}
#endif

#endif
