/* Local control protocol between `kvnode serve` and the CLI (docs/architecture.md §9):
 * length-prefixed binary frames over a unix socket. Shared by node/serve/server.c and
 * node/serve/ctlclient.c so that the two sides cannot disagree on the wire format or on what a
 * valid frame is. */
#ifndef KVN_NODE_SERVE_CTLPROTO_H
#define KVN_NODE_SERVE_CTLPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvnode/kvnode.h"

/* Request:  magic u32 | version u16 | op u8 | flags u8 | key_len u32 | reserved u32 |
 *           value_len u64 | key bytes | value bytes
 * Reply:    magic u32 | status i32 (0 or -errno) | payload_len u64 | payload bytes
 * All integers little-endian. An error reply's payload, when present, is a one-line message. */
#define KVN_CTL_REQ_MAGIC   0x514e564bu /* "KVNQ" on the wire */
#define KVN_CTL_REPLY_MAGIC 0x524e564bu /* "KVNR" on the wire */
#define KVN_CTL_VERSION	    1
#define KVN_CTL_REQ_SIZE    24
#define KVN_CTL_REPLY_SIZE  16
/* Largest value a request may carry unless the server is given a lower limit. */
#define KVN_CTL_VALUE_MAX (4ull << 30)

enum kvn_ctl_op {
	KVN_CTL_PING = 1, /* reply payload: "kvnode <version>" */
	KVN_CTL_PUT = 2,  /* key + value; empty reply */
	KVN_CTL_GET = 3,  /* key; reply payload: the value, -ENOENT on a miss */
	KVN_CTL_RM = 4,	  /* key; -ENOENT when absent */
	KVN_CTL_LS = 5,	  /* reply payload: "<key>\t<length>\n" per key */
	KVN_CTL_STAT = 6, /* reply payload: kvn_engine_stats_json() text */
};

struct kvn_ctl_req {
	uint32_t magic;
	uint16_t version;
	uint8_t op;
	uint8_t flags; /* none defined: must be 0 */
	uint32_t key_len;
	uint32_t reserved; /* must be 0 */
	uint64_t value_len;
};

struct kvn_ctl_reply {
	uint32_t magic;
	int32_t status;
	uint64_t payload_len;
};

/* Name of op for messages ("PUT"), "?" for an unknown one. */
const char *kvn_ctl_op_name(unsigned op);

/* A request header for op with the current magic and version. */
struct kvn_ctl_req kvn_ctl_req_make(enum kvn_ctl_op op, size_t key_len, uint64_t value_len);

void kvn_ctl_req_encode(const struct kvn_ctl_req *req, uint8_t out[KVN_CTL_REQ_SIZE]);
void kvn_ctl_req_decode(const uint8_t in[KVN_CTL_REQ_SIZE], struct kvn_ctl_req *req);
void kvn_ctl_reply_encode(const struct kvn_ctl_reply *rep, uint8_t out[KVN_CTL_REPLY_SIZE]);
void kvn_ctl_reply_decode(const uint8_t in[KVN_CTL_REPLY_SIZE], struct kvn_ctl_reply *rep);

/* Checks a decoded request: magic, version, op, flags, key length (1..KVN_KEY_MAX for keyed
 * ops, 0 otherwise), value length (<= value_max for PUT, 0 otherwise). Returns 0, -EPROTO for
 * a malformed frame or -EMSGSIZE for a value over value_max; err gets the reason. */
int kvn_ctl_req_validate(const struct kvn_ctl_req *req, uint64_t value_max, char *err,
			 size_t errlen);
/* Checks a decoded reply: magic, status in [-4095, 0], payload length <= payload_max.
 * Returns 0 or -EPROTO with the reason in err. */
int kvn_ctl_reply_validate(const struct kvn_ctl_reply *rep, uint64_t payload_max, char *err,
			   size_t errlen);

/* Sends a reply header and its payload (payload may be NULL when len is 0). */
int kvn_ctl_send_reply(int fd, int status, const void *payload, size_t len);

#endif
