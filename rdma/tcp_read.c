/* TCP transport, reading side: endpoints to a peer's responder. Callers post reads; the progress
 * thread splits them into requests, pipelines them over the endpoint's sockets and receives each
 * response's payload straight into the caller's buffer. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "node/log.h"
#include "node/netaddr.h"
#include "rdma/tcp.h"

#define MAX_CONNS 16
#define RECV_BUDGET (16u << 20)

enum ep_state { EP_UP, EP_BROKEN };

struct tcp_batch {
	size_t left; /* ops not yet completed; progress thread only */
};

struct tcp_op {
	struct kvn_read *rd;
	struct tcp_batch *batch;
	struct tcp_op *next_done;
	struct kvn_tp_mr *local_mr; /* held (one user) until completion, NULL if refused */
	uint32_t chunks_left;
	int status;
	char *msg;
};

/* A piece of one read, at most TCP_MAX_MSG bytes: one request/response on the wire. */
struct chunk {
	struct tcp_op *op;
	uint64_t off; /* LOCAL_FAIL: the op was refused locally, complete it as it is */
	uint64_t len;
};
#define LOCAL_FAIL UINT64_MAX

struct chunkq {
	struct chunk *v;
	size_t head, n, cap;
};

struct read_conn {
	struct tcp_pollable p; /* first: epoll events point here */
	struct kvn_tp_ep *ep;
	struct chunkq fifo; /* requested (or being requested), answered in this order */
	uint64_t head_seq; /* sequence number of fifo's head */
	uint8_t *out; /* request frames not yet sent */
	size_t out_off, out_len, out_cap;
	uint8_t hdr[TCP_RESP_SIZE];
	size_t hdr_off;
	bool in_payload;
	uint64_t pay_off;
	uint64_t outstanding; /* bytes requested and not yet received, for striping */
	uint64_t last_rx_ms;
};

struct kvn_tp_ep {
	struct kvn_transport *tp;
	struct kvn_tp_ep *next;
	char peer[128];
	char host[KVN_HOST_MAX];
	uint16_t port;
	int timeout_ms;
	atomic_int state; /* enum ep_state */
	pthread_mutex_t reconnect_lock;

	pthread_mutex_t lock; /* subq, rearm, closing */
	struct chunkq subq;
	int new_fds[MAX_CONNS];
	bool rearm;
	bool closing;
	bool close_failed; /* progress thread: its reads are failed; callbacks pending */
	bool closed; /* under tp->lock: ep_close may free it */

	int nconns;
	struct read_conn conns[MAX_CONNS];
};

/* ---------------------------------------------------------------------------------------------
 * Queues and completions
 * ------------------------------------------------------------------------------------------- */

static int
q_push(struct chunkq *q, struct chunk c)
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

static char *
fmt_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *
fmt_msg(const char *fmt, ...)
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
			tcp_mr_put(op->local_mr);
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
		chunk_finish(tp, ch->op, status, fmt_msg("%s", why));
		q_pop(&c->fifo);
		tp->chunks_out--;
	}
	if (c->p.fd >= 0) {
		tcp_epoll_del(tp, &c->p);
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
	if (c->p.fd >= 0 && tcp_epoll_set(tp, &c->p, ev) < 0)
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
	if (q_push(&c->fifo, ch) < 0)
		return -ENOMEM;
	struct tcp_req req = {
		.op = TCP_REQ_READ,
		.rkey = ch.op->rd->rkey,
		.seq = c->head_seq + c->fifo.n - 1,
		.addr = ch.op->rd->remote_addr + ch.off,
		.len = ch.len,
	};
	tcp_req_encode(&req, c->out + c->out_len);
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
		chunk_finish(tp, ch.op, -ECONNRESET,
			     fmt_msg("tcp: peer %s: connection lost before the read was sent; the "
				     "next read reconnects", ep->peer));
		return;
	}
	struct read_conn *best = &ep->conns[0];
	for (int i = 1; i < ep->nconns; i++)
		if (ep->conns[i].outstanding < best->outstanding)
			best = &ep->conns[i];
	if (conn_request(tp, best, ch, now) < 0)
		chunk_finish(tp, ch.op, -ENOMEM,
			     fmt_msg("tcp: peer %s: out of memory queueing a read", ep->peer));
}

