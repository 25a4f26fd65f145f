/* Config (docs/architecture.md §7): the table of keys, value parsing shared by file and
 * environment, lifetime and cross-key checks. Reading: config_yaml.c (file), config_env.c
 * (environment); output: config_json.c. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/auth.h"
#include "node/engine/config_keys.h"
#include "core/log.h"
#include "core/netaddr.h"

#define COMP "config"

#define FIELD(f) offsetof(struct kvn_config, f)

const struct kvn_keydef kvn_config_keys[] = {
    /* LMCache's keys (lmcache/v1/config.py in LMCache's repository) */
    {"chunk_size", KVN_K_UINT, FIELD(chunk_size), 0, 1, UINT32_MAX, KVN_KF_LMCACHE},
    {"local_cpu", KVN_K_BOOL, FIELD(local_cpu), 0, 0, 0, KVN_KF_LMCACHE},
    {"max_local_cpu_size", KVN_K_GB, FIELD(max_local_cpu_size), 0, 0, 0, KVN_KF_LMCACHE},
    {"local_disk", KVN_K_PATH, FIELD(local_disk), 0, 0, 0,
     KVN_KF_FILE_URL | KVN_KF_NULLABLE | KVN_KF_RESOLVE | KVN_KF_LMCACHE},
    {"max_local_disk_size", KVN_K_GB, FIELD(max_local_disk_size), 0, 0, 0, KVN_KF_LMCACHE},
    {"remote_url", KVN_K_STR, FIELD(remote_url), 0, 0, 0, KVN_KF_NULLABLE | KVN_KF_LMCACHE},
    {"remote_serde", KVN_K_STR, FIELD(remote_serde), 0, 0, 0, KVN_KF_NULLABLE | KVN_KF_LMCACHE},
    {"external_backends", KVN_K_LIST, FIELD(external_backends), FIELD(n_external_backends), 0, 0,
     KVN_KF_SPLIT | KVN_KF_LMCACHE},
    {"extra_config", KVN_K_EXTRA, 0, 0, 0, 0, KVN_KF_LMCACHE},
    {"plugin_locations", KVN_K_LIST, FIELD(plugin_locations), FIELD(n_plugin_locations), 0, 0,
     KVN_KF_RESOLVE | KVN_KF_LMCACHE},
    {"remote_storage_plugins", KVN_K_LIST, FIELD(remote_storage_plugins),
     FIELD(n_remote_storage_plugins), 0, 0, KVN_KF_SPLIT | KVN_KF_LMCACHE},
    /* kvnode's own */
    {"node_name", KVN_K_STR, FIELD(node_name), 0, 0, 0, 0},
    {"listen", KVN_K_STR, FIELD(listen), 0, 0, 0, 0},
    {"scheduler_url", KVN_K_STR, FIELD(scheduler_url), 0, 0, 0, KVN_KF_NULLABLE},
    {"transport", KVN_K_TRANSPORT, FIELD(transport), 0, 0, 0, 0},
    {"rdma_device", KVN_K_STR, FIELD(rdma_device), 0, 0, 0, KVN_KF_NULLABLE},
    {"gid_index", KVN_K_INT, FIELD(gid_index), 0, -1, INT_MAX, 0},
    {"rdma_devices", KVN_K_LIST, FIELD(rdma_devices), FIELD(n_rdma_devices), 0, 0, KVN_KF_SPLIT},
    {"rail_slice_size", KVN_K_SIZE, FIELD(rail_slice_size), 0, 4096, 1ll << 30, 0},
    {"rail_retry_ms", KVN_K_UINT, FIELD(rail_retry_ms), 0, 1, INT32_MAX, 0},
    {"rail_numa", KVN_K_BOOL, FIELD(rail_numa), 0, 0, 0, 0},
    {"gpu", KVN_K_GPU, FIELD(gpu), 0, 0, 0, 0},
    {"gpu_devices", KVN_K_LIST, FIELD(gpu_devices), FIELD(n_gpu_devices), 0, 0,
     KVN_KF_SPLIT | KVN_KF_GPU_INDEX},
    {"max_gpu_size", KVN_K_GB, FIELD(max_gpu_size), 0, 0, 0, 0},
    {"heartbeat_ms", KVN_K_UINT, FIELD(heartbeat_ms), 0, 1, INT32_MAX, 0},
    {"auth_token", KVN_K_STR, FIELD(auth_token), 0, 0, 0, KVN_KF_NULLABLE | KVN_KF_SECRET},
    {"auth_token_file", KVN_K_PATH, FIELD(auth_token_file), 0, 0, 0,
     KVN_KF_NULLABLE | KVN_KF_RESOLVE},
    {"metrics_listen", KVN_K_ADDR, FIELD(metrics_listen), 0, 0, 0, KVN_KF_NULLABLE},
    {"log_level", KVN_K_LOGLEVEL, FIELD(log_level), 0, 0, 0, 0},
    {"socket_path", KVN_K_PATH, FIELD(socket_path), 0, 0, 0, KVN_KF_RESOLVE},
    {"hugepages", KVN_K_BOOL, FIELD(hugepages), 0, 0, 0, 0},
    {"promote_to_cpu", KVN_K_BOOL, FIELD(promote_to_cpu), 0, 0, 0, 0},
    {"pool_populate", KVN_K_BOOL, FIELD(pool_populate), 0, 0, 0, 0},
    {"put_queue_depth", KVN_K_UINT, FIELD(put_queue_depth), 0, 1, 1 << 20, 0},
    {"put_threads", KVN_K_UINT, FIELD(put_threads), 0, 1, 64, 0},
    {"plugin_stop_timeout_ms", KVN_K_UINT, FIELD(plugin_stop_timeout_ms), 0, 0, INT32_MAX, 0},
    {"plugin_restart", KVN_K_RESTART, FIELD(plugin_restart), 0, 0, 0, 0},
    {"lm_listen", KVN_K_ADDR, FIELD(lm_listen), 0, 0, 0, KVN_KF_NULLABLE},
    {"worker_count", KVN_K_UINT, FIELD(worker_count), 0, 0, 65536, 0},
    /* Limits */
    {"max_chunk_size", KVN_K_SIZE, FIELD(max_chunk_size), 0, 4096, 1ll << 32, 0},
    {"client_max_held_bytes", KVN_K_SIZE, FIELD(client_max_held_bytes), 0, 0, 1ll << 52, 0},
    {"peer_timeout_ms", KVN_K_UINT, FIELD(peer_timeout_ms), 0, 1, INT32_MAX, 0},
    {"client_max_connections", KVN_K_UINT, FIELD(client_max_connections), 0, 1, 65536, 0},
    {"transport_max_connections", KVN_K_UINT, FIELD(transport_max_connections), 0, 1, 65536, 0},
    {"transport_hello_timeout_ms", KVN_K_UINT, FIELD(transport_hello_timeout_ms), 0, 1, INT32_MAX,
     0},
    {"lm_max_connections", KVN_K_UINT, FIELD(lm_max_connections), 0, 1, 65536, 0},
    {"lm_idle_timeout_ms", KVN_K_UINT, FIELD(lm_idle_timeout_ms), 0, 0, INT32_MAX, 0},
    {"lm_request_timeout_ms", KVN_K_UINT, FIELD(lm_request_timeout_ms), 0, 1, INT32_MAX, 0},
    {"metrics_max_connections", KVN_K_UINT, FIELD(metrics_max_connections), 0, 1, 1024, 0},
    {"metrics_timeout_s", KVN_K_UINT, FIELD(metrics_timeout_s), 0, 1, 3600, 0},
    {"scheduler_max_connections", KVN_K_UINT, FIELD(scheduler_max_connections), 0, 1, 65536, 0},
    {"scheduler_unjoined_timeout_ms", KVN_K_UINT, FIELD(scheduler_unjoined_timeout_ms), 0, 1,
     INT32_MAX, 0},
    {"scheduler_reply_queue_max", KVN_K_SIZE, FIELD(scheduler_reply_queue_max), 0, 1 << 20,
     1ll << 40, 0},
    {"worker_id_grace_ms", KVN_K_UINT, FIELD(worker_id_grace_ms), 0, 0, INT32_MAX, 0},
    /* etcd (scheduler_url: etcd://...): the leader's lease, where it is reached, the client */
    {"scheduler_lease_ttl_s", KVN_K_UINT, FIELD(scheduler_lease_ttl_s), 0, 2, 3600, 0},
    {"scheduler_advertise", KVN_K_STR, FIELD(scheduler_advertise), 0, 0, 0, KVN_KF_NULLABLE},
    {"etcd_timeout_ms", KVN_K_UINT, FIELD(etcd_timeout_ms), 0, 1, INT32_MAX, 0},
    {"etcd_user", KVN_K_STR, FIELD(etcd_user), 0, 0, 0, KVN_KF_NULLABLE},
    {"etcd_password", KVN_K_STR, FIELD(etcd_password), 0, 0, 0, KVN_KF_NULLABLE | KVN_KF_SECRET},
    {"etcd_token", KVN_K_STR, FIELD(etcd_token), 0, 0, 0, KVN_KF_NULLABLE | KVN_KF_SECRET},
    {"etcd_tls", KVN_K_BOOL, FIELD(etcd_tls), 0, 0, 0, 0},
    {"etcd_ca_file", KVN_K_PATH, FIELD(etcd_ca_file), 0, 0, 0, KVN_KF_NULLABLE | KVN_KF_RESOLVE},
    {"etcd_cert_file", KVN_K_PATH, FIELD(etcd_cert_file), 0, 0, 0,
     KVN_KF_NULLABLE | KVN_KF_RESOLVE},
    {"etcd_key_file", KVN_K_PATH, FIELD(etcd_key_file), 0, 0, 0, KVN_KF_NULLABLE | KVN_KF_RESOLVE},
};

