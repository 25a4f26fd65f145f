/* Prometheus /metrics listener (libmicrohttpd on a socket bound with kvn_tcp_listen, with a
 * connection cap and a per-request deadline of our own), the text exposition writer (format
 * 0.0.4) and the lock-free latency histogram. Collecting happens only when a scrape comes in,
 * on the listener's threads: nothing here runs on a data path except kvn_histogram_observe. */
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/histogram.h"
#include "node/metrics/metrics.h"
#include "core/netaddr.h"

#define COMP	     "metrics"
#define CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define POOL_THREADS 2	  /* scrapes are rare and cheap: two so a slow collect blocks nothing */
#define MAX_CONNS    16	  /* metrics_max_connections' default */
#define CONN_TIMEOUT 10	  /* metrics_timeout_s' default */
#define LOG_EVERY_MS 1000 /* libmicrohttpd's lines and our refusals: one a second per kind */

/* ------------------------------------------------------------------------------------------
 * Exposition writer
 * ------------------------------------------------------------------------------------------ */

static void expo_printf(struct kvn_expo *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
expo_printf(struct kvn_expo *e, const char *fmt, ...)
{
	if (e->oom)
		return;
	for (;;) {
		va_list ap;
		va_start(ap, fmt);
		int n = vsnprintf(e->p ? e->p + e->len : NULL, e->p ? e->cap - e->len : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			e->oom = true;
			return;
		}
		if (e->p && e->len + (size_t)n < e->cap) {
			e->len += (size_t)n;
			return;
		}
		size_t cap = e->cap ? e->cap * 2 : 16384;
		while (cap <= e->len + (size_t)n)
			cap *= 2;
		char *p = realloc(e->p, cap);
		if (!p) {
			e->oom = true;
			return;
		}
		e->p = p;
		e->cap = cap;
	}
}

/* Label values escape backslash, double quote and newline; HELP text backslash and newline. */
static void
expo_escaped(struct kvn_expo *e, const char *s, bool quote)
{
	for (; *s; s++) {
		if (*s == '\\')
			expo_printf(e, "\\\\");
		else if (*s == '\n')
			expo_printf(e, "\\n");
		else if (*s == '"' && quote)
			expo_printf(e, "\\\"");
		else
			expo_printf(e, "%c", *s);
	}
}

void
kvn_expo_family(struct kvn_expo *e, const char *name, const char *type, const char *help)
{
	expo_printf(e, "# HELP %s ", name);
	expo_escaped(e, help, false);
	expo_printf(e, "\n# TYPE %s %s\n", name, type);
}

static void
expo_name(struct kvn_expo *e, const char *name, const struct kvn_label *l, size_t nl)
{
	expo_printf(e, "%s", name);
	for (size_t i = 0; i < nl; i++) {
		expo_printf(e, "%s%s=\"", i ? "," : "{", l[i].name);
		expo_escaped(e, l[i].value ? l[i].value : "", true);
		expo_printf(e, "\"%s", i + 1 == nl ? "}" : "");
	}
}

void
kvn_expo_u64(struct kvn_expo *e, const char *name, const struct kvn_label *l, size_t nl, uint64_t v)
{
	expo_name(e, name, l, nl);
	expo_printf(e, " %" PRIu64 "\n", v);
}

void
kvn_expo_double(struct kvn_expo *e, const char *name, const struct kvn_label *l, size_t nl,
		double v)
{
	expo_name(e, name, l, nl);
	expo_printf(e, " %.17g\n", v);
}

void
kvn_expo_one(struct kvn_expo *e, const char *name, const char *type, const char *help, uint64_t v)
{
	kvn_expo_family(e, name, type, help);
	kvn_expo_u64(e, name, NULL, 0, v);
}

void
kvn_expo_histogram(struct kvn_expo *e, const char *name, const struct kvn_histogram *h)
{
	char sample[160], le[32];
	uint64_t cum = 0;
	snprintf(sample, sizeof(sample), "%s_bucket", name);
	for (size_t i = 0; i <= KVN_HIST_BOUNDS; i++) {
		cum += atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
		if (i < KVN_HIST_BOUNDS)
			snprintf(le, sizeof(le), "%g", (double)kvn_hist_bounds_ns[i] / 1e9);
		else
			snprintf(le, sizeof(le), "+Inf");
		struct kvn_label l = {"le", le};
		kvn_expo_u64(e, sample, &l, 1, cum);
	}
	snprintf(sample, sizeof(sample), "%s_sum", name);
	kvn_expo_double(e, sample, NULL, 0,
			(double)atomic_load_explicit(&h->sum_ns, memory_order_relaxed) / 1e9);
	snprintf(sample, sizeof(sample), "%s_count", name);
	kvn_expo_u64(e, sample, NULL, 0, cum);
}

/* ------------------------------------------------------------------------------------------
 * Listener
 * ------------------------------------------------------------------------------------------ */

/* A connection, for the deadline: libmicrohttpd's own timeout counts from the last byte, so a
 * client sending one byte a second would hold its slot forever. */
struct mconn {
	struct mconn *prev, *next;
	int fd;
	uint64_t since_ms; /* opened, or its last request completed */
	bool cut;
	char peer[64];
};

struct kvn_metrics {
	struct MHD_Daemon *d;
	kvn_metrics_collect_fn collect;
	void *ctx;
	char addr[KVN_HOST_MAX + 8];
	unsigned max_conns, timeout_s;

	pthread_mutex_t lock; /* conns, nconns, stopping */
	pthread_cond_t cond;  /* the reaper's: a connection came, or stop */
	struct mconn *conns;
	unsigned nconns;
	bool stopping;
	pthread_t reaper;
	bool reaper_started;

	_Atomic uint64_t cut, refused;
	struct kvn_ratelimit rl_log, rl_cut;
};

static void
mhd_log(void *cls, const char *fmt, va_list ap)
{
	struct kvn_metrics *m = cls;
	char line[512];
	vsnprintf(line, sizeof(line), fmt, ap);
	size_t n = strlen(line);
	while (n && line[n - 1] == '\n')
		line[--n] = '\0';
	/* The one sign libmicrohttpd gives of a client turned away at the cap (most wait in the
	 * listen queue instead: it stops accepting while full). */
	if (strstr(line, "connection limit"))
		atomic_fetch_add(&m->refused, 1);
	uint64_t missed;
	if (kvn_ratelimit_ok(&m->rl_log, LOG_EVERY_MS, &missed))
		kvn_warn(COMP,
			 "listener %s: %s (%llu more lines not logged; metrics_max_connections "
			 "%u, metrics_timeout_s %u)",
			 m->addr, line, (unsigned long long)missed, m->max_conns, m->timeout_s);
}

static void
on_connection(void *cls, struct MHD_Connection *conn, void **socket_ctx,
	      enum MHD_ConnectionNotificationCode toe)
{
	struct kvn_metrics *m = cls;
	if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
		const union MHD_ConnectionInfo *fd =
		    MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
		const union MHD_ConnectionInfo *sa =
		    MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
		struct mconn *mc = fd ? calloc(1, sizeof(*mc)) : NULL;
		*socket_ctx = mc;
		if (!mc)
			return; /* untracked: only libmicrohttpd's idle timeout applies to it */
		mc->fd = fd->connect_fd;
		mc->since_ms = kvn_now_ms();
		if (sa && sa->client_addr)
			kvn_sockaddr_format(sa->client_addr, 0, mc->peer, sizeof(mc->peer));
		else
			snprintf(mc->peer, sizeof(mc->peer), "?");
		pthread_mutex_lock(&m->lock);
		mc->next = m->conns;
		if (mc->next)
			mc->next->prev = mc;
		m->conns = mc;
		m->nconns++;
		pthread_cond_signal(&m->cond);
		pthread_mutex_unlock(&m->lock);
		return;
	}
	/* CLOSED comes before libmicrohttpd closes the socket: once unlinked here, the reaper
	 * can never shut down a descriptor that was closed and reused. */
	struct mconn *mc = *socket_ctx;
	if (!mc)
		return;
	pthread_mutex_lock(&m->lock);
	if (mc->prev)
		mc->prev->next = mc->next;
	else
		m->conns = mc->next;
	if (mc->next)
		mc->next->prev = mc->prev;
	m->nconns--;
	pthread_mutex_unlock(&m->lock);
	free(mc);
	*socket_ctx = NULL;
}

