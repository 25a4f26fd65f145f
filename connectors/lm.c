/* lm:// connector: a client of LMCache's cache-server protocol (docs/architecture.md §10), so a
 * kvnode node can use an LMCache server, or another kvnode's lm server, as its remote tier. One TCP
 * connection per instance; batches are pipelined (all requests, then all replies). PUT has no
 * reply in the protocol: every PUT is followed by an EXIST of its key, whose answer is the ack. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "connectors/registry.h"
#include "core/fdio.h"
#include "connectors/lmproto.h"
#include "core/log.h"
#include "core/netaddr.h"
#include "connectors/remote_value.h"

/* Requests in flight at once in a batch: small enough that requests and replies never fill
 * both sockets' buffers (which would deadlock a pipeline that only reads at the end). */
#define PIPELINE 32

struct kvn_connector {
	const struct kvn_connector_env *env;
	int fd;
	char addr[KVN_HOST_MAX + 16];
	uint64_t value_max; /* max_chunk_size: longer values are refused unread */
};

/* "lm://HOST:PORT" (a trailing '/' and ?options allowed) into host and port. */
static int
parse_url(const struct kvn_connector_env *env, char host[KVN_HOST_MAX], uint16_t *port)
{
	const char *u = env->url;
	char why[300], hp[KVN_HOST_MAX + 16];
	if (strncmp(u, "lm://", 5)) {
		env->log(env, KVN_LOG_ERROR, "remote_url %s is not an lm:// URL",
			 env->url_redacted);
		return -EINVAL;
	}
	size_t n = strcspn(u + 5, "/?");
	const char *rest = u + 5 + n + (u[5 + n] == '/');
	if (n >= sizeof(hp) || (*rest && *rest != '?')) {
		env->log(env, KVN_LOG_ERROR, "remote_url %s: write lm://HOST:PORT (no path)",
			 env->url_redacted);
		return -EINVAL;
	}
	memcpy(hp, u + 5, n);
	hp[n] = '\0';
	if (kvn_hostport_parse(hp, host, port, why, sizeof(why)) < 0) {
		env->log(env, KVN_LOG_ERROR, "remote_url %s: %s", env->url_redacted, why);
		return -EINVAL;
	}
	if (*port == 0) {
		env->log(env, KVN_LOG_ERROR, "remote_url %s: port 0 cannot be connected to",
			 env->url_redacted);
		return -EINVAL;
	}
	return 0;
}

static int
lm_connect(const struct kvn_connector_env *env, struct kvn_connector **out)
{
	char host[KVN_HOST_MAX], err[512];
	uint16_t port = 0;
	int rc = parse_url(env, host, &port);
	if (rc)
		return rc;
	int timeout = env->timeout_ms ? (int)env->timeout_ms : 30000;
	int fd = kvn_tcp_connect(host, port, timeout, err, sizeof(err));
	if (fd < 0) {
		env->log(env, KVN_LOG_WARN, "lm server %s: %s", env->url_redacted, err);
		return fd;
	}
	/* Every request then has the same deadline: a server that stops answering is an
	 * -ETIMEDOUT, after which the node reconnects. */
	struct timeval tv = {.tv_sec = timeout / 1000, .tv_usec = (timeout % 1000) * 1000};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	struct kvn_connector *c = calloc(1, sizeof(*c));
	if (!c) {
		close(fd);
		return -ENOMEM;
	}
	c->env = env;
	c->fd = fd;
	c->value_max = kvn_remote_value_max(env);
	snprintf(c->addr, sizeof(c->addr), strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, port);
	*out = c;
	return 0;
}

static void
lm_close(struct kvn_connector *c)
{
	if (!c)
		return;
	close(c->fd);
	free(c);
}

/* ------------------------------------------------------------------------------------------
 * Frames
 * ------------------------------------------------------------------------------------------ */

/* The key of requests about no key (HEALTH, LIST). LMCache's server parses every request's key
 * (ClientMetaMessage.deserialize: CacheEngineKey.from_string, lmcache/v1/protocol.py) before it
 * looks at the command, and ends the connection on one it cannot parse, an empty one too. */
#define PROBE_KEY "kvnode-probe@1@0@0@half"

