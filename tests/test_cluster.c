/* The cluster on loopback: a `kvnode scheduler` and `kvnode serve` nodes as separate processes.
 * A chunk put on one node is read by another with a one-sided READ; a SIGKILLed node's chunks
 * stop being returned; a restarted scheduler gets its directory back; reads racing eviction and
 * slot reuse never return wrong bytes. Deadlines are generous; timings are printed, not
 * asserted. No per-test .timeout: Criterion 2.4 leaks its timer when timed tests run in
 * parallel, which fails the ASan run; every wait here has its own deadline instead. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "kvnode/client.h"
#include "kvnode/transport.h"
#include "core/netaddr.h"
#include "core/pool.h"
#include "core/xxh.h"
#include "core/auth.h"
#include "tests/helpers/cluster_env.h"
#include "tests/helpers/expo.h"

#define VAL 8192

static double
now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

struct fixture {
	struct sched s;
	char dir[256];
	struct cnode a, b, c;
};

static void
cluster_up(struct fixture *f, const char *token, const char *a_gb, bool c_promote)
{
	memset(f, 0, sizeof(*f));
	sched_start(&f->s, "127.0.0.1:0", token);
	cr_assert_eq(proc_mkdtemp("cluster", f->dir, sizeof(f->dir)), 0);
	struct cnode_opts o = {.dir = f->dir, .sched = f->s.addr, .token = token};
	o.cpu_gb = a_gb;
	cnode_start(&f->a, "node-a", &o);
	o.cpu_gb = NULL;
	cnode_start(&f->b, "node-b", &o);
	o.no_promote = !c_promote;
	cnode_start(&f->c, "node-c", &o);
}

static void
cluster_down(struct fixture *f)
{
	cnode_stop(&f->a);
	cnode_stop(&f->b);
	cnode_stop(&f->c);
	sched_stop(&f->s);
	proc_rm_tree(f->dir);
}

struct get_ctx {
	struct cnode *n;
	const char *tag;
	unsigned i;
	int want;
};

static bool
get_is(void *arg)
{
	struct get_ctx *g = arg;
	return cnode_get_check(g->n, g->tag, g->i, VAL) == g->want;
}

Test(cluster, a_chunk_put_on_one_node_is_read_by_another_byte_for_byte)
{
	struct fixture f;
	cluster_up(&f, NULL, NULL, true);
	for (unsigned i = 0; i < 16; i++)
		cnode_put(&f.a, "p", i, VAL);
	/* publishing is asynchronous: the first get may come before the directory has it */
	struct get_ctx g = {&f.c, "p", 0, 1};
	cr_assert(proc_wait_for(get_is, &g, DEADLINE), "node-c reads node-a's chunk 0");
	for (unsigned i = 1; i < 16; i++)
		cr_assert_eq(cnode_get_check(&f.c, "p", i, VAL), 1, "chunk %u on node-c", i);
	cr_assert_geq(cnode_tier_stat(&f.c, "peer", "hits"), 16, "the peer tier served them");
	/* promoted: the second read is a local hit, of the slot the READ landed in */
	long long peer_hits = cnode_tier_stat(&f.c, "peer", "hits");
	cr_assert_eq(cnode_stat(&f.c, "peer", "promoted_in_place"), peer_hits,
		     "every peer hit was indexed where it landed, none copied");
	cr_assert_eq(cnode_get_check(&f.c, "p", 3, VAL), 1);
	cr_assert_eq(cnode_tier_stat(&f.c, "peer", "hits"), peer_hits, "promoted into cpu");
	cr_assert_eq(cnode_tier_stat(&f.c, "peer", "errors"), 0);
	/* a key nobody holds is a miss, not an error */
	cr_assert_eq(cnode_get_check(&f.b, "never", 1, VAL), 0);
	cluster_down(&f);
}

/* `kvnode doctor --peers` with node-a's config against the fixture's scheduler; *text gets
 * what it printed (JSON with json). Returns its exit status. */
static int
doctor_peers(struct fixture *f, bool json, char **text)
{
	char out[300];
	snprintf(out, sizeof(out), "%s/doctor.out", f->dir);
	const char *argv[] = {
	    KVN_BINARY_DIR "/kvnode", "doctor", "-c", f->a.cfg, "--peers", "--scheduler", f->s.addr,
	    json ? "--json" : NULL,   NULL};
	struct proc_opts po = {.stdout_path = out};
	int rc = proc_run(argv, &po, 60000);
	*text = proc_read_file(out, NULL);
	cr_assert_not_null(*text, "doctor --peers printed nothing (exit %d)", rc);
	return rc;
}

/* kvnode doctor --peers connects to every member the scheduler lists and READs its pool. */
Test(cluster, doctor_peers_reads_from_every_member_and_names_a_dead_one)
{
	struct fixture f;
	cluster_up(&f, NULL, NULL, true);
	char *text;
	int rc = doctor_peers(&f, true, &text);
	cJSON *j = cJSON_Parse(text);
	cr_assert_not_null(j, "rc %d: %s", rc, text);
	int ok = 0;
	const cJSON *c;
	cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "checks"))
	{
		const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(c, "check"));
		const char *st = cJSON_GetStringValue(cJSON_GetObjectItem(c, "status"));
		const char *what = cJSON_GetStringValue(cJSON_GetObjectItem(c, "what"));
		if (strncmp(name, "peer ", 5))
			continue;
		cr_assert_str_eq(st, "ok", "%s: %s", name, what);
		cr_assert(strstr(what, "over tcp: connected in") && strstr(what, "a READ of 64 B"),
			  "%s", what);
		ok++;
	}
	cr_assert_eq(ok, 3, "peer checks for node-a, node-b, node-c: %s", text);
	cJSON_Delete(j);
	free(text);

	/* a member killed without a goodbye is still listed until it expires: named, failed */
	cnode_kill(&f.b);
	rc = doctor_peers(&f, false, &text);
	const char *line = strstr(text, "peer node-b");
	if (line) { /* else it expired first: nothing to say about it */
		cr_assert(!strncmp(line - 6, "fail  ", 6), "%s", text);
		cr_assert(strstr(line, "cannot connect"), "%s", text);
		cr_assert_eq(rc, 2, "exit %d: %s", rc, text);
	}
	free(text);
	cluster_down(&f);
}

/* The scheduler's log line for node-b's expiry, with the silence it measured. */
static bool
expired(void *arg)
{
	struct fixture *f = arg;
	char path[300];
	snprintf(path, sizeof(path), "%s/sched.err", f->s.dir);
	char *text = proc_read_file(path, NULL);
	bool ok = text && strstr(text, "node node-b (worker") && strstr(text, "expired after");
	free(text);
	return ok;
}

