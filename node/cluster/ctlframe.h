/* Control frames between nodes and `kvnode scheduler` (docs/architecture.md §5): a 16-byte header,
 * then a body that is JSON (join, stats, errors), JSON + an opaque blob (join, member notices) or
 * compact binary (publish, lookup, evict notices). Shared by node/scheduler/scheduler*.c and
 * node/cluster/membership.c so both sides agree on the wire format and on what a valid frame is. */
#ifndef KVN_NODE_CLUSTER_CTLFRAME_H
#define KVN_NODE_CLUSTER_CTLFRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvnode/kvnode.h"

/* Header: magic u32 "KVNM" | version u8 | type u8 | flags u16 | seq u32 | body_len u32.
 * All integers little-endian. seq is the requester's: a reply carries the request's seq;
 * pushed notices carry 0. */
#define KVN_CF_MAGIC	0x4d4e564bu /* "KVNM" on the wire */
#define KVN_CF_VERSION	1
#define KVN_CF_HDR_SIZE 16

/* Caps that bound every frame (and so every allocation a peer can cause). */
#define KVN_CF_JSON_MAX	   (64u << 10) /* JSON part of any body */
#define KVN_CF_BLOB_MAX	   (64u << 10) /* region descriptors carried in join/member */
#define KVN_CF_PUBLISH_MAX 65536u      /* records per publish frame */
#define KVN_CF_LOOKUP_MAX  4096u       /* keys per lookup frame */
#define KVN_CF_LOCS_MAX	   8u	       /* locations returned per key */
#define KVN_CF_EVICT_MAX   65536u      /* digests per evict notice */
#define KVN_CF_NAME_MAX	   64u	       /* node name bytes (kvn_cf_name_check) */
#define KVN_CF_ADDR_MAX	   300u	       /* data address bytes */
#define KVN_CF_STATS_MAX   (8u << 20)  /* a stats reply (member list) */

enum kvn_cf_type {
	/* node -> scheduler */
	KVN_CF_JOIN = 1,      /* json_len u32 | JSON {name, …, proof} | region blob; reply JOIN_OK
			       * or ERROR */
	KVN_CF_HEARTBEAT = 2, /* empty; reply HEARTBEAT_ACK */
	KVN_CF_PUBLISH = 3,   /* binary admit/evict records; no reply */
	KVN_CF_LOOKUP = 4,    /* binary digests; reply LOOKUP_REPLY */
	KVN_CF_STATS = 5,     /* JSON {"proof"} (may be empty); reply STATS_REPLY */
	KVN_CF_LEAVE = 6,     /* empty: expire me now; no reply */
	KVN_CF_HELLO = 7,     /* nonce (16): first on a connection; reply CHALLENGE */
	/* scheduler -> node */
	KVN_CF_JOIN_OK = 16,	   /* JSON {worker_id, worker_count, epoch, heartbeat_ms} */
	KVN_CF_HEARTBEAT_ACK = 17, /* epoch u64 | worker_count u32 | reserved u32 */
	KVN_CF_LOOKUP_REPLY = 18,  /* binary locations per key */
	KVN_CF_STATS_REPLY = 19,   /* JSON cluster view */
	KVN_CF_ERROR = 20,	   /* JSON {"error": "...", "code": errno}; the scheduler closes
				    * after it */
	KVN_CF_MEMBER = 21,	   /* json_len u32 | JSON | region blob: a member is up or down */
	KVN_CF_EVICTED = 22,	   /* worker_id u32 | count u32 | count x digest: dropped entries */
	KVN_CF_CHALLENGE = 23,	   /* nonce (16) | flags u32 | proof (32): see "Auth" below */
};

struct kvn_cf_hdr {
	uint8_t version;
	uint8_t type;
	uint16_t flags; /* none defined: must be 0 */
	uint32_t seq;
	uint32_t len;
};