static int
send_req(struct kvn_connector *c, int32_t cmd, const struct kvn_key *key, int32_t length,
	 const struct kvn_lm_meta *meta)
{
	uint8_t w[KVN_LM_REQ_SIZE];
	if (kvn_lm_req_encode(w, cmd, key ? key->str : PROBE_KEY,
			      key ? key->len : strlen(PROBE_KEY), length, meta)) {
		c->env->log(c->env, KVN_LOG_WARN,
			    "key %s is %u bytes: LMCache's protocol carries at most %d", key->str,
			    key->len, KVN_LM_KEY_MAX);
		return -ENAMETOOLONG;
	}
	return kvn_fd_write_full(c->fd, w, sizeof(w));
}

/* Reads one reply header; a code other than 200/400 means the stream is not this protocol. */
static int
recv_reply(struct kvn_connector *c, struct kvn_lm_reply *rep)
{
	uint8_t w[KVN_LM_REPLY_SIZE];
	int rc = kvn_fd_read_full(c->fd, w, sizeof(w), NULL);
	if (rc)
		return rc;
	kvn_lm_reply_decode(w, rep);
	if ((rep->code != KVN_LM_OK && rep->code != KVN_LM_FAIL) || rep->length < 0) {
		c->env->log(c->env, KVN_LOG_WARN,
			    "lm server %s sent a reply with code %d, length %d: not LMCache's "
			    "protocol (or out of step); reconnecting",
			    c->addr, rep->code, rep->length);
		return -EPROTO;
	}
	return 0;
}

static int
exists_reply(struct kvn_connector *c)
{
	struct kvn_lm_reply r;
	int rc = recv_reply(c, &r);
	if (rc)
		return rc;
	/* Neither EXIST reply carries bytes; a length would put the stream out of step. */
	if (r.length)
		return -EPROTO;
	return r.code == KVN_LM_OK;
}

/* Reads a GET reply and its payload into out. */
static int
get_reply(struct kvn_connector *c, const struct kvn_key *key, struct kvn_remote_value *out)
{
	struct kvn_lm_reply r;
	int rc = recv_reply(c, &r);
	if (rc)
		return rc;
	if (r.code == KVN_LM_FAIL)
		return r.length ? -EPROTO : -ENOENT;
	if ((uint64_t)r.length > c->value_max) {
		/* Refused unread: the remote tier closes the connection after this error. */
		c->env->log(c->env, KVN_LOG_WARN,
			    "lm server %s: GET %s announced %d bytes, more than max_chunk_size "
			    "(%llu): refused, the connection is closed",
			    c->addr, key->str, r.length, (unsigned long long)c->value_max);
		return -EMSGSIZE;
	}
	struct kvn_buf *b = kvn_buf_new((size_t)r.length);
	if (!b) {
		/* The payload is on the wire and must be consumed to stay in step. */
		rc = kvn_fd_discard(c->fd, (uint64_t)r.length);
		return rc ? rc : -ENOMEM;
	}
	size_t got;
	rc = kvn_fd_read_full(c->fd, b->data, (size_t)r.length, &got);
	if (rc) {
		c->env->log(c->env, KVN_LOG_WARN, "lm server %s: GET %s: %zu of %d bytes: %s",
			    c->addr, key->str, got, r.length, kvn_strerror(rc));
		kvn_buf_unref(b);
		return rc;
	}
	memset(out, 0, sizeof(*out));
	out->meta.length = r.length;
	out->meta.fmt = r.meta.fmt;
	out->meta.dtype = r.meta.dtype;
	memcpy(out->meta.shape, r.meta.shape, sizeof(out->meta.shape));
	out->payload = b;
	/* The protocol has no room for kvnode's tag: the node checks the header, TCP the bytes. */
	out->tag_len = 0;
	return 0;
}

/* Sends PUT, its payload, then EXIST of the same key. LMCache's server (lmcache/v1/server/
 * __main__.py) stores a PUT without answering, and on a request it cannot take (a key that
 * CacheEngineKey.from_string refuses raises ValueError) closes the connection: the EXIST's
 * answer is what proves the value arrived. */
