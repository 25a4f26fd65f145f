/* gpu tier: chunks in a region of device memory (docs/gpu.md "The gpu tier"). Each chunk is a
 * slot laid out as in the host pool, the 64-byte header of core/pool.h and then the payload,
 * so that the region can be read as the pool is. The allocator's state, the index and the LRU
 * live in host memory beside the region; the bytes go in and out through the region's staging
 * (gpu/staging.h), one transfer at a time.
 *
 * Locking: `copy` is held for every transfer and for every change that frees device memory
 * (put, remove, eviction), so a get that found a slot under `copy` reads it while nothing can
 * free or reuse its block. `lock` guards the index, the block list, the LRU and the counts, and
 * is held for lookups and pointer updates (and a dropped slot's 8-byte generation write) only:
 * contains, pin and stats never wait behind a chunk's copy. Order: copy, then lock; the spill
 * into the cpu tier runs under copy only. */
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack (write_slot) */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backends.h"
#include "core/log.h"
#include "core/pool.h"
#include "core/xxh.h"
#include "gpu/staging.h"
#include "kvnode/backend.h"

/* Slots start on 256-byte boundaries of the region: the alignment cuMemcpy runs fastest at. */
#define GPU_ALIGN   256u
#define MIN_BUCKETS 1024u

/* One block of the region, free or holding a chunk. Blocks tile the region in address order
 * (prev/next); free ones are also on the free list, chunks on the index and, while neither
 * pinned nor being replaced, on the LRU. */
struct gblock {
	uint64_t off, size; /* in the region; size is a multiple of GPU_ALIGN */
	struct gblock *prev, *next;
	bool free;
	struct gblock *fnext, *fprev; /* free list */
	/* A chunk's: */
	struct kvn_key key;
	uint64_t len, checksum, generation;
	uint32_t pins;
	struct gblock *hnext;	      /* index chain */
	struct gblock *lnext, *lprev; /* LRU: lnext towards the cold end */
	bool on_lru;
};

struct kvn_backend {
	const struct kvn_backend_env *env;
	const struct kvn_gpu_region *rg;
	pthread_mutex_t copy;
	pthread_mutex_t lock;
	struct gblock *blocks; /* the first block (offset 0) */
	struct gblock *free;
	struct gblock **tab;
	size_t nbuckets, n;
	uint64_t bytes, generation;
	struct gblock *hot, *cold; /* LRU ends */
	struct kvn_backend *cpu;   /* where evicted chunks go (kvn_gpu_tier_set_spill) */
	/* Set and read under copy: */
	unsigned char *mirror; /* the host copy peers read (kvn_gpu_tier_set_mirror), or NULL */
	kvn_gpu_publish_fn publish;
	void *publish_ctx;
	uint64_t hits, misses, puts, evictions, errors, spilled; /* under lock */
};

static size_t
footprint(uint64_t len)
{
	uint64_t n = sizeof(struct kvn_slot_hdr) + len;
	return (size_t)((n + GPU_ALIGN - 1) / GPU_ALIGN * GPU_ALIGN);
}

/* ------------------------------------------------------------------------------------------
 * Index and LRU. Caller holds be->lock.
 * ------------------------------------------------------------------------------------------ */

static struct gblock **
bucket(struct kvn_backend *be, struct kvn_digest d)
{
	return &be->tab[d.lo & (be->nbuckets - 1)];
}

static struct gblock *
find(struct kvn_backend *be, const struct kvn_key *key)
{
	for (struct gblock *b = *bucket(be, key->digest); b; b = b->hnext)
		if (kvn_digest_eq(b->key.digest, key->digest))
			return b;
	return NULL;
}

