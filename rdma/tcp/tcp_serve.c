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

#include "core/log.h"
#include "core/netaddr.h"
#include "rdma/tcp/tcp.h"

/* Requests buffered per connection before the responder stops reading more: bounds memory
 * while letting a reader keep hundreds of reads in flight. */
#define IN_CAP (512 * TCP_REQ_SIZE)
/* Bytes sent to one connection before the thread turns to the others. */
#define SEND_BUDGET (8u << 20)

/* Where a connection is in the set-up of rdma/tcp/tcp.h's protocol. */
enum hs_state {
	HS_HELLO, /* waiting for the reader's hello */
	HS_PROOF, /* challenge sent, waiting for the reader's proof */
	HS_DONE,  /* authenticated: serving requests */
};

struct tcp_serve_conn {
	struct tcp_pollable p; /* first: epoll events point here */
	struct tcp_serve_conn *next;
	char peer[80];
	enum hs_state hs;
	uint64_t hs_deadline; /* ms: the set-up must be done by then */
	uint8_t nonce_r[KVN_AUTH_NONCE], nonce_o[KVN_AUTH_NONCE];
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
kvn_tcp_op_listen(struct kvn_transport *tp, const char *addr, char *bound, size_t boundlen,
		  char *err, size_t errlen)
{
	if (tp->listener.fd >= 0)
		return kvn_seterr(-EALREADY, err, errlen, "tcp: already listening on %s",
				  tp->bound);
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
		return kvn_seterr(rc, err, errlen, "tcp: listener on %s: %s", addr, strerror(-rc));
	}
	snprintf(tp->bound, sizeof(tp->bound), strchr(host, ':') ? "[%s]:%u" : "%s:%u", host,
		 bport);
	tp->listener.fd = fd;
	rc = kvn_tcp_epoll_set(tp, &tp->listener, EPOLLIN);
	if (rc < 0) {
		close(fd);
		tp->listener.fd = -1;
		return kvn_seterr(rc, err, errlen, "tcp: epoll for listener %s: %s", tp->bound,
				  strerror(-rc));
	}
	if (bound)
		snprintf(bound, boundlen, "%s", tp->bound);
	kvn_info("tcp", "serving reads of registered memory on %s", tp->bound);
	return 0;
}

#define COUNT(tp, field) __atomic_fetch_add(&(tp)->st.field, 1, __ATOMIC_RELAXED)
/* How long accept stays off after EMFILE/ENFILE: descriptors free up as connections close, and
 * retrying at once would spin on the ready listener. */
#define ACCEPT_PAUSE_MS 100

