/* remote tier: the connector chosen by remote_url's scheme, as a storage backend. Keeps a small
 * pool of connections; when the store goes away or hangs the tier is out of service and fails
 * fast, the node serves from its other tiers, and a watcher thread probes the store with
 * exponential back-off until it answers a PING. Values read back are checked (LMCache header +
 * kvnode tag naming the key) and a bad one is a miss, logged and counted. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "connectors/external.h"
#include "connectors/registry.h"
#include "kvnode/backend.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/url.h"
#include "connectors/remote_value.h"
#include "backends/backends.h"

#define MAX_CONNS 64
#define MAX_QUERY 16

struct slot {
	struct kvn_connector *conn; /* NULL: not connected */
	uint64_t gen;		    /* store generation it was opened in */
	uint64_t busy_since_ms;	    /* when the request using it began */
	bool busy;
};

struct kvn_backend {
	const struct kvn_backend_env *benv;
	const struct kvn_connector_ops *ops;
	struct kvn_connector_env cenv;
	char scheme[32];
	char *url, *url_redacted;
	char *qname[MAX_QUERY], *qval[MAX_QUERY]; /* remote_url's ?name=value options */
	size_t nq;

	pthread_mutex_t lock;
	pthread_cond_t freed;
	struct slot slot[MAX_CONNS];
	size_t nslots;
	/* Health. gen grows each time the store is found unreachable: connections of an older
	 * generation are reopened before use, so one restart of the store costs one error. While
	 * down, no request touches the store: only the watcher, which declares it back once a
	 * PING is answered (a stopped process still accepts TCP connections). */
	bool down;
	uint64_t gen;
	uint64_t retry_at_ms;
	uint32_t backoff_ms, backoff_min_ms, backoff_max_ms;

	/* The watcher: probes while down; while up, PINGs the store on its own connection when
	 * a request has waited ping_timeout_ms, and takes a store that does not answer within
	 * ping_timeout_ms out of service rather than let every request wait timeout_ms. */
	struct kvn_connector_env pcenv; /* cenv with timeout_ms = ping_timeout_ms */
	uint32_t ping_timeout_ms;
	struct kvn_connector *hc; /* the watcher's own connection */
	pthread_cond_t wake;	  /* monotonic; stopping, or the store went down */
	pthread_t watcher;
	bool watcher_started, stopping;

	_Atomic uint64_t hits, misses, puts, errors, corrupt, disconnects, reconnects;
	_Atomic uint64_t stale_tags; /* tags another writer left behind, ignored */
};


/* --------------------------------------------------------------------------------------------
 * Options and the connector's environment
 * -------------------------------------------------------------------------------------------- */

static const char *
conn_get_opt(const struct kvn_connector_env *env, const char *opt)
{
	struct kvn_backend *be = env->node_priv;
	char key[256];
	for (size_t i = 0; i < be->nq; i++)
		if (!strcmp(be->qname[i], opt))
			return be->qval[i];
	snprintf(key, sizeof(key), "remote.%s", opt);
	const char *v = be->benv->get_opt(be->benv, key);
	if (v)
		return v;
	snprintf(key, sizeof(key), "external_connector.%s.%s", be->scheme, opt);
	if ((v = be->benv->get_opt(be->benv, key)))
		return v;
	/* The node-wide bounds every connector applies (kvn_remote_value_max). */
	return !strcmp(opt, "max_chunk_size") ? be->benv->get_opt(be->benv, opt) : NULL;
}

static void
conn_log(const struct kvn_connector_env *env, int level, const char *fmt, ...)
{
	struct kvn_backend *be = env->node_priv;
	char comp[64];
	snprintf(comp, sizeof(comp), "connector %s", be->scheme);
	va_list ap;
	va_start(ap, fmt);
	kvn_logv(level, comp, fmt, ap);
	va_end(ap);
}

