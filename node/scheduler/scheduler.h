/* `kvnode scheduler` (docs/architecture.md §5): the membership service and chunk directory. One
 * epoll thread serves every node over TCP with the control frames of node/ctlframe.h. */
#ifndef KVN_NODE_SCHEDULER_SCHEDULER_H
#define KVN_NODE_SCHEDULER_SCHEDULER_H

#include <stddef.h>
#include <stdint.h>

struct kvn_scheduler;

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

/* The cluster view a STATS request gets: malloc'd JSON text, NULL when out of memory. Only
 * from the thread running kvn_scheduler_run, or while it is not running. */
char *kvn_scheduler_stats_json(struct kvn_scheduler *s);
/* The same from any other thread (the metrics listener): the loop builds it between events.
 * NULL when out of memory, when the loop has ended, or when it did not answer within
 * timeout_ms. Before kvn_scheduler_run starts, it waits for it. */
char *kvn_scheduler_stats_json_sync(struct kvn_scheduler *s, int timeout_ms);
/* The plugins of this process, listed by STATS; call before kvn_scheduler_run. */
struct kvn_plugins;
void kvn_scheduler_set_plugins(struct kvn_scheduler *s, struct kvn_plugins *plugins);

#endif
