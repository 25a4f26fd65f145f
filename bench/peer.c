/* kvnode-bench peer: one-sided reads from another process's registered memory over a transport
 * (the bench starts the responder itself, or --connect to one), with iperf3 as the tcp baseline.
 * --serve is the responder alone: the tests kill it mid-transfer. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench.h"
#include "bench/peer.h"
#include "bench/peer_verbs.h"
#include "kvnode/transport.h"
#include "core/log.h"
#include "core/netaddr.h"

extern char **environ;

static int
open_transport(const struct bench_opts *o, const struct kvn_transport_ops **ops,
	       struct kvn_transport **tp)
{
	char err[256] = "";
	struct kvn_transport_cfg cfg = {KVN_TRANSPORT_CFG_INIT, .gid_index = -1,
					.conns_per_peer = o->conns, .rdma_device = o->rdma_device};
	*ops = kvn_transport_by_name(o->transport, &cfg, err, sizeof(err));
	int rc = *ops ? (*ops)->open(&cfg, tp, err, sizeof(err)) : -EINVAL;
	if (rc < 0)
		fprintf(stderr, "kvnode-bench: %s\n", err);
	return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Responder
 * ------------------------------------------------------------------------------------------- */

size_t
bench_peer_region_len(const struct bench_opts *o)
{
	size_t max = 0;
	for (size_t i = 0; i < o->nsizes; i++)
		max = o->sizes[i] > max ? o->sizes[i] : max;
	return max * 2 > (64u << 20) ? max * 2 : (64u << 20);
}

/* Registers a region filled with bench_pattern, listens, writes the line peers parse to out
 * and serves until SIGTERM/SIGINT. */
static int
serve(const struct bench_opts *o, FILE *out)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL); /* before the progress thread inherits it */
	const struct kvn_transport_ops *ops;
	struct kvn_transport *tp;
	if (open_transport(o, &ops, &tp) < 0)
		return -EINVAL;
	size_t len = bench_peer_region_len(o);
	char *region = bench_map_region(len);
	if (!region) {
		fprintf(stderr, "kvnode-bench: cannot map a %zu MiB region to serve\n", len >> 20);
		ops->close(tp);
		return -ENOMEM;
	}
	for (size_t i = 0; i < len; i++)
		region[i] = (char)bench_pattern(i);
	char err[256] = "", bound[128];
	struct kvn_tp_mr *mr;
	struct kvn_mem_desc d;
	int rc = ops->reg_mem(tp, region, len, KVN_MEM_HOST, &mr, &d, err, sizeof(err));
	if (!rc)
		rc = ops->listen(tp, o->listen ? o->listen : "127.0.0.1:0", bound, sizeof(bound),
				 err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "kvnode-bench: %s\n", err);
	} else {
		fprintf(out, "serving %s %s addr=0x%" PRIx64 " len=%" PRIu64 " rkey=0x%08x\n",
			ops->name, bound, d.addr, d.len, d.rkey);
		fflush(out);
		int sig;
		sigwait(&set, &sig);
		ops->dereg(mr);
	}
	ops->close(tp);
	munmap(region, len);
	return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Reader
 * ------------------------------------------------------------------------------------------- */

struct peer_info {
	char addr[128];
	struct kvn_mem_desc d;
};

static int
parse_serving(const char *line, struct peer_info *pi)
{
	char name[32];
	return sscanf(line, "serving %31s %127s addr=0x%" SCNx64 " len=%" SCNu64 " rkey=0x%" SCNx32,
		      name, pi->addr, &pi->d.addr, &pi->d.len, &pi->d.rkey) == 5
		       ? 0
		       : -EPROTO;
}

int
bench_peer_fork(const struct bench_opts *o, int (*serve_fn)(const struct bench_opts *, FILE *),
		pid_t *pid, char *line, size_t cap)
{
	int fds[2];
	if (pipe(fds) < 0)
		return -errno;
	fflush(NULL);
	*pid = fork();
	if (*pid < 0)
		return -errno;
	if (*pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		close(fds[0]);
		FILE *out = fdopen(fds[1], "w");
		_exit(out && serve_fn(o, out) == 0 ? 0 : 1);
	}
	close(fds[1]);
	FILE *in = fdopen(fds[0], "r");
	int rc = in && fgets(line, (int)cap, in) ? 0 : -EPIPE;
	if (in)
		fclose(in);
	if (rc < 0)
		fprintf(stderr, "kvnode-bench: the responder did not start (see its error above)\n");
	return rc;
}

