/* Internal to the scheduler (node/scheduler.c: connections, event loop, directory frames;
 * node/scheduler_members.c: joins, expiry, member notices, the cluster view). */
#ifndef KVN_NODE_SCHEDULER_INT_H
#define KVN_NODE_SCHEDULER_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "node/ctlframe.h"
#include "node/netaddr.h"
#include "node/scheduler.h"
#include "node/scheduler_dir.h"

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
	int64_t last_beat_ms;
	int64_t joined_ms;
	struct conn *conn; /* NULL while disconnected */
};

struct conn {
	int fd;
	char peer[64];
	int32_t member; /* worker id once joined, else -1 */
	bool want_evicts;
	bool closing; /* flush what is queued (an ERROR), then close */
	bool dead;    /* closed; freed once the current batch of events is handled */
	int64_t opened_ms;
	uint8_t *in;
	size_t in_len, in_cap;
	struct kvn_cf_buf out;
	size_t out_sent;
	struct conn *prev, *next;
};

struct kvn_scheduler {
	int lfd, efd, wake_fd;
	char addr[KVN_HOST_MAX + 8];
	uint32_t hb_ms, missed, unjoined_ms;
	char *token;
	unsigned max_conns, nconns;
	struct conn *conns;
	struct conn *dead;	/* closed connections an event batch may still name */
	struct member *members; /* indexed by worker id */
	size_t nmembers;
	uint32_t alive;
	uint64_t epoch;
	struct kvn_dir *dir;
	struct kvn_cf_buf scratch; /* notices built once, copied to each member */
	uint64_t frames, lookups, keys_looked_up, publishes, refused, proto_errors;
	uint64_t joins, leaves, expiries;
	struct kvn_plugins *plugins; /* listed by STATS; NULL = none */

	/* kvn_scheduler_stats_json_sync: another thread asks through stats_fd, the loop
	 * answers in stats_reply; one request at a time (stats_busy). */
	int stats_fd;
	pthread_mutex_t stats_lock;
	pthread_cond_t stats_cond;
	bool stats_busy, stats_want, stats_stopped;
	char *stats_reply;
};

static inline int64_t
kvn_sched_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* scheduler.c */
void kvn_sched_conn_close(struct kvn_scheduler *s, struct conn *c, const char *why);
/* Writes what is queued without blocking. -1 when the connection is gone or must go. */
int kvn_sched_conn_flush(struct kvn_scheduler *s, struct conn *c);
/* Queues an ERROR frame and marks the connection to close once it is sent; returns -1. */
int kvn_sched_conn_fail(struct kvn_scheduler *s, struct conn *c, uint32_t seq, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* scheduler_members.c */
/* Sends the frames in s->scratch to every joined connection but skip (evict notices only to
 * those that asked for them). */
void kvn_sched_broadcast(struct kvn_scheduler *s, const struct conn *skip, bool evict_notice);
void kvn_sched_member_down(struct kvn_scheduler *s, uint32_t id, const char *why);
/* Expires members silent for missed beats and closes connections that never joined. */
void kvn_sched_expire(struct kvn_scheduler *s);
int kvn_sched_join(struct kvn_scheduler *s, struct conn *c, uint32_t seq, const uint8_t *body,
		   uint32_t len);
int kvn_sched_stats(struct kvn_scheduler *s, struct conn *c, uint32_t seq, const uint8_t *body,
		    uint32_t len);

#endif
