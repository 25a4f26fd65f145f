/* The etcd v3 client (node/cluster/etcd.h) over etcd's JSON gateway: one libcurl easy handle per
 * call (so threads share nothing but the endpoint index and the auth token), bodies built and
 * read with cJSON, keys and values base64 through libsodium. The gateway is grpc-gateway: proto
 * field names, int64 as JSON strings, fields at their zero value left out. */
#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "core/netaddr.h"
#include "node/cluster/etcd.h"
#include "node/cluster/etcd_json.h"

#define DEFAULT_TMO_MS 2000
#define MAX_ENDPOINTS  16

struct kvn_etcd {
	char *eps[MAX_ENDPOINTS];  /* "HOST:PORT" as given */
	char *urls[MAX_ENDPOINTS]; /* "http[s]://HOST:PORT" */
	size_t neps;
	char list[MAX_ENDPOINTS * 64]; /* "a,b,c" for messages naming them all */
	int cur;		       /* the last endpoint that answered (atomic) */
	int timeout_ms;
	char *user, *password, *ca_file, *cert_file, *key_file;
	pthread_mutex_t lock; /* token */
	char *token;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void
curl_init(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ------------------------------------------------------------------------------------------
 * HTTP
 * ------------------------------------------------------------------------------------------ */

struct xfer {
	char *p;
	size_t len, cap;
	bool over;		/* the answer passed BODY_MAX */
	struct watch_state *ws; /* a watch: objects are decoded as they arrive */
	long status;		/* the HTTP status */
};

static size_t
on_data(char *data, size_t size, size_t nmemb, void *arg)
{
	struct xfer *x = arg;
	size_t n = size * nmemb;
	if (n > BODY_MAX - x->len) {
		x->over = true;
		return 0;
	}
	if (x->len + n + 1 > x->cap) {
		size_t cap = x->cap ? x->cap : 4096;
		while (cap < x->len + n + 1)
			cap *= 2;
		char *p = realloc(x->p, cap);
		if (!p) {
			x->over = true;
			return 0;
		}
		x->p = p;
		x->cap = cap;
	}
	memcpy(x->p + x->len, data, n);
	x->len += n;
	x->p[x->len] = '\0';
	if (!x->ws)
		return n;
	/* Decode the whole lines; an unfinished object waits for the rest of its bytes. */
	char *nl = memrchr(x->p, '\n', x->len);
	if (!nl)
		return n;
	size_t whole = (size_t)(nl - x->p) + 1;
	x->ws->rc = kvn_etcd_watch_decode(x->ws, x->p, whole);
	if (x->ws->rc)
		return 0; /* an event or an error: the transfer ends here */
	memmove(x->p, x->p + whole, x->len - whole);
	x->len -= whole;
	return n;
}

static int
curl_errno(CURLcode c)
{
	switch (c) {
	case CURLE_COULDNT_CONNECT:
		return -ECONNREFUSED;
	case CURLE_OPERATION_TIMEDOUT:
		return -ETIMEDOUT;
	case CURLE_COULDNT_RESOLVE_HOST:
		return -EHOSTUNREACH;
	case CURLE_OUT_OF_MEMORY:
		return -ENOMEM;
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
		return -ECONNRESET;
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CACERT_BADFILE:
		return -EPROTO;
	default:
		return -EIO;
	}
}

/* One POST of body to endpoint i. 0: it answered (x->status and x->p); negative: it did not,
 * and why says what libcurl saw (-EMSGSIZE: it answered too much). */
static int
post_once(struct kvn_etcd *e, size_t i, const char *path, const char *body, const char *token,
	  long xfer_ms, long conn_ms, struct xfer *x, char *why, size_t whylen)
{
	CURL *c = curl_easy_init();
	if (!c)
		return kvn_seterr(-ENOMEM, why, whylen, "curl_easy_init failed");
	char url[512], auth[1024], cerr[CURL_ERROR_SIZE] = "";
	snprintf(url, sizeof(url), "%s%s", e->urls[i], path);
	struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
	/* Without this libcurl waits up to a second for "100 Continue" before a body over 1 KiB. */
	h = curl_slist_append(h, "Expect:");
	if (token && *token) {
		snprintf(auth, sizeof(auth), "Authorization: %s", token);
		h = curl_slist_append(h, auth);
	}
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L); /* no SIGALRM for timeouts: we are threaded */
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, xfer_ms > 0 ? xfer_ms : 1L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, conn_ms > 0 ? conn_ms : 1L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
	/* etcd is on the cluster's own network: a proxy from the environment would only be in
	 * the way (and could read the token). */
	curl_easy_setopt(c, CURLOPT_NOPROXY, "*");
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	if (e->ca_file)
		curl_easy_setopt(c, CURLOPT_CAINFO, e->ca_file);
	if (e->cert_file)
		curl_easy_setopt(c, CURLOPT_SSLCERT, e->cert_file);
	if (e->key_file)
		curl_easy_setopt(c, CURLOPT_SSLKEY, e->key_file);
	CURLcode rc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &x->status);
	curl_off_t connected = 0;
	curl_easy_getinfo(c, CURLINFO_CONNECT_TIME_T, &connected);
	curl_easy_cleanup(c);
	curl_slist_free_all(h);
	if (x->over)
		return kvn_seterr(-EMSGSIZE, why, whylen, "the answer is over %u bytes", BODY_MAX);
	if (x->ws && rc == CURLE_WRITE_ERROR && x->ws->rc)
		return 0; /* on_data stopped it: the stream said what we wait for */
	if (x->ws && rc == CURLE_OPERATION_TIMEDOUT && x->ws->created)
		return 0; /* the watch ran its time out: no change */
	if (rc != CURLE_OK)
		return kvn_seterr(curl_errno(rc), why, whylen, "%s",
				  cerr[0] ? cerr : curl_easy_strerror(rc));
	return 0;
}

