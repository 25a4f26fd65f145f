/* Rails (docs/architecture.md §12.6): every RDMA device of a host as one reader and one owner.
 * A rail is one transport instance on one device (verbs) or one listen address (tcp); the
 * transports themselves stay single-device. Memory is registered on every rail; a reader
 * connects rail i to the owner's rail i and cuts each READ into slices (at least slice_min
 * bytes) spread over the live rails near the memory the READ lands in, so one chunk uses them
 * all; it completes when every slice is in. A rail whose connection breaks is taken out, its
 * slices are reissued on the others, and it is tried again retry_ms later: a read fails only
 * when no rail is left.
 *
 * Everything is named in rail 0's terms, as the chunk directory publishes it: a read's local_mr
 * is rail 0's registration (kvn_rails_mr_tp), its rkey the owner's rail-0 rkey; the rails map
 * both to each rail's own. With one rail a read is the transport's read. */
#ifndef KVN_RDMA_RAILS_H
#define KVN_RDMA_RAILS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvnode/transport.h"

#define KVN_RAILS_MAX	    16	 /* rails of a node */
#define KVN_RAILS_ADDR_MAX  95	 /* a rail's listen address, "[v6]:port" */
#define KVN_RAILS_REGS_MAX  80	 /* registrations of one node (the pool, gpu tiers, probes) */
#define KVN_RAILS_SLICE_MIN 4096 /* the least slice_min */

struct kvn_rails;
struct kvn_rails_mr;
struct kvn_rails_ep;

/* One rail: its device (verbs; NULL with tcp) and the address it serves on ("HOST:PORT"). */
struct kvn_rail_spec {
	const char *device;
	const char *listen;
	int numa_node; /* of the device; -1 unknown */
};

struct kvn_rails_cfg {
	const struct kvn_transport_ops *ops;
	const struct kvn_transport_cfg *tcfg; /* each rail's, its rdma_device from the spec */
	size_t nrails;
	struct kvn_rail_spec rail[KVN_RAILS_MAX];
	size_t slice_min; /* 0: 64 KiB */
	int retry_ms;	  /* 0: 2000 */
	bool any_numa;	  /* slices go over every rail, not only those near the memory */
};

/* Opens one instance per rail (none listens yet). err names the rail that failed. */
int kvn_rails_open(const struct kvn_rails_cfg *cfg, struct kvn_rails **out, char *err,
		   size_t errlen);
/* Closes every rail (endpoints first: the caller's, then the instances). NULL: no-op. */
void kvn_rails_close(struct kvn_rails *r);
size_t kvn_rails_count(const struct kvn_rails *r);
struct kvn_transport *kvn_rails_tp(struct kvn_rails *r, size_t rail);
const struct kvn_transport_ops *kvn_rails_ops(const struct kvn_rails *r);

/* Listens on every rail's spec address; kvn_rails_addr is then where peers reach rail i. */
int kvn_rails_listen(struct kvn_rails *r, char *err, size_t errlen);
const char *kvn_rails_addr(const struct kvn_rails *r, size_t rail);

/* Registers [ptr, ptr + len) on every rail; desc[i] is rail i's descriptor (nrails of them).
 * Device memory (src non-NULL) goes down the ladder on each rail; report (may be NULL) is
 * rail 0's. A failure on any rail undoes the others. */
int kvn_rails_reg(struct kvn_rails *r, void *ptr, size_t len, const struct kvn_dev_mem *src,
		  struct kvn_rails_mr **out, struct kvn_mem_desc *desc,
		  struct kvn_reg_report *report, char *err, size_t errlen);
void kvn_rails_dereg(struct kvn_rails_mr *mr);
/* Rail i's registration: what a read's local_mr names (rail 0's). */
struct kvn_tp_mr *kvn_rails_mr_tp(const struct kvn_rails_mr *mr, size_t rail);

/* What a reader knows of an owner: its rails' addresses, and its regions as each rail
 * registered them, region-major (desc[reg * nrails + rail]). */
