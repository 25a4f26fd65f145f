/* kvnode-bench client: the client library (kvnode/client.h) against a `kvnode serve` child — views,
 * get_into, put, 32-key batches, the CLI's old socket-copy path and (--peer) a peer hit — each
 * measured beside a memcpy / raw baseline of the same sizes and working set in this process. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench.h"
#include "core/log.h"
#include "kvnode/client.h"
#include "node/serve/ctlclient.h"

#define BATCH	   32	 /* LMCache's prefix: one batch of a request's chunks */
#define READY_MS   60000 /* a child's start on a loaded machine */
#define MAX_DEPTH  64	 /* the library's requests in flight */
#define KEY_TEXT   96
#define LOOKUP_MAX 4096 /* keys of one request (kvnode/client.h) */

enum op {
	OP_READ,       /* baseline: read every byte of src[i] */
	OP_MEMCPY_IN,  /* baseline: src[i] -> ring[i % depth] */
	OP_MEMCPY_OUT, /* baseline: src[i] -> out region i */
	OP_GET_VIEW,   /* view, read every byte, release */
	OP_GET_INTO,   /* into ring[i % depth] */
	OP_PUT,	       /* from src[i] */
	OP_BATCH,      /* kvn_client_batch_get of 32 keys, release */
	OP_SINGLES,    /* baseline: 32 kvn_client_get, release */
	OP_CLI_GET,    /* kvn_cli_get (old protocol) */
	OP_CLI_PUT,    /* kvn_cli_put (old protocol) */
	OP_PEER_GET,   /* kvn_client_get through node b of a key node a holds */
	OP_PEER_READ,  /* baseline: the transport READ of the slot image (remote_peer.c) */
};

/* ------------------------------------------------------------------------------------------
 * Child processes: `kvnode scheduler` and `kvnode serve`
 * ------------------------------------------------------------------------------------------ */

struct child {
	pid_t pid;
	char out[PATH_MAX], log[PATH_MAX], cfg[PATH_MAX], sock[PATH_MAX];
	char addr[256]; /* what followed the ready line */
};

struct nodes {
	char dir[96]; /* short: unix socket paths live under it */
	char exe[PATH_MAX];
	struct child sched, a, b; /* a: the measured node; sched and b only with --peer */
};

/* The kvnode program next to this one (the build tree, /usr/bin), else kvnode on $PATH. */
static void
find_kvnode(struct nodes *n)
{
	ssize_t len = readlink("/proc/self/exe", n->exe, sizeof(n->exe) - 16);
	char *slash = len > 0 ? (n->exe[len] = '\0', strrchr(n->exe, '/')) : NULL;
	if (slash) {
		strcpy(slash + 1, "kvnode");
		if (access(n->exe, X_OK) == 0)
			return;
	}
	snprintf(n->exe, sizeof(n->exe), "kvnode");
}

