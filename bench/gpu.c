/* kvnode-bench gpu: host <-> device copies through the staging of gpu/staging.h (a bounce area
 * of two halves, the cuda copy engine's streams, the bytes moved into or out of pageable host
 * memory, as a landing slot is) against the same engine's plain copy of page-locked host memory
 * (cuMemcpy*Async of the whole chunk, then a sync: what cuMemcpy of pinned memory costs), in
 * alternating passes on one device. Needs an NVIDIA GPU and its driver: without one it says
 * what is missing and exits 2. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "bench/bench.h"
#include "gpu/gpu.h"
#include "gpu/staging.h"

/* Chunks of one pass sit side by side in a region of at least this many bytes on each side. */
#define REGION_MIN ((size_t)64 << 20)

enum op { OP_D2H_STAGED, OP_D2H_PINNED, OP_H2D_STAGED, OP_H2D_PINNED };

struct ctx {
	struct kvn_gpu *gpu;
	struct kvn_copy_engine *e;
	struct kvn_staging *st;
	struct kvn_gpu_mem *mem;
	kvn_devptr_t dev;
	uint8_t *host;	 /* pageable: where staged gets land and staged puts come from */
	uint8_t *pinned; /* page-locked with the engine: the baseline's side */
	bool pinned_registered;
	struct kvn_gpu_info info;
	size_t region, size, items;
	char err[512];
};

static int
pass(void *arg, int op_)
{
	struct ctx *x = arg;
	const struct kvn_copy_engine_ops *eo = x->e->ops;
	for (size_t i = 0; i < x->items; i++) {
		size_t off = i * x->size;
		int rc;
		switch ((enum op)op_) {
		case OP_D2H_STAGED:
			rc = kvn_staging_get_buf(x->st, x->host + off, x->dev + off, x->size,
						 x->err, sizeof(x->err));
			break;
		case OP_H2D_STAGED:
			rc = kvn_staging_put_buf(x->st, x->dev + off, x->host + off, x->size,
						 x->err, sizeof(x->err));
			break;
		case OP_D2H_PINNED:
			rc = eo->copy_to_host(x->e, x->pinned + off, x->dev + off, x->size, 0,
					      x->err, sizeof(x->err));
			if (!rc)
				rc = eo->sync(x->e, 0, x->err, sizeof(x->err));
			break;
		case OP_H2D_PINNED:
			rc = eo->copy_to_dev(x->e, x->dev + off, x->pinned + off, x->size, 0,
					     x->err, sizeof(x->err));
			if (!rc)
				rc = eo->sync(x->e, 0, x->err, sizeof(x->err));
			break;
		default:
			rc = -EINVAL;
		}
		if (rc < 0) {
			fprintf(stderr, "kvnode-bench gpu: chunk %zu of %zu bytes: %s\n", i,
				x->size, x->err);
			return rc;
		}
	}
	return 0;
}

static void
pattern(uint8_t *p, size_t len, uint64_t seed)
{
	for (size_t j = 0; j < len; j++)
		p[j] = bench_pattern(j + seed);
}

/* Bytes put from src by op put come back whole into dst by op get; how is "staging" or
 * "cuMemcpy", each way. */
static int
round_trip(struct ctx *x, uint8_t *src, enum op put, uint8_t *dst, enum op get, uint64_t seed,
	   const char *how_put, const char *how_get)
{
	size_t n = x->items * x->size;
	pattern(src, n, seed);
	memset(dst, 0, n);
	int rc = pass(x, put);
	if (!rc)
		rc = pass(x, get);
	if (!rc && memcmp(src, dst, n)) {
		fprintf(stderr,
			"kvnode-bench gpu: %zu-byte chunks put by %s came back different by %s\n",
			x->size, how_put, how_get);
		return -EIO;
	}
	return rc;
}

/* Before a size is timed: what staging puts the plain copy reads back whole, and the other
 * way round. */
static int
verify(struct ctx *x)
{
	int rc = round_trip(x, x->host, OP_H2D_STAGED, x->pinned, OP_D2H_PINNED, x->size, "staging",
			    "cuMemcpy");
	return rc ? rc
		  : round_trip(x, x->pinned, OP_H2D_PINNED, x->host, OP_D2H_STAGED, x->size * 3 + 1,
			       "cuMemcpy", "staging");
}

