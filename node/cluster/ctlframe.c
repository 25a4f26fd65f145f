/* Control frame codec between nodes and the scheduler (node/cluster/ctlframe.h): header, caps per
 * frame type, builders and validating decoders. A decoder never trusts a count it has not
 * checked against the body length. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <sodium.h>

#include "core/auth.h"
#include "node/cluster/ctlframe.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/utf8.h"

/* ------------------------------------------------------------------------------------------
 * Header
 * ------------------------------------------------------------------------------------------ */

const char *
kvn_cf_type_name(unsigned type)
{
	switch (type) {
	case KVN_CF_JOIN:
		return "JOIN";
	case KVN_CF_HEARTBEAT:
		return "HEARTBEAT";
	case KVN_CF_PUBLISH:
		return "PUBLISH";
	case KVN_CF_LOOKUP:
		return "LOOKUP";
	case KVN_CF_STATS:
		return "STATS";
	case KVN_CF_LEAVE:
		return "LEAVE";
	case KVN_CF_JOIN_OK:
		return "JOIN_OK";
	case KVN_CF_HEARTBEAT_ACK:
		return "HEARTBEAT_ACK";
	case KVN_CF_LOOKUP_REPLY:
		return "LOOKUP_REPLY";
	case KVN_CF_STATS_REPLY:
		return "STATS_REPLY";
	case KVN_CF_ERROR:
		return "ERROR";
	case KVN_CF_MEMBER:
		return "MEMBER";
	case KVN_CF_EVICTED:
		return "EVICTED";
	case KVN_CF_HELLO:
		return "HELLO";
	case KVN_CF_CHALLENGE:
		return "CHALLENGE";
	}
	return "?";
}

uint32_t
kvn_cf_body_max(unsigned type)
{
	switch (type) {
	case KVN_CF_JOIN:
	case KVN_CF_MEMBER:
		return 4 + KVN_CF_JSON_MAX + KVN_CF_BLOB_MAX;
	case KVN_CF_HEARTBEAT:
	case KVN_CF_LEAVE:
		return 0;
	case KVN_CF_PUBLISH:
		return 8 + KVN_CF_PUBLISH_MAX * KVN_CF_PUB_REC;
	case KVN_CF_LOOKUP:
		return 8 + KVN_CF_LOOKUP_MAX * 16;
	case KVN_CF_STATS:
	case KVN_CF_JOIN_OK:
	case KVN_CF_ERROR:
		return KVN_CF_JSON_MAX;
	case KVN_CF_HEARTBEAT_ACK:
		return 16;
	case KVN_CF_LOOKUP_REPLY:
		return 8 + KVN_CF_LOOKUP_MAX * (4 + KVN_CF_LOCS_MAX * KVN_CF_LOC_SIZE);
	case KVN_CF_STATS_REPLY:
		return KVN_CF_STATS_MAX;
	case KVN_CF_EVICTED:
		return 8 + KVN_CF_EVICT_MAX * 16;
	case KVN_CF_HELLO:
		return 16;
	case KVN_CF_CHALLENGE:
		return KVN_CF_CHALLENGE_SIZE;
	}
	return 0;
}

static void
le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

static void
le64(uint8_t *p, uint64_t v)
{
	le32(p, (uint32_t)v);
	le32(p + 4, (uint32_t)(v >> 32));
}

void
kvn_cf_hdr_encode(const struct kvn_cf_hdr *h, uint8_t out[KVN_CF_HDR_SIZE])
{
	le32(out, KVN_CF_MAGIC);
	out[4] = h->version;
	out[5] = h->type;
	out[6] = (uint8_t)h->flags;
	out[7] = (uint8_t)(h->flags >> 8);
	le32(out + 8, h->seq);
	le32(out + 12, h->len);
}

