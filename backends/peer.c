/* peer tier: chunks other nodes hold. On a local miss it asks the scheduler (through a small cache
 * of the directory) where the key lives, READs the slot image from the owner's pool with the
 * transport into a scratch slot of our own pool, and returns the payload only when the header and
 * checksum say it is the directory's generation of this key (docs/architecture.md §1, §3). */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t complete, as in core/pool.c */

#include "backends/backends.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/pool.h"
#include "core/xxh.h"
#include "kvnode/backend.h"
#include "kvnode/transport.h"
#include "rdma/rails.h"

/* The directory cache: CACHE_SETS sets of CACHE_WAYS locations, the set chosen by digest.lo, a
 * full set replacing its least recently used entry. 64 Ki locations in 4 MiB. It was 4096
 * direct-mapped entries: with 2048 keys read over and over, the 39% of them that shared an
 * entry with another key each cost a scheduler lookup on every get. */
#define CACHE_WAYS    8u
#define CACHE_SETS    8192u
#define CACHE_ENTRIES (CACHE_SETS * CACHE_WAYS)
#define SLOT_HDR    sizeof(struct kvn_slot_hdr)
/* A READ of a slot image is posted as up to PIECES_MAX pieces of at least PIECE_MIN bytes,
 * and the reader hashes each piece as soon as it has landed, while the next ones are still on
 * the wire: verifying a chunk then costs about one piece's hash after the last byte, not a
 * pass over the whole chunk. */
#define PIECES_MAX 16u
#define PIECE_MIN  (512u << 10)

struct cache_ent {
	uint64_t lo, hi;
	struct kvn_peer_loc loc;
	uint64_t used; /* be->cache_tick when last put or found */
	bool valid;
};

/* One endpoint per member; refs keep it open while reads use it, stale closes it once the
 * last user lets go (member went down, moved, or a read broke the connection). */
struct conn {
	uint32_t worker_id;
	char addr[KVN_PEER_ADDR_MAX + 1]; /* the data address it was made to */
	struct kvn_rails_ep *ep;
	int refs;
	bool stale;
};

struct kvn_backend {
	const struct kvn_backend_env *env;
	/* Held shared by every get/contains for its whole course, I/O included (lookup, connect,
	 * READ, each bounded by peer_timeout_ms), so that the link and its endpoints outlive the
	 * read; exclusively by attach/detach only. Readers never wait for one another (glibc's
	 * rwlocks prefer readers): a stuck peer holds up its own gets and a detach, no other
	 * read (tests/test_cluster.c, a_stuck_peer_does_not_hold_up_reads_from_other_peers). */
	pthread_rwlock_t attach_lock;
	struct kvn_peer_link link;
	bool attached;

	pthread_mutex_t lock; /* cache and conns */
	struct cache_ent *cache; /* CACHE_ENTRIES */
	uint64_t cache_tick;
	struct conn *conns;
	size_t nconns, capconns;

	_Atomic uint64_t hits, misses, errors, bytes_read, reads, transport_errors, oversized;
	_Atomic uint64_t cache_hits, cache_misses; /* locations found cached, and not */
	struct kvn_histogram read_latency;
	struct kvn_ratelimit rl_oversized;
};

/* ------------------------------------------------------------------------------------------
 * Directory cache
 * ------------------------------------------------------------------------------------------ */

static struct cache_ent *
cache_set(struct kvn_backend *be, struct kvn_digest d)
{
	return &be->cache[(d.lo & (CACHE_SETS - 1)) * CACHE_WAYS];
}

/* Caller holds be->lock. d's entry, NULL when it has none. */
static struct cache_ent *
cache_find_locked(struct kvn_backend *be, struct kvn_digest d)
{
	struct cache_ent *set = cache_set(be, d);
	for (uint32_t w = 0; w < CACHE_WAYS; w++)
		if (set[w].valid && set[w].lo == d.lo && set[w].hi == d.hi)
			return &set[w];
	return NULL;
}

static bool
cache_get(struct kvn_backend *be, struct kvn_digest d, struct kvn_peer_loc *out)
{
	pthread_mutex_lock(&be->lock);
	struct cache_ent *e = cache_find_locked(be, d);
	if (e) {
		e->used = ++be->cache_tick;
		*out = e->loc;
	}
	pthread_mutex_unlock(&be->lock);
	atomic_fetch_add_explicit(e ? &be->cache_hits : &be->cache_misses, 1, memory_order_relaxed);
	return e != NULL;
}

/* Caller holds be->lock. worker_id UINT32_MAX: any owner. */
static void
cache_drop_locked(struct kvn_backend *be, struct kvn_digest d, uint32_t worker_id)
{
	struct cache_ent *e = cache_find_locked(be, d);
	if (e && (worker_id == UINT32_MAX || e->loc.worker_id == worker_id))
		e->valid = false;
}

