/* Membership client (node/cluster/membership.h): one TCP connection to the scheduler, owned by a
 * thread that heartbeats, sends queued publishes and reads every frame (replies are matched to
 * waiting lookups by seq; notices update the member table). Callers' lookups write their
 * request under the send lock and sleep until the thread hands them the reply. */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/auth.h"
#include "core/clock.h"
#include "core/log.h"
#include "node/cluster/etcd.h"
#include "node/cluster/membership.h"
#include "node/engine/config.h"
#include "core/netaddr.h"

#define COMP	       "membership"
#define DEFAULT_HB_MS  500
#define DEFAULT_TMO_MS 5000

struct waiter {
	uint32_t seq;
	uint32_t count, max_locs;
	uint32_t *nloc;
	struct kvn_loc *locs;
	int status; /* 1 while waiting */
	struct waiter *next;
};

/* The member table: one record per worker id announced, sorted by id (not indexed by it, so a
 * notice of a large id costs one record). */
struct mrec {
	struct kvn_member_info info;
	uint8_t *regions;
};

struct kvn_membership {
	struct kvn_membership_opts o; /* strings below are owned copies; auth_token NULL */
	struct kvn_auth auth;	      /* the token's key: the join's proofs */
	char host[KVN_HOST_MAX];      /* the scheduler now (the thread's, or start's before it) */
	uint16_t port;
	/* scheduler_url etcd://: the client, the leader key, and the watch of it (its own thread,
	 * which shuts the connection down when the leader changes) */
	struct kvn_etcd *etcd;
	char cluster[KVN_CF_NAME_MAX + 1], leader_key[256];
	pthread_t watcher;
	bool watching;
	int64_t leader_rev; /* the leader key's revision the last join read (lock) */
	struct kvn_membership_cbs cbs;
	int wake_fd;
	pthread_t thread;
	bool started;

	pthread_mutex_t send_lock; /* writes to fd, and fd itself changing */
	int fd;
	uint32_t next_seq;

	pthread_mutex_t lock; /* everything below */
	pthread_cond_t cond;
	bool stop;
	bool connected;
	int32_t worker_id;
	uint32_t worker_count;
	uint64_t epoch, joins;
	uint32_t beat_ms; /* the period in use: the scheduler's when it is shorter than ours */
	struct waiter *waiters;
	struct kvn_cf_pub *queue;
	size_t qlen, qcap;
	uint64_t queued, sent; /* records, for kvn_membership_flush */
	struct mrec *members;
	size_t nmembers, members_cap;

	struct kvn_cf_rx rx; /* the thread's (and the first join's) */
	struct kvn_cf_buf tx;
};

/* The deadline of a wait on m->cond: CLOCK_MONOTONIC, as the condition measures it, so that a
 * wall-clock step neither cuts a wait short nor stretches it. */
static struct timespec
deadline_ts(int ms)
{
	return kvn_deadline_in_ms(ms > 0 ? (uint64_t)ms : 0);
}

/* The index of worker_id's record, or where it would go (*found false). */
static size_t
member_pos(const struct kvn_membership *m, uint32_t worker_id, bool *found)
{
	size_t lo = 0, hi = m->nmembers;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (m->members[mid].info.worker_id < worker_id)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = lo < m->nmembers && m->members[lo].info.worker_id == worker_id;
	return lo;
}

/* "kvnode://host:port/" and "host:port" both name the scheduler. */
int
kvn_scheduler_url_parse(const char *url, char host[KVN_HOST_MAX], uint16_t *port, char *err,
			size_t errlen)
{
	if (!url || !*url)
		return kvn_seterr(-EINVAL, err, errlen,
				  "scheduler address is empty: set scheduler_url to "
				  "HOST:PORT");
	const char *p = strstr(url, "://");
	p = p ? p + 3 : url;
	char buf[KVN_HOST_MAX + 16];
	size_t n = strlen(p);
	if (n >= sizeof(buf))
		return kvn_seterr(-EINVAL, err, errlen,
				  "scheduler address \"%.40s...\" is too long", url);
	memcpy(buf, p, n + 1);
	if (n && buf[n - 1] == '/')
		buf[n - 1] = '\0';
	char why[256];
	if (kvn_hostport_parse(buf, host, port, why, sizeof(why)) || *port == 0)
		return kvn_seterr(-EINVAL, err, errlen, "scheduler_url \"%s\": %s", url,
				  *port ? why : "needs a port other than 0");
	return 0;
}

bool
kvn_scheduler_url_is_etcd(const char *url)
{
	return url && !strncmp(url, "etcd://", 7);
}

int
kvn_scheduler_url_etcd(const char *url, char *endpoints, size_t elen, char *cluster, size_t clen,
		       char *err, size_t errlen)
{
	if (!kvn_scheduler_url_is_etcd(url))
		return 0;
	const char *e = url + 7, *slash = strchr(e, '/');
	if (!slash || slash == e)
		return kvn_seterr(
		    -EINVAL, err, errlen,
		    "scheduler_url \"%s\": want etcd://HOST:PORT[,HOST:PORT...]/CLUSTER "
		    "(%s)",
		    url, slash ? "no etcd endpoint" : "no /CLUSTER");
	const char *c = slash + 1;
	size_t cl = strlen(c);
	if (cl && c[cl - 1] == '/')
		cl--;
	bool ok = cl >= 1 && cl <= 64 && cl < clen;
	for (size_t i = 0; ok && i < cl; i++)
		ok = isalnum((unsigned char)c[i]) || c[i] == '.' || c[i] == '_' || c[i] == '-';
	if (!ok)
		return kvn_seterr(-EINVAL, err, errlen,
				  "scheduler_url \"%s\": the cluster name \"%.*s\" must be 1 to 64 "
				  "of A-Z a-z 0-9 . _ -",
				  url, (int)cl, c);
	if ((size_t)(slash - e) >= elen)
		return kvn_seterr(-EINVAL, err, errlen, "scheduler_url \"%.60s...\": too long",
				  url);
	snprintf(endpoints, elen, "%.*s", (int)(slash - e), e);
	snprintf(cluster, clen, "%.*s", (int)cl, c);
	return 1;
}

