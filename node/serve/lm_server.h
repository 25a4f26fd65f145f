/* The lm server of `kvnode serve` (config key lm_listen): answers LMCache's cache-server protocol
 * (docs/architecture.md §10) in both of its generations from the node's engine, so an unmodified
 * LMCache instance with `remote_url: lm://HOST:PORT` uses this node, its tiers and its eviction as
 * its remote store. */
#ifndef KVN_NODE_SERVE_LM_SERVER_H
#define KVN_NODE_SERVE_LM_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "kvnode/kvnode.h"

struct kvn_lm_server;

struct kvn_lm_server_opts {
	const char *listen; /* HOST:PORT (port 0: any free one) */
	/* lm_max_connections; 0 = 128. At the cap a newcomer takes the place of the connection
	 * idle the longest (idle 1 s at least), else it is closed. */
	unsigned max_conns;
	int idle_timeout_ms; /* lm_idle_timeout_ms: a client silent this long is closed; 0 = never
			      */
	/* lm_request_timeout_ms: once a request's first byte arrived, its header and payload must
	 * all be in within this, else the connection is closed; also the stall allowed to one
	 * write of a reply. 0 = 30 s. */
	int io_timeout_ms;
	/* max_chunk_size: largest PUT payload; 0 = 64 MiB, at most INT32_MAX. A PUT over it is
	 * read and thrown away (the protocol has no reply to PUT, and the client stays in step)
	 * and logged; nothing is stored. */
	uint64_t value_max;
};

/* Binds, listens and starts serving in background threads. The engine must outlive the
 * server. err names the address and what to do. */
int kvn_lm_server_start(struct kvn_engine *eng, const struct kvn_lm_server_opts *opts,
			struct kvn_lm_server **out, char *err, size_t errlen);
/* "HOST:PORT" actually bound (the real port when 0 was asked for). */
const char *kvn_lm_server_address(const struct kvn_lm_server *srv);
/* Why a PUT was not stored. Its payload is read and dropped in every case (PUT has no reply:
 * the client sends the payload whatever happens and would be cut off mid-send, or read stale
 * bytes as its next reply, otherwise); after a bad key or bad metadata the connection is then
 * closed (as LMCache's own server closes on a key or field it cannot parse), after the others
 * it goes on. */
enum kvn_lm_drop {
	KVN_LM_DROP_OVERSIZED, /* over max_chunk_size */
	KVN_LM_DROP_BAD_KEY,   /* a key kvnode cannot take (empty, control characters, not UTF-8) */
	KVN_LM_DROP_BAD_METADATA, /* fmt, dtype or a shape out of range */
	KVN_LM_DROP_NO_MEMORY,	  /* no memory to receive the value into */
	KVN_LM_DROP_NOT_STORED,	  /* the engine refused it (no tier can hold it, an I/O error) */
	KVN_LM_DROP_N,
};
/* "oversized", "bad_key", "bad_metadata", "no_memory", "not_stored". */
const char *kvn_lm_drop_name(enum kvn_lm_drop why);

/* Counters for stat and tests. */
struct kvn_lm_server_stats {
	uint64_t accepted, refused, requests, proto_errors, connections;
	uint64_t by_command[5];	   /* requests by command: PUT, GET, EXIST, LIST, HEALTH */
	uint64_t bytes_in;	   /* PUT payload bytes received */
	uint64_t bytes_out;	   /* GET and LIST payload bytes sent */
	uint64_t errors;	   /* requests the node failed (PUT not stored, GET, EXIST or LIST
				    * failing for another reason than a miss) */
	uint64_t idle_closed;	   /* connections closed after idle_timeout_ms of silence */
	uint64_t request_timeouts; /* connections closed with a request incomplete after
				    * io_timeout_ms */
	uint64_t evicted;	   /* idle connections closed to make room for a new client */
	uint64_t oversized;	   /* PUTs over value_max, thrown away */
	/* PUTs read and dropped, by enum kvn_lm_drop (oversized among them). */
	uint64_t dropped_puts[KVN_LM_DROP_N];
	/* Connections by the protocol generation of their first request (enum kvn_lm_gen:
	 * v0, v1); a connection that never sent a whole request is in neither. */
	uint64_t by_protocol[2];
};
void kvn_lm_server_stats(struct kvn_lm_server *srv, struct kvn_lm_server_stats *out);
/* The same counters as a JSON object (for `kvnode stat`); NULL when out of memory. */
struct cJSON;
struct cJSON *kvn_lm_server_stats_json(struct kvn_lm_server *srv);
/* Stops accepting, lets requests in flight finish (cut after the I/O timeout), waits for every
 * thread and frees the server. NULL is a no-op. */
void kvn_lm_server_stop(struct kvn_lm_server *srv);

#endif
