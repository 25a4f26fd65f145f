/* Latency histogram: a relaxed atomic add per observation, nothing else on the hot path. The
 * tiers and transports record into it; the metrics listener writes it out. */
#ifndef KVN_CORE_HISTOGRAM_H
#define KVN_CORE_HISTOGRAM_H

#include <stdatomic.h>
#include <stdint.h>

/* Upper bounds of the finite buckets, 50 us to 1 s; one more bucket takes the rest (+Inf). */
#define KVN_HIST_BOUNDS 14
extern const uint64_t kvn_hist_bounds_ns[KVN_HIST_BOUNDS];

struct kvn_histogram {
	_Atomic uint64_t bucket[KVN_HIST_BOUNDS + 1]; /* per bucket, not cumulative */
	_Atomic uint64_t sum_ns;
};

void kvn_histogram_observe(struct kvn_histogram *h, uint64_t ns);

#endif
