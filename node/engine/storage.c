/* Storage manager: ordered tiers (cpu, disk, external…), first-hit get with promotion into cpu,
 * write-through put where each slow tier is fed by its own writer threads through a bounded
 * queue (a lane), and puts that wait for a sync_put tier's write. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <dlfcn.h>

#include "core/log.h"
#include "core/pool.h"
#include "node/engine/storage.h"

#define MAX_TIERS 16
#define PENDING_BUCKETS 1024

/* An option value the node rendered as text for a backend, kept until the storage manager
 * closes: get_opt's answer must stay valid however often the backend asks again. */
struct opt_text {
	struct opt_text *next;
	char *name, *value;
};

struct tier {
	const struct kvn_backend_ops *ops;
	struct kvn_backend *be;
	char name[64];
	char prefix[96]; /* extra_config prefix of its options: "disk." or "external_backend.N." */
	struct kvn_tier_env tenv; /* tenv.env is what the tier sees */
	struct kvn_storage *st;
	void *dl; /* dlopen handle of an external module */
	uint64_t capacity;
	char *path;
	pthread_mutex_t opt_lock; /* opts */
	struct opt_text *opts;
	/* Value bytes gets returned from it and stores put into it, for metrics; the tiers'
	 * own stats count operations, not bytes moved. */
	_Atomic uint64_t bytes_read, bytes_written;
};

/* Why a queued write no longer stands for the key's latest value. A superseded write keeps
 * what it wrote (the newer one, queued behind it on the same writer, replaces it); a removed
 * one is undone if it landed after the remove. */
enum job_state { JOB_LIVE, JOB_SUPERSEDED, JOB_REMOVED };

/* A queued write of one value to one slow tier. Jobs of one key in one lane always go to the
 * same writer (chosen by digest), so they run in submission order and a newer value is never
 * overwritten by an older one. */
struct job {
	struct kvn_key key;
	struct kvn_buf *buf;
	struct lane *lane;
	uint8_t state; /* enum job_state; under st->lock */
	bool waited;   /* a sync put waits for it (and frees it) */
	bool done;     /* under st->lock */
	int rc;	       /* the tier's answer, once done */
	struct job *qnext; /* writer queue */
	struct job *hnext; /* pending hash chain */
};

struct writer {
	struct lane *lane;
	pthread_t thread;
	pthread_cond_t cond; /* job queued, or stopping */
	struct job *head, *tail;
	uint32_t depth;
	bool started;
};

/* The queue and writers of one slow tier: a slow or hung tier holds up only its own lane. */
struct lane {
	struct kvn_storage *st;
	struct tier *t;
	struct writer *writers;
	uint32_t nwriters;
	/* sync_put: a put returns once this tier holds the value (or fails with its error). */
	bool sync;
	/* The remote tier: a put never waits for room in its queue, nor queues anything while
	 * the store is out of service; the write is skipped and counted instead. */
	bool best_effort;
	_Atomic uint64_t skipped;
	struct kvn_ratelimit fail_rl, skip_rl;
};

struct kvn_storage {
	const struct kvn_config *cfg;
	struct tier tier[MAX_TIERS];
	size_t ntiers;
	int cpu; /* index of the cpu tier, -1 when disabled */
	struct kvn_pool *pool; /* the cpu tier's, NULL when disabled */
	bool have_slow;
	bool have_sync; /* some lane is sync_put */
	bool promote;

	pthread_mutex_t lock; /* queues and the pending table; never held across backend I/O */
	pthread_cond_t room; /* a queue has room */
	pthread_cond_t idle; /* a job finished */
	struct lane lane[MAX_TIERS];
	size_t nlanes;
	uint32_t depth_max;
	uint32_t running;
	uint64_t queued_total;
	bool stopping;
	struct job *pending[PENDING_BUCKETS];
};

/* --------------------------------------------------------------------------------------------
 * Options a backend reads through env->get_opt
 * -------------------------------------------------------------------------------------------- */

/* The kept copy of value for opt: the same pointer for the same answer; NULL when out of
 * memory (the backend then sees the option unset and says so). */
static const char *
opt_keep(struct tier *t, const char *opt, const char *value)
{
	const char *r = NULL;
	pthread_mutex_lock(&t->opt_lock);
	for (struct opt_text *o = t->opts; o && !r; o = o->next)
		if (!strcmp(o->name, opt) && !strcmp(o->value, value))
			r = o->value;
	struct opt_text *o = r ? NULL : calloc(1, sizeof(*o));
	if (o && (o->name = strdup(opt)) && (o->value = strdup(value))) {
		o->next = t->opts;
		t->opts = o;
		r = o->value;
	} else if (o) {
		free(o->name);
		free(o);
		kvn_err("storage", "out of memory reading option %s of backend %s", opt, t->name);
	}
	pthread_mutex_unlock(&t->opt_lock);
	return r;
}

static void
opts_free(struct tier *t)
{
	for (struct opt_text *o = t->opts, *next; o; o = next) {
		next = o->next;
		free(o->name);
		free(o->value);
		free(o);
	}
	t->opts = NULL;
}

