/* The node's cluster glue: transport + one registration of the chunk pool, membership with the
 * data address and region, the cpu tier's admits/evicts published to the chunk directory, and
 * the peer tier attached to all of it (docs/architecture.md §1, §5). */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backends.h"
#include "core/le.h"
#include "core/log.h"
#include "core/pool.h"
#include "gpu/gpu.h"
#include "node/cluster/cluster.h"
#include "node/cluster/membership.h"
#include "node/engine/engine.h"
#include "node/engine/storage.h"
#include "rdma/devreg.h"
#include "rdma/sysfs.h"

#define REPUBLISH_BATCH 4096
#define MAX_GPU_TIERS	64

struct kvn_cluster;

/* A gpu tier's region as registered for peers' READs (docs/gpu.md "The gpu tier"). */
struct gpu_reg {
	struct kvn_cluster *c;
	struct kvn_backend *tier;
	struct kvn_gpu_dev_src src; /* the registration's callbacks use it: lives as long */
	struct kvn_rails_mr *mr;
	struct kvn_mem_desc desc[KVN_RAILS_MAX]; /* per rail */
	bool mirrored; /* host staging won: the tier keeps the transport's area current */
};
#define REGION_BLOB KVN_CLUSTER_REGION_BLOB

struct kvn_cluster {
	const struct kvn_transport_ops *ops;
	struct kvn_rails *rails;
	struct kvn_transport *tp; /* rail 0's: the GPU probe's */
	struct kvn_rails_mr *mr;
	struct kvn_mem_desc desc[KVN_RAILS_MAX]; /* the pool's, per rail */
	struct kvn_pool *pool;
	struct kvn_backend *cpu, *peer;
	/* Set by the joined callback (it hands us the handle before kvn_membership_start
	 * returns); the publish hook drops records while it is NULL, the joined walk covers
	 * them. */
	_Atomic(struct kvn_membership *) m;
	struct kvn_membership *owned;
	char data_addr[KVN_CF_ADDR_MAX + 1];
	/* re-publish batch, used on the membership thread only */
	struct kvn_cf_pub batch[REPUBLISH_BATCH];
	size_t nbatch;
	struct gpu_reg gpu[MAX_GPU_TIERS];
	size_t ngpu;
};

static struct kvn_cf_pub
record(const struct kvn_cluster *c, enum kvn_cf_pub_op op, const struct kvn_slot *slot)
{
	struct kvn_cf_pub r = {.op = (uint8_t)op, .digest = kvn_slot_digest(slot)};
	if (op == KVN_CF_ADMIT)
		r.loc = (struct kvn_loc){.rkey = c->desc[0].rkey,
					 .addr = c->desc[0].addr + kvn_slot_offset(slot),
					 .len = sizeof(struct kvn_slot_hdr) + kvn_slot_len(slot),
					 .generation = kvn_slot_generation(slot)};
	return r;
}

static struct kvn_cf_pub
gpu_record(const struct gpu_reg *g, const struct kvn_gpu_slot_info *si)
{
	return (struct kvn_cf_pub){.op = KVN_CF_ADMIT,
				   .digest = si->digest,
				   .loc = {.rkey = g->desc[0].rkey,
					   .addr = g->desc[0].addr + si->off,
					   .len = si->len,
					   .generation = si->generation}};
}

static void
publish_one(struct kvn_membership *m, const struct kvn_cf_pub *r)
{
	if (kvn_membership_publish(m, r, 1) < 0)
		kvn_warn("cluster", "cannot queue a directory update (out of memory); the next "
				    "re-join re-publishes everything");
}

/* The cpu tier's hook (its index lock held): queue only. The directory holds one location per
 * node and key, the cpu tier's while it holds the key: when it lets go, a gpu tier that still
 * holds the key takes its place. */