/* Name of a frame type for messages ("LOOKUP"), "?" for an unknown one. */
const char *kvn_cf_type_name(unsigned type);
void kvn_cf_hdr_encode(const struct kvn_cf_hdr *h, uint8_t out[KVN_CF_HDR_SIZE]);
/* Decodes and validates a header: magic, version, known type, flags, body length within the
 * cap of its type. Returns 0, or -EPROTO (-EMSGSIZE for a body over the cap) with err set. */
int kvn_cf_hdr_decode(const uint8_t in[KVN_CF_HDR_SIZE], struct kvn_cf_hdr *h, char *err,
		      size_t errlen);
/* The largest body a frame of type may carry (0 for an unknown type). */
uint32_t kvn_cf_body_max(unsigned type);

/* ------------------------------------------------------------------------------------------
 * Building frames: a growable byte buffer, one frame or many (pipelining) appended in turn.
 * ------------------------------------------------------------------------------------------ */

struct kvn_cf_buf {
	uint8_t *p;
	size_t len, cap;
	size_t frame; /* offset of the frame being built */
	int err;      /* sticky -ENOMEM: checked once at the end */
};

void kvn_cf_buf_free(struct kvn_cf_buf *b);
/* Drops the contents, keeps the memory. */
void kvn_cf_buf_reset(struct kvn_cf_buf *b);
/* Ensures room for n more bytes; returns a pointer to them (NULL, err set, when out of memory). */
uint8_t *kvn_cf_buf_room(struct kvn_cf_buf *b, size_t n);
void kvn_cf_put_u32(struct kvn_cf_buf *b, uint32_t v);
void kvn_cf_put_u64(struct kvn_cf_buf *b, uint64_t v);
void kvn_cf_put_bytes(struct kvn_cf_buf *b, const void *p, size_t n);
/* Starts a frame (the header is written by kvn_cf_end, which knows the body length). */
void kvn_cf_begin(struct kvn_cf_buf *b, enum kvn_cf_type type, uint32_t seq);
/* Finishes the frame begun last. Returns 0, -ENOMEM, or -EMSGSIZE when the body is over the
 * cap of its type (the frame is then dropped from the buffer). */
int kvn_cf_end(struct kvn_cf_buf *b);

static inline uint32_t
kvn_cf_get_u32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t
kvn_cf_get_u64(const uint8_t *p)
{
	return (uint64_t)kvn_cf_get_u32(p) | (uint64_t)kvn_cf_get_u32(p + 4) << 32;
}

/* ------------------------------------------------------------------------------------------
 * JSON bodies (cJSON) and JSON + blob bodies
 * ------------------------------------------------------------------------------------------ */

/* Appends a whole frame whose body is json (cJSON_PrintUnformatted text) and, for JOIN and
 * MEMBER, the json_len prefix and blob. */
int kvn_cf_put_json_frame(struct kvn_cf_buf *b, enum kvn_cf_type type, uint32_t seq,
			  const char *json, const void *blob, size_t blob_len);
/* Splits a JSON + blob body; validates the lengths. -EPROTO with err set. */
int kvn_cf_split_json_blob(const uint8_t *body, uint32_t len, const char **json, size_t *json_len,
			   const uint8_t **blob, size_t *blob_len, char *err, size_t errlen);

/* ------------------------------------------------------------------------------------------
 * PUBLISH: count u32 | reserved u32 | count x 48-byte record:
 *   op u8 | zero[3] | rkey u32 | digest lo u64 | digest hi u64 | addr u64 | len u64 | gen u64
 * ------------------------------------------------------------------------------------------ */

#define KVN_CF_PUB_REC 48

enum kvn_cf_pub_op {
	KVN_CF_ADMIT = 1, /* the slot at (addr, rkey, len) holds digest at generation gen */
	KVN_CF_EVICT = 2, /* digest is gone (gen 0: whatever generation the directory has) */
};

