/* The membership service: `kvnode scheduler` as a child process on 127.0.0.1 with in-process and
 * forked member nodes — stable worker ids, expiry of a SIGKILLed member, re-join and re-publish
 * after a scheduler restart, auth tokens, rogue clients and the connection cap. Deadlines are
 * generous; nothing asserts on timing. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "node/ctlframe.h"
#include "node/membership.h"
#include "node/netaddr.h"
#include "node/scheduler.h"
#include "tests/helpers/proc.h"

#define KVNODE	 KVN_BINARY_DIR "/kvnode"
#define HB_MS	 100
#define DEADLINE 30000 /* ms */

static char why[1024];

static uint64_t
mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static struct kvn_digest
key_digest(uint64_t i, uint64_t salt)
{
	return (struct kvn_digest){.lo = mix(i ^ (salt << 40)), .hi = mix(~i + salt)};
}

static struct kvn_loc
key_loc(uint64_t i)
{
	return (struct kvn_loc){.rkey = (uint32_t)mix(i) | 1,
				.addr = 0x10000 + i * 4096,
				.len = 64 + (i % 1000) + 1,
				.generation = 2 * (i % 50 + 1)};
}

/* ------------------------------------------------------------------------------------------
 * A scheduler child process
 * ------------------------------------------------------------------------------------------ */

struct sched {
	struct proc p;
	char dir[256];
	char out[300];
	char addr[64];
};

struct out_ctx {
	const char *path;
	char *addr;
};

static bool
sched_ready(void *arg)
{
	struct out_ctx *c = arg;
	char *text = proc_read_file(c->path, NULL);
	const char *p = text ? strstr(text, "scheduler on ") : NULL;
	bool ok = p && strchr(p, '\n');
	if (ok)
		sscanf(p + strlen("scheduler on "), "%63s", c->addr);
	free(text);
	return ok;
}

static void
sched_start(struct sched *s, const char *listen, const char *token)
{
	if (!s->dir[0]) {
		cr_assert_eq(access(KVNODE, X_OK), 0, "%s is not built", KVNODE);
		cr_assert_eq(proc_mkdtemp("sched", s->dir, sizeof(s->dir)), 0);
	}
	snprintf(s->out, sizeof(s->out), "%s/sched.out", s->dir);
	char err[300], tok[128];
	snprintf(err, sizeof(err), "%s/sched.err", s->dir);
	snprintf(tok, sizeof(tok), token ? "KVNODE_AUTH_TOKEN=%s" : "KVNODE_AUTH_TOKEN",
		 token ? token : "");
	const char *env[] = {"KVNODE_CONFIG_FILE",
			     "LMCACHE_CONFIG_FILE",
			     "KVNODE_SCHEDULER_URL",
			     "KVNODE_HEARTBEAT_MS=100",
			     tok,
			     NULL};
	const char *argv[] = {KVNODE, "scheduler", "--listen", listen, "-v", NULL};
	struct proc_opts po = {.stdout_path = s->out, .stderr_path = err, .env = env};
	memset(&s->p, 0, sizeof(s->p));
	cr_assert_eq(proc_spawn(&s->p, argv, &po), 0);
	struct out_ctx c = {s->out, s->addr};
	bool up = proc_wait_for(sched_ready, &c, DEADLINE);
	if (!up) {
		char *e = proc_read_file(err, NULL);
		cr_assert_fail("kvnode scheduler did not come up: %s", e ? e : "");
	}
}

static void
sched_stop(struct sched *s)
{
	if (s->p.pid)
		proc_stop(&s->p, SIGTERM, 10000);
	if (s->dir[0])
		proc_rm_tree(s->dir);
}

/* What a node's callbacks saw. */
struct seen {
	pthread_mutex_t mu;
	int up[16], down[16];
	char name[16][KVN_CF_NAME_MAX + 1];
	uint8_t regions[16][32];
	size_t regions_len[16];
	size_t evicted;
	int joins;
	/* republished on every join, like a node's cpu tier */
	const struct kvn_cf_pub *index;
	size_t nindex;
};

static void
seen_member(void *ctx, const struct kvn_member_info *mi)
{
	struct seen *s = ctx;
	if (mi->worker_id >= 16)
		return;
	pthread_mutex_lock(&s->mu);
	if (mi->up)
		s->up[mi->worker_id]++;
	else
		s->down[mi->worker_id]++;
	snprintf(s->name[mi->worker_id], sizeof(s->name[0]), "%s", mi->name);
	if (mi->regions_len <= 32) {
		memcpy(s->regions[mi->worker_id], mi->regions, mi->regions_len);
		s->regions_len[mi->worker_id] = mi->regions_len;
	}
	pthread_mutex_unlock(&s->mu);
}