static int
parse_query(struct kvn_backend *be)
{
	const char *q = strchr(be->url, '?');
	while (q && *++q && be->nq < MAX_QUERY) {
		size_t n = strcspn(q, "&#");
		const char *eq = memchr(q, '=', n);
		size_t kl = eq ? (size_t)(eq - q) : n;
		be->qname[be->nq] = strndup(q, kl);
		be->qval[be->nq] = eq ? strndup(eq + 1, n - kl - 1) : strdup("true");
		if (!be->qname[be->nq] || !be->qval[be->nq])
			return -ENOMEM;
		be->nq++;
		q += n;
		if (*q != '&')
			break;
	}
	return 0;
}

/* A positive integer option with a default; -EINVAL (logged) when malformed. */
static int
opt_u32(struct kvn_backend *be, const char *name, uint32_t def, uint32_t min, uint32_t max,
	uint32_t *out)
{
	const char *v = conn_get_opt(&be->cenv, name);
	*out = def;
	if (!v)
		return 0;
	char *end;
	unsigned long n = strtoul(v, &end, 10);
	if (end == v || *end || n < min || n > max) {
		kvn_err("remote", "option %s=%s for %s: expected a number from %u to %u", name, v,
			be->url_redacted, min, max);
		return -EINVAL;
	}
	*out = (uint32_t)n;
	return 0;
}

/* --------------------------------------------------------------------------------------------
 * Connections: check out one (connecting it when needed), give it back
 * -------------------------------------------------------------------------------------------- */

static bool
is_conn_error(int rc)
{
	return rc == -ENOTCONN || rc == -ECONNREFUSED || rc == -ECONNRESET || rc == -EPIPE ||
	       rc == -ETIMEDOUT || rc == -EIO || rc == -EPROTO || rc == -EHOSTUNREACH ||
	       rc == -ENETUNREACH || rc == -ECONNABORTED;
}

/* Caller holds be->lock. */
static void
mark_down(struct kvn_backend *be, int rc)
{
	if (!be->down) {
		be->down = true;
		be->gen++;
		be->backoff_ms = be->backoff_min_ms;
		atomic_fetch_add(&be->disconnects, 1);
		kvn_warn("remote",
			 "store %s unreachable (%s): the node keeps serving from its "
			 "other tiers; reconnecting with back-off (%u ms up to %u ms)",
			 be->url_redacted, kvn_strerror(rc), be->backoff_min_ms,
			 be->backoff_max_ms);
	} else {
		be->backoff_ms = be->backoff_ms * 2 > be->backoff_max_ms ? be->backoff_max_ms
									 : be->backoff_ms * 2;
		kvn_debug("remote", "store %s still unreachable (%s); next try in %u ms",
			  be->url_redacted, kvn_strerror(rc), be->backoff_ms);
	}
	be->retry_at_ms = kvn_now_ms() + be->backoff_ms;
	pthread_cond_signal(&be->wake);
}

/* Errors after which the connector ABI says the connection stays usable: a miss, a malformed
 * stored value, the store refusing one request, an operation the store lacks. After any
 * other (out of memory mid-request, a bug) the connection may be out of step with its
 * replies: it is closed, never handed to the next request. */
static bool
conn_stays(int rc)
{
	return rc >= 0 || rc == -ENOENT || rc == -EBADMSG || rc == -EREMOTEIO ||
	       rc == -EOPNOTSUPP;
}

static void
checkin(struct kvn_backend *be, struct slot *s, int rc)
{
	pthread_mutex_lock(&be->lock);
	if (!conn_stays(rc)) {
		if (is_conn_error(rc) && s->gen == be->gen)
			mark_down(be, rc);
		struct kvn_connector *c = s->conn;
		s->conn = NULL;
		s->busy = false;
		pthread_cond_signal(&be->freed);
		pthread_mutex_unlock(&be->lock);
		if (c)
			be->ops->close(c);
		return;
	}
	s->busy = false;
	pthread_cond_signal(&be->freed);
	pthread_mutex_unlock(&be->lock);
}

/* A usable connection: a pooled one of the current generation, else a fresh connect().
 * -ENOTCONN at once while the store is out of service. */
