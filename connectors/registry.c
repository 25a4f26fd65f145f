/* Connector registry: built-in connectors by scheme, external ones registered at run time, the
 * schemes this build knows of but lacks, and batch calls that fall back to single ones. */
#include <errno.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "connectors/registry.h"
#include "core/abi.h"
#include "core/log.h"

#define MAX_EXTERNAL 32
#define SCHEME_MAX   32

static const struct kvn_connector_ops *const builtin[] = {
    &kvn_redis_connector_ops,
    &kvn_fs_connector_ops,
    &kvn_blackhole_connector_ops,
    &kvn_lm_connector_ops,
};

/* Schemes LMCache users may write that this build cannot serve, and what would be needed. */
static const struct {
	const char *scheme;
	const char *needs;
} unavailable[] = {
    {"rediss", "hiredis with SSL (libhiredis_ssl, hiredis >= 1.0; Debian 12 ships 0.14 "
	       "without it)"},
    {"infinistore", "the InfiniStore client library (not packaged in Debian)"},
    {"mooncakestore", "the Mooncake store client library (not packaged in Debian)"},
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	char scheme[SCHEME_MAX];
	const struct kvn_connector_ops *ops;
} external[MAX_EXTERNAL];

#define N(a) (sizeof(a) / sizeof((a)[0]))

static bool
scheme_valid(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n >= SCHEME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			  (i > 0 && ((c >= '0' && c <= '9') || c == '+' || c == '-' || c == '.'));
		if (!ok)
			return false;
	}
	return true;
}

static const struct kvn_connector_ops *
find_builtin(const char *scheme)
{
	for (size_t i = 0; i < N(builtin); i++)
		if (!strcmp(builtin[i]->scheme, scheme))
			return builtin[i];
	return NULL;
}

/* Caller holds lock. */
static int
find_external(const char *scheme)
{
	for (int i = 0; i < MAX_EXTERNAL; i++)
		if (external[i].ops && !strcmp(external[i].scheme, scheme))
			return i;
	return -1;
}

static const char *
plain_get_opt(const struct kvn_connector_env *env, const char *opt)
{
	(void)env, (void)opt;
	return NULL;
}

static void
plain_log(const struct kvn_connector_env *env, int level, const char *fmt, ...)
{
	char comp[SCHEME_MAX + 16], scheme[SCHEME_MAX];
	if (!env->url || kvn_connector_scheme_of(env->url, scheme, sizeof(scheme)) < 0)
		snprintf(scheme, sizeof(scheme), "?");
	snprintf(comp, sizeof(comp), "connector %s", scheme);
	va_list ap;
	va_start(ap, fmt);
	kvn_logv(level, comp, fmt, ap);
	va_end(ap);
}

void
kvn_connector_env_plain(struct kvn_connector_env *env, const char *url, const char *url_redacted,
			uint32_t timeout_ms)
{
	*env = (struct kvn_connector_env){KVN_CONNECTOR_ENV_INIT,
					  .url = url,
					  .url_redacted = url_redacted ? url_redacted : url,
					  .config_dir = ".",
					  .get_opt = plain_get_opt,
					  .log = plain_log,
					  .timeout_ms = timeout_ms};
}

int
kvn_connector_check_abi(const struct kvn_connector_ops *ops, const char *what, char *err,
			size_t errlen)
{
	/* ABI 2.1 added nothing to the connector table: 2.0's is the whole struct. */
	return kvn_abi_check(ops->abi, ops->size, sizeof(*ops), sizeof(*ops),
			     "struct kvn_connector_ops", what, err, errlen);
}

int
kvn_connector_register(const char *scheme, const struct kvn_connector_ops *ops)
{
	if (!scheme || !scheme_valid(scheme)) {
		kvn_err("connector",
			"cannot register connector scheme \"%s\": a scheme is a "
			"letter then letters, digits, '+', '-' or '.' (< %d chars)",
			scheme ? scheme : "(null)", SCHEME_MAX);
		return -EINVAL;
	}
	char what[160], why[512];
	snprintf(what, sizeof(what), "connector \"%s\"", scheme);
	if (!ops || kvn_connector_check_abi(ops, what, why, sizeof(why))) {
		kvn_err("connector", "cannot register connector \"%s\": %s", scheme,
			ops ? why : "no ops");
		return -EINVAL;
	}
	if (find_builtin(scheme)) {
		kvn_err("connector",
			"cannot register connector \"%s\": the scheme is built in; "
			"pick another scheme name",
			scheme);
		return -EEXIST;
	}
	pthread_mutex_lock(&lock);
	int rc = 0, i = find_external(scheme);
	if (i >= 0) {
		if (external[i].ops != ops) {
			kvn_err("connector",
				"cannot register connector \"%s\": another module "
				"already serves that scheme",
				scheme);
			rc = -EEXIST;
		}
		goto out;
	}
	for (i = 0; i < MAX_EXTERNAL && external[i].ops; i++)
		;
	if (i == MAX_EXTERNAL) {
		kvn_err("connector",
			"cannot register connector \"%s\": at most %d external "
			"connectors",
			scheme, MAX_EXTERNAL);
		rc = -ENOSPC;
		goto out;
	}
	snprintf(external[i].scheme, sizeof(external[i].scheme), "%s", scheme);
	external[i].ops = ops;
out:
	pthread_mutex_unlock(&lock);
	return rc;
}

