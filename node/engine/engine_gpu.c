/* The engine's GPUs (docs/gpu.md): the devices `gpu:` names, opened with the node, and for each
 * how its memory registers with the node's transport, as the cluster glue found at start
 * (kvn_cluster_start's probe), for `kvnode stat` and the metrics; and each one's copy path for
 * the engine API's device pointers (a staging area, made on first use). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/backends.h"
#include "core/log.h"
#include "gpu/gpu.h"
#include "gpu/staging.h"
#include "node/engine/config.h"
#include "node/engine/engine.h"
#include "rdma/devreg.h"

#define COMP	 "engine"
#define MAX_GPUS 64

struct gpu_dev {
	struct kvn_gpu_info info;
	char transport[16];	   /* "" until the cluster glue registered on it */
	struct kvn_reg_report reg; /* its report; method KVN_REG_NONE when nothing registered */
	char why[256];		   /* what the record says when no way won */
	/* Copies for kvn_engine_*_gpu: one at a time per device, under copy. */
	pthread_mutex_t copy;
	struct kvn_copy_engine *ce;
	struct kvn_staging *st;
	/* The gpu tier's region (max_gpu_size) and the staging of its own copies. */
	struct kvn_gpu_mem *tier_mem;
	struct kvn_copy_engine *tier_ce;
	struct kvn_staging *tier_st;
};

struct kvn_engine_gpus {
	struct kvn_gpu *gpu;
	size_t n;
	struct gpu_dev dev[MAX_GPUS];
	struct kvn_gpu_region regions[MAX_GPUS]; /* the gpu tiers', in dev order */
	size_t nregions;
	pthread_mutex_t lock; /* the registration records: set by the cluster, read by stats */
};

/* gpu: true must get every listed device or the node does not start; auto takes what there
 * is and says once why it takes nothing. */
static int
refuse_or_skip(enum kvn_gpu_mode mode, int rc, const char *why, char *err, size_t errlen)
{
	if (mode == KVN_GPU_ON)
		return kvn_seterr(rc, err, errlen, "gpu: true: %s", why);
	kvn_info(COMP, "gpu: auto: not using GPUs: %s", why);
	return 0;
}

static void
log_device(const struct kvn_config *cfg, const struct kvn_gpu *gpu, const struct kvn_gpu_info *in)
{
	char ver[16], tier[96];
	kvn_gpu_version_str(kvn_gpu_driver_version(gpu), ver, sizeof(ver));
	if (cfg->max_gpu_size)
		snprintf(tier, sizeof(tier), "a gpu tier of %" PRIu64 " bytes", cfg->max_gpu_size);
	else
		snprintf(tier, sizeof(tier), "no gpu tier on it (max_gpu_size is 0)");
	kvn_info(COMP, "GPU %d: %s (PCI %s, compute %d.%d), driver CUDA %s, dma-buf %s; %s",
		 in->index, in->name, in->pci_bus_id, in->cc_major, in->cc_minor, ver,
		 kvn_gpu_has_dmabuf(gpu) ? "exportable" : "not available", tier);
}

/* The gpu tier's device memory on d: max_gpu_size bytes and a staging of its own. */
static int
open_region(struct kvn_engine_gpus *g, struct gpu_dev *d, uint64_t size, char *err, size_t errlen)
{
	int dev = d->info.index;
	int rc = kvn_gpu_mem_alloc(g->gpu, dev, size, &d->tier_mem, err, errlen);
	if (rc == 0)
		rc = kvn_gpu_staging_open(g->gpu, dev, &d->tier_ce, &d->tier_st, err, errlen);
	if (rc) {
		kvn_gpu_mem_free(d->tier_mem);
		d->tier_mem = NULL;
		return rc;
	}
	g->regions[g->nregions++] = (struct kvn_gpu_region){
	    .base = kvn_gpu_mem_ptr(d->tier_mem),
	    .len = kvn_gpu_mem_len(d->tier_mem),
	    .staging = d->tier_st,
	    .device = dev,
	};
	return 0;
}

