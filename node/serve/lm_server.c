/* lm server: LMCache's cache-server protocol (docs/architecture.md §10), both generations (the
 * first request of a connection tells which), over TCP, a thread per connection up to a cap, values
 * kept in the engine as LMCache's 28-byte remote header + payload. A malformed request gets a 400
 * reply and its connection is closed; a PUT that is refused is read to its end first and gets no
 * reply. Idle clients, requests that never complete and oversized PUTs are bounded by config keys;
 * the protocol has no way to say why, so each is logged (rate-limited) and counted. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/fdio.h"
#include "core/clock.h"
#include "node/serve/connsrv.h"
#include "node/serve/ctlproto.h"
#include "node/serve/lm_server.h"
#include "connectors/lmproto.h"
#include "core/log.h"
#include "core/netaddr.h"
#include "connectors/remote_value.h"

#define COMP		  "lm-server"
#define DEFAULT_MAX_CONNS 128
#define DEFAULT_IO_MS	  30000
#define DEFAULT_VALUE_MAX (64u << 20) /* max_chunk_size's default */
/* At lm_max_connections a newcomer closes the connection idle the longest if that one has been
 * idle this long: idle connections (of clients gone without a word, say) must not lock live
 * ones out for all of lm_idle_timeout_ms, and one that spoke within the last second is likely
 * in the middle of an exchange. */
#define EVICT_IDLE_MS 1000
#define LOG_EVERY_MS  1000 /* one refusal line a second per kind at most */

struct conn {
	struct kvn_connsrv_conn base; /* first: the skeleton allocates and lists it */
	struct kvn_lm_server *srv;
	int fd;
	char peer[64]; /* "ip:port", for log lines */
	/* enum kvn_lm_gen its first request was in, -1 before: one LMCache process speaks one
	 * generation, and deciding once keeps a later request from being read in the other. */
	int gen;
	/* PUT bytes land here. Kept between requests: a fresh buffer of a chunk's size costs a
	 * page fault per 4 KiB on every PUT, which halves throughput. */
	uint8_t *buf;
	size_t cap;
};

/* Largest receive buffer a connection keeps between PUTs; a bigger value gets its own. */
#define KEEP_BUF_MAX (64u << 20)

struct kvn_lm_server {
	struct kvn_engine *eng;
	char addr[KVN_HOST_MAX + 16];
	int lfd;
	uint64_t value_max;    /* max_chunk_size */
	int request_ms;	       /* lm_request_timeout_ms */
	struct kvn_connsrv cs; /* connections, cap, stop and drain */
	bool cs_ready;
	pthread_t accept_thread;
	bool accept_started;

	_Atomic uint64_t requests, proto_errors, bytes_in, bytes_out, errors;
	_Atomic uint64_t request_timeouts;
	_Atomic uint64_t by_command[KVN_LM_HEALTH]; /* index command - 1 */
	_Atomic uint64_t dropped[KVN_LM_DROP_N];
	_Atomic uint64_t by_gen[2];
	struct kvn_ratelimit rl_refused, rl_idle, rl_evicted, rl_timeout;
	struct kvn_ratelimit rl_drop[KVN_LM_DROP_N]; /* one per reason: none hides another */
};

static const struct kvn_connsrv_ops conn_ops;

/* A refusal the client cannot be told of: one line a second per kind, with the count of those
 * held back since. */
