/* Config from the environment: KVNODE_<KEY>, then LMCACHE_<KEY> (KVNODE_ wins). KVNODE_ values
 * are parsed like the file's; LMCACHE_ values of LMCache's keys are converted as LMCache
 * converts them (lmcache/v1/config_base.py), so that one environment means the same to both. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "node/engine/config_keys.h"
#include "core/log.h"
#include "core/utf8.h"

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

/* ------------------------------------------------------------------------------------------
 * LMCache's converters (lmcache/v1/config_base.py: _parse_quoted_string first, then the key's
 * env_converter of lmcache/v1/config.py: _to_bool, int, float, str, _to_str_list, the
 * runtime_plugin_locations lambda, json.loads). A value LMCache cannot convert it ignores with
 * a warning ("Failed to parse"), keeping the earlier value: so does kvnode.
 * ------------------------------------------------------------------------------------------ */

static bool
py_space(char c)
{
	return c == ' ' || (c >= '\t' && c <= '\r') || (c >= 0x1c && c <= 0x1f);
}

/* str.strip(), in place. */
static char *
py_strip(char *s)
{
	while (py_space(*s))
		s++;
	size_t n = strlen(s);
	while (n && py_space(s[n - 1]))
		s[--n] = '\0';
	return s;
}

static int
hexdigit(char c)
{
	return c >= '0' && c <= '9'   ? c - '0'
	       : c >= 'a' && c <= 'f' ? c - 'a' + 10
	       : c >= 'A' && c <= 'F' ? c - 'A' + 10
				      : -1;
}

/* _parse_quoted_string: strip; a value in matching quotes is the Python string literal it
 * spells (the common escapes), else the text between the quotes. In place. */
static char *
py_unquote(char *s)
{
	s = py_strip(s);
	size_t n = strlen(s);
	if (n < 2 || s[0] != s[n - 1] || (s[0] != '\'' && s[0] != '"'))
		return s;
	s[n - 1] = '\0';
	char *in = s + 1, *out = s + 1;
	while (*in) {
		if (*in != '\\' || !in[1]) {
			*out++ = *in++;
			continue;
		}
		char e = in[1], c = 0;
		switch (e) {
		case 'n':
			c = '\n';
			break;
		case 't':
			c = '\t';
			break;
		case 'r':
			c = '\r';
			break;
		case '\\':
		case '\'':
		case '"':
			c = e;
			break;
		}
		if (e == 'x' && hexdigit(in[2]) >= 0 && hexdigit(in[3]) >= 0) {
			*out++ = (char)(hexdigit(in[2]) << 4 | hexdigit(in[3]));
			in += 4;
		} else if (c) {
			*out++ = c;
			in += 2;
		} else {
			*out++ = *in++; /* Python keeps an unknown escape as it is */
		}
	}
	*out = '\0';
	return s + 1;
}

/* Python's int(s) in base 10 (s stripped): sign, digits, single '_' between digits. The
 * digits without '_' go to out. */
static bool
py_int(const char *s, char *out, size_t outlen)
{
	size_t o = 0;
	if (*s == '+' || *s == '-')
		out[o++] = *s++;
	if (!isdigit((unsigned char)*s))
		return false;
	for (; *s; s++) {
		if (*s == '_' && isdigit((unsigned char)s[1]) && isdigit((unsigned char)s[-1]))
			continue;
		if (!isdigit((unsigned char)*s) || o + 1 >= outlen)
			return false;
		out[o++] = *s;
	}
	out[o] = '\0';
	return true;
}

/* Python's float(s) (s stripped): a decimal with optional exponent and '_' between digits, or
 * inf / infinity / nan. The number without '_' goes to out. */
static bool
py_float(const char *s, char *out, size_t outlen)
{
	const char *p = s + (*s == '+' || *s == '-');
	if (!strcasecmp(p, "inf") || !strcasecmp(p, "infinity") || !strcasecmp(p, "nan")) {
		snprintf(out, outlen, "%s", s);
		return true;
	}
	size_t o = 0, digits = 0;
	bool dot = false, exp = false;
	for (const char *c = s; *c; c++) {
		if (o + 1 >= outlen)
			return false;
		if (isdigit((unsigned char)*c)) {
			digits++;
		} else if (*c == '_') {
			if (c == s || !isdigit((unsigned char)c[-1]) ||
			    !isdigit((unsigned char)c[1]))
				return false;
			continue;
		} else if ((*c == '+' || *c == '-') && (c == s || c[-1] == 'e' || c[-1] == 'E')) {
		} else if (*c == '.' && !dot && !exp) {
			dot = true;
		} else if ((*c == 'e' || *c == 'E') && digits && !exp) {
			exp = true;
			digits = 0;
		} else {
			return false;
		}
		out[o++] = *c;
	}
	out[o] = '\0';
	return digits > 0;
}

/* Text of an LMCACHE_ value for kvnode's parser, converted as LMCache converts it; NULL when
 * LMCache would not take it (a warning says so). buf holds the result. */
