/* The client protocol's codec (client/proto.h). */
#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/le.h"
#include "client/proto.h"
#include "core/log.h"
#include "kvnode/kvnode.h"

static const char *const op_names[KVN_CP_NOPS] = {
    [KVN_CP_HELLO] = "HELLO",	    [KVN_CP_GET] = "GET",	  [KVN_CP_RESERVE] = "RESERVE",
    [KVN_CP_COMMIT] = "COMMIT",	    [KVN_CP_RELEASE] = "RELEASE", [KVN_CP_REMOVE] = "REMOVE",
    [KVN_CP_CONTAINS] = "CONTAINS", [KVN_CP_PING] = "PING",	  [KVN_CP_LIST] = "LIST",
};

/* The flags each op's requests may carry, and its replies. */
static const uint16_t op_flags[KVN_CP_NOPS] = {
    [KVN_CP_COMMIT] = KVN_CP_F_ABORT,
    [KVN_CP_CONTAINS] = KVN_CP_F_PREFIX,
};
static const uint16_t reply_flags[KVN_CP_NOPS] = {
    [KVN_CP_LIST] = KVN_CP_F_MORE,
};

unsigned
kvn_cp_op_minor(unsigned op)
{
	return op == KVN_CP_LIST ? 1 : 0;
}

const char *
kvn_cp_op_name(unsigned op)
{
	return op < KVN_CP_NOPS && op_names[op] ? op_names[op] : "?";
}

void
kvn_cp_hdr_encode(const struct kvn_cp_hdr *h, uint8_t out[KVN_CP_HDR_SIZE])
{
	kvn_le_put32(out, h->magic);
	kvn_le_put16(out + 4, h->op);
	kvn_le_put16(out + 6, h->flags);
	kvn_le_put32(out + 8, h->count);
	kvn_le_put32(out + 12, (uint32_t)h->status);
	kvn_le_put64(out + 16, h->id);
	kvn_le_put64(out + 24, h->body_len);
}

void
kvn_cp_hdr_decode(const uint8_t in[KVN_CP_HDR_SIZE], struct kvn_cp_hdr *h)
{
	h->magic = kvn_le_get32(in);
	h->op = kvn_le_get16(in + 4);
	h->flags = kvn_le_get16(in + 6);
	h->count = kvn_le_get32(in + 8);
	h->status = (int32_t)kvn_le_get32(in + 12);
	h->id = kvn_le_get64(in + 16);
	h->body_len = kvn_le_get64(in + 24);
}

int
kvn_cp_hdr_validate(const struct kvn_cp_hdr *h, bool reply, char *err, size_t errlen)
{
	uint32_t magic = reply ? KVN_CP_REPLY_MAGIC : KVN_CP_REQ_MAGIC;
	if (h->magic != magic)
		return kvn_seterr(
		    -EPROTO, err, errlen, "bad %s magic 0x%08x (expected 0x%08x): not a kvnode %s?",
		    reply ? "reply" : "request", h->magic, magic, reply ? "node" : "client");
	if (h->op == 0 || h->op >= KVN_CP_NOPS)
		return kvn_seterr(-EPROTO, err, errlen, "unknown op %u", h->op);
	uint16_t flags = reply ? reply_flags[h->op] : op_flags[h->op];
	if (h->flags & ~flags)
		return kvn_seterr(-EPROTO, err, errlen, "%s %s with unknown flags 0x%x",
				  kvn_cp_op_name(h->op), reply ? "reply" : "request",
				  h->flags & ~flags);
	if (h->count > KVN_CP_BATCH_MAX)
		return kvn_seterr(-EPROTO, err, errlen, "%s of %u entries (at most %u)",
				  kvn_cp_op_name(h->op), h->count, KVN_CP_BATCH_MAX);
	if (h->body_len > KVN_CP_BODY_MAX)
		return kvn_seterr(-EPROTO, err, errlen, "%s body of %llu bytes (at most %u)",
				  kvn_cp_op_name(h->op), (unsigned long long)h->body_len,
				  KVN_CP_BODY_MAX);
	if (reply ? (h->status > 0 || h->status < -4095) : h->status != 0)
		return kvn_seterr(-EPROTO, err, errlen, "%s with status %d", kvn_cp_op_name(h->op),
				  h->status);
	return 0;
}

void
kvn_cp_hello_ok_encode(const struct kvn_cp_hello_ok *o, uint8_t out[KVN_CP_HELLO_OK_SIZE])
{
	kvn_le_put16(out, o->major);
	kvn_le_put16(out + 2, o->minor);
	kvn_le_put32(out + 4, o->max_batch);
	kvn_le_put64(out + 8, o->pool_size);
	kvn_le_put64(out + 16, o->max_chunk);
	kvn_le_put64(out + 24, o->max_held);
}