static char *
token_get(struct kvn_etcd *e)
{
	pthread_mutex_lock(&e->lock);
	char *t = e->token ? strdup(e->token) : NULL;
	pthread_mutex_unlock(&e->lock);
	return t;
}

/* Forgets the token etcd refused, unless another thread has already fetched a new one. */
static void
token_drop(struct kvn_etcd *e, const char *bad)
{
	pthread_mutex_lock(&e->lock);
	if (e->token && bad && !strcmp(e->token, bad)) {
		free(e->token);
		e->token = NULL;
	}
	pthread_mutex_unlock(&e->lock);
}

/* POST /v3/auth/authenticate on endpoint i: a token for user and password, kept in e. 0, or
 * the error (*unreachable: the endpoint did not answer, another one may). */
static int
authenticate(struct kvn_etcd *e, size_t i, long xfer_ms, long conn_ms, bool *unreachable, char *why,
	     size_t whylen)
{
	*unreachable = false;
	cJSON *req = cJSON_CreateObject();
	cJSON_AddStringToObject(req, "name", e->user);
	cJSON_AddStringToObject(req, "password", e->password);
	char *body = cJSON_PrintUnformatted(req);
	cJSON_Delete(req);
	if (!body)
		return kvn_seterr(-ENOMEM, why, whylen, "out of memory");
	struct xfer x = {0};
	int rc =
	    post_once(e, i, "/v3/auth/authenticate", body, NULL, xfer_ms, conn_ms, &x, why, whylen);
	free(body);
	if (rc || x.status >= 500) {
		if (!rc)
			rc = kvn_seterr(-EAGAIN, why, whylen, "authenticate: HTTP %ld", x.status);
		free(x.p);
		*unreachable = rc != -EMSGSIZE;
		return rc;
	}
	cJSON *root = kvn_etcd_parse_body(x.p ? x.p : "", x.len);
	free(x.p);
	char msg[WHY_MAX];
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "token");
	if (!cJSON_IsObject(root))
		rc = kvn_seterr(-EPROTO, why, whylen, "authenticate: HTTP %ld, not JSON", x.status);
	else if (kvn_etcd_gw_error(root, msg, sizeof(msg)))
		rc = kvn_seterr(-EACCES, why, whylen, "authenticate as \"%s\": %s", e->user, msg);
	else if (!cJSON_IsString(t) || !t->valuestring[0] || strlen(t->valuestring) > 512)
		rc = kvn_seterr(-EPROTO, why, whylen, "authenticate: no token in the answer");
	else {
		pthread_mutex_lock(&e->lock);
		free(e->token);
		e->token = strdup(t->valuestring);
		rc = e->token ? 0 : -ENOMEM;
		pthread_mutex_unlock(&e->lock);
	}
	cJSON_Delete(root);
	return rc;
}