/* One location of a chunk: also the shape of a directory entry and a lookup answer. */
struct kvn_loc {
	uint32_t worker_id;
	uint32_t rkey;
	uint64_t addr;
	uint64_t len;	     /* header + payload bytes to READ */
	uint64_t generation; /* even: the slot header's generation when admitted */
};

struct kvn_cf_pub {
	uint8_t op; /* enum kvn_cf_pub_op */
	struct kvn_digest digest;
	struct kvn_loc loc; /* worker_id unused on the wire: the publisher is the owner */
};

void kvn_cf_put_pub(struct kvn_cf_buf *b, const struct kvn_cf_pub *r);
/* Validates a PUBLISH body (count against the length and cap, every record's op, padding and
 * ranges: an admit has len > 0 and an even, non-zero generation). */
int kvn_cf_publish_check(const uint8_t *body, uint32_t len, uint32_t *count, char *err,
			 size_t errlen);
/* Record i of a body that passed kvn_cf_publish_check. */
void kvn_cf_publish_rec(const uint8_t *body, uint32_t i, struct kvn_cf_pub *r);

/* ------------------------------------------------------------------------------------------
 * LOOKUP: count u32 | max_locs u32 (1..KVN_CF_LOCS_MAX) | count x digest (lo u64, hi u64)
 * LOOKUP_REPLY: count u32 | reserved u32 | per key: nloc u32 | nloc x 32-byte location
 *   (worker_id u32 | rkey u32 | addr u64 | len u64 | gen u64)
 * ------------------------------------------------------------------------------------------ */

#define KVN_CF_LOC_SIZE 32

int kvn_cf_lookup_check(const uint8_t *body, uint32_t len, uint32_t *count, uint32_t *max_locs,
			char *err, size_t errlen);
struct kvn_digest kvn_cf_lookup_key(const uint8_t *body, uint32_t i);
void kvn_cf_put_loc(struct kvn_cf_buf *b, const struct kvn_loc *l);

/* Decodes a LOOKUP_REPLY for a request of count keys and max_locs locations per key: nloc[i]
 * gets key i's location count and locs[i * max_locs ...] its locations. Every count and the
 * total length are checked; -EPROTO with err set on any mismatch. */
int kvn_cf_lookup_reply_decode(const uint8_t *body, uint32_t len, uint32_t count, uint32_t max_locs,
			       uint32_t *nloc, struct kvn_loc *locs, char *err, size_t errlen);

/* EVICTED: worker_id u32 | count u32 | count x digest. */
int kvn_cf_evicted_check(const uint8_t *body, uint32_t len, uint32_t *worker_id, uint32_t *count,
			 char *err, size_t errlen);

/* ------------------------------------------------------------------------------------------
 * Frame I/O on a blocking socket (the membership client, `kvnode stat`, kvnode-bench)
 * ------------------------------------------------------------------------------------------ */

struct kvn_cf_rx {
	uint8_t *p;
	size_t len, cap;
};

void kvn_cf_rx_free(struct kvn_cf_rx *r);
/* One recv without blocking: 0 when bytes came, -ECONNRESET at EOF, -EAGAIN when none were
 * there, else a negative errno. */
int kvn_cf_rx_fill(struct kvn_cf_rx *r, int fd);
/* 1 with h and *body set when a whole (validated) frame is buffered, 0 when more is needed,
 * -EPROTO with err set for a bad header. */
int kvn_cf_rx_frame(struct kvn_cf_rx *r, struct kvn_cf_hdr *h, const uint8_t **body, char *err,
		    size_t errlen);
/* Drops the frame kvn_cf_rx_frame returned (its body pointer is then invalid). */
void kvn_cf_rx_consume(struct kvn_cf_rx *r, const struct kvn_cf_hdr *h);
/* Waits up to timeout_ms (< 0: forever) for a whole frame. 0, -ETIMEDOUT, -ECONNRESET, -EPROTO
 * or another negative errno, with err set. */
