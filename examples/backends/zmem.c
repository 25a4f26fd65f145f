/* zmem: an external backend that keeps chunks zstd-compressed in memory — a tier that trades a
 * little CPU for holding more KV cache than plain RAM would. Built as libkvn_zmem.so, loaded
 * with dlopen; it needs nothing from libkvnode, only the ABI headers (see README.md here). */
#include <stdatomic.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zstd.h>
/* Header-only xxhash: the module must not need libkvnode's (or libxxhash's) symbols. */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "kvnode/backend.h"

#define ZMEM_EXPORT __attribute__((visibility("default")))

#define DEFAULT_CAPACITY (1ull << 30)
#define CTX_CACHE	 8 /* idle zstd contexts kept per instance; more are freed when returned */

enum { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG }; /* enum kvn_log_level */

/* One chunk. The index holds one reference; a get holds another while it decompresses outside
 * the lock, so remove/evict/overwrite never free bytes a reader is still using. */
struct zentry {
	struct zentry *hnext;	      /* hash chain */
	struct zentry *newer, *older; /* LRU list */
	_Atomic uint32_t refs;
	uint32_t pins; /* under the instance lock */
	uint64_t sum;  /* xxh3-64 of the uncompressed payload */
	size_t ulen, clen;
	struct kvn_key key;
	unsigned char cdata[]; /* the zstd frame */
};

struct ctx_cache {
	pthread_mutex_t lock;
	void *idle[CTX_CACHE];
	int n;
};

struct kvn_backend {
	const struct kvn_backend_env *env;
	int level;
	uint64_t capacity; /* compressed bytes */

	pthread_mutex_t lock; /* index, LRU and the counters below */
	struct zentry **buckets;
	size_t nbuckets; /* power of two */
	struct zentry *newest, *oldest;
	uint64_t count, bytes, used, pinned_used;
	uint64_t puts, evictions;
	uint64_t in_total, out_total; /* every accepted put: uncompressed and compressed bytes */
	_Atomic uint64_t hits, misses, errors;

	struct ctx_cache cctx, dctx;
};

/* ------------------------------------------------------------------------------------------
 * zstd contexts: creating one per call costs more than compressing a small chunk.
 * ------------------------------------------------------------------------------------------ */

static void *
ctx_get(struct ctx_cache *c, bool compress)
{
	void *ctx = NULL;
	pthread_mutex_lock(&c->lock);
	if (c->n)
		ctx = c->idle[--c->n];
	pthread_mutex_unlock(&c->lock);
	if (!ctx)
		ctx = compress ? (void *)ZSTD_createCCtx() : (void *)ZSTD_createDCtx();
	return ctx;
}

static void
ctx_put(struct ctx_cache *c, void *ctx, bool compress)
{
	pthread_mutex_lock(&c->lock);
	if (c->n < CTX_CACHE) {
		c->idle[c->n++] = ctx;
		ctx = NULL;
	}
	pthread_mutex_unlock(&c->lock);
	if (ctx && compress)
		ZSTD_freeCCtx(ctx);
	else if (ctx)
		ZSTD_freeDCtx(ctx);
}

static void
ctx_drain(struct ctx_cache *c, bool compress)
{
	while (c->n) {
		void *ctx = c->idle[--c->n];
		if (compress)
			ZSTD_freeCCtx(ctx);
		else
			ZSTD_freeDCtx(ctx);
	}
	pthread_mutex_destroy(&c->lock);
}

/* ------------------------------------------------------------------------------------------
 * Index: chained hash on the key digest, and an LRU list. All under be->lock.
 * ------------------------------------------------------------------------------------------ */

static void
entry_unref(struct zentry *e)
{
	if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1)
		free(e);
}

static struct zentry **
slot_of(struct kvn_backend *be, const struct kvn_key *key)
{
	struct zentry **p = &be->buckets[key->digest.lo & (be->nbuckets - 1)];
	while (*p && !(kvn_digest_eq((*p)->key.digest, key->digest) && (*p)->key.len == key->len &&
		       !memcmp((*p)->key.str, key->str, key->len)))
		p = &(*p)->hnext;
	return p;
}

static struct zentry *
lookup(struct kvn_backend *be, const struct kvn_key *key)
{
	return *slot_of(be, key);
}