/* What a call is, for its messages: "get \"key\"". */
static void
call_name(char *out, size_t n, const char *what, const char *key)
{
	if (key)
		snprintf(out, n, "%s \"%.200s\"", what, key);
	else
		snprintf(out, n, "%s", what);
}

/* POSTs body to path on the endpoints in turn, from the last that answered, until one answers
 * with an HTTP status below 500, within deadline_ms (CLOCK_MONOTONIC ms); each connect gets an
 * equal share of what is left, so that a dead first endpoint leaves time for the others. 0 and
 * x the answer, *ep the endpoint; or the error in err, naming every endpoint tried. */
static int
post(struct kvn_etcd *e, const char *name, const char *path, const char *body, uint64_t deadline_ms,
     int conn_max_ms, struct xfer *x, char **used_token, size_t *ep, char *err, size_t errlen)
{
	char whys[WHY_MAX * 2] = "";
	size_t wl = 0;
	int last = -ETIMEDOUT;
	size_t start = (size_t)__atomic_load_n(&e->cur, __ATOMIC_RELAXED);
	for (size_t k = 0; k < e->neps; k++) {
		size_t i = (start + k) % e->neps;
		uint64_t now = kvn_now_ms();
		if (now >= deadline_ms) {
			if (!k)
				wl +=
				    (size_t)snprintf(whys + wl, sizeof(whys) - wl, "no time left");
			break;
		}
		long left = (long)(deadline_ms - now);
		long conn = left / (long)(e->neps - k);
		if (conn_max_ms > 0 && conn > conn_max_ms)
			conn = conn_max_ms;
		char why[WHY_MAX] = "";
		int rc = 0;
		bool unreachable = false;
		free(*used_token);
		*used_token = token_get(e);
		if (!*used_token && e->user) {
			rc = authenticate(e, i, left, conn, &unreachable, why, sizeof(why));
			if (rc && !unreachable)
				return kvn_seterr(rc, err, errlen, "etcd %s: %s: %s", e->eps[i],
						  name, why);
			*used_token = token_get(e);
		}
		if (!rc) {
			left = (long)(deadline_ms > kvn_now_ms() ? deadline_ms - kvn_now_ms() : 1);
			free(x->p);
			struct watch_state *ws = x->ws;
			*x = (struct xfer){.ws = ws};
			if (ws) /* a stream cut short on the last endpoint left state behind */
				*ws = (struct watch_state){.start_rev = ws->start_rev};
			rc = post_once(e, i, path, body, *used_token, left, conn, x, why,
				       sizeof(why));
			if (rc == -EMSGSIZE)
				return kvn_seterr(rc, err, errlen, "etcd %s: %s: %s", e->eps[i],
						  name, why);
			if (!rc && x->status < 500) {
				__atomic_store_n(&e->cur, (int)i, __ATOMIC_RELAXED);
				*ep = i;
				return 0;
			}
			if (!rc) {
				rc = -EAGAIN;
				snprintf(why, sizeof(why), "HTTP %ld %.200s", x->status,
					 x->p ? x->p : "");
			}
		}
		last = rc;
		if (wl < sizeof(whys))
			wl += (size_t)snprintf(whys + wl, sizeof(whys) - wl, "%s%s: %s",
					       wl ? "; " : "", e->eps[i], why);
	}
	return kvn_seterr(last, err, errlen, "etcd %s: %s: no endpoint answered: %s", e->list, name,
			  whys);
}

/* One request/answer call: req (consumed) posted to path, *out the answer's JSON object (the
 * caller frees it), gateway errors as their errno with etcd's message. A token etcd refuses is
 * fetched again once (with user and password) and the call repeated. */
