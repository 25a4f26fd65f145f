/* LMCache RemoteMetadata codec and kvnode's integrity tag for values in remote stores
 * (docs/architecture.md §10). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/le.h"
#include "connectors/remote_value.h"
#include "core/xxh.h"

static const uint8_t tag_magic[4] = {'K', 'V', 'X', '3'};
static const uint8_t tag_magic_v2[4] = {'K', 'V', 'X', '2'};
static const uint8_t tag_magic_v1[4] = {'K', 'V', 'X', '1'};
#define TAG_V2_LEN 20

KVN_API void
kvn_remote_meta_encode(const struct kvn_remote_meta *meta, uint8_t out[KVN_REMOTE_META_LEN])
{
	kvn_le_put32(out + 0, (uint32_t)meta->length);
	kvn_le_put32(out + 4, (uint32_t)meta->fmt);
	kvn_le_put32(out + 8, (uint32_t)meta->dtype);
	for (int i = 0; i < 4; i++)
		kvn_le_put32(out + 12 + 4 * i, (uint32_t)meta->shape[i]);
}

KVN_API int
kvn_remote_meta_decode(const void *in, size_t len, struct kvn_remote_meta *meta)
{
	const uint8_t *p = in;
	if (len != KVN_REMOTE_META_LEN)
		return -EPROTO;
	meta->length = (int32_t)kvn_le_get32(p);
	meta->fmt = (int32_t)kvn_le_get32(p + 4);
	meta->dtype = (int32_t)kvn_le_get32(p + 8);
	for (int i = 0; i < 4; i++)
		meta->shape[i] = (int32_t)kvn_le_get32(p + 12 + 4 * i);
	if (meta->length < 0 || meta->fmt < KVN_FMT_UNDEFINED || meta->fmt > KVN_FMT_KV_MLA_FMT ||
	    meta->dtype < KVN_DTYPE_NONE || meta->dtype > KVN_DTYPE_FP8_E5M2)
		return -EPROTO;
	for (int i = 0; i < 4; i++)
		if (meta->shape[i] < 0)
			return -EPROTO;
	return 0;
}

KVN_API uint64_t
kvn_remote_value_max(const struct kvn_connector_env *env)
{
	const char *v = env && env->get_opt ? env->get_opt(env, "max_chunk_size") : NULL;
	char *end;
	unsigned long long n = v && *v ? strtoull(v, &end, 10) : 0;
	return n && !*end ? (uint64_t)n : KVN_REMOTE_VALUE_MAX_DEFAULT;
}

KVN_API int
kvn_remote_meta_for_bytes(size_t len, struct kvn_remote_meta *meta)
{
	if (len > INT32_MAX)
		return -EFBIG;
	/* shape multiplies out to the byte count, which is how LMCache sizes the buffer it
	 * allocates for a uint8 object. */
	*meta = (struct kvn_remote_meta){
	    .length = (int32_t)len,
	    .fmt = KVN_FMT_BINARY,
	    .dtype = KVN_DTYPE_UINT8,
	    .shape = {(int32_t)len, 1, 1, 1},
	};
	return 0;
}

/* What a tag says of the key: the low half of its digest (0 for no key). */
static uint64_t
key_part(const struct kvn_key *key)
{
	return key ? key->digest.lo : 0;
}

/* The tag's hash is seeded with the hash of the key digest and the header, so all three parts
 * are covered. */
static uint64_t
meta_seed(uint64_t keyd, const struct kvn_remote_meta *meta)
{
	uint8_t hdr[KVN_REMOTE_META_LEN];
	kvn_remote_meta_encode(meta, hdr);
	return XXH3_64bits_withSeed(hdr, sizeof(hdr), keyd);
}

static uint64_t
value_sum(uint64_t keyd, const struct kvn_remote_meta *meta, const void *payload, size_t len)
{
	return XXH3_64bits_withSeed(payload, len, meta_seed(keyd, meta));
}

static uint32_t
tag_encode(uint64_t keyd, uint64_t mseed, uint64_t sum, uint8_t tag[KVN_REMOTE_TAG_MAX])
{
	memcpy(tag, tag_magic, 4);
	kvn_le_put64(tag + 4, keyd);
	kvn_le_put64(tag + 12, mseed);
	kvn_le_put64(tag + 20, sum);
	return KVN_REMOTE_TAG_LEN;
}

void
kvn_remote_tag_fill(struct kvn_remote_value *val, const struct kvn_key *key)
{
	const struct kvn_buf *b = val->payload;
	uint64_t keyd = key_part(key);
	val->tag_len = tag_encode(keyd, meta_seed(keyd, &val->meta),
				  value_sum(keyd, &val->meta, b ? b->data : NULL, b ? b->len : 0),
				  val->tag);
}

static int
value_untagged(struct kvn_remote_value *val, struct kvn_buf *buf)
{
	memset(val, 0, sizeof(*val));
	int rc = kvn_remote_meta_for_bytes(buf->len, &val->meta);
	if (rc < 0)
		return rc;
	val->payload = buf;
	return 0;
}