int
kvn_cf_hdr_decode(const uint8_t in[KVN_CF_HDR_SIZE], struct kvn_cf_hdr *h, char *err, size_t errlen)
{
	uint32_t magic = kvn_cf_get_u32(in);
	h->version = in[4];
	h->type = in[5];
	h->flags = (uint16_t)(in[6] | in[7] << 8);
	h->seq = kvn_cf_get_u32(in + 8);
	h->len = kvn_cf_get_u32(in + 12);
	if (magic != KVN_CF_MAGIC) {
		return kvn_seterr(-EPROTO, err, errlen,
				  "bad frame magic 0x%08x (expected 0x%08x): not a kvnode control "
				  "connection",
				  magic, KVN_CF_MAGIC);
	}
	if (h->version != KVN_CF_VERSION) {
		return kvn_seterr(-EPROTO, err, errlen,
				  "control protocol version %u, this build speaks %u: run the same "
				  "kvnode version on nodes and scheduler",
				  h->version, KVN_CF_VERSION);
	}
	uint32_t max = kvn_cf_body_max(h->type);
	if (!strcmp(kvn_cf_type_name(h->type), "?")) {
		return kvn_seterr(-EPROTO, err, errlen, "unknown frame type %u", h->type);
	}
	if (h->flags) {
		return kvn_seterr(-EPROTO, err, errlen,
				  "%s frame has flags 0x%x set (none are defined)",
				  kvn_cf_type_name(h->type), h->flags);
	}
	if (h->len > max) {
		return kvn_seterr(-EMSGSIZE, err, errlen,
				  "%s frame body of %u bytes exceeds its cap of %u bytes",
				  kvn_cf_type_name(h->type), h->len, max);
	}
	return 0;
}

/* ------------------------------------------------------------------------------------------
 * Building
 * ------------------------------------------------------------------------------------------ */

void
kvn_cf_buf_free(struct kvn_cf_buf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

void
kvn_cf_buf_reset(struct kvn_cf_buf *b)
{
	b->len = 0;
	b->frame = 0;
	b->err = 0;
}

uint8_t *
kvn_cf_buf_room(struct kvn_cf_buf *b, size_t n)
{
	if (b->err)
		return NULL;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n)
			cap *= 2;
		uint8_t *p = realloc(b->p, cap);
		if (!p) {
			b->err = -ENOMEM;
			return NULL;
		}
		b->p = p;
		b->cap = cap;
	}
	return b->p + b->len;
}

void
kvn_cf_put_u32(struct kvn_cf_buf *b, uint32_t v)
{
	uint8_t *p = kvn_cf_buf_room(b, 4);
	if (p) {
		le32(p, v);
		b->len += 4;
	}
}

void
kvn_cf_put_u64(struct kvn_cf_buf *b, uint64_t v)
{
	uint8_t *p = kvn_cf_buf_room(b, 8);
	if (p) {
		le64(p, v);
		b->len += 8;
	}
}

void
kvn_cf_put_bytes(struct kvn_cf_buf *b, const void *src, size_t n)
{
	/* Nothing to add: an empty buffer has no memory yet, and NULL + 0 is undefined. */
	if (!n)
		return;
	uint8_t *p = kvn_cf_buf_room(b, n);
	if (p) {
		memcpy(p, src, n);
		b->len += n;
	}
}

void
kvn_cf_begin(struct kvn_cf_buf *b, enum kvn_cf_type type, uint32_t seq)
{
	b->frame = b->len;
	uint8_t *p = kvn_cf_buf_room(b, KVN_CF_HDR_SIZE);
	if (!p)
		return;
	/* Type and seq now, length at the end. */
	struct kvn_cf_hdr h = {.version = KVN_CF_VERSION, .type = (uint8_t)type, .seq = seq};
	kvn_cf_hdr_encode(&h, p);
	b->len += KVN_CF_HDR_SIZE;
}

int
kvn_cf_end(struct kvn_cf_buf *b)
{
	if (b->err) {
		b->len = b->frame;
		return b->err;
	}
	size_t body = b->len - b->frame - KVN_CF_HDR_SIZE;
	uint8_t *h = b->p + b->frame;
	if (body > kvn_cf_body_max(h[5])) {
		b->len = b->frame;
		return -EMSGSIZE;
	}
	le32(h + 12, (uint32_t)body);
	return 0;
}

