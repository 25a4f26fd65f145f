/* The node side of the membership service (docs/architecture.md §5): join the scheduler, heartbeat
 * on its own thread, publish admit/evict batches asynchronously, look up batches of digests, and
 * keep a table of the members (data address, transport, region descriptors). After losing the
 * scheduler it re-joins and asks its owner to re-publish the whole index. */
#ifndef KVN_NODE_CLUSTER_MEMBERSHIP_H
#define KVN_NODE_CLUSTER_MEMBERSHIP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "node/cluster/ctlframe.h"
#include "node/cluster/etcd.h"
#include "core/netaddr.h"

struct kvn_membership;

/* A member as the scheduler announced it. regions points at the opaque region descriptors the
 * member's transport produced (valid during a callback, or into the caller's buffer). */
struct kvn_member_info {
	uint32_t worker_id;
	bool up; /* false: it left or was expired, its chunks are gone from the directory */
	uint64_t capacity;
	uint64_t epoch;
	uint32_t worker_count;
	char name[KVN_CF_NAME_MAX + 1];
	char data_addr[KVN_CF_ADDR_MAX + 1];
	char transport[32];
	const void *regions;
	size_t regions_len;
};

/* Called on the membership thread; they must not block for long and must not call
 * kvn_membership_lookup or kvn_membership_stop (publishing is fine). */
struct kvn_membership_cbs {
	void *ctx;
	/* After every successful join, first and re-joins: the scheduler holds nothing of this
	 * node now, so the owner re-publishes its whole index (kvn_membership_publish). */
	void (*joined)(void *ctx, struct kvn_membership *m, uint32_t worker_id,
		       uint32_t worker_count, uint64_t epoch);
	/* A member came up or went down (this node's own record included). */
	void (*member)(void *ctx, const struct kvn_member_info *mi);
	/* worker_id dropped these digests (evicted): invalidate cached locations. Only with
	 * want_evicts. */
	void (*evicted)(void *ctx, uint32_t worker_id, const struct kvn_digest *digests, size_t n);
};

struct kvn_membership_opts {
	/* HOST:PORT, or scheduler_url with any scheme:// prefix; etcd://HOST:PORT[,...]/CLUSTER
	 * joins whichever scheduler leads CLUSTER (read from etcd before each join, and joined
	 * again when the leader changes) */
	const char *scheduler;
	const struct kvn_etcd_opts *etcd; /* the etcd client's options but endpoints; NULL: none */
	const char *name;      /* node_name: the scheduler's key for a stable worker id */
	const char *data_addr; /* where peers reach this node's transport */
	const char *transport; /* "tcp", "verbs" */
	const void *regions;   /* opaque region descriptors, at most KVN_CF_BLOB_MAX bytes */
	size_t regions_len;
	uint64_t capacity;	/* bytes this node offers (cpu tier) */
	uint32_t mtu;		/* its RDMA port's active MTU (bytes); 0: tcp or not known */
	const char *auth_token; /* NULL: none (a daemon resolves its own: kvn_config_resolve_token) */
	uint32_t heartbeat_ms;	/* 0 = 500; the scheduler's period when that is shorter */
	int timeout_ms;		/* connect, join and lookup deadline; 0 = 5000 */
	bool want_evicts; /* receive EVICTED notices (a peer backend with a cache wants them) */
};

/* url is scheduler_url's etcd form (starts with etcd://). */
bool kvn_scheduler_url_is_etcd(const char *url);
/* scheduler_url's etcd form, etcd://HOST:PORT[,HOST:PORT...]/CLUSTER: 1 with the endpoints
 * ("HOST:PORT,...") and the cluster name, 0 when url is another form, -EINVAL naming what is
 * wrong (no endpoint, no cluster, a cluster name outside [A-Za-z0-9._-]{1,64}). */
int kvn_scheduler_url_etcd(const char *url, char *endpoints, size_t elen, char *cluster,
			   size_t clen, char *err, size_t errlen);
