/* TCP transport: one-sided READ semantics over TCP for machines without RDMA. This file holds
 * the instance (progress thread, registrations, addresses, wire codec) and the ops table; the
 * reading side is kvn_tcp_read.c and the owner's responder tcp_serve.c. */
#include <endian.h>
#include <errno.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "core/le.h"
#include "core/log.h"
#include "rdma/rdma.h"
#include "rdma/tcp/tcp.h"

/* ---------------------------------------------------------------------------------------------
 * Wire codec
 * ------------------------------------------------------------------------------------------- */

void
kvn_tcp_req_encode(const struct tcp_req *r, uint8_t out[TCP_REQ_SIZE])
{
	kvn_le_put32(out, r->op);
	kvn_le_put32(out + 4, r->rkey);
	kvn_le_put64(out + 8, r->seq);
	kvn_le_put64(out + 16, r->addr);
	kvn_le_put64(out + 24, r->len);
}

void
kvn_tcp_req_decode(const uint8_t in[TCP_REQ_SIZE], struct tcp_req *r)
{
	r->op = kvn_le_get32(in);
	r->rkey = kvn_le_get32(in + 4);
	r->seq = kvn_le_get64(in + 8);
	r->addr = kvn_le_get64(in + 16);
	r->len = kvn_le_get64(in + 24);
}

void
kvn_tcp_resp_encode(const struct tcp_resp *r, uint8_t out[TCP_RESP_SIZE])
{
	kvn_le_put32(out, r->status);
	kvn_le_put32(out + 4, r->reason);
	kvn_le_put64(out + 8, r->seq);
	kvn_le_put64(out + 16, r->len);
}

void
kvn_tcp_resp_decode(const uint8_t in[TCP_RESP_SIZE], struct tcp_resp *r)
{
	r->status = kvn_le_get32(in);
	r->reason = kvn_le_get32(in + 4);
	r->seq = kvn_le_get64(in + 8);
	r->len = kvn_le_get64(in + 16);
}

void
kvn_tcp_hdr_encode(uint32_t status, uint32_t flags, uint8_t out[TCP_HDR_SIZE])
{
	kvn_le_put32(out, TCP_MAGIC);
	kvn_le_put32(out + 4, TCP_VERSION | status << 16);
	kvn_le_put32(out + 8, flags);
	kvn_le_put32(out + 12, 0);
}

void
kvn_tcp_hdr_decode(const uint8_t *in, size_t have, struct tcp_hdr *h)
{
	uint32_t w = kvn_le_get32(in + 4);
	h->magic = kvn_le_get32(in);
	h->version = w & 0xffff;
	h->status = w >> 16;
	h->flags = have >= TCP_HDR_SIZE ? kvn_le_get32(in + 8) : 0;
}

const char *
kvn_tcp_reason_str(uint32_t reason)
{
	switch (reason) {
	case TCP_UNKNOWN_RKEY:
		return "rkey is not registered there (never registered, deregistered, or forged)";
	case TCP_OUT_OF_RANGE:
		return "range is outside the registered region";
	case TCP_ZERO_LEN:
		return "zero-length read";
	case TCP_TOO_LONG:
		return "request longer than the protocol's maximum message";
	case TCP_BAD_OP:
		return "unknown request type";
	}
	return "refused";
}

/* ---------------------------------------------------------------------------------------------
 * Addresses and sockets
 * ------------------------------------------------------------------------------------------- */

/* Small frames go out at once (requests are latency-bound); the payload path relies on the
 * kernel's buffer autotuning, which on loopback beats any fixed size we could pick. */