struct kvn_etcd_opts
kvn_config_etcd_opts(const struct kvn_config *cfg)
{
	return (struct kvn_etcd_opts){.timeout_ms = (int)cfg->etcd_timeout_ms,
				      .user = cfg->etcd_user,
				      .password = cfg->etcd_password,
				      .token = cfg->etcd_token,
				      .tls = cfg->etcd_tls,
				      .ca_file = cfg->etcd_ca_file,
				      .cert_file = cfg->etcd_cert_file,
				      .key_file = cfg->etcd_key_file};
}

void
kvn_sched_etcd_key(const char *cluster, const char *leaf, char *out, size_t cap)
{
	snprintf(out, cap, "/kvnode/%s/%s", cluster, leaf);
}

/* The leader key's value as HOST:PORT (and its revision). */
static int
leader_read(struct kvn_etcd *e, const char *cluster, const char *key, char host[KVN_HOST_MAX],
	    uint16_t *port, int64_t *rev, char *err, size_t errlen)
{
	struct kvn_etcd_kv *kv = malloc(sizeof(*kv));
	char why[512];
	if (!kv)
		return -ENOMEM;
	int rc = kvn_etcd_get(e, key, kv, rev, why, sizeof(why));
	if (rc == -ENOENT)
		kvn_seterr(rc, err, errlen,
			   "no scheduler leads cluster %s now (etcd key %s is absent; start "
			   "`kvnode scheduler` with this scheduler_url)",
			   cluster, key);
	else if (rc)
		kvn_seterr(rc, err, errlen, "cluster %s: reading its leader from etcd: %s", cluster,
			   why);
	else if (kvn_hostport_parse(kv->value, host, port, why, sizeof(why)) || !*port)
		rc = kvn_seterr(-EPROTO, err, errlen,
				"cluster %s: etcd key %s holds \"%.64s\", not a scheduler's "
				"HOST:PORT",
				cluster, key, kv->value);
	free(kv);
	return rc;
}

static int
etcd_open_for(const char *endpoints, const struct kvn_etcd_opts *eo, struct kvn_etcd **out,
	      char *err, size_t errlen)
{
	struct kvn_etcd_opts o = eo ? *eo : (struct kvn_etcd_opts){0};
	o.endpoints = endpoints;
	return kvn_etcd_open(&o, out, err, errlen);
}

int
kvn_scheduler_resolve(const char *url, const struct kvn_etcd_opts *eo, char host[KVN_HOST_MAX],
		      uint16_t *port, char *err, size_t errlen)
{
	char endpoints[1024], cluster[KVN_CF_NAME_MAX + 1], key[256];
	int rc = kvn_scheduler_url_etcd(url, endpoints, sizeof(endpoints), cluster, sizeof(cluster),
					err, errlen);
	if (rc <= 0)
		return rc < 0 ? rc : kvn_scheduler_url_parse(url, host, port, err, errlen);
	struct kvn_etcd *e;
	if ((rc = etcd_open_for(endpoints, eo, &e, err, errlen)))
		return rc;
	kvn_sched_etcd_key(cluster, "leader", key, sizeof(key));
	rc = leader_read(e, cluster, key, host, port, NULL, err, errlen);
	kvn_etcd_close(e);
	return rc;
}

/* ------------------------------------------------------------------------------------------
 * Receiving frames
 * ------------------------------------------------------------------------------------------ */

/* ------------------------------------------------------------------------------------------
 * Join
 * ------------------------------------------------------------------------------------------ */

static double
num(const cJSON *j, const char *name, double dflt)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, name);
	return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

/* A TCP connection to the scheduler that has passed the HELLO/CHALLENGE exchange; *fd is it,
 * proof is what the JOIN carries. 0, or the error (*refused: the scheduler turned us down). */
