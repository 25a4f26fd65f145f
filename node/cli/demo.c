/* `kvnode demo`: the README's main job. Starts a scheduler and three nodes as separate processes
 * (this binary, temp configs and sockets in a temp directory), puts KV-cache chunks on one node,
 * reads them on another by one-sided READ, prints what happened and shuts everything down. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <xxhash.h>

#include "kvnode/client.h"
#include "kvnode/transport.h"
#include "node/cli/client.h"
#include "node/engine/config.h"
#include "node/cli/demo.h"
#include "core/clock.h"
#include "core/log.h"

/* One LMCache chunk of Llama-3.1-8B: 256 tokens x 32 layers x (K,V) x 8 KV heads x 128 dims
 * x 2 bytes (bfloat16) = 32 MiB. */
#define DEMO_MODEL  "meta-llama/Llama-3.1-8B-Instruct"
#define DEMO_TOKENS 256
#define DEMO_CHUNK  ((size_t)DEMO_TOKENS * 32 * 2 * 8 * 128 * 2)
#define DEMO_CHUNKS 4
#define NODES	    3
#define READY_MS    30000

struct child {
	pid_t pid;
	char name[32];
	char out[PATH_MAX], log[PATH_MAX], sock[PATH_MAX];
	char addr[320]; /* scheduler: its address; node: its data address */
	int worker;
};

struct demo {
	char dir[96]; /* short: unix socket paths live under it */
	char exe[PATH_MAX];
	char cfg[PATH_MAX]; /* the nodes' config file (the user's, or one written here) */
	char sched_url[320];
	struct child sched; /* pid 0 when an external scheduler is used */
	struct child node[NODES];
};

static void
sleep_ms(int ms)
{
	nanosleep(&(struct timespec){.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L}, NULL);
}

/* Deterministic bytes per chunk, so the check regenerates them instead of keeping copies. */
static void
fill(void *p, size_t len, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1, *w = p;
	for (size_t i = 0; i < len / 8; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		w[i] = x;
	}
}

static int
write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return -errno;
	bool ok = fputs(text, f) >= 0;
	ok = !fclose(f) && ok;
	return ok ? 0 : -EIO;
}

static char *
read_file(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return NULL;
	char *buf = NULL;
	size_t cap = 0, n = 0, r;
	do {
		if (n + 4096 + 1 > cap) {
			char *nb = realloc(buf, cap = (cap ? cap * 2 : 8192));
			if (!nb) {
				free(buf);
				fclose(f);
				return NULL;
			}
			buf = nb;
		}
		r = fread(buf + n, 1, 4096, f);
		n += r;
	} while (r > 0);
	fclose(f);
	buf[n] = '\0';
	return buf;
}

/* Forks this binary with argv and the extra environment; stdout and stderr go to files. The
 * child dies with the demo (PR_SET_PDEATHSIG), so an interrupted demo leaves no process. */
static int
spawn(struct demo *d, struct child *c, const char *const *argv, const char *const *env)
{
	pid_t parent = getpid();
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
		/* Without an auth_token in the config, the demo's processes generate one in the
		 * demo's own directory (mode 0700) and share it; it goes with the directory. */
		setenv("KVNODE_STATE_DIR", d->dir, 1);
		for (size_t i = 0; env && env[i]; i++)
			putenv((char *)env[i]);
		execv(d->exe, (char *const *)argv);
		_exit(127);
	}
	c->pid = pid;
	return 0;
}

/* Waits until c printed the line starting with what (its address follows) and, for a node,
 * its socket answers. A child that exits first fails with its log's last lines. */
static int
wait_ready(struct child *c, const char *what)
{
	for (int t = 0; t < READY_MS / 20; t++) {
		char *text = read_file(c->out);
		const char *p = text ? strstr(text, what) : NULL;
		bool ok = p && strchr(p, '\n');
		if (ok)
			sscanf(p + strlen(what), "%319[^ ,\n]", c->addr);
		if (ok && c->sock[0]) {
			const char *w = strstr(p, "worker ");
			c->worker = w ? atoi(w + 7) : -1;
			struct kvn_cli_conn *cl;
			char err[256];
			ok = kvn_cli_connect(c->sock, 1000, &cl, err, sizeof(err)) == 0;
			if (ok)
				kvn_cli_close(cl);
		}
		free(text);
		if (ok)
			return 0;
		int st;
		if (waitpid(c->pid, &st, WNOHANG) == c->pid) {
			c->pid = 0;
			char *log = read_file(c->log);
			size_t n = log ? strlen(log) : 0;
			fprintf(stderr,
				"kvnode demo: %s exited before it was ready; its log:\n%s\n",
				c->name, log ? log + (n > 2000 ? n - 2000 : 0) : "(none)");
			free(log);
			return -ECHILD;
		}
		sleep_ms(20);
	}
	fprintf(stderr, "kvnode demo: %s not ready after %d s (see %s)\n", c->name, READY_MS / 1000,
		c->log);
	return -ETIMEDOUT;
}