static int
rpc(struct kvn_etcd *e, const char *what, const char *key, const char *path, cJSON *req,
    cJSON **out, const char **ep, char *err, size_t errlen)
{
	char name[256];
	call_name(name, sizeof(name), what, key);
	*out = NULL;
	char *body = req ? cJSON_PrintUnformatted(req) : NULL;
	cJSON_Delete(req);
	if (!body)
		return kvn_seterr(-ENOMEM, err, errlen, "etcd: %s: out of memory", name);
	uint64_t deadline = kvn_now_ms() + (uint64_t)e->timeout_ms;
	struct xfer x = {0};
	char *tok = NULL;
	int rc;
	for (int attempt = 0;; attempt++) {
		size_t i = 0;
		rc = post(e, name, path, body, deadline, 0, &x, &tok, &i, err, errlen);
		if (rc)
			break;
		cJSON *root = kvn_etcd_parse_body(x.p ? x.p : "", x.len);
		if (!cJSON_IsObject(root)) {
			cJSON_Delete(root);
			rc = kvn_seterr(-EPROTO, err, errlen,
					"etcd %s: %s: HTTP %ld, the answer is not a JSON object: "
					"%.100s",
					e->eps[i], name, x.status, x.p ? x.p : "");
			break;
		}
		char msg[WHY_MAX];
		rc = kvn_etcd_gw_error(root, msg, sizeof(msg));
		if (!rc) {
			*out = root;
			if (ep)
				*ep = e->eps[i];
			break;
		}
		cJSON_Delete(root);
		if (rc == -EACCES || kvn_etcd_token_rejected(msg)) {
			if (e->user && attempt == 0 && kvn_etcd_token_rejected(msg)) {
				token_drop(e, tok);
				continue;
			}
			rc = -EACCES;
		}
		rc = kvn_seterr(rc, err, errlen, "etcd %s: %s: %s", e->eps[i], name, msg);
		break;
	}
	free(tok);
	free(x.p);
	free(body);
	return rc;
}

/* ------------------------------------------------------------------------------------------
 * Requests
 * ------------------------------------------------------------------------------------------ */

/* Adds name: base64 of len bytes of data. false when out of memory. */
static bool
add_b64(cJSON *obj, const char *name, const void *data, size_t len)
{
	size_t n = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL);
	char *b = malloc(n);
	if (!b)
		return false;
	sodium_bin2base64(b, n, data, len, sodium_base64_VARIANT_ORIGINAL);
	bool ok = cJSON_AddStringToObject(obj, name, b) != NULL;
	free(b);
	return ok;
}

static bool
add_i64(cJSON *obj, const char *name, int64_t v)
{
	char s[32];
	snprintf(s, sizeof(s), "%" PRId64, v);
	return cJSON_AddStringToObject(obj, name, s) != NULL;
}

static cJSON *
key_req(const char *key)
{
	cJSON *r = cJSON_CreateObject();
	if (r && !add_b64(r, "key", key, strlen(key))) {
		cJSON_Delete(r);
		r = NULL;
	}
	return r;
}

static int
check_key(const char *what, const char *key, const char *value, char *err, size_t errlen)
{
	if (!key || !*key)
		return kvn_seterr(-EINVAL, err, errlen, "etcd %s: the key is empty", what);
	if (value && strlen(value) > KVN_ETCD_VALUE_MAX)
		return kvn_seterr(-EMSGSIZE, err, errlen,
				  "etcd %s \"%.200s\": a value of %zu bytes, over %d", what, key,
				  strlen(value), KVN_ETCD_VALUE_MAX);
	return 0;
}

int
kvn_etcd_lease_grant(struct kvn_etcd *e, int ttl_s, int64_t *id, char *err, size_t errlen)
{
	if (ttl_s <= 0)
		return kvn_seterr(-EINVAL, err, errlen, "etcd lease grant: TTL %d s is not > 0",
				  ttl_s);
	cJSON *req = cJSON_CreateObject(), *ans;
	cJSON_AddNumberToObject(req, "TTL", ttl_s);
	const char *ep;
	int rc = rpc(e, "lease grant", NULL, "/v3/lease/grant", req, &ans, &ep, err, errlen);
	if (rc)
		return rc;
	if (kvn_etcd_field_i64(ans, "ID", id) || *id == 0)
		rc = kvn_seterr(-EPROTO, err, errlen, "etcd %s: lease grant: no ID in the answer",
				ep);
	cJSON_Delete(ans);
	return rc;
}