static int
open_authed(struct kvn_membership *m, int *fd, char proof[KVN_CF_PROOF_HEX], bool *refused,
	    char *err, size_t errlen)
{
	int timeout = m->o.timeout_ms;
	char why[512];
	*fd = kvn_tcp_connect(m->host, m->port, timeout, why, sizeof(why));
	if (*fd < 0)
		return kvn_seterr(*fd, err, errlen, "scheduler %s:%u: %s", m->host, m->port, why);
	struct timeval tv = {.tv_sec = timeout / 1000, .tv_usec = (timeout % 1000) * 1000};
	setsockopt(*fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	m->rx.len = 0;
	int arc = kvn_cf_client_auth(*fd, &m->rx, &m->auth, timeout, proof, why, sizeof(why));
	if (arc) {
		close(*fd);
		*refused = arc == -EACCES || arc == -EPROTO;
		return kvn_seterr(arc, err, errlen, "scheduler %s:%u %s", m->host, m->port, why);
	}
	return 0;
}

/* Sends the JOIN: who this node is, the worker id it had (a hint), the proof and the
 * registered regions. */
static int
send_join(struct kvn_membership *m, int fd, const char *proof)
{
	pthread_mutex_lock(&m->lock);
	int32_t hint = m->worker_id;
	pthread_mutex_unlock(&m->lock);
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "name", m->o.name);
	cJSON_AddStringToObject(j, "data_addr", m->o.data_addr ? m->o.data_addr : "");
	cJSON_AddStringToObject(j, "transport", m->o.transport ? m->o.transport : "");
	cJSON_AddNumberToObject(j, "capacity", (double)m->o.capacity);
	if (m->o.mtu)
		cJSON_AddNumberToObject(j, "mtu", m->o.mtu);
	cJSON_AddBoolToObject(j, "want_evicts", m->o.want_evicts);
	if (hint >= 0)
		cJSON_AddNumberToObject(j, "worker_id", hint);
	if (proof[0])
		cJSON_AddStringToObject(j, "proof", proof);
	char *text = cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	struct kvn_cf_buf b = {0};
	int rc =
	    text ? kvn_cf_put_json_frame(&b, KVN_CF_JOIN, 0, text, m->o.regions, m->o.regions_len)
		 : -ENOMEM;
	free(text);
	if (!rc)
		rc = kvn_cf_send_all(fd, b.p, b.len);
	kvn_cf_buf_free(&b);
	return rc;
}

/* What a JOIN_OK gives the node. */
struct join_ok {
	double id, count, epoch, beat;
};

/* Waits for the answer to the JOIN and checks it is a valid JOIN_OK; 0, or the error
 * (*refused: the scheduler sent an ERROR). */
static int
await_join_ok(struct kvn_membership *m, int fd, struct join_ok *ok, bool *refused, char *err,
	      size_t errlen)
{
	struct kvn_cf_hdr h;
	const uint8_t *body;
	char why[512];
	int rc = kvn_cf_rx_wait(&m->rx, fd, m->o.timeout_ms, &h, &body, why, sizeof(why));
	if (rc)
		return kvn_seterr(rc, err, errlen, "scheduler %s:%u: waiting for JOIN_OK: %s",
				  m->host, m->port, why);
	if (h.type == KVN_CF_ERROR) {
		rc = kvn_cf_error_decode(body, h.len, why, sizeof(why));
		*refused = rc != -EAGAIN; /* a standby scheduler: the leader is elsewhere */
		return kvn_seterr(rc, err, errlen, "scheduler %s:%u refused node %s: %s", m->host,
				  m->port, m->o.name, why);
	}
	cJSON *r =
	    h.type == KVN_CF_JOIN_OK ? cJSON_ParseWithLength((const char *)body, h.len) : NULL;
	ok->id = num(r, "worker_id", -1);
	ok->count = num(r, "worker_count", -1);
	ok->epoch = num(r, "epoch", -1);
	ok->beat = num(r, "heartbeat_ms", 0);
	cJSON_Delete(r);
	if (ok->id < 0 || ok->id >= 65535 || ok->count < 1 || ok->epoch < 0)
		return kvn_seterr(-EPROTO, err, errlen,
				  "scheduler %s:%u answered JOIN with a %s frame that is not a "
				  "valid JOIN_OK",
				  m->host, m->port, kvn_cf_type_name(h.type));
	kvn_cf_rx_consume(&m->rx, &h);
	return 0;
}

/* Connects and joins; on success m->fd is the connection. *refused: the scheduler answered
 * with an ERROR, whose code is returned (-EACCES for the auth token, -EINVAL for a field of
 * ours, -EUSERS when no worker id is left). Called with no lock held, by start (before the
 * thread exists) or by the thread. */
static int
connect_join(struct kvn_membership *m, bool *refused, char *err, size_t errlen)
{
	*refused = false;
	int fd;
	char proof[KVN_CF_PROOF_HEX];
	int rc;
	if (m->etcd) {
		int64_t rev = 0;
		if ((rc = leader_read(m->etcd, m->cluster, m->leader_key, m->host, &m->port, &rev,
				      err, errlen)))
			return rc == -EPROTO ? -EAGAIN : rc; /* a bad value may be replaced */
		pthread_mutex_lock(&m->lock);
		m->leader_rev = rev;
		pthread_mutex_unlock(&m->lock);
	}
	rc = open_authed(m, &fd, proof, refused, err, errlen);
	if (rc)
		return rc;
	if ((rc = send_join(m, fd, proof))) {
		close(fd);
		return kvn_seterr(rc, err, errlen, "scheduler %s:%u: sending JOIN: %s", m->host,
				  m->port, kvn_strerror(rc));
	}
	struct join_ok ok = {0};
	if ((rc = await_join_ok(m, fd, &ok, refused, err, errlen))) {
		close(fd);
		return rc;
	}
	pthread_mutex_lock(&m->send_lock);
	pthread_mutex_lock(&m->lock);
	m->fd = fd;
	m->connected = true;
	m->worker_id = (int32_t)ok.id;
	m->worker_count = (uint32_t)ok.count;
	m->epoch = (uint64_t)ok.epoch;
	m->joins++;
	/* The scheduler expires members by its own period: beating slower than it would get
	 * this node expired while alive. */
	m->beat_ms =
	    ok.beat >= 1 && ok.beat < m->o.heartbeat_ms ? (uint32_t)ok.beat : m->o.heartbeat_ms;
	/* What was queued before this join is covered by the republish that follows. */
	m->sent += m->qlen;
	m->qlen = 0;
	pthread_mutex_unlock(&m->lock);
	pthread_mutex_unlock(&m->send_lock);
	kvn_info(COMP, "node %s joined scheduler %s:%u as worker %d of %u (epoch %llu)", m->o.name,
		 m->host, m->port, (int)ok.id, (unsigned)ok.count, (unsigned long long)ok.epoch);
	return 0;
}

