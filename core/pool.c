/* Chunk pool: one mmap'd region carved into variable-size slots by a TLSF allocator whose
 * metadata lives outside the region; slot headers with a seqlock generation, reference counts,
 * pins and an LRU of evictable slots (docs/architecture.md §3). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/copysum.h"
#include "core/log.h"
#include "core/pool.h"
#include "core/xxh.h"

/* Granule 4 KiB. Slots start page-aligned, so a header never shares a page with another slot's
 * payload and RDMA reads of a slot start on a page boundary. The rounding waste is under 4 KiB
 * per slot: < 1.6 % for the 256 KiB smallest typical chunk, negligible for MiB chunks; small
 * values are allowed but pay a whole granule. A finer granule would only make free blocks
 * smaller than any realistic chunk. */
#define GRANULE_SHIFT 12
#define GRANULE	      ((uint64_t)1 << GRANULE_SHIFT)
/* TLSF: first level = power of two, second level splits each into 16 classes, so a class
 * spans at most 1/16 of its size and good-fit wastes at most ~6 % before splitting. */
#define SL_BITS	 4
#define SL_COUNT (1u << SL_BITS)
#define FL_COUNT 64
/* Blocks of the request's own class scanned for a best fit before good-fit rounding. Measured
 * under random 256 KiB-4 MiB churn at 70-85 % occupancy this halves allocation failures against
 * plain TLSF and comes within a few percent of an exhaustive best fit; scanning further gains
 * nothing. */
#define EXACT_SCAN 8
#define HUGE_2M	   ((size_t)2 << 20)
/* kvn_pool_populate_start makes the region resident this many bytes at a time, checking for a
 * stop in between (a node shutting down mid-way waits for one step at most). */
#define POPULATE_STEP ((size_t)64 << 20)
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 /* Linux 5.14; older headers lack it */
#endif

enum blk_state {
	BLK_FREE = 0,
	BLK_SLOT, /* allocated: being written, linked, or unlinked awaiting its last reference */
};

struct kvn_slot {
	struct kvn_pool *pool;
	/* neighbours by address; NULL at the ends of the region */
	struct kvn_slot *prev_phys, *next_phys;
	/* free list (free blocks) or LRU (evictable slots); a block is never on both */
	struct kvn_slot *prev, *next;
	uint64_t off;  /* bytes from the region base */
	uint64_t size; /* block bytes, a multiple of GRANULE */
	uint64_t len;  /* payload bytes */
	uint64_t gen;  /* generation as last written to the header */
	uint32_t refs;
	uint32_t pins;
	uint8_t state; /* enum blk_state */
	bool linked;
	bool in_lru;
	struct kvn_key key; /* text kept for list(); outside the region on purpose */
};

struct kvn_pool {
	void *base;
	size_t size;
	int fd; /* the memfd the region is mapped from */
	const char *backing;
	pthread_mutex_t lock;

	/* TLSF free lists */
	uint64_t fl_map;
	uint32_t sl_map[FL_COUNT];
	struct kvn_slot *heads[FL_COUNT][SL_COUNT];

	/* LRU of evictable slots: head hot, tail cold */
	struct kvn_slot *lru_head, *lru_tail;
	uint64_t lru_bytes;

	struct kvn_slot *first; /* lowest block by address */
	struct kvn_slot *spare; /* recycled descriptors, linked by next */

	/* every generation handed out is unique in the pool: a reader holding (offset, gen) can
	 * never see that pair again after the slot is freed, whatever is placed there later */
	uint64_t next_gen;

	kvn_pool_evict_fn evict_fn;
	void *evict_ctx;

	uint64_t free_blocks, used_bytes, payload_bytes, slots, evictable, evictions,
	    alloc_failures;

	/* kvn_pool_populate_start's thread */
	pthread_t populator;
	bool populating;
	atomic_bool populate_stop;
	_Atomic uint64_t populated;
};