/* ------------------------------------------------------------------------------------------
 * JSON bodies
 * ------------------------------------------------------------------------------------------ */

int
kvn_cf_put_json_frame(struct kvn_cf_buf *b, enum kvn_cf_type type, uint32_t seq, const char *json,
		      const void *blob, size_t blob_len)
{
	size_t jl = strlen(json);
	bool with_blob = type == KVN_CF_JOIN || type == KVN_CF_MEMBER;
	if (jl > KVN_CF_JSON_MAX || blob_len > KVN_CF_BLOB_MAX || (blob_len && !with_blob))
		return -EMSGSIZE;
	kvn_cf_begin(b, type, seq);
	if (with_blob)
		kvn_cf_put_u32(b, (uint32_t)jl);
	kvn_cf_put_bytes(b, json, jl);
	if (with_blob)
		kvn_cf_put_bytes(b, blob, blob_len);
	return kvn_cf_end(b);
}

int
kvn_cf_split_json_blob(const uint8_t *body, uint32_t len, const char **json, size_t *json_len,
		       const uint8_t **blob, size_t *blob_len, char *err, size_t errlen)
{
	if (len < 4)
		return kvn_seterr(-EPROTO, err, errlen,
				  "body of %u bytes is too short for its JSON length", len);
	uint32_t jl = kvn_cf_get_u32(body);
	if (jl == 0 || jl > KVN_CF_JSON_MAX || jl > len - 4)
		return kvn_seterr(-EPROTO, err, errlen,
				  "JSON length %u does not fit the %u-byte body (cap %u)", jl, len,
				  KVN_CF_JSON_MAX);
	if (len - 4 - jl > KVN_CF_BLOB_MAX)
		return kvn_seterr(-EPROTO, err, errlen,
				  "region blob of %u bytes exceeds the cap of %u", len - 4 - jl,
				  KVN_CF_BLOB_MAX);
	*json = (const char *)body + 4;
	*json_len = jl;
	*blob = body + 4 + jl;
	*blob_len = len - 4 - jl;
	return 0;
}

/* ------------------------------------------------------------------------------------------
 * PUBLISH
 * ------------------------------------------------------------------------------------------ */

void
kvn_cf_put_pub(struct kvn_cf_buf *b, const struct kvn_cf_pub *r)
{
	uint8_t *p = kvn_cf_buf_room(b, KVN_CF_PUB_REC);
	if (!p)
		return;
	p[0] = r->op;
	p[1] = p[2] = p[3] = 0;
	le32(p + 4, r->loc.rkey);
	le64(p + 8, r->digest.lo);
	le64(p + 16, r->digest.hi);
	le64(p + 24, r->loc.addr);
	le64(p + 32, r->loc.len);
	le64(p + 40, r->loc.generation);
	b->len += KVN_CF_PUB_REC;
}

void
kvn_cf_publish_rec(const uint8_t *body, uint32_t i, struct kvn_cf_pub *r)
{
	const uint8_t *p = body + 8 + (size_t)i * KVN_CF_PUB_REC;
	r->op = p[0];
	r->loc.worker_id = 0;
	r->loc.rkey = kvn_cf_get_u32(p + 4);
	r->digest.lo = kvn_cf_get_u64(p + 8);
	r->digest.hi = kvn_cf_get_u64(p + 16);
	r->loc.addr = kvn_cf_get_u64(p + 24);
	r->loc.len = kvn_cf_get_u64(p + 32);
	r->loc.generation = kvn_cf_get_u64(p + 40);
}