/* SIGTERM, then SIGKILL after 10 s; reaps. */
static void
stop(struct child *c)
{
	if (c->pid <= 0)
		return;
	kill(c->pid, SIGTERM);
	for (int t = 0; t < 500; t++) {
		if (waitpid(c->pid, NULL, WNOHANG) == c->pid) {
			c->pid = 0;
			return;
		}
		sleep_ms(20);
	}
	fprintf(stderr, "kvnode demo: %s ignored SIGTERM for 10 s: killing it\n", c->name);
	kill(c->pid, SIGKILL);
	waitpid(c->pid, NULL, 0);
	c->pid = 0;
}

static int
rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb, (void)flag, (void)ftw;
	return remove(path);
}

/* The nodes' config: the user's file, else one for a small local cluster. */
static int
prepare(struct demo *d, const char *config, bool *own_sched)
{
	*own_sched = true;
	if (config) {
		if (!realpath(config, d->cfg)) {
			fprintf(stderr, "kvnode demo: config %s: %s\n", config, strerror(errno));
			return -errno;
		}
		struct kvn_config *cfg;
		char err[1024];
		if (kvn_config_load(d->cfg, &cfg, err, sizeof(err)) < 0) {
			fprintf(stderr, "kvnode demo: %s\n", err);
			return -EINVAL;
		}
		if (cfg->scheduler_url) {
			snprintf(d->sched_url, sizeof(d->sched_url), "%s", cfg->scheduler_url);
			*own_sched = false;
		}
		kvn_config_free(cfg);
		return 0;
	}
	snprintf(d->cfg, sizeof(d->cfg), "%s/node.yaml", d->dir);
	return write_file(d->cfg, "# written by kvnode demo\n"
				  "max_local_cpu_size: 0.25\n"
				  "listen: 127.0.0.1:0\n"
				  "transport: auto\n"
				  "heartbeat_ms: 200\n");
}

/* Four processes on one host cannot share a FILE's metrics_listen port: the demo runs none. */
static const char *const no_metrics[] = {"KVNODE_METRICS_LISTEN=", NULL};