static void
on_cpu_change(void *ctx, enum kvn_cpu_event ev, const struct kvn_slot *slot)
{
	struct kvn_cluster *c = ctx;
	struct kvn_membership *m = atomic_load(&c->m);
	if (!m)
		return;
	struct kvn_cf_pub r = record(c, ev == KVN_CPU_ADMIT ? KVN_CF_ADMIT : KVN_CF_EVICT, slot);
	struct kvn_gpu_slot_info si;
	for (size_t i = 0; ev == KVN_CPU_DROP && i < c->ngpu; i++)
		if (kvn_gpu_tier_locate(c->gpu[i].tier, r.digest, &si)) {
			r = gpu_record(&c->gpu[i], &si);
			break;
		}
	publish_one(m, &r);
}

/* A gpu tier's hook: its chunk's location is published only while the cpu tier lacks the key
 * (else the cpu tier's stands). */
static void
on_gpu_change(void *ctx, enum kvn_cpu_event ev, const struct kvn_gpu_slot_info *si)
{
	struct gpu_reg *g = ctx;
	struct kvn_membership *m = atomic_load(&g->c->m);
	struct kvn_key k = {.digest = si->digest};
	if (!m || kvn_cpu_backend_ops.contains(g->c->cpu, &k, false) == 1)
		return;
	struct kvn_cf_pub r = ev == KVN_CPU_ADMIT
				  ? gpu_record(g, si)
				  : (struct kvn_cf_pub){.op = KVN_CF_EVICT, .digest = si->digest};
	publish_one(m, &r);
}

/* One record of a re-join's re-publish, sent a full batch at a time. */
static void
batch_add(struct kvn_cluster *c, struct kvn_cf_pub r)
{
	c->batch[c->nbatch++] = r;
	if (c->nbatch == REPUBLISH_BATCH) {
		kvn_membership_publish(atomic_load(&c->m), c->batch, c->nbatch);
		c->nbatch = 0;
	}
}

static void
walk_one(void *ctx, const struct kvn_slot *slot)
{
	struct kvn_cluster *c = ctx;
	batch_add(c, record(c, KVN_CF_ADMIT, slot));
}

struct gpu_walk {
	struct kvn_cluster *c;
	const struct gpu_reg *g;
};

static void
walk_gpu_one(void *ctx, const struct kvn_gpu_slot_info *si)
{
	struct gpu_walk *w = ctx;
	struct kvn_cluster *c = w->c;
	struct kvn_key k = {.digest = si->digest};
	if (kvn_cpu_backend_ops.contains(c->cpu, &k, false) != 1)
		batch_add(c, gpu_record(w->g, si));
}

static void
on_joined(void *ctx, struct kvn_membership *m, uint32_t worker_id, uint32_t worker_count,
	  uint64_t epoch)
{
	struct kvn_cluster *c = ctx;
	atomic_store(&c->m, m);
	c->nbatch = 0;
	kvn_cpu_walk(c->cpu, walk_one, c);
	for (size_t i = 0; i < c->ngpu; i++) {
		struct gpu_walk w = {c, &c->gpu[i]};
		if (kvn_gpu_tier_walk(c->gpu[i].tier, walk_gpu_one, &w) < 0)
			kvn_warn("cluster",
				 "out of memory listing the gpu tier %zu: its chunks "
				 "are found again at the next re-join",
				 i);
	}
	if (c->nbatch)
		kvn_membership_publish(m, c->batch, c->nbatch);
	kvn_info("cluster", "joined as worker %u of %u (epoch %llu); published %s index", worker_id,
		 worker_count, (unsigned long long)epoch, "the whole");
}

/* The peer tier's member, from membership's. */
static void
peer_member_of(const struct kvn_member_info *mi, struct kvn_peer_member *out)
{
	out->worker_id = mi->worker_id;
	out->up = mi->up;
	snprintf(out->data_addr, sizeof(out->data_addr), "%s", mi->data_addr);
}

static void
on_member(void *ctx, const struct kvn_member_info *mi)
{
	struct kvn_cluster *c = ctx;
	kvn_info("cluster", "member %s (worker %u) at %s is %s", mi->name, mi->worker_id,
		 mi->data_addr, mi->up ? "up" : "down");
	struct kvn_peer_member pm;
	peer_member_of(mi, &pm);
	kvn_peer_member(c->peer, &pm);
}