Test(cluster, a_killed_node_expires_and_its_chunks_are_no_longer_returned)
{
	struct fixture f;
	cluster_up(&f, NULL, NULL, false);
	for (unsigned i = 0; i < 8; i++)
		cnode_put(&f.b, "k", i, VAL);
	struct get_ctx g = {&f.c, "k", 0, 1};
	cr_assert(proc_wait_for(get_is, &g, DEADLINE), "node-c reads node-b's chunk first");

	double t0 = now_ms();
	cnode_kill(&f.b);
	cr_assert(proc_wait_for(expired, &f, DEADLINE), "the scheduler expires node-b");
	double dt = now_ms() - t0;
	char path[300];
	snprintf(path, sizeof(path), "%s/sched.err", f.s.dir);
	char *log = proc_read_file(path, NULL);
	const char *p = log ? strstr(log, "expired after ") : NULL;
	cr_log_info(
	    "node-b expired %.0f ms after SIGKILL (heartbeat 100 ms); scheduler says: %.60s", dt,
	    p ? p : "?");
	free(log);

	/* none of node-b's chunks comes back, from the directory or from node-c's cache */
	for (unsigned i = 0; i < 8; i++)
		cr_assert_eq(cnode_get_check(&f.c, "k", i, VAL), 0, "chunk %u of dead node-b", i);
	/* node-a and node-c keep working */
	cnode_put(&f.a, "after", 1, VAL);
	struct get_ctx g2 = {&f.c, "after", 1, 1};
	cr_assert(proc_wait_for(get_is, &g2, DEADLINE), "node-c reads node-a after node-b died");
	cluster_down(&f);
}

static bool
sched_listening(void *arg)
{
	struct sched *s = arg;
	char *text = proc_read_file(s->out, NULL);
	bool ok = text && strstr(text, "scheduler on ");
	free(text);
	return ok;
}

Test(cluster, after_a_scheduler_restart_the_nodes_rejoin_and_the_directory_is_rebuilt)
{
	struct fixture f;
	cluster_up(&f, NULL, NULL, false);
	for (unsigned i = 0; i < 32; i++)
		cnode_put(&f.a, "r", i, VAL);
	struct get_ctx g = {&f.c, "r", 31, 1};
	cr_assert(proc_wait_for(get_is, &g, DEADLINE), "node-c reads node-a before the restart");

	char addr[64];
	snprintf(addr, sizeof(addr), "%s", f.s.addr);
	proc_stop(&f.s.p, SIGKILL, 10000);
	double t0 = now_ms();
	sched_start(&f.s, addr, NULL);
	cr_assert(proc_wait_for(sched_listening, &f.s, DEADLINE));
	/* gets work again once node-a re-joined and re-published; node-c's cache is cold for
	 * most keys, so they go through the rebuilt directory */
	struct get_ctx g2 = {&f.c, "r", 0, 1};
	cr_assert(proc_wait_for(get_is, &g2, DEADLINE), "node-c reads node-a after the restart");
	cr_log_info("gets worked again %.0f ms after the scheduler restarted", now_ms() - t0);
	for (unsigned i = 1; i < 32; i++)
		cr_assert_eq(cnode_get_check(&f.c, "r", i, VAL), 1, "chunk %u after restart", i);
	cluster_down(&f);
}

Test(cluster, a_node_with_the_wrong_auth_token_is_refused)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", "right-token");
	char dir[256];
	cr_assert_eq(proc_mkdtemp("cluster-auth", dir, sizeof(dir)), 0);
	char cfg[300], errp[300];
	snprintf(cfg, sizeof(cfg), "%s/bad.yaml", dir);
	snprintf(errp, sizeof(errp), "%s/bad.err", dir);
	char text[1024];
	int len = snprintf(text, sizeof(text),
			   "node_name: bad\nscheduler_url: %s\nsocket_path: %s/bad.sock\n"
			   "max_local_cpu_size: 0.01\ntransport: tcp\nauth_token: wrong-token\n",
			   s.addr, dir);
	cr_assert_eq(proc_write_file(cfg, text, (size_t)len), 0);
	const char *argv[] = {KVNODE, "serve", "-c", cfg, NULL};
	const char *env[] = {"KVNODE_CONFIG_FILE", "KVNODE_AUTH_TOKEN", NULL};
	struct proc_opts po = {.stderr_path = errp, .env = env};
	int code = proc_run(argv, &po, DEADLINE);
	char *e = proc_read_file(errp, NULL);
	cr_assert_eq(code, 3, "serve with a wrong token exits 3 (connection error), got %d: %s",
		     code, e ? e : "");
	cr_assert(e && strstr(e, "token"), "the message says the token was refused: %s", e);
	free(e);
	/* the right token is let in */
	struct fixture f = {0};
	memcpy(f.dir, dir, sizeof(dir));
	struct cnode_opts o = {.dir = dir, .sched = s.addr, .token = "right-token"};
	cnode_start(&f.a, "good", &o);
	cnode_stop(&f.a);
	sched_stop(&s);
	proc_rm_tree(dir);
}

struct spy {
	struct kvn_membership *m;
	struct kvn_key key;
	struct kvn_loc loc;
};

static bool
spy_finds_key(void *arg)
{
	struct spy *sp = arg;
	uint32_t n = 0;
	return kvn_membership_lookup(sp->m, &sp->key.digest, 1, 1, &n, &sp->loc, 5000) == 0 &&
	       n == 1;
}

/* Connects to the owner's data address with a transport holding token and READs the slot at
 * loc: 0 when the chunk came back whole (value i of tag), else the connect's or read's error. */
static int
direct_read(const char *data_addr, const char *token, const struct kvn_loc *loc,
	    const struct kvn_key *key, const char *tag, unsigned i, char *err, size_t errlen)
{
	struct kvn_transport_cfg cfg = {KVN_TRANSPORT_CFG_INIT, .gid_index = -1,
					.timeout_ms = 10000, .auth_token = token};
	const struct kvn_transport_ops *ops = kvn_transport_by_name("tcp", &cfg, err, errlen);
	cr_assert_not_null(ops, "%s", err);
	struct kvn_transport *tp;
	cr_assert_eq(ops->open(&cfg, &tp, err, errlen), 0, "%s", err);
	uint8_t *buf = malloc(loc->len);
	struct kvn_tp_mr *mr;
	struct kvn_mem_desc d;
	cr_assert_eq(ops->reg_mem(tp, buf, loc->len, KVN_MEM_HOST, &mr, &d, err, errlen), 0, "%s",
		     err);
	struct kvn_tp_ep *ep = NULL;
	int rc = ops->connect(tp, data_addr, 0, &ep, err, errlen);
	if (rc == 0) {
		struct kvn_read rd = {.local = buf,
				      .local_mr = mr,
				      .remote_addr = loc->addr,
				      .rkey = loc->rkey,
				      .len = loc->len};
		rc = kvn_transport_read_sync(ops, ep, &rd, 1, err, errlen);
		ops->ep_close(ep);
	}
	if (rc == 0) {
		cr_assert_eq(kvn_slot_verify(buf, loc->len, key->digest, loc->generation), 0,
			     "the slot read with the right token does not verify");
		void *want = malloc(VAL);
		cluster_value(want, VAL, tag, i);
		cr_assert_eq(memcmp(buf + sizeof(struct kvn_slot_hdr), want, VAL), 0,
			     "the chunk read with the right token has other bytes");
		free(want);
	}
	ops->dereg(mr);
	ops->close(tp);
	free(buf);
	return rc;
}