static void
seen_evicted(void *ctx, uint32_t worker_id, const struct kvn_digest *d, size_t n)
{
	(void)worker_id;
	(void)d;
	struct seen *s = ctx;
	pthread_mutex_lock(&s->mu);
	s->evicted += n;
	pthread_mutex_unlock(&s->mu);
}

static void
seen_joined(void *ctx, struct kvn_membership *m, uint32_t id, uint32_t count, uint64_t epoch)
{
	(void)id;
	(void)count;
	(void)epoch;
	struct seen *s = ctx;
	pthread_mutex_lock(&s->mu);
	s->joins++;
	pthread_mutex_unlock(&s->mu);
	if (s->nindex)
		kvn_membership_publish(m, s->index, s->nindex);
}

static int
seen_get(struct seen *s, int *field)
{
	pthread_mutex_lock(&s->mu);
	int v = *field;
	pthread_mutex_unlock(&s->mu);
	return v;
}

static int
node_start(const char *addr, const char *name, const char *token, struct seen *s,
	   struct kvn_membership **m)
{
	static const char regions[] = "regions-of-";
	char blob[32];
	snprintf(blob, sizeof(blob), "%s%s", regions, name);
	struct kvn_membership_opts o = {.scheduler = addr,
					.name = name,
					.data_addr = "127.0.0.1:9",
					.transport = "tcp",
					.regions = blob,
					.regions_len = strlen(blob),
					.capacity = 1 << 30,
					.auth_token = token,
					.heartbeat_ms = HB_MS,
					.timeout_ms = 10000,
					.want_evicts = true};
	struct kvn_membership_cbs cb = {
	    .ctx = s, .joined = seen_joined, .member = seen_member, .evicted = seen_evicted};
	why[0] = '\0';
	return kvn_membership_start(&o, s ? &cb : NULL, m, why, sizeof(why));
}

static struct seen *
seen_new(void)
{
	struct seen *s = calloc(1, sizeof(*s));
	pthread_mutex_init(&s->mu, NULL);
	return s;
}

static struct kvn_cf_pub *
make_index(size_t n, uint64_t salt)
{
	struct kvn_cf_pub *p = calloc(n, sizeof(*p));
	for (size_t i = 0; i < n; i++) {
		p[i].op = KVN_CF_ADMIT;
		p[i].digest = key_digest(i, salt);
		p[i].loc = key_loc(i);
	}
	return p;
}

static void
sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
	nanosleep(&ts, NULL);
}

/* Polls a condition every 20 ms until it holds or DEADLINE passes. */
#define WAIT_UNTIL(cond)                                                                           \
	({                                                                                         \
		bool ok_ = false;                                                                  \
		for (int t_ = 0; t_ < DEADLINE / 20 && !(ok_ = (cond)); t_++)                      \
			sleep_ms(20);                                                              \
		ok_;                                                                               \
	})

/* Lookup of keys 0..n-1 of salt: how many have a location of worker (with the right data). */
static size_t
found_on(struct kvn_membership *m, size_t n, uint64_t salt, uint32_t worker)
{
	struct kvn_digest *k = malloc(n * sizeof(*k));
	uint32_t *nloc = malloc(n * sizeof(*nloc));
	struct kvn_loc *locs = malloc(n * 2 * sizeof(*locs));
	for (size_t i = 0; i < n; i++)
		k[i] = key_digest(i, salt);
	size_t hits = 0;
	if (kvn_membership_lookup(m, k, n, 2, nloc, locs, 10000) == 0)
		for (size_t i = 0; i < n; i++)
			for (uint32_t j = 0; j < nloc[i]; j++) {
				const struct kvn_loc *l = &locs[i * 2 + j], want = key_loc(i);
				if (l->worker_id != worker)
					continue;
				cr_assert(
				    l->addr == want.addr && l->len == want.len &&
					l->rkey == want.rkey && l->generation == want.generation,
				    "key %zu: the location differs from the one published", i);
				hits++;
			}
	free(k);
	free(nloc);
	free(locs);
	return hits;
}

/* ------------------------------------------------------------------------------------------
 * Membership
 * ------------------------------------------------------------------------------------------ */

