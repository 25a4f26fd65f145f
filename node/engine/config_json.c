/* The effective config as output: JSON (for `kvnode stat` and plugins), one key's value as
 * text (for a backend's get_opt), and where each key got its value. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/url.h"
#include "node/engine/config_keys.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static const char *const level_names[] = {"error", "warn", "info", "debug"};

static const char *
level_name(int level)
{
	return level_names[level < 0 ? 0 : level > 3 ? 3 : level];
}

/* extra_config options that hold credentials by their name (redis.password, s3.secret_key). */
static bool
secret_name(const char *key)
{
	static const char *const words[] = {"password", "passwd", "secret",    "token",
					    "api_key",	"apikey", "credential"};
	const char *last = strrchr(key, '.');
	last = last ? last + 1 : key;
	for (size_t i = 0; i < ARRAY_SIZE(words); i++)
		if (strcasestr(last, words[i]))
			return true;
	return false;
}

static cJSON *
str_json(const char *s, bool redact, bool secret)
{
	if (!s)
		return cJSON_CreateNull();
	if (redact && secret)
		return cJSON_CreateString("***");
	if (!redact)
		return cJSON_CreateString(s);
	char *r = kvn_url_redact(s);
	cJSON *v = r ? cJSON_CreateString(r) : NULL;
	free(r);
	return v;
}

static bool
add(cJSON *parent, const char *name, cJSON *v)
{
	if (!v)
		return false;
	if (!name ? cJSON_AddItemToArray(parent, v) : cJSON_AddItemToObject(parent, name, v))
		return true;
	cJSON_Delete(v);
	return false;
}

static cJSON *
key_json(const struct kvn_config *cfg, size_t ki, bool redact)
{
	const struct kvn_keydef *kd = &kvn_config_keys[ki];
	const void *p = (const char *)cfg + kd->off;
	cJSON *v = NULL;
	bool ok = true;

	switch (kd->type) {
	case KVN_K_UINT:
		return cJSON_CreateNumber(*(const uint32_t *)p);
	case KVN_K_INT:
		return cJSON_CreateNumber(*(const int *)p);
	case KVN_K_BOOL:
		return cJSON_CreateBool(*(const bool *)p);
	case KVN_K_GB:
		return cJSON_CreateNumber(kvn_config_gb(cfg, ki));
	case KVN_K_SIZE:
		return cJSON_CreateNumber((double)*(const uint64_t *)p);
	case KVN_K_LOGLEVEL:
		return cJSON_CreateString(level_name(*(const int *)p));
	case KVN_K_STR:
	case KVN_K_PATH:
	case KVN_K_TRANSPORT:
	case KVN_K_GPU:
	case KVN_K_RESTART:
	case KVN_K_ADDR:
		return str_json(*(char *const *)p, redact, kd->flags & KVN_KF_SECRET);
	case KVN_K_LIST: {
		char *const *items = *(char **const *)p;
		size_t n = *(const size_t *)((const char *)cfg + kd->noff);
		v = cJSON_CreateArray();
		if (kd->flags & KVN_KF_GPU_INDEX) {
			/* The devices used, indices ([0, 1]): gpu: N means [N] whatever the
			 * default list says, and printing that list beside it would read back as
			 * a contradiction. */
			int *devs = malloc(sizeof(*devs) * (n + 1));
			size_t nd = devs ? kvn_config_gpu_devices(cfg, devs, n + 1) : 0;
			ok = devs != NULL;
			for (size_t i = 0; v && ok && i < nd; i++)
				ok = add(v, NULL, cJSON_CreateNumber(devs[i]));
			free(devs);
			break;
		}
		for (size_t i = 0; v && ok && i < n; i++)
			ok = add(v, NULL, str_json(items[i], redact, false));
		break;
	}
	case KVN_K_EXTRA:
		v = cJSON_CreateObject();
		for (size_t i = 0; v && ok && i < cfg->n_extra; i++)
			ok = add(
			    v, cfg->extra[i].key,
			    str_json(cfg->extra[i].value, redact, secret_name(cfg->extra[i].key)));
		break;
	}
	if (!ok) {
		cJSON_Delete(v);
		return NULL;
	}
	return v;
}