static int
put_req(struct kvn_connector *c, const struct kvn_key *key, const struct kvn_remote_value *val)
{
	if (!val->payload || (size_t)val->meta.length != val->payload->len || val->meta.length < 0)
		return -EINVAL;
	struct kvn_lm_meta m = {.fmt = val->meta.fmt, .dtype = val->meta.dtype};
	memcpy(m.shape, val->meta.shape, sizeof(m.shape));
	int rc = send_req(c, KVN_LM_PUT, key, val->meta.length, &m);
	if (!rc)
		rc = kvn_fd_write_full(c->fd, val->payload->data, val->payload->len);
	if (!rc)
		rc = send_req(c, KVN_LM_EXIST, key, 0, NULL);
	if (rc)
		c->env->log(c->env, KVN_LOG_WARN,
			    "lm server %s: PUT %s not sent (%s): not stored; reconnecting", c->addr,
			    key->str, kvn_strerror(rc));
	return rc;
}

/* Reads the EXIST answer that follows a PUT: 0 when the server holds the key. */
static int
put_ack(struct kvn_connector *c, const struct kvn_key *key)
{
	int rc = exists_reply(c);
	if (rc == 1)
		return 0;
	if (rc == 0) {
		c->env->log(c->env, KVN_LOG_WARN,
			    "lm server %s does not hold %s right after its PUT: not stored",
			    c->addr, key->str);
		return -EREMOTEIO;
	}
	if (rc == -ECONNRESET || rc == -EPIPE)
		c->env->log(c->env, KVN_LOG_WARN,
			    "lm server %s closed the connection after PUT %s: not stored "
			    "(LMCache's server does so for a key it cannot parse; its keys are "
			    "model@world_size@worker_id@hash_hex@dtype[@tag%%value]); reconnecting",
			    c->addr, key->str);
	else if (rc != -EPROTO)
		c->env->log(c->env, KVN_LOG_WARN,
			    "lm server %s: no answer to the EXIST that confirms PUT %s (%s): not "
			    "known to be stored; reconnecting",
			    c->addr, key->str, kvn_strerror(rc));
	return rc;
}

/* ------------------------------------------------------------------------------------------
 * Operations
 * ------------------------------------------------------------------------------------------ */

static int
lm_exists(struct kvn_connector *c, const struct kvn_key *key)
{
	int rc = send_req(c, KVN_LM_EXIST, key, 0, NULL);
	return rc ? rc : exists_reply(c);
}

static int
lm_get(struct kvn_connector *c, const struct kvn_key *key, struct kvn_remote_value *out)
{
	out->payload = NULL;
	int rc = send_req(c, KVN_LM_GET, key, 0, NULL);
	return rc ? rc : get_reply(c, key, out);
}

static int
lm_put(struct kvn_connector *c, const struct kvn_key *key, const struct kvn_remote_value *val)
{
	int rc = put_req(c, key, val);
	return rc ? rc : put_ack(c, key);
}

static int
lm_remove(struct kvn_connector *c, const struct kvn_key *key)
{
	(void)c;
	(void)key;
	return -EOPNOTSUPP; /* LMCache's protocol has no delete */
}

static int
lm_list(struct kvn_connector *c, kvn_connector_list_cb cb, void *ctx)
{
	/* LMCache's own server ignores LIST (no reply): against it this ends in -ETIMEDOUT and a
	 * reconnect. kvnode's lm server answers it. */
	int rc = send_req(c, KVN_LM_LIST, NULL, 0, NULL);
	struct kvn_lm_reply r;
	if (rc || (rc = recv_reply(c, &r)))
		return rc;
	if (r.code != KVN_LM_OK)
		return r.length ? -EPROTO : -EOPNOTSUPP;
	char *text = malloc((size_t)r.length + 1);
	if (!text) {
		rc = kvn_fd_discard(c->fd, (uint64_t)r.length);
		return rc ? rc : -ENOMEM;
	}
	rc = kvn_fd_read_full(c->fd, text, (size_t)r.length, NULL);
	text[rc ? 0 : r.length] = '\0';
	for (char *p = text, *end; !rc && *p; p = end + (*end == '\n')) {
		end = strchrnul(p, '\n');
		if (end > p)
			rc = cb(ctx, p, (size_t)(end - p));
		if (!*end)
			break;
	}
	free(text);
	return rc;
}