static int
row(const struct bench_opts *o, struct ctx *x, enum op op, enum op base, const char *name)
{
	struct bench_trial mine[99], theirs[99];
	for (int t = 0; t < o->trials; t++) {
		int rc = o->baseline ? bench_measure_pair(pass, x, op, base, x->items, x->size,
							  o->duration_s, &mine[t], &theirs[t])
				     : bench_measure(pass, x, op, x->items, x->size, o->duration_s,
						     &mine[t]);
		if (rc < 0)
			return rc;
	}
	int m = o->baseline ? bench_median_ratio(mine, theirs, o->trials) : 0;
	const struct bench_trial *t = o->baseline ? &mine[m] : bench_median(mine, o->trials);
	struct bench_row r = {
	    .mode = "gpu",
	    .op = name,
	    .bytes = x->size,
	    .iterations = t->iterations,
	    .gbps = t->gbps,
	    .peak_gbps = t->peak_gbps,
	    .baseline_gbps = o->baseline ? theirs[m].gbps : 0,
	    .baseline_name = "cuMemcpy pinned",
	    .goal = x->size >= ((size_t)4 << 20) ? 0.9 : 0, /* docs/gpu.md */
	};
	bench_table_row(o, &r);
	return 0;
}

static int
setup(struct ctx *x, int dev, size_t largest)
{
	x->region = largest > REGION_MIN ? largest : REGION_MIN;
	int rc = kvn_gpu_open(&x->gpu, x->err, sizeof(x->err));
	if (rc < 0 ||
	    (rc = kvn_gpu_device_info(x->gpu, dev, &x->info, x->err, sizeof(x->err))) < 0 ||
	    (rc = kvn_gpu_staging_open(x->gpu, dev, &x->e, &x->st, x->err, sizeof(x->err))) < 0 ||
	    (rc = kvn_gpu_mem_alloc(x->gpu, dev, x->region, &x->mem, x->err, sizeof(x->err))) < 0)
		return rc;
	x->dev = kvn_gpu_mem_ptr(x->mem);
	x->host = bench_map_region(x->region);
	x->pinned = bench_map_region(x->region);
	if (!x->host || !x->pinned) {
		snprintf(x->err, sizeof(x->err), "no memory for two %zu-byte host regions",
			 x->region);
		return -ENOMEM;
	}
	memset(x->host, 0, x->region); /* faulted in before anything is timed */
	memset(x->pinned, 0, x->region);
	rc = x->e->ops->register_host(x->e, x->pinned, x->region, x->err, sizeof(x->err));
	x->pinned_registered = rc == 0;
	return rc;
}

static void
teardown(struct ctx *x)
{
	if (x->pinned_registered)
		x->e->ops->unregister_host(x->e, x->pinned);
	if (x->host)
		munmap(x->host, x->region);
	if (x->pinned)
		munmap(x->pinned, x->region);
	kvn_gpu_staging_close(x->e, x->st);
	if (x->mem)
		kvn_gpu_mem_free(x->mem);
	if (x->gpu)
		kvn_gpu_close(x->gpu);
}

int
bench_gpu(const struct bench_opts *o)
{
	struct ctx x = {0};
	size_t largest = 0;
	for (size_t i = 0; i < o->nsizes; i++)
		largest = o->sizes[i] > largest ? o->sizes[i] : largest;
	int rc = setup(&x, o->device, largest);
	if (rc < 0) {
		fprintf(stderr, "kvnode-bench gpu: %s\n", x.err);
		teardown(&x);
		/* no driver, no such device, or a build without the CUDA headers: nothing to
		 * measure here (exit 2), unlike a device that fails */
		bool absent = rc == -ENOENT || rc == -ENODEV || !kvn_gpu_built_with_cuda();
		return absent ? -ENODEV : rc == -ENODEV ? -EIO : rc;
	}
	char drv[16], setup_line[768];
	kvn_gpu_version_str(kvn_gpu_driver_version(x.gpu), drv, sizeof(drv));
	snprintf(setup_line, sizeof(setup_line),
		 "device: GPU %d (%s, %s, compute %d.%d), driver CUDA %s\n"
		 " staging: %zu MiB bounce area in two halves on two streams, pageable host side; "
		 "baseline: one cuMemcpy*Async of the chunk from/to page-locked memory, then a "
		 "sync\n region: %zu MiB per side   trials: %d x %.2f s, alternating",
		 o->device, x.info.name, x.info.pci_bus_id, x.info.cc_major, x.info.cc_minor, drv,
		 KVN_STAGING_BOUNCE >> 20, x.region >> 20, o->trials, o->duration_s);
	bench_table_header(o,
			   "kvnode-bench gpu: host <-> device staging vs cuMemcpy of pinned memory",
			   setup_line);
	for (size_t i = 0; i < o->nsizes && rc == 0; i++) {
		x.size = o->sizes[i];
		x.items = x.region / x.size;
		if ((rc = verify(&x)) == 0)
			rc = row(o, &x, OP_D2H_STAGED, OP_D2H_PINNED, "d2h_staged");
		if (rc == 0)
			rc = row(o, &x, OP_H2D_STAGED, OP_H2D_PINNED, "h2d_staged");
	}
	bench_table_footer(o);
	if (o->json)
		bench_json_flush();
	teardown(&x);
	return rc;
}
