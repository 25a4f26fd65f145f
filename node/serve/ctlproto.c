/* Local control protocol: frame codec, validation and the full read/write loops used by both
 * the daemon and the CLI (see ctlproto.h for the frame layout). */
#include <endian.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/le.h"
#include "core/fdio.h"
#include "core/log.h"
#include "node/serve/ctlproto.h"

static const char *const op_names[] = {
    [KVN_CTL_PING] = "PING", [KVN_CTL_PUT] = "PUT", [KVN_CTL_GET] = "GET",
    [KVN_CTL_RM] = "RM",     [KVN_CTL_LS] = "LS",   [KVN_CTL_STAT] = "STAT",
};

const char *
kvn_ctl_op_name(unsigned op)
{
	if (op < sizeof(op_names) / sizeof(op_names[0]) && op_names[op])
		return op_names[op];
	return "?";
}

struct kvn_ctl_req
kvn_ctl_req_make(enum kvn_ctl_op op, size_t key_len, uint64_t value_len)
{
	struct kvn_ctl_req req = {
	    .magic = KVN_CTL_REQ_MAGIC,
	    .version = KVN_CTL_VERSION,
	    .op = (uint8_t)op,
	    .flags = 0,
	    .key_len = key_len > UINT32_MAX ? UINT32_MAX : (uint32_t)key_len,
	    .reserved = 0,
	    .value_len = value_len,
	};
	return req;
}

/* ------------------------------------------------------------------------------------------
 * Codec: explicit little-endian stores, never a struct memcpy, so padding and host byte order
 * cannot leak onto the wire.
 * ------------------------------------------------------------------------------------------ */

void
kvn_ctl_req_encode(const struct kvn_ctl_req *req, uint8_t out[KVN_CTL_REQ_SIZE])
{
	kvn_le_put32(out + 0, req->magic);
	kvn_le_put16(out + 4, req->version);
	out[6] = req->op;
	out[7] = req->flags;
	kvn_le_put32(out + 8, req->key_len);
	kvn_le_put32(out + 12, req->reserved);
	kvn_le_put64(out + 16, req->value_len);
}

void
kvn_ctl_req_decode(const uint8_t in[KVN_CTL_REQ_SIZE], struct kvn_ctl_req *req)
{
	req->magic = kvn_le_get32(in + 0);
	req->version = kvn_le_get16(in + 4);
	req->op = in[6];
	req->flags = in[7];
	req->key_len = kvn_le_get32(in + 8);
	req->reserved = kvn_le_get32(in + 12);
	req->value_len = kvn_le_get64(in + 16);
}

void
kvn_ctl_reply_encode(const struct kvn_ctl_reply *rep, uint8_t out[KVN_CTL_REPLY_SIZE])
{
	kvn_le_put32(out + 0, rep->magic);
	kvn_le_put32(out + 4, (uint32_t)rep->status);
	kvn_le_put64(out + 8, rep->payload_len);
}

void
kvn_ctl_reply_decode(const uint8_t in[KVN_CTL_REPLY_SIZE], struct kvn_ctl_reply *rep)
{
	rep->magic = kvn_le_get32(in + 0);
	rep->status = (int32_t)kvn_le_get32(in + 4);
	rep->payload_len = kvn_le_get64(in + 8);
}

/* ------------------------------------------------------------------------------------------
 * Validation
 * ------------------------------------------------------------------------------------------ */

