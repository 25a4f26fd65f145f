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
#include "bench/peer.h"
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
	struct kvn_rails_cfg rc = {
	    .ops = ops, .tcfg = &tc, .nrails = (size_t)o->rails, .slice_min = o->rail_slice};
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
	size_t len = bench_peer_region_len(o);
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

/* What the baseline needs: every rail's address and device. */
struct rails_base {
	size_t n;
	const char *addrs[KVN_RAILS_MAX], *devs[KVN_RAILS_MAX];
};

static double
rails_baseline(void *ctx, size_t size, uint64_t iterations, int inflight)
{
	struct rails_base *b = ctx;
	return bench_verbs_baseline_sum(b->n, b->addrs, b->devs, size, iterations, inflight);
}

static int
rails_post(void *ctx, struct kvn_read *rd, size_t n)
{
	return kvn_rails_read(ctx, rd, n);
}

/* A rail out from the start would make the table a figure of fewer rails than it says. */
static int
every_rail_up(struct kvn_rails *rails, const struct rails_peer *p)
{
	struct kvn_rail_stats st[KVN_RAILS_MAX];
	size_t nr = kvn_rails_stats(rails, st, KVN_RAILS_MAX);
	for (size_t i = 0; i < nr; i++)
		if (st[i].down) {
			fprintf(
			    stderr,
			    "kvnode-bench: rail %zu (%s to %s) is out: its connect failed (above); "
			    "the figure would be of fewer rails than --rails says (kvnode doctor "
			    "checks the device)\n",
			    i, *st[i].device ? st[i].device : "tcp", p->addr[i]);
			return -ENETDOWN;
		}
	return 0;
}

/* The table, then what each rail carried: every rail must have taken its share. */
static int
run_sizes(const struct bench_opts *o, struct bench_peer_run *r, struct kvn_rails_ep *ep,
	  const struct rails_peer *p, struct kvn_rails *rails)
{
	bool verbs = !strcmp(p->name, "verbs");
	char setup[512], dev[KVN_RAILS_MAX][64];
	snprintf(setup, sizeof(setup),
		 "transport: %s   rails: %zu   peer: %s and %zu more   in flight: %d   trials: %d "
		 "x %.2f s   baseline: %s",
		 p->name, kvn_rails_ep_rails(ep), p->addr[0], p->n - 1, o->inflight, o->trials,
		 o->duration_s,
		 !o->baseline ? "none"
		 : verbs      ? "ib_read_bw -R, one per rail at once, summed"
			      : "none for tcp rails (verbs only)");
	struct rails_base b = {.n = kvn_rails_ep_rails(ep)};
	for (size_t i = 0; i < b.n; i++) {
		b.addrs[i] = p->addr[i];
		b.devs[i] = nth(o->rdma_device, i, dev[i], sizeof(dev[i]));
	}
	struct bench_peer_table tb = {
	    .title = "kvnode-bench peer --rails: READs sliced over every rail",
	    .setup = setup,
	    .op = "read_rails",
	    .baseline_name = "ib_read_bw x rails",
	    .goal = 0.9,
	    .baseline = verbs ? rails_baseline : NULL,
	    .ctx = &b,
	};
	int rc = bench_peer_sizes(o, r, &tb);
	struct kvn_rail_stats st[KVN_RAILS_MAX];
	size_t nr = kvn_rails_stats(rails, st, KVN_RAILS_MAX);
	for (size_t i = 0; !rc && i < nr && !o->json; i++)
		printf("  rail %zu %s%s%s: %" PRIu64 " slices, %.1f MiB, %" PRIu64 " errors\n", i,
		       st[i].device, *st[i].device ? " to " : "to ", p->addr[i], st[i].slices,
		       (double)st[i].bytes / (1 << 20), st[i].errors);
	return rc;
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
	char line[2048];
	int rc;
	if (o->connect) {
		if (!o->remote_desc || parse_serving(o->remote_desc, &p) < 0) {
			fprintf(stderr,
				"kvnode-bench: --connect needs --remote \"serving ...\" (the "
				"line kvnode-bench peer --serve --rails N printed)\n");
			return -EINVAL;
		}
	} else if ((rc = bench_peer_fork(o, bench_peer_rails_serve, &child, line, sizeof(line))) <
		       0 ||
		   (rc = parse_serving(line, &p)) < 0) {
		goto out;
	}
	struct kvn_rails *rails = NULL;
	if ((rc = open_rails(o, false, &rails)) < 0)
		goto out;
	struct bench_peer_run r = {.post = rails_post, .remote = p.d[0]};
	pthread_mutex_init(&r.lock, NULL);
	pthread_cond_init(&r.cond, NULL);
	r.dst = bench_map_region(DST_LEN);
	if (r.dst)
		memset(r.dst, 0, DST_LEN);
	struct kvn_rails_mr *mr = NULL;
	struct kvn_rails_ep *ep = NULL;
	struct kvn_mem_desc d[KVN_RAILS_MAX];
	char err[512] = "";
	rc = r.dst ? kvn_rails_reg(rails, r.dst, DST_LEN, NULL, &mr, d, NULL, err, sizeof(err))
		   : -ENOMEM;
	struct kvn_rails_peer peer = {.nrails = p.n, .nregions = 1, .desc = p.d};
	for (size_t i = 0; i < p.n; i++)
		peer.addr[i] = p.addr[i];
	if (!rc) {
		r.mr = kvn_rails_mr_tp(mr, 0);
		rc = kvn_rails_connect(rails, &peer, 0, &ep, err, sizeof(err));
		r.ctx = ep;
	}
	if (rc < 0)
		fprintf(stderr, "kvnode-bench: %s\n", *err ? err : kvn_strerror(rc));
	else if ((rc = every_rail_up(rails, &p)) == 0)
		rc = run_sizes(o, &r, ep, &p, rails);
	kvn_rails_ep_close(ep);
	kvn_rails_dereg(mr);
	kvn_rails_close(rails);
	if (r.dst)
		munmap(r.dst, DST_LEN);
	pthread_cond_destroy(&r.cond);
	pthread_mutex_destroy(&r.lock);
out:
	return bench_peer_end(o, child, rc);
}