/* d's entry, else a free one of its set, else the set's least recently used. */
static void
cache_put(struct kvn_backend *be, struct kvn_digest d, const struct kvn_peer_loc *loc)
{
	pthread_mutex_lock(&be->lock);
	struct cache_ent *e = cache_find_locked(be, d);
	struct cache_ent *set = cache_set(be, d);
	for (uint32_t w = 0; !e && w < CACHE_WAYS; w++)
		if (!set[w].valid)
			e = &set[w];
	if (!e) {
		e = &set[0];
		for (uint32_t w = 1; w < CACHE_WAYS; w++)
			if (set[w].used < e->used)
				e = &set[w];
	}
	*e = (struct cache_ent){
	    .lo = d.lo, .hi = d.hi, .loc = *loc, .used = ++be->cache_tick, .valid = true};
	pthread_mutex_unlock(&be->lock);
}

void
kvn_peer_evicted(struct kvn_backend *be, uint32_t worker_id, const struct kvn_digest *d, size_t n)
{
	pthread_mutex_lock(&be->lock);
	for (size_t i = 0; i < n; i++)
		cache_drop_locked(be, d[i], worker_id);
	pthread_mutex_unlock(&be->lock);
}

/* ------------------------------------------------------------------------------------------
 * Connections
 * ------------------------------------------------------------------------------------------ */

static struct conn *
conn_find(struct kvn_backend *be, uint32_t worker_id)
{
	for (size_t i = 0; i < be->nconns; i++)
		if (be->conns[i].worker_id == worker_id)
			return &be->conns[i];
	return NULL;
}

/* Caller holds be->lock; returns the endpoint to close (outside the lock) or NULL. */
static struct kvn_rails_ep *
conn_reap_locked(struct kvn_backend *be, struct conn *c)
{
	if (!c->stale || c->refs)
		return NULL;
	struct kvn_rails_ep *ep = c->ep;
	*c = be->conns[--be->nconns];
	return ep;
}

/* Endpoints taken out of the table, closed once be->lock is let go. */
#define SWEEP_MAX 8
struct sweep {
	struct kvn_rails_ep *ep[SWEEP_MAX + 1];
	size_t n;
};

/* Caller holds be->lock: takes out stale endpoints no read uses (members that left, moved, or
 * broke), up to SWEEP_MAX a call. A member that is gone for good is never asked for again, so
 * waiting for a get of its own would keep its connection open for the node's lifetime. */
static void
sweep_locked(struct kvn_backend *be, struct sweep *sw)
{
	for (size_t i = 0; i < be->nconns && sw->n < SWEEP_MAX;) {
		struct kvn_rails_ep *ep = conn_reap_locked(be, &be->conns[i]);
		if (ep)
			sw->ep[sw->n++] = ep; /* the last entry moved into i: look at it again */
		else
			i++;
	}
}

static void
sweep_close(struct sweep *sw)
{
	for (size_t i = 0; i < sw->n; i++)
		kvn_rails_ep_close(sw->ep[i]);
	sw->n = 0;
}

void
kvn_peer_member(struct kvn_backend *be, const struct kvn_peer_member *mi)
{
	pthread_mutex_lock(&be->lock);
	struct conn *c = conn_find(be, mi->worker_id);
	/* Down, or up at another address (restarted). Up at the same address (a re-join after
	 * a scheduler restart) keeps the endpoint: the transport reconnects it if needed. */
	if (c && (!mi->up || strcmp(c->addr, mi->data_addr)))
		c->stale = true;
	if (!mi->up)
		for (size_t i = 0; i < CACHE_ENTRIES; i++)
			if (be->cache[i].loc.worker_id == mi->worker_id)
				be->cache[i].valid = false;
	pthread_mutex_unlock(&be->lock);
	/* Closed by the next get (whichever peer it reads from) or at detach: this runs on the
	 * membership thread, which must not wait for reads to fail. */
}

/* Caller holds attach_lock shared. The endpoint to worker_id's data address, connecting
 * (without be->lock held) when there is none; err names the peer. Stale endpoints are closed
 * on the way, on every path. */
