/* Thread-per-connection server skeleton shared by the local client server (node/serve/server.c) and
 * the lm:// server (node/serve/lm_server.c): accept loop, connection cap (refusing, or closing the
 * connection idle the longest), idle limit, one detached thread per connection, deadline reads,
 * and a stop that lets requests in flight finish and cuts the ones still busy. */
#ifndef KVN_NODE_SERVE_CONNSRV_H
#define KVN_NODE_SERVE_CONNSRV_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct kvn_connsrv;

/* A connection. An owner with per-connection state embeds this as the first member of its own
 * struct and gives that struct's size as conn_size. */
struct kvn_connsrv_conn {
	struct kvn_connsrv *cs;
	int fd;
	struct kvn_connsrv_conn *prev, *next;
	/* kvn_now_ms() when it last went idle between requests, 0 while one is served: what the
	 * accept loop compares when it must make room at the cap. */
	_Atomic uint64_t idle_since_ms;
	bool evicting; /* chosen to make room and shut down; under the server's lock */
	/* The owner's: a long-lived connection (an inference worker's) never closed for being
	 * idle; set from serve_one. */
	bool never_idle;
};

struct kvn_connsrv_ops {
	size_t conn_size; /* sizeof the owner's connection struct (>= sizeof(kvn_connsrv_conn)) */
	/* Called on the connection's thread before its first request (optional). */
	void (*conn_start)(void *owner, struct kvn_connsrv_conn *c);
	/* Serves one request once the socket is readable: 0 keeps the connection, < 0 ends it. */
	int (*serve_one)(void *owner, struct kvn_connsrv_conn *c);
	/* Frees what the owner attached to c; the skeleton then closes fd and frees c
	 * (optional). */
	void (*conn_end)(void *owner, struct kvn_connsrv_conn *c);
	/* Tells a client turned away why (over the cap, out of memory, no thread), logs it, and
	 * leaves fd open: the skeleton closes it. status is a negative errno. */
	void (*refuse)(void *owner, int fd, int status, const char *why);
	/* c had no request for idle_timeout_ms and is being closed (optional: a log line). */
	void (*idle)(void *owner, struct kvn_connsrv_conn *c);
	/* c, idle the longest, is being closed to make room for the client on newcomer_fd
	 * (optional: a log line). Runs on the accept thread with the server's lock held: it must
	 * not call the skeleton. */
	void (*evicted)(void *owner, struct kvn_connsrv_conn *c, int newcomer_fd);
};

struct kvn_connsrv_opts {
	const char *comp; /* log component */
	const char *addr; /* for log lines; kept by pointer, must outlive the server */
	unsigned max_conns;
	const char *max_conns_key; /* its config key, for the refusal's reason */
	int io_timeout_ms;   /* SO_RCVTIMEO/SO_SNDTIMEO of each connection; the drain's grace */
	int idle_timeout_ms; /* no request for this long: closed (ops->idle); 0 = never */
	/* At max_conns a newcomer takes the place of the connection idle the longest when that
	 * one has been idle at least this long; 0, or none idle that long: the newcomer is
	 * refused. */
	int evict_idle_ms;
	bool nodelay; /* TCP_NODELAY on accepted sockets */
	/* Stopping ends a connection between requests even when one is already queued (a client
	 * that never pauses must not hold the node up); else such a request is still served. */
	bool stop_drops_queued;
};

struct kvn_connsrv {
	struct kvn_connsrv_opts o;
	const struct kvn_connsrv_ops *ops;
	void *owner;
	int lfd;
	int wake_fd; /* eventfd, never read: readable from stop on, for every poller */

	pthread_mutex_t lock;
	pthread_cond_t drained;
	unsigned nconns;
	struct kvn_connsrv_conn *conns;

	_Atomic uint64_t accepted, refused;
	_Atomic uint64_t idle_closed; /* closed after idle_timeout_ms without a request */
	_Atomic uint64_t evicted;     /* closed, idle, to make room for a newcomer at the cap */
};

/* Sets cs up (lfd -1: the owner sets cs->lfd to its listening socket before the accept loop,
 * and closes it itself). 0 or -errno with err saying what failed; destroy is safe either way. */
int kvn_connsrv_init(struct kvn_connsrv *cs, const struct kvn_connsrv_opts *opts,
		     const struct kvn_connsrv_ops *ops, void *owner, char *err, size_t errlen);
/* Accepts until kvn_connsrv_stop, then stops accepting and returns (connections go on). */
void kvn_connsrv_accept_loop(struct kvn_connsrv *cs);
/* Async-signal-safe: wakes the accept loop and every connection. */
void kvn_connsrv_stop(struct kvn_connsrv *cs);
/* After the accept loop returned: waits for connection threads; ones still busy after the I/O
 * timeout have their sockets shut down so a trickling client cannot hold the node up. */
void kvn_connsrv_drain(struct kvn_connsrv *cs);
/* Open connections now. */
unsigned kvn_connsrv_conns(struct kvn_connsrv *cs);
/* Closes the wake fd; the listening socket and cs itself are the caller's. */
void kvn_connsrv_destroy(struct kvn_connsrv *cs);

#endif
