/* The etcd gateway's JSON (node/cluster/etcd_json.h): fields as grpc-gateway writes them, its
 * error answers, range answers and watch streams. Everything here reads bytes from the network:
 * tests/fuzz/fuzz_etcd.c fuzzes the two decoders. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "node/cluster/etcd_json.h"

/* ------------------------------------------------------------------------------------------
 * JSON fields as the gateway writes them
 * ------------------------------------------------------------------------------------------ */

/* An int64 field: grpc-gateway writes them as strings, a hand-written client or another
 * gateway version may send numbers. 0 (absent: 0, as proto3 leaves out zero values) or
 * -EPROTO. */
int
kvn_etcd_field_i64(const cJSON *obj, const char *name, int64_t *out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
	*out = 0;
	if (!v || cJSON_IsNull(v))
		return 0;
	if (cJSON_IsNumber(v)) {
		double d = v->valuedouble;
		if (!isfinite(d) || d != floor(d) || d < -9.2e18 || d > 9.2e18)
			return -EPROTO;
		*out = (int64_t)d;
		return 0;
	}
	if (!cJSON_IsString(v) || !v->valuestring[0])
		return -EPROTO;
	const char *s = v->valuestring;
	char *end;
	errno = 0;
	long long n = strtoll(s, &end, 10);
	if (errno || *end || !(s[0] == '-' || (s[0] >= '0' && s[0] <= '9')))
		return -EPROTO;
	*out = n;
	return 0;
}

bool
kvn_etcd_field_true(const cJSON *obj, const char *name)
{
	return cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(obj, name));
}

/* Decodes a base64 field (absent: empty, the zero value) into a malloc'd NUL-terminated buffer.
 * -EMSGSIZE over max bytes, -EPROTO when it is not base64. */
int
kvn_etcd_field_b64(const cJSON *obj, const char *name, size_t max, char **out, size_t *len)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
	*out = NULL;
	*len = 0;
	if (v && !cJSON_IsString(v))
		return -EPROTO;
	const char *s = v ? v->valuestring : "";
	size_t n = strlen(s);
	/* Checked before decoding: n base64 characters are at least n / 4 * 3 - 2 bytes. */
	if (n / 4 * 3 > max + 2)
		return -EMSGSIZE;
	size_t cap = (n + 3) / 4 * 3 + 1;
	char *p = malloc(cap);
	if (!p)
		return -ENOMEM;
	const char *end = NULL;
	if (n && (sodium_base642bin((unsigned char *)p, cap, s, n, NULL, len, &end,
				    sodium_base64_VARIANT_ORIGINAL) ||
		  end != s + n)) {
		free(p);
		return -EPROTO;
	}
	if (*len > max) {
		free(p);
		return -EMSGSIZE;
	}
	p[*len] = '\0';
	*out = p;
	return 0;
}

/* gRPC status codes (the gateway's "code") as errnos. */
int
kvn_etcd_grpc_errno(int64_t code)
{
	switch (code) {
	case 1: /* Canceled */
		return -ECANCELED;
	case 3: /* InvalidArgument */
		return -EINVAL;
	case 4: /* DeadlineExceeded */
		return -ETIMEDOUT;
	case 5: /* NotFound: a lease */
		return -ENOENT;
	case 6: /* AlreadyExists */
		return -EEXIST;
	case 7:	 /* PermissionDenied */
	case 16: /* Unauthenticated */
		return -EACCES;
	case 8: /* ResourceExhausted: too many requests, the quota */
		return -ENOSPC;
	case 9: /* FailedPrecondition */
		return -EPERM;
	case 11: /* OutOfRange: a compacted revision */
		return -ERANGE;
	case 14: /* Unavailable: no leader */
		return -EAGAIN;
	default:
		return -EPROTO;
	}
}

/* A gateway error ({"error": "...", "code": N, "message": "..."}, or in a stream {"error":
 * {"grpc_code": N, "message": "..."}}): its errno with etcd's message in err, or 0. */
int
kvn_etcd_gw_error(const cJSON *root, char *err, size_t errlen)
{
	const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "error");
	if (!e)
		return 0;
	const cJSON *in = cJSON_IsObject(e) ? e : root;
	const cJSON *m = cJSON_GetObjectItemCaseSensitive(in, "message");
	const char *msg = "(no message)";
	if (cJSON_IsString(m) && m->valuestring[0])
		msg = m->valuestring;
	else if (cJSON_IsString(e) && e->valuestring[0])
		msg = e->valuestring;
	int64_t code = 0;
	if (kvn_etcd_field_i64(in, "code", &code) || !code)
		kvn_etcd_field_i64(in, "grpc_code", &code);
	return kvn_seterr(kvn_etcd_grpc_errno(code), err, errlen, "%s", msg);
}

