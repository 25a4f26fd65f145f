/* Transport conformance suite (issue 3): the same cases for every implementation in the table at
 * the bottom. tcp runs everywhere; an implementation that cannot work here (verbs without an
 * active RDMA device: it runs inside the rxe VM) is skipped with the reason. */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"
#include "kvnode/transport.h"
#include "tests/helpers/proc.h"

#define MIB (1024 * 1024)
#define REGION (32 * MIB)
#define TIMEOUT_MS 5000 /* the transport's: a dead peer's reads fail after this */
#define DEADLINE_MS 120000 /* ours, for a loaded 2-core machine under sanitizers */
#define BENCH KVN_BINARY_DIR "/kvnode-bench"

/* Where owners listen: loopback, or (inside the rxe VM) the address the runner names; and the
 * RDMA device both sides open (NULL: the first active one), one rail of the VM per run. */
static const char *
test_host(void)
{
	const char *h = getenv("KVN_TEST_TRANSPORT_HOST");
	return h && *h ? h : "127.0.0.1";
}

static const char *
test_device(void)
{
	const char *d = getenv("KVN_TEST_RDMA_DEVICE");
	return d && *d ? d : NULL;
}

struct fx {
	const struct kvn_transport_ops *ops;
	struct kvn_transport *owner, *reader;
	char *region; /* the owner's, filled with bench_pattern */
	struct kvn_tp_mr *region_mr;
	struct kvn_mem_desc desc;
	char bound[128];
	char *dst; /* the reader's */
	struct kvn_tp_mr *dst_mr;
	struct kvn_tp_ep *ep;
};

static void
open_impl(const char *name, const struct kvn_transport_ops **ops, struct kvn_transport **tp)
{
	char err[256] = "";
	struct kvn_transport_cfg cfg = {KVN_TRANSPORT_CFG_INIT, .gid_index = -1,
					.timeout_ms = TIMEOUT_MS, .rdma_device = test_device()};
	*ops = kvn_transport_by_name(name, &cfg, err, sizeof(err));
	if (!*ops)
		cr_skip_test("transport %s: %s", name, err);
	if ((*ops)->probe(&cfg, err, sizeof(err)) < 0)
		cr_skip_test("transport %s cannot run here: %s", name, err);
	cr_assert_eq((*ops)->open(&cfg, tp, err, sizeof(err)), 0, "open %s: %s", name, err);
}

static void *
xalloc(size_t len)
{
	void *p = NULL;
	cr_assert_eq(posix_memalign(&p, 4096, len), 0, "out of memory for %zu bytes", len);
	return p;
}

/* An owner with one pattern-filled region listening on the test host, and a reader with a
 * registered destination buffer and one endpoint to the owner. */
static void
fx_setup(struct fx *f, const char *name)
{
	memset(f, 0, sizeof(*f));
	open_impl(name, &f->ops, &f->owner);
	char err[256] = "", addr[160];
	cr_assert_eq(
	    f->ops->open(&(struct kvn_transport_cfg){KVN_TRANSPORT_CFG_INIT, .gid_index = -1,
						     .timeout_ms = TIMEOUT_MS,
						     .rdma_device = test_device()},
			 &f->reader, err, sizeof(err)),
	    0, "%s", err);
	f->region = xalloc(REGION);
	for (size_t i = 0; i < REGION; i++)
		f->region[i] = (char)bench_pattern(i);
	cr_assert_eq(f->ops->reg_mem(f->owner, f->region, REGION, KVN_MEM_HOST, &f->region_mr,
				     &f->desc, err, sizeof(err)),
		     0, "reg_mem: %s", err);
	cr_assert_eq(f->desc.addr, (uint64_t)(uintptr_t)f->region);
	cr_assert_eq(f->desc.len, REGION);
	snprintf(addr, sizeof(addr), "%s:0", test_host());
	cr_assert_eq(f->ops->listen(f->owner, addr, f->bound, sizeof(f->bound), err, sizeof(err)),
		     0, "listen %s: %s", addr, err);
	f->dst = xalloc(REGION);
	struct kvn_mem_desc d;
	cr_assert_eq(f->ops->reg_mem(f->reader, f->dst, REGION, KVN_MEM_HOST, &f->dst_mr, &d, err,
				     sizeof(err)),
		     0, "reg_mem: %s", err);
	cr_assert_eq(f->ops->connect(f->reader, f->bound, 0, &f->ep, err, sizeof(err)), 0,
		     "connect %s: %s", f->bound, err);
}

static void
fx_teardown(struct fx *f)
{
	if (f->ep)
		f->ops->ep_close(f->ep);
	if (f->dst_mr)
		f->ops->dereg(f->dst_mr);
	if (f->region_mr)
		f->ops->dereg(f->region_mr);
	if (f->reader)
		f->ops->close(f->reader);
	if (f->owner)
		f->ops->close(f->owner);
	free(f->region);
	free(f->dst);
}

static struct kvn_read
rd_make(struct fx *f, size_t local_off, uint64_t remote_off, uint64_t len)
{
	return (struct kvn_read){ .local = f->dst + local_off, .local_mr = f->dst_mr,
				  .remote_addr = f->desc.addr + remote_off, .rkey = f->desc.rkey,
				  .len = len };
}

