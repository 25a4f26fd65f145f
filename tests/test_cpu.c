/* cpu tier specifics over the chunk pool: stats, LRU eviction with pins and views, -ENOSPC,
 * replace and remove under views, list, and concurrent put/get with byte checks. The shared
 * backend conformance suite runs against cpu too. */
#include <criterion/criterion.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/pool.h"
#include "node/engine/storage.h"
#include "tests/helpers/backend_env.h"
#include "tests/helpers/pattern.h"

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

static const struct kvn_backend_ops *ops = &kvn_cpu_backend_ops;

struct fixture {
	struct kvn_pool *pool;
	struct kvn_backend_env *env;
	struct kvn_backend *be;
};

static struct fixture
open_cpu(size_t pool_size)
{
	struct fixture f;
	char err[256] = "";
	cr_assert_eq(kvn_pool_create(pool_size, false, &f.pool, err, sizeof(err)), 0, "%s", err);
	f.env = backend_env_new("cpu", NULL, f.pool);
	cr_assert_not_null(f.env);
	int rc = ops->create(f.env, &f.be);
	cr_assert_eq(rc, 0, "cpu create: %s", backend_env_last_log(f.env, KVN_LOG_ERROR));
	return f;
}

static void
close_cpu(struct fixture *f)
{
	ops->destroy(f->be);
	struct kvn_pool_stats st;
	kvn_pool_stats(f->pool, &st);
	cr_assert_eq(st.slots, 0, "destroy left %llu slots allocated",
		     (unsigned long long)st.slots);
	backend_env_free(f->env);
	kvn_pool_destroy(f->pool);
}

static struct kvn_key
key_of(const char *fmt, long n)
{
	char s[128];
	struct kvn_key k;
	snprintf(s, sizeof(s), fmt, n);
	cr_assert_eq(kvn_key_from_str(&k, s), 0, "key %s", s);
	return k;
}


static int
put_bytes(struct fixture *f, const struct kvn_key *k, size_t len, uint64_t seed)
{
	struct kvn_buf *b = kvn_buf_new(len);
	cr_assert_not_null(b);
	pattern_fill(b->data, len, seed);
	int rc = ops->put(f->be, k, b);
	kvn_buf_unref(b);
	return rc;
}

static bool
holds(struct fixture *f, const struct kvn_key *k, size_t len, uint64_t seed)
{
	struct kvn_buf *v;
	if (ops->get(f->be, k, &v))
		return false;
	bool ok = v->len == len && pattern_check(v->data, len, seed);
	kvn_buf_unref(v);
	return ok;
}

/* ------------------------------------------------------------------------------------------ */

Test(cpu, is_named_cpu_with_the_current_abi_and_fast_puts)
{
	cr_assert_str_eq(ops->name, "cpu");
	cr_assert_eq(ops->abi, KVN_ABI);
	cr_assert_eq(ops->flags, 0);
}

Test(cpu, refuses_to_start_without_the_node_pool)
{
	struct kvn_backend_env *env = backend_env_new("cpu", NULL, NULL);
	struct kvn_backend *be = (void *)1;
	cr_assert_eq(ops->create(env, &be), -EINVAL);
	cr_assert_null(be);
	cr_assert(strstr(backend_env_last_log(env, KVN_LOG_ERROR), "pool"), "%s",
		  backend_env_last_log(env, KVN_LOG_ERROR));
	backend_env_free(env);
}

Test(cpu, get_returns_a_zero_copy_view_of_the_stored_bytes_and_counts_hits_and_misses)
{
	struct fixture f = open_cpu(8 * MiB);
	struct kvn_key k = key_of("vllm@m@1@0@%lx@half", 0xabc);
	struct kvn_key absent = key_of("absent-%ld", 1);
	cr_assert_eq(put_bytes(&f, &k, 300 * KiB, 3), 0);

	struct kvn_buf *v;
	cr_assert_eq(ops->get(f.be, &k, &v), 0);
	cr_assert_eq(v->len, 300 * KiB);
	cr_assert(pattern_check(v->data, v->len, 3));
	struct kvn_slot *s = kvn_pool_view_slot(v);
	cr_assert_not_null(s, "the view points into the pool");
	cr_assert_eq(v->data, kvn_slot_payload(s));
	cr_assert_eq((size_t)((char *)v->data - (char *)kvn_pool_base(f.pool)),
		     kvn_slot_offset(s) + 64);
	kvn_buf_unref(v);

	cr_assert_eq(ops->get(f.be, &absent, &v), -ENOENT);
	cr_assert_null(v);
	cr_assert_eq(ops->get(f.be, &absent, &v), -ENOENT);
	cr_assert_eq(ops->contains(f.be, &k, false), 1);
	cr_assert_eq(ops->contains(f.be, &absent, false), 0);

	struct kvn_backend_stats st;
	ops->stats(f.be, &st);
	cr_assert_eq(st.count, 1);
	cr_assert_eq(st.bytes, 300 * KiB);
	cr_assert_eq(st.capacity, kvn_pool_size(f.pool));
	cr_assert_eq(st.hits, 1);
	cr_assert_eq(st.misses, 2);
	cr_assert_eq(st.puts, 1);
	cr_assert_eq(st.evictions, 0);
	close_cpu(&f);
}

