/* TCP transport, reading side: endpoints. Connecting (hello included) and reconnecting from the
 * caller's thread, closing, and posting reads: split into requests here, sent and received by
 * the progress thread in tcp_read.c. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "node/log.h"
#include "node/netaddr.h"
#include "rdma/tcp.h"

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
		uint8_t req[TCP_HELLO_REQ_SIZE];
		tcp_hello_req_encode(&ep->tp->auth, req);
		/* A fresh socket always has room for 24 bytes. */
		rc = send(fd, req, sizeof(req), MSG_NOSIGNAL | MSG_DONTWAIT) == sizeof(req) ? 0
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
		if (magic == TCP_MAGIC && st == EACCES) {
			close(fd);
			return kvn_tp_auth_refused("tcp", ep->peer, &ep->tp->auth, err, errlen);
		}
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

/* The close is handed to the progress thread: between two batches of epoll events (when no
 * event it fetched is left to handle) it fails the reads, takes the sockets out of epoll,
 * closes them and runs the callbacks; only then is the endpoint marked closed, and unlinked and
 * freed here. Freeing it while the progress thread could still hold an event or a pointer for
 * it must never happen. After tcp_close has stopped the thread, tcp_read_shutdown did all that
 * already. */
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
	for (int i = 0; i < ep->nconns; i++) /* none by now; never leak one if that changes */
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
	pthread_mutex_lock(&ep->lock);
	bool closing = ep->closing;
	pthread_mutex_unlock(&ep->lock);
	if (closing) {
		rc = -ENOTCONN; /* sockets made now would outlive the endpoint */
	} else if (atomic_load(&ep->state) == EP_BROKEN) {
		char err[256];
		int fds[TCP_MAX_CONNS];
		rc = dial_all(ep, ep->timeout_ms, fds, err, sizeof(err));
		if (rc < 0) {
			kvn_warn("transport", "%s", err);
			rc = -ENOTCONN;
		} else {
			pthread_mutex_lock(&ep->lock);
			closing = ep->closing;
			if (!closing) {
				memcpy(ep->new_fds, fds, sizeof(fds[0]) * (size_t)ep->nconns);
				ep->rearm = true;
				atomic_store(&ep->state, EP_UP);
			}
			pthread_mutex_unlock(&ep->lock);
			if (closing) {
				for (int i = 0; i < ep->nconns; i++)
					close(fds[i]);
				rc = -ENOTCONN;
			} else {
				kvn_info("tcp", "reconnected to peer %s", ep->peer);
			}
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
	/* Once the reads are queued the progress thread may complete them and their owner may
	 * close ep before we return: nothing of ep is touched after the unlock below. */
	struct kvn_transport *tp = ep->tp;
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
			op->msg = tcp_fmt_msg("tcp: read of %" PRIu64 " bytes from peer %s: the local "
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
	if (ep->closing)
		rc = -ENOTCONN; /* a callback of a read failed by the close posting again */
	for (size_t i = 0; i < n && !rc; i++) {
		struct tcp_op *op = &ops[i];
		if (!op->chunks_left) {
			rc = tcp_q_push(&ep->subq, (struct chunk){ op, LOCAL_FAIL, 0 });
			continue;
		}
		uint64_t len = op->rd->len;
		for (uint64_t off = 0; !rc && (off < len || (!len && !off)); off += TCP_MAX_MSG) {
			uint64_t l = len - off < TCP_MAX_MSG ? len - off : TCP_MAX_MSG;
			rc = tcp_q_push(&ep->subq, (struct chunk){ op, off, l });
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
	tcp_kick(tp);
	return 0;
}