/* ------------------------------------------------------------------------------------------
 * Region
 * ------------------------------------------------------------------------------------------ */

static size_t
round_up(size_t v, size_t a)
{
	return (v + a - 1) / a * a;
}

/* The region is a memfd mapped shared, so that the node can hand it to the clients of its
 * host (they map the same pages: a get is a view, a put one copy). Normal pages are mapped 2 MiB
 * aligned so transparent hugepages can back all of it. NULL with errno set on failure. */
static void *
map_memfd(size_t size, bool hugetlb, size_t align, int *fd_out)
{
	int fd = memfd_create("kvnode-pool", MFD_CLOEXEC | (hugetlb ? MFD_HUGETLB : 0));
	if (fd < 0)
		return NULL;
	char *start = NULL;
	if (ftruncate(fd, (off_t)size) == 0) {
		/* Reserve an aligned span, then map the file over its aligned part. */
		size_t span = size + align;
		char *p = mmap(NULL, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p != MAP_FAILED) {
			start = (char *)round_up((uintptr_t)p, align);
			if (mmap(start, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd,
				 0) == MAP_FAILED) {
				int e = errno;
				munmap(p, span);
				errno = e;
				start = NULL;
			} else {
				if (start > p)
					munmap(p, (size_t)(start - p));
				size_t tail = (size_t)((p + span) - (start + size));
				if (tail)
					munmap(start + size, tail);
			}
		}
	}
	if (!start) {
		int e = errno;
		close(fd);
		errno = e;
		return NULL;
	}
	*fd_out = fd;
	return start;
}

static struct kvn_slot *
desc_get(struct kvn_pool *p)
{
	struct kvn_slot *d = p->spare;
	if (d)
		p->spare = d->next;
	else
		d = malloc(sizeof(*d));
	if (d) {
		d->pool = p;
		d->prev = d->next = d->prev_phys = d->next_phys = NULL;
		d->len = d->gen = 0;
		d->refs = d->pins = 0;
		d->state = BLK_FREE;
		d->linked = d->in_lru = false;
		d->key.len = 0;
		d->key.str[0] = '\0';
	}
	return d;
}

static void
desc_put(struct kvn_pool *p, struct kvn_slot *d)
{
	d->next = p->spare;
	p->spare = d;
}

/* ------------------------------------------------------------------------------------------
 * TLSF
 * ------------------------------------------------------------------------------------------ */

static unsigned
floor_log2(uint64_t v)
{
	return 63u - (unsigned)__builtin_clzll(v);
}

/* Class of a size in granules. */
static void
mapping(uint64_t g, unsigned *fl, unsigned *sl)
{
	if (g < SL_COUNT) {
		*fl = 0;
		*sl = (unsigned)g;
		return;
	}
	unsigned l = floor_log2(g);
	*fl = l - SL_BITS + 1;
	*sl = (unsigned)(g >> (l - SL_BITS)) - SL_COUNT;
}

/* Smallest class boundary >= g: every block in that class or above fits g. */
static uint64_t
round_class(uint64_t g)
{
	if (g < SL_COUNT)
		return g;
	uint64_t step = (uint64_t)1 << (floor_log2(g) - SL_BITS);
	return (g + step - 1) & ~(step - 1);
}

static void
free_insert(struct kvn_pool *p, struct kvn_slot *b)
{
	unsigned fl, sl;
	mapping(b->size >> GRANULE_SHIFT, &fl, &sl);
	b->state = BLK_FREE;
	b->prev = NULL;
	b->next = p->heads[fl][sl];
	if (b->next)
		b->next->prev = b;
	p->heads[fl][sl] = b;
	p->fl_map |= (uint64_t)1 << fl;
	p->sl_map[fl] |= 1u << sl;
	p->free_blocks++;
}