static void
lru_unlink(struct kvn_backend *be, struct zentry *e)
{
	if (e->newer)
		e->newer->older = e->older;
	else
		be->newest = e->older;
	if (e->older)
		e->older->newer = e->newer;
	else
		be->oldest = e->newer;
	e->newer = e->older = NULL;
}

static void
lru_push(struct kvn_backend *be, struct zentry *e)
{
	e->older = be->newest;
	e->newer = NULL;
	if (be->newest)
		be->newest->newer = e;
	else
		be->oldest = e;
	be->newest = e;
}

/* Takes e out of the index; the caller drops the index's reference after unlocking. */
static void
unlink_entry(struct kvn_backend *be, struct zentry *e)
{
	struct zentry **p = slot_of(be, &e->key);
	*p = e->hnext;
	e->hnext = NULL;
	lru_unlink(be, e);
	be->count--;
	be->bytes -= e->ulen;
	be->used -= e->clen;
	if (e->pins)
		be->pinned_used -= e->clen;
}

/* Doubles the table when it gets full; failure to grow only makes chains longer. */
static void
maybe_grow(struct kvn_backend *be)
{
	if (be->count < be->nbuckets)
		return;
	size_t n = be->nbuckets * 2;
	struct zentry **b = calloc(n, sizeof(*b));
	if (!b)
		return;
	for (size_t i = 0; i < be->nbuckets; i++) {
		struct zentry *e = be->buckets[i];
		while (e) {
			struct zentry *next = e->hnext;
			struct zentry **head = &b[e->key.digest.lo & (n - 1)];
			e->hnext = *head;
			*head = e;
			e = next;
		}
	}
	free(be->buckets);
	be->buckets = b;
	be->nbuckets = n;
}

/* ------------------------------------------------------------------------------------------
 * Options
 * ------------------------------------------------------------------------------------------ */

static int
parse_u64(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	while (*s == ' ')
		s++;
	if (*s == '-' || *s == '\0')
		return -EINVAL;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end)
		return -EINVAL;
	*out = v;
	return 0;
}

static int
read_options(const struct kvn_backend_env *env, uint64_t *capacity, int *level)
{
	const char *cap = env->get_opt(env, "capacity_bytes");
	const char *gb = env->get_opt(env, "max_size_gb");
	const char *lvl = env->get_opt(env, "level");

	if (cap && gb) {
		env->log(env, LOG_ERROR,
			 "both capacity_bytes (%s) and max_size_gb (%s) are set: set only one of "
			 "external_backend.%s.capacity_bytes / .max_size_gb",
			 cap, gb, env->name);
		return -EINVAL;
	}
	*capacity = DEFAULT_CAPACITY;
	if (cap && (parse_u64(cap, capacity) || *capacity == 0)) {
		env->log(env, LOG_ERROR,
			 "external_backend.%s.capacity_bytes '%s' is not a positive byte count "
			 "(e.g. 1073741824)",
			 env->name, cap);
		return -EINVAL;
	}
	if (gb) {
		char *end;
		errno = 0;
		double v = strtod(gb, &end);
		/* GB = 2^30 bytes, as LMCache's max_local_cpu_size. */
		if (errno || *end || end == gb || !isfinite(v) || v <= 0 ||
		    v * 1073741824.0 >= 1.8e19) {
			env->log(
			    env, LOG_ERROR,
			    "external_backend.%s.max_size_gb '%s' is not a positive size in GB "
			    "(e.g. 4 or 0.5)",
			    env->name, gb);
			return -EINVAL;
		}
		*capacity = (uint64_t)(v * 1073741824.0);
		if (*capacity == 0) {
			env->log(env, LOG_ERROR,
				 "external_backend.%s.max_size_gb '%s' is less than one byte",
				 env->name, gb);
			return -EINVAL;
		}
	}
	if (!cap && !gb)
		env->log(env, LOG_INFO,
			 "no capacity set (external_backend.%s.max_size_gb or .capacity_bytes); "
			 "holding up to %llu compressed bytes",
			 env->name, (unsigned long long)DEFAULT_CAPACITY);

	*level = 1; /* fastest of the positive levels: KV cache is written as often as read */
	if (lvl) {
		char *end;
		errno = 0;
		long v = strtol(lvl, &end, 10);
		if (errno || *end || end == lvl || v < ZSTD_minCLevel() || v > ZSTD_maxCLevel()) {
			env->log(env, LOG_ERROR,
				 "external_backend.%s.level '%s' is not a zstd level from %d to %d "
				 "(1 is fast, 19 compresses hard)",
				 env->name, lvl, ZSTD_minCLevel(), ZSTD_maxCLevel());
			return -EINVAL;
		}
		*level = (int)v;
	}
	return 0;
}