static void
conn_close(struct kvn_transport *tp, struct tcp_serve_conn *c, const char *why)
{
	if (why)
		kvn_debug("tcp", "reader %s: closing its connection: %s", c->peer, why);
	kvn_tcp_epoll_del(tp, &c->p);
	close(c->p.fd);
	if (c->mr)
		kvn_tcp_mr_put(c->mr);
	for (struct tcp_serve_conn **pp = &tp->serve_conns; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	tp->nserve--;
	__atomic_store_n(&tp->st.conns, tp->nserve, __ATOMIC_RELAXED);
	free(c);
}

/* At the cap, a reader still in set-up makes room (the one that started first): it has not
 * proved anything, so strangers opening connections cannot lock out authenticated readers.
 * When every connection is authenticated, the newcomer is the one turned away. */
static bool
make_room(struct kvn_transport *tp)
{
	struct tcp_serve_conn *victim = NULL;
	for (struct tcp_serve_conn *c = tp->serve_conns; c; c = c->next)
		if (c->hs != HS_DONE && (!victim || c->hs_deadline <= victim->hs_deadline))
			victim = c;
	static struct kvn_ratelimit rl;
	uint64_t missed;
	if (kvn_ratelimit_ok(&rl, 1000, &missed))
		kvn_warn("tcp",
			 "%u readers on %s (transport_max_connections): %s (%llu more not logged)",
			 tp->cfg.max_conns, tp->bound,
			 victim ? "dropping the oldest one not yet authenticated"
				: "refusing a new one",
			 (unsigned long long)missed);
	COUNT(tp, refused_full);
	if (!victim)
		return false;
	conn_close(tp, victim, "over transport_max_connections");
	return true;
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
			if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
				return;
			static struct kvn_ratelimit rl;
			uint64_t missed;
			int e = errno;
			COUNT(tp, accept_errors);
			if (kvn_ratelimit_ok(&rl, 1000, &missed))
				kvn_warn("tcp", "accept on %s: %s%s (%llu more not logged)", tp->bound,
					 strerror(e),
					 e == EMFILE || e == ENFILE
					     ? ": out of file descriptors (raise `ulimit -n` or "
					       "lower transport_max_connections); pausing accept"
					     : "",
					 (unsigned long long)missed);
			/* The listener stays ready while the backlog holds connections: leave it
			 * out of epoll for a while instead of spinning on it. */
			tp->listen_paused_until = kvn_now_ms() + ACCEPT_PAUSE_MS;
			kvn_tcp_epoll_del(tp, &tp->listener);
			return;
		}
		if (tp->nserve >= tp->cfg.max_conns && !make_room(tp)) {
			close(fd);
			continue;
		}
		struct tcp_serve_conn *c = calloc(1, sizeof(*c));
		if (!c) {
			kvn_warn("tcp", "out of memory accepting a reader on %s", tp->bound);
			COUNT(tp, accept_errors);
			close(fd);
			continue;
		}
		c->p.kind = TCP_P_SERVE;
		c->p.fd = fd;
		c->hs = HS_HELLO;
		c->hs_deadline = kvn_now_ms() + (uint64_t)tp->cfg.hello_timeout_ms;
		kvn_sockaddr_format((struct sockaddr *)&ss, 0, c->peer, sizeof(c->peer));
		kvn_tcp_tune_socket(fd);
		c->next = tp->serve_conns;
		tp->serve_conns = c;
		tp->nserve++;
		__atomic_store_n(&tp->st.conns, tp->nserve, __ATOMIC_RELAXED);
		COUNT(tp, accepted);
		if (kvn_tcp_epoll_set(tp, &c->p, EPOLLIN) < 0)
			conn_close(tp, c, "epoll_ctl failed");
		else
			kvn_debug("tcp", "reader %s connected to %s", c->peer, tp->bound);
	}
}

void
kvn_tcp_serve_tick(struct kvn_transport *tp, uint64_t now)
{
	if (tp->listen_paused_until && now >= tp->listen_paused_until) {
		tp->listen_paused_until = 0;
		if (kvn_tcp_epoll_set(tp, &tp->listener, EPOLLIN) <
		    0) /* retried at the next tick */
			tp->listen_paused_until = now + ACCEPT_PAUSE_MS;
	}
	for (struct tcp_serve_conn *c = tp->serve_conns, *next; c; c = next) {
		next = c->next;
		if (c->hs == HS_DONE || now < c->hs_deadline)
			continue;
		static struct kvn_ratelimit rl;
		uint64_t missed;
		COUNT(tp, hello_timeouts);
		if (kvn_ratelimit_ok(&rl, 1000, &missed))
			kvn_info("tcp",
				 "reader %s did not authenticate within %d ms "
				 "(transport_hello_timeout_ms); closed (%llu more not logged)",
				 c->peer, tp->cfg.hello_timeout_ms, (unsigned long long)missed);
		conn_close(tp, c, "hello timeout");
	}
}

int
kvn_tcp_serve_timeout(struct kvn_transport *tp, uint64_t now)
{
	uint64_t next = tp->listen_paused_until;
	for (struct tcp_serve_conn *c = tp->serve_conns; c; c = c->next)
		if (c->hs != HS_DONE && (!next || c->hs_deadline < next))
			next = c->hs_deadline;
	if (!next)
		return -1;
	return next <= now ? 0 : (int)(next - now < INT32_MAX ? next - now : INT32_MAX);
}

