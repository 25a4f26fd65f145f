/* The verbs transport's data path: queued reads become chained RDMA READ work requests, and the
 * progress thread turns their completions into callbacks, failing or re-posting reads when a QP
 * breaks (a broken QP is drained, torn down and reconnected). */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "rdma/verbs/verbs.h"

#define LOG	    "verbs"
#define POLL_BATCH  64
#define POST_BATCH  64
#define SPIN_MIN_NS 5000ull
#define SPIN_MAX_NS 500000ull
#define WATCHDOG_NS 20000000ull /* how often idle sleeps wake to check read timeouts */

void
kvn_vb_wake(struct kvn_transport *tp)
{
	uint64_t one = 1;
	if (write(tp->wake_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		kvn_warn(LOG, "waking the progress thread failed: %s", strerror(errno));
}

/* ---------------------------------------------------------------------------------------------
 * Completing reads. Everything here runs with tp->lock held; callbacks run later, unlocked, on
 * the progress thread (never inside read()).
 * --------------------------------------------------------------------------------------------- */

void
kvn_vb_op_done(struct vb_op *op)
{
	struct kvn_transport *tp = op->ep->tp;
	op->next = NULL;
	*tp->done_tail = op;
	tp->done_tail = &op->next;
}

static void
op_fail(struct vb_op *op, int status, const char *msg)
{
	if (op->status)
		return;
	op->status = status;
	kvn_seterr(-EINVAL, op->msg, sizeof(op->msg), "%s", msg);
}

static struct vb_op *
queue_pop(struct kvn_tp_ep *ep)
{
	struct vb_op *op = ep->queue;
	if (op) {
		ep->queue = op->next;
		if (!ep->queue)
			ep->queue_tail = &ep->queue;
		op->queued = false;
	}
	return op;
}

void
kvn_vb_queue_push(struct kvn_tp_ep *ep, struct vb_op *op, bool front)
{
	op->queued = true;
	if (front) {
		op->next = ep->queue;
		ep->queue = op;
		if (ep->queue_tail == &ep->queue)
			ep->queue_tail = &op->next;
	} else {
		op->next = NULL;
		*ep->queue_tail = op;
		ep->queue_tail = &op->next;
	}
}

void
kvn_vb_fail_queue(struct kvn_tp_ep *ep, int status, const char *msg)
{
	struct vb_op *op;
	while ((op = queue_pop(ep))) {
		op_fail(op, status, msg);
		if (!op->wrs_out)
			kvn_vb_op_done(op);
	}
}

/* Once a broken QP has no work requests left its id can go: the progress thread destroys it
 * (unlocked) and reconnects if reads are waiting. */
static void
ep_drained(struct kvn_tp_ep *ep)
{
	struct kvn_transport *tp = ep->tp;
	struct vb_srv_conn *dead = calloc(1, sizeof(*dead));

	if (dead) {
		dead->id = ep->id;
		dead->next = tp->dead;
		tp->dead = dead;
	} else {
		kvn_vb_destroy_id(ep->id); /* out of memory: destroy in place rather than leak */
	}
	ep->id = NULL;
	ep->state = EP_DOWN;
	ep->sq_free = tp->sq_depth;
	pthread_cond_broadcast(&tp->cond);
	kvn_vb_wake(tp);
}

void
kvn_vb_ep_break(struct kvn_tp_ep *ep, int status, bool retry, const char *fmt, ...)
{
	va_list ap;
	struct ibv_qp_attr attr = {.qp_state = IBV_QPS_ERR};

	if (ep->state != EP_UP)
		return;
	ep->state = EP_BROKEN;
	ep->break_status = status;
	ep->break_retry = retry && !ep->closing;
	va_start(ap, fmt);
	vsnprintf(ep->break_msg, sizeof(ep->break_msg), fmt, ap);
	va_end(ap);
	if (ep->closing)
		kvn_debug(LOG, "%s", ep->break_msg);
	else
		kvn_warn(LOG, "%s", ep->break_msg);
	/* Moving the QP to the error state flushes every posted work request at once, so that
	 * each outstanding read completes (and fails or is retried) through the CQ. */
	if (ibv_modify_qp(ep->id->qp, &attr, IBV_QP_STATE))
		kvn_warn(LOG, "peer %s: moving the QP to error failed: %s", ep->peer,
			 strerror(errno));
	if (!ep->break_retry)
		kvn_vb_fail_queue(ep, status, ep->break_msg);
	if (!ep->wrs_out)
		ep_drained(ep);
}

/* The device was removed (verbs_removal.c): every read in flight or queued fails with -ENODEV
 * now, not when the device would flush it (a device being unregistered may never), and every
 * connected QP goes to tp->dead. From here on nobody polls the CQ, whose entries may still name
 * these reads: their callbacks run after the QPs are destroyed, so nothing lands after them. */
void
kvn_vb_abandon(struct kvn_transport *tp)
{
	char msg[sizeof(((struct vb_op *)0)->msg)];

	for (struct vb_op *op = tp->live; op; op = op->lnext) {
		if (!op->wrs_out)
			continue;
		op->wrs_out = 0;
		kvn_seterr(-EINVAL, msg, sizeof(msg),
			   "peer %s: RDMA device %s was removed under this read (rdma link "
			   "delete, or the NIC went away)",
			   op->ep->peer, tp->devname);
		op_fail(op, -ENODEV, msg);
		if (!op->queued)
			kvn_vb_op_done(op);
	}
	for (struct kvn_tp_ep *ep = tp->eps; ep; ep = ep->next) {
		kvn_seterr(-EINVAL, msg, sizeof(msg), "peer %s: RDMA device %s was removed",
			   ep->peer, tp->devname);
		kvn_vb_fail_queue(ep, -ENODEV, msg);
		ep->wrs_out = 0;
		if (ep->id && (ep->state == EP_UP || ep->state == EP_BROKEN))
			ep_drained(ep);
	}
	tp->cq_free = tp->cq_depth;
	tp->abandoned = true;
}

/* Hands queued reads to the QP: one chain, one doorbell, split at the port's max message size,
 * bounded by the send queue and the shared CQ. The device keeps max_rd_atomic of them on the
 * wire and the rest waiting in the send queue. */
void
kvn_vb_post_queue(struct kvn_tp_ep *ep)
{
	struct kvn_transport *tp = ep->tp;
	struct ibv_send_wr wr[POST_BATCH], *bad = NULL;
	struct ibv_sge sge[POST_BATCH];
	int n = 0;

	while (ep->state == EP_UP && ep->queue) {
		for (n = 0; n < POST_BATCH && ep->queue && ep->sq_free && tp->cq_free; n++) {
			struct vb_op *op = ep->queue;
			struct kvn_read *rd = op->rd;
			uint64_t piece = rd->len - op->posted;
			if (piece > tp->max_msg)
				piece = tp->max_msg;
			sge[n] = (struct ibv_sge){.addr = (uintptr_t)rd->local + op->posted,
						  .length = (uint32_t)piece,
						  .lkey = rd->local_mr->mr->lkey};
			wr[n] = (struct ibv_send_wr){.wr_id = (uintptr_t)op,
						     .next = &wr[n + 1],
						     .sg_list = &sge[n],
						     .num_sge = 1,
						     .opcode = IBV_WR_RDMA_READ,
						     .send_flags = IBV_SEND_SIGNALED};
			wr[n].wr.rdma.remote_addr = rd->remote_addr + op->posted;
			wr[n].wr.rdma.rkey = rd->rkey;
			op->posted += piece;
			op->wrs_out++;
			ep->wrs_out++;
			ep->sq_free--;
			tp->cq_free--;
			if (op->posted == rd->len)
				queue_pop(ep);
		}
		if (!n)
			return;
		wr[n - 1].next = NULL;
		if (ep->wrs_out == (uint32_t)n)
			ep->last_progress_ns = kvn_now_ns();
		int rc = ibv_post_send(ep->id->qp, wr, &bad);
		if (!rc)
			continue;
		/* Undo what the device did not take, then treat the QP as broken. */
		for (struct ibv_send_wr *w = bad; w; w = w->next) {
			struct vb_op *op = (struct vb_op *)(uintptr_t)w->wr_id;
			char msg[160];
			kvn_seterr(-EINVAL, msg, sizeof(msg),
				   "peer %s: posting an RDMA READ failed: %s", ep->peer,
				   strerror(rc));
			op_fail(op, -EIO, msg);
			op->wrs_out--;
			ep->wrs_out--;
			ep->sq_free++;
			tp->cq_free++;
			if (!op->wrs_out && !op->queued)
				kvn_vb_op_done(op);
		}
		kvn_vb_ep_break(ep, -EIO, false, "peer %s: ibv_post_send failed: %s", ep->peer,
				strerror(rc));
		return;
	}
}

static void
wc_error(struct vb_op *op, const struct ibv_wc *wc)
{
	struct kvn_tp_ep *ep = op->ep;
	struct kvn_read *rd = op->rd;
	int status = -EIO;
	bool retry = false;
	const char *why = ibv_wc_status_str(wc->status);
	char msg[sizeof(op->msg)];

	switch (wc->status) {
	case IBV_WC_REM_ACCESS_ERR:
		status = -EACCES, retry = true;
		why = "remote access error: rkey not registered there (or deregistered), or the "
		      "range is outside that region";
		break;
	case IBV_WC_REM_INV_REQ_ERR:
		status = -EACCES, retry = true;
		break;
	case IBV_WC_LOC_PROT_ERR:
	case IBV_WC_LOC_LEN_ERR:
		status = -EINVAL, retry = true;
		break;
	case IBV_WC_RETRY_EXC_ERR:
	case IBV_WC_RNR_RETRY_EXC_ERR:
		status = -ETIMEDOUT;
		why = "transport retry count exceeded: the peer is gone or unreachable";
		break;
	default:
		break;
	}
	kvn_seterr(-EINVAL, msg, sizeof(msg),
		   "peer %s: RDMA READ of %llu bytes at 0x%llx (rkey 0x%x) failed: "
		   "%s",
		   ep->peer, (unsigned long long)rd->len, (unsigned long long)rd->remote_addr,
		   rd->rkey, why);
	op_fail(op, status, msg);
	if (op->queued) /* partly posted, so at the head: its other pieces are moot now */
		queue_pop(ep);
	kvn_vb_ep_break(ep, status, retry, "%s", msg);
}

static void
handle_wc(struct kvn_transport *tp, const struct ibv_wc *wc)
{
	struct vb_op *op = (struct vb_op *)(uintptr_t)wc->wr_id;
	struct kvn_tp_ep *ep = op->ep;

	op->wrs_out--;
	ep->wrs_out--;
	ep->sq_free++;
	tp->cq_free++;
	ep->last_progress_ns = kvn_now_ns();
	if (wc->status == IBV_WC_WR_FLUSH_ERR) {
		if (ep->state == EP_UP)
			kvn_vb_ep_break(ep, -ECONNRESET, false, "peer %s: QP flushed unexpectedly",
					ep->peer);
		if (ep->break_retry && !ep->closing)
			op->retry = !op->status;
		else
			op_fail(op, ep->break_status, ep->break_msg);
	} else if (wc->status != IBV_WC_SUCCESS) {
		wc_error(op, wc);
	}
	if (!op->wrs_out) {
		if (op->retry) { /* only collateral damage of another read's error: read again */
			op->retry = false;
			op->posted = 0;
			if (!op->queued)
				kvn_vb_queue_push(ep, op, true);
		} else if (!op->queued) {
			kvn_vb_op_done(op);
		}
	}
	if (ep->state == EP_BROKEN && !ep->wrs_out)
		ep_drained(ep);
}

/* ---------------------------------------------------------------------------------------------
 * Progress thread: polls the shared CQ while busy, spins a little when it runs dry (longer when
 * recent sleeps were cut short by new completions), then sleeps on the completion channel.
 * --------------------------------------------------------------------------------------------- */

static void
run_callbacks(struct kvn_transport *tp, struct vb_op *list)
{
	struct vb_op *op, *next;
	for (op = list; op; op = op->next) {
		op->rd->status = op->status;
		op->rd->done(op->rd, op->status, op->status ? op->msg : NULL);
	}
	pthread_mutex_lock(&tp->lock);
	for (op = list; op; op = next) {
		next = op->next;
		*op->lprev = op->lnext;
		if (op->lnext)
			op->lnext->lprev = op->lprev;
		if (!--op->ep->live_ops)
			pthread_cond_broadcast(&tp->cond);
		free(op);
	}
	pthread_mutex_unlock(&tp->lock);
}

/* With tp->lock held: reads that have seen no completion for timeout_ms fail their endpoint;
 * returns an endpoint that has queued reads but no connection (to reconnect, unlocked). */
static struct kvn_tp_ep *
housekeeping(struct kvn_transport *tp, uint64_t now)
{
	struct kvn_tp_ep *todo = NULL;
	for (struct kvn_tp_ep *ep = tp->eps; ep; ep = ep->next) {
		if (ep->state == EP_UP && ep->wrs_out &&
		    (int64_t)(now - ep->last_progress_ns) > (int64_t)ep->timeout_ms * 1000000)
			kvn_vb_ep_break(
			    ep, -ETIMEDOUT, false,
			    "peer %s: no RDMA READ completion for %d ms (peer hung or gone)",
			    ep->peer, ep->timeout_ms);
		if (!todo && ep->state == EP_DOWN && ep->queue && !ep->closing)
			todo = ep;
	}
	if (todo)
		todo->state = EP_CONNECTING;
	return todo;
}

static void
reconnect(struct kvn_transport *tp, struct kvn_tp_ep *ep)
{
	char err[192], msg[256];
	int rc = kvn_vb_connect_id(tp, ep, ep->timeout_ms, err, sizeof(err));

	pthread_mutex_lock(&tp->lock);
	if (rc) {
		ep->state = EP_DOWN;
		kvn_seterr(-EINVAL, msg, sizeof(msg), "peer %s: reconnecting after '%s' failed: %s",
			   ep->peer, ep->break_msg, err);
		kvn_vb_fail_queue(ep, -ENOTCONN, msg);
		pthread_cond_broadcast(&tp->cond);
	} else {
		kvn_vb_post_queue(ep);
	}
	pthread_mutex_unlock(&tp->lock);
}

/* Completions freed send-queue and CQ slots: hand waiting reads to the device. */
static void
post_all(struct kvn_transport *tp)
{
	for (struct kvn_tp_ep *ep = tp->eps; ep; ep = ep->next)
		if (ep->state == EP_UP && ep->queue)
			kvn_vb_post_queue(ep);
}

static int
sleep_on_cq(struct kvn_transport *tp, uint64_t *spin_ns, struct ibv_wc *wc)
{
	/* The device gone (abandoned, maybe released): only wake-ups and the watchdog. */
	struct pollfd pfd[2] = {{.fd = tp->abandoned ? -1 : tp->cc->fd, .events = POLLIN},
				{.fd = tp->wake_fd, .events = POLLIN}};
	uint64_t t0 = kvn_now_ns();

	if (!tp->abandoned) {
		if (ibv_req_notify_cq(tp->cq, 0))
			return 0;
		/* A completion that arrived between the last poll and arming raises no event:
		 * look once more before sleeping, and hand what we found to the caller. */
		if (ibv_poll_cq(tp->cq, 1, wc) > 0)
			return 1;
	}
	if (poll(pfd, 2, (int)(WATCHDOG_NS / 1000000ull)) > 0) {
		if (pfd[0].revents & POLLIN) {
			struct ibv_cq *cq;
			void *cq_ctx;
			if (!ibv_get_cq_event(tp->cc, &cq, &cq_ctx))
				ibv_ack_cq_events(cq, 1);
		}
		if (pfd[1].revents & POLLIN) {
			uint64_t v;
			if (read(tp->wake_fd, &v, sizeof(v)) < 0)
				(void)0; /* nonblocking: someone else drained it */
		}
	}
	/* Woken soon after sleeping: traffic is bursty, spin longer next time; slept long: less. */
	if (kvn_now_ns() - t0 < 2 * *spin_ns)
		*spin_ns = *spin_ns * 2 > SPIN_MAX_NS ? SPIN_MAX_NS : *spin_ns * 2;
	else
		*spin_ns = *spin_ns / 2 < SPIN_MIN_NS ? SPIN_MIN_NS : *spin_ns / 2;
	return 0;
}

void *
kvn_vb_progress_main(void *arg)
{
	struct kvn_transport *tp = arg;
	struct ibv_wc wc[POLL_BATCH];
	uint64_t spin_ns = 50000, idle_since = 0, last_house = 0;

	for (;;) {
		/* Only this thread sets abandoned, so it reads it unlocked. */
		int n = tp->abandoned ? 0 : ibv_poll_cq(tp->cq, POLL_BATCH, wc);
		uint64_t now = kvn_now_ns();
		struct vb_op *done;
		struct vb_srv_conn *dead;
		struct kvn_tp_ep *todo = NULL;
		bool stop;

		pthread_mutex_lock(&tp->lock);
		for (int i = 0; i < n; i++)
			handle_wc(tp, &wc[i]);
		if (n > 0)
			post_all(tp);
		if (tp->removed && !tp->abandoned)
			kvn_vb_abandon(tp);
		if (now - last_house > WATCHDOG_NS / 4 || tp->dead) {
			todo = housekeeping(tp, now);
			last_house = now;
		}
		done = tp->done;
		tp->done = NULL;
		tp->done_tail = &tp->done;
		dead = tp->dead;
		tp->dead = NULL;
		stop = tp->stop && !tp->eps;
		pthread_mutex_unlock(&tp->lock);

		/* QPs first: an abandoned read's callback runs once nothing can land in it. */
		while (dead) {
			struct vb_srv_conn *next = dead->next;
			kvn_vb_destroy_id(dead->id);
			free(dead);
			dead = next;
		}
		if (done)
			run_callbacks(tp, done);
		if (todo)
			reconnect(tp, todo);
		kvn_vb_removal_tick(tp, now);
		if (stop)
			return NULL;
		if (n > 0 || done || todo) {
			idle_since = 0;
			continue;
		}
		if (!idle_since)
			idle_since = now;
		if (now - idle_since < spin_ns) {
			sched_yield();
			continue;
		}
		if (sleep_on_cq(tp, &spin_ns, &wc[0])) {
			pthread_mutex_lock(&tp->lock);
			handle_wc(tp, &wc[0]);
			post_all(tp);
			pthread_mutex_unlock(&tp->lock);
		}
		idle_since = 0;
		last_house = 0; /* after a sleep, check timeouts and queued reconnects right away */
	}
}
