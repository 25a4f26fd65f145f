/* Internal state of the verbs transport, shared by rdma/verbs/verbs.c (device, registrations, read
 * path, progress thread) and rdma/verbs/verbs_cm.c (rdma_cm: listen, accept, connect, disconnects). */
#ifndef KVN_RDMA_VERBS_VERBS_H
#define KVN_RDMA_VERBS_VERBS_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include "kvnode/transport.h"
#include "core/clock.h"
#include "rdma/auth.h"
#include "rdma/devreg.h"

/* Private data exchanged in the rdma_cm REQ/REP: magic and protocol version both ways, in the
 * REQ the reader's nonce and auth proof, in the REP the owner's proof and its region descriptors
 * (as many as fit: the REP carries at most 196 bytes); verbs_cm.c has the layout. A refusal is a
 * REJ whose private data is the magic, a positive errno byte (EACCES: auth_token) and the
 * reason as text. */
#define VB_MAGIC    0x4b564e56u /* bytes "VNVK" on the wire (little-endian) */
#define VB_PROTO    3		/* 3: challenge-response proofs both ways */
#define VB_MAX_DESC 8
#define VB_SEEN	    256 /* connect-request nonces remembered to refuse replays */

enum ep_state {
	EP_DOWN, /* no QP: the next read (or queued work) connects */
	EP_CONNECTING,
	EP_UP,
	EP_BROKEN, /* QP moved to error; waiting for its posted work requests to flush */
};

/* One kvn_read from read() until its callback has returned. */
struct vb_op {
	struct vb_op *next;
	struct vb_op *lnext, **lprev; /* tp->live: every op from read() to its callback */
	struct kvn_read *rd;
	struct kvn_tp_ep *ep;
	uint64_t posted; /* bytes handed to work requests so far */
	uint32_t wrs_out;
	bool queued, retry;
	int status;
	char msg[224];
};

struct kvn_tp_mr {
	struct kvn_transport *tp;
	struct ibv_mr *mr;
	struct kvn_tp_mr *next; /* tp->mrs: what the REP describes */
	/* The addresses reads name, peers' and a local landing's alike: the host pointer, or for
	 * device memory the device pointer whichever way registered it (a staged MR is
	 * registered with it as iova, so ibv_mr.addr is the host area there). */
	uintptr_t base;
	size_t len;
	int method;		       /* device memory: enum kvn_reg_method; host: KVN_REG_NONE */
	struct kvn_devreg_release rel; /* host staging: the owner's area, handed back on dereg */
};

struct kvn_tp_ep {
	struct kvn_transport *tp;
	struct kvn_tp_ep *next; /* tp->eps */
	char peer[128];
	int timeout_ms;
	struct rdma_cm_id *id; /* NULL unless EP_UP or EP_BROKEN */
	enum ep_state state;
	bool closing;
	/* Why the QP broke: outstanding reads fail with this, unless retry (the peer is alive and
	 * only another read was bad), then they are posted again after the reconnect. */
	int break_status;
	bool break_retry;
	char break_msg[160];
	struct vb_op *queue, **queue_tail; /* reads not (fully) posted yet */
	uint32_t sq_free;		   /* free send-queue slots */
	uint32_t wrs_out;		   /* posted, not completed work requests */
	uint32_t live_ops;		   /* reads whose callback has not returned yet */
	uint64_t last_progress_ns;
	/* The owner's regions from the REP; complete when all fitted, else unknown rkeys are left
	 * to the owner's device to refuse. */
	struct kvn_mem_desc desc[VB_MAX_DESC];
	uint32_t ndesc;
	bool desc_complete;
};

struct vb_srv_conn { /* an accepted connection: the owner's side, never posts anything */
	struct rdma_cm_id *id;
	struct vb_srv_conn *next;
};

struct kvn_transport {
	int timeout_ms;
	struct kvn_auth auth;	   /* the auth_token's key: proofs in REQs and REPs */
	unsigned max_conns;	   /* accepted connections at once */
	uint8_t seen[VB_SEEN][KVN_AUTH_NONCE]; /* recent REQ nonces (cm thread only) */
	unsigned seen_next;
	struct kvn_transport_stats st;
	/* rdma_get_devices(): rdma_cm ids point at these contexts. librdmacm closes a removed
	 * device's context only when no list and no id holds it, so every instance takes its
	 * list again after a removal (verbs_removal.c). Progress thread only, after open. */
	struct ibv_context **devs;
	struct ibv_context *ctx; /* NULL once released */
	char devname[64];
	uint8_t port;
	int gid_tbl_len;
	uint32_t max_msg; /* bytes per work request (port max_msg_sz, maybe lowered for tests) */
	uint32_t sq_depth, cq_depth;
	uint8_t init_depth, resp_depth; /* max_qp_init_rd_atom, max_qp_rd_atom */
	bool have_src;			/* gid_index given: connections leave from its address */
	struct sockaddr_storage src;

