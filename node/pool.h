/* Chunk pool: one large region (hugepages when available) allocated once, so a transport can
 * register it once; variable-size slots, each starting with the 64-byte header of DESIGN.md §3. */
#ifndef KVN_NODE_POOL_H
#define KVN_NODE_POOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvnode/kvnode.h"

#define KVN_SLOT_MAGIC 0x4b564e43u /* "CNVK" in memory, little-endian "KVNC" */
#define KVN_SLOT_VERSION 1

/* The header a remote reader validates after a one-sided READ of header + payload. Layout is
 * wire format: little-endian, 64 bytes, no pointers. */
struct kvn_slot_hdr {
	uint32_t magic; /* KVN_SLOT_MAGIC */
	uint16_t version; /* KVN_SLOT_VERSION */
	uint16_t flags;
	_Atomic uint64_t generation; /* seqlock: odd while the slot is being (re)written */
	uint64_t digest_lo; /* key digest */
	uint64_t digest_hi;
	uint64_t len; /* payload bytes following the header */
	uint64_t checksum; /* xxh3-64 of the payload */
	uint64_t reserved[2];
};
_Static_assert(sizeof(struct kvn_slot_hdr) == 64, "slot header is 64 bytes on the wire");

struct kvn_pool;

/* Maps size bytes (rounded up to the page size) — hugepages first when try_huge, falling back
 * to normal pages. err gets the reason on failure. */
KVN_API int kvn_pool_create(size_t size, bool try_huge, struct kvn_pool **out, char *err,
			    size_t errlen);
KVN_API void kvn_pool_destroy(struct kvn_pool *pool);
KVN_API void *kvn_pool_base(const struct kvn_pool *pool);
KVN_API size_t kvn_pool_size(const struct kvn_pool *pool);
KVN_API bool kvn_pool_hugepages(const struct kvn_pool *pool);

#endif
