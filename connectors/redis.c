/* redis://[[user]:password@]host[:port][/db] — LMCache's Redis layout through hiredis: the
 * payload under "<key>kv_bytes" (never written after its header), the 28-byte header under
 * "<key>metadata" (its presence is what exists means), and kvnode's integrity tag under
 * "<key>kvnode_tag". Payload bytes go between the socket and the caller's buffer directly. */
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <time.h>

#include <hiredis/hiredis.h>

#include "connectors/registry.h"
#include "connectors/remote_value.h"

#define SUFFIX_DATA "kv_bytes"
#define SUFFIX_META "metadata"
#define SUFFIX_TAG  "kvnode_tag"
#define HOST_MAX    256
#define CRED_MAX    256

struct kvn_connector {
	const struct kvn_connector_env *env;
	redisContext *ctx;
	uint64_t value_max; /* max_chunk_size: longer values are refused unread */
	struct kvn_remote_tagger *tagger; /* tags computed while sending (F_TAG_ON_SEND) */
};

struct redis_url {
	char host[HOST_MAX];
	int port;
	int db;
	char user[CRED_MAX];
	char pass[CRED_MAX];
};

/* --------------------------------------------------------------------------------------------
 * URL
 * -------------------------------------------------------------------------------------------- */

static int
url_fail(const struct kvn_connector_env *env, const char *what)
{
	env->log(env, KVN_LOG_ERROR, "remote_url %s: %s; write redis://[:password@]host:port[/db]",
		 env->url_redacted, what);
	return -EINVAL;
}

static int
copy_part(char *dst, size_t cap, const char *s, size_t n)
{
	if (n >= cap)
		return -1;
	memcpy(dst, s, n);
	dst[n] = '\0';
	return 0;
}

static int
parse_url(const struct kvn_connector_env *env, struct redis_url *u)
{
	memset(u, 0, sizeof(*u));
	u->port = 6379;
	const char *p = strstr(env->url, "://");
	if (!p)
		return url_fail(env, "no scheme");
	p += 3;
	size_t end = strcspn(p, "?#");
	const char *stop = p + end;

	const char *at = memchr(p, '@', end);
	if (at) {
		const char *colon = memchr(p, ':', (size_t)(at - p));
		if (colon) {
			if (copy_part(u->user, sizeof(u->user), p, (size_t)(colon - p)) ||
			    copy_part(u->pass, sizeof(u->pass), colon + 1,
				      (size_t)(at - colon - 1)))
				return url_fail(env, "user name or password too long");
		} else if (copy_part(u->pass, sizeof(u->pass), p, (size_t)(at - p))) {
			return url_fail(env, "password too long");
		}
		p = at + 1;
	}
	const char *slash = memchr(p, '/', (size_t)(stop - p));
	const char *hp_end = slash ? slash : stop;
	const char *port = NULL;
	if (*p == '[') { /* [v6]:port */
		const char *rb = memchr(p, ']', (size_t)(hp_end - p));
		if (!rb)
			return url_fail(env, "unterminated [IPv6] host");
		if (copy_part(u->host, sizeof(u->host), p + 1, (size_t)(rb - p - 1)))
			return url_fail(env, "host too long");
		if (rb + 1 < hp_end && rb[1] == ':')
			port = rb + 2;
	} else {
		const char *colon = memchr(p, ':', (size_t)(hp_end - p));
		if (copy_part(u->host, sizeof(u->host), p, (size_t)((colon ? colon : hp_end) - p)))
			return url_fail(env, "host too long");
		if (colon)
			port = colon + 1;
	}
	if (!u->host[0])
		return url_fail(env, "no host");
	if (port) {
		char *e;
		long v = strtol(port, &e, 10);
		if (e == port || e != hp_end || v < 1 || v > 65535)
			return url_fail(env, "port must be a number from 1 to 65535");
		u->port = (int)v;
	}
	if (slash && slash + 1 < stop) {
		char *e;
		long v = strtol(slash + 1, &e, 10);
		if (e != stop || v < 0 || v > 1000000)
			return url_fail(env, "database must be a number (redis://host:port/0)");
		u->db = (int)v;
	}
	return 0;
}

/* --------------------------------------------------------------------------------------------
 * Replies and errors
 * -------------------------------------------------------------------------------------------- */

/* The context is broken (I/O error, EOF, timeout): say why once; the node reconnects. */
static int
ctx_error(struct kvn_connector *c, const char *op)
{
	redisContext *x = c->ctx;
	int rc = -ECONNRESET;
	if (x->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK))
		rc = -ETIMEDOUT;
	else if (x->err == REDIS_ERR_IO && errno == ECONNREFUSED)
		rc = -ECONNREFUSED;
	else if (x->err == REDIS_ERR_PROTOCOL)
		rc = -EPROTO;
	c->env->log(c->env, KVN_LOG_WARN, "%s on %s failed: %s", op, c->env->url_redacted,
		    x->errstr[0] ? x->errstr : "connection lost");
	return rc;
}

