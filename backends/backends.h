/* The built-in tiers (cpu, disk, peer, remote) as the storage manager and the cluster glue use
 * them: their ops tables through a name registry, and each tier's own hooks. Nothing here
 * knows the engine, the cluster or the scheduler: what a tier needs from them comes in as
 * callbacks. */
#ifndef KVN_BACKENDS_BACKENDS_H
#define KVN_BACKENDS_BACKENDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/histogram.h"
#include "kvnode/backend.h"
#include "kvnode/transport.h"
#include "rdma/rails.h"

struct kvn_pool;
struct kvn_staging;

/* The device memory a gpu tier keeps its chunks in: len bytes at device address base, and the
 * staging (gpu/staging.h) its copies go through, one at a time. Owned by whoever made the
 * tier, and outlives it. */
struct kvn_gpu_region {
	uint64_t base; /* kvn_devptr_t */
	size_t len;
	struct kvn_staging *staging;
	int device; /* CUDA ordinal */
};

/* What the node creates a built-in tier with: the env every backend sees, and what only the
 * built-in tiers get (an external module's create is never handed more than the env). */
struct kvn_tier_env {
	struct kvn_backend_env env; /* first: a tier's create gets &env */
	struct kvn_pool *pool;	    /* the node's registered chunk pool: the cpu tier's */
	const struct kvn_gpu_region *gpu; /* the gpu tier's device memory */
};

static inline const struct kvn_tier_env *
kvn_tier_env_of(const struct kvn_backend_env *env)
{
	return (const struct kvn_tier_env *)env;
}

extern const struct kvn_backend_ops kvn_cpu_backend_ops;
extern const struct kvn_backend_ops kvn_disk_backend_ops;
extern const struct kvn_backend_ops kvn_remote_backend_ops;
extern const struct kvn_backend_ops kvn_peer_backend_ops;
extern const struct kvn_backend_ops kvn_gpu_backend_ops;

/* The built-in tier named name ("cpu", "disk", "remote"; the peer tier is the cluster glue's,
 * never named in a config), NULL for another name. */
const struct kvn_backend_ops *kvn_builtin_backend(const char *name);

/* sizeof(struct kvn_backend_ops) at ABI 2.0: the shortest table a module may export. */
#define KVN_BACKEND_OPS_SIZE_2_0 offsetof(struct kvn_backend_ops, sync)

/* Loads module_path (absolute, relative to config_dir, or a bare name searched in
 * $KVNODE_MODULE_PATH) and returns the exported `const struct kvn_backend_ops` named symbol.
 * Errors name the file and the symbol (ABI mismatch, missing file, missing symbol). *handle
 * gets the dlopen handle (dlclose it after the backend is destroyed). *ops points into the
 * module, and may be shorter than this node's struct: read a member ABI 2.0 lacks only when
 * KVN_ABI_HAS(ops, member). */
int kvn_external_load(const char *module_path, const char *symbol, const char *config_dir,
			      const struct kvn_backend_ops **ops, void **handle, char *err,
			      size_t errlen);

/* ------------------------------------------------------------------------------------------
 * cpu: the registered pool's index
 * ------------------------------------------------------------------------------------------ */

/* What the publish hook is told of a slot. */
enum kvn_cpu_event {
	KVN_CPU_ADMIT = 1, /* the index took it (a put or a promotion) */
	KVN_CPU_DROP = 2,  /* the index let it go (evicted or removed) */
};
/* The publish hook sees every slot the index admits and drops, with the index lock held: it
 * must only queue. walk calls fn for each indexed slot, lock held. alloc_scratch takes an
 * unindexed slot of len payload bytes (evicting as put does; key NULL: none yet) that the
 * caller frees with kvn_pool_unref; the peer tier READs a slot image into it, and once it
 * has sealed it, a put of a view of that slot (the promotion of a peer hit) indexes the slot
 * itself instead of copying it: adopted counts those. */
struct kvn_slot;
typedef void (*kvn_cpu_publish_fn)(void *ctx, enum kvn_cpu_event ev, const struct kvn_slot *slot);
void kvn_cpu_set_publish(struct kvn_backend *be, kvn_cpu_publish_fn fn, void *ctx);
void kvn_cpu_walk(struct kvn_backend *be, void (*fn)(void *ctx, const struct kvn_slot *slot),
		  void *ctx);
int kvn_cpu_alloc_scratch(struct kvn_backend *be, size_t len, const struct kvn_key *key,
			  struct kvn_slot **out);