static int
conn_get(struct kvn_backend *be, uint32_t worker_id, struct kvn_rails_ep **out, char *err,
	 size_t errlen)
{
	struct sweep sw = {.n = 0};
	pthread_mutex_lock(&be->lock);
	sweep_locked(be, &sw);
	struct conn *c = conn_find(be, worker_id);
	if (c && !c->stale) {
		c->refs++;
		*out = c->ep;
		pthread_mutex_unlock(&be->lock);
		sweep_close(&sw);
		return 0;
	}
	pthread_mutex_unlock(&be->lock);

	/* Endpoints swept are closed only after the new one exists (or failed), so the two
	 * never share an address (the transport keys its events by endpoint). */
	struct kvn_peer_member mi = {.rails = malloc(sizeof(*mi.rails))};
	int rc = mi.rails ? be->link.member(be->link.ctx, worker_id, &mi) : -ENOMEM;
	struct kvn_rails_ep *ep = NULL;
	if (rc < 0 || !mi.up) {
		kvn_seterr(rc, err, errlen, "peer worker %u is not a live member", worker_id);
		rc = -ENOENT;
	} else {
		rc = kvn_rails_connect(be->link.rails, &mi.rails->p, be->link.timeout_ms, &ep, err,
				       errlen);
	}
	free(mi.rails);
	if (rc < 0) {
		sweep_close(&sw);
		return rc;
	}
	pthread_mutex_lock(&be->lock);
	c = conn_find(be, worker_id);
	if (c && !c->stale) { /* another thread connected meanwhile: use that one */
		c->refs++;
		*out = c->ep;
		pthread_mutex_unlock(&be->lock);
		kvn_rails_ep_close(ep);
		sweep_close(&sw);
		return 0;
	}
	if (c && !c->refs) {
		sw.ep[sw.n++] = conn_reap_locked(be, c); /* room: sweep_locked keeps one slot */
	} else if (c) {
		/* a stale one still in use leaves the id to the new endpoint; conn_put finds it
		 * by endpoint and closes it when its users let go */
		c->worker_id = UINT32_MAX;
	}
	if (be->nconns == be->capconns) {
		size_t cap = be->capconns ? be->capconns * 2 : 8;
		struct conn *n = realloc(be->conns, cap * sizeof(*n));
		if (!n) {
			pthread_mutex_unlock(&be->lock);
			kvn_rails_ep_close(ep);
			sweep_close(&sw);
			return -ENOMEM;
		}
		be->conns = n;
		be->capconns = cap;
	}
	c = &be->conns[be->nconns++];
	*c = (struct conn){.worker_id = worker_id, .ep = ep, .refs = 1};
	snprintf(c->addr, sizeof(c->addr), "%s", mi.data_addr);
	*out = ep;
	pthread_mutex_unlock(&be->lock);
	sweep_close(&sw);
	return 0;
}

/* Drops a reference; broken marks the endpoint for reconnection. conns may move while
 * be->lock is not held, so the entry is found again by endpoint. */
static void
conn_put(struct kvn_backend *be, struct kvn_rails_ep *ep, bool broken)
{
	struct kvn_rails_ep *old = NULL;
	pthread_mutex_lock(&be->lock);
	for (size_t i = 0; i < be->nconns; i++) {
		struct conn *c = &be->conns[i];
		if (c->ep != ep)
			continue;
		c->refs--;
		c->stale |= broken;
		old = conn_reap_locked(be, c);
		break;
	}
	pthread_mutex_unlock(&be->lock);
	if (old)
		kvn_rails_ep_close(old);
}

/* ------------------------------------------------------------------------------------------
 * Fetch
 * ------------------------------------------------------------------------------------------ */

/* A key of a get (a batch of one for the get op): its locations this attempt and how it
 * stands. */
struct bkey {
	const struct kvn_key *key;
	struct kvn_peer_loc locs[KVN_PEER_LOCS_MAX];
	uint32_t nlocs;
	bool done;   /* rc is final: a verified payload, or nowhere left to look */
	bool failed; /* a location failed other than by being oversized: uncache it */
	int rc;	     /* 0 or -ENOENT */
};

/* The completions a round of READs waits for (pieces), over every endpoint it posted to. */
struct rwait {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	size_t left;
};

/* One READ of a round: the slot image at loc into a scratch slot of our pool, header where
 * the slot's own header goes, so that once verified the scratch slot is a slot like any other
 * (the cpu tier's promotion indexes it instead of copying it). */
struct pread {
	struct bkey *bk;
	const struct kvn_peer_loc *loc;
	struct kvn_buf **out;
	struct kvn_rails_ep *ep;
	struct kvn_slot *scratch;
	struct rwait *w;
	bool posted; /* fetch_begin took ep and scratch; fetch_end gives them back */
	int rc;	     /* fetch_begin's answer, then the first failed piece's status */
	uint64_t t0, t1;
	struct kvn_read *rd;	  /* its pieces' reads, side by side */
	uint32_t npieces, hashed; /* pieces posted; pieces hashed, in order */
	uint32_t upto;		  /* pieces the waiter may hash now */
	bool landed[PIECES_MAX];  /* under w->lock */
	XXH3_state_t *xs;	  /* the payload's hash so far */
	char err[512];
};