static int
reply_error(struct kvn_connector *c, const char *op, const redisReply *r)
{
	c->env->log(c->env, KVN_LOG_WARN, "%s on %s: server says: %.*s", op, c->env->url_redacted,
		    (int)r->len, r->str);
	return -EREMOTEIO;
}

/* Keys are built in a stack buffer: key text plus the longest suffix. */
#define RKEY_MAX (KVN_KEY_MAX + sizeof(SUFFIX_TAG))

static size_t
rkey(char *out, const struct kvn_key *key, const char *suffix)
{
	size_t n = strlen(suffix);
	memcpy(out, key->str, key->len);
	memcpy(out + key->len, suffix, n);
	return key->len + n;
}

/* --------------------------------------------------------------------------------------------
 * Connect
 * -------------------------------------------------------------------------------------------- */

static int
simple(struct kvn_connector *c, const char *op, redisReply *r)
{
	if (!r)
		return ctx_error(c, op);
	int rc = r->type == REDIS_REPLY_ERROR ? reply_error(c, op, r) : 0;
	freeReplyObject(r);
	return rc;
}

static void
redis_close(struct kvn_connector *c)
{
	redisFree(c->ctx);
	kvn_remote_tagger_free(c->tagger);
	free(c);
}

static int
do_connect(const struct kvn_connector_env *env, struct kvn_connector **out)
{
	struct redis_url u;
	int rc = parse_url(env, &u);
	if (rc < 0)
		return rc;
	struct kvn_connector *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->env = env;
	c->value_max = kvn_remote_value_max(env);
	if (!(c->tagger = kvn_remote_tagger_new())) {
		free(c);
		return -ENOMEM;
	}
	struct timeval tv = {.tv_sec = env->timeout_ms / 1000,
			     .tv_usec = (env->timeout_ms % 1000) * 1000};
	c->ctx = redisConnectWithTimeout(u.host, u.port, tv);
	if (!c->ctx) {
		kvn_remote_tagger_free(c->tagger);
		free(c);
		return -ENOMEM;
	}
	if (c->ctx->err) {
		rc = c->ctx->err == REDIS_ERR_IO && errno ? -errno : -ECONNREFUSED;
		if (rc == -EINPROGRESS || rc == -EAGAIN)
			rc = -ETIMEDOUT;
		env->log(env, KVN_LOG_WARN,
			 "cannot connect to %s (%s:%d): %s; is redis-server "
			 "running there?",
			 env->url_redacted, u.host, u.port, c->ctx->errstr);
		goto fail;
	}
	redisSetTimeout(c->ctx, tv);
	redisEnableKeepAlive(c->ctx);
	if (u.pass[0]) {
		redisReply *r = u.user[0] ? redisCommand(c->ctx, "AUTH %s %s", u.user, u.pass)
					  : redisCommand(c->ctx, "AUTH %s", u.pass);
		if (r && r->type == REDIS_REPLY_ERROR) {
			env->log(env, KVN_LOG_ERROR,
				 "%s refused the password: %.*s; check the "
				 "password in remote_url",
				 env->url_redacted, (int)r->len, r->str);
			freeReplyObject(r);
			rc = -EACCES;
			goto fail;
		}
		if ((rc = simple(c, "AUTH", r)) < 0)
			goto fail;
	}
	if (u.db && (rc = simple(c, "SELECT", redisCommand(c->ctx, "SELECT %d", u.db))) < 0) {
		env->log(env, KVN_LOG_ERROR, "%s: cannot select database %d", env->url_redacted,
			 u.db);
		rc = rc == -EREMOTEIO ? -EINVAL : rc;
		goto fail;
	}
	*out = c;
	return 0;
fail:
	redis_close(c);
	return rc;
}

/* --------------------------------------------------------------------------------------------
 * Pipelined requests: append, then read the replies in order
 * -------------------------------------------------------------------------------------------- */

_Atomic int kvn_redis_fail_append_in;

/* A command could not be appended after others of the same request were: those sit in
 * hiredis's output buffer and their replies would be read as the next request's. The context
 * is marked broken, so this instance answers every later call with a connection error and
 * the node closes it (rc is what the caller returns now). */