int
kvn_cf_publish_check(const uint8_t *body, uint32_t len, uint32_t *count, char *err, size_t errlen)
{
	if (len < 8)
		return kvn_seterr(-EPROTO, err, errlen, "PUBLISH body of %u bytes has no count",
				  len);
	uint32_t n = kvn_cf_get_u32(body);
	if (n > KVN_CF_PUBLISH_MAX || kvn_cf_get_u32(body + 4) ||
	    (uint64_t)n * KVN_CF_PUB_REC + 8 != len)
		return kvn_seterr(-EPROTO, err, errlen,
				  "PUBLISH count %u does not match its %u-byte body (cap %u "
				  "records, reserved must be 0)",
				  n, len, KVN_CF_PUBLISH_MAX);
	for (uint32_t i = 0; i < n; i++) {
		const uint8_t *p = body + 8 + (size_t)i * KVN_CF_PUB_REC;
		struct kvn_cf_pub r;
		kvn_cf_publish_rec(body, i, &r);
		if ((r.op != KVN_CF_ADMIT && r.op != KVN_CF_EVICT) || p[1] || p[2] || p[3])
			return kvn_seterr(-EPROTO, err, errlen,
					  "PUBLISH record %u: bad op %u or padding", i, r.op);
		if (r.op == KVN_CF_ADMIT &&
		    (!r.loc.len || !r.loc.generation || (r.loc.generation & 1) ||
		     r.loc.addr + r.loc.len < r.loc.addr))
			return kvn_seterr(
			    -EPROTO, err, errlen,
			    "PUBLISH record %u: admit needs len > 0, an even non-zero "
			    "generation and a range that does not wrap (len %llu "
			    "generation %llu)",
			    i, (unsigned long long)r.loc.len, (unsigned long long)r.loc.generation);
	}
	*count = n;
	return 0;
}

/* ------------------------------------------------------------------------------------------
 * LOOKUP
 * ------------------------------------------------------------------------------------------ */

int
kvn_cf_lookup_check(const uint8_t *body, uint32_t len, uint32_t *count, uint32_t *max_locs,
		    char *err, size_t errlen)
{
	if (len < 8)
		return kvn_seterr(-EPROTO, err, errlen, "LOOKUP body of %u bytes has no count",
				  len);
	uint32_t n = kvn_cf_get_u32(body), ml = kvn_cf_get_u32(body + 4);
	if (n == 0 || n > KVN_CF_LOOKUP_MAX || (uint64_t)n * 16 + 8 != len)
		return kvn_seterr(-EPROTO, err, errlen,
				  "LOOKUP count %u does not match its %u-byte body (1..%u keys)", n,
				  len, KVN_CF_LOOKUP_MAX);
	if (ml == 0 || ml > KVN_CF_LOCS_MAX)
		return kvn_seterr(-EPROTO, err, errlen,
				  "LOOKUP asks for %u locations per key (1..%u)", ml,
				  KVN_CF_LOCS_MAX);
	*count = n;
	*max_locs = ml;
	return 0;
}

struct kvn_digest
kvn_cf_lookup_key(const uint8_t *body, uint32_t i)
{
	const uint8_t *p = body + 8 + (size_t)i * 16;
	return (struct kvn_digest){.lo = kvn_cf_get_u64(p), .hi = kvn_cf_get_u64(p + 8)};
}

void
kvn_cf_put_loc(struct kvn_cf_buf *b, const struct kvn_loc *l)
{
	uint8_t *p = kvn_cf_buf_room(b, KVN_CF_LOC_SIZE);
	if (!p)
		return;
	le32(p, l->worker_id);
	le32(p + 4, l->rkey);
	le64(p + 8, l->addr);
	le64(p + 16, l->len);
	le64(p + 24, l->generation);
	b->len += KVN_CF_LOC_SIZE;
}