static int
start_cluster(struct demo *d, const char *config)
{
	bool own_sched;
	int rc = prepare(d, config, &own_sched);
	if (rc < 0)
		return rc;
	if (own_sched) {
		struct child *s = &d->sched;
		snprintf(s->name, sizeof(s->name), "scheduler");
		snprintf(s->out, sizeof(s->out), "%s/scheduler.out", d->dir);
		snprintf(s->log, sizeof(s->log), "%s/scheduler.log", d->dir);
		const char *argv[] = {d->exe,	  "scheduler",	 "-c", d->cfg,
				      "--listen", "127.0.0.1:0", NULL};
		if ((rc = spawn(d, s, argv, no_metrics)) < 0 ||
		    (rc = wait_ready(s, "scheduler on ")) < 0)
			return rc;
		snprintf(d->sched_url, sizeof(d->sched_url), "%s", s->addr);
	}
	/* node-1 runs the demo plugin: its output shows up prefixed in node-1's log */
	char plugdir[128], plug[160];
	snprintf(plugdir, sizeof(plugdir), "%s/plugins", d->dir);
	snprintf(plug, sizeof(plug), "%s/all_hello.sh", plugdir);
	if (mkdir(plugdir, 0700) < 0 ||
	    write_file(plug, "echo \"hello from $KVNODE_PLUGIN_ROLE $KVNODE_PLUGIN_WORKER_ID of "
			     "$KVNODE_PLUGIN_WORKER_COUNT, in $(pwd)\"\n") < 0)
		fprintf(stderr, "kvnode demo: cannot write the demo plugin %s: without it\n", plug);
	for (int i = 0; i < NODES; i++) {
		struct child *n = &d->node[i];
		/* The base path goes through a local buffer: n lives inside d, and gcc's
		 * -Wrestrict (at -O0 under the sanitizers) cannot tell d->dir from n->out. */
		char base[sizeof(d->dir) + 16];
		snprintf(n->name, sizeof(n->name), "node-%d", i + 1);
		snprintf(base, sizeof(base), "%s/node-%d", d->dir, i + 1);
		snprintf(n->out, sizeof(n->out), "%s.out", base);
		snprintf(n->log, sizeof(n->log), "%s.log", base);
		snprintf(n->sock, sizeof(n->sock), "%s.sock", base);
		char e_name[64], e_sock[PATH_MAX + 32], e_sched[400], e_plug[PATH_MAX + 64];
		snprintf(e_name, sizeof(e_name), "KVNODE_NODE_NAME=demo-%d-%s", (int)getpid(),
			 n->name);
		snprintf(e_sock, sizeof(e_sock), "KVNODE_SOCKET_PATH=%s", n->sock);
		snprintf(e_sched, sizeof(e_sched), "KVNODE_SCHEDULER_URL=%s", d->sched_url);
		snprintf(e_plug, sizeof(e_plug), "KVNODE_PLUGIN_LOCATIONS=%s",
			 i == 0 ? plugdir : "");
		const char *env[] = {e_name, e_sock, e_sched, e_plug, no_metrics[0], NULL};
		const char *argv[] = {d->exe, "serve", "-c", d->cfg, "--log-level", "info", NULL};
		/* one after the other, so node-1 is worker 0 of a fresh scheduler */
		if ((rc = spawn(d, n, argv, env)) < 0 || (rc = wait_ready(n, " data on ")) < 0)
			return rc;
	}
	return 0;
}

/* Node-1's plugin lines, as the node logged them (waits up to 5 s for the plugin's end). */
static void
show_plugin(const struct demo *d)
{
	char *log = NULL;
	for (int t = 0; t < 250; t++) {
		free(log);
		log = read_file(d->node[0].log);
		if (log && strstr(log, "[plugin all_hello.sh] exited"))
			break;
		sleep_ms(20);
	}
	for (char *line = log ? strtok(log, "\n") : NULL; line; line = strtok(NULL, "\n"))
		if (strstr(line, "[plugin "))
			fprintf(stderr, "%s\n", line);
	free(log);
}

static int
connect_node(const struct child *n, struct kvn_client **c)
{
	char err[512];
	struct kvn_client_opts o = {KVN_CLIENT_OPTS_INIT, .socket_path = n->sock,
				    .name = "kvnode demo", .timeout_ms = 60000};
	int rc = kvn_client_open(&o, c, err, sizeof(err));
	if (rc < 0)
		fprintf(stderr, "kvnode demo: %s: %s\n", n->name, err);
	return rc;
}

/* node n's stats field section.field (0 when it cannot be had); show: print its stats table
 * too. */
static double
node_stat(const struct child *n, const char *section, const char *field, bool show)
{
	struct kvn_cli_conn *c;
	char *json = NULL, err[256];
	double v = 0;
	if (kvn_cli_connect(n->sock, 10000, &c, err, sizeof(err)) < 0)
		return 0;
	if (kvn_cli_stat(c, &json) == 0) {
		cJSON *root = cJSON_Parse(json);
		cJSON *p = cJSON_GetObjectItem(cJSON_GetObjectItem(root, section), field);
		v = cJSON_IsNumber(p) ? p->valuedouble : 0;
		cJSON_Delete(root);
		if (show) {
			printf("\n%s after the gets:\n", n->name);
			kvn_cli_print_stats(json, stdout);
		}
	}
	free(json);
	kvn_cli_close(c);
	return v;
}

static double
peer_bytes(const struct child *n, bool show)
{
	return node_stat(n, "peer", "bytes_read", show);
}

/* Until every node has made its pool resident (pool_populate, a thread of its own): traffic
 * meanwhile would share the machine with it. At most 60 s; then the demo goes on. */
static void
wait_populated(const struct demo *d)
{
	for (int i = 0; i < NODES; i++)
		for (int t = 0; t < 1200; t++) {
			double size = node_stat(&d->node[i], "pool", "size", false);
			if (!size || node_stat(&d->node[i], "pool", "populated_bytes", false) >= size)
				break;
			sleep_ms(50);
		}
}