void
kvn_cp_hello_ok_decode(const uint8_t in[KVN_CP_HELLO_OK_SIZE], struct kvn_cp_hello_ok *o)
{
	o->major = kvn_le_get16(in);
	o->minor = kvn_le_get16(in + 2);
	o->max_batch = kvn_le_get32(in + 4);
	o->pool_size = kvn_le_get64(in + 8);
	o->max_chunk = kvn_le_get64(in + 16);
	o->max_held = kvn_le_get64(in + 24);
}

void
kvn_cp_entry_encode(const struct kvn_cp_entry *e, uint8_t out[KVN_CP_ENTRY_SIZE])
{
	kvn_le_put32(out, (uint32_t)e->rc);
	kvn_le_put32(out + 4, 0);
	kvn_le_put64(out + 8, e->handle);
	kvn_le_put64(out + 16, e->off);
	kvn_le_put64(out + 24, e->len);
}

void
kvn_cp_entry_decode(const uint8_t in[KVN_CP_ENTRY_SIZE], struct kvn_cp_entry *e)
{
	e->rc = (int32_t)kvn_le_get32(in);
	e->handle = kvn_le_get64(in + 8);
	e->off = kvn_le_get64(in + 16);
	e->len = kvn_le_get64(in + 24);
}

void
kvn_cp_buf_reset(struct kvn_cp_buf *b)
{
	b->len = 0;
	b->err = false;
}

void
kvn_cp_buf_free(struct kvn_cp_buf *b)
{
	free(b->p);
	*b = (struct kvn_cp_buf){0};
}

uint8_t *
kvn_cp_spare(struct kvn_cp_buf *b, size_t n)
{
	if (b->err)
		return NULL;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n)
			cap *= 2;
		uint8_t *p = realloc(b->p, cap);
		if (!p) {
			b->err = true;
			return NULL;
		}
		b->p = p;
		b->cap = cap;
	}
	return b->p + b->len;
}

uint8_t *
kvn_cp_room(struct kvn_cp_buf *b, size_t n)
{
	uint8_t *at = kvn_cp_spare(b, n);
	if (at)
		b->len += n;
	return at;
}

void
kvn_cp_put_u16(struct kvn_cp_buf *b, uint16_t v)
{
	uint8_t *p = kvn_cp_room(b, 2);
	if (p)
		kvn_le_put16(p, v);
}

void
kvn_cp_put_u32(struct kvn_cp_buf *b, uint32_t v)
{
	uint8_t *p = kvn_cp_room(b, 4);
	if (p)
		kvn_le_put32(p, v);
}

void
kvn_cp_put_u64(struct kvn_cp_buf *b, uint64_t v)
{
	uint8_t *p = kvn_cp_room(b, 8);
	if (p)
		kvn_le_put64(p, v);
}

void
kvn_cp_put_bytes(struct kvn_cp_buf *b, const void *src, size_t n)
{
	uint8_t *p = kvn_cp_room(b, n);
	if (p && n)
		memcpy(p, src, n);
}

void
kvn_cp_put_key(struct kvn_cp_buf *b, const char *key, size_t len)
{
	kvn_cp_put_u16(b, (uint16_t)len);
	kvn_cp_put_bytes(b, key, len);
}

static const uint8_t *
take(struct kvn_cp_rd *r, size_t n)
{
	if (r->bad || r->len - r->off < n) {
		r->bad = true;
		return NULL;
	}
	const uint8_t *p = r->p + r->off;
	r->off += n;
	return p;
}

uint16_t
kvn_cp_get_u16(struct kvn_cp_rd *r)
{
	const uint8_t *p = take(r, 2);
	return p ? kvn_le_get16(p) : 0;
}

uint32_t
kvn_cp_get_u32(struct kvn_cp_rd *r)
{
	const uint8_t *p = take(r, 4);
	return p ? kvn_le_get32(p) : 0;
}

uint64_t
kvn_cp_get_u64(struct kvn_cp_rd *r)
{
	const uint8_t *p = take(r, 8);
	return p ? kvn_le_get64(p) : 0;
}

size_t
kvn_cp_get_key(struct kvn_cp_rd *r, const char **key)
{
	uint16_t n = kvn_cp_get_u16(r);
	const uint8_t *p = n && n <= KVN_KEY_MAX ? take(r, n) : NULL;
	if (!p) {
		r->bad = true;
		*key = NULL;
		return 0;
	}
	*key = (const char *)p;
	return n;
}