/* A request answered: the next one on this keep-alive connection gets a fresh deadline. */
static void
on_completed(void *cls, struct MHD_Connection *conn, void **req_ctx,
	     enum MHD_RequestTerminationCode toe)
{
	struct kvn_metrics *m = cls;
	(void)req_ctx, (void)toe;
	const union MHD_ConnectionInfo *ci =
	    MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	struct mconn *mc = ci ? ci->socket_context : NULL;
	if (!mc)
		return;
	pthread_mutex_lock(&m->lock);
	mc->since_ms = kvn_now_ms();
	pthread_mutex_unlock(&m->lock);
}

/* Shuts down every connection past its deadline; libmicrohttpd then sees the end of the
 * stream and closes it, freeing the slot for a waiting scraper. */
static void *
reaper_main(void *arg)
{
	struct kvn_metrics *m = arg;
	uint64_t limit = (uint64_t)m->timeout_s * 1000;
	pthread_mutex_lock(&m->lock);
	while (!m->stopping) {
		uint64_t now = kvn_now_ms(), next = UINT64_MAX;
		for (struct mconn *mc = m->conns; mc; mc = mc->next) {
			if (mc->cut)
				continue;
			if (now - mc->since_ms < limit) {
				if (mc->since_ms + limit < next)
					next = mc->since_ms + limit;
				continue;
			}
			mc->cut = true;
			atomic_fetch_add(&m->cut, 1);
			uint64_t missed;
			if (kvn_ratelimit_ok(&m->rl_cut, LOG_EVERY_MS, &missed))
				kvn_warn(
				    COMP,
				    "client %s on %s: no complete request within %u s "
				    "(metrics_timeout_s): closing its connection (%llu more not "
				    "logged)",
				    mc->peer, m->addr, m->timeout_s, (unsigned long long)missed);
			shutdown(mc->fd, SHUT_RDWR);
		}
		if (next == UINT64_MAX) {
			pthread_cond_wait(&m->cond, &m->lock);
		} else {
			struct timespec ts = kvn_deadline_in_ms(next - now);
			pthread_cond_timedwait(&m->cond, &m->lock, &ts);
		}
	}
	pthread_mutex_unlock(&m->lock);
	return NULL;
}