struct log_ctx {
	const char *path;
	const char *a, *b;
};

static bool
log_has(void *arg)
{
	struct log_ctx *l = arg;
	char *text = proc_read_file(l->path, NULL);
	bool ok = text && strstr(text, l->a) && strstr(text, l->b);
	free(text);
	return ok;
}

/* The token guards the data connections, not only the scheduler: a reader that knows exactly
 * where a chunk lies (data address, addr, rkey: here from the directory, as a spy joined with
 * the right token learns them) but holds another token, or none, connects straight to the
 * owner's transport and reads nothing; the owner logs the refusal. With the right token the
 * same read returns the chunk, so the refusal is the token's doing. */
/* Secure by default: nobody configured a token, yet the cluster is closed. The scheduler and the
 * nodes of this host share the token generated in their state directory (the chunk moves as in
 * the test above); a process of another user, whose state directory holds another token, can
 * neither join nor, knowing a node's address, read its pool. */
Test(cluster, without_a_configured_token_only_processes_sharing_the_hosts_token_get_in)
{
	struct fixture f;
	cluster_up(&f, NULL, NULL, true);
	cnode_put(&f.a, "d", 1, VAL);
	struct get_ctx g = {&f.c, "d", 1, 1};
	cr_assert(proc_wait_for(get_is, &g, DEADLINE), "node-c reads node-a on the host's token");

	char other[PATH_MAX];
	snprintf(other, sizeof(other), "%s/other-user", f.dir);
	const char *mine = getenv("KVNODE_STATE_DIR");
	char *saved = mine ? strdup(mine) : NULL;
	setenv("KVNODE_STATE_DIR", other, 1);
	char path[PATH_MAX], *theirs = NULL;
	cr_assert_eq(kvn_auth_default_file(path, sizeof(path)), 0);
	cr_assert_eq(kvn_auth_token_file(path, true, &theirs, sched_err, sizeof(sched_err)), 0,
		     "%s", sched_err);
	struct kvn_membership *m = NULL;
	int rc = sched_node_start(f.s.addr, "intruder", NULL, NULL, &m);
	if (saved)
		setenv("KVNODE_STATE_DIR", saved, 1);
	free(saved);
	cr_assert_eq(rc, -EACCES, "another user's process joined: %d %s", rc, sched_err);
	cr_assert(strstr(sched_err, "auth_token"), "%s", sched_err);

	struct spy sp = {0};
	cr_assert_eq(sched_node_start(f.s.addr, "spy", NULL, NULL, &sp.m), 0, "%s", sched_err);
	cluster_key(&sp.key, "d", 1);
	cr_assert(proc_wait_for(spy_finds_key, &sp, DEADLINE), "the chunk is not in the directory");
	struct kvn_member_info mi;
	rc = kvn_membership_member(sp.m, sp.loc.worker_id, &mi, NULL, 0);
	cr_assert(rc == 0 || rc == -ENOSPC, "member %u: %d", sp.loc.worker_id, rc);
	kvn_membership_stop(sp.m);
	char err[512] = "";
	rc = direct_read(mi.data_addr, theirs, &sp.loc, &sp.key, "d", 1, err, sizeof(err));
	cr_assert_eq(rc, -EACCES, "another user's token read node-a's pool: %d %s", rc, err);
	free(theirs);
	cluster_down(&f);
}

Test(cluster, a_reader_with_the_wrong_token_cannot_read_a_pool_by_going_around_the_scheduler)
{
	struct fixture f = {0};
	sched_start(&f.s, "127.0.0.1:0", "right-token");
	cr_assert_eq(proc_mkdtemp("cluster-bypass", f.dir, sizeof(f.dir)), 0);
	/* No promotion: node-a stays the chunk's only holder, the one the spy is told of. */
	struct cnode_opts o = {
	    .dir = f.dir, .sched = f.s.addr, .token = "right-token", .no_promote = true};
	cnode_start(&f.a, "node-a", &o);
	cnode_start(&f.c, "node-c", &o);
	cnode_put(&f.a, "s", 7, VAL);
	/* Members of the cluster hold the token and read each other as before. */
	struct get_ctx g = {&f.c, "s", 7, 1};
	cr_assert(proc_wait_for(get_is, &g, DEADLINE), "node-c (right token) cannot read node-a");
	cr_assert_geq(cnode_tier_stat(&f.c, "peer", "hits"), 1, "node-c's get was no peer read");

	struct spy sp = {0};
	cr_assert_eq(sched_node_start(f.s.addr, "spy", "right-token", NULL, &sp.m), 0, "%s",
		     sched_err);
	cluster_key(&sp.key, "s", 7);
	cr_assert(proc_wait_for(spy_finds_key, &sp, DEADLINE),
		  "the directory never listed the chunk put on node-a");
	struct kvn_member_info mi;
	int rc = kvn_membership_member(sp.m, sp.loc.worker_id, &mi, NULL, 0);
	cr_assert(rc == 0 || rc == -ENOSPC, "member %u: %d", sp.loc.worker_id, rc);
	kvn_membership_stop(sp.m);

	char err[512] = "";
	cr_assert_eq(
	    direct_read(mi.data_addr, "right-token", &sp.loc, &sp.key, "s", 7, err, sizeof(err)), 0,
	    "the right token read nothing from %s: %s", mi.data_addr, err);
	const char *bad[] = {"wrong-token", NULL};
	for (int t = 0; t < 2; t++) {
		err[0] = 0;
		rc = direct_read(mi.data_addr, bad[t], &sp.loc, &sp.key, "s", 7, err, sizeof(err));
		cr_assert_eq(rc, -EACCES, "a reader with %s: got %d (%s), want -EACCES",
			     bad[t] ? bad[t] : "no token", rc, err);
		cr_assert(strstr(err, mi.data_addr) && strstr(err, "auth_token"),
			  "the error names the node and the auth_token: %s", err);
	}
	char line[KVN_CF_ADDR_MAX + 64];
	snprintf(line, sizeof(line), "refused on %s: wrong or missing auth_token", mi.data_addr);
	struct log_ctx l = {.path = f.a.err, .a = "reader 127.0.0.1:", .b = line};
	cr_assert(proc_wait_for(log_has, &l, DEADLINE), "node-a did not log the refused reader");
	/* node-a keeps serving its own clients */
	cr_assert_eq(cnode_get_check(&f.a, "s", 7, VAL), 1);
	cnode_stop(&f.a);
	cnode_stop(&f.c);
	sched_stop(&f.s);
	proc_rm_tree(f.dir);
}

/* ------------------------------------------------------------------------------------------
 * Eviction race
 * ------------------------------------------------------------------------------------------ */

#define RACE_VAL 4096

struct race {
	struct cnode *writer_node;
	_Atomic unsigned written; /* keys 0..written-1 were put on node-a (most evicted since) */
	_Atomic bool stop;
};