/* ------------------------------------------------------------------------------------------
 * Operations
 * ------------------------------------------------------------------------------------------ */

static void zmem_destroy(struct kvn_backend *be);

static int
zmem_create(const struct kvn_backend_env *env, struct kvn_backend **out)
{
	*out = NULL;
	/* A node loads only modules of its own major ABI and no newer minor one, so the env it
	 * hands over has every member zmem's headers know. */
	if (KVN_ABI_MAJOR_OF(env->abi) != KVN_ABI_MAJOR) {
		env->log(env, LOG_ERROR, "node has module ABI %u.%u, zmem was built for %u.%u",
			 KVN_ABI_MAJOR_OF(env->abi), KVN_ABI_MINOR_OF(env->abi), KVN_ABI_MAJOR,
			 KVN_ABI_MINOR);
		return -EINVAL;
	}
	uint64_t capacity;
	int level;
	int rc = read_options(env, &capacity, &level);
	if (rc)
		return rc;

	struct kvn_backend *be = calloc(1, sizeof(*be));
	if (!be)
		return -ENOMEM;
	be->env = env;
	be->capacity = capacity;
	be->level = level;
	be->nbuckets = 1024;
	be->buckets = calloc(be->nbuckets, sizeof(*be->buckets));
	if (!be->buckets) {
		free(be);
		return -ENOMEM;
	}
	pthread_mutex_init(&be->lock, NULL);
	pthread_mutex_init(&be->cctx.lock, NULL);
	pthread_mutex_init(&be->dctx.lock, NULL);
	env->log(env, LOG_INFO, "zmem: up to %" PRIu64 " compressed bytes, zstd level %d", capacity,
		 level);
	*out = be;
	return 0;
}

static void
zmem_destroy(struct kvn_backend *be)
{
	if (!be)
		return;
	const double ratio = be->used ? (double)be->bytes / (double)be->used : 0.0;
	const double all = be->out_total ? (double)be->in_total / (double)be->out_total : 0.0;
	be->env->log(be->env, LOG_INFO,
		     "zmem: %" PRIu64 " chunks, %" PRIu64 " bytes held in %" PRIu64
		     " compressed (ratio %.2f); %" PRIu64 " puts (ratio %.2f), %" PRIu64
		     " evictions, %" PRIu64 " errors",
		     be->count, be->bytes, be->used, ratio, be->puts, all, be->evictions,
		     (uint64_t)atomic_load(&be->errors));
	for (size_t i = 0; i < be->nbuckets; i++) {
		struct zentry *e = be->buckets[i];
		while (e) {
			struct zentry *next = e->hnext;
			entry_unref(e);
			e = next;
		}
	}
	free(be->buckets);
	ctx_drain(&be->cctx, true);
	ctx_drain(&be->dctx, false);
	pthread_mutex_destroy(&be->lock);
	free(be);
}