/* ---------------------------------------------------------------------------------------------
 * Receiving responses
 * ------------------------------------------------------------------------------------------- */

/* One response header arrived: match it with the oldest request. false on a protocol error. */
static bool
got_header(struct kvn_transport *tp, struct read_conn *c)
{
	struct tcp_resp resp;
	tcp_resp_decode(c->hdr, &resp);
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
			     fmt_msg("tcp: peer %s refused the read of %" PRIu64 " bytes at 0x%" PRIx64
				     " (rkey 0x%08x): %s", c->ep->peer, rd->len, rd->remote_addr,
				     rd->rkey, tcp_reason_str(resp.reason)));
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
			dst = (char *)ch->op->rd->local + ch->off + c->pay_off;
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
tcp_read_event(struct kvn_transport *tp, struct tcp_pollable *p, uint32_t events)
{
	struct read_conn *c = (struct read_conn *)p;
	uint64_t now = tcp_now_ms();
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
		if (tcp_epoll_set(tp, &c->p, EPOLLIN) < 0) {
			ep_fail(ep, -EIO, "epoll_ctl failed: %s", strerror(errno));
			return;
		}
	}
}

void
tcp_read_work(struct kvn_transport *tp, uint64_t now)
{
	bool any_closing = false;
	pthread_mutex_lock(&tp->lock);
	for (struct kvn_tp_ep *ep = tp->eps; ep; ep = ep->next) {
		pthread_mutex_lock(&ep->lock);
		if (ep->rearm) {
			ep->rearm = false;
			install_fds(tp, ep, now);
		}
		struct chunkq q = ep->subq;
		ep->subq = (struct chunkq){ 0 };
		bool closing = ep->closing && !ep->close_failed;
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
tcp_read_busy(struct kvn_transport *tp)
{
	return tp->chunks_out > 0;
}

void
tcp_read_drop_dead(struct kvn_transport *tp)
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
tcp_read_shutdown(struct kvn_transport *tp)
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

/* ---------------------------------------------------------------------------------------------
 * Connecting
 * ------------------------------------------------------------------------------------------- */

/* Waits for events on fd until deadline; -ETIMEDOUT past it. */
static int
wait_fd(int fd, short events, uint64_t deadline)
{
	for (;;) {
		uint64_t now = tcp_now_ms();
		if (now >= deadline)
			return -ETIMEDOUT;
		struct pollfd pfd = { .fd = fd, .events = events };
		int n = poll(&pfd, 1, (int)(deadline - now));
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR)
			return -errno;
	}
}

/* One socket to the peer, hello exchanged, within timeout_ms. */
static int
dial(const struct kvn_tp_ep *ep, int timeout_ms, int *out, char *err, size_t errlen)
{
	uint64_t deadline = tcp_now_ms() + (uint64_t)timeout_ms;
	char cerr[256];
	int fd = kvn_tcp_connect(ep->host, ep->port, timeout_ms, cerr, sizeof(cerr));
	if (fd < 0)
		return kvn_seterr(err, errlen, "tcp: peer %s: %s (is a kvnode node listening "
				  "there?)", ep->peer, cerr),
		       fd;
	int fl = fcntl(fd, F_GETFL);
	int rc = fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ? -errno : 0;
	uint8_t hello[TCP_HELLO_SIZE];
	if (!rc) {
		tcp_hello_encode(0, hello);
		/* A fresh socket always has room for 8 bytes. */
		rc = send(fd, hello, sizeof(hello), MSG_NOSIGNAL | MSG_DONTWAIT) == sizeof(hello)
			     ? 0
			     : -EIO;
	}
	size_t got = 0;
	while (!rc && got < sizeof(hello)) {
		rc = wait_fd(fd, POLLIN, deadline);
		if (rc)
			break;
		ssize_t r = recv(fd, hello + got, sizeof(hello) - got, MSG_DONTWAIT);
		if (r > 0)
			got += (size_t)r;
		else if (r == 0)
			rc = -ECONNRESET;
		else if (errno != EAGAIN && errno != EINTR)
			rc = -errno;
	}
	if (!rc) {
		uint32_t magic = (uint32_t)hello[0] | (uint32_t)hello[1] << 8 |
				 (uint32_t)hello[2] << 16 | (uint32_t)hello[3] << 24;
		uint32_t st = (uint32_t)hello[6] | (uint32_t)hello[7] << 8;
		if (magic != TCP_MAGIC || st) {
			close(fd);
			return kvn_seterr(err, errlen, "tcp: peer %s is not a kvnode tcp transport of "
					  "protocol version %u (bad hello)", ep->peer, TCP_VERSION),
			       -EPROTO;
		}
		tcp_tune_socket(fd);
		*out = fd;
		return 0;
	}
	close(fd);
	if (rc == -ETIMEDOUT)
		kvn_seterr(err, errlen, "tcp: peer %s accepted the connection but did not answer "
			   "within %d ms (is it a kvnode node?)", ep->peer, timeout_ms);
	else
		kvn_seterr(err, errlen, "tcp: peer %s: %s during the hello (is it a kvnode node?)",
			   ep->peer, strerror(-rc));
	return rc;
}

static int
dial_all(const struct kvn_tp_ep *ep, int timeout_ms, int *fds, char *err, size_t errlen)
{
	for (int i = 0; i < ep->nconns; i++) {
		int rc = dial(ep, timeout_ms, &fds[i], err, errlen);
		if (rc < 0) {
			while (i--)
				close(fds[i]);
			return rc;
		}
	}
	return 0;
}

static void
ep_free(struct kvn_tp_ep *ep)
{
	for (int i = 0; i < ep->nconns; i++) {
		free(ep->conns[i].fifo.v);
		free(ep->conns[i].out);
	}
	free(ep->subq.v);
	pthread_mutex_destroy(&ep->lock);
	pthread_mutex_destroy(&ep->reconnect_lock);
	free(ep);
}

int
tcp_connect(struct kvn_transport *tp, const char *peer, int timeout_ms, struct kvn_tp_ep **out,
	    char *err, size_t errlen)
{
	struct kvn_tp_ep *ep = calloc(1, sizeof(*ep));
	if (!ep)
		return -ENOMEM;
	snprintf(ep->peer, sizeof(ep->peer), "%s", peer ? peer : "");
	ep->tp = tp;
	ep->timeout_ms = timeout_ms > 0 ? timeout_ms : tp->cfg.timeout_ms;
	ep->nconns = tp->cfg.conns_per_peer;
	pthread_mutex_init(&ep->lock, NULL);
	pthread_mutex_init(&ep->reconnect_lock, NULL);
	for (int i = 0; i < ep->nconns; i++) {
		ep->conns[i].p.kind = TCP_P_READ;
		ep->conns[i].p.fd = -1;
		ep->conns[i].ep = ep;
	}
	int rc = kvn_hostport_parse(peer, ep->host, &ep->port, err, errlen);
	if (!rc)
		rc = dial_all(ep, ep->timeout_ms, ep->new_fds, err, errlen);
	if (rc < 0) {
		ep_free(ep);
		return rc;
	}
	/* The progress thread registers the sockets with epoll when it first sees the ep. */
	atomic_store(&ep->state, EP_UP);
	ep->rearm = true;
	pthread_mutex_lock(&tp->lock);
	ep->next = tp->eps;
	tp->eps = ep;
	pthread_mutex_unlock(&tp->lock);
	tcp_kick(tp);
	kvn_debug("tcp", "connected to peer %s (%d connection%s)", ep->peer, ep->nconns,
		  ep->nconns > 1 ? "s" : "");
	*out = ep;
	return 0;
}

void
tcp_ep_close(struct kvn_tp_ep *ep)
{
	if (!ep)
		return;
	struct kvn_transport *tp = ep->tp;
	pthread_mutex_lock(&tp->lock);
	pthread_mutex_lock(&ep->lock);
	ep->closing = true;
	pthread_mutex_unlock(&ep->lock);
	tcp_kick(tp);
	while (!ep->closed)
		pthread_cond_wait(&tp->cond, &tp->lock);
	for (struct kvn_tp_ep **pp = &tp->eps; *pp; pp = &(*pp)->next) {
		if (*pp == ep) {
			*pp = ep->next;
			break;
		}
	}
	pthread_mutex_unlock(&tp->lock);
	for (int i = 0; i < ep->nconns; i++)
		if (ep->conns[i].p.fd >= 0)
			close(ep->conns[i].p.fd);
	ep_free(ep);
}

/* Reconnects a broken endpoint from the caller's thread (never the progress thread: a dial may
 * take up to the timeout). */
static int
reconnect(struct kvn_tp_ep *ep)
{
	if (tcp_on_progress_thread(ep->tp))
		return -ENOTCONN;
	int rc = 0;
	pthread_mutex_lock(&ep->reconnect_lock);
	if (atomic_load(&ep->state) == EP_BROKEN) {
		char err[256];
		int fds[MAX_CONNS];
		rc = dial_all(ep, ep->timeout_ms, fds, err, sizeof(err));
		if (rc < 0) {
			kvn_warn("transport", "%s", err);
			rc = -ENOTCONN;
		} else {
			pthread_mutex_lock(&ep->lock);
			memcpy(ep->new_fds, fds, sizeof(fds[0]) * (size_t)ep->nconns);
			ep->rearm = true;
			atomic_store(&ep->state, EP_UP);
			pthread_mutex_unlock(&ep->lock);
			kvn_info("tcp", "reconnected to peer %s", ep->peer);
		}
	}
	pthread_mutex_unlock(&ep->reconnect_lock);
	return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Posting reads
 * ------------------------------------------------------------------------------------------- */

static bool
local_ok(const struct kvn_tp_ep *ep, const struct kvn_read *rd)
{
	const struct kvn_tp_mr *mr = rd->local_mr;
	if (!mr || mr->tp != ep->tp || atomic_load(&mr->dead) || !rd->local)
		return false;
	uintptr_t base = (uintptr_t)mr->base, p = (uintptr_t)rd->local;
	return p >= base && rd->len <= mr->len && p - base <= mr->len - rd->len;
}

int
tcp_read(struct kvn_tp_ep *ep, struct kvn_read *reads, size_t n)
{
	if (!n)
		return 0;
	if (atomic_load(&ep->state) == EP_BROKEN) {
		int rc = reconnect(ep);
		if (rc < 0)
			return rc;
	}
	struct tcp_batch *b = malloc(sizeof(*b) + n * sizeof(struct tcp_op));
	if (!b)
		return -ENOMEM;
	struct tcp_op *ops = (struct tcp_op *)(b + 1);
	b->left = n;
	for (size_t i = 0; i < n; i++) {
		struct kvn_read *rd = &reads[i];
		struct tcp_op *op = &ops[i];
		*op = (struct tcp_op){ .rd = rd, .batch = b };
		if (!local_ok(ep, rd)) {
			op->status = -EINVAL;
			op->msg = fmt_msg("tcp: read of %" PRIu64 " bytes from peer %s: the local "
					  "buffer %p is not inside the read's local_mr (register it "
					  "with this transport)", rd->len, ep->peer, rd->local);
		} else {
			op->local_mr = rd->local_mr;
			atomic_fetch_add(&op->local_mr->users, 1);
			op->chunks_left = rd->len ? (uint32_t)((rd->len + TCP_MAX_MSG - 1) / TCP_MAX_MSG)
						  : 1;
		}
	}
	int rc = 0;
	pthread_mutex_lock(&ep->lock);
	size_t undo = ep->subq.n;
	for (size_t i = 0; i < n && !rc; i++) {
		struct tcp_op *op = &ops[i];
		if (!op->chunks_left) {
			rc = q_push(&ep->subq, (struct chunk){ op, LOCAL_FAIL, 0 });
			continue;
		}
		uint64_t len = op->rd->len;
		for (uint64_t off = 0; !rc && (off < len || (!len && !off)); off += TCP_MAX_MSG) {
			uint64_t l = len - off < TCP_MAX_MSG ? len - off : TCP_MAX_MSG;
			rc = q_push(&ep->subq, (struct chunk){ op, off, l });
			if (!len)
				break;
		}
	}
	if (rc) {
		/* Nothing of this batch may run: take its chunks back off the queue. */
		ep->subq.n = undo;
		pthread_mutex_unlock(&ep->lock);
		for (size_t i = 0; i < n; i++) {
			if (ops[i].local_mr)
				tcp_mr_put(ops[i].local_mr);
			free(ops[i].msg);
		}
		free(b);
		return rc;
	}
	pthread_mutex_unlock(&ep->lock);
	tcp_kick(ep->tp);
	return 0;
}