static void *
race_writer(void *arg)
{
	struct race *r = arg;
	struct kvn_cli_conn *c;
	char err[256];
	if (kvn_cli_connect(r->writer_node->sock, 10000, &c, err, sizeof(err)))
		return NULL;
	void *v = malloc(RACE_VAL);
	for (unsigned i = 0; !atomic_load(&r->stop); i++) {
		struct kvn_key k;
		cluster_key(&k, "x", i);
		cluster_value(v, RACE_VAL, "x", i);
		if (kvn_cli_put(c, &k, v, RACE_VAL))
			break;
		atomic_store(&r->written, i + 1);
	}
	free(v);
	kvn_cli_close(c);
	return NULL;
}

static unsigned
race_reads(void)
{
	const char *e = getenv("KVN_TEST_RACE_READS");
	if (e)
		return (unsigned)strtoul(e, NULL, 10);
#if defined(__SANITIZE_ADDRESS__)
	return 10000; /* ASan build: the same race, fewer rounds */
#else
	return 100000;
#endif
}

Test(cluster, reads_racing_eviction_and_slot_reuse_return_right_bytes_or_miss)
{
	struct fixture f;
	/* node-a: a 1 MB pool holds ~200 chunks of 4 KiB, so slots are evicted and reused at
	 * the same addresses all the time; node-c does not promote, so every read is a READ */
	cluster_up(&f, NULL, "0.001", false);
	struct race r = {.writer_node = &f.a};
	pthread_t w;
	cr_assert_eq(pthread_create(&w, NULL, race_writer, &r), 0);
	unsigned reads = race_reads(), hits = 0, misses = 0, corrupt = 0;
	uint64_t x = 12345;
	while (atomic_load(&r.written) < 50)
		sched_sleep_ms(5);
	for (unsigned n = 0; n < reads; n++) {
		unsigned top = atomic_load(&r.written);
		x = sched_mix(x);
		/* mostly keys that are about to be or were just evicted */
		unsigned back = (unsigned)(x % 400);
		unsigned i = top > back ? top - 1 - back : 0;
		int got = cnode_get_check(&f.c, "x", i, RACE_VAL);
		hits += got == 1;
		misses += got == 0;
		corrupt += got < 0;
	}
	atomic_store(&r.stop, true);
	pthread_join(w, NULL);
	long long evictions = cnode_tier_stat(&f.a, "cpu", "evictions");
	long long rejected = cnode_tier_stat(&f.c, "peer", "errors");
	cr_log_info("eviction race: %u reads, %u hits, %u misses, %u corrupt; node-a wrote %u "
		    "chunks, evicted %lld; node-c rejected %lld stale or torn slot images",
		    reads, hits, misses, corrupt, atomic_load(&r.written), evictions, rejected);
	cr_assert_eq(corrupt, 0, "no read returns other bytes than the key's");
	cr_assert_gt(hits, 0, "some reads hit (the race was run, not only misses)");
	cr_assert_gt(evictions, 0, "node-a evicted while node-c read (stat says %lld)", evictions);
	cluster_down(&f);
}

/* ------------------------------------------------------------------------------------------
 * The peer tier against members that misbehave: a ghost member run by the test (a membership
 * client and, when it serves at all, a tcp transport over a zeroed region) publishes directory
 * entries the nodes then try to read.
 * ------------------------------------------------------------------------------------------ */

#define GHOST_REGION (9u << 20)

struct ghost {
	const struct kvn_transport_ops *ops;
	struct kvn_transport *tp;
	struct kvn_tp_mr *mr;
	struct kvn_mem_desc desc;
	uint8_t *region;
	char data_addr[KVN_CF_ADDR_MAX + 1]; /* where its transport listens */
	struct kvn_membership *m;
	uint32_t worker_id;
};

/* A tcp transport listening on loopback over a zeroed region: reads succeed, and what they
 * bring never verifies as a chunk. */
static void
ghost_serve(struct ghost *g)
{
	char err[512];
	/* The host's token, as the nodes of these tests have it: they read only from owners that
	 * prove it. */
	char *tok = sched_host_token();
	struct kvn_transport_cfg cfg = {KVN_TRANSPORT_CFG_INIT, .gid_index = -1,
					.timeout_ms = 10000, .auth_token = tok};
	g->ops = kvn_transport_by_name("tcp", &cfg, err, sizeof(err));
	cr_assert_not_null(g->ops, "%s", err);
	cr_assert_eq(g->ops->open(&cfg, &g->tp, err, sizeof(err)), 0, "%s", err);
	free(tok);
	g->region = calloc(1, GHOST_REGION);
	cr_assert_eq(g->ops->reg_mem(g->tp, g->region, GHOST_REGION, KVN_MEM_HOST, &g->mr, &g->desc,
				     err, sizeof(err)),
		     0, "%s", err);
	cr_assert_eq(g->ops->listen(g->tp, "127.0.0.1:0", g->data_addr, sizeof(g->data_addr), err,
				    sizeof(err)),
		     0, "%s", err);
}

static void
ghost_unserve(struct ghost *g)
{
	g->ops->dereg(g->mr);
	g->ops->close(g->tp);
	free(g->region);
}

/* Joins sched as name with data_addr (NULL: its transport's). */
static void
ghost_join(struct ghost *g, const char *sched, const char *name, const char *data_addr)
{
	static const char blob[24];
	struct kvn_membership_opts o = {.scheduler = sched,
					.name = name,
					.data_addr = data_addr ? data_addr : g->data_addr,
					.transport = "tcp",
					.regions = blob,
					.regions_len = sizeof(blob),
					.capacity = GHOST_REGION,
					.heartbeat_ms = HB_MS,
					.timeout_ms = 10000,
					.auth_token = sched_host_token()};
	char err[512];
	int rc = kvn_membership_start(&o, NULL, &g->m, err, sizeof(err));
	free((char *)o.auth_token);
	cr_assert_eq(rc, 0, "%s", err);
	g->worker_id = (uint32_t)kvn_membership_worker_id(g->m);
}

static void
ghost_leave(struct ghost *g)
{
	kvn_membership_stop(g->m);
	g->m = NULL;
}

struct ghost_entry {
	struct ghost *g;
	struct kvn_key key;
};

static bool
ghost_entry_listed(void *arg)
{
	struct ghost_entry *e = arg;
	uint32_t n = 0;
	struct kvn_loc loc;
	return kvn_membership_lookup(e->g->m, &e->key.digest, 1, 1, &n, &loc, 5000) == 0 && n == 1;
}

/* Publishes key (tag, i) as held by g in a slot of len payload bytes at the start of its
 * region, and waits until the directory lists it. */
static void
ghost_publish(struct ghost *g, const char *tag, unsigned i, uint64_t len)
{
	struct ghost_entry e = {.g = g};
	cluster_key(&e.key, tag, i);
	struct kvn_cf_pub r = {.op = KVN_CF_ADMIT,
			       .digest = e.key.digest,
			       .loc = {.rkey = g->desc.rkey,
				       .addr = g->desc.addr,
				       .len = sizeof(struct kvn_slot_hdr) + len,
				       .generation = 2}};
	cr_assert_eq(kvn_membership_publish(g->m, &r, 1), 0);
	cr_assert(proc_wait_for(ghost_entry_listed, &e, DEADLINE),
		  "the directory never listed the ghost's entry");
}