/* LMCache's newer names of kvnode's keys (lmcache/v1/config.py, _CONFIG_ALIASES: the older
 * names are the deprecated ones there). Either name sets the key. */
static const struct {
	const char *alias;
	const char *name;
} aliases[] = {
    {"storage_plugins", "external_backends"},
    {"runtime_plugin_locations", "plugin_locations"},
};

/* LMCache keys that kvnode has no use for: accepted so that one file can serve both, with an
 * info line instead of an "unknown key" warning. Every key of _CONFIG_DEFINITIONS and
 * _CONFIG_ALIASES in lmcache/v1/config.py (LMCache commit 000620e3, and the keys of the earlier
 * generation at commit 3ecd72f8 that it dropped), and of the older lmcache/config.py. */
static const char lmcache_ignored[] =
    /* lmcache/v1/config.py, 000620e3 */
    "reserve_local_cpu_size local_disk_path_sharding use_layerwise "
    "save_decode_cache pre_caching_hash_algorithm enable_blending blend_recompute_ratios "
    "blend_thresholds blend_check_layers blend_min_tokens blend_special_str retrieve_locations "
    "store_location enable_p2p p2p_host p2p_init_ports p2p_lookup_ports mp_host mp_port "
    "enable_controller lmcache_instance_id controller_pull_url controller_reply_url "
    "lmcache_worker_ports lmcache_worker_ids lmcache_worker_heartbeat_delay_time "
    "lmcache_worker_heartbeat_time enable_pd pd_role pd_buffer_size pd_buffer_device "
    "pd_peer_host pd_peer_init_port pd_peer_alloc_port pd_peer_query_port pd_proxy_host "
    "pd_proxy_port pd_allocation_timeout_sec pd_shutdown_timeout_sec "
    "pd_condition_poll_interval_sec pd_max_prefill_len pd_backend_mode "
    "pd_skip_proxy_notification pd_bidirectional transfer_channel nixl_backends "
    "nixl_buffer_size nixl_buffer_device gds_path gds_path_sharding gds_buffer_size maru_path "
    "maru_pool_size use_gds gds_backend audit_actual_remote_url internal_api_server_host "
    "save_unfull_chunk blocking_timeout_secs external_lookup_client py_enable_gc cache_policy "
    "cost_aware_half_life_seconds cost_aware_ewma_alpha numa_mode enable_async_loading "
    "internal_api_server_enabled internal_api_server_port_start priority_limit "
    "internal_api_server_include_index_list internal_api_server_socket_path_prefix "
    "lookup_timeout_ms min_retrieve_tokens hit_miss_ratio lookup_server_worker_ids "
    "enable_scheduler_bypass_lookup script_allowed_imports enable_lazy_memory_allocator "
    "lazy_memory_initial_ratio lazy_memory_expand_trigger_ratio lazy_memory_step_ratio "
    "lazy_memory_safe_size enable_chunk_statistics chunk_statistics_auto_start_statistics "
    "chunk_statistics_auto_exit_timeout_hours chunk_statistics_auto_exit_target_unique_chunks "
    "chunk_statistics_strategy enable_kv_events use_gpu_connector_v3 pin_timeout_sec "
    "pin_check_interval_sec remote_config_url app_id enable_hidden_state_cache "
    "max_hidden_state_cpu_size hidden_state_layers hidden_states_retrieve_mode "
    /* its _CONFIG_ALIASES and _DEPRECATED_CONFIGS */
    "enable_xpyd nixl_peer_host nixl_peer_init_port nixl_peer_alloc_port nixl_proxy_host "
    "nixl_proxy_port nixl_role controller_url lmcache_worker_port nixl_peer_port "
    /* lmcache/v1/config.py, 3ecd72f8 */
    "blend_recompute_ratio lookup_url distributed_url error_handling enable_nixl "
    "nixl_receiver_host nixl_receiver_port nixl_enable_gc weka_path cufile_buffer_size "
    /* lmcache/config.py (before v1) */
    "max_local_cache_size pipelined_backend blend_separator blend_add_special_in_precomp "
    "use_experimental";

/* LMCache keys whose kvnode counterpart works differently: a warning, since the user most
 * likely meant it. */
static const struct {
	const char *name;
	const char *hint;
} lmcache_renamed[] = {
    {"local_cpu_use_hugepages", "hugepages"},
    {"local_device", "local_cpu / local_disk"},
};