static int
acquire(struct kvn_backend *be, struct slot **out)
{
	struct slot *s = NULL;
	pthread_mutex_lock(&be->lock);
	for (;;) {
		if (be->down) {
			pthread_mutex_unlock(&be->lock);
			return -ENOTCONN;
		}
		for (size_t i = 0; i < be->nslots && !s; i++)
			if (!be->slot[i].busy && be->slot[i].conn && be->slot[i].gen == be->gen)
				s = &be->slot[i];
		for (size_t i = 0; i < be->nslots && !s; i++)
			if (!be->slot[i].busy)
				s = &be->slot[i];
		if (s)
			break;
		pthread_cond_wait(&be->freed, &be->lock);
	}
	s->busy = true;
	s->busy_since_ms = kvn_now_ms();
	struct kvn_connector *stale = s->conn && s->gen != be->gen ? s->conn : NULL;
	if (stale)
		s->conn = NULL;
	uint64_t gen = be->gen;
	pthread_mutex_unlock(&be->lock);

	if (stale)
		be->ops->close(stale);
	if (s->conn) {
		*out = s;
		return 0;
	}
	struct kvn_connector *c = NULL;
	int rc = be->ops->connect(&be->cenv, &c);
	pthread_mutex_lock(&be->lock);
	if (rc == 0) {
		s->conn = c;
		s->gen = gen;
		pthread_mutex_unlock(&be->lock);
		*out = s;
		return 0;
	}
	s->busy = false;
	pthread_cond_signal(&be->freed);
	if ((is_conn_error(rc) || rc == -ENOENT || rc == -EHOSTDOWN) && gen == be->gen)
		mark_down(be, rc);
	pthread_mutex_unlock(&be->lock);
	return rc;
}

/* One look at a store that is out of service: connect and PING with ping_timeout_ms. */
static int
probe(struct kvn_backend *be)
{
	struct kvn_connector *c = NULL;
	int rc = be->ops->connect(&be->pcenv, &c);
	if (rc == 0) {
		rc = be->ops->ping(c);
		be->ops->close(c);
	}
	return rc;
}

/* PING on the watcher's own connection (made when needed); a failure closes it. */
static int
health_ping(struct kvn_backend *be)
{
	int rc = be->hc ? 0 : be->ops->connect(&be->pcenv, &be->hc);
	if (rc == 0)
		rc = be->ops->ping(be->hc);
	if (rc < 0 && be->hc) {
		be->ops->close(be->hc);
		be->hc = NULL;
	}
	return rc;
}

/* Caller holds be->lock. When the oldest request still running began; 0 when none runs. */
static uint64_t
oldest_request(struct kvn_backend *be)
{
	uint64_t oldest = 0;
	for (size_t i = 0; i < be->nslots; i++)
		if (be->slot[i].busy && (!oldest || be->slot[i].busy_since_ms < oldest))
			oldest = be->slot[i].busy_since_ms;
	return oldest;
}

static void
wait_ms(struct kvn_backend *be, uint64_t ms)
{
	struct timespec until = kvn_deadline_in_ms(ms);
	pthread_cond_timedwait(&be->wake, &be->lock, &until);
}

static void *
watcher_main(void *arg)
{
	struct kvn_backend *be = arg;
	pthread_mutex_lock(&be->lock);
	while (!be->stopping) {
		uint64_t now = kvn_now_ms(), gen = be->gen;
		if (be->down) {
			if (now < be->retry_at_ms) {
				wait_ms(be, be->retry_at_ms - now);
				continue;
			}
			pthread_mutex_unlock(&be->lock);
			int rc = probe(be);
			pthread_mutex_lock(&be->lock);
			if (!be->down || be->gen != gen)
				continue;
			if (rc == 0) {
				be->down = false;
				atomic_fetch_add(&be->reconnects, 1);
				kvn_info("remote",
					 "%s answered PING: remote tier back in service "
					 "(reconnected)",
					 be->url_redacted);
			} else {
				mark_down(be, rc); /* the next probe after a longer back-off */
			}
			continue;
		}
		uint64_t oldest = oldest_request(be);
		if (!oldest || now - oldest < be->ping_timeout_ms) {
			wait_ms(be, oldest ? oldest + be->ping_timeout_ms - now
					   : be->ping_timeout_ms);
			continue;
		}
		/* A request has waited ping_timeout_ms: is the store there at all? */
		pthread_mutex_unlock(&be->lock);
		int rc = health_ping(be);
		pthread_mutex_lock(&be->lock);
		if (rc < 0 && !be->down && be->gen == gen) {
			kvn_warn("remote",
				 "%s did not answer PING within remote.ping_timeout_ms (%u ms) "
				 "while a request has waited %" PRIu64
				 " ms: taking it out of service",
				 be->url_redacted, be->ping_timeout_ms, kvn_now_ms() - oldest);
			mark_down(be, rc);
		} else if (rc == 0 && !be->stopping) {
			wait_ms(be, be->ping_timeout_ms); /* alive, only slow: look again later */
		}
	}
	pthread_mutex_unlock(&be->lock);
	return NULL;
}