Test(scheduler, nodes_get_stable_worker_ids_and_learn_of_each_other)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", NULL);
	struct seen *sa = seen_new(), *sb = seen_new();
	struct kvn_membership *a, *b, *c;
	cr_assert_eq(node_start(s.addr, "node-a", NULL, sa, &a), 0, "%s", why);
	cr_assert_eq(node_start(s.addr, "node-b", NULL, sb, &b), 0, "%s", why);
	int32_t ia = kvn_membership_worker_id(a), ib = kvn_membership_worker_id(b);
	cr_assert(ia >= 0 && ib >= 0 && ia != ib, "distinct worker ids (%d, %d)", ia, ib);
	cr_assert(WAIT_UNTIL(seen_get(sa, &sa->up[ib]) > 0), "node-a hears that node-b joined");
	cr_assert(WAIT_UNTIL(kvn_membership_worker_count(a) == 2));
	pthread_mutex_lock(&sa->mu);
	cr_assert_str_eq(sa->name[ib], "node-b");
	cr_assert_eq(sa->regions_len[ib], strlen("regions-of-node-b"));
	cr_assert(!memcmp(sa->regions[ib], "regions-of-node-b", sa->regions_len[ib]),
		  "the region descriptors arrive byte for byte");
	pthread_mutex_unlock(&sa->mu);
	struct kvn_member_info mi;
	char reg[64];
	cr_assert_eq(kvn_membership_member(a, (uint32_t)ib, &mi, reg, sizeof(reg)), 0);
	cr_assert_str_eq(mi.data_addr, "127.0.0.1:9");
	cr_assert_str_eq(mi.transport, "tcp");
	cr_assert(mi.up);
	cr_assert_eq(kvn_membership_member(a, (uint32_t)ib, &mi, reg, 3), -ENOSPC);

	/* node-b restarts: same name, same id; a newcomer gets a new one. */
	kvn_membership_stop(b);
	cr_assert(WAIT_UNTIL(seen_get(sa, &sa->down[ib]) > 0), "node-a hears node-b left");
	cr_assert(WAIT_UNTIL(kvn_membership_worker_count(a) == 1));
	cr_assert_eq(node_start(s.addr, "node-c", NULL, NULL, &c), 0, "%s", why);
	cr_assert_eq(node_start(s.addr, "node-b", NULL, sb, &b), 0, "%s", why);
	cr_assert_eq(kvn_membership_worker_id(b), ib, "node-b gets its worker id back");
	int32_t ic = kvn_membership_worker_id(c);
	cr_assert(ic != ia && ic != ib, "node-c does not take a reserved id");
	cr_assert(WAIT_UNTIL(kvn_membership_worker_count(a) == 3));
	cr_assert(kvn_membership_epoch(a) > 0);
	kvn_membership_stop(a);
	kvn_membership_stop(b);
	kvn_membership_stop(c);
	sched_stop(&s);
	free(sa);
	free(sb);
}

/* A member node in its own process: joins, publishes n keys, says its worker id on fd, then
 * waits to be killed. */
static pid_t
fork_member(const char *addr, const char *name, size_t n, uint64_t salt, int fd)
{
	pid_t pid = fork();
	cr_assert(pid >= 0);
	if (pid)
		return pid;
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	struct kvn_membership *m;
	int32_t id = -1;
	if (node_start(addr, name, NULL, NULL, &m) == 0) {
		struct kvn_cf_pub *ix = make_index(n, salt);
		kvn_membership_publish(m, ix, n);
		if (kvn_membership_flush(m, DEADLINE) == 0)
			id = kvn_membership_worker_id(m);
		free(ix);
	}
	ssize_t w = write(fd, &id, sizeof(id));
	(void)w;
	for (;;)
		pause();
}

Test(scheduler, a_member_killed_with_sigkill_is_expired_and_its_chunks_are_no_longer_returned)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", NULL);
	int pfd[2];
	cr_assert_eq(pipe(pfd), 0);
	pid_t victim = fork_member(s.addr, "victim", 500, 7, pfd[1]);
	int32_t vid = -1;
	struct pollfd pf = {.fd = pfd[0], .events = POLLIN};
	cr_assert_eq(poll(&pf, 1, DEADLINE), 1, "the member process reports in");
	cr_assert_eq(read(pfd[0], &vid, sizeof(vid)), (ssize_t)sizeof(vid));
	cr_assert(vid >= 0, "the member process joined and published");
	struct seen *sw = seen_new();
	struct kvn_membership *w;
	cr_assert_eq(node_start(s.addr, "watcher", NULL, sw, &w), 0, "%s", why);
	cr_assert(WAIT_UNTIL(found_on(w, 500, 7, (uint32_t)vid) == 500),
		  "the victim's 500 keys are in the directory");

	kill(victim, SIGKILL);
	waitpid(victim, NULL, 0);
	cr_assert(WAIT_UNTIL(seen_get(sw, &sw->down[vid]) > 0),
		  "the watcher is told the victim is gone");
	cr_assert_eq(found_on(w, 500, 7, (uint32_t)vid), 0, "none of its keys is returned");
	cr_assert_eq(kvn_membership_worker_count(w), 1);
	cr_assert(kvn_membership_connected(w), "the other member keeps working");
	cr_assert_eq(kvn_membership_joins(w), 1, "its heartbeats kept it a member all along");
	cr_assert_eq(found_on(w, 1, 7, (uint32_t)vid), 0);

	/* The victim's name comes back: its old worker id with it. */
	struct kvn_membership *again;
	cr_assert_eq(node_start(s.addr, "victim", NULL, NULL, &again), 0, "%s", why);
	cr_assert_eq(kvn_membership_worker_id(again), vid, "a restarted node gets its id back");
	kvn_membership_stop(again);
	kvn_membership_stop(w);
	close(pfd[0]);
	close(pfd[1]);
	sched_stop(&s);
	free(sw);
}

