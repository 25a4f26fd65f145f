/* kvnode-bench peer --rails N: the same one-sided READs as bench/peer.c, over N rails
 * (rdma/rails.h) on both sides, each READ sliced over all of them. Baseline (verbs): N ib_read_bw
 * runs at once, one per device towards that rail's address; the figure is the ratio of kvnode's
 * bandwidth to the sum of theirs. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench.h"
#include "bench/peer_verbs.h"
#include "core/clock.h"
#include "core/log.h"
#include "rdma/rails.h"

#define DST_LEN (256u << 20)

/* The i-th entry of a comma list (NULL list or too few entries: NULL). */
static const char *
nth(const char *list, size_t i, char *out, size_t cap)
{
	for (; list && i > 0; i--)
		if ((list = strchr(list, ',')))
			list++;
	if (!list || !*list)
		return NULL;
	size_t n = strcspn(list, ",");
	snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), list);
	return out;
}

static int
open_rails(const struct bench_opts *o, bool listen, struct kvn_rails **out)
{
	char err[512] = "";
	struct kvn_transport_cfg tc = {KVN_TRANSPORT_CFG_INIT, .gid_index = -1,
				       .conns_per_peer = o->conns};
	const struct kvn_transport_ops *ops =
	    kvn_transport_by_name(o->transport, &tc, err, sizeof(err));
	if (!ops) {
		fprintf(stderr, "kvnode-bench: %s\n", err);
		return -EINVAL;
	}
	struct kvn_rails_cfg rc = {.ops = ops, .tcfg = &tc, .nrails = (size_t)o->rails};
	static char dev[KVN_RAILS_MAX][64], lis[KVN_RAILS_MAX][KVN_RAILS_ADDR_MAX + 1];
	for (size_t i = 0; i < rc.nrails; i++) {
		const char *l = nth(o->listen, i, lis[i], sizeof(lis[i]));
		if (listen && !l && o->listen) {
			fprintf(stderr, "kvnode-bench: --listen names fewer than %d addresses\n",
				o->rails);
			return -EINVAL;
		}
		rc.rail[i] =
		    (struct kvn_rail_spec){.device = nth(o->rdma_device, i, dev[i], sizeof(dev[i])),
					   .listen = l ? l : "127.0.0.1:0",
					   .numa_node = -1};
	}
	int rcode = kvn_rails_open(&rc, out, err, sizeof(err));
	if (!rcode && listen)
		rcode = kvn_rails_listen(*out, err, sizeof(err));
	if (rcode < 0) {
		fprintf(stderr, "kvnode-bench: %s\n", err);
		kvn_rails_close(*out);
		*out = NULL;
	}
	return rcode;
}

/* ---------------------------------------------------------------------------------------------
 * Responder: "serving T ADDR0 addr=0x.. len=N rkey=0x.. rail=ADDR1/0xRKEY1 ..."
 * ------------------------------------------------------------------------------------------- */

static size_t
region_len(const struct bench_opts *o)
{
	size_t max = 0;
	for (size_t i = 0; i < o->nsizes; i++)
		max = o->sizes[i] > max ? o->sizes[i] : max;
	return max * 2 > (64u << 20) ? max * 2 : (64u << 20);
}

int
bench_peer_rails_serve(const struct bench_opts *o, FILE *out)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	struct kvn_rails *r;
	if (open_rails(o, true, &r) < 0)
		return -EINVAL;
	size_t len = region_len(o);
	char *region = bench_map_region(len);
	int rc = region ? 0 : -ENOMEM;
	for (size_t i = 0; region && i < len; i++)
		region[i] = (char)bench_pattern(i);
	struct kvn_rails_mr *mr = NULL;
	struct kvn_mem_desc d[KVN_RAILS_MAX];
	char err[512] = "";
	if (!rc)
		rc = kvn_rails_reg(r, region, len, NULL, &mr, d, NULL, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "kvnode-bench: %s\n", *err ? err : kvn_strerror(rc));
	} else {
		fprintf(out, "serving %s %s addr=0x%" PRIx64 " len=%" PRIu64 " rkey=0x%08x",
			kvn_rails_ops(r)->name, kvn_rails_addr(r, 0), d[0].addr, d[0].len,
			d[0].rkey);
		for (size_t i = 1; i < kvn_rails_count(r); i++)
			fprintf(out, " rail=%s/0x%08x", kvn_rails_addr(r, i), d[i].rkey);
		fprintf(out, "\n");
		fflush(out);
		int sig;
		sigwait(&set, &sig);
	}
	kvn_rails_dereg(mr);
	kvn_rails_close(r);
	if (region)
		munmap(region, len);
	return rc;
}