char *
kvn_config_to_json(const struct kvn_config *cfg, bool redact)
{
	if (!cfg)
		return NULL;
	cJSON *o = cJSON_CreateObject();
	bool ok = o != NULL;
	for (size_t i = 0; ok && i < KVN_NKEYS; i++)
		ok = add(o, kvn_config_keys[i].name, key_json(cfg, i, redact));
	char *s = ok ? cJSON_PrintUnformatted(o) : NULL;
	cJSON_Delete(o);
	return s;
}

const char *
kvn_config_origin(const struct kvn_config *cfg, const char *key)
{
	int ki = cfg && key ? kvn_config_key_index(key) : -1;
	if (ki < 0)
		return NULL;
	return cfg->priv && cfg->priv->origin[ki] ? cfg->priv->origin[ki] : "default";
}

/* Shortest text that reads back as the same double (0.1, not 0.10000000000000001). */
static int
print_double(char *buf, size_t len, double v)
{
	char tmp[40];
	snprintf(tmp, sizeof(tmp), "%.15g", v);
	if (strtod(tmp, NULL) != v)
		snprintf(tmp, sizeof(tmp), "%.17g", v);
	return snprintf(buf, len, "%s", tmp);
}

int
kvn_config_value(const struct kvn_config *cfg, const char *key, char *buf, size_t len)
{
	int ki = cfg && key ? kvn_config_key_index(key) : -1;
	if (ki < 0 || !buf || !len)
		return ki < 0 ? -ENOENT : -ENOSPC;
	const struct kvn_keydef *kd = &kvn_config_keys[ki];
	const void *p = (const char *)cfg + kd->off;
	size_t used = 0;
	int n = 0;

	switch (kd->type) {
	case KVN_K_UINT:
		n = snprintf(buf, len, "%" PRIu32, *(const uint32_t *)p);
		break;
	case KVN_K_INT:
		n = snprintf(buf, len, "%d", *(const int *)p);
		break;
	case KVN_K_BOOL:
		n = snprintf(buf, len, "%s", *(const bool *)p ? "true" : "false");
		break;
	case KVN_K_GB:
		n = print_double(buf, len, kvn_config_gb(cfg, (size_t)ki));
		break;
	case KVN_K_SIZE:
		n = snprintf(buf, len, "%" PRIu64, *(const uint64_t *)p);
		break;
	case KVN_K_LOGLEVEL:
		n = snprintf(buf, len, "%s", level_name(*(const int *)p));
		break;
	case KVN_K_STR:
	case KVN_K_PATH:
	case KVN_K_TRANSPORT:
	case KVN_K_GPU:
	case KVN_K_RESTART:
	case KVN_K_ADDR:
		if (!*(char *const *)p)
			return -ENOENT;
		n = snprintf(buf, len, "%s", *(char *const *)p);
		break;
	case KVN_K_LIST: {
		char *const *items = *(char **const *)p;
		size_t cnt = *(const size_t *)((const char *)cfg + kd->noff);
		if (!cnt)
			return -ENOENT;
		for (size_t i = 0; i < cnt; i++) {
			n = snprintf(buf + used, used < len ? len - used : 0, "%s%s", i ? "," : "",
				     items[i]);
			used += (size_t)(n < 0 ? 0 : n);
		}
		n = (int)used;
		break;
	}
	case KVN_K_EXTRA:
		return -ENOENT;
	}
	return n < 0 || (size_t)n >= len ? -ENOSPC : 0;
}

char *
kvn_config_kvn_url_redact(const char *url)
{
	return kvn_url_redact(url);
}
