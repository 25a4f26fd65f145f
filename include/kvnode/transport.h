/* Transport ABI (docs/architecture.md §4): one-sided READ of another node's registered memory. The
 * implementations (verbs on rdma-core, tcp with the same semantics) fill the same struct
 * kvn_transport_ops; callers pick one with kvn_transport_by_name and never switch on type.
 * Versioning: kvnode/version.h. */
#ifndef KVNODE_TRANSPORT_H
#define KVNODE_TRANSPORT_H

#include <stddef.h>
#include <stdint.h>

#include "kvnode/kvnode.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Connect and read-progress timeout when the config leaves it at 0. */
#define KVN_TRANSPORT_TIMEOUT_MS 10000

struct kvn_transport; /* an open instance; each implementation defines it */
struct kvn_tp_mr; /* one registration */
struct kvn_tp_ep; /* a connection to one peer (maybe several sockets / QPs underneath) */

enum kvn_mem_kind {
	KVN_MEM_HOST = 0,
	/* Device memory, with nothing from its owner: only nvidia-peermem can register it (verbs);
	 * -EOPNOTSUPP where the transport cannot. reg_dev (ABI 2.3) is the full ladder. */
	KVN_MEM_GPU = 1,
};

/* What a peer needs to read a region: sent to it out of band (membership, private data). addr
 * is the owner's virtual address of the region's first byte, as with verbs. */
struct kvn_mem_desc {
	uint64_t addr;
	uint64_t len;
	uint32_t rkey; /* random per registration: a stale or forged rkey is refused */
};

/* What the caller opens an instance with. Start from KVN_TRANSPORT_CFG_INIT (abi, size):
 *	struct kvn_transport_cfg cfg = {KVN_TRANSPORT_CFG_INIT, .gid_index = -1};
 * Members a caller built against older headers does not have take their defaults. */
struct kvn_transport_cfg {
	uint32_t abi;		 /* KVN_ABI of the caller's headers */
	uint32_t size;		 /* sizeof(struct kvn_transport_cfg) in them */
	const char *rdma_device; /* verbs: device name; NULL = first device with an active port */
	int gid_index; /* verbs, RoCE: GID table index; -1 = pick automatically */
	int timeout_ms; /* connect timeout, and how long a read may see no progress; 0 = default */
	int conns_per_peer; /* tcp: sockets per endpoint that reads are striped over; 0 = 2 */
	/* The cluster's shared secret (the config's auth_token); NULL or "": none. open keeps
	 * only a key derived from it, so the string need not outlive the call. See
	 * "Data-connection auth" below. */
	const char *auth_token;
	/* Listener bounds (what readers can hold): connections at once, 0 = 1024; and how long
	 * a new connection may take to authenticate, 0 = 5000 ms (tcp; verbs: rdma_cm's). */
	unsigned max_conns;
	int hello_timeout_ms;
};

#define KVN_TRANSPORT_CFG_INIT .abi = KVN_ABI, .size = sizeof(struct kvn_transport_cfg)
#define KVN_TRANSPORT_OPS_INIT .abi = KVN_ABI, .size = sizeof(struct kvn_transport_ops)

/* ---------------------------------------------------------------------------------------------
 * Device memory (ABI 2.3): kvn_transport_ops.reg_dev registers it the first way that works, in
 * this order (docs/gpu.md "Registration").
 * ------------------------------------------------------------------------------------------- */
enum kvn_reg_method {
	KVN_REG_NONE = 0,
	KVN_REG_DMABUF = 1,  /* the owner's dma-buf of the memory (ibv_reg_dmabuf_mr) */
	KVN_REG_PEERMEM = 2, /* the device pointer itself (ibv_reg_mr through nvidia-peermem) */
	KVN_REG_STAGING = 3, /* no GPUDirect: the owner's host staging area in its place */
};
#define KVN_REG_STEPS 3 /* dma-buf, nvidia-peermem, host staging */

/* What the owner of device memory offers for registering [ptr, ptr + len). A NULL callback:
 * that way is not offered. Start from KVN_DEV_MEM_INIT:
 *	struct kvn_dev_mem src = {KVN_DEV_MEM_INIT, .device = "GPU 0", .dmabuf = export};
 * The transport keeps none of it past reg_dev but ctx, staging_done and the staging area. */
struct kvn_dev_mem {
	uint32_t abi;
	uint32_t size;
	const char *device; /* names the memory in log lines and reports: "GPU 0 (0000:17:00.0)" */
	void *ctx;	    /* the owner's, passed to each callback */
	/* A dma-buf fd holding the range and ptr's offset in it; the transport closes the fd
	 * (a registration holds its own reference). */
	int (*dmabuf)(void *ctx, void *ptr, size_t len, int *fd, uint64_t *offset, char *err,
		      size_t errlen);
	/* len bytes of host memory that peers read in place of the range, starting at ptr's
	 * offset in a page (it is registered under ptr's addresses): the owner keeps them
	 * current (device -> host copies) and valid until staging_done, which dereg calls. */
	int (*staging)(void *ctx, void *ptr, size_t len, void **host, char *err, size_t errlen);
	void (*staging_done)(void *ctx, void *ptr, void *host);
};
#define KVN_DEV_MEM_INIT .abi = KVN_ABI, .size = sizeof(struct kvn_dev_mem)