static int
poison(struct kvn_connector *c, const char *op, int rc)
{
	c->ctx->err = REDIS_ERR_OTHER;
	snprintf(c->ctx->errstr, sizeof(c->ctx->errstr),
		 "%s failed part-way (%s): the connection is out of step and is not used again",
		 op, strerror(-rc));
	c->env->log(c->env, KVN_LOG_WARN, "%s on %s: %s", op, c->env->url_redacted,
		    c->ctx->errstr);
	return rc;
}

/* 0 when the connection can take a request; else the connection error to return. */
static int
usable(struct kvn_connector *c, const char *op)
{
	return c->ctx->err ? ctx_error(c, op) : 0;
}

/* redisAppendCommand, with the tests' fault injection (connectors/registry.h). */
static int
append(struct kvn_connector *c, const char *fmt, ...)
{
	int n = atomic_load(&kvn_redis_fail_append_in);
	while (n > 0 && !atomic_compare_exchange_weak(&kvn_redis_fail_append_in, &n, n - 1))
		;
	if (n == 1)
		return REDIS_ERR;
	va_list ap;
	va_start(ap, fmt);
	int rc = redisvAppendCommand(c->ctx, fmt, ap);
	va_end(ap);
	return rc;
}

/* A get is two pipelined commands, sent in one write: MGET of the header and the tag (small,
 * read through hiredis), then GET of the payload, whose bulk reply read_payload receives
 * straight into a buffer of its exact size. Redis runs the commands of one client's write
 * back to back, so a concurrent put is not seen between them in practice; if one were, the
 * tag (or, for a value LMCache wrote, the header's length) no longer matches the payload and
 * the node takes it for a corrupt value, a miss — never returns it. */
static int
append_get(struct kvn_connector *c, const struct kvn_key *key)
{
	char m[RKEY_MAX], d[RKEY_MAX], t[RKEY_MAX];
	size_t ml = rkey(m, key, SUFFIX_META), dl = rkey(d, key, SUFFIX_DATA),
	       tl = rkey(t, key, SUFFIX_TAG);
	if (append(c, "MGET %b %b", m, ml, t, tl) != REDIS_OK ||
	    append(c, "GET %b", d, dl) != REDIS_OK)
		return poison(c, "GET", -ENOMEM);
	return 0;
}

/* The stream is no longer in step with the replies (op, "GET" or "SET", failed mid-way): the
 * node reconnects. */
static int
stream_broken(struct kvn_connector *c, const char *op, int rc, const char *why)
{
	c->ctx->err = rc == -EPROTO ? REDIS_ERR_PROTOCOL : REDIS_ERR_IO;
	snprintf(c->ctx->errstr, sizeof(c->ctx->errstr), "%s", why);
	c->env->log(c->env, KVN_LOG_WARN, "%s on %s failed: %s", op, c->env->url_redacted, why);
	return rc;
}

/* Moves past the done bytes of the n-entry iov that a partial sendmsg/recvmsg moved. */
static void
iov_consume(struct iovec **iov, int *n, size_t done)
{
	while (*n > 0 && done >= (*iov)->iov_len) {
		done -= (*iov)->iov_len;
		(*iov)++, (*n)--;
	}
	if (*n > 0) {
		(*iov)->iov_base = (char *)(*iov)->iov_base + done;
		(*iov)->iov_len -= done;
	}
}

/* Receives exactly the bytes iov asks for from the socket, past hiredis's reader. */
static int
recv_all(struct kvn_connector *c, struct iovec *iov, int n)
{
	while (n > 0) {
		struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
		ssize_t got = recvmsg(c->ctx->fd, &m, MSG_WAITALL);
		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			int rc = got == 0 ? -ECONNRESET
				 : errno == EAGAIN || errno == EWOULDBLOCK ? -ETIMEDOUT
									  : -errno;
			return stream_broken(c, "GET", rc,
					     got == 0 ? "server closed the connection mid-value"
						      : strerror(-rc));
		}
		iov_consume(&iov, &n, (size_t)got);
	}
	return 0;
}

#define BULK_LINE_MAX 24 /* "$" + 20 digits + "\r\n" */

/* Reads the reply to GET <key>kv_bytes. A bulk string is taken over from hiredis: its
 * "$<len>\r\n" line is parsed here, the payload bytes hiredis already buffered are copied out
 * of its reader and consumed there, and the rest is received into the value's own buffer —
 * hiredis would read it 16 KiB at a time into a growing buffer and then copy it once more
 * into its reply object. Every other reply (nil, an error) is left to hiredis. *out is the
 * payload, or NULL for nil; 0, -EREMOTEIO (an error reply) or a broken-stream error. */
