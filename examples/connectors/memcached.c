/* memcached:// — an external remote connector (a .so loaded through extra_config) that keeps
 * chunks in memcached with libmemcached. Built as build/modules/libkvn_conn_memcached.so; it
 * needs nothing from libkvnode, only the ABI headers. Config:
 *
 *   remote_url: memcached://10.0.0.5:11211,10.0.0.6:11211
 *   extra_config:
 *     external_connector.memcached.module_path: libkvn_conn_memcached.so
 *     external_connector.memcached.class_name: kvn_memcached_connector_ops
 *
 * memcached must allow items as large as a chunk plus 29 bytes (`memcached -I 64m` for 32 MiB
 * chunks); a larger value is refused with -EFBIG and stays in the node's other tiers.
 *
 * One item per chunk: LMCache's 28-byte header, the payload, then kvnode's integrity tag and
 * one byte with the tag's length (a reader that knows only the header stops at the payload).
 * Keys longer than memcached's 250 bytes, or holding a space, are stored under their digest. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libmemcached/memcached.h>

#include "kvnode/connector.h"

#define KEY_MAX	    250 /* memcached's text protocol */
#define SERVERS_MAX 4096

/* The header is seven int32 in LMCache's order, as struct kvn_remote_meta holds them; on the
 * little-endian hosts kvnode runs on the bytes are the struct's. */
_Static_assert(sizeof(struct kvn_remote_meta) == KVN_REMOTE_META_LEN, "header layout");

struct kvn_connector {
	const struct kvn_connector_env *env;
	memcached_st *mc;
};

/* ------------------------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------------------------ */

/* libmemcached's result → the connector ABI's errno (connector.h says which ones make the
 * node reconnect). */
static int
to_errno(memcached_return_t rc)
{
	switch (rc) {
	case MEMCACHED_SUCCESS:
	case MEMCACHED_STORED:
	case MEMCACHED_DELETED:
	case MEMCACHED_END:
		return 0;
	case MEMCACHED_NOTFOUND:
		return -ENOENT;
	case MEMCACHED_TIMEOUT:
		return -ETIMEDOUT;
	case MEMCACHED_HOST_LOOKUP_FAILURE:
	case MEMCACHED_CONNECTION_FAILURE:
		return -ECONNREFUSED;
	case MEMCACHED_SERVER_MARKED_DEAD:
	case MEMCACHED_SERVER_TEMPORARILY_DISABLED:
	case MEMCACHED_NO_SERVERS:
		return -ENOTCONN;
	case MEMCACHED_WRITE_FAILURE:
	case MEMCACHED_READ_FAILURE:
	case MEMCACHED_UNKNOWN_READ_FAILURE:
	case MEMCACHED_ERRNO:
		return -ECONNRESET;
	case MEMCACHED_PROTOCOL_ERROR:
	case MEMCACHED_PARTIAL_READ:
		return -EPROTO;
	case MEMCACHED_E2BIG:
		return -EFBIG;
	case MEMCACHED_MEMORY_ALLOCATION_FAILURE:
		return -ENOMEM;
	default:
		return -EREMOTEIO; /* the server refused the request; the connection is fine */
	}
}

static int
fail(struct kvn_connector *c, memcached_return_t rc, const char *op, const struct kvn_key *key)
{
	int e = to_errno(rc);
	if (e != -ENOENT)
		c->env->log(c->env, KVN_LOG_WARN, "memcached %s %s%s%s: %s", c->env->url_redacted,
			    op, key ? " " : "", key ? key->str : "", memcached_strerror(c->mc, rc));
	return e;
}

/* The memcached key of a kvnode key: the text itself when memcached accepts it, else a
 * digest form (keys are printable, so only length and spaces matter). */
static size_t
mc_key(const struct kvn_key *key, char out[KEY_MAX + 1])
{
	if (key->len <= KEY_MAX && !memchr(key->str, ' ', key->len)) {
		memcpy(out, key->str, key->len + 1u);
		return key->len;
	}
	return (size_t)snprintf(out, KEY_MAX + 1, "kvn#%016llx%016llx",
				(unsigned long long)key->digest.hi,
				(unsigned long long)key->digest.lo);
}

/* A kvn_buf over the payload inside an item libmemcached malloc'd: no copy on get. */
struct item_buf {
	struct kvn_buf buf;
	char *item;
};

static void
item_release(struct kvn_buf *b)
{
	struct item_buf *ib = (struct item_buf *)b;
	free(ib->item);
	free(ib);
}