Test(scheduler, after_a_scheduler_restart_members_rejoin_and_lookups_answer_again)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", NULL);
	char listen[64];
	snprintf(listen, sizeof(listen), "%s", s.addr);
	struct seen *so = seen_new();
	enum { N = 3000 };
	so->index = make_index(N, 11);
	so->nindex = N;
	struct kvn_membership *owner, *reader;
	cr_assert_eq(node_start(s.addr, "owner", NULL, so, &owner), 0, "%s", why);
	cr_assert_eq(node_start(s.addr, "reader", NULL, NULL, &reader), 0, "%s", why);
	uint32_t oid = (uint32_t)kvn_membership_worker_id(owner);
	cr_assert(WAIT_UNTIL(found_on(reader, N, 11, oid) == N));

	proc_stop(&s.p, SIGKILL, 5000);
	cr_assert(WAIT_UNTIL(!kvn_membership_connected(reader)), "the reader notices");
	cr_assert_eq(found_on(reader, 1, 11, oid), 0, "no answers without a scheduler");
	sched_start(&s, listen, NULL);
	cr_assert(WAIT_UNTIL(found_on(reader, N, 11, oid) == N),
		  "the owner re-joined and re-published its whole index");
	cr_assert_geq(seen_get(so, &so->joins), 2);
	cr_assert_eq(kvn_membership_worker_id(owner), (int32_t)oid, "ids survive the restart");
	kvn_membership_stop(owner);
	kvn_membership_stop(reader);
	sched_stop(&s);
	free((void *)so->index);
	free(so);
}

Test(scheduler, a_node_configured_to_beat_slower_than_the_scheduler_follows_the_scheduler)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", NULL); /* heartbeat_ms 100 */
	struct kvn_membership_opts o = {
	    .scheduler = s.addr, .name = "slow", .heartbeat_ms = 5000, .timeout_ms = 10000};
	struct kvn_membership *m;
	cr_assert_eq(kvn_membership_start(&o, NULL, &m, why, sizeof(why)), 0, "%s", why);
	sleep_ms(1500); /* 15 of the scheduler's beats: expired by now unless it beats at 100 */
	cr_assert(kvn_membership_connected(m));
	cr_assert_eq(kvn_membership_joins(m), 1, "never expired and re-joined");
	kvn_membership_stop(m);
	sched_stop(&s);
}

Test(scheduler, a_wrong_or_missing_auth_token_is_refused)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", "s3cret-token");
	struct kvn_membership *m;
	cr_assert_eq(node_start(s.addr, "intruder", "wrong", NULL, &m), -EACCES, "%s", why);
	cr_assert(strstr(why, "auth_token"), "the message names the token: %s", why);
	cr_assert_eq(node_start(s.addr, "intruder", NULL, NULL, &m), -EACCES);
	char *json = NULL;
	cr_assert_eq(kvn_membership_fetch_stats(s.addr, NULL, 5000, &json, why, sizeof(why)),
		     -EACCES, "the cluster view needs the token too");
	cr_assert_eq(node_start(s.addr, "friend", "s3cret-token", NULL, &m), 0, "%s", why);
	cr_assert_eq(
	    kvn_membership_fetch_stats(s.addr, "s3cret-token", 5000, &json, why, sizeof(why)), 0,
	    "%s", why);
	cr_assert(strstr(json, "\"friend\""));
	cr_assert(!strstr(json, "intruder"), "refused nodes never became members");
	free(json);
	kvn_membership_stop(m);
	sched_stop(&s);
}