/* Drops the connection: lookups in flight fail, the thread will re-join. */
static void
disconnect(struct kvn_membership *m, const char *why)
{
	pthread_mutex_lock(&m->send_lock);
	pthread_mutex_lock(&m->lock);
	if (m->fd >= 0) {
		close(m->fd);
		m->fd = -1;
		if (!m->stop)
			kvn_warn(COMP, "node %s lost scheduler %s:%u: %s; re-joining", m->o.name,
				 m->host, m->port, why);
	}
	m->connected = false;
	for (struct waiter *w = m->waiters; w; w = w->next)
		w->status = -ENOTCONN;
	m->waiters = NULL;
	m->sent += m->qlen;
	m->qlen = 0;
	pthread_cond_broadcast(&m->cond);
	pthread_mutex_unlock(&m->lock);
	pthread_mutex_unlock(&m->send_lock);
	m->rx.len = 0;
}

/* ------------------------------------------------------------------------------------------
 * The thread
 * ------------------------------------------------------------------------------------------ */

static int
on_member(struct kvn_membership *m, const uint8_t *body, uint32_t len, char *err, size_t errlen)
{
	const char *jt;
	const uint8_t *blob;
	size_t jl, bl;
	int rc = kvn_cf_split_json_blob(body, len, &jt, &jl, &blob, &bl, err, errlen);
	if (rc)
		return rc;
	cJSON *j = cJSON_ParseWithLength(jt, jl);
	struct kvn_member_info mi = {0};
	const cJSON *name = cJSON_GetObjectItemCaseSensitive(j, "name");
	const cJSON *addr = cJSON_GetObjectItemCaseSensitive(j, "data_addr");
	const cJSON *tp = cJSON_GetObjectItemCaseSensitive(j, "transport");
	const cJSON *st = cJSON_GetObjectItemCaseSensitive(j, "state");
	double id = num(j, "worker_id", -1);
	mi.capacity = (uint64_t)num(j, "capacity", 0);
	mi.epoch = (uint64_t)num(j, "epoch", 0);
	mi.worker_count = (uint32_t)num(j, "worker_count", 0);
	bool ok = cJSON_IsString(name) && cJSON_IsString(st) && id >= 0 && id < 65535;
	if (ok) {
		mi.worker_id = (uint32_t)id;
		mi.up = !strcmp(st->valuestring, "up");
		snprintf(mi.name, sizeof(mi.name), "%s", name->valuestring);
		snprintf(mi.data_addr, sizeof(mi.data_addr), "%s",
			 cJSON_IsString(addr) ? addr->valuestring : "");
		snprintf(mi.transport, sizeof(mi.transport), "%s",
			 cJSON_IsString(tp) ? tp->valuestring : "");
	}
	cJSON_Delete(j);
	if (!ok)
		return kvn_seterr(-EPROTO, err, errlen,
				  "MEMBER notice without name, state or worker_id");
	mi.regions = blob;
	mi.regions_len = bl;
	uint8_t *copy = bl ? malloc(bl) : NULL;
	if (copy)
		memcpy(copy, blob, bl);
	pthread_mutex_lock(&m->lock);
	bool found;
	size_t at = member_pos(m, mi.worker_id, &found);
	if (!found) {
		if (m->nmembers == m->members_cap) {
			size_t n = m->members_cap ? m->members_cap * 2 : 16;
			struct mrec *p = realloc(m->members, n * sizeof(*p));
			if (!p) {
				pthread_mutex_unlock(&m->lock);
				free(copy);
				return -ENOMEM;
			}
			m->members = p;
			m->members_cap = n;
		}
		memmove(m->members + at + 1, m->members + at,
			(m->nmembers - at) * sizeof(*m->members));
		m->members[at].regions = NULL;
		m->nmembers++;
	}
	struct mrec *r = &m->members[at];
	free(r->regions);
	r->regions = copy;
	r->info = mi;
	r->info.regions = NULL;
	r->info.regions_len = copy ? bl : 0;
	m->epoch = mi.epoch;
	m->worker_count = mi.worker_count;
	pthread_mutex_unlock(&m->lock);
	kvn_debug(COMP, "member %s (worker %u) %s at %s", mi.name, mi.worker_id,
		  mi.up ? "up" : "down", mi.data_addr);
	if (m->cbs.member)
		m->cbs.member(m->cbs.ctx, &mi);
	return 0;
}