/* How many times n's log says it saw member name at addr go up or down. */
struct member_seen {
	struct cnode *n;
	char line[300];
	int times;
};

static int
count_in(const char *text, const char *what)
{
	int k = 0;
	for (const char *p = text; p && (p = strstr(p, what)); p += strlen(what))
		k++;
	return k;
}

static bool
member_seen(void *arg)
{
	struct member_seen *ms = arg;
	char *text = proc_read_file(ms->n->err, NULL);
	bool ok = text && count_in(text, ms->line) >= ms->times;
	free(text);
	return ok;
}

static void
wait_member(struct cnode *n, const struct ghost *g, const char *name, const char *addr,
	    const char *state, int times)
{
	struct member_seen ms = {.n = n, .times = times};
	snprintf(ms.line, sizeof(ms.line), "member %s (worker %u) at %s is %s", name, g->worker_id,
		 addr, state);
	cr_assert(proc_wait_for(member_seen, &ms, DEADLINE), "%s never saw: %s", n->name, ms.line);
}

static int
open_fds(struct proc *p)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)p->pid);
	DIR *d = opendir(path);
	cr_assert_not_null(d, "%s: %s", path, strerror(errno));
	int n = 0;
	for (struct dirent *e; (e = readdir(d));)
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

/* A port nothing listens on (connects are refused at once). */
static void
dead_addr(char *out, size_t len)
{
	int port = kvn_tcp_free_port();
	cr_assert_gt(port, 0);
	snprintf(out, len, "127.0.0.1:%d", port);
}

/* Members that leave (and ones that come back where nothing answers) must not each leave the
 * reading node a connection: over many of them its open descriptors stay flat. */
Test(cluster, a_node_keeps_no_connection_to_members_that_left)
{
	enum { GHOSTS = 10 };
	struct fixture f = {0};
	sched_start(&f.s, "127.0.0.1:0", NULL);
	cr_assert_eq(proc_mkdtemp("cluster-ghosts", f.dir, sizeof(f.dir)), 0);
	struct cnode_opts o = {.dir = f.dir, .sched = f.s.addr, .no_promote = true};
	cnode_start(&f.a, "node-a", &o);
	cnode_start(&f.c, "node-c", &o);
	cnode_put(&f.a, "live", 1, VAL);
	struct get_ctx g = {&f.c, "live", 1, 1};
	cr_assert(proc_wait_for(get_is, &g, DEADLINE), "node-c reads node-a");

	struct ghost gh = {0};
	ghost_serve(&gh);
	int base = -1;
	for (unsigned k = 0; k < GHOSTS; k++) {
		char name[32], dead[64];
		snprintf(name, sizeof(name), "ghost-%u", k);
		/* up where it serves: node-c connects and reads (a miss: the region is zeros) */
		ghost_join(&gh, f.s.addr, name, NULL);
		ghost_publish(&gh, "g", k, 4096);
		cr_assert_eq(cnode_get_check(&f.c, "g", k, VAL), 0);
		ghost_leave(&gh);
		wait_member(&f.c, &gh, name, gh.data_addr, "down", 1);
		if (k % 2) {
			/* back where nothing answers: node-c drops the old connection and fails
			 * to make a new one */
			dead_addr(dead, sizeof(dead));
			ghost_join(&gh, f.s.addr, name, dead);
			ghost_publish(&gh, "d", k, 4096);
			wait_member(&f.c, &gh, name, dead, "up", 1);
			cr_assert_eq(cnode_get_check(&f.c, "d", k, VAL), 0);
			ghost_leave(&gh);
			wait_member(&f.c, &gh, name, dead, "down", 1);
		} /* else gone for good: no get will ever ask for it again */
		/* a read from the live node: the point where a node may tidy up */
		cr_assert_eq(cnode_get_check(&f.c, "live", 1, VAL), 1);
		if (k == 1)
			base = open_fds(&f.c.p);
	}
	int end = open_fds(&f.c.p);
	cr_log_info("node-c's open descriptors: %d after 2 ghosts, %d after %d", base, end, GHOSTS);
	cr_assert_leq(end, base + 3,
		      "node-c went from %d to %d open descriptors over %d members that left", base,
		      end, GHOSTS - 2);
	ghost_unserve(&gh);
	cnode_stop(&f.a);
	cnode_stop(&f.c);
	sched_stop(&f.s);
	proc_rm_tree(f.dir);
}

/* A listening socket that never accepts nor answers: a peer that is up but stuck. */
static int
stuck_listener(char *addr, size_t len)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t sl = sizeof(sa);
	cr_assert(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
		  listen(fd, 16) == 0 && getsockname(fd, (struct sockaddr *)&sa, &sl) == 0);
	snprintf(addr, len, "127.0.0.1:%u", ntohs(sa.sin_port));
	return fd;
}

struct bg_get {
	struct cnode *n;
	struct kvn_cli_conn *c;
	const char *tag;
	unsigned i;
	int rc;
	_Atomic bool done;
};

static void *
bg_get_main(void *arg)
{
	struct bg_get *b = arg;
	struct kvn_key k;
	cluster_key(&k, b->tag, b->i);
	void *data = NULL;
	size_t len = 0;
	b->rc = kvn_cli_get(b->c, &k, &data, &len);
	free(data);
	atomic_store(&b->done, true);
	return NULL;
}

/* A peer that accepts but never answers holds only the gets that go to it: with a peer
 * timeout far longer than the test, a get from a healthy peer completes while one to the
 * stuck peer is still waiting. */
