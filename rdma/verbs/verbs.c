/* The verbs transport (docs/architecture.md §4): one-sided IBV_WR_RDMA_READ over RC queue pairs on
 * rdma-core. This file: device selection, the instance, registrations, endpoints and the read
 * entry point; rdma/verbs/verbs_post.c the data path, rdma/verbs/verbs_cm.c connection management. */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "rdma/rdma.h"
#include "rdma/verbs/verbs.h"

#define LOG	     "verbs"
#define SQ_DEPTH_MAX 512
#define CQ_DEPTH_MAX 16384

/* ---------------------------------------------------------------------------------------------
 * Device selection: the configured device, else the first one with an active port.
 * --------------------------------------------------------------------------------------------- */

static int
active_port(struct ibv_context *ctx, uint8_t *port, struct ibv_port_attr *pa)
{
	struct ibv_device_attr da;
	if (ibv_query_device(ctx, &da))
		return -errno ? -errno : -EIO;
	for (uint8_t p = 1; p <= da.phys_port_cnt; p++) {
		if (!ibv_query_port(ctx, p, pa) && pa->state == IBV_PORT_ACTIVE) {
			*port = p;
			return 0;
		}
	}
	return -ENODEV;
}

static int
verbs_probe(const struct kvn_transport_cfg *in, char *err, size_t errlen)
{
	struct kvn_transport_cfg c;
	const struct kvn_transport_cfg *cfg = &c;
	int r = kvn_transport_cfg_read(in, &c, err, errlen);
	if (r)
		return r;
	const char *want = cfg && cfg->rdma_device && *cfg->rdma_device ? cfg->rdma_device : NULL;
	int n = 0, rc = -ENODEV;
	struct ibv_device **list = ibv_get_device_list(&n);

	if (!list || n == 0) {
		kvn_seterr(-EINVAL, err, errlen,
			   "no RDMA device on this machine (no rdma-capable NIC, or the "
			   "kernel has no RDMA support: see scripts/run-in-rxe-vm)");
		if (list)
			ibv_free_device_list(list);
		return -ENODEV;
	}
	kvn_seterr(-EINVAL, err, errlen,
		   want ? "RDMA device '%s' (rdma_device) not found or has no active port"
			: "no RDMA device has an active port (check 'ibv_devinfo')%s",
		   want ? want : "");
	for (int i = 0; i < n && rc; i++) {
		struct ibv_port_attr pa;
		uint8_t port;
		struct ibv_context *ctx;
		if (want && strcmp(ibv_get_device_name(list[i]), want))
			continue;
		ctx = ibv_open_device(list[i]);
		if (!ctx)
			continue;
		rc = active_port(ctx, &port, &pa);
		ibv_close_device(ctx);
	}
	ibv_free_device_list(list);
	return rc ? -ENODEV : 0;
}

/* A GID table entry that is an IPv4-mapped or IPv6 address becomes the source address of our
 * connections: with RoCE the GID index is chosen through the address rdma_cm binds to. */
