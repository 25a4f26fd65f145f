/* Chunk pool: one large region (hugepages when available) allocated once, so a transport can
 * register it once; variable-size slots, each starting with the 64-byte header of
 * docs/architecture.md §3. */
#ifndef KVN_CORE_POOL_H
#define KVN_CORE_POOL_H

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
int kvn_pool_create(size_t size, bool try_huge, struct kvn_pool **out, char *err,
			    size_t errlen);
void kvn_pool_destroy(struct kvn_pool *pool);
void *kvn_pool_base(const struct kvn_pool *pool);
/* The memfd the region is mapped from (offset 0 is kvn_pool_base): what the node hands its
 * local clients. Owned by the pool. */
int kvn_pool_fd(const struct kvn_pool *pool);
size_t kvn_pool_size(const struct kvn_pool *pool);
bool kvn_pool_hugepages(const struct kvn_pool *pool);
/* How the region is backed: "hugetlb" (MAP_HUGETLB), "thp" (normal pages with
 * madvise(MADV_HUGEPAGE) accepted) or "pages". */
const char *kvn_pool_backing(const struct kvn_pool *pool);

/* ------------------------------------------------------------------------------------------
 * Slots. A slot is one allocated block of the region: the 64-byte header, then the payload.
 * Its descriptor (struct kvn_slot) lives outside the region, so registering the region for
 * remote reads exposes chunk bytes only, never allocator state.
 *
 * Life of a slot:
 *   kvn_pool_alloc     one reference (the writer's); header written, generation odd
 *   (writer copies the payload into kvn_slot_payload)
 *   kvn_pool_seal      checksum stored, generation made even with release ordering
 *   kvn_pool_commit    the owner's index now points at it ("linked"); drops the writer's
 *                      reference, so an unreferenced, unpinned linked slot joins the LRU
 *   kvn_pool_unlink    the owner dropped it (remove/replace): generation made odd at once,
 *                      storage freed now or when the last reference goes
 * A slot that is linked, unreferenced and unpinned is evictable: kvn_pool_alloc with evict
 * takes victims from the cold end of the LRU. Taking a reference (a view) or a pin takes a
 * slot off the LRU; dropping the last of both puts it back at the hot end, which is the LRU
 * touch. So eviction never frees a pinned or referenced slot by construction.
 *
 * Locking: one pool mutex, never held during payload copies or checksums. The eviction
 * callback runs with the pool mutex held, from kvn_pool_alloc(evict = true) only; the caller
 * of such an alloc must already hold whatever lock the callback needs (the owner's index
 * lock). Lock order is therefore always owner index -> pool, and the callback must not call
 * back into the pool.
 * ------------------------------------------------------------------------------------------ */

struct kvn_slot;

/* Called for each evicted slot, pool mutex held: remove slot from the owner's index (by
 * kvn_slot_key/kvn_slot_digest) and nothing else. The pool frees the slot afterwards. */
typedef void (*kvn_pool_evict_fn)(void *ctx, struct kvn_slot *slot);

/* Sets the owner told about evictions (one per pool). -EBUSY when another owner is set; fn
 * NULL clears it. */
int kvn_pool_set_evict(struct kvn_pool *pool, kvn_pool_evict_fn fn, void *ctx);

/* Allocates a slot for len payload bytes; key (may be NULL) gives the digest in the header and
 * is kept in the descriptor for listing. -ENOSPC when header + len exceeds the pool, so it can
 * never fit; -ENOMEM when it does not fit now (with evict: not even after evicting every
 * evictable slot, because the rest is pinned, referenced or being written). */
int kvn_pool_alloc(struct kvn_pool *pool, size_t len, const struct kvn_key *key, bool evict,
			   struct kvn_slot **out);
/* Stores the xxh3-64 checksum of the payload and publishes the slot (even generation). */
void kvn_pool_seal(struct kvn_slot *slot);
/* Copies the payload from src and seals, in one pass over memory (copy and hash fused). */
void kvn_pool_fill(struct kvn_slot *slot, const void *src);
/* Seals with a checksum computed elsewhere (a client wrote the payload, kvn_copy_checksum). */
void kvn_pool_seal_with(struct kvn_slot *slot, uint64_t checksum);
/* memcpy of len bytes that returns the xxh3-64 of them (the slot checksum), in one pass. */
uint64_t kvn_copy_checksum(void *dst, const void *src, size_t len);
/* Marks slot linked (held by the owner's index) and drops the writer's reference. */
void kvn_pool_commit(struct kvn_pool *pool, struct kvn_slot *slot);
/* The owner let go of slot: generation made odd, freed when unreferenced. */
void kvn_pool_unlink(struct kvn_pool *pool, struct kvn_slot *slot);