static const char *
tier_get_opt(const struct kvn_backend_env *env, const char *opt)
{
	struct tier *t = env->node_priv;
	const struct kvn_config *cfg = t->st->cfg;
	char full[256], text[4096];

	if (!strcmp(opt, "capacity_bytes") && t->capacity) {
		snprintf(text, sizeof(text), "%" PRIu64, t->capacity);
		return opt_keep(t, opt, text);
	}
	if (!strcmp(opt, "path") && t->path)
		return t->path;
	snprintf(full, sizeof(full), "%s%s", t->prefix, opt);
	const char *v = kvn_config_extra(cfg, full); /* the config's own string */
	if (v)
		return v;
	return kvn_config_value(cfg, opt, text, sizeof(text)) == 0 ? opt_keep(t, opt, text) : NULL;
}

static void
tier_log(const struct kvn_backend_env *env, int level, const char *fmt, ...)
{
	char comp[80];
	snprintf(comp, sizeof(comp), "backend %s", env->name);
	va_list ap;
	va_start(ap, fmt);
	kvn_logv(level, comp, fmt, ap);
	va_end(ap);
}

/* --------------------------------------------------------------------------------------------
 * Tiers
 * -------------------------------------------------------------------------------------------- */

static int
add_tier(struct kvn_storage *st, const struct kvn_backend_ops *ops, const char *name,
	 const char *prefix, struct kvn_pool *pool, uint64_t capacity, const char *path, void *dl,
	 const struct kvn_gpu_region *gpu, char *err, size_t errlen)
{
	if (st->ntiers == MAX_TIERS) {
		if (dl)
			dlclose(dl);
		return kvn_seterr(-EINVAL, err, errlen, "too many backends (at most %d)",
				  MAX_TIERS);
	}
	struct tier *t = &st->tier[st->ntiers];
	memset(t, 0, sizeof(*t));
	pthread_mutex_init(&t->opt_lock, NULL);
	t->ops = ops;
	t->st = st;
	t->dl = dl;
	t->capacity = capacity;
	snprintf(t->name, sizeof(t->name), "%s", name);
	snprintf(t->prefix, sizeof(t->prefix), "%s", prefix);
	if (path && !(t->path = strdup(path))) {
		if (dl)
			dlclose(dl);
		pthread_mutex_destroy(&t->opt_lock);
		return -ENOMEM;
	}
	t->tenv.env = (struct kvn_backend_env){
	    KVN_BACKEND_ENV_INIT,
	    .name = t->name,
	    .config_dir = st->cfg->dir ? st->cfg->dir : ".",
	    .get_opt = tier_get_opt,
	    .log = tier_log,
	    .node_priv = t,
	};
	t->tenv.pool = pool;
	t->tenv.gpu = gpu;
	int rc = ops->create(&t->tenv.env, &t->be);
	if (rc < 0) {
		free(t->path);
		opts_free(t);
		pthread_mutex_destroy(&t->opt_lock);
		if (dl)
			dlclose(dl);
		return kvn_seterr(rc, err, errlen,
				  "backend \"%s\": could not start: %s (see the log above)", name,
				  kvn_strerror(rc));
	}
	if (ops->flags & KVN_BACKEND_F_SLOW)
		st->have_slow = true;
	st->ntiers++;
	kvn_info("storage", "tier %zu: %s (%s)%s", st->ntiers - 1, name, ops->name,
		 (ops->flags & KVN_BACKEND_F_SLOW) ? ", written asynchronously" : "");
	return 0;
}

static int
add_external(struct kvn_storage *st, const char *name, char *err, size_t errlen)
{
	char key[256], prefix[128];
	snprintf(prefix, sizeof(prefix), "external_backend.%s.", name);
	snprintf(key, sizeof(key), "%smodule_path", prefix);
	const char *module = kvn_config_extra(st->cfg, key);
	snprintf(key, sizeof(key), "%sclass_name", prefix);
	const char *symbol = kvn_config_extra(st->cfg, key);
	if (!module || !symbol)
		return kvn_seterr(-EINVAL, err, errlen,
				  "external backend \"%s\": set extra_config "
				  "external_backend.%s.module_path and .class_name",
				  name, name);

	const struct kvn_backend_ops *ops;
	void *dl;
	int rc = kvn_external_load(module, symbol, st->cfg->dir, &ops, &dl, err, errlen);
	if (rc < 0)
		return rc;
	snprintf(key, sizeof(key), "%scapacity_bytes", prefix);
	const char *cap = kvn_config_extra(st->cfg, key);
	return add_tier(st, ops, name, prefix, NULL, cap ? strtoull(cap, NULL, 10) : 0, NULL, dl,
			NULL, err, errlen);
}

/* --------------------------------------------------------------------------------------------
 * Writers for slow tiers
 * -------------------------------------------------------------------------------------------- */

static size_t
bucket_of(struct kvn_digest d)
{
	return (size_t)(d.lo % PENDING_BUCKETS);
}

/* " (N more … not logged)" for a rate-limited line that held N back, else "". */
static const char *
held_back(char *buf, size_t len, uint64_t missed, const char *what)
{
	if (!missed)
		return "";
	snprintf(buf, len, " (%" PRIu64 " more %s not logged in the last second)", missed, what);
	return buf;
}

/* A queued job of key holding its latest value, or NULL. Caller holds st->lock. */
static struct job *
pending_find(struct kvn_storage *st, const struct kvn_key *key)
{
	/* enqueue supersedes older jobs of the key: the live ones all hold the same value. */
	for (struct job *j = st->pending[bucket_of(key->digest)]; j; j = j->hnext)
		if (j->state == JOB_LIVE && kvn_digest_eq(j->key.digest, key->digest))
			return j;
	return NULL;
}

static void
pending_unlink(struct kvn_storage *st, struct job *job)
{
	struct job **pp = &st->pending[bucket_of(job->key.digest)];
	while (*pp && *pp != job)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = job->hnext;
}