/* Splits an item into header, payload and tag. Takes item (frees it on failure). */
static int
parse_item(struct kvn_connector *c, const struct kvn_key *key, char *item, size_t len,
	   struct kvn_remote_value *out)
{
	memset(out, 0, sizeof(*out));
	const char *why = NULL;
	size_t tag = 0;
	if (len < KVN_REMOTE_META_LEN) {
		why = "shorter than the 28-byte header";
	} else {
		memcpy(&out->meta, item, KVN_REMOTE_META_LEN);
		size_t body = KVN_REMOTE_META_LEN + (size_t)(uint32_t)out->meta.length;
		if (out->meta.length < 0 || len < body)
			why = "header length exceeds the item";
		else if (len > body) {
			tag = (uint8_t)item[len - 1];
			if (tag > KVN_REMOTE_TAG_MAX || len != body + tag + 1)
				why = "trailer is not a kvnode integrity tag";
		}
	}
	if (why) {
		c->env->log(c->env, KVN_LOG_WARN, "memcached %s: item for key %s: %s (%zu bytes)",
			    c->env->url_redacted, key->str, why, len);
		free(item);
		return -EBADMSG;
	}
	struct item_buf *ib = calloc(1, sizeof(*ib));
	if (!ib) {
		free(item);
		return -ENOMEM;
	}
	ib->item = item;
	kvn_buf_init(&ib->buf, item + KVN_REMOTE_META_LEN, (size_t)out->meta.length, item_release,
		     NULL, 0);
	memcpy(out->tag, item + len - 1 - tag, tag);
	out->tag_len = (uint32_t)tag;
	out->payload = &ib->buf;
	return 0;
}

/* ------------------------------------------------------------------------------------------
 * Connection
 * ------------------------------------------------------------------------------------------ */

/* "memcached://h1:p1,h2:p2" → libmemcached servers. */
static int
add_servers(struct kvn_connector *c, const char *url)
{
	const char *p = strstr(url, "://");
	if (!p || !p[3])
		return -EINVAL;
	char list[SERVERS_MAX];
	snprintf(list, sizeof(list), "%s", p + 3);
	list[strcspn(list, "/?")] = '\0';
	char *save = NULL;
	int n = 0;
	for (char *s = strtok_r(list, ",", &save); s; s = strtok_r(NULL, ",", &save), n++) {
		char *host = s, *colon = strrchr(s, ':'), *end;
		if (*s == '[') {
			char *rb = strchr(s, ']');
			if (!rb || rb[1] != ':')
				return -EINVAL;
			*rb = '\0';
			host = s + 1;
			colon = rb + 1;
		}
		if (!colon || colon == s)
			return -EINVAL;
		*colon = '\0';
		long port = strtol(colon + 1, &end, 10);
		if (!*host || *end || port <= 0 || port > 65535)
			return -EINVAL;
		if (memcached_server_add(c->mc, host, (in_port_t)port) != MEMCACHED_SUCCESS)
			return -EINVAL;
	}
	return n ? 0 : -EINVAL;
}

static int
mc_ping(struct kvn_connector *c)
{
	/* touch answers NOT_FOUND or TOUCHED: either way the server is there. */
	static const char probe[] = "kvn#ping";
	memcached_return_t rc = memcached_touch(c->mc, probe, sizeof(probe) - 1, 0);
	return rc == MEMCACHED_SUCCESS || rc == MEMCACHED_NOTFOUND ? 0 : fail(c, rc, "ping", NULL);
}

static void
mc_close(struct kvn_connector *c)
{
	if (!c)
		return;
	if (c->mc)
		memcached_free(c->mc);
	free(c);
}

static int
mc_connect(const struct kvn_connector_env *env, struct kvn_connector **out)
{
	struct kvn_connector *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->env = env;
	c->mc = memcached_create(NULL);
	if (!c->mc) {
		free(c);
		return -ENOMEM;
	}
	if (add_servers(c, env->url)) {
		env->log(env, KVN_LOG_ERROR,
			 "remote_url %s: write memcached://HOST:PORT[,HOST:PORT...]",
			 env->url_redacted);
		mc_close(c);
		return -EINVAL;
	}
	uint64_t ms = env->timeout_ms ? env->timeout_ms : 30000;
	memcached_behavior_set(c->mc, MEMCACHED_BEHAVIOR_TCP_NODELAY, 1);
	memcached_behavior_set(c->mc, MEMCACHED_BEHAVIOR_CONNECT_TIMEOUT, ms);
	memcached_behavior_set(c->mc, MEMCACHED_BEHAVIOR_POLL_TIMEOUT, ms);
	memcached_behavior_set(c->mc, MEMCACHED_BEHAVIOR_RCV_TIMEOUT, ms * 1000);
	memcached_behavior_set(c->mc, MEMCACHED_BEHAVIOR_SND_TIMEOUT, ms * 1000);
	/* The node reconnects with its own back-off: libmemcached should report a dead server
	 * at once rather than hide it behind its retry timer. */
	memcached_behavior_set(c->mc, MEMCACHED_BEHAVIOR_RETRY_TIMEOUT, 0);
	int rc = mc_ping(c); /* libmemcached connects lazily: prove the server answers now */
	if (rc) {
		mc_close(c);
		return rc;
	}
	*out = c;
	return 0;
}

/* ------------------------------------------------------------------------------------------
 * Operations
 * ------------------------------------------------------------------------------------------ */

