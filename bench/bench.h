/* kvnode-bench: shared options, timing and perftest-style / JSON reporting of result rows. */
#ifndef KVN_BENCH_BENCH_H
#define KVN_BENCH_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/clock.h"
#include "kvnode/kvnode.h"

struct bench_opts {
	bool json;
	bool baseline;
	double duration_s; /* measuring time per row and trial */
	uint64_t working_set; /* bytes touched per pass, to keep caches honest */
	size_t sizes[16];
	size_t nsizes;
	int trials; /* alternating measured/baseline trials; the median is reported */
	bool sizes_given; /* --sizes was on the command line (else the mode's defaults) */
	bool wset_given; /* --working-set was on the command line */
	int depth; /* client: requests in flight (kvn_client_submit) */
	/* peer mode */
	const char *transport; /* tcp | verbs | auto */
	const char *rdma_device; /* verbs: the device to open (and ib_read_bw's -d); NULL: the
				  * first with an active port */
	const char *connect; /* HOST:PORT of a running responder; NULL = start one */
	const char *remote_desc; /* with connect: the responder's "serving ..." line */
	const char *listen; /* --serve: address to listen on */
	int inflight; /* reads outstanding */
	int conns; /* tcp: connections per peer; 0 = transport default */
	bool serve; /* be the responder only, until SIGTERM */
	int rails;  /* peer: rails on both sides (bench/peer_rails.c); 0 or 1: one transport */
	size_t rail_slice; /* peer --rails: rail_slice_size; 0 = the rails' default */
	/* scheduler mode */
	uint64_t entries; /* directory entries of the memory row */
	/* remote mode */
	const char *url; /* store to measure; NULL = start a redis-server */
	bool peer; /* also peer fetch (transport) vs redis GET of the same chunks */
	/* gpu mode */
	int device; /* CUDA ordinal */
};

/* Byte at offset off of the region kvnode-bench peer --serve registers: position-dependent so a
 * read from the wrong place or into the wrong place shows. */
static inline uint8_t
bench_pattern(uint64_t off)
{
	return (uint8_t)((off ^ (off >> 8) ^ (off >> 16) ^ (off >> 24)) * 31 + 7);
}

/* One row: an operation at one size, its bandwidth and (with --baseline) the anchor's. */
struct bench_row {
	const char *mode;
	const char *op;
	size_t bytes;
	uint64_t iterations;
	double gbps; /* average over the reported trial, 1e9 bytes/s */
	double peak_gbps; /* best single pass */
	double baseline_gbps; /* 0 without --baseline */
	const char *baseline_name;
	double goal; /* the documented ratio this row should reach; 0 = none */
};

/* One timed trial: passes over a working set for at least the trial's duration. */
struct bench_trial {
	uint64_t iterations; /* items moved */
	double gbps; /* average over the trial */
	double peak_gbps; /* best single pass */
};

/* One untimed warm-up pass (page faults, first touch, keys present for gets), then passes
 * until duration seconds have gone by. A pass moves items * item_bytes bytes; pass returns
 * 0 or a negative errno, which stops the measurement. */
/* Anonymous memory for a bench's buffers, transparent hugepages where the kernel gives them;
 * NULL when it cannot be had. */
void *bench_map_region(size_t len);

int bench_measure(int (*pass)(void *ctx, int op), void *ctx, int op, size_t items,
		  size_t item_bytes, double duration, struct bench_trial *t);
/* The same for two operations on a shared machine: passes of op_a and op_b alternate for
 * 2 * duration seconds, so a burst of load elsewhere hits both sides alike; each side's
 * average is its bytes over its own passes' time. */
int bench_measure_pair(int (*pass)(void *ctx, int op), void *ctx, int op_a, int op_b,
		       size_t items, size_t item_bytes, double duration, struct bench_trial *a,
		       struct bench_trial *b);
/* Sorts n trials by average and returns the median one. */
const struct bench_trial *bench_median(struct bench_trial *t, int n);
/* Of n paired trials (mine[i] measured beside base[i]), the index of the one of median ratio:
 * both sides are then reported from that same trial. */
int bench_median_ratio(const struct bench_trial *mine, const struct bench_trial *base, int n);

/* Prints the perftest-style header once per table. */
void bench_table_header(const struct bench_opts *o, const char *title, const char *setup);
void bench_table_row(const struct bench_opts *o, const struct bench_row *r);
void bench_table_footer(const struct bench_opts *o);
/* Collects rows for --json; printed as one array by bench_json_flush. */
void bench_json_add(const struct bench_row *r);
void bench_json_flush(void);

int bench_local(const struct bench_opts *o);
int bench_peer(const struct bench_opts *o);
int bench_peer_rails(const struct bench_opts *o);
int bench_scheduler(const struct bench_opts *o);
int bench_remote(const struct bench_opts *o);
int bench_client(const struct bench_opts *o);
/* -ENODEV: no GPU to measure here (said). */
int bench_gpu(const struct bench_opts *o);

/* remote --peer: a responder (a filled kvnode pool behind its own transport instance) and a
 * reader in this process; one fetch is what the peer tier does (READ of the slot image, then
 * kvn_slot_verify; the payload stays where it landed), or with verify false the raw READ
 * alone (client --peer's baseline). */
struct bench_peer_fetch;
int bench_peer_fetch_open(const struct bench_opts *o, size_t max_size, uint64_t wset,
			  struct bench_peer_fetch **out);
const char *bench_peer_fetch_desc(const struct bench_peer_fetch *p);
/* Stores n chunks (keys[i] -> val) in the responder's pool, dropping the earlier ones. */
int bench_peer_fetch_fill(struct bench_peer_fetch *p, const struct kvn_key *keys, size_t n,
			  const struct kvn_buf *val);
int bench_peer_fetch_one(struct bench_peer_fetch *p, size_t i, size_t size, bool verify);
void bench_peer_fetch_clear(struct bench_peer_fetch *p);
void bench_peer_fetch_close(struct bench_peer_fetch *p);

#endif