/* The etcd client options of a config (etcd_* keys; the endpoints come from scheduler_url). */
struct kvn_config;
struct kvn_etcd_opts kvn_config_etcd_opts(const struct kvn_config *cfg);
/* The etcd key of cluster's leaf: "/kvnode/CLUSTER/LEAF" ("leader", "workers/"). */
void kvn_sched_etcd_key(const char *cluster, const char *leaf, char *out, size_t cap);
/* Where the scheduler of url is now: the plain form as it is; the etcd form from the leader key
 * (-ENOENT: no scheduler leads the cluster now). eo: the etcd client's options but endpoints
 * (NULL: defaults). */
int kvn_scheduler_resolve(const char *url, const struct kvn_etcd_opts *eo, char host[KVN_HOST_MAX],
			  uint16_t *port, char *err, size_t errlen);

/* Joins (once, on the caller's thread) and starts the heartbeat thread. A join the scheduler
 * refuses fails with the code of its ERROR and err naming the scheduler: -EACCES for the auth
 * token, -EINVAL for a field (node_name must pass kvn_cf_name_check, checked before
 * connecting), -EUSERS when all worker ids are held. An unreachable scheduler is not fatal:
 * the thread keeps trying (kvn_membership_connected). */
int kvn_membership_start(const struct kvn_membership_opts *opts,
			 const struct kvn_membership_cbs *cbs, struct kvn_membership **out,
			 char *err, size_t errlen);
/* Stops the thread (so nothing re-joins), then sends LEAVE when connected (the scheduler drops
 * this node's entries at once), fails lookups in flight, frees everything. NULL is a no-op. */
void kvn_membership_stop(struct kvn_membership *m);

bool kvn_membership_connected(struct kvn_membership *m);
/* Current worker id (-1 before the first join), worker_count and cluster epoch. */
int32_t kvn_membership_worker_id(struct kvn_membership *m);
uint32_t kvn_membership_worker_count(struct kvn_membership *m);
uint64_t kvn_membership_epoch(struct kvn_membership *m);
/* Successful joins so far (a re-join after a scheduler restart adds one). */
uint64_t kvn_membership_joins(struct kvn_membership *m);

/* Queues admit/evict records; the membership thread sends them in batches. While
 * disconnected they are dropped: the re-join's republish (cbs.joined) covers them. Returns 0 or
 * -ENOMEM. */
int kvn_membership_publish(struct kvn_membership *m, const struct kvn_cf_pub *recs, size_t n);
/* Waits (up to timeout_ms) until everything queued so far has been written to the scheduler's
 * connection. -ETIMEDOUT, or -ENOTCONN when the connection is lost meanwhile. */
int kvn_membership_flush(struct kvn_membership *m, int timeout_ms);

/* Looks up n digests (any n: split into frames of KVN_CF_LOOKUP_MAX): nloc[i] gets key i's
 * location count (0: nobody holds it), locs[i * max_locs ...] its locations, this node's own
 * included. max_locs is 1..KVN_CF_LOCS_MAX. -ENOTCONN while disconnected, -ETIMEDOUT. */
int kvn_membership_lookup(struct kvn_membership *m, const struct kvn_digest *keys, size_t n,
			  uint32_t max_locs, uint32_t *nloc, struct kvn_loc *locs, int timeout_ms);

/* The member with worker_id as last announced: its record, with its region descriptors copied
 * into regions (cap bytes). -ENOENT for an unknown id, -ENOSPC when cap is short (regions_len
 * says how much is needed). */
int kvn_membership_member(struct kvn_membership *m, uint32_t worker_id, struct kvn_member_info *out,
			  void *regions, size_t cap);

/* Splits scheduler_url ("HOST:PORT", or with any "scheme://" prefix and a trailing "/"). Port 0
 * is refused. -EINVAL with err naming the text. */
int kvn_scheduler_url_parse(const char *url, char host[KVN_HOST_MAX], uint16_t *port, char *err,
			    size_t errlen);

/* One STATS request to the scheduler at addr (no join): the cluster view as JSON text
 * (malloc'd). token may be NULL (none). */
int kvn_membership_fetch_stats(const char *addr, const char *token, int timeout_ms, char **json,
			       char *err, size_t errlen);
/* The same with the etcd client's options (but endpoints) for an etcd:// addr (NULL: none). */
int kvn_membership_fetch_stats_etcd(const char *addr, const struct kvn_etcd_opts *eo,
				    const char *token, int timeout_ms, char **json, char *err,
				    size_t errlen);

#endif
