/* The node's cluster glue (docs/architecture.md §1, §5): opens the transport, registers the chunk
 * pool once, serves reads of it on `listen`, joins the scheduler with that address and region,
 * feeds the chunk directory from the cpu tier, and attaches the peer tier (backends/peer.c). */
#ifndef KVN_NODE_CLUSTER_H
#define KVN_NODE_CLUSTER_H

#include <stdint.h>

#include "kvnode/backend.h"
#include "kvnode/transport.h"
#include "node/config.h"

struct kvn_cluster;
struct kvn_membership;
struct kvn_member_info;
struct kvn_storage;
struct kvn_engine;

/* The engine's pool and storage manager, for the glue. */
struct kvn_pool *kvn_engine_pool(struct kvn_engine *eng);
struct kvn_storage *kvn_engine_storage(struct kvn_engine *eng);

/* Starts the cluster part of a node when cfg->scheduler_url is set (*out NULL otherwise).
 * Needs the cpu tier (its pool is what peers read). An unreachable scheduler is not fatal (the
 * membership thread keeps trying); a refused join (auth token) is. */
int kvn_cluster_start(const struct kvn_config *cfg, struct kvn_engine *eng,
		      struct kvn_cluster **out, char *err, size_t errlen);
/* Leaves the cluster, detaches the peer tier, closes the transport. NULL is a no-op. */
void kvn_cluster_stop(struct kvn_cluster *c);
/* Where peers read this node's pool ("127.0.0.1:41234"), and the transport's name. */
const char *kvn_cluster_data_addr(const struct kvn_cluster *c);
const char *kvn_cluster_transport(const struct kvn_cluster *c);
struct kvn_membership *kvn_cluster_membership(struct kvn_cluster *c);
/* The data listener's counters (connections, refusals); all zero when c is NULL or its
 * transport keeps none. */
struct kvn_transport_stats;
void kvn_cluster_listener_stats(struct kvn_cluster *c, struct kvn_transport_stats *out);

/* What the peer tier reads with: the transport, the registration of this node's pool (reads
 * land in scratch slots of it), the cpu tier that hands those out, and the membership. */
struct kvn_peer_link {
	const struct kvn_transport_ops *ops;
	struct kvn_transport *tp;
	struct kvn_tp_mr *mr;
	struct kvn_pool *pool;
	struct kvn_backend *cpu;
	struct kvn_membership *m;
	int timeout_ms;	    /* peer_timeout_ms: a lookup, a connect, a READ */
	uint64_t max_chunk; /* max_chunk_size: a longer directory entry is a miss; 0 = none */
};
/* link NULL detaches (closing every peer connection); gets miss while detached. */
void kvn_peer_attach(struct kvn_backend *be, const struct kvn_peer_link *link);
/* Membership news: a member up/down (its connection is re-made, its cached locations go),
 * and evicted digests (their cached locations go). */
void kvn_peer_member(struct kvn_backend *be, const struct kvn_member_info *mi);
void kvn_peer_evicted(struct kvn_backend *be, uint32_t worker_id, const struct kvn_digest *d,
		      size_t n);
/* Slot-image bytes READ from peers so far. */
uint64_t kvn_peer_bytes_read(struct kvn_backend *be);

#endif