static const char *const builtin_tiers[] = {"cpu", "disk", "peer", "remote"};

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
_Static_assert(ARRAY_SIZE(kvn_config_keys) == KVN_NKEYS, "update KVN_NKEYS in config_keys.h");

/* ------------------------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------------------------ */

int
kvn_config_nomem(char *err, size_t errlen)
{
	return kvn_seterr(-ENOMEM, err, errlen, "config: out of memory");
}

int
kvn_config_key_index(const char *name)
{
	for (size_t i = 0; i < KVN_NKEYS; i++)
		if (!strcmp(kvn_config_keys[i].name, name))
			return (int)i;
	return -1;
}

int
kvn_config_alias_index(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(aliases); i++)
		if (!strcmp(aliases[i].alias, name))
			return kvn_config_key_index(aliases[i].name);
	return -1;
}

const char *
kvn_config_alias_of(size_t ki, size_t i)
{
	for (size_t a = 0; a < ARRAY_SIZE(aliases); a++)
		if (!strcmp(aliases[a].name, kvn_config_keys[ki].name) && i-- == 0)
			return aliases[a].alias;
	return NULL;
}

int
kvn_config_set_origin(struct kvn_config *cfg, size_t i, const char *origin)
{
	if (!cfg->priv)
		return 0; /* a config not made by kvn_config_new_defaults keeps no origins */
	char *o = strdup(origin);
	if (!o)
		return -ENOMEM;
	free(cfg->priv->origin[i]);
	cfg->priv->origin[i] = o;
	return 0;
}

static int
replace_str(char **slot, const char *text)
{
	char *s = NULL;
	if (text && !(s = strdup(text)))
		return -ENOMEM;
	free(*slot);
	*slot = s;
	return 0;
}

static void
free_list(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

/* Levenshtein distance, for "did you mean". */
static size_t
edit_distance(const char *a, const char *b)
{
	size_t m = strlen(b), row[64];
	if (m >= ARRAY_SIZE(row))
		return SIZE_MAX;
	for (size_t j = 0; j <= m; j++)
		row[j] = j;
	for (size_t i = 1; a[i - 1]; i++) {
		size_t diag = row[0];
		row[0] = i;
		for (size_t j = 1; j <= m; j++) {
			size_t up = row[j];
			size_t sub = diag + (tolower((unsigned char)a[i - 1]) != b[j - 1]);
			size_t best = up + 1 < row[j - 1] + 1 ? up + 1 : row[j - 1] + 1;
			row[j] = sub < best ? sub : best;
			diag = up;
		}
	}
	return row[m];
}

static const char *
closest_key(const char *name)
{
	const char *best = kvn_config_keys[0].name;
	size_t bestd = SIZE_MAX;
	for (size_t i = 0; i < KVN_NKEYS; i++) {
		size_t d = edit_distance(name, kvn_config_keys[i].name);
		if (d < bestd) {
			bestd = d;
			best = kvn_config_keys[i].name;
		}
	}
	return best;
}

/* Notes a top-level key kvnode does not read: LMCache's own keys quietly, others loudly. */
void
kvn_config_note_unread(const char *where, const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(lmcache_renamed); i++)
		if (!strcmp(lmcache_renamed[i].name, name)) {
			kvn_warn(
			    COMP,
			    "%s: LMCache key \"%s\" ignored: kvnode does not read it (use \"%s\")",
			    where, name, lmcache_renamed[i].hint);
			return;
		}
	if (kvn_config_lmcache_key(name)) {
		kvn_info(COMP, "%s: \"%s\": LMCache key, not used by kvnode", where, name);
		return;
	}
	kvn_warn(COMP, "%s: unknown key \"%s\" (did you mean \"%s\"?)", where, name,
		 closest_key(name));
}

bool
kvn_config_lmcache_key(const char *name)
{
	size_t n = strlen(name);
	for (const char *w = lmcache_ignored; n && !strchr(name, ' '); w += n) {
		if (!(w = strstr(w, name)))
			break;
		if ((w == lmcache_ignored || w[-1] == ' ') && (w[n] == ' ' || !w[n]))
			return true;
	}
	return false;
}

/* ------------------------------------------------------------------------------------------
 * Values: one parser per key type, shared by the YAML file and the environment. `where` is
 * "file:line: key" or "env VAR"; text NULL is YAML null.
 * ------------------------------------------------------------------------------------------ */

static const char *
describe(const struct kvn_keydef *kd, char *buf, size_t len)
{
	switch (kd->type) {
	case KVN_K_UINT:
	case KVN_K_INT:
		if (kd->max >= INT32_MAX)
			snprintf(buf, len, "an integer %s %lld",
				 kd->min == 1 ? ">" : ">=", kd->min == 1 ? 0 : kd->min);
		else
			snprintf(buf, len, "an integer from %lld to %lld", kd->min, kd->max);
		return buf;
	case KVN_K_BOOL:
		return "true or false (or yes/no, on/off)";
	case KVN_K_GB:
		return "a number of GB >= 0";
	case KVN_K_STR:
		return kd->flags & KVN_KF_NULLABLE ? "a string (or null)" : "a non-empty string";
	case KVN_K_PATH:
		return kd->flags & KVN_KF_FILE_URL ? "a directory path or file:// URL (or null)"
						   : "a non-empty path";
	case KVN_K_LIST:
		return kd->flags & KVN_KF_GPU_INDEX ? "a list of GPU indices ([0, 1] or \"0,1\")"
						    : "a list of strings (or one string)";
	case KVN_K_EXTRA:
		return "a mapping of option names to values";
	case KVN_K_TRANSPORT:
		return "one of auto, verbs, tcp";
	case KVN_K_LOGLEVEL:
		return "one of error, warn, info, debug";
	case KVN_K_GPU:
		return "true, false or auto (or a GPU index 0, 1, … or cuda:N: gpu: true on that "
		       "device)";
	case KVN_K_RESTART:
		return "one of never, on-failure";
	case KVN_K_ADDR:
		return "HOST:PORT (port 0 to 65535)";
	case KVN_K_SIZE:
		snprintf(buf, len, "a size from %lld to %lld bytes (65536, 64KiB, 64MiB, 1GiB)",
			 kd->min, kd->max);
		return buf;
	}
	return "a valid value";
}

/* got: already formatted ("a list", "null") or NULL to quote text. */
static int
bad_value(char *err, size_t errlen, const char *where, const struct kvn_keydef *kd,
	  const char *text, const char *got)
{
	char desc[96];
	if (got)
		return kvn_seterr(-EINVAL, err, errlen, "%s: must be %s, got %s%s", where,
				  describe(kd, desc, sizeof(desc)), got,
				  strcmp(got, "null") ? "" : " (remove the line for the default)");
	return kvn_seterr(-EINVAL, err, errlen, "%s: must be %s, got \"%.80s%s\"", where,
			  describe(kd, desc, sizeof(desc)), text, strlen(text) > 80 ? "…" : "");
}