static void
free_remove(struct kvn_pool *p, struct kvn_slot *b)
{
	unsigned fl, sl;
	mapping(b->size >> GRANULE_SHIFT, &fl, &sl);
	if (b->prev)
		b->prev->next = b->next;
	else
		p->heads[fl][sl] = b->next;
	if (b->next)
		b->next->prev = b->prev;
	b->prev = b->next = NULL;
	p->free_blocks--;
	if (!p->heads[fl][sl]) {
		p->sl_map[fl] &= ~(1u << sl);
		if (!p->sl_map[fl])
			p->fl_map &= ~((uint64_t)1 << fl);
	}
}

/* A free block of at least g granules, or NULL. Best fit among the first few blocks of g's own
 * class (they are within 1/16 of g, so splitting leaves little behind), then TLSF good fit from
 * the next class boundary up (O(1) with the bitmaps), then the rest of g's own class so that a
 * fitting block is never missed. */
static struct kvn_slot *
free_find(struct kvn_pool *p, uint64_t g)
{
	const uint64_t need = g << GRANULE_SHIFT;
	unsigned fl, sl;
	mapping(g, &fl, &sl);
	struct kvn_slot *best = NULL, *b = p->heads[fl][sl];
	for (int i = 0; b && i < EXACT_SCAN; b = b->next, i++)
		if (b->size >= need && (!best || b->size < best->size))
			best = b;
	if (best)
		return best;

	unsigned rfl, rsl;
	mapping(round_class(g), &rfl, &rsl);
	if (rfl < FL_COUNT) {
		uint32_t sm = p->sl_map[rfl] & (~0u << rsl);
		if (!sm) {
			uint64_t fm =
			    rfl + 1 < FL_COUNT ? p->fl_map & (~(uint64_t)0 << (rfl + 1)) : 0;
			if (fm) {
				rfl = (unsigned)__builtin_ctzll(fm);
				sm = p->sl_map[rfl];
			}
		}
		if (sm)
			return p->heads[rfl][__builtin_ctz(sm)];
	}
	for (; b; b = b->next)
		if (b->size >= need)
			return b;
	return NULL;
}

/* Takes b (free, >= need bytes) off the free lists, returning the tail to them. */
static int
block_take(struct kvn_pool *p, struct kvn_slot *b, uint64_t need)
{
	free_remove(p, b);
	if (b->size > need) {
		struct kvn_slot *rest = desc_get(p);
		if (!rest) {
			free_insert(p, b);
			return -ENOMEM;
		}
		rest->off = b->off + need;
		rest->size = b->size - need;
		rest->prev_phys = b;
		rest->next_phys = b->next_phys;
		if (b->next_phys)
			b->next_phys->prev_phys = rest;
		b->next_phys = rest;
		b->size = need;
		free_insert(p, rest);
	}
	b->state = BLK_SLOT;
	return 0;
}

/* Returns block b to the free lists, merged with free neighbours at once. */
static void
block_free(struct kvn_pool *p, struct kvn_slot *b)
{
	struct kvn_slot *n = b->next_phys, *pr = b->prev_phys;
	b->state = BLK_FREE;
	if (n && n->state == BLK_FREE) {
		free_remove(p, n);
		b->size += n->size;
		b->next_phys = n->next_phys;
		if (n->next_phys)
			n->next_phys->prev_phys = b;
		desc_put(p, n);
	}
	if (pr && pr->state == BLK_FREE) {
		free_remove(p, pr);
		pr->size += b->size;
		pr->next_phys = b->next_phys;
		if (b->next_phys)
			b->next_phys->prev_phys = pr;
		desc_put(p, b);
		b = pr;
	}
	free_insert(p, b);
}

/* ------------------------------------------------------------------------------------------
 * Slot states (pool lock held)
 * ------------------------------------------------------------------------------------------ */

static struct kvn_slot_hdr *
hdr_of(const struct kvn_slot *s)
{
	return (struct kvn_slot_hdr *)((char *)s->pool->base + s->off);
}