/* The listener's own families, after the daemon's. */
static void
listener_families(struct kvn_metrics *m, struct kvn_expo *e)
{
	pthread_mutex_lock(&m->lock);
	unsigned open = m->nconns;
	pthread_mutex_unlock(&m->lock);
	kvn_expo_one(e, "kvnode_metrics_connections", "gauge",
		     "Open connections of this /metrics listener (metrics_max_connections at most)",
		     open);
	kvn_expo_one(e, "kvnode_metrics_cut_total", "counter",
		     "/metrics connections closed for going metrics_timeout_s without completing a "
		     "request (stalled or trickling clients)",
		     atomic_load(&m->cut));
	kvn_expo_one(e, "kvnode_metrics_refused_total", "counter",
		     "/metrics connections libmicrohttpd closed at once at metrics_max_connections "
		     "(most wait in the listen queue instead)",
		     atomic_load(&m->refused));
}

static enum MHD_Result
reply(struct MHD_Connection *conn, unsigned status, char *body, bool body_owned, const char *allow)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(
	    strlen(body), body, body_owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
	if (!r) {
		if (body_owned)
			free(body);
		return MHD_NO;
	}
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
				status == MHD_HTTP_OK ? CONTENT_TYPE : "text/plain; charset=utf-8");
	if (allow)
		MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
	enum MHD_Result rc = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return rc;
}

static enum MHD_Result
on_request(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
	   const char *version, const char *upload, size_t *upload_len, void **req_cls)
{
	struct kvn_metrics *m = cls;
	(void)version, (void)upload, (void)upload_len, (void)req_cls;
	if (strcmp(url, "/metrics"))
		return reply(conn, MHD_HTTP_NOT_FOUND,
			     "not found: kvnode serves its metrics on /metrics\n", false, NULL);
	if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD))
		return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
			     "method not allowed: /metrics answers GET and HEAD\n", false,
			     "GET, HEAD");
	struct kvn_expo e = {0};
	int rc = m->collect(m->ctx, &e);
	if (rc == 0)
		listener_families(m, &e);
	if (rc == 0 && e.oom)
		rc = -ENOMEM;
	if (rc < 0) {
		free(e.p);
		kvn_warn(COMP, "scrape of %s failed: %s", m->addr, kvn_strerror(rc));
		char *msg = NULL;
		if (asprintf(&msg, "metrics unavailable: %s\n", kvn_strerror(rc)) < 0)
			return reply(conn, MHD_HTTP_SERVICE_UNAVAILABLE, "metrics unavailable\n",
				     false, NULL);
		return reply(conn, MHD_HTTP_SERVICE_UNAVAILABLE, msg, true, NULL);
	}
	if (!e.p) {
		/* A collector that wrote nothing still answers with an empty exposition. */
		return reply(conn, MHD_HTTP_OK, "", false, NULL);
	}
	return reply(conn, MHD_HTTP_OK, e.p, true, NULL);
}