static const char *
lmcache_value(const struct kvn_keydef *kd, const char *var, const char *raw, char *buf,
	      size_t buflen, char **copy)
{
	if (!(*copy = strdup(raw)))
		return NULL;
	char *v = py_unquote(*copy);
	switch (kd->type) {
	case KVN_K_BOOL: /* _to_bool: only its own true spellings are true */
		for (char *c = v; *c; c++)
			*c = (char)tolower((unsigned char)*c);
		return !strcmp(v, "true") || !strcmp(v, "1") ? "true" : "false";
	case KVN_K_UINT:
	case KVN_K_INT:
		if (py_int(v, buf, buflen))
			return buf;
		break;
	case KVN_K_GB:
		if (py_float(v, buf, buflen))
			return buf;
		break;
	case KVN_K_EXTRA: { /* json.loads; "" is None */
		cJSON *j = *v ? cJSON_Parse(v) : NULL;
		bool ok = !*v || j;
		cJSON_Delete(j);
		if (ok)
			return v;
		break;
	}
	default:
		return v;
	}
	kvn_warn("config",
		 "env %s=\"%.80s\": LMCache cannot convert it to %s either and ignores it; kvnode "
		 "keeps %s's value",
		 var, raw,
		 kd->type == KVN_K_GB	   ? "a number"
		 : kd->type == KVN_K_EXTRA ? "JSON"
					   : "an integer",
		 kd->name);
	return NULL;
}

/* The variable of key ki under prefix: its own name or one of LMCache's other names. Two of
 * them with different values are an error; NULL with *rc 0 when none is set. */
static const char *
find_var(char *const *envp, size_t ki, const char *prefix, char var[80], int *rc, char *err,
	 size_t errlen)
{
	const struct kvn_keydef *kd = &kvn_config_keys[ki];
	const char *text = NULL;
	char name[80];
	*rc = 0;
	for (size_t a = 0;; a++) {
		const char *n = a == 0 ? kd->name : kvn_config_alias_of(ki, a - 1);
		if (!n)
			break;
		env_name(name, sizeof(name), prefix, n);
		const char *t = env_lookup(envp, name);
		if (!t)
			continue;
		if (text && strcmp(text, t)) {
			*rc = kvn_seterr(-EINVAL, err, errlen,
					 "env %s and env %s name the same key (%s) with different "
					 "values; set one of them",
					 var, name, kd->name);
			return NULL;
		}
		if (!text) {
			text = t;
			snprintf(var, 80, "%s", name);
		}
	}
	return text;
}

int
kvn_config_apply_env_only(struct kvn_config *cfg, char *const *envp, char *err, size_t errlen)
{
	char var[80], where[96], conv[64];
	if (!envp)
		envp = environ;
	for (size_t i = 0; i < KVN_NKEYS; i++) {
		const struct kvn_keydef *kd = &kvn_config_keys[i];
		int rc;
		bool lm = false;
		const char *text = find_var(envp, i, "KVNODE_", var, &rc, err, errlen);
		if (!text && !rc) {
			text = find_var(envp, i, "LMCACHE_", var, &rc, err, errlen);
			lm = text && (kd->flags & KVN_KF_LMCACHE);
		}
		if (rc)
			return rc;
		if (!text)
			continue;
		snprintf(where, sizeof(where), "env %s", var);
		size_t bad;
		if (!kvn_utf8_clean(text, strlen(text), &bad))
			return kvn_seterr(-EINVAL, err, errlen,
					  "%s: byte %zu of the value is a control character or not "
					  "UTF-8; values are text",
					  where, bad);
		char *copy = NULL;
		if (lm && !(text = lmcache_value(kd, var, text, conv, sizeof(conv), &copy))) {
			bool nomem = !copy;
			free(copy);
			if (nomem)
				return kvn_config_nomem(err, errlen);
			continue;
		}
		if (kd->type == KVN_K_EXTRA)
			rc = kvn_config_extra_from_json(cfg, text, where, err, errlen);
		else if (kd->type == KVN_K_LIST)
			/* LMCache's runtime_plugin_locations converter takes the value as one
			 * path; its other lists split at commas (_to_str_list). */
			rc = kvn_config_set_list_text(
			    cfg, kd, *text ? text : NULL,
			    !(lm && !strcmp(kd->name, "plugin_locations")), NULL, where, err,
			    errlen);
		else
			rc = kvn_config_set_scalar(cfg, i, text, NULL, where, err, errlen);
		free(copy);
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
		if (kvn_config_key_index(key) < 0 && kvn_config_alias_index(key) < 0) {
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
	if (!rc)
		rc = kvn_config_resolve(cfg, err, errlen);
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
		return kvn_seterr(-EINVAL, err, errlen,
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
			rc = kvn_seterr(-EINVAL, err, errlen,
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
		return kvn_seterr(-EINVAL, err, errlen,
				  "%s: extra_config.%s: nested more than %d levels deep", where,
				  prefix, KVN_CONFIG_MAX_DEPTH);
	cJSON_ArrayForEach(v, obj)
	{
		char *full = NULL, *text = NULL;
		int rc;
		if (!v->string || !*v->string)
			return kvn_seterr(-EINVAL, err, errlen,
					  "%s: extra_config: option names must be non-empty",
					  where);
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
		    -EINVAL, err, errlen,
		    "%s: must be a JSON object like {\"disk.o_direct\": \"true\"}, got "
		    "\"%.60s\"",
		    origin, text);
	}
	int rc = json_flatten(cfg, root, "", 1, origin, err, errlen);
	cJSON_Delete(root);
	return rc;
}