/* Marks every live queued job of key superseded or removed. Caller holds st->lock. */
static bool
pending_end(struct kvn_storage *st, const struct kvn_key *key, enum job_state why)
{
	bool any = false;
	for (struct job *j = st->pending[bucket_of(key->digest)]; j; j = j->hnext)
		if (j->state == JOB_LIVE && kvn_digest_eq(j->key.digest, key->digest)) {
			j->state = (uint8_t)why;
			any = true;
		}
	return any;
}

static void
count_io(_Atomic uint64_t *ctr, size_t len)
{
	atomic_fetch_add_explicit(ctr, len, memory_order_relaxed);
}

static enum job_state
job_state(struct kvn_storage *st, struct job *job)
{
	pthread_mutex_lock(&st->lock);
	enum job_state s = (enum job_state)job->state;
	pthread_mutex_unlock(&st->lock);
	return s;
}

static int
run_job(struct kvn_storage *st, struct job *job)
{
	struct lane *l = job->lane;
	struct tier *t = l->t;
	enum job_state s = job_state(st, job);
	/* A newer value replaces this one anyway, unless a sync put waits for this write. */
	if (s == JOB_REMOVED || (s == JOB_SUPERSEDED && !job->waited))
		return 0;
	int rc = t->ops->put(t->be, &job->key, job->buf);
	if (rc == 0) {
		count_io(&t->bytes_written, job->buf->len);
	} else {
		uint64_t missed;
		char more[96];
		if (kvn_ratelimit_ok(&l->fail_rl, 1000, &missed))
			kvn_warn("storage", "write of key %s to %s failed: %s%s%s", job->key.str,
				 t->name, kvn_strerror(rc),
				 l->sync ? "; the put was refused"
					 : "; the value is not in this tier",
				 held_back(more, sizeof(more), missed, "failed writes"));
	}
	/* A remove that raced with this put must win: undo what we just wrote. */
	if (rc == 0 && job_state(st, job) == JOB_REMOVED)
		t->ops->remove(t->be, &job->key);
	return rc;
}

static void *
writer_main(void *arg)
{
	struct writer *w = arg;
	struct kvn_storage *st = w->lane->st;

	pthread_mutex_lock(&st->lock);
	for (;;) {
		while (!w->head && !st->stopping)
			pthread_cond_wait(&w->cond, &st->lock);
		if (!w->head)
			break; /* stopping and drained */
		struct job *job = w->head;
		w->head = job->qnext;
		if (!w->head)
			w->tail = NULL;
		w->depth--;
		st->running++;
		pthread_cond_broadcast(&st->room);
		pthread_mutex_unlock(&st->lock);

		int rc = run_job(st, job);

		pthread_mutex_lock(&st->lock);
		struct kvn_buf *buf = job->buf;
		bool waited = job->waited;
		pending_unlink(st, job);
		job->rc = rc;
		job->done = true;
		st->running--;
		pthread_cond_broadcast(&st->idle);
		pthread_mutex_unlock(&st->lock);
		kvn_buf_unref(buf);
		if (!waited)
			free(job); /* else its waiter does, once it saw done */
		pthread_mutex_lock(&st->lock);
	}
	pthread_mutex_unlock(&st->lock);
	return NULL;
}

static struct writer *
writer_of(struct lane *l, const struct kvn_key *key)
{
	return &l->writers[key->digest.hi % l->nwriters];
}

/* true when some lane a put must wait for has no room on key's writer. Caller holds lock. */
static bool
lanes_full(struct kvn_storage *st, const struct kvn_key *key)
{
	for (size_t i = 0; i < st->nlanes; i++) {
		struct lane *l = &st->lane[i];
		if (!l->best_effort && writer_of(l, key)->depth >= st->depth_max)
			return true;
	}
	return false;
}

/* Whether a best-effort lane takes this write now. Caller holds st->lock. */
static bool
lane_takes(struct lane *l, const struct kvn_key *key, struct kvn_storage *st)
{
	const char *why = NULL;
	if (l->t->ops == &kvn_remote_backend_ops && !kvn_remote_backend_in_service(l->t->be))
		why = "its store is out of service";
	else if (writer_of(l, key)->depth >= st->depth_max)
		why = "its write queue is full (put_queue_depth)";
	if (!why)
		return true;
	atomic_fetch_add_explicit(&l->skipped, 1, memory_order_relaxed);
	uint64_t missed;
	char more[96];
	if (kvn_ratelimit_ok(&l->skip_rl, 1000, &missed))
		kvn_warn("storage", "write of key %s to %s skipped: %s; the other tiers have it%s",
			 key->str, l->t->name, why,
			 held_back(more, sizeof(more), missed, "skipped writes"));
	return false;
}

/* Queues buf for every slow tier. The jobs of sync lanes are returned in waits (n of them):
 * the caller waits for them and frees them. */
static int
enqueue(struct kvn_storage *st, const struct kvn_key *key, struct kvn_buf *buf,
	struct job **waits, size_t *nwaits)
{
	struct job *jobs[MAX_TIERS];
	*nwaits = 0;
	for (size_t i = 0; i < st->nlanes; i++) {
		jobs[i] = calloc(1, sizeof(*jobs[i]));
		if (!jobs[i]) {
			while (i-- > 0)
				free(jobs[i]);
			return -ENOMEM;
		}
		jobs[i]->key = *key;
		jobs[i]->lane = &st->lane[i];
		jobs[i]->state = JOB_LIVE;
		jobs[i]->waited = st->lane[i].sync;
	}

