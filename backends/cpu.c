/* cpu tier: chunks live in slots of the node's registered pool (env->pool); an open-addressing
 * index maps key digests to slots. Copies and checksums run outside every lock; eviction is the
 * pool's LRU, reported back here through the pool's eviction callback. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kvnode/backend.h"
#include "core/pool.h"
#include "backends/backends.h"

#define MIN_CAP 1024u

/* One index entry; slot NULL marks an empty cell. No per-entry allocation: the key text is kept
 * by the slot's descriptor in the pool. */
struct entry {
	uint64_t lo, hi;
	struct kvn_slot *slot;
};

struct kvn_backend {
	const struct kvn_backend_env *env; /* outlives the instance (owned by the caller) */
	struct kvn_pool *pool;
	/* Guards the index, count and bytes. Lock order: this lock, then the pool's. Held only
	 * for lookups and pointer updates, never during a copy or checksum. */
	pthread_mutex_t lock;
	struct entry *tab;
	size_t cap; /* power of two */
	size_t n;
	uint64_t bytes;
	_Atomic uint64_t hits, misses, puts, evictions, errors;
	_Atomic uint64_t adopted; /* puts that indexed a loose slot of the pool, no copy */
	/* The cluster glue's directory feed (kvn_cpu_set_publish): called with lock held, so
	 * admits and evicts reach it in index order. */
	kvn_cpu_publish_fn publish;
	void *publish_ctx;
};

static void
publish(struct kvn_backend *be, enum kvn_cpu_event op, const struct kvn_slot *slot)
{
	if (be->publish)
		be->publish(be->publish_ctx, op, slot);
}

/* ------------------------------------------------------------------------------------------
 * Index: linear probing keyed by the 128-bit digest, deletion by backward shift (no tombstones,
 * so probe lengths stay short under churn). Caller holds be->lock.
 * ------------------------------------------------------------------------------------------ */

static size_t
home(const struct kvn_backend *be, uint64_t lo)
{
	return (size_t)lo & (be->cap - 1); /* the digest is already a good hash */
}

static struct entry *
tab_find(struct kvn_backend *be, struct kvn_digest d)
{
	for (size_t i = home(be, d.lo);; i = (i + 1) & (be->cap - 1)) {
		struct entry *e = &be->tab[i];
		if (!e->slot)
			return NULL;
		if (e->lo == d.lo && e->hi == d.hi)
			return e;
	}
}

static void
tab_place(struct entry *tab, size_t cap, uint64_t lo, uint64_t hi, struct kvn_slot *slot)
{
	size_t i = (size_t)lo & (cap - 1);
	while (tab[i].slot)
		i = (i + 1) & (cap - 1);
	tab[i] = (struct entry){.lo = lo, .hi = hi, .slot = slot};
}

/* Room for one more entry at load <= 1/2. */
static int
tab_reserve(struct kvn_backend *be)
{
	if ((be->n + 1) * 2 <= be->cap)
		return 0;
	size_t cap = be->cap * 2;
	struct entry *tab = calloc(cap, sizeof(*tab));
	if (!tab)
		return -ENOMEM;
	for (size_t i = 0; i < be->cap; i++)
		if (be->tab[i].slot)
			tab_place(tab, cap, be->tab[i].lo, be->tab[i].hi, be->tab[i].slot);
	free(be->tab);
	be->tab = tab;
	be->cap = cap;
	return 0;
}

static void
tab_delete(struct kvn_backend *be, struct entry *e)
{
	const size_t mask = be->cap - 1;
	size_t i = (size_t)(e - be->tab), j = i;
	for (;;) {
		j = (j + 1) & mask;
		if (!be->tab[j].slot)
			break;
		size_t k = home(be, be->tab[j].lo);
		/* entry j may move back to the hole at i unless its home lies cyclically in (i, j]
		 */
		bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
		if (!stays) {
			be->tab[i] = be->tab[j];
			i = j;
		}
	}
	be->tab[i].slot = NULL;
}

/* Drops e from the index and hands its slot back to the pool (freed at once or when the last
 * view goes). */
