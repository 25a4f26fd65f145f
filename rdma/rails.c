/* Rails: one transport instance per device, registrations on each, reads sliced over them with
 * failover (rdma/rails.h, docs/architecture.md §12.6). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/le.h"
#include "core/log.h"
#include "rdma/rails.h"

#define LOG		 "rails"
#define SLICE_DEFAULT	 (64u << 10)
#define RETRY_MS_DEFAULT 2000
#define MPOL_F_NODE	 (1 << 0)
#define MPOL_F_ADDR	 (1 << 1)

struct rail {
	struct kvn_transport *tp;
	char device[64];
	char listen[KVN_RAILS_ADDR_MAX + 1];
	char addr[KVN_RAILS_ADDR_MAX + 1];
	int numa;
	_Atomic uint64_t slices, bytes, errors, reissued, downs;
	_Atomic uint64_t down_until; /* the latest retry time an endpoint set (ns) */
};

struct kvn_rails_mr {
	struct kvn_rails *r;
	struct kvn_tp_mr *mr[KVN_RAILS_MAX];
	uint32_t near; /* rails near the memory: the ones its slices go over */
};

struct kvn_rails {
	const struct kvn_transport_ops *ops;
	size_t n;
	struct rail rail[KVN_RAILS_MAX];
	size_t slice_min;
	uint64_t retry_ns;
	bool any_numa;
	_Atomic(struct kvn_rails_mr *) regs[KVN_RAILS_REGS_MAX]; /* found by rail 0's mr */
	pthread_mutex_t reg_lock;
};

struct kvn_rails_ep {
	struct kvn_rails *r;
	size_t n; /* rails paired with the peer's */
	_Atomic(struct kvn_tp_ep *) ep[KVN_RAILS_MAX];
	_Atomic uint64_t down_until[KVN_RAILS_MAX]; /* 0: up */
	_Atomic bool probing[KVN_RAILS_MAX];	    /* a caller is trying it again */
	_Atomic unsigned fails[KVN_RAILS_MAX];	    /* retries that failed in a row */
	_Atomic uint32_t inflight[KVN_RAILS_MAX];   /* slices posted, not completed */
	char peer[KVN_RAILS_MAX][KVN_RAILS_ADDR_MAX + 1];
	int timeout_ms;
	pthread_mutex_t connect_lock;
	_Atomic unsigned next; /* the rail a read's first slice goes to, rotating */
	_Atomic bool closing;
	size_t nregions, peer_rails;
	struct kvn_mem_desc *regions; /* region-major, peer_rails per region */
};

/* Set while a slice's callback runs on this thread: reads posted from there never connect. */
static _Thread_local bool in_callback;

/* ---------------------------------------------------------------------------------------------
 * Instances, listeners, registrations
 * ------------------------------------------------------------------------------------------- */

int
kvn_rails_open(const struct kvn_rails_cfg *cfg, struct kvn_rails **out, char *err, size_t errlen)
{
	*out = NULL;
	if (!cfg->nrails || cfg->nrails > KVN_RAILS_MAX)
		return kvn_seterr(-EINVAL, err, errlen, "%zu rails: want 1 to %d", cfg->nrails,
				  KVN_RAILS_MAX);
	struct kvn_rails *r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	r->ops = cfg->ops;
	r->slice_min = cfg->slice_min ? cfg->slice_min : SLICE_DEFAULT;
	if (r->slice_min < KVN_RAILS_SLICE_MIN)
		r->slice_min = KVN_RAILS_SLICE_MIN;
	r->retry_ns = (uint64_t)(cfg->retry_ms > 0 ? cfg->retry_ms : RETRY_MS_DEFAULT) * 1000000u;
	r->any_numa = cfg->any_numa;
	pthread_mutex_init(&r->reg_lock, NULL);
	for (size_t i = 0; i < cfg->nrails; i++) {
		const struct kvn_rail_spec *s = &cfg->rail[i];
		struct rail *rl = &r->rail[i];
		struct kvn_transport_cfg tc = *cfg->tcfg;
		tc.rdma_device = s->device;
		snprintf(rl->device, sizeof(rl->device), "%s", s->device ? s->device : "");
		snprintf(rl->listen, sizeof(rl->listen), "%s", s->listen ? s->listen : "");
		rl->numa = s->numa_node;
		char e[400] = "";
		int rc = r->ops->open(&tc, &rl->tp, e, sizeof(e));
		if (rc < 0) {
			kvn_seterr(rc, err, errlen, "rail %zu%s%s: %s", i, *rl->device ? " " : "",
				   rl->device, e);
			kvn_rails_close(r);
			return rc;
		}
		r->n++;
	}
	*out = r;
	return 0;
}

