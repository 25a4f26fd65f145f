/* Rails (rdma/rails.h): reads sliced over two rails, every byte checked, a rail lost in the
 * middle of a transfer, every rail lost, a rail that comes back, and the error model kept.
 *
 * Here the rails are two tcp listeners on loopback. Inside the rxe VM scripts/verbs-checks runs
 * the same cases on verbs over rxe0 and rxe1: KVN_TEST_RAILS_TRANSPORT=verbs,
 * KVN_TEST_RAILS_DEVICES="rxe0,rxe1", KVN_TEST_RAILS_HOSTS="10.77.0.1,10.77.1.1", and
 * KVN_TEST_RAIL_KILL, the command that takes rail 1 away mid-transfer ("rdma link delete rxe1";
 * KVN_TEST_RAIL_RESTORE puts it back). Without KVN_TEST_RAIL_KILL the owner's rail-1 instance is
 * closed instead. */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench/bench.h"
#include "core/clock.h"
#include "rdma/rails.h"

#define MIB	   (1024 * 1024)
#define REGION	   (32 * MIB)
#define TIMEOUT_MS 5000
#define RETRY_MS   300
#define DEADLINE_S 120

static const char *
env_or(const char *name, const char *dflt)
{
	const char *v = getenv(name);
	return v && *v ? v : dflt;
}

/* The i-th comma-separated entry of list into out; NULL when list has none there. */
static const char *
nth(const char *list, int i, char *out, size_t cap)
{
	if (!list)
		return NULL;
	for (; i > 0; i--) {
		list = strchr(list, ',');
		if (!list)
			return NULL;
		list++;
	}
	size_t n = strcspn(list, ",");
	snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), list);
	return out;
}

struct side {
	struct kvn_rails *rails;
	struct kvn_rails_mr *mr;
	struct kvn_mem_desc desc[KVN_RAILS_MAX];
	char *mem;
};

/* The owner is two plain instances of the transport (so a test can close one of them), the
 * same memory registered on each; the reader is the rails under test. */
struct owner {
	struct kvn_transport *tp[2];
	struct kvn_tp_mr *mr[2];
	struct kvn_mem_desc desc[2];
	char addr[2][96];
	char *mem;
};

struct fx {
	const struct kvn_transport_ops *ops;
	struct owner owner;
	struct side reader;
	struct kvn_rails_ep *ep;
};

static struct fx F;

static void
side_open(struct side *s, const struct kvn_transport_ops *ops, const char *const *listen,
	  size_t nrails)
{
	char err[512] = "", dev[2][64];
	const char *devs = getenv("KVN_TEST_RAILS_DEVICES");
	struct kvn_transport_cfg tc = {KVN_TRANSPORT_CFG_INIT, .gid_index = -1,
				       .timeout_ms = TIMEOUT_MS};
	struct kvn_rails_cfg rc = {.ops = ops, .tcfg = &tc, .nrails = nrails, .retry_ms = RETRY_MS};
	for (size_t i = 0; i < nrails; i++)
		rc.rail[i] =
		    (struct kvn_rail_spec){.device = nth(devs, (int)i, dev[i], sizeof(dev[i])),
					   .listen = listen ? listen[i] : NULL,
					   .numa_node = -1};
	cr_assert_eq(kvn_rails_open(&rc, &s->rails, err, sizeof(err)), 0, "rails: %s", err);
	cr_assert_eq(posix_memalign((void **)&s->mem, 4096, REGION), 0);
	cr_assert_eq(
	    kvn_rails_reg(s->rails, s->mem, REGION, NULL, &s->mr, s->desc, NULL, err, sizeof(err)),
	    0, "reg: %s", err);
}

/* Rail i of the owner: an instance with the region registered, listening on listen (NULL: not
 * yet). */
static void
owner_rail(size_t i, const char *listen)
{
	char err[512] = "", dev[64];
	struct kvn_transport_cfg tc = {
	    KVN_TRANSPORT_CFG_INIT, .gid_index = -1, .timeout_ms = TIMEOUT_MS,
	    .rdma_device = nth(getenv("KVN_TEST_RAILS_DEVICES"), (int)i, dev, sizeof(dev))};
	struct owner *o = &F.owner;
	cr_assert_eq(F.ops->open(&tc, &o->tp[i], err, sizeof(err)), 0, "owner rail %zu: %s", i,
		     err);
	cr_assert_eq(F.ops->reg_mem(o->tp[i], o->mem, REGION, KVN_MEM_HOST, &o->mr[i], &o->desc[i],
				    err, sizeof(err)),
		     0, "owner rail %zu: %s", i, err);
	if (listen)
		cr_assert_eq(F.ops->listen(o->tp[i], listen, o->addr[i], sizeof(o->addr[i]), err,
					   sizeof(err)),
			     0, "owner rail %zu on %s: %s", i, listen, err);
}