static bool
parse_ll(const char *s, long long *out)
{
	const char *p = s + (*s == '-' || *s == '+');
	if (!isdigit((unsigned char)*p))
		return false;
	for (; *p; p++)
		if (!isdigit((unsigned char)*p))
			return false;
	*out = strtoll(s, NULL, 10); /* saturates: the range check then says "at most" */
	return true;
}

static int
parse_bool(const char *s)
{
	static const char *const t[] = {"true", "yes", "on", "1"}, *const f[] = {"false", "no",
										 "off", "0"};
	for (size_t i = 0; i < ARRAY_SIZE(t); i++) {
		if (!strcasecmp(s, t[i]))
			return 1;
		if (!strcasecmp(s, f[i]))
			return 0;
	}
	return -1;
}

/* GB (int or float, >= 0, finite) → bytes, 1 GB = 2^30 bytes as in LMCache. */
static bool
parse_gb(const char *s, double *gb, uint64_t *bytes)
{
	if (!*s || strspn(s, "0123456789.eE+-") != strlen(s))
		return false; /* also keeps out strtod's nan, inf and hex forms */
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (*end || errno || !isfinite(v) || v < 0 || v * 1073741824.0 >= 0x1p63)
		return false;
	*gb = v;
	*bytes = (uint64_t)llround(v * 1073741824.0);
	return true;
}

/* Bytes, or a number of KiB/MiB/GiB/TiB (K, M, G, T, KB, MB … mean the same: units of 1024). */
static bool
parse_size(const char *s, uint64_t *bytes)
{
	static const char units[] = "KMGT";
	size_t digits = strspn(s, "0123456789");
	if (!digits || digits > 15)
		return false;
	unsigned long long v = strtoull(s, NULL, 10);
	const char *u = s + digits;
	while (*u == ' ')
		u++;
	if (!*u) {
		*bytes = v;
		return true;
	}
	const char *at = strchr(units, toupper((unsigned char)*u));
	if (!at || !*at)
		return false;
	u++;
	if (!strcasecmp(u, "ib") || !strcasecmp(u, "b"))
		u += strlen(u);
	if (*u)
		return false;
	*bytes = (uint64_t)v << (10 * (at - units + 1));
	return (*bytes >> (10 * (at - units + 1))) == v;
}

/* A GPU index as written: 3 or cuda:3 (PyTorch's device name), normalized to "3". */
static bool
parse_gpu_index(const char *s, char *norm, size_t len)
{
	long long v;
	if (!strncasecmp(s, "cuda:", 5))
		s += 5;
	if (*s == '-' || *s == '+' || !parse_ll(s, &v) || v > INT_MAX)
		return false;
	snprintf(norm, len, "%lld", v);
	return true;
}

/* true | false | auto, normalized; the older none is false and an index N is true on device
 * N (kvn_config_gpu_devices), kept as "N". 0 and 1 are indices here, not booleans, as they
 * were before gpu took true and false. */
static bool
parse_gpu(const char *s, char *norm, size_t len)
{
	static const char *const off[] = {"false", "none", "no", "off"};
	static const char *const on[] = {"true", "yes", "on"};
	for (size_t i = 0; i < ARRAY_SIZE(off); i++)
		if (!strcasecmp(s, off[i]))
			return snprintf(norm, len, "false") > 0;
	for (size_t i = 0; i < ARRAY_SIZE(on); i++)
		if (!strcasecmp(s, on[i]))
			return snprintf(norm, len, "true") > 0;
	if (!strcasecmp(s, "auto"))
		return snprintf(norm, len, "auto") > 0;
	return parse_gpu_index(s, norm, len);
}

/* A path as written: "file://" stripped where allowed, relative ones joined to base (the
 * config file's directory; NULL for values from the environment, which are relative to the
 * working directory like any shell path). */
static int
make_path(const struct kvn_keydef *kd, const char *text, const char *base, char **out)
{
	if ((kd->flags & KVN_KF_FILE_URL) && !strncmp(text, "file://", 7))
		text += 7;
	if (kd->flags & KVN_KF_FILE_URL) {
		const char *sep = strstr(text, "://");
		if (sep && sep > text &&
		    strspn(text, "abcdefghijklmnopqrstuvwxyz0123456789+.-") == (size_t)(sep - text))
			return -EINVAL; /* s3://, redis:// … are not local directories */
	}
	if (!*text)
		return -EINVAL;
	int n;
	if (text[0] != '/' && base && (kd->flags & KVN_KF_RESOLVE) && strcmp(base, "."))
		n = asprintf(out, "%s/%s", base, text);
	else
		n = asprintf(out, "%s", text);
	return n < 0 ? -ENOMEM : 0;
}

static int
set_list(struct kvn_config *cfg, const struct kvn_keydef *kd, char **items, size_t n,
	 const char *base, const char *where, char *err, size_t errlen)
{
	char **v = calloc(n ? n : 1, sizeof(*v));
	if (!v)
		return kvn_config_nomem(err, errlen);
	for (size_t i = 0; i < n; i++) {
		int rc = 0;
		char idx[32];
		if (!*items[i])
			rc = kvn_seterr(-EINVAL, err, errlen, "%s: entry %zu is empty", where,
					i + 1);
		else if ((kd->flags & KVN_KF_GPU_INDEX) &&
			 !parse_gpu_index(items[i], idx, sizeof(idx)))
			rc = kvn_seterr(-EINVAL, err, errlen,
					"%s: entry %zu must be a GPU index (0, 1, … or cuda:N), "
					"got \"%.40s\"",
					where, i + 1, items[i]);
		else if (kd->flags & KVN_KF_GPU_INDEX)
			rc = (v[i] = strdup(idx)) ? 0 : kvn_config_nomem(err, errlen);
		else if (kd->flags & KVN_KF_RESOLVE)
			rc = make_path(kd, items[i], base, &v[i]) ? kvn_config_nomem(err, errlen)
								  : 0;
		else if (!(v[i] = strdup(items[i])))
			rc = kvn_config_nomem(err, errlen);
		if (rc) {
			free_list(v, i + 1);
			return rc;
		}
	}
	char ***slot = (char ***)((char *)cfg + kd->off);
	size_t *nslot = (size_t *)((char *)cfg + kd->noff);
	free_list(*slot, *nslot);
	*slot = v;
	*nslot = n;
	return 0;
}