int
kvn_vb_gid_addr(struct kvn_transport *tp, int index, struct sockaddr_storage *ss)
{
	static const uint8_t v4map[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	union ibv_gid g;

	if (ibv_query_gid(tp->ctx, tp->port, index, &g) || !memcmp(g.raw, (uint8_t[16]){0}, 16))
		return 0;
	memset(ss, 0, sizeof(*ss));
	if (!memcmp(g.raw, v4map, sizeof(v4map))) {
		struct sockaddr_in *in = (struct sockaddr_in *)ss;
		in->sin_family = AF_INET;
		memcpy(&in->sin_addr, g.raw + 12, 4);
		return AF_INET;
	}
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
	in6->sin6_family = AF_INET6;
	memcpy(&in6->sin6_addr, g.raw, 16);
	return AF_INET6;
}

static int
src_from_gid(struct kvn_transport *tp, int gid_index, char *err, size_t errlen)
{
	if (!kvn_vb_gid_addr(tp, gid_index, &tp->src)) {
		return kvn_seterr(-EINVAL, err, errlen,
				  "gid_index %d is not a valid GID of %s port %u (list them with "
				  "'ibv_devinfo -v')",
				  gid_index, ibv_get_device_name(tp->ctx->device), tp->port);
	}
	tp->have_src = true;
	return 0;
}

static int
pick_device(struct kvn_transport *tp, const struct kvn_transport_cfg *cfg, char *err, size_t errlen)
{
	const char *want = cfg && cfg->rdma_device && *cfg->rdma_device ? cfg->rdma_device : NULL;
	struct ibv_port_attr pa;
	struct ibv_device_attr da;
	int n = 0;

	tp->devs = rdma_get_devices(&n);
	for (int i = 0; tp->devs && i < n && !tp->ctx; i++) {
		if (want && strcmp(ibv_get_device_name(tp->devs[i]->device), want))
			continue;
		if (!active_port(tp->devs[i], &tp->port, &pa))
			tp->ctx = tp->devs[i];
	}
	if (!tp->ctx) {
		verbs_probe(cfg, err, errlen);
		return -ENODEV;
	}
	snprintf(tp->devname, sizeof(tp->devname), "%s", ibv_get_device_name(tp->ctx->device));
	tp->gid_tbl_len = pa.gid_tbl_len;
	if (ibv_query_device(tp->ctx, &da)) {
		return kvn_seterr(-EIO, err, errlen, "querying RDMA device %s failed: %s",
				  ibv_get_device_name(tp->ctx->device), strerror(errno));
	}
	tp->max_msg = pa.max_msg_sz ? pa.max_msg_sz : (1u << 31);
	tp->sq_depth = da.max_qp_wr < SQ_DEPTH_MAX ? (uint32_t)da.max_qp_wr : SQ_DEPTH_MAX;
	tp->cq_depth = da.max_cqe < CQ_DEPTH_MAX ? (uint32_t)da.max_cqe : CQ_DEPTH_MAX;
	tp->init_depth = (uint8_t)(da.max_qp_init_rd_atom > 255 ? 255 : da.max_qp_init_rd_atom);
	tp->resp_depth = (uint8_t)(da.max_qp_rd_atom > 255 ? 255 : da.max_qp_rd_atom);
	if (cfg && cfg->gid_index >= 0)
		return src_from_gid(tp, cfg->gid_index, err, errlen);
	return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Instance: PD -> (MRs) -> CQ -> QPs, destroyed in reverse by verbs_close alone.
 * --------------------------------------------------------------------------------------------- */

static void verbs_close(struct kvn_transport *tp);

static int
verbs_open(const struct kvn_transport_cfg *in, struct kvn_transport **out, char *err, size_t errlen)
{
	struct kvn_transport_cfg c;
	const struct kvn_transport_cfg *cfg = &c;
	int rc = kvn_transport_cfg_read(in, &c, err, errlen);
	if (rc)
		return rc;
	struct kvn_transport *tp = calloc(1, sizeof(*tp));
	if (!tp)
		return -ENOMEM;
	tp->timeout_ms = cfg && cfg->timeout_ms > 0 ? cfg->timeout_ms : KVN_TRANSPORT_TIMEOUT_MS;
	kvn_auth_init(&tp->auth, cfg ? cfg->auth_token : NULL);
	tp->max_conns = cfg && cfg->max_conns ? cfg->max_conns : 1024;
	tp->wake_fd = -1;
	tp->cm_stop_fd = -1;
	tp->done_tail = &tp->done;
	pthread_mutex_init(&tp->lock, NULL);
	pthread_cond_init(&tp->cond, NULL);
	rc = pick_device(tp, cfg, err, errlen);
	if (rc)
		goto fail;
	rc = -EIO;
	tp->pd = ibv_alloc_pd(tp->ctx);
	tp->cc = tp->pd ? ibv_create_comp_channel(tp->ctx) : NULL;
	tp->cq = tp->cc ? ibv_create_cq(tp->ctx, (int)tp->cq_depth, tp, tp->cc, 0) : NULL;
	if (!tp->cq) {
		kvn_seterr(-EINVAL, err, errlen,
			   "allocating PD/CQ on RDMA device %s failed: %s (check "
			   "'ulimit -l')",
			   ibv_get_device_name(tp->ctx->device), strerror(errno));
		goto fail;
	}
	tp->cq_free = tp->cq_depth;
	tp->dmabuf_probe = kvn_vb_probe_dmabuf(tp);
	tp->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (tp->wake_fd < 0) {
		rc = -errno;
		kvn_seterr(rc, err, errlen, "eventfd for the verbs progress thread: %s",
			   strerror(errno));
		goto fail;
	}
	rc = kvn_vb_cm_start(tp, err, errlen);
	if (rc)
		goto fail;
	rc = -pthread_create(&tp->progress, NULL, kvn_vb_progress_main, tp);
	if (rc) {
		kvn_seterr(rc, err, errlen, "starting the verbs progress thread: %s",
			   strerror(-rc));
		goto fail;
	}
	kvn_info(LOG,
		 "verbs transport on %s port %u: max message %u B, %u reads in flight per "
		 "QP, send queue %u",
		 ibv_get_device_name(tp->ctx->device), tp->port, tp->max_msg, tp->init_depth,
		 tp->sq_depth);
	*out = tp;
	return 0;
fail:
	verbs_close(tp);
	return rc;
}

static void verbs_ep_close(struct kvn_tp_ep *ep);

static void
verbs_close(struct kvn_transport *tp)
{
	if (!tp)
		return;
	kvn_vb_cm_stop(tp); /* no new connections; accepted ones are gone */
	while (tp->eps)
		verbs_ep_close(tp->eps);
	if (tp->progress) {
		pthread_mutex_lock(&tp->lock);
		tp->stop = true;
		pthread_mutex_unlock(&tp->lock);
		kvn_vb_wake(tp);
		pthread_join(tp->progress, NULL);
	}
	while (tp->mrs) {
		struct kvn_tp_mr *mr = tp->mrs;
		tp->mrs = mr->next;
		kvn_warn(LOG, "closing with %zu bytes at 0x%llx still registered", mr->len,
			 (unsigned long long)mr->base);
		if (mr->mr)
			ibv_dereg_mr(mr->mr);
		kvn_devreg_release(&mr->rel);
		free(mr);
	}
	kvn_vb_free_queues(tp);
	kvn_vb_cm_free(tp);
	if (tp->devs)
		rdma_free_devices(tp->devs);
	if (tp->wake_fd >= 0)
		close(tp->wake_fd);
	pthread_cond_destroy(&tp->cond);
	pthread_mutex_destroy(&tp->lock);
	free(tp);
}

static int
verbs_reg_mem(struct kvn_transport *tp, void *ptr, size_t len, enum kvn_mem_kind kind,
	      struct kvn_tp_mr **out, struct kvn_mem_desc *desc, char *err, size_t errlen)
{
	struct kvn_tp_mr *mr;

	/* Nothing from the memory's owner: of the ladder only nvidia-peermem can work. */
	if (kind == KVN_MEM_GPU)
		return kvn_vb_reg_dev(tp, ptr, len, NULL, out, desc, NULL, err, errlen);
	if (kind != KVN_MEM_HOST)
		return kvn_seterr(-EINVAL, err, errlen, "verbs: unknown memory kind %d", (int)kind);
	if (!ptr || !len) {
		return kvn_seterr(-EINVAL, err, errlen,
				  "verbs: cannot register an empty region (%p, %zu bytes)", ptr,
				  len);
	}
	mr = calloc(1, sizeof(*mr));
	if (!mr)
		return -ENOMEM;
	int rc = kvn_vb_dev_enter(tp, err, errlen);
	if (rc) {
		free(mr);
		return rc;
	}
	/* Peers may read, never write: no IBV_ACCESS_REMOTE_WRITE, ever. */
	mr->mr = ibv_reg_mr(tp->pd, ptr, len, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ);
	if (!mr->mr) {
		rc = errno ? -errno : -ENOMEM;
		kvn_seterr(rc, err, errlen,
			   "verbs: registering %zu bytes at %p on %s failed: %s (raise "
			   "'ulimit -l' / memlock)",
			   len, ptr, tp->devname, strerror(-rc));
		kvn_vb_dev_leave(tp);
		free(mr);
		return rc;
	}
	mr->base = (uintptr_t)ptr;
	mr->len = len;
	*desc = (struct kvn_mem_desc){.addr = (uintptr_t)ptr, .len = len, .rkey = mr->mr->rkey};
	kvn_vb_mr_link(tp, mr);
	kvn_vb_dev_leave(tp);
	*out = mr;
	return 0;
}

void
kvn_vb_mr_link(struct kvn_transport *tp, struct kvn_tp_mr *mr)
{
	mr->tp = tp;
	pthread_mutex_lock(&tp->lock);
	mr->next = tp->mrs;
	tp->mrs = mr;
	pthread_mutex_unlock(&tp->lock);
}

static void
verbs_dereg(struct kvn_tp_mr *mr)
{
	struct kvn_transport *tp;
	if (!mr)
		return;
	tp = mr->tp;
	pthread_mutex_lock(&tp->lock);
	for (struct kvn_tp_mr **p = &tp->mrs; *p; p = &(*p)->next) {
		if (*p == mr) {
			*p = mr->next;
			break;
		}
	}
	/* Off the list, the release of a removed device no longer sees it; until this dereg is
	 * done it waits (dev_users). Released already: the device took the MR with it. */
	struct ibv_mr *m = mr->mr;
	if (m)
		tp->dev_users++;
	pthread_mutex_unlock(&tp->lock);
	if (m) {
		ibv_dereg_mr(m); /* from here on the device refuses the rkey */
		kvn_vb_dev_leave(tp);
	}
	kvn_devreg_release(&mr->rel); /* no read touches the staging area any more */
	free(mr);
}

/* ---------------------------------------------------------------------------------------------
 * Endpoints and reads.
 * --------------------------------------------------------------------------------------------- */

static int
verbs_connect(struct kvn_transport *tp, const char *peer, int timeout_ms, struct kvn_tp_ep **out,
	      char *err, size_t errlen)
{
	struct kvn_tp_ep *ep = calloc(1, sizeof(*ep));
	int rc;

	if (!ep)
		return -ENOMEM;
	ep->tp = tp;
	kvn_seterr(-EINVAL, ep->peer, sizeof(ep->peer), "%s", peer);
	ep->timeout_ms = timeout_ms > 0 ? timeout_ms : tp->timeout_ms;
	ep->queue_tail = &ep->queue;
	ep->state = EP_CONNECTING;
	rc = kvn_vb_connect_id(tp, ep, ep->timeout_ms, err, errlen);
	if (rc) {
		free(ep);
		return rc;
	}
	pthread_mutex_lock(&tp->lock);
	ep->next = tp->eps;
	tp->eps = ep;
	pthread_mutex_unlock(&tp->lock);
	*out = ep;
	return 0;
}

static void
verbs_ep_close(struct kvn_tp_ep *ep)
{
	struct kvn_transport *tp = ep->tp;
	char msg[192];

	kvn_seterr(-EINVAL, msg, sizeof(msg), "peer %s: endpoint closed before the read completed",
		   ep->peer);
	pthread_mutex_lock(&tp->lock);
	ep->closing = true;
	for (;;) {
		/* A reconnect in flight may bring it back up: break it again then. */
		kvn_vb_ep_break(ep, -ECONNRESET, false, "%s", msg);
		kvn_vb_fail_queue(ep, -ECONNRESET, msg);
		if (!ep->live_ops && ep->state == EP_DOWN)
			break;
		kvn_vb_wake(tp);
		pthread_cond_wait(&tp->cond, &tp->lock);
	}
	for (struct kvn_tp_ep **p = &tp->eps; *p; p = &(*p)->next) {
		if (*p == ep) {
			*p = ep->next;
			break;
		}
	}
	pthread_mutex_unlock(&tp->lock);
	free(ep);
}

/* Refusals the reader can decide alone (the owner's device would refuse them too, but only by
 * breaking the QP). Unknown rkeys go to the device: the owner may have registered since. */
static int
check_read(struct kvn_tp_ep *ep, const struct kvn_read *rd, char *msg, size_t msglen)
{
	uintptr_t l = (uintptr_t)rd->local;
	if (!rd->len) {
		return kvn_seterr(-EINVAL, msg, msglen,
				  "peer %s: zero-length read (remote 0x%llx, rkey 0x%x)", ep->peer,
				  (unsigned long long)rd->remote_addr, rd->rkey);
	}
	if (!rd->local_mr || rd->local_mr->tp != ep->tp || l < rd->local_mr->base ||
	    l - rd->local_mr->base > rd->local_mr->len ||
	    rd->len > rd->local_mr->len - (l - rd->local_mr->base)) {
		return kvn_seterr(-EINVAL, msg, msglen,
				  "read of %llu bytes from peer %s: local buffer %p is not inside "
				  "the local_mr registration",
				  (unsigned long long)rd->len, ep->peer, rd->local);
	}
	for (uint32_t i = 0; i < ep->ndesc; i++) {
		const struct kvn_mem_desc *d = &ep->desc[i];
		if (d->rkey != rd->rkey)
			continue;
		if (rd->remote_addr < d->addr || rd->remote_addr - d->addr > d->len ||
		    rd->len > d->len - (rd->remote_addr - d->addr)) {
			return kvn_seterr(-EACCES, msg, msglen,
					  "peer %s refuses reads of %llu bytes at 0x%llx with rkey "
					  "0x%x: outside its region [0x%llx, +%llu)",
					  ep->peer, (unsigned long long)rd->len,
					  (unsigned long long)rd->remote_addr, rd->rkey,
					  (unsigned long long)d->addr, (unsigned long long)d->len);
		}
	}
	return 0;
}

static int
verbs_read(struct kvn_tp_ep *ep, struct kvn_read *reads, size_t n)
{
	struct kvn_transport *tp = ep->tp;
	struct vb_op **ops;
	bool wake = false;

	if (!n)
		return 0;
	ops = calloc(n, sizeof(*ops));
	for (size_t i = 0; ops && i < n; i++) {
		ops[i] = calloc(1, sizeof(**ops));
		if (!ops[i]) {
			while (i--)
				free(ops[i]);
			free(ops);
			ops = NULL;
		}
	}
	if (!ops)
		return -ENOMEM;
	pthread_mutex_lock(&tp->lock);
	/* Broken earlier: reconnect once, here; but never from a read callback, which runs on the
	 * progress thread and must not block (the ABI says -ENOTCONN then). */
	if (ep->state == EP_DOWN && !ep->closing && !tp->removed &&
	    !pthread_equal(pthread_self(), tp->progress)) {
		char err[192];
		ep->state = EP_CONNECTING;
		pthread_mutex_unlock(&tp->lock);
		int rc = kvn_vb_connect_id(tp, ep, ep->timeout_ms, err, sizeof(err));
		pthread_mutex_lock(&tp->lock);
		if (rc) {
			ep->state = EP_DOWN;
			pthread_cond_broadcast(&tp->cond);
			kvn_warn(LOG, "peer %s: reconnect failed: %s", ep->peer, err);
		}
	}
	if (ep->state == EP_DOWN || ep->closing || tp->removed) {
		int rc = tp->removed ? -ENODEV : -ENOTCONN;
		pthread_mutex_unlock(&tp->lock);
		for (size_t i = 0; i < n; i++)
			free(ops[i]);
		free(ops);
		return rc;
	}
	for (size_t i = 0; i < n; i++) {
		struct vb_op *op = ops[i];
		op->rd = &reads[i];
		op->ep = ep;
		op->lnext = tp->live;
		op->lprev = &tp->live;
		if (tp->live)
			tp->live->lprev = &op->lnext;
		tp->live = op;
		op->status = check_read(ep, op->rd, op->msg, sizeof(op->msg));
		if (op->status) {
			kvn_vb_op_done(op);
			wake = true;
		} else {
			kvn_vb_queue_push(ep, op, false);
		}
	}
	ep->live_ops += (uint32_t)n;
	if (ep->state == EP_UP)
		kvn_vb_post_queue(ep);
	else
		wake = true; /* BROKEN/CONNECTING: whoever reconnects posts the queue */
	pthread_mutex_unlock(&tp->lock);
	free(ops);
	if (wake)
		kvn_vb_wake(tp);
	return 0;
}

static void
verbs_stats(struct kvn_transport *tp, struct kvn_transport_stats *out)
{
	uint64_t n = 0;
	pthread_mutex_lock(&tp->lock);
	for (struct vb_srv_conn *c = tp->srv; c; c = c->next)
		n++;
	pthread_mutex_unlock(&tp->lock);
	*out = (struct kvn_transport_stats){
	    .conns = n,
	    .accepted = __atomic_load_n(&tp->st.accepted, __ATOMIC_RELAXED),
	    .refused_full = __atomic_load_n(&tp->st.refused_full, __ATOMIC_RELAXED),
	    .auth_refused = __atomic_load_n(&tp->st.auth_refused, __ATOMIC_RELAXED),
	    .accept_errors = __atomic_load_n(&tp->st.accept_errors, __ATOMIC_RELAXED)};
}

const struct kvn_transport_ops kvn_transport_verbs = {
    KVN_TRANSPORT_OPS_INIT,
    .name = "verbs",
    .probe = verbs_probe,
    .open = verbs_open,
    .close = verbs_close,
    .reg_mem = verbs_reg_mem,
    .dereg = verbs_dereg,
    .listen = kvn_vb_listen,
    .connect = verbs_connect,
    .ep_close = verbs_ep_close,
    .read = verbs_read,
    .stats = verbs_stats,
    .reg_dev = kvn_vb_reg_dev,
};