int
kvn_etcd_lease_keepalive(struct kvn_etcd *e, int64_t id, int *ttl_s, char *err, size_t errlen)
{
	cJSON *req = cJSON_CreateObject(), *ans;
	add_i64(req, "ID", id);
	char name[64];
	snprintf(name, sizeof(name), "lease keepalive of %" PRId64, id);
	const char *ep;
	int rc = rpc(e, name, NULL, "/v3/lease/keepalive", req, &ans, &ep, err, errlen);
	if (rc)
		return rc;
	/* A stream: the one answer comes as {"result": {...}}. */
	const cJSON *r = cJSON_GetObjectItemCaseSensitive(ans, "result");
	int64_t ttl = 0;
	if (!cJSON_IsObject(r) || kvn_etcd_field_i64(r, "TTL", &ttl))
		rc = kvn_seterr(-EPROTO, err, errlen, "etcd %s: %s: no result in the answer", ep,
				name);
	else if (ttl <= 0)
		rc = kvn_seterr(-ENOENT, err, errlen,
				"etcd %s: %s: the lease is gone (expired or revoked)", ep, name);
	else if (ttl_s)
		*ttl_s = ttl > INT32_MAX ? INT32_MAX : (int)ttl;
	cJSON_Delete(ans);
	return rc;
}

int
kvn_etcd_lease_revoke(struct kvn_etcd *e, int64_t id, char *err, size_t errlen)
{
	cJSON *req = cJSON_CreateObject(), *ans;
	add_i64(req, "ID", id);
	char name[64];
	snprintf(name, sizeof(name), "lease revoke of %" PRId64, id);
	int rc = rpc(e, name, NULL, "/v3/lease/revoke", req, &ans, NULL, err, errlen);
	cJSON_Delete(ans);
	return rc;
}

int
kvn_etcd_get(struct kvn_etcd *e, const char *key, struct kvn_etcd_kv *kv, int64_t *rev, char *err,
	     size_t errlen)
{
	if (rev)
		*rev = 0;
	int rc = check_key("get", key, NULL, err, errlen);
	if (rc)
		return rc;
	cJSON *ans;
	const char *ep;
	rc = rpc(e, "get", key, "/v3/kv/range", key_req(key), &ans, &ep, err, errlen);
	if (rc)
		return rc;
	char why[WHY_MAX];
	rc = kvn_etcd_decode_range_json(ans, kv, rev, why, sizeof(why));
	cJSON_Delete(ans);
	if (rc)
		return kvn_seterr(rc, err, errlen, "etcd %s: get \"%.200s\": %s", ep, key, why);
	return 0;
}

int
kvn_etcd_range_prefix(struct kvn_etcd *e, const char *prefix,
		      int (*fn)(void *ctx, const char *key, const struct kvn_etcd_kv *kv),
		      void *ctx, char *err, size_t errlen)
{
	int rc = check_key("range", prefix, NULL, err, errlen);
	if (rc)
		return rc;
	/* range_end: the prefix with its last byte below 0xff raised by one (etcd's own rule,
	 * clientv3.GetPrefixRangeEnd); all 0xff: "\0", every key from the prefix on. */
	size_t n = strlen(prefix);
	unsigned char *end = malloc(n + 1);
	if (!end)
		return -ENOMEM;
	memcpy(end, prefix, n);
	size_t en = n;
	while (en && end[en - 1] == 0xff)
		en--;
	if (en)
		end[en - 1]++;
	else
		end[en++] = 0;
	cJSON *req = key_req(prefix), *ans;
	bool ok = req && add_b64(req, "range_end", end, en);
	free(end);
	if (!ok) {
		cJSON_Delete(req);
		return -ENOMEM;
	}
	const char *ep;
	rc = rpc(e, "range", prefix, "/v3/kv/range", req, &ans, &ep, err, errlen);
	if (rc)
		return rc;
	const cJSON *kvs = cJSON_GetObjectItemCaseSensitive(ans, "kvs"), *j;
	char why[WHY_MAX] = "";
	if (kvs && !cJSON_IsArray(kvs))
		rc = kvn_seterr(-EPROTO, why, sizeof(why), "kvs is not an array");
	struct kvn_etcd_kv *kv = rc ? NULL : malloc(sizeof(*kv));
	if (!rc && !kv)
		rc = -ENOMEM;
	const cJSON *list = rc ? NULL : kvs;
	cJSON_ArrayForEach(j, list)
	{
		char *k = NULL;
		rc = kvn_etcd_decode_kv(j, kv, &k, why, sizeof(why));
		if (!rc)
			rc = fn(ctx, k, kv);
		free(k);
		if (rc)
			break;
	}
	free(kv);
	cJSON_Delete(ans);
	if (rc && why[0])
		return kvn_seterr(rc, err, errlen, "etcd %s: range \"%.200s\": %s", ep, prefix,
				  why);
	return rc;
}