/* Compresses outside the lock, then swaps the entry in, evicting from the old end. */
static int
zmem_put(struct kvn_backend *be, const struct kvn_key *key, struct kvn_buf *buf)
{
	const size_t bound = ZSTD_compressBound(buf->len);
	if (ZSTD_isError(bound))
		return -EFBIG;
	struct zentry *e = malloc(sizeof(*e) + bound);
	if (!e)
		return -ENOMEM;
	ZSTD_CCtx *cctx = ctx_get(&be->cctx, true);
	if (!cctx) {
		free(e);
		return -ENOMEM;
	}
	size_t clen = ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, be->level);
	if (!ZSTD_isError(clen))
		clen = ZSTD_compress2(cctx, e->cdata, bound, buf->data, buf->len);
	if (ZSTD_isError(clen)) {
		be->env->log(be->env, LOG_ERROR, "compressing %zu bytes of key %s: %s", buf->len,
			     key->str, ZSTD_getErrorName(clen));
		ZSTD_CCtx_reset(cctx, ZSTD_reset_session_and_parameters);
		ctx_put(&be->cctx, cctx, true);
		free(e);
		atomic_fetch_add(&be->errors, 1);
		return -EIO;
	}
	ctx_put(&be->cctx, cctx, true);
	if (clen > be->capacity) {
		free(e);
		return -ENOSPC;
	}
	if (bound - clen > 4096) {
		struct zentry *shrunk = realloc(e, sizeof(*e) + clen);
		if (shrunk)
			e = shrunk;
	}
	e->hnext = e->newer = e->older = NULL;
	atomic_init(&e->refs, 1);
	e->pins = 0;
	e->sum = XXH3_64bits(buf->data, buf->len);
	e->ulen = buf->len;
	e->clen = clen;
	memcpy(&e->key, key, sizeof(*key));

	/* Entries taken out of the index are chained through hnext (unused once unlinked) and
	 * freed after the lock is dropped. */
	struct zentry *dropped = NULL;
	int rc = 0;
	pthread_mutex_lock(&be->lock);
	struct zentry *old = lookup(be, key);
	/* Bytes that stay whatever we evict: pinned chunks, other than the one being replaced. */
	uint64_t fixed = be->pinned_used - (old && old->pins ? old->clen : 0);
	if (clen > be->capacity - fixed) {
		rc = -ENOSPC;
		goto out_unlock;
	}
	if (old) {
		e->pins = old->pins; /* pins are per key: the caller's unpin must still balance */
		unlink_entry(be, old);
		old->hnext = dropped;
		dropped = old;
	}
	for (struct zentry *v = be->oldest; v && be->used + clen > be->capacity;) {
		struct zentry *newer = v->newer;
		if (!v->pins) {
			unlink_entry(be, v);
			be->evictions++;
			v->hnext = dropped;
			dropped = v;
		}
		v = newer;
	}
	*slot_of(be, key) = e;
	lru_push(be, e);
	be->count++;
	be->bytes += e->ulen;
	be->used += clen;
	if (e->pins)
		be->pinned_used += clen;
	be->puts++;
	be->in_total += e->ulen;
	be->out_total += clen;
	maybe_grow(be);
	e = NULL;
out_unlock:
	pthread_mutex_unlock(&be->lock);
	free(e);
	while (dropped) {
		struct zentry *next = dropped->hnext;
		entry_unref(dropped);
		dropped = next;
	}
	return rc;
}

static void
zbuf_release(struct kvn_buf *buf)
{
	free(buf); /* view and bytes are one allocation */
}

/* A view with its own release, so the module needs no kvn_buf_new from libkvnode. */
static struct kvn_buf *
zbuf_new(size_t len)
{
	const size_t hdr = (sizeof(struct kvn_buf) + 63) & ~(size_t)63;
	struct kvn_buf *buf;
	if (len > SIZE_MAX - hdr - 1 || posix_memalign((void **)&buf, 64, hdr + (len ? len : 1)))
		return NULL;
	kvn_buf_init(buf, (char *)buf + hdr, len, zbuf_release, NULL, 0);
	return buf;
}

/* Drops a chunk whose bytes failed to decompress or verify, if it is still the indexed one. */
static void
drop_corrupt(struct kvn_backend *be, struct zentry *e, const char *why)
{
	bool dropped = false;
	pthread_mutex_lock(&be->lock);
	if (lookup(be, &e->key) == e) {
		unlink_entry(be, e);
		dropped = true;
	}
	pthread_mutex_unlock(&be->lock);
	be->env->log(be->env, LOG_ERROR, "key %s: %s; dropped the chunk (counted as a miss)",
		     e->key.str, why);
	atomic_fetch_add(&be->errors, 1);
	atomic_fetch_add(&be->misses, 1);
	if (dropped)
		entry_unref(e);
}

static int
zmem_get(struct kvn_backend *be, const struct kvn_key *key, struct kvn_buf **out)
{
	*out = NULL;
	pthread_mutex_lock(&be->lock);
	struct zentry *e = lookup(be, key);
	if (!e) {
		pthread_mutex_unlock(&be->lock);
		atomic_fetch_add(&be->misses, 1);
		return -ENOENT;
	}
	lru_unlink(be, e);
	lru_push(be, e);
	atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
	pthread_mutex_unlock(&be->lock);

	int rc = 0;
	struct kvn_buf *buf = zbuf_new(e->ulen);
	ZSTD_DCtx *dctx = buf ? ctx_get(&be->dctx, false) : NULL;
	if (!dctx) {
		rc = -ENOMEM;
		goto out;
	}
	size_t n = ZSTD_decompressDCtx(dctx, buf->data, e->ulen, e->cdata, e->clen);
	ctx_put(&be->dctx, dctx, false);
	if (ZSTD_isError(n) || n != e->ulen) {
		drop_corrupt(be, e, ZSTD_isError(n) ? ZSTD_getErrorName(n) : "length mismatch");
		rc = -ENOENT;
	} else if (XXH3_64bits(buf->data, n) != e->sum) {
		drop_corrupt(be, e, "checksum mismatch after decompression");
		rc = -ENOENT;
	}
out:
	entry_unref(e);
	if (rc) {
		if (buf)
			kvn_buf_unref(buf);
		return rc;
	}
	atomic_fetch_add(&be->hits, 1);
	*out = buf;
	return 0;
}