/* Doubles the buckets at load 1; a failed growth only lengthens the chains. */
static void
grow(struct kvn_backend *be)
{
	if (be->n < be->nbuckets)
		return;
	size_t nb = be->nbuckets * 2;
	struct gblock **tab = calloc(nb, sizeof(*tab));
	if (!tab)
		return;
	for (size_t i = 0; i < be->nbuckets; i++)
		for (struct gblock *b = be->tab[i], *next; b; b = next) {
			next = b->hnext;
			b->hnext = tab[b->key.digest.lo & (nb - 1)];
			tab[b->key.digest.lo & (nb - 1)] = b;
		}
	free(be->tab);
	be->tab = tab;
	be->nbuckets = nb;
}

static void
lru_remove(struct kvn_backend *be, struct gblock *b)
{
	if (!b->on_lru)
		return;
	if (b->lprev)
		b->lprev->lnext = b->lnext;
	else
		be->hot = b->lnext;
	if (b->lnext)
		b->lnext->lprev = b->lprev;
	else
		be->cold = b->lprev;
	b->lnext = b->lprev = NULL;
	b->on_lru = false;
}

static void
lru_push_hot(struct kvn_backend *be, struct gblock *b)
{
	lru_remove(be, b);
	if (b->pins)
		return;
	b->lnext = be->hot;
	if (be->hot)
		be->hot->lprev = b;
	be->hot = b;
	if (!be->cold)
		be->cold = b;
	b->on_lru = true;
}

static void
link_chunk(struct kvn_backend *be, struct gblock *b)
{
	grow(be);
	struct gblock **h = bucket(be, b->key.digest);
	b->hnext = *h;
	*h = b;
	be->n++;
	be->bytes += b->len;
	lru_push_hot(be, b);
}

static void
unlink_chunk(struct kvn_backend *be, struct gblock *b)
{
	struct gblock **pp = bucket(be, b->key.digest);
	while (*pp != b)
		pp = &(*pp)->hnext;
	*pp = b->hnext;
	b->hnext = NULL;
	lru_remove(be, b);
	be->n--;
	be->bytes -= b->len;
}

/* ------------------------------------------------------------------------------------------
 * Blocks: first fit over the free list, neighbours merged on free. Caller holds be->lock.
 * ------------------------------------------------------------------------------------------ */

static void
free_list_add(struct kvn_backend *be, struct gblock *b)
{
	b->free = true;
	b->fprev = NULL;
	b->fnext = be->free;
	if (be->free)
		be->free->fprev = b;
	be->free = b;
}

static void
free_list_remove(struct kvn_backend *be, struct gblock *b)
{
	if (b->fprev)
		b->fprev->fnext = b->fnext;
	else
		be->free = b->fnext;
	if (b->fnext)
		b->fnext->fprev = b->fprev;
	b->free = false;
}

/* Absorbs next (free) into b and frees its descriptor. */
static void
merge_next(struct kvn_backend *be, struct gblock *b)
{
	struct gblock *n = b->next;
	free_list_remove(be, n);
	b->size += n->size;
	b->next = n->next;
	if (n->next)
		n->next->prev = b;
	free(n);
}

static void
block_release(struct kvn_backend *be, struct gblock *b)
{
	free_list_add(be, b);
	if (b->next && b->next->free)
		merge_next(be, b);
	if (b->prev && b->prev->free) {
		struct gblock *p = b->prev;
		merge_next(be, p);
	}
}

/* Places the descriptor nb (allocated by the caller) over the first free block that holds
 * size bytes; false when none does. No allocation, so nothing here can fail half done. */
static bool
block_take(struct kvn_backend *be, struct gblock *nb, uint64_t size)
{
	struct gblock *f = be->free;
	while (f && f->size < size)
		f = f->fnext;
	if (!f)
		return false;
	nb->off = f->off;
	nb->size = size;
	nb->free = false;
	nb->prev = f->prev;
	if (f->prev)
		f->prev->next = nb;
	else
		be->blocks = nb;
	if (f->size == size) {
		nb->next = f->next;
		if (f->next)
			f->next->prev = nb;
		free_list_remove(be, f);
		free(f);
	} else {
		nb->next = f;
		f->prev = nb;
		f->off += size;
		f->size -= size;
	}
	return true;
}

/* ------------------------------------------------------------------------------------------
 * Copies. Caller holds be->copy.
 * ------------------------------------------------------------------------------------------ */

