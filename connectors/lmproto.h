/* LMCache's cache-server wire format (`lm://`, docs/architecture.md §10): fixed request and reply
 * headers. Shared by the lm server (node/serve/lm_server.c) and the lm connector (connectors/lm.c) so
 * that the two sides cannot disagree on the layout or on what a valid header is. */
#ifndef KVN_CONNECTORS_LMPROTO_H
#define KVN_CONNECTORS_LMPROTO_H

#include <stddef.h>
#include <stdint.h>

/* Two generations of LMCache's lmcache/v1/protocol.py are in use (both: integers native-endian,
 * Python struct "i", little-endian on every host kvnode runs on; key key.encode().ljust(150)):
 *
 * v1, from the location field on (protocol.py at c1a02cc81b0751e540b73430f38bec6bc27fd211):
 *   request  "iiiiiiiii150s": command, length, fmt, dtype, location, shape0..3, key   (186)
 *   reply    "iiiiiiiii":     code, length, fmt, dtype, shape0..3, location          (36)
 * v0, before it (protocol.py at 0e65d2fc0ec3975c78c3ce33a48e81505f315a21, and
 *   lmcache/experimental/protocol.py before that):
 *   request  "iiiiiiii150s":  command, length, fmt, dtype, shape0..3, key             (182)
 *   reply    "iiiiiiii":      code, length, fmt, dtype, shape0..3                    (32)
 *
 * The names without a generation (KVN_LM_REQ_SIZE, kvn_lm_req_encode …) are v1. */
#define KVN_LM_KEY_MAX	     150
#define KVN_LM_REQ_SIZE	     (9 * 4 + KVN_LM_KEY_MAX) /* 186 */
#define KVN_LM_REPLY_SIZE    (9 * 4)		      /* 36 */
#define KVN_LM_V0_REQ_SIZE   (8 * 4 + KVN_LM_KEY_MAX) /* 182 */
#define KVN_LM_V0_REPLY_SIZE (8 * 4)		      /* 32 */
/* Bytes of a request kvn_lm_gen_detect needs. */
#define KVN_LM_GEN_PROBE_LEN 36

enum kvn_lm_gen {
	KVN_LM_V0 = 0, /* 8-int headers, LMCache before the location field */
	KVN_LM_V1 = 1, /* 9-int headers */
};

enum kvn_lm_cmd {
	KVN_LM_PUT = 1, /* + length payload bytes; no reply */
	KVN_LM_GET = 2, /* reply; + length payload bytes when 200 */
	KVN_LM_EXIST = 3,
	KVN_LM_LIST = 4, /* reply; + length bytes of newline-joined keys */
	KVN_LM_HEALTH = 5,
};

#define KVN_LM_OK   200
#define KVN_LM_FAIL 400

/* The metadata LMCache sends with a value and keeps in its 28-byte remote header. */
struct kvn_lm_meta {
	int32_t fmt;
	int32_t dtype;
	int32_t shape[4];
};

struct kvn_lm_req {
	int32_t command;
	int32_t length;
	int32_t location;
	struct kvn_lm_meta meta;
	char key[KVN_LM_KEY_MAX + 1]; /* trailing spaces and NULs stripped, NUL-terminated */
	size_t key_len;
};

struct kvn_lm_reply {
	int32_t code;
	int32_t length;
	int32_t location;
	struct kvn_lm_meta meta;
};

/* The metadata LMCache's own server puts in replies that carry no value (EXIST, HEALTH, a
 * miss): fmt 1 (KV_2LTD), dtype 2 (float16), shape 0. kvnode sends the same bytes. */
extern const struct kvn_lm_meta kvn_lm_meta_none;

/* Encodes a request; -ENAMETOOLONG when key_len exceeds KVN_LM_KEY_MAX. */
int kvn_lm_req_encode(uint8_t out[KVN_LM_REQ_SIZE], int32_t command, const char *key,
		      size_t key_len, int32_t length, const struct kvn_lm_meta *meta);
void kvn_lm_req_decode(const uint8_t in[KVN_LM_REQ_SIZE], struct kvn_lm_req *req);
void kvn_lm_reply_encode(uint8_t out[KVN_LM_REPLY_SIZE], int32_t code, int32_t length,
			 const struct kvn_lm_meta *meta);
void kvn_lm_reply_decode(const uint8_t in[KVN_LM_REPLY_SIZE], struct kvn_lm_reply *rep);

/* The same in generation gen; out and in hold kvn_lm_req_size(gen) or kvn_lm_reply_size(gen)
 * bytes. A v0 request or reply decodes with location 0; encoding v0 drops the location. */
size_t kvn_lm_req_size(enum kvn_lm_gen gen);
size_t kvn_lm_reply_size(enum kvn_lm_gen gen);
int kvn_lm_req_encode_gen(enum kvn_lm_gen gen, uint8_t *out, int32_t command, const char *key,
			  size_t key_len, int32_t length, const struct kvn_lm_meta *meta);
void kvn_lm_req_decode_gen(enum kvn_lm_gen gen, const uint8_t *in, struct kvn_lm_req *req);
void kvn_lm_reply_encode_gen(enum kvn_lm_gen gen, uint8_t *out, int32_t code, int32_t length,
			     const struct kvn_lm_meta *meta);
void kvn_lm_reply_decode_gen(enum kvn_lm_gen gen, const uint8_t *in, struct kvn_lm_reply *rep);
/* The generation of a request from its first KVN_LM_GEN_PROBE_LEN bytes, which both
 * generations' requests have. Bytes 32..35 are v1's shape[3] and v0's first 4 key bytes: a
 * key is text padded with spaces, so each of those bytes is 0x20 or above, which a v1
 * shape[3] only is from 0x20202020 (538 million) up or when negative; LMCache sends neither
 * (its GET, EXIST and HEALTH carry shape 0). v0 when all four are >= 0x20, else v1. */
enum kvn_lm_gen kvn_lm_gen_detect(const uint8_t *in);
/* "v0" or "v1". */
const char *kvn_lm_gen_name(enum kvn_lm_gen gen);
/* "PUT", "GET" …, "?" for an unknown command. */
const char *kvn_lm_cmd_name(int32_t command);

#endif