/* What one batch get works with, allocated once for its n keys. */
struct batch {
	size_t n;
	struct bkey *bk;
	struct kvn_buf **outs;
	struct pread *items, **ready;
	struct kvn_read *rds; /* PIECES_MAX per key */
	XXH3_state_t **xs;    /* one per key */
	struct kvn_digest *ask;
	uint32_t *at, *nloc;
	struct kvn_peer_loc *all; /* n x KVN_PEER_LOCS_MAX lookup answers */
	uint64_t lookups;
};

/* Checks loc and takes the endpoint and a scratch slot for the READ. 0: ready to post; else
 * the fetch's answer already: -EAGAIN (try a fresh location), -EMSGSIZE (refused, not
 * stale), or why the pool had no room. */
static int
fetch_begin(struct kvn_backend *be, struct pread *p)
{
	const struct kvn_key *key = p->bk->key;
	const struct kvn_peer_loc *loc = p->loc;
	if (loc->len <= SLOT_HDR || loc->len > kvn_pool_size(be->link.pool))
		return -EAGAIN;
	if (be->link.max_chunk && loc->len - SLOT_HDR > be->link.max_chunk) {
		/* The scratch slot would be that large: one bad entry (a corrupt directory, a
		 * peer with a larger max_chunk_size) must not evict the cpu tier to make room. */
		uint64_t missed;
		atomic_fetch_add_explicit(&be->oversized, 1, memory_order_relaxed);
		if (kvn_ratelimit_ok(&be->rl_oversized, 1000, &missed))
			be->env->log(
			    be->env, KVN_LOG_WARN,
			    "key %s: the directory says peer worker %u holds %llu bytes, "
			    "over max_chunk_size (%llu): answering a miss without reading "
			    "it (%llu more not logged)",
			    key->str, loc->worker_id, (unsigned long long)(loc->len - SLOT_HDR),
			    (unsigned long long)be->link.max_chunk, (unsigned long long)missed);
		return -EMSGSIZE;
	}
	int rc = conn_get(be, loc->worker_id, &p->ep, p->err, sizeof(p->err));
	if (rc < 0) {
		be->env->log(be->env, KVN_LOG_DEBUG, "key %s: %s", key->str, p->err);
		return -EAGAIN;
	}
	rc = kvn_cpu_alloc_scratch(be->link.cpu, loc->len - SLOT_HDR, key, &p->scratch);
	if (rc < 0) {
		conn_put(be, p->ep, false);
		be->env->log(be->env, KVN_LOG_WARN,
			     "key %s: no room in the cpu pool for a %llu-byte peer read (%s); "
			     "raise max_local_cpu_size",
			     key->str, (unsigned long long)loc->len, kvn_strerror(rc));
		return rc;
	}
	p->posted = true;
	return 0;
}

/* Gives back what fetch_begin took and returns the payload when the image verifies.
 * -EAGAIN: the image was stale or corrupt (or the READ failed): try a fresh location. */
static int
fetch_end(struct kvn_backend *be, struct pread *p)
{
	const struct kvn_key *key = p->bk->key;
	const struct kvn_peer_loc *loc = p->loc;
	int rc = p->rc;
	conn_put(be, p->ep, rc == -ENOTCONN || rc == -ECONNRESET || rc == -ETIMEDOUT);
	atomic_fetch_add_explicit(&be->reads, 1, memory_order_relaxed);
	if (rc < 0) {
		atomic_fetch_add_explicit(&be->transport_errors, 1, memory_order_relaxed);
		be->env->log(be->env, KVN_LOG_WARN, "key %s: READ from peer worker %u failed: %s",
			     key->str, loc->worker_id, p->err);
		kvn_pool_unref(be->link.pool, p->scratch);
		return -EAGAIN;
	}
	atomic_fetch_add_explicit(&be->bytes_read, loc->len, memory_order_relaxed);
	kvn_histogram_observe(&be->read_latency, p->t1 - p->t0);
	const struct kvn_slot_hdr *h = kvn_slot_hdr(p->scratch);
	rc = kvn_slot_verify_sum(h, loc->len, key->digest, loc->generation,
				 XXH3_64bits_digest(p->xs));
	if (rc == 0) {
		/* The payload stays where the READ put it: sealed with our own generation, the
		 * scratch slot is a published slot, and the caller gets a view of it, not a copy.
		 */
		kvn_pool_seal_with(p->scratch, h->checksum);
		rc = kvn_pool_view(be->link.pool, p->scratch, p->out);
	} else {
		/* evicted or rewritten since the directory heard of it: a miss, never bytes */
		be->env->log(be->env, KVN_LOG_DEBUG,
			     "key %s: slot read from peer worker %u failed its check (%s)",
			     key->str, loc->worker_id, kvn_strerror(rc));
		rc = -EAGAIN;
	}
	kvn_pool_unref(be->link.pool, p->scratch);
	return rc;
}