struct rails_peer {
	char name[32];
	size_t n;
	char addr[KVN_RAILS_MAX][KVN_RAILS_ADDR_MAX + 1];
	struct kvn_mem_desc d[KVN_RAILS_MAX];
};

static int
parse_serving(const char *line, struct rails_peer *p)
{
	memset(p, 0, sizeof(*p));
	if (sscanf(line, "serving %31s %95s addr=0x%" SCNx64 " len=%" SCNu64 " rkey=0x%" SCNx32,
		   p->name, p->addr[0], &p->d[0].addr, &p->d[0].len, &p->d[0].rkey) != 5)
		return -EPROTO;
	p->n = 1;
	for (const char *s = strstr(line, " rail="); s && p->n < KVN_RAILS_MAX;
	     s = strstr(s + 1, " rail=")) {
		char a[KVN_RAILS_ADDR_MAX + 1];
		uint32_t rk;
		if (sscanf(s, " rail=%95[^/]/0x%" SCNx32, a, &rk) != 2)
			return -EPROTO;
		snprintf(p->addr[p->n], sizeof(p->addr[0]), "%s", a);
		p->d[p->n] =
		    (struct kvn_mem_desc){.addr = p->d[0].addr, .len = p->d[0].len, .rkey = rk};
		p->n++;
	}
	return 0;
}

static int
start_responder(const struct bench_opts *o, pid_t *pid, struct rails_peer *p)
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
		_exit(out && bench_peer_rails_serve(o, out) == 0 ? 0 : 1);
	}
	close(fds[1]);
	FILE *in = fdopen(fds[0], "r");
	char line[2048];
	int rc = in && fgets(line, sizeof(line), in) ? parse_serving(line, p) : -EPIPE;
	if (in)
		fclose(in);
	if (rc < 0)
		fprintf(stderr,
			"kvnode-bench: the responder did not start (see its error above)\n");
	return rc;
}

/* ---------------------------------------------------------------------------------------------
 * Reader
 * ------------------------------------------------------------------------------------------- */

struct run {
	struct kvn_rails_ep *ep;
	struct kvn_tp_mr *mr; /* rail 0's registration of dst */
	char *dst;
	size_t dst_slots, size, remote_slots;
	struct kvn_mem_desc remote;
	double deadline;
	atomic_uint_fast64_t next, completed;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int outstanding, status;
	char err[256];
};

static void
set_read(struct run *r, struct kvn_read *rd)
{
	uint64_t k = atomic_fetch_add(&r->next, 1);
	rd->local = r->dst + (k % r->dst_slots) * r->size;
	rd->remote_addr = r->remote.addr + (k % r->remote_slots) * r->size;
}

