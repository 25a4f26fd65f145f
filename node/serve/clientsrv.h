/* The node's side of the client protocol (client/proto.h): the connections of the local
 * socket that start with HELLO are the host's inference workers. Each gets the pool's memfd,
 * and holds leases (a view of a chunk: the slot cannot be evicted or reused while held) and
 * reservations (a slot it writes a value into) until it gives them back or its connection
 * closes. What one client may hold is bounded (client_max_held_bytes). */
#ifndef KVN_NODE_SERVE_CLIENTSRV_H
#define KVN_NODE_SERVE_CLIENTSRV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client/proto.h"
#include "kvnode/kvnode.h"

struct kvn_clientsrv;
struct kvn_client_conn;

/* Whether a member of the cluster holds each key (one scheduler lookup); see
 * kvn_cluster_held. */
typedef int (*kvn_clientsrv_held_fn)(void *ctx, const struct kvn_digest *keys, size_t n,
				     bool *held);

struct kvn_clientsrv_opts {
	uint64_t max_chunk; /* max_chunk_size: a larger put is -EMSGSIZE */
	uint64_t max_held;  /* client_max_held_bytes; 0 = a quarter of the pool */
	int io_timeout_ms;  /* a started request must arrive in; 0 = 30000 */
};

/* -ENOTSUP when the engine has no cpu tier (the pool is what clients map). */
int kvn_clientsrv_create(struct kvn_engine *eng, const struct kvn_clientsrv_opts *opts,
			 struct kvn_clientsrv **out, char *err, size_t errlen);
void kvn_clientsrv_destroy(struct kvn_clientsrv *cs);
/* Set before serving: how CONTAINS asks the cluster about keys this node does not hold. */
void kvn_clientsrv_set_held(struct kvn_clientsrv *cs, kvn_clientsrv_held_fn fn, void *ctx);

/* A connection whose first frame (its header in h) is a HELLO: answers it and hands over the
 * pool. *out is the connection's state, NULL when it was refused (then the connection
 * closes). peer names it in the log ("pid 123"). */
int kvn_clientsrv_hello(struct kvn_clientsrv *cs, int fd, const char *peer,
			const struct kvn_cp_hdr *h, struct kvn_client_conn **out);
/* Serves the connection's next request: 0 keeps it, < 0 closes it. */
int kvn_clientsrv_serve(struct kvn_clientsrv *cs, struct kvn_client_conn *cc);
/* The connection closed: its leases and reservations are given back. */
void kvn_clientsrv_conn_end(struct kvn_clientsrv *cs, struct kvn_client_conn *cc);

struct kvn_clientsrv_stats {
	uint64_t clients;		/* connected now */
	uint64_t leases;		/* held now, all clients */
	uint64_t reservations;		/* held now */
	uint64_t held_bytes;		/* of both */
	uint64_t max_held;		/* one client may hold (client_max_held_bytes) */
	uint64_t requests[KVN_CP_NOPS]; /* by op */
	uint64_t keys;			/* in all requests */
	uint64_t held_refused;		/* entries refused at client_max_held_bytes */
	uint64_t cluster_lookups;	/* scheduler lookups CONTAINS made */
	uint64_t copied_to_pool;	/* gets whose value was not in the pool (copied in) */
	uint64_t protocol_errors;
};
void kvn_clientsrv_stats(struct kvn_clientsrv *cs, struct kvn_clientsrv_stats *out);

#endif
