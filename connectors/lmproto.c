/* LMCache's cache-server wire format (`lm://`): encoding and decoding of the fixed headers of
 * both generations, and telling them apart. The integers go through memcpy (never a cast of the
 * buffer) so any alignment is fine. */
#include <errno.h>
#include <string.h>

#include "connectors/lmproto.h"

const struct kvn_lm_meta kvn_lm_meta_none = {.fmt = 1, .dtype = 2};

static void
put_i32(uint8_t *p, int32_t v)
{
	memcpy(p, &v, 4);
}

static int32_t
get_i32(const uint8_t *p)
{
	int32_t v;
	memcpy(&v, p, 4);
	return v;
}

/* Where the key starts and whether a location int precedes shape[]: the one difference
 * between the generations' requests. */
static size_t
key_at(enum kvn_lm_gen gen)
{
	return gen == KVN_LM_V0 ? 32 : 36;
}

size_t
kvn_lm_req_size(enum kvn_lm_gen gen)
{
	return gen == KVN_LM_V0 ? KVN_LM_V0_REQ_SIZE : KVN_LM_REQ_SIZE;
}

size_t
kvn_lm_reply_size(enum kvn_lm_gen gen)
{
	return gen == KVN_LM_V0 ? KVN_LM_V0_REPLY_SIZE : KVN_LM_REPLY_SIZE;
}

int
kvn_lm_req_encode_gen(enum kvn_lm_gen gen, uint8_t *out, int32_t command, const char *key,
		      size_t key_len, int32_t length, const struct kvn_lm_meta *meta)
{
	if (key_len > KVN_LM_KEY_MAX)
		return -ENAMETOOLONG;
	if (!meta)
		meta = &kvn_lm_meta_none;
	size_t k = key_at(gen), s = gen == KVN_LM_V0 ? 16 : 20;
	put_i32(out, command);
	put_i32(out + 4, length);
	put_i32(out + 8, meta->fmt);
	put_i32(out + 12, meta->dtype);
	if (gen != KVN_LM_V0)
		put_i32(out + 16, 0); /* location: None */
	for (int i = 0; i < 4; i++)
		put_i32(out + s + 4 * i, meta->shape[i]);
	/* Python's key.encode().ljust(150): the key, then spaces. */
	if (key_len)
		memcpy(out + k, key, key_len);
	memset(out + k + key_len, ' ', KVN_LM_KEY_MAX - key_len);
	return 0;
}

void
kvn_lm_req_decode_gen(enum kvn_lm_gen gen, const uint8_t *in, struct kvn_lm_req *req)
{
	size_t k = key_at(gen), s = gen == KVN_LM_V0 ? 16 : 20;
	req->command = get_i32(in);
	req->length = get_i32(in + 4);
	req->meta.fmt = get_i32(in + 8);
	req->meta.dtype = get_i32(in + 12);
	req->location = gen == KVN_LM_V0 ? 0 : get_i32(in + 16);
	for (int i = 0; i < 4; i++)
		req->meta.shape[i] = get_i32(in + s + 4 * i);
	/* LMCache strips the padding with str.strip(); struct.pack("150s") would pad a shorter
	 * bytes object with NULs, so both are padding. */
	size_t n = KVN_LM_KEY_MAX;
	while (n && (in[k + n - 1] == ' ' || in[k + n - 1] == '\0'))
		n--;
	memcpy(req->key, in + k, n);
	req->key[n] = '\0';
	req->key_len = n;
}

void
kvn_lm_reply_encode_gen(enum kvn_lm_gen gen, uint8_t *out, int32_t code, int32_t length,
			const struct kvn_lm_meta *meta)
{
	if (!meta)
		meta = &kvn_lm_meta_none;
	const int32_t v[9] = {code,	      length,	      meta->fmt,
			      meta->dtype,    meta->shape[0], meta->shape[1],
			      meta->shape[2], meta->shape[3], 0 /* location, v1 only */};
	for (size_t i = 0; i < kvn_lm_reply_size(gen) / 4; i++)
		put_i32(out + 4 * i, v[i]);
}

void
kvn_lm_reply_decode_gen(enum kvn_lm_gen gen, const uint8_t *in, struct kvn_lm_reply *rep)
{
	rep->code = get_i32(in);
	rep->length = get_i32(in + 4);
	rep->meta.fmt = get_i32(in + 8);
	rep->meta.dtype = get_i32(in + 12);
	for (int i = 0; i < 4; i++)
		rep->meta.shape[i] = get_i32(in + 16 + 4 * i);
	rep->location = gen == KVN_LM_V0 ? 0 : get_i32(in + 32);
}

enum kvn_lm_gen
kvn_lm_gen_detect(const uint8_t *in)
{
	for (int i = 32; i < 36; i++)
		if (in[i] < 0x20)
			return KVN_LM_V1;
	return KVN_LM_V0;
}

const char *
kvn_lm_gen_name(enum kvn_lm_gen gen)
{
	return gen == KVN_LM_V0 ? "v0" : "v1";
}

int
kvn_lm_req_encode(uint8_t out[KVN_LM_REQ_SIZE], int32_t command, const char *key, size_t key_len,
		  int32_t length, const struct kvn_lm_meta *meta)
{
	return kvn_lm_req_encode_gen(KVN_LM_V1, out, command, key, key_len, length, meta);
}

void
kvn_lm_req_decode(const uint8_t in[KVN_LM_REQ_SIZE], struct kvn_lm_req *req)
{
	kvn_lm_req_decode_gen(KVN_LM_V1, in, req);
}

void
kvn_lm_reply_encode(uint8_t out[KVN_LM_REPLY_SIZE], int32_t code, int32_t length,
		    const struct kvn_lm_meta *meta)
{
	kvn_lm_reply_encode_gen(KVN_LM_V1, out, code, length, meta);
}

void
kvn_lm_reply_decode(const uint8_t in[KVN_LM_REPLY_SIZE], struct kvn_lm_reply *rep)
{
	kvn_lm_reply_decode_gen(KVN_LM_V1, in, rep);
}

const char *
kvn_lm_cmd_name(int32_t command)
{
	static const char *const names[] = {NULL, "PUT", "GET", "EXIST", "LIST", "HEALTH"};
	return command >= KVN_LM_PUT && command <= KVN_LM_HEALTH ? names[command] : "?";
}