/* --------------------------------------------------------------------------------------------
 * Create / destroy
 * -------------------------------------------------------------------------------------------- */

static void
remote_destroy(struct kvn_backend *be)
{
	if (!be)
		return;
	if (be->watcher_started) {
		pthread_mutex_lock(&be->lock);
		be->stopping = true;
		pthread_cond_signal(&be->wake);
		pthread_mutex_unlock(&be->lock);
		pthread_join(be->watcher, NULL);
	}
	if (be->hc)
		be->ops->close(be->hc);
	for (size_t i = 0; i < be->nslots; i++)
		if (be->slot[i].conn)
			be->ops->close(be->slot[i].conn);
	for (size_t i = 0; i < be->nq; i++) {
		free(be->qname[i]);
		free(be->qval[i]);
	}
	pthread_cond_destroy(&be->freed);
	pthread_cond_destroy(&be->wake);
	pthread_mutex_destroy(&be->lock);
	free(be->url);
	free(be->url_redacted);
	free(be);
}

static const char *
extra_get(void *ctx, const char *key)
{
	const struct kvn_backend_env *env = ctx;
	return env->get_opt(env, key);
}

static int
remote_create(const struct kvn_backend_env *env, struct kvn_backend **out)
{
	const char *url = env->get_opt(env, "remote_url");
	char err[1024];
	if (!url || !*url) {
		env->log(env, KVN_LOG_ERROR, "no remote_url set: set it (e.g. redis://host:6379)");
		return -EINVAL;
	}
	struct kvn_backend *be = calloc(1, sizeof(*be));
	if (!be)
		return -ENOMEM;
	pthread_mutex_init(&be->lock, NULL);
	pthread_cond_init(&be->freed, NULL);
	kvn_cond_init_monotonic(&be->wake);
	be->benv = env;
	be->url = strdup(url);
	be->url_redacted = kvn_url_redact(url);
	int rc = -ENOMEM;
	if (!be->url || !be->url_redacted || parse_query(be) < 0)
		goto fail;
	/* A scheme extra_config maps to a .so is registered first, so find() sees it. */
	rc = kvn_connector_load_external(url, env->config_dir, extra_get, (void *)env, err,
					 sizeof(err));
	if (rc >= 0)
		rc = kvn_connector_find(url, &be->ops, err, sizeof(err));
	if (rc < 0) {
		env->log(env, KVN_LOG_ERROR, "%s", err);
		goto fail;
	}
	kvn_connector_scheme_of(url, be->scheme, sizeof(be->scheme));
	be->cenv = (struct kvn_connector_env){
	    KVN_CONNECTOR_ENV_INIT,
	    .url = be->url,
	    .url_redacted = be->url_redacted,
	    .config_dir = env->config_dir,
	    .get_opt = conn_get_opt,
	    .log = conn_log,
	    .node_priv = be,
	};
	uint32_t conns, timeout;
	if ((rc = opt_u32(be, "connections", 4, 1, MAX_CONNS, &conns)) < 0 ||
	    (rc = opt_u32(be, "timeout_ms", 30000, 1, 3600000, &timeout)) < 0 ||
	    (rc = opt_u32(be, "ping_timeout_ms", 2000, 1, 3600000, &be->ping_timeout_ms)) < 0 ||
	    (rc = opt_u32(be, "retry_min_ms", 100, 1, 3600000, &be->backoff_min_ms)) < 0 ||
	    (rc = opt_u32(be, "retry_max_ms", 5000, 1, 3600000, &be->backoff_max_ms)) < 0)
		goto fail;
	if (be->backoff_max_ms < be->backoff_min_ms)
		be->backoff_max_ms = be->backoff_min_ms;
	be->cenv.timeout_ms = timeout;
	be->pcenv = be->cenv;
	be->pcenv.timeout_ms = be->ping_timeout_ms;
	be->nslots = conns;

	/* One connection now: a bad URL or option fails the node's start with the connector's
	 * message; an unreachable store does not (the node serves without it meanwhile). */
	struct slot *s;
	rc = acquire(be, &s);
	if (rc == 0) {
		checkin(be, s, 0);
		kvn_info("remote", "remote tier on %s (%s connector, %zu connections)",
			 be->url_redacted, be->scheme, be->nslots);
	} else if (rc == -EINVAL || rc == -EACCES || rc == -ENOMEM || rc == -ENAMETOOLONG) {
		env->log(env, KVN_LOG_ERROR, "cannot use remote_url %s: %s (see the message above)",
			 be->url_redacted, kvn_strerror(rc));
		goto fail;
	} else {
		pthread_mutex_lock(&be->lock);
		if (!be->down)
			mark_down(be, rc);
		pthread_mutex_unlock(&be->lock);
	}
	if ((rc = -pthread_create(&be->watcher, NULL, watcher_main, be)) < 0) {
		env->log(env, KVN_LOG_ERROR, "cannot start the watcher of %s: %s",
			 be->url_redacted, kvn_strerror(rc));
		goto fail;
	}
	be->watcher_started = true;
	*out = be;
	return 0;
fail:
	remote_destroy(be);
	return rc;
}