	pthread_mutex_lock(&st->lock);
	/* Backpressure: a full queue makes the producer wait, so memory stays bounded. */
	while (lanes_full(st, key) && !st->stopping)
		pthread_cond_wait(&st->room, &st->lock);
	pending_end(st, key, JOB_SUPERSEDED); /* an older value of this key need not be written */
	for (size_t i = 0; i < st->nlanes; i++) {
		struct lane *l = &st->lane[i];
		struct job *job = jobs[i];
		if (l->best_effort && !lane_takes(l, key, st)) {
			free(job);
			continue;
		}
		struct writer *w = writer_of(l, key);
		job->buf = kvn_buf_ref(buf);
		size_t b = bucket_of(key->digest);
		job->hnext = st->pending[b];
		st->pending[b] = job;
		if (w->tail)
			w->tail->qnext = job;
		else
			w->head = job;
		w->tail = job;
		w->depth++;
		st->queued_total++;
		pthread_cond_signal(&w->cond);
		if (job->waited)
			waits[(*nwaits)++] = job;
	}
	pthread_mutex_unlock(&st->lock);
	return 0;
}

/* Waits for the sync lanes' writes of one put; the first failure, or 0. */
static int
wait_jobs(struct kvn_storage *st, struct job **waits, size_t n)
{
	int rc = 0;
	pthread_mutex_lock(&st->lock);
	for (size_t i = 0; i < n; i++) {
		while (!waits[i]->done)
			pthread_cond_wait(&st->idle, &st->lock);
		if (waits[i]->rc < 0 && rc == 0)
			rc = waits[i]->rc;
	}
	pthread_mutex_unlock(&st->lock);
	for (size_t i = 0; i < n; i++)
		free(waits[i]);
	return rc;
}

/* --------------------------------------------------------------------------------------------
 * Open / close
 * -------------------------------------------------------------------------------------------- */

/* sync_put of a slow tier, read like the tier's other options ("disk.sync_put"). */
static int
lane_sync_opt(struct tier *t, bool *out, char *err, size_t errlen)
{
	/* The remote tier's options carry their prefix themselves (backends/remote.c). */
	bool remote = t->ops == &kvn_remote_backend_ops;
	const char *v = remote ? kvn_config_extra(t->st->cfg, "remote.sync_put")
			       : t->tenv.env.get_opt(&t->tenv.env, "sync_put");
	*out = false;
	if (!v)
		return 0;
	if (!strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on") ||
	    !strcmp(v, "1"))
		*out = true;
	else if (strcasecmp(v, "false") && strcasecmp(v, "no") && strcasecmp(v, "off") &&
		 strcmp(v, "0"))
		return kvn_seterr(-EINVAL, err, errlen,
				  "extra_config %ssync_put is \"%s\": set it to true or false",
				  remote ? "remote." : t->prefix, v);
	return 0;
}

static int
start_lanes(struct kvn_storage *st, char *err, size_t errlen)
{
	uint32_t nwriters = st->cfg->put_threads ? st->cfg->put_threads : 2;
	st->depth_max = st->cfg->put_queue_depth ? st->cfg->put_queue_depth : 64;
	for (size_t i = 0; i < st->ntiers; i++) {
		struct tier *t = &st->tier[i];
		if (!(t->ops->flags & KVN_BACKEND_F_SLOW))
			continue;
		struct lane *l = &st->lane[st->nlanes];
		l->st = st;
		l->t = t;
		l->best_effort = t->ops == &kvn_remote_backend_ops;
		int rc = lane_sync_opt(t, &l->sync, err, errlen);
		if (rc < 0)
			return rc;
		if (l->sync && l->best_effort)
			return kvn_seterr(
			    -EINVAL, err, errlen,
			    "extra_config remote.sync_put is not supported: puts never "
			    "wait for the remote store (see docs/durability.md)");
		st->have_sync |= l->sync;
		if (l->sync)
			kvn_info("storage", "puts return once %s holds the value (%ssync_put)",
				 t->name, t->prefix);
		l->writers = calloc(nwriters, sizeof(*l->writers));
		if (!l->writers)
			return kvn_seterr(-EINVAL, err, errlen,
					  "out of memory for the writers of %s", t->name);
		l->nwriters = nwriters;
		st->nlanes++;
		for (uint32_t k = 0; k < nwriters; k++) {
			struct writer *w = &l->writers[k];
			w->lane = l;
			pthread_cond_init(&w->cond, NULL);
			rc = pthread_create(&w->thread, NULL, writer_main, w);
			if (rc)
				return kvn_seterr(-EINVAL, err, errlen,
						  "cannot start writer threads of %s: %s", t->name,
						  strerror(rc));
			w->started = true;
		}
	}
	return 0;
}

int
kvn_storage_open(const struct kvn_config *cfg, struct kvn_pool *pool, struct kvn_storage **out,
		 char *err, size_t errlen)
{
	return kvn_storage_open_gpu(cfg, pool, NULL, 0, out, err, errlen);
}