/* ------------------------------------------------------------------------------------------
 * The transport alone: READs of the same chunk size between two instances in this process
 * (the nodes' transport), what a peer get through the client is measured against.
 * ------------------------------------------------------------------------------------------ */

struct raw_read {
	const struct kvn_transport_ops *ops;
	struct kvn_transport *owner, *reader;
	struct kvn_tp_mr *src_mr, *dst_mr;
	struct kvn_mem_desc src_desc;
	struct kvn_tp_ep *ep;
	char *src, *dst;
};

static void
raw_close(struct raw_read *r)
{
	if (r->ep)
		r->ops->ep_close(r->ep);
	if (r->dst_mr)
		r->ops->dereg(r->dst_mr);
	if (r->src_mr)
		r->ops->dereg(r->src_mr);
	if (r->reader)
		r->ops->close(r->reader);
	if (r->owner)
		r->ops->close(r->owner);
	free(r->src);
	free(r->dst);
}

/* One READ of the chunk, its time added to *spent, its bytes checked; false (err) if not. */
static bool
raw_read_one(struct raw_read *r, double *spent, char *err, size_t errlen)
{
	struct kvn_read rd = {.local = r->dst,
			      .local_mr = r->dst_mr,
			      .remote_addr = r->src_desc.addr,
			      .rkey = r->src_desc.rkey,
			      .len = DEMO_CHUNK};
	memset(r->dst, 0, DEMO_CHUNK);
	double t0 = kvn_now_s();
	if (kvn_transport_read_sync(r->ops, r->ep, &rd, 1, err, errlen) < 0)
		return false;
	*spent += kvn_now_s() - t0;
	if (memcmp(r->src, r->dst, DEMO_CHUNK)) {
		snprintf(err, errlen, "the READ brought back other bytes");
		return false;
	}
	return true;
}

static void
raw_failed(const char *transport, const char *err)
{
	fprintf(stderr, "kvnode demo: measuring the %s transport alone: %s\n",
		transport ? transport : "auto", *err ? err : "out of memory");
}

/* Sets up the two instances, registers a chunk on each side and makes one warm-up READ; false
 * (said) when any of it fails, and r is then closed. */
static bool
raw_open(struct raw_read *r, const char *transport)
{
	struct kvn_transport_cfg cfg = {KVN_TRANSPORT_CFG_INIT, .gid_index = -1};
	char err[256] = "", bound[128];
	double t = 0;
	r->ops = kvn_transport_by_name(transport ? transport : "auto", &cfg, err, sizeof(err));
	r->src = malloc(DEMO_CHUNK);
	r->dst = calloc(1, DEMO_CHUNK);
	if (!r->ops || !r->src || !r->dst || r->ops->open(&cfg, &r->owner, err, sizeof(err)) < 0 ||
	    r->ops->open(&cfg, &r->reader, err, sizeof(err)) < 0)
		goto fail;
	fill(r->src, DEMO_CHUNK, 99);
	if (r->ops->reg_mem(r->owner, r->src, DEMO_CHUNK, KVN_MEM_HOST, &r->src_mr, &r->src_desc,
			    err, sizeof(err)) < 0 ||
	    r->ops->reg_mem(r->reader, r->dst, DEMO_CHUNK, KVN_MEM_HOST, &r->dst_mr,
			    &(struct kvn_mem_desc){0}, err, sizeof(err)) < 0 ||
	    r->ops->listen(r->owner, "127.0.0.1:0", bound, sizeof(bound), err, sizeof(err)) < 0 ||
	    r->ops->connect(r->reader, bound, 0, &r->ep, err, sizeof(err)) < 0)
		goto fail;
	if (raw_read_one(r, &t, err, sizeof(err))) /* a warm-up: connection and pages */
		return true;
fail:
	raw_failed(transport, err);
	raw_close(r);
	*r = (struct raw_read){0};
	return false;
}

/* The nodes' transport, as their config names it. */
static char *
nodes_transport(const struct demo *d)
{
	struct kvn_config *cfg;
	char err[1024], *t = NULL;
	if (kvn_config_load(d->cfg, &cfg, err, sizeof(err)) == 0) {
		t = cfg->transport ? strdup(cfg->transport) : NULL;
		kvn_config_free(cfg);
	}
	return t;
}