void
kvn_tcp_tune_socket(int fd)
{
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* ---------------------------------------------------------------------------------------------
 * Progress thread
 * ------------------------------------------------------------------------------------------- */

pid_t
kvn_tcp_gettid(void)
{
	return (pid_t)syscall(SYS_gettid);
}

bool
kvn_tcp_on_progress_thread(const struct kvn_transport *tp)
{
	return tp->thread_started && pthread_equal(pthread_self(), tp->thread);
}

/* Makes the progress thread look at the endpoints. Posters on the progress thread itself (read
 * callbacks) need no eventfd write: the thread checks work after every batch of events. */
void
kvn_tcp_kick(struct kvn_transport *tp)
{
	if (atomic_exchange(&tp->work, 1) == 0 && !kvn_tcp_on_progress_thread(tp)) {
		uint64_t one = 1;
		ssize_t w = write(tp->wake.fd, &one, sizeof(one));
		(void)w; /* a full counter still wakes the thread */
	}
}

int
kvn_tcp_epoll_set(struct kvn_transport *tp, struct tcp_pollable *p, uint32_t events)
{
	if (p->events == events)
		return 0;
	struct epoll_event ev = { .events = events, .data.ptr = p };
	uint32_t old = p->events;
	int op = old ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
	/* Stored first: once in epoll, p is the progress thread's (listen adds the listener
	 * from another thread, and an early reader makes the thread look at p->events). */
	p->events = events;
	if (epoll_ctl(tp->epfd, op, p->fd, &ev) < 0) {
		p->events = old;
		return -errno;
	}
	return 0;
}

void
kvn_tcp_epoll_del(struct kvn_transport *tp, struct tcp_pollable *p)
{
	if (p->events)
		epoll_ctl(tp->epfd, EPOLL_CTL_DEL, p->fd, NULL);
	p->events = 0;
}

static void *
progress(void *arg)
{
	struct kvn_transport *tp = arg;
	struct epoll_event evs[64];
	uint64_t last_check = kvn_now_ms();
	while (!atomic_load(&tp->stop)) {
		/* Stalled connections are only looked for while reads are outstanding; readers
		 * still authenticating and a paused listener have deadlines of their own. */
		int timeout = kvn_tcp_read_busy(tp) || atomic_load(&tp->dereg_waiting) ? 50 : -1;
		int serve_ms = kvn_tcp_serve_timeout(tp, kvn_now_ms());
		if (serve_ms >= 0 && (timeout < 0 || serve_ms < timeout))
			timeout = serve_ms;
		if (atomic_load(&tp->work))
			timeout = 0; /* a read callback posted more: send it before sleeping */
		int n = epoll_wait(tp->epfd, evs, 64, timeout);
		if (n < 0 && errno != EINTR) {
			kvn_err("tcp", "epoll_wait failed: %s; the transport stops serving",
				strerror(errno));
			break;
		}
		for (int i = 0; i < n; i++) {
			struct tcp_pollable *p = evs[i].data.ptr;
			switch (p->kind) {
			case TCP_P_WAKE: {
				uint64_t v;
				ssize_t r = read(p->fd, &v, sizeof(v));
				(void)r;
				break;
			}
			case TCP_P_LISTEN:
			case TCP_P_SERVE:
				kvn_tcp_serve_event(tp, p, evs[i].events);
				break;
			case TCP_P_READ:
				kvn_tcp_read_event(tp, p, evs[i].events);
				break;
			}
		}
		if (atomic_load(&tp->dereg_waiting)) {
			kvn_tcp_serve_drop_dead(tp);
			kvn_tcp_read_drop_dead(tp);
		}
		uint64_t now = kvn_now_ms();
		kvn_tcp_serve_tick(tp, now);
		if (atomic_exchange(&tp->work, 0) || now - last_check >= 50) {
			kvn_tcp_read_work(tp, now);
			last_check = now;
		}
	}
	kvn_tcp_read_shutdown(tp);
	kvn_tcp_serve_shutdown(tp);
	return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Instance
 * ------------------------------------------------------------------------------------------- */

static void tcp_close(struct kvn_transport *tp);

static int
tcp_probe(const struct kvn_transport_cfg *cfg, char *err, size_t errlen)
{
	(void)cfg;
	(void)err;
	(void)errlen;
	return 0; /* TCP works wherever sockets do */
}

static int
tcp_open(const struct kvn_transport_cfg *cfg, struct kvn_transport **out, char *err, size_t errlen)
{
	struct kvn_transport *tp = calloc(1, sizeof(*tp));
	if (!tp)
		return -ENOMEM;
	int rc = kvn_transport_cfg_read(cfg, &tp->cfg, err, errlen);
	if (rc) {
		free(tp);
		return rc;
	}
	kvn_auth_init(&tp->auth, tp->cfg.auth_token);
	tp->cfg.auth_token = NULL; /* the caller's string: not kept */
	if (tp->cfg.timeout_ms <= 0)
		tp->cfg.timeout_ms = KVN_TRANSPORT_TIMEOUT_MS;
	if (!tp->cfg.max_conns)
		tp->cfg.max_conns = 1024;
	if (tp->cfg.hello_timeout_ms <= 0)
		tp->cfg.hello_timeout_ms = 5000;
	/* Two sockets by default: on loopback a second stream lets the kernel copy on two cores
	 * and measured 32 MiB reads clearly faster than one; more gained little on 2 cores. */
	if (tp->cfg.conns_per_peer <= 0)
		tp->cfg.conns_per_peer = 2;
	if (tp->cfg.conns_per_peer > TCP_MAX_CONNS) {
		rc = kvn_seterr(-EINVAL, err, errlen, "tcp: conns_per_peer %d is more than %d",
				tp->cfg.conns_per_peer, TCP_MAX_CONNS);
		free(tp);
		return rc;
	}
	pthread_mutex_init(&tp->lock, NULL);
	pthread_cond_init(&tp->cond, NULL);
	tp->wake.kind = TCP_P_WAKE;
	tp->listener.kind = TCP_P_LISTEN;
	tp->listener.fd = -1;
	tp->epfd = epoll_create1(EPOLL_CLOEXEC);
	tp->wake.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (tp->epfd < 0 || tp->wake.fd < 0 ||
	    (rc = kvn_tcp_epoll_set(tp, &tp->wake, EPOLLIN)) < 0) {
		rc = -errno;
		kvn_seterr(rc, err, errlen, "tcp: cannot set up epoll/eventfd: %s",
			   strerror(errno));
		goto fail;
	}
	rc = -pthread_create(&tp->thread, NULL, progress, tp);
	if (rc) {
		kvn_seterr(rc, err, errlen, "tcp: cannot start the progress thread: %s",
			   strerror(-rc));
		goto fail;
	}
	tp->thread_started = true;
	*out = tp;
	return 0;
fail:
	tcp_close(tp);
	return rc;
}

static void
tcp_close(struct kvn_transport *tp)
{
	if (!tp)
		return;
	if (tp->thread_started) {
		atomic_store(&tp->stop, true);
		uint64_t one = 1;
		ssize_t w = write(tp->wake.fd, &one, sizeof(one));
		(void)w;
		pthread_join(tp->thread, NULL);
	}
	while (tp->eps) {
		struct kvn_tp_ep *ep = tp->eps;
		kvn_tcp_ep_close(ep); /* unlinks it; the thread already failed its reads */
	}
	for (size_t i = 0; i < tp->nregions; i++) {
		kvn_devreg_release(&tp->regions[i]->rel);
		free(tp->regions[i]);
	}
	free(tp->regions);
	if (tp->listener.fd >= 0)
		close(tp->listener.fd);
	if (tp->wake.fd >= 0)
		close(tp->wake.fd);
	if (tp->epfd >= 0)
		close(tp->epfd);
	pthread_cond_destroy(&tp->cond);
	pthread_mutex_destroy(&tp->lock);
	free(tp);
}

/* ---------------------------------------------------------------------------------------------
 * Registrations
 * ------------------------------------------------------------------------------------------- */

/* host: the bytes; addr: what reads name them by (host, or the device range staged there). */
static int
add_region(struct kvn_transport *tp, void *host, uint64_t addr, size_t len, struct kvn_tp_mr **out,
	   struct kvn_mem_desc *desc, char *err, size_t errlen)
{
	struct kvn_tp_mr *mr = calloc(1, sizeof(*mr));
	if (!mr)
		return -ENOMEM;
	mr->tp = tp;
	mr->base = host;
	mr->addr = addr;
	mr->len = len;
	pthread_mutex_lock(&tp->lock);
	if (tp->nregions == tp->capregions) {
		size_t cap = tp->capregions ? tp->capregions * 2 : 8;
		void *r = realloc(tp->regions, cap * sizeof(*tp->regions));
		if (!r) {
			pthread_mutex_unlock(&tp->lock);
			free(mr);
			return -ENOMEM;
		}
		tp->regions = r;
		tp->capregions = cap;
	}
	/* A fresh random rkey, unique among live registrations: a peer holding an old or guessed
	 * one gets a refusal rather than someone else's bytes. 0 is never handed out. */
	for (bool unique = false; !unique;) {
		if (getrandom(&mr->rkey, sizeof(mr->rkey), 0) != sizeof(mr->rkey)) {
			pthread_mutex_unlock(&tp->lock);
			free(mr);
			return kvn_seterr(-EIO, err, errlen,
					  "tcp: getrandom for an rkey failed: %s", strerror(errno));
		}
		unique = mr->rkey != 0;
		for (size_t i = 0; unique && i < tp->nregions; i++)
			unique = tp->regions[i]->rkey != mr->rkey;
	}
	tp->regions[tp->nregions++] = mr;
	pthread_mutex_unlock(&tp->lock);
	desc->addr = addr;
	desc->len = len;
	desc->rkey = mr->rkey;
	*out = mr;
	return 0;
}

static int
tcp_reg_mem(struct kvn_transport *tp, void *ptr, size_t len, enum kvn_mem_kind kind,
	    struct kvn_tp_mr **out, struct kvn_mem_desc *desc, char *err, size_t errlen)
{
	if (kind != KVN_MEM_HOST)
		return kvn_seterr(-EOPNOTSUPP, err, errlen,
				  "tcp: cannot register GPU memory at %p by itself: register it "
				  "with reg_dev and a host staging area, or use the verbs "
				  "transport",
				  ptr);
	if (!ptr || !len)
		return kvn_seterr(-EINVAL, err, errlen,
				  "tcp: cannot register an empty region (%p, %zu bytes)", ptr, len);
	return add_region(tp, ptr, (uintptr_t)ptr, len, out, desc, err, errlen);
}

/* Device memory: the CPU sends every byte, so of the ladder only host staging can work. */
struct staged {
	struct kvn_transport *tp;
	struct kvn_tp_mr *mr;
	struct kvn_mem_desc desc;
};

static int
way_host(void *t, void *host, void *iova, size_t len, void **reg, char *err, size_t errlen)
{
	struct staged *st = t;
	int rc = add_region(st->tp, host, (uintptr_t)iova, len, &st->mr, &st->desc, err, errlen);
	*reg = st->mr;
	return rc;
}

static int
tcp_reg_dev(struct kvn_transport *tp, void *ptr, size_t len, const struct kvn_dev_mem *src,
	    struct kvn_tp_mr **out, struct kvn_mem_desc *desc, struct kvn_reg_report *report,
	    char *err, size_t errlen)
{
	struct kvn_devreg_facts f = {
	    .transport = "tcp",
	    .staging_offered = src && KVN_ABI_HAS(src, staging) && src->staging,
	    .dmabuf_offered = src && KVN_ABI_HAS(src, dmabuf) && src->dmabuf,
	};
	struct kvn_devreg_plan plan;
	struct staged st = {.tp = tp};
	struct kvn_devreg_ways w = {.t = &st, .host = way_host};
	struct kvn_devreg_release rel;
	void *reg;
	kvn_devreg_plan(&f, &plan);
	int rc = kvn_devreg_run(&plan, &f, src, ptr, len, &w, &reg, &rel, report, err, errlen);
	if (rc < 0)
		return rc;
	st.mr->rel = rel; /* only dereg and close read it */
	*desc = st.desc;
	*out = st.mr;
	return 0;
}

struct kvn_tp_mr *
kvn_tcp_mr_get(struct kvn_transport *tp, uint32_t rkey)
{
	struct kvn_tp_mr *found = NULL;
	pthread_mutex_lock(&tp->lock);
	for (size_t i = 0; i < tp->nregions; i++) {
		if (tp->regions[i]->rkey == rkey) {
			found = tp->regions[i];
			atomic_fetch_add(&found->users, 1);
			break;
		}
	}
	pthread_mutex_unlock(&tp->lock);
	return found;
}

/* Drops one user. dereg sets dead before it looks at users and we look at dead after dropping
 * ours (both seq_cst), so at least one side sees the other and the last user always wakes a
 * waiting dereg. */
void
kvn_tcp_mr_put(struct kvn_tp_mr *mr)
{
	/* mr may be freed by tcp_dereg the moment users reaches 0: nothing of it is touched after
	 * the decrement. A dereg that waits counts itself in dereg_waiting before it looks at
	 * users, under tp->lock, so either it sees 0 or this broadcast reaches it. */
	struct kvn_transport *tp = mr->tp;
	if (atomic_fetch_sub(&mr->users, 1) == 1 && atomic_load(&tp->dereg_waiting)) {
		pthread_mutex_lock(&tp->lock);
		pthread_cond_broadcast(&tp->cond);
		pthread_mutex_unlock(&tp->lock);
	}
}

static void
tcp_dereg(struct kvn_tp_mr *mr)
{
	if (!mr)
		return;
	struct kvn_transport *tp = mr->tp;
	pthread_mutex_lock(&tp->lock);
	for (size_t i = 0; i < tp->nregions; i++) {
		if (tp->regions[i] == mr) {
			tp->regions[i] = tp->regions[--tp->nregions];
			break;
		}
	}
	atomic_store(&mr->dead, true);
	if (atomic_load(&mr->users) > 0) {
		/* Someone streams from it or reads into it: the progress thread cuts those
		 * connections (their reads fail) so the memory is untouched once we return. */
		atomic_fetch_add(&tp->dereg_waiting, 1);
		kvn_tcp_kick(tp);
		while (atomic_load(&mr->users) > 0)
			pthread_cond_wait(&tp->cond, &tp->lock);
		atomic_fetch_sub(&tp->dereg_waiting, 1);
	}
	pthread_mutex_unlock(&tp->lock);
	kvn_devreg_release(&mr->rel); /* nothing streams from it any more */
	free(mr);
}

const struct kvn_transport_ops kvn_transport_tcp = {
    KVN_TRANSPORT_OPS_INIT,
    .name = "tcp",
    .probe = tcp_probe,
    .open = tcp_open,
    .close = tcp_close,
    .reg_mem = tcp_reg_mem,
    .dereg = tcp_dereg,
    .listen = kvn_tcp_op_listen,
    .connect = kvn_tcp_op_connect,
    .ep_close = kvn_tcp_ep_close,
    .read = kvn_tcp_read,
    .stats = kvn_tcp_serve_stats,
    .reg_dev = tcp_reg_dev,
};