int
kvn_storage_open_gpu(const struct kvn_config *cfg, struct kvn_pool *pool,
		     const struct kvn_gpu_region *gpus, size_t ngpus, struct kvn_storage **out,
		     char *err, size_t errlen)
{
	struct kvn_storage *st = calloc(1, sizeof(*st));
	if (!st)
		return -ENOMEM;
	st->cfg = cfg;
	st->cpu = -1;
	st->promote = cfg->promote_to_cpu;
	pthread_mutex_init(&st->lock, NULL);
	pthread_cond_init(&st->room, NULL);
	pthread_cond_init(&st->idle, NULL);

	int rc = 0;
	/* The gpu tiers first in lookup order; each moves what it evicts into the cpu tier. */
	for (size_t i = 0; i < ngpus; i++) {
		char name[32];
		snprintf(name, sizeof(name), "gpu%d", gpus[i].device);
		rc = add_tier(st, &kvn_gpu_backend_ops, name, "gpu.", pool, gpus[i].len, NULL, NULL,
			      &gpus[i], err, errlen);
		if (rc < 0)
			goto fail;
	}
	if (cfg->local_cpu) {
		if (!pool) {
			rc = kvn_seterr(-EINVAL, err, errlen,
					"local_cpu is on but no chunk pool was given");
			goto fail;
		}
		st->cpu = (int)st->ntiers;
		rc = add_tier(st, &kvn_cpu_backend_ops, "cpu", "cpu.", pool, kvn_pool_size(pool),
			      NULL, NULL, NULL, err, errlen);
		if (rc < 0) {
			st->cpu = -1;
			goto fail;
		}
		st->pool = pool;
		for (size_t i = 0; i < ngpus; i++)
			kvn_gpu_tier_set_spill(st->tier[i].be, st->tier[st->cpu].be);
	}
	if (cfg->local_disk && cfg->max_local_disk_size == 0) {
		kvn_warn("storage", "local_disk is set to %s but max_local_disk_size is 0: "
				    "the disk tier stays off",
			 cfg->local_disk);
	} else if (cfg->local_disk) {
		rc = add_tier(st, &kvn_disk_backend_ops, "disk", "disk.", NULL,
			      cfg->max_local_disk_size, cfg->local_disk, NULL, NULL, err, errlen);
		if (rc < 0)
			goto fail;
	}
	if (cfg->scheduler_url) {
		/* Chunks of the other nodes, found through the scheduler (backends/peer.c); the
		 * cluster glue attaches it once the transport and membership are up. */
		rc = add_tier(st, &kvn_peer_backend_ops, "peer", "peer.", NULL, 0, NULL, NULL, NULL,
			      err, errlen);
		if (rc < 0)
			goto fail;
	}
	if (cfg->remote_url) {
		/* Options come as extra_config "remote.<opt>" (the tier adds the prefix). */
		rc = add_tier(st, &kvn_remote_backend_ops, "remote", "", NULL, 0, NULL, NULL, NULL,
			      err, errlen);
		if (rc < 0)
			goto fail;
	}
	for (size_t i = 0; i < cfg->n_external_backends; i++) {
		rc = add_external(st, cfg->external_backends[i], err, errlen);
		if (rc < 0)
			goto fail;
	}
	if (st->ntiers == 0) {
		rc = kvn_seterr(-EINVAL, err, errlen,
				"no storage tier enabled: set local_cpu: true, "
				"local_disk, or external_backends");
		goto fail;
	}
	if (st->have_slow && (rc = start_lanes(st, err, errlen)) < 0)
		goto fail;
	*out = st;
	return 0;
fail:
	kvn_storage_close(st);
	return rc;
}

int
kvn_storage_flush(struct kvn_storage *st)
{
	pthread_mutex_lock(&st->lock);
	for (;;) {
		bool busy = st->running > 0;
		for (size_t i = 0; i < st->nlanes && !busy; i++)
			for (uint32_t k = 0; k < st->lane[i].nwriters && !busy; k++)
				busy = st->lane[i].writers[k].head != NULL;
		if (!busy)
			break;
		pthread_cond_wait(&st->idle, &st->lock);
	}
	pthread_mutex_unlock(&st->lock);

	/* Then what landed is made durable, tier by tier (ABI 2.1; an older module has no
	 * sync). The tier logs its own failure; the first one is returned. */
	int rc = 0;
	for (size_t i = 0; i < st->ntiers; i++) {
		const struct kvn_backend_ops *ops = st->tier[i].ops;
		if (KVN_ABI_HAS(ops, sync) && ops->sync) {
			int r = ops->sync(st->tier[i].be);
			if (r < 0 && !rc)
				rc = r;
		}
	}
	return rc;
}

void
kvn_storage_close(struct kvn_storage *st)
{
	if (!st)
		return;
	/* Writers drain their queues before they exit: nothing accepted is lost. */
	pthread_mutex_lock(&st->lock);
	st->stopping = true;
	for (size_t i = 0; i < st->nlanes; i++)
		for (uint32_t k = 0; k < st->lane[i].nwriters; k++)
			pthread_cond_broadcast(&st->lane[i].writers[k].cond);
	pthread_cond_broadcast(&st->room);
	pthread_mutex_unlock(&st->lock);
	for (size_t i = 0; i < st->nlanes; i++) {
		struct lane *l = &st->lane[i];
		for (uint32_t k = 0; k < l->nwriters; k++) {
			if (l->writers[k].started)
				pthread_join(l->writers[k].thread, NULL);
			pthread_cond_destroy(&l->writers[k].cond);
		}
		free(l->writers);
	}
	for (size_t i = st->ntiers; i-- > 0;) {
		struct tier *t = &st->tier[i];
		t->ops->destroy(t->be);
		if (t->dl)
			dlclose(t->dl);
		free(t->path);
		opts_free(t);
		pthread_mutex_destroy(&t->opt_lock);
	}
	pthread_cond_destroy(&st->idle);
	pthread_cond_destroy(&st->room);
	pthread_mutex_destroy(&st->lock);
	free(st);
}