int
kvn_cf_lookup_reply_decode(const uint8_t *body, uint32_t len, uint32_t count, uint32_t max_locs,
			   uint32_t *nloc, struct kvn_loc *locs, char *err, size_t errlen)
{
	if (len < 8 || kvn_cf_get_u32(body) != count)
		return kvn_seterr(-EPROTO, err, errlen,
				  "LOOKUP_REPLY answers %u keys, the request asked for %u",
				  len < 8 ? 0 : kvn_cf_get_u32(body), count);
	size_t off = 8;
	for (uint32_t i = 0; i < count; i++) {
		if (len - off < 4)
			return kvn_seterr(-EPROTO, err, errlen, "LOOKUP_REPLY truncated at key %u",
					  i);
		uint32_t k = kvn_cf_get_u32(body + off);
		off += 4;
		if (k > max_locs || (uint64_t)k * KVN_CF_LOC_SIZE > len - off)
			return kvn_seterr(-EPROTO, err, errlen,
					  "LOOKUP_REPLY key %u: %u locations (asked for at most "
					  "%u) do not fit the body",
					  i, k, max_locs);
		nloc[i] = k;
		for (uint32_t j = 0; j < k; j++, off += KVN_CF_LOC_SIZE) {
			const uint8_t *p = body + off;
			struct kvn_loc *l = &locs[(size_t)i * max_locs + j];
			l->worker_id = kvn_cf_get_u32(p);
			l->rkey = kvn_cf_get_u32(p + 4);
			l->addr = kvn_cf_get_u64(p + 8);
			l->len = kvn_cf_get_u64(p + 16);
			l->generation = kvn_cf_get_u64(p + 24);
		}
	}
	if (off != len)
		return kvn_seterr(-EPROTO, err, errlen,
				  "LOOKUP_REPLY has %zu bytes after its last key", len - off);
	return 0;
}

int
kvn_cf_evicted_check(const uint8_t *body, uint32_t len, uint32_t *worker_id, uint32_t *count,
		     char *err, size_t errlen)
{
	if (len < 8)
		return kvn_seterr(-EPROTO, err, errlen, "EVICTED body of %u bytes has no count",
				  len);
	uint32_t n = kvn_cf_get_u32(body + 4);
	if (n > KVN_CF_EVICT_MAX || (uint64_t)n * 16 + 8 != len)
		return kvn_seterr(-EPROTO, err, errlen,
				  "EVICTED count %u does not match its %u-byte body", n, len);
	*worker_id = kvn_cf_get_u32(body);
	*count = n;
	return 0;
}

/* ------------------------------------------------------------------------------------------
 * Frame I/O
 * ------------------------------------------------------------------------------------------ */

void
kvn_cf_rx_free(struct kvn_cf_rx *r)
{
	free(r->p);
	memset(r, 0, sizeof(*r));
}

int
kvn_cf_rx_fill(struct kvn_cf_rx *r, int fd)
{
	if (r->cap - r->len < 4096) {
		size_t cap = r->cap ? r->cap * 2 : 65536;
		uint8_t *p = realloc(r->p, cap);
		if (!p)
			return -ENOMEM;
		r->p = p;
		r->cap = cap;
	}
	ssize_t n = recv(fd, r->p + r->len, r->cap - r->len, MSG_DONTWAIT);
	if (n > 0) {
		r->len += (size_t)n;
		return 0;
	}
	if (n == 0)
		return -ECONNRESET;
	return errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK ? -EAGAIN : -errno;
}

int
kvn_cf_rx_frame(struct kvn_cf_rx *r, struct kvn_cf_hdr *h, const uint8_t **body, char *err,
		size_t errlen)
{
	if (r->len < KVN_CF_HDR_SIZE)
		return 0;
	int rc = kvn_cf_hdr_decode(r->p, h, err, errlen);
	if (rc)
		return -EPROTO;
	if (r->len < KVN_CF_HDR_SIZE + (size_t)h->len)
		return 0;
	*body = r->p + KVN_CF_HDR_SIZE;
	return 1;
}

void
kvn_cf_rx_consume(struct kvn_cf_rx *r, const struct kvn_cf_hdr *h)
{
	size_t n = KVN_CF_HDR_SIZE + (size_t)h->len;
	memmove(r->p, r->p + n, r->len - n);
	r->len -= n;
}