int
kvn_engine_gpus_open(const struct kvn_config *cfg, struct kvn_engine_gpus **out, char *err,
		     size_t errlen)
{
	enum kvn_gpu_mode mode = kvn_config_gpu_mode(cfg);
	char why[512];
	int devs[MAX_GPUS];
	struct kvn_gpu *gpu = NULL;
	*out = NULL;
	if (mode == KVN_GPU_OFF)
		return 0;
	int rc = kvn_gpu_open(&gpu, why, sizeof(why));
	if (rc)
		return refuse_or_skip(mode, rc, why, err, errlen);
	struct kvn_engine_gpus *g = calloc(1, sizeof(*g));
	if (!g) {
		kvn_gpu_close(gpu);
		return kvn_seterr(-ENOMEM, err, errlen, "out of memory");
	}
	g->gpu = gpu;
	pthread_mutex_init(&g->lock, NULL);
	size_t n = kvn_config_gpu_devices(cfg, devs, MAX_GPUS);
	for (size_t i = 0; i < n && i < MAX_GPUS; i++) {
		struct gpu_dev *d = &g->dev[g->n];
		rc = kvn_gpu_device_info(gpu, devs[i], &d->info, why, sizeof(why));
		if (rc && mode == KVN_GPU_ON) {
			kvn_engine_gpus_close(g);
			return kvn_seterr(rc, err, errlen, "gpu: true, gpu_devices: %s", why);
		}
		if (rc) {
			kvn_info(COMP, "gpu: auto: not using GPU %d: %s", devs[i], why);
			continue;
		}
		log_device(cfg, gpu, &d->info);
		if (cfg->max_gpu_size &&
		    (rc = open_region(g, d, cfg->max_gpu_size, why, sizeof(why))) < 0) {
			if (mode == KVN_GPU_ON) {
				kvn_engine_gpus_close(g);
				return kvn_seterr(rc, err, errlen,
						  "gpu: true, max_gpu_size: GPU %d: %s", devs[i],
						  why);
			}
			kvn_info(COMP, "gpu: auto: no gpu tier on GPU %d: %s", devs[i], why);
		}
		pthread_mutex_init(&d->copy, NULL);
		d->reg = (struct kvn_reg_report){KVN_REG_REPORT_INIT};
		snprintf(d->why, sizeof(d->why),
			 "no transport: the node registers memory for peers only with "
			 "scheduler_url set");
		g->n++;
	}
	if (!g->n) {
		kvn_engine_gpus_close(g);
		return 0;
	}
	*out = g;
	return 0;
}

void
kvn_engine_gpus_close(struct kvn_engine_gpus *g)
{
	if (!g)
		return;
	for (size_t i = 0; i < g->n; i++) {
		kvn_gpu_staging_close(g->dev[i].ce, g->dev[i].st);
		kvn_gpu_staging_close(g->dev[i].tier_ce, g->dev[i].tier_st);
		kvn_gpu_mem_free(g->dev[i].tier_mem);
		pthread_mutex_destroy(&g->dev[i].copy);
	}
	kvn_gpu_close(g->gpu);
	pthread_mutex_destroy(&g->lock);
	free(g);
}

/* The opened device with CUDA ordinal index, NULL when none is. */
static struct gpu_dev *
dev_of(struct kvn_engine_gpus *g, int index)
{
	for (size_t i = 0; g && i < g->n; i++)
		if (g->dev[i].info.index == index)
			return &g->dev[i];
	return NULL;
}

int
kvn_engine_gpus_copy_begin(struct kvn_engine_gpus *g, int index, struct kvn_staging **st, char *err,
			   size_t errlen)
{
	struct gpu_dev *d = dev_of(g, index);
	if (!d)
		return kvn_seterr(-ENODEV, err, errlen,
				  "GPU %d is not one of this node's GPUs (gpu, gpu_devices)",
				  index);
	pthread_mutex_lock(&d->copy);
	int rc = d->st ? 0 : kvn_gpu_staging_open(g->gpu, index, &d->ce, &d->st, err, errlen);
	if (rc)
		pthread_mutex_unlock(&d->copy);
	*st = rc ? NULL : d->st;
	return rc;
}

