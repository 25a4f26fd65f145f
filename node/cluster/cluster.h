/* The node's cluster glue (docs/architecture.md §1, §5): opens the transport, registers the chunk
 * pool once, serves reads of it on `listen`, joins the scheduler with that address and region,
 * feeds the chunk directory from the cpu tier, and attaches the peer tier (backends/peer.c). */
#ifndef KVN_NODE_CLUSTER_CLUSTER_H
#define KVN_NODE_CLUSTER_CLUSTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvnode/backend.h"
#include "kvnode/transport.h"
#include "node/engine/config.h"

struct kvn_cluster;
struct kvn_membership;
struct kvn_member_info;
struct kvn_storage;
struct kvn_engine;

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
/* Whether some member holds each of n keys: one lookup at the scheduler for all of them.
 * held[i] true when key i has a location (this node's own included). 0 or a negative errno
 * (no scheduler, a timeout). */
int kvn_cluster_held(struct kvn_cluster *c, const struct kvn_digest *keys, size_t n, bool *held,
		     int timeout_ms);
/* The data listener's counters (connections, refusals); all zero when c is NULL or its
 * transport keeps none. */
struct kvn_transport_stats;
/* How GPU in's memory registers with the transport (ops, tp): a 2 MiB allocation down the
 * ladder, rep filled, the registration and the allocation dropped. 0 when a way won; else
 * -errno with err set: rep->nsteps is 0 when the probe could not even be allocated, else rep
 * has every step's reason. kvnode stat and kvnode doctor report the same. */
struct kvn_gpu;
struct kvn_gpu_info;
int kvn_cluster_gpu_probe(const struct kvn_transport_ops *ops, struct kvn_transport *tp,
			  struct kvn_gpu *gpu, const struct kvn_gpu_info *in,
			  struct kvn_reg_report *rep, char *err, size_t errlen);

/* The region descriptor a node joins with (its pool as peers address it): addr u64 | len u64 |
 * rkey u32 | zero u32, little-endian. decode: -EPROTO when n is shorter. */
#define KVN_CLUSTER_REGION_BLOB 24
int kvn_cluster_region_decode(const uint8_t *blob, size_t n, struct kvn_mem_desc *out);
void kvn_cluster_listener_stats(struct kvn_cluster *c, struct kvn_transport_stats *out);

/* The rails a node opens (node/cluster/rails_plan.c): with rdma_devices, each device (every
 * one with an active port for "auto") on its own address (RoCE v2 GID, else IPoIB) at listen's
 * port; with a listen list "A,B", one rail an address (verbs: on the device with it); else one
 * rail of rdma_device and listen. verbs: the transport is verbs (devices come from sysfs at
 * root, NULL: the real one). -errno with err naming the key on a bad combination. */
#include "rdma/rails.h"
struct kvn_rails_plan {
	size_t n;
	char device[KVN_RAILS_MAX][64]; /* "" with tcp, or for verbs' own choice */
	char listen[KVN_RAILS_MAX][KVN_RAILS_ADDR_MAX + 1];
	int numa[KVN_RAILS_MAX];
};
int kvn_cluster_rails_plan(const struct kvn_config *cfg, bool verbs, const char *root,
			   struct kvn_rails_plan *pl, char *err, size_t errlen);
/* The rails of a node (NULL when c is); kvn_rails_stats reads them. */
struct kvn_rails *kvn_cluster_rails(struct kvn_cluster *c);

#endif