int
kvn_cluster_held(struct kvn_cluster *c, const struct kvn_digest *keys, size_t n, bool *held,
		 int timeout_ms)
{
	uint32_t *nloc = malloc(sizeof(*nloc) * (n ? n : 1));
	struct kvn_loc *locs = malloc(sizeof(*locs) * (n ? n : 1));
	int rc = nloc && locs ? kvn_membership_lookup(c->owned, keys, n, 1, nloc, locs, timeout_ms)
			      : -ENOMEM;
	for (size_t i = 0; i < n; i++)
		held[i] = rc == 0 && nloc[i] > 0;
	free(nloc);
	free(locs);
	return rc;
}

/* The peer tier's questions, answered by membership: n keys in one LOOKUP frame (up to
 * KVN_CF_LOOKUP_MAX, which a client batch never passes; membership splits a longer one). */
static int
peer_lookup(void *ctx, const struct kvn_digest *keys, size_t n, uint32_t max, uint32_t *nloc,
	    struct kvn_peer_loc *locs, int timeout_ms)
{
	struct kvn_cluster *c = ctx;
	_Static_assert(KVN_PEER_LOCS_MAX <= KVN_CF_LOCS_MAX, "locations per key");
	if (max > KVN_CF_LOCS_MAX)
		max = KVN_CF_LOCS_MAX;
	struct kvn_loc one[KVN_CF_LOCS_MAX];
	struct kvn_loc *l = n == 1 ? one : malloc(sizeof(*l) * n * max);
	if (!l)
		return -ENOMEM;
	int rc = kvn_membership_lookup(c->owned, keys, n, max, nloc, l, timeout_ms);
	for (size_t k = 0; !rc && k < n; k++)
		for (uint32_t i = 0; i < nloc[k] && i < max; i++) {
			const struct kvn_loc *f = &l[k * max + i];
			locs[k * max + i] = (struct kvn_peer_loc){.worker_id = f->worker_id,
								  .rkey = f->rkey,
								  .addr = f->addr,
								  .len = f->len,
								  .generation = f->generation};
		}
	if (l != one)
		free(l);
	return rc;
}

/* The member and, when out->rails asks for them, its rails from its region blob (locations
 * carry rail 0's addr and rkey; the other rails' rkeys come from the blob). */
static int
peer_member(void *ctx, uint32_t worker_id, struct kvn_peer_member *out)
{
	struct kvn_cluster *c = ctx;
	struct kvn_member_info mi;
	struct kvn_rails_peer_buf *rails = out->rails;
	uint8_t *blob = rails ? malloc(KVN_CF_BLOB_MAX) : NULL;
	if (rails && !blob)
		return -ENOMEM;
	int rc = kvn_membership_member(c->owned, worker_id, &mi, blob, blob ? KVN_CF_BLOB_MAX : 0);
	if (rc == -ENOSPC && !rails)
		rc = 0;
	if (!rc) {
		peer_member_of(&mi, out);
		out->rails = rails;
	}
	if (!rc && rails && kvn_rails_blob_decode(blob, mi.regions_len, mi.data_addr, rails) < 0) {
		kvn_warn("cluster",
			 "member %s (worker %u) joined with a region blob of %zu bytes this node "
			 "cannot read; reading it over its data address only",
			 mi.name, worker_id, mi.regions_len);
		uint8_t legacy[KVN_CLUSTER_REGION_BLOB] = {0};
		kvn_rails_blob_decode(legacy, sizeof(legacy), mi.data_addr, rails);
	}
	free(blob);
	return rc;
}

static int32_t
peer_self(void *ctx)
{
	struct kvn_cluster *c = ctx;
	return kvn_membership_worker_id(c->owned);
}

static void
on_evicted(void *ctx, uint32_t worker_id, const struct kvn_digest *d, size_t n)
{
	struct kvn_cluster *c = ctx;
	kvn_peer_evicted(c->peer, worker_id, d, n);
}