struct put_src {
	const struct kvn_slot_hdr *hdr;
	const unsigned char *data;
	XXH3_state_t *xs;
};

/* The slot image for staging: the header, then the payload, hashed as it goes. */
static int
image_piece(void *ctx, size_t off, void *piece, size_t n)
{
	struct put_src *s = ctx;
	unsigned char *dst = piece;
	const size_t H = sizeof(struct kvn_slot_hdr);
	if (off < H) {
		size_t h = H - off < n ? H - off : n;
		memcpy(dst, (const unsigned char *)s->hdr + off, h);
		dst += h, off += h, n -= h;
	}
	if (n) {
		memcpy(dst, s->data + (off - H), n);
		XXH3_64bits_update(s->xs, dst, n);
	}
	return 0;
}

static void
fill_hdr(struct kvn_slot_hdr *h, const struct gblock *b)
{
	memset(h, 0, sizeof(*h));
	h->magic = KVN_SLOT_MAGIC;
	h->version = KVN_SLOT_VERSION;
	atomic_store_explicit(&h->generation, b->generation, memory_order_relaxed);
	h->digest_lo = b->key.digest.lo;
	h->digest_hi = b->key.digest.hi;
	h->len = b->len;
	h->checksum = b->checksum;
}

/* Writes b's slot image: the payload with a header of odd generation, then the header with
 * the checksum found on the way and the generation made even, so that a reader of the region
 * never takes a half-written slot for a whole one. */
static int
write_slot(struct kvn_backend *be, struct gblock *b, const void *data, char *err, size_t errlen)
{
	struct kvn_slot_hdr h;
	XXH3_state_t xs;
	XXH3_64bits_reset(&xs);
	b->checksum = 0;
	fill_hdr(&h, b);
	atomic_store_explicit(&h.generation, b->generation - 1, memory_order_relaxed);
	struct put_src src = {&h, data, &xs};
	unsigned char *m = be->mirror ? be->mirror + b->off : NULL;
	if (m) {
		memcpy(m, &h, sizeof(h));
		memcpy(m + sizeof(h), data, b->len);
	}
	int rc = kvn_staging_put(be->rg->staging, be->rg->base + b->off, sizeof(h) + b->len,
				 image_piece, &src, err, errlen);
	if (rc)
		return rc;
	b->checksum = XXH3_64bits_digest(&xs);
	fill_hdr(&h, b);
	rc =
	    kvn_staging_put_buf(be->rg->staging, be->rg->base + b->off, &h, sizeof(h), err, errlen);
	if (rc == 0 && m) {
		struct kvn_slot_hdr *mh = (struct kvn_slot_hdr *)m;
		mh->checksum = h.checksum;
		atomic_store_explicit(&mh->generation, b->generation, memory_order_release);
	}
	return rc;
}

/* Makes b's header say "being rewritten" (odd generation) in the region and its mirror before
 * its block is freed, so that a reader holding its old location gets -ESTALE, not the bytes of
 * a value no longer held. Caller holds copy. */
static void
retire(struct kvn_backend *be, const struct gblock *b)
{
	uint64_t odd = b->generation + 1;
	char err[256];
	if (be->mirror)
		atomic_store_explicit(&((struct kvn_slot_hdr *)(be->mirror + b->off))->generation,
				      odd, memory_order_release);
	if (kvn_staging_put_buf(be->rg->staging,
				be->rg->base + b->off + offsetof(struct kvn_slot_hdr, generation),
				&odd, sizeof(odd), err, sizeof(err)))
		be->env->log(be->env, KVN_LOG_WARN, "key %s: its header stays: %s", b->key.str,
			     err);
}

static struct kvn_gpu_slot_info
info_of(const struct gblock *b)
{
	return (struct kvn_gpu_slot_info){.digest = b->key.digest,
					  .off = b->off,
					  .len = sizeof(struct kvn_slot_hdr) + b->len,
					  .generation = b->generation};
}