static int
on_frame(struct kvn_membership *m, const struct kvn_cf_hdr *h, const uint8_t *body, char *err,
	 size_t errlen)
{
	switch (h->type) {
	case KVN_CF_HEARTBEAT_ACK:
		if (h->len != 16)
			return kvn_seterr(-EPROTO, err, errlen, "HEARTBEAT_ACK of %u bytes",
					  h->len);
		pthread_mutex_lock(&m->lock);
		m->epoch = kvn_cf_get_u64(body);
		m->worker_count = kvn_cf_get_u32(body + 8);
		pthread_mutex_unlock(&m->lock);
		return 0;
	case KVN_CF_LOOKUP_REPLY: {
		int rc = 0;
		pthread_mutex_lock(&m->lock);
		struct waiter **pp = &m->waiters;
		while (*pp && (*pp)->seq != h->seq)
			pp = &(*pp)->next;
		if (*pp) { /* else the caller gave up waiting */
			struct waiter *w = *pp;
			rc = kvn_cf_lookup_reply_decode(body, h->len, w->count, w->max_locs,
							w->nloc, w->locs, err, errlen);
			w->status = rc ? -EPROTO : 0;
			*pp = w->next;
			pthread_cond_broadcast(&m->cond);
		}
		pthread_mutex_unlock(&m->lock);
		return rc ? -EPROTO : 0;
	}
	case KVN_CF_MEMBER:
		return on_member(m, body, h->len, err, errlen);
	case KVN_CF_EVICTED: {
		uint32_t id, n;
		if (kvn_cf_evicted_check(body, h->len, &id, &n, err, errlen))
			return -EPROTO;
		if (m->cbs.evicted && n) {
			struct kvn_digest *d = malloc(n * sizeof(*d));
			if (!d)
				return 0; /* the generation check still catches stale entries */
			for (uint32_t i = 0; i < n; i++) {
				d[i].lo = kvn_cf_get_u64(body + 8 + (size_t)i * 16);
				d[i].hi = kvn_cf_get_u64(body + 16 + (size_t)i * 16);
			}
			m->cbs.evicted(m->cbs.ctx, id, d, n);
			free(d);
		}
		return 0;
	}
	case KVN_CF_ERROR: {
		char msg[512];
		kvn_cf_error_text(body, h->len, msg, sizeof(msg));
		return kvn_seterr(-EPROTO, err, errlen, "the scheduler sent an error: %s", msg);
	}
	}
	return kvn_seterr(-EPROTO, err, errlen, "unexpected %s frame from the scheduler",
			  kvn_cf_type_name(h->type));
}

/* Sends everything queued, in frames of at most KVN_CF_PUBLISH_MAX records. */
static int
flush_queue(struct kvn_membership *m)
{
	for (;;) {
		pthread_mutex_lock(&m->lock);
		size_t n = m->qlen < KVN_CF_PUBLISH_MAX ? m->qlen : KVN_CF_PUBLISH_MAX;
		if (!n) {
			pthread_mutex_unlock(&m->lock);
			return 0;
		}
		kvn_cf_buf_reset(&m->tx);
		kvn_cf_begin(&m->tx, KVN_CF_PUBLISH, 0);
		kvn_cf_put_u32(&m->tx, (uint32_t)n);
		kvn_cf_put_u32(&m->tx, 0);
		for (size_t i = 0; i < n; i++)
			kvn_cf_put_pub(&m->tx, &m->queue[i]);
		memmove(m->queue, m->queue + n, (m->qlen - n) * sizeof(*m->queue));
		m->qlen -= n;
		pthread_mutex_unlock(&m->lock);
		int rc = kvn_cf_end(&m->tx);
		pthread_mutex_lock(&m->send_lock);
		if (!rc)
			rc = m->fd >= 0 ? kvn_cf_send_all(m->fd, m->tx.p, m->tx.len) : -ENOTCONN;
		pthread_mutex_unlock(&m->send_lock);
		pthread_mutex_lock(&m->lock);
		m->sent += n;
		pthread_cond_broadcast(&m->cond);
		pthread_mutex_unlock(&m->lock);
		if (rc)
			return rc;
	}
}

static int
send_simple(struct kvn_membership *m, enum kvn_cf_type type)
{
	uint8_t hdr[KVN_CF_HDR_SIZE];
	struct kvn_cf_hdr h = {.version = KVN_CF_VERSION, .type = (uint8_t)type};
	kvn_cf_hdr_encode(&h, hdr);
	pthread_mutex_lock(&m->send_lock);
	int rc = m->fd >= 0 ? kvn_cf_send_all(m->fd, hdr, sizeof(hdr)) : -ENOTCONN;
	pthread_mutex_unlock(&m->send_lock);
	return rc;
}

static bool
stopping(struct kvn_membership *m)
{
	pthread_mutex_lock(&m->lock);
	bool s = m->stop;
	pthread_mutex_unlock(&m->lock);
	return s;
}

/* Sleeps ms or until woken (stop). A wake-up left over from a publish is drained, else every
 * later nap would return at once and a re-join loop would spin. */
static void
nap(struct kvn_membership *m, int ms)
{
	struct pollfd pf = {.fd = m->wake_fd, .events = POLLIN};
	if (poll(&pf, 1, ms) > 0) {
		uint64_t v;
		ssize_t n = read(m->wake_fd, &v, sizeof(v));
		(void)n;
	}
}

static void
nap_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
	nanosleep(&ts, NULL);
}

static void
after_join(struct kvn_membership *m)
{
	if (m->cbs.joined) {
		pthread_mutex_lock(&m->lock);
		uint32_t id = (uint32_t)m->worker_id, count = m->worker_count;
		uint64_t epoch = m->epoch;
		pthread_mutex_unlock(&m->lock);
		m->cbs.joined(m->cbs.ctx, m, id, count, epoch);
	}
}

/* scheduler_url etcd://: watches the leader key from the revision the last join read; when it
 * changes (a new leader, or the old one's lease gone) the connection is shut down, so that the
 * membership thread reads the leader again and joins it. */