uint64_t kvn_cpu_adopted(struct kvn_backend *be);
/* A put in two steps, for a writer outside the tier (a local client filling the slot
 * itself): reserve allocates an unindexed slot for key (evicting as put does; -ENOSPC, -ENOMEM
 * as kvn_pool_alloc); once its payload is written and sealed, adopt indexes it in place of an
 * older value of key and publishes it, taking over the writer's reference (on failure the
 * reference is dropped and the slot freed). */
int kvn_cpu_reserve(struct kvn_backend *be, const struct kvn_key *key, size_t len,
		    struct kvn_slot **out);
int kvn_cpu_adopt(struct kvn_backend *be, const struct kvn_key *key, struct kvn_slot *slot);

/* ------------------------------------------------------------------------------------------
 * gpu: chunks in device memory (env->gpu), evicted into the cpu tier
 * ------------------------------------------------------------------------------------------ */

/* Where the gpu tier be moves a chunk it evicts: the cpu tier cpu (its env's pool is
 * the one that tier allocates from), unless cpu already holds the key. NULL: evicted chunks
 * are dropped. */
void kvn_gpu_tier_set_spill(struct kvn_backend *be, struct kvn_backend *cpu);
/* The value of key copied to device address dst (on the tier's device, cap bytes) with no host
 * memory between: one device to device copy, *len its length. Device memory is trusted, as
 * host memory is by the cpu tier's get: no checksum pass. -ENOENT on a miss (not counted:
 * the caller asks the tiers next), -ENOSPC when the value is longer than cap. */
int kvn_gpu_tier_get_into_dev(struct kvn_backend *be, const struct kvn_key *key, uint64_t dst,
			      size_t cap, size_t *len, char *err, size_t errlen);
/* Evicted chunks the tier moved into the cpu tier. */
uint64_t kvn_gpu_tier_spilled(struct kvn_backend *be);

/* A chunk's slot image in the region: len bytes (header + payload) at off, published with
 * generation. */
struct kvn_gpu_slot_info {
	struct kvn_digest digest;
	uint64_t off, len, generation;
};
/* The publish hook sees each chunk the tier admits and drops (KVN_CPU_ADMIT, KVN_CPU_DROP), in
 * order per key, without the tier's index lock held: it may ask the cpu tier. fn NULL clears
 * it. */
typedef void (*kvn_gpu_publish_fn)(void *ctx, enum kvn_cpu_event ev,
				   const struct kvn_gpu_slot_info *si);
void kvn_gpu_tier_set_publish(struct kvn_backend *be, kvn_gpu_publish_fn fn, void *ctx);
/* 1 with *out when the tier holds digest, else 0. Takes only the index lock (the cpu tier's
 * hook may call it). */
int kvn_gpu_tier_locate(struct kvn_backend *be, struct kvn_digest d, struct kvn_gpu_slot_info *out);
/* fn for every chunk held, called with no lock held (from a copy taken first). */
int kvn_gpu_tier_walk(struct kvn_backend *be,
		      void (*fn)(void *ctx, const struct kvn_gpu_slot_info *si), void *ctx);
/* host: region-sized host memory that peers read instead of the region (a registration by
 * host staging): filled with every slot held, then kept current by each put and drop. NULL
 * stops that (before the area goes). 0, or the copy's -errno with err set (no mirror then). */
int kvn_gpu_tier_set_mirror(struct kvn_backend *be, void *host, char *err, size_t errlen);

/* ------------------------------------------------------------------------------------------
 * remote
 * ------------------------------------------------------------------------------------------ */

/* Where the remote tier stands, for stat: the store (password redacted), whether it is
 * reachable now, and how often it went away, came back, or served a value that failed its
 * checks. */
struct kvn_remote_status {
	char url[512];
	bool connected;
	uint64_t disconnects;
	uint64_t reconnects;
	uint64_t corrupt;
	uint64_t stale_tags; /* kvnode tags another writer left beside its value, ignored */
};
/* Status of the remote tier be (an instance of kvn_remote_backend_ops). */
void kvn_remote_backend_status(struct kvn_backend *be, struct kvn_remote_status *out);
/* false while the remote tier be counts its store as out of service (found unreachable or
 * hung, and no PING answered since): its operations then fail at once. */
bool kvn_remote_backend_in_service(struct kvn_backend *be);