void
kvn_tcp_serve_stats(struct kvn_transport *tp, struct kvn_transport_stats *out)
{
	out->conns = __atomic_load_n(&tp->st.conns, __ATOMIC_RELAXED);
	out->accepted = __atomic_load_n(&tp->st.accepted, __ATOMIC_RELAXED);
	out->refused_full = __atomic_load_n(&tp->st.refused_full, __ATOMIC_RELAXED);
	out->hello_timeouts = __atomic_load_n(&tp->st.hello_timeouts, __ATOMIC_RELAXED);
	out->auth_refused = __atomic_load_n(&tp->st.auth_refused, __ATOMIC_RELAXED);
	out->accept_errors = __atomic_load_n(&tp->st.accept_errors, __ATOMIC_RELAXED);
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
	} else if (!(mr = kvn_tcp_mr_get(tp, req->rkey))) {
		resp.status = EACCES;
		resp.reason = TCP_UNKNOWN_RKEY;
	} else {
		uint64_t base = mr->addr;
		/* Overflow-safe: addr - base and len - ... never wrap once the first test holds. */
		if (req->addr < base || req->len > mr->len || req->addr - base > mr->len - req->len) {
			resp.status = EACCES;
			resp.reason = TCP_OUT_OF_RANGE;
			kvn_tcp_mr_put(mr);
			mr = NULL;
		}
	}
	if (resp.status) {
		kvn_debug("tcp",
			  "reader %s: refused read of %" PRIu64 " bytes at 0x%" PRIx64
			  " rkey 0x%08x: %s",
			  c->peer, req->len, req->addr, req->rkey, kvn_tcp_reason_str(resp.reason));
	} else {
		resp.len = req->len;
		c->mr = mr;
		c->payload = mr->base + (req->addr - mr->addr);
		c->pay_len = req->len;
		c->pay_off = 0;
	}
	kvn_tcp_resp_encode(&resp, c->hdr);
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
		kvn_tcp_mr_put(c->mr);
		c->mr = NULL;
	}
	c->hdr_len = c->hdr_off = 0;
	c->pay_len = c->pay_off = 0;
	return 1;
}

/* Sends a set-up message whole: the socket is fresh and each message is the only one in flight
 * in its direction, so it always fits. */
static int
send_all(struct tcp_serve_conn *c, const uint8_t *msg, size_t len)
{
	return send(c->p.fd, msg, len, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)len ? 0 : -EIO;
}

/* One step of the set-up (rdma/tcp/tcp.h). 1 when it is done, 0 when more bytes are needed,
 * negative when the connection is to be closed without serving anything. */
