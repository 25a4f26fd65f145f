/* Thread-per-connection server skeleton shared by the local client server (node/server.c) and
 * the lm:// server (node/lm_server.c): accept loop, connection cap, one detached thread per
 * connection, and a stop that lets requests in flight finish and cuts the ones still busy. */
#ifndef KVN_NODE_CONNSRV_H
#define KVN_NODE_CONNSRV_H

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
	/* Idle connection seen, no request for io_timeout_ms (optional; NULL: no idle limit). */
	void (*idle)(void *owner, struct kvn_connsrv_conn *c);
};

struct kvn_connsrv_opts {
	const char *comp; /* log component */
	const char *addr; /* for log lines; kept by pointer, must outlive the server */
	unsigned max_conns;
	int io_timeout_ms; /* SO_RCVTIMEO/SO_SNDTIMEO of each connection; idle limit with idle */
	bool nodelay;	   /* TCP_NODELAY on accepted sockets */
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