/* The chunks' LMCache keys: each chunk's hash chained with its prefix's. */
static void
demo_keys(char (*text)[KVN_KEY_MAX + 1])
{
	uint64_t prefix = 0;
	for (int i = 0; i < DEMO_CHUNKS; i++) {
		uint32_t tokens[DEMO_TOKENS];
		for (int t = 0; t < DEMO_TOKENS; t++)
			tokens[t] = (uint32_t)(i * DEMO_TOKENS + t) * 2654435761u % 128256u;
		prefix = XXH3_64bits_withSeed(tokens, sizeof(tokens), prefix);
		snprintf(text[i], KVN_KEY_MAX + 1, "vllm@%s@1@0@%016llx@bfloat16", DEMO_MODEL,
			 (unsigned long long)prefix);
	}
}

/* One get through the client, timed (the view's arrival), verified, released; 1 when the
 * bytes are wrong or missing. */
static int
get_one(struct kvn_client *c, const char *key, int i, bool retry, char *data, double *spent)
{
	struct kvn_view v = {0};
	double t0 = kvn_now_s();
	int e = kvn_client_get(c, key, &v);
	/* publishing is asynchronous: the directory may lag the put a moment */
	for (int t = 0; e == -ENOENT && retry && t < 100; t++) {
		sleep_ms(20);
		t0 = kvn_now_s();
		e = kvn_client_get(c, key, &v);
	}
	double dt = kvn_now_s() - t0;
	*spent += dt;
	if (e < 0) {
		printf("  get  %s  MISSING (%s)\n", key, kvn_client_error(c));
		return 1;
	}
	fill(data, DEMO_CHUNK, (uint64_t)i);
	bool same = v.len == DEMO_CHUNK && !memcmp(v.data, data, DEMO_CHUNK);
	if (retry)
		printf("  get  %s  %8.2f GB/s  %s\n", key, (double)DEMO_CHUNK / dt / 1e9,
		       same ? "verified" : "CORRUPT");
	else /* a view of a local chunk moves no bytes: a bandwidth would mean nothing */
		printf("  get  %s  %6.0f us (a view)  %s\n", key, dt * 1e6,
		       same ? "verified" : "CORRUPT");
	kvn_client_release(c, &v, 1);
	return !same;
}

static void
print_bandwidth(double t_put, double t_peer, double t_local, double raw, const char *transport)
{
	double total = (double)DEMO_CHUNK * DEMO_CHUNKS, peer = total / t_peer / 1e9;
	char hb[32];
	printf("\nclient-visible bandwidth (kvnode/client.h, %s chunks, one at a time):\n",
	       kvn_cli_human_bytes((double)DEMO_CHUNK, hb, sizeof(hb)));
	printf("  put on node-1 (one copy into its pool)       %8.2f GB/s\n", total / t_put / 1e9);
	printf("  get on node-3, local: a view of its pool, nothing copied, %.0f us per get\n",
	       t_local / DEMO_CHUNKS * 1e6);
	printf("  get on node-3, peer hit (READ from node-1)   %8.2f GB/s\n", peer);
	if (raw > 0)
		printf("  %-5s transport alone, READ of the same size %8.2f GB/s\n"
		       "  peer get / transport READ: %.2f (goal >= 0.80: %s)\n",
		       transport ? transport : "auto", raw, peer / raw,
		       peer / raw >= 0.8 ? "met" : "missed");
}