/* One way reg_dev tried or passed over. */
struct kvn_reg_step {
	int method; /* enum kvn_reg_method */
	int tried;  /* 0: passed over without trying it (why says why) */
	int status; /* 0: this way won; else the -errno it failed or was passed over with */
	char why[232];
};

/* What reg_dev did. Start from KVN_REG_REPORT_INIT; the transport fills as much of it as the
 * caller's size holds. */
struct kvn_reg_report {
	uint32_t abi;
	uint32_t size;
	int method;    /* the winner (enum kvn_reg_method), KVN_REG_NONE when none worked */
	void *staging; /* KVN_REG_STAGING: the host area peers read (the owner's staging's) */
	unsigned nsteps;
	struct kvn_reg_step step[KVN_REG_STEPS]; /* in the order of the ladder */
};
#define KVN_REG_REPORT_INIT .abi = KVN_ABI, .size = sizeof(struct kvn_reg_report)

/* A listener's counters (kvn_transport_ops.stats). */
struct kvn_transport_stats {
	uint64_t conns;		   /* readers connected now */
	uint64_t accepted;	   /* connections accepted since open */
	uint64_t refused_full;	   /* refused or dropped: max_conns reached */
	uint64_t hello_timeouts;   /* closed: not authenticated within hello_timeout_ms */
	uint64_t auth_refused;	   /* refused: wrong or missing auth_token proof */
	uint64_t accept_errors;	   /* accept() failed (EMFILE, ENFILE, ENOMEM …) */
};

struct kvn_read;
/* Called exactly once per posted read, on the transport's progress thread. status is 0 or a
 * negative errno; msg (NULL on success) says what failed and names the peer, and is valid only
 * during the call. The callback may post more reads (they are not reconnected from there: a
 * broken endpoint gives -ENOTCONN); it must not block, connect, dereg, or close an endpoint or
 * the instance. */
typedef void (*kvn_read_cb)(struct kvn_read *rd, int status, const char *msg);

/* One READ: len bytes at the peer's (remote_addr, rkey) into local, which lies inside local_mr
 * (a registration of the reading instance). The struct is the caller's and must stay valid and
 * untouched until its callback has run. */
struct kvn_read {
	void *local;
	struct kvn_tp_mr *local_mr;
	uint64_t remote_addr;
	uint32_t rkey;
	uint64_t len;
	kvn_read_cb done;
	void *ctx; /* the caller's */
	int status; /* set before done is called */
};

/*
 * Error model, common to every implementation (the conformance suite checks it):
 *  - a read whose rkey is unknown to the owner (never registered, deregistered, forged) or whose
 *    range is not inside that registration completes with -EACCES;
 *  - a zero-length read, or one whose local range is not inside local_mr, completes with -EINVAL;
 *  - none of those affects other reads: the endpoint and the owner keep serving;
 *  - a peer that goes away fails the endpoint's outstanding reads (-ECONNRESET, or -ETIMEDOUT
 *    when nothing arrives for timeout_ms) — a read never hangs. The next read() on that
 *    endpoint reconnects once (within timeout_ms) and fails with -ENOTCONN when it cannot;
 *  - every function that can fail returns 0 or a negative errno and, where it takes (err,
 *    errlen), writes there one line naming the peer or the thing involved and what to do;
 *  - a connect refused for its auth_token (below) is -EACCES, with err naming the peer and
 *    saying to set the same auth_token on every node. A reconnect refused that way fails the
 *    read with -ENOTCONN like any failed reconnect.
 *
 * Data-connection auth. A listener opened with an auth_token serves only readers that prove the
 * same token, and a reader opened with one reads only from owners that prove it: a
 * challenge-response with fresh nonces from both sides and HMAC-SHA256 under a key derived from
 * the token (tcp: in the connection's first messages; verbs: the reader's proof in the rdma_cm
 * connect request, bound to its QP number and refused when replayed, and the owner's in the
 * accept, over the region descriptors it carries). A refused reader gets no endpoint and never
 * a byte of registered memory; the listener logs each refusal (rate-limited) and counts it.
 * Without a token on either side, both must have none. What it does not give: secrecy or
 * integrity of the data itself (RDMA has no encryption; run the data network on a trusted
 * fabric or VLAN), and for verbs a proof that is tied to the connection only by the QP number
 * rdma_cm lets it carry (docs/architecture.md §12.4).
 */
