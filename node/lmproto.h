/* LMCache's cache-server wire format (`lm://`, docs/architecture.md §10): fixed request and reply
 * headers. Shared by the lm server (node/lm_server.c) and the lm connector (connectors/lm.c) so
 * that the two sides cannot disagree on the layout or on what a valid header is. */
#ifndef KVN_NODE_LMPROTO_H
#define KVN_NODE_LMPROTO_H

#include <stddef.h>
#include <stdint.h>

/* Request:  command, length, fmt, dtype, location, shape0..3 (9 x int32) + key padded with
 *           spaces to 150 bytes.
 * Reply:    code, length, fmt, dtype, shape0..3, location (9 x int32).
 * Integers are native-endian (Python struct "i"): little-endian on every host kvnode runs on. */
#define KVN_LM_KEY_MAX	  150
#define KVN_LM_REQ_SIZE	  (9 * 4 + KVN_LM_KEY_MAX) /* 186 */
#define KVN_LM_REPLY_SIZE (9 * 4)		   /* 36 */

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
/* "PUT", "GET" …, "?" for an unknown command. */
const char *kvn_lm_cmd_name(int32_t command);

#endif
