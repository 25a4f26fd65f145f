/* Local client server of `kvnode serve`: a unix socket, a thread per connection up to a cap,
 * every request validated before the engine sees it. A bad frame gets an error reply and the
 * connection is closed; the daemon itself never stops serving others because of one client. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/fdio.h"
#include "kvnode/plugin.h"
#include "node/engine/engine.h"
#include "node/serve/clientsrv.h"
#include "node/serve/connsrv.h"
#include "node/serve/ctlproto.h"
#include "node/serve/lm_server.h"
#include "core/log.h"
#include "plugins/plugins.h"
#include "node/serve/server.h"

#define COMP		  "server"
#define DEFAULT_MAX_CONNS 128
#define DEFAULT_IO_MS	  30000

struct conn {
	struct kvn_connsrv_conn base; /* first: the skeleton allocates and lists it */
	struct kvn_server *srv;
	int fd;
	pid_t peer_pid; /* for log lines; 0 when unknown */
	struct kvn_client_conn *client; /* a client-protocol connection (after its HELLO) */
};

struct kvn_server {
	struct kvn_engine *eng;
	char *path;
	char *addr;
	int lfd;
	dev_t dev;   /* identity of the socket file we created, so destroy never removes */
	ino_t ino;   /* a newer daemon's socket */
	uint64_t value_max;
	struct kvn_connsrv cs; /* connections, cap, stop and drain */
	bool cs_ready;

	_Atomic uint64_t requests, proto_errors, oversized;
	struct kvn_ratelimit rl_oversized;
	struct kvn_plugins *plugins; /* listed by STAT; NULL = none */
	struct kvn_lm_server *lm;    /* its counters in STAT; NULL = none */
	struct kvn_clientsrv *clients; /* the client protocol; NULL without the cpu tier */
};

static const struct kvn_connsrv_ops conn_ops;

/* ------------------------------------------------------------------------------------------
 * Socket set-up
 * ------------------------------------------------------------------------------------------ */

static int
fill_addr(struct sockaddr_un *sa, const char *path, char *err, size_t errlen)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (!path || !*path)
		return kvn_seterr(-EINVAL, err, errlen, "socket path is empty: give --socket PATH");
	if (strlen(path) >= sizeof(sa->sun_path))
		return kvn_seterr(-EINVAL, err, errlen,
				  "socket path %s is %zu bytes, longer than the %zu a unix socket "
				  "allows: pick a shorter --socket path",
				  path, strlen(path), sizeof(sa->sun_path) - 1);
	memcpy(sa->sun_path, path, strlen(path) + 1);
	return 0;
}

/* A socket file may be left over from a daemon that was killed. Only one nothing answers on
 * is removed: never a live daemon's, never a file that is not a socket. */
static int
clear_stale(const char *path, const struct sockaddr_un *sa, bool dry_run, char *err, size_t errlen)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		return errno == ENOENT
			   ? 0
			   : (kvn_seterr(-EINVAL, err, errlen, "cannot inspect socket path %s: %s",
					 path, strerror(errno)),
			      -errno);
	if (!S_ISSOCK(st.st_mode)) {
		return kvn_seterr(
		    -EEXIST, err, errlen,
		    "%s exists and is not a socket: remove it or pick another --socket path", path);
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	int rc = connect(fd, (const struct sockaddr *)sa, sizeof(*sa));
	int e = errno;
	close(fd);
	if (rc == 0 || e == EAGAIN || e == EINPROGRESS) {
		return kvn_seterr(
		    -EADDRINUSE, err, errlen,
		    "another kvnode is already serving on %s: stop it first (kvnode stat "
		    "--node %s shows it) or pick another --socket path",
		    path, path);
	}
	if (e != ECONNREFUSED) {
		return kvn_seterr(-e, err, errlen, "cannot probe existing socket %s: %s", path,
				  strerror(e));
	}
	if (dry_run)
		return 0;
	if (unlink(path) < 0 && errno != ENOENT) {
		return kvn_seterr(-errno, err, errlen, "cannot remove stale socket %s: %s", path,
				  strerror(errno));
	}
	kvn_info(COMP, "removed stale socket %s (nothing was answering on it)", path);
	return 0;
}

int
kvn_server_probe(const char *socket_path, char *err, size_t errlen)
{
	struct sockaddr_un sa;
	int rc = fill_addr(&sa, socket_path, err, errlen);
	return rc ? rc : clear_stale(socket_path, &sa, true, err, errlen);
}