static int
read_payload(struct kvn_connector *c, struct kvn_buf **out)
{
	redisReader *r = c->ctx->reader;
	const char *line, *nl;
	*out = NULL;
	for (;;) {
		line = r->buf + r->pos;
		nl = memchr(line, '\n', r->len - r->pos);
		if (nl || r->len - r->pos > BULK_LINE_MAX)
			break;
		if (redisBufferRead(c->ctx) != REDIS_OK)
			return ctx_error(c, "GET");
	}
	if (line[0] != '$' || line[1] == '-') {
		redisReply *rep;
		if (redisGetReply(c->ctx, (void **)&rep) != REDIS_OK)
			return ctx_error(c, "GET");
		int rc = rep->type == REDIS_REPLY_NIL	  ? 0
			 : rep->type == REDIS_REPLY_ERROR ? reply_error(c, "GET", rep)
							  : -EPROTO;
		freeReplyObject(rep);
		return rc == -EPROTO
			   ? stream_broken(c, "GET", rc, "GET answered neither a string nor nil")
			   : rc;
	}
	char *end;
	errno = 0;
	unsigned long long len = strtoull(line + 1, &end, 10);
	if (!nl || end == line + 1 || end + 2 != nl + 1 || end[0] != '\r' || errno ||
	    len > INT32_MAX)
		return stream_broken(c, "GET", -EPROTO, "GET answered a malformed bulk length");
	if (len > c->value_max)
		return stream_broken(c, "GET", -EMSGSIZE,
				     "GET answered a value longer than max_chunk_size: refused unread");
	struct kvn_buf *b = kvn_buf_new((size_t)len);
	if (!b) /* the payload is still in the stream: this connection cannot go on */
		return stream_broken(c, "GET", -ENOMEM, "out of memory for the value");
	r->pos += (size_t)(nl + 1 - line);
	size_t have = r->len - r->pos, take = have < len ? have : (size_t)len;
	memcpy(b->data, r->buf + r->pos, take);
	r->pos += take;
	char crlf[2];
	size_t tail = have - take < 2 ? have - take : 2;
	memcpy(crlf, r->buf + r->pos, tail);
	r->pos += tail;
	struct iovec iov[2];
	int n = 0;
	if (take < len)
		iov[n++] = (struct iovec){(char *)b->data + take, (size_t)len - take};
	if (tail < 2)
		iov[n++] = (struct iovec){crlf + tail, 2 - tail};
	int rc = recv_all(c, iov, n);
	if (rc == 0 && memcmp(crlf, "\r\n", 2))
		rc = stream_broken(c, "GET", -EPROTO, "GET's value does not end in CRLF");
	if (rc < 0) {
		kvn_buf_unref(b);
		return rc;
	}
	*out = b;
	return 0;
}

static int
read_get(struct kvn_connector *c, const struct kvn_key *key, struct kvn_remote_value *out)
{
	redisReply *r;
	struct kvn_buf *payload = NULL;
	memset(out, 0, sizeof(*out));
	if (redisGetReply(c->ctx, (void **)&r) != REDIS_OK)
		return ctx_error(c, "MGET");
	/* Both replies are read whatever the first says, to stay in step with the stream. */
	int rc = read_payload(c, &payload);
	if (c->ctx->err)
		goto done;
	if (r->type == REDIS_REPLY_ERROR) {
		rc = reply_error(c, "MGET", r);
		goto done;
	}
	if (rc < 0)
		goto done;
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
		rc = stream_broken(c, "GET", -EPROTO, "MGET answered something but two values");
		goto done;
	}
	redisReply *m = r->element[0], *t = r->element[1];
	if (m->type != REDIS_REPLY_STRING) {
		rc = -ENOENT;
		goto done;
	}
	if (!payload || kvn_remote_meta_decode(m->str, m->len, &out->meta) < 0) {
		c->env->log(c->env, KVN_LOG_WARN, "key %s on %s: %s", key->str,
			    c->env->url_redacted,
			    !payload ? "metadata without kv_bytes"
				     : "metadata is not a 28-byte header");
		rc = -EBADMSG;
		goto done;
	}
	if (t->type == REDIS_REPLY_STRING) {
		/* An over-long tag is kept truncated: its length alone then fails the check. */
		size_t n = t->len < KVN_REMOTE_TAG_MAX ? t->len : KVN_REMOTE_TAG_MAX;
		memcpy(out->tag, t->str, n);
		out->tag_len = t->len > KVN_REMOTE_TAG_MAX ? KVN_REMOTE_TAG_MAX + 1 : (uint32_t)n;
	}
	out->payload = payload;
	payload = NULL;
	rc = 0;
done:
	kvn_buf_unref(payload);
	freeReplyObject(r);
	return rc;
}