Test(cluster, a_stuck_peer_does_not_hold_up_reads_from_other_peers)
{
	struct fixture f = {0};
	sched_start(&f.s, "127.0.0.1:0", NULL);
	cr_assert_eq(proc_mkdtemp("cluster-stuck", f.dir, sizeof(f.dir)), 0);
	struct cnode_opts o = {.dir = f.dir, .sched = f.s.addr, .no_promote = true};
	cnode_start(&f.a, "node-a", &o);
	o.extra = "peer_timeout_ms: 600000\n";
	cnode_start(&f.c, "node-c", &o);
	for (unsigned i = 0; i < 4; i++)
		cnode_put(&f.a, "h", i, VAL);
	struct get_ctx g = {&f.c, "h", 0, 1};
	cr_assert(proc_wait_for(get_is, &g, DEADLINE), "node-c reads node-a");

	char addr[64];
	int lfd = stuck_listener(addr, sizeof(addr));
	struct ghost gh = {0};
	ghost_join(&gh, f.s.addr, "stuck", addr);
	ghost_publish(&gh, "s", 1, 4096);
	wait_member(&f.c, &gh, "stuck", addr, "up", 1);
	char err[256];
	struct bg_get b = {.n = &f.c, .tag = "s", .i = 1};
	cr_assert_eq(kvn_cli_connect(f.c.sock, 10000, &b.c, err, sizeof(err)), 0, "%s", err);
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, bg_get_main, &b), 0);
	/* node-c's connection to the stuck peer arrives: its get now waits on it */
	struct pollfd pf = {.fd = lfd, .events = POLLIN};
	cr_assert_eq(poll(&pf, 1, DEADLINE), 1, "node-c never connected to the stuck peer");
	int held = accept(lfd, NULL, NULL);
	cr_assert_geq(held, 0);
	for (unsigned i = 1; i < 4; i++)
		cr_assert_eq(cnode_get_check(&f.c, "h", i, VAL), 1, "chunk %u of node-a", i);
	cr_assert(!atomic_load(&b.done), "the get to the stuck peer ended before it was let go");
	/* let it go: the stuck peer's connections end, so does the get (a miss) */
	close(held);
	close(lfd);
	pthread_join(t, NULL);
	cr_assert_eq(b.rc, -ENOENT, "the get from the stuck peer: %d", b.rc);
	kvn_cli_close(b.c);
	ghost_leave(&gh);
	cnode_stop(&f.a);
	cnode_stop(&f.c);
	sched_stop(&f.s);
	proc_rm_tree(f.dir);
}

/* peer_timeout_ms bounds a read from a stuck peer: it misses, and the log says after how
 * long (the old hard-coded 5000 ms would read "5000"). */
Test(cluster, a_stuck_peer_fails_the_get_after_peer_timeout_ms)
{
	struct fixture f = {0};
	sched_start(&f.s, "127.0.0.1:0", NULL);
	cr_assert_eq(proc_mkdtemp("cluster-ptime", f.dir, sizeof(f.dir)), 0);
	struct cnode_opts o = {.dir = f.dir, .sched = f.s.addr, .extra = "peer_timeout_ms: 500\n"};
	cnode_start(&f.c, "node-c", &o);
	char addr[64];
	int lfd = stuck_listener(addr, sizeof(addr));
	struct ghost gh = {0};
	ghost_join(&gh, f.s.addr, "stuck", addr);
	ghost_publish(&gh, "t", 1, 4096);
	wait_member(&f.c, &gh, "stuck", addr, "up", 1);
	cr_assert_eq(cnode_get_check(&f.c, "t", 1, VAL), 0, "a get from a stuck peer misses");
	struct log_ctx l = {.path = f.c.err, .a = addr, .b = "did not answer within 500 ms"};
	cr_assert(proc_wait_for(log_has, &l, DEADLINE), "node-c's log does not show the 500 ms "
							"peer_timeout_ms");
	close(lfd);
	ghost_leave(&gh);
	cnode_stop(&f.c);
	sched_stop(&f.s);
	proc_rm_tree(f.dir);
}

static bool
cpu_filled(void *arg)
{
	struct cnode *n = arg;
	return cnode_tier_stat(n, "cpu", "evictions") > 0;
}

/* A directory entry longer than max_chunk_size (a corrupt directory, a peer with a larger
 * bound) is a miss without a read: the node's cpu tier is not emptied to land it. */
Test(cluster, a_directory_entry_over_max_chunk_size_is_a_miss_and_evicts_nothing)
{
	struct fixture f = {0};
	sched_start(&f.s, "127.0.0.1:0", NULL);
	cr_assert_eq(proc_mkdtemp("cluster-big", f.dir, sizeof(f.dir)), 0);
	int mport = kvn_tcp_free_port();
	char extra[128];
	snprintf(extra, sizeof(extra), "max_chunk_size: 1MiB\nmetrics_listen: 127.0.0.1:%d\n",
		 mport);
	struct cnode_opts o = {.dir = f.dir, .sched = f.s.addr, .extra = extra};
	cnode_start(&f.c, "node-c", &o);
	/* node-c's cpu tier full of its own chunks (it has started evicting them) */
	for (unsigned i = 0; !cpu_filled(&f.c); i++) {
		cr_assert_lt(i, 1000, "node-c's cpu tier never filled");
		cnode_put(&f.c, "own", i, 1 << 20);
	}
	long long evictions = cnode_tier_stat(&f.c, "cpu", "evictions");
	struct ghost gh = {0};
	ghost_serve(&gh);
	ghost_join(&gh, f.s.addr, "big", NULL);
	ghost_publish(&gh, "big", 1, 8u << 20);
	wait_member(&f.c, &gh, "big", gh.data_addr, "up", 1);
	cr_assert_eq(cnode_get_check(&f.c, "big", 1, 8u << 20), 0, "an oversized entry misses");
	cr_assert_eq(cnode_tier_stat(&f.c, "cpu", "evictions"), evictions,
		     "node-c evicted its own chunks to land an 8 MiB peer read (max_chunk_size "
		     "1 MiB)");
	struct log_ctx l = {.path = f.c.err, .a = "over max_chunk_size", .b = "8388608"};
	cr_assert(proc_wait_for(log_has, &l, DEADLINE), "node-c does not log the refused entry");
	char *body = NULL;
	cr_assert_eq(http_request(mport, "GET", "/metrics", &body, 20000), 200);
	cr_expect_geq(expo_value(body, "kvnode_peer_oversized_total"), 1, "%s", body);
	cr_expect_eq(expo_value(body, "kvnode_peer_read_bytes_total"), 0, "%s", body);
	free(body);
	ghost_leave(&gh);
	ghost_unserve(&gh);
	cnode_stop(&f.c);
	sched_stop(&f.s);
	proc_rm_tree(f.dir);
}

/* A published slot image of key (tag, i) with payload val at the start of g's region. */
static void
ghost_image(struct ghost *g, const char *tag, unsigned i, const uint8_t *val, size_t len)
{
	struct kvn_key k;
	cluster_key(&k, tag, i);
	struct kvn_slot_hdr *h = (void *)g->region;
	memset(h, 0, sizeof(*h));
	h->magic = KVN_SLOT_MAGIC;
	h->version = KVN_SLOT_VERSION;
	atomic_store(&h->generation, 2); /* ghost_publish's */
	h->digest_lo = k.digest.lo;
	h->digest_hi = k.digest.hi;
	h->len = len;
	h->checksum = XXH3_64bits(val, len);
	memcpy(g->region + sizeof(*h), val, len);
}

/* A chunk larger than a READ piece is READ in pieces and hashed as they land: the whole value
 * arrives byte for byte, and one changed byte in a late piece still makes the image fail its
 * check (a miss, never those bytes). */