/* On the transport's progress thread: record a piece's outcome, count it down, and wake the
 * waiter to hash it. */
static void
read_done(struct kvn_read *rd, int status, const char *msg)
{
	struct pread *p = rd->ctx;
	struct rwait *w = p->w;
	/* Under the lock: the waiter reads p, and its w is gone once it sees left == 0. */
	pthread_mutex_lock(&w->lock);
	p->t1 = kvn_now_ns();
	p->landed[rd - p->rd] = true;
	if (status && !p->rc) {
		p->rc = status;
		snprintf(p->err, sizeof(p->err), "%s", msg ? msg : kvn_strerror(status));
	}
	w->left--;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

/* Bytes of the image each of p's pieces covers: all PIECE_MIN or more but the last. */
static size_t
piece_len(size_t len)
{
	size_t per = (len + PIECES_MAX - 1) / PIECES_MAX;
	per = per < PIECE_MIN ? PIECE_MIN : (per + 4095) & ~(size_t)4095;
	return per;
}

/* Splits p's READ into pieces at rd (room for PIECES_MAX); how many. */
static uint32_t
pieces_build(struct kvn_backend *be, struct pread *p, struct kvn_read *rd)
{
	size_t len = p->loc->len, per = piece_len(len);
	uint8_t *img = (uint8_t *)kvn_slot_hdr(p->scratch);
	uint32_t n = 0;
	for (size_t off = 0; off < len; off += per, n++)
		rd[n] = (struct kvn_read){.local = img + off,
					  .local_mr = be->link.mr,
					  .remote_addr = p->loc->addr + off,
					  .rkey = p->loc->rkey,
					  .len = len - off < per ? len - off : per,
					  .done = read_done,
					  .ctx = p};
	p->rd = rd;
	p->npieces = n;
	p->hashed = 0;
	XXH3_64bits_reset(p->xs);
	return n;
}

/* Hashes p's payload bytes in pieces [p->hashed, upto), which have all landed. */
static void
pieces_hash(struct pread *p, uint32_t upto)
{
	for (; p->hashed < upto; p->hashed++) {
		const struct kvn_read *rd = &p->rd[p->hashed];
		size_t skip = p->hashed == 0 ? SLOT_HDR : 0; /* the header is not hashed */
		XXH3_64bits_update(p->xs, (const uint8_t *)rd->local + skip, rd->len - skip);
	}
}

/* Under w->lock: the pieces of p that have landed in order from the first unhashed one. */
static uint32_t
pieces_landed(const struct pread *p)
{
	uint32_t upto = p->hashed;
	while (upto < p->npieces && p->landed[upto])
		upto++;
	return upto;
}

static int
by_ep(const void *a, const void *b)
{
	uintptr_t x = (uintptr_t)(*(struct pread *const *)a)->ep;
	uintptr_t y = (uintptr_t)(*(struct pread *const *)b)->ep;
	return (x > y) - (x < y);
}

/* Posts the n READs (in pieces), one call per endpoint, and waits for all of them, hashing
 * each piece once it is in: a round costs the slowest READ plus a piece's hash, not their
 * sum. Every one ends with p->rc set (the transport fails stalled reads after its timeout, so
 * this never hangs). rds has room for PIECES_MAX reads per READ. */
static void
post_reads(struct kvn_backend *be, struct pread **ready, size_t n, struct kvn_read *rds)
{
	struct rwait w = {0};
	pthread_mutex_init(&w.lock, NULL);
	pthread_cond_init(&w.cond, NULL);
	qsort(ready, n, sizeof(*ready), by_ep); /* reads of one endpoint side by side */
	size_t nr = 0;
	for (size_t i = 0; i < n; i++) {
		ready[i]->w = &w;
		nr += pieces_build(be, ready[i], &rds[nr]);
	}
	w.left = nr;
	for (size_t i = 0, j; i < n; i = j) {
		uint64_t t0 = kvn_now_ns();
		size_t pieces = 0;
		for (j = i; j < n && ready[j]->ep == ready[i]->ep; j++) {
			ready[j]->t0 = t0;
			pieces += ready[j]->npieces;
		}
		/* w.lock is not held: a read no rail takes completes inside this call */
		int rc = kvn_rails_read(ready[i]->ep, ready[i]->rd, pieces);
		if (rc == 0)
			continue;
		/* none of these was posted, so no callback counts them down */
		for (size_t k = i; k < j; k++) {
			ready[k]->rc = rc;
			kvn_seterr(rc, ready[k]->err, sizeof(ready[k]->err),
				   "%s: posting %zu reads failed: %s",
				   kvn_rails_ops(be->link.rails)->name, j - i, kvn_strerror(rc));
		}
		pthread_mutex_lock(&w.lock);
		w.left -= pieces;
		pthread_mutex_unlock(&w.lock);
	}
	pthread_mutex_lock(&w.lock);
	for (;;) {
		for (size_t i = 0; i < n; i++)
			ready[i]->upto = ready[i]->rc ? ready[i]->hashed : pieces_landed(ready[i]);
		bool last = w.left == 0;
		pthread_mutex_unlock(&w.lock);
		for (size_t i = 0; i < n; i++) /* outside the lock: landed pieces do not change */
			pieces_hash(ready[i], ready[i]->upto);
		if (last)
			break;
		pthread_mutex_lock(&w.lock);
		while (w.left) {
			bool more = false;
			for (size_t i = 0; i < n && !more; i++)
				more = !ready[i]->rc && pieces_landed(ready[i]) > ready[i]->hashed;
			if (more)
				break;
			pthread_cond_wait(&w.cond, &w.lock);
		}
	}
	pthread_cond_destroy(&w.cond);
	pthread_mutex_destroy(&w.lock);
}

/* Location j of every key still looking: READ together, then each key's outcome. false when
 * no key has a location j. */
static bool
fetch_round(struct kvn_backend *be, struct batch *b, uint32_t j)
{
	size_t ni = 0, nr = 0;
	for (size_t i = 0; i < b->n; i++) {
		struct bkey *bk = &b->bk[i];
		if (bk->done || j >= bk->nlocs)
			continue;
		struct pread *p = &b->items[ni++];
		*p = (struct pread){
		    .bk = bk, .loc = &bk->locs[j], .out = &b->outs[i], .xs = b->xs[i]};
		p->rc = fetch_begin(be, p);
		if (p->posted)
			b->ready[nr++] = p;
	}
	if (nr)
		post_reads(be, b->ready, nr, b->rds);
	for (size_t k = 0; k < ni; k++) {
		struct pread *p = &b->items[k];
		int f = p->posted ? fetch_end(be, p) : p->rc;
		if (f == 0) {
			p->bk->done = true;
			p->bk->rc = 0;
			cache_put(be, p->bk->key->digest, p->loc);
			continue;
		}
		atomic_fetch_add_explicit(&be->errors, 1, memory_order_relaxed);
		/* an oversized entry is refused, not stale: a fresh lookup gives it again */
		p->bk->failed |= f != -EMSGSIZE;
	}
	return ni > 0;
}

/* Of nloc locations from the directory, those of other nodes into locs; how many. */
static uint32_t
others(struct kvn_backend *be, const struct kvn_peer_loc *all, uint32_t nloc,
       struct kvn_peer_loc *locs)
{
	int32_t self = be->link.self(be->link.ctx);
	uint32_t n = 0;
	for (uint32_t i = 0; i < nloc && i < KVN_PEER_LOCS_MAX; i++)
		if (self < 0 || all[i].worker_id != (uint32_t)self)
			locs[n++] = all[i];
	return n;
}

/* Locations of every key still looking: the cached one (fresh = false), else the directory's,
 * all of those asked in one lookup. A key left with none is a miss. */
static void
locate_batch(struct kvn_backend *be, struct batch *b, bool fresh)
{
	size_t nask = 0;
	for (size_t i = 0; i < b->n; i++) {
		struct bkey *bk = &b->bk[i];
		if (bk->done)
			continue;
		bk->nlocs = 0;
		bk->failed = false;
		if (!fresh && cache_get(be, bk->key->digest, &bk->locs[0])) {
			bk->nlocs = 1;
			continue;
		}
		b->ask[nask] = bk->key->digest;
		b->at[nask++] = (uint32_t)i;
	}
	if (nask) {
		b->lookups++;
		int rc = be->link.lookup(be->link.ctx, b->ask, nask, KVN_PEER_LOCS_MAX, b->nloc,
					 b->all, be->link.timeout_ms);
		for (size_t k = 0; rc == 0 && k < nask; k++)
			b->bk[b->at[k]].nlocs = others(be, &b->all[k * KVN_PEER_LOCS_MAX],
						       b->nloc[k], b->bk[b->at[k]].locs);
	}
	for (size_t i = 0; i < b->n; i++)
		if (!b->bk[i].done && !b->bk[i].nlocs)
			b->bk[i].done = true; /* rc stays -ENOENT */
}

/* Keys whose locations failed this attempt forget the cached one. */
static void
drop_failed(struct kvn_backend *be, struct batch *b)
{
	pthread_mutex_lock(&be->lock);
	for (size_t i = 0; i < b->n; i++)
		if (!b->bk[i].done && b->bk[i].failed)
			cache_drop_locked(be, b->bk[i].key->digest, UINT32_MAX);
	pthread_mutex_unlock(&be->lock);
}

static void
batch_free(struct batch *b)
{
	free(b->bk);
	free(b->items);
	free(b->ready);
	free(b->rds);
	for (size_t i = 0; b->xs && i < b->n; i++)
		XXH3_freeState(b->xs[i]);
	free(b->xs);
	free(b->ask);
	free(b->at);
	free(b->nloc);
	free(b->all);
}

static int
batch_alloc(struct batch *b, const struct kvn_key *const *keys, size_t n)
{
	b->bk = calloc(n, sizeof(*b->bk));
	b->items = calloc(n, sizeof(*b->items));
	b->ready = calloc(n, sizeof(*b->ready));
	b->rds = calloc(n * PIECES_MAX, sizeof(*b->rds));
	b->xs = calloc(n, sizeof(*b->xs));
	for (size_t i = 0; b->xs && i < n; i++)
		if (!(b->xs[i] = XXH3_createState()))
			return -ENOMEM;
	b->ask = calloc(n, sizeof(*b->ask));
	b->at = calloc(n, sizeof(*b->at));
	b->nloc = calloc(n, sizeof(*b->nloc));
	b->all = calloc(n * KVN_PEER_LOCS_MAX, sizeof(*b->all));
	if (!b->bk || !b->items || !b->ready || !b->rds || !b->ask || !b->at || !b->nloc || !b->all)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++)
		b->bk[i] = (struct bkey){.key = keys[i], .rc = -ENOENT};
	return 0;
}

