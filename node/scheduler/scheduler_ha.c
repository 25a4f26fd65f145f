/* Schedulers that survive their host (docs/architecture.md §5.6): several `kvnode scheduler`
 * processes share one cluster in etcd; whoever creates /kvnode/CLUSTER/leader (a transaction
 * that succeeds only while the key does not exist) under its lease leads, the others watch the
 * key and stand by. The key's value is the leader's address, which nodes read and watch.
 *
 * The election runs on its own thread (etcd calls block); the loop learns of a change through
 * an eventfd and acts on it in kvn_sched_ha_poll: taking the lead loads the worker ids that
 * etcd holds (/kvnode/CLUSTER/workers/NAME = ID), stepping down closes every connection and
 * forgets members and directory (the nodes join the next leader and publish again). A leader
 * gives up its lead once its lease has been unconfirmed for TTL minus a margin, so that it has
 * stopped serving before etcd can let another take over: no two leaders. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"
#include "node/cluster/etcd.h"
#include "node/cluster/membership.h"
#include "node/scheduler/scheduler_int.h"

#define TTL_DEFAULT_S 5
#define RETRY_MS      500

struct kvn_sched_ha {
	struct kvn_etcd *etcd;
	char cluster[KVN_CF_NAME_MAX + 1];
	char leader_key[256], workers[256];
	char self[KVN_HOST_MAX + 8]; /* the leader key's value when this one leads */
	int ttl_s;
	int64_t margin_ms; /* a lead ends this long before its lease could lapse */
	int fd;		   /* eventfd: the election changed, the loop looks */
	pthread_t thread;
	bool started;

	pthread_mutex_t lock; /* everything below */
	pthread_cond_t cond;  /* stop */
	bool stop;
	bool won;		       /* the thread holds the leader key under its live lease */
	int64_t lease_until_ms;	       /* the lease lives at least until then, as last confirmed */
	char leader[KVN_HOST_MAX + 8]; /* who leads as last seen, "" unknown */
	uint64_t elections, stepdowns, failovers;
};

static void
notify(struct kvn_sched_ha *h)
{
	uint64_t one = 1;
	ssize_t n = write(h->fd, &one, sizeof(one));
	(void)n;
}

/* Waits ms or until stop; true when stopping. */
static bool
pause_ms(struct kvn_sched_ha *h, int64_t ms)
{
	struct timespec dl = kvn_deadline_in_ms(ms > 0 ? (uint64_t)ms : 0);
	pthread_mutex_lock(&h->lock);
	while (!h->stop && pthread_cond_timedwait(&h->cond, &h->lock, &dl) == 0)
		;
	bool stop = h->stop;
	pthread_mutex_unlock(&h->lock);
	return stop;
}

static void
saw_leader(struct kvn_sched_ha *h, const char *addr)
{
	pthread_mutex_lock(&h->lock);
	if (*h->leader && strcmp(h->leader, addr))
		h->failovers++;
	snprintf(h->leader, sizeof(h->leader), "%.*s", (int)sizeof(h->leader) - 1, addr);
	pthread_mutex_unlock(&h->lock);
}

static void
set_won(struct kvn_sched_ha *h, bool won, int64_t until, const char *why)
{
	pthread_mutex_lock(&h->lock);
	bool was = h->won;
	h->won = won;
	h->lease_until_ms = until;
	if (won && !was)
		h->elections++;
	if (!won && was)
		h->stepdowns++;
	pthread_mutex_unlock(&h->lock);
	if (won != was) {
		if (won)
			kvn_info(COMP, "leading cluster %s as %s (etcd lease of %d s)", h->cluster,
				 h->self, h->ttl_s);
		else
			kvn_warn(COMP, "no longer leading cluster %s: %s", h->cluster, why);
		notify(h);
	}
}

static void
log_etcd(const char *what, const char *err)
{
	static struct kvn_ratelimit rl;
	uint64_t missed;
	if (kvn_ratelimit_ok(&rl, 2000, &missed))
		kvn_warn(COMP, "%s: %s (%llu more etcd errors not logged)", what, err,
			 (unsigned long long)missed);
}

/* The election: a lease kept alive every TTL/3, the leader key created under it, or watched
 * while another holds it. */