int
kvn_cf_rx_wait(struct kvn_cf_rx *r, int fd, int timeout_ms, struct kvn_cf_hdr *h,
	       const uint8_t **body, char *err, size_t errlen)
{
	int64_t deadline = ((int64_t)kvn_now_ms()) + timeout_ms;
	for (;;) {
		int rc = kvn_cf_rx_frame(r, h, body, err, errlen);
		if (rc)
			return rc < 0 ? rc : 0;
		int64_t left = timeout_ms < 0 ? -1 : deadline - ((int64_t)kvn_now_ms());
		if (timeout_ms >= 0 && left <= 0)
			return kvn_seterr(-ETIMEDOUT, err, errlen, "no reply within %d ms",
					  timeout_ms);
		struct pollfd pf = {.fd = fd, .events = POLLIN};
		if (poll(&pf, 1, (int)left) < 0 && errno != EINTR)
			return -errno;
		rc = kvn_cf_rx_fill(r, fd);
		if (rc == -ECONNRESET)
			return kvn_seterr(rc, err, errlen, "the scheduler closed the connection");
		if (rc && rc != -EAGAIN)
			return kvn_seterr(rc, err, errlen, "%s", strerror(-rc));
	}
}

int
kvn_cf_send_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n > 0) {
			p += n;
			len -= (size_t)n;
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else {
			return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) ? -ETIMEDOUT
										  : -errno;
		}
	}
	return 0;
}

void
kvn_cf_error_text(const uint8_t *body, uint32_t len, char *out, size_t cap)
{
	kvn_cf_error_decode(body, len, out, cap);
}

/* ------------------------------------------------------------------------------------------
 * ERROR frames, names
 * ------------------------------------------------------------------------------------------ */

int
kvn_cf_put_error(struct kvn_cf_buf *b, uint32_t seq, int code, const char *msg)
{
	/* Messages may quote what a peer sent: only printable, valid UTF-8 goes out. */
	char clean[1024];
	size_t n = strlen(msg), o = 0;
	for (size_t i = 0; i < n && o + 5 < sizeof(clean);) {
		uint32_t cp;
		size_t l = kvn_utf8_decode((const unsigned char *)msg + i, n - i, &cp);
		if (!l || cp < 0x20 || (cp >= 0x7f && cp < 0xa0)) {
			clean[o++] = '?';
			i++;
			continue;
		}
		memcpy(clean + o, msg + i, l);
		o += l;
		i += l;
	}
	clean[o] = '\0';
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "error", clean);
	cJSON_AddNumberToObject(j, "code", code < 0 ? -code : code);
	char *text = cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	int rc = text ? kvn_cf_put_json_frame(b, KVN_CF_ERROR, seq, text, NULL, 0) : -ENOMEM;
	free(text);
	return rc;
}

int
kvn_cf_error_decode(const uint8_t *body, uint32_t len, char *out, size_t cap)
{
	cJSON *j = cJSON_ParseWithLength((const char *)body, len);
	const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
	const cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "code");
	snprintf(out, cap, "%s", cJSON_IsString(e) ? e->valuestring : "(no message)");
	int code = -EPROTO;
	if (cJSON_IsNumber(c) && c->valuedouble >= 1 && c->valuedouble < 4096 &&
	    c->valuedouble == (double)(int)c->valuedouble)
		code = -(int)c->valuedouble;
	cJSON_Delete(j);
	return code;
}