/* ------------------------------------------------------------------------------------------
 * peer: one-sided READs of other nodes' pools
 * ------------------------------------------------------------------------------------------ */

#define KVN_PEER_LOCS_MAX 8   /* locations asked for per key */
#define KVN_PEER_ADDR_MAX 300 /* a member's data address */

/* Where a chunk lives, as the directory says: the owner, and its slot image (header + payload)
 * in the owner's registered memory at the generation published. */
struct kvn_peer_loc {
	uint32_t worker_id;
	uint32_t rkey;
	uint64_t addr;
	uint64_t len;
	uint64_t generation;
};

/* A member as the peer tier needs it. */
struct kvn_peer_member {
	uint32_t worker_id;
	bool up; /* false: it left or was expired */
	char data_addr[KVN_PEER_ADDR_MAX + 1];
	/* Where the member callback writes the member's rails (its region blob decoded); NULL
	 * where the caller does not need them. */
	struct kvn_rails_peer_buf *rails;
};

/* What the peer tier reads with: the rails, the registration of this node's pool (reads
 * land in scratch slots of it), the cpu tier that hands those out, and the cluster it asks
 * through these callbacks (each bounded by timeout_ms; ctx is passed back). */
struct kvn_peer_link {
	struct kvn_rails *rails; /* this node's (rdma/rails.h): reads are sliced over them */
	struct kvn_tp_mr *mr;	 /* rail 0's registration of the pool */
	struct kvn_pool *pool;
	struct kvn_backend *cpu;
	void *ctx;
	/* The n keys in one scheduler round trip (a batch get's misses together): up to max
	 * locations of keys[i] into locs[i * max ...], nloc[i] of them, this node's own
	 * included. 0, or a negative errno (no cluster, a timeout) for the whole batch. */
	int (*lookup)(void *ctx, const struct kvn_digest *keys, size_t n, uint32_t max,
		      uint32_t *nloc, struct kvn_peer_loc *locs, int timeout_ms);
	/* The member with worker_id as last announced; -ENOENT for one never seen. */
	int (*member)(void *ctx, uint32_t worker_id, struct kvn_peer_member *out);
	/* This node's worker id, -1 while not joined. */
	int32_t (*self)(void *ctx);
	int timeout_ms;	    /* peer_timeout_ms: a lookup, a connect, a READ */
	uint64_t max_chunk; /* max_chunk_size: a longer directory entry is a miss; 0 = none */
};
/* link NULL detaches (closing every peer connection); gets miss while detached. */
void kvn_peer_attach(struct kvn_backend *be, const struct kvn_peer_link *link);
/* Membership news: a member up/down (its connection is re-made, its cached locations go),
 * and evicted digests (their cached locations go). */
void kvn_peer_member(struct kvn_backend *be, const struct kvn_peer_member *mi);
void kvn_peer_evicted(struct kvn_backend *be, uint32_t worker_id, const struct kvn_digest *d,
		      size_t n);
/* The get op for n keys at once: one lookup for every key whose location is not cached, then
 * each round of READs (a key's first location, then its next for those that failed) posted
 * together and waited for together. Per key the outcome is the get op's: rcs[i] 0 with outs[i]
 * a verified view, or -ENOENT with outs[i] NULL. *lookups (may be NULL) gets the scheduler
 * lookups it made. */
void kvn_peer_get_batch(struct kvn_backend *be, const struct kvn_key *const *keys, size_t n,
			struct kvn_buf **outs, int *rcs, uint64_t *lookups);
struct kvn_peer_read_stats {
	uint64_t reads;			     /* READs posted to peers */
	uint64_t bytes;			     /* slot-image bytes they brought */
	uint64_t errors;		     /* gets from a peer that gave no verified chunk */
	uint64_t transport_errors;	     /* READs the transport failed */
	uint64_t oversized;		     /* directory entries over max_chunk_size, not read */
	uint64_t location_cache_hits;	     /* keys whose location was cached (no lookup) */
	uint64_t location_cache_misses;	     /* keys that needed the scheduler's directory */
	uint64_t promoted_in_place;	     /* peer hits the cpu tier indexed where they landed */
	const struct kvn_histogram *latency; /* of each READ, posted to completed */
	size_t nrails;			     /* the rails it reads over (0: detached) */
	struct kvn_rail_stats rails[KVN_RAILS_MAX];
};
void kvn_peer_read_stats(struct kvn_backend *be, struct kvn_peer_read_stats *out);

#endif