static void
metrics_free(struct kvn_metrics *m)
{
	if (m->reaper_started) {
		pthread_mutex_lock(&m->lock);
		m->stopping = true;
		pthread_cond_signal(&m->cond);
		pthread_mutex_unlock(&m->lock);
		pthread_join(m->reaper, NULL);
	}
	pthread_mutex_destroy(&m->lock);
	pthread_cond_destroy(&m->cond);
	free(m);
}

int
kvn_metrics_start(const struct kvn_metrics_opts *opts, kvn_metrics_collect_fn collect, void *ctx,
		  struct kvn_metrics **out, char *err, size_t errlen)
{
	const char *listen = opts->listen;
	char host[KVN_HOST_MAX], why[512];
	uint16_t port, bound = 0;
	*out = NULL;
	if (kvn_hostport_parse(listen, host, &port, why, sizeof(why)) < 0)
		return kvn_seterr(-EINVAL, err, errlen, "metrics_listen: %s", why);
	struct kvn_metrics *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	pthread_mutex_init(&m->lock, NULL);
	int rc = kvn_cond_init_monotonic(&m->cond);
	if (rc < 0) {
		pthread_mutex_destroy(&m->lock);
		free(m);
		return kvn_seterr(rc, err, errlen, "metrics_listen %s: condition variable: %s",
				  listen, strerror(-rc));
	}
	m->collect = collect;
	m->ctx = ctx;
	m->max_conns = opts->max_conns ? opts->max_conns : MAX_CONNS;
	m->timeout_s = opts->timeout_s ? opts->timeout_s : CONN_TIMEOUT;
	if ((rc = pthread_create(&m->reaper, NULL, reaper_main, m))) {
		metrics_free(m);
		return kvn_seterr(-rc, err, errlen, "metrics_listen %s: cannot start a thread: %s",
				  listen, strerror(rc));
	}
	m->reaper_started = true;
	int fd = kvn_tcp_listen(host, port, 64, &bound, why, sizeof(why));
	if (fd < 0) {
		metrics_free(m);
		return kvn_seterr(fd, err, errlen, "metrics_listen %s: %s", listen, why);
	}
	snprintf(m->addr, sizeof(m->addr), strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, bound);
	/* Each pool thread gets its share of the cap (libmicrohttpd divides it): no more threads
	 * than connections, or one would have no share. */
	unsigned threads = m->max_conns < POOL_THREADS ? m->max_conns : POOL_THREADS;
	/* The socket is ours (bound to exactly the address asked for, with netaddr's messages);
	 * MHD only accepts on it and closes it on stop. A full listener stops accepting, so a
	 * scraper waits in the listen queue until the deadline frees a slot. */
	m->d = MHD_start_daemon(
	    MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL, on_request, m,
	    MHD_OPTION_EXTERNAL_LOGGER, mhd_log, m, MHD_OPTION_LISTEN_SOCKET, fd,
	    MHD_OPTION_THREAD_POOL_SIZE, threads, MHD_OPTION_CONNECTION_LIMIT, m->max_conns,
	    MHD_OPTION_CONNECTION_TIMEOUT, m->timeout_s, MHD_OPTION_NOTIFY_CONNECTION,
	    on_connection, m, MHD_OPTION_NOTIFY_COMPLETED, on_completed, m, MHD_OPTION_END);
	if (!m->d) {
		/* fd is not closed here: whether MHD already did on its failure path differs
		 * between versions, and a double close could hit another thread's descriptor.
		 * The caller exits on this error anyway. */
		metrics_free(m);
		return kvn_seterr(-EINVAL, err, errlen,
				  "metrics_listen %s: libmicrohttpd could not start its listener "
				  "threads (out of memory or threads?)",
				  listen);
	}
	*out = m;
	return 0;
}

const char *
kvn_metrics_address(const struct kvn_metrics *m)
{
	return m->addr;
}

void
kvn_metrics_stop(struct kvn_metrics *m)
{
	if (!m)
		return;
	MHD_stop_daemon(m->d); /* closes every connection: the list is empty after */
	metrics_free(m);
}