static void
lru_remove(struct kvn_pool *p, struct kvn_slot *s)
{
	if (!s->in_lru)
		return;
	if (s->prev)
		s->prev->next = s->next;
	else
		p->lru_head = s->next;
	if (s->next)
		s->next->prev = s->prev;
	else
		p->lru_tail = s->prev;
	s->prev = s->next = NULL;
	s->in_lru = false;
	p->lru_bytes -= s->size;
	p->evictable--;
}

static void
lru_push_hot(struct kvn_pool *p, struct kvn_slot *s)
{
	s->prev = NULL;
	s->next = p->lru_head;
	if (p->lru_head)
		p->lru_head->prev = s;
	else
		p->lru_tail = s;
	p->lru_head = s;
	s->in_lru = true;
	p->lru_bytes += s->size;
	p->evictable++;
}

/* Makes the header's generation odd so a remote reader holding the published one sees the
 * change, even before the bytes are reused. */
static void
retire_gen(struct kvn_slot *s)
{
	if (s->gen & 1)
		return; /* never published: still odd */
	s->gen++;
	atomic_store_explicit(&hdr_of(s)->generation, s->gen, memory_order_release);
}

static void
slot_release(struct kvn_pool *p, struct kvn_slot *s)
{
	retire_gen(s);
	p->used_bytes -= s->size;
	p->payload_bytes -= s->len;
	p->slots--;
	block_free(p, s);
}

/* ------------------------------------------------------------------------------------------
 * Public: region
 * ------------------------------------------------------------------------------------------ */

int
kvn_pool_create(size_t size, bool try_huge, struct kvn_pool **out, char *err, size_t errlen)
{
	const size_t page = (size_t)sysconf(_SC_PAGESIZE);
	*out = NULL;
	if (size == 0 || size > ((size_t)1 << 52))
		return kvn_seterr(-EINVAL, err, errlen,
				  "pool size %zu bytes is out of range (1 byte .. 4 PiB); set "
				  "max_local_cpu_size to a positive size",
				  size);
	size = round_up(size, try_huge ? HUGE_2M : (page > GRANULE ? page : GRANULE));

	struct kvn_pool *p = calloc(1, sizeof(*p));
	if (!p) {
		return kvn_seterr(-ENOMEM, err, errlen,
				  "out of memory allocating the pool descriptor");
	}
	p->size = size;
	p->backing = "pages";
	p->fd = -1;
	if (try_huge && (p->base = map_memfd(size, true, HUGE_2M, &p->fd)))
		p->backing = "hugetlb";
	if (!p->base) {
		p->base = map_memfd(size, false, try_huge ? HUGE_2M : page, &p->fd);
		if (!p->base) {
			int e = errno;
			kvn_seterr(
			    -EINVAL, err, errlen,
			    "cannot map a chunk pool of %zu bytes: %s; lower max_local_cpu_size",
			    size, strerror(e));
			free(p);
			return -e;
		}
		if (try_huge && madvise(p->base, size, MADV_HUGEPAGE) == 0)
			p->backing = "thp";
	}
	/* The region will be registered for RDMA: a forked child (plugins) must not share it
	 * copy-on-write, or the parent's registered pages could be remapped under the NIC. */
	(void)madvise(p->base, size, MADV_DONTFORK);

	pthread_mutex_init(&p->lock, NULL);
	p->next_gen = 1;
	struct kvn_slot *all = desc_get(p);
	if (!all) {
		munmap(p->base, size);
		close(p->fd);
		pthread_mutex_destroy(&p->lock);
		free(p);
		return kvn_seterr(-ENOMEM, err, errlen,
				  "out of memory allocating the pool descriptor");
	}
	all->off = 0;
	all->size = size;
	p->first = all;
	free_insert(p, all);
	*out = p;
	return 0;
}

