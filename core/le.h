/* Little-endian integers at any byte address: the wire formats' codecs (client/proto.c,
 * node/serve/ctlproto.c, rdma/tcp/tcp.c, connectors/remote_value.c) all write and read their
 * fields through these. */
#ifndef KVN_CORE_LE_H
#define KVN_CORE_LE_H

#include <endian.h>
#include <stdint.h>
#include <string.h>

static inline void
kvn_le_put16(uint8_t *p, uint16_t v)
{
	v = htole16(v);
	memcpy(p, &v, sizeof(v));
}

static inline void
kvn_le_put32(uint8_t *p, uint32_t v)
{
	v = htole32(v);
	memcpy(p, &v, sizeof(v));
}

static inline void
kvn_le_put64(uint8_t *p, uint64_t v)
{
	v = htole64(v);
	memcpy(p, &v, sizeof(v));
}

static inline uint16_t
kvn_le_get16(const uint8_t *p)
{
	uint16_t v;
	memcpy(&v, p, sizeof(v));
	return le16toh(v);
}

static inline uint32_t
kvn_le_get32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, sizeof(v));
	return le32toh(v);
}

static inline uint64_t
kvn_le_get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, sizeof(v));
	return le64toh(v);
}

#endif