/* Tells the publish hook; caller holds copy (so the events of a key keep their order), not
 * lock (the hook may ask the cpu tier, whose own hook asks this tier under its lock). */
static void
publish(struct kvn_backend *be, enum kvn_cpu_event ev, const struct kvn_gpu_slot_info *si)
{
	if (be->publish)
		be->publish(be->publish_ctx, ev, si);
}

/* Reads b's payload into dst and checks it against the checksum it was written with. */
static int
read_slot(struct kvn_backend *be, const struct gblock *b, void *dst, uint64_t *sum, char *err,
	  size_t errlen)
{
	int rc = kvn_staging_get_sum(be->rg->staging, dst,
				     be->rg->base + b->off + sizeof(struct kvn_slot_hdr), b->len,
				     sum, err, errlen);
	if (rc == 0 && *sum != b->checksum)
		rc = kvn_seterr(-EBADMSG, err, errlen,
				"checksum mismatch (xxh3-64 %016" PRIx64 ", %016" PRIx64
				" when written)",
				*sum, b->checksum);
	return rc;
}

static void
count(struct kvn_backend *be, uint64_t *ctr)
{
	pthread_mutex_lock(&be->lock);
	(*ctr)++;
	pthread_mutex_unlock(&be->lock);
}

/* Drops b from the index and frees its block (b is gone after it). Caller holds copy and
 * lock. */
static void
drop(struct kvn_backend *be, struct gblock *b)
{
	unlink_chunk(be, b);
	retire(be, b);
	block_release(be, b);
}

/* An evicted chunk into the cpu tier, unless that already holds the key (puts write through,
 * so usually it does). Caller holds copy, not lock. A chunk the tier cannot take is simply
 * evicted: the cpu tier's own limits decide, as for any put. */
static void
spill(struct kvn_backend *be, const struct gblock *b)
{
	if (!be->cpu || kvn_cpu_backend_ops.contains(be->cpu, &b->key, false) == 1)
		return;
	struct kvn_slot *slot;
	char err[256];
	uint64_t sum;
	int rc = kvn_cpu_reserve(be->cpu, &b->key, b->len, &slot);
	if (rc == 0 && (rc = read_slot(be, b, kvn_slot_payload(slot), &sum, err, sizeof(err)))) {
		be->env->log(be->env, KVN_LOG_WARN, "key %s evicted, not moved to cpu: %s",
			     b->key.str, err);
		kvn_pool_unref(kvn_tier_env_of(be->env)->pool, slot); /* never indexed: freed */
		count(be, &be->errors);
		return;
	}
	if (rc == 0) {
		kvn_pool_seal_with(slot, sum);
		rc = kvn_cpu_adopt(be->cpu, &b->key, slot);
	}
	if (rc == 0)
		count(be, &be->spilled);
}

/* Frees room for size bytes by evicting from the cold end, spilling each victim first; false
 * when every chunk left is pinned. Caller holds copy, not lock. */
static bool
make_room(struct kvn_backend *be, struct gblock *nb, uint64_t size)
{
	for (;;) {
		pthread_mutex_lock(&be->lock);
		if (block_take(be, nb, size)) {
			pthread_mutex_unlock(&be->lock);
			return true;
		}
		struct gblock *v = be->cold;
		pthread_mutex_unlock(&be->lock);
		if (!v)
			return false;
		spill(be, v); /* v stays held while it moves: only pins can change meanwhile */
		struct kvn_gpu_slot_info si = info_of(v);
		pthread_mutex_lock(&be->lock);
		bool evicted = !v->pins;
		if (evicted) {
			drop(be, v);
			be->evictions++;
		}
		pthread_mutex_unlock(&be->lock);
		if (evicted)
			publish(be, KVN_CPU_DROP, &si);
	}
}

/* ------------------------------------------------------------------------------------------
 * Operations
 * ------------------------------------------------------------------------------------------ */