void
kvn_engine_gpus_copy_end(struct kvn_engine_gpus *g, int index)
{
	pthread_mutex_unlock(&dev_of(g, index)->copy);
}

const struct kvn_gpu_region *
kvn_engine_gpus_regions(struct kvn_engine_gpus *g, size_t *n)
{
	*n = g ? g->nregions : 0;
	return g ? g->regions : NULL;
}

struct kvn_gpu *
kvn_engine_gpus_driver(struct kvn_engine_gpus *g, size_t *n)
{
	*n = g ? g->n : 0;
	return g ? g->gpu : NULL;
}

const struct kvn_gpu_info *
kvn_engine_gpus_info(struct kvn_engine_gpus *g, size_t i)
{
	return g && i < g->n ? &g->dev[i].info : NULL;
}

void
kvn_engine_gpus_set_reg(struct kvn_engine_gpus *g, size_t i, const char *transport,
			const struct kvn_reg_report *rep, const char *why)
{
	if (!g || i >= g->n)
		return;
	struct gpu_dev *d = &g->dev[i];
	pthread_mutex_lock(&g->lock);
	snprintf(d->transport, sizeof(d->transport), "%s", transport ? transport : "");
	d->reg = rep ? *rep : (struct kvn_reg_report){KVN_REG_REPORT_INIT};
	snprintf(d->why, sizeof(d->why), "%s", why ? why : "");
	pthread_mutex_unlock(&g->lock);
}

int
kvn_engine_gpus_reg(struct kvn_engine_gpus *g, size_t i, int *index)
{
	if (!g || i >= g->n)
		return KVN_REG_NONE;
	pthread_mutex_lock(&g->lock);
	int m = g->dev[i].reg.method;
	*index = g->dev[i].info.index;
	pthread_mutex_unlock(&g->lock);
	return m;
}

/* "gpus": one object per opened device, with how its memory registers (docs/gpu.md). */
void
kvn_engine_gpus_json(struct kvn_engine_gpus *g, struct cJSON *root)
{
	if (!g)
		return;
	cJSON *arr = cJSON_AddArrayToObject(root, "gpus");
	pthread_mutex_lock(&g->lock);
	for (size_t i = 0; arr && i < g->n; i++) {
		const struct gpu_dev *d = &g->dev[i];
		cJSON *o = cJSON_CreateObject();
		cJSON_AddNumberToObject(o, "index", d->info.index);
		cJSON_AddStringToObject(o, "name", d->info.name);
		cJSON_AddStringToObject(o, "pci_bus_id", d->info.pci_bus_id);
		cJSON *r = cJSON_AddObjectToObject(o, "registration");
		if (d->transport[0])
			cJSON_AddStringToObject(r, "transport", d->transport);
		else
			cJSON_AddNullToObject(r, "transport");
		cJSON_AddStringToObject(r, "method", kvn_reg_method_name(d->reg.method));
		if (d->why[0])
			cJSON_AddStringToObject(r, "why", d->why);
		cJSON *steps = cJSON_AddArrayToObject(r, "steps");
		for (unsigned s = 0; s < d->reg.nsteps && s < KVN_REG_STEPS; s++) {
			const struct kvn_reg_step *st = &d->reg.step[s];
			cJSON *so = cJSON_CreateObject();
			cJSON_AddStringToObject(so, "method", kvn_reg_method_name(st->method));
			cJSON_AddBoolToObject(so, "tried", st->tried);
			cJSON_AddBoolToObject(so, "won", st->method == d->reg.method);
			cJSON_AddStringToObject(so, "why", st->why);
			cJSON_AddItemToArray(steps, so);
		}
		cJSON_AddItemToArray(arr, o);
	}
	pthread_mutex_unlock(&g->lock);
}