/* How each GPU's memory registers with this transport (docs/gpu.md "Registration"): a GPU with
 * a gpu tier registers the tier's region for good; on one without, a probe allocation goes
 * down the ladder, the winner is recorded for `kvnode stat` and the metrics, and the probe is
 * dropped. Never fatal: a GPU whose memory cannot be registered is reported so, and the node
 * serves its host pool (and its gpu tier, to itself) as before. */
#define GPU_PROBE_BYTES (2u << 20)

/* The gpu tier's region on device dev, when that device has one: registered for good, so
 * that peers READ its chunks (published by on_gpu_change while cpu lacks them). 1 when
 * registered (the report recorded), 0 when dev has no tier, -errno when it failed (recorded
 * too: the tier still serves this node). */
static int
gpu_register_tier(struct kvn_cluster *c, struct kvn_engine *eng, size_t i)
{
	struct kvn_engine_gpus *g = kvn_engine_gpus(eng);
	const struct kvn_gpu_info *in = kvn_engine_gpus_info(g, i);
	size_t ndev;
	struct kvn_gpu *gpu = kvn_engine_gpus_driver(g, &ndev);
	const struct kvn_gpu_region *rg;
	struct kvn_backend *tier = kvn_engine_gpu_tier(eng, in->index, &rg);
	if (!tier || c->ngpu == MAX_GPU_TIERS)
		return 0;
	struct gpu_reg *r = &c->gpu[c->ngpu];
	*r = (struct gpu_reg){.c = c, .tier = tier};
	struct kvn_dev_mem src;
	struct kvn_reg_report rep = {KVN_REG_REPORT_INIT};
	char err[768] = "";
	kvn_gpu_dev_mem(gpu, in, &r->src, &src);
	int rc = kvn_rails_reg(c->rails, (void *)(uintptr_t)rg->base, rg->len, &src, &r->mr,
			       r->desc, &rep, err, sizeof(err));
	if (rc == 0 && rep.method == KVN_REG_STAGING) {
		rc = kvn_gpu_tier_set_mirror(tier, rep.staging, err, sizeof(err));
		r->mirrored = rc == 0;
		if (rc) {
			kvn_rails_dereg(r->mr);
			r->mr = NULL;
		}
	}
	if (rc) {
		kvn_warn("cluster", "%s: the gpu tier's %zu bytes are not readable by peers: %s",
			 r->src.name, rg->len, err);
		kvn_engine_gpus_set_reg(g, i, c->ops->name, &rep, err);
		return rc;
	}
	kvn_info("cluster", "%s: the gpu tier's %zu bytes register with %s by %s%s", r->src.name,
		 rg->len, c->ops->name, kvn_reg_method_name(rep.method),
		 r->mirrored ? " (peers read a host copy the tier keeps current)" : "");
	kvn_engine_gpus_set_reg(g, i, c->ops->name, &rep, NULL);
	kvn_gpu_tier_set_publish(tier, on_gpu_change, r);
	c->ngpu++;
	return 1;
}

int
kvn_cluster_gpu_probe(const struct kvn_transport_ops *ops, struct kvn_transport *tp,
		      struct kvn_gpu *gpu, const struct kvn_gpu_info *in,
		      struct kvn_reg_report *rep, char *err, size_t errlen)
{
	struct kvn_gpu_mem *m = NULL;
	int rc = kvn_gpu_mem_alloc(gpu, in->index, GPU_PROBE_BYTES, &m, err, errlen);
	if (rc < 0)
		return -ENOMEM; /* nothing was tried */
	struct kvn_gpu_dev_src ctx;
	struct kvn_dev_mem src;
	struct kvn_tp_mr *mr = NULL;
	struct kvn_mem_desc d;
	kvn_gpu_dev_mem(gpu, in, &ctx, &src);
	rc = ops->reg_dev(tp, (void *)(uintptr_t)kvn_gpu_mem_ptr(m), GPU_PROBE_BYTES, &src, &mr, &d,
			  rep, err, errlen);
	if (rc == 0)
		ops->dereg(mr);
	kvn_gpu_mem_free(m);
	return rc;
}

