/* The scheduler's chunk directory (node/scheduler_dir.*) against a reference model: admits,
 * evicts and worker drops with colliding digests, so probe runs are long and wrap around. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "node/scheduler/scheduler_dir.h"

/* Half the keys have their home in the last 16 slots of any table size, the other half in
 * the first 16: their probe runs wrap past the end into each other. */
static struct kvn_digest
digest_of(uint32_t k)
{
	return (struct kvn_digest){.lo = k & 1 ? UINT64_MAX - k % 16 : k % 16, .hi = k};
}

Test(directory, random_churn_with_colliding_digests_matches_a_reference_model)
{
	/* 32 distinct home slots for 4000 keys: long probe runs that wrap the table's end,
	 * where backward-shift deletion goes wrong if it is going to. */
	enum { KEYS = 4000, WORKERS = 3, OPS = 100000 };
	struct kvn_dir *d;
	cr_assert_eq(kvn_dir_create(0, &d), 0);
	static uint64_t model[KEYS][WORKERS]; /* generation held, 0 = none */
	memset(model, 0, sizeof(model));
	uint64_t r = 1;
	for (int op = 0; op < OPS; op++) {
		r = r * 6364136223846793005ull + 1442695040888963407ull; /* Knuth's LCG */
		uint32_t k = (uint32_t)((r >> 33) % KEYS), w = (uint32_t)((r >> 20) % WORKERS);
		struct kvn_digest dg = digest_of(k);
		if ((r >> 40) % 3) {
			struct kvn_loc l = {
			    .worker_id = w, .rkey = k, .addr = k * 4096, .len = 4160};
			l.generation = 2 * ((r >> 50) % 100 + 1);
			cr_assert_eq(kvn_dir_admit(d, dg, &l), 0);
			model[k][w] = l.generation;
		} else {
			int got = kvn_dir_evict(d, w, dg, 0);
			cr_assert_eq(got, model[k][w] != 0, "evict of key %u worker %u", k, w);
			model[k][w] = 0;
		}
	}
	size_t total = 0, per[WORKERS] = {0};
	for (uint32_t k = 0; k < KEYS; k++) {
		struct kvn_digest dg = digest_of(k);
		struct kvn_loc locs[8];
		uint32_t n = kvn_dir_lookup(d, dg, locs, 8), want = 0;
		for (uint32_t w = 0; w < WORKERS; w++)
			if (model[k][w]) {
				want++;
				per[w]++;
				bool found = false;
				for (uint32_t i = 0; i < n; i++)
					found |= locs[i].worker_id == w &&
						 locs[i].generation == model[k][w];
				cr_assert(found, "key %u: worker %u's entry (gen %llu) is missing",
					  k, w, (unsigned long long)model[k][w]);
			}
		cr_assert_eq(n, want, "key %u has %u locations, the model %u", k, n, want);
		total += want;
	}
	cr_assert_eq(kvn_dir_entries(d), total);
	for (uint32_t w = 0; w < WORKERS; w++)
		cr_assert_eq(kvn_dir_worker_entries(d, w), per[w]);
	/* Dropping one worker leaves every other entry findable. */
	cr_assert_eq(kvn_dir_drop_worker(d, 1), per[1]);
	for (uint32_t k = 0; k < KEYS; k++) {
		struct kvn_digest dg = digest_of(k);
		struct kvn_loc locs[8];
		uint32_t n = kvn_dir_lookup(d, dg, locs, 8);
		cr_assert_eq(n, (model[k][0] != 0) + (model[k][2] != 0), "key %u after the drop",
			     k);
		for (uint32_t i = 0; i < n; i++)
			cr_assert_neq(locs[i].worker_id, 1);
	}
	cr_assert_eq(kvn_dir_entries(d), total - per[1]);
	kvn_dir_destroy(d);
}

Test(directory, an_evict_for_an_older_generation_leaves_the_newer_entry)
{
	struct kvn_dir *d;
	cr_assert_eq(kvn_dir_create(10, &d), 0);
	struct kvn_digest dg = {.lo = 0x123456789, .hi = 42};
	struct kvn_loc l = {.rkey = 9, .addr = 4096, .len = 4160};
	l.generation = 4;
	kvn_dir_admit(d, dg, &l);
	l.generation = 6;
	kvn_dir_admit(d, dg, &l);
	cr_assert_eq(kvn_dir_entries(d), 1, "a re-admit replaces, it does not add");
	cr_assert_eq(kvn_dir_evict(d, 0, dg, 4), 0);
	struct kvn_loc got;
	cr_assert_eq(kvn_dir_lookup(d, dg, &got, 1), 1);
	cr_assert_eq(got.generation, 6);
	cr_assert_eq(kvn_dir_evict(d, 0, dg, 6), 1);
	cr_assert_eq(kvn_dir_lookup(d, dg, &got, 1), 0);
	l.worker_id = KVN_DIR_MAX_WORKERS;
	cr_assert_eq(kvn_dir_admit(d, dg, &l), -EINVAL, "a worker id over the cap");
	kvn_dir_destroy(d);
}
