/* TCP transport, owner side: the responder. On the progress thread it accepts readers, checks
 * each request's (addr, len, rkey) against the registrations and streams the bytes straight
 * from registered memory; a refused request gets an error response and the connection goes on. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/uio.h>
#include <unistd.h>

#include "node/log.h"
#include "node/netaddr.h"
#include "rdma/tcp.h"

/* Requests buffered per connection before the responder stops reading more: bounds memory
 * while letting a reader keep hundreds of reads in flight. */
#define IN_CAP (512 * TCP_REQ_SIZE)
/* Bytes sent to one connection before the thread turns to the others. */
#define SEND_BUDGET (8u << 20)

struct tcp_serve_conn {
	struct tcp_pollable p; /* first: epoll events point here */
	struct tcp_serve_conn *next;
	char peer[80];
	bool hello_done;
	uint8_t in[IN_CAP];
	size_t in_start, in_end;
	/* The response being sent: header then payload from mr. */
	uint8_t hdr[TCP_RESP_SIZE];
	size_t hdr_len, hdr_off;
	const char *payload;
	uint64_t pay_len, pay_off;
	struct kvn_tp_mr *mr; /* held while its payload streams */
};

int
tcp_listen(struct kvn_transport *tp, const char *addr, char *bound, size_t boundlen, char *err,
	   size_t errlen)
{
	if (tp->listener.fd >= 0)
		return kvn_seterr(err, errlen, "tcp: already listening on %s", tp->bound), -EALREADY;
	char host[KVN_HOST_MAX];
	uint16_t port, bport = 0;
	int rc = kvn_hostport_parse(addr, host, &port, err, errlen);
	if (rc < 0)
		return rc;
	int fd = kvn_tcp_listen(host, port, 128, &bport, err, errlen);
	if (fd < 0)
		return fd;
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
		rc = -errno;
		close(fd);
		return kvn_seterr(err, errlen, "tcp: listener on %s: %s", addr, strerror(-rc)), rc;
	}
	snprintf(tp->bound, sizeof(tp->bound), strchr(host, ':') ? "[%s]:%u" : "%s:%u", host,
		 bport);
	tp->listener.fd = fd;
	rc = tcp_epoll_set(tp, &tp->listener, EPOLLIN);
	if (rc < 0) {
		close(fd);
		tp->listener.fd = -1;
		return kvn_seterr(err, errlen, "tcp: epoll for listener %s: %s", tp->bound,
				  strerror(-rc)),
		       rc;
	}
	if (bound)
		snprintf(bound, boundlen, "%s", tp->bound);
	kvn_info("tcp", "serving reads of registered memory on %s", tp->bound);
	return 0;
}