static void *
ha_main(void *arg)
{
	struct kvn_sched_ha *h = arg;
	int64_t lease = 0, stale = 0, next_ka = 0, until = 0;
	const int64_t tick = h->ttl_s * 1000 / 3;
	char err[512];
	struct kvn_etcd_kv *cur = malloc(sizeof(*cur));
	if (!cur) {
		kvn_err(COMP, "cluster %s: out of memory: not taking part in the election",
			h->cluster);
		return NULL;
	}
	for (;;) {
		pthread_mutex_lock(&h->lock);
		bool stop = h->stop, won = h->won;
		pthread_mutex_unlock(&h->lock);
		if (stop)
			break;
		int64_t now = (int64_t)kvn_now_ms();
		if (won && now + h->margin_ms >= until) {
			set_won(h, false, 0, "etcd has not confirmed its lease in time");
			stale = lease,
			lease = 0; /* revoked once etcd answers: the key goes with it */
			continue;
		}
		if (stale) {
			int rc = kvn_etcd_lease_revoke(h->etcd, stale, err, sizeof(err));
			if (rc && rc != -ENOENT) {
				log_etcd("revoking the lease of the last lead", err);
				pause_ms(h, RETRY_MS);
				continue;
			}
			stale = 0;
		}
		if (!lease) {
			if (kvn_etcd_lease_grant(h->etcd, h->ttl_s, &lease, err, sizeof(err))) {
				log_etcd("granting a lease", err);
				lease = 0;
				pause_ms(h, RETRY_MS);
				continue;
			}
			until = now + h->ttl_s * 1000;
			next_ka = now + tick;
		}
		if (now >= next_ka) {
			int ttl = 0;
			int rc = kvn_etcd_lease_keepalive(h->etcd, lease, &ttl, err, sizeof(err));
			if (rc == -ENOENT) {
				set_won(h, false, 0, "its etcd lease expired");
				lease = 0;
				continue;
			}
			if (rc) {
				log_etcd("keeping the lease alive", err);
				next_ka = (int64_t)kvn_now_ms() + 200;
				continue;
			}
			until = now + (int64_t)ttl * 1000; /* from when it was sent */
			next_ka = now + tick;
			if (won) {
				pthread_mutex_lock(&h->lock);
				h->lease_until_ms = until;
				pthread_mutex_unlock(&h->lock);
			}
		}
		if (!won) {
			int rc = kvn_etcd_create(h->etcd, h->leader_key, h->self, lease, cur, err,
						 sizeof(err));
			if (rc < 0) {
				log_etcd("campaigning", err);
				pause_ms(h, RETRY_MS);
			} else if (rc == 1 || cur->lease == lease) {
				saw_leader(h, h->self);
				set_won(h, true, until, NULL);
			} else {
				saw_leader(h, cur->value);
				bool deleted;
				int64_t rev, wait = next_ka - (int64_t)kvn_now_ms();
				rc = kvn_etcd_watch(h->etcd, h->leader_key, cur->mod_rev + 1,
						    wait > 50 ? (int)wait : 50, &deleted, &rev, err,
						    sizeof(err));
				/* -ETIMEDOUT: not confirmed in time, as good as no change */
				if (rc < 0 && rc != -ETIMEDOUT) {
					log_etcd("watching the leader", err);
					pause_ms(h, RETRY_MS);
				}
			}
			continue;
		}
		/* Leading: the key must still be ours (an operator may have deleted it). */
		int rc = kvn_etcd_get(h->etcd, h->leader_key, cur, NULL, err, sizeof(err));
		if (rc == -ENOENT || (!rc && cur->lease != lease)) {
			set_won(h, false, 0, "its leader key was deleted or taken over in etcd");
			continue;
		}
		if (rc)
			log_etcd("reading the leader key", err);
		int64_t wake = next_ka < until - h->margin_ms ? next_ka : until - h->margin_ms;
		pause_ms(h, wake - (int64_t)kvn_now_ms());
	}
	if (lease) /* handing over at once rather than after the TTL */
		kvn_etcd_lease_revoke(h->etcd, lease, err, sizeof(err));
	free(cur);
	return NULL;
}