static int
lm_ping(struct kvn_connector *c)
{
	struct kvn_lm_reply r;
	int rc = send_req(c, KVN_LM_HEALTH, NULL, 0, NULL);
	if (rc || (rc = recv_reply(c, &r)))
		return rc;
	return r.code == KVN_LM_OK && !r.length ? 0 : -EPROTO;
}

/* Batches: requests for a window of keys go out back to back, then their replies are read in
 * order. A transport error fails the whole batch (the connection is out of step); a miss or an
 * over-long key is only that key's. */
static bool
too_long(const struct kvn_key *key)
{
	return key->len > KVN_LM_KEY_MAX;
}

static int
lm_get_batch(struct kvn_connector *c, size_t n, const struct kvn_key *const *keys,
	     struct kvn_remote_value *out, int *rcs)
{
	size_t done = 0; /* replies read */
	int rc = 0;
	for (size_t at = 0; at < n && !rc; at += PIPELINE) {
		size_t w = n - at < PIPELINE ? n - at : PIPELINE;
		for (size_t i = at; i < at + w && !rc; i++) {
			out[i].payload = NULL;
			if (!too_long(keys[i]))
				rc = send_req(c, KVN_LM_GET, keys[i], 0, NULL);
		}
		for (; done < at + w && !rc; done++) {
			rcs[done] = too_long(keys[done]) ? -ENAMETOOLONG
							 : get_reply(c, keys[done], &out[done]);
			if (rcs[done] < 0 && rcs[done] != -ENOENT && rcs[done] != -ENAMETOOLONG)
				rc = rcs[done];
		}
	}
	if (rc)
		for (size_t j = 0; j < done; j++)
			if (!rcs[j])
				kvn_remote_value_release(&out[j]);
	return rc;
}

static int
lm_exists_batch(struct kvn_connector *c, size_t n, const struct kvn_key *const *keys, int *rcs)
{
	int rc = 0;
	for (size_t at = 0; at < n && !rc; at += PIPELINE) {
		size_t w = n - at < PIPELINE ? n - at : PIPELINE;
		for (size_t i = at; i < at + w && !rc; i++)
			if (!too_long(keys[i]))
				rc = send_req(c, KVN_LM_EXIST, keys[i], 0, NULL);
		for (size_t i = at; i < at + w && !rc; i++) {
			rcs[i] = too_long(keys[i]) ? 0 : exists_reply(c);
			if (rcs[i] < 0)
				rc = rcs[i];
		}
	}
	return rc;
}

/* A window of PUT + EXIST pairs, then their EXIST answers: the answers are small, so the
 * server never blocks writing them while the payloads are still coming. */
static int
lm_put_batch(struct kvn_connector *c, size_t n, const struct kvn_key *const *keys,
	     const struct kvn_remote_value *vals, int *rcs)
{
	for (size_t at = 0; at < n; at += PIPELINE) {
		size_t w = n - at < PIPELINE ? n - at : PIPELINE;
		bool sent[PIPELINE] = {false};
		for (size_t i = at; i < at + w; i++) {
			const struct kvn_remote_value *v = &vals[i];
			if (too_long(keys[i])) {
				rcs[i] = -ENAMETOOLONG;
			} else if (!v->payload || v->meta.length < 0 ||
				   (size_t)v->meta.length != v->payload->len) {
				rcs[i] = -EINVAL;
			} else {
				int rc = put_req(c, keys[i], v);
				if (rc)
					return rc;
				sent[i - at] = true;
			}
		}
		for (size_t i = at; i < at + w; i++) {
			if (!sent[i - at])
				continue;
			rcs[i] = put_ack(c, keys[i]);
			if (rcs[i] < 0 && rcs[i] != -EREMOTEIO)
				return rcs[i];
		}
	}
	return 0;
}

const struct kvn_connector_ops kvn_lm_connector_ops = {
    KVN_CONNECTOR_OPS_INIT,
    .scheme = "lm",
    .connect = lm_connect,
    .close = lm_close,
    .exists = lm_exists,
    .get = lm_get,
    .put = lm_put,
    .remove = lm_remove,
    .list = lm_list,
    .ping = lm_ping,
    .get_batch = lm_get_batch,
    .put_batch = lm_put_batch,
    .exists_batch = lm_exists_batch,
};