/* --------------------------------------------------------------------------------------------
 * Operations
 * -------------------------------------------------------------------------------------------- */

/* Puts buf into every tier but skip (-1: none): the fast ones inline, the slow ones through
 * their writers. *stored counts the tiers (one for all slow ones) that took it. */
static int
put_tiers(struct kvn_storage *st, const struct kvn_key *key, struct kvn_buf *buf, int skip,
	  int *stored)
{
	int last = -ENOSPC;
	for (size_t i = 0; i < st->ntiers; i++) {
		struct tier *t = &st->tier[i];
		if ((t->ops->flags & KVN_BACKEND_F_SLOW) || (int)i == skip)
			continue;
		int rc = t->ops->put(t->be, key, buf);
		if (rc == 0) {
			++*stored;
			count_io(&t->bytes_written, buf->len);
		} else {
			last = rc;
		}
		if (rc < 0 && rc != -ENOSPC)
			kvn_warn("storage", "put of key %s into %s failed: %s", key->str, t->name,
				 kvn_strerror(rc));
	}
	if (st->have_slow) {
		struct job *waits[MAX_TIERS];
		size_t nwaits;
		int rc = enqueue(st, key, buf, waits, &nwaits);
		if (rc == 0)
			rc = wait_jobs(st, waits, nwaits);
		if (rc < 0 && st->have_sync) {
			*stored = 0; /* a sync_put tier does not hold it: not acknowledged */
			return rc;
		}
		if (rc == 0)
			++*stored;
		else
			last = rc;
	}
	return last;
}

int
kvn_storage_put(struct kvn_storage *st, const struct kvn_key *key, struct kvn_buf *buf)
{
	int stored = 0, last = put_tiers(st, key, buf, -1, &stored);
	return stored ? 0 : last;
}

int
kvn_storage_reserve(struct kvn_storage *st, const struct kvn_key *key, size_t len,
		    struct kvn_slot **out)
{
	if (st->cpu < 0)
		return -ENOTSUP;
	return kvn_cpu_reserve(st->tier[st->cpu].be, key, len, out);
}

int
kvn_storage_commit(struct kvn_storage *st, const struct kvn_key *key, struct kvn_slot *slot,
		   uint64_t checksum)
{
	struct tier *c = &st->tier[st->cpu];
	size_t len = kvn_slot_len(slot);
	kvn_pool_seal_with(slot, checksum);
	/* The other tiers read the value from the slot: a view keeps it alive even when the cpu
	 * tier evicts or replaces it before they are done. */
	struct kvn_buf *view = NULL;
	bool others = st->ntiers > 1;
	if (others && kvn_pool_view(st->pool, slot, &view) < 0) {
		kvn_pool_unref(st->pool, slot);
		return -ENOMEM;
	}
	int rc = kvn_cpu_adopt(c->be, key, slot);
	if (rc == 0)
		count_io(&c->bytes_written, len);
	if (others) {
		int stored = rc == 0, last = put_tiers(st, key, view, st->cpu, &stored);
		kvn_buf_unref(view);
		if (!stored)
			return rc ? rc : last;
		if (st->have_sync && last < 0 && last != -ENOSPC)
			return last;
	}
	return rc;
}

int
kvn_storage_to_pool(struct kvn_storage *st, struct kvn_buf *buf, struct kvn_buf **out)
{
	*out = NULL;
	if (st->cpu < 0)
		return -ENOTSUP;
	if (kvn_pool_view_slot(buf)) {
		*out = kvn_buf_ref(buf);
		return 0;
	}
	struct kvn_slot *slot;
	int rc = kvn_cpu_alloc_scratch(st->tier[st->cpu].be, buf->len, NULL, &slot);
	if (rc)
		return rc;
	kvn_pool_fill(slot, buf->data);
	rc = kvn_pool_view(st->pool, slot, out);
	kvn_pool_unref(st->pool, slot); /* the view holds it now, or nothing does */
	return rc;
}

void
kvn_storage_abort(struct kvn_storage *st, struct kvn_slot *slot)
{
	kvn_pool_unref(st->pool, slot); /* never linked: frees it */
}

static int
promote(struct kvn_storage *st, size_t from, const struct kvn_key *key, struct kvn_buf *buf)
{
	/* A tier above cpu (gpu) got the put written through: nothing to promote. */
	if (!st->promote || st->cpu < 0 || from <= (size_t)st->cpu)
		return 0;
	struct tier *c = &st->tier[st->cpu];
	int rc = c->ops->put(c->be, key, buf);
	if (rc == 0)
		count_io(&c->bytes_written, buf->len);
	if (rc < 0 && rc != -ENOSPC)
		kvn_debug("storage", "promotion of key %s from %s into cpu failed: %s", key->str,
			  st->tier[from].name, kvn_strerror(rc));
	return rc;
}

/* A value of key still queued for the slow tiers: newer than what they hold. */
static bool
pending_hit(struct kvn_storage *st, const struct kvn_key *key, struct kvn_buf **out)
{
	struct kvn_buf *b = NULL;
	pthread_mutex_lock(&st->lock);
	struct job *j = pending_find(st, key);
	if (j)
		b = kvn_buf_ref(j->buf);
	pthread_mutex_unlock(&st->lock);
	*out = b;
	return b != NULL;
}