Test(cluster, a_chunk_read_in_pieces_is_whole_and_a_bad_late_piece_is_a_miss)
{
	enum { LEN = (5u << 20) + 17 }; /* 11 pieces, the last one short */
	struct fixture f = {0};
	sched_start(&f.s, "127.0.0.1:0", NULL);
	cr_assert_eq(proc_mkdtemp("cluster-pieces", f.dir, sizeof(f.dir)), 0);
	struct cnode_opts o = {.dir = f.dir, .sched = f.s.addr};
	cnode_start(&f.c, "node-c", &o);
	struct ghost gh = {0};
	ghost_serve(&gh);
	ghost_join(&gh, f.s.addr, "pieces", NULL);
	wait_member(&f.c, &gh, "pieces", gh.data_addr, "up", 1);
	uint8_t *val = malloc(LEN);
	cluster_value(val, LEN, "w", 1);
	ghost_image(&gh, "w", 1, val, LEN);
	ghost_publish(&gh, "w", 1, LEN);
	cr_assert_eq(cnode_get_check(&f.c, "w", 1, LEN), 1, "the 5 MiB chunk, byte for byte");
	cr_assert_eq(cnode_stat(&f.c, "peer", "promoted_in_place"), 1, "indexed where it landed");
	long long errors = cnode_tier_stat(&f.c, "peer", "errors");
	cluster_value(val, LEN, "w", 2);
	ghost_image(&gh, "w", 2, val, LEN);
	gh.region[sizeof(struct kvn_slot_hdr) + (4u << 20) + 3] ^= 0x40;
	ghost_publish(&gh, "w", 2, LEN);
	cr_assert_eq(cnode_get_check(&f.c, "w", 2, LEN), 0, "a torn image is a miss");
	cr_assert_gt(cnode_tier_stat(&f.c, "peer", "errors"), errors, "and counted as one");
	cr_assert_eq(cnode_get_check(&f.c, "w", 1, LEN), 1, "the good one is still there");
	free(val);
	ghost_leave(&gh);
	ghost_unserve(&gh);
	cnode_stop(&f.c);
	sched_stop(&f.s);
	proc_rm_tree(f.dir);
}

/* ------------------------------------------------------------------------------------------
 * Batch gets
 * ------------------------------------------------------------------------------------------ */

/* The scheduler's STATS field (top level), -1 when it cannot be had. */
static long long
sched_field(const struct sched *s, const char *field)
{
	char *json = NULL, *tok = sched_host_token();
	long long v = -1;
	if (kvn_membership_fetch_stats(s->addr, tok, 10000, &json, sched_err, sizeof(sched_err)) ==
	    0) {
		cJSON *root = cJSON_Parse(json), *f = cJSON_GetObjectItem(root, field);
		if (cJSON_IsNumber(f))
			v = (long long)f->valuedouble;
		cJSON_Delete(root);
	}
	free(json);
	free(tok);
	return v;
}

/* One round of READs goes to several endpoints at once: node-c's client batch-gets chunks
 * that node-a and node-b hold alternately, in one scheduler lookup, every byte checked. */
Test(cluster, a_batch_get_reads_chunks_of_two_peers_in_one_lookup)
{
	enum { N = 32 };
	struct fixture f;
	cluster_up(&f, NULL, NULL, true);
	static struct kvn_key k[N];
	const char *keys[N];
	for (unsigned i = 0; i < N; i++) {
		cnode_put(i % 2 ? &f.b : &f.a, "two", i, VAL);
		cluster_key(&k[i], "two", i);
		keys[i] = k[i].str;
	}
	struct kvn_client *cl = NULL;
	char err[512] = "";
	struct kvn_client_opts o = {KVN_CLIENT_OPTS_INIT, .socket_path = f.c.sock, .name = "test",
				    .timeout_ms = 60000};
	cr_assert_eq(kvn_client_open(&o, &cl, err, sizeof(err)), 0, "%s", err);
	size_t found = 0;
	for (int t = 0; t < DEADLINE / 50 && found != N; t++) {
		cr_assert_eq(kvn_client_contains_prefix(cl, keys, N, &found), 0, "%s",
			     kvn_client_error(cl));
		if (found != N)
			sched_sleep_ms(50);
	}
	cr_assert_eq(found, N, "the directory has the chunks of node-a and node-b");
	long long l0 = sched_field(&f.s, "lookups"), h0 = cnode_tier_stat(&f.c, "peer", "hits");
	cr_assert(l0 >= 0 && h0 >= 0, "stats: %s", sched_err);
	struct kvn_view views[N];
	int rcs[N];
	cr_assert_eq(kvn_client_batch_get(cl, keys, N, views, rcs), 0, "%s", kvn_client_error(cl));
	uint8_t *want = malloc(VAL);
	for (unsigned i = 0; i < N; i++) {
		cr_assert_eq(rcs[i], 0, "key %u: %d", i, rcs[i]);
		cr_assert_eq(views[i].len, VAL);
		cluster_value(want, VAL, "two", i);
		cr_assert_arr_eq(views[i].data, want, VAL, "the bytes of key %u (from node-%c)", i,
				 i % 2 ? 'b' : 'a');
	}
	kvn_client_release(cl, views, N);
	cr_assert_eq(sched_field(&f.s, "lookups") - l0, 1, "one scheduler lookup");
	cr_assert_eq(cnode_tier_stat(&f.c, "peer", "hits") - h0, N);
	cr_assert_eq(cnode_tier_stat(&f.c, "peer", "errors"), 0);
	free(want);
	kvn_client_close(cl);
	cluster_down(&f);
}

/* Eight keys whose digests pick the same set of the peer tier's directory cache (8192 sets of 8
 * ways, chosen by digest.lo; backends/peer.c) are all remembered: read again, none of them costs
 * a scheduler lookup. A direct-mapped cache kept one of them. */
Test(cluster, keys_that_share_a_location_cache_set_are_all_read_again_without_a_lookup)
{
	enum { WAYS = 8, SETS = 8192 };
	unsigned idx[WAYS], count[SETS] = {0}, set = SETS;
	for (unsigned i = 0; set == SETS; i++) {
		struct kvn_key k;
		cluster_key(&k, "set", i);
		if (++count[k.digest.lo & (SETS - 1)] == WAYS)
			set = (unsigned)(k.digest.lo & (SETS - 1));
		cr_assert_lt(i, 1000000u, "no set filled");
	}
	for (unsigned i = 0, n = 0; n < WAYS; i++) {
		struct kvn_key k;
		cluster_key(&k, "set", i);
		if ((k.digest.lo & (SETS - 1)) == set)
			idx[n++] = i;
	}
	struct fixture f;
	cluster_up(&f, NULL, NULL, false); /* node-c keeps no copy: every get is a peer READ */
	for (unsigned n = 0; n < WAYS; n++)
		cnode_put(&f.a, "set", idx[n], VAL);
	for (unsigned n = 0; n < WAYS; n++) {
		struct get_ctx g = {&f.c, "set", idx[n], 1};
		cr_assert(proc_wait_for(get_is, &g, DEADLINE), "node-c reads key %u", idx[n]);
	}
	long long hits = cnode_stat(&f.c, "peer", "location_cache_hits");
	long long misses = cnode_stat(&f.c, "peer", "location_cache_misses");
	long long lookups = sched_field(&f.s, "lookups"), reads = cnode_stat(&f.c, "peer", "reads");
	cr_assert(hits >= 0 && misses >= WAYS && lookups >= WAYS, "stats: %s", sched_err);
	for (unsigned n = 0; n < WAYS; n++)
		cr_assert_eq(cnode_get_check(&f.c, "set", idx[n], VAL), 1, "key %u again", idx[n]);
	cr_assert_eq(cnode_stat(&f.c, "peer", "reads") - reads, WAYS, "each read from node-a");
	cr_assert_eq(cnode_stat(&f.c, "peer", "location_cache_hits") - hits, WAYS,
		     "every location remembered");
	cr_assert_eq(cnode_stat(&f.c, "peer", "location_cache_misses"), misses);
	cr_assert_eq(sched_field(&f.s, "lookups"), lookups, "no lookup the second time");
	cluster_down(&f);
}