static void
read_done(struct kvn_read *rd, int status, const char *msg)
{
	struct run *r = rd->ctx;
	if (status == 0) {
		atomic_fetch_add(&r->completed, 1);
		if (kvn_now_s() < r->deadline) {
			set_read(r, rd);
			if ((status = kvn_rails_read(r->ep, rd, 1)) == 0)
				return;
			msg = "posting the next read failed";
		}
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

/* inflight reads of r->size kept outstanding for duration seconds (0: one read, for the
 * check); GB/s into *gbps. */
static int
measure(struct run *r, int inflight, double duration, uint64_t *iters, double *gbps)
{
	struct kvn_read *rds = calloc((size_t)inflight, sizeof(*rds));
	if (!rds)
		return -ENOMEM;
	atomic_store(&r->completed, 0);
	atomic_store(&r->next, 0);
	r->status = 0;
	r->outstanding = inflight;
	double t0 = kvn_now_s();
	r->deadline = t0 + duration;
	for (int i = 0; i < inflight; i++) {
		rds[i] = (struct kvn_read){.local_mr = r->mr,
					   .rkey = r->remote.rkey,
					   .len = r->size,
					   .done = read_done,
					   .ctx = r};
		set_read(r, &rds[i]);
	}
	int rc = kvn_rails_read(r->ep, rds, (size_t)inflight);
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

/* One read at offset 0 (sliced over the rails) must bring the responder's pattern. */
static int
verify(struct run *r)
{
	memset(r->dst, 0, r->size);
	uint64_t it;
	double g;
	int rc = measure(r, 1, 0, &it, &g);
	for (size_t i = 0; !rc && i < r->size; i++)
		if ((uint8_t)r->dst[i] != bench_pattern(i)) {
			fprintf(stderr, "kvnode-bench: byte %zu of a %zu-byte read is wrong\n", i,
				r->size);
			rc = -EIO;
		}
	return rc;
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static int
run_sizes(const struct bench_opts *o, struct run *r, const struct rails_peer *p,
	  struct kvn_rails *rails)
{
	bool verbs = !strcmp(p->name, "verbs");
	char setup[512];
	snprintf(setup, sizeof(setup),
		 "transport: %s   rails: %zu   peer: %s and %zu more   in flight: %d   trials: %d "
		 "x %.2f s   baseline: %s",
		 p->name, kvn_rails_ep_rails(r->ep), p->addr[0], p->n - 1, o->inflight, o->trials,
		 o->duration_s,
		 !o->baseline ? "none"
		 : verbs      ? "ib_read_bw -R, one per rail at once, summed"
			      : "none for tcp rails (verbs only)");
	bench_table_header(o, "kvnode-bench peer --rails: READs sliced over every rail", setup);
	double gb[16][99], base[16][99];
	uint64_t it[16][99];
	int rc = 0;
	const char *addrs[KVN_RAILS_MAX], *devs[KVN_RAILS_MAX];
	char dev[KVN_RAILS_MAX][64];
	size_t n = kvn_rails_ep_rails(r->ep);
	for (size_t i = 0; i < n; i++) {
		addrs[i] = p->addr[i];
		devs[i] = nth(o->rdma_device, i, dev[i], sizeof(dev[i]));
	}
	for (int t = 0; t < o->trials && !rc; t++)
		for (size_t s = 0; s < o->nsizes && !rc; s++) {
			r->size = o->sizes[s];
			r->remote_slots = r->remote.len / r->size;
			r->dst_slots = DST_LEN / r->size ? DST_LEN / r->size : 1;
			if (r->dst_slots > (size_t)o->inflight)
				r->dst_slots = (size_t)o->inflight;
			if (t == 0)
				rc = verify(r);
			if (!rc)
				rc = measure(r, o->inflight, o->duration_s, &it[s][t], &gb[s][t]);
			base[s][t] = 0;
			if (!rc && o->baseline && verbs &&
			    (base[s][t] = bench_verbs_baseline_sum(n, addrs, devs, r->size,
								   it[s][t], o->inflight)) < 0)
				rc = -EIO;
		}
	if (rc)
		return rc;
	for (size_t s = 0; s < o->nsizes; s++) {
		double sorted[99], sb[99];
		memcpy(sorted, gb[s], sizeof(double) * (size_t)o->trials);
		memcpy(sb, base[s], sizeof(double) * (size_t)o->trials);
		qsort(sorted, (size_t)o->trials, sizeof(double), cmp_double);
		qsort(sb, (size_t)o->trials, sizeof(double), cmp_double);
		int mid = 0;
		for (int t = 0; t < o->trials; t++)
			if (gb[s][t] == sorted[o->trials / 2])
				mid = t;
		struct bench_row row = {.mode = "peer",
					.op = "read_rails",
					.bytes = o->sizes[s],
					.iterations = it[s][mid],
					.gbps = gb[s][mid],
					.peak_gbps = sorted[o->trials - 1],
					.baseline_gbps =
					    o->baseline && verbs ? sb[o->trials / 2] : 0,
					.baseline_name = "ib_read_bw x rails",
					.goal = o->baseline && verbs ? 0.9 : 0};
		bench_table_row(o, &row);
	}
	bench_table_footer(o);
	/* what each rail carried: every rail must have taken its share */
	struct kvn_rail_stats st[KVN_RAILS_MAX];
	size_t nr = kvn_rails_stats(rails, st, KVN_RAILS_MAX);
	for (size_t i = 0; i < nr && !o->json; i++)
		printf("  rail %zu %s%s%s: %" PRIu64 " slices, %.1f MiB, %" PRIu64 " errors\n", i,
		       st[i].device, *st[i].device ? " to " : "to ", p->addr[i], st[i].slices,
		       (double)st[i].bytes / (1 << 20), st[i].errors);
	return 0;
}

int
bench_peer_rails(const struct bench_opts *o)
{
	if (o->rails < 2 || o->rails > KVN_RAILS_MAX) {
		fprintf(stderr, "kvnode-bench: --rails wants 2 to %d\n", KVN_RAILS_MAX);
		return -EINVAL;
	}
	if (o->serve)
		return bench_peer_rails_serve(o, stdout);
	pid_t child = 0;
	struct rails_peer p;
	int rc;
	if (o->connect) {
		if (!o->remote_desc || parse_serving(o->remote_desc, &p) < 0) {
			fprintf(stderr,
				"kvnode-bench: --connect needs --remote \"serving ...\" (the "
				"line kvnode-bench peer --serve --rails N printed)\n");
			return -EINVAL;
		}
	} else if ((rc = start_responder(o, &child, &p)) < 0) {
		goto out;
	}
	struct kvn_rails *rails = NULL;
	if ((rc = open_rails(o, false, &rails)) < 0)
		goto out;
	struct run r = {.remote = p.d[0]};
	pthread_mutex_init(&r.lock, NULL);
	pthread_cond_init(&r.cond, NULL);
	r.dst = bench_map_region(DST_LEN);
	if (r.dst)
		memset(r.dst, 0, DST_LEN);
	struct kvn_rails_mr *mr = NULL;
	struct kvn_mem_desc d[KVN_RAILS_MAX];
	char err[512] = "";
	rc = r.dst ? kvn_rails_reg(rails, r.dst, DST_LEN, NULL, &mr, d, NULL, err, sizeof(err))
		   : -ENOMEM;
	struct kvn_rails_peer peer = {.nrails = p.n, .nregions = 1, .desc = p.d};
	for (size_t i = 0; i < p.n; i++)
		peer.addr[i] = p.addr[i];
	if (!rc) {
		r.mr = kvn_rails_mr_tp(mr, 0);
		rc = kvn_rails_connect(rails, &peer, 0, &r.ep, err, sizeof(err));
	}
	if (rc < 0)
		fprintf(stderr, "kvnode-bench: %s\n", *err ? err : kvn_strerror(rc));
	else
		rc = run_sizes(o, &r, &p, rails);
	kvn_rails_ep_close(r.ep);
	kvn_rails_dereg(mr);
	kvn_rails_close(rails);
	if (r.dst)
		munmap(r.dst, DST_LEN);
	pthread_cond_destroy(&r.cond);
	pthread_mutex_destroy(&r.lock);
out:
	if (child > 0) {
		kill(child, SIGTERM);
		waitpid(child, NULL, 0);
	}
	if (!rc && o->json)
		bench_json_flush();
	return rc;
}