void
kvn_rails_close(struct kvn_rails *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->n; i++)
		r->ops->close(r->rail[i].tp);
	pthread_mutex_destroy(&r->reg_lock);
	free(r);
}

size_t
kvn_rails_count(const struct kvn_rails *r)
{
	return r->n;
}

struct kvn_transport *
kvn_rails_tp(struct kvn_rails *r, size_t rail)
{
	return rail < r->n ? r->rail[rail].tp : NULL;
}

const struct kvn_transport_ops *
kvn_rails_ops(const struct kvn_rails *r)
{
	return r->ops;
}

int
kvn_rails_listen(struct kvn_rails *r, char *err, size_t errlen)
{
	for (size_t i = 0; i < r->n; i++) {
		struct rail *rl = &r->rail[i];
		char e[400] = "";
		int rc =
		    r->ops->listen(rl->tp, rl->listen, rl->addr, sizeof(rl->addr), e, sizeof(e));
		if (rc < 0)
			return kvn_seterr(rc, err, errlen, "rail %zu%s%s: %s", i,
					  *rl->device ? " " : "", rl->device, e);
	}
	return 0;
}

const char *
kvn_rails_addr(const struct kvn_rails *r, size_t rail)
{
	return rail < r->n ? r->rail[rail].addr : "";
}

/* The NUMA node of the page at p (faulting it in), -1 when the kernel does not say. */
static int
numa_of(void *p)
{
	int node = -1;
	if (syscall(SYS_get_mempolicy, &node, NULL, 0UL, p,
		    (unsigned long)(MPOL_F_NODE | MPOL_F_ADDR)))
		return -1;
	return node;
}

/* The rails near memory on node (all when the node, or every rail's, is unknown, or any_numa). */
static uint32_t
near_rails(const struct kvn_rails *r, int node)
{
	uint32_t all = (uint32_t)((1ull << r->n) - 1), near = 0;
	for (size_t i = 0; i < r->n; i++)
		if (r->rail[i].numa == node || r->rail[i].numa < 0)
			near |= 1u << i;
	return r->any_numa || node < 0 || !near ? all : near;
}

/* The host area rail 0's staging gave (ctx): the other rails register the same one, so that the
 * one copy the owner keeps current is what every rail serves. */
static int
shared_area(void *ctx, void *ptr, size_t len, void **host, char *err, size_t errlen)
{
	(void)ptr, (void)len, (void)err, (void)errlen;
	*host = ctx;
	return 0;
}

static void
shared_area_done(void *ctx, void *ptr, void *host)
{
	(void)ctx, (void)ptr, (void)host; /* rail 0's registration lets it go */
}

int
kvn_rails_reg(struct kvn_rails *r, void *ptr, size_t len, const struct kvn_dev_mem *src,
	      struct kvn_rails_mr **out, struct kvn_mem_desc *desc, struct kvn_reg_report *report,
	      char *err, size_t errlen)
{
	*out = NULL;
	struct kvn_rails_mr *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->r = r;
	int rc = 0;
	struct kvn_reg_report rep0 = {KVN_REG_REPORT_INIT};
	struct kvn_dev_mem shared; /* rails after 0 when rail 0 staged: its one host area */
	for (size_t i = 0; i < r->n && !rc; i++) {
		struct rail *rl = &r->rail[i];
		char e[768] = "";
		if (src) {
			struct kvn_reg_report rep = {KVN_REG_REPORT_INIT};
			const struct kvn_dev_mem *use = src;
			if (i > 0 && rep0.method == KVN_REG_STAGING) {
				shared = *src;
				shared.ctx = rep0.staging;
				shared.staging = shared_area;
				shared.staging_done = shared_area_done;
				use = &shared;
			}
			rc = r->ops->reg_dev(rl->tp, ptr, len, use, &m->mr[i], &desc[i],
					     i == 0 ? &rep0 : &rep, e, sizeof(e));
			if (i == 0 && report)
				memcpy(report, &rep0,
				       report->size < sizeof(rep0) ? report->size : sizeof(rep0));
		} else {
			rc = r->ops->reg_mem(rl->tp, ptr, len, KVN_MEM_HOST, &m->mr[i], &desc[i], e,
					     sizeof(e));
		}
		if (rc < 0 && r->n == 1)
			kvn_seterr(rc, err, errlen, "%s", e);
		else if (rc < 0)
			kvn_seterr(rc, err, errlen, "rail %zu%s%s: %s", i, *rl->device ? " " : "",
				   rl->device, e);
	}
	pthread_mutex_lock(&r->reg_lock);
	size_t at = KVN_RAILS_REGS_MAX;
	for (size_t i = 0; !rc && i < KVN_RAILS_REGS_MAX && at == KVN_RAILS_REGS_MAX; i++)
		if (!atomic_load(&r->regs[i]))
			at = i;
	if (!rc && at == KVN_RAILS_REGS_MAX)
		rc = kvn_seterr(-ENOSPC, err, errlen, "more than %d registrations on the rails",
				KVN_RAILS_REGS_MAX);
	if (!rc) {
		m->near = src ? (uint32_t)((1ull << r->n) - 1) : near_rails(r, numa_of(ptr));
		atomic_store(&r->regs[at], m);
	}
	pthread_mutex_unlock(&r->reg_lock);
	if (rc) {
		for (size_t i = 0; i < r->n; i++)
			if (m->mr[i])
				r->ops->dereg(m->mr[i]);
		free(m);
		return rc;
	}
	*out = m;
	return 0;
}