int
kvn_cf_name_check(const char *name, char *err, size_t errlen)
{
	size_t n = strlen(name);
	if (n == 0 || n > KVN_CF_NAME_MAX)
		return kvn_seterr(-EINVAL, err, errlen,
				  "a node name of %zu bytes: names are " KVN_CF_NAME_RULE, n);
	for (size_t i = 0; i < n;) {
		const unsigned char *p = (const unsigned char *)name + i;
		uint32_t cp;
		size_t l = kvn_utf8_decode(p, n - i, &cp);
		if (!l)
			return kvn_seterr(-EINVAL, err, errlen,
					  "byte %zu of the node name (0x%02x) is not valid UTF-8: "
					  "names are " KVN_CF_NAME_RULE,
					  i, p[0]);
		bool ok = cp < 0x80
			      ? (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') ||
				    (cp >= '0' && cp <= '9') || cp == '-' || cp == '_' || cp == '.'
			      : cp >= 0xa0 && cp != 0x2028 && cp != 0x2029;
		if (!ok)
			return kvn_seterr(-EINVAL, err, errlen,
					  "the node name's character U+%04X at byte %zu is not "
					  "allowed: names are " KVN_CF_NAME_RULE,
					  (unsigned)cp, i);
		i += l;
	}
	return 0;
}

int
kvn_cf_client_auth(int fd, struct kvn_cf_rx *r, const struct kvn_auth *a, int timeout_ms,
		   char proof[KVN_CF_PROOF_HEX], char *err, size_t errlen)
{
	uint8_t nonce_c[KVN_AUTH_NONCE];
	proof[0] = '\0';
	kvn_auth_nonce(nonce_c);
	struct kvn_cf_buf b = {0};
	kvn_cf_begin(&b, KVN_CF_HELLO, 0);
	kvn_cf_put_bytes(&b, nonce_c, sizeof(nonce_c));
	int rc = kvn_cf_end(&b);
	if (!rc)
		rc = kvn_cf_send_all(fd, b.p, b.len);
	kvn_cf_buf_free(&b);
	if (rc) {
		return kvn_seterr(rc, err, errlen, "sending HELLO: %s", kvn_strerror(rc));
	}
	struct kvn_cf_hdr h;
	const uint8_t *body;
	char why[256];
	if ((rc = kvn_cf_rx_wait(r, fd, timeout_ms, &h, &body, why, sizeof(why)))) {
		return kvn_seterr(rc, err, errlen, "waiting for CHALLENGE: %s", why);
	}
	if (h.type == KVN_CF_ERROR) {
		rc = kvn_cf_error_decode(body, h.len, why, sizeof(why));
		return kvn_seterr(rc, err, errlen, "refused: %s", why);
	}
	if (h.type != KVN_CF_CHALLENGE || h.len != KVN_CF_CHALLENGE_SIZE) {
		return kvn_seterr(
		    -EPROTO, err, errlen,
		    "answered HELLO with %s, not a CHALLENGE: an older scheduler (upgrade "
		    "it to this node's version)",
		    kvn_cf_type_name(h.type));
	}
	const uint8_t *nonce_s = body;
	uint32_t flags = kvn_cf_get_u32(body + 16);
	const struct kvn_auth_part sched[] = {{nonce_c, KVN_AUTH_NONCE},
					      {nonce_s, KVN_AUTH_NONCE}};
	if (a->set && (!(flags & KVN_CF_F_TOKEN) ||
		       !kvn_auth_verify(a, KVN_CF_SCHED_LABEL, sched, 2, body + 20, KVN_AUTH_MAC))) {
		kvn_cf_rx_consume(r, &h);
		return kvn_seterr(
		    -EACCES, err, errlen,
		    "did not prove this node's auth_token (it has another token or none: "
		    "another cluster, or not a kvnode scheduler); set the same auth_token "
		    "on nodes and scheduler");
	}
	if (a->set) {
		const struct kvn_auth_part node[] = {{nonce_s, KVN_AUTH_NONCE},
						     {nonce_c, KVN_AUTH_NONCE}};
		uint8_t mac[KVN_AUTH_MAC];
		kvn_auth_mac(a, KVN_CF_NODE_LABEL, node, 2, mac);
		sodium_bin2hex(proof, KVN_CF_PROOF_HEX, mac, sizeof(mac));
	}
	kvn_cf_rx_consume(r, &h);
	return 0;
}