int
kvn_server_create(struct kvn_engine *eng, const struct kvn_server_opts *opts,
		  struct kvn_server **out, char *err, size_t errlen)
{
	struct sockaddr_un sa;
	int rc = fill_addr(&sa, opts->socket_path, err, errlen);
	if (rc)
		return rc;
	struct kvn_server *srv = calloc(1, sizeof(*srv));
	if (!srv)
		return -ENOMEM;
	srv->eng = eng;
	srv->lfd = -1;
	srv->value_max = opts->value_max ? opts->value_max : KVN_CTL_VALUE_MAX;
	srv->path = strdup(opts->socket_path);
	if (!srv->path || asprintf(&srv->addr, "unix:%s", opts->socket_path) < 0) {
		srv->addr = NULL;
		rc = -ENOMEM;
		goto fail;
	}
	int io_ms = opts->io_timeout_ms > 0 ? opts->io_timeout_ms : DEFAULT_IO_MS;
	struct kvn_connsrv_opts co = {
	    .comp = COMP,
	    .addr = srv->path,
	    .max_conns = opts->max_conns ? opts->max_conns : DEFAULT_MAX_CONNS,
	    .max_conns_key = "client_max_connections",
	    .io_timeout_ms = io_ms,
	    .idle_timeout_ms = io_ms,
	};
	if ((rc = kvn_connsrv_init(&srv->cs, &co, &conn_ops, srv, err, errlen)) < 0)
		goto fail;
	srv->cs_ready = true;
	if (kvn_engine_pool(eng)) {
		struct kvn_clientsrv_opts cso = {.max_chunk = opts->value_max,
						 .max_held = opts->client_max_held,
						 .io_timeout_ms = io_ms};
		if ((rc = kvn_clientsrv_create(eng, &cso, &srv->clients, err, errlen)) < 0)
			goto fail;
	}
	rc = clear_stale(srv->path, &sa, false, err, errlen);
	if (rc)
		goto fail;
	srv->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (srv->lfd < 0) {
		rc = -errno;
		kvn_seterr(rc, err, errlen, "socket: %s", strerror(errno));
		goto fail;
	}
	if (bind(srv->lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		rc = -errno;
		kvn_seterr(rc, err, errlen, "cannot bind %s: %s%s", srv->path, strerror(errno),
			   errno == ENOENT ? " (does its directory exist?)" : "");
		goto fail;
	}
	struct stat st;
	if (stat(srv->path, &st) == 0) {
		srv->dev = st.st_dev;
		srv->ino = st.st_ino;
	}
	if (listen(srv->lfd, 128) < 0) {
		rc = -errno;
		kvn_seterr(rc, err, errlen, "cannot listen on %s: %s", srv->path,
			   strerror(errno));
		goto fail;
	}
	srv->cs.lfd = srv->lfd;
	*out = srv;
	return 0;
fail:
	kvn_server_destroy(srv);
	return rc;
}

const char *
kvn_server_address(const struct kvn_server *srv)
{
	return srv->addr;
}

void
kvn_server_set_plugins(struct kvn_server *srv, struct kvn_plugins *plugins)
{
	srv->plugins = plugins;
}

void
kvn_server_set_held(struct kvn_server *srv, kvn_clientsrv_held_fn fn, void *ctx)
{
	if (srv->clients)
		kvn_clientsrv_set_held(srv->clients, fn, ctx);
}

void
kvn_server_client_stats(struct kvn_server *srv, struct kvn_clientsrv_stats *out)
{
	kvn_clientsrv_stats(srv->clients, out);
}

void
kvn_server_set_lm(struct kvn_server *srv, struct kvn_lm_server *lm)
{
	srv->lm = lm;
}

void
kvn_server_stats(struct kvn_server *srv, struct kvn_server_stats *out)
{
	out->connections = kvn_connsrv_conns(&srv->cs);
	out->accepted = atomic_load(&srv->cs.accepted);
	out->requests = atomic_load(&srv->requests);
	out->proto_errors = atomic_load(&srv->proto_errors);
	out->refused = atomic_load(&srv->cs.refused);
	out->oversized = atomic_load(&srv->oversized);
}

void
kvn_server_stop(struct kvn_server *srv)
{
	kvn_connsrv_stop(&srv->cs);
}

void
kvn_server_destroy(struct kvn_server *srv)
{
	if (!srv)
		return;
	if (srv->lfd >= 0) {
		close(srv->lfd);
		struct stat st;
		/* Another daemon may have replaced a socket we no longer answered on. */
		if (stat(srv->path, &st) == 0 && st.st_dev == srv->dev && st.st_ino == srv->ino)
			unlink(srv->path);
	}
	if (srv->cs_ready)
		kvn_connsrv_destroy(&srv->cs);
	kvn_clientsrv_destroy(srv->clients);
	free(srv->path);
	free(srv->addr);
	free(srv);
}

/* ------------------------------------------------------------------------------------------
 * Requests
 * ------------------------------------------------------------------------------------------ */

/* Error reply with a one-line message; a failed send is not worth more than a debug line
 * because the connection is usually being closed anyway. */
static void reply_err(struct conn *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
reply_err(struct conn *c, int status, const char *fmt, ...)
{
	char msg[KVN_KEY_MAX + 512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	size_t len = n < 0 ? 0 : (size_t)n >= sizeof(msg) ? sizeof(msg) - 1 : (size_t)n;
	int rc = kvn_ctl_send_reply(c->fd, status, msg, len);
	if (rc)
		kvn_debug(COMP, "client pid %d: reply not delivered: %s", c->peer_pid,
			  kvn_strerror(rc));
}

static int
proto_fail(struct conn *c, int status, const char *what)
{
	atomic_fetch_add(&c->srv->proto_errors, 1);
	kvn_warn(COMP, "client pid %d on %s: %s; closing its connection", c->peer_pid, c->srv->path,
		 what);
	reply_err(c, status, "%s", what);
	return -1;
}

/* A PUT whose header declares more than max_chunk_size: refused before a byte of the value is
 * read, and the connection closed since the value is still on its way. */
static int
refuse_oversized(struct conn *c, const struct kvn_ctl_req *req)
{
	struct kvn_server *srv = c->srv;
	uint64_t missed;
	atomic_fetch_add(&srv->oversized, 1);
	if (kvn_ratelimit_ok(&srv->rl_oversized, 1000, &missed))
		kvn_warn(COMP,
			 "client pid %d on %s: PUT of %llu bytes is over max_chunk_size (%llu "
			 "bytes): refused unread, closing its connection (%llu more not logged)",
			 c->peer_pid, srv->path, (unsigned long long)req->value_len,
			 (unsigned long long)srv->value_max, (unsigned long long)missed);
	reply_err(c, -EMSGSIZE,
		  "PUT value of %llu bytes is over this node's max_chunk_size of %llu bytes: store "
		  "smaller values or raise max_chunk_size in the node's config",
		  (unsigned long long)req->value_len, (unsigned long long)srv->value_max);
	return -1;
}

struct ls_text {
	char *p;
	size_t len, cap;
	int err;
};

static int
ls_add(void *ctx, const struct kvn_key *key, size_t len)
{
	struct ls_text *t = ctx;
	char line[KVN_KEY_MAX + 32];
	int n = snprintf(line, sizeof(line), "%s\t%zu\n", key->str, len);
	if (n < 0 || (size_t)n >= sizeof(line))
		return 0;
	if (t->len + (size_t)n > t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 4096;
		while (cap < t->len + (size_t)n)
			cap *= 2;
		char *p = realloc(t->p, cap);
		if (!p) {
			t->err = -ENOMEM;
			return 1;
		}
		t->p = p;
		t->cap = cap;
	}
	memcpy(t->p + t->len, line, (size_t)n);
	t->len += (size_t)n;
	return 0;
}

static int
do_ls(struct conn *c)
{
	struct ls_text t = {0};
	int rc = kvn_engine_list(c->srv->eng, ls_add, &t);
	if (t.err)
		rc = t.err;
	if (rc < 0) {
		free(t.p);
		reply_err(c, rc, "LS failed: %s", kvn_strerror(rc));
		return 0;
	}
	rc = kvn_ctl_send_reply(c->fd, 0, t.p, t.len);
	free(t.p);
	return rc ? -1 : 0;
}

/* The engine's stats plus this server's own counters under "server". */
static int
do_stat(struct conn *c)
{
	struct kvn_server *srv = c->srv;
	char *text = kvn_engine_stats_json(srv->eng);
	cJSON *root = text ? cJSON_Parse(text) : NULL;
	free(text);
	if (!root) {
		reply_err(c, -ENOMEM, "STAT failed: could not build the statistics");
		return 0;
	}
	cJSON *s = cJSON_AddObjectToObject(root, "server");
	struct kvn_server_stats st;
	kvn_server_stats(srv, &st);
	cJSON_AddStringToObject(s, "address", srv->addr);
	cJSON_AddNumberToObject(s, "connections", (double)st.connections);
	cJSON_AddNumberToObject(s, "max_connections", srv->cs.o.max_conns);
	cJSON_AddNumberToObject(s, "max_chunk_size", (double)srv->value_max);
	cJSON_AddNumberToObject(s, "accepted", (double)st.accepted);
	cJSON_AddNumberToObject(s, "requests", (double)st.requests);
	cJSON_AddNumberToObject(s, "protocol_errors", (double)st.proto_errors);
	cJSON_AddNumberToObject(s, "refused", (double)st.refused);
	cJSON_AddNumberToObject(s, "oversized", (double)st.oversized);
	if (srv->clients) {
		struct kvn_clientsrv_stats cs;
		kvn_clientsrv_stats(srv->clients, &cs);
		cJSON *o = cJSON_AddObjectToObject(root, "clients"),
		      *r = cJSON_AddObjectToObject(o, "requests");
		cJSON_AddNumberToObject(o, "connected", (double)cs.clients);
		cJSON_AddNumberToObject(o, "leases", (double)cs.leases);
		cJSON_AddNumberToObject(o, "reservations", (double)cs.reservations);
		cJSON_AddNumberToObject(o, "held_bytes", (double)cs.held_bytes);
		cJSON_AddNumberToObject(o, "keys", (double)cs.keys);
		cJSON_AddNumberToObject(o, "held_refused", (double)cs.held_refused);
		cJSON_AddNumberToObject(o, "cluster_lookups", (double)cs.cluster_lookups);
		cJSON_AddNumberToObject(o, "copied_to_pool", (double)cs.copied_to_pool);
		cJSON_AddNumberToObject(o, "protocol_errors", (double)cs.protocol_errors);
		for (int i = 1; i < KVN_CP_NOPS; i++)
			cJSON_AddNumberToObject(r, kvn_cp_op_name((unsigned)i),
						(double)cs.requests[i]);
	}
	cJSON *lm = srv->lm ? kvn_lm_server_stats_json(srv->lm) : NULL;
	if (lm && !cJSON_AddItemToObject(root, "lm_server", lm))
		cJSON_Delete(lm);
	cJSON *plugins = kvn_plugins_stats_cjson(srv->plugins);
	if (plugins && !cJSON_AddItemToObject(root, "plugins", plugins))
		cJSON_Delete(plugins);
	text = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	if (!text) {
		reply_err(c, -ENOMEM, "STAT failed: out of memory");
		return 0;
	}
	int rc = kvn_ctl_send_reply(c->fd, 0, text, strlen(text));
	free(text);
	return rc ? -1 : 0;
}

static int
do_put(struct conn *c, const struct kvn_key *key, uint64_t len)
{
	/* The engine wants the whole value; malloc only reserves address space, so a declared
	 * length the client never sends costs little. */
	void *val = malloc(len ? (size_t)len : 1);
	if (!val) {
		reply_err(c, -ENOMEM, "PUT %s: no memory for a %llu-byte value", key->str,
			  (unsigned long long)len);
		return -1; /* the value is still in flight: the connection is out of step */
	}
	size_t got;
	int rc = kvn_fd_read_full(c->fd, val, (size_t)len, &got);
	if (rc) {
		char what[KVN_KEY_MAX + 128];
		snprintf(what, sizeof(what),
			 "truncated PUT value for key %s (%zu of %llu bytes: %s)", key->str, got,
			 (unsigned long long)len, kvn_strerror(rc));
		free(val);
		return proto_fail(c, -EPROTO, what);
	}
	rc = kvn_engine_put(c->srv->eng, key, val, (size_t)len);
	free(val);
	if (rc < 0) {
		kvn_info(COMP, "PUT %s (%llu bytes) failed: %s", key->str, (unsigned long long)len,
			 kvn_strerror(rc));
		reply_err(c, rc, "PUT %s (%llu bytes): %s", key->str, (unsigned long long)len,
			  kvn_strerror(rc));
		return 0;
	}
	return kvn_ctl_send_reply(c->fd, 0, NULL, 0) ? -1 : 0;
}

static int
do_get(struct conn *c, const struct kvn_key *key)
{
	struct kvn_buf *buf;
	int rc = kvn_engine_get(c->srv->eng, key, &buf);
	if (rc == -ENOENT)
		return kvn_ctl_send_reply(c->fd, -ENOENT, NULL, 0) ? -1 : 0;
	if (rc < 0) {
		reply_err(c, rc, "GET %s: %s", key->str, kvn_strerror(rc));
		return 0;
	}
	/* The view pins the chunk while it streams out; SO_SNDTIMEO bounds a reader that
	 * stops reading. */
	rc = kvn_ctl_send_reply(c->fd, 0, buf->data, buf->len);
	kvn_buf_unref(buf);
	if (rc)
		kvn_debug(COMP, "client pid %d: GET %s not delivered: %s", c->peer_pid, key->str,
			  kvn_strerror(rc));
	return rc ? -1 : 0;
}

/* The first frame is the client protocol's HELLO (its magic where the control protocol has
 * its own): the connection speaks that protocol from now on. */
static int
client_hello(struct conn *c, const uint8_t *first)
{
	_Static_assert(KVN_CP_HDR_SIZE > KVN_CTL_REQ_SIZE, "headers");
	uint8_t raw[KVN_CP_HDR_SIZE];
	memcpy(raw, first, KVN_CTL_REQ_SIZE);
	if (kvn_fd_read_full(c->fd, raw + KVN_CTL_REQ_SIZE, KVN_CP_HDR_SIZE - KVN_CTL_REQ_SIZE,
			     NULL))
		return proto_fail(c, -EPROTO, "truncated client HELLO");
	struct kvn_cp_hdr h;
	char why[256], peer[32];
	kvn_cp_hdr_decode(raw, &h);
	if (kvn_cp_hdr_validate(&h, false, why, sizeof(why)) || h.op != KVN_CP_HELLO)
		return proto_fail(c, -EPROTO,
				  h.op != KVN_CP_HELLO ? "client frame before HELLO" : why);
	if (!c->srv->clients)
		return proto_fail(
		    c, -ENOTSUP, "a client HELLO, but clients need the cpu tier (local_cpu: true)");
	snprintf(peer, sizeof(peer), "pid %d", (int)c->peer_pid);
	if (kvn_clientsrv_hello(c->srv->clients, c->fd, peer, &h, &c->client) < 0)
		return -1;
	c->base.never_idle = true;
	return 0;
}

/* Serves one request. Returns 0 to keep the connection, -1 to close it. */
static int
serve_one(struct conn *c)
{
	struct kvn_server *srv = c->srv;
	if (c->client)
		return kvn_clientsrv_serve(srv->clients, c->client);
	uint8_t hdr[KVN_CTL_REQ_SIZE];
	char what[KVN_KEY_MAX + 256];
	size_t got;
	int rc = kvn_fd_read_full(c->fd, hdr, sizeof(hdr), &got);
	if (rc) {
		if (got == 0 && rc == -ECONNRESET)
			return -1; /* closed between requests: the normal end */
		snprintf(what, sizeof(what), "truncated request header (%zu of %d bytes: %s)", got,
			 KVN_CTL_REQ_SIZE, kvn_strerror(rc));
		return proto_fail(c, -EPROTO, what);
	}
	if (hdr[0] == (KVN_CP_REQ_MAGIC & 0xff) && hdr[1] == ((KVN_CP_REQ_MAGIC >> 8) & 0xff) &&
	    hdr[2] == ((KVN_CP_REQ_MAGIC >> 16) & 0xff) && hdr[3] == (KVN_CP_REQ_MAGIC >> 24))
		return client_hello(c, hdr);
	struct kvn_ctl_req req;
	kvn_ctl_req_decode(hdr, &req);
	rc = kvn_ctl_req_validate(&req, srv->value_max, what, sizeof(what));
	if (rc == -EMSGSIZE)
		return refuse_oversized(c, &req);
	if (rc)
		return proto_fail(c, rc, what);
	atomic_fetch_add(&srv->requests, 1);

	struct kvn_key key;
	if (req.key_len) {
		char text[KVN_KEY_MAX];
		rc = kvn_fd_read_full(c->fd, text, req.key_len, &got);
		if (rc) {
			snprintf(what, sizeof(what), "truncated %s key (%zu of %u bytes: %s)",
				 kvn_ctl_op_name(req.op), got, req.key_len, kvn_strerror(rc));
			return proto_fail(c, -EPROTO, what);
		}
		char why[256];
		if (kvn_key_parse(&key, text, req.key_len, why, sizeof(why)) < 0) {
			reply_err(c, -EINVAL, "invalid key: %s", why);
			/* A PUT's value is still coming and may be large: drop the connection
			 * rather than read it only to throw it away. */
			return req.op == KVN_CTL_PUT ? -1 : 0;
		}
	}
	kvn_debug(COMP, "client pid %d: %s %s%s%llu bytes", c->peer_pid, kvn_ctl_op_name(req.op),
		  req.key_len ? key.str : "", req.key_len ? " " : "",
		  (unsigned long long)req.value_len);

	switch (req.op) {
	case KVN_CTL_PING:
		return kvn_ctl_send_reply(c->fd, 0, "kvnode " KVN_VERSION_STRING,
					  strlen("kvnode " KVN_VERSION_STRING))
			   ? -1
			   : 0;
	case KVN_CTL_PUT:
		return do_put(c, &key, req.value_len);
	case KVN_CTL_GET:
		return do_get(c, &key);
	case KVN_CTL_RM:
		rc = kvn_engine_remove(srv->eng, &key);
		if (rc < 0 && rc != -ENOENT) {
			reply_err(c, rc, "RM %s: %s", key.str, kvn_strerror(rc));
			return 0;
		}
		return kvn_ctl_send_reply(c->fd, rc < 0 ? rc : 0, NULL, 0) ? -1 : 0;
	case KVN_CTL_LS:
		return do_ls(c);
	case KVN_CTL_STAT:
		return do_stat(c);
	}
	return -1; /* not reached: validate() accepts only the ops above */
}

/* ------------------------------------------------------------------------------------------
 * Connections
 * ------------------------------------------------------------------------------------------ */

static void
conn_start(void *owner, struct kvn_connsrv_conn *base)
{
	struct conn *c = (struct conn *)base;
	c->srv = owner;
	c->fd = base->fd;
	struct ucred cred;
	socklen_t clen = sizeof(cred);
	if (getsockopt(c->fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0)
		c->peer_pid = cred.pid;
}

static void
conn_end(void *owner, struct kvn_connsrv_conn *base)
{
	struct kvn_server *srv = owner;
	struct conn *c = (struct conn *)base;
	kvn_clientsrv_conn_end(srv->clients, c->client);
	c->client = NULL;
}

static int
conn_serve(void *owner, struct kvn_connsrv_conn *base)
{
	(void)owner;
	return serve_one((struct conn *)base);
}

static void
conn_idle(void *owner, struct kvn_connsrv_conn *base)
{
	struct kvn_server *srv = owner;
	kvn_debug(COMP, "client pid %d idle for %d ms: closing its connection",
		  ((struct conn *)base)->peer_pid, srv->cs.o.io_timeout_ms);
}

static void
conn_refuse(void *owner, int fd, int status, const char *why)
{
	struct kvn_server *srv = owner;
	struct conn tmp = {.srv = srv, .fd = fd};
	kvn_warn(COMP, "refusing a client on %s: %s", srv->path, why);
	reply_err(&tmp, status, "%s", why);
}

/* Idle connections are closed after the I/O timeout; a request already on the wire when the
 * daemon stops is still served: it was sent before the daemon stopped accepting. */
static const struct kvn_connsrv_ops conn_ops = {
    .conn_size = sizeof(struct conn),
    .conn_start = conn_start,
    .serve_one = conn_serve,
    .conn_end = conn_end,
    .refuse = conn_refuse,
    .idle = conn_idle,
};

int
kvn_server_run(struct kvn_server *srv)
{
	kvn_connsrv_accept_loop(&srv->cs);
	/* Stop accepting at once: new clients get a refused connect, not a hang. The socket
	 * file stays until destroy so that a restarting daemon still sees who owned it. */
	shutdown(srv->lfd, SHUT_RDWR);
	kvn_connsrv_drain(&srv->cs);
	return 0;
}