static cJSON *
put_req(const char *key, const char *value, int64_t lease)
{
	cJSON *r = key_req(key);
	if (r && (!add_b64(r, "value", value, strlen(value)) ||
		  (lease && !add_i64(r, "lease", lease)))) {
		cJSON_Delete(r);
		r = NULL;
	}
	return r;
}

int
kvn_etcd_put(struct kvn_etcd *e, const char *key, const char *value, int64_t lease, char *err,
	     size_t errlen)
{
	int rc = check_key("put", key, value ? value : "", err, errlen);
	if (rc)
		return rc;
	cJSON *ans;
	rc = rpc(e, "put", key, "/v3/kv/put", put_req(key, value ? value : "", lease), &ans, NULL,
		 err, errlen);
	cJSON_Delete(ans);
	return rc;
}

int
kvn_etcd_create(struct kvn_etcd *e, const char *key, const char *value, int64_t lease,
		struct kvn_etcd_kv *cur, char *err, size_t errlen)
{
	int rc = check_key("create", key, value ? value : "", err, errlen);
	if (rc)
		return rc;
	/* Proto field names: the 3.4 gateway takes them as well as the lowerCamel JSON names. */
	cJSON *req = cJSON_CreateObject(), *cmp = key_req(key), *ok = cJSON_CreateObject();
	cJSON *bad = cJSON_CreateObject(), *put = put_req(key, value ? value : "", lease);
	cJSON *get = key_req(key);
	if (!req || !cmp || !ok || !bad || !put || !get) {
		cJSON *all[] = {req, cmp, ok, bad, put, get};
		for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
			cJSON_Delete(all[i]);
		return kvn_seterr(-ENOMEM, err, errlen, "etcd create \"%.200s\": out of memory",
				  key);
	}
	cJSON_AddStringToObject(cmp, "target", "CREATE");
	cJSON_AddStringToObject(cmp, "result", "EQUAL");
	cJSON_AddStringToObject(cmp, "create_revision", "0");
	cJSON_AddItemToObject(ok, "request_put", put);
	cJSON_AddItemToObject(bad, "request_range", get);
	cJSON_AddItemToArray(cJSON_AddArrayToObject(req, "compare"), cmp);
	cJSON_AddItemToArray(cJSON_AddArrayToObject(req, "success"), ok);
	cJSON_AddItemToArray(cJSON_AddArrayToObject(req, "failure"), bad);
	cJSON *ans;
	const char *ep;
	rc = rpc(e, "create", key, "/v3/kv/txn", req, &ans, &ep, err, errlen);
	if (rc)
		return rc;
	if (kvn_etcd_field_true(ans, "succeeded")) {
		cJSON_Delete(ans);
		return 1;
	}
	/* It existed: the failure branch's range tells what it holds. */
	const cJSON *resp =
	    cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(ans, "responses"), 0);
	const cJSON *range = cJSON_GetObjectItemCaseSensitive(resp, "response_range");
	struct kvn_etcd_kv tmp;
	char why[WHY_MAX];
	rc = cJSON_IsObject(range) ? 0 : kvn_seterr(-EPROTO, why, sizeof(why), "no response_range");
	if (!rc) {
		const cJSON *kvs = cJSON_GetObjectItemCaseSensitive(range, "kvs");
		rc = cJSON_GetArraySize(kvs) > 0
			 ? kvn_etcd_decode_kv(cJSON_GetArrayItem(kvs, 0), cur ? cur : &tmp, NULL,
					      why, sizeof(why))
			 : kvn_seterr(-EPROTO, why, sizeof(why),
				      "the compare failed but the key is not there");
	}
	cJSON_Delete(ans);
	if (rc)
		return kvn_seterr(rc, err, errlen, "etcd %s: create \"%.200s\": %s", ep, key, why);
	return 0;
}

int
kvn_etcd_delete(struct kvn_etcd *e, const char *key, char *err, size_t errlen)
{
	int rc = check_key("delete", key, NULL, err, errlen);
	if (rc)
		return rc;
	cJSON *ans;
	rc = rpc(e, "delete", key, "/v3/kv/deleterange", key_req(key), &ans, NULL, err, errlen);
	cJSON_Delete(ans);
	return rc;
}