/* Splits "a, b,,c" into trimmed non-empty items (malloc'd array of pointers into a copy). */
static int
split_commas(const char *text, char ***items, size_t *n, char **copy)
{
	*n = 0;
	*items = NULL;
	if (!(*copy = strdup(text)))
		return -ENOMEM;
	size_t cap = 1;
	for (const char *p = text; *p; p++)
		cap += *p == ',';
	if (!(*items = calloc(cap, sizeof(char *))))
		return -ENOMEM;
	char *save = NULL;
	for (char *tok = strtok_r(*copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		while (isspace((unsigned char)*tok))
			tok++;
		char *e = tok + strlen(tok);
		while (e > tok && isspace((unsigned char)e[-1]))
			*--e = '\0';
		if (*tok)
			(*items)[(*n)++] = tok;
	}
	return 0;
}

int
kvn_config_set_list_text(struct kvn_config *cfg, const struct kvn_keydef *kd, const char *text,
			 bool split, const char *base, const char *where, char *err, size_t errlen)
{
	char **items = NULL, *copy = NULL, *one[1] = {(char *)text};
	size_t n = 0;
	int rc;
	if (!text)
		rc = set_list(cfg, kd, NULL, 0, base, where, err, errlen);
	else if (!split)
		rc = set_list(cfg, kd, one, 1, base, where, err, errlen);
	else if (split_commas(text, &items, &n, &copy))
		rc = kvn_config_nomem(err, errlen);
	else
		rc = set_list(cfg, kd, items, n, base, where, err, errlen);
	free(items);
	free(copy);
	return rc;
}

/* The setters of kvn_config_set_scalar, one per key type: the text checked against the key's
 * definition, then stored at p (its field in the config). */

static int
set_int(const struct kvn_keydef *kd, void *p, const char *text, const char *where, char *err,
	size_t errlen)
{
	long long v;
	if (!parse_ll(text, &v) || v < kd->min)
		return bad_value(err, errlen, where, kd, text, NULL);
	if (v > kd->max && kd->max < INT32_MAX)
		return bad_value(err, errlen, where, kd, text, NULL); /* "from 1 to 64" */
	if (v > kd->max)
		return kvn_seterr(-EINVAL, err, errlen, "%s: must be at most %lld, got \"%.40s\"",
				  where, kd->max, text);
	if (kd->type == KVN_K_UINT)
		*(uint32_t *)p = (uint32_t)v;
	else
		*(int *)p = (int)v;
	return 0;
}

static int
set_size(const struct kvn_keydef *kd, void *p, const char *text, const char *where, char *err,
	 size_t errlen)
{
	uint64_t bytes;
	if (!parse_size(text, &bytes) || bytes < (uint64_t)kd->min || bytes > (uint64_t)kd->max)
		return bad_value(err, errlen, where, kd, text, NULL);
	*(uint64_t *)p = bytes;
	return 0;
}

static int
set_str(const struct kvn_keydef *kd, void *p, const char *text, const char *where, char *err,
	size_t errlen)
{
	if (!text || !*text) {
		if (!(kd->flags & KVN_KF_NULLABLE))
			return bad_value(err, errlen, where, kd, "", NULL);
		text = NULL;
	}
	return replace_str(p, text) ? kvn_config_nomem(err, errlen) : 0;
}

/* A relative path is taken relative to base (make_path). */
static int
set_path(const struct kvn_keydef *kd, void *p, const char *text, const char *base,
	 const char *where, char *err, size_t errlen)
{
	char *path = NULL;
	if (text && *text) {
		int rc = make_path(kd, text, base, &path);
		if (rc == -ENOMEM)
			return kvn_config_nomem(err, errlen);
		if (rc)
			return bad_value(err, errlen, where, kd, text, NULL);
	} else if (!(kd->flags & KVN_KF_NULLABLE)) {
		return bad_value(err, errlen, where, kd, "", NULL);
	}
	free(*(char **)p);
	*(char **)p = path;
	return 0;
}

/* auto, verbs or tcp in any case; stored in lower case. */
static int
set_transport(const struct kvn_keydef *kd, void *p, const char *text, const char *where, char *err,
	      size_t errlen)
{
	char norm[32];
	if (strcasecmp(text, "auto") && strcasecmp(text, "verbs") && strcasecmp(text, "tcp"))
		return bad_value(err, errlen, where, kd, text, NULL);
	snprintf(norm, sizeof(norm), "%s", text);
	for (char *c = norm; *c; c++)
		*c = (char)tolower((unsigned char)*c);
	return replace_str(p, norm) ? kvn_config_nomem(err, errlen) : 0;
}

/* HOST:PORT (kvn_hostport_parse says what is wrong with one). */
static int
set_addr(const struct kvn_keydef *kd, void *p, const char *text, const char *where, char *err,
	 size_t errlen)
{
	if (text && *text) {
		char host[KVN_HOST_MAX], why[300];
		uint16_t port;
		if (kvn_hostport_parse(text, host, &port, why, sizeof(why)) < 0)
			return kvn_seterr(-EINVAL, err, errlen, "%s: %s", where, why);
	} else if (!(kd->flags & KVN_KF_NULLABLE)) {
		return bad_value(err, errlen, where, kd, "", NULL);
	} else {
		text = NULL;
	}
	return replace_str(p, text) ? kvn_config_nomem(err, errlen) : 0;
}

/* never or on-failure in any case; stored in lower case. */
static int
set_restart(const struct kvn_keydef *kd, void *p, const char *text, const char *where, char *err,
	    size_t errlen)
{
	char norm[32];
	if (strcasecmp(text, "never") && strcasecmp(text, "on-failure"))
		return bad_value(err, errlen, where, kd, text, NULL);
	snprintf(norm, sizeof(norm), "%s", strcasecmp(text, "never") ? "on-failure" : "never");
	return replace_str(p, norm) ? kvn_config_nomem(err, errlen) : 0;
}

/* Sets a scalar-typed key from text (NULL = null). */
int
kvn_config_set_scalar(struct kvn_config *cfg, size_t ki, const char *text, const char *base,
		      const char *where, char *err, size_t errlen)
{
	const struct kvn_keydef *kd = &kvn_config_keys[ki];
	void *p = (char *)cfg + kd->off;
	char norm[32];

	bool null_ok =
	    kd->type == KVN_K_LIST ||
	    ((kd->type == KVN_K_STR || kd->type == KVN_K_PATH || kd->type == KVN_K_ADDR) &&
	     (kd->flags & KVN_KF_NULLABLE));
	if (!text && !null_ok)
		return bad_value(err, errlen, where, kd, NULL, "null");
	switch (kd->type) {
	case KVN_K_UINT:
	case KVN_K_INT:
		return set_int(kd, p, text, where, err, errlen);
	case KVN_K_BOOL:
		if (parse_bool(text) < 0)
			return bad_value(err, errlen, where, kd, text, NULL);
		*(bool *)p = parse_bool(text);
		return 0;
	case KVN_K_GB: {
		double gb;
		if (!parse_gb(text, &gb, (uint64_t *)p))
			return bad_value(err, errlen, where, kd, text, NULL);
		if (cfg->priv)
			cfg->priv->gb[ki] = gb;
		return 0;
	}
	case KVN_K_SIZE:
		return set_size(kd, p, text, where, err, errlen);
	case KVN_K_STR:
		return set_str(kd, p, text, where, err, errlen);
	case KVN_K_PATH:
		return set_path(kd, p, text, base, where, err, errlen);
	case KVN_K_TRANSPORT:
		return set_transport(kd, p, text, where, err, errlen);
	case KVN_K_LOGLEVEL:
		if (kvn_log_level_parse(text) < 0)
			return bad_value(err, errlen, where, kd, text, NULL);
		*(int *)p = kvn_log_level_parse(text);
		return 0;
	case KVN_K_ADDR:
		return set_addr(kd, p, text, where, err, errlen);
	case KVN_K_RESTART:
		return set_restart(kd, p, text, where, err, errlen);
	case KVN_K_GPU:
		if (!parse_gpu(text, norm, sizeof(norm)))
			return bad_value(err, errlen, where, kd, text, NULL);
		return replace_str(p, norm) ? kvn_config_nomem(err, errlen) : 0;
	case KVN_K_LIST:
		return kvn_config_set_list_text(cfg, kd, text, kd->flags & KVN_KF_SPLIT, base,
						where, err, errlen);
	case KVN_K_EXTRA:
		break;
	}
	return bad_value(err, errlen, where, kd, text ? text : "", text ? NULL : "null");
}

/* ------------------------------------------------------------------------------------------
 * extra_config entries
 * ------------------------------------------------------------------------------------------ */

static struct kvn_config_kv *
find_extra(const struct kvn_config *cfg, const char *key)
{
	for (size_t i = 0; i < cfg->n_extra; i++)
		if (!strcmp(cfg->extra[i].key, key))
			return &cfg->extra[i];
	return NULL;
}

/* Adds key=value (value NULL removes it). From the file a repeat is an error; from the
 * environment the new value wins. */
int
kvn_config_put_extra(struct kvn_config *cfg, const char *key, const char *value, const char *origin,
		     bool replace, char *err, size_t errlen)
{
	struct kvn_config_kv *kv = find_extra(cfg, key);
	if (kv && !replace)
		return kvn_seterr(-EINVAL, err, errlen,
				  "%s: extra_config.%s: duplicate key (first set at %s)", origin,
				  key, kv->origin);
	if (kv && !value) {
		free(kv->key);
		free(kv->value);
		*kv = cfg->extra[--cfg->n_extra];
		return 0;
	}
	if (!value)
		return 0;
	char *v = strdup(value);
	if (!v)
		return kvn_config_nomem(err, errlen);
	if (!kv) {
		if (cfg->n_extra >= KVN_CONFIG_MAX_ENTRIES) {
			free(v);
			return kvn_seterr(-EINVAL, err, errlen,
					  "%s: extra_config: more than %d entries", origin,
					  KVN_CONFIG_MAX_ENTRIES);
		}
		struct kvn_config_kv *e = realloc(cfg->extra, (cfg->n_extra + 1) * sizeof(*e));
		if (!e || !(e[cfg->n_extra].key = strdup(key))) {
			if (e)
				cfg->extra = e;
			free(v);
			return kvn_config_nomem(err, errlen);
		}
		cfg->extra = e;
		kv = &e[cfg->n_extra++];
		kv->value = NULL;
	}
	free(kv->value);
	kv->value = v;
	snprintf(kv->origin, sizeof(kv->origin), "%s", origin);
	return 0;
}

int
kvn_config_bad_value(char *err, size_t errlen, const char *where, size_t ki, const char *text,
		     const char *got)
{
	return bad_value(err, errlen, where, &kvn_config_keys[ki], text, got);
}

int
kvn_config_set_list(struct kvn_config *cfg, size_t ki, char **items, size_t n, const char *base,
		    const char *where, char *err, size_t errlen)
{
	return set_list(cfg, &kvn_config_keys[ki], items, n, base, where, err, errlen);
}

const char *
kvn_config_extra(const struct kvn_config *cfg, const char *key)
{
	const struct kvn_config_kv *kv = cfg && key ? find_extra(cfg, key) : NULL;
	return kv ? kv->value : NULL;
}

double
kvn_config_gb(const struct kvn_config *cfg, size_t ki)
{
	uint64_t bytes = *(const uint64_t *)((const char *)cfg + kvn_config_keys[ki].off);
	double gb = cfg->priv ? cfg->priv->gb[ki] : -1.0;
	if (gb >= 0 && (uint64_t)llround(gb * 1073741824.0) == bytes)
		return gb;
	return (double)bytes / 1073741824.0; /* the field was set directly */
}

/* ------------------------------------------------------------------------------------------
 * Defaults and lifetime
 * ------------------------------------------------------------------------------------------ */

char *
kvn_config_default_socket(void)
{
	return kvn_default_socket_path();
}

struct kvn_config *
kvn_config_new_defaults(void)
{
	struct kvn_config *cfg = calloc(1, sizeof(*cfg));
	char host[256] = "";
	if (!cfg)
		return NULL;
	if (gethostname(host, sizeof(host) - 1) || !host[0])
		snprintf(host, sizeof(host), "localhost");
	cfg->chunk_size = 256;
	cfg->local_cpu = true;
	cfg->max_local_cpu_size = 5ull << 30;
	cfg->gid_index = -1;
	cfg->heartbeat_ms = 500;
	cfg->log_level = KVN_LOG_INFO;
	cfg->hugepages = true;
	cfg->promote_to_cpu = true;
	cfg->pool_populate = true;
	cfg->put_queue_depth = 64;
	cfg->put_threads = 2;
	cfg->plugin_stop_timeout_ms = 3000;
	cfg->max_chunk_size = 64ull << 20;
	cfg->peer_timeout_ms = 5000;
	cfg->client_max_connections = 128;
	cfg->transport_max_connections = 1024;
	cfg->transport_hello_timeout_ms = 5000;
	cfg->rail_slice_size = 64 << 10;
	cfg->rail_retry_ms = 2000;
	cfg->rail_numa = true;
	cfg->lm_max_connections = 128;
	cfg->lm_idle_timeout_ms = 600000;
	cfg->lm_request_timeout_ms = 30000;
	cfg->metrics_max_connections = 16;
	cfg->metrics_timeout_s = 10;
	cfg->scheduler_max_connections = 1024;
	cfg->scheduler_unjoined_timeout_ms = 10000;
	cfg->scheduler_reply_queue_max = 256ull << 20;
	cfg->worker_id_grace_ms = 600000;
	cfg->scheduler_lease_ttl_s = 5;
	cfg->etcd_timeout_ms = 2000;
	cfg->priv = calloc(1, sizeof(*cfg->priv));
	cfg->dir = strdup(".");
	cfg->remote_serde = strdup("naive");
	cfg->node_name = strdup(host);
	cfg->listen = strdup("127.0.0.1:0");
	cfg->transport = strdup("auto");
	cfg->gpu = strdup("false");
	cfg->gpu_devices = calloc(1, sizeof(char *));
	if (cfg->gpu_devices && (cfg->gpu_devices[0] = strdup("0")))
		cfg->n_gpu_devices = 1;
	cfg->plugin_restart = strdup("never");
	cfg->socket_path = kvn_config_default_socket();
	if (!cfg->priv || !cfg->dir || !cfg->remote_serde || !cfg->node_name || !cfg->listen ||
	    !cfg->transport || !cfg->gpu || !cfg->socket_path || !cfg->plugin_restart ||
	    !cfg->n_gpu_devices) {
		kvn_config_free(cfg);
		return NULL;
	}
	for (size_t i = 0; i < KVN_NKEYS; i++)
		cfg->priv->gb[i] = -1.0;
	cfg->priv->gb[kvn_config_key_index("max_local_cpu_size")] = 5.0;
	cfg->priv->gb[kvn_config_key_index("max_local_disk_size")] = 0.0;
	cfg->priv->gb[kvn_config_key_index("max_gpu_size")] = 0.0;
	return cfg;
}

KVN_API void
kvn_config_free(struct kvn_config *cfg)
{
	if (!cfg)
		return;
	for (size_t i = 0; i < KVN_NKEYS; i++) {
		const struct kvn_keydef *kd = &kvn_config_keys[i];
		void *p = (char *)cfg + kd->off;
		switch (kd->type) {
		case KVN_K_STR:
		case KVN_K_PATH:
		case KVN_K_TRANSPORT:
		case KVN_K_GPU:
		case KVN_K_RESTART:
		case KVN_K_ADDR:
			free(*(char **)p);
			break;
		case KVN_K_LIST:
			free_list(*(char ***)p, *(size_t *)((char *)cfg + kd->noff));
			break;
		default:
			break;
		}
		if (cfg->priv)
			free(cfg->priv->origin[i]);
	}
	for (size_t i = 0; i < cfg->n_extra; i++) {
		free(cfg->extra[i].key);
		free(cfg->extra[i].value);
	}
	free(cfg->extra);
	free(cfg->priv);
	free(cfg->path);
	free(cfg->dir);
	free(cfg);
}

/* ------------------------------------------------------------------------------------------
 * The auth token
 * ------------------------------------------------------------------------------------------ */

int
kvn_config_resolve_token(struct kvn_config *cfg, bool create, char *err, size_t errlen)
{
	if (cfg->auth_token && *cfg->auth_token)
		return 0;
	char path[PATH_MAX];
	const char *file = cfg->auth_token_file;
	if (!file) {
		int rc = kvn_auth_default_file(path, sizeof(path));
		if (rc) {
			return kvn_seterr(
			    rc, err, errlen,
			    "no auth_token is set and this user has no state directory for "
			    "one (set KVNODE_STATE_DIR, auth_token_file or auth_token)");
		}
		file = path;
	}
	char *token;
	int rc = kvn_auth_token_file(file, create, &token, err, errlen);
	if (rc == -ENOENT && !create)
		return 0;
	if (rc)
		return rc;
	free(cfg->auth_token);
	cfg->auth_token = token;
	cfg->auth_token_from_file = true;
	cfg->auth_token_generated = !cfg->auth_token_file;
	return 0;
}

int
kvn_config_check_listener(const struct kvn_config *cfg, const char *what, const char *addr,
			  char *err, size_t errlen)
{
	if ((cfg->auth_token && *cfg->auth_token) || cfg->auth_token_file)
		return 0;
	char host[KVN_HOST_MAX];
	uint16_t port;
	if (kvn_hostport_parse(addr, host, &port, NULL, 0) < 0 || kvn_host_is_loopback(host))
		return 0; /* a bad address is refused later, with its own message */
	return kvn_seterr(-EINVAL, err, errlen,
			  "%s %s is not a loopback address and no auth_token is configured: "
			  "every node and the scheduler of a cluster must share one secret. Set "
			  "auth_token in the config (e.g. auth_token: <the output of `openssl "
			  "rand -hex 32`>, the same on every host), or auth_token_file: a file "
			  "holding it (mode 0600) on every host; see docs/configuration.md",
			  what, addr);
}

/* ------------------------------------------------------------------------------------------
 * LMCache's newer spellings
 * ------------------------------------------------------------------------------------------ */

/* extra_config prefix LMCache's storage plugins use for kvnode's external_backend.<name>. */
#define STORAGE_PLUGIN_PREFIX "storage_plugin."
#define EXTERNAL_PREFIX	      "external_backend."
/* Marks a remote_url that the loader made from remote_storage_plugins. */
#define FROM_PLUGIN " (from remote_storage_plugins)"

static int
rename_storage_plugin_keys(struct kvn_config *cfg, char *err, size_t errlen)
{
	const size_t pl = strlen(STORAGE_PLUGIN_PREFIX);
	for (size_t i = 0; i < cfg->n_extra;) {
		struct kvn_config_kv *kv = &cfg->extra[i];
		if (strncmp(kv->key, STORAGE_PLUGIN_PREFIX, pl) || !kv->key[pl]) {
			i++;
			continue;
		}
		char *ours = NULL;
		if (asprintf(&ours, EXTERNAL_PREFIX "%s", kv->key + pl) < 0)
			return kvn_config_nomem(err, errlen);
		const struct kvn_config_kv *have = find_extra(cfg, ours);
		int rc = 0;
		if (have && strcmp(have->value, kv->value))
			rc = kvn_seterr(-EINVAL, err, errlen,
					"%s: extra_config.%s is \"%s\" but extra_config.%s (its "
					"other name, set at %s) is \"%s\": set one of them",
					kv->origin, kv->key, kv->value, ours, have->origin,
					have->value);
		else if (!have) {
			char origin[KVN_ORIGIN_MAX], *value = strdup(kv->value);
			snprintf(origin, sizeof(origin), "%s", kv->origin);
			rc = value ? kvn_config_put_extra(cfg, ours, value, origin, false, err,
							  errlen)
				   : kvn_config_nomem(err, errlen);
			free(value);
		}
		free(ours);
		if (rc)
			return rc;
		/* Dropped: kvnode reads the one name (the array may have moved). */
		kv = &cfg->extra[i];
		free(kv->key);
		free(kv->value);
		cfg->extra[i] = cfg->extra[--cfg->n_extra];
	}
	return 0;
}

/* LMCache's extra_config.save_chunk_meta (lmcache/v1/storage_backend/connector/base_connector.py,
 * init_chunk_meta) is an option of the remote tier's connector. */
static int
map_save_chunk_meta(struct kvn_config *cfg, char *err, size_t errlen)
{
	const struct kvn_config_kv *kv = find_extra(cfg, "save_chunk_meta");
	if (!kv || find_extra(cfg, "remote.save_chunk_meta"))
		return 0;
	char origin[KVN_ORIGIN_MAX];
	snprintf(origin, sizeof(origin), "%s", kv->origin);
	return kvn_config_put_extra(cfg, "remote.save_chunk_meta", kv->value, origin, false, err,
				    errlen);
}

/* "fs://" and the absolute base paths of a comma-separated base_path; relative ones are
 * against the config file's directory (or the working directory, for the environment's). */
static int
fs_url_of(const struct kvn_config *cfg, const struct kvn_config_kv *kv, char **url, char *err,
	  size_t errlen)
{
	char cwd[PATH_MAX];
	const char *base = cfg->dir;
	if (!strncmp(kv->origin, "env ", 4) || !base)
		base = getcwd(cwd, sizeof(cwd)) ? cwd : ".";
	size_t len = 0;
	FILE *f = open_memstream(url, &len);
	if (!f)
		return kvn_config_nomem(err, errlen);
	fputs("fs://", f);
	int rc = 0;
	const char *p = kv->value;
	for (size_t n = 0; !rc; p += n + 1) {
		n = strcspn(p, ",");
		size_t s = 0, e = n;
		while (s < e && isspace((unsigned char)p[s]))
			s++;
		while (e > s && isspace((unsigned char)p[e - 1]))
			e--;
		if (s == e || memchr(p + s, '?', e - s) || memchr(p + s, '#', e - s))
			rc = kvn_seterr(-EINVAL, err, errlen,
					"%s: extra_config.%s: \"%s\" holds an empty base path, or "
					"one with '?' or '#'",
					kv->origin, kv->key, kv->value);
		else if (p[s] == '/')
			fprintf(f, "%s%.*s", p == kv->value ? "" : ",", (int)(e - s), p + s);
		else
			fprintf(f, "%s%s/%.*s", p == kv->value ? "" : ",", base, (int)(e - s),
				p + s);
		if (!p[n])
			break;
	}
	if (fclose(f) && !rc)
		rc = kvn_config_nomem(err, errlen);
	if (rc) {
		free(*url);
		*url = NULL;
	}
	return rc;
}

/* remote_storage_plugins (lmcache/v1/storage_backend/__init__.py: one RemoteBackend per
 * plugin; connector/fs_adapter.py: plugin type "fs" before the first '.', base path from
 * extra_config remote_storage_plugin.<name>.base_path, else fs_base_path). kvnode has one
 * remote tier and its fs connector: one fs plugin becomes remote_url. */
static int
map_remote_storage_plugins(struct kvn_config *cfg, char *err, size_t errlen)
{
	int ki = kvn_config_key_index("remote_storage_plugins");
	int ri = kvn_config_key_index("remote_url");
	const char *origin = cfg->priv && cfg->priv->origin[ki] ? cfg->priv->origin[ki] : "default";
	const char *rorigin = cfg->priv ? cfg->priv->origin[ri] : NULL;
	bool derived = rorigin && strstr(rorigin, FROM_PLUGIN);
	if (derived) {
		/* Made by an earlier pass (the file, before the environment): made again. */
		free(cfg->remote_url);
		cfg->remote_url = NULL;
	}
	if (cfg->n_remote_storage_plugins == 0)
		return 0;
	const char *name = cfg->remote_storage_plugins[0];
	if (cfg->n_remote_storage_plugins > 1)
		return kvn_seterr(-EINVAL, err, errlen,
				  "%s: remote_storage_plugins: kvnode has one remote tier; list "
				  "one plugin, not %zu",
				  origin, cfg->n_remote_storage_plugins);
	if (cfg->remote_url)
		return kvn_seterr(-EINVAL, err, errlen,
				  "%s: remote_storage_plugins and remote_url (%s) both name a "
				  "remote store; kvnode has one remote tier: keep one of them",
				  origin, rorigin ? rorigin : "set");
	char key[300];
	snprintf(key, sizeof(key), "remote_storage_plugin.%s.module_path", name);
	if (find_extra(cfg, key))
		return kvn_seterr(-EINVAL, err, errlen,
				  "%s: remote_storage_plugins: \"%s\" is a Python connector "
				  "adapter (extra_config %s), which kvnode cannot run; use "
				  "remote_url with one of kvnode's connectors",
				  origin, name, key);
	size_t tlen = strcspn(name, ".");
	if (tlen != 2 || strncmp(name, "fs", 2))
		return kvn_seterr(-EINVAL, err, errlen,
				  "%s: remote_storage_plugins: plugin \"%s\": kvnode takes the "
				  "fs plugin here (\"fs\" or \"fs.<instance>\"); for another "
				  "store use remote_url",
				  origin, name);
	snprintf(key, sizeof(key), "remote_storage_plugin.%s.base_path", name);
	const struct kvn_config_kv *bp = find_extra(cfg, key);
	if (!bp)
		bp = find_extra(cfg, "fs_base_path");
	if (!bp)
		return kvn_seterr(-EINVAL, err, errlen,
				  "%s: remote_storage_plugins: plugin \"%s\" needs extra_config "
				  "\"%s\" (its directory, or comma-separated directories)",
				  origin, name, key);
	char *url = NULL, where[KVN_ORIGIN_MAX + 64];
	int rc = fs_url_of(cfg, bp, &url, err, errlen);
	if (rc)
		return rc;
	cfg->remote_url = url;
	snprintf(where, sizeof(where), "%.*s%s", KVN_ORIGIN_MAX, origin, FROM_PLUGIN);
	if (kvn_config_set_origin(cfg, (size_t)ri, where))
		return kvn_config_nomem(err, errlen);
	return 0;
}

int
kvn_config_resolve(struct kvn_config *cfg, char *err, size_t errlen)
{
	int rc = rename_storage_plugin_keys(cfg, err, errlen);
	if (!rc)
		rc = map_save_chunk_meta(cfg, err, errlen);
	if (!rc)
		rc = map_remote_storage_plugins(cfg, err, errlen);
	return rc;
}

/* ------------------------------------------------------------------------------------------
 * Checks across keys
 * ------------------------------------------------------------------------------------------ */

int
kvn_config_validate(const struct kvn_config *cfg, char *err, size_t errlen)
{
	int ki = kvn_config_key_index("external_backends");
	const char *origin = cfg->priv && cfg->priv->origin[ki] ? cfg->priv->origin[ki] : "default";
	static const char *const need[][2] = {
	    {"module_path", "the path of its .so"},
	    {"class_name", "the name of its exported struct kvn_backend_ops"},
	};

	for (size_t i = 0; i < cfg->n_external_backends; i++) {
		const char *name = cfg->external_backends[i];
		for (size_t b = 0; b < ARRAY_SIZE(builtin_tiers); b++)
			if (!strcmp(name, builtin_tiers[b]))
				return kvn_seterr(
				    -EINVAL, err, errlen,
				    "%s: external_backends: unknown backend name \"%s\": "
				    "it is a built-in tier (cpu, disk, peer, remote), "
				    "enabled by local_cpu, local_disk, remote_url; give "
				    "the external backend another name",
				    origin, name);
		if (strspn(name,
			   "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") !=
		    strlen(name))
			return kvn_seterr(
			    -EINVAL, err, errlen,
			    "%s: external_backends: backend name \"%s\" may hold only "
			    "letters, digits, '_' and '-' (it is part of extra_config "
			    "keys)",
			    origin, name);
		for (size_t j = 0; j < i; j++)
			if (!strcmp(name, cfg->external_backends[j]))
				return kvn_seterr(-EINVAL, err, errlen,
						  "%s: external_backends: \"%s\" is listed twice",
						  origin, name);
	}
	/* Names first: "listed twice" is the better message than a missing option. */
	for (size_t i = 0; i < cfg->n_external_backends; i++) {
		const char *name = cfg->external_backends[i];
		for (size_t k = 0; k < ARRAY_SIZE(need); k++) {
			char key[256];
			snprintf(key, sizeof(key), "external_backend.%s.%s", name, need[k][0]);
			if (!kvn_config_extra(cfg, key))
				return kvn_seterr(-EINVAL, err, errlen,
						  "%s: external_backends: backend \"%s\" needs "
						  "extra_config key \"%s\" (%s)",
						  origin, name, key, need[k][1]);
		}
	}
	return kvn_config_check_gpu(cfg, err, errlen);
}