struct kvn_transport_ops {
	uint32_t abi;	  /* KVN_ABI the implementation was built against */
	uint32_t size;	  /* sizeof(struct kvn_transport_ops) in those headers */
	const char *name; /* "tcp", "verbs" */

	/* 0 when the transport can work on this machine (verbs: an RDMA device with an active
	 * port), else -ENODEV with the reason in err. Opens nothing that outlives the call. */
	int (*probe)(const struct kvn_transport_cfg *cfg, char *err, size_t errlen);
	/* Opens an instance and starts its progress thread. cfg may be NULL for the defaults;
	 * one of another major ABI, or without abi and size, is -EINVAL. */
	int (*open)(const struct kvn_transport_cfg *cfg, struct kvn_transport **out, char *err,
		    size_t errlen);
	/* Closes every endpoint (failing their outstanding reads), stops the progress thread,
	 * stops listening and drops every registration. */
	void (*close)(struct kvn_transport *tp);

	/* Registers [ptr, ptr+len) for local write and remote READ only (never remote write) and
	 * fills desc. The memory must stay valid until dereg. */
	int (*reg_mem)(struct kvn_transport *tp, void *ptr, size_t len, enum kvn_mem_kind kind,
		       struct kvn_tp_mr **out, struct kvn_mem_desc *desc, char *err, size_t errlen);
	/* From its return on, reads naming the registration's rkey are refused and none is still
	 * touching its memory (a peer's read caught mid-stream fails). */
	void (*dereg)(struct kvn_tp_mr *mr);

	/* Serves reads of this instance's registrations at addr ("HOST:PORT", port 0 = pick
	 * one); bound gets the address peers should connect to ("127.0.0.1:41234"). Once per
	 * instance (-EALREADY after). */
	int (*listen)(struct kvn_transport *tp, const char *addr, char *bound, size_t boundlen,
		      char *err, size_t errlen);
	/* Connects to a peer's listen address within timeout_ms (0 = the instance's timeout). An
	 * unreachable peer is -ECONNREFUSED / -ETIMEDOUT / -EHOSTUNREACH with err naming it. */
	int (*connect)(struct kvn_transport *tp, const char *peer, int timeout_ms,
		       struct kvn_tp_ep **out, char *err, size_t errlen);
	/* Fails the endpoint's outstanding reads (their callbacks run before this returns) and
	 * frees it. */
	void (*ep_close)(struct kvn_tp_ep *ep);

	/* Posts n reads (pipelined: many may be in flight per endpoint; they may complete in any
	 * order). Returns 0 when all n are posted: each one's done is then called exactly once,
	 * never from inside this call. Returns a negative errno when none was posted (then no
	 * callback runs): -ENOTCONN when the endpoint is broken and reconnecting failed, -ENOMEM.
	 * Safe to call from several threads and from a read callback. */
	int (*read)(struct kvn_tp_ep *ep, struct kvn_read *reads, size_t n);
	/* The listener's counters; NULL where an implementation keeps none. */
	void (*stats)(struct kvn_transport *tp, struct kvn_transport_stats *out);

	/* ABI 2.3 (read it only when KVN_ABI_HAS(ops, reg_dev); NULL: no device memory).
	 * Registers device memory [ptr, ptr + len) as reg_mem does, trying in order dma-buf
	 * (src->dmabuf, where the NIC's provider takes dma-buf), nvidia-peermem (where the module
	 * is loaded) and host staging (src->staging); each try, and each way passed over, is
	 * logged naming src->device and why. desc->addr is ptr whichever way won, so peers
	 * address the region alike, and a read into it names device addresses too. report (NULL
	 * allowed) gets the winner and every step. When none works: -EOPNOTSUPP (or the last
	 * way's error) with the reasons in err. */
	int (*reg_dev)(struct kvn_transport *tp, void *ptr, size_t len,
		       const struct kvn_dev_mem *src, struct kvn_tp_mr **out,
		       struct kvn_mem_desc *desc, struct kvn_reg_report *report, char *err,
		       size_t errlen);
};

/* The built-in transport named name: "tcp", "verbs", or "auto" (verbs when its probe finds an
 * active RDMA device, else tcp; logs which it picked and why). NULL with err set when the name is
 * unknown or that transport is not in this build. Does not probe a named transport. */
KVN_API const struct kvn_transport_ops *kvn_transport_by_name(const char *name,
							      const struct kvn_transport_cfg *cfg,
							      char *err, size_t errlen);

/* For synchronous callers: posts the n reads, waits until every one has completed and returns 0
 * when all succeeded, else the first failure's status with its message in err. Uses each read's
 * done and ctx itself. Never hangs: the transport fails stalled reads after its timeout. */
KVN_API int kvn_transport_read_sync(const struct kvn_transport_ops *ops, struct kvn_tp_ep *ep,
				    struct kvn_read *reads, size_t n, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