static void
owner_close_rail(size_t i)
{
	if (!F.owner.tp[i])
		return;
	F.ops->dereg(F.owner.mr[i]);
	F.ops->close(F.owner.tp[i]);
	F.owner.tp[i] = NULL;
}

/* The owner's rails as a reader learns them (its addresses and its one region per rail). */
static struct kvn_rails_peer
owner_peer(void)
{
	struct kvn_rails_peer p = {.nrails = 2, .nregions = 1, .desc = F.owner.desc};
	for (size_t i = 0; i < 2; i++)
		p.addr[i] = F.owner.addr[i];
	return p;
}

static void
transport_or_skip(void)
{
	char err[512] = "";
	const char *tname = env_or("KVN_TEST_RAILS_TRANSPORT", "tcp");
	F.ops = kvn_transport_by_name(tname, NULL, err, sizeof(err));
	if (!F.ops)
		cr_skip_test("transport %s: %s", tname, err);
	struct kvn_transport_cfg probe = {KVN_TRANSPORT_CFG_INIT, .gid_index = -1};
	if (F.ops->probe(&probe, err, sizeof(err)) < 0)
		cr_skip_test("transport %s cannot run here: %s", tname, err);
}

static void
owner_fill(void)
{
	cr_assert_eq(posix_memalign((void **)&F.owner.mem, 4096, REGION), 0);
	for (size_t i = 0; i < REGION; i++)
		F.owner.mem[i] = (char)bench_pattern(i);
}

static void
fx_open(void)
{
	memset(&F, 0, sizeof(F));
	transport_or_skip();
	owner_fill();
	for (size_t i = 0; i < 2; i++) {
		char h[64], listen[96];
		snprintf(listen, sizeof(listen), "%s:0",
			 nth(getenv("KVN_TEST_RAILS_HOSTS"), (int)i, h, sizeof(h)) ? h
										   : "127.0.0.1");
		owner_rail(i, listen);
	}
	side_open(&F.reader, F.ops, NULL, 2);
}

static void
fx_connect(void)
{
	char err[512] = "";
	struct kvn_rails_peer p = owner_peer();
	cr_assert_eq(kvn_rails_connect(F.reader.rails, &p, 0, &F.ep, err, sizeof(err)), 0,
		     "connect: %s", err);
}

static void
fx_close(void)
{
	kvn_rails_ep_close(F.ep);
	kvn_rails_dereg(F.reader.mr);
	kvn_rails_close(F.reader.rails);
	free(F.reader.mem);
	for (size_t i = 0; i < 2; i++)
		owner_close_rail(i);
	free(F.owner.mem);
	const char *restore = getenv("KVN_TEST_RAIL_RESTORE");
	if (restore && getenv("KVN_TEST_RAIL_KILL") && system(restore) != 0)
		fprintf(stderr, "test_rails: '%s' failed\n", restore);
}

/* ---------------------------------------------------------------------------------------------
 * Reads and their completions (no assertion here: the rail-loss case reads from a thread)
 * ------------------------------------------------------------------------------------------- */

struct waiter {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	size_t left, failed, bad_status;
	int first;
	char msg[512];
};

