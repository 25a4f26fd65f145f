/* Internal to the config loader (config.c, config_yaml.c, config_json.c): the table of known
 * keys and the value setters shared by the YAML file and the environment. */
#ifndef KVN_NODE_ENGINE_CONFIG_KEYS_H
#define KVN_NODE_ENGINE_CONFIG_KEYS_H

#include <stdbool.h>
#include <stddef.h>

#include "node/engine/config.h"

enum kvn_ktype {
	KVN_K_UINT, /* uint32_t in [min, max] */
	KVN_K_INT,  /* int in [min, max] */
	KVN_K_BOOL,
	KVN_K_GB,	 /* uint64_t bytes, written as GB */
	KVN_K_STR,	 /* char * */
	KVN_K_PATH,	 /* char *, see the flags */
	KVN_K_LIST,	 /* char ** + size_t count */
	KVN_K_EXTRA,	 /* extra_config */
	KVN_K_TRANSPORT, /* char *: auto | verbs | tcp */
	KVN_K_LOGLEVEL,	 /* int */
	KVN_K_GPU,	 /* char *: none | auto | index */
	KVN_K_RESTART,	 /* char *: never | on-failure */
	KVN_K_ADDR,	 /* char *: HOST:PORT */
	KVN_K_SIZE,	 /* uint64_t bytes in [min, max]: 65536, 64KiB, 64MiB, 1GiB (units of 1024) */
};

#define KVN_KF_NULLABLE 1u  /* null / empty means unset (NULL) */
#define KVN_KF_FILE_URL 2u  /* a "file://" prefix is stripped */
#define KVN_KF_RESOLVE	4u  /* relative paths are against the config file's directory */
#define KVN_KF_SPLIT	8u  /* one string in the file is split at commas */
#define KVN_KF_SECRET	16u /* shown as "***" in redacted output */
#define KVN_KF_LMCACHE	32u /* one of LMCache's keys: LMCACHE_<KEY> is converted as LMCache does */
#define KVN_KF_GPU_INDEX 64u /* a list of GPU indices: 0, 1 or cuda:N, kept as "N" */

struct kvn_keydef {
	const char *name;
	enum kvn_ktype type;
	size_t off;  /* of the field in struct kvn_config */
	size_t noff; /* of the count, for lists */
	long long min, max;
	unsigned flags;
};

extern const struct kvn_keydef kvn_config_keys[];
#define KVN_CONFIG_MAX_DEPTH 16 /* extra_config nesting; also stops a self-referencing alias */
/* Keys in one mapping and flattened extra_config entries; stops alias "billion laughs". */
#define KVN_CONFIG_MAX_ENTRIES 4096
#define KVN_NKEYS	       64

/* Bookkeeping behind kvn_config.priv. */
struct kvn_config_priv {
	char *origin[KVN_NKEYS]; /* "file:line" or "env VAR"; NULL = default */
	double gb[KVN_NKEYS];	 /* GB as written, so output shows 0.1 and not 0.0999999996 */
};

int kvn_config_key_index(const char *name);
/* LMCache's other names of a key (storage_plugins for external_backends …): the key's index, or
 * -1. */
int kvn_config_alias_index(const char *name);
/* The i-th other name of key ki (i from 0), NULL past the last. */
const char *kvn_config_alias_of(size_t ki, size_t i);
/* "unknown key … (did you mean …)" or, for LMCache's own keys, "LMCache key, not used by
 * kvnode". */
void kvn_config_note_unread(const char *where, const char *name);
/* Whether name is one of LMCache's keys that kvnode does not use. */
bool kvn_config_lmcache_key(const char *name);
int kvn_config_nomem(char *err, size_t errlen);
int kvn_config_set_origin(struct kvn_config *cfg, size_t ki, const char *origin);
/* Sets key ki from text (NULL = null); base resolves relative paths (NULL: leave them). */
int kvn_config_set_scalar(struct kvn_config *cfg, size_t ki, const char *text, const char *base,
			  const char *where, char *err, size_t errlen);
int kvn_config_set_list(struct kvn_config *cfg, size_t ki, char **items, size_t n, const char *base,
			const char *where, char *err, size_t errlen);
/* A list from one string: text NULL empties it; split cuts it at commas. */
int kvn_config_set_list_text(struct kvn_config *cfg, const struct kvn_keydef *kd, const char *text,
			     bool split, const char *base, const char *where, char *err,
			     size_t errlen);
/* "must be <what the key takes>, got <got or "text">" with -EINVAL. */
int kvn_config_bad_value(char *err, size_t errlen, const char *where, size_t ki, const char *text,
			 const char *got);
/* Adds or (replace) overwrites an extra_config entry; value NULL removes it. */
int kvn_config_put_extra(struct kvn_config *cfg, const char *key, const char *value,
			 const char *origin, bool replace, char *err, size_t errlen);
/* Applies the environment on top of cfg (no cross-key checks). envp NULL = environ. */
int kvn_config_apply_env_only(struct kvn_config *cfg, char *const *envp, char *err, size_t errlen);
/* extra_config entries from a JSON object (env KVNODE_EXTRA_CONFIG); they replace the file's. */
int kvn_config_extra_from_json(struct kvn_config *cfg, const char *text, const char *origin,
			       char *err, size_t errlen);
/* Applies YAML text on top of cfg (no env, no cross-key checks). */
int kvn_config_apply_yaml(struct kvn_config *cfg, const char *text, size_t len, const char *name,
			  char *err, size_t errlen);
/* The gpu keys across each other (config_gpu.c): part of kvn_config_validate. */
int kvn_config_check_gpu(const struct kvn_config *cfg, char *err, size_t errlen);
/* GB value of a size key as it should be shown. */
double kvn_config_gb(const struct kvn_config *cfg, size_t ki);

#endif
