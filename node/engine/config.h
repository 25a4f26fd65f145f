/* The node's effective configuration (docs/architecture.md §7): defaults, then the YAML file, then
 * KVNODE_<KEY> / LMCACHE_<KEY> environment overrides. Internal layout of struct kvn_config. */
#ifndef KVN_NODE_ENGINE_CONFIG_H
#define KVN_NODE_ENGINE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvnode/kvnode.h"

/* Where a value came from, for messages: "kvnode.yaml:12", "env KVNODE_CHUNK_SIZE", "default". */
#define KVN_ORIGIN_MAX 300

/* One extra_config entry, flattened to a string (nested maps give dotted keys). */
struct kvn_config_kv {
	char *key;
	char *value;
	char origin[KVN_ORIGIN_MAX];
};

struct kvn_config {
	char *path; /* file loaded, NULL when running on defaults */
	char *dir; /* directory of that file ("." without one): base of relative paths */

	/* LMCache keys */
	uint32_t chunk_size; /* tokens per chunk, default 256 */
	bool local_cpu; /* default true */
	uint64_t max_local_cpu_size; /* bytes (config: GB, float), default 5 GB */
	char *local_disk; /* directory, "file://" stripped; NULL = no disk tier */
	uint64_t max_local_disk_size; /* bytes (config: GB), default 0 = no disk tier */
	char *remote_url; /* NULL = none */
	char *remote_serde; /* default "naive"; NULL (null in the file) = naive too */
	char **external_backends; /* names, in priority order (LMCache: storage_plugins) */
	size_t n_external_backends;
	struct kvn_config_kv *extra; /* extra_config, flattened */
	size_t n_extra;
	char **plugin_locations; /* LMCache: runtime_plugin_locations */
	size_t n_plugin_locations;
	/* LMCache's newer remote_url: one plugin ("fs" or "fs.<instance>") whose base_path the
	 * loader turns into remote_url (kvn_config_resolve). */
	char **remote_storage_plugins;
	size_t n_remote_storage_plugins;
	uint32_t worker_count; /* workers of the deployment, given to plugins; 0 = unset */

	/* kvnode's own */
	char *node_name; /* default: host name */
	char *listen; /* data-plane address, default "127.0.0.1:0" */
	char *scheduler_url; /* NULL = run alone */
	char *transport; /* "auto" | "verbs" | "tcp" */
	char *rdma_device; /* NULL = first active port */
	int gid_index; /* -1 = auto */
	/* Rails (node/cluster/rails_plan.c): devices ("auto": every one with an active port) */
	char **rdma_devices;
	size_t n_rdma_devices;
	uint64_t rail_slice_size; /* least bytes of a READ's slice on one rail, default 64 KiB */
	uint32_t rail_retry_ms;	  /* a broken rail is tried again after this, default 2000 */
	bool rail_numa;		  /* slices only over the rails near the memory, default true */
	char *gpu; /* "false" | "true" | "auto" | "N" (older form: true on device N) */
	char **gpu_devices; /* CUDA ordinals as "N", default ["0"]; see kvn_config_gpu_devices */
	size_t n_gpu_devices;
	uint64_t max_gpu_size; /* bytes per device (config: GB), default 0: no gpu tier */
	uint32_t heartbeat_ms; /* default 500 */
	char *auth_token;	/* the cluster's secret; see kvn_config_resolve_token */
	char *auth_token_file;	/* where it is read from when auth_token is not set */
	bool auth_token_from_file; /* kvn_config_resolve_token read it from a file */
	bool auth_token_generated; /* ... from this host's generated file */
	char *metrics_listen; /* NULL = off */
	int log_level; /* enum kvn_log_level, default info */
	char *socket_path; /* local client socket of `kvnode serve` */
	bool hugepages; /* try hugepages for the pool, default true */
	bool promote_to_cpu; /* copy hits from slower tiers into cpu, default true */
	bool pool_populate;  /* kvnode serve: make the pool resident at start, default true */
	uint32_t put_queue_depth; /* bound of the slow-tier write queue, default 64 */
	uint32_t put_threads; /* writer threads for slow tiers, default 2 */
	uint32_t plugin_stop_timeout_ms; /* SIGTERM → SIGKILL grace for plugins, default 3000 */
	char *plugin_restart; /* "never" | "on-failure", default never */
	char *lm_listen; /* HOST:PORT of the lm:// (LMCache cache-server) listener; NULL = off */

