/* The lock-free latency histogram (core/histogram.h). */
#include <stdatomic.h>
#include <stddef.h>

#include "core/histogram.h"

const uint64_t kvn_hist_bounds_ns[KVN_HIST_BOUNDS] = {
    50000,    100000,	250000,	  500000,    1000000,	2500000,   5000000,
    10000000, 25000000, 50000000, 100000000, 250000000, 500000000, 1000000000,
};

void
kvn_histogram_observe(struct kvn_histogram *h, uint64_t ns)
{
	size_t i = 0;
	while (i < KVN_HIST_BOUNDS && ns > kvn_hist_bounds_ns[i])
		i++;
	atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->sum_ns, ns, memory_order_relaxed);
}