int
kvn_connector_unregister(const char *scheme)
{
	pthread_mutex_lock(&lock);
	int i = find_external(scheme);
	if (i >= 0)
		external[i].ops = NULL;
	pthread_mutex_unlock(&lock);
	return i >= 0 ? 0 : -ENOENT;
}

static size_t
append(char *buf, size_t len, size_t at, const char *s)
{
	int n = snprintf(at < len ? buf + at : NULL, at < len ? len - at : 0, "%s%s",
			 at ? ", " : "", s);
	return at + (n > 0 ? (size_t)n : 0);
}

size_t
kvn_connector_schemes(char *buf, size_t len)
{
	size_t at = 0;
	if (len)
		buf[0] = '\0';
	for (size_t i = 0; i < N(builtin); i++)
		at = append(buf, len, at, builtin[i]->scheme);
	pthread_mutex_lock(&lock);
	for (int i = 0; i < MAX_EXTERNAL; i++)
		if (external[i].ops)
			at = append(buf, len, at, external[i].scheme);
	pthread_mutex_unlock(&lock);
	return at;
}

int
kvn_connector_scheme_of(const char *url, char *out, size_t outlen)
{
	const char *sep = url ? strstr(url, "://") : NULL;
	if (!sep || sep == url || (size_t)(sep - url) >= outlen)
		return -EINVAL;
	memcpy(out, url, (size_t)(sep - url));
	out[sep - url] = '\0';
	return scheme_valid(out) ? 0 : -EINVAL;
}

int
kvn_connector_find(const char *url, const struct kvn_connector_ops **ops, char *err, size_t errlen)
{
	char scheme[SCHEME_MAX], known[512];
	if (kvn_connector_scheme_of(url, scheme, sizeof(scheme)) < 0)
		return kvn_seterr(-EINVAL, err, errlen,
				  "remote_url \"%.200s\" has no scheme: write "
				  "<scheme>://… (e.g. redis://host:6379)",
				  url ? url : "");
	const struct kvn_connector_ops *o = find_builtin(scheme);
	if (!o) {
		pthread_mutex_lock(&lock);
		int i = find_external(scheme);
		o = i >= 0 ? external[i].ops : NULL;
		pthread_mutex_unlock(&lock);
	}
	if (o) {
		*ops = o;
		return 0;
	}
	for (size_t i = 0; i < N(unavailable); i++)
		if (!strcmp(unavailable[i].scheme, scheme)) {
			return kvn_seterr(-ENOTSUP, err, errlen,
					  "remote_url scheme \"%s\" is not built in this "
					  "build: needs %s",
					  scheme, unavailable[i].needs);
		}
	kvn_connector_schemes(known, sizeof(known));
	return kvn_seterr(-EINVAL, err, errlen,
			  "remote_url scheme \"%s\" is unknown (known: %s); for an external "
			  "connector set extra_config external_connector.%s.module_path and "
			  ".class_name",
			  scheme, known, scheme);
}

/* --------------------------------------------------------------------------------------------
 * Batches
 * -------------------------------------------------------------------------------------------- */

int
kvn_connector_get_batch(const struct kvn_connector_ops *ops, struct kvn_connector *c, size_t n,
			const struct kvn_key *const *keys, struct kvn_remote_value *out, int *rcs)
{
	if (ops->get_batch)
		return ops->get_batch(c, n, keys, out, rcs);
	for (size_t i = 0; i < n; i++)
		rcs[i] = ops->get(c, keys[i], &out[i]);
	return 0;
}

int
kvn_connector_put_batch(const struct kvn_connector_ops *ops, struct kvn_connector *c, size_t n,
			const struct kvn_key *const *keys, const struct kvn_remote_value *vals,
			int *rcs)
{
	if (ops->put_batch)
		return ops->put_batch(c, n, keys, vals, rcs);
	for (size_t i = 0; i < n; i++)
		rcs[i] = ops->put(c, keys[i], &vals[i]);
	return 0;
}

int
kvn_connector_exists_batch(const struct kvn_connector_ops *ops, struct kvn_connector *c, size_t n,
			   const struct kvn_key *const *keys, int *rcs)
{
	if (ops->exists_batch)
		return ops->exists_batch(c, n, keys, rcs);
	for (size_t i = 0; i < n; i++)
		rcs[i] = ops->exists(c, keys[i]);
	return 0;
}