void
kvn_pool_destroy(struct kvn_pool *pool)
{
	if (!pool)
		return;
	if (pool->populating) {
		atomic_store(&pool->populate_stop, true);
		pthread_join(pool->populator, NULL);
	}
	uint64_t held = 0;
	for (struct kvn_slot *b = pool->first, *n; b; b = n) {
		n = b->next_phys;
		held += b->state == BLK_SLOT && b->refs;
		free(b);
	}
	if (held)
		kvn_warn("pool",
			 "destroyed the chunk pool with %llu slots still referenced; their "
			 "views are now dangling (release views before closing the engine)",
			 (unsigned long long)held);
	for (struct kvn_slot *b = pool->spare, *n; b; b = n) {
		n = b->next;
		free(b);
	}
	munmap(pool->base, pool->size);
	close(pool->fd);
	pthread_mutex_destroy(&pool->lock);
	free(pool);
}

int
kvn_pool_fd(const struct kvn_pool *pool)
{
	return pool->fd;
}

void *
kvn_pool_base(const struct kvn_pool *pool)
{
	return pool->base;
}

size_t
kvn_pool_size(const struct kvn_pool *pool)
{
	return pool->size;
}

bool
kvn_pool_hugepages(const struct kvn_pool *pool)
{
	return !strcmp(pool->backing, "hugetlb");
}

static void *
populate_main(void *arg)
{
	struct kvn_pool *p = arg;
	double t0 = kvn_now_s();
	for (size_t off = 0; off < p->size && !atomic_load(&p->populate_stop);) {
		size_t n = p->size - off < POPULATE_STEP ? p->size - off : POPULATE_STEP;
		/* Write faults without writing: a put racing this step keeps its bytes. */
		if (madvise((char *)p->base + off, n, MADV_POPULATE_WRITE) < 0) {
			int e = errno;
			if (e == EINTR || e == EAGAIN)
				continue;
			if (e == EINVAL)
				kvn_info("pool",
					 "this kernel cannot populate the pool "
					 "(MADV_POPULATE_WRITE, Linux 5.14): its pages fault in on "
					 "first use");
			else
				kvn_warn(
				    "pool",
				    "making the pool resident stopped at %zu of %zu bytes: %s; "
				    "the rest faults in on first use",
				    off, p->size, strerror(e));
			return NULL;
		}
		off += n;
		atomic_store_explicit(&p->populated, off, memory_order_relaxed);
	}
	if (!atomic_load(&p->populate_stop))
		kvn_info("pool", "the pool's %zu bytes are resident (%s pages), made so in %.2f s",
			 p->size, p->backing, kvn_now_s() - t0);
	return NULL;
}

int
kvn_pool_populate_start(struct kvn_pool *pool)
{
	if (pool->populating)
		return 0;
	int rc = pthread_create(&pool->populator, NULL, populate_main, pool);
	if (rc)
		return -rc;
	pool->populating = true;
	return 0;
}

uint64_t
kvn_pool_populated(struct kvn_pool *pool)
{
	return atomic_load_explicit(&pool->populated, memory_order_relaxed);
}

const char *
kvn_pool_backing(const struct kvn_pool *pool)
{
	return pool->backing;
}

/* ------------------------------------------------------------------------------------------
 * Public: slots
 * ------------------------------------------------------------------------------------------ */

size_t
kvn_pool_slot_footprint(size_t len)
{
	return round_up(sizeof(struct kvn_slot_hdr) + len, GRANULE);
}

int
kvn_pool_set_evict(struct kvn_pool *pool, kvn_pool_evict_fn fn, void *ctx)
{
	int rc = 0;
	pthread_mutex_lock(&pool->lock);
	if (fn && pool->evict_fn && (pool->evict_fn != fn || pool->evict_ctx != ctx))
		rc = -EBUSY;
	else {
		pool->evict_fn = fn;
		pool->evict_ctx = fn ? ctx : NULL;
	}
	pthread_mutex_unlock(&pool->lock);
	return rc;
}