void
kvn_peer_get_batch(struct kvn_backend *be, const struct kvn_key *const *keys, size_t n,
		   struct kvn_buf **outs, int *rcs, uint64_t *lookups)
{
	struct batch b = {.n = n, .outs = outs};
	for (size_t i = 0; i < n; i++) {
		outs[i] = NULL;
		rcs[i] = -ENOENT;
	}
	pthread_rwlock_rdlock(&be->attach_lock);
	if (n && be->attached && batch_alloc(&b, keys, n) < 0) {
		be->env->log(be->env, KVN_LOG_WARN,
			     "out of memory for a get of %zu keys from peers (key %s first): "
			     "answering misses",
			     n, keys[0]->str);
	} else if (n && be->attached) {
		/* Attempt 0 may use the cache; a failed check or read retries once with a
		 * lookup. Within an attempt a key tries its locations in order, one per round. */
		for (int attempt = 0; attempt < 2; attempt++) {
			locate_batch(be, &b, attempt > 0);
			for (uint32_t j = 0; j < KVN_PEER_LOCS_MAX && fetch_round(be, &b, j); j++)
				;
			drop_failed(be, &b);
		}
		for (size_t i = 0; i < n; i++)
			rcs[i] = b.bk[i].rc;
	}
	pthread_rwlock_unlock(&be->attach_lock);
	for (size_t i = 0; i < n; i++)
		atomic_fetch_add_explicit(rcs[i] == 0 ? &be->hits : &be->misses, 1,
					  memory_order_relaxed);
	if (lookups)
		*lookups = b.lookups;
	batch_free(&b);
}