Test(cpu, a_value_larger_than_the_pool_is_enospc_and_evicts_nothing)
{
	struct fixture f = open_cpu(4 * MiB);
	struct kvn_key small = key_of("small-%ld", 0), huge = key_of("huge-%ld", 0);
	cr_assert_eq(put_bytes(&f, &small, MiB, 1), 0);
	cr_assert_eq(put_bytes(&f, &huge, 4 * MiB, 2), -ENOSPC);
	cr_assert_eq(put_bytes(&f, &huge, 64 * MiB, 2), -ENOSPC);
	cr_assert(holds(&f, &small, MiB, 1));
	struct kvn_backend_stats st;
	ops->stats(f.be, &st);
	cr_assert_eq(st.evictions, 0);
	cr_assert_eq(st.puts, 1);
	cr_assert_eq(ops->contains(f.be, &huge, false), 0);
	close_cpu(&f);
}

Test(cpu, puts_beyond_capacity_evict_the_least_recently_used_and_count_it)
{
	struct fixture f = open_cpu(8 * MiB);
	const size_t len = MiB - 64; /* one chunk per MiB */
	struct kvn_key k[12];
	for (int i = 0; i < 8; i++) {
		k[i] = key_of("lru-%ld", i);
		cr_assert_eq(put_bytes(&f, &k[i], len, (uint64_t)i), 0);
	}
	cr_assert(holds(&f, &k[0], len, 0)); /* touch 0: 1 is now the coldest */
	for (int i = 8; i < 10; i++) {
		k[i] = key_of("lru-%ld", i);
		cr_assert_eq(put_bytes(&f, &k[i], len, (uint64_t)i), 0);
	}
	cr_assert_eq(ops->contains(f.be, &k[1], false), 0, "coldest evicted first");
	cr_assert_eq(ops->contains(f.be, &k[2], false), 0);
	cr_assert(holds(&f, &k[0], len, 0), "recently read key survives");
	for (int i = 3; i < 10; i++)
		cr_assert(holds(&f, &k[i], len, (uint64_t)i), "key %d", i);
	struct kvn_backend_stats st;
	ops->stats(f.be, &st);
	cr_assert_eq(st.evictions, 2);
	cr_assert_eq(st.count, 8);
	cr_assert_eq(st.bytes, 8 * len);
	cr_assert_eq(st.puts, 10);
	close_cpu(&f);
}

Test(cpu, eviction_spares_pinned_chunks_and_chunks_with_live_views)
{
	struct fixture f = open_cpu(16 * MiB);
	const size_t len = MiB - 64;
	struct kvn_key k[16];
	for (int i = 0; i < 16; i++) {
		k[i] = key_of("keep-%ld", i);
		cr_assert_eq(put_bytes(&f, &k[i], len, (uint64_t)i), 0);
	}
	/* the coldest ones get protected: 0-2 pinned (0 through contains), 3-5 viewed */
	cr_assert_eq(ops->contains(f.be, &k[0], true), 1);
	cr_assert_eq(ops->pin(f.be, &k[1]), 0);
	cr_assert_eq(ops->pin(f.be, &k[2]), 0);
	cr_assert_eq(ops->pin(f.be, &k[2]), 0, "pins nest");
	struct kvn_buf *views[3];
	for (int i = 0; i < 3; i++)
		cr_assert_eq(ops->get(f.be, &k[3 + i], &views[i]), 0);

	for (int i = 0; i < 40; i++) {
		struct kvn_key m = key_of("more-%ld", i);
		cr_assert_eq(put_bytes(&f, &m, (size_t)(i % 4 + 1) * MiB - 64, 100 + (uint64_t)i),
			     0, "put %d", i);
	}
	for (int i = 0; i < 3; i++) {
		cr_assert(holds(&f, &k[i], len, (uint64_t)i), "pinned key %d lost or changed", i);
		cr_assert(pattern_check(views[i]->data, len, 3 + (uint64_t)i), "viewed key %d changed",
			  3 + i);
		cr_assert_eq(ops->contains(f.be, &k[3 + i], false), 1);
	}
	for (int i = 6; i < 16; i++)
		cr_assert_eq(ops->contains(f.be, &k[i], false), 0, "key %d should be evicted", i);
	struct kvn_backend_stats st;
	ops->stats(f.be, &st);
	cr_assert_geq(st.evictions, 10);

	/* released, they become evictable again */
	for (int i = 0; i < 3; i++)
		kvn_buf_unref(views[i]);
	cr_assert_eq(ops->unpin(f.be, &k[0]), 0);
	cr_assert_eq(ops->unpin(f.be, &k[1]), 0);
	cr_assert_eq(ops->unpin(f.be, &k[2]), 0);
	cr_assert_eq(ops->unpin(f.be, &k[2]), 0);
	struct kvn_key big = key_of("big-%ld", 0);
	cr_assert_eq(put_bytes(&f, &big, 15 * MiB, 7), 0);
	for (int i = 0; i < 6; i++)
		cr_assert_eq(ops->contains(f.be, &k[i], false), 0);
	cr_assert(holds(&f, &big, 15 * MiB, 7));
	close_cpu(&f);
}

