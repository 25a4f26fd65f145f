/* The local client server of `kvnode serve`: hosts an engine on a unix socket and answers the
 * control protocol (node/serve/ctlproto.h), a thread per connection up to a cap. */
#ifndef KVN_NODE_SERVE_SERVER_H
#define KVN_NODE_SERVE_SERVER_H

#include <stdint.h>

#include "kvnode/kvnode.h"

struct kvn_server;

struct kvn_server_opts {
	const char *socket_path;
	unsigned max_conns; /* client_max_connections; 0 = 128. Past it a client gets -EBUSY. */
	int io_timeout_ms;  /* idle or stalled connection is closed after this; 0 = 30 s */
	/* max_chunk_size; 0 = KVN_CTL_VALUE_MAX. A PUT declaring more gets -EMSGSIZE naming the
	 * key, before its value is read, and its connection is closed. */
	uint64_t value_max;
	uint64_t client_max_held; /* client_max_held_bytes; 0 = a quarter of the pool */
};

/* Binds and listens on opts->socket_path. A socket file nothing answers on is stale and
 * replaced; a live daemon there is -EADDRINUSE, anything that is not a socket -EEXIST (never
 * deleted). err names the path and what to do. The engine must outlive the server. */
int kvn_server_create(struct kvn_engine *eng, const struct kvn_server_opts *opts,
		      struct kvn_server **out, char *err, size_t errlen);
/* The checks of kvn_server_create without side effects: whether path is usable (free, or a
 * stale socket create would replace). Lets a daemon refuse before opening costly tiers. */
int kvn_server_probe(const char *socket_path, char *err, size_t errlen);
/* "unix:<path>", for the start-up line and logs. */
const char *kvn_server_address(const struct kvn_server *srv);
/* Accepts and serves until kvn_server_stop; then stops accepting, lets requests in flight
 * finish (connections still busy after the I/O timeout are cut) and returns 0 once no
 * connection thread is left. */
int kvn_server_run(struct kvn_server *srv);
/* The plugins STAT lists (kvnode/plugin.h); set before kvn_server_run, kept until destroy. */
struct kvn_plugins;
void kvn_server_set_plugins(struct kvn_server *srv, struct kvn_plugins *plugins);
/* The lm:// server (lm_listen) whose counters STAT reports under "lm_server"; set before
 * kvn_server_run, must outlive the server's connections. NULL: none. */
struct kvn_lm_server;
void kvn_server_set_lm(struct kvn_server *srv, struct kvn_lm_server *lm);
/* How a client's CONTAINS asks the cluster (node/serve/clientsrv.h); set before
 * kvn_server_run. Without it, keys this node does not hold are absent. */
#include "node/serve/clientsrv.h"
void kvn_server_set_held(struct kvn_server *srv, kvn_clientsrv_held_fn fn, void *ctx);
/* The client protocol's counters (all zero without the cpu tier). */
void kvn_server_client_stats(struct kvn_server *srv, struct kvn_clientsrv_stats *out);
/* Counters of the client socket (STAT shows them under "server"; metrics read them here). */
struct kvn_server_stats {
	uint64_t connections; /* open now */
	uint64_t accepted, requests, proto_errors, refused;
	uint64_t oversized; /* PUTs refused over value_max (max_chunk_size) */
};
void kvn_server_stats(struct kvn_server *srv, struct kvn_server_stats *out);
/* Async-signal-safe: asks kvn_server_run to wind down. */
void kvn_server_stop(struct kvn_server *srv);
/* Closes the listening socket and removes the socket file if it is still this server's. */
void kvn_server_destroy(struct kvn_server *srv);

#endif