int
kvn_pool_alloc(struct kvn_pool *pool, size_t len, const struct kvn_key *key, bool evict,
	       struct kvn_slot **out)
{
	*out = NULL;
	if (len > pool->size - sizeof(struct kvn_slot_hdr))
		return -ENOSPC;
	const uint64_t need = kvn_pool_slot_footprint(len);
	struct kvn_slot *s;
	int rc = 0;

	pthread_mutex_lock(&pool->lock);
	while (!(s = free_find(pool, need >> GRANULE_SHIFT))) {
		/* Evicting cannot help when even all evictable bytes plus the free ones fall
		 * short: fail before throwing data away for nothing. */
		struct kvn_slot *v = pool->lru_tail;
		if (!evict || !v || pool->size - pool->used_bytes + pool->lru_bytes < need) {
			rc = -ENOMEM;
			break;
		}
		lru_remove(pool, v);
		v->linked = false;
		if (pool->evict_fn)
			pool->evict_fn(pool->evict_ctx, v);
		pool->evictions++;
		slot_release(pool, v);
	}
	if (s)
		rc = block_take(pool, s, need);
	if (rc) {
		pool->alloc_failures++;
		pthread_mutex_unlock(&pool->lock);
		return rc;
	}
	s->refs = 1;
	s->pins = 0;
	s->linked = false;
	s->len = len;
	s->gen = pool->next_gen;
	pool->next_gen += 2;
	pool->used_bytes += s->size;
	pool->payload_bytes += len;
	pool->slots++;
	pthread_mutex_unlock(&pool->lock);

	/* The slot is ours alone until committed: write the header outside the lock (the
	 * first touch of a fresh page faults it in). */
	if (key) {
		memcpy(&s->key, key, offsetof(struct kvn_key, str));
		size_t kl = key->len > KVN_KEY_MAX ? KVN_KEY_MAX : key->len;
		memcpy(s->key.str, key->str, kl);
		s->key.str[kl] = '\0';
		s->key.len = (uint16_t)kl;
	} else {
		memset(&s->key, 0, offsetof(struct kvn_key, str));
		s->key.str[0] = '\0';
	}
	struct kvn_slot_hdr *h = hdr_of(s);
	h->magic = KVN_SLOT_MAGIC;
	h->version = KVN_SLOT_VERSION;
	h->flags = 0;
	atomic_store_explicit(&h->generation, s->gen, memory_order_relaxed);
	h->digest_lo = key ? key->digest.lo : 0;
	h->digest_hi = key ? key->digest.hi : 0;
	h->len = len;
	h->checksum = 0;
	h->reserved[0] = h->reserved[1] = 0;
	/* seqlock writer: the odd generation is visible before any payload byte changes */
	atomic_thread_fence(memory_order_release);
	*out = s;
	return 0;
}

static void
publish(struct kvn_slot *slot, uint64_t checksum)
{
	struct kvn_slot_hdr *h = hdr_of(slot);
	h->checksum = checksum;
	if (slot->gen & 1)
		slot->gen++; /* the published value of the odd one alloc handed out */
	atomic_store_explicit(&h->generation, slot->gen, memory_order_release);
}

void
kvn_pool_seal(struct kvn_slot *slot)
{
	publish(slot, XXH3_64bits(kvn_slot_payload(slot), slot->len));
}

void
kvn_pool_seal_with(struct kvn_slot *slot, uint64_t checksum)
{
	publish(slot, checksum);
}

uint64_t
kvn_copy_checksum(void *dst, const void *src, size_t len)
{
	struct iovec one = {.iov_base = (void *)src, .iov_len = len};
	return kvn_copyv_checksum(dst, &one, 1);
}

void
kvn_pool_fill(struct kvn_slot *slot, const void *src)
{
	publish(slot, kvn_copy_checksum(kvn_slot_payload(slot), src, slot->len));
}

