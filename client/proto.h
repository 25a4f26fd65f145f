/* The client protocol: what an inference worker's library (client/client.c) and the node
 * (node/serve/clientsrv.c) say over the node's unix socket. Both sides use this one codec, so
 * they cannot disagree on the wire format or on what a valid frame is.
 *
 * Every frame, either way, is a 32-byte header and a body (integers little-endian):
 *	magic u32 | op u16 | flags u16 | count u32 | status i32 | id u64 | body_len u64
 * A request's id is the client's; the reply to it carries the same id (replies to one
 * connection come in request order). count is the number of keys or entries in the body.
 *
 * The connection starts with HELLO (body: major u16 | minor u16 | reserved u32 | name); the
 * reply's body describes the pool and the reply carries the pool's memfd (SCM_RIGHTS), which
 * the client maps. The client then never copies a value through the socket:
 *	GET      keys -> per key: rc, lease, offset, len (a read-only view at pool + offset,
 *	         held for the client until RELEASE or until the connection closes)
 *	RESERVE  (key, len) pairs -> per key: rc, reservation, offset (the slot the client
 *	         writes the value into; only that slot is writable in its mapping)
 *	COMMIT   (reservation, checksum) pairs -> per entry: rc (flag ABORT: drop them)
 *	RELEASE  leases (no reply)
 *	REMOVE   keys -> per key: rc
 *	CONTAINS keys -> per key: 1 held here, 2 held by a peer, 0 absent (flag PREFIX: stop
 *	         at the first key held nowhere, LMCache's contains-prefix; the rest are 0)
 *	PING     -> empty
 *	LIST     (1.1) max u32 | reserved u32 | [key] (count 1: the cursor) -> per key, in byte
 *	         order of the key text and after the cursor: len u64 | key; at most max (0, or
 *	         over KVN_CP_BATCH_MAX: that many); reply flag MORE when keys follow the last
 * A key in a body is u16 length then its bytes. Every error is a negative errno in rc (per
 * entry) or status (whole request); a failed request's body may be a one-line message.
 *
 * A minor version adds operations only. The node answers HELLO with its version, and the
 * library sends an operation only to a node whose minor version has it (an older node would
 * close the connection on an op it does not know); an older client is served as before. */
#ifndef KVN_CLIENT_PROTO_H
#define KVN_CLIENT_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KVN_CP_REQ_MAGIC   0x434e564bu /* "KVNC" on the wire */
#define KVN_CP_REPLY_MAGIC 0x534e564bu /* "KVNS" */
#define KVN_CP_HDR_SIZE	   32
#define KVN_CP_MAJOR	   1
#define KVN_CP_MINOR	   1 /* 1.1: LIST */
#define KVN_CP_NAME_MAX	   64
/* Keys in one request at most, and the most body bytes a request may carry. */
#define KVN_CP_BATCH_MAX 4096u
#define KVN_CP_BODY_MAX	 (KVN_CP_BATCH_MAX * (2u + 512u + 16u))

enum kvn_cp_op {
	KVN_CP_HELLO = 1,
	KVN_CP_GET = 2,
	KVN_CP_RESERVE = 3,
	KVN_CP_COMMIT = 4,
	KVN_CP_RELEASE = 5,
	KVN_CP_REMOVE = 6,
	KVN_CP_CONTAINS = 7,
	KVN_CP_PING = 8,
	KVN_CP_LIST = 9, /* 1.1 */
	KVN_CP_NOPS
};

enum kvn_cp_flags {
	KVN_CP_F_ABORT = 1u << 0,  /* COMMIT: drop the reservations */
	KVN_CP_F_PREFIX = 1u << 1, /* CONTAINS: stop at the first key held nowhere */
	KVN_CP_F_MORE = 1u << 2,   /* a LIST reply: keys follow its last */
};

/* The minor version that brought op (a node of an older one does not know it). */
unsigned kvn_cp_op_minor(unsigned op);

struct kvn_cp_hdr {
	uint32_t magic;
	uint16_t op;
	uint16_t flags;
	uint32_t count;
	int32_t status;
	uint64_t id;
	uint64_t body_len;
};