int
kvn_sched_ha_start(struct kvn_scheduler *s, const struct kvn_scheduler_opts *o, char *err,
		   size_t errlen)
{
	char endpoints[1024];
	struct kvn_sched_ha *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->fd = -1;
	pthread_mutex_init(&h->lock, NULL);
	kvn_cond_init_monotonic(&h->cond);
	s->ha = h;
	int rc = kvn_scheduler_url_etcd(o->cluster_url, endpoints, sizeof(endpoints), h->cluster,
					sizeof(h->cluster), err, errlen);
	if (rc == 0)
		rc = kvn_seterr(-EINVAL, err, errlen,
				"scheduler cluster \"%s\" is not etcd://HOST:PORT[,...]/CLUSTER",
				o->cluster_url);
	if (rc < 0)
		return rc;
	const char *self = o->advertise && *o->advertise ? o->advertise : s->addr;
	char host[KVN_HOST_MAX], why[256];
	uint16_t port;
	if (kvn_hostport_parse(self, host, &port, why, sizeof(why)) || !port)
		return kvn_seterr(-EINVAL, err, errlen, "scheduler_advertise \"%s\": %s", self,
				  port ? why : "needs a port");
	if (!strcmp(host, "0.0.0.0") || !strcmp(host, "::"))
		return kvn_seterr(-EINVAL, err, errlen,
				  "cluster %s: this scheduler listens on %s, which nodes cannot be "
				  "told to connect to: set scheduler_advertise to HOST:PORT",
				  h->cluster, self);
	snprintf(h->self, sizeof(h->self), "%s", self);
	h->ttl_s = o->lease_ttl_s ? (int)o->lease_ttl_s : TTL_DEFAULT_S;
	h->margin_ms = h->ttl_s * 1000 / 5 > RETRY_MS ? h->ttl_s * 1000 / 5 : RETRY_MS;
	kvn_sched_etcd_key(h->cluster, "leader", h->leader_key, sizeof(h->leader_key));
	kvn_sched_etcd_key(h->cluster, "workers/", h->workers, sizeof(h->workers));
	/* A call must end before a lead has to: at most a third of the TTL. */
	struct kvn_etcd_opts eo = o->etcd ? *o->etcd : (struct kvn_etcd_opts){0};
	int64_t cap = h->ttl_s * 1000 / 3;
	eo.endpoints = endpoints;
	if (!eo.timeout_ms || eo.timeout_ms > cap)
		eo.timeout_ms = (int)cap;
	if ((rc = kvn_etcd_open(&eo, &h->etcd, err, errlen)))
		return rc;
	h->fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = h};
	if (h->fd < 0 || epoll_ctl(s->efd, EPOLL_CTL_ADD, h->fd, &ev) < 0)
		return kvn_seterr(-errno, err, errlen, "cluster %s: eventfd: %s", h->cluster,
				  strerror(errno));
	if ((rc = pthread_create(&h->thread, NULL, ha_main, h)))
		return kvn_seterr(-rc, err, errlen, "cluster %s: starting the election: %s",
				  h->cluster, strerror(rc));
	h->started = true;
	kvn_info(COMP, "scheduler %s stands for cluster %s in etcd %s (lease %d s)", h->self,
		 h->cluster, endpoints, h->ttl_s);
	return 0;
}

void
kvn_sched_ha_stop(struct kvn_scheduler *s)
{
	struct kvn_sched_ha *h = s->ha;
	if (!h)
		return;
	if (h->started) {
		pthread_mutex_lock(&h->lock);
		h->stop = true;
		pthread_cond_broadcast(&h->cond);
		pthread_mutex_unlock(&h->lock);
		pthread_join(h->thread, NULL);
	}
	kvn_etcd_close(h->etcd);
	if (h->fd >= 0)
		close(h->fd);
	pthread_mutex_destroy(&h->lock);
	pthread_cond_destroy(&h->cond);
	free(h);
	s->ha = NULL;
}

static int
load_one(void *ctx, const char *key, const struct kvn_etcd_kv *kv)
{
	struct kvn_scheduler *s = ctx;
	const char *name = key + strlen(s->ha->workers);
	char *end;
	unsigned long id = strtoul(kv->value, &end, 10);
	if (*end || end == kv->value || kvn_sched_reserve(s, name, (uint32_t)id))
		kvn_warn(COMP,
			 "cluster %s: etcd key %s = \"%.32s\" is not a worker id this "
			 "scheduler can keep; ignored",
			 s->ha->cluster, key, kv->value);
	return 0;
}