static void *
watch_main(void *arg)
{
	struct kvn_membership *m = arg;
	char err[512];
	while (!stopping(m)) {
		pthread_mutex_lock(&m->lock);
		int64_t from = m->leader_rev + 1;
		bool joined = m->connected && m->leader_rev > 0;
		pthread_mutex_unlock(&m->lock);
		if (!joined) {
			nap_ms(200);
			continue;
		}
		bool deleted = false;
		int64_t rev = 0;
		int rc = kvn_etcd_watch(m->etcd, m->leader_key, from, 1000, &deleted, &rev, err,
					sizeof(err));
		if (rc == -ETIMEDOUT) /* etcd did not confirm the watch in time: again */
			continue;
		if (rc < 0) {
			kvn_debug(COMP, "node %s: watching the leader of cluster %s: %s", m->o.name,
				  m->cluster, err);
			nap_ms(500);
			continue;
		}
		if (rc == 0)
			continue;
		pthread_mutex_lock(&m->send_lock);
		pthread_mutex_lock(&m->lock);
		if (m->leader_rev < rev)
			m->leader_rev = rev;
		if (m->fd >= 0)
			shutdown(m->fd, SHUT_RDWR); /* the thread sees it closed and joins again */
		pthread_mutex_unlock(&m->lock);
		pthread_mutex_unlock(&m->send_lock);
		kvn_info(COMP, "node %s: the leader of cluster %s %s; joining the new one",
			 m->o.name, m->cluster, deleted ? "is gone" : "changed");
	}
	return NULL;
}

static void *
thread_main(void *arg)
{
	struct kvn_membership *m = arg;
	int hb = (int)m->o.heartbeat_ms, backoff = 20;
	/* A scheduler that answers nothing for this long is treated as gone. */
	int silent_max = 3 * hb > m->o.timeout_ms ? 3 * hb : m->o.timeout_ms;
	int64_t next_beat = ((int64_t)kvn_now_ms()), last_rx = ((int64_t)kvn_now_ms());
	char err[512];
	bool fresh = kvn_membership_connected(m);
	if (fresh)
		after_join(m);
	while (!stopping(m)) {
		if (!kvn_membership_connected(m)) {
			bool refused;
			if (connect_join(m, &refused, err, sizeof(err))) {
				kvn_debug(COMP, "node %s: %s; retrying in %d ms", m->o.name, err,
					  backoff);
				nap(m, backoff);
				backoff = backoff * 2 > hb ? hb : backoff * 2;
				continue;
			}
			backoff = 20;
			last_rx = ((int64_t)kvn_now_ms());
			after_join(m);
		}
		pthread_mutex_lock(&m->lock);
		int beat = (int)m->beat_ms;
		pthread_mutex_unlock(&m->lock);
		int64_t now = ((int64_t)kvn_now_ms());
		if (now >= next_beat) {
			next_beat = now + beat;
			if (send_simple(m, KVN_CF_HEARTBEAT)) {
				disconnect(m, "sending a heartbeat failed");
				continue;
			}
		}
		if (now - last_rx > silent_max) {
			disconnect(m, "no frame from it for over 3 heartbeats");
			continue;
		}
		int rc = flush_queue(m);
		if (rc) {
			disconnect(m, kvn_strerror(rc));
			continue;
		}
		struct pollfd pf[2] = {{.fd = m->fd, .events = POLLIN},
				       {.fd = m->wake_fd, .events = POLLIN}};
		int wait = (int)(next_beat - ((int64_t)kvn_now_ms()));
		if (poll(pf, 2, wait < 0 ? 0 : wait) < 0 && errno != EINTR)
			continue;
		if (pf[1].revents) {
			uint64_t v;
			ssize_t n = read(m->wake_fd, &v, sizeof(v));
			(void)n;
		}
		if (!pf[0].revents)
			continue;
		rc = 0;
		while (!rc) {
			rc = kvn_cf_rx_fill(&m->rx, m->fd);
			struct kvn_cf_hdr h;
			const uint8_t *body;
			int got;
			while ((got = kvn_cf_rx_frame(&m->rx, &h, &body, err, sizeof(err))) == 1) {
				last_rx = ((int64_t)kvn_now_ms());
				if (on_frame(m, &h, body, err, sizeof(err))) {
					got = -EPROTO;
					break;
				}
				kvn_cf_rx_consume(&m->rx, &h);
			}
			if (got < 0) {
				disconnect(m, err);
				rc = -EPROTO;
			}
		}
		if (rc == -ECONNRESET)
			disconnect(m, "the scheduler closed the connection");
		else if (rc != -EAGAIN && rc != -EPROTO)
			disconnect(m, kvn_strerror(rc));
	}
	return NULL;
}

/* ------------------------------------------------------------------------------------------
 * API
 * ------------------------------------------------------------------------------------------ */

static char *
dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

static void
free_all(struct kvn_membership *m)
{
	free((char *)m->o.name);
	free((char *)m->o.data_addr);
	free((char *)m->o.transport);
	kvn_auth_wipe(&m->auth);
	free((void *)m->o.regions);
	for (size_t i = 0; i < m->nmembers; i++)
		free(m->members[i].regions);
	free(m->members);
	free(m->queue);
	free(m->rx.p);
	kvn_cf_buf_free(&m->tx);
	kvn_etcd_close(m->etcd);
	if (m->wake_fd >= 0)
		close(m->wake_fd);
	pthread_mutex_destroy(&m->send_lock);
	pthread_mutex_destroy(&m->lock);
	pthread_cond_destroy(&m->cond);
	free(m);
}