/* What a tier's get gave: counted and promoted on a hit, logged when it failed. */
static int
tier_got(struct kvn_storage *st, size_t i, const struct kvn_key *key, int rc,
	 struct kvn_buf *const *out)
{
	struct tier *t = &st->tier[i];
	if (rc == 0) {
		count_io(&t->bytes_read, (*out)->len);
		promote(st, i, key, *out);
	} else if (rc != -ENOENT) {
		kvn_warn("storage", "get of key %s from %s failed: %s", key->str, t->name,
			 kvn_strerror(rc));
	}
	return rc;
}

int
kvn_storage_get(struct kvn_storage *st, const struct kvn_key *key, struct kvn_buf **out)
{
	bool checked_pending = false;
	for (size_t i = 0; i < st->ntiers; i++) {
		struct tier *t = &st->tier[i];
		if ((t->ops->flags & KVN_BACKEND_F_SLOW) && !checked_pending) {
			checked_pending = true;
			if (pending_hit(st, key, out))
				return 0;
		}
		if (tier_got(st, i, key, t->ops->get(t->be, key, out), out) == 0)
			return 0;
	}
	return -ENOENT;
}

/* The keys of a batch the tiers above missed, asked of the peer tier at once. */
static void
peer_batch(struct kvn_storage *st, size_t i, const struct kvn_key *keys, size_t n,
	   struct kvn_buf **outs, int *rcs, uint64_t *lookups)
{
	size_t nmiss = 0;
	for (size_t k = 0; k < n; k++)
		nmiss += rcs[k] != 0;
	const struct kvn_key **mk = malloc(sizeof(*mk) * nmiss);
	struct kvn_buf **mo = malloc(sizeof(*mo) * nmiss);
	int *mr = malloc(sizeof(*mr) * nmiss);
	if (!mk || !mo || !mr) {
		kvn_warn("storage",
			 "out of memory for a get of %zu keys from peer (key %s first): "
			 "asking key by key",
			 nmiss, keys[0].str);
		for (size_t k = 0; k < n; k++)
			if (rcs[k])
				rcs[k] = tier_got(
				    st, i, &keys[k],
				    st->tier[i].ops->get(st->tier[i].be, &keys[k], &outs[k]),
				    &outs[k]);
		goto out;
	}
	for (size_t k = 0, m = 0; k < n; k++)
		if (rcs[k])
			mk[m++] = &keys[k];
	uint64_t l = 0;
	kvn_peer_get_batch(st->tier[i].be, mk, nmiss, mo, mr, &l);
	*lookups += l;
	for (size_t k = 0, m = 0; k < n; k++) {
		if (!rcs[k])
			continue;
		outs[k] = mo[m];
		rcs[k] = tier_got(st, i, &keys[k], mr[m], &outs[k]);
		m++;
	}
out:
	free(mk);
	free(mo);
	free(mr);
}

void
kvn_storage_get_batch(struct kvn_storage *st, const struct kvn_key *keys, size_t n,
		      struct kvn_buf **outs, int *rcs, uint64_t *lookups)
{
	uint64_t l = 0;
	size_t left = n;
	bool checked_pending = false;
	for (size_t k = 0; k < n; k++)
		outs[k] = NULL, rcs[k] = -ENOENT;
	/* Tier by tier instead of key by key: per key the tiers are asked in the same order
	 * with the same checks as kvn_storage_get, and the peer tier gets every key still
	 * missing in one call (one lookup, READs posted together). */
	for (size_t i = 0; i < st->ntiers && left; i++) {
		struct tier *t = &st->tier[i];
		bool pend = (t->ops->flags & KVN_BACKEND_F_SLOW) && !checked_pending;
		checked_pending |= pend;
		for (size_t k = 0; pend && k < n; k++)
			if (rcs[k] && pending_hit(st, &keys[k], &outs[k]))
				rcs[k] = 0, left--;
		if (t->ops == &kvn_peer_backend_ops && left) {
			peer_batch(st, i, keys, n, outs, rcs, &l);
		} else {
			for (size_t k = 0; k < n; k++)
				if (rcs[k])
					rcs[k] = tier_got(st, i, &keys[k],
							  t->ops->get(t->be, &keys[k], &outs[k]),
							  &outs[k]);
		}
		left = 0;
		for (size_t k = 0; k < n; k++)
			left += rcs[k] != 0;
	}
	for (size_t k = 0; k < n; k++)
		if (rcs[k])
			rcs[k] = -ENOENT, outs[k] = NULL;
	if (lookups)
		*lookups = l;
}

int
kvn_storage_put_pending(struct kvn_storage *st, const struct kvn_key *key)
{
	if (!st->have_slow)
		return 0;
	pthread_mutex_lock(&st->lock);
	int found = pending_find(st, key) != NULL;
	pthread_mutex_unlock(&st->lock);
	return found;
}

/* Whether a tier (the peer tier only when peers) or the write queue holds key. */
static int
contains(struct kvn_storage *st, const struct kvn_key *key, bool peers)
{
	for (size_t i = 0; i < st->ntiers; i++) {
		struct tier *t = &st->tier[i];
		if ((peers || t->ops != &kvn_peer_backend_ops) &&
		    t->ops->contains(t->be, key, false) == 1)
			return 1;
	}
	return kvn_storage_put_pending(st, key);
}

int
kvn_storage_contains(struct kvn_storage *st, const struct kvn_key *key)
{
	return contains(st, key, true);
}

int
kvn_storage_contains_here(struct kvn_storage *st, const struct kvn_key *key)
{
	return contains(st, key, false);
}