static void
expect_pattern(const char *buf, uint64_t remote_off, uint64_t len)
{
	for (uint64_t j = 0; j < len; j++)
		if ((uint8_t)buf[j] != bench_pattern(remote_off + j))
			cr_assert_fail("byte %" PRIu64 " of a %" PRIu64 "-byte read at region offset "
				       "%" PRIu64 " is 0x%02x, want 0x%02x", j, len, remote_off,
				       (uint8_t)buf[j], bench_pattern(remote_off + j));
}

/* A read that must succeed and return the pattern: proves the owner is still serving. */
static void
expect_serving(struct fx *f, struct kvn_tp_ep *ep)
{
	char err[512] = "";
	memset(f->dst, 0, 8192);
	struct kvn_read rd = rd_make(f, 0, 12345, 8192);
	cr_assert_eq(kvn_transport_read_sync(f->ops, ep, &rd, 1, err, sizeof(err)), 0,
		     "a valid read after the refusal failed: %s", err);
	expect_pattern(f->dst, 12345, 8192);
}

/* One read that must be refused with want, a message naming the peer, and nothing else hurt. */
static void
expect_refused(struct fx *f, struct kvn_read rd, int want, const char *what)
{
	char err[512] = "";
	int rc = kvn_transport_read_sync(f->ops, f->ep, &rd, 1, err, sizeof(err));
	cr_assert_eq(rc, want, "%s: got %d (%s), want %d", what, rc, err, want);
	cr_assert_eq(rd.status, want, "%s: the read's own status", what);
	cr_assert(strstr(err, f->bound), "%s: the message \"%s\" does not name the peer %s", what,
		  err, f->bound);
	expect_serving(f, f->ep);
}

/* ---------------------------------------------------------------------------------------------
 * Completion counting for pipelined cases
 * ------------------------------------------------------------------------------------------- */

struct waiter {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	size_t left, ok, failed;
	int first_status;
	char first_msg[512];
};

static void
waiter_init(struct waiter *w, size_t n)
{
	memset(w, 0, sizeof(*w));
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv, NULL);
	w->left = n;
}

