/* Internal to the scheduler (node/scheduler/scheduler.c: connections, event loop, directory frames;
 * node/scheduler/scheduler_members.c: joins, expiry, member notices, the cluster view). */
#ifndef KVN_NODE_SCHEDULER_SCHEDULER_INT_H
#define KVN_NODE_SCHEDULER_SCHEDULER_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "core/clock.h"
#include "core/auth.h"
#include "node/cluster/ctlframe.h"
#include "core/log.h"
#include "core/netaddr.h"
#include "node/scheduler/scheduler.h"
#include "node/scheduler/scheduler_dir.h"

#define COMP	      "scheduler"
#define TRANSPORT_MAX 31

enum mstate { M_UNUSED = 0, M_ALIVE, M_EXPIRED };

struct member {
	enum mstate state;
	char name[KVN_CF_NAME_MAX + 1];
	char data_addr[KVN_CF_ADDR_MAX + 1];
	char transport[TRANSPORT_MAX + 1];
	uint8_t *blob;
	size_t blob_len;
	uint64_t capacity;
	uint32_t mtu; /* its RDMA port's active MTU, 0: not given */
	int64_t last_beat_ms;
	int64_t joined_ms;
	int64_t down_ms;   /* when it expired or left: its id is free worker_id_grace_ms later */
	int32_t name_next; /* next id in its name bucket's chain, -1 ends it */
	struct conn *conn; /* NULL while disconnected */
};

struct conn {
	int fd;
	char peer[64];
	int32_t member; /* worker id once joined, else -1 */
	bool want_evicts;
	bool closing; /* flush what is queued (an ERROR), then close */
	bool drop;    /* its unread replies are over the bound: closed after this batch */
	bool dead;    /* closed; freed once the current batch of events is handled */
	bool hello;   /* HELLO answered: nonces below are set */
	bool authed;  /* a JOIN or STATS proved the token (or none is needed) */
	bool backlog; /* whole frames wait in `in` for the next turn (FRAMES_PER_TURN) */
	bool eof;     /* the peer shut its side; handled once the backlog is done */
	uint8_t nonce_c[KVN_AUTH_NONCE], nonce_s[KVN_AUTH_NONCE];
	int64_t opened_ms;
	uint8_t *in;
	size_t in_len, in_cap;
	struct kvn_cf_buf out;
	size_t out_sent;
	size_t charged; /* out.len - out_sent as last added to s->out_bytes */
	struct conn *prev, *next;
};

struct kvn_scheduler {
	int lfd, efd, wake_fd;
	char addr[KVN_HOST_MAX + 8];
	uint32_t hb_ms, missed, unjoined_ms;
	int64_t grace_ms; /* worker_id_grace_ms; 0: ids are free at once */
	struct kvn_auth auth; /* the auth_token's key; proofs at JOIN and STATS */
	unsigned max_conns, nconns;
	struct conn *conns;
	struct conn *dead;	/* closed connections an event batch may still name */
	unsigned backlogged;	/* connections with backlog set */
	struct member *members; /* indexed by worker id */
	size_t nmembers;
	uint32_t held;	       /* ids not M_UNUSED: alive, or down within their grace */
	uint64_t blob_bytes;   /* region blobs held: alive members' only */
	uint32_t free_from;    /* every id below this one is held */
	int32_t *name_buckets; /* name hash -> first id of its chain, -1 = none */
	size_t nbuckets;       /* a power of two, or 0 before the first join */
	uint32_t alive;
	uint64_t epoch;
	struct kvn_dir *dir;
	struct kvn_cf_buf scratch; /* notices built once, copied to each member */
	uint64_t frames, lookups, keys_looked_up, publishes, refused, proto_errors;
	uint64_t joins, leaves, expiries, reclaimed;

	/* Replies and notices queued to all connections (scheduler_reply_queue_max). */
	uint64_t out_bytes, out_max, slow_dropped;
	bool any_drop; /* some connection has drop set */

	/* accept() out of file descriptors: the listener is not watched until accept_resume_ms. */
	uint64_t accept_errors;
	int64_t accept_resume_ms; /* 0 = watched */

	/* etcd (scheduler_ha.c): the election's thread and what the loop made of it; NULL: the
	 * only scheduler, always leading. */
	struct kvn_sched_ha *ha;
	bool leading;

	struct kvn_ratelimit rl_fail, rl_accept, rl_cap, rl_drop; /* log lines of refusals */
	struct kvn_plugins *plugins;				  /* listed by STATS; NULL = none */

