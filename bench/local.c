/* kvnode-bench local: put/get of the cpu backend against memcpy of the same sizes over a
 * working set of the same size, measured in alternating trials in one process. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "bench/bench.h"
#include "node/engine/config.h"
#include "core/log.h"

enum op { OP_MEMCPY, OP_PUT, OP_GET, OP_GET_VIEW };

struct ctx {
	struct kvn_engine *eng;
	struct kvn_key *keys;
	char **src; /* memcpy sources, as many as keys: same working set as the pool's */
	char *src_region; /* they live in one mapping backed like the pool (THP) */
	size_t src_bytes;
	char *dst; /* the caller's buffer */
	size_t nkeys;
	size_t size;
	volatile uint64_t sink; /* keeps the zero-copy get's touch from being optimised out */
};

/* One pass touches every key (or source buffer) once. */
static int
pass(void *arg, int op_)
{
	struct ctx *c = arg;
	enum op op = (enum op)op_;
	for (size_t i = 0; i < c->nkeys; i++) {
		int rc = 0;
		size_t len;
		struct kvn_buf *b;
		switch (op) {
		case OP_MEMCPY:
			memcpy(c->dst, c->src[i], c->size);
			break;
		case OP_PUT:
			rc = kvn_engine_put(c->eng, &c->keys[i], c->dst, c->size);
			break;
		case OP_GET:
			rc = kvn_engine_get_into(c->eng, &c->keys[i], c->dst, c->size, &len);
			break;
		case OP_GET_VIEW:
			rc = kvn_engine_get(c->eng, &c->keys[i], &b);
			if (rc == 0) {
				c->sink += ((const unsigned char *)b->data)[b->len - 1];
				kvn_buf_unref(b);
			}
			break;
		}
		if (rc < 0) {
			fprintf(stderr, "kvnode-bench: %s of key %s failed: %s\n",
				op == OP_PUT ? "put" : "get", c->keys[i].str, kvn_strerror(rc));
			return rc;
		}
	}
	return 0;
}

/* Runs op and (with --baseline) memcpy in alternating trials, so drift on a busy machine hits
 * both alike, and reports the median trial of each. */
static int
row(const struct bench_opts *o, struct ctx *c, enum op op, const char *name)
{
	struct bench_trial mine[99], base[99];
	/* A zero-copy view moves no bytes: comparing it with memcpy would flatter it. */
	bool compare = o->baseline && op != OP_GET_VIEW;
	for (int i = 0; i < o->trials; i++) {
		int rc = bench_measure(pass, c, op, c->nkeys, c->size, o->duration_s,
				       &mine[i]);
		if (rc == 0 && compare)
			rc = bench_measure(pass, c, OP_MEMCPY, c->nkeys, c->size, o->duration_s,
					   &base[i]);
		if (rc < 0)
			return rc;
	}
	const struct bench_trial *m = bench_median(mine, o->trials);
	struct bench_row r = {
		.mode = "local",
		.op = name,
		.bytes = c->size,
		.iterations = m->iterations,
		.gbps = m->gbps,
		.peak_gbps = m->peak_gbps,
		.baseline_gbps = compare ? bench_median(base, o->trials)->gbps : 0,
		.baseline_name = "memcpy",
	};
	bench_table_row(o, &r);
	return 0;
}

static int
one_size(const struct bench_opts *o, struct kvn_engine *eng, size_t size)
{
	struct ctx c = { .eng = eng, .size = size };
	c.nkeys = o->working_set / size ? o->working_set / size : 1;
	c.keys = calloc(c.nkeys, sizeof(*c.keys));
	c.src = calloc(c.nkeys, sizeof(*c.src));
	int rc = -ENOMEM;
	if (!c.keys || !c.src || posix_memalign((void **)&c.dst, 4096, size))
		goto out;
	/* The baseline reads memory backed the way the pool is (transparent hugepages where
	 * the kernel gives them), so the ratio compares copies, not TLB behaviour. */
	c.src_bytes = c.nkeys * size;
	c.src_region = mmap(NULL, c.src_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			    -1, 0);
	if (c.src_region == MAP_FAILED) {
		c.src_region = NULL;
		goto out;
	}
	madvise(c.src_region, c.src_bytes, MADV_HUGEPAGE);
	memset(c.dst, 0xa5, size);
	for (size_t i = 0; i < c.nkeys; i++) {
		char text[128];
		/* LMCache-shaped keys, as an inference engine would send them. */
		snprintf(text, sizeof(text), "bench@llama-3-8b@1@0@%zx%08zx@bfloat16", size, i);
		kvn_key_from_str(&c.keys[i], text);
		c.src[i] = c.src_region + i * size;
		memset(c.src[i], (int)i, size);
	}
	if ((rc = row(o, &c, OP_PUT, "put")) < 0 || (rc = row(o, &c, OP_GET, "get")) < 0 ||
	    (rc = row(o, &c, OP_GET_VIEW, "get_view")) < 0)
		goto out;
	for (size_t i = 0; i < c.nkeys; i++)
		kvn_engine_remove(eng, &c.keys[i]);
out:
	if (rc == -ENOMEM)
		fprintf(stderr, "kvnode-bench: out of memory for a %zu-byte working set of %zu-byte chunks\n",
			o->working_set, size);
	if (c.src_region)
		munmap(c.src_region, c.src_bytes);
	free(c.src);
	free(c.keys);
	free(c.dst);
	return rc;
}

int
bench_local(const struct bench_opts *o)
{
	struct kvn_config *cfg = kvn_config_new_defaults();
	if (!cfg)
		return -ENOMEM;
	size_t largest = 0;
	for (size_t i = 0; i < o->nsizes; i++)
		if (o->sizes[i] > largest)
			largest = o->sizes[i];
	/* Room for the working set plus slot headers and one spare chunk, so puts of the
	 * working set never evict: the numbers are copy cost, not eviction cost. */
	cfg->max_local_cpu_size = o->working_set + o->working_set / 16 + 2 * largest + (64 << 20);
	cfg->local_disk = NULL;

	char err[512];
	struct kvn_engine *eng;
	int rc = kvn_engine_open(cfg, &eng, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "kvnode-bench: cannot open the engine: %s\n", err);
		kvn_config_free(cfg);
		return rc;
	}
	char setup[256];
	snprintf(setup, sizeof(setup),
		 "backend: cpu   working set: %llu MiB per size   trials: %d x %.2f s   baseline: %s",
		 (unsigned long long)(o->working_set >> 20), o->trials, o->duration_s,
		 o->baseline ? "memcpy" : "none");
	bench_table_header(o, "kvnode-bench local: put/get of the cpu backend (registered pool)",
			   setup);
	for (size_t i = 0; i < o->nsizes && rc == 0; i++)
		rc = one_size(o, eng, o->sizes[i]);
	bench_table_footer(o);
	if (o->json)
		bench_json_flush();
	kvn_engine_close(eng);
	kvn_config_free(cfg);
	return rc;
}