static int
gpu_create(const struct kvn_backend_env *env, struct kvn_backend **out)
{
	const struct kvn_gpu_region *rg = kvn_tier_env_of(env)->gpu;
	*out = NULL;
	if (!rg || !rg->staging || rg->len < footprint(0)) {
		env->log(env, KVN_LOG_ERROR,
			 "the gpu tier needs a device region (gpu: true|auto and max_gpu_size)");
		return -EINVAL;
	}
	struct kvn_backend *be = calloc(1, sizeof(*be));
	struct gblock *all = calloc(1, sizeof(*all));
	if (be)
		be->tab = calloc(MIN_BUCKETS, sizeof(*be->tab));
	if (!be || !all || !be->tab) {
		if (be)
			free(be->tab);
		free(be);
		free(all);
		return -ENOMEM;
	}
	be->env = env;
	be->rg = rg;
	be->nbuckets = MIN_BUCKETS;
	be->generation = 2;
	all->size = rg->len / GPU_ALIGN * GPU_ALIGN;
	be->blocks = all;
	free_list_add(be, all);
	pthread_mutex_init(&be->copy, NULL);
	pthread_mutex_init(&be->lock, NULL);
	*out = be;
	return 0;
}

static void
gpu_destroy(struct kvn_backend *be)
{
	if (!be)
		return;
	for (struct gblock *b = be->blocks, *next; b; b = next) {
		next = b->next;
		free(b);
	}
	free(be->tab);
	pthread_mutex_destroy(&be->copy);
	pthread_mutex_destroy(&be->lock);
	free(be);
}

static int
gpu_contains(struct kvn_backend *be, const struct kvn_key *key, bool pin)
{
	pthread_mutex_lock(&be->lock);
	struct gblock *b = find(be, key);
	if (b && pin) {
		b->pins++;
		lru_remove(be, b);
	}
	pthread_mutex_unlock(&be->lock);
	return b != NULL;
}

static int
gpu_put(struct kvn_backend *be, const struct kvn_key *key, struct kvn_buf *buf)
{
	uint64_t size = footprint(buf->len);
	if (size > be->rg->len)
		return -ENOSPC;
	struct gblock *nb = calloc(1, sizeof(*nb));
	if (!nb)
		return -ENOMEM;
	nb->key = *key;
	nb->len = buf->len;
	char err[256];
	pthread_mutex_lock(&be->copy);
	if (!make_room(be, nb, size)) {
		pthread_mutex_unlock(&be->copy);
		free(nb);
		return -ENOMEM; /* the rest is pinned */
	}
	pthread_mutex_lock(&be->lock);
	be->generation += 2;
	nb->generation = be->generation;
	pthread_mutex_unlock(&be->lock);

	int rc = write_slot(be, nb, buf->data, err, sizeof(err));
	struct kvn_gpu_slot_info si = info_of(nb);
	pthread_mutex_lock(&be->lock);
	if (rc == 0) {
		struct gblock *old = find(be, key);
		if (old)
			drop(be, old); /* its pins go with it, as in the cpu tier */
		link_chunk(be, nb);
		be->puts++;
	} else {
		block_release(be, nb);
		be->errors++;
	}
	pthread_mutex_unlock(&be->lock);
	if (rc == 0)
		publish(be, KVN_CPU_ADMIT, &si); /* it replaces the older value's entry */
	pthread_mutex_unlock(&be->copy);
	if (rc)
		be->env->log(be->env, KVN_LOG_WARN, "put %s of %zu bytes: %s", key->str, buf->len,
			     err);
	return rc;
}

/* key's chunk, made the hottest on the LRU; NULL on a miss (counted with count_miss). Caller
 * holds copy, so the block stays until it lets go. */
static struct gblock *
touch(struct kvn_backend *be, const struct kvn_key *key, bool count_miss)
{
	pthread_mutex_lock(&be->lock);
	struct gblock *b = find(be, key);
	if (b)
		lru_push_hot(be, b);
	else if (count_miss)
		be->misses++;
	pthread_mutex_unlock(&be->lock);
	return b;
}