	/* kvn_scheduler_stats_sync: another thread asks through stats_fd, the loop answers in
	 * stats_reply (stats_rc); one request at a time (stats_busy). */
	int stats_fd;
	pthread_mutex_t stats_lock;
	pthread_cond_t stats_cond;
	bool stats_busy, stats_want, stats_stopped;
	struct kvn_sched_stats stats_reply;
	int stats_rc;
};

static inline int64_t
kvn_sched_now_ms(void)
{
	return (int64_t)kvn_now_ms();
}

/* scheduler.c */
void kvn_sched_conn_close(struct kvn_scheduler *s, struct conn *c, const char *why);
/* Writes what is queued without blocking. -1 when the connection is gone or must go. */
int kvn_sched_conn_flush(struct kvn_scheduler *s, struct conn *c);
/* Queues an ERROR frame with code (a negative errno: -EPROTO for a malformed frame, -EACCES
 * for the auth token, -EINVAL for a field the node must fix, -EUSERS when no worker id is
 * left) and marks the connection to close once it is sent; returns -1. */
int kvn_sched_conn_fail(struct kvn_scheduler *s, struct conn *c, uint32_t seq, int code,
			const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Adds what c has queued to the scheduler-wide total. Over scheduler_reply_queue_max, the
 * connections with the largest queues are marked to be dropped (closed once the current batch
 * of events is handled, so that walks of the connection list stay valid). -1 when c is one of
 * them. */
int kvn_sched_charge(struct kvn_scheduler *s, struct conn *c);

/* scheduler_ha.c */
/* Opens the etcd client and starts the election thread (cluster_url set). */
int kvn_sched_ha_start(struct kvn_scheduler *s, const struct kvn_scheduler_opts *o, char *err,
		       size_t errlen);
void kvn_sched_ha_stop(struct kvn_scheduler *s);
/* The loop's turn (on the election's eventfd and every expiry pass): takes the lead (loads the
 * worker ids from etcd) or steps down (every connection closed, members and directory
 * dropped) as the election says; a lead whose lease etcd may no longer hold is given up here
 * too, before it can expire. */
void kvn_sched_ha_poll(struct kvn_scheduler *s);
/* A fresh worker id for name goes to etcd before the JOIN is answered: 0, or *id replaced by
 * the one etcd already holds for name (0 too); negative: etcd did not take it. */
int kvn_sched_ha_record(struct kvn_scheduler *s, const char *name, uint32_t *id, char *err,
			size_t errlen);
/* name's id is free again: its etcd record goes. */
void kvn_sched_ha_forget(struct kvn_scheduler *s, const char *name);
void kvn_sched_ha_stats(struct kvn_scheduler *s, struct kvn_sched_stats *st);
/* "standby of cluster C; the leader is X" for a refused JOIN. */
void kvn_sched_ha_standby_why(struct kvn_scheduler *s, char *out, size_t cap);

/* scheduler_members.c */
/* A name etcd holds an id for: kept as a departed member (its grace starts now), so that the
 * node gets it back when it joins. -EEXIST when the id is held by another name. */
int kvn_sched_reserve(struct kvn_scheduler *s, const char *name, uint32_t id);
/* Stepping down: every connection closed, every member and directory entry dropped. */
void kvn_sched_reset(struct kvn_scheduler *s, const char *why);
/* Sends the frames in s->scratch to every joined connection but skip (evict notices only to
 * those that asked for them). */
void kvn_sched_broadcast(struct kvn_scheduler *s, const struct conn *skip, bool evict_notice);
void kvn_sched_member_down(struct kvn_scheduler *s, uint32_t id, const char *why);
/* Expires members silent for missed beats, frees the ids of names down for longer than
 * worker_id_grace_ms and closes connections that never joined. */
void kvn_sched_expire(struct kvn_scheduler *s);
int kvn_sched_join(struct kvn_scheduler *s, struct conn *c, uint32_t seq, const uint8_t *body,
		   uint32_t len);
/* HELLO: the connection's nonces and the scheduler's proof (CHALLENGE). */
int kvn_sched_hello(struct kvn_scheduler *s, struct conn *c, uint32_t seq, const uint8_t *body,
		    uint32_t len);
int kvn_sched_stats(struct kvn_scheduler *s, struct conn *c, uint32_t seq, const uint8_t *body,
		    uint32_t len);

#endif
