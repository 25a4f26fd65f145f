/* Engine: one node's storage in this process — the chunk pool plus the storage manager — and
 * its public API (include/kvnode/kvnode.h). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "node/engine/config.h"
#include "core/log.h"
#include "node/engine/engine.h"
#include "core/pool.h"
#include "gpu/staging.h"
#include "node/engine/storage.h"

#define COMP "engine"

struct kvn_engine {
	struct kvn_pool *pool;
	struct kvn_storage *st;
	struct kvn_engine_gpus *gpus; /* gpu: true|auto and some device opened */
	char *node_name;
	bool copy_for_slow; /* slow tiers keep a reference: hand them a stable copy */
	_Atomic uint64_t hits, misses; /* of gets, over all tiers */
};

KVN_API int
kvn_engine_open(const struct kvn_config *cfg, struct kvn_engine **out, char *err, size_t errlen)
{
	struct kvn_engine *eng = calloc(1, sizeof(*eng));
	if (!eng)
		return -ENOMEM;
	/* GPUs first: a node refused for gpu: true has not sized its pool yet. */
	int rc = kvn_engine_gpus_open(cfg, &eng->gpus, err, errlen);
	if (rc < 0)
		goto fail;
	if (cfg->local_cpu) {
		if (cfg->max_local_cpu_size == 0) {
			rc = kvn_seterr(-EINVAL, err, errlen,
					"local_cpu is on but max_local_cpu_size is 0: give the cpu "
					"tier some GB or set local_cpu: false");
			goto fail;
		}
		rc = kvn_pool_create(cfg->max_local_cpu_size, cfg->hugepages, &eng->pool, err,
				     errlen);
		if (rc < 0)
			goto fail;
	}
	size_t nreg;
	const struct kvn_gpu_region *reg = kvn_engine_gpus_regions(eng->gpus, &nreg);
	rc = kvn_storage_open_gpu(cfg, eng->pool, reg, nreg, &eng->st, err, errlen);
	if (rc < 0)
		goto fail;
	eng->node_name = strdup(cfg->node_name ? cfg->node_name : "kvnode");
	if (!eng->node_name) {
		rc = -ENOMEM;
		goto fail;
	}
	eng->copy_for_slow = kvn_storage_async(eng->st);
	*out = eng;
	return 0;
fail:
	kvn_engine_close(eng);
	return rc;
}

KVN_API void
kvn_engine_close(struct kvn_engine *eng)
{
	if (!eng)
		return;
	kvn_storage_close(eng->st); /* drains queued writes first */
	kvn_pool_destroy(eng->pool);
	kvn_engine_gpus_close(eng->gpus);
	free(eng->node_name);
	free(eng);
}

KVN_API int
kvn_engine_put(struct kvn_engine *eng, const struct kvn_key *key, const void *data, size_t len)
{
	struct kvn_buf *buf;
	if (eng->copy_for_slow) {
		/* A queued write outlives this call, and the caller may reuse data at once. */
		buf = kvn_buf_new(len);
		if (buf)
			memcpy(buf->data, data, len);
	} else {
		buf = kvn_buf_wrap((void *)data, len);
	}
	if (!buf)
		return -ENOMEM;
	int rc = kvn_storage_put(eng->st, key, buf);
	kvn_buf_unref(buf);
	return rc;
}

static int
get(struct kvn_engine *eng, const struct kvn_key *key, struct kvn_buf **out)
{
	int rc = kvn_storage_get(eng->st, key, out);
	atomic_fetch_add_explicit(rc == 0 ? &eng->hits : &eng->misses, 1, memory_order_relaxed);
	return rc;
}

void
kvn_engine_get_batch(struct kvn_engine *eng, const struct kvn_key *keys, size_t n,
		     struct kvn_buf **outs, int *rcs, uint64_t *lookups)
{
	kvn_storage_get_batch(eng->st, keys, n, outs, rcs, lookups);
	for (size_t i = 0; i < n; i++)
		atomic_fetch_add_explicit(rcs[i] == 0 ? &eng->hits : &eng->misses, 1,
					  memory_order_relaxed);
}

KVN_API int
kvn_engine_get(struct kvn_engine *eng, const struct kvn_key *key, struct kvn_buf **out)
{
	return get(eng, key, out);
}

KVN_API int
kvn_engine_get_into(struct kvn_engine *eng, const struct kvn_key *key, void *dst, size_t cap,
		    size_t *len)
{
	struct kvn_buf *buf;
	int rc = get(eng, key, &buf);
	if (rc < 0)
		return rc;
	*len = buf->len;
	if (buf->len > cap)
		rc = -ENOSPC;
	else
		memcpy(dst, buf->data, buf->len);
	kvn_buf_unref(buf);
	return rc;
}