/* Puts the chunks on node-1, reads them on node-3 (peer READ), then again (now local). */
static int
run_traffic(struct demo *d)
{
	struct kvn_client *src = NULL, *dst = NULL;
	char *data = malloc(DEMO_CHUNK), hb[32], keys[DEMO_CHUNKS][KVN_KEY_MAX + 1];
	int bad = 0, rc = 0;
	if (!data || connect_node(&d->node[0], &src) < 0 || connect_node(&d->node[2], &dst) < 0) {
		rc = -ENOMEM;
		goto out;
	}
	printf("\nput on node-1: %d chunks of %d tokens of %s (%s each)\n", DEMO_CHUNKS,
	       DEMO_TOKENS, DEMO_MODEL, kvn_cli_human_bytes((double)DEMO_CHUNK, hb, sizeof(hb)));
	demo_keys(keys);
	double t_put = 0, t_peer = 0, t_local = 0;
	for (int i = 0; i < DEMO_CHUNKS; i++) {
		fill(data, DEMO_CHUNK, (uint64_t)i);
		double t0 = kvn_now_s();
		if (kvn_client_put(src, keys[i], data, DEMO_CHUNK) < 0) {
			fprintf(stderr, "kvnode demo: on node-1: %s\n", kvn_client_error(src));
			rc = -EIO;
			goto out;
		}
		double dt = kvn_now_s() - t0;
		t_put += dt;
		printf("  put  %s  %8.2f GB/s\n", keys[i], (double)DEMO_CHUNK / dt / 1e9);
	}
	/* Each peer get is followed by a READ of the same size over the transport alone, so that
	 * the two are measured side by side, under the same load of this machine. */
	char *transport = nodes_transport(d), err[256] = "";
	struct raw_read raw = {0};
	bool raw_ok = raw_open(&raw, transport);
	double t_raw = 0, before = peer_bytes(&d->node[2], false);
	for (int pass = 0; pass < 2; pass++) {
		printf(
		    pass ? "\nget on node-3 again (promoted into its cpu tier):\n"
			 : "\nget on node-3 (not there: found through the scheduler, fetched from "
			   "node-1's pool by one-sided READ):\n");
		for (int i = 0; i < DEMO_CHUNKS; i++) {
			bad += get_one(dst, keys[i], i, !pass, data, pass ? &t_local : &t_peer);
			if (!pass && raw_ok &&
			    !(raw_ok = raw_read_one(&raw, &t_raw, err, sizeof(err))))
				raw_failed(transport, err);
		}
	}
	raw_close(&raw);
	double moved = peer_bytes(&d->node[2], true) - before,
	       total = (double)DEMO_CHUNK * DEMO_CHUNKS;
	printf("\nmoved %s from node-1 to node-3 by one-sided READ (slot headers included)\n",
	       kvn_cli_human_bytes(moved, hb, sizeof(hb)));
	print_bandwidth(t_put, t_peer, t_local, raw_ok ? total / t_raw / 1e9 : -1, transport);
	free(transport);
	printf("%d chunks, %s, %s\n", DEMO_CHUNKS, kvn_cli_human_bytes(total, hb, sizeof(hb)),
	       bad ? "VERIFICATION FAILED" : "all verified");
	rc = bad ? -EIO : 0;
out:
	kvn_client_close(src);
	kvn_client_close(dst);
	free(data);
	return rc;
}

int
kvn_demo_run(const char *config)
{
	struct demo *d = calloc(1, sizeof(*d));
	if (!d)
		return 3;
	ssize_t n = readlink("/proc/self/exe", d->exe, sizeof(d->exe) - 1);
	const char *tmp = getenv("TMPDIR");
	if (!tmp || !*tmp || strlen(tmp) > 60)
		tmp = "/tmp"; /* unix socket paths must stay under 108 bytes */
	snprintf(d->dir, sizeof(d->dir), "%s/kvnode-demo-XXXXXX", tmp);
	if (n <= 0 || !mkdtemp(d->dir)) {
		fprintf(stderr,
			"kvnode demo: cannot find this program or make a temp directory in "
			"%s: %s\n",
			tmp, strerror(errno));
		free(d);
		return 3;
	}
	signal(SIGPIPE, SIG_IGN);
	int rc = start_cluster(d, config);
	if (rc == 0) {
		printf("kvnode demo: %s and %d nodes as separate processes (temp dir %s)\n",
		       d->sched.pid ? "a scheduler" : "an existing scheduler", NODES, d->dir);
		printf("  scheduler  %s\n", d->sched_url);
		for (int i = 0; i < NODES; i++)
			printf("  %s     worker %d, data %s, pid %d\n", d->node[i].name,
			       d->node[i].worker, d->node[i].addr, (int)d->node[i].pid);
		fflush(stdout);
		show_plugin(d);
		wait_populated(d);
		rc = run_traffic(d);
	}
	printf("\nshutting down: nodes, then the scheduler; removing %s\n", d->dir);
	fflush(stdout);
	for (int i = NODES - 1; i >= 0; i--)
		stop(&d->node[i]);
	stop(&d->sched);
	nftw(d->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(d);
	return rc == 0 ? 0 : rc == -EIO ? 1 : 3;
}