int
kvn_etcd_watch(struct kvn_etcd *e, const char *key, int64_t start_rev, int timeout_ms,
	       bool *deleted, int64_t *rev, char *err, size_t errlen)
{
	int rc = check_key("watch", key, NULL, err, errlen);
	if (rc)
		return rc;
	if (start_rev <= 0 || timeout_ms < 0)
		return kvn_seterr(-EINVAL, err, errlen,
				  "etcd watch \"%.200s\": start revision %" PRId64
				  " (must be > 0), timeout %d ms",
				  key, start_rev, timeout_ms);
	cJSON *req = cJSON_CreateObject(), *cr = key_req(key);
	if (!req || !cr || !add_i64(cr, "start_revision", start_rev)) {
		cJSON_Delete(req);
		cJSON_Delete(cr);
		return -ENOMEM;
	}
	cJSON_AddItemToObject(req, "create_request", cr);
	char *body = cJSON_PrintUnformatted(req);
	cJSON_Delete(req);
	if (!body)
		return -ENOMEM;
	char name[256];
	call_name(name, sizeof(name), "watch", key);
	/* The stream stays open for timeout_ms; connecting is bounded by the calls' timeout. */
	uint64_t deadline = kvn_now_ms() + (uint64_t)timeout_ms;
	struct watch_state ws;
	struct xfer x = {.ws = &ws};
	char *tok = NULL;
	for (int attempt = 0;; attempt++) {
		ws = (struct watch_state){.start_rev = start_rev};
		size_t i = 0;
		rc = post(e, name, "/v3/watch", body, deadline, e->timeout_ms, &x, &tok, &i, err,
			  errlen);
		if (rc)
			break;
		/* What the stream left unfinished (an answer without the final newline). */
		if (!ws.rc && x.len)
			ws.rc = kvn_etcd_watch_decode(&ws, x.p, x.len);
		rc = ws.rc;
		if (rc < 0 && ws.token_bad && e->user && attempt == 0) {
			token_drop(e, tok);
			continue;
		}
		if (rc < 0)
			rc =
			    kvn_seterr(rc, err, errlen, "etcd %s: %s: %s", e->eps[i], name, ws.why);
		else if (rc == 0 && !ws.created)
			rc = kvn_seterr(-EPROTO, err, errlen,
					"etcd %s: %s: HTTP %ld, the stream ended unconfirmed",
					e->eps[i], name, x.status);
		else if (rc > 0) {
			*deleted = ws.deleted;
			*rev = ws.rev;
		}
		break;
	}
	free(tok);
	free(x.p);
	free(body);
	return rc;
}

/* ------------------------------------------------------------------------------------------
 * Open and close
 * ------------------------------------------------------------------------------------------ */

static int
dup_opt(const char *s, char **out)
{
	*out = NULL;
	if (s && *s && !(*out = strdup(s)))
		return -ENOMEM;
	return 0;
}

static int
check_file(const char *what, const char *path, char *err, size_t errlen)
{
	if (path && *path && access(path, R_OK))
		return kvn_seterr(-errno, err, errlen, "etcd %s \"%s\": %s", what, path,
				  strerror(errno));
	return 0;
}

/* One "[http[s]://]HOST:PORT" of the list into e. */
static int
add_endpoint(struct kvn_etcd *e, const char *text, size_t n, bool tls, char *err, size_t errlen)
{
	char item[KVN_HOST_MAX + 32];
	while (n && (*text == ' ' || *text == '\t')) {
		text++;
		n--;
	}
	while (n && (text[n - 1] == ' ' || text[n - 1] == '\t' || text[n - 1] == '/'))
		n--;
	if (!n)
		return kvn_seterr(-EINVAL, err, errlen, "etcd endpoint %zu is empty", e->neps + 1);
	if (n >= sizeof(item))
		return kvn_seterr(-EINVAL, err, errlen, "etcd endpoint \"%.40s...\" is too long",
				  text);
	if (e->neps == MAX_ENDPOINTS)
		return kvn_seterr(-EINVAL, err, errlen, "etcd endpoints: more than %d",
				  MAX_ENDPOINTS);
	memcpy(item, text, n);
	item[n] = '\0';
	const char *hp = item;
	if (!strncmp(item, "https://", 8)) {
		hp += 8;
		tls = true;
	} else if (!strncmp(item, "http://", 7)) {
		if (tls)
			return kvn_seterr(-EINVAL, err, errlen,
					  "etcd endpoint \"%s\" says http:// but TLS is on", item);
		hp += 7;
	}
	char host[KVN_HOST_MAX], why[256];
	uint16_t port;
	if (kvn_hostport_parse(hp, host, &port, why, sizeof(why)) || !port)
		return kvn_seterr(-EINVAL, err, errlen, "etcd endpoint \"%s\": %s", item,
				  port ? why : "needs a port other than 0");
	size_t un = strlen(hp) + 16;
	e->eps[e->neps] = strdup(hp);
	e->urls[e->neps] = malloc(un);
	if (!e->eps[e->neps] || !e->urls[e->neps])
		return -ENOMEM;
	snprintf(e->urls[e->neps], un, "%s://%s", tls ? "https" : "http", hp);
	size_t ll = strlen(e->list);
	snprintf(e->list + ll, sizeof(e->list) - ll, "%s%s", ll ? "," : "", hp);
	e->neps++;
	return 0;
}