/* ------------------------------------------------------------------------------------------
 * Rogue clients
 * ------------------------------------------------------------------------------------------ */

static int
raw_connect(const char *addr)
{
	char host[KVN_HOST_MAX];
	uint16_t port;
	cr_assert_eq(kvn_hostport_parse(addr, host, &port, why, sizeof(why)), 0);
	int fd = kvn_tcp_connect(host, port, 5000, why, sizeof(why));
	cr_assert_geq(fd, 0, "%s", why);
	struct timeval tv = {.tv_sec = 20};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

/* Reads until EOF; returns whether the scheduler closed (and not the timeout), and whether it
 * sent an ERROR frame first. */
static bool
closed_by_scheduler(int fd, bool *sent_error)
{
	uint8_t buf[4096];
	size_t n = 0;
	for (;;) {
		ssize_t r = recv(fd, buf + n, sizeof(buf) - n, 0);
		if (r == 0)
			break;
		if (r < 0) {
			close(fd);
			return errno == ECONNRESET;
		}
		n += (size_t)r;
		if (n == sizeof(buf))
			n = 0;
	}
	struct kvn_cf_hdr h;
	*sent_error = n >= KVN_CF_HDR_SIZE && kvn_cf_hdr_decode(buf, &h, NULL, 0) == 0 &&
		      h.type == KVN_CF_ERROR;
	close(fd);
	return true;
}

static void
send_hdr(int fd, uint8_t type, uint32_t len)
{
	struct kvn_cf_hdr h = {.version = KVN_CF_VERSION, .type = type, .len = len};
	uint8_t w[KVN_CF_HDR_SIZE];
	kvn_cf_hdr_encode(&h, w);
	cr_assert_eq(send(fd, w, sizeof(w), MSG_NOSIGNAL), (ssize_t)sizeof(w));
}

Test(scheduler, garbage_oversized_and_truncated_frames_close_only_that_connection)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", NULL);
	struct kvn_membership *good;
	cr_assert_eq(node_start(s.addr, "good", NULL, NULL, &good), 0, "%s", why);
	struct kvn_cf_pub one = {.op = KVN_CF_ADMIT, .digest = key_digest(0, 3), .loc = key_loc(0)};
	kvn_membership_publish(good, &one, 1);
	cr_assert_eq(kvn_membership_flush(good, DEADLINE), 0);
	bool err;

	int fd = raw_connect(s.addr);
	const char garbage[] = "GET / HTTP/1.1\r\nHost: scheduler\r\n\r\n";
	send(fd, garbage, sizeof(garbage) - 1, MSG_NOSIGNAL);
	cr_assert(closed_by_scheduler(fd, &err), "garbage closes the connection");
	cr_assert(err, "with an ERROR frame saying why");

	fd = raw_connect(s.addr);
	send_hdr(fd, KVN_CF_PUBLISH, 0x7fffffff);
	cr_assert(closed_by_scheduler(fd, &err), "a 2 GiB frame is refused from its header");
	cr_assert(err);

	fd = raw_connect(s.addr);
	send_hdr(fd, KVN_CF_LOOKUP, 8 + 16);
	uint8_t body[24] = {1, 0, 0, 0, 1, 0, 0, 0};
	send(fd, body, sizeof(body), MSG_NOSIGNAL);
	cr_assert(closed_by_scheduler(fd, &err), "LOOKUP before JOIN is refused");

	fd = raw_connect(s.addr);
	uint8_t join[64] = {200, 0, 0, 0, '{'};
	send_hdr(fd, KVN_CF_JOIN, sizeof(join));
	send(fd, join, sizeof(join), MSG_NOSIGNAL);
	cr_assert(closed_by_scheduler(fd, &err), "a JOIN whose JSON length lies is refused");

	fd = raw_connect(s.addr);
	send_hdr(fd, KVN_CF_JOIN_OK, 2);
	send(fd, "{}", 2, MSG_NOSIGNAL);
	cr_assert(closed_by_scheduler(fd, &err), "a frame only a scheduler sends is refused");

	/* Truncated: half a header, then half a body, then gone. */
	fd = raw_connect(s.addr);
	send(fd, "KVNM\x01", 5, MSG_NOSIGNAL);
	close(fd);
	fd = raw_connect(s.addr);
	send_hdr(fd, KVN_CF_STATS, 100);
	send(fd, "{\"auth", 6, MSG_NOSIGNAL);
	close(fd);

	/* The scheduler still serves: the good member still joined, lookups still right. */
	cr_assert_eq(found_on(good, 1, 3, (uint32_t)kvn_membership_worker_id(good)), 1);
	cr_assert(kvn_membership_connected(good));
	char *json = NULL;
	cr_assert_eq(kvn_membership_fetch_stats(s.addr, NULL, 5000, &json, why, sizeof(why)), 0,
		     "%s", why);
	cr_assert(strstr(json, "\"protocol_errors\":5"), "five refusals counted: %s", json);
	free(json);
	kvn_membership_stop(good);
	cr_assert(proc_alive(&s.p), "the scheduler process survived all of it");
	sched_stop(&s);
}