static void
waiter_cb(struct kvn_read *rd, int status, const char *msg)
{
	struct waiter *w = rd->ctx;
	pthread_mutex_lock(&w->mu);
	w->bad_status += rd->status != status;
	if (status && !w->failed++) {
		w->first = status;
		snprintf(w->msg, sizeof(w->msg), "%s", msg ? msg : "(no message)");
	}
	if (--w->left == 0)
		pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

/* Posts n reads of len bytes at remote offsets off[i] (into the reader's memory at the same
 * offsets) and waits for them all: how many failed (the first one's status in *first), or
 * SIZE_MAX when some never completed within the deadline or a callback's status was wrong. */
static size_t
read_all(const uint64_t *off, size_t n, uint64_t len, uint32_t rkey, int *first)
{
	struct waiter w = {.left = n};
	pthread_mutex_init(&w.mu, NULL);
	pthread_cond_init(&w.cv, NULL);
	struct kvn_read rd[16];
	if (n > 16)
		return SIZE_MAX;
	for (size_t i = 0; i < n; i++)
		rd[i] = (struct kvn_read){.local = F.reader.mem + off[i],
					  .local_mr = kvn_rails_mr_tp(F.reader.mr, 0),
					  .remote_addr = F.owner.desc[0].addr + off[i],
					  .rkey = rkey,
					  .len = len,
					  .done = waiter_cb,
					  .ctx = &w};
	if (kvn_rails_read(F.ep, rd, n) != 0)
		return SIZE_MAX;
	uint64_t t0 = kvn_now_ns();
	pthread_mutex_lock(&w.mu);
	while (w.left && kvn_now_ns() - t0 < DEADLINE_S * 1000000000ull) {
		struct timespec dl;
		clock_gettime(CLOCK_REALTIME, &dl);
		dl.tv_sec += 1;
		pthread_cond_timedwait(&w.cv, &w.mu, &dl);
	}
	size_t left = w.left;
	pthread_mutex_unlock(&w.mu);
	if (left) /* the reads still point at rd: this worker cannot go on */
		abort();
	if (first)
		*first = w.first;
	return w.bad_status ? SIZE_MAX : w.failed;
}

/* The first read of n whose bytes are not the owner's, -1 when all are right. */
static long
wrong_bytes(const uint64_t *off, size_t n, uint64_t len)
{
	for (size_t i = 0; i < n; i++)
		for (uint64_t j = 0; j < len; j++)
			if ((uint8_t)F.reader.mem[off[i] + j] != bench_pattern(off[i] + j))
				return (long)i;
	return -1;
}

static void
expect_read(const uint64_t *off, size_t n, uint64_t len)
{
	int first = 0;
	size_t failed = read_all(off, n, len, F.owner.desc[0].rkey, &first);
	cr_assert_eq(failed, 0, "%zu of %zu reads failed (first %d)", failed, n, first);
	long bad = wrong_bytes(off, n, len);
	cr_assert_eq(bad, -1, "read %ld (offset %" PRIu64 ") brought wrong bytes", bad,
		     bad >= 0 ? off[bad] : 0);
}

static void
rail_stats(struct kvn_rail_stats *st)
{
	cr_assert_eq(kvn_rails_stats(F.reader.rails, st, KVN_RAILS_MAX), 2);
}

/* ---------------------------------------------------------------------------------------------
 * Cases
 * ------------------------------------------------------------------------------------------- */

TestSuite(rails, .timeout = 240);

Test(rails, a_lone_chunk_is_sliced_over_both_rails_and_every_byte_arrives)
{
	fx_open();
	fx_connect();
	cr_assert_eq(kvn_rails_ep_rails(F.ep), 2);
	for (size_t i = 0; i < 8; i++) {
		uint64_t off = i * 2 * MIB;
		expect_read(&off, 1, 2 * MIB);
	}
	struct kvn_rail_stats st[KVN_RAILS_MAX];
	rail_stats(st);
	/* 2 MiB alone over two rails at a 64 KiB minimum: a slice on each, each rail moves half */
	cr_assert_eq(st[0].bytes, 8 * MIB, "rail 0 moved %" PRIu64, st[0].bytes);
	cr_assert_eq(st[1].bytes, 8 * MIB, "rail 1 moved %" PRIu64, st[1].bytes);
	cr_assert_eq(st[0].slices + st[1].slices, 16);
	cr_assert_eq(st[0].errors + st[1].errors, 0);
	fx_close();
}

Test(rails, under_load_whole_reads_go_to_the_least_loaded_rail)
{
	fx_open();
	fx_connect();
	uint64_t off[16];
	for (size_t i = 0; i < 16; i++)
		off[i] = i * 2 * MIB;
	expect_read(off, 16, 2 * MIB);
	struct kvn_rail_stats st[KVN_RAILS_MAX];
	rail_stats(st);
	/* the first two are sliced (two slices a rail then queued), the other 14 go whole,
	 * each to the rail with fewer queued: 2 + 2 + 14 slices, half the bytes on each */
	cr_assert_eq(st[0].slices + st[1].slices, 18, "%" PRIu64 " slices",
		     st[0].slices + st[1].slices);
	cr_assert_eq(st[0].bytes, 16 * MIB, "rail 0 moved %" PRIu64, st[0].bytes);
	cr_assert_eq(st[1].bytes, 16 * MIB, "rail 1 moved %" PRIu64, st[1].bytes);
	fx_close();
}

Test(rails, a_read_below_two_slices_stays_on_one_rail)
{
	fx_open();
	fx_connect();
	uint64_t off[8];
	for (size_t i = 0; i < 8; i++)
		off[i] = 4096 + i * MIB;
	expect_read(off, 8, 100 << 10);
	struct kvn_rail_stats st[KVN_RAILS_MAX];
	rail_stats(st);
	cr_assert_eq(st[0].slices + st[1].slices, 8, "one slice per read");
	cr_assert_gt(st[0].slices, 0, "reads rotate over the rails");
	cr_assert_gt(st[1].slices, 0, "reads rotate over the rails");
	fx_close();
}

Test(rails, a_refused_read_fails_alone_and_takes_no_rail_out)
{
	fx_open();
	fx_connect();
	uint64_t off = 0;
	int first = 0;
	cr_assert_eq(read_all(&off, 1, MIB, F.owner.desc[0].rkey ^ 0x5a5a5a5a, &first), 1);
	cr_assert_eq(first, -EACCES, "got %d", first);
	struct kvn_rail_stats st[KVN_RAILS_MAX];
	rail_stats(st);
	cr_assert_eq(st[0].downs + st[1].downs, 0, "a refusal is not a broken rail");
	expect_read(&off, 1, MIB);
	fx_close();
}

struct loop {
	_Atomic bool stop;
	_Atomic size_t rounds, failed, wrong;
	_Atomic int first;
};

static void *
read_loop(void *arg)
{
	struct loop *lp = arg;
	uint64_t off[8];
	for (size_t i = 0; i < 8; i++)
		off[i] = i * 4 * MIB;
	while (!atomic_load(&lp->stop)) {
		memset(F.reader.mem, 0, REGION);
		int first = 0;
		size_t f = read_all(off, 8, 4 * MIB, F.owner.desc[0].rkey, &first);
		if (f) {
			atomic_fetch_add(&lp->failed, f == SIZE_MAX ? 1 : f);
			atomic_store(&lp->first, first);
		} else if (wrong_bytes(off, 8, 4 * MIB) >= 0) {
			atomic_fetch_add(&lp->wrong, 1);
		}
		atomic_fetch_add(&lp->rounds, 1);
	}
	return NULL;
}

static void
wait_rounds(struct loop *lp, size_t n)
{
	uint64_t t0 = kvn_now_ns();
	while (atomic_load(&lp->rounds) < n) {
		usleep(1000);
		cr_assert(kvn_now_ns() - t0 < DEADLINE_S * 1000000000ull, "reads stopped");
	}
}

Test(rails, a_rail_lost_mid_transfer_leaves_every_read_complete_on_the_other)
{
	fx_open();
	fx_connect();
	struct loop lp = {0};
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, read_loop, &lp), 0);
	wait_rounds(&lp, 3);
	const char *kill = getenv("KVN_TEST_RAIL_KILL");
	if (kill) {
		/* `rdma link delete` returns once every holder let go of the device: this process's
		 * four instances, two of them on it, while the reads go on. */
		uint64_t t0 = kvn_now_ns();
		cr_assert_eq(system(kill), 0, "'%s' failed", kill);
		cr_log_info("'%s' returned after %.2f s", kill, (double)(kvn_now_ns() - t0) / 1e9);
	} else /* the owner's rail 1 goes: its connection resets under the reads in flight */
		owner_close_rail(1);
	wait_rounds(&lp, atomic_load(&lp.rounds) + 10);
	atomic_store(&lp.stop, true);
	pthread_join(th, NULL);
	cr_assert_eq(atomic_load(&lp.failed), 0, "%zu reads failed (first %d) with a rail left",
		     atomic_load(&lp.failed), atomic_load(&lp.first));
	cr_assert_eq(atomic_load(&lp.wrong), 0, "%zu rounds brought wrong bytes",
		     atomic_load(&lp.wrong));
	struct kvn_rail_stats st[KVN_RAILS_MAX];
	rail_stats(st);
	cr_assert_geq(st[1].downs, 1, "rail 1 was never taken out");
	cr_log_info("%zu rounds; rail 1: %" PRIu64 " slices, %" PRIu64 " errors, %" PRIu64
		    " reissued",
		    atomic_load(&lp.rounds), st[1].slices, st[1].errors, st[1].reissued);
	fx_close();
}