static void note(struct kvn_ratelimit *rl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
note(struct kvn_ratelimit *rl, const char *fmt, ...)
{
	uint64_t missed;
	if (!kvn_ratelimit_ok(rl, LOG_EVERY_MS, &missed))
		return;
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (missed)
		kvn_warn(COMP, "%s (%llu more like it not logged)", line,
			 (unsigned long long)missed);
	else
		kvn_warn(COMP, "%s", line);
}

/* The request on c did not complete within lm_request_timeout_ms: the connection is closed
 * (a 400 would be read as the reply to whatever the client sends next). */
static int
request_timed_out(struct conn *c, const char *what, uint64_t got, uint64_t want)
{
	struct kvn_lm_server *srv = c->srv;
	atomic_fetch_add(&srv->request_timeouts, 1);
	note(&srv->rl_timeout,
	     "client %s on %s: request incomplete after %d ms (lm_request_timeout_ms): %llu of "
	     "%llu bytes of its %s arrived; closing its connection",
	     c->peer, srv->addr, srv->request_ms, (unsigned long long)got,
	     (unsigned long long)want, what);
	return -1;
}

/* ------------------------------------------------------------------------------------------
 * Requests
 * ------------------------------------------------------------------------------------------ */

/* In the client's generation: a v0 client reads 32 bytes, and 4 more would be taken as the
 * start of its next reply. */
static int
send_reply(struct conn *c, int32_t code, int32_t length, const struct kvn_lm_meta *meta)
{
	uint8_t hdr[KVN_LM_REPLY_SIZE];
	enum kvn_lm_gen gen = c->gen == KVN_LM_V0 ? KVN_LM_V0 : KVN_LM_V1;
	kvn_lm_reply_encode_gen(gen, hdr, code, length, meta);
	return kvn_fd_write_full(c->fd, hdr, kvn_lm_reply_size(gen));
}

/* A request that breaks the protocol: the client gets a 400 header (its reader is waiting for
 * one, or will be) and the connection is closed, since its byte stream is out of step. */
static int proto_fail(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int
proto_fail(struct conn *c, const char *fmt, ...)
{
	char what[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	atomic_fetch_add(&c->srv->proto_errors, 1);
	kvn_warn(COMP, "client %s on %s: %s; answering 400 and closing its connection", c->peer,
		 c->srv->addr, what);
	send_reply(c, KVN_LM_FAIL, 0, NULL);
	return -1;
}

const char *
kvn_lm_drop_name(enum kvn_lm_drop why)
{
	static const char *const names[KVN_LM_DROP_N] = {"oversized", "bad_key", "bad_metadata",
							 "no_memory", "not_stored"};
	return why < KVN_LM_DROP_N ? names[why] : "?";
}

/* A PUT that is not stored. The protocol has no reply to PUT: the client sends the payload
 * right after the header whatever the server thinks of it. So the payload (len bytes still to
 * come) is read and dropped in full — a close with bytes unread resets the connection under the
 * client's send — and the reason logged and counted. Then, with close_after, the connection is
 * closed without a word (a 400 would be read as the answer to the client's next request);
 * otherwise the stream is in step and the connection goes on. */
static int drop_put(struct conn *c, enum kvn_lm_drop why, const char *key, uint64_t len,
		    uint64_t deadline, bool close_after, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

static int
drop_put(struct conn *c, enum kvn_lm_drop why, const char *key, uint64_t len, uint64_t deadline,
	 bool close_after, const char *fmt, ...)
{
	struct kvn_lm_server *srv = c->srv;
	atomic_fetch_add(&srv->dropped[why], 1);
	if (close_after)
		atomic_fetch_add(&srv->proto_errors, 1);
	else if (why != KVN_LM_DROP_OVERSIZED)
		atomic_fetch_add(&srv->errors, 1);
	char reason[384];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(reason, sizeof(reason), fmt, ap);
	va_end(ap);
	note(&srv->rl_drop[why], "client %s on %s: PUT %s not stored: %s%s%s", c->peer, srv->addr,
	     key, reason, len ? "; its payload read and dropped" : "",
	     close_after ? ", then its connection closed" : "");
	if (!len)
		return close_after ? -1 : 0;
	uint64_t got = 0;
	int rc = kvn_fd_discard_by(c->fd, len, deadline, &got);
	if (rc == -ETIMEDOUT)
		return request_timed_out(c, "PUT payload (being dropped)", got, len);
	return rc || close_after ? -1 : 0;
}

static int
do_put(struct conn *c, const struct kvn_key *key, const struct kvn_lm_req *req, uint64_t deadline)
{
	size_t len = (size_t)req->length;
	struct kvn_remote_meta meta = {
	    .length = req->length, .fmt = req->meta.fmt, .dtype = req->meta.dtype};
	memcpy(meta.shape, req->meta.shape, sizeof(meta.shape));
	uint8_t hdr[KVN_REMOTE_META_LEN];
	kvn_remote_meta_encode(&meta, hdr);
	/* Checked before any payload is read: a value GET could never describe is refused
	 * rather than stored. LMCache's server fails on the same (MemoryFormat(fmt),
	 * INT_TO_DTYPE[dtype] in ClientMetaMessage.deserialize) and closes the connection. */
	if (kvn_remote_meta_decode(hdr, sizeof(hdr), &meta) < 0)
		return drop_put(
		    c, KVN_LM_DROP_BAD_METADATA, key->str, len, deadline, true,
		    "metadata out of range (fmt %d, dtype %d, shape %d,%d,%d,%d: a "
		    "MemoryFormat or dtype this kvnode does not know, or a negative size)",
		    meta.fmt, meta.dtype, meta.shape[0], meta.shape[1], meta.shape[2],
		    meta.shape[3]);
	/* One buffer for header + payload: the engine stores exactly what LMCache's redis layout
	 * would hold, and malloc only reserves address space for bytes not yet received. */
	size_t need = KVN_REMOTE_META_LEN + len;
	if (need > c->cap) {
		free(c->buf);
		c->cap = 0;
		c->buf = malloc(need);
		if (!c->buf)
			return drop_put(c, KVN_LM_DROP_NO_MEMORY, key->str, len, deadline, false,
					"no memory for a %zu-byte value (lower max_chunk_size, or "
					"give the node more memory)",
					len);
		c->cap = need;
	}
	uint8_t *val = c->buf;
	size_t got;
	memcpy(val, hdr, sizeof(hdr));
	int rc = kvn_fd_read_by(c->fd, val + KVN_REMOTE_META_LEN, len, deadline, &got);
	if (rc == -ETIMEDOUT)
		return request_timed_out(c, "PUT payload", got, len);
	if (rc)
		return proto_fail(c, "truncated PUT value for key %s (%zu of %zu bytes: %s)",
				  key->str, got, len, kvn_strerror(rc));
	atomic_fetch_add(&c->srv->bytes_in, len);
	rc = kvn_engine_put(c->srv->eng, key, val, need);
	if (c->cap > KEEP_BUF_MAX) {
		free(c->buf);
		c->buf = NULL;
		c->cap = 0;
	}
	if (rc < 0)
		return drop_put(c, KVN_LM_DROP_NOT_STORED, key->str, 0, deadline, false,
				"the engine refused its %zu bytes: %s", len, kvn_strerror(rc));
	return 0;
}

/* A key for a log line: bytes outside printable ASCII as '?'. */
static void
printable_key(const struct kvn_lm_req *req, char *out, size_t outlen)
{
	size_t n = req->key_len < outlen - 1 ? req->key_len : outlen - 1;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)req->key[i];
		out[i] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
	}
	out[n] = '\0';
}

static int
do_get(struct conn *c, const struct kvn_key *key)
{
	struct kvn_buf *buf;
	int rc = kvn_engine_get(c->srv->eng, key, &buf);
	if (rc < 0) {
		if (rc != -ENOENT) {
			atomic_fetch_add(&c->srv->errors, 1);
			kvn_warn(COMP, "client %s: GET %s: %s; answering a miss", c->peer, key->str,
				 kvn_strerror(rc));
		}
		return send_reply(c, KVN_LM_FAIL, 0, NULL) ? -1 : 0;
	}
	struct kvn_remote_meta meta;
	const char *why = NULL;
	if (buf->len < KVN_REMOTE_META_LEN)
		why = "shorter than the 28-byte header";
	else if (kvn_remote_meta_decode(buf->data, KVN_REMOTE_META_LEN, &meta) < 0)
		why = "header fields out of range";
	else if ((size_t)meta.length != buf->len - KVN_REMOTE_META_LEN)
		why = "header length is not the payload's";
	if (why) {
		/* Put by another client (the CLI) without LMCache's header: not a value this
		 * protocol can describe, so a miss rather than bytes with made-up metadata. */
		kvn_warn(COMP,
			 "client %s: GET %s: stored value is not in LMCache's layout (%s); "
			 "answering a miss",
			 c->peer, key->str, why);
		kvn_buf_unref(buf);
		return send_reply(c, KVN_LM_FAIL, 0, NULL) ? -1 : 0;
	}
	struct kvn_lm_meta lm = {.fmt = meta.fmt, .dtype = meta.dtype};
	memcpy(lm.shape, meta.shape, sizeof(lm.shape));
	/* The view pins the chunk while it streams out; SO_SNDTIMEO bounds a reader that stops. */
	rc = send_reply(c, KVN_LM_OK, meta.length, &lm);
	if (!rc)
		rc = kvn_fd_write_full(c->fd, (const uint8_t *)buf->data + KVN_REMOTE_META_LEN,
					(size_t)meta.length);
	if (!rc)
		atomic_fetch_add(&c->srv->bytes_out, (uint64_t)meta.length);
	kvn_buf_unref(buf);
	if (rc)
		kvn_debug(COMP, "client %s: GET %s not delivered: %s", c->peer, key->str,
			  kvn_strerror(rc));
	return rc ? -1 : 0;
}

struct list_text {
	char *p;
	size_t len, cap;
	int err;
};

static int
list_add(void *ctx, const struct kvn_key *key, size_t len)
{
	struct list_text *t = ctx;
	(void)len;
	size_t need = t->len + (t->len ? 1 : 0) + key->len;
	if (need > INT32_MAX) {
		t->err = -EOVERFLOW;
		return 1;
	}
	if (need > t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 4096;
		while (cap < need)
			cap *= 2;
		char *p = realloc(t->p, cap);
		if (!p) {
			t->err = -ENOMEM;
			return 1;
		}
		t->p = p;
		t->cap = cap;
	}
	/* "\n".join(keys): a separator between keys, none after the last. */
	if (t->len)
		t->p[t->len++] = '\n';
	memcpy(t->p + t->len, key->str, key->len);
	t->len += key->len;
	return 0;
}

static int
do_list(struct conn *c)
{
	struct list_text t = {0};
	int rc = kvn_engine_list(c->srv->eng, list_add, &t);
	if (t.err)
		rc = t.err;
	if (rc < 0) {
		free(t.p);
		atomic_fetch_add(&c->srv->errors, 1);
		kvn_warn(COMP, "client %s: LIST failed: %s", c->peer, kvn_strerror(rc));
		return send_reply(c, KVN_LM_FAIL, 0, NULL) ? -1 : 0;
	}
	rc = send_reply(c, KVN_LM_OK, (int32_t)t.len, NULL);
	if (!rc)
		rc = kvn_fd_write_full(c->fd, t.p, t.len);
	if (!rc)
		atomic_fetch_add(&c->srv->bytes_out, t.len);
	free(t.p);
	return rc ? -1 : 0;
}

/* Reads a request header into hdr by deadline. The first request: the 182 bytes both
 * generations have, then the generation they show (kvn_lm_gen_detect), then v1's last 4
 * bytes. Waiting for 186 would hang a v0 client, whose 182-byte request expects an answer.
 * 0, or -1: the connection is to be closed (why is logged and counted). */
static int
read_header(struct conn *c, uint8_t hdr[KVN_LM_REQ_SIZE], uint64_t deadline)
{
	struct kvn_lm_server *srv = c->srv;
	size_t got, more = 0;
	bool first = c->gen < 0;
	size_t want = first ? KVN_LM_V0_REQ_SIZE : kvn_lm_req_size((enum kvn_lm_gen)c->gen);
	int rc = kvn_fd_read_by(c->fd, hdr, want, deadline, &got);
	if (first && got >= KVN_LM_GEN_PROBE_LEN) {
		c->gen = (int)kvn_lm_gen_detect(hdr);
		want = kvn_lm_req_size((enum kvn_lm_gen)c->gen);
	}
	if (!rc && first) {
		if (want > got)
			rc = kvn_fd_read_by(c->fd, hdr + got, want - got, deadline, &more);
		got += more;
		if (!rc) {
			atomic_fetch_add(&srv->by_gen[c->gen], 1);
			kvn_debug(COMP,
				  "client %s speaks LMCache's %s protocol (%zu-byte requests)",
				  c->peer, kvn_lm_gen_name((enum kvn_lm_gen)c->gen), want);
		}
	}
	if (rc == -ETIMEDOUT)
		return request_timed_out(c,
					 c->gen < 0 ? "request header (182 bytes in v0, 186 in v1)"
						    : "request header",
					 got, want);
	if (rc) {
		if (got == 0 && rc == -ECONNRESET)
			return -1; /* closed between requests: the normal end */
		return proto_fail(c, "truncated request header (%zu of %zu bytes: %s)", got, want,
				  kvn_strerror(rc));
	}
	return 0;
}

/* The key of a PUT, GET or EXIST into key. 0, or what serve_one returns: an invalid key
 * breaks the protocol (a PUT's payload is read and dropped first). */
static int
request_key(struct conn *c, const struct kvn_lm_req *req, struct kvn_key *key, uint64_t deadline)
{
	char why[256];
	if (kvn_key_parse(key, req->key, req->key_len, why, sizeof(why)) < 0) {
		if (req->command == KVN_LM_PUT) {
			char shown[KVN_LM_KEY_MAX + 1];
			printable_key(req, shown, sizeof(shown));
			return drop_put(c, KVN_LM_DROP_BAD_KEY, shown, (uint64_t)req->length,
					deadline, true,
					"invalid key (%s; LMCache's own server closes the "
					"connection on a key it cannot parse)",
					why);
		}
		return proto_fail(c, "%s with an invalid key: %s", kvn_lm_cmd_name(req->command),
				  why);
	}
	kvn_debug(COMP, "client %s: %s %s %d bytes", c->peer, kvn_lm_cmd_name(req->command),
		  key->str, req->length);
	return 0;
}

static int
do_exist(struct conn *c, const struct kvn_key *key)
{
	int rc = kvn_engine_contains(c->srv->eng, key);
	if (rc < 0) {
		atomic_fetch_add(&c->srv->errors, 1);
		kvn_warn(COMP, "client %s: EXIST %s: %s; answering absent", c->peer, key->str,
			 kvn_strerror(rc));
	}
	return send_reply(c, rc > 0 ? KVN_LM_OK : KVN_LM_FAIL, 0, NULL) ? -1 : 0;
}

/* Serves one request. Returns 0 to keep the connection, -1 to close it. */
static int
serve_one(struct conn *c)
{
	struct kvn_lm_server *srv = c->srv;
	uint8_t hdr[KVN_LM_REQ_SIZE];
	/* Its first byte is here (the socket polled readable): from now on the whole request
	 * has lm_request_timeout_ms, however slowly it trickles in. */
	uint64_t deadline = kvn_now_ms() + (uint64_t)srv->request_ms;
	int rc = read_header(c, hdr, deadline);
	if (rc)
		return rc;
	struct kvn_lm_req req;
	kvn_lm_req_decode_gen((enum kvn_lm_gen)c->gen, hdr, &req);
	if (req.command < KVN_LM_PUT || req.command > KVN_LM_HEALTH)
		return proto_fail(c, "unknown command %d (PUT=1 GET=2 EXIST=3 LIST=4 HEALTH=5)",
				  req.command);
	if (req.command == KVN_LM_PUT && req.length < 0)
		return proto_fail(c, "PUT length %d is negative", req.length);
	atomic_fetch_add(&srv->requests, 1);
	atomic_fetch_add(&srv->by_command[req.command - 1], 1);

	struct kvn_key key;
	if ((req.command == KVN_LM_PUT || req.command == KVN_LM_GET ||
	     req.command == KVN_LM_EXIST) &&
	    (rc = request_key(c, &req, &key, deadline)))
		return rc;

	switch (req.command) {
	case KVN_LM_PUT:
		if ((uint64_t)req.length > srv->value_max)
			return drop_put(c, KVN_LM_DROP_OVERSIZED, key.str, (uint64_t)req.length,
					deadline, false,
					"%d bytes is over max_chunk_size (%llu bytes): raise "
					"max_chunk_size, or use a smaller LMCache chunk_size",
					req.length, (unsigned long long)srv->value_max);
		return do_put(c, &key, &req, deadline);
	case KVN_LM_GET:
		return do_get(c, &key);
	case KVN_LM_EXIST:
		return do_exist(c, &key);
	case KVN_LM_LIST:
		return do_list(c);
	case KVN_LM_HEALTH:
		return send_reply(c, KVN_LM_OK, 0, NULL) ? -1 : 0;
	}
	return -1; /* not reached: the command was checked above */
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
	c->gen = -1;
	kvn_peer_format(c->fd, c->peer, sizeof(c->peer));
}

static int
conn_serve(void *owner, struct kvn_connsrv_conn *base)
{
	(void)owner;
	return serve_one((struct conn *)base);
}

static void
conn_end(void *owner, struct kvn_connsrv_conn *base)
{
	(void)owner;
	free(((struct conn *)base)->buf);
}

static void
conn_refuse(void *owner, int fd, int status, const char *why)
{
	/* The protocol has no unsolicited message: closing is the only answer a client can see
	 * (its next read ends). */
	struct kvn_lm_server *srv = owner;
	char peer[64];
	(void)status;
	kvn_peer_format(fd, peer, sizeof(peer));
	note(&srv->rl_refused, "refusing client %s on %s: %s; closing its connection", peer,
	     srv->addr, why);
}

static void
conn_idle(void *owner, struct kvn_connsrv_conn *base)
{
	struct kvn_lm_server *srv = owner;
	note(&srv->rl_idle,
	     "client %s on %s: idle for %d ms (lm_idle_timeout_ms): closing its "
	     "connection",
	     ((struct conn *)base)->peer, srv->addr, srv->cs.o.idle_timeout_ms);
}

static void
conn_evicted(void *owner, struct kvn_connsrv_conn *base, int newcomer_fd)
{
	struct kvn_lm_server *srv = owner;
	struct conn *c = (struct conn *)base;
	char peer[64];
	kvn_peer_format(newcomer_fd, peer, sizeof(peer));
	uint64_t since = atomic_load(&base->idle_since_ms), now = kvn_now_ms();
	note(&srv->rl_evicted,
	     "client %s on %s: idle for %llu ms with lm_max_connections=%u open: closing its "
	     "connection to serve new client %s",
	     c->peer, srv->addr, (unsigned long long)(since && now > since ? now - since : 0),
	     srv->cs.o.max_conns, peer);
}

/* LMCache keeps one connection open for the life of the engine and may stay silent for long:
 * the idle limit (lm_idle_timeout_ms) is long, and at the cap only a connection idle a second
 * makes room. A request started is bounded by lm_request_timeout_ms. Stopping ends a
 * connection between requests even when more are queued: a client that never pauses (PUTs
 * have no replies to wait for) must not hold the node up, and to it this is the same as a
 * server that went away. */
static const struct kvn_connsrv_ops conn_ops = {
    .conn_size = sizeof(struct conn),
    .conn_start = conn_start,
    .serve_one = conn_serve,
    .conn_end = conn_end,
    .refuse = conn_refuse,
    .idle = conn_idle,
    .evicted = conn_evicted,
};

static void *
accept_main(void *arg)
{
	struct kvn_lm_server *srv = arg;
	kvn_connsrv_accept_loop(&srv->cs);
	return NULL;
}

/* ------------------------------------------------------------------------------------------
 * Lifetime
 * ------------------------------------------------------------------------------------------ */

static void
server_free(struct kvn_lm_server *srv)
{
	if (srv->lfd >= 0)
		close(srv->lfd);
	if (srv->cs_ready)
		kvn_connsrv_destroy(&srv->cs);
	free(srv);
}

int
kvn_lm_server_start(struct kvn_engine *eng, const struct kvn_lm_server_opts *opts,
		    struct kvn_lm_server **out, char *err, size_t errlen)
{
	char host[KVN_HOST_MAX], why[512];
	uint16_t port, bound = 0;
	int rc = kvn_hostport_parse(opts->listen, host, &port, why, sizeof(why));
	if (rc)
		return kvn_seterr(rc, err, errlen, "lm_listen: %s", why);
	struct kvn_lm_server *srv = calloc(1, sizeof(*srv));
	if (!srv)
		return -ENOMEM;
	srv->eng = eng;
	srv->lfd = -1;
	srv->value_max = opts->value_max ? opts->value_max : DEFAULT_VALUE_MAX;
	if (srv->value_max > INT32_MAX)
		srv->value_max = INT32_MAX;
	srv->request_ms = opts->io_timeout_ms > 0 ? opts->io_timeout_ms : DEFAULT_IO_MS;
	struct kvn_connsrv_opts co = {
	    .comp = COMP,
	    .addr = srv->addr,
	    .max_conns = opts->max_conns ? opts->max_conns : DEFAULT_MAX_CONNS,
	    .max_conns_key = "lm_max_connections",
	    .io_timeout_ms = srv->request_ms,
	    .idle_timeout_ms = opts->idle_timeout_ms > 0 ? opts->idle_timeout_ms : 0,
	    .evict_idle_ms = EVICT_IDLE_MS,
	    .nodelay = true,
	    .stop_drops_queued = true,
	};
	if ((rc = kvn_connsrv_init(&srv->cs, &co, &conn_ops, srv, err, errlen)) < 0)
		goto fail;
	srv->cs_ready = true;
	srv->lfd = kvn_tcp_listen(host, port, 128, &bound, why, sizeof(why));
	if (srv->lfd < 0) {
		rc = srv->lfd;
		kvn_seterr(rc, err, errlen, "lm_listen %s: %s", opts->listen, why);
		goto fail;
	}
	snprintf(srv->addr, sizeof(srv->addr), strchr(host, ':') ? "[%s]:%u" : "%s:%u", host,
		 bound);
	srv->cs.lfd = srv->lfd;
	rc = pthread_create(&srv->accept_thread, NULL, accept_main, srv);
	if (rc) {
		rc = -rc;
		kvn_seterr(rc, err, errlen, "lm server on %s: cannot start its thread: %s",
			   srv->addr, strerror(-rc));
		goto fail;
	}
	srv->accept_started = true;
	kvn_info(COMP, "serving LMCache's lm:// protocol on %s", srv->addr);
	*out = srv;
	return 0;
fail:
	server_free(srv);
	return rc;
}

const char *
kvn_lm_server_address(const struct kvn_lm_server *srv)
{
	return srv->addr;
}

void
kvn_lm_server_stats(struct kvn_lm_server *srv, struct kvn_lm_server_stats *out)
{
	out->connections = kvn_connsrv_conns(&srv->cs);
	out->accepted = atomic_load(&srv->cs.accepted);
	out->refused = atomic_load(&srv->cs.refused);
	out->requests = atomic_load(&srv->requests);
	out->proto_errors = atomic_load(&srv->proto_errors);
	for (int i = 0; i < KVN_LM_HEALTH; i++)
		out->by_command[i] = atomic_load(&srv->by_command[i]);
	out->bytes_in = atomic_load(&srv->bytes_in);
	out->bytes_out = atomic_load(&srv->bytes_out);
	out->errors = atomic_load(&srv->errors);
	out->idle_closed = atomic_load(&srv->cs.idle_closed);
	out->evicted = atomic_load(&srv->cs.evicted);
	out->request_timeouts = atomic_load(&srv->request_timeouts);
	for (int i = 0; i < KVN_LM_DROP_N; i++)
		out->dropped_puts[i] = atomic_load(&srv->dropped[i]);
	out->oversized = out->dropped_puts[KVN_LM_DROP_OVERSIZED];
	for (int i = 0; i < 2; i++)
		out->by_protocol[i] = atomic_load(&srv->by_gen[i]);
}

cJSON *
kvn_lm_server_stats_json(struct kvn_lm_server *srv)
{
	struct kvn_lm_server_stats st;
	kvn_lm_server_stats(srv, &st);
	cJSON *o = cJSON_CreateObject();
	cJSON *cmd = cJSON_AddObjectToObject(o, "requests_by_command");
	for (int i = 0; i < KVN_LM_HEALTH; i++)
		cJSON_AddNumberToObject(cmd, kvn_lm_cmd_name(i + 1), (double)st.by_command[i]);
	cJSON *gen = cJSON_AddObjectToObject(o, "connections_by_protocol");
	for (int i = 0; i < 2; i++)
		cJSON_AddNumberToObject(gen, kvn_lm_gen_name((enum kvn_lm_gen)i),
					(double)st.by_protocol[i]);
	cJSON *drop = cJSON_AddObjectToObject(o, "dropped_puts");
	for (int i = 0; i < KVN_LM_DROP_N; i++)
		cJSON_AddNumberToObject(drop, kvn_lm_drop_name((enum kvn_lm_drop)i),
					(double)st.dropped_puts[i]);
	cJSON_AddStringToObject(o, "address", srv->addr);
	cJSON_AddNumberToObject(o, "connections", (double)st.connections);
	cJSON_AddNumberToObject(o, "max_connections", srv->cs.o.max_conns);
	cJSON_AddNumberToObject(o, "idle_timeout_ms", srv->cs.o.idle_timeout_ms);
	cJSON_AddNumberToObject(o, "request_timeout_ms", srv->request_ms);
	cJSON_AddNumberToObject(o, "max_chunk_size", (double)srv->value_max);
	cJSON_AddNumberToObject(o, "accepted", (double)st.accepted);
	cJSON_AddNumberToObject(o, "refused", (double)st.refused);
	cJSON_AddNumberToObject(o, "requests", (double)st.requests);
	cJSON_AddNumberToObject(o, "bytes_in", (double)st.bytes_in);
	cJSON_AddNumberToObject(o, "bytes_out", (double)st.bytes_out);
	cJSON_AddNumberToObject(o, "errors", (double)st.errors);
	cJSON_AddNumberToObject(o, "idle_closed", (double)st.idle_closed);
	cJSON_AddNumberToObject(o, "evicted", (double)st.evicted);
	cJSON_AddNumberToObject(o, "request_timeouts", (double)st.request_timeouts);
	cJSON_AddNumberToObject(o, "oversized_puts", (double)st.oversized);
	cJSON_AddNumberToObject(o, "protocol_errors", (double)st.proto_errors);
	/* cJSON reports out of memory by leaving items out: an incomplete object is dropped. */
	if (!cJSON_GetObjectItemCaseSensitive(o, "protocol_errors")) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

void
kvn_lm_server_stop(struct kvn_lm_server *srv)
{
	if (!srv)
		return;
	kvn_connsrv_stop(&srv->cs);
	if (srv->accept_started)
		pthread_join(srv->accept_thread, NULL);
	/* Idle connections saw the wake and are leaving; one busy past the I/O timeout has its
	 * socket shut down so that a trickling client cannot hold the node up. */
	kvn_connsrv_drain(&srv->cs);
	server_free(srv);
}