static void
gpu_probe(struct kvn_cluster *c, struct kvn_engine *eng)
{
	struct kvn_engine_gpus *g = kvn_engine_gpus(eng);
	size_t n;
	struct kvn_gpu *gpu = kvn_engine_gpus_driver(g, &n);
	for (size_t i = 0; i < n; i++) {
		const struct kvn_gpu_info *in = kvn_engine_gpus_info(g, i);
		char err[768] = "";
		if (!KVN_ABI_HAS(c->ops, reg_dev) || !c->ops->reg_dev) {
			snprintf(err, sizeof(err), "the %s transport registers no device memory",
				 c->ops->name);
			kvn_engine_gpus_set_reg(g, i, c->ops->name, NULL, err);
			continue;
		}
		if (gpu_register_tier(c, eng, i) != 0)
			continue;
		struct kvn_reg_report rep = {KVN_REG_REPORT_INIT};
		int rc = kvn_cluster_gpu_probe(c->ops, c->tp, gpu, in, &rep, err, sizeof(err));
		if (rc == 0) {
			kvn_info("cluster", "GPU %d (%s): its memory registers with %s by %s",
				 in->index, in->name, c->ops->name,
				 kvn_reg_method_name(rep.method));
			kvn_engine_gpus_set_reg(g, i, c->ops->name, &rep, NULL);
		} else {
			kvn_warn("cluster", "GPU %d: %s", in->index, err);
			kvn_engine_gpus_set_reg(g, i, c->ops->name, rep.nsteps ? &rep : NULL, err);
		}
	}
}

/* The active MTU of rail 0's port (for the member list, which doctor --peers compares); 0 with
 * tcp or when it is not known. */
static uint32_t
verbs_mtu(const struct kvn_cluster *c, const char *device)
{
	enum { PORTS = 32 };
	if (strcmp(c->ops->name, "verbs"))
		return 0;
	struct kvn_sysfs_port *ports = malloc(PORTS * sizeof(*ports));
	int n = ports ? kvn_sysfs_ports(NULL, ports, PORTS) : 0;
	int at = n > 0 ? kvn_sysfs_pick_port(ports, n, device && *device ? device : NULL) : -1;
	uint32_t mtu = at >= 0 ? (uint32_t)kvn_sysfs_port_mtu(&ports[at]) : 0;
	free(ports);
	return mtu;
}

/* Opens the rails the config plans (rails_plan.c) and registers the pool on each. */
static int
open_rails(struct kvn_cluster *c, const struct kvn_config *cfg, struct kvn_rails_plan *pl,
	   char *err, size_t errlen)
{
	/* The token guards the data connections too: a reader without it reads nothing of the
	 * pool, whether it went through the scheduler or not. The peer tier reads with these same
	 * instances, so it presents the token to the other nodes. */
	struct kvn_transport_cfg tcfg = {KVN_TRANSPORT_CFG_INIT,
					 .rdma_device = cfg->rdma_device,
					 .gid_index = cfg->gid_index,
					 .auth_token = cfg->auth_token,
					 .max_conns = cfg->transport_max_connections,
					 .hello_timeout_ms = (int)cfg->transport_hello_timeout_ms};
	/* auto probes the first device rdma_devices names, as it probes rdma_device */
	if (cfg->n_rdma_devices && strcmp(cfg->rdma_devices[0], "auto"))
		tcfg.rdma_device = cfg->rdma_devices[0];
	c->ops =
	    kvn_transport_by_name(cfg->transport ? cfg->transport : "auto", &tcfg, err, errlen);
	if (!c->ops)
		return -EINVAL;
	int rc = kvn_cluster_rails_plan(cfg, !strcmp(c->ops->name, "verbs"), NULL, pl, err, errlen);
	if (rc < 0)
		return rc;
	struct kvn_rails_cfg rc_cfg = {.ops = c->ops,
				       .tcfg = &tcfg,
				       .nrails = pl->n,
				       .slice_min = cfg->rail_slice_size,
				       .retry_ms = (int)cfg->rail_retry_ms,
				       .any_numa = !cfg->rail_numa};
	for (size_t i = 0; i < pl->n; i++)
		rc_cfg.rail[i] =
		    (struct kvn_rail_spec){.device = *pl->device[i] ? pl->device[i] : NULL,
					   .listen = pl->listen[i],
					   .numa_node = pl->numa[i]};
	if ((rc = kvn_rails_open(&rc_cfg, &c->rails, err, errlen)) < 0)
		return rc;
	c->tp = kvn_rails_tp(c->rails, 0);
	/* The pool, once a rail, and nothing else: local write + remote read only. */
	return kvn_rails_reg(c->rails, kvn_pool_base(c->pool), kvn_pool_size(c->pool), NULL, &c->mr,
			     c->desc, NULL, err, errlen);
}