static int
peer_get(struct kvn_backend *be, const struct kvn_key *key, struct kvn_buf **out)
{
	int rc;
	kvn_peer_get_batch(be, &key, 1, out, &rc, NULL);
	return rc;
}

/* Held by a peer: 1. A remote chunk cannot be pinned from here, so pin answers 0. */
static int
peer_contains(struct kvn_backend *be, const struct kvn_key *key, bool pin)
{
	if (pin)
		return 0;
	int found = 0;
	pthread_rwlock_rdlock(&be->attach_lock);
	struct kvn_peer_loc all[KVN_PEER_LOCS_MAX], locs[KVN_PEER_LOCS_MAX];
	uint32_t nloc = 0;
	if (be->attached && cache_get(be, key->digest, &locs[0]))
		found = 1;
	else if (be->attached && be->link.lookup(be->link.ctx, &key->digest, 1, KVN_PEER_LOCS_MAX,
						 &nloc, all, be->link.timeout_ms) == 0)
		found = others(be, all, nloc, locs) > 0;
	pthread_rwlock_unlock(&be->attach_lock);
	return found;
}

/* ------------------------------------------------------------------------------------------
 * Attach, ops
 * ------------------------------------------------------------------------------------------ */

static void
close_conns(struct kvn_backend *be)
{
	/* Readers are kept out by attach_lock, but membership notices (conn_find, on the
	 * membership thread) look at the table under be->lock: take it out under that lock, close
	 * the endpoints outside it. */
	pthread_mutex_lock(&be->lock);
	struct conn *v = be->conns;
	size_t n = be->nconns;
	be->conns = NULL;
	be->nconns = be->capconns = 0;
	pthread_mutex_unlock(&be->lock);
	for (size_t i = 0; i < n; i++)
		if (v[i].ep)
			kvn_rails_ep_close(v[i].ep);
	free(v);
}