/* --------------------------------------------------------------------------------------------
 * Operations
 * -------------------------------------------------------------------------------------------- */

static int
remote_contains(struct kvn_backend *be, const struct kvn_key *key, bool pin)
{
	(void)pin; /* a remote store cannot pin; nothing in it is evicted by this node */
	struct slot *s;
	int rc = acquire(be, &s);
	if (rc < 0)
		return 0;
	rc = be->ops->exists(s->conn, key);
	checkin(be, s, rc);
	return rc == 1;
}

static int
remote_put(struct kvn_backend *be, const struct kvn_key *key, struct kvn_buf *buf)
{
	struct kvn_remote_value v;
	int rc = kvn_remote_value_for_put(&v, key, buf, be->ops);
	if (rc < 0)
		return rc == -EFBIG ? -ENOSPC : rc;
	struct slot *s;
	if ((rc = acquire(be, &s)) < 0)
		return rc;
	rc = be->ops->put(s->conn, key, &v);
	checkin(be, s, rc);
	if (rc == 0)
		atomic_fetch_add(&be->puts, 1);
	else
		atomic_fetch_add(&be->errors, 1);
	return rc;
}

/* Checks a value the connector returned; a bad one is dropped (miss, logged, counted). */
static int
accept_value(struct kvn_backend *be, const struct kvn_key *key, struct kvn_remote_value *v, int rc,
	     struct kvn_buf **out)
{
	char why[128] = "the connector found the stored header malformed";
	if (rc == 0)
		rc = kvn_remote_value_check_key(v, key, why, sizeof(why));
	if (rc == KVN_REMOTE_TAG_IGNORED) {
		/* LMCache rewrote the value and left kvnode's tag behind: its value, checked as
		 * LMCache checks it. kvnode's next put of the key replaces the tag. */
		atomic_fetch_add(&be->stale_tags, 1);
		kvn_debug("remote", "key %s in %s: %s; read as LMCache's value", key->str,
			  be->url_redacted, why);
		rc = 0;
	}
	if (rc == 0) {
		atomic_fetch_add(&be->hits, 1);
		*out = v->payload;
		v->payload = NULL;
		return 0;
	}
	kvn_remote_value_release(v);
	if (rc == -ESTALE) {
		/* Written by an older kvnode: not trusted, not corrupt; a put rewrites it. */
		kvn_debug("remote", "key %s in %s: %s: treated as a miss", key->str,
			  be->url_redacted, why);
	} else if (rc == -EBADMSG) {
		atomic_fetch_add(&be->corrupt, 1);
		atomic_fetch_add(&be->errors, 1);
		kvn_warn("remote", "key %s in %s: corrupt value (%s): treated as a miss", key->str,
			 be->url_redacted, why);
	} else if (rc != -ENOENT) {
		atomic_fetch_add(&be->errors, 1);
	}
	atomic_fetch_add(&be->misses, 1);
	return -ENOENT;
}