	/* Bounds on what a network peer can hold (docs/configuration.md "Limits"). Each refusal
	 * they cause is logged (rate-limited) and counted in the metrics. */
	uint64_t max_chunk_size;	    /* largest value taken from a peer, the lm:// server or
					     * the local socket; default 64 MiB */
	uint32_t peer_timeout_ms;	    /* a peer READ (connect included); default 5000 */
	uint32_t client_max_connections;    /* local socket; default 128 */
	uint64_t client_max_held_bytes;	    /* leases and reservations one client of the local
					     * socket may hold; default 0 = a quarter of the
					     * pool */
	uint32_t transport_max_connections; /* readers of this node's pool; default 1024 */
	uint32_t transport_hello_timeout_ms; /* a reader's hello must arrive in; default 5000 */
	uint32_t lm_max_connections;	    /* lm:// clients; default 128 */
	uint32_t lm_idle_timeout_ms;	    /* an lm:// client silent this long is closed; 0 =
					     * never; default 600000 */
	uint32_t lm_request_timeout_ms;	    /* a started lm:// request must be complete in;
					     * default 30000 */
	uint32_t metrics_max_connections;   /* /metrics scrapers at once; default 16 */
	uint32_t metrics_timeout_s;	    /* a /metrics connection idle this long is closed;
					     * default 10 */
	uint32_t scheduler_max_connections; /* the scheduler's; default 1024 */
	uint32_t scheduler_unjoined_timeout_ms; /* a connection that has not joined is closed
						 * after; default 10000 */
	uint64_t scheduler_reply_queue_max; /* replies queued to all slow readers together;
					     * default 256 MiB */
	uint32_t worker_id_grace_ms;	    /* an expired name keeps its worker id this long;
					     * default 600000 */
	/* etcd (scheduler_url: etcd://HOST:PORT[,...]/CLUSTER, docs/architecture.md §5.6) */
	uint32_t scheduler_lease_ttl_s; /* the leader's lease; default 5 */
	char *scheduler_advertise;	/* HOST:PORT nodes reach a leader at; default: listen */
	uint32_t etcd_timeout_ms;	/* each etcd call; default 2000 */
	char *etcd_user, *etcd_password, *etcd_token;
	bool etcd_tls;
	char *etcd_ca_file, *etcd_cert_file, *etcd_key_file;

	/* The loader's bookkeeping (where each key was set). The strings above are malloc'd and
	 * freed by kvn_config_free: code that changes one must free the old and strdup. */
	struct kvn_config_priv *priv;
};

/* gpu: off, on (refuse to start without the devices) or auto (use them when present). */
enum kvn_gpu_mode {
	KVN_GPU_OFF,
	KVN_GPU_ON,
	KVN_GPU_AUTO,
};
enum kvn_gpu_mode kvn_config_gpu_mode(const struct kvn_config *cfg);
/* The GPUs to use, into devs (at most max): [N] for gpu: N, else gpu_devices. Returns the
 * count (it may exceed max). */
size_t kvn_config_gpu_devices(const struct kvn_config *cfg, int *devs, size_t max);

/* A config holding only the defaults (never fails except for memory: NULL). */
struct kvn_config *kvn_config_new_defaults(void);
/* Parses YAML text as if read from `name` (for messages and relative paths); no env overrides. */
int kvn_config_parse(const char *text, size_t len, const char *name, struct kvn_config **out,
		     char *err, size_t errlen);
/* Applies KVNODE_<KEY> then LMCACHE_<KEY> overrides (KVNODE_ wins) from envp (NULL = environ). */
int kvn_config_apply_env(struct kvn_config *cfg, char *const *envp, char *err, size_t errlen);
/* extra_config value for key, NULL when unset. */
const char *kvn_config_extra(const struct kvn_config *cfg, const char *key);
/* Default local socket: $KVNODE_SOCKET, else $XDG_RUNTIME_DIR/kvnode.sock, else
 * /tmp/kvnode-<uid>.sock. Returns a malloc'd string. */
char *kvn_config_default_socket(void);
/* When no auth_token is set, reads it from auth_token_file or, without one, from this host's
 * generated file (kvn_auth_default_file), which create makes on first use (kvnode serve and
 * kvnode scheduler; the CLI only reads). Sets auth_token_generated for the generated file.
 * Sets auth_token_from_file when it read one. 0, or -errno with err naming the file and the fix
 * (a missing file without create: 0). */
int kvn_config_resolve_token(struct kvn_config *cfg, bool create, char *err, size_t errlen);
/* A listener on addr (what: "listen", "--listen" …) that is not a loopback address needs a
 * configured token (auth_token, or auth_token_file naming a file every host has): the host's
 * generated one is unknown to other hosts, and without any the listener would be open to
 * everyone. -EINVAL with err saying how to set one. Call before kvn_config_resolve_token. */
int kvn_config_check_listener(const struct kvn_config *cfg, const char *what, const char *addr,
			      char *err, size_t errlen);
/* Turns LMCache's newer spellings into the keys kvnode reads: extra_config
 * storage_plugin.<name>.* into external_backend.<name>.*, save_chunk_meta into
 * remote.save_chunk_meta, remote_storage_plugins into remote_url. -EINVAL with err naming the
 * key when they cannot be (two spellings with different values, a plugin kvnode cannot run).
 * kvn_config_parse, kvn_config_apply_env and kvn_config_load call it before validating. */
int kvn_config_resolve(struct kvn_config *cfg, char *err, size_t errlen);
/* Checks that span keys (each external backend has module_path and class_name, no built-in
 * tier name …). kvn_config_parse, kvn_config_apply_env and kvn_config_load already call it. */
int kvn_config_validate(const struct kvn_config *cfg, char *err, size_t errlen);
/* The effective config as one JSON object with the file's keys and units (sizes in GB,
 * extra_config flattened to dotted keys); malloc'd, free() it; NULL when out of memory. With
 * redact, auth_token, passwords in URLs and extra_config values whose name says password,
 * secret or token are "***". */
char *kvn_config_to_json(const struct kvn_config *cfg, bool redact);
/* Where key got its value: "kvnode.yaml:12", "env KVNODE_CHUNK_SIZE" or "default"; NULL for
 * a key the config does not have. */
const char *kvn_config_origin(const struct kvn_config *cfg, const char *key);
/* A top-level key's value as text, as a file would write it (sizes in GB, lists joined with
 * ",", log_level by name). -ENOENT for an unknown key, extra_config (see kvn_config_extra) or
 * an unset value; -ENOSPC when len is too short. */
int kvn_config_value(const struct kvn_config *cfg, const char *key, char *buf, size_t len);

#endif