int
kvn_membership_start(const struct kvn_membership_opts *opts, const struct kvn_membership_cbs *cbs,
		     struct kvn_membership **out, char *err, size_t errlen)
{
	char why[256];
	if (!opts->name || kvn_cf_name_check(opts->name, why, sizeof(why)))
		return kvn_seterr(-EINVAL, err, errlen, "node_name cannot join a scheduler: %s",
				  opts->name ? why : "it is not set");
	if (opts->regions_len > KVN_CF_BLOB_MAX ||
	    (opts->data_addr && strlen(opts->data_addr) > KVN_CF_ADDR_MAX) ||
	    (opts->transport && strlen(opts->transport) > 31))
		return kvn_seterr(-EINVAL, err, errlen,
				  "node %s: data address, transport name or region descriptors "
				  "too long for a JOIN",
				  opts->name);
	struct kvn_membership *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->fd = m->wake_fd = -1;
	m->worker_id = -1;
	pthread_mutex_init(&m->send_lock, NULL);
	pthread_mutex_init(&m->lock, NULL);
	kvn_cond_init_monotonic(&m->cond);
	m->o = *opts;
	m->o.name = strdup(opts->name);
	m->o.data_addr = dup_or_null(opts->data_addr);
	m->o.transport = dup_or_null(opts->transport);
	kvn_auth_init(&m->auth, opts->auth_token); /* only the key is kept */
	m->o.auth_token = NULL;
	m->o.regions = NULL;
	if (opts->regions_len && (m->o.regions = malloc(opts->regions_len)))
		memcpy((void *)m->o.regions, opts->regions, opts->regions_len);
	m->o.heartbeat_ms = opts->heartbeat_ms ? opts->heartbeat_ms : DEFAULT_HB_MS;
	m->o.timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : DEFAULT_TMO_MS;
	if (cbs)
		m->cbs = *cbs;
	char endpoints[1024];
	int rc = kvn_scheduler_url_etcd(opts->scheduler, endpoints, sizeof(endpoints), m->cluster,
					sizeof(m->cluster), err, errlen);
	if (rc > 0) {
		kvn_sched_etcd_key(m->cluster, "leader", m->leader_key, sizeof(m->leader_key));
		rc = etcd_open_for(endpoints, opts->etcd, &m->etcd, err, errlen);
	} else if (rc == 0) {
		rc = kvn_scheduler_url_parse(opts->scheduler, m->host, &m->port, err, errlen);
	}
	m->o.etcd = NULL;
	if (rc)
		goto fail;
	m->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (m->wake_fd < 0 || !m->o.name || (opts->regions_len && !m->o.regions)) {
		rc = -ENOMEM;
		goto fail;
	}
	bool refused;
	rc = connect_join(m, &refused, err, errlen);
	/* A refusal says what to fix (token, name, a cluster without free ids): retrying would
	 * only hide it. An unreachable scheduler may come up later. */
	if (refused || rc == -EPROTO)
		goto fail;
	if (rc)
		kvn_warn(COMP, "%s; will keep trying in the background", err);
	if ((rc = pthread_create(&m->thread, NULL, thread_main, m))) {
		rc = -rc;
		kvn_seterr(rc, err, errlen, "cannot start the membership thread: %s",
			   strerror(-rc));
		goto fail;
	}
	m->started = true;
	if (m->etcd && pthread_create(&m->watcher, NULL, watch_main, m) == 0)
		m->watching = true;
	else if (m->etcd)
		kvn_warn(COMP,
			 "node %s: cannot start the leader watch; a new leader is found only "
			 "when the old one's connection drops",
			 m->o.name);
	*out = m;
	return 0;
fail:
	if (m->fd >= 0)
		close(m->fd);
	free_all(m);
	return rc;
}

void
kvn_membership_stop(struct kvn_membership *m)
{
	if (!m)
		return;
	/* The thread stops before LEAVE goes out: a thread still running would see the scheduler
	 * close the connection after LEAVE and join again, so others would see us come back. */
	pthread_mutex_lock(&m->lock);
	m->stop = true;
	pthread_mutex_unlock(&m->lock);
	uint64_t one = 1;
	ssize_t n = write(m->wake_fd, &one, sizeof(one));
	(void)n;
	if (m->started)
		pthread_join(m->thread, NULL);
	if (m->watching)
		pthread_join(m->watcher, NULL);
	if (kvn_membership_connected(m)) {
		flush_queue(m);
		send_simple(m, KVN_CF_LEAVE);
	}
	disconnect(m, "stopping");
	free_all(m);
}

bool
kvn_membership_connected(struct kvn_membership *m)
{
	pthread_mutex_lock(&m->lock);
	bool c = m->connected;
	pthread_mutex_unlock(&m->lock);
	return c;
}

int32_t
kvn_membership_worker_id(struct kvn_membership *m)
{
	pthread_mutex_lock(&m->lock);
	int32_t v = m->worker_id;
	pthread_mutex_unlock(&m->lock);
	return v;
}

uint32_t
kvn_membership_worker_count(struct kvn_membership *m)
{
	pthread_mutex_lock(&m->lock);
	uint32_t v = m->worker_count;
	pthread_mutex_unlock(&m->lock);
	return v;
}

uint64_t
kvn_membership_epoch(struct kvn_membership *m)
{
	pthread_mutex_lock(&m->lock);
	uint64_t v = m->epoch;
	pthread_mutex_unlock(&m->lock);
	return v;
}

