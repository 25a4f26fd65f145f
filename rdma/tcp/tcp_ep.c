/* TCP transport, reading side: endpoints. Connecting (hello included) and reconnecting from the
 * caller's thread, closing, and posting reads: split into requests here, sent and received by
 * the progress thread in kvn_tcp_read.c. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "core/netaddr.h"
#include "rdma/tcp/tcp.h"

/* ---------------------------------------------------------------------------------------------
 * Connecting
 * ------------------------------------------------------------------------------------------- */

/* Waits for events on fd until deadline; -ETIMEDOUT past it. */
static int
wait_fd(int fd, short events, uint64_t deadline)
{
	for (;;) {
		uint64_t now = kvn_now_ms();
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

/* Receives exactly len bytes (or, with min_len < len, at least min_len followed by EOF) before
 * deadline. Returns the count received or a negative errno. */
static ssize_t
recv_msg(int fd, uint8_t *buf, size_t len, size_t min_len, uint64_t deadline)
{
	size_t got = 0;
	while (got < len) {
		int rc = wait_fd(fd, POLLIN, deadline);
		if (rc)
			return rc;
		ssize_t r = recv(fd, buf + got, len - got, MSG_DONTWAIT);
		if (r > 0)
			got += (size_t)r;
		else if (r == 0)
			return got >= min_len ? (ssize_t)got : -ECONNRESET;
		else if (errno != EAGAIN && errno != EINTR)
			return -errno;
	}
	return (ssize_t)got;
}

/* The set-up of rdma/tcp/tcp.h on a connected socket: 0, or a negative errno with err set. */
static int
handshake(const struct kvn_tp_ep *ep, int fd, uint64_t deadline, char *err, size_t errlen)
{
	const struct kvn_auth *a = &ep->tp->auth;
	uint8_t nonce_r[KVN_AUTH_NONCE], msg[TCP_CHALLENGE_SIZE];
	struct tcp_hdr h;

	kvn_auth_nonce(nonce_r);
	kvn_tcp_hdr_encode(0, a->set ? TCP_F_TOKEN : 0, msg);
	memcpy(msg + TCP_HDR_SIZE, nonce_r, KVN_AUTH_NONCE);
	/* A fresh socket always has room for these few bytes. */
	if (send(fd, msg, TCP_HELLO_SIZE, MSG_NOSIGNAL | MSG_DONTWAIT) != TCP_HELLO_SIZE)
		return -EIO;
	/* The first 8 bytes tell a kvnode owner (of any version) from anything else: check them
	 * before waiting for more, which something else may never send. */
	ssize_t n = recv_msg(fd, msg, TCP_V2_HDR_SIZE, TCP_V2_HDR_SIZE, deadline);
	if (n < 0)
		return (int)n;
	kvn_tcp_hdr_decode(msg, (size_t)n, &h);
	if (h.magic == TCP_MAGIC && h.version == TCP_VERSION && !h.status) {
		ssize_t m = recv_msg(fd, msg + n, TCP_CHALLENGE_SIZE - (size_t)n, 0, deadline);
		if (m < 0)
			return (int)m;
		n += m;
		kvn_tcp_hdr_decode(msg, (size_t)n, &h);
	}
	if (h.magic != TCP_MAGIC || h.version != TCP_VERSION || h.status ||
	    n < TCP_CHALLENGE_SIZE) {
		return kvn_seterr(
		    -EPROTO, err, errlen,
		    "tcp: peer %s is not a kvnode tcp transport of protocol version %u "
		    "(bad hello%s%u)",
		    ep->peer, TCP_VERSION, h.magic == TCP_MAGIC ? ": it speaks version " : " ",
		    h.magic == TCP_MAGIC ? h.version : 0);
	}
	const uint8_t *nonce_o = msg + TCP_HDR_SIZE;
	const struct kvn_auth_part owner[] = {{nonce_r, KVN_AUTH_NONCE}, {nonce_o, KVN_AUTH_NONCE}};
	if (a->set && (!(h.flags & TCP_F_TOKEN) ||
		       !kvn_auth_verify(a, TCP_OWNER_LABEL, owner, 2,
					msg + TCP_HDR_SIZE + KVN_AUTH_NONCE, KVN_AUTH_MAC)))
		return kvn_tp_auth_unproven("tcp", ep->peer, a, err, errlen);
	uint8_t proof[TCP_PROOF_SIZE];
	const struct kvn_auth_part reader[] = {{nonce_o, KVN_AUTH_NONCE}, {nonce_r, KVN_AUTH_NONCE}};
	kvn_tcp_hdr_encode(0, a->set ? TCP_F_TOKEN : 0, proof);
	kvn_auth_mac(a, TCP_READER_LABEL, reader, 2, proof + TCP_HDR_SIZE);
	if (send(fd, proof, sizeof(proof), MSG_NOSIGNAL | MSG_DONTWAIT) != sizeof(proof))
		return -EIO;
	/* An owner that refuses may close before its verdict is read: EOF then means refused. */
	n = recv_msg(fd, msg, TCP_VERDICT_SIZE, TCP_VERDICT_SIZE, deadline);
	if (n == -ECONNRESET && (h.flags & TCP_F_TOKEN))
		return kvn_tp_auth_refused("tcp", ep->peer, a, err, errlen);
	if (n < 0)
		return (int)n;
	kvn_tcp_hdr_decode(msg, (size_t)n, &h);
	if (h.magic == TCP_MAGIC && h.status == EACCES)
		return kvn_tp_auth_refused("tcp", ep->peer, a, err, errlen);
	if (h.magic != TCP_MAGIC || h.status) {
		return kvn_seterr(-EPROTO, err, errlen,
				  "tcp: peer %s answered the hello with status %u", ep->peer,
				  h.status);
	}
	return 0;
}

/* One socket to the peer, set up and authenticated, within timeout_ms. */
static int
dial(const struct kvn_tp_ep *ep, int timeout_ms, int *out, char *err, size_t errlen)
{
	uint64_t deadline = kvn_now_ms() + (uint64_t)timeout_ms;
	char cerr[256];
	int fd = kvn_tcp_connect(ep->host, ep->port, timeout_ms, cerr, sizeof(cerr));
	if (fd < 0)
		return kvn_seterr(fd, err, errlen,
				  "tcp: peer %s: %s (is a kvnode node listening "
				  "there?)",
				  ep->peer, cerr);
	int fl = fcntl(fd, F_GETFL);
	int rc = fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 ? -errno : 0;
	if (!rc) {
		if (err && errlen)
			err[0] = '\0';
		rc = handshake(ep, fd, deadline, err, errlen);
	}
	if (!rc) {
		kvn_tcp_tune_socket(fd);
		*out = fd;
		return 0;
	}
	close(fd);
	if (rc == -EACCES || rc == -EPROTO)
		return rc;
	if (rc == -ETIMEDOUT)
		kvn_seterr(-EINVAL, err, errlen,
			   "tcp: peer %s accepted the connection but did not answer "
			   "within %d ms (is it a kvnode node?)",
			   ep->peer, timeout_ms);
	else if (err && errlen && !err[0])
		kvn_seterr(-EINVAL, err, errlen,
			   "tcp: peer %s: %s during the hello (is it a kvnode node?)", ep->peer,
			   strerror(-rc));
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
kvn_tcp_op_connect(struct kvn_transport *tp, const char *peer, int timeout_ms,
		   struct kvn_tp_ep **out, char *err, size_t errlen)
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
	kvn_tcp_kick(tp);
	kvn_debug("tcp", "connected to peer %s (%d connection%s)", ep->peer, ep->nconns,
		  ep->nconns > 1 ? "s" : "");
	*out = ep;
	return 0;
}

/* The close is handed to the progress thread: between two batches of epoll events (when no
 * event it fetched is left to handle) it fails the reads, takes the sockets out of epoll,
 * closes them and runs the callbacks; only then is the endpoint marked closed, and unlinked and
 * freed here. Freeing it while the progress thread could still hold an event or a pointer for
 * it must never happen. After tcp_close has stopped the thread, kvn_tcp_read_shutdown did all that
 * already. */
void
kvn_tcp_ep_close(struct kvn_tp_ep *ep)
{
	if (!ep)
		return;
	struct kvn_transport *tp = ep->tp;
	pthread_mutex_lock(&tp->lock);
	pthread_mutex_lock(&ep->lock);
	ep->closing = true;
	pthread_mutex_unlock(&ep->lock);
	kvn_tcp_kick(tp);
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
	if (kvn_tcp_on_progress_thread(ep->tp))
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
	uint64_t base = mr->addr, p = (uintptr_t)rd->local;
	return p >= base && rd->len <= mr->len && p - base <= mr->len - rd->len;
}

int
kvn_tcp_read(struct kvn_tp_ep *ep, struct kvn_read *reads, size_t n)
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
			op->msg = kvn_tcp_fmt_msg(
			    "tcp: read of %" PRIu64 " bytes from peer %s: the local "
			    "buffer %p is not inside the read's local_mr (register it "
			    "with this transport)",
			    rd->len, ep->peer, rd->local);
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
			rc = kvn_tcp_q_push(&ep->subq, (struct chunk){op, LOCAL_FAIL, 0});
			continue;
		}
		uint64_t len = op->rd->len;
		for (uint64_t off = 0; !rc && (off < len || (!len && !off)); off += TCP_MAX_MSG) {
			uint64_t l = len - off < TCP_MAX_MSG ? len - off : TCP_MAX_MSG;
			rc = kvn_tcp_q_push(&ep->subq, (struct chunk){op, off, l});
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
				kvn_tcp_mr_put(ops[i].local_mr);
			free(ops[i].msg);
		}
		free(b);
		return rc;
	}
	pthread_mutex_unlock(&ep->lock);
	kvn_tcp_kick(tp);
	return 0;
}