/* What etcd says when the token we sent is no longer (or not yet) one it knows: a simple token
 * dies with the member that issued it (a restart), and after auth_token_ttl; a call sent without
 * one while auth is on reads "user name is empty". */
bool
kvn_etcd_token_rejected(const char *msg)
{
	return strstr(msg, "invalid auth token") || strstr(msg, "auth store is old") ||
	       strstr(msg, "user name is empty");
}

/* The first JSON value of body (not NUL-terminated; copied, so cJSON never reads past len). */
cJSON *
kvn_etcd_parse_body(const char *body, size_t len)
{
	char *p = malloc(len + 1);
	if (!p)
		return NULL;
	memcpy(p, body, len);
	p[len] = '\0';
	cJSON *j = cJSON_ParseWithLengthOpts(p, len, NULL, 0);
	free(p);
	return j;
}

/* One kv of a range or watch answer into *kv; *key (may be NULL) its key, malloc'd. */
int
kvn_etcd_decode_kv(const cJSON *j, struct kvn_etcd_kv *kv, char **key, char *err, size_t errlen)
{
	if (!cJSON_IsObject(j))
		return kvn_seterr(-EPROTO, err, errlen, "a kv is not a JSON object");
	memset(kv, 0, offsetof(struct kvn_etcd_kv, len));
	char *v;
	size_t n, kn;
	int rc = kvn_etcd_field_b64(j, "value", KVN_ETCD_VALUE_MAX, &v, &n);
	if (rc == -EMSGSIZE)
		return kvn_seterr(rc, err, errlen, "a value over %d bytes", KVN_ETCD_VALUE_MAX);
	if (rc)
		return kvn_seterr(rc, err, errlen, "a kv's value is not base64");
	memcpy(kv->value, v, n + 1);
	kv->len = n;
	free(v);
	if (kvn_etcd_field_i64(j, "create_revision", &kv->create_rev) ||
	    kvn_etcd_field_i64(j, "mod_revision", &kv->mod_rev) ||
	    kvn_etcd_field_i64(j, "lease", &kv->lease))
		return kvn_seterr(-EPROTO, err, errlen, "a kv's revision or lease is not an int64");
	if (key) {
		rc = kvn_etcd_field_b64(j, "key", BODY_MAX, key, &kn);
		if (rc)
			return kvn_seterr(-EPROTO, err, errlen, "a kv's key is not base64");
	}
	return 0;
}

int
kvn_etcd_decode_header_rev(const cJSON *root, int64_t *rev, char *err, size_t errlen)
{
	const cJSON *h = cJSON_GetObjectItemCaseSensitive(root, "header");
	int64_t r = 0;
	if (!cJSON_IsObject(h) || kvn_etcd_field_i64(h, "revision", &r) || r <= 0)
		return kvn_seterr(-EPROTO, err, errlen, "the answer has no header.revision");
	if (rev)
		*rev = r;
	return 0;
}

/* A range answer (parsed): the revision, and the first kv or -ENOENT. */
int
kvn_etcd_decode_range_json(const cJSON *root, struct kvn_etcd_kv *kv, int64_t *rev, char *err,
			   size_t errlen)
{
	if (!cJSON_IsObject(root))
		return kvn_seterr(-EPROTO, err, errlen, "the answer is not a JSON object");
	int rc = kvn_etcd_gw_error(root, err, errlen);
	/* -ENOENT of a range means "no such key, here is the revision": an error etcd never
	 * sends a range (NotFound) must not read as that. */
	if (rc)
		return rc == -ENOENT ? -EPROTO : rc;
	rc = kvn_etcd_decode_header_rev(root, rev, err, errlen);
	if (rc)
		return rc;
	const cJSON *kvs = cJSON_GetObjectItemCaseSensitive(root, "kvs");
	if (kvs && !cJSON_IsArray(kvs))
		return kvn_seterr(-EPROTO, err, errlen, "kvs is not an array");
	if (!cJSON_GetArraySize(kvs))
		return kvn_seterr(-ENOENT, err, errlen, "no such key");
	return kvn_etcd_decode_kv(cJSON_GetArrayItem(kvs, 0), kv, NULL, err, errlen);
}

int
kvn_etcd_decode_range(const char *body, size_t len, struct kvn_etcd_kv *kv, int64_t *rev, char *err,
		      size_t errlen)
{
	if (rev)
		*rev = 0;
	cJSON *root = kvn_etcd_parse_body(body, len);
	if (!root)
		return kvn_seterr(-EPROTO, err, errlen, "the answer (%zu bytes) is not JSON", len);
	int rc = kvn_etcd_decode_range_json(root, kv, rev, err, errlen);
	cJSON_Delete(root);
	return rc;
}