uint64_t
kvn_membership_joins(struct kvn_membership *m)
{
	pthread_mutex_lock(&m->lock);
	uint64_t v = m->joins;
	pthread_mutex_unlock(&m->lock);
	return v;
}

int
kvn_membership_publish(struct kvn_membership *m, const struct kvn_cf_pub *recs, size_t n)
{
	if (!n)
		return 0;
	pthread_mutex_lock(&m->lock);
	if (!m->connected) {
		pthread_mutex_unlock(&m->lock);
		return 0;
	}
	if (m->qlen + n > m->qcap) {
		size_t cap = m->qcap ? m->qcap : 1024;
		while (cap < m->qlen + n)
			cap *= 2;
		struct kvn_cf_pub *p = realloc(m->queue, cap * sizeof(*p));
		if (!p) {
			pthread_mutex_unlock(&m->lock);
			return -ENOMEM;
		}
		m->queue = p;
		m->qcap = cap;
	}
	memcpy(m->queue + m->qlen, recs, n * sizeof(*recs));
	m->qlen += n;
	m->queued += n;
	pthread_mutex_unlock(&m->lock);
	uint64_t one = 1;
	ssize_t w = write(m->wake_fd, &one, sizeof(one));
	(void)w;
	return 0;
}

int
kvn_membership_flush(struct kvn_membership *m, int timeout_ms)
{
	struct timespec ts = deadline_ts(timeout_ms);
	int rc = 0;
	pthread_mutex_lock(&m->lock);
	uint64_t target = m->queued;
	while (m->sent < target && m->connected && !rc)
		rc = pthread_cond_timedwait(&m->cond, &m->lock, &ts) ? -ETIMEDOUT : 0;
	if (!rc && !m->connected)
		rc = -ENOTCONN;
	pthread_mutex_unlock(&m->lock);
	return rc;
}

static int
lookup_frame(struct kvn_membership *m, const struct kvn_digest *keys, uint32_t n, uint32_t max_locs,
	     uint32_t *nloc, struct kvn_loc *locs, int timeout_ms)
{
	struct waiter w = {
	    .count = n, .max_locs = max_locs, .nloc = nloc, .locs = locs, .status = 1};
	struct kvn_cf_buf b = {0};
	pthread_mutex_lock(&m->send_lock);
	w.seq = ++m->next_seq ? m->next_seq : ++m->next_seq;
	kvn_cf_begin(&b, KVN_CF_LOOKUP, w.seq);
	kvn_cf_put_u32(&b, n);
	kvn_cf_put_u32(&b, max_locs);
	for (uint32_t i = 0; i < n; i++) {
		kvn_cf_put_u64(&b, keys[i].lo);
		kvn_cf_put_u64(&b, keys[i].hi);
	}
	int rc = kvn_cf_end(&b);
	pthread_mutex_lock(&m->lock);
	if (!rc && m->fd < 0)
		rc = -ENOTCONN;
	if (!rc) {
		w.next = m->waiters;
		m->waiters = &w;
	}
	pthread_mutex_unlock(&m->lock);
	if (!rc)
		rc = kvn_cf_send_all(m->fd, b.p, b.len);
	pthread_mutex_unlock(&m->send_lock);
	kvn_cf_buf_free(&b);
	struct timespec ts = deadline_ts(timeout_ms);
	pthread_mutex_lock(&m->lock);
	while (!rc && w.status == 1)
		if (pthread_cond_timedwait(&m->cond, &m->lock, &ts))
			rc = -ETIMEDOUT;
	if (w.status == 1) { /* still listed: take it out so the thread never writes to it */
		for (struct waiter **pp = &m->waiters; *pp; pp = &(*pp)->next)
			if (*pp == &w) {
				*pp = w.next;
				break;
			}
	} else if (!rc) {
		rc = w.status;
	}
	pthread_mutex_unlock(&m->lock);
	return rc;
}

int
kvn_membership_lookup(struct kvn_membership *m, const struct kvn_digest *keys, size_t n,
		      uint32_t max_locs, uint32_t *nloc, struct kvn_loc *locs, int timeout_ms)
{
	if (max_locs == 0 || max_locs > KVN_CF_LOCS_MAX)
		return -EINVAL;
	if (timeout_ms <= 0)
		timeout_ms = m->o.timeout_ms;
	for (size_t off = 0; off < n; off += KVN_CF_LOOKUP_MAX) {
		uint32_t k = (uint32_t)(n - off < KVN_CF_LOOKUP_MAX ? n - off : KVN_CF_LOOKUP_MAX);
		int rc = lookup_frame(m, keys + off, k, max_locs, nloc + off, locs + off * max_locs,
				      timeout_ms);
		if (rc)
			return rc;
	}
	return 0;
}

int
kvn_membership_member(struct kvn_membership *m, uint32_t worker_id, struct kvn_member_info *out,
		      void *regions, size_t cap)
{
	int rc = 0;
	pthread_mutex_lock(&m->lock);
	bool found;
	size_t at = member_pos(m, worker_id, &found);
	if (!found) {
		rc = -ENOENT;
	} else {
		const struct mrec *r = &m->members[at];
		*out = r->info;
		out->regions = regions;
		if (r->info.regions_len > cap)
			rc = -ENOSPC;
		else if (r->info.regions_len)
			memcpy(regions, r->regions, r->info.regions_len);
	}
	pthread_mutex_unlock(&m->lock);
	return rc;
}