static void
drop(struct kvn_backend *be, struct entry *e)
{
	struct kvn_slot *s = e->slot;
	be->bytes -= kvn_slot_len(s);
	be->n--;
	tab_delete(be, e);
	publish(be, KVN_CPU_DROP, s);
	kvn_pool_unlink(be->pool, s);
}

/* The pool's eviction callback: runs inside kvn_pool_alloc, which put calls with be->lock
 * held, so the index may be changed here without taking it again. */
static void
evicted(void *ctx, struct kvn_slot *slot)
{
	struct kvn_backend *be = ctx;
	struct entry *e = tab_find(be, kvn_slot_digest(slot));
	if (!e || e->slot != slot)
		return;
	be->bytes -= kvn_slot_len(slot);
	be->n--;
	tab_delete(be, e);
	publish(be, KVN_CPU_DROP, slot);
	atomic_fetch_add_explicit(&be->evictions, 1, memory_order_relaxed);
}

/* ------------------------------------------------------------------------------------------
 * Ops
 * ------------------------------------------------------------------------------------------ */

static int
cpu_create(const struct kvn_backend_env *env, struct kvn_backend **out)
{
	*out = NULL;
	struct kvn_pool *pool = kvn_tier_env_of(env)->pool;
	if (!pool) {
		env->log(env, KVN_LOG_ERROR,
			 "the cpu tier needs the node's chunk pool (none given); it is created by "
			 "the engine from max_local_cpu_size");
		return -EINVAL;
	}
	struct kvn_backend *be = calloc(1, sizeof(*be));
	if (!be)
		return -ENOMEM;
	be->env = env;
	be->pool = pool;
	be->cap = MIN_CAP;
	be->tab = calloc(be->cap, sizeof(*be->tab));
	if (!be->tab) {
		free(be);
		return -ENOMEM;
	}
	pthread_mutex_init(&be->lock, NULL);
	int rc = kvn_pool_set_evict(be->pool, evicted, be);
	if (rc) {
		env->log(env, KVN_LOG_ERROR,
			 "the chunk pool already serves another cpu tier; configure one cpu tier "
			 "per node");
		pthread_mutex_destroy(&be->lock);
		free(be->tab);
		free(be);
		return rc;
	}
	*out = be;
	return 0;
}

static void
cpu_destroy(struct kvn_backend *be)
{
	if (!be)
		return;
	kvn_pool_set_evict(be->pool, NULL, NULL);
	for (size_t i = 0; i < be->cap; i++)
		if (be->tab[i].slot)
			kvn_pool_unlink(be->pool, be->tab[i].slot);
	pthread_mutex_destroy(&be->lock);
	free(be->tab);
	free(be);
}

static int
cpu_contains(struct kvn_backend *be, const struct kvn_key *key, bool pin)
{
	pthread_mutex_lock(&be->lock);
	struct entry *e = tab_find(be, key->digest);
	if (e && pin)
		kvn_pool_pin(be->pool, e->slot);
	pthread_mutex_unlock(&be->lock);
	return e != NULL;
}

int
kvn_cpu_reserve(struct kvn_backend *be, const struct kvn_key *key, size_t len,
		struct kvn_slot **out)
{
	/* The allocation may evict; the pool's callback edits the index, hence the lock. */
	pthread_mutex_lock(&be->lock);
	int rc = kvn_pool_alloc(be->pool, len, key, true, out);
	pthread_mutex_unlock(&be->lock);
	if (rc == -ENOSPC)
		be->env->log(
		    be->env, KVN_LOG_DEBUG,
		    "value of %zu bytes for key %s exceeds the cpu pool (%zu bytes); raise "
		    "max_local_cpu_size",
		    len, key->str, kvn_pool_size(be->pool));
	return rc;
}