int kvn_cf_rx_wait(struct kvn_cf_rx *r, int fd, int timeout_ms, struct kvn_cf_hdr *h,
		   const uint8_t **body, char *err, size_t errlen);
/* Writes all of p (MSG_NOSIGNAL; a send timeout is -ETIMEDOUT). */
int kvn_cf_send_all(int fd, const void *p, size_t len);
/* The message of an ERROR frame's JSON body, "(no message)" when it has none. */
void kvn_cf_error_text(const uint8_t *body, uint32_t len, char *out, size_t cap);

/* ------------------------------------------------------------------------------------------
 * ERROR frames: {"error": message, "code": a positive errno}. Receivers decide by the code
 * (EACCES: the auth token; EINVAL: a field the sender must fix; EUSERS: no worker id left);
 * the message is for people. Bytes of msg that are not printable UTF-8 are sent as '?', so the
 * frame is always valid JSON.
 * ------------------------------------------------------------------------------------------ */

int kvn_cf_put_error(struct kvn_cf_buf *b, uint32_t seq, int code, const char *msg);
/* The ERROR's code as a negative errno (-EPROTO when it carries none, as from a peer that
 * predates codes) and its message into out. */
int kvn_cf_error_decode(const uint8_t *body, uint32_t len, char *out, size_t cap);

/* A node name (node_name; the scheduler's key for a worker id, shown in `kvnode stat`, JSON
 * and metric labels): 1..KVN_CF_NAME_MAX bytes of valid UTF-8 made of ASCII letters, digits,
 * '-', '_', '.' and non-ASCII characters other than controls (U+0080..U+009F) and line
 * separators (U+2028, U+2029). Such a name needs no quoting anywhere it is shown. 0, or
 * -EINVAL with err saying which byte broke which rule (never echoing the bytes). */
int kvn_cf_name_check(const char *name, char *err, size_t errlen);
/* The rule above in words, for messages. */
#define KVN_CF_NAME_RULE                                                                           \
	"1..64 bytes of UTF-8: letters, digits, '-', '_', '.' (no spaces, quotes or control "      \
	"characters)"

/* ------------------------------------------------------------------------------------------
 * Auth: a challenge-response before JOIN or STATS (core/auth.h). The client sends HELLO with its
 * nonce; the scheduler answers CHALLENGE with its own nonce, KVN_CF_F_TOKEN when it has a token,
 * and its proof MAC(KVN_CF_SCHED_LABEL | client nonce | scheduler nonce); the client checks that
 * proof when it has a token (a scheduler that cannot prove it may be anyone) and puts its own,
 * MAC(KVN_CF_NODE_LABEL | scheduler nonce | client nonce), in hex as "proof" in the JOIN or
 * STATS JSON. The token itself never crosses the network, and a proof is good on its own
 * connection only.
 * ------------------------------------------------------------------------------------------ */

#define KVN_CF_F_TOKEN	   1u
#define KVN_CF_SCHED_LABEL "kvnode scheduler v1"
#define KVN_CF_NODE_LABEL  "kvnode node v1"
#define KVN_CF_CHALLENGE_SIZE (16 + 4 + 32)
#define KVN_CF_PROOF_HEX   65 /* 64 hex digits and a NUL */

struct kvn_auth;
/* The client's half on a connected blocking socket: HELLO out, CHALLENGE in (within
 * timeout_ms, through r), the scheduler's proof checked when a has a token; proof gets the
 * client's proof in hex ("" without a token). 0, or -EACCES (the scheduler did not prove the
 * token), -EPROTO (no CHALLENGE: a scheduler older than this node), -ETIMEDOUT … with err. */
int kvn_cf_client_auth(int fd, struct kvn_cf_rx *r, const struct kvn_auth *a, int timeout_ms,
		       char proof[KVN_CF_PROOF_HEX], char *err, size_t errlen);

#endif