/* HELLO's reply body. */
struct kvn_cp_hello_ok {
	uint16_t major, minor; /* the node's protocol version */
	uint32_t max_batch;    /* keys per request */
	uint64_t pool_size;    /* bytes of the memfd that comes with it */
	uint64_t max_chunk;    /* max_chunk_size */
	uint64_t max_held;     /* bytes of leases and reservations one client may hold */
};
#define KVN_CP_HELLO_OK_SIZE 32

/* Per-entry replies: GET (lease, off, len), RESERVE (reservation, off, len = the size). */
struct kvn_cp_entry {
	int32_t rc;
	uint64_t handle; /* lease or reservation */
	uint64_t off;	 /* of the payload in the pool */
	uint64_t len;
};
#define KVN_CP_ENTRY_SIZE 32

const char *kvn_cp_op_name(unsigned op);

void kvn_cp_hdr_encode(const struct kvn_cp_hdr *h, uint8_t out[KVN_CP_HDR_SIZE]);
void kvn_cp_hdr_decode(const uint8_t in[KVN_CP_HDR_SIZE], struct kvn_cp_hdr *h);
/* A request header (reply false) or a reply's: magic, a known op, flags of that op (a
 * request's and a reply's differ), count
 * at most KVN_CP_BATCH_MAX, body at most KVN_CP_BODY_MAX, status 0 in a request and in
 * [-4095, 0] in a reply. 0 or -EPROTO with the reason in err. */
int kvn_cp_hdr_validate(const struct kvn_cp_hdr *h, bool reply, char *err, size_t errlen);

void kvn_cp_hello_ok_encode(const struct kvn_cp_hello_ok *o, uint8_t out[KVN_CP_HELLO_OK_SIZE]);
void kvn_cp_hello_ok_decode(const uint8_t in[KVN_CP_HELLO_OK_SIZE], struct kvn_cp_hello_ok *o);
void kvn_cp_entry_encode(const struct kvn_cp_entry *e, uint8_t out[KVN_CP_ENTRY_SIZE]);
void kvn_cp_entry_decode(const uint8_t in[KVN_CP_ENTRY_SIZE], struct kvn_cp_entry *e);

/* A growing body being built; on allocation failure err is set and later puts do nothing. */
struct kvn_cp_buf {
	uint8_t *p;
	size_t len, cap;
	bool err;
};
void kvn_cp_buf_reset(struct kvn_cp_buf *b);
void kvn_cp_buf_free(struct kvn_cp_buf *b);
/* n more bytes at the end (len grows by n): where to write them, NULL on failure. */
uint8_t *kvn_cp_room(struct kvn_cp_buf *b, size_t n);
/* Room for n bytes past the end, len unchanged (a read fills them, then adds what it got):
 * where they start, NULL on failure. */
uint8_t *kvn_cp_spare(struct kvn_cp_buf *b, size_t n);
void kvn_cp_put_u16(struct kvn_cp_buf *b, uint16_t v);
void kvn_cp_put_u32(struct kvn_cp_buf *b, uint32_t v);
void kvn_cp_put_u64(struct kvn_cp_buf *b, uint64_t v);
void kvn_cp_put_bytes(struct kvn_cp_buf *b, const void *p, size_t n);
/* A key: u16 length, then its bytes. */
void kvn_cp_put_key(struct kvn_cp_buf *b, const char *key, size_t len);

/* Reads a body front to back; a read past the end sets bad and yields zeros. */
struct kvn_cp_rd {
	const uint8_t *p;
	size_t len, off;
	bool bad;
};
uint16_t kvn_cp_get_u16(struct kvn_cp_rd *r);
uint32_t kvn_cp_get_u32(struct kvn_cp_rd *r);
uint64_t kvn_cp_get_u64(struct kvn_cp_rd *r);
/* A key's bytes (not NUL-terminated) in *key, its length returned; 0 with bad set when it
 * does not fit the body or is 0 or over 512 bytes. */
size_t kvn_cp_get_key(struct kvn_cp_rd *r, const char **key);

#endif
