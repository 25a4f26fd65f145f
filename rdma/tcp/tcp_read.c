/* TCP transport, reading side, progress-thread half: sends the requests posted on endpoints
 * (tcp_ep.c), pipelined over their sockets, receives each response's payload straight into the
 * caller's buffer, runs completions, and fails stalled or broken connections. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "core/log.h"
#include "rdma/tcp/tcp.h"

#define RECV_BUDGET (16u << 20) /* bytes received on one socket before turning to others */
#define STRIPE_MIN (4ull << 20) /* bytes outstanding on a socket before the next one is used */

/* ---------------------------------------------------------------------------------------------
 * Queues and completions
 * ------------------------------------------------------------------------------------------- */

int
kvn_tcp_q_push(struct chunkq *q, struct chunk c)
{
	if (q->n == q->cap) {
		size_t cap = q->cap ? q->cap * 2 : 64;
		struct chunk *v = malloc(cap * sizeof(*v));
		if (!v)
			return -ENOMEM;
		for (size_t i = 0; i < q->n; i++)
			v[i] = q->v[(q->head + i) % q->cap];
		free(q->v);
		q->v = v;
		q->head = 0;
		q->cap = cap;
	}
	q->v[(q->head + q->n++) % q->cap] = c;
	return 0;
}

static struct chunk *
q_front(struct chunkq *q)
{
	return q->n ? &q->v[q->head] : NULL;
}

static void
q_pop(struct chunkq *q)
{
	q->head = (q->head + 1) % q->cap;
	q->n--;
}

static void
op_done_push(struct kvn_transport *tp, struct tcp_op *op)
{
	op->next_done = NULL;
	if (tp->done_tail)
		tp->done_tail->next_done = op;
	else
		tp->done_head = op;
	tp->done_tail = op;
}

static void
chunk_finish(struct kvn_transport *tp, struct tcp_op *op, int status, char *msg)
{
	if (status && !op->status) {
		op->status = status;
		op->msg = msg;
		msg = NULL;
	}
	free(msg);
	if (--op->chunks_left == 0)
		op_done_push(tp, op);
}

char *
kvn_tcp_fmt_msg(const char *fmt, ...)
{
	char *s = NULL;
	va_list ap;
	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	return s;
}

/* Runs the callbacks of completed reads. Called with no lock held, so a callback may post. */
static void
flush_done(struct kvn_transport *tp)
{
	while (tp->done_head) {
		struct tcp_op *op = tp->done_head;
		tp->done_head = op->next_done;
		if (!tp->done_head)
			tp->done_tail = NULL;
		if (op->local_mr)
			kvn_tcp_mr_put(op->local_mr);
		struct kvn_read *rd = op->rd;
		struct tcp_batch *b = op->batch;
		rd->status = op->status;
		char *msg = op->msg;
		if (rd->done)
			rd->done(rd, op->status, op->status ? (msg ? msg : kvn_strerror(op->status))
							    : NULL);
		free(msg);
		if (--b->left == 0)
			free(b);
	}
}

/* ---------------------------------------------------------------------------------------------
 * Connection failure
 * ------------------------------------------------------------------------------------------- */

static void
conn_fail_all(struct kvn_transport *tp, struct read_conn *c, int status, const char *why)
{
	struct chunk *ch;
	while ((ch = q_front(&c->fifo))) {
		chunk_finish(tp, ch->op, status, kvn_tcp_fmt_msg("%s", why));
		q_pop(&c->fifo);
		tp->chunks_out--;
	}
	if (c->p.fd >= 0) {
		kvn_tcp_epoll_del(tp, &c->p);
		close(c->p.fd);
		c->p.fd = -1;
	}
	c->out_off = c->out_len = 0;
	c->hdr_off = 0;
	c->in_payload = false;
	c->outstanding = 0;
}

/* Fails every outstanding read of ep (status, message naming the peer) and closes its sockets;
 * the next read() reconnects. */