void
kvn_pool_commit(struct kvn_pool *pool, struct kvn_slot *slot)
{
	pthread_mutex_lock(&pool->lock);
	slot->linked = true;
	if (--slot->refs == 0 && !slot->pins)
		lru_push_hot(pool, slot);
	pthread_mutex_unlock(&pool->lock);
}

void
kvn_pool_unlink(struct kvn_pool *pool, struct kvn_slot *slot)
{
	pthread_mutex_lock(&pool->lock);
	lru_remove(pool, slot);
	slot->linked = false;
	retire_gen(slot);
	if (!slot->refs)
		slot_release(pool, slot);
	pthread_mutex_unlock(&pool->lock);
}

void
kvn_pool_ref(struct kvn_pool *pool, struct kvn_slot *slot)
{
	pthread_mutex_lock(&pool->lock);
	if (slot->refs++ == 0)
		lru_remove(pool, slot);
	pthread_mutex_unlock(&pool->lock);
}

void
kvn_pool_unref(struct kvn_pool *pool, struct kvn_slot *slot)
{
	pthread_mutex_lock(&pool->lock);
	if (--slot->refs == 0) {
		if (!slot->linked)
			slot_release(pool, slot);
		else if (!slot->pins)
			lru_push_hot(pool, slot); /* the LRU touch of a get */
	}
	pthread_mutex_unlock(&pool->lock);
}

void
kvn_pool_pin(struct kvn_pool *pool, struct kvn_slot *slot)
{
	pthread_mutex_lock(&pool->lock);
	if (slot->pins++ == 0)
		lru_remove(pool, slot);
	pthread_mutex_unlock(&pool->lock);
}

int
kvn_pool_unpin(struct kvn_pool *pool, struct kvn_slot *slot)
{
	int rc = 0;
	pthread_mutex_lock(&pool->lock);
	if (!slot->pins)
		rc = -EINVAL;
	else if (--slot->pins == 0 && !slot->refs && slot->linked)
		lru_push_hot(pool, slot);
	pthread_mutex_unlock(&pool->lock);
	return rc;
}

uint32_t
kvn_slot_pins(struct kvn_pool *pool, const struct kvn_slot *slot)
{
	pthread_mutex_lock(&pool->lock);
	uint32_t n = slot->pins;
	pthread_mutex_unlock(&pool->lock);
	return n;
}

static void
view_release(struct kvn_buf *buf)
{
	kvn_pool_unref(buf->owner, (struct kvn_slot *)(uintptr_t)buf->aux);
	free(buf);
}

int
kvn_pool_view(struct kvn_pool *pool, struct kvn_slot *slot, struct kvn_buf **out)
{
	return kvn_pool_view_range(pool, slot, 0, slot->len, out);
}

int
kvn_pool_view_range(struct kvn_pool *pool, struct kvn_slot *slot, size_t off, size_t len,
		    struct kvn_buf **out)
{
	*out = NULL;
	if (off > slot->len || len > slot->len - off)
		return -EINVAL;
	struct kvn_buf *b = malloc(sizeof(*b));
	if (!b)
		return -ENOMEM;
	kvn_pool_ref(pool, slot);
	kvn_buf_init(b, (char *)kvn_slot_payload(slot) + off, len, view_release, pool,
		     (uint64_t)(uintptr_t)slot);
	*out = b;
	return 0;
}

struct kvn_slot *
kvn_pool_view_slot(const struct kvn_buf *buf)
{
	return buf && buf->release == view_release ? (struct kvn_slot *)(uintptr_t)buf->aux : NULL;
}

struct kvn_slot *
kvn_pool_take_loose(struct kvn_pool *pool, const struct kvn_buf *buf, struct kvn_digest digest)
{
	struct kvn_slot *s = kvn_pool_view_slot(buf);
	if (!s || buf->owner != pool || buf->data != kvn_slot_payload(s) || buf->len != s->len)
		return NULL;
	const struct kvn_slot_hdr *h = hdr_of(s);
	pthread_mutex_lock(&pool->lock);
	/* loose: no index holds it (never committed) and the reader published it (even) */
	bool loose =
	    !s->linked && !(s->gen & 1) && h->digest_lo == digest.lo && h->digest_hi == digest.hi;
	if (loose)
		s->refs++; /* the view's keeps it off the LRU already */
	pthread_mutex_unlock(&pool->lock);
	return loose ? s : NULL;
}