/* The region blob: the pool and each gpu tier's region, as every rail registered them. */
static int
region_blob(struct kvn_cluster *c, uint8_t *blob, size_t cap)
{
	size_t nr = kvn_rails_count(c->rails), ng = 1 + c->ngpu;
	struct kvn_mem_desc *d = malloc(ng * nr * sizeof(*d));
	if (!d)
		return -ENOMEM;
	memcpy(d, c->desc, nr * sizeof(*d));
	for (size_t g = 0; g < c->ngpu; g++)
		memcpy(d + (1 + g) * nr, c->gpu[g].desc, nr * sizeof(*d));
	int n = kvn_rails_blob_encode(c->rails, d, ng, blob, cap);
	free(d);
	return n;
}

int
kvn_cluster_start(const struct kvn_config *cfg, struct kvn_engine *eng, struct kvn_cluster **out,
		  char *err, size_t errlen)
{
	*out = NULL;
	if (!cfg->scheduler_url)
		return 0;
	struct kvn_storage *st = kvn_engine_storage(eng);
	struct kvn_cluster *c = calloc(1, sizeof(*c));
	uint8_t *blob = malloc(KVN_CF_BLOB_MAX);
	if (!c || !blob) {
		free(c);
		free(blob);
		return -ENOMEM;
	}
	c->pool = kvn_engine_pool(eng);
	c->cpu = kvn_storage_backend(st, &kvn_cpu_backend_ops);
	c->peer = kvn_storage_backend(st, &kvn_peer_backend_ops);
	int rc;
	if (!c->pool || !c->cpu || !c->peer) {
		rc =
		    kvn_seterr(-EINVAL, err, errlen,
			       "scheduler_url %s needs the cpu tier (local_cpu: true): its pool is "
			       "what peers read",
			       cfg->scheduler_url);
		goto fail;
	}
	struct kvn_rails_plan pl;
	if ((rc = open_rails(c, cfg, &pl, err, errlen)) < 0)
		goto fail;
	gpu_probe(c, eng);
	if ((rc = kvn_rails_listen(c->rails, err, errlen)) < 0)
		goto fail;
	snprintf(c->data_addr, sizeof(c->data_addr), "%s", kvn_rails_addr(c->rails, 0));

	kvn_cpu_set_publish(c->cpu, on_cpu_change, c);
	int blen = region_blob(c, blob, KVN_CF_BLOB_MAX);
	if (blen < 0) {
		rc = kvn_seterr(blen, err, errlen, "%zu rails and %zu gpu tiers do not fit a join",
				kvn_rails_count(c->rails), c->ngpu);
		goto fail;
	}
	struct kvn_etcd_opts eo = kvn_config_etcd_opts(cfg);
	struct kvn_membership_opts mo = {
	    .scheduler = cfg->scheduler_url,
	    .etcd = &eo,
	    .name = cfg->node_name ? cfg->node_name : "kvnode",
	    .data_addr = c->data_addr,
	    .transport = c->ops->name,
	    .regions = blob,
	    .regions_len = (size_t)blen,
	    .capacity = kvn_pool_size(c->pool),
	    .mtu = verbs_mtu(c, pl.device[0]),
	    .auth_token = cfg->auth_token,
	    .heartbeat_ms = cfg->heartbeat_ms,
	    .want_evicts = true,
	};
	struct kvn_membership_cbs cbs = {
	    .ctx = c, .joined = on_joined, .member = on_member, .evicted = on_evicted};
	rc = kvn_membership_start(&mo, &cbs, &c->owned, err, errlen);
	if (rc < 0)
		goto fail;
	atomic_store(&c->m, c->owned);
	struct kvn_peer_link link = {.rails = c->rails,
				     .mr = kvn_rails_mr_tp(c->mr, 0),
				     .pool = c->pool,
				     .cpu = c->cpu,
				     .ctx = c,
				     .lookup = peer_lookup,
				     .member = peer_member,
				     .self = peer_self,
				     .timeout_ms = (int)cfg->peer_timeout_ms,
				     .max_chunk = cfg->max_chunk_size};
	kvn_peer_attach(c->peer, &link);
	size_t nr = kvn_rails_count(c->rails);
	kvn_info("cluster", "serving reads of the %zu-byte pool on %s%s (%s); scheduler %s",
		 kvn_pool_size(c->pool), c->data_addr, nr > 1 ? " and more rails" : "",
		 c->ops->name, cfg->scheduler_url);
	for (size_t i = 0; nr > 1 && i < nr; i++)
		kvn_info("cluster", "rail %zu: %s%s%s", i, *pl.device[i] ? pl.device[i] : "",
			 *pl.device[i] ? " on " : "", kvn_rails_addr(c->rails, i));
	free(blob);
	*out = c;
	return 0;
fail:
	free(blob);
	kvn_cluster_stop(c);
	return rc;
}