static void
ep_fail(struct kvn_tp_ep *ep, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void
ep_fail(struct kvn_tp_ep *ep, int status, const char *fmt, ...)
{
	char why[256], msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	size_t out = 0;
	for (int i = 0; i < ep->nconns; i++)
		out += ep->conns[i].fifo.n;
	snprintf(msg, sizeof(msg), "tcp: peer %s: %s", ep->peer, why);
	if (atomic_load(&ep->state) == EP_UP && status != -ECANCELED && out)
		kvn_warn("tcp", "peer %s: %s; %zu read requests outstanding fail; the next read "
			 "reconnects", ep->peer, why, out);
	else if (atomic_load(&ep->state) == EP_UP && status != -ECANCELED)
		kvn_info("tcp", "peer %s: %s; the next read reconnects", ep->peer, why);
	for (int i = 0; i < ep->nconns; i++)
		conn_fail_all(ep->tp, &ep->conns[i], status, msg);
	atomic_store(&ep->state, EP_BROKEN);
}

/* ---------------------------------------------------------------------------------------------
 * Sending requests
 * ------------------------------------------------------------------------------------------- */

static void
conn_set_events(struct kvn_transport *tp, struct read_conn *c)
{
	uint32_t ev = EPOLLIN | (c->out_off < c->out_len ? EPOLLOUT : 0);
	if (c->p.fd >= 0 && kvn_tcp_epoll_set(tp, &c->p, ev) < 0)
		ep_fail(c->ep, -EIO, "epoll_ctl failed: %s", strerror(errno));
}

static void
flush_out(struct kvn_transport *tp, struct read_conn *c)
{
	while (c->out_off < c->out_len) {
		ssize_t w = send(c->p.fd, c->out + c->out_off, c->out_len - c->out_off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			ep_fail(c->ep, -ECONNRESET, "sending requests failed: %s", strerror(errno));
			return;
		}
		c->out_off += (size_t)w;
	}
	if (c->out_off == c->out_len)
		c->out_off = c->out_len = 0;
	conn_set_events(tp, c);
}

static int
conn_request(struct kvn_transport *tp, struct read_conn *c, struct chunk ch, uint64_t now)
{
	if (c->out_len + TCP_REQ_SIZE > c->out_cap) {
		if (c->out_off) {
			memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
			c->out_len -= c->out_off;
			c->out_off = 0;
		}
		if (c->out_len + TCP_REQ_SIZE > c->out_cap) {
			size_t cap = c->out_cap ? c->out_cap * 2 : 64 * TCP_REQ_SIZE;
			uint8_t *o = realloc(c->out, cap);
			if (!o)
				return -ENOMEM;
			c->out = o;
			c->out_cap = cap;
		}
	}
	if (kvn_tcp_q_push(&c->fifo, ch) < 0)
		return -ENOMEM;
	struct tcp_req req = {
		.op = TCP_REQ_READ,
		.rkey = ch.op->rd->rkey,
		.seq = c->head_seq + c->fifo.n - 1,
		.addr = ch.op->rd->remote_addr + ch.off,
		.len = ch.len,
	};
	kvn_tcp_req_encode(&req, c->out + c->out_len);
	c->out_len += TCP_REQ_SIZE;
	if (c->fifo.n == 1)
		c->last_rx_ms = now; /* idle time before this request is not a stall */
	c->outstanding += ch.len;
	tp->chunks_out++;
	return 0;
}

/* Hands one chunk to the connection with the fewest bytes outstanding (striping). */
static void
dispatch(struct kvn_transport *tp, struct kvn_tp_ep *ep, struct chunk ch, uint64_t now)
{
	if (ch.off == LOCAL_FAIL) {
		op_done_push(tp, ch.op);
		return;
	}
	if (atomic_load(&ep->state) != EP_UP) {
		chunk_finish(
		    tp, ch.op, -ECONNRESET,
		    kvn_tcp_fmt_msg("tcp: peer %s: connection lost before the read was sent; the "
				    "next read reconnects",
				    ep->peer));
		return;
	}
	/* Fill the first socket up to STRIPE_MIN outstanding before spilling to the next: small
	 * reads then share one socket (fewer wake-ups per byte) and only a deep queue of bytes is
	 * striped, to the socket with the fewest outstanding. */
	struct read_conn *best = NULL;
	for (int i = 0; i < ep->nconns && !best; i++)
		if (ep->conns[i].outstanding < STRIPE_MIN)
			best = &ep->conns[i];
	if (!best) {
		best = &ep->conns[0];
		for (int i = 1; i < ep->nconns; i++)
			if (ep->conns[i].outstanding < best->outstanding)
				best = &ep->conns[i];
	}
	if (conn_request(tp, best, ch, now) < 0)
		chunk_finish(
		    tp, ch.op, -ENOMEM,
		    kvn_tcp_fmt_msg("tcp: peer %s: out of memory queueing a read", ep->peer));
}

/* ---------------------------------------------------------------------------------------------
 * Receiving responses
 * ------------------------------------------------------------------------------------------- */

/* One response header arrived: match it with the oldest request. false on a protocol error. */
static bool
got_header(struct kvn_transport *tp, struct read_conn *c)
{
	struct tcp_resp resp;
	kvn_tcp_resp_decode(c->hdr, &resp);
	c->hdr_off = 0;
	struct chunk *ch = q_front(&c->fifo);
	if (!ch || resp.seq != c->head_seq) {
		ep_fail(c->ep, -EPROTO, "response out of order (sequence %" PRIu64 ", expected %"
			PRIu64 "); is it a kvnode node of the same version?", resp.seq, c->head_seq);
		return false;
	}
	if (resp.status) {
		struct kvn_read *rd = ch->op->rd;
		int st = resp.status > 4095 ? -EPROTO : -(int)resp.status;
		chunk_finish(tp, ch->op, st,
			     kvn_tcp_fmt_msg("tcp: peer %s refused the read of %" PRIu64
					     " bytes at 0x%" PRIx64 " (rkey 0x%08x): %s",
					     c->ep->peer, rd->len, rd->remote_addr, rd->rkey,
					     kvn_tcp_reason_str(resp.reason)));
		c->outstanding -= ch->len;
		q_pop(&c->fifo);
		c->head_seq++;
		tp->chunks_out--;
		return true;
	}
	if (resp.len != ch->len) {
		ep_fail(c->ep, -EPROTO, "response of %" PRIu64 " bytes to a request of %" PRIu64,
			resp.len, ch->len);
		return false;
	}
	c->in_payload = true;
	c->pay_off = 0;
	return true;
}

static void
recv_responses(struct kvn_transport *tp, struct read_conn *c, uint64_t now)
{
	uint64_t budget = RECV_BUDGET;
	while (budget) {
		struct chunk *ch = q_front(&c->fifo);
		void *dst;
		size_t want;
		if (c->in_payload) {
			/* local names the registration's addresses (a staged device range's
			 * pointer): the bytes land at the same offset of its memory. */
			const struct kvn_tp_mr *lm = ch->op->local_mr;
			dst = lm->base + ((uintptr_t)ch->op->rd->local - lm->addr) + ch->off +
			      c->pay_off;
			want = ch->len - c->pay_off;
		} else {
			dst = c->hdr + c->hdr_off;
			want = TCP_RESP_SIZE - c->hdr_off;
		}
		ssize_t r = recv(c->p.fd, dst, want, MSG_DONTWAIT);
		if (r == 0) {
			ep_fail(c->ep, -ECONNRESET, "the peer closed the connection");
			return;
		}
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				ep_fail(c->ep, -ECONNRESET, "connection lost: %s", strerror(errno));
			return;
		}
		c->last_rx_ms = now;
		budget = (uint64_t)r >= budget ? 0 : budget - (uint64_t)r;
		if (!c->in_payload) {
			c->hdr_off += (size_t)r;
			if (c->hdr_off == TCP_RESP_SIZE && !got_header(tp, c))
				return;
			continue;
		}
		c->pay_off += (uint64_t)r;
		if (c->pay_off == ch->len) {
			c->in_payload = false;
			c->outstanding -= ch->len;
			struct tcp_op *op = ch->op;
			q_pop(&c->fifo);
			c->head_seq++;
			tp->chunks_out--;
			chunk_finish(tp, op, 0, NULL);
		}
	}
}