/* The copy itself holds the GPU's staging area, not the reservation or the get before it (a
 * peer get may wait on the network). */
KVN_API int
kvn_engine_put_from_gpu(struct kvn_engine *eng, const struct kvn_key *key, int gpu, uint64_t src,
			size_t len)
{
	struct kvn_slot *slot = NULL;
	int rc = kvn_storage_reserve(eng->st, key, len, &slot);
	if (rc)
		return rc;
	struct kvn_staging *stg;
	char err[512];
	uint64_t sum = 0;
	rc = kvn_engine_gpus_copy_begin(eng->gpus, gpu, &stg, err, sizeof(err));
	if (!rc) {
		rc = kvn_staging_get_sum(stg, kvn_slot_payload(slot), src, len, &sum, err,
					 sizeof(err));
		kvn_engine_gpus_copy_end(eng->gpus, gpu);
	}
	if (rc) {
		kvn_warn(COMP, "put %s of %zu bytes from GPU %d: %s", key->str, len, gpu, err);
		kvn_storage_abort(eng->st, slot);
		return rc;
	}
	return kvn_storage_commit(eng->st, key, slot, sum);
}

struct kvn_backend *
kvn_engine_gpu_tier(struct kvn_engine *eng, int gpu, const struct kvn_gpu_region **region)
{
	size_t n;
	const struct kvn_gpu_region *rg = kvn_engine_gpus_regions(eng->gpus, &n);
	for (size_t t = 0; t < n; t++)
		if (rg[t].device == gpu) {
			if (region)
				*region = &rg[t];
			/* the storage made the tiers from the regions, in their order */
			return kvn_storage_backend_at(eng->st, &kvn_gpu_backend_ops, t);
		}
	return NULL;
}

KVN_API int
kvn_engine_get_into_gpu(struct kvn_engine *eng, const struct kvn_key *key, int gpu, uint64_t dst,
			size_t cap, size_t *len)
{
	struct kvn_buf *buf = NULL;
	char err[512];
	/* Held in that GPU's own tier: one device to device copy. */
	struct kvn_backend *tier = kvn_engine_gpu_tier(eng, gpu, NULL);
	int rc =
	    tier ? kvn_gpu_tier_get_into_dev(tier, key, dst, cap, len, err, sizeof(err)) : -ENOENT;
	if (rc == 0) {
		atomic_fetch_add_explicit(&eng->hits, 1, memory_order_relaxed);
		return 0;
	}
	if (rc != -ENOENT && rc != -ENOSPC)
		kvn_warn(COMP, "get %s from the gpu tier of GPU %d: %s; asking the other tiers",
			 key->str, gpu, err);
	rc = get(eng, key, &buf);
	if (rc)
		return rc;
	*len = buf->len;
	struct kvn_staging *stg;
	if (buf->len > cap)
		rc = -ENOSPC;
	else if (!(rc = kvn_engine_gpus_copy_begin(eng->gpus, gpu, &stg, err, sizeof(err)))) {
		rc = kvn_staging_put_buf(stg, dst, buf->data, buf->len, err, sizeof(err));
		kvn_engine_gpus_copy_end(eng->gpus, gpu);
	}
	if (rc && rc != -ENOSPC)
		kvn_warn(COMP, "get %s of %zu bytes into GPU %d: %s", key->str, buf->len, gpu, err);
	kvn_buf_unref(buf);
	return rc;
}

KVN_API int
kvn_engine_contains(struct kvn_engine *eng, const struct kvn_key *key)
{
	return kvn_storage_contains(eng->st, key);
}

KVN_API int
kvn_engine_remove(struct kvn_engine *eng, const struct kvn_key *key)
{
	return kvn_storage_remove(eng->st, key);
}

KVN_API int
kvn_engine_list(struct kvn_engine *eng, int (*cb)(void *ctx, const struct kvn_key *key, size_t len),
		void *ctx)
{
	return kvn_storage_list(eng->st, cb, ctx);
}

KVN_API int
kvn_engine_flush(struct kvn_engine *eng)
{
	return kvn_storage_flush(eng->st);
}