/* ------------------------------------------------------------------------------------------
 * Directory through the wire
 * ------------------------------------------------------------------------------------------ */

Test(scheduler, publish_and_lookup_agree_on_many_keys_and_evicts_are_announced)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", NULL);
	struct seen *sa = seen_new(), *sb = seen_new();
	struct kvn_membership *a, *b;
	cr_assert_eq(node_start(s.addr, "pub", NULL, sa, &a), 0, "%s", why);
	cr_assert_eq(node_start(s.addr, "sub", NULL, sb, &b), 0, "%s", why);
	uint32_t ia = (uint32_t)kvn_membership_worker_id(a),
		 ib = (uint32_t)kvn_membership_worker_id(b);
	enum { N = 100000 };
	struct kvn_cf_pub *ix = make_index(N, 5);
	cr_assert_eq(kvn_membership_publish(a, ix, N), 0);
	cr_assert_eq(kvn_membership_flush(a, DEADLINE), 0);
	cr_assert(WAIT_UNTIL(found_on(b, N, 5, ia) == N), "all 100k keys found with their data");
	cr_assert_eq(found_on(b, N, 6, ia), 0, "keys never published are not found");

	/* Both hold key 0: two locations. */
	kvn_membership_publish(b, ix, 1);
	kvn_membership_flush(b, DEADLINE);
	cr_assert(WAIT_UNTIL(found_on(a, 1, 5, ib) == 1));
	cr_assert_eq(found_on(a, 1, 5, ia), 1);

	/* a evicts the even keys: gone from lookups, announced to b. */
	size_t ev = 0;
	for (size_t i = 0; i < N; i += 2, ev++) {
		ix[ev] = ix[i];
		ix[ev].op = KVN_CF_EVICT;
		ix[ev].loc.generation = 0;
	}
	kvn_membership_publish(a, ix, ev);
	kvn_membership_flush(a, DEADLINE);
	cr_assert(WAIT_UNTIL(found_on(b, N, 5, ia) == N - ev));
	pthread_mutex_lock(&sb->mu);
	size_t told = sb->evicted;
	pthread_mutex_unlock(&sb->mu);
	cr_assert(WAIT_UNTIL(({
			  pthread_mutex_lock(&sb->mu);
			  told = sb->evicted;
			  pthread_mutex_unlock(&sb->mu);
			  told == ev;
		  })),
		  "b was told of every eviction (%zu of %zu)", told, ev);
	pthread_mutex_lock(&sa->mu);
	cr_assert_eq(sa->evicted, 0, "the evicting node is not told its own evictions");
	pthread_mutex_unlock(&sa->mu);
	kvn_membership_stop(a);
	kvn_membership_stop(b);
	sched_stop(&s);
	free(ix);
	free(sa);
	free(sb);
}

/* ------------------------------------------------------------------------------------------
 * In-process scheduler: the connection cap
 * ------------------------------------------------------------------------------------------ */

static void *
run_sched(void *arg)
{
	kvn_scheduler_run(arg);
	return NULL;
}

Test(scheduler, connections_over_the_cap_are_closed_at_once)
{
	struct kvn_scheduler *s;
	struct kvn_scheduler_opts o = {.listen = "127.0.0.1:0", .max_conns = 3};
	cr_assert_eq(kvn_scheduler_create(&o, &s, why, sizeof(why)), 0, "%s", why);
	pthread_t th;
	pthread_create(&th, NULL, run_sched, s);
	int fds[3];
	for (int i = 0; i < 3; i++)
		fds[i] = raw_connect(kvn_scheduler_address(s));
	sleep_ms(100);
	int extra = raw_connect(kvn_scheduler_address(s));
	bool err;
	cr_assert(closed_by_scheduler(extra, &err), "the fourth connection is closed");
	close(fds[0]);
	/* A slot freed: stats work again on a new connection. */
	char *json = NULL;
	cr_assert(WAIT_UNTIL(kvn_membership_fetch_stats(kvn_scheduler_address(s), NULL, 5000, &json,
							why, sizeof(why)) == 0));
	const char *r = strstr(json, "\"refused\":");
	cr_assert(r && atoi(r + strlen("\"refused\":")) >= 1, "the refusal is counted: %s", json);
	free(json);
	close(fds[1]);
	close(fds[2]);
	kvn_scheduler_stop(s);
	pthread_join(th, NULL);
	kvn_scheduler_destroy(s);
}

