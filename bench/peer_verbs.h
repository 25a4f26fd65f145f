/* The verbs baseline of kvnode-bench peer (bench/peer_verbs.c): ib_read_bw in the same run. */
#ifndef KVN_BENCH_PEER_VERBS_H
#define KVN_BENCH_PEER_VERBS_H

#include <stddef.h>
#include <stdint.h>

/* ib_read_bw's average bandwidth (1e9 B/s) for iterations reads of size bytes, inflight posted at
 * once, from peer_addr's host over rdma_cm on device (NULL: the first active RDMA device, the
 * one the verbs transport picks by default); or a negative errno with the reason on stderr. */
double bench_verbs_baseline_gbps(const char *peer_addr, const char *device, size_t size,
				 uint64_t iterations, int inflight);

/* n ib_read_bw runs at once, run i on devices[i] (NULL: as above) towards addrs[i]'s host, each
 * doing iterations / n reads of size; the sum of their bandwidths (1e9 B/s), or a negative
 * errno with the reason on stderr. */
double bench_verbs_baseline_sum(size_t n, const char *const *addrs, const char *const *devices,
				size_t size, uint64_t iterations, int inflight);

#endif