int
kvn_storage_remove(struct kvn_storage *st, const struct kvn_key *key)
{
	bool any = false;
	if (st->have_slow) {
		pthread_mutex_lock(&st->lock);
		any = pending_end(st, key, JOB_REMOVED);
		pthread_mutex_unlock(&st->lock);
	}
	for (size_t i = 0; i < st->ntiers; i++) {
		struct tier *t = &st->tier[i];
		int rc = t->ops->remove(t->be, key);
		if (rc == 0)
			any = true;
		else if (rc != -ENOENT)
			kvn_warn("storage", "remove of key %s from %s failed: %s", key->str,
				 t->name, kvn_strerror(rc));
	}
	return any ? 0 : -ENOENT;
}

/* list: every tier reports its keys; a key held by several tiers is reported once. */
struct seen {
	struct kvn_digest *slot;
	size_t cap, n;
	kvn_list_cb cb;
	void *ctx;
	int err;
};

static int
seen_add(struct seen *s, struct kvn_digest d)
{
	if ((s->n + 1) * 2 > s->cap) {
		size_t ncap = s->cap ? s->cap * 2 : 1024;
		struct kvn_digest *n = calloc(ncap, sizeof(*n));
		if (!n)
			return -ENOMEM;
		for (size_t i = 0; i < s->cap; i++) {
			struct kvn_digest e = s->slot[i];
			if (!e.lo && !e.hi)
				continue;
			size_t h = e.lo & (ncap - 1);
			while (n[h].lo || n[h].hi)
				h = (h + 1) & (ncap - 1);
			n[h] = e;
		}
		free(s->slot);
		s->slot = n;
		s->cap = ncap;
	}
	if (!d.lo && !d.hi)
		d.lo = 1; /* the empty marker; a collision here only merges two listings */
	size_t h = d.lo & (s->cap - 1);
	while (s->slot[h].lo || s->slot[h].hi) {
		if (kvn_digest_eq(s->slot[h], d))
			return 0;
		h = (h + 1) & (s->cap - 1);
	}
	s->slot[h] = d;
	s->n++;
	return 1;
}

static int
list_one(void *ctx, const struct kvn_key *key, size_t len)
{
	struct seen *s = ctx;
	int rc = seen_add(s, key->digest);
	if (rc < 0) {
		s->err = rc;
		return rc;
	}
	return rc ? s->cb(s->ctx, key, len) : 0;
}

int
kvn_storage_list(struct kvn_storage *st, kvn_list_cb cb, void *ctx)
{
	struct seen s = { .cb = cb, .ctx = ctx };
	int rc = 0;
	for (size_t i = 0; i < st->ntiers && rc == 0; i++) {
		struct tier *t = &st->tier[i];
		if (t->ops->list)
			rc = t->ops->list(t->be, list_one, &s);
	}
	free(s.slot);
	return s.err ? s.err : rc;
}

bool
kvn_storage_async(const struct kvn_storage *st)
{
	return st->have_slow;
}

size_t
kvn_storage_count(const struct kvn_storage *st)
{
	return st->ntiers;
}

int
kvn_storage_tier(struct kvn_storage *st, size_t i, const char **name,
		 struct kvn_backend_stats *stats)
{
	if (i >= st->ntiers)
		return -ENOENT;
	struct tier *t = &st->tier[i];
	if (name)
		*name = t->name;
	if (stats) {
		memset(stats, 0, sizeof(*stats));
		t->ops->stats(t->be, stats);
	}
	return 0;
}

void
kvn_storage_tier_io(struct kvn_storage *st, size_t i, uint64_t *read, uint64_t *written)
{
	*read = *written = 0;
	if (i < st->ntiers) {
		*read = atomic_load_explicit(&st->tier[i].bytes_read, memory_order_relaxed);
		*written = atomic_load_explicit(&st->tier[i].bytes_written, memory_order_relaxed);
	}
}

uint64_t
kvn_storage_tier_moved(struct kvn_storage *st, size_t i, bool *is_gpu)
{
	bool gpu = i < st->ntiers && st->tier[i].ops == &kvn_gpu_backend_ops;
	if (is_gpu)
		*is_gpu = gpu;
	return gpu ? kvn_gpu_tier_spilled(st->tier[i].be) : 0;
}

uint64_t
kvn_storage_tier_skipped(struct kvn_storage *st, size_t i)
{
	for (size_t k = 0; k < st->nlanes; k++)
		if (st->lane[k].t == &st->tier[i])
			return atomic_load_explicit(&st->lane[k].skipped, memory_order_relaxed);
	return 0;
}

struct kvn_backend *
kvn_storage_backend_at(struct kvn_storage *st, const struct kvn_backend_ops *ops, size_t n)
{
	for (size_t i = 0; i < st->ntiers; i++)
		if (st->tier[i].ops == ops && n-- == 0)
			return st->tier[i].be;
	return NULL;
}

struct kvn_backend *
kvn_storage_backend(struct kvn_storage *st, const struct kvn_backend_ops *ops)
{
	return kvn_storage_backend_at(st, ops, 0);
}

int
kvn_storage_remote_status(struct kvn_storage *st, struct kvn_remote_status *out)
{
	for (size_t i = 0; i < st->ntiers; i++)
		if (st->tier[i].ops == &kvn_remote_backend_ops) {
			kvn_remote_backend_status(st->tier[i].be, out);
			return 0;
		}
	return -ENOENT;
}