/* ------------------------------------------------------------------------------------------
 * Watch streams: one JSON object per message, each ended by a newline
 * ------------------------------------------------------------------------------------------ */

static int
watch_object(struct watch_state *ws, const cJSON *o)
{
	if (!cJSON_IsObject(o))
		return kvn_seterr(-EPROTO, ws->why, sizeof(ws->why), "a message is not an object");
	int rc = kvn_etcd_gw_error(o, ws->why, sizeof(ws->why));
	if (rc) {
		ws->token_bad = kvn_etcd_token_rejected(ws->why);
		return rc;
	}
	const cJSON *r = cJSON_GetObjectItemCaseSensitive(o, "result");
	if (!cJSON_IsObject(r))
		return kvn_seterr(-EPROTO, ws->why, sizeof(ws->why), "a message has no result");
	if (kvn_etcd_field_true(r, "created"))
		ws->created = true;
	int64_t compact = 0;
	if (kvn_etcd_field_i64(r, "compact_revision", &compact))
		return kvn_seterr(-EPROTO, ws->why, sizeof(ws->why), "bad compact_revision");
	if (compact > 0) {
		/* The start revision was compacted away: the caller reads the key afresh. */
		ws->deleted = false;
		ws->rev = compact;
		return 1;
	}
	if (kvn_etcd_field_true(r, "canceled")) {
		const cJSON *why = cJSON_GetObjectItemCaseSensitive(r, "cancel_reason");
		const char *s =
		    cJSON_IsString(why) && why->valuestring[0] ? why->valuestring : "(no reason)";
		ws->token_bad = kvn_etcd_token_rejected(s);
		return kvn_seterr(ws->token_bad ? -EACCES : -ECANCELED, ws->why, sizeof(ws->why),
				  "watch canceled: %s", s);
	}
	const cJSON *evs = cJSON_GetObjectItemCaseSensitive(r, "events");
	if (evs && !cJSON_IsArray(evs))
		return kvn_seterr(-EPROTO, ws->why, sizeof(ws->why), "events is not an array");
	const cJSON *ev;
	cJSON_ArrayForEach(ev, evs)
	{
		const cJSON *type = cJSON_GetObjectItemCaseSensitive(ev, "type");
		const cJSON *kv = cJSON_GetObjectItemCaseSensitive(ev, "kv");
		int64_t mod = 0;
		/* PUT is the enum's zero value: the gateway leaves "type" out. */
		bool del = cJSON_IsString(type) && !strcmp(type->valuestring, "DELETE");
		if ((type && !del &&
		     !(cJSON_IsString(type) && !strcmp(type->valuestring, "PUT"))) ||
		    !cJSON_IsObject(kv) || kvn_etcd_field_i64(kv, "mod_revision", &mod) || mod <= 0)
			return kvn_seterr(-EPROTO, ws->why, sizeof(ws->why),
					  "an event without a known type or a mod_revision");
		if (mod >= ws->start_rev) {
			ws->deleted = del;
			ws->rev = mod;
			return 1;
		}
	}
	return 0;
}

/* Every JSON object in body[0..len), in order, until an event or an error. */
int
kvn_etcd_watch_decode(struct watch_state *ws, const char *body, size_t len)
{
	char *p = malloc(len + 1);
	if (!p)
		return kvn_seterr(-ENOMEM, ws->why, sizeof(ws->why), "out of memory");
	memcpy(p, body, len);
	p[len] = '\0';
	const char *at = p, *end = p + len;
	int rc = 0;
	while (!rc) {
		while (at < end && (*at == ' ' || *at == '\t' || *at == '\r' || *at == '\n'))
			at++;
		if (at == end)
			break;
		const char *next = NULL;
		cJSON *o = cJSON_ParseWithLengthOpts(at, (size_t)(end - at), &next, 0);
		if (!o) {
			rc = kvn_seterr(-EPROTO, ws->why, sizeof(ws->why),
					"malformed JSON at byte %zu of the watch stream",
					(size_t)(at - p));
			break;
		}
		rc = watch_object(ws, o);
		cJSON_Delete(o);
		at = next > at ? next : end;
	}
	free(p);
	return rc;
}

int
kvn_etcd_decode_watch(const char *body, size_t len, int64_t start_rev, bool *deleted, int64_t *rev,
		      char *err, size_t errlen)
{
	struct watch_state ws = {.start_rev = start_rev};
	int rc = kvn_etcd_watch_decode(&ws, body, len);
	if (rc < 0)
		return kvn_seterr(rc, err, errlen, "%s", ws.why);
	if (rc > 0) {
		*deleted = ws.deleted;
		*rev = ws.rev;
	}
	return rc;
}