Test(cpu, pin_and_unpin_of_an_absent_key_are_enoent)
{
	struct fixture f = open_cpu(4 * MiB);
	struct kvn_key k = key_of("nothing-%ld", 0);
	cr_assert_eq(ops->pin(f.be, &k), -ENOENT);
	cr_assert_eq(ops->unpin(f.be, &k), -ENOENT);
	cr_assert_eq(ops->contains(f.be, &k, true), 0);
	cr_assert_eq(ops->remove(f.be, &k), -ENOENT);
	cr_assert_eq(put_bytes(&f, &k, 10, 1), 0);
	cr_assert_eq(ops->unpin(f.be, &k), -EINVAL, "present but not pinned");
	close_cpu(&f);
}

Test(cpu, replacing_or_removing_a_key_leaves_existing_views_intact)
{
	struct fixture f = open_cpu(8 * MiB);
	struct kvn_key k = key_of("replace-%ld", 0);
	cr_assert_eq(put_bytes(&f, &k, 2 * MiB, 1), 0);
	struct kvn_buf *old;
	cr_assert_eq(ops->get(f.be, &k, &old), 0);
	cr_assert_eq(put_bytes(&f, &k, 1 * MiB, 2), 0);
	cr_assert(holds(&f, &k, 1 * MiB, 2), "get returns the new value");
	struct kvn_backend_stats st;
	ops->stats(f.be, &st);
	cr_assert_eq(st.count, 1);
	cr_assert_eq(st.bytes, 1 * MiB);

	struct kvn_buf *cur;
	cr_assert_eq(ops->get(f.be, &k, &cur), 0);
	cr_assert_eq(ops->remove(f.be, &k), 0);
	cr_assert_eq(ops->contains(f.be, &k, false), 0);
	cr_assert_eq(ops->remove(f.be, &k), -ENOENT);
	/* churn the pool so freed memory would be reused */
	for (int i = 0; i < 10; i++) {
		struct kvn_key m = key_of("churn-%ld", i);
		cr_assert_eq(put_bytes(&f, &m, MiB, 50 + (uint64_t)i), 0);
	}
	cr_assert(pattern_check(old->data, 2 * MiB, 1), "replaced value changed under its view");
	cr_assert(pattern_check(cur->data, 1 * MiB, 2), "removed value changed under its view");
	kvn_buf_unref(old);
	kvn_buf_unref(cur);
	close_cpu(&f);
}

struct listed {
	int n;
	int bad_len;
	int seen[64];
	struct fixture *f;
};

static int
on_key(void *ctx, const struct kvn_key *key, size_t len)
{
	struct listed *l = ctx;
	int i;
	if (sscanf(key->str, "list-%d", &i) != 1 || i < 0 || i >= 64)
		return -EINVAL;
	l->seen[i]++;
	l->n++;
	if (len != (size_t)i * 1000)
		l->bad_len++;
	/* no lock is held: calling back into the backend must not deadlock */
	return l->f->be && ops->contains(l->f->be, key, false) == 1 ? 0 : -EIO;
}

static int
stop_at_three(void *ctx, const struct kvn_key *key, size_t len)
{
	(void)key;
	(void)len;
	return ++*(int *)ctx == 3 ? 42 : 0;
}