void
kvn_rails_dereg(struct kvn_rails_mr *m)
{
	if (!m)
		return;
	struct kvn_rails *r = m->r;
	pthread_mutex_lock(&r->reg_lock);
	for (size_t i = 0; i < KVN_RAILS_REGS_MAX; i++)
		if (atomic_load(&r->regs[i]) == m)
			atomic_store(&r->regs[i], NULL);
	pthread_mutex_unlock(&r->reg_lock);
	for (size_t i = 0; i < r->n; i++)
		r->ops->dereg(m->mr[i]);
	free(m);
}

struct kvn_tp_mr *
kvn_rails_mr_tp(const struct kvn_rails_mr *m, size_t rail)
{
	return rail < m->r->n ? m->mr[rail] : NULL;
}

/* The registration whose rail-0 mr is mr; NULL when none is. */
static const struct kvn_rails_mr *
reg_of(struct kvn_rails *r, const struct kvn_tp_mr *mr)
{
	for (size_t i = 0; i < KVN_RAILS_REGS_MAX; i++) {
		const struct kvn_rails_mr *m =
		    atomic_load_explicit(&r->regs[i], memory_order_acquire);
		if (m && m->mr[0] == mr)
			return m;
	}
	return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Endpoints
 * ------------------------------------------------------------------------------------------- */

static void rail_down(struct kvn_rails_ep *ep, size_t i, const char *why);

int
kvn_rails_connect(struct kvn_rails *r, const struct kvn_rails_peer *peer, int timeout_ms,
		  struct kvn_rails_ep **out, char *err, size_t errlen)
{
	*out = NULL;
	struct kvn_rails_ep *ep = calloc(1, sizeof(*ep));
	size_t pr = peer->nrails ? peer->nrails : 1;
	if (!ep)
		return -ENOMEM;
	ep->r = r;
	ep->n = r->n < pr ? r->n : pr;
	ep->timeout_ms = timeout_ms;
	ep->peer_rails = pr;
	pthread_mutex_init(&ep->connect_lock, NULL);
	if (peer->nregions) {
		ep->regions = malloc(peer->nregions * pr * sizeof(*ep->regions));
		if (!ep->regions) {
			kvn_rails_ep_close(ep);
			return -ENOMEM;
		}
		memcpy(ep->regions, peer->desc, peer->nregions * pr * sizeof(*ep->regions));
		ep->nregions = peer->nregions;
	}
	int first = 0;
	size_t up = 0;
	for (size_t i = 0; i < ep->n; i++) {
		snprintf(ep->peer[i], sizeof(ep->peer[i]), "%s", peer->addr[i]);
		struct kvn_tp_ep *te = NULL;
		char e[512] = "";
		int rc = r->ops->connect(r->rail[i].tp, ep->peer[i], timeout_ms, &te, e, sizeof(e));
		if (rc == 0) {
			atomic_store(&ep->ep[i], te);
			up++;
			continue;
		}
		if (!first) {
			first = rc;
			kvn_seterr(rc, err, errlen, "%s", e);
		}
		if (ep->n > 1) /* out until its retry, and counted so (stats, metrics) */
			rail_down(ep, i, e);
	}
	if (!up) {
		kvn_rails_ep_close(ep);
		return first;
	}
	*out = ep;
	return 0;
}

void
kvn_rails_ep_close(struct kvn_rails_ep *ep)
{
	if (!ep)
		return;
	atomic_store(&ep->closing, true); /* slices failing now are not reissued */
	for (size_t i = 0; i < ep->n; i++) {
		struct kvn_tp_ep *te = atomic_load(&ep->ep[i]);
		if (te)
			ep->r->ops->ep_close(te);
	}
	pthread_mutex_destroy(&ep->connect_lock);
	free(ep->regions);
	free(ep);
}

size_t
kvn_rails_ep_rails(const struct kvn_rails_ep *ep)
{
	return ep->n;
}

/* Takes rail i out of ep until its retry time: rail_retry_ms after it broke, doubling with each
 * retry that fails (up to 64 times), so a rail that stays dead costs its retry's reconnect
 * rarely. */
static void
rail_down(struct kvn_rails_ep *ep, size_t i, const char *why)
{
	struct rail *rl = &ep->r->rail[i];
	uint64_t now = kvn_now_ns();
	bool retry = atomic_exchange(&ep->probing[i], false);
	unsigned f = retry ? atomic_fetch_add(&ep->fails[i], 1) + 1 : 0;
	uint64_t wait = ep->r->retry_ns << (f < 6 ? f : 6), until = now + wait;
	if (retry) {
		atomic_store(&ep->down_until[i], until);
	} else {
		if (atomic_exchange(&ep->down_until[i], until) > now)
			return; /* already out: counted and logged once */
		atomic_store(&ep->fails[i], 0);
		atomic_fetch_add_explicit(&rl->downs, 1, memory_order_relaxed);
	}
	uint64_t cur = atomic_load(&rl->down_until);
	while (cur < until && !atomic_compare_exchange_weak(&rl->down_until, &cur, until))
		;
	if (retry)
		kvn_debug(LOG, "rail %zu to %s: still out (%s); next try in %llu ms", i,
			  ep->peer[i], why, (unsigned long long)(wait / 1000000u));
	else
		kvn_warn(LOG, "rail %zu%s%s to %s is out for %llu ms: %s", i,
			 *rl->device ? " " : "", rl->device, ep->peer[i],
			 (unsigned long long)(wait / 1000000u), why);
}

/* A slice completed on rail i: a retry of it worked. */
static void
rail_ok(struct kvn_rails_ep *ep, size_t i)
{
	if (!atomic_load_explicit(&ep->probing[i], memory_order_relaxed) ||
	    !atomic_exchange(&ep->probing[i], false))
		return;
	atomic_store(&ep->fails[i], 0);
	struct rail *rl = &ep->r->rail[i];
	kvn_info(LOG, "rail %zu%s%s to %s is back", i, *rl->device ? " " : "", rl->device,
		 ep->peer[i]);
}

/* Whether rail i of ep takes slices now. A rail out past its retry time is tried again by one
 * caller (the one that moves its time on), connecting it first when it never connected; from a
 * callback it waits for a caller. The retry's reconnect runs on that caller's thread, bounded
 * by the transport's timeout. */
static bool
rail_live(struct kvn_rails_ep *ep, size_t i)
{
	uint64_t until = atomic_load_explicit(&ep->down_until[i], memory_order_relaxed);
	struct kvn_rails *r = ep->r;
	if (!until)
		return atomic_load_explicit(&ep->ep[i], memory_order_acquire) != NULL;
	if (in_callback || kvn_now_ns() < until)
		return false;
	/* one caller retries; the others see it out a while longer */
	if (!atomic_compare_exchange_strong(&ep->down_until[i], &until, kvn_now_ns() + r->retry_ns))
		return false;
	atomic_store(&ep->probing[i], true);
	if (!atomic_load(&ep->ep[i])) {
		pthread_mutex_lock(&ep->connect_lock);
		struct kvn_tp_ep *te = NULL;
		char e[512] = "";
		int rc = atomic_load(&ep->ep[i])
			     ? 0
			     : r->ops->connect(r->rail[i].tp, ep->peer[i], ep->timeout_ms, &te, e,
					       sizeof(e));
		if (te)
			atomic_store(&ep->ep[i], te);
		pthread_mutex_unlock(&ep->connect_lock);
		if (rc < 0) {
			rail_down(ep, i, e);
			return false;
		}
	}
	atomic_store(&ep->down_until[i], 0);
	return true;
}

/* ---------------------------------------------------------------------------------------------
 * Reads
 * ------------------------------------------------------------------------------------------- */

struct call;

/* One caller's read: done once every slice is. */
struct parent {
	struct kvn_read *rd;
	_Atomic uint32_t left;
	_Atomic int status;
	char msg[400]; /* the first failure's: written before its slice counts down */
};

/* A piece of a parent on one rail; rd is what the rail's transport posts (in the call's array,
 * so that one rail's reads lie side by side). */
struct slice {
	struct kvn_read *rd;
	struct call *call;
	struct parent *p;
	uint64_t off; /* in the parent's read */
	int region;   /* of the peer's, -1: not in its table (rail 0 with the caller's rkey) */
	const struct kvn_rails_mr *lmr; /* NULL: the caller's local_mr (rail 0) */
	uint8_t rail;
	uint8_t tries;
	uint32_t tried; /* rails it has failed on */
};

/* One kvn_rails_read: freed when its last slice is done. */
struct call {
	struct kvn_rails_ep *ep;
	_Atomic size_t left;
	size_t nparents, nslices;
	struct parent *par;
	struct slice *sl;
	struct kvn_read *rds;
};

static bool
rail_failure(int status)
{
	return status == -ECONNRESET || status == -ETIMEDOUT || status == -ENOTCONN ||
	       status == -EIO || status == -EHOSTUNREACH || status == -ECONNREFUSED ||
	       status == -ENODEV || status == -ECONNABORTED || status == -EPIPE;
}

/* Fills s->rd for rail i: the same bytes, that rail's registration and the owner's rkey. */
static void
slice_on(struct kvn_rails_ep *ep, struct slice *s, size_t i)
{
	const struct kvn_read *u = s->p->rd;
	s->rail = (uint8_t)i;
	s->rd->local = (uint8_t *)u->local + s->off;
	s->rd->local_mr = s->lmr ? s->lmr->mr[i] : u->local_mr;
	if (s->region >= 0) {
		const struct kvn_mem_desc *d0 = &ep->regions[(size_t)s->region * ep->peer_rails];
		s->rd->remote_addr = d0[i].addr + (u->remote_addr - d0[0].addr) + s->off;
		s->rd->rkey = d0[i].rkey;
	} else {
		s->rd->remote_addr = u->remote_addr + s->off;
		s->rd->rkey = u->rkey;
	}
}

static void
call_slice_done(struct call *c)
{
	if (atomic_fetch_sub_explicit(&c->left, 1, memory_order_acq_rel) == 1)
		free(c);
}

/* A slice is final (status 0 or its failure): the parent completes with its last one. */
static void
slice_final(struct slice *s, int status, const char *msg)
{
	struct parent *p = s->p;
	struct call *c = s->call;
	if (status) {
		int zero = 0;
		if (atomic_compare_exchange_strong(&p->status, &zero, status))
			snprintf(p->msg, sizeof(p->msg), "%s", msg ? msg : kvn_strerror(status));
	}
	if (atomic_fetch_sub_explicit(&p->left, 1, memory_order_acq_rel) == 1) {
		int st = atomic_load(&p->status);
		p->rd->status = st;
		p->rd->done(p->rd, st, st ? p->msg : NULL);
	}
	call_slice_done(c);
}

/* Another live rail for s (one it has not failed on, within those its memory is near first);
 * -1 when none. */
static int
other_rail(struct kvn_rails_ep *ep, const struct slice *s)
{
	uint32_t near = s->lmr ? s->lmr->near : 1;
	for (int pass = 0; pass < 2; pass++)
		for (size_t i = 0; i < ep->n; i++) {
			bool in = near & (1u << i);
			if ((pass == 0) != in || (s->tried & (1u << i)) || s->region < 0)
				continue;
			if (rail_live(ep, i))
				return (int)i;
		}
	return -1;
}

static void slice_cb(struct kvn_read *rd, int status, const char *msg);

/* Posts s on another rail after it failed on its own with status; final when none takes it. */
static void
reissue(struct slice *s, int status, const char *msg)
{
	struct kvn_rails_ep *ep = s->call->ep;
	struct rail *from = &ep->r->rail[s->rail];
	for (;;) {
		s->tried |= 1u << s->rail;
		int i = atomic_load(&ep->closing) ? -1 : other_rail(ep, s);
		if (i < 0)
			break;
		slice_on(ep, s, (size_t)i);
		s->rd->done = slice_cb;
		s->rd->ctx = s;
		atomic_fetch_add_explicit(&ep->inflight[i], 1, memory_order_relaxed);
		int rc = ep->r->ops->read(atomic_load(&ep->ep[i]), s->rd, 1);
		if (rc == 0) {
			atomic_fetch_add_explicit(&from->reissued, 1, memory_order_relaxed);
			return;
		}
		atomic_fetch_sub_explicit(&ep->inflight[i], 1, memory_order_relaxed);
		rail_down(ep, (size_t)i, kvn_strerror(rc));
	}
	slice_final(s, status, msg);
}

static void
slice_cb(struct kvn_read *rd, int status, const char *msg)
{
	struct slice *s = rd->ctx;
	struct kvn_rails_ep *ep = s->call->ep;
	struct rail *rl = &ep->r->rail[s->rail];
	atomic_fetch_sub_explicit(&ep->inflight[s->rail], 1, memory_order_relaxed);
	/* a progress thread: what runs from here (the caller's callback included) never connects */
	bool was = in_callback;
	in_callback = true;
	if (status == 0) {
		rail_ok(ep, s->rail);
		atomic_fetch_add_explicit(&rl->slices, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&rl->bytes, rd->len, memory_order_relaxed);
		slice_final(s, 0, NULL);
	} else {
		atomic_fetch_add_explicit(&rl->errors, 1, memory_order_relaxed);
		if (!rail_failure(status) || atomic_load(&ep->closing)) {
			slice_final(s, status, msg);
		} else {
			rail_down(ep, s->rail, msg ? msg : kvn_strerror(status));
			reissue(s, status, msg);
		}
	}
	in_callback = was;
}

/* The peer's region holding [addr, addr + len) under rail-0 rkey; -1 when none does. */
static int
region_of(const struct kvn_rails_ep *ep, uint32_t rkey, uint64_t addr, uint64_t len)
{
	for (size_t g = 0; g < ep->nregions; g++) {
		const struct kvn_mem_desc *d = &ep->regions[g * ep->peer_rails];
		if (d->rkey == rkey && addr >= d->addr && addr - d->addr <= d->len &&
		    len <= d->len - (addr - d->addr))
			return (int)g;
	}
	return -1;
}

/* The live rails of a read landing in m (near ones; all live ones when no near one is), in
 * order into live[]; how many. */
static size_t
live_rails(struct kvn_rails_ep *ep, const struct kvn_rails_mr *m, const bool *up, uint8_t *live)
{
	uint32_t near = m ? m->near : 1;
	size_t n = 0;
	for (size_t i = 0; i < ep->n; i++)
		if (up[i] && (near & (1u << i)))
			live[n++] = (uint8_t)i;
	for (size_t i = 0; !n && i < ep->n; i++)
		if (up[i])
			live[n++] = (uint8_t)i;
	return n;
}

int
kvn_rails_read(struct kvn_rails_ep *ep, struct kvn_read *reads, size_t n)
{
	struct kvn_rails *r = ep->r;
	if (!n)
		return 0;
	bool up[KVN_RAILS_MAX];
	size_t nup = 0;
	for (size_t i = 0; i < ep->n; i++)
		nup += up[i] = rail_live(ep, i);
	if (!nup) /* every rail is out: try them all, so the reads fail with the transport's why */
		for (size_t i = 0; i < ep->n; i++)
			nup += up[i] = atomic_load(&ep->ep[i]) != NULL;
	/* how many slices each read is cut into */
	size_t total = 0;
	uint32_t *k = malloc(n * sizeof(*k));
	if (!k)
		return -ENOMEM;
	for (size_t j = 0; j < n; j++) {
		size_t cut = reads[j].len / r->slice_min;
		k[j] = (uint32_t)(cut < 1 ? 1 : cut < nup ? cut : nup);
		total += k[j];
	}
	struct call *c = malloc(sizeof(*c) + n * sizeof(struct parent) +
				total * (sizeof(struct slice) + sizeof(struct kvn_read)));
	if (!c) {
		free(k);
		return -ENOMEM;
	}
	*c = (struct call){.ep = ep, .left = total, .nparents = n, .nslices = total};
	c->par = (struct parent *)(c + 1);
	c->sl = (struct slice *)(c->par + n);
	c->rds = (struct kvn_read *)(c->sl + total);
	/* cut, then place each rail's slices side by side for one post per rail */
	size_t per_rail[KVN_RAILS_MAX + 1] = {0};
	struct staged {
		struct slice s;
		struct kvn_read rd;
	} *tmp = malloc(total * sizeof(*tmp));
	if (!tmp) {
		free(c);
		free(k);
		return -ENOMEM;
	}
	uint32_t load[KVN_RAILS_MAX]; /* slices on each rail: in flight, and placed by this call */
	for (size_t i = 0; i < ep->n; i++)
		load[i] = atomic_load_explicit(&ep->inflight[i], memory_order_relaxed);
	size_t t = 0;
	for (size_t j = 0; j < n; j++) {
		struct kvn_read *u = &reads[j];
		struct parent *p = &c->par[j];
		*p = (struct parent){.rd = u, .left = k[j]};
		const struct kvn_rails_mr *m = reg_of(r, u->local_mr);
		int region = m ? region_of(ep, u->rkey, u->remote_addr, u->len) : -1;
		uint8_t live[KVN_RAILS_MAX];
		size_t nl = live_rails(ep, m, up, live);
		uint32_t cut = region < 0 || !nl ? 1 : k[j] < nl ? k[j] : (uint32_t)nl;
		/* With two slices a rail already queued, every rail is kept busy by whole READs:
		 * this one goes whole to the least loaded, and never waits for a slower rail's
		 * slice. Alone (a lone chunk, a light load) it is sliced over all of them. */
		size_t lightest = 0;
		uint32_t queued = 0;
		for (size_t q = 0; q < nl; q++) {
			queued += load[live[q]];
			if (load[live[q]] < load[live[lightest]])
				lightest = q;
		}
		bool busy = cut > 1 && queued >= 2 * nl;
		if (busy)
			cut = 1;
		if (cut != k[j]) { /* fewer: give the rest back */
			atomic_fetch_sub(&c->left, k[j] - cut);
			p->left = cut;
			total -= k[j] - cut;
		}
		unsigned first = atomic_fetch_add_explicit(&ep->next, 1, memory_order_relaxed);
		/* whole pages (cut > 1 only when each slice has slice_min), the rest in the last */
		uint64_t per = cut > 1 ? (u->len / cut) & ~(uint64_t)4095 : u->len;
		for (uint32_t q = 0; q < cut; q++, t++) {
			uint64_t off = per * q;
			struct slice *s = &tmp[t].s;
			*s = (struct slice){.rd = &tmp[t].rd,
					    .call = c,
					    .p = p,
					    .off = off,
					    .region = region,
					    .lmr = m};
			size_t rail = region < 0 || !nl ? 0
				      : busy		? live[lightest]
							: live[(first + q) % nl];
			load[rail]++;
			slice_on(ep, s, rail);
			s->rd->len = q + 1 == cut ? u->len - off : per;
			s->rd->done = slice_cb;
			per_rail[rail + 1]++;
		}
	}
	c->nslices = total;
	for (size_t i = 1; i <= KVN_RAILS_MAX; i++)
		per_rail[i] += per_rail[i - 1];
	size_t start[KVN_RAILS_MAX + 1];
	memcpy(start, per_rail, sizeof(start));
	for (size_t s = 0; s < total; s++) {
		size_t at = per_rail[tmp[s].s.rail]++;
		c->sl[at] = tmp[s].s;
		c->rds[at] = tmp[s].rd;
		c->sl[at].rd = &c->rds[at];
		c->rds[at].ctx = &c->sl[at];
	}
	free(tmp);
	free(k);
	/* one post per rail; a rail that takes none is out, and its slices go elsewhere */
	for (size_t i = 0; i < ep->n; i++) {
		size_t a = start[i], b = start[i + 1];
		if (a == b)
			continue;
		struct kvn_tp_ep *te = atomic_load(&ep->ep[i]);
		atomic_fetch_add_explicit(&ep->inflight[i], (uint32_t)(b - a),
					  memory_order_relaxed);
		int rc = te ? r->ops->read(te, &c->rds[a], b - a) : -ENOTCONN;
		if (rc == 0)
			continue;
		atomic_fetch_sub_explicit(&ep->inflight[i], (uint32_t)(b - a),
					  memory_order_relaxed);
		rail_down(ep, i, kvn_strerror(rc));
		atomic_fetch_add_explicit(&r->rail[i].errors, b - a, memory_order_relaxed);
		for (size_t s = a; s < b; s++) {
			char msg[160];
			snprintf(msg, sizeof(msg), "rail %zu to %s: posting failed: %s", i,
				 ep->peer[i], kvn_strerror(rc));
			reissue(&c->sl[s], rc, msg);
		}
	}
	return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Stats
 * ------------------------------------------------------------------------------------------- */

size_t
kvn_rails_stats(struct kvn_rails *r, struct kvn_rail_stats *out, size_t max)
{
	uint64_t now = kvn_now_ns();
	for (size_t i = 0; r && i < r->n && i < max; i++) {
		struct rail *rl = &r->rail[i];
		struct kvn_rail_stats *o = &out[i];
		memset(o, 0, sizeof(*o));
		snprintf(o->device, sizeof(o->device), "%s", rl->device);
		snprintf(o->addr, sizeof(o->addr), "%s", rl->addr);
		o->numa_node = rl->numa;
		o->down = now < atomic_load(&rl->down_until);
		o->slices = atomic_load_explicit(&rl->slices, memory_order_relaxed);
		o->bytes = atomic_load_explicit(&rl->bytes, memory_order_relaxed);
		o->errors = atomic_load_explicit(&rl->errors, memory_order_relaxed);
		o->reissued = atomic_load_explicit(&rl->reissued, memory_order_relaxed);
		o->downs = atomic_load_explicit(&rl->downs, memory_order_relaxed);
	}
	return r ? r->n : 0;
}

void
kvn_rails_listener_stats(struct kvn_rails *r, struct kvn_transport_stats *out)
{
	memset(out, 0, sizeof(*out));
	for (size_t i = 0; r && r->ops->stats && i < r->n; i++) {
		struct kvn_transport_stats s = {0};
		r->ops->stats(r->rail[i].tp, &s);
		out->conns += s.conns;
		out->accepted += s.accepted;
		out->refused_full += s.refused_full;
		out->hello_timeouts += s.hello_timeouts;
		out->auth_refused += s.auth_refused;
		out->accept_errors += s.accept_errors;
	}
}

/* ---------------------------------------------------------------------------------------------
 * The region blob
 * ------------------------------------------------------------------------------------------- */

#define DESC_BYTES 24

static void
put_desc(uint8_t *p, const struct kvn_mem_desc *d)
{
	kvn_le_put64(p, d->addr);
	kvn_le_put64(p + 8, d->len);
	kvn_le_put32(p + 16, d->rkey);
	kvn_le_put32(p + 20, 0);
}

static void
get_desc(const uint8_t *p, struct kvn_mem_desc *d)
{
	*d = (struct kvn_mem_desc){
	    .addr = kvn_le_get64(p), .len = kvn_le_get64(p + 8), .rkey = kvn_le_get32(p + 16)};
}

int
kvn_rails_blob_encode(const struct kvn_rails *r, const struct kvn_mem_desc *desc, size_t nregions,
		      uint8_t *out, size_t cap)
{
	size_t need = DESC_BYTES + 8 + nregions * r->n * DESC_BYTES;
	for (size_t i = 0; i < r->n; i++)
		need += 1 + strlen(r->rail[i].addr);
	if (!nregions || nregions > KVN_RAILS_PEER_REGIONS || need > cap)
		return -ENOSPC;
	uint8_t *p = out;
	put_desc(p, &desc[0]);
	p += DESC_BYTES;
	kvn_le_put32(p, KVN_RAILS_BLOB_MAGIC);
	p[4] = (uint8_t)r->n;
	p[5] = (uint8_t)nregions;
	kvn_le_put16(p + 6, 0);
	p += 8;
	for (size_t i = 0; i < r->n; i++) {
		size_t l = strlen(r->rail[i].addr);
		*p++ = (uint8_t)l;
		memcpy(p, r->rail[i].addr, l);
		p += l;
	}
	for (size_t g = 0; g < nregions * r->n; g++, p += DESC_BYTES)
		put_desc(p, &desc[g]);
	return (int)(p - out);
}

int
kvn_rails_blob_decode(const uint8_t *blob, size_t n, const char *data_addr,
		      struct kvn_rails_peer_buf *out)
{
	memset(&out->p, 0, sizeof(out->p));
	if (n < DESC_BYTES)
		return -EPROTO;
	out->p.desc = out->desc;
	if (n < DESC_BYTES + 8 || kvn_le_get32(blob + DESC_BYTES) != KVN_RAILS_BLOB_MAGIC) {
		/* a node before rails: one rail at its data address, rkeys as published */
		snprintf(out->addr[0], sizeof(out->addr[0]), "%s", data_addr ? data_addr : "");
		out->p.nrails = 1;
		out->p.addr[0] = out->addr[0];
		return 0;
	}
	const uint8_t *p = blob + DESC_BYTES, *end = blob + n;
	size_t nr = p[4], ng = p[5];
	if (!nr || nr > KVN_RAILS_MAX || !ng || ng > KVN_RAILS_PEER_REGIONS)
		return -EPROTO;
	p += 8;
	for (size_t i = 0; i < nr; i++) {
		if (p >= end || *p > KVN_RAILS_ADDR_MAX || (size_t)(end - p) < 1u + *p)
			return -EPROTO;
		memcpy(out->addr[i], p + 1, *p);
		out->addr[i][*p] = 0;
		if (strlen(out->addr[i]) != *p) /* a NUL inside the address */
			return -EPROTO;
		out->p.addr[i] = out->addr[i];
		p += 1 + *p;
	}
	if ((size_t)(end - p) < ng * nr * DESC_BYTES)
		return -EPROTO;
	for (size_t g = 0; g < ng * nr; g++, p += DESC_BYTES)
		get_desc(p, &out->desc[g]);
	out->p.nrails = nr;
	out->p.nregions = ng;
	return 0;
}
