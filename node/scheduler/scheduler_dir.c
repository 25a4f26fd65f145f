/* The chunk directory (node/scheduler/scheduler_dir.h): linear probing over a power-of-two table of
 * 48-byte entries, backward-shift deletion (no tombstones, so lookups stay short after heavy
 * admit/evict churn). The digest is already xxh3: its low bits are the home slot. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "node/scheduler/scheduler_dir.h"

struct ent {
	uint64_t lo, hi;
	uint64_t addr;
	uint64_t gen;
	uint64_t len;
	uint32_t rkey;
	uint16_t worker; /* worker_id + 1; 0 = empty */
	uint16_t pad;
};
_Static_assert(sizeof(struct ent) == 48, "directory entries are 48 bytes");

#define MIN_CAP 1024u
/* Grow at 3/4 full: linear probing degrades quickly past that. */
#define FULL(cap) ((cap) / 4 * 3)

struct kvn_dir {
	struct ent *t;
	size_t cap; /* power of two */
	size_t mask;
	size_t n;
	size_t *per_worker; /* entries per worker id */
	size_t nworkers;    /* length of per_worker */
};

static size_t
cap_for(size_t expect)
{
	size_t cap = MIN_CAP;
	while (FULL(cap) < expect)
		cap *= 2;
	return cap;
}

int
kvn_dir_create(size_t expect, struct kvn_dir **out)
{
	struct kvn_dir *d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->cap = cap_for(expect);
	d->mask = d->cap - 1;
	d->t = calloc(d->cap, sizeof(struct ent));
	if (!d->t) {
		free(d);
		return -ENOMEM;
	}
	*out = d;
	return 0;
}

void
kvn_dir_destroy(struct kvn_dir *d)
{
	if (!d)
		return;
	free(d->t);
	free(d->per_worker);
	free(d);
}

static inline size_t
home(const struct kvn_dir *d, uint64_t lo)
{
	return (size_t)lo & d->mask;
}

/* Reinserts every entry into a table twice the size. Entries are unique by construction, so
 * the reinsert only looks for the first empty slot. */
static int
grow(struct kvn_dir *d)
{
	size_t cap = d->cap * 2, mask = cap - 1;
	struct ent *t = calloc(cap, sizeof(*t));
	if (!t)
		return -ENOMEM;
	for (size_t i = 0; i < d->cap; i++) {
		const struct ent *e = &d->t[i];
		if (!e->worker)
			continue;
		size_t j = (size_t)e->lo & mask;
		while (t[j].worker)
			j = (j + 1) & mask;
		t[j] = *e;
	}
	free(d->t);
	d->t = t;
	d->cap = cap;
	d->mask = mask;
	return 0;
}

static int
count_worker(struct kvn_dir *d, uint32_t id, long delta)
{
	if (id >= d->nworkers) {
		size_t n = d->nworkers ? d->nworkers : 16;
		while (n <= id)
			n *= 2;
		size_t *p = realloc(d->per_worker, n * sizeof(*p));
		if (!p)
			return -ENOMEM;
		memset(p + d->nworkers, 0, (n - d->nworkers) * sizeof(*p));
		d->per_worker = p;
		d->nworkers = n;
	}
	d->per_worker[id] += (size_t)delta;
	return 0;
}

int
kvn_dir_admit(struct kvn_dir *d, struct kvn_digest digest, const struct kvn_loc *loc)
{
	if (loc->worker_id >= KVN_DIR_MAX_WORKERS)
		return -EINVAL;
	uint16_t w = (uint16_t)(loc->worker_id + 1);
	if (d->n + 1 > FULL(d->cap)) {
		int rc = grow(d);
		if (rc)
			return rc;
	}
	size_t i = home(d, digest.lo);
	for (;; i = (i + 1) & d->mask) {
		struct ent *e = &d->t[i];
		if (e->worker == 0)
			break;
		if (e->worker == w && e->lo == digest.lo && e->hi == digest.hi) {
			e->addr = loc->addr;
			e->gen = loc->generation;
			e->len = loc->len;
			e->rkey = loc->rkey;
			return 0;
		}
	}
	if (count_worker(d, loc->worker_id, 1))
		return -ENOMEM;
	d->t[i] = (struct ent){.lo = digest.lo,
			       .hi = digest.hi,
			       .addr = loc->addr,
			       .gen = loc->generation,
			       .len = loc->len,
			       .rkey = loc->rkey,
			       .worker = w};
	d->n++;
	return 0;
}

/* Empties slot i and moves later members of its probe run back so that no run has a gap. */
static void
remove_at(struct kvn_dir *d, size_t i)
{
	count_worker(d, d->t[i].worker - 1u, -1);
	d->n--;
	size_t j = i;
	for (;;) {
		j = (j + 1) & d->mask;
		if (!d->t[j].worker)
			break;
		size_t k = home(d, d->t[j].lo);
		/* Entry j may move to the hole at i unless its home lies cyclically in (i, j]. */
		bool stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
		if (stays)
			continue;
		d->t[i] = d->t[j];
		i = j;
	}
	d->t[i].worker = 0;
}

int
kvn_dir_evict(struct kvn_dir *d, uint32_t worker_id, struct kvn_digest digest, uint64_t gen)
{
	if (worker_id >= KVN_DIR_MAX_WORKERS)
		return 0;
	uint16_t w = (uint16_t)(worker_id + 1);
	for (size_t i = home(d, digest.lo); d->t[i].worker; i = (i + 1) & d->mask) {
		struct ent *e = &d->t[i];
		if (e->worker == w && e->lo == digest.lo && e->hi == digest.hi) {
			if (gen && e->gen != gen)
				return 0; /* a newer admit of the same key already replaced it */
			remove_at(d, i);
			return 1;
		}
	}
	return 0;
}

uint32_t
kvn_dir_lookup(const struct kvn_dir *d, struct kvn_digest digest, struct kvn_loc *locs,
	       uint32_t max)
{
	uint32_t n = 0;
	for (size_t i = home(d, digest.lo); d->t[i].worker && n < max; i = (i + 1) & d->mask) {
		const struct ent *e = &d->t[i];
		if (e->lo != digest.lo || e->hi != digest.hi)
			continue;
		locs[n++] = (struct kvn_loc){.worker_id = e->worker - 1u,
					     .rkey = e->rkey,
					     .addr = e->addr,
					     .len = e->len,
					     .generation = e->gen};
	}
	return n;
}

size_t
kvn_dir_drop_worker(struct kvn_dir *d, uint32_t worker_id)
{
	if (worker_id >= d->nworkers || !d->per_worker[worker_id])
		return 0;
	uint16_t w = (uint16_t)(worker_id + 1);
	size_t dropped = 0;
	/* A removal only moves entries from ahead of i into i or later holes, so re-checking i
	 * after each removal visits every entry once. */
	for (size_t i = 0; i < d->cap && d->per_worker[worker_id];) {
		if (d->t[i].worker == w) {
			remove_at(d, i);
			dropped++;
		} else {
			i++;
		}
	}
	return dropped;
}

size_t
kvn_dir_entries(const struct kvn_dir *d)
{
	return d->n;
}

size_t
kvn_dir_worker_entries(const struct kvn_dir *d, uint32_t worker_id)
{
	return worker_id < d->nworkers ? d->per_worker[worker_id] : 0;
}

size_t
kvn_dir_bytes(const struct kvn_dir *d)
{
	return sizeof(*d) + d->cap * sizeof(struct ent) + d->nworkers * sizeof(size_t);
}

size_t
kvn_dir_entry_size(void)
{
	return sizeof(struct ent);
}