struct kvn_rails_peer {
	size_t nrails;
	const char *addr[KVN_RAILS_MAX];
	size_t nregions;
	const struct kvn_mem_desc *desc;
};

/* Connects rail i to the peer's rail i for i below both counts, within timeout_ms (0: the
 * transport's). 0 when at least one rail connected (the others are retried later); else the
 * first rail's error. */
int kvn_rails_connect(struct kvn_rails *r, const struct kvn_rails_peer *peer, int timeout_ms,
		      struct kvn_rails_ep **out, char *err, size_t errlen);
/* Fails the outstanding reads (their callbacks run before it returns) and frees ep. */
void kvn_rails_ep_close(struct kvn_rails_ep *ep);
/* Rails this endpoint reads over (connected or waiting for a retry). */
size_t kvn_rails_ep_rails(const struct kvn_rails_ep *ep);

/* Posts the n reads as the transport's read does, in rail 0's terms, sliced over the rails.
 * Returns 0 when all n are taken: each one's done is then called exactly once, normally on a
 * progress thread, but on the calling thread before this returns when no rail could take one
 * of its slices (so a caller must not hold a lock its callback takes). -EINVAL or -ENOMEM when
 * none was taken (no callback runs). Safe from several threads and from a read's callback
 * (from there broken rails are not reconnected). */
int kvn_rails_read(struct kvn_rails_ep *ep, struct kvn_read *reads, size_t n);

/* ---------------------------------------------------------------------------------------------
 * The region blob a node joins with (docs/architecture.md §12.6): rail 0's first region as
 * nodes before rails read it, then the rails.
 *   addr u64 | len u64 | rkey u32 | zero u32                      (24 bytes)
 *   magic u32 "RAIL" | nrails u8 | nregions u8 | zero u16
 *   nrails x (addr_len u8 | addr bytes)
 *   nregions x nrails x (addr u64 | len u64 | rkey u32 | zero u32)  region-major
 * ------------------------------------------------------------------------------------------- */
#define KVN_RAILS_BLOB_MAGIC   0x4c494152u /* "RAIL" */
#define KVN_RAILS_PEER_REGIONS 72	   /* regions a peer's blob may carry */

/* A decoded blob: p points into the arrays. */
struct kvn_rails_peer_buf {
	struct kvn_rails_peer p;
	char addr[KVN_RAILS_MAX][KVN_RAILS_ADDR_MAX + 1];
	struct kvn_mem_desc desc[KVN_RAILS_PEER_REGIONS * KVN_RAILS_MAX];
};

/* Writes r's blob for nregions regions (desc region-major, r's rail count per region) into
 * out; its length, or -ENOSPC when cap is short. */
int kvn_rails_blob_encode(const struct kvn_rails *r, const struct kvn_mem_desc *desc,
			  size_t nregions, uint8_t *out, size_t cap);
/* Reads a member's blob. One without the rails part (a node before rails) is one rail of no
 * region table, its address data_addr. -EPROTO when it is malformed. */
int kvn_rails_blob_decode(const uint8_t *blob, size_t n, const char *data_addr,
			  struct kvn_rails_peer_buf *out);

/* One rail as a reader and owner sees it. */
struct kvn_rail_stats {
	char device[64]; /* "" with tcp */
	char addr[KVN_RAILS_ADDR_MAX + 1];
	int numa_node;
	bool down;	   /* an endpoint has it out now (until its retry) */
	uint64_t slices;   /* slices completed on it */
	uint64_t bytes;	   /* their bytes */
	uint64_t errors;   /* slices that failed on it */
	uint64_t reissued; /* of those, reissued on another rail */
	uint64_t downs;	   /* times an endpoint took it out */
};
/* Rails into out[0 .. max); how many there are. */
size_t kvn_rails_stats(struct kvn_rails *r, struct kvn_rail_stats *out, size_t max);
/* The listeners' counters, summed over the rails. */
void kvn_rails_listener_stats(struct kvn_rails *r, struct kvn_transport_stats *out);

#endif
