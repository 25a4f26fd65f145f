/* `kvnode scheduler` (docs/architecture.md §5): the membership service and chunk directory. One
 * epoll thread serves every node over TCP with the control frames of node/cluster/ctlframe.h. */
#ifndef KVN_NODE_SCHEDULER_SCHEDULER_H
#define KVN_NODE_SCHEDULER_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/netaddr.h"
#include "node/cluster/ctlframe.h"

struct kvn_scheduler;
struct kvn_etcd_opts;

struct kvn_scheduler_opts {
	const char *listen;	    /* HOST:PORT; port 0 picks one */
	uint32_t heartbeat_ms;	    /* beat period members are told; 0 = 500 */
	uint32_t missed_beats;	    /* a member silent this many periods is expired; 0 = 3 */
	const char *auth_token;	    /* NULL or "": no token needed */
	unsigned max_conns;	    /* scheduler_max_connections; 0 = 1024; more are accepted and
				     * closed at once */
	size_t expect_entries;	    /* sizes the directory up front; 0 = grow as needed */
	uint32_t unjoined_ms;	    /* scheduler_unjoined_timeout_ms: a connection that has not
				     * joined is closed after this; 0 = 10000 (idle sockets must not
				     * hold the connection cap) */
	uint64_t reply_queue_max;   /* scheduler_reply_queue_max: replies and notices queued to all
				     * connections together; past it the largest queue's connection
				     * is dropped; 0 = 256 MiB */
	int64_t worker_id_grace_ms; /* worker_id_grace_ms: an expired or departed name keeps its
				     * id this long (a restarting node gets it back), then the id
				     * is free; 0 = 600000, < 0 = free at once */
	/* scheduler_url etcd://HOST:PORT[,...]/CLUSTER (docs/architecture.md §5.6): this
	 * scheduler leads CLUSTER while it holds the leader key, stands by otherwise; worker ids
	 * live in etcd. NULL: the only scheduler, as before. */
	const char *cluster_url;
	const struct kvn_etcd_opts *etcd; /* the client's options but endpoints; NULL: defaults */
	uint32_t lease_ttl_s;		  /* scheduler_lease_ttl_s; 0 = 5 */
	const char *advertise; /* scheduler_advertise: HOST:PORT the leader key names; NULL: the
				* bound address (refused when that is 0.0.0.0 or ::) */
};

int kvn_scheduler_create(const struct kvn_scheduler_opts *opts, struct kvn_scheduler **out,
			 char *err, size_t errlen);
/* "HOST:PORT" actually bound, for logs and for tests that listen on port 0. */
const char *kvn_scheduler_address(const struct kvn_scheduler *s);
/* Serves until kvn_scheduler_stop; returns 0 (or a negative errno when epoll itself fails). */
int kvn_scheduler_run(struct kvn_scheduler *s);
/* Makes kvn_scheduler_run return; safe from any thread. */
void kvn_scheduler_stop(struct kvn_scheduler *s);
/* Closes every connection and frees everything (after kvn_scheduler_run returned). */
void kvn_scheduler_destroy(struct kvn_scheduler *s);

/* One name holding a worker id, as the cluster view shows it. */
struct kvn_sched_member_stats {
	uint32_t worker_id;
	bool alive;	/* false: expired or left, keeping its id for worker_id_grace_ms */
	bool connected; /* a connection is joined under it now */
	char name[KVN_CF_NAME_MAX + 1];
	char data_addr[KVN_CF_ADDR_MAX + 1];
	char transport[32];
	char peer[64]; /* its connection's address, "" while disconnected */
	uint64_t capacity;
	uint32_t mtu;	 /* its RDMA port's active MTU, 0: not given (tcp) */
	uint64_t chunks; /* directory entries it published */
	int64_t last_heartbeat_ms_ago;
	/* The first bytes of the region descriptors it joined with (opaque to the scheduler:
	 * a node's pool, kvn_cluster_region_decode), for `kvnode doctor --peers`. */
	uint8_t region[32];
	size_t region_len;
};

/* The scheduler's counters and members at one moment: what STATS replies with (as JSON) and
 * what the metrics listener reads, field by field. */
struct kvn_sched_stats {
	uint64_t epoch, entries, directory_bytes, member_region_bytes;
	uint64_t connections, max_connections, unjoined_timeout_ms;
	uint64_t reply_queue_bytes, reply_queue_max, slow_readers_dropped, accept_errors;
	uint64_t worker_count, worker_ids_held, worker_ids_reclaimed, worker_id_grace_ms;
	uint64_t heartbeat_ms;
	uint64_t frames, lookups, keys_looked_up, published, refused, protocol_errors;
	uint64_t joins, leaves, expiries;
	/* etcd (cluster_url): whether this one leads, who does, how often it won, stepped down
	 * (lost etcd or its key), and saw the leadership move from one scheduler to another */
	bool ha, leading;
	char cluster[65], leader[KVN_HOST_MAX + 8];
	uint64_t elections, stepdowns, failovers, lease_ttl_s;
	size_t nmembers;
	struct kvn_sched_member_stats *members; /* malloc'd; kvn_sched_stats_free */
};

/* Fills out; -ENOMEM (out left empty) when the member list cannot be allocated. Only from the
 * thread running kvn_scheduler_run, or while it is not running. */
int kvn_scheduler_stats(struct kvn_scheduler *s, struct kvn_sched_stats *out);
/* The same from any other thread (the metrics listener): the loop takes it between events.
 * -ENOMEM, -ESHUTDOWN once the loop has ended, -ETIMEDOUT when it did not answer within
 * timeout_ms. Before kvn_scheduler_run starts, it waits for it. */
int kvn_scheduler_stats_sync(struct kvn_scheduler *s, int timeout_ms, struct kvn_sched_stats *out);
void kvn_sched_stats_free(struct kvn_sched_stats *st);
/* The cluster view a STATS request gets (the stats above and the plugins): malloc'd JSON
 * text, NULL when out of memory. Same thread rule as kvn_scheduler_stats. */
char *kvn_scheduler_stats_json(struct kvn_scheduler *s);
/* The plugins of this process, listed by STATS; call before kvn_scheduler_run. */
struct kvn_plugins;
void kvn_scheduler_set_plugins(struct kvn_scheduler *s, struct kvn_plugins *plugins);

#endif