Test(scheduler, a_connection_that_never_joins_is_closed_and_frees_its_slot)
{
	struct kvn_scheduler *s;
	struct kvn_scheduler_opts o = {.listen = "127.0.0.1:0", .max_conns = 1, .unjoined_ms = 200};
	cr_assert_eq(kvn_scheduler_create(&o, &s, why, sizeof(why)), 0, "%s", why);
	pthread_t th;
	pthread_create(&th, NULL, run_sched, s);
	int idle = raw_connect(kvn_scheduler_address(s));
	bool err;
	cr_assert(closed_by_scheduler(idle, &err), "the idle connection is closed");
	struct kvn_membership *m;
	cr_assert_eq(node_start(kvn_scheduler_address(s), "late", NULL, NULL, &m), 0, "%s", why);
	sleep_ms(600); /* three times the limit: a joined member must still be there */
	cr_assert(kvn_membership_connected(m), "a joined member is not subject to that limit");
	cr_assert_eq(kvn_membership_joins(m), 1, "and was never cut off and re-joined");
	kvn_membership_stop(m);
	kvn_scheduler_stop(s);
	pthread_join(th, NULL);
	kvn_scheduler_destroy(s);
}

Test(scheduler, kvnode_stat_shows_the_cluster_view)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", NULL);
	struct kvn_membership *m;
	cr_assert_eq(node_start(s.addr, "stat-node", NULL, NULL, &m), 0, "%s", why);
	struct kvn_cf_pub ix[3];
	for (int i = 0; i < 3; i++)
		ix[i] = (struct kvn_cf_pub){
		    .op = KVN_CF_ADMIT, .digest = key_digest(i, 9), .loc = key_loc(i)};
	kvn_membership_publish(m, ix, 3);
	kvn_membership_flush(m, DEADLINE);
	cr_assert(WAIT_UNTIL(found_on(m, 3, 9, (uint32_t)kvn_membership_worker_id(m)) == 3));
	char out[300];
	snprintf(out, sizeof(out), "%s/stat.out", s.dir);
	const char *argv[] = {KVNODE, "stat", "--scheduler", s.addr, NULL};
	const char *env[] = {"KVNODE_CONFIG_FILE", "LMCACHE_CONFIG_FILE", "KVNODE_AUTH_TOKEN",
			     NULL};
	struct proc_opts po = {.stdout_path = out, .env = env};
	cr_assert_eq(proc_run(argv, &po, DEADLINE), 0);
	char *text = proc_read_file(out, NULL);
	cr_assert(text && strstr(text, "stat-node"), "the member is listed: %s", text);
	cr_assert(strstr(text, "alive"));
	cr_assert(strstr(text, "CHUNKS"));
	free(text);
	kvn_membership_stop(m);
	/* A scheduler that is not there: exit 3. */
	const char *argv2[] = {KVNODE, "stat", "--scheduler", "127.0.0.1:1", NULL};
	cr_assert_eq(proc_run(argv2, &po, DEADLINE), 3);
	sched_stop(&s);
}

Test(scheduler, a_bad_listen_address_is_a_usage_error_and_sigterm_exits_cleanly)
{
	const char *env[] = {"KVNODE_CONFIG_FILE", "LMCACHE_CONFIG_FILE", NULL};
	struct proc_opts po = {.env = env};
	const char *bad[] = {KVNODE, "scheduler", "--listen", "127.0.0.1", NULL};
	cr_assert_eq(proc_run(bad, &po, DEADLINE), 2, "a listen address without a port");
	const char *misplaced[] = {KVNODE, "stat", "--listen", "127.0.0.1:1", NULL};
	cr_assert_eq(proc_run(misplaced, &po, DEADLINE), 2, "--listen belongs to scheduler only");
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", NULL);
	cr_assert_eq(proc_stop(&s.p, SIGTERM, DEADLINE), 0, "SIGTERM: exit 0");
	sched_stop(&s);
}