/* References keep a slot's storage alive (and off the LRU). */
void kvn_pool_ref(struct kvn_pool *pool, struct kvn_slot *slot);
void kvn_pool_unref(struct kvn_pool *pool, struct kvn_slot *slot);
/* Pins keep a linked slot from eviction; they nest. unpin: -EINVAL when not pinned. */
void kvn_pool_pin(struct kvn_pool *pool, struct kvn_slot *slot);
int kvn_pool_unpin(struct kvn_pool *pool, struct kvn_slot *slot);
/* A zero-copy view of the payload holding one slot reference (dropped by kvn_buf_unref). */
int kvn_pool_view(struct kvn_pool *pool, struct kvn_slot *slot, struct kvn_buf **out);
/* The same for len bytes at off inside the slot's payload area (the payload of a slot image
 * a peer READ landed there); -EINVAL when the range is not inside it. */
int kvn_pool_view_range(struct kvn_pool *pool, struct kvn_slot *slot, size_t off,
				size_t len, struct kvn_buf **out);
/* The slot a view returned by kvn_pool_view(_range) points into, NULL for any other buffer. */
struct kvn_slot *kvn_pool_view_slot(const struct kvn_buf *buf);
/* When buf views the whole payload of a published slot of pool that no index holds (a slot a
 * peer READ landed and the reader sealed) and whose header names digest: that slot, with a
 * new reference for kvn_pool_commit to take, so an index adopts it instead of copying it.
 * NULL otherwise. */
struct kvn_slot *kvn_pool_take_loose(struct kvn_pool *pool, const struct kvn_buf *buf,
				     struct kvn_digest digest);

/* Immutable while the slot is allocated. The remote address of a slot is the registered
 * base + kvn_slot_offset; a reader fetches kvn_slot_len + 64 bytes from there. */
uint64_t kvn_slot_offset(const struct kvn_slot *slot);
struct kvn_slot_hdr *kvn_slot_hdr(const struct kvn_slot *slot);
void *kvn_slot_payload(const struct kvn_slot *slot);
size_t kvn_slot_len(const struct kvn_slot *slot);
const struct kvn_key *kvn_slot_key(const struct kvn_slot *slot);
struct kvn_digest kvn_slot_digest(const struct kvn_slot *slot);
/* Acquire load of the header's generation. */
uint64_t kvn_slot_generation(const struct kvn_slot *slot);
/* Whether slot is pinned (for tests and stats; racy by nature). */
uint32_t kvn_slot_pins(struct kvn_pool *pool, const struct kvn_slot *slot);

/* Checks a slot image (header + payload, n bytes) a reader fetched: 0 when it is a published
 * value of digest with generation gen (gen 0: any even generation); -EPROTO bad magic, version
 * or length; -ESTALE odd or different generation or another key; -EBADMSG checksum mismatch. */
int kvn_slot_verify(const void *image, size_t n, struct kvn_digest digest, uint64_t gen);
/* The same for a reader that hashed the payload while it landed: sum is the xxh3-64 of the
 * n - 64 bytes after the header, which must all be payload (the header's len exactly). */
int kvn_slot_verify_sum(const void *image, size_t n, struct kvn_digest digest, uint64_t gen,
			uint64_t sum);

struct kvn_pool_stats {
	uint64_t size;	     /* region bytes */
	uint64_t used_bytes; /* bytes in allocated blocks (headers and rounding included) */
	uint64_t free_bytes;
	uint64_t largest_free; /* largest free block, bytes */
	uint64_t free_blocks;
	uint64_t slots;		/* allocated blocks, including unlinked ones still referenced */
	uint64_t evictable;	/* slots on the LRU */
	uint64_t payload_bytes; /* payload bytes of allocated slots */
	uint64_t evictions;
	uint64_t alloc_failures;
};
void kvn_pool_stats(struct kvn_pool *pool, struct kvn_pool_stats *out);
/* Makes the whole region resident from a thread of its own (page faults taken up front, as
 * an RDMA registration pinning it would): a first put or READ into a slot then costs a copy,
 * not a copy plus a fault per page. Nothing in the region is written; allocations meanwhile
 * go on as before. kvn_pool_destroy stops it. 0 or -errno (the thread did not start). */
int kvn_pool_populate_start(struct kvn_pool *pool);
/* Bytes from the region's start populate has made resident so far. */
uint64_t kvn_pool_populated(struct kvn_pool *pool);
/* Bytes a slot of len payload bytes occupies (header and granule rounding included). */
size_t kvn_pool_slot_footprint(size_t len);

#endif