Test(cpu, list_reports_every_key_text_with_its_length)
{
	struct fixture f = open_cpu(16 * MiB);
	for (int i = 0; i < 40; i++) {
		struct kvn_key k = key_of("list-%ld", i);
		cr_assert_eq(put_bytes(&f, &k, (size_t)i * 1000, 1), 0);
	}
	struct kvn_key gone = key_of("list-%ld", 7);
	cr_assert_eq(ops->remove(f.be, &gone), 0);
	struct listed l = {.f = &f};
	cr_assert_eq(ops->list(f.be, on_key, &l), 0);
	cr_assert_eq(l.n, 39);
	cr_assert_eq(l.bad_len, 0);
	for (int i = 0; i < 40; i++)
		cr_assert_eq(l.seen[i], i == 7 ? 0 : 1, "key list-%d seen %d times", i, l.seen[i]);
	int calls = 0;
	cr_assert_eq(ops->list(f.be, stop_at_three, &calls), 42, "a non-zero callback stops it");
	cr_assert_eq(calls, 3);
	close_cpu(&f);
}

Test(cpu, the_index_survives_growth_and_churn_of_many_small_keys)
{
	struct fixture f = open_cpu(64 * MiB);
	/* 5000 keys force the index to grow several times; removing every third exercises
	 * deletion from probe chains */
	for (long i = 0; i < 5000; i++) {
		struct kvn_key k = key_of("small-%ld", i);
		cr_assert_eq(put_bytes(&f, &k, 100, (uint64_t)i), 0);
	}
	for (long i = 0; i < 5000; i += 3) {
		struct kvn_key k = key_of("small-%ld", i);
		cr_assert_eq(ops->remove(f.be, &k), 0);
	}
	for (long i = 0; i < 5000; i++) {
		struct kvn_key k = key_of("small-%ld", i);
		if (i % 3 == 0)
			cr_assert_eq(ops->contains(f.be, &k, false), 0, "key %ld", i);
		else
			cr_assert(holds(&f, &k, 100, (uint64_t)i), "key %ld", i);
	}
	struct kvn_backend_stats st;
	ops->stats(f.be, &st);
	cr_assert_eq(st.count, 5000 - 1667);
	cr_assert_eq(st.evictions, 0);
	close_cpu(&f);
}

struct worker {
	struct fixture *f;
	int id;
	int bad, hits;
};

static void *
worker_main(void *ap)
{
	struct worker *w = ap;
	/* keys shared by all threads; each value's seed is derived from its length so any
	 * reader can verify whichever version it gets */
	uint32_t r = 2654435761u * (uint32_t)(w->id + 1);
	for (int i = 0; i < 400; i++) {
		r = r * 1664525u + 1013904223u;
		long n = (long)((r >> 8) % 96);
		struct kvn_key k = key_of("conc-%ld", n);
		if ((i + w->id) % 2) {
			size_t len = 64 * KiB + (size_t)((i * 4099 + w->id * 977) % (448 * 1024));
			struct kvn_buf *b = kvn_buf_new(len);
			pattern_fill(b->data, len, len);
			if (ops->put(w->f->be, &k, b))
				w->bad++;
			kvn_buf_unref(b);
		} else {
			struct kvn_buf *v;
			if (ops->get(w->f->be, &k, &v) == 0) {
				w->hits++;
				if (!pattern_check(v->data, v->len, v->len))
					w->bad++;
				kvn_buf_unref(v);
			}
		}
	}
	return NULL;
}

Test(cpu, concurrent_puts_and_gets_from_several_threads_return_whole_values)
{
	/* 16 MiB holds about half of the 96 keys' values, so eviction runs concurrently too;
	 * at most 8 slots are held by views or writes at once (4 MiB), so a put always finds
	 * room once the rest is evicted */
	struct fixture f = open_cpu(16 * MiB);
	pthread_t t[4];
	struct worker w[4];
	for (int i = 0; i < 4; i++) {
		w[i] = (struct worker){.f = &f, .id = i};
		cr_assert_eq(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
	}
	int hits = 0;
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		cr_assert_eq(w[i].bad, 0, "thread %d saw %d failed puts or torn values", i,
			     w[i].bad);
		hits += w[i].hits;
	}
	cr_assert_gt(hits, 0);
	struct kvn_backend_stats st;
	ops->stats(f.be, &st);
	cr_assert_eq(st.puts, 800);
	cr_assert_gt(st.evictions, 0);
	struct kvn_pool_stats ps;
	kvn_pool_stats(f.pool, &ps);
	cr_assert_eq(ps.slots, st.count, "no slot leaked or lost from the index");
	close_cpu(&f);
}