static int
do_handshake(struct kvn_transport *tp, struct tcp_serve_conn *c)
{
	size_t have = c->in_end - c->in_start;
	const uint8_t *m = c->in + c->in_start;
	struct tcp_hdr h;
	uint8_t out[TCP_CHALLENGE_SIZE];

	if (have < TCP_V2_HDR_SIZE)
		return 0;
	kvn_tcp_hdr_decode(m, have, &h);
	if (h.magic != TCP_MAGIC) {
		kvn_warn("tcp", "reader %s is not a kvnode tcp transport (bad hello); closing",
			 c->peer);
		return -EPROTO;
	}
	if (h.version != TCP_VERSION) {
		/* Answered at once, in the 8-byte header every version reads. */
		kvn_warn("tcp", "reader %s speaks protocol version %u, this node %u; closing",
			 c->peer, h.version, TCP_VERSION);
		kvn_tcp_hdr_encode(EPROTO, 0, out);
		send_all(c, out, TCP_V2_HDR_SIZE);
		return -EPROTO;
	}
	if (c->hs == HS_HELLO) {
		if (have < TCP_HELLO_SIZE)
			return 0;
		memcpy(c->nonce_r, m + TCP_HDR_SIZE, KVN_AUTH_NONCE);
		kvn_auth_nonce(c->nonce_o);
		kvn_tcp_hdr_encode(0, tp->auth.set ? TCP_F_TOKEN : 0, out);
		memcpy(out + TCP_HDR_SIZE, c->nonce_o, KVN_AUTH_NONCE);
		const struct kvn_auth_part owner[] = {{c->nonce_r, KVN_AUTH_NONCE},
						      {c->nonce_o, KVN_AUTH_NONCE}};
		kvn_auth_mac(&tp->auth, TCP_OWNER_LABEL, owner, 2,
			     out + TCP_HDR_SIZE + KVN_AUTH_NONCE);
		c->in_start += TCP_HELLO_SIZE;
		c->hs = HS_PROOF;
		return send_all(c, out, TCP_CHALLENGE_SIZE) ? -EIO : 0;
	}
	if (have < TCP_PROOF_SIZE)
		return 0;
	const struct kvn_auth_part reader[] = {{c->nonce_o, KVN_AUTH_NONCE},
					       {c->nonce_r, KVN_AUTH_NONCE}};
	uint32_t status = 0;
	if (tp->auth.set && (!(h.flags & TCP_F_TOKEN) ||
			     !kvn_auth_verify(&tp->auth, TCP_READER_LABEL, reader, 2,
					      m + TCP_HDR_SIZE, KVN_AUTH_MAC))) {
		static struct kvn_ratelimit rl;
		COUNT(tp, auth_refused);
		kvn_tp_auth_log_refusal(&rl, "tcp", c->peer, tp->bound,
					h.flags & TCP_F_TOKEN ? "its proof does not check"
							      : "it has none, this node has one");
		status = EACCES;
	}
	c->in_start += TCP_PROOF_SIZE;
	kvn_tcp_hdr_encode(status, 0, out);
	if (send_all(c, out, TCP_VERDICT_SIZE))
		return -EIO;
	if (status)
		return -(int)status;
	c->hs = HS_DONE;
	return 1;
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
		if (c->hs != HS_DONE) {
			int rc = do_handshake(tp, c);
			if (rc < 0) {
				conn_close(tp, c,
					   rc == -EACCES ? "auth_token refused" : "bad hello");
				return;
			}
			if (rc == 0 && c->in_end - c->in_start >= TCP_V2_HDR_SIZE &&
			    c->in_end - c->in_start >= (c->hs == HS_HELLO ? TCP_HELLO_SIZE
									  : TCP_PROOF_SIZE))
				continue; /* a step was taken and the next message is here too */
		}
		if (c->hs == HS_DONE && c->in_end - c->in_start >= TCP_REQ_SIZE) {
			struct tcp_req req;
			kvn_tcp_req_decode(c->in + c->in_start, &req);
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
	if (kvn_tcp_epoll_set(tp, &c->p, ev) < 0)
		conn_close(tp, c, "epoll_ctl failed");
}

void
kvn_tcp_serve_event(struct kvn_transport *tp, struct tcp_pollable *p, uint32_t events)
{
	(void)events;
	if (p->kind == TCP_P_LISTEN)
		accept_all(tp);
	else
		serve(tp, (struct tcp_serve_conn *)p);
}

void
kvn_tcp_serve_drop_dead(struct kvn_transport *tp)
{
	struct tcp_serve_conn *c = tp->serve_conns, *next;
	for (; c; c = next) {
		next = c->next;
		if (c->mr && atomic_load(&c->mr->dead))
			conn_close(tp, c, "its region was deregistered mid-read");
	}
}

void
kvn_tcp_serve_shutdown(struct kvn_transport *tp)
{
	while (tp->serve_conns)
		conn_close(tp, tp->serve_conns, NULL);
	kvn_tcp_epoll_del(tp, &tp->listener);
}