KVN_API char *
kvn_engine_stats_json(struct kvn_engine *eng)
{
	cJSON *root = cJSON_CreateObject();
	cJSON *tiers = cJSON_AddArrayToObject(root, "backends");

	cJSON_AddStringToObject(root, "node_name", eng->node_name);
	cJSON_AddStringToObject(root, "version", KVN_VERSION_STRING);
	if (eng->pool) {
		cJSON *p = cJSON_AddObjectToObject(root, "pool");
		cJSON_AddNumberToObject(p, "size", (double)kvn_pool_size(eng->pool));
		cJSON_AddBoolToObject(p, "hugepages", kvn_pool_hugepages(eng->pool));
		cJSON_AddNumberToObject(p, "populated_bytes",
					(double)kvn_pool_populated(eng->pool));
	}
	for (size_t i = 0; i < kvn_storage_count(eng->st); i++) {
		const char *name;
		struct kvn_backend_stats s;
		kvn_storage_tier(eng->st, i, &name, &s);
		cJSON *t = cJSON_CreateObject();
		cJSON_AddStringToObject(t, "name", name);
		cJSON_AddNumberToObject(t, "count", (double)s.count);
		cJSON_AddNumberToObject(t, "bytes", (double)s.bytes);
		cJSON_AddNumberToObject(t, "capacity", (double)s.capacity);
		cJSON_AddNumberToObject(t, "hits", (double)s.hits);
		cJSON_AddNumberToObject(t, "misses", (double)s.misses);
		cJSON_AddNumberToObject(t, "puts", (double)s.puts);
		cJSON_AddNumberToObject(t, "evictions", (double)s.evictions);
		cJSON_AddNumberToObject(t, "errors", (double)s.errors);
		bool gpu;
		uint64_t moved = kvn_storage_tier_moved(eng->st, i, &gpu);
		if (gpu)
			cJSON_AddNumberToObject(t, "moved_to_cpu", (double)moved);
		cJSON_AddItemToArray(tiers, t);
	}
	struct kvn_remote_status rs;
	if (kvn_storage_remote_status(eng->st, &rs) == 0) {
		cJSON *r = cJSON_AddObjectToObject(root, "remote");
		cJSON_AddStringToObject(r, "url", rs.url);
		cJSON_AddBoolToObject(r, "connected", rs.connected);
		cJSON_AddNumberToObject(r, "disconnects", (double)rs.disconnects);
		cJSON_AddNumberToObject(r, "reconnects", (double)rs.reconnects);
		cJSON_AddNumberToObject(r, "corrupt", (double)rs.corrupt);
		cJSON_AddNumberToObject(r, "stale_tags", (double)rs.stale_tags);
	}
	struct kvn_backend *peer = kvn_storage_backend(eng->st, &kvn_peer_backend_ops);
	if (peer) {
		cJSON *p = cJSON_AddObjectToObject(root, "peer");
		struct kvn_peer_read_stats ps;
		kvn_peer_read_stats(peer, &ps);
		cJSON_AddNumberToObject(p, "bytes_read", (double)ps.bytes);
		cJSON_AddNumberToObject(p, "reads", (double)ps.reads);
		cJSON_AddNumberToObject(p, "promoted_in_place", (double)ps.promoted_in_place);
		cJSON_AddNumberToObject(p, "location_cache_hits", (double)ps.location_cache_hits);
		cJSON_AddNumberToObject(p, "location_cache_misses",
					(double)ps.location_cache_misses);
		/* the rails peer READs go over (docs/architecture.md §12.6) */
		cJSON *rails = cJSON_AddArrayToObject(p, "rails");
		for (size_t i = 0; rails && i < ps.nrails; i++) {
			const struct kvn_rail_stats *rs = &ps.rails[i];
			cJSON *r = cJSON_CreateObject();
			if (!r)
				break;
			cJSON_AddItemToArray(rails, r);
			if (*rs->device)
				cJSON_AddStringToObject(r, "device", rs->device);
			else
				cJSON_AddNullToObject(r, "device");
			cJSON_AddStringToObject(r, "address", rs->addr);
			cJSON_AddNumberToObject(r, "numa_node", rs->numa_node);
			cJSON_AddBoolToObject(r, "up", !rs->down);
			cJSON_AddNumberToObject(r, "reads", (double)rs->slices);
			cJSON_AddNumberToObject(r, "bytes", (double)rs->bytes);
			cJSON_AddNumberToObject(r, "errors", (double)rs->errors);
			cJSON_AddNumberToObject(r, "reissued", (double)rs->reissued);
			cJSON_AddNumberToObject(r, "downs", (double)rs->downs);
		}
	}
	kvn_engine_gpus_json(eng->gpus, root);
	cJSON_AddNumberToObject(root, "hits", (double)atomic_load(&eng->hits));
	cJSON_AddNumberToObject(root, "misses", (double)atomic_load(&eng->misses));
	char *text = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	return text;
}

void
kvn_engine_gets(struct kvn_engine *eng, uint64_t *hits, uint64_t *misses)
{
	*hits = atomic_load_explicit(&eng->hits, memory_order_relaxed);
	*misses = atomic_load_explicit(&eng->misses, memory_order_relaxed);
}

struct kvn_engine_gpus *
kvn_engine_gpus(struct kvn_engine *eng)
{
	return eng->gpus;
}

struct kvn_pool *
kvn_engine_pool(struct kvn_engine *eng)
{
	return eng->pool;
}

struct kvn_storage *
kvn_engine_storage(struct kvn_engine *eng)
{
	return eng->st;
}