Test(scheduler, kvnode_bench_scheduler_reports_lookups_and_memory_as_json)
{
	char dir[256], out[300];
	cr_assert_eq(proc_mkdtemp("schedbench", dir, sizeof(dir)), 0);
	snprintf(out, sizeof(out), "%s/bench.json", dir);
	const char *argv[] = {KVN_BINARY_DIR "/kvnode-bench",
			      "scheduler",
			      "--json",
			      "--duration",
			      "0.1",
			      "--entries",
			      "20000",
			      NULL};
	struct proc_opts po = {.stdout_path = out};
	cr_assert_eq(proc_run(argv, &po, 120000), 0);
	char *text = proc_read_file(out, NULL);
	cr_assert(text);
	cJSON *rows = cJSON_Parse(text);
	cr_assert(cJSON_IsArray(rows), "JSON array: %s", text);
	int lookups = 0, memory = 0;
	const cJSON *r;
	cJSON_ArrayForEach(r, rows)
	{
		cr_assert_str_eq(cJSON_GetObjectItem(r, "mode")->valuestring, "scheduler");
		const char *op = cJSON_GetObjectItem(r, "op")->valuestring;
		if (!strcmp(op, "lookup")) {
			int batch = cJSON_GetObjectItem(r, "batch")->valueint;
			cr_assert(batch == 1 || batch == 16 || batch == 256);
			cr_assert_gt(cJSON_GetObjectItem(r, "ops_per_s")->valuedouble, 0);
			lookups++;
		} else {
			cr_assert_str_eq(op, "memory");
			cr_assert_eq(cJSON_GetObjectItem(r, "entries")->valuedouble, 20000);
			cr_assert(cJSON_IsNumber(cJSON_GetObjectItem(r, "bytes_per_entry")));
			/* A table at most 3/4 full holds more than one entry's bytes per entry. */
			cr_assert_gt(
			    cJSON_GetObjectItem(r, "allocated_bytes_per_entry")->valuedouble, 48);
			memory++;
		}
	}
	cr_assert_eq(lookups, 3);
	cr_assert_eq(memory, 1);
	cJSON_Delete(rows);
	free(text);
	proc_rm_tree(dir);
}

/* Random bodies behind valid headers, from joined and unjoined connections, into an
 * in-process scheduler (so a sanitizer build sees any bad memory access in the decoders). */
Test(scheduler, random_frame_bodies_never_hurt_the_scheduler)
{
	struct kvn_scheduler *s;
	struct kvn_scheduler_opts o = {.listen = "127.0.0.1:0"};
	cr_assert_eq(kvn_scheduler_create(&o, &s, why, sizeof(why)), 0, "%s", why);
	pthread_t th;
	pthread_create(&th, NULL, run_sched, s);
	const char *addr = kvn_scheduler_address(s);
	static const uint8_t types[] = {KVN_CF_JOIN, KVN_CF_PUBLISH, KVN_CF_LOOKUP, KVN_CF_STATS,
					KVN_CF_HEARTBEAT};
	uint64_t r = 42;
	for (int i = 0; i < 300; i++) {
		int fd = raw_connect(addr);
		struct kvn_cf_buf b = {0};
		if (i % 2) { /* joined first: PUBLISH and LOOKUP bodies reach their checks */
			kvn_cf_put_json_frame(&b, KVN_CF_JOIN, 1, "{\"name\":\"fuzz\"}", NULL, 0);
		}
		r = mix(r);
		uint8_t type = types[r % sizeof(types)];
		uint32_t len = type == KVN_CF_HEARTBEAT ? 0 : (uint32_t)((r >> 8) % 600);
		kvn_cf_begin(&b, type, 7);
		for (uint32_t k = 0; k < len; k++) {
			uint8_t byte = (uint8_t)mix(r + k);
			/* Small counts now and then, so some bodies get past the first check. */
			if (k < 8 && (r >> 20) % 2)
				byte = k == 0 ? (uint8_t)(len / 48) : k == 4 ? 1 : 0;
			kvn_cf_put_bytes(&b, &byte, 1);
		}
		kvn_cf_end(&b);
		send(fd, b.p, b.len, MSG_NOSIGNAL);
		kvn_cf_buf_free(&b);
		close(fd);
	}
	struct kvn_membership *m;
	cr_assert_eq(node_start(addr, "after-fuzz", NULL, NULL, &m), 0, "%s", why);
	struct kvn_cf_pub one = {
	    .op = KVN_CF_ADMIT, .digest = key_digest(1, 77), .loc = key_loc(1)};
	kvn_membership_publish(m, &one, 1);
	kvn_membership_flush(m, DEADLINE);
	cr_assert(WAIT_UNTIL(found_on(m, 2, 77, (uint32_t)kvn_membership_worker_id(m)) == 1),
		  "the scheduler still answers correctly");
	kvn_membership_stop(m);
	kvn_scheduler_stop(s);
	pthread_join(th, NULL);
	kvn_scheduler_destroy(s);
}