/* RESP of one bulk string's length line, "$<n>\r\n". */
static size_t
bulk_len(char *out, size_t n)
{
	return (size_t)sprintf(out, "$%zu\r\n", n);
}

/* "*<argc>\r\n$<len>\r\n<cmd>\r\n$<len>\r\n<key><suffix>\r\n" into out; returns its length. */
static size_t
resp_head(char *out, int argc, const char *cmd, const struct kvn_key *key, const char *suffix)
{
	size_t n = (size_t)sprintf(out, "*%d\r\n", argc);
	n += bulk_len(out + n, strlen(cmd));
	n += (size_t)sprintf(out + n, "%s\r\n", cmd);
	n += bulk_len(out + n, key->len + strlen(suffix));
	n += rkey(out + n, key, suffix);
	memcpy(out + n, "\r\n", 2);
	return n + 2;
}

static size_t
resp_bulk(char *out, const void *data, size_t len)
{
	size_t n = bulk_len(out, len);
	memcpy(out + n, data, len);
	memcpy(out + n + len, "\r\n", 2);
	return n + len + 2;
}

/* A pending tag's hashing, done while the socket takes no more bytes. */
struct idle_hash {
	struct kvn_remote_tagger *tagger;
	const char *p;
	size_t len, done;
};

#define HASH_STEP (128u << 10) /* bytes hashed between two tries to send more */

/* Hashes the next piece; false when everything is hashed. */
static bool
hash_some(struct idle_hash *h)
{
	if (h->done == h->len)
		return false;
	size_t k = h->len - h->done < HASH_STEP ? h->len - h->done : HASH_STEP;
	kvn_remote_tagger_update(h->tagger, h->p + h->done, k);
	h->done += k;
	return true;
}

/* Writes iov to the server. The payload goes straight from the caller's buffer to the socket:
 * hiredis would first copy it into its output buffer and then, writing that in pieces, move
 * the unsent rest down after each one, which costs more than the write itself for large
 * values. With h, the socket is not waited on while hashing is left: the hash runs while the
 * server drains what it has. A failed write leaves the stream in an unknown state, so the
 * context is marked broken and the node reconnects. */
static int
send_all(struct kvn_connector *c, struct iovec *iov, int n, struct idle_hash *h)
{
	while (n > 0) {
		struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
		ssize_t w = sendmsg(c->ctx->fd, &m, MSG_NOSIGNAL | (h ? MSG_DONTWAIT : 0));
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && h && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if (hash_some(h))
				continue;
			struct pollfd pfd = {.fd = c->ctx->fd, .events = POLLOUT};
			int pr = poll(&pfd, 1, (int)c->env->timeout_ms);
			if (pr > 0 || (pr < 0 && errno == EINTR))
				continue;
			errno = pr == 0 ? EAGAIN : errno;
		}
		if (w < 0) {
			int rc = errno == EAGAIN || errno == EWOULDBLOCK ? -ETIMEDOUT : -errno;
			return stream_broken(c, "SET", rc, strerror(-rc));
		}
		iov_consume(&iov, &n, (size_t)w);
	}
	return 0;
}

/* A tagged value is one MSET <key>kv_bytes <payload> <key>kvnode_tag <tag> <key>metadata
 * <header>: atomic, so no reader sees the header without its payload (or an old tag beside a
 * new payload), and one reply. Redis receives a large argument straight into the string it
 * stores, and answers once: three SETs cost it a second read and the client a second wake-up
 * for the later replies. An untagged value (no tag to write, an older one to drop) is SET
 * <key>kv_bytes, DEL <key>kvnode_tag, SET <key>metadata: payload first, header last, as
 * LMCache writes. */

/* What goes before the payload: the command, the data key and the payload's length line. */
static size_t
put_head(char *head, const struct kvn_key *key, const struct kvn_remote_value *v)
{
	size_t hn = resp_head(head, v->tag_len ? 7 : 3, v->tag_len ? "MSET" : "SET", key,
			      SUFFIX_DATA);
	return hn + bulk_len(head + hn, v->payload->len);
}

/* What follows the payload: its "\r\n", then tag and header (MSET) or DEL tag + SET header. */
static size_t
put_tail(char *tail, const struct kvn_key *key, const struct kvn_remote_value *v)
{
	uint8_t hdr[KVN_REMOTE_META_LEN];
	kvn_remote_meta_encode(&v->meta, hdr);
	size_t tn = 2;
	memcpy(tail, "\r\n", 2);
	char k[RKEY_MAX];
	if (v->tag_len) {
		tn += resp_bulk(tail + tn, k, rkey(k, key, SUFFIX_TAG));
		tn += resp_bulk(tail + tn, v->tag, v->tag_len);
		tn += resp_bulk(tail + tn, k, rkey(k, key, SUFFIX_META));
	} else {
		tn += resp_head(tail + tn, 2, "DEL", key, SUFFIX_TAG);
		tn += resp_head(tail + tn, 3, "SET", key, SUFFIX_META);
	}
	return tn + resp_bulk(tail + tn, hdr, sizeof(hdr));
}