static int
gpu_get(struct kvn_backend *be, const struct kvn_key *key, struct kvn_buf **out)
{
	*out = NULL;
	pthread_mutex_lock(&be->copy);
	struct gblock *b = touch(be, key, true);
	if (!b) {
		pthread_mutex_unlock(&be->copy);
		return -ENOENT;
	}
	struct kvn_buf *buf = kvn_buf_new(b->len);
	char err[256];
	uint64_t sum;
	int rc = buf ? read_slot(be, b, buf->data, &sum, err, sizeof(err)) : -ENOMEM;
	struct kvn_gpu_slot_info si = info_of(b);
	bool dropped = rc && rc != -ENOMEM;
	pthread_mutex_lock(&be->lock);
	if (rc == 0) {
		be->hits++;
	} else if (dropped) {
		/* A chunk that cannot be read back is not served again. */
		be->errors++;
		be->misses++;
		drop(be, b);
	}
	pthread_mutex_unlock(&be->lock);
	if (dropped)
		publish(be, KVN_CPU_DROP, &si);
	pthread_mutex_unlock(&be->copy);
	if (rc == -ENOMEM)
		return rc;
	if (rc) {
		be->env->log(be->env, KVN_LOG_WARN, "get %s: %s; dropped", key->str, err);
		kvn_buf_unref(buf);
		return -ENOENT;
	}
	*out = buf;
	return 0;
}

static int
gpu_remove(struct kvn_backend *be, const struct kvn_key *key)
{
	pthread_mutex_lock(&be->copy);
	pthread_mutex_lock(&be->lock);
	struct gblock *b = find(be, key);
	struct kvn_gpu_slot_info si = b ? info_of(b) : (struct kvn_gpu_slot_info){0};
	if (b)
		drop(be, b);
	pthread_mutex_unlock(&be->lock);
	if (b)
		publish(be, KVN_CPU_DROP, &si);
	pthread_mutex_unlock(&be->copy);
	return b ? 0 : -ENOENT;
}

static int
gpu_pin(struct kvn_backend *be, const struct kvn_key *key)
{
	return gpu_contains(be, key, true) ? 0 : -ENOENT;
}

static int
gpu_unpin(struct kvn_backend *be, const struct kvn_key *key)
{
	pthread_mutex_lock(&be->lock);
	struct gblock *b = find(be, key);
	int rc = !b ? -ENOENT : !b->pins ? -EINVAL : 0;
	if (rc == 0 && --b->pins == 0)
		lru_push_hot(be, b);
	pthread_mutex_unlock(&be->lock);
	return rc;
}

static int
gpu_list(struct kvn_backend *be, kvn_list_cb cb, void *ctx)
{
	/* The keys are copied out first: cb may call back into the tier. */
	pthread_mutex_lock(&be->lock);
	size_t n = be->n;
	struct {
		struct kvn_key key;
		uint64_t len;
	} *all = malloc((n ? n : 1) * sizeof(*all));
	size_t k = 0;
	for (size_t i = 0; all && i < be->nbuckets; i++)
		for (struct gblock *b = be->tab[i]; b; b = b->hnext, k++)
			all[k].key = b->key, all[k].len = b->len;
	pthread_mutex_unlock(&be->lock);
	if (!all)
		return -ENOMEM;
	int rc = 0;
	for (size_t i = 0; i < k && rc == 0; i++)
		rc = cb(ctx, &all[i].key, all[i].len);
	free(all);
	return rc;
}

static void
gpu_stats(struct kvn_backend *be, struct kvn_backend_stats *out)
{
	pthread_mutex_lock(&be->lock);
	*out = (struct kvn_backend_stats){
	    .count = be->n,
	    .bytes = be->bytes,
	    .capacity = be->rg->len,
	    .hits = be->hits,
	    .misses = be->misses,
	    .puts = be->puts,
	    .evictions = be->evictions,
	    .errors = be->errors,
	};
	pthread_mutex_unlock(&be->lock);
}