void
kvn_cluster_stop(struct kvn_cluster *c)
{
	if (!c)
		return;
	if (c->peer)
		kvn_peer_attach(c->peer, NULL);
	if (c->cpu)
		kvn_cpu_set_publish(c->cpu, NULL, NULL);
	for (size_t i = 0; i < c->ngpu; i++)
		kvn_gpu_tier_set_publish(c->gpu[i].tier, NULL, NULL);
	atomic_store(&c->m, NULL);
	kvn_membership_stop(c->owned); /* LEAVE: the directory forgets us at once */
	for (size_t i = 0; i < c->ngpu; i++) {
		char err[256];
		if (c->gpu[i].mirrored) /* before the area goes with the registration */
			kvn_gpu_tier_set_mirror(c->gpu[i].tier, NULL, err, sizeof(err));
		kvn_rails_dereg(c->gpu[i].mr);
	}
	kvn_rails_dereg(c->mr);
	kvn_rails_close(c->rails);
	free(c);
}

const char *
kvn_cluster_data_addr(const struct kvn_cluster *c)
{
	return c->data_addr;
}

void
kvn_cluster_listener_stats(struct kvn_cluster *c, struct kvn_transport_stats *out)
{
	memset(out, 0, sizeof(*out));
	if (c)
		kvn_rails_listener_stats(c->rails, out);
}

struct kvn_rails *
kvn_cluster_rails(struct kvn_cluster *c)
{
	return c ? c->rails : NULL;
}

const char *
kvn_cluster_transport(const struct kvn_cluster *c)
{
	return c->ops->name;
}

struct kvn_membership *
kvn_cluster_membership(struct kvn_cluster *c)
{
	return c->owned;
}

int
kvn_cluster_region_decode(const uint8_t *blob, size_t n, struct kvn_mem_desc *out)
{
	if (n < REGION_BLOB)
		return -EPROTO;
	memset(out, 0, sizeof(*out));
	out->addr = kvn_le_get64(blob);
	out->len = kvn_le_get64(blob + 8);
	out->rkey = kvn_le_get32(blob + 16);
	return 0;
}