int
kvn_cpu_adopt(struct kvn_backend *be, const struct kvn_key *key, struct kvn_slot *slot)
{
	size_t len = kvn_slot_len(slot);
	int rc = 0;
	pthread_mutex_lock(&be->lock);
	struct entry *e = tab_find(be, key->digest);
	if (e) {
		struct kvn_slot *old = e->slot;
		be->bytes += len;
		be->bytes -= kvn_slot_len(old);
		e->slot = slot;
		kvn_pool_unlink(be->pool, old);
	} else if ((rc = tab_reserve(be)) == 0) {
		tab_place(be->tab, be->cap, key->digest.lo, key->digest.hi, slot);
		be->n++;
		be->bytes += len;
	}
	if (rc == 0) {
		kvn_pool_commit(be->pool, slot);
		publish(be, KVN_CPU_ADMIT, slot); /* an admit replaces our older entry */
	}
	pthread_mutex_unlock(&be->lock);
	if (rc) {
		kvn_pool_unref(be->pool, slot); /* never linked: frees it */
		return rc;
	}
	atomic_fetch_add_explicit(&be->puts, 1, memory_order_relaxed);
	return 0;
}

static int
cpu_put(struct kvn_backend *be, const struct kvn_key *key, struct kvn_buf *buf)
{
	struct kvn_slot *slot;
	if (!key || !buf)
		return -EINVAL;
	/* A peer hit's payload is already a sealed slot of this pool (the READ landed there):
	 * the promotion indexes that slot, no copy. */
	if ((slot = kvn_pool_take_loose(be->pool, buf, key->digest))) {
		atomic_fetch_add_explicit(&be->adopted, 1, memory_order_relaxed);
		return kvn_cpu_adopt(be, key, slot);
	}
	int rc = kvn_cpu_reserve(be, key, buf->len, &slot);
	if (rc)
		return rc;
	/* The slot is private to this put (odd generation, not indexed): copy and checksum
	 * without any lock. */
	kvn_pool_fill(slot, buf->data);
	return kvn_cpu_adopt(be, key, slot);
}

static int
cpu_get(struct kvn_backend *be, const struct kvn_key *key, struct kvn_buf **out)
{
	int rc = -ENOENT;
	*out = NULL;
	pthread_mutex_lock(&be->lock);
	struct entry *e = tab_find(be, key->digest);
	if (e) {
		/* Local memory is trusted, so no full checksum pass on the hot path; the header
		 * still has to say what the index says. */
		const struct kvn_slot_hdr *h = kvn_slot_hdr(e->slot);
		if (h->magic != KVN_SLOT_MAGIC || (kvn_slot_generation(e->slot) & 1) ||
		    h->digest_lo != key->digest.lo || h->digest_hi != key->digest.hi) {
			drop(be, e);
			atomic_fetch_add_explicit(&be->errors, 1, memory_order_relaxed);
		} else {
			/* the view's reference takes the slot off the LRU; its release puts it
			 * back at the hot end: the LRU touch */
			rc = kvn_pool_view(be->pool, e->slot, out);
		}
	}
	pthread_mutex_unlock(&be->lock);
	atomic_fetch_add_explicit(rc == 0 ? &be->hits : &be->misses, 1, memory_order_relaxed);
	return rc;
}

static int
cpu_remove(struct kvn_backend *be, const struct kvn_key *key)
{
	pthread_mutex_lock(&be->lock);
	struct entry *e = tab_find(be, key->digest);
	if (e)
		drop(be, e);
	pthread_mutex_unlock(&be->lock);
	return e ? 0 : -ENOENT;
}

static int
cpu_pin(struct kvn_backend *be, const struct kvn_key *key)
{
	return cpu_contains(be, key, true) ? 0 : -ENOENT;
}

static int
cpu_unpin(struct kvn_backend *be, const struct kvn_key *key)
{
	int rc = -ENOENT;
	pthread_mutex_lock(&be->lock);
	struct entry *e = tab_find(be, key->digest);
	if (e)
		rc = kvn_pool_unpin(be->pool, e->slot);
	pthread_mutex_unlock(&be->lock);
	return rc;
}

/* Snapshots the digests, then looks each one up again and copies its key out before calling
 * cb, so the callback runs with no lock held and may call back into this backend. */