Test(rails, reads_fail_only_when_no_rail_is_left)
{
	fx_open();
	fx_connect();
	owner_close_rail(0);
	owner_close_rail(1);
	uint64_t off[4] = {0, MIB, 2 * MIB, 3 * MIB};
	int first = 0;
	cr_assert_eq(read_all(off, 4, MIB, F.owner.desc[0].rkey, &first), 4);
	cr_assert(first == -ECONNRESET || first == -ENOTCONN || first == -ECONNREFUSED ||
		      first == -ETIMEDOUT || first == -EIO,
		  "got %d", first);
	fx_close();
}

/* A loopback port nothing listens on yet (bound, read and let go). */
static void
free_port(char *out, size_t cap)
{
	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t l = sizeof(a);
	cr_assert_eq(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(getsockname(s, (struct sockaddr *)&a, &l), 0);
	snprintf(out, cap, "127.0.0.1:%u", ntohs(a.sin_port));
	close(s);
}

Test(rails, a_rail_that_was_out_is_used_again_after_its_retry)
{
	if (getenv("KVN_TEST_RAILS_HOSTS"))
		cr_skip_test("loopback tcp only: rail 1 listens late on a port chosen here");
	memset(&F, 0, sizeof(F));
	transport_or_skip();
	owner_fill();
	char late[64], err[512] = "";
	free_port(late, sizeof(late));
	owner_rail(0, "127.0.0.1:0");
	owner_rail(1, NULL); /* registered, not listening yet */
	snprintf(F.owner.addr[1], sizeof(F.owner.addr[1]), "%s", late);
	side_open(&F.reader, F.ops, NULL, 2);
	fx_connect(); /* rail 1 is refused: out until its retry */
	uint64_t off[4] = {0, 2 * MIB, 4 * MIB, 6 * MIB};
	expect_read(off, 4, 2 * MIB);
	struct kvn_rail_stats st[KVN_RAILS_MAX];
	rail_stats(st);
	cr_assert_eq(st[1].slices, 0, "rail 1 was out");
	char bound[96];
	cr_assert_eq(F.ops->listen(F.owner.tp[1], late, bound, sizeof(bound), err, sizeof(err)), 0,
		     "%s", err);
	uint64_t t0 = kvn_now_ns();
	do {
		usleep(50 * 1000);
		memset(F.reader.mem, 0, 8 * MIB);
		expect_read(off, 4, 2 * MIB);
		rail_stats(st);
		cr_assert(kvn_now_ns() - t0 < DEADLINE_S * 1000000000ull, "rail 1 never came back");
	} while (st[1].slices == 0);
	fx_close();
}

/* The region blob a node joins with: what a reader decodes is what the owner's rails are. */
Test(rails, the_region_blob_carries_every_rail_and_region_and_a_plain_one_is_one_rail)
{
	fx_open();
	struct kvn_mem_desc d[2 * 2];
	memcpy(d, F.reader.desc, 2 * sizeof(d[0]));
	d[2] = (struct kvn_mem_desc){.addr = 0x7e0000000000, .len = 1 << 28, .rkey = 0x1111};
	d[3] = (struct kvn_mem_desc){.addr = 0x7e0000000000, .len = 1 << 28, .rkey = 0x2222};
	uint8_t blob[1024];
	int n = kvn_rails_blob_encode(F.reader.rails, d, 2, blob, sizeof(blob));
	cr_assert_gt(n, 24, "encode: %d", n);
	cr_assert_eq(kvn_rails_blob_encode(F.reader.rails, d, 2, blob, (size_t)n - 1), -ENOSPC);
	struct kvn_rails_peer_buf *b = malloc(sizeof(*b));
	cr_assert_eq(kvn_rails_blob_decode(blob, (size_t)n, "ignored:1", b), 0);
	cr_assert_eq(b->p.nrails, 2);
	cr_assert_eq(b->p.nregions, 2);
	for (size_t i = 0; i < 4; i++) {
		cr_assert_eq(b->p.desc[i].addr, d[i].addr);
		cr_assert_eq(b->p.desc[i].len, d[i].len);
		cr_assert_eq(b->p.desc[i].rkey, d[i].rkey);
	}
	cr_assert_str_eq(b->p.addr[0], kvn_rails_addr(F.reader.rails, 0));
	/* the first 24 bytes alone (a node before rails): one rail at the data address */
	cr_assert_eq(kvn_rails_blob_decode(blob, 24, "10.0.0.5:7000", b), 0);
	cr_assert_eq(b->p.nrails, 1);
	cr_assert_eq(b->p.nregions, 0);
	cr_assert_str_eq(b->p.addr[0], "10.0.0.5:7000");
	/* cut short anywhere past the magic: refused */
	for (int cut = 33; cut < n; cut += 7)
		cr_assert_eq(kvn_rails_blob_decode(blob, (size_t)cut, "x:1", b), -EPROTO, "cut %d",
			     cut);
	free(b);
	fx_close();
}