static int
zmem_contains(struct kvn_backend *be, const struct kvn_key *key, bool pin)
{
	pthread_mutex_lock(&be->lock);
	struct zentry *e = lookup(be, key);
	if (e && pin && e->pins++ == 0)
		be->pinned_used += e->clen;
	pthread_mutex_unlock(&be->lock);
	return e != NULL;
}

static int
zmem_remove(struct kvn_backend *be, const struct kvn_key *key)
{
	pthread_mutex_lock(&be->lock);
	struct zentry *e = lookup(be, key);
	if (e)
		unlink_entry(be, e);
	pthread_mutex_unlock(&be->lock);
	if (!e)
		return -ENOENT;
	entry_unref(e);
	return 0;
}

static int
zmem_pin(struct kvn_backend *be, const struct kvn_key *key)
{
	int rc = zmem_contains(be, key, true);
	return rc == 1 ? 0 : -ENOENT;
}

static int
zmem_unpin(struct kvn_backend *be, const struct kvn_key *key)
{
	int rc = 0;
	pthread_mutex_lock(&be->lock);
	struct zentry *e = lookup(be, key);
	if (!e)
		rc = -ENOENT;
	else if (!e->pins)
		rc = -EINVAL;
	else if (--e->pins == 0)
		be->pinned_used -= e->clen;
	pthread_mutex_unlock(&be->lock);
	if (rc == -EINVAL)
		be->env->log(be->env, LOG_WARN, "unpin of key %s, which is not pinned", key->str);
	return rc;
}

/* Walks a snapshot, so that cb may call back into this backend without deadlocking. */
static int
zmem_list(struct kvn_backend *be, kvn_list_cb cb, void *ctx)
{
	pthread_mutex_lock(&be->lock);
	size_t n = 0, cap = be->count;
	struct zentry **snap = malloc((cap ? cap : 1) * sizeof(*snap));
	if (!snap) {
		pthread_mutex_unlock(&be->lock);
		return -ENOMEM;
	}
	for (struct zentry *e = be->newest; e && n < cap; e = e->older) {
		atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
		snap[n++] = e;
	}
	pthread_mutex_unlock(&be->lock);

	int rc = 0;
	for (size_t i = 0; i < n; i++) {
		if (!rc)
			rc = cb(ctx, &snap[i]->key, snap[i]->ulen);
		entry_unref(snap[i]);
	}
	free(snap);
	return rc;
}

static void
zmem_stats(struct kvn_backend *be, struct kvn_backend_stats *out)
{
	pthread_mutex_lock(&be->lock);
	*out = (struct kvn_backend_stats){
	    .count = be->count,
	    .bytes = be->bytes,
	    .capacity = be->capacity,
	    .puts = be->puts,
	    .evictions = be->evictions,
	};
	pthread_mutex_unlock(&be->lock);
	out->hits = atomic_load(&be->hits);
	out->misses = atomic_load(&be->misses);
	out->errors = atomic_load(&be->errors);
}

/* Flagged slow: compressing a multi-megabyte chunk is better done on the node's writer threads
 * than on the inference engine's put path. */
ZMEM_EXPORT const struct kvn_backend_ops kvn_zmem_backend_ops = {
    KVN_BACKEND_OPS_INIT,
    .flags = KVN_BACKEND_F_SLOW,
    .name = "zmem",
    .create = zmem_create,
    .destroy = zmem_destroy,
    .contains = zmem_contains,
    .put = zmem_put,
    .get = zmem_get,
    .remove = zmem_remove,
    .pin = zmem_pin,
    .unpin = zmem_unpin,
    .list = zmem_list,
    .stats = zmem_stats,
};