static void
set_read(struct bench_peer_run *r, struct kvn_read *rd)
{
	uint64_t k = atomic_fetch_add(&r->next, 1);
	rd->local = r->dst + (k % r->dst_slots) * r->size;
	rd->remote_addr = r->remote.addr + (k % r->remote_slots) * r->size;
}

static void
read_done(struct kvn_read *rd, int status, const char *msg)
{
	struct bench_peer_run *r = rd->ctx;
	bool again = false;
	if (status == 0) {
		atomic_fetch_add(&r->completed, 1);
		again = kvn_now_s() < r->deadline || atomic_load(&r->next) < r->min_reads;
	}
	if (again) {
		set_read(r, rd);
		status = r->post(r->ctx, rd, 1);
		if (status == 0)
			return;
		msg = "posting the next read failed";
	}
	pthread_mutex_lock(&r->lock);
	if (status && !r->status) {
		r->status = status;
		snprintf(r->err, sizeof(r->err), "%s", msg ? msg : kvn_strerror(status));
	}
	if (--r->outstanding == 0)
		pthread_cond_signal(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

/* Keeps inflight reads of size outstanding for duration seconds, and for at least three rounds
 * of the window (a 32 MiB row under emulation completes a handful in a second: its figure would
 * be the window filling and draining); returns GB/s. */
static int
measure(struct bench_peer_run *r, int inflight, double duration, uint64_t *iters, double *gbps)
{
	struct kvn_read *rds = calloc((size_t)inflight, sizeof(*rds));
	if (!rds)
		return -ENOMEM;
	atomic_store(&r->completed, 0);
	atomic_store(&r->next, 0);
	r->status = 0;
	r->outstanding = inflight;
	r->min_reads = duration > 0 ? 3 * (uint64_t)inflight : 0;
	double t0 = kvn_now_s();
	r->deadline = t0 + duration;
	for (int i = 0; i < inflight; i++) {
		rds[i] = (struct kvn_read){ .local_mr = r->mr, .rkey = r->remote.rkey,
					    .len = r->size, .done = read_done, .ctx = r };
		set_read(r, &rds[i]);
	}
	int rc = r->post(r->ctx, rds, (size_t)inflight);
	pthread_mutex_lock(&r->lock);
	if (rc < 0) {
		r->outstanding = 0;
		r->status = rc;
		snprintf(r->err, sizeof(r->err), "posting reads failed: %s", kvn_strerror(rc));
	}
	while (r->outstanding)
		pthread_cond_wait(&r->cond, &r->lock);
	pthread_mutex_unlock(&r->lock);
	double t = kvn_now_s() - t0;
	free(rds);
	*iters = atomic_load(&r->completed);
	*gbps = (double)*iters * (double)r->size / t / 1e9;
	if (r->status)
		fprintf(stderr, "kvnode-bench: read of %zu bytes failed: %s\n", r->size, r->err);
	return r->status;
}

/* One read of size at offset 0 (through post, so sliced with rails) must bring the
 * responder's pattern. */
static int
verify(struct bench_peer_run *r)
{
	memset(r->dst, 0, r->size);
	uint64_t it;
	double g;
	int rc = measure(r, 1, 0, &it, &g);
	for (size_t i = 0; !rc && i < r->size; i++) {
		if ((uint8_t)r->dst[i] != bench_pattern(i)) {
			fprintf(stderr,
				"kvnode-bench: verification read: byte %zu of a %zu-byte "
				"read is wrong\n",
				i, r->size);
			rc = -EIO;
		}
	}
	return rc;
}

/* ---------------------------------------------------------------------------------------------
 * iperf3 baseline
 * ------------------------------------------------------------------------------------------- */

/* Runs argv with stdout into a pipe (out != NULL) or /dev/null; returns its exit status. */
static int
run_capture(char *const argv[], char **out, pid_t *bg)
{
	int fds[2] = { -1, -1 };
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	if (out) {
		if (pipe(fds) < 0)
			return -errno;
		posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO);
		posix_spawn_file_actions_addclose(&fa, fds[0]);
	} else {
		posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
	}
	posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
	pid_t pid;
	int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (fds[1] >= 0)
		close(fds[1]);
	if (rc) {
		if (fds[0] >= 0)
			close(fds[0]);
		return -rc;
	}
	if (bg) {
		*bg = pid;
		return 0;
	}
	size_t len = 0, cap = 0;
	char *buf = NULL;
	for (;;) {
		if (len + 4096 + 1 > cap) {
			cap = cap ? cap * 2 : 65536;
			char *nb = realloc(buf, cap);
			if (!nb)
				break;
			buf = nb;
		}
		ssize_t r = read(fds[0], buf + len, cap - len - 1);
		if (r <= 0)
			break;
		len += (size_t)r;
	}
	if (buf)
		buf[len] = 0;
	close(fds[0]);
	*out = buf;
	int st;
	waitpid(pid, &st, 0);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* Single-stream loopback bandwidth of iperf3 in GB/s, or a negative errno. */
static double
iperf3_gbps(void)
{
	int port = kvn_tcp_free_port();
	char p[16];
	snprintf(p, sizeof(p), "%d", port);
	char *srv[] = { "iperf3", "-s", "-1", "-p", p, NULL };
	pid_t spid;
	if (port < 0 || run_capture(srv, NULL, &spid) < 0) {
		fprintf(stderr, "kvnode-bench: cannot start iperf3 (install it: scripts/install-deps)\n");
		return -ENOENT;
	}
	double gbps = -EIO;
	char *cli[] = { "iperf3", "-c", "127.0.0.1", "-p", p, "-J", "-t", "2", NULL };
	/* The server needs a moment to listen: retry the client briefly. */
	for (int attempt = 0; attempt < 50 && gbps < 0; attempt++) {
		char *out = NULL;
		int st = run_capture(cli, &out, NULL);
		cJSON *j = out ? cJSON_Parse(out) : NULL;
		cJSON *bps = cJSON_GetObjectItem(
			cJSON_GetObjectItem(cJSON_GetObjectItem(j, "end"), "sum_received"),
			"bits_per_second");
		if (st == 0 && cJSON_IsNumber(bps))
			gbps = bps->valuedouble / 8 / 1e9;
		cJSON_Delete(j);
		free(out);
		if (gbps < 0)
			usleep(100000);
	}
	kill(spid, SIGTERM);
	waitpid(spid, NULL, 0);
	if (gbps < 0)
		fprintf(stderr, "kvnode-bench: iperf3 on 127.0.0.1:%d gave no result\n", port);
	return gbps;
}

/* ---------------------------------------------------------------------------------------------
 * The mode
 * ------------------------------------------------------------------------------------------- */

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int
bench_peer_sizes(const struct bench_opts *o, struct bench_peer_run *r,
		 const struct bench_peer_table *tb)
{
	bench_table_header(o, tb->title, tb->setup);
	double gb[16][99], base[16][99];
	uint64_t it[16][99];
	int rc = 0;
	bool with = o->baseline && tb->baseline;
	for (int t = 0; t < o->trials && !rc; t++) {
		for (size_t s = 0; s < o->nsizes && !rc; s++) {
			r->size = o->sizes[s];
			r->remote_slots = r->remote.len / r->size;
			r->dst_slots = (256u << 20) / r->size ? (256u << 20) / r->size : 1;
			if (r->dst_slots > (size_t)o->inflight)
				r->dst_slots = (size_t)o->inflight;
			if (t == 0)
				rc = verify(r);
			if (!rc)
				rc = measure(r, o->inflight, o->duration_s, &it[s][t], &gb[s][t]);
			base[s][t] = 0;
			if (!rc && with && !tb->once &&
			    (base[s][t] = tb->baseline(tb->ctx, r->size, it[s][t], o->inflight)) <
				0)
				rc = -EIO;
		}
		if (!rc && with && tb->once && (base[0][t] = tb->baseline(tb->ctx, 0, 0, 0)) < 0)
			rc = -EIO;
		for (size_t s = 1; !rc && with && tb->once && s < o->nsizes; s++)
			base[s][t] = base[0][t];
	}
	if (rc)
		return rc;
	for (size_t s = 0; s < o->nsizes; s++) {
		double med_base = 0;
		if (with) {
			qsort(base[s], (size_t)o->trials, sizeof(double), cmp_double);
			med_base = base[s][o->trials / 2];
		}
		/* Report the median trial; its iteration count goes with it. */
		int mid = 0;
		double sorted[99];
		memcpy(sorted, gb[s], sizeof(double) * (size_t)o->trials);
		qsort(sorted, (size_t)o->trials, sizeof(double), cmp_double);
		for (int t = 0; t < o->trials; t++)
			if (gb[s][t] == sorted[o->trials / 2])
				mid = t;
		struct bench_row row = {
		    .mode = "peer",
		    .op = tb->op,
		    .bytes = o->sizes[s],
		    .iterations = it[s][mid],
		    .gbps = gb[s][mid],
		    .peak_gbps = sorted[o->trials - 1],
		    .baseline_gbps = med_base,
		    .baseline_name = tb->baseline_name,
		    .goal = with ? tb->goal : 0,
		};
		bench_table_row(o, &row);
	}
	bench_table_footer(o);
	return 0;
}

int
bench_peer_end(const struct bench_opts *o, pid_t child, int rc)
{
	if (child > 0) {
		kill(child, SIGTERM);
		waitpid(child, NULL, 0);
	}
	if (!rc && o->json)
		bench_json_flush();
	return rc;
}

/* ib_read_bw at the same size on the same device towards the responder (ctx its address). */
static double
verbs_baseline(void *ctx, size_t size, uint64_t iterations, int inflight)
{
	const struct bench_opts *o = ((const void **)ctx)[0];
	const struct peer_info *pi = ((const void **)ctx)[1];
	return bench_verbs_baseline_gbps(pi->addr, o->rdma_device, size, iterations, inflight);
}

static double
iperf3_baseline(void *ctx, size_t size, uint64_t iterations, int inflight)
{
	(void)ctx, (void)size, (void)iterations, (void)inflight;
	return iperf3_gbps();
}

/* The reader of one transport: what tp_post posts with. */
struct tp_reader {
	const struct kvn_transport_ops *ops;
	struct kvn_tp_ep *ep;
};

static int
tp_post(void *ctx, struct kvn_read *rd, size_t n)
{
	struct tp_reader *t = ctx;
	return t->ops->read(t->ep, rd, n);
}

int
bench_peer(const struct bench_opts *o)
{
	if (o->rails > 1)
		return bench_peer_rails(o);
	if (o->serve)
		return serve(o, stdout);
	pid_t child = 0;
	struct peer_info pi;
	int rc = 0;
	char line[512];
	if (o->connect) {
		/* A running responder (kvnode-bench peer --serve) told us its region. */
		if (!o->remote_desc || parse_serving(o->remote_desc, &pi) < 0) {
			fprintf(stderr, "kvnode-bench: --connect needs --remote \"serving ...\" (the "
				"line kvnode-bench peer --serve printed)\n");
			return -EINVAL;
		}
		snprintf(pi.addr, sizeof(pi.addr), "%s", o->connect);
	} else if ((rc = bench_peer_fork(o, serve, &child, line, sizeof(line))) < 0 ||
		   (rc = parse_serving(line, &pi)) < 0) {
		goto out;
	}
	const struct kvn_transport_ops *ops;
	struct kvn_transport *tp;
	if ((rc = open_transport(o, &ops, &tp)) < 0)
		goto out;
	struct tp_reader tr = {.ops = ops};
	struct bench_peer_run r = {.post = tp_post, .ctx = &tr, .remote = pi.d};
	pthread_mutex_init(&r.lock, NULL);
	pthread_cond_init(&r.cond, NULL);
	char err[256] = "";
	size_t dst_len = 256u << 20;
	r.dst = bench_map_region(dst_len);
	if (r.dst)
		memset(r.dst, 0, dst_len); /* fault it in now, not in the first timed reads */
	rc = r.dst ? ops->reg_mem(tp, r.dst, dst_len, KVN_MEM_HOST, &r.mr, &(struct kvn_mem_desc){ 0 },
				  err, sizeof(err))
		   : -ENOMEM;
	if (!rc)
		rc = ops->connect(tp, pi.addr, 0, &tr.ep, err, sizeof(err));
	bool verbs = !strcmp(ops->name, "verbs");
	char setup[256];
	snprintf(setup, sizeof(setup),
		 "transport: %s   peer: %s   in flight: %d   trials: %d x %.2f s   baseline: %s",
		 ops->name, pi.addr, o->inflight, o->trials, o->duration_s,
		 !o->baseline ? "none"
		 : verbs      ? "ib_read_bw -R (same size and device)"
			      : "iperf3 -c (single stream, loopback)");
	const void *bctx[2] = {o, &pi};
	struct bench_peer_table tb = {
	    .title = "kvnode-bench peer: one-sided READ of a peer's registered memory",
	    .setup = setup,
	    .op = "read",
	    .baseline_name = verbs ? "ib_read_bw" : "iperf3",
	    .baseline = verbs ? verbs_baseline : iperf3_baseline,
	    .ctx = bctx,
	    .once = !verbs,
	};
	if (rc < 0)
		fprintf(stderr, "kvnode-bench: %s\n", *err ? err : kvn_strerror(rc));
	else
		rc = bench_peer_sizes(o, &r, &tb);
	if (tr.ep)
		ops->ep_close(tr.ep);
	if (r.mr)
		ops->dereg(r.mr);
	ops->close(tp);
	if (r.dst)
		munmap(r.dst, dst_len);
	pthread_cond_destroy(&r.cond);
	pthread_mutex_destroy(&r.lock);
out:
	return bench_peer_end(o, child, rc);
}