#define TAIL_MAX (3 * RKEY_MAX + 512)

/* A pending tag (KVN_CONNECTOR_F_TAG_ON_SEND) follows the payload in the MSET, so it is hashed
 * while the payload is on its way — whenever the socket is full, and after the last byte
 * while redis is still reading — and goes out last. */
static int
send_put_hashing(struct kvn_connector *c, const struct kvn_key *key,
		 const struct kvn_remote_value *v)
{
	char head[RKEY_MAX + 64], tail[TAIL_MAX];
	struct idle_hash h = {c->tagger, v->payload->data, v->payload->len, 0};
	kvn_remote_tagger_begin(c->tagger, key, &v->meta);
	struct iovec iov[2] = {{head, put_head(head, key, v)}, {v->payload->data, h.len}};
	int rc = send_all(c, iov, 2, &h);
	if (rc < 0)
		return rc;
	while (hash_some(&h))
		;
	struct kvn_remote_value t = *v;
	t.tag_len = kvn_remote_tagger_end(c->tagger, t.tag);
	iov[0] = (struct iovec){tail, put_tail(tail, key, &t)};
	return send_all(c, iov, 1, NULL);
}

/* Sends one put; 0 or < 0 (the stream is then broken). */
static int
send_put(struct kvn_connector *c, const struct kvn_key *key, const struct kvn_remote_value *v)
{
	int rc = usable(c, "SET");
	if (rc < 0)
		return rc;
	if (v->tag_len == KVN_REMOTE_TAG_PENDING)
		return send_put_hashing(c, key, v);
	char head[RKEY_MAX + 64], tail[TAIL_MAX];
	struct iovec iov[3] = {{head, put_head(head, key, v)},
			       {v->payload->data, v->payload->len},
			       {tail, put_tail(tail, key, v)}};
	return send_all(c, iov, 3, NULL);
}

/* Reads a put's replies: +OK for MSET (tagged), else +OK, an integer (DEL) and +OK. An error
 * reply is the store refusing (the stream stays in step); any other answer means this is not
 * the reply to what was sent (a proxy speaking something else, a stream out of step), and
 * the connection is not used again. */
static int
read_put(struct kvn_connector *c, bool tagged)
{
	static const int want_untagged[3] = {REDIS_REPLY_STATUS, REDIS_REPLY_INTEGER,
					     REDIS_REPLY_STATUS};
	int n = tagged ? 1 : 3, rc = 0;
	for (int i = 0; i < n; i++) {
		redisReply *r;
		if (redisGetReply(c->ctx, (void **)&r) != REDIS_OK)
			return ctx_error(c, "SET");
		int want = tagged ? REDIS_REPLY_STATUS : want_untagged[i];
		bool ok = r->type == want &&
			  (want != REDIS_REPLY_STATUS || (r->len == 2 && !memcmp(r->str, "OK", 2)));
		if (r->type == REDIS_REPLY_ERROR) {
			if (rc == 0)
				rc = reply_error(c, "SET", r);
		} else if (!ok) {
			const char *cmd = tagged ? "MSET" : i == 1 ? "DEL" : "SET";
			char why[96];
			if (r->type == REDIS_REPLY_STATUS)
				snprintf(why, sizeof(why), "%s answered +%.*s, not +OK", cmd,
					 (int)(r->len < 32 ? r->len : 32), r->str);
			else
				snprintf(why, sizeof(why), "%s answered a reply of type %d, not %s",
					 cmd, r->type,
					 want == REDIS_REPLY_INTEGER ? "an integer" : "+OK");
			freeReplyObject(r);
			return stream_broken(c, "SET", -EPROTO, why);
		}
		freeReplyObject(r);
	}
	return rc;
}

/* --------------------------------------------------------------------------------------------
 * Operations
 * -------------------------------------------------------------------------------------------- */

static int
do_get(struct kvn_connector *c, const struct kvn_key *key, struct kvn_remote_value *out)
{
	memset(out, 0, sizeof(*out));
	int rc = usable(c, "GET");
	if (rc == 0)
		rc = append_get(c, key);
	return rc < 0 ? rc : read_get(c, key, out);
}

static int
do_put(struct kvn_connector *c, const struct kvn_key *key, const struct kvn_remote_value *v)
{
	int rc = send_put(c, key, v);
	return rc < 0 ? rc : read_put(c, v->tag_len != 0);
}