static void
conn_close(struct kvn_transport *tp, struct tcp_serve_conn *c, const char *why)
{
	if (why)
		kvn_debug("tcp", "reader %s: closing its connection: %s", c->peer, why);
	tcp_epoll_del(tp, &c->p);
	close(c->p.fd);
	if (c->mr)
		tcp_mr_put(c->mr);
	for (struct tcp_serve_conn **pp = &tp->serve_conns; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	free(c);
}

static void
accept_all(struct kvn_transport *tp)
{
	for (;;) {
		struct sockaddr_storage ss;
		socklen_t sslen = sizeof(ss);
		int fd = accept4(tp->listener.fd, (struct sockaddr *)&ss, &sslen,
				 SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				kvn_warn("tcp", "accept on %s: %s", tp->bound, strerror(errno));
			return;
		}
		struct tcp_serve_conn *c = calloc(1, sizeof(*c));
		if (!c) {
			kvn_warn("tcp", "out of memory accepting a reader on %s", tp->bound);
			close(fd);
			continue;
		}
		c->p.kind = TCP_P_SERVE;
		c->p.fd = fd;
		kvn_sockaddr_format((struct sockaddr *)&ss, 0, c->peer, sizeof(c->peer));
		tcp_tune_socket(fd);
		c->next = tp->serve_conns;
		tp->serve_conns = c;
		if (tcp_epoll_set(tp, &c->p, EPOLLIN) < 0)
			conn_close(tp, c, "epoll_ctl failed");
		else
			kvn_debug("tcp", "reader %s connected to %s", c->peer, tp->bound);
	}
}

/* Checks one request and makes it the current response. */
static void
start_response(struct kvn_transport *tp, struct tcp_serve_conn *c, const struct tcp_req *req)
{
	struct tcp_resp resp = { .seq = req->seq };
	struct kvn_tp_mr *mr = NULL;
	if (req->op != TCP_REQ_READ) {
		resp.status = EPROTO;
		resp.reason = TCP_BAD_OP;
	} else if (req->len == 0) {
		resp.status = EINVAL;
		resp.reason = TCP_ZERO_LEN;
	} else if (req->len > TCP_MAX_MSG) {
		resp.status = EMSGSIZE;
		resp.reason = TCP_TOO_LONG;
	} else if (!(mr = tcp_mr_get(tp, req->rkey))) {
		resp.status = EACCES;
		resp.reason = TCP_UNKNOWN_RKEY;
	} else {
		uint64_t base = (uint64_t)(uintptr_t)mr->base;
		/* Overflow-safe: addr - base and len - ... never wrap once the first test holds. */
		if (req->addr < base || req->len > mr->len || req->addr - base > mr->len - req->len) {
			resp.status = EACCES;
			resp.reason = TCP_OUT_OF_RANGE;
			tcp_mr_put(mr);
			mr = NULL;
		}
	}
	if (resp.status) {
		kvn_debug("tcp", "reader %s: refused read of %" PRIu64 " bytes at 0x%" PRIx64
			  " rkey 0x%08x: %s", c->peer, req->len, req->addr, req->rkey,
			  tcp_reason_str(resp.reason));
	} else {
		resp.len = req->len;
		c->mr = mr;
		c->payload = (const char *)(uintptr_t)req->addr;
		c->pay_len = req->len;
		c->pay_off = 0;
	}
	tcp_resp_encode(&resp, c->hdr);
	c->hdr_len = TCP_RESP_SIZE;
	c->hdr_off = 0;
}

/* Sends what it can of the current response. 1 when it is done, 0 when the socket is full,
 * negative errno when the connection failed. */
static int
send_response(struct tcp_serve_conn *c, uint64_t *budget)
{
	while (c->hdr_off < c->hdr_len || c->pay_off < c->pay_len) {
		struct iovec iov[2];
		int n = 0;
		if (c->hdr_off < c->hdr_len)
			iov[n++] = (struct iovec){ c->hdr + c->hdr_off, c->hdr_len - c->hdr_off };
		if (c->pay_off < c->pay_len)
			iov[n++] = (struct iovec){ (void *)(c->payload + c->pay_off),
						   c->pay_len - c->pay_off };
		struct msghdr msg = { .msg_iov = iov, .msg_iovlen = (size_t)n };
		ssize_t w = sendmsg(c->p.fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN ? 0 : -errno;
		}
		size_t h = c->hdr_len - c->hdr_off;
		if ((size_t)w <= h) {
			c->hdr_off += (size_t)w;
		} else {
			c->hdr_off = c->hdr_len;
			c->pay_off += (size_t)w - h;
		}
		if ((uint64_t)w >= *budget)
			return 0;
		*budget -= (uint64_t)w;
	}
	if (c->mr) {
		tcp_mr_put(c->mr);
		c->mr = NULL;
	}
	c->hdr_len = c->hdr_off = 0;
	c->pay_len = c->pay_off = 0;
	return 1;
}

/* Reads the hello; answers it. 1 done, 0 need more, negative on a bad hello, a refused
 * auth_token or an error: the connection is then closed without serving anything. */
static int
do_hello(struct kvn_transport *tp, struct tcp_serve_conn *c)
{
	size_t have = c->in_end - c->in_start;
	if (have < TCP_HELLO_SIZE)
		return 0;
	const uint8_t *h = c->in + c->in_start;
	uint32_t magic = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 |
			 (uint32_t)h[3] << 24;
	uint32_t ver = ((uint32_t)h[4] | (uint32_t)h[5] << 8);
	uint32_t flags = ((uint32_t)h[6] | (uint32_t)h[7] << 8);
	uint32_t status = 0;
	if (magic != TCP_MAGIC) {
		kvn_warn("tcp", "reader %s is not a kvnode tcp transport (bad hello); closing", c->peer);
		return -EPROTO;
	}
	if (ver != TCP_VERSION) {
		/* Answered at once: an older reader's hello has no proof to wait for. */
		kvn_warn("tcp", "reader %s speaks protocol version %u, this node %u; closing", c->peer,
			 ver, TCP_VERSION);
		status = EPROTO;
	} else if (have < TCP_HELLO_REQ_SIZE) {
		return 0;
	} else if (!kvn_tp_auth_ok(&tp->auth, flags & TCP_HELLO_TOKEN, h + TCP_HELLO_SIZE)) {
		static struct kvn_ratelimit rl;
		uint64_t missed;
		if (kvn_ratelimit_ok(&rl, 1000, &missed))
			kvn_warn("tcp",
				 "reader %s refused on %s: wrong or missing auth_token (set the same "
				 "auth_token on every node); nothing served (%llu more refusals not "
				 "logged)",
				 c->peer, tp->bound, (unsigned long long)missed);
		status = EACCES;
	}
	uint8_t reply[TCP_HELLO_SIZE];
	tcp_hello_encode(status, reply);
	/* The socket is fresh and empty, so 8 bytes always fit. */
	if (send(c->p.fd, reply, sizeof(reply), MSG_NOSIGNAL | MSG_DONTWAIT) != sizeof(reply))
		return -EIO;
	c->in_start += status == EPROTO ? TCP_HELLO_SIZE : TCP_HELLO_REQ_SIZE;
	c->hello_done = true;
	return status ? -(int)status : 1;
}

/* Serves one connection until its socket blocks or its budget is spent. */
static void
serve(struct kvn_transport *tp, struct tcp_serve_conn *c)
{
	uint64_t budget = SEND_BUDGET;
	for (;;) {
		if (c->hdr_len) {
			int rc = send_response(c, &budget);
			if (rc < 0) {
				conn_close(tp, c, strerror(-rc));
				return;
			}
			if (rc == 0) {
				break;
			}
		}
		if (!c->hello_done) {
			int rc = do_hello(tp, c);
			if (rc < 0) {
				conn_close(tp, c,
					   rc == -EACCES ? "auth_token refused" : "bad hello");
				return;
			}
		}
		if (c->hello_done && c->in_end - c->in_start >= TCP_REQ_SIZE) {
			struct tcp_req req;
			tcp_req_decode(c->in + c->in_start, &req);
			c->in_start += TCP_REQ_SIZE;
			start_response(tp, c, &req);
			continue;
		}
		if (c->in_start == c->in_end) {
			c->in_start = c->in_end = 0;
		} else if (c->in_start > IN_CAP / 2) {
			memmove(c->in, c->in + c->in_start, c->in_end - c->in_start);
			c->in_end -= c->in_start;
			c->in_start = 0;
		}
		if (c->in_end == IN_CAP)
			break; /* cannot happen: a full buffer holds whole requests */
		ssize_t r = recv(c->p.fd, c->in + c->in_end, IN_CAP - c->in_end, MSG_DONTWAIT);
		if (r == 0) {
			conn_close(tp, c, "reader closed the connection");
			return;
		}
		if (r < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			conn_close(tp, c, strerror(errno));
			return;
		}
		c->in_end += (size_t)r;
	}
	/* Wait for room to send while a response is unfinished; stop taking requests while
	 * the buffer of unanswered ones is full, so a reader that never reads its responses
	 * cannot make us buffer without bound. */
	uint32_t ev = 0;
	if (c->hdr_len)
		ev |= EPOLLOUT;
	if (c->in_end < IN_CAP || !c->hdr_len)
		ev |= EPOLLIN;
	if (tcp_epoll_set(tp, &c->p, ev) < 0)
		conn_close(tp, c, "epoll_ctl failed");
}

void
tcp_serve_event(struct kvn_transport *tp, struct tcp_pollable *p, uint32_t events)
{
	(void)events;
	if (p->kind == TCP_P_LISTEN)
		accept_all(tp);
	else
		serve(tp, (struct tcp_serve_conn *)p);
}

void
tcp_serve_drop_dead(struct kvn_transport *tp)
{
	struct tcp_serve_conn *c = tp->serve_conns, *next;
	for (; c; c = next) {
		next = c->next;
		if (c->mr && atomic_load(&c->mr->dead))
			conn_close(tp, c, "its region was deregistered mid-read");
	}
}

void
tcp_serve_shutdown(struct kvn_transport *tp)
{
	while (tp->serve_conns)
		conn_close(tp, tp->serve_conns, NULL);
	tcp_epoll_del(tp, &tp->listener);
}