void
kvn_tcp_read_event(struct kvn_transport *tp, struct tcp_pollable *p, uint32_t events)
{
	struct read_conn *c = (struct read_conn *)p;
	uint64_t now = kvn_now_ms();
	/* An event fetched in the same batch as one that failed the whole endpoint: its socket
	 * is closed already (and not in epoll any more); there is nothing to read. */
	if (c->p.fd < 0)
		return;
	if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
		recv_responses(tp, c, now);
	if (c->p.fd >= 0 && (events & EPOLLOUT))
		flush_out(tp, c);
	flush_done(tp);
}

/* ---------------------------------------------------------------------------------------------
 * Progress-thread work: posted reads, reconnects, closes, stalls
 * ------------------------------------------------------------------------------------------- */

static void
install_fds(struct kvn_transport *tp, struct kvn_tp_ep *ep, uint64_t now)
{
	for (int i = 0; i < ep->nconns; i++) {
		struct read_conn *c = &ep->conns[i];
		c->p.fd = ep->new_fds[i];
		c->p.events = 0;
		c->head_seq = 0;
		c->last_rx_ms = now;
		if (kvn_tcp_epoll_set(tp, &c->p, EPOLLIN) < 0) {
			ep_fail(ep, -EIO, "epoll_ctl failed: %s", strerror(errno));
			return;
		}
	}
}