static int
int_reply(struct kvn_connector *c, const char *op, long long *val)
{
	redisReply *r;
	if (redisGetReply(c->ctx, (void **)&r) != REDIS_OK)
		return ctx_error(c, op);
	int rc = 0;
	if (r->type == REDIS_REPLY_INTEGER)
		*val = r->integer;
	else if (r->type == REDIS_REPLY_ERROR)
		rc = reply_error(c, op, r);
	else
		rc = stream_broken(c, op, -EPROTO, "answered something but an integer");
	freeReplyObject(r);
	return rc;
}

static int
append_exists(struct kvn_connector *c, const struct kvn_key *key)
{
	char k[RKEY_MAX];
	size_t kl = rkey(k, key, SUFFIX_META);
	return append(c, "EXISTS %b", k, kl) == REDIS_OK ? 0 : poison(c, "EXISTS", -ENOMEM);
}

static int
do_exists(struct kvn_connector *c, const struct kvn_key *key)
{
	long long n = 0;
	int rc = usable(c, "EXISTS");
	if (rc == 0)
		rc = append_exists(c, key);
	if (rc == 0)
		rc = int_reply(c, "EXISTS", &n);
	return rc < 0 ? rc : n > 0;
}

static int
do_remove(struct kvn_connector *c, const struct kvn_key *key)
{
	char m[RKEY_MAX], d[RKEY_MAX], t[RKEY_MAX];
	size_t ml = rkey(m, key, SUFFIX_META), dl = rkey(d, key, SUFFIX_DATA),
	       tl = rkey(t, key, SUFFIX_TAG);
	long long n = 0;
	int rc = usable(c, "DEL");
	if (rc < 0)
		return rc;
	/* The header goes first in the argument list; DEL of several keys is atomic anyway. */
	if (append(c, "DEL %b %b %b", m, ml, d, dl, t, tl) != REDIS_OK)
		return poison(c, "DEL", -ENOMEM);
	rc = int_reply(c, "DEL", &n);
	return rc < 0 ? rc : n > 0 ? 0 : -ENOENT;
}

static int
do_list(struct kvn_connector *c, kvn_connector_list_cb cb, void *ctx)
{
	const size_t sl = strlen(SUFFIX_META);
	char cursor[32] = "0";
	int rc = usable(c, "SCAN");
	if (rc < 0)
		return rc;
	do {
		redisReply *r =
		    redisCommand(c->ctx, "SCAN %s MATCH *" SUFFIX_META " COUNT 1000", cursor);
		if (!r)
			return ctx_error(c, "SCAN");
		if (r->type == REDIS_REPLY_ERROR) {
			int rc = reply_error(c, "SCAN", r);
			freeReplyObject(r);
			return rc;
		}
		if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
		    r->element[0]->type != REDIS_REPLY_STRING ||
		    r->element[1]->type != REDIS_REPLY_ARRAY ||
		    r->element[0]->len >= sizeof(cursor)) {
			freeReplyObject(r);
			return stream_broken(c, "SCAN", -EPROTO,
					     "SCAN answered no cursor and keys");
		}
		memcpy(cursor, r->element[0]->str, r->element[0]->len);
		cursor[r->element[0]->len] = '\0';
		int stop = 0;
		for (size_t i = 0; i < r->element[1]->elements && !stop; i++) {
			redisReply *k = r->element[1]->element[i];
			if (k->type == REDIS_REPLY_STRING && k->len > sl)
				stop = cb(ctx, k->str, k->len - sl);
		}
		freeReplyObject(r);
		if (stop)
			return stop;
	} while (strcmp(cursor, "0"));
	return 0;
}

static int
do_ping(struct kvn_connector *c)
{
	int rc = usable(c, "PING");
	return rc < 0 ? rc : simple(c, "PING", redisCommand(c->ctx, "PING"));
}

/* Batches: every request of the batch is written before the first reply is read, so the
 * batch costs one round trip (hiredis buffers the appended commands and flushes them on the
 * first redisGetReply). */

static int
do_get_batch(struct kvn_connector *c, size_t n, const struct kvn_key *const *keys,
	     struct kvn_remote_value *out, int *rcs)
{
	int rc = usable(c, "GET");
	for (size_t i = 0; i < n && rc == 0; i++)
		rc = append_get(c, keys[i]);
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < n; i++) {
		rcs[i] = read_get(c, keys[i], &out[i]);
		if (c->ctx->err) {
			for (size_t j = i + 1; j < n; j++) /* the stream is gone */
				rcs[j] = rcs[i], memset(&out[j], 0, sizeof(out[j]));
			break;
		}
	}
	return 0;
}