int
kvn_remote_value_from_buf(struct kvn_remote_value *val, struct kvn_buf *buf)
{
	int rc = value_untagged(val, buf);
	if (rc == 0)
		kvn_remote_tag_fill(val, NULL);
	return rc;
}

int
kvn_remote_value_for_put(struct kvn_remote_value *val, const struct kvn_key *key,
			 struct kvn_buf *buf, const struct kvn_connector_ops *ops)
{
	int rc = value_untagged(val, buf);
	if (rc < 0)
		return rc;
	if (ops->flags & KVN_CONNECTOR_F_TAG_ON_SEND)
		val->tag_len = KVN_REMOTE_TAG_PENDING;
	else
		kvn_remote_tag_fill(val, key);
	return 0;
}

struct kvn_remote_tagger {
	XXH3_state_t *st;
	uint64_t keyd, mseed;
};

KVN_API struct kvn_remote_tagger *
kvn_remote_tagger_new(void)
{
	struct kvn_remote_tagger *t = malloc(sizeof(*t));
	if (t && !(t->st = XXH3_createState())) {
		free(t);
		t = NULL;
	}
	return t;
}

KVN_API void
kvn_remote_tagger_free(struct kvn_remote_tagger *t)
{
	if (t) {
		XXH3_freeState(t->st);
		free(t);
	}
}

KVN_API void
kvn_remote_tagger_begin(struct kvn_remote_tagger *t, const struct kvn_key *key,
			const struct kvn_remote_meta *meta)
{
	t->keyd = key_part(key);
	t->mseed = meta_seed(t->keyd, meta);
	XXH3_64bits_reset_withSeed(t->st, t->mseed);
}

KVN_API void
kvn_remote_tagger_update(struct kvn_remote_tagger *t, const void *p, size_t n)
{
	XXH3_64bits_update(t->st, p, n);
}

KVN_API uint32_t
kvn_remote_tagger_end(struct kvn_remote_tagger *t, uint8_t tag[KVN_REMOTE_TAG_MAX])
{
	return tag_encode(t->keyd, t->mseed, XXH3_64bits_digest(t->st), tag);
}

static int
bad(char *why, size_t whylen, const char *msg)
{
	if (why && whylen)
		snprintf(why, whylen, "%s", msg);
	return -EBADMSG;
}

static int
check(const struct kvn_remote_value *val, const struct kvn_key *key, char *why, size_t whylen)
{
	uint8_t hdr[KVN_REMOTE_META_LEN];
	struct kvn_remote_meta m;
	if (!val->payload)
		return bad(why, whylen, "no payload");
	kvn_remote_meta_encode(&val->meta, hdr);
	if (kvn_remote_meta_decode(hdr, sizeof(hdr), &m) < 0)
		return bad(why, whylen, "header field out of range (length, fmt, dtype or shape)");
	if ((size_t)val->meta.length != val->payload->len)
		return bad(why, whylen, "header length differs from the payload's");
	if (val->tag_len == 0)
		return 0;
	if (val->tag_len == 12 && !memcmp(val->tag, tag_magic_v1, 4)) {
		bad(why, whylen, "integrity tag of version 1 (KVX1), which does not name the key");
		return -ESTALE;
	}
	bool v2 = val->tag_len == TAG_V2_LEN && !memcmp(val->tag, tag_magic_v2, 4);
	if (!v2 && (val->tag_len != KVN_REMOTE_TAG_LEN || memcmp(val->tag, tag_magic, 4)))
		return bad(why, whylen, "integrity tag has an unknown layout");
	uint64_t keyd = kvn_le_get64(val->tag + 4);
	if (key && keyd != key_part(key))
		return bad(why, whylen, "integrity tag is for another key");
	if (!v2 && kvn_le_get64(val->tag + 12) != meta_seed(keyd, &val->meta)) {
		bad(why, whylen,
		    "integrity tag made for another header: the value was rewritten by a "
		    "writer that does not know the tag");
		return KVN_REMOTE_TAG_IGNORED;
	}
	if (value_sum(keyd, &val->meta, val->payload->data, val->payload->len) !=
	    kvn_le_get64(val->tag + (v2 ? 12 : 20)))
		return bad(why, whylen, "checksum mismatch (header or payload changed)");
	return 0;
}

int
kvn_remote_value_check(const struct kvn_remote_value *val, char *why, size_t whylen)
{
	return check(val, NULL, why, whylen);
}

int
kvn_remote_value_check_key(const struct kvn_remote_value *val, const struct kvn_key *key,
			   char *why, size_t whylen)
{
	return check(val, key, why, whylen);
}

KVN_API void
kvn_remote_value_release(struct kvn_remote_value *val)
{
	if (val && val->payload) {
		kvn_buf_unref(val->payload);
		val->payload = NULL;
	}
}