static int
cpu_list(struct kvn_backend *be, kvn_list_cb cb, void *ctx)
{
	pthread_mutex_lock(&be->lock);
	size_t n = 0;
	struct kvn_digest *ds = malloc((be->n ? be->n : 1) * sizeof(*ds));
	if (!ds) {
		pthread_mutex_unlock(&be->lock);
		return -ENOMEM;
	}
	for (size_t i = 0; i < be->cap; i++)
		if (be->tab[i].slot)
			ds[n++] = (struct kvn_digest){.lo = be->tab[i].lo, .hi = be->tab[i].hi};
	pthread_mutex_unlock(&be->lock);

	struct kvn_key *key = malloc(sizeof(*key));
	int rc = key ? 0 : -ENOMEM;
	for (size_t i = 0; i < n && rc == 0; i++) {
		size_t len = 0;
		bool found = false;
		pthread_mutex_lock(&be->lock);
		struct entry *e = tab_find(be, ds[i]);
		if (e) {
			*key = *kvn_slot_key(e->slot);
			len = kvn_slot_len(e->slot);
			found = true;
		}
		pthread_mutex_unlock(&be->lock);
		if (found) /* removed or evicted since the snapshot: skip it */
			rc = cb(ctx, key, len);
	}
	free(key);
	free(ds);
	return rc;
}

static void
cpu_stats(struct kvn_backend *be, struct kvn_backend_stats *out)
{
	memset(out, 0, sizeof(*out));
	pthread_mutex_lock(&be->lock);
	out->count = be->n;
	out->bytes = be->bytes;
	pthread_mutex_unlock(&be->lock);
	out->capacity = kvn_pool_size(be->pool);
	out->hits = atomic_load_explicit(&be->hits, memory_order_relaxed);
	out->misses = atomic_load_explicit(&be->misses, memory_order_relaxed);
	out->puts = atomic_load_explicit(&be->puts, memory_order_relaxed);
	out->evictions = atomic_load_explicit(&be->evictions, memory_order_relaxed);
	out->errors = atomic_load_explicit(&be->errors, memory_order_relaxed);
}

/* ------------------------------------------------------------------------------------------
 * Hooks for the cluster glue (node/cluster/cluster.c)
 * ------------------------------------------------------------------------------------------ */

void
kvn_cpu_set_publish(struct kvn_backend *be, kvn_cpu_publish_fn fn, void *ctx)
{
	pthread_mutex_lock(&be->lock);
	be->publish = fn;
	be->publish_ctx = ctx;
	pthread_mutex_unlock(&be->lock);
}

void
kvn_cpu_walk(struct kvn_backend *be, void (*fn)(void *ctx, const struct kvn_slot *slot), void *ctx)
{
	pthread_mutex_lock(&be->lock);
	for (size_t i = 0; i < be->cap; i++)
		if (be->tab[i].slot)
			fn(ctx, be->tab[i].slot);
	pthread_mutex_unlock(&be->lock);
}

/* Under the index lock, because an evicting alloc calls back into the index. */
int
kvn_cpu_alloc_scratch(struct kvn_backend *be, size_t len, const struct kvn_key *key,
		      struct kvn_slot **out)
{
	pthread_mutex_lock(&be->lock);
	int rc = kvn_pool_alloc(be->pool, len, key, true, out);
	pthread_mutex_unlock(&be->lock);
	return rc;
}

uint64_t
kvn_cpu_adopted(struct kvn_backend *be)
{
	return atomic_load_explicit(&be->adopted, memory_order_relaxed);
}

const struct kvn_backend_ops kvn_cpu_backend_ops = {
    KVN_BACKEND_OPS_INIT,
    .flags = 0,
    .name = "cpu",
    .create = cpu_create,
    .destroy = cpu_destroy,
    .contains = cpu_contains,
    .put = cpu_put,
    .get = cpu_get,
    .remove = cpu_remove,
    .pin = cpu_pin,
    .unpin = cpu_unpin,
    .list = cpu_list,
    .stats = cpu_stats,
};