static int
do_put_batch(struct kvn_connector *c, size_t n, const struct kvn_key *const *keys,
	     const struct kvn_remote_value *vals, int *rcs)
{
	/* A failed send breaks the context: every reply read below then reports it. */
	for (size_t i = 0; i < n && send_put(c, keys[i], &vals[i]) == 0; i++)
		;
	for (size_t i = 0; i < n; i++) {
		rcs[i] = read_put(c, vals[i].tag_len != 0);
		if (c->ctx->err) {
			for (size_t j = i + 1; j < n; j++)
				rcs[j] = rcs[i];
			break;
		}
	}
	return 0;
}

static int
do_exists_batch(struct kvn_connector *c, size_t n, const struct kvn_key *const *keys, int *rcs)
{
	int rc0 = usable(c, "EXISTS");
	for (size_t i = 0; i < n && rc0 == 0; i++)
		rc0 = append_exists(c, keys[i]);
	if (rc0 < 0)
		return rc0;
	for (size_t i = 0; i < n; i++) {
		long long v = 0;
		int rc = int_reply(c, "EXISTS", &v);
		rcs[i] = rc < 0 ? rc : v > 0;
		if (c->ctx->err) {
			for (size_t j = i + 1; j < n; j++)
				rcs[j] = rcs[i];
			break;
		}
	}
	return 0;
}

/* --------------------------------------------------------------------------------------------
 * SIGPIPE: hiredis writes with write(2), so a store that dies mid-request would kill a process
 * that has not ignored SIGPIPE (an inference engine embedding libkvnode). Each call blocks it
 * for the calling thread and swallows one raised meanwhile; the write then fails with EPIPE.
 * -------------------------------------------------------------------------------------------- */

struct pipe_guard {
	sigset_t old;
	bool was_pending;
};

static void
guard_begin(struct pipe_guard *g)
{
	sigset_t set, pend;
	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	sigpending(&pend);
	g->was_pending = sigismember(&pend, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &set, &g->old);
}

static void
guard_end(struct pipe_guard *g)
{
	sigset_t set, pend;
	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	sigpending(&pend);
	if (!g->was_pending && sigismember(&pend, SIGPIPE)) {
		struct timespec zero = {0, 0};
		sigtimedwait(&set, NULL, &zero);
	}
	pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

#define GUARDED(ret, name, params, args)                                                           \
	static ret redis_##name params                                                             \
	{                                                                                          \
		struct pipe_guard g;                                                               \
		guard_begin(&g);                                                                   \
		ret rc = do_##name args;                                                           \
		guard_end(&g);                                                                     \
		return rc;                                                                         \
	}

GUARDED(int, connect, (const struct kvn_connector_env *env, struct kvn_connector **out), (env, out))
GUARDED(int, exists, (struct kvn_connector * c, const struct kvn_key *key), (c, key))
GUARDED(int, get,
	(struct kvn_connector * c, const struct kvn_key *key, struct kvn_remote_value *out),
	(c, key, out))
GUARDED(int, put,
	(struct kvn_connector * c, const struct kvn_key *key, const struct kvn_remote_value *v),
	(c, key, v))
GUARDED(int, remove, (struct kvn_connector * c, const struct kvn_key *key), (c, key))
GUARDED(int, list, (struct kvn_connector * c, kvn_connector_list_cb cb, void *ctx), (c, cb, ctx))
GUARDED(int, ping, (struct kvn_connector * c), (c))
GUARDED(int, get_batch,
	(struct kvn_connector * c, size_t n, const struct kvn_key *const *keys,
	 struct kvn_remote_value *out, int *rcs),
	(c, n, keys, out, rcs))
GUARDED(int, put_batch,
	(struct kvn_connector * c, size_t n, const struct kvn_key *const *keys,
	 const struct kvn_remote_value *vals, int *rcs),
	(c, n, keys, vals, rcs))
GUARDED(int, exists_batch,
	(struct kvn_connector * c, size_t n, const struct kvn_key *const *keys, int *rcs),
	(c, n, keys, rcs))

const struct kvn_connector_ops kvn_redis_connector_ops = {
    KVN_CONNECTOR_OPS_INIT,
    .flags = KVN_CONNECTOR_F_TAG_ON_SEND,
    .scheme = "redis",
    .connect = redis_connect,
    .close = redis_close,
    .exists = redis_exists,
    .get = redis_get,
    .put = redis_put,
    .remove = redis_remove,
    .list = redis_list,
    .ping = redis_ping,
    .get_batch = redis_get_batch,
    .put_batch = redis_put_batch,
    .exists_batch = redis_exists_batch,
};