void
kvn_sched_ha_poll(struct kvn_scheduler *s)
{
	struct kvn_sched_ha *h = s->ha;
	uint64_t v;
	ssize_t r = read(h->fd, &v, sizeof(v));
	(void)r;
	pthread_mutex_lock(&h->lock);
	bool lead = h->won && (int64_t)kvn_now_ms() + h->margin_ms < h->lease_until_ms;
	pthread_mutex_unlock(&h->lock);
	if (lead == s->leading)
		return;
	if (!lead) {
		char why[160];
		snprintf(why, sizeof(why), "this scheduler no longer leads cluster %s", h->cluster);
		kvn_sched_reset(s, why);
		s->leading = false;
		return;
	}
	/* Worker ids first: a JOIN answered before they are known could hand out a taken one. */
	char err[512];
	kvn_sched_reset(s, "taking the lead");
	int rc = kvn_etcd_range_prefix(h->etcd, h->workers, load_one, s, err, sizeof(err));
	if (rc) {
		log_etcd("loading the worker ids", err);
		kvn_sched_reset(s, "the worker ids could not be loaded");
		notify(h); /* try again on the next pass */
		return;
	}
	s->leading = true;
	kvn_info(COMP, "cluster %s: serving as its leader with %u worker ids from etcd", h->cluster,
		 s->held);
}

int
kvn_sched_ha_record(struct kvn_scheduler *s, const char *name, uint32_t *id, char *err,
		    size_t errlen)
{
	struct kvn_sched_ha *h = s->ha;
	char key[256 + KVN_CF_NAME_MAX], val[16];
	struct kvn_etcd_kv *cur = malloc(sizeof(*cur));
	if (!cur)
		return -ENOMEM;
	snprintf(key, sizeof(key), "%s%s", h->workers, name);
	snprintf(val, sizeof(val), "%u", *id);
	int rc = kvn_etcd_create(h->etcd, key, val, 0, cur, err, errlen);
	if (rc == 0) { /* recorded by an earlier leader after this one loaded the ids */
		char *end;
		unsigned long was = strtoul(cur->value, &end, 10);
		if (*end || was >= KVN_DIR_MAX_WORKERS ||
		    (was < s->nmembers && s->members[was].state != M_UNUSED && was != *id))
			rc = kvn_seterr(-EEXIST, err, errlen,
					"etcd holds worker id \"%.16s\" for %s, which this "
					"scheduler cannot give it",
					cur->value, name);
		else
			*id = (uint32_t)was;
	}
	free(cur);
	return rc < 0 ? rc : 0;
}

void
kvn_sched_ha_forget(struct kvn_scheduler *s, const char *name)
{
	char key[256 + KVN_CF_NAME_MAX], err[512];
	snprintf(key, sizeof(key), "%s%s", s->ha->workers, name);
	if (kvn_etcd_delete(s->ha->etcd, key, err, sizeof(err)))
		log_etcd("forgetting a worker id", err);
}

void
kvn_sched_ha_stats(struct kvn_scheduler *s, struct kvn_sched_stats *st)
{
	struct kvn_sched_ha *h = s->ha;
	st->ha = true;
	snprintf(st->cluster, sizeof(st->cluster), "%s", h->cluster);
	st->lease_ttl_s = (uint64_t)h->ttl_s;
	pthread_mutex_lock(&h->lock);
	snprintf(st->leader, sizeof(st->leader), "%s", h->leader);
	st->elections = h->elections;
	st->stepdowns = h->stepdowns;
	st->failovers = h->failovers;
	pthread_mutex_unlock(&h->lock);
}

void
kvn_sched_ha_standby_why(struct kvn_scheduler *s, char *out, size_t cap)
{
	struct kvn_sched_ha *h = s->ha;
	if (!h) {
		snprintf(out, cap, "not leading");
		return;
	}
	pthread_mutex_lock(&h->lock);
	snprintf(out, cap, "a standby of cluster %s; the leader is %s", h->cluster,
		 *h->leader && strcmp(h->leader, h->self) ? h->leader : "being elected");
	pthread_mutex_unlock(&h->lock);
}