uint64_t
kvn_slot_offset(const struct kvn_slot *slot)
{
	return slot->off;
}

struct kvn_slot_hdr *
kvn_slot_hdr(const struct kvn_slot *slot)
{
	return hdr_of(slot);
}

void *
kvn_slot_payload(const struct kvn_slot *slot)
{
	return (char *)hdr_of(slot) + sizeof(struct kvn_slot_hdr);
}

size_t
kvn_slot_len(const struct kvn_slot *slot)
{
	return slot->len;
}

const struct kvn_key *
kvn_slot_key(const struct kvn_slot *slot)
{
	return &slot->key;
}

struct kvn_digest
kvn_slot_digest(const struct kvn_slot *slot)
{
	const struct kvn_slot_hdr *h = hdr_of(slot);
	return (struct kvn_digest){.lo = h->digest_lo, .hi = h->digest_hi};
}

uint64_t
kvn_slot_generation(const struct kvn_slot *slot)
{
	return atomic_load_explicit(&hdr_of(slot)->generation, memory_order_acquire);
}

/* The header half of a slot image's check; exact: its len must be all of the n - 64 bytes. */
static int
verify_header(const void *image, size_t n, struct kvn_digest digest, uint64_t gen, bool exact)
{
	const struct kvn_slot_hdr *h = image;
	if (n < sizeof(*h) || h->magic != KVN_SLOT_MAGIC || h->version != KVN_SLOT_VERSION ||
	    h->len > n - sizeof(*h) || (exact && h->len != n - sizeof(*h)))
		return -EPROTO;
	uint64_t g =
	    atomic_load_explicit(&((struct kvn_slot_hdr *)image)->generation, memory_order_acquire);
	if ((g & 1) || (gen && g != gen) || h->digest_lo != digest.lo || h->digest_hi != digest.hi)
		return -ESTALE;
	return 0;
}

int
kvn_slot_verify(const void *image, size_t n, struct kvn_digest digest, uint64_t gen)
{
	const struct kvn_slot_hdr *h = image;
	int rc = verify_header(image, n, digest, gen, false);
	if (rc == 0 && XXH3_64bits((const char *)image + sizeof(*h), h->len) != h->checksum)
		rc = -EBADMSG;
	return rc;
}

int
kvn_slot_verify_sum(const void *image, size_t n, struct kvn_digest digest, uint64_t gen,
		    uint64_t sum)
{
	const struct kvn_slot_hdr *h = image;
	int rc = verify_header(image, n, digest, gen, true);
	if (rc == 0 && sum != h->checksum)
		rc = -EBADMSG;
	return rc;
}

void
kvn_pool_stats(struct kvn_pool *pool, struct kvn_pool_stats *out)
{
	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&pool->lock);
	out->size = pool->size;
	out->used_bytes = pool->used_bytes;
	out->free_bytes = pool->size - pool->used_bytes;
	out->payload_bytes = pool->payload_bytes;
	out->slots = pool->slots;
	out->evictable = pool->evictable;
	out->evictions = pool->evictions;
	out->alloc_failures = pool->alloc_failures;
	out->free_blocks = pool->free_blocks;
	if (pool->fl_map) {
		/* the largest block is in the highest non-empty class */
		unsigned fl = floor_log2(pool->fl_map);
		unsigned sl = floor_log2(pool->sl_map[fl]);
		for (struct kvn_slot *b = pool->heads[fl][sl]; b; b = b->next)
			if (b->size > out->largest_free)
				out->largest_free = b->size;
	}
	pthread_mutex_unlock(&pool->lock);
}