static int
remote_get(struct kvn_backend *be, const struct kvn_key *key, struct kvn_buf **out)
{
	struct kvn_remote_value v;
	memset(&v, 0, sizeof(v));
	struct slot *s;
	int rc = acquire(be, &s);
	if (rc < 0) {
		atomic_fetch_add(&be->misses, 1);
		return -ENOENT; /* unreachable: already logged when it went down */
	}
	rc = be->ops->get(s->conn, key, &v);
	checkin(be, s, rc);
	return accept_value(be, key, &v, rc, out);
}

static int
remote_remove(struct kvn_backend *be, const struct kvn_key *key)
{
	struct slot *s;
	int rc = acquire(be, &s);
	if (rc < 0)
		return rc;
	rc = be->ops->remove(s->conn, key);
	checkin(be, s, rc);
	return rc;
}

static int
remote_pin(struct kvn_backend *be, const struct kvn_key *key)
{
	(void)be, (void)key;
	return -EOPNOTSUPP;
}

struct list_ctx {
	kvn_list_cb cb;
	void *ctx;
};

static int
list_one(void *arg, const char *text, size_t len)
{
	struct list_ctx *l = arg;
	struct kvn_key key;
	if (kvn_key_parse(&key, text, len, NULL, 0) < 0)
		return 0; /* something else shares the store: not a key of ours */
	return l->cb(l->ctx, &key, 0);
}

static int
remote_list(struct kvn_backend *be, kvn_list_cb cb, void *ctx)
{
	struct slot *s;
	int rc = acquire(be, &s);
	if (rc < 0)
		return 0; /* unreachable: list what the other tiers hold */
	struct list_ctx l = {cb, ctx};
	rc = be->ops->list(s->conn, list_one, &l);
	checkin(be, s, rc);
	return rc == -EOPNOTSUPP || is_conn_error(rc) ? 0 : rc;
}

static void
remote_stats(struct kvn_backend *be, struct kvn_backend_stats *out)
{
	out->hits = atomic_load(&be->hits);
	out->misses = atomic_load(&be->misses);
	out->puts = atomic_load(&be->puts);
	out->errors = atomic_load(&be->errors);
}

void
kvn_remote_backend_status(struct kvn_backend *be, struct kvn_remote_status *out)
{
	snprintf(out->url, sizeof(out->url), "%s", be->url_redacted);
	pthread_mutex_lock(&be->lock);
	out->connected = !be->down;
	pthread_mutex_unlock(&be->lock);
	out->disconnects = atomic_load(&be->disconnects);
	out->reconnects = atomic_load(&be->reconnects);
	out->corrupt = atomic_load(&be->corrupt);
	out->stale_tags = atomic_load(&be->stale_tags);
}

bool
kvn_remote_backend_in_service(struct kvn_backend *be)
{
	pthread_mutex_lock(&be->lock);
	bool up = !be->down;
	pthread_mutex_unlock(&be->lock);
	return up;
}

const struct kvn_backend_ops kvn_remote_backend_ops = {
    KVN_BACKEND_OPS_INIT,
    .flags = KVN_BACKEND_F_SLOW,
    .name = "remote",
    .create = remote_create,
    .destroy = remote_destroy,
    .contains = remote_contains,
    .put = remote_put,
    .get = remote_get,
    .remove = remote_remove,
    .pin = remote_pin,
    .unpin = remote_pin,
    .list = remote_list,
    .stats = remote_stats,
};