int
kvn_ctl_req_validate(const struct kvn_ctl_req *req, uint64_t value_max, char *err, size_t errlen)
{
	if (req->magic != KVN_CTL_REQ_MAGIC)
		return kvn_seterr(-EPROTO, err, errlen, "bad request magic 0x%08x (expected 0x%08x): not a kvnode client?",
				 req->magic, KVN_CTL_REQ_MAGIC);
	if (req->version != KVN_CTL_VERSION)
		return kvn_seterr(-EPROTO, err, errlen, "unsupported protocol version %u (this node speaks %u): use a "
				 "kvnode CLI of the same release",
				 req->version, KVN_CTL_VERSION);
	if (req->flags || req->reserved)
		return kvn_seterr(-EPROTO, err, errlen, "%s request has unknown flags 0x%02x / reserved 0x%08x set",
				 kvn_ctl_op_name(req->op), req->flags, req->reserved);

	bool keyed, valued;
	switch (req->op) {
	case KVN_CTL_PUT:
		keyed = valued = true;
		break;
	case KVN_CTL_GET:
	case KVN_CTL_RM:
		keyed = true;
		valued = false;
		break;
	case KVN_CTL_PING:
	case KVN_CTL_LS:
	case KVN_CTL_STAT:
		keyed = valued = false;
		break;
	default:
		return kvn_seterr(-EPROTO, err, errlen, "unknown op %u", req->op);
	}

	const char *name = kvn_ctl_op_name(req->op);
	if (keyed && (req->key_len == 0 || req->key_len > KVN_KEY_MAX))
		return kvn_seterr(-EPROTO, err, errlen, "%s key length %u out of range 1..%d", name,
				 req->key_len, KVN_KEY_MAX);
	if (!keyed && req->key_len)
		return kvn_seterr(-EPROTO, err, errlen, "%s takes no key (key length %u)", name,
				 req->key_len);
	if (!valued && req->value_len)
		return kvn_seterr(-EPROTO, err, errlen, "%s takes no value (value length %llu)",
				 name, (unsigned long long)req->value_len);
	if (valued && req->value_len > value_max)
		return kvn_seterr(-EMSGSIZE, err, errlen, "%s value of %llu bytes exceeds this node's limit of %llu bytes",
				 name, (unsigned long long)req->value_len,
				 (unsigned long long)value_max);
	return 0;
}

int
kvn_ctl_reply_validate(const struct kvn_ctl_reply *rep, uint64_t payload_max, char *err,
		       size_t errlen)
{
	if (rep->magic != KVN_CTL_REPLY_MAGIC)
		return kvn_seterr(-EPROTO, err, errlen, "bad reply magic 0x%08x (expected 0x%08x): is a kvnode daemon "
				 "listening there?",
				 rep->magic, KVN_CTL_REPLY_MAGIC);
	if (rep->status > 0 || rep->status < -4095)
		return kvn_seterr(-EPROTO, err, errlen, "reply status %d is not 0 or a -errno",
				 rep->status);
	if (rep->payload_len > payload_max)
		return kvn_seterr(-EPROTO, err, errlen, "reply payload of %llu bytes exceeds the limit of %llu bytes",
				 (unsigned long long)rep->payload_len,
				 (unsigned long long)payload_max);
	return 0;
}

/* ------------------------------------------------------------------------------------------
 * I/O loops
 * ------------------------------------------------------------------------------------------ */

int
kvn_ctl_send_reply(int fd, int status, const void *payload, size_t len)
{
	struct kvn_ctl_reply rep = {
	    .magic = KVN_CTL_REPLY_MAGIC,
	    .status = status,
	    .payload_len = payload ? len : 0,
	};
	uint8_t hdr[KVN_CTL_REPLY_SIZE];
	kvn_ctl_reply_encode(&rep, hdr);
	/* Small replies go out in one write so the client sees header and message together. */
	if (payload && len && len <= 4096) {
		uint8_t one[KVN_CTL_REPLY_SIZE + 4096];
		memcpy(one, hdr, sizeof(hdr));
		memcpy(one + sizeof(hdr), payload, len);
		return kvn_fd_write_full(fd, one, sizeof(hdr) + len);
	}
	int rc = kvn_fd_write_full(fd, hdr, sizeof(hdr));
	if (!rc && payload && len)
		rc = kvn_fd_write_full(fd, payload, len);
	return rc;
}