void
kvn_gpu_tier_set_spill(struct kvn_backend *be, struct kvn_backend *cpu)
{
	pthread_mutex_lock(&be->copy);
	be->cpu = cpu;
	pthread_mutex_unlock(&be->copy);
}

void
kvn_gpu_tier_set_publish(struct kvn_backend *be, kvn_gpu_publish_fn fn, void *ctx)
{
	pthread_mutex_lock(&be->copy);
	be->publish = fn;
	be->publish_ctx = ctx;
	pthread_mutex_unlock(&be->copy);
}

int
kvn_gpu_tier_locate(struct kvn_backend *be, struct kvn_digest d, struct kvn_gpu_slot_info *out)
{
	struct kvn_key k = {.digest = d};
	pthread_mutex_lock(&be->lock);
	struct gblock *b = find(be, &k);
	if (b)
		*out = info_of(b);
	pthread_mutex_unlock(&be->lock);
	return b != NULL;
}

int
kvn_gpu_tier_walk(struct kvn_backend *be, void (*fn)(void *ctx, const struct kvn_gpu_slot_info *si),
		  void *ctx)
{
	pthread_mutex_lock(&be->lock);
	size_t n = be->n, k = 0;
	struct kvn_gpu_slot_info *all = malloc((n ? n : 1) * sizeof(*all));
	for (struct gblock *b = be->blocks; all && b; b = b->next)
		if (!b->free && k < n)
			all[k++] = info_of(b);
	pthread_mutex_unlock(&be->lock);
	if (!all)
		return -ENOMEM;
	for (size_t i = 0; i < k; i++)
		fn(ctx, &all[i]);
	free(all);
	return 0;
}

int
kvn_gpu_tier_set_mirror(struct kvn_backend *be, void *host, char *err, size_t errlen)
{
	int rc = 0;
	pthread_mutex_lock(&be->copy);
	/* What the tier holds already goes into the mirror before peers can read it. Blocks
	 * change only under copy: the list may be walked without lock. */
	for (struct gblock *b = host ? be->blocks : NULL; b && rc == 0; b = b->next)
		if (!b->free)
			rc = kvn_staging_get_buf(be->rg->staging, (unsigned char *)host + b->off,
						 be->rg->base + b->off,
						 sizeof(struct kvn_slot_hdr) + b->len, err, errlen);
	be->mirror = rc ? NULL : host;
	pthread_mutex_unlock(&be->copy);
	return rc;
}

int
kvn_gpu_tier_get_into_dev(struct kvn_backend *be, const struct kvn_key *key, uint64_t dst,
			  size_t cap, size_t *len, char *err, size_t errlen)
{
	pthread_mutex_lock(&be->copy);
	struct gblock *b = touch(be, key, false);
	int rc = !b ? -ENOENT : 0;
	if (b && b->len > cap)
		rc = kvn_seterr(-ENOSPC, err, errlen,
				"the value of %s is %" PRIu64 " bytes, the buffer %zu", key->str,
				b->len, cap);
	if (rc == 0)
		rc = kvn_staging_copy_dev(be->rg->staging, dst,
					  be->rg->base + b->off + sizeof(struct kvn_slot_hdr),
					  b->len, err, errlen);
	if (rc == 0) {
		*len = b->len;
		count(be, &be->hits);
	}
	pthread_mutex_unlock(&be->copy);
	return rc;
}

uint64_t
kvn_gpu_tier_spilled(struct kvn_backend *be)
{
	pthread_mutex_lock(&be->lock);
	uint64_t n = be->spilled;
	pthread_mutex_unlock(&be->lock);
	return n;
}

const struct kvn_backend_ops kvn_gpu_backend_ops = {
    KVN_BACKEND_OPS_INIT,
    .name = "gpu",
    .create = gpu_create,
    .destroy = gpu_destroy,
    .contains = gpu_contains,
    .put = gpu_put,
    .get = gpu_get,
    .remove = gpu_remove,
    .pin = gpu_pin,
    .unpin = gpu_unpin,
    .list = gpu_list,
    .stats = gpu_stats,
};
