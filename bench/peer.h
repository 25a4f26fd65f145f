/* What kvnode-bench peer's reader shares between one transport (bench/peer.c) and rails
 * (bench/peer_rails.c): the responder's fork, the timed reads and the table of sizes. */
#ifndef KVN_BENCH_PEER_H
#define KVN_BENCH_PEER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/types.h>

#include "bench/bench.h"
#include "kvnode/transport.h"

/* One reader: reads land in slot (i % dst_slots) of dst, from slot (i % remote_slots) of the
 * responder's region. */
struct bench_peer_run {
	/* Posts n reads: the transport's read (ctx its endpoint) or the rails' (their endpoint). */
	int (*post)(void *ctx, struct kvn_read *rd, size_t n);
	void *ctx;
	struct kvn_tp_mr *mr; /* dst's registration (rail 0's with rails) */
	char *dst;
	size_t dst_slots, size, remote_slots;
	struct kvn_mem_desc remote;
	double deadline;
	uint64_t min_reads; /* posted before the deadline counts: 3 rounds of the window */
	atomic_uint_fast64_t next, completed;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int outstanding, status;
	char err[256];
};

/* The responder's region: twice the largest size, at least 64 MiB. */
size_t bench_peer_region_len(const struct bench_opts *o);
/* Forks serve(o, out) (before any thread exists here) and reads the first line it writes;
 * -EPIPE when it wrote none. */
int bench_peer_fork(const struct bench_opts *o, int (*serve)(const struct bench_opts *, FILE *),
		    pid_t *pid, char *line, size_t cap);

/* The rows of every size: a check read, then the timed reads, and the baseline. */
struct bench_peer_table {
	const char *title, *setup, *op, *baseline_name;
	double goal; /* the ratio the rows should reach, 0: none */
	/* GB/s of the baseline for size (reads kvnode did and inflight, to do the same work),
	 * negative on failure; NULL: no baseline. once: it runs once a trial for every size. */
	double (*baseline)(void *ctx, size_t size, uint64_t iterations, int inflight);
	void *ctx;
	bool once;
};
int bench_peer_sizes(const struct bench_opts *o, struct bench_peer_run *r,
		     const struct bench_peer_table *t);

/* Stops the forked responder (child 0: none), prints the --json rows when rc is 0; rc. */
int bench_peer_end(const struct bench_opts *o, pid_t child, int rc);

#endif