static int
mc_exists(struct kvn_connector *c, const struct kvn_key *key)
{
	char k[KEY_MAX + 1];
	size_t kl = mc_key(key, k);
	memcached_return_t rc = memcached_touch(c->mc, k, kl, 0);
	if (rc == MEMCACHED_SUCCESS)
		return 1;
	return rc == MEMCACHED_NOTFOUND ? 0 : fail(c, rc, "exists", key);
}

static int
mc_get(struct kvn_connector *c, const struct kvn_key *key, struct kvn_remote_value *out)
{
	char k[KEY_MAX + 1];
	size_t kl = mc_key(key, k), len = 0;
	uint32_t flags;
	memcached_return_t rc;
	out->payload = NULL;
	char *item = memcached_get(c->mc, k, kl, &len, &flags, &rc);
	if (!item)
		return rc == MEMCACHED_SUCCESS ? -EBADMSG : fail(c, rc, "get", key);
	return parse_item(c, key, item, len, out);
}

static int
mc_put(struct kvn_connector *c, const struct kvn_key *key, const struct kvn_remote_value *val)
{
	if (!val->payload || val->meta.length < 0 ||
	    (size_t)val->meta.length != val->payload->len || val->tag_len > KVN_REMOTE_TAG_MAX)
		return -EINVAL;
	/* memcached stores one contiguous value: header, payload, tag, tag length. */
	size_t len = KVN_REMOTE_META_LEN + val->payload->len + val->tag_len + 1;
	char *item = malloc(len), k[KEY_MAX + 1];
	if (!item)
		return -ENOMEM;
	memcpy(item, &val->meta, KVN_REMOTE_META_LEN);
	memcpy(item + KVN_REMOTE_META_LEN, val->payload->data, val->payload->len);
	memcpy(item + len - 1 - val->tag_len, val->tag, val->tag_len);
	item[len - 1] = (char)val->tag_len;
	size_t kl = mc_key(key, k);
	memcached_return_t rc = memcached_set(c->mc, k, kl, item, len, 0, 0);
	free(item);
	return rc == MEMCACHED_SUCCESS ? 0 : fail(c, rc, "put", key);
}

static int
mc_remove(struct kvn_connector *c, const struct kvn_key *key)
{
	char k[KEY_MAX + 1];
	size_t kl = mc_key(key, k);
	memcached_return_t rc = memcached_delete(c->mc, k, kl, 0);
	return rc == MEMCACHED_SUCCESS ? 0 : fail(c, rc, "remove", key);
}

static int
mc_list(struct kvn_connector *c, kvn_connector_list_cb cb, void *ctx)
{
	(void)c;
	(void)cb;
	(void)ctx;
	return -EOPNOTSUPP; /* memcached has no reliable key listing */
}

/* One multi-get for the whole batch: a single round trip instead of n. */
static int
mc_get_batch(struct kvn_connector *c, size_t n, const struct kvn_key *const *keys,
	     struct kvn_remote_value *out, int *rcs)
{
	char(*k)[KEY_MAX + 1] = malloc(n * sizeof(*k));
	const char **kp = malloc(n * sizeof(*kp));
	size_t *kl = malloc(n * sizeof(*kl));
	int ret = 0;
	if (!k || !kp || !kl) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		kl[i] = mc_key(keys[i], k[i]);
		kp[i] = k[i];
		rcs[i] = -ENOENT;
		out[i].payload = NULL;
	}
	memcached_return_t rc = memcached_mget(c->mc, kp, kl, n);
	if (rc != MEMCACHED_SUCCESS) {
		ret = fail(c, rc, "get (batch)", NULL);
		goto out;
	}
	memcached_result_st *res;
	while ((res = memcached_fetch_result(c->mc, NULL, &rc))) {
		const char *rk = memcached_result_key_value(res);
		size_t rkl = memcached_result_key_length(res);
		for (size_t i = 0; i < n; i++) {
			if (rcs[i] != -ENOENT || kl[i] != rkl || memcmp(kp[i], rk, rkl))
				continue;
			size_t len = memcached_result_length(res);
			char *item = memcached_result_take_value(res);
			rcs[i] = item ? parse_item(c, keys[i], item, len, &out[i]) : -ENOMEM;
			break;
		}
		memcached_result_free(res);
	}
	if (rc != MEMCACHED_END && rc != MEMCACHED_SUCCESS && rc != MEMCACHED_NOTFOUND) {
		ret = fail(c, rc, "get (batch)", NULL);
		for (size_t i = 0; i < n; i++)
			if (!rcs[i])
				kvn_buf_unref(out[i].payload), out[i].payload = NULL;
	}
out:
	free(k);
	free(kp);
	free(kl);
	return ret;
}

__attribute__((visibility("default")))
const struct kvn_connector_ops kvn_memcached_connector_ops = {
    KVN_CONNECTOR_OPS_INIT,
    .flags = KVN_CONNECTOR_F_NO_LIST,
    .scheme = "memcached",
    .connect = mc_connect,
    .close = mc_close,
    .exists = mc_exists,
    .get = mc_get,
    .put = mc_put,
    .remove = mc_remove,
    .list = mc_list,
    .ping = mc_ping,
    .get_batch = mc_get_batch,
};