static int
spawn(const struct nodes *n, struct child *c, const char *const *argv)
{
	pid_t parent = getpid();
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		int out = open(c->out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		int log = open(c->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		if (out < 0 || log < 0 || dup2(out, 1) < 0 || dup2(log, 2) < 0)
			_exit(127);
		unsetenv("KVNODE_CONFIG_FILE");
		unsetenv("LMCACHE_CONFIG_FILE");
		unsetenv("KVNODE_SCHEDULER_URL");
		unsetenv("KVNODE_SOCKET_PATH");
		setenv("KVNODE_METRICS_LISTEN", "", 1);
		setenv("KVNODE_STATE_DIR", n->dir, 1); /* the cluster's generated auth token */
		execvp(n->exe, (char *const *)argv);
		_exit(127);
	}
	c->pid = pid;
	return 0;
}

/* Waits for the line starting with what in c's stdout; what follows it goes to c->addr. */
static int
wait_ready(struct child *c, const char *what)
{
	for (int t = 0; t < READY_MS / 20; t++) {
		char text[4096] = "";
		FILE *f = fopen(c->out, "r");
		size_t len = f ? fread(text, 1, sizeof(text) - 1, f) : 0;
		if (f)
			fclose(f);
		text[len] = '\0';
		const char *p = strstr(text, what);
		if (p && strchr(p, '\n')) {
			sscanf(p + strlen(what), "%255[^ ,\n]", c->addr);
			return 0;
		}
		if (waitpid(c->pid, NULL, WNOHANG) == c->pid) {
			c->pid = 0;
			fprintf(stderr, "kvnode-bench: %s exited before it was ready (see %s)\n",
				c->cfg[0] ? c->cfg : "kvnode scheduler", c->log);
			return -ECHILD;
		}
		usleep(20000);
	}
	fprintf(stderr, "kvnode-bench: a kvnode child not ready after %d s (see %s)\n",
		READY_MS / 1000, c->log);
	return -ETIMEDOUT;
}

static void
stop(struct child *c)
{
	if (c->pid > 0) {
		kill(c->pid, SIGTERM);
		waitpid(c->pid, NULL, 0);
		c->pid = 0;
	}
	unlink(c->out);
	unlink(c->log);
	if (c->cfg[0])
		unlink(c->cfg);
}

/* The node's stats field section.field (peer.bytes_read …), -1 when absent. */
static double
node_stat(const struct child *n, const char *section, const char *field)
{
	struct kvn_cli_conn *c;
	char err[256], *json = NULL;
	double v = -1;
	if (kvn_cli_connect(n->sock, 10000, &c, err, sizeof(err)) < 0)
		return -1;
	if (kvn_cli_stat(c, &json) == 0) {
		cJSON *root = cJSON_Parse(json);
		cJSON *f = cJSON_GetObjectItem(cJSON_GetObjectItem(root, section), field);
		v = cJSON_IsNumber(f) ? f->valuedouble : -1;
		cJSON_Delete(root);
	}
	free(json);
	kvn_cli_close(c);
	return v;
}

/* Until the node has made its pool resident (pool_populate, from a thread of its own): a
 * measurement meanwhile would share the machine with it. */
static int
wait_populated(const struct child *c)
{
	for (int t = 0; t < READY_MS / 50; t++) {
		double size = node_stat(c, "pool", "size");
		double done = node_stat(c, "pool", "populated_bytes");
		if (size < 0 || done < 0 || done >= size)
			return 0; /* done, or a node that does not say */
		usleep(50000);
	}
	fprintf(stderr, "kvnode-bench: the node at %s did not make its pool resident in %d s\n",
		c->sock, READY_MS / 1000);
	return -ETIMEDOUT;
}

/* Starts one `kvnode serve` with a pool of pool bytes (sched: join that scheduler). */
static int
start_node(struct nodes *n, struct child *c, const char *name, uint64_t pool, uint64_t max_chunk,
	   const char *sched, bool promote)
{
	snprintf(c->cfg, sizeof(c->cfg), "%s/%s.yaml", n->dir, name);
	snprintf(c->out, sizeof(c->out), "%s/%s.out", n->dir, name);
	snprintf(c->log, sizeof(c->log), "%s/%s.log", n->dir, name);
	snprintf(c->sock, sizeof(c->sock), "%s/%s.sock", n->dir, name);
	FILE *f = fopen(c->cfg, "w");
	if (!f)
		return -errno;
	/* Leases may hold the whole working set (a batch of 32 large chunks, depth views). */
	fprintf(f,
		"# written by kvnode-bench client\nnode_name: bench-%d-%s\nsocket_path: %s\n"
		"max_local_cpu_size: %.3f\nmax_chunk_size: %llu\nclient_max_held_bytes: %llu\n"
		"promote_to_cpu: %s\nlog_level: warn\n",
		(int)getpid(), name, c->sock, (double)pool / 1e9, (unsigned long long)max_chunk,
		(unsigned long long)pool, promote ? "true" : "false");
	if (sched)
		fprintf(f,
			"scheduler_url: %s\nlisten: 127.0.0.1:0\ntransport: tcp\n"
			"heartbeat_ms: 200\n",
			sched);
	if (fclose(f))
		return -EIO;
	const char *argv[] = {n->exe, "serve", "-c", c->cfg, NULL};
	int rc = spawn(n, c, argv);
	if (rc == 0)
		rc = wait_ready(c, sched ? " data on " : "serving on ");
	return rc ? rc : wait_populated(c);
}

static int
start_scheduler(struct nodes *n)
{
	struct child *s = &n->sched;
	snprintf(s->out, sizeof(s->out), "%s/scheduler.out", n->dir);
	snprintf(s->log, sizeof(s->log), "%s/scheduler.log", n->dir);
	const char *argv[] = {n->exe, "scheduler", "--listen", "127.0.0.1:0", NULL};
	int rc = spawn(n, s, argv);
	return rc ? rc : wait_ready(s, "scheduler on ");
}

static void
nodes_stop(struct nodes *n)
{
	stop(&n->b);
	stop(&n->a);
	stop(&n->sched);
	if (n->dir[0])
		rmdir(n->dir);
}

/* ------------------------------------------------------------------------------------------
 * Measuring
 * ------------------------------------------------------------------------------------------ */

struct ctx {
	const struct bench_opts *o;
	struct kvn_client *c, *cb; /* on node a; on node b (--peer) */
	struct kvn_cli_conn *cli;  /* node a, the old protocol (connected by row) */
	const char *cli_sock;	   /* its socket */
	struct bench_peer_fetch *peer;
	size_t size, nkeys, depth;
	char (*text)[KEY_TEXT];
	const char **keys;
	struct kvn_key *kkeys;
	uint8_t *src, *out; /* nkeys * size each: the caller's data, the baselines' target */
	uint8_t *ring;	    /* depth * size: where get_into lands */
	struct kvn_client_req req[MAX_DEPTH];
	struct kvn_view views[MAX_DEPTH > BATCH ? MAX_DEPTH : BATCH];
	size_t caps[MAX_DEPTH], lens[MAX_DEPTH];
	void *dst[MAX_DEPTH];
	const void *data[MAX_DEPTH];
	volatile uint64_t sink; /* keeps the reads of views from being optimised out */
};

static uint64_t
read_all(const void *p, size_t len)
{
	const uint64_t *w = p;
	uint64_t x = 0;
	for (size_t i = 0; i < len / 8; i++)
		x ^= w[i];
	return x;
}

static int
client_fail(struct ctx *x, struct kvn_client *c, const char *what, size_t i, int rc)
{
	fprintf(stderr, "kvnode-bench: %s of key %s (%zu bytes): %s\n", what, x->keys[i], x->size,
		c ? kvn_client_error(c) : kvn_strerror(rc));
	return rc;
}

/* A request of slot s has completed: check it, read a view's bytes and release it. */
static int
finish(struct ctx *x, size_t s, size_t i)
{
	struct kvn_client_req *r = &x->req[s];
	int rc = kvn_client_wait(x->c, r, -1);
	if (rc == 0 && r->status == 0 && r->op == KVN_CLIENT_GET_INTO && x->lens[s] != x->size)
		rc = -EBADMSG;
	if (rc || r->status)
		return client_fail(x, x->c, r->op == KVN_CLIENT_PUT ? "put" : "get", i,
				   rc ? rc : r->status);
	if (r->op == KVN_CLIENT_GET) {
		x->sink += read_all(x->views[s].data, x->views[s].len);
		kvn_client_release(x->c, &x->views[s], 1);
	}
	return 0;
}

/* One pass of op over every key, depth requests in flight (replies come in order, so the
 * oldest slot is always the next to complete). */
static int
async_pass(struct ctx *x, enum kvn_client_op op)
{
	size_t d = x->depth;
	for (size_t i = 0; i < x->nkeys + d; i++) {
		size_t s = i % d;
		int rc = i >= d ? finish(x, s, i - d) : 0;
		if (rc)
			return rc; /* the bench stops: closing the client completes the rest */
		if (i >= x->nkeys)
			continue;
		struct kvn_client_req *r = &x->req[s];
		*r = (struct kvn_client_req){KVN_CLIENT_REQ_INIT, .op = op, .n = 1,
					     .keys = &x->keys[i]};
		x->dst[s] = x->ring + s * x->size;
		x->caps[s] = x->size;
		x->data[s] = x->src + i * x->size;
		r->views = &x->views[s];
		r->dst = &x->dst[s], r->caps = &x->caps[s], r->lens = &x->lens[s];
		r->data = &x->data[s], r->lens_in = &x->caps[s];
		if ((rc = kvn_client_submit(x->c, r)) < 0)
			return client_fail(x, x->c, "submit", i, rc);
	}
	return 0;
}

/* kvn_client_batch_get of 32 keys at a time, or the same 32 as single gets. */
static int
batch_pass(struct ctx *x, bool batch)
{
	for (size_t i = 0; i + BATCH <= x->nkeys; i += BATCH) {
		int rc = 0;
		if (batch)
			rc = kvn_client_batch_get(x->c, &x->keys[i], BATCH, x->views, NULL);
		for (size_t k = 0; !batch && !rc && k < BATCH; k++)
			rc = kvn_client_get(x->c, x->keys[i + k], &x->views[k]);
		if (rc)
			return client_fail(x, x->c, "get", i, rc);
		for (size_t k = 0; k < BATCH; k++)
			x->sink += ((const uint8_t *)x->views[k].data)[x->views[k].len - 1];
		kvn_client_release(x->c, x->views, BATCH);
	}
	return 0;
}

/* One key of the synchronous ops. */
static int
one(struct ctx *x, enum op op, size_t i)
{
	const uint8_t *s = x->src + i * x->size;
	void *got = NULL;
	size_t len = 0;
	struct kvn_view v;
	int rc = 0;
	switch (op) {
	case OP_READ:
		x->sink += read_all(s, x->size);
		break;
	case OP_MEMCPY_IN:
		memcpy(x->ring + (i % x->depth) * x->size, s, x->size);
		break;
	case OP_MEMCPY_OUT:
		memcpy(x->out + i * x->size, s, x->size);
		break;
	case OP_CLI_PUT:
		if ((rc = kvn_cli_put(x->cli, &x->kkeys[i], s, x->size)) < 0)
			fprintf(stderr, "kvnode-bench: cli put %s: %s\n", x->keys[i],
				kvn_cli_error(x->cli));
		break;
	case OP_CLI_GET:
		if ((rc = kvn_cli_get(x->cli, &x->kkeys[i], &got, &len)) < 0 || len != x->size)
			fprintf(stderr, "kvnode-bench: cli get %s: %s\n", x->keys[i],
				rc < 0 ? kvn_cli_error(x->cli) : "wrong length");
		rc = rc < 0 ? rc : len != x->size ? -EBADMSG : 0;
		free(got);
		break;
	case OP_PEER_GET:
		if ((rc = kvn_client_get(x->cb, x->keys[i], &v)) < 0)
			return client_fail(x, x->cb, "peer get", i, rc);
		x->sink += ((const uint8_t *)v.data)[v.len - 1];
		kvn_client_release(x->cb, &v, 1);
		break;
	case OP_PEER_READ:
		rc = bench_peer_fetch_one(x->peer, i, x->size, false);
		break;
	default:
		rc = -EINVAL;
	}
	return rc;
}

static int
pass(void *arg, int op_)
{
	struct ctx *x = arg;
	enum op op = (enum op)op_;
	switch (op) {
	case OP_GET_VIEW:
		return async_pass(x, KVN_CLIENT_GET);
	case OP_GET_INTO:
		return async_pass(x, KVN_CLIENT_GET_INTO);
	case OP_PUT:
		return async_pass(x, KVN_CLIENT_PUT);
	case OP_BATCH:
		return batch_pass(x, true);
	case OP_SINGLES:
		return batch_pass(x, false);
	default:
		break;
	}
	for (size_t i = 0; i < x->nkeys; i++) {
		int rc = one(x, op, i);
		if (rc < 0)
			return rc;
	}
	return 0;
}

struct row_def {
	enum op op, base;
	const char *name, *base_name;
	double goal;
};

/* Passes of op and its baseline alternate within a trial, which goes first alternates between
 * trials, and the trial of median ratio is reported (both sides from it). */
static int
row(struct ctx *x, const struct row_def *d)
{
	const struct bench_opts *o = x->o;
	struct bench_trial mine[99], base[99];
	size_t items = d->op == OP_BATCH ? x->nkeys / BATCH * BATCH : x->nkeys;
	if (d->op == OP_CLI_PUT || d->op == OP_CLI_GET) {
		/* A connection of its own: the node closes a control connection idle for its
		 * I/O timeout (30 s), which the rows before can outlast with long --duration. */
		char err[512];
		kvn_cli_close(x->cli);
		if (kvn_cli_connect(x->cli_sock, 120000, &x->cli, err, sizeof(err)) < 0) {
			fprintf(stderr, "kvnode-bench: %s\n", err);
			return -ECONNREFUSED;
		}
	}
	for (int i = 0; i < o->trials; i++) {
		int rc;
		if (!o->baseline)
			rc = bench_measure(pass, x, d->op, items, x->size, o->duration_s, &mine[i]);
		else if (i % 2)
			rc = bench_measure_pair(pass, x, d->base, d->op, items, x->size,
						o->duration_s, &base[i], &mine[i]);
		else
			rc = bench_measure_pair(pass, x, d->op, d->base, items, x->size,
						o->duration_s, &mine[i], &base[i]);
		if (rc < 0)
			return rc;
	}
	int mid = o->baseline ? bench_median_ratio(mine, base, o->trials) : 0;
	const struct bench_trial *m = o->baseline ? &mine[mid] : bench_median(mine, o->trials);
	struct bench_row r = {.mode = "client",
			      .op = d->name,
			      .bytes = x->size,
			      .iterations = m->iterations,
			      .gbps = m->gbps,
			      .peak_gbps = m->peak_gbps,
			      .baseline_gbps = o->baseline ? base[mid].gbps : 0,
			      .baseline_name = d->base_name,
			      .goal = d->goal};
	bench_table_row(o, &r);
	return 0;
}

static const struct row_def rows[] = {
    /* put first: it stores the working set the gets read */
    {OP_PUT, OP_MEMCPY_OUT, "put", "memcpy", 0.7},
    {OP_GET_INTO, OP_MEMCPY_IN, "get_into", "memcpy", 0.8},
    {OP_GET_VIEW, OP_READ, "get_view", "read", 0},
    {OP_BATCH, OP_SINGLES, "batch32", "32 single gets", 0},
    {OP_CLI_PUT, OP_MEMCPY_OUT, "cli_put", "memcpy", 0},
    {OP_CLI_GET, OP_MEMCPY_IN, "cli_get", "memcpy", 0},
};
static const struct row_def peer_row = {OP_PEER_GET, OP_PEER_READ, "peer_get", "READ", 0.8};

/* ------------------------------------------------------------------------------------------
 * The mode
 * ------------------------------------------------------------------------------------------ */

/* The baselines' working set, backed as the node's pool is (core/pool.c: a hugetlb memfd, else
 * a plain one, shared), so that a ratio compares copies and not page sizes: a 4 KiB shmem pool
 * read against THP-backed anonymous memory would charge the TLB to the client library. */
static size_t
like_pool_len(size_t len)
{
	return (len + (2u << 20) - 1) / (2u << 20) * (2u << 20); /* whole huge pages */
}

static void *
map_like_pool(size_t len)
{
	size_t hlen = like_pool_len(len);
	int fd = memfd_create("kvn-bench", MFD_CLOEXEC | MFD_HUGETLB);
	void *p = MAP_FAILED;
	if (fd >= 0 && ftruncate(fd, (off_t)hlen) == 0)
		p = mmap(NULL, hlen, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
	if (fd >= 0)
		close(fd);
	if (p != MAP_FAILED)
		return p;
	fd = memfd_create("kvn-bench", MFD_CLOEXEC);
	if (fd >= 0 && ftruncate(fd, (off_t)hlen) == 0)
		p = mmap(NULL, hlen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (fd >= 0)
		close(fd);
	return p == MAP_FAILED ? NULL : p;
}

/* Keys: at least one batch and one depth's worth, else the working set's. */
static size_t
keys_for(const struct bench_opts *o, size_t size)
{
	size_t n = o->working_set / size;
	size_t min = BATCH > (size_t)o->depth ? BATCH : (size_t)o->depth;
	return n < min ? min : n;
}

static double
peer_stat(const struct child *n, const char *field)
{
	return node_stat(n, "peer", field);
}

/* The peer row: b must see every key a holds (publishing is asynchronous), and its gets must
 * really be READs from a (b does not promote them into its own pool). */
static int
peer_rows(struct ctx *x, const struct child *b)
{
	struct kvn_buf *val = kvn_buf_new(x->size);
	if (!val)
		return -ENOMEM;
	memcpy(val->data, x->src, x->size);
	int rc = bench_peer_fetch_fill(x->peer, x->kkeys, x->nkeys, val);
	kvn_buf_unref(val);
	size_t found = 0;
	for (int t = 0; !rc && found != x->nkeys && t < READY_MS / 50; t++) {
		found = 0;
		for (size_t i = 0; i < x->nkeys && !rc; i += LOOKUP_MAX) {
			size_t m = x->nkeys - i < LOOKUP_MAX ? x->nkeys - i : LOOKUP_MAX, f = 0;
			rc = kvn_client_contains_prefix(x->cb, &x->keys[i], m, &f);
			found += f;
			if (f != m)
				break;
		}
		if (found != x->nkeys)
			usleep(50000);
	}
	if (!rc && found != x->nkeys) {
		fprintf(stderr, "kvnode-bench: node b sees %zu of node a's %zu keys after %d s\n",
			found, x->nkeys, READY_MS / 1000);
		rc = -ETIMEDOUT;
	}
	double before = peer_stat(b, "bytes_read");
	if (!rc)
		rc = row(x, &peer_row);
	double moved = peer_stat(b, "bytes_read") - before;
	if (!rc && moved < (double)x->nkeys * (double)x->size) {
		fprintf(stderr,
			"kvnode-bench: node b READ only %.0f bytes from node a for %zu "
			"peer gets of %zu bytes: its gets were not peer hits\n",
			moved, x->nkeys, x->size);
		rc = -EPROTO;
	}
	return rc;
}

static int
ctx_alloc(struct ctx *x, size_t size)
{
	x->size = size;
	x->nkeys = keys_for(x->o, size);
	x->text = calloc(x->nkeys, sizeof(*x->text));
	x->keys = calloc(x->nkeys, sizeof(*x->keys));
	x->kkeys = calloc(x->nkeys, sizeof(*x->kkeys));
	x->src = map_like_pool(x->nkeys * size);
	x->out = map_like_pool(x->nkeys * size);
	x->ring = bench_map_region(x->depth * size); /* get_into's destinations */
	if (!x->text || !x->keys || !x->kkeys || !x->src || !x->out || !x->ring) {
		fprintf(stderr, "kvnode-bench: out of memory for %zu chunks of %zu bytes\n",
			x->nkeys, size);
		return -ENOMEM;
	}
	for (size_t i = 0; i < x->nkeys; i++) {
		/* LMCache-shaped keys, as an inference engine sends them. */
		snprintf(x->text[i], KEY_TEXT, "bench@llama-3-8b@1@0@%zx%08zx@bfloat16", size, i);
		x->keys[i] = x->text[i];
		kvn_key_from_str(&x->kkeys[i], x->text[i]);
		for (size_t j = 0; j < size; j += 8) /* every page touched, distinct values */
			memcpy(x->src + i * size + j, &(uint64_t){i * 0x9e3779b97f4a7c15ull + j},
			       8);
	}
	memset(x->out, 0, x->nkeys * size);
	memset(x->ring, 0, x->depth * size);
	return 0;
}

static void
ctx_free(struct ctx *x)
{
	if (x->src)
		munmap(x->src, like_pool_len(x->nkeys * x->size));
	if (x->out)
		munmap(x->out, like_pool_len(x->nkeys * x->size));
	if (x->ring)
		munmap(x->ring, x->depth * x->size);
	free(x->text);
	free(x->keys);
	free(x->kkeys);
	x->src = x->out = x->ring = NULL;
	x->text = NULL, x->keys = NULL, x->kkeys = NULL;
}

static int
one_size(struct ctx *x, const struct nodes *n, size_t size)
{
	int rc = ctx_alloc(x, size);
	for (size_t i = 0; !rc && i < sizeof(rows) / sizeof(rows[0]); i++)
		rc = row(x, &rows[i]);
	if (!rc && x->cb)
		rc = peer_rows(x, &n->b);
	if (x->peer)
		bench_peer_fetch_clear(x->peer);
	/* The next size's working set needs the pool. */
	for (size_t i = 0; x->keys && i < x->nkeys; i += LOOKUP_MAX)
		kvn_client_batch_remove(
		    x->c, &x->keys[i], x->nkeys - i < LOOKUP_MAX ? x->nkeys - i : LOOKUP_MAX, NULL);
	ctx_free(x);
	return rc;
}

static int
open_client(const struct child *c, const char *name, struct kvn_client **out)
{
	char err[512];
	struct kvn_client_opts co = {KVN_CLIENT_OPTS_INIT, .socket_path = c->sock, .name = name,
				     .timeout_ms = 120000};
	int rc = kvn_client_open(&co, out, err, sizeof(err));
	if (rc < 0)
		fprintf(stderr, "kvnode-bench: %s\n", err);
	return rc;
}

/* The scheduler and node b (--peer), and node a; the clients. */
static int
setup(struct ctx *x, struct nodes *n, size_t largest, uint64_t wset)
{
	const struct bench_opts *o = x->o;
	/* Room for the working set twice (a put replaces a value only once it committed),
	 * the leases in flight, and slot headers. */
	uint64_t pool = 2 * wset + (uint64_t)(x->depth + 2) * largest * 2 + (64ull << 20);
	uint64_t max_chunk = largest > (64u << 20) ? largest : (64u << 20);
	int rc = 0;
	if (o->peer &&
	    ((rc = start_scheduler(n)) < 0 ||
	     (rc = start_node(n, &n->b, "b", (uint64_t)(BATCH + 4) * largest + (64ull << 20),
			      max_chunk, n->sched.addr, false)) < 0))
		return rc;
	if ((rc = start_node(n, &n->a, "a", pool, max_chunk, o->peer ? n->sched.addr : NULL,
			     true)) < 0 ||
	    (rc = open_client(&n->a, "kvnode-bench", &x->c)) < 0 ||
	    (o->peer && (rc = open_client(&n->b, "kvnode-bench peer", &x->cb)) < 0))
		return rc;
	x->cli_sock = n->a.sock; /* the CLI rows connect there (row) */
	if (o->peer && (rc = bench_peer_fetch_open(o, largest, wset, &x->peer)) < 0)
		return rc;
	return 0;
}

int
bench_client(const struct bench_opts *o)
{
	struct nodes n = {0};
	struct ctx x = {.o = o, .depth = (size_t)o->depth};
	size_t largest = 0;
	uint64_t wset = 0;
	for (size_t i = 0; i < o->nsizes; i++) {
		largest = o->sizes[i] > largest ? o->sizes[i] : largest;
		uint64_t w = (uint64_t)keys_for(o, o->sizes[i]) * o->sizes[i];
		wset = w > wset ? w : wset;
	}
	const char *tmp = getenv("TMPDIR");
	snprintf(n.dir, sizeof(n.dir), "%s/kvn-bench-client-XXXXXX",
		 tmp && *tmp && strlen(tmp) < 50 ? tmp : "/tmp");
	if (!mkdtemp(n.dir)) {
		fprintf(stderr, "kvnode-bench: cannot make a temp directory %s: %s\n", n.dir,
			strerror(errno));
		return -errno;
	}
	find_kvnode(&n);
	signal(SIGPIPE, SIG_IGN);
	int rc = setup(&x, &n, largest, wset);
	if (rc == 0) {
		char setup_line[PATH_MAX + 1024], peer[384] = "";
		if (x.peer)
			snprintf(peer, sizeof(peer),
				 "\n peer_get: node b gets what node a holds (tcp), one at a time; "
				 "baseline: the raw READ (no check) over %s",
				 bench_peer_fetch_desc(x.peer));
		snprintf(setup_line, sizeof(setup_line),
			 "node: %s serve (a child)   working set: >= %llu MiB per size   depth: "
			 "%zu   trials: %d x %.2f s\n baseline: %s%s",
			 n.exe, (unsigned long long)(o->working_set >> 20), x.depth, o->trials,
			 o->duration_s,
			 o->baseline ? "memcpy / read of the same sizes and working set, in this "
				       "process; batch32 vs 32 single gets"
				     : "none",
			 peer);
		bench_table_header(o, "kvnode-bench client: the client library (mapped pool)",
				   setup_line);
		for (size_t i = 0; i < o->nsizes && rc == 0; i++)
			rc = one_size(&x, &n, o->sizes[i]);
		bench_table_footer(o);
		if (rc == 0 && o->json)
			bench_json_flush();
	}
	bench_peer_fetch_close(x.peer);
	kvn_cli_close(x.cli);
	kvn_client_close(x.cb);
	kvn_client_close(x.c);
	nodes_stop(&n);
	return rc;
}
