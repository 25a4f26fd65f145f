/* Config from the environment: KVNODE_<KEY>, then LMCACHE_<KEY> (KVNODE_ wins), each parsed
 * like the file's value; lists are comma-separated, extra_config is a JSON object. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "node/config_keys.h"
#include "node/log.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Environment variables with a KVNODE_ prefix that are not config keys. */
static const char *const env_not_keys[] = {"KVNODE_CONFIG_FILE", "KVNODE_MODULE_PATH",
					   "KVNODE_SOCKET", "KVNODE_STATE_DIR"};

static const char *
env_lookup(char *const *envp, const char *name)
{
	size_t n = strlen(name);
	for (; *envp; envp++)
		if (!strncmp(*envp, name, n) && (*envp)[n] == '=')
			return *envp + n + 1;
	return NULL;
}

static void
env_name(char *buf, size_t len, const char *prefix, const char *key)
{
	size_t n = (size_t)snprintf(buf, len, "%s", prefix);
	for (; *key && n + 1 < len; key++)
		buf[n++] = (char)toupper((unsigned char)*key);
	buf[n] = '\0';
}

static bool
env_is_not_a_key(const char *var)
{
	if (!strncmp(var, "KVNODE_PLUGIN_", 14))
		return true;
	for (size_t i = 0; i < ARRAY_SIZE(env_not_keys); i++)
		if (!strcmp(var, env_not_keys[i]))
			return true;
	return false;
}

int
kvn_config_apply_env_only(struct kvn_config *cfg, char *const *envp, char *err, size_t errlen)
{
	char kv[80], lm[80], where[96];
	if (!envp)
		envp = environ;
	for (size_t i = 0; i < KVN_NKEYS; i++) {
		const struct kvn_keydef *kd = &kvn_config_keys[i];
		env_name(kv, sizeof(kv), "KVNODE_", kd->name);
		env_name(lm, sizeof(lm), "LMCACHE_", kd->name);
		const char *var = kv, *text = env_lookup(envp, kv);
		if (!text) {
			var = lm;
			text = env_lookup(envp, lm);
		}
		if (!text)
			continue;
		snprintf(where, sizeof(where), "env %s", var);
		int rc;
		if (kd->type == KVN_K_EXTRA)
			rc = kvn_config_extra_from_json(cfg, text, where, err, errlen);
		else if (kd->type == KVN_K_LIST)
			rc = kvn_config_set_list_text(cfg, kd, *text ? text : NULL, true, NULL,
						      where, err, errlen);
		else
			rc = kvn_config_set_scalar(cfg, i, text, NULL, where, err, errlen);
		if (!rc && kvn_config_set_origin(cfg, i, where))
			rc = kvn_config_nomem(err, errlen);
		if (rc)
			return rc;
	}
	/* A misspelt KVNODE_ variable would otherwise be silently ignored. LMCACHE_ ones are
	 * not checked: LMCache reads many that kvnode has no business with. */
	for (char *const *e = envp; *e; e++) {
		const char *eq = strchr(*e, '=');
		char var[80], key[80];
		if (strncmp(*e, "KVNODE_", 7) || !eq || (size_t)(eq - *e) >= sizeof(var))
			continue;
		snprintf(var, sizeof(var), "%.*s", (int)(eq - *e), *e);
		if (env_is_not_a_key(var))
			continue;
		size_t n = 0;
		for (const char *c = var + 7; *c; c++)
			key[n++] = (char)tolower((unsigned char)*c);
		key[n] = '\0';
		if (kvn_config_key_index(key) < 0) {
			snprintf(where, sizeof(where), "env %s", var);
			kvn_config_note_unread(where, key);
		}
	}
	return 0;
}

int
kvn_config_apply_env(struct kvn_config *cfg, char *const *envp, char *err, size_t errlen)
{
	int rc = kvn_config_apply_env_only(cfg, envp, err, errlen);
	return rc ? rc : kvn_config_validate(cfg, err, errlen);
}

/* Text of a JSON scalar or list of scalars as the file would give it; NULL for null. */
static int
json_text(const cJSON *v, const char *where, const char *key, char **out, char *err, size_t errlen)
{
	*out = NULL;
	if (cJSON_IsNull(v))
		return 0;
	if (cJSON_IsString(v))
		return (*out = strdup(v->valuestring)) ? 0 : kvn_config_nomem(err, errlen);
	if (cJSON_IsNumber(v) || cJSON_IsBool(v))
		return (*out = cJSON_PrintUnformatted(v)) ? 0 : kvn_config_nomem(err, errlen);
	if (!cJSON_IsArray(v))
		return kvn_seterr(err, errlen,
				  "%s: extra_config.%s: a value must be a string, number, "
				  "boolean or list",
				  where, key);
	size_t len = 0;
	FILE *f = open_memstream(out, &len);
	int rc = f ? 0 : kvn_config_nomem(err, errlen);
	const cJSON *e;
	cJSON_ArrayForEach(e, v)
	{
		char *t = NULL;
		if (rc)
			break;
		if (cJSON_IsArray(e) || cJSON_IsObject(e))
			rc = kvn_seterr(err, errlen,
					"%s: extra_config.%s: list entries must be scalars", where,
					key);
		else if (!(rc = json_text(e, where, key, &t, err, errlen)))
			fprintf(f, "%s%s", e == v->child ? "" : ",", t ? t : "");
		free(t);
	}
	if (f && fclose(f) && !rc)
		rc = kvn_config_nomem(err, errlen);
	if (rc) {
		free(*out);
		*out = NULL;
	}
	return rc;
}

static int
json_flatten(struct kvn_config *cfg, const cJSON *obj, const char *prefix, int depth,
	     const char *where, char *err, size_t errlen)
{
	const cJSON *v;
	if (depth > KVN_CONFIG_MAX_DEPTH)
		return kvn_seterr(err, errlen,
				  "%s: extra_config.%s: nested more than %d levels deep", where,
				  prefix, KVN_CONFIG_MAX_DEPTH);
	cJSON_ArrayForEach(v, obj)
	{
		char *full = NULL, *text = NULL;
		int rc;
		if (!v->string || !*v->string)
			return kvn_seterr(
			    err, errlen, "%s: extra_config: option names must be non-empty", where);
		if (asprintf(&full, "%s%s%s", prefix, *prefix ? "." : "", v->string) < 0)
			return kvn_config_nomem(err, errlen);
		if (cJSON_IsObject(v))
			rc = json_flatten(cfg, v, full, depth + 1, where, err, errlen);
		else if (!(rc = json_text(v, where, full, &text, err, errlen)))
			rc = kvn_config_put_extra(cfg, full, text, where, true, err, errlen);
		free(text);
		free(full);
		if (rc)
			return rc;
	}
	return 0;
}

int
kvn_config_extra_from_json(struct kvn_config *cfg, const char *text, const char *origin, char *err,
			   size_t errlen)
{
	if (!*text)
		return 0;
	cJSON *root = cJSON_Parse(text);
	if (!cJSON_IsObject(root)) {
		cJSON_Delete(root);
		return kvn_seterr(
		    err, errlen,
		    "%s: must be a JSON object like {\"disk.o_direct\": \"true\"}, got "
		    "\"%.60s\"",
		    origin, text);
	}
	int rc = json_flatten(cfg, root, "", 1, origin, err, errlen);
	cJSON_Delete(root);
	return rc;
}