static void
waiter_cb(struct kvn_read *rd, int status, const char *msg)
{
	struct waiter *w = rd->ctx;
	pthread_mutex_lock(&w->mu);
	if (status) {
		if (!w->failed++) {
			w->first_status = status;
			snprintf(w->first_msg, sizeof(w->first_msg), "%s", msg ? msg : "(no message)");
		}
	} else {
		w->ok++;
	}
	w->left--;
	pthread_cond_broadcast(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

/* Waits until at most `until` reads are left or the deadline passes; returns what is left. */
static size_t
waiter_wait(struct waiter *w, size_t until, int timeout_ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += timeout_ms / 1000;
	pthread_mutex_lock(&w->mu);
	int rc = 0;
	while (w->left > until && rc != ETIMEDOUT)
		rc = pthread_cond_timedwait(&w->cv, &w->mu, &ts);
	size_t left = w->left;
	pthread_mutex_unlock(&w->mu);
	return left;
}

/* ---------------------------------------------------------------------------------------------
 * Cases
 * ------------------------------------------------------------------------------------------- */

/* Every size from 1 byte, odd sizes around powers of two and the tcp message size (1 MiB), up to
 * 9 MiB (past tcp's 1 MiB and rxe's 8 MiB: split by the transport), at unaligned local and remote
 * offsets, in one batch. */
static void
t_sizes(const char *name)
{
	struct fx f;
	fx_setup(&f, name);
	uint64_t sizes[200];
	size_t n = 0;
	for (uint64_t s = 1; s <= 64; s++)
		sizes[n++] = s;
	for (uint64_t p = 128; p <= 2 * MIB; p *= 2) {
		sizes[n++] = p - 1;
		sizes[n++] = p;
		sizes[n++] = p + 1;
	}
	sizes[n++] = 3 * MIB + 7;
	sizes[n++] = 9 * MIB + 5;
	uint64_t total = 0;
	for (size_t i = 0; i < n; i++)
		total += sizes[i] + 3;
	cr_assert_leq(total, REGION, "the size list must fit the destination buffer");
	struct kvn_read *rds = calloc(n, sizeof(*rds));
	size_t loff = 1;
	for (size_t i = 0; i < n; i++) {
		uint64_t roff = (i * 7919 + 13) % (REGION - sizes[i]);
		rds[i] = rd_make(&f, loff, roff, sizes[i]);
		loff += sizes[i] + 3;
	}
	memset(f.dst, 0, REGION);
	char err[512] = "";
	cr_assert_eq(kvn_transport_read_sync(f.ops, f.ep, rds, n, err, sizeof(err)), 0, "%s", err);
	for (size_t i = 0; i < n; i++) {
		cr_assert_eq(rds[i].status, 0);
		expect_pattern(rds[i].local, rds[i].remote_addr - f.desc.addr, sizes[i]);
	}
	/* The gaps between destinations were not written: reads land exactly where asked. */
	loff = 1;
	cr_assert_eq(f.dst[0], 0);
	for (size_t i = 0; i < n; i++) {
		loff += sizes[i];
		for (int g = 0; g < 3; g++)
			cr_assert_eq(f.dst[loff + (size_t)g], 0, "byte after read %zu was written", i);
		loff += 3;
	}
	free(rds);
	fx_teardown(&f);
}

/* 10,000 reads posted at once across 4 endpoints, each completing once with its own bytes. */
static void
t_many_in_flight(const char *name)
{
	struct fx f;
	fx_setup(&f, name);
	enum { EPS = 4, PER_EP = 2500, N = EPS * PER_EP };
	struct kvn_tp_ep *eps[EPS] = { f.ep };
	char err[256] = "";
	for (int e = 1; e < EPS; e++)
		cr_assert_eq(f.ops->connect(f.reader, f.bound, 0, &eps[e], err, sizeof(err)), 0,
			     "%s", err);
	struct kvn_read *rds = calloc(N, sizeof(*rds));
	struct waiter w;
	waiter_init(&w, N);
	size_t loff = 0;
	for (size_t i = 0; i < N; i++) {
		uint64_t len = 1 + (i * 2654435761u) % 3000;
		uint64_t roff = (i * 40503u * 7u) % (REGION - len);
		rds[i] = rd_make(&f, loff, roff, len);
		rds[i].done = waiter_cb;
		rds[i].ctx = &w;
		loff += len;
	}
	cr_assert_leq(loff, REGION);
	memset(f.dst, 0, REGION);
	for (int e = 0; e < EPS; e++)
		cr_assert_eq(f.ops->read(eps[e], rds + (size_t)e * PER_EP, PER_EP), 0,
			     "posting 2500 reads on endpoint %d", e);
	cr_assert_eq(waiter_wait(&w, 0, DEADLINE_MS), 0, "reads still outstanding at the deadline");
	cr_assert_eq(w.failed, 0, "%zu reads failed, first: %s", w.failed, w.first_msg);
	cr_assert_eq(w.ok, N);
	for (size_t i = 0; i < N; i++)
		expect_pattern(rds[i].local, rds[i].remote_addr - f.desc.addr, rds[i].len);
	for (int e = 1; e < EPS; e++)
		f.ops->ep_close(eps[e]);
	free(rds);
	fx_teardown(&f);
}

static void
t_forged_rkey(const char *name)
{
	struct fx f;
	fx_setup(&f, name);
	struct kvn_read rd = rd_make(&f, 0, 0, 4096);
	rd.rkey ^= 0x5a5a5a5au;
	expect_refused(&f, rd, -EACCES, "forged rkey");
	fx_teardown(&f);
}

static void
t_out_of_bounds(const char *name)
{
	struct fx f;
	fx_setup(&f, name);
	expect_refused(&f, rd_make(&f, 0, REGION - 4095, 4096), -EACCES, "one byte past the end");
	struct kvn_read rd = rd_make(&f, 0, 0, 4096);
	rd.remote_addr = f.desc.addr - 1;
	expect_refused(&f, rd, -EACCES, "one byte before the start");
	rd.remote_addr = UINT64_MAX - 100; /* addr + len wraps around */
	rd.len = 4096;
	expect_refused(&f, rd, -EACCES, "a range that wraps around");
	fx_teardown(&f);
}

static void
t_deregistered(const char *name)
{
	struct fx f;
	fx_setup(&f, name);
	char err[256] = "";
	char *second = xalloc(MIB);
	memcpy(second, f.region, MIB);
	struct kvn_tp_mr *mr;
	struct kvn_mem_desc d;
	cr_assert_eq(f.ops->reg_mem(f.owner, second, MIB, KVN_MEM_HOST, &mr, &d, err, sizeof(err)),
		     0, "%s", err);
	struct kvn_read rd = rd_make(&f, 0, 0, 4096);
	rd.remote_addr = d.addr;
	rd.rkey = d.rkey;
	cr_assert_eq(kvn_transport_read_sync(f.ops, f.ep, &rd, 1, err, sizeof(err)), 0, "%s", err);
	expect_pattern(f.dst, 0, 4096);
	f.ops->dereg(mr);
	expect_refused(&f, rd, -EACCES, "a deregistered region");
	/* Registering the same memory again hands out a new rkey; the stale one stays refused. */
	cr_assert_eq(f.ops->reg_mem(f.owner, second, MIB, KVN_MEM_HOST, &mr, &d, err, sizeof(err)),
		     0, "%s", err);
	cr_assert_neq(d.rkey, rd.rkey, "re-registration reused the old rkey");
	expect_refused(&f, rd, -EACCES, "a stale rkey of re-registered memory");
	f.ops->dereg(mr);
	free(second);
	fx_teardown(&f);
}

static void
t_zero_length(const char *name)
{
	struct fx f;
	fx_setup(&f, name);
	expect_refused(&f, rd_make(&f, 0, 0, 0), -EINVAL, "zero length");
	fx_teardown(&f);
}

/* In one batch, refused reads fail alone: each read has its own status. */
static void
t_mixed_batch(const char *name)
{
	struct fx f;
	fx_setup(&f, name);
	struct kvn_read rds[6];
	for (int i = 0; i < 6; i++)
		rds[i] = rd_make(&f, (size_t)i * 65536, (uint64_t)i * 100000, 65536);
	rds[1].rkey ^= 1;
	rds[3].remote_addr = f.desc.addr + REGION;
	rds[4].len = 0;
	char err[512];
	memset(f.dst, 0, 6 * 65536);
	cr_assert_lt(kvn_transport_read_sync(f.ops, f.ep, rds, 6, err, sizeof(err)), 0);
	cr_assert_eq(rds[1].status, -EACCES);
	cr_assert_eq(rds[3].status, -EACCES);
	cr_assert_eq(rds[4].status, -EINVAL);
	for (int i = 0; i < 6; i++) {
		if (i == 1 || i == 3 || i == 4)
			continue;
		cr_assert_eq(rds[i].status, 0, "good read %d in a mixed batch failed", i);
		expect_pattern(rds[i].local, (uint64_t)i * 100000, 65536);
	}
	fx_teardown(&f);
}

/* A destination outside the read's local registration is refused before anything is sent. */
static void
t_local_unregistered(const char *name)
{
	struct fx f;
	fx_setup(&f, name);
	char stray[64];
	struct kvn_read rd = rd_make(&f, 0, 0, sizeof(stray));
	rd.local = stray;
	char err[512] = "";
	cr_assert_eq(kvn_transport_read_sync(f.ops, f.ep, &rd, 1, err, sizeof(err)), -EINVAL,
		     "%s", err);
	expect_serving(&f, f.ep);
	fx_teardown(&f);
}

/* ---------------------------------------------------------------------------------------------
 * Peer failures
 * ------------------------------------------------------------------------------------------- */

struct child {
	struct proc p;
	char dir[256], out[300];
	char addr[128];
	struct kvn_mem_desc d;
};

static bool
serving_line(void *arg)
{
	struct child *c = arg;
	char *text = proc_read_file(c->out, NULL);
	char name[32];
	bool ok = text && sscanf(text, "serving %31s %127s addr=0x%" SCNx64 " len=%" SCNu64
				 " rkey=0x%" SCNx32, name, c->addr, &c->d.addr, &c->d.len,
				 &c->d.rkey) == 5;
	free(text);
	return ok;
}

/* The owner in another process: kvnode-bench peer --serve (a pattern-filled region). */
static void
child_start(struct child *c, const char *name)
{
	cr_assert_eq(access(BENCH, X_OK), 0, "%s is not built", BENCH);
	char listen[160], err[300];
	snprintf(listen, sizeof(listen), "%s:0", test_host());
	snprintf(err, sizeof(err), "%s/serve.err", c->dir);
	snprintf(c->out, sizeof(c->out), "%s/serve.out", c->dir);
	unlink(c->out);
	const char *dev = test_device();
	const char *argv[] = {
	    BENCH,	"peer", "--serve", "--transport", name,
	    "--listen", listen, "--sizes", "4M",	  dev ? "--rdma-device" : NULL,
	    dev,	NULL};
	struct proc_opts o = { .stdout_path = c->out, .stderr_path = err };
	cr_assert_eq(proc_spawn(&c->p, argv, &o), 0);
	cr_assert(proc_wait_for(serving_line, c, DEADLINE_MS),
		  "the responder did not print its serving line; see %s", err);
}

/* Keeps 256 reads of 1 MiB in flight (far more than socket buffers hold, so some are surely
 * unanswered), SIGKILLs the owner once reads flow, and then every outstanding read must fail
 * within the timeout; a restarted owner serves a new connection. */
static void
t_peer_killed(const char *name)
{
	const struct kvn_transport_ops *ops;
	struct kvn_transport *tp;
	open_impl(name, &ops, &tp);
	struct child c = { 0 };
	cr_assert_eq(proc_mkdtemp("transport", c.dir, sizeof(c.dir)), 0);
	child_start(&c, name);
	char err[512] = "";
	char *dst = xalloc(8 * MIB);
	struct kvn_tp_mr *mr;
	struct kvn_mem_desc d;
	cr_assert_eq(ops->reg_mem(tp, dst, 8 * MIB, KVN_MEM_HOST, &mr, &d, err, sizeof(err)), 0,
		     "%s", err);
	struct kvn_tp_ep *ep;
	cr_assert_eq(ops->connect(tp, c.addr, 0, &ep, err, sizeof(err)), 0, "%s", err);

	enum { INFLIGHT = 256, MAXREADS = 4096 };
	struct kvn_read *rds = calloc(MAXREADS, sizeof(*rds));
	struct waiter w;
	waiter_init(&w, MAXREADS);
	size_t posted = 0;
	bool killed = false, refused = false;
	while (posted < MAXREADS) {
		pthread_mutex_lock(&w.mu);
		size_t done = MAXREADS - w.left, ok = w.ok, failed = w.failed;
		pthread_mutex_unlock(&w.mu);
		if (!killed && ok >= 16) {
			cr_assert_eq(kill(c.p.pid, SIGKILL), 0);
			killed = true;
		}
		if (killed && failed)
			break;
		cr_assert(killed || !failed, "a read failed before the kill: %s", w.first_msg);
		if (posted - done >= INFLIGHT) {
			waiter_wait(&w, MAXREADS - done - 1, 1000);
			continue;
		}
		rds[posted] = (struct kvn_read){ .local = dst + (posted % 8) * MIB, .local_mr = mr,
						 .remote_addr = c.d.addr + (posted % 32) * MIB,
						 .rkey = c.d.rkey, .len = MIB, .done = waiter_cb,
						 .ctx = &w };
		/* Reads keep flowing after the kill until they fail: an RDMA owner's device may
		 * still serve the reads queued at its QP while the kernel tears the dead process
		 * down (rxe does), so only later ones are bound to fail. A broken endpoint may
		 * also refuse new reads outright. */
		int rc = ops->read(ep, &rds[posted], 1);
		if (killed && rc < 0) {
			refused = true;
			break;
		}
		cr_assert_eq(rc, 0);
		posted++;
	}
	cr_assert(killed, "reads never got going");
	/* Nothing hangs: every posted read completes, the outstanding ones with an error. */
	size_t left = waiter_wait(&w, MAXREADS - posted, TIMEOUT_MS * 3 + DEADLINE_MS / 4);
	cr_assert_eq(left, MAXREADS - posted, "%zu reads never completed after the peer died",
		     left - (MAXREADS - posted));
	cr_assert(w.failed >= 1 || refused, "reads kept succeeding after the peer died (%zu "
		  "posted)", posted);
	/* tcp has no device that drains queued reads: the ones outstanding at the kill fail. */
	if (!strcmp(name, "tcp"))
		cr_assert_geq(w.failed, 1, "no outstanding read failed when the peer died");
	if (w.failed) {
		cr_assert_lt(w.first_status, 0);
		cr_assert(strstr(w.first_msg, c.addr), "the failure \"%s\" does not name the peer "
			  "%s", w.first_msg, c.addr);
	}
	proc_wait(&c.p, DEADLINE_MS);

	/* The old endpoint's next read fails cleanly (its peer is gone for good). */
	struct kvn_read rd = { .local = dst, .local_mr = mr, .remote_addr = c.d.addr,
			       .rkey = c.d.rkey, .len = 4096 };
	cr_assert_lt(kvn_transport_read_sync(ops, ep, &rd, 1, err, sizeof(err)), 0);
	ops->ep_close(ep);

	/* A restarted owner (new port, new rkey) serves a new connection. */
	child_start(&c, name);
	cr_assert_eq(ops->connect(tp, c.addr, 0, &ep, err, sizeof(err)), 0, "%s", err);
	rd = (struct kvn_read){ .local = dst, .local_mr = mr, .remote_addr = c.d.addr + 777,
				.rkey = c.d.rkey, .len = 4 * MIB };
	cr_assert_eq(kvn_transport_read_sync(ops, ep, &rd, 1, err, sizeof(err)), 0, "%s", err);
	expect_pattern(dst, 777, 4 * MIB);
	ops->ep_close(ep);
	proc_stop(&c.p, SIGTERM, DEADLINE_MS);
	ops->dereg(mr);
	ops->close(tp);
	free(dst);
	free(rds);
	proc_rm_tree(c.dir);
}

/* Closing an endpoint from another thread than the one posting, as soon as the first of its
 * reads completes: the poster may still be inside read(), the rest of the batch is in flight
 * (their events fetched or pending) and a second endpoint keeps the progress side busy. Every
 * callback runs exactly once before ep_close returns, and nothing touches the freed endpoint
 * (the sanitizer build catches that). The poster runs at idle priority on one CPU next to a
 * spinning thread, so it is often preempted in mid-read() and resumes late: that widens the
 * window in which a transport could still touch the endpoint. It stays a stress test: a broken
 * transport does not fail it on every run. */
struct close_race {
	struct fx *f;
	struct kvn_tp_ep *ep;
	struct kvn_read *rds;
	size_t n;
	int cpu; /* -1: not pinned */
	int rc;
};

static void *
close_race_post(void *arg)
{
	struct close_race *r = arg;
	proc_pin_self(r->cpu);
	if (r->cpu >= 0) {
		struct sched_param sp = { 0 };
		pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
	}
	r->rc = r->f->ops->read(r->ep, r->rds, r->n);
	return NULL;
}

struct busy {
	struct fx *f;
	struct kvn_tp_ep *ep;
	int cpu, hog_cpu;
	atomic_bool stop;
	size_t reads;
};

static void *
busy_reader(void *arg)
{
	struct busy *b = arg;
	proc_pin_self(b->cpu);
	char err[256];
	while (!atomic_load(&b->stop)) {
		struct kvn_read rd = rd_make(b->f, REGION - MIB, 0, 64 * 1024);
		if (kvn_transport_read_sync(b->f->ops, b->ep, &rd, 1, err, sizeof(err)) == 0)
			b->reads++;
	}
	return NULL;
}

static void *
hog(void *arg)
{
	struct busy *b = arg;
	proc_pin_self(b->hog_cpu);
	while (!atomic_load(&b->stop))
		;
	return NULL;
}

static void
t_close_races_reads(const char *name)
{
	enum { N = 64, LEN = 32 * 1024 };
	/* The squeeze (pinning, a spinner, an idle-priority poster) opens the window of the tcp
	 * transport's close race it was written for. Elsewhere — verbs runs under emulation in
	 * the rxe VM, where a busy-polling progress thread beside the spinner would starve the
	 * poster for minutes — the same checks run plainly, fewer times. */
	const bool squeeze = !strcmp(name, "tcp");
	const int ITER = squeeze ? 150 : 20;
	/* Two CPUs we may run on: the progress threads, the spinner and the poster share the
	 * first; the closer and the second endpoint's reader use the second. */
	cpu_set_t all;
	int cpus[2] = { -1, -1 }, ncpu = 0;
	CPU_ZERO(&all);
	pthread_getaffinity_np(pthread_self(), sizeof(all), &all);
	for (int c = 0; squeeze && c < CPU_SETSIZE && ncpu < 2; c++)
		if (CPU_ISSET(c, &all))
			cpus[ncpu++] = c;
	if (ncpu < 2)
		cpus[0] = cpus[1] = -1;
	proc_pin_self(cpus[0]);
	struct fx f;
	fx_setup(&f, name);
	proc_pin_self(cpus[1]);
	char err[256] = "";
	struct busy b = { .f = &f, .ep = f.ep, .cpu = cpus[1], .hog_cpu = cpus[0] };
	pthread_t bt, ht;
	cr_assert_eq(pthread_create(&bt, NULL, busy_reader, &b), 0);
	if (cpus[0] >= 0)
		cr_assert_eq(pthread_create(&ht, NULL, hog, &b), 0);
	struct kvn_read rds[N];
	size_t cancelled = 0;
	for (int it = 0; it < ITER; it++) {
		struct kvn_tp_ep *ep;
		cr_assert_eq(f.ops->connect(f.reader, f.bound, 0, &ep, err, sizeof(err)), 0,
			     "iteration %d: connect %s: %s", it, f.bound, err);
		struct waiter w;
		waiter_init(&w, N);
		for (size_t i = 0; i < N; i++) {
			rds[i] = rd_make(&f, i * LEN, (uint64_t)it * 4096 + i * LEN, LEN);
			rds[i].done = waiter_cb;
			rds[i].ctx = &w;
		}
		struct close_race r = { .f = &f, .ep = ep, .rds = rds, .n = N, .cpu = cpus[0] };
		pthread_t pt;
		cr_assert_eq(pthread_create(&pt, NULL, close_race_post, &r), 0);
		cr_assert_lt(waiter_wait(&w, N - 1, DEADLINE_MS), (size_t)N,
			     "iteration %d: no read completed", it);
		f.ops->ep_close(ep);
		pthread_mutex_lock(&w.mu);
		size_t left = w.left, failed = w.failed;
		pthread_mutex_unlock(&w.mu);
		cr_assert_eq(left, 0, "iteration %d: %zu callbacks had not run when ep_close "
			     "returned", it, left);
		cancelled += failed;
		pthread_join(pt, NULL);
		cr_assert_eq(r.rc, 0, "iteration %d: posting failed", it);
		for (size_t i = 0; i < N; i++)
			if (rds[i].status == 0)
				expect_pattern(rds[i].local, rds[i].remote_addr - f.desc.addr,
					       rds[i].len);
	}
	atomic_store(&b.stop, true);
	pthread_join(bt, NULL);
	if (cpus[0] >= 0)
		pthread_join(ht, NULL);
	pthread_setaffinity_np(pthread_self(), sizeof(all), &all);
	cr_assert_gt(b.reads, 0, "the second endpoint never completed a read");
	cr_log_info("%s: %zu of %d reads were cut by the close", name, cancelled, ITER * N);
	fx_teardown(&f);
}

/* A closed port on the test host: refused at once, with a message naming it. And a port that
 * accepts but never answers: the connect gives up after its timeout. */
static void
t_unreachable(const char *name)
{
	const struct kvn_transport_ops *ops;
	struct kvn_transport *tp;
	open_impl(name, &ops, &tp);
	/* Bound but not listening: nobody else can take the port while we hold it. */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET };
	inet_pton(AF_INET, test_host(), &sa.sin_addr);
	socklen_t l = sizeof(sa);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	getsockname(fd, (struct sockaddr *)&sa, &l);
	char addr[64], err[512] = "";
	snprintf(addr, sizeof(addr), "%s:%u", test_host(), ntohs(sa.sin_port));
	struct kvn_tp_ep *ep = NULL;
	int rc = ops->connect(tp, addr, 2000, &ep, err, sizeof(err));
	cr_assert_lt(rc, 0, "connect to closed port %s succeeded", addr);
	cr_assert_null(ep);
	cr_assert(strstr(err, addr), "the error \"%s\" does not name %s", err, addr);

	/* Listening, but nobody behind it ever answers. */
	cr_assert_eq(listen(fd, 4), 0);
	time_t t0 = time(NULL);
	rc = ops->connect(tp, addr, 500, &ep, err, sizeof(err));
	cr_assert_lt(rc, 0, "connect to a silent listener %s succeeded", addr);
	cr_assert(strstr(err, addr), "the error \"%s\" does not name %s", err, addr);
	cr_assert_lt(time(NULL) - t0, 60, "connect ignored its 500 ms timeout");
	close(fd);
	ops->close(tp);
}

/* ---------------------------------------------------------------------------------------------
 * auth_token on data connections
 * ------------------------------------------------------------------------------------------- */

/* A reader instance with its own token and a registered destination. */
struct tok_reader {
	struct kvn_transport *tp;
	char *dst;
	struct kvn_tp_mr *mr;
};

static void
tok_reader_open(struct fx *f, struct tok_reader *r, const char *token)
{
	char err[256] = "";
	struct kvn_transport_cfg cfg = {KVN_TRANSPORT_CFG_INIT, .gid_index = -1,
					.timeout_ms = TIMEOUT_MS, .rdma_device = test_device()};
	/* A copy that dies before the instance does: open must keep only what it needs. */
	char *copy = token ? strdup(token) : NULL;
	cfg.auth_token = copy;
	cr_assert_eq(f->ops->open(&cfg, &r->tp, err, sizeof(err)), 0, "%s", err);
	if (copy)
		memset(copy, 'x', strlen(copy));
	free(copy);
	r->dst = xalloc(MIB);
	struct kvn_mem_desc d;
	cr_assert_eq(f->ops->reg_mem(r->tp, r->dst, MIB, KVN_MEM_HOST, &r->mr, &d, err,
				     sizeof(err)),
		     0, "%s", err);
}

static void
tok_reader_close(struct fx *f, struct tok_reader *r)
{
	f->ops->dereg(r->mr);
	f->ops->close(r->tp);
	free(r->dst);
}

/* Connects r to the owner and reads 64 KiB at offset 4321: 0 with the pattern, else the
 * connect's error (then no endpoint is left behind). */
static int
tok_read(struct fx *f, struct tok_reader *r, char *err, size_t errlen)
{
	struct kvn_tp_ep *ep = NULL;
	int rc = f->ops->connect(r->tp, f->bound, 0, &ep, err, errlen);
	if (rc < 0) {
		cr_assert_null(ep, "a refused connect left an endpoint");
		return rc;
	}
	memset(r->dst, 0, 65536);
	struct kvn_read rd = { .local = r->dst, .local_mr = r->mr,
			       .remote_addr = f->desc.addr + 4321, .rkey = f->desc.rkey,
			       .len = 65536 };
	rc = kvn_transport_read_sync(f->ops, ep, &rd, 1, err, errlen);
	f->ops->ep_close(ep);
	if (rc == 0)
		expect_pattern(r->dst, 4321, 65536);
	return rc;
}

static void
expect_token_refused(struct fx *f, struct tok_reader *r, const char *what)
{
	char err[512] = "";
	int rc = tok_read(f, r, err, sizeof(err));
	cr_assert_eq(rc, -EACCES, "a reader with %s: got %d (%s), want -EACCES at connect", what,
		     rc, err);
	cr_assert(strstr(err, f->bound) && strstr(err, "auth_token"),
		  "a reader with %s: the message \"%s\" must name the peer %s and the auth_token",
		  what, err, f->bound);
	/* Refused readers hurt nobody: the owner's own endpoint keeps being served. */
	expect_serving(f, f->ep);
}

/* The owner holds a token: a reader with the same token reads the exact bytes, readers with
 * another token or none are refused at connect with -EACCES (even knowing the rkey and address),
 * and the good reader is served throughout. An owner without a token serves only readers
 * without one. */
static void
t_auth_token(const char *name)
{
	struct fx f;
	memset(&f, 0, sizeof(f));
	open_impl(name, &f.ops, &f.owner);
	f.ops->close(f.owner); /* reopened with the token */
	char err[512] = "", addr[160];
	char *token = strdup("cluster-secret-1");
	cr_assert_eq(
	    f.ops->open(&(struct kvn_transport_cfg){KVN_TRANSPORT_CFG_INIT, .gid_index = -1,
						    .timeout_ms = TIMEOUT_MS, .auth_token = token,
						    .rdma_device = test_device()},
			&f.owner, err, sizeof(err)),
	    0, "%s", err);
	free(token);
	f.region = xalloc(REGION);
	for (size_t i = 0; i < REGION; i++)
		f.region[i] = (char)bench_pattern(i);
	cr_assert_eq(f.ops->reg_mem(f.owner, f.region, REGION, KVN_MEM_HOST, &f.region_mr, &f.desc,
				    err, sizeof(err)),
		     0, "%s", err);
	snprintf(addr, sizeof(addr), "%s:0", test_host());
	cr_assert_eq(f.ops->listen(f.owner, addr, f.bound, sizeof(f.bound), err, sizeof(err)), 0,
		     "listen %s: %s", addr, err);
	/* The fixture's own reader holds the right token: f.ep is the good reader. */
	f.dst = xalloc(REGION);
	struct kvn_mem_desc d;
	cr_assert_eq(f.ops->open(
			 &(struct kvn_transport_cfg){
			     KVN_TRANSPORT_CFG_INIT, .gid_index = -1, .timeout_ms = TIMEOUT_MS,
			     .auth_token = "cluster-secret-1", .rdma_device = test_device()},
			 &f.reader, err, sizeof(err)),
		     0, "%s", err);
	cr_assert_eq(f.ops->reg_mem(f.reader, f.dst, REGION, KVN_MEM_HOST, &f.dst_mr, &d, err,
				    sizeof(err)),
		     0, "%s", err);
	cr_assert_eq(f.ops->connect(f.reader, f.bound, 0, &f.ep, err, sizeof(err)), 0,
		     "the right token was refused: %s", err);
	expect_serving(&f, f.ep);

	struct tok_reader same, other, prefix, none;
	tok_reader_open(&f, &same, "cluster-secret-1");
	tok_reader_open(&f, &other, "cluster-secret-2");
	tok_reader_open(&f, &prefix, "cluster-secret-");
	tok_reader_open(&f, &none, NULL);
	cr_assert_eq(tok_read(&f, &same, err, sizeof(err)), 0, "the same token: %s", err);
	expect_token_refused(&f, &other, "another token");
	expect_token_refused(&f, &prefix, "a prefix of the token");
	expect_token_refused(&f, &none, "no token");
	/* Refusals leave no state behind: the same reader is let in again. */
	cr_assert_eq(tok_read(&f, &same, err, sizeof(err)), 0, "the same token again: %s", err);

	/* An owner without a token serves readers without one; a reader with a token does not read
	 * from it: the owner cannot prove the token, so it may be anyone at that address. */
	struct fx open_f;
	fx_setup(&open_f, name);
	struct kvn_tp_ep *ep = NULL;
	int rc = f.ops->connect(other.tp, open_f.bound, 0, &ep, err, sizeof(err));
	cr_assert_eq(rc, -EACCES, "a reader with a token connected to a token-less owner: %d %s",
		     rc, err);
	cr_assert(strstr(err, open_f.bound) && strstr(err, "auth_token"), "message: %s", err);
	expect_serving(&open_f, open_f.ep); /* its reader has no token */
	fx_teardown(&open_f);

	tok_reader_close(&f, &same);
	tok_reader_close(&f, &other);
	tok_reader_close(&f, &prefix);
	tok_reader_close(&f, &none);
	fx_teardown(&f);
}

/* ---------------------------------------------------------------------------------------------
 * The table: one line per implementation.
 * ------------------------------------------------------------------------------------------- */

#define CONFORMANCE(impl)                                                                          \
	Test(impl, reads_every_size_from_one_byte_past_the_max_message) { t_sizes(#impl); }        \
	Test(impl, ten_thousand_reads_in_flight_on_four_endpoints_all_verified)                    \
	{                                                                                          \
		t_many_in_flight(#impl);                                                           \
	}                                                                                          \
	Test(impl, forged_rkey_is_refused_and_the_owner_keeps_serving) { t_forged_rkey(#impl); }   \
	Test(impl, out_of_bounds_ranges_are_refused_and_the_owner_keeps_serving)                   \
	{                                                                                          \
		t_out_of_bounds(#impl);                                                            \
	}                                                                                          \
	Test(impl, deregistered_and_stale_rkeys_are_refused) { t_deregistered(#impl); }            \
	Test(impl, zero_length_read_is_refused_and_the_owner_keeps_serving)                        \
	{                                                                                          \
		t_zero_length(#impl);                                                              \
	}                                                                                          \
	Test(impl, refused_reads_in_a_batch_fail_alone) { t_mixed_batch(#impl); }                  \
	Test(impl, destination_outside_the_local_registration_is_refused)                          \
	{                                                                                          \
		t_local_unregistered(#impl);                                                       \
	}                                                                                          \
	Test(impl, peer_killed_mid_transfer_fails_outstanding_reads_and_a_restarted_peer_serves)  \
	{                                                                                          \
		t_peer_killed(#impl);                                                              \
	}                                                                                          \
	Test(impl, unreachable_peer_gives_a_clear_connect_error_within_the_timeout)                \
	{                                                                                          \
		t_unreachable(#impl);                                                              \
	}                                                                                          \
	Test(impl, closing_an_endpoint_while_its_reads_stream_runs_every_callback_once)            \
	{                                                                                          \
		t_close_races_reads(#impl);                                                        \
	}                                                                                          \
	Test(impl, readers_without_the_owners_auth_token_are_refused_at_connect)                   \
	{                                                                                          \
		t_auth_token(#impl);                                                               \
	}

CONFORMANCE(tcp)
CONFORMANCE(verbs) /* skipped unless an RDMA device is active (the rxe VM) */
