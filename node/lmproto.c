/* LMCache's cache-server wire format (`lm://`): encoding and decoding of the fixed headers. The
 * integers go through memcpy (never a cast of the buffer) so any alignment is fine. */
#include <errno.h>
#include <string.h>

#include "node/lmproto.h"

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

int
kvn_lm_req_encode(uint8_t out[KVN_LM_REQ_SIZE], int32_t command, const char *key, size_t key_len,
		  int32_t length, const struct kvn_lm_meta *meta)
{
	if (key_len > KVN_LM_KEY_MAX)
		return -ENAMETOOLONG;
	if (!meta)
		meta = &kvn_lm_meta_none;
	const int32_t v[9] = {command,	      length,	      meta->fmt,      meta->dtype,   0,
			      meta->shape[0], meta->shape[1], meta->shape[2], meta->shape[3]};
	for (int i = 0; i < 9; i++)
		put_i32(out + 4 * i, v[i]);
	/* Python's key.encode().ljust(150): the key, then spaces. */
	if (key_len)
		memcpy(out + 36, key, key_len);
	memset(out + 36 + key_len, ' ', KVN_LM_KEY_MAX - key_len);
	return 0;
}

void
kvn_lm_req_decode(const uint8_t in[KVN_LM_REQ_SIZE], struct kvn_lm_req *req)
{
	req->command = get_i32(in);
	req->length = get_i32(in + 4);
	req->meta.fmt = get_i32(in + 8);
	req->meta.dtype = get_i32(in + 12);
	req->location = get_i32(in + 16);
	for (int i = 0; i < 4; i++)
		req->meta.shape[i] = get_i32(in + 20 + 4 * i);
	/* LMCache strips the padding with str.strip(); struct.pack("150s") would pad a shorter
	 * bytes object with NULs, so both are padding. */
	size_t n = KVN_LM_KEY_MAX;
	while (n && (in[36 + n - 1] == ' ' || in[36 + n - 1] == '\0'))
		n--;
	memcpy(req->key, in + 36, n);
	req->key[n] = '\0';
	req->key_len = n;
}

void
kvn_lm_reply_encode(uint8_t out[KVN_LM_REPLY_SIZE], int32_t code, int32_t length,
		    const struct kvn_lm_meta *meta)
{
	if (!meta)
		meta = &kvn_lm_meta_none;
	const int32_t v[9] = {code,	      length,	      meta->fmt,
			      meta->dtype,    meta->shape[0], meta->shape[1],
			      meta->shape[2], meta->shape[3], 0 /* location */};
	for (int i = 0; i < 9; i++)
		put_i32(out + 4 * i, v[i]);
}

void
kvn_lm_reply_decode(const uint8_t in[KVN_LM_REPLY_SIZE], struct kvn_lm_reply *rep)
{
	rep->code = get_i32(in);
	rep->length = get_i32(in + 4);
	rep->meta.fmt = get_i32(in + 8);
	rep->meta.dtype = get_i32(in + 12);
	for (int i = 0; i < 4; i++)
		rep->meta.shape[i] = get_i32(in + 16 + 4 * i);
	rep->location = get_i32(in + 32);
}

const char *
kvn_lm_cmd_name(int32_t command)
{
	static const char *const names[] = {NULL, "PUT", "GET", "EXIST", "LIST", "HEALTH"};
	return command >= KVN_LM_PUT && command <= KVN_LM_HEALTH ? names[command] : "?";
}