/* ------------------------------------------------------------------------------------------
 * kvnode demo
 * ------------------------------------------------------------------------------------------ */

/* A live process whose command line mentions text (the demo's children name their temp
 * configs). */
static bool
process_mentions(const char *text)
{
	bool found = false;
	DIR *d = opendir("/proc");
	for (struct dirent *e; d && !found && (e = readdir(d));) {
		char path[300];
		snprintf(path, sizeof(path), "/proc/%s/cmdline", e->d_name);
		size_t len = 0;
		char *cmd =
		    e->d_name[0] >= '0' && e->d_name[0] <= '9' ? proc_read_file(path, &len) : NULL;
		for (size_t i = 0; cmd && i + 1 < len; i++)
			if (!cmd[i])
				cmd[i] = ' ';
		found = cmd && strstr(cmd, text);
		free(cmd);
	}
	if (d)
		closedir(d);
	return found;
}

Test(cluster, the_demo_reads_chunks_across_nodes_and_leaves_nothing_behind)
{
	char dir[256], out[300], err[300], tmpenv[300];
	cr_assert_eq(proc_mkdtemp("cluster-demo", dir, sizeof(dir)), 0);
	snprintf(out, sizeof(out), "%s.out", dir);
	snprintf(err, sizeof(err), "%s.err", dir);
	snprintf(tmpenv, sizeof(tmpenv), "TMPDIR=%s", dir);
	const char *argv[] = {KVNODE, "demo", NULL};
	const char *env[] = {tmpenv, "KVNODE_CONFIG_FILE", "LMCACHE_CONFIG_FILE", NULL};
	struct proc_opts po = {.stdout_path = out, .stderr_path = err, .env = env};
	int code = proc_run(argv, &po, 240000);
	char *text = proc_read_file(out, NULL), *log = proc_read_file(err, NULL);
	cr_assert_eq(code, 0, "kvnode demo exits 0: %s\n%s", text, log);
	cr_assert(text && strstr(text, "all verified"), "%s", text);
	cr_assert(strstr(text, "by one-sided READ"), "%s", text);
	cr_assert(strstr(text, "\npeer "), "node-3's tier table has the peer tier: %s", text);
	cr_assert(log && strstr(log, "[plugin all_hello.sh] hello from WORKER"), "%s", log);
	free(text);
	free(log);
	DIR *d = opendir(dir);
	int left = 0;
	for (struct dirent *e; d && (e = readdir(d));)
		left += e->d_name[0] != '.';
	closedir(d);
	cr_assert_eq(left, 0, "the demo removed its temp directory under %s", dir);
	cr_assert(!process_mentions(dir), "no process of the demo is left");
	proc_rm_tree(dir);
	unlink(out);
	unlink(err);
}

/* A node's peer.rails from its stats: bytes and reads of rail i, -1 when absent. */
static void
rail_bytes(struct cnode *n, size_t *count, long long bytes[2], long long reads[2])
{
	cJSON *root = cnode_stat_json(n);
	cJSON *rails = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "peer"), "rails");
	*count = (size_t)cJSON_GetArraySize(rails);
	for (int i = 0; i < 2; i++) {
		cJSON *r = cJSON_GetArrayItem(rails, i);
		cJSON *b = cJSON_GetObjectItem(r, "bytes"), *k = cJSON_GetObjectItem(r, "reads");
		bytes[i] = cJSON_IsNumber(b) ? (long long)b->valuedouble : -1;
		reads[i] = cJSON_IsNumber(k) ? (long long)k->valuedouble : -1;
	}
	cJSON_Delete(root);
}

/* Two rails a node (two tcp listeners: `listen` lists one address a rail): a chunk read from a
 * peer is sliced over both, and a node of one rail still reads from them and they from it. */
Test(cluster, peer_reads_are_sliced_over_every_rail_and_one_rail_nodes_still_read)
{
	struct fixture f;
	memset(&f, 0, sizeof(f));
	sched_start(&f.s, "127.0.0.1:0", NULL);
	cr_assert_eq(proc_mkdtemp("cluster-rails", f.dir, sizeof(f.dir)), 0);
	struct cnode_opts o = {.dir = f.dir,
			       .sched = f.s.addr,
			       .listen = "127.0.0.1:0,127.0.0.1:0",
			       .extra = "max_chunk_size: 4MiB\n"};
	cnode_start(&f.a, "node-a", &o);
	cnode_start(&f.b, "node-b", &o);
	o.listen = NULL;
	cnode_start(&f.c, "node-c", &o);
	enum { BIG = 1 << 20 };
	for (unsigned i = 0; i < 8; i++)
		cnode_put(&f.a, "r", i, BIG);
	for (unsigned i = 0; i < 8; i++) {
		int got = 0;
		for (int t = 0; t < 200 && (got = cnode_get_check(&f.b, "r", i, BIG)) == 0; t++)
			usleep(20000); /* publishing is asynchronous */
		cr_assert_eq(got, 1, "node-b reads chunk %u of node-a over the rails", i);
	}
	size_t n;
	long long bytes[2], reads[2];
	rail_bytes(&f.b, &n, bytes, reads);
	cr_assert_eq(n, 2, "node-b reads over two rails");
	/* a 1 MiB chunk over two rails at the 64 KiB slice minimum: half on each */
	cr_assert_geq(bytes[0], 4ll * BIG, "rail 0 moved %lld bytes", bytes[0]);
	cr_assert_geq(bytes[1], 4ll * BIG, "rail 1 moved %lld bytes", bytes[1]);
	cr_assert_geq(reads[0], 8);
	cr_assert_geq(reads[1], 8);
	/* node-c has one rail: it reads node-a (rail 0 to rail 0), and node-a reads it */
	for (unsigned i = 0; i < 8; i++)
		cr_assert_eq(cnode_get_check(&f.c, "r", i, BIG), 1, "node-c reads chunk %u", i);
	cnode_put(&f.c, "c", 0, BIG);
	int got = 0;
	for (int t = 0; t < 200 && (got = cnode_get_check(&f.a, "c", 0, BIG)) == 0; t++)
		usleep(20000);
	cr_assert_eq(got, 1, "node-a (two rails) reads node-c (one)");
	rail_bytes(&f.c, &n, bytes, reads);
	cr_assert_eq(n, 1, "node-c reads over its one rail");
	cluster_down(&f);
}