void
kvn_tcp_read_work(struct kvn_transport *tp, uint64_t now)
{
	bool any_closing = false;
	pthread_mutex_lock(&tp->lock);
	for (struct kvn_tp_ep *ep = tp->eps; ep; ep = ep->next) {
		pthread_mutex_lock(&ep->lock);
		bool closing = ep->closing && !ep->close_failed;
		if (ep->rearm) {
			ep->rearm = false;
			if (closing)
				for (int i = 0; i < ep->nconns; i++)
					close(ep->new_fds[i]);
			else
				install_fds(tp, ep, now);
		}
		struct chunkq q = ep->subq;
		ep->subq = (struct chunkq){ 0 };
		pthread_mutex_unlock(&ep->lock);
		for (struct chunk *ch; (ch = q_front(&q)); q_pop(&q))
			dispatch(tp, ep, *ch, now);
		free(q.v);
		if (closing) {
			ep_fail(ep, -ECANCELED, "endpoint closed with the read outstanding");
			ep->close_failed = true;
			any_closing = true;
			continue;
		}
		for (int i = 0; i < ep->nconns; i++) {
			struct read_conn *c = &ep->conns[i];
			if (c->p.fd < 0)
				continue;
			if (c->out_len)
				flush_out(tp, c);
			if (c->fifo.n && now - c->last_rx_ms > (uint64_t)ep->timeout_ms) {
				ep_fail(ep, -ETIMEDOUT, "no data for %d ms with reads outstanding",
					ep->timeout_ms);
				break;
			}
		}
	}
	pthread_mutex_unlock(&tp->lock);
	flush_done(tp);
	if (any_closing) {
		/* Their callbacks have run: ep_close may free them now. */
		pthread_mutex_lock(&tp->lock);
		for (struct kvn_tp_ep *ep = tp->eps; ep; ep = ep->next)
			ep->closed = ep->closed || ep->close_failed;
		pthread_cond_broadcast(&tp->cond);
		pthread_mutex_unlock(&tp->lock);
	}
}

bool
kvn_tcp_read_busy(struct kvn_transport *tp)
{
	return tp->chunks_out > 0;
}

void
kvn_tcp_read_drop_dead(struct kvn_transport *tp)
{
	pthread_mutex_lock(&tp->lock);
	for (struct kvn_tp_ep *ep = tp->eps; ep; ep = ep->next) {
		for (int i = 0; i < ep->nconns; i++) {
			struct chunkq *q = &ep->conns[i].fifo;
			bool dead = false;
			for (size_t j = 0; j < q->n && !dead; j++) {
				struct tcp_op *op = q->v[(q->head + j) % q->cap].op;
				dead = op->local_mr && atomic_load(&op->local_mr->dead);
			}
			if (dead) {
				ep_fail(ep, -ECANCELED, "the local buffer was deregistered with "
					"reads into it outstanding");
				break;
			}
		}
	}
	pthread_mutex_unlock(&tp->lock);
	flush_done(tp);
}

void
kvn_tcp_read_shutdown(struct kvn_transport *tp)
{
	pthread_mutex_lock(&tp->lock);
	for (struct kvn_tp_ep *ep = tp->eps; ep; ep = ep->next) {
		pthread_mutex_lock(&ep->lock);
		struct chunkq q = ep->subq;
		ep->subq = (struct chunkq){ 0 };
		if (ep->rearm) {
			ep->rearm = false;
			for (int i = 0; i < ep->nconns; i++)
				close(ep->new_fds[i]);
		}
		pthread_mutex_unlock(&ep->lock);
		ep_fail(ep, -ECANCELED, "transport closed with the read outstanding");
		for (struct chunk *ch; (ch = q_front(&q)); q_pop(&q))
			dispatch(tp, ep, *ch, 0);
		free(q.v);
		ep->close_failed = true;
	}
	pthread_mutex_unlock(&tp->lock);
	flush_done(tp);
	pthread_mutex_lock(&tp->lock);
	for (struct kvn_tp_ep *ep = tp->eps; ep; ep = ep->next)
		ep->closed = true;
	pthread_cond_broadcast(&tp->cond);
	pthread_mutex_unlock(&tp->lock);
}