	struct ibv_pd *pd;
	/* The provider's answer to a dma-buf registration of fd -1, probed once at open as UCX
	 * does (rdma/verbs/verbs_devreg.c): -EBADF when it takes dma-buf. */
	int dmabuf_probe;
	struct ibv_comp_channel *cc;
	struct ibv_cq *cq;
	uint32_t cq_free;

	pthread_mutex_t lock; /* everything below, and each endpoint's fields */
	pthread_cond_t cond;  /* an endpoint drained (ep_close waits for it) */
	struct kvn_tp_ep *eps;
	struct vb_op *done, **done_tail; /* completed reads whose callbacks are still to run */
	struct vb_srv_conn *srv;
	struct vb_srv_conn *dead; /* ids of drained endpoints, destroyed unlocked */
	struct vb_op *live;	  /* every read from read() until its callback returned */
	bool stop;
	/* Device removal (verbs_removal.c): removed once rdma_cm says the device goes (no new
	 * work from then on), abandoned once the progress thread failed every read and let go of
	 * every QP, released once registrations, CQ and PD are gone and the context is let go. */
	bool removed, abandoned, released;
	unsigned dev_users; /* calls using the device unlocked: connects, registrations */
	unsigned dev_gen;   /* the process's removal count this instance last synced with */
	unsigned sync_left; /* resyncs still to try while a removed device is listed */
	uint64_t next_sync_ns;

	int wake_fd; /* eventfd: the progress thread has new work */
	pthread_t progress;

	struct rdma_event_channel *cm_ch; /* the listener and every connected endpoint */
	struct rdma_cm_id *listen_id;
	struct rdma_cm_id *anchor; /* bound to the port's address: hears of the device's removal */
	int cm_stop_fd;
	pthread_t cm_thread;
	bool cm_running;
	struct kvn_tp_mr *mrs;
};

/* verbs_devreg.c: registering device memory (reg_dev) */
int kvn_vb_probe_dmabuf(struct kvn_transport *tp);
int kvn_vb_reg_dev(struct kvn_transport *tp, void *ptr, size_t len, const struct kvn_dev_mem *src,
		   struct kvn_tp_mr **out, struct kvn_mem_desc *desc, struct kvn_reg_report *report,
		   char *err, size_t errlen);
void kvn_vb_mr_link(struct kvn_transport *tp, struct kvn_tp_mr *mr);
/* The two halves of reg_dev: this instance's facts (the probe, sysfs, what src offers), and the
 * walk of a plan made from them; the VM test walks a plan of its own through the second. */
void kvn_vb_devreg_facts(struct kvn_transport *tp, const struct kvn_dev_mem *src,
			 struct kvn_devreg_facts *f);
int kvn_vb_reg_dev_plan(struct kvn_transport *tp, const struct kvn_devreg_plan *plan,
			const struct kvn_devreg_facts *f, void *ptr, size_t len,
			const struct kvn_dev_mem *src, struct kvn_tp_mr **out,
			struct kvn_mem_desc *desc, struct kvn_reg_report *report, char *err,
			size_t errlen);

/* verbs.c: GID index of the instance's port as the address rdma_cm binds to: AF_INET for an
 * IPv4-mapped entry, AF_INET6 for another, 0 for an empty or invalid one. */
int kvn_vb_gid_addr(struct kvn_transport *tp, int index, struct sockaddr_storage *ss);

/* verbs_removal.c: the device going away under the instance */
int kvn_vb_dev_enter(struct kvn_transport *tp, char *err, size_t errlen);
void kvn_vb_dev_leave(struct kvn_transport *tp);
void kvn_vb_removal_note(struct kvn_transport *tp);
void kvn_vb_removal_tick(struct kvn_transport *tp, uint64_t now);
/* CQ, its channel and the PD destroyed (each if there), at close or on release. */
void kvn_vb_free_queues(struct kvn_transport *tp);

/* verbs_cm.c */
int kvn_vb_cm_start(struct kvn_transport *tp, char *err, size_t errlen);
void kvn_vb_cm_stop(struct kvn_transport *tp);
int kvn_vb_listen(struct kvn_transport *tp, const char *addr, char *bound, size_t boundlen,
		  char *err, size_t errlen);
int kvn_vb_connect_id(struct kvn_transport *tp, struct kvn_tp_ep *ep, int timeout_ms, char *err,
		      size_t errlen);
void kvn_vb_destroy_id(struct rdma_cm_id *id);

void kvn_vb_cm_free(struct kvn_transport *tp);

void kvn_vb_wake(struct kvn_transport *tp);
void kvn_vb_ep_break(struct kvn_tp_ep *ep, int status, bool retry, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void kvn_vb_op_done(struct vb_op *op);
void kvn_vb_queue_push(struct kvn_tp_ep *ep, struct vb_op *op, bool front);
void kvn_vb_fail_queue(struct kvn_tp_ep *ep, int status, const char *msg);
void kvn_vb_post_queue(struct kvn_tp_ep *ep);
void kvn_vb_abandon(struct kvn_transport *tp);
void *kvn_vb_progress_main(void *arg);

#endif