int
kvn_etcd_open(const struct kvn_etcd_opts *opts, struct kvn_etcd **out, char *err, size_t errlen)
{
	*out = NULL;
	if (!opts || !opts->endpoints || !*opts->endpoints)
		return kvn_seterr(-EINVAL, err, errlen,
				  "etcd endpoints are empty: give HOST:PORT[,HOST:PORT...]");
	if (opts->timeout_ms < 0)
		return kvn_seterr(-EINVAL, err, errlen, "etcd timeout %d ms is negative",
				  opts->timeout_ms);
	bool user = opts->user && *opts->user;
	if (user != (opts->password && *opts->password))
		return kvn_seterr(-EINVAL, err, errlen,
				  "etcd auth: a user needs a password and a password a user "
				  "(user \"%s\")",
				  user ? opts->user : "");
	int rc = check_file("ca_file", opts->ca_file, err, errlen);
	if (!rc)
		rc = check_file("cert_file", opts->cert_file, err, errlen);
	if (!rc)
		rc = check_file("key_file", opts->key_file, err, errlen);
	if (rc)
		return rc;
	pthread_once(&curl_once, curl_init);
	if (curl_init_rc != CURLE_OK)
		return kvn_seterr(-EIO, err, errlen, "etcd: curl_global_init: %s",
				  curl_easy_strerror(curl_init_rc));
	struct kvn_etcd *e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	pthread_mutex_init(&e->lock, NULL);
	e->timeout_ms = opts->timeout_ms ? opts->timeout_ms : DEFAULT_TMO_MS;
	bool tls = opts->tls || (opts->ca_file && *opts->ca_file) ||
		   (opts->cert_file && *opts->cert_file) || (opts->key_file && *opts->key_file);
	for (const char *p = opts->endpoints; !rc;) {
		size_t n = strcspn(p, ",");
		rc = add_endpoint(e, p, n, tls, err, errlen);
		if (!p[n])
			break;
		p += n + 1;
	}
	if (!rc &&
	    (dup_opt(opts->user, &e->user) || dup_opt(opts->password, &e->password) ||
	     dup_opt(opts->token, &e->token) || dup_opt(opts->ca_file, &e->ca_file) ||
	     dup_opt(opts->cert_file, &e->cert_file) || dup_opt(opts->key_file, &e->key_file)))
		rc = -ENOMEM;
	if (rc) {
		if (rc == -ENOMEM)
			kvn_seterr(rc, err, errlen, "etcd: out of memory");
		kvn_etcd_close(e);
		return rc;
	}
	*out = e;
	return 0;
}

void
kvn_etcd_close(struct kvn_etcd *e)
{
	if (!e)
		return;
	for (size_t i = 0; i < MAX_ENDPOINTS; i++) {
		free(e->eps[i]);
		free(e->urls[i]);
	}
	if (e->password)
		sodium_memzero(e->password, strlen(e->password));
	free(e->user);
	free(e->password);
	free(e->token);
	free(e->ca_file);
	free(e->cert_file);
	free(e->key_file);
	pthread_mutex_destroy(&e->lock);
	free(e);
}

const char *
kvn_etcd_endpoint(const struct kvn_etcd *e)
{
	return e->eps[__atomic_load_n(&e->cur, __ATOMIC_RELAXED)];
}