void
kvn_peer_attach(struct kvn_backend *be, const struct kvn_peer_link *link)
{
	pthread_rwlock_wrlock(&be->attach_lock);
	if (be->attached)
		close_conns(be); /* no reader holds one: they all hold attach_lock */
	be->attached = link != NULL;
	if (link)
		be->link = *link;
	pthread_mutex_lock(&be->lock);
	memset(be->cache, 0, CACHE_ENTRIES * sizeof(*be->cache));
	pthread_mutex_unlock(&be->lock);
	pthread_rwlock_unlock(&be->attach_lock);
}

void
kvn_peer_read_stats(struct kvn_backend *be, struct kvn_peer_read_stats *out)
{
	out->reads = atomic_load_explicit(&be->reads, memory_order_relaxed);
	out->bytes = atomic_load_explicit(&be->bytes_read, memory_order_relaxed);
	out->errors = atomic_load_explicit(&be->errors, memory_order_relaxed);
	out->transport_errors = atomic_load_explicit(&be->transport_errors, memory_order_relaxed);
	out->oversized = atomic_load_explicit(&be->oversized, memory_order_relaxed);
	out->location_cache_hits = atomic_load_explicit(&be->cache_hits, memory_order_relaxed);
	out->location_cache_misses = atomic_load_explicit(&be->cache_misses, memory_order_relaxed);
	out->latency = &be->read_latency;
	pthread_rwlock_rdlock(&be->attach_lock);
	out->promoted_in_place = be->attached ? kvn_cpu_adopted(be->link.cpu) : 0;
	out->nrails = be->attached ? kvn_rails_stats(be->link.rails, out->rails, KVN_RAILS_MAX) : 0;
	pthread_rwlock_unlock(&be->attach_lock);
}

static int
peer_create(const struct kvn_backend_env *env, struct kvn_backend **out)
{
	struct kvn_backend *be = calloc(1, sizeof(*be));
	if (!be)
		return -ENOMEM;
	be->cache = calloc(CACHE_ENTRIES, sizeof(*be->cache));
	if (!be->cache) {
		free(be);
		return -ENOMEM;
	}
	be->env = env;
	pthread_rwlock_init(&be->attach_lock, NULL);
	pthread_mutex_init(&be->lock, NULL);
	*out = be;
	return 0;
}

static void
peer_destroy(struct kvn_backend *be)
{
	if (!be)
		return;
	kvn_peer_attach(be, NULL);
	pthread_rwlock_destroy(&be->attach_lock);
	pthread_mutex_destroy(&be->lock);
	free(be->conns);
	free(be->cache);
	free(be);
}

/* The peer tier stores nothing itself: the cpu tier's slots are what others read. -ENOSPC is
 * the storage manager's "not stored here, not an error". */
static int
peer_put(struct kvn_backend *be, const struct kvn_key *key, struct kvn_buf *buf)
{
	(void)be, (void)key, (void)buf;
	return -ENOSPC;
}

static int
peer_absent(struct kvn_backend *be, const struct kvn_key *key)
{
	(void)be, (void)key;
	return -ENOENT;
}

static int
peer_list(struct kvn_backend *be, kvn_list_cb cb, void *ctx)
{
	(void)be, (void)cb, (void)ctx;
	return 0; /* other nodes' keys are theirs to list */
}

static void
peer_stats(struct kvn_backend *be, struct kvn_backend_stats *out)
{
	memset(out, 0, sizeof(*out));
	out->hits = atomic_load_explicit(&be->hits, memory_order_relaxed);
	out->misses = atomic_load_explicit(&be->misses, memory_order_relaxed);
	out->errors = atomic_load_explicit(&be->errors, memory_order_relaxed);
}

const struct kvn_backend_ops kvn_peer_backend_ops = {
    KVN_BACKEND_OPS_INIT,
    .flags = 0,
    .name = "peer",
    .create = peer_create,
    .destroy = peer_destroy,
    .contains = peer_contains,
    .put = peer_put,
    .get = peer_get,
    .remove = peer_absent,
    .pin = peer_absent,
    .unpin = peer_absent,
    .list = peer_list,
    .stats = peer_stats,
};
