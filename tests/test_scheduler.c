/* The membership service: `kvnode scheduler` as a child process on 127.0.0.1 with in-process and
 * forked member nodes — stable worker ids, expiry of a SIGKILLed member, re-join and re-publish
 * after a scheduler restart, heartbeat period, auth tokens; against a scripted scheduler, what a
 * node makes of error codes and member notices, and its waits under a wall-clock step.
 * Deadlines are generous; nothing asserts on a duration being short. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/netaddr.h"
#include "node/scheduler/scheduler.h"
#include "core/auth.h"
#include "tests/helpers/sched_env.h"
#include "tests/helpers/proc.h"

/* ------------------------------------------------------------------------------------------
 * Membership
 * ------------------------------------------------------------------------------------------ */

Test(scheduler, nodes_get_stable_worker_ids_and_learn_of_each_other)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", NULL);
	struct seen *sa = sched_seen_new(), *sb = sched_seen_new();
	struct kvn_membership *a, *b, *c;
	cr_assert_eq(sched_node_start(s.addr, "node-a", NULL, sa, &a), 0, "%s", sched_err);
	cr_assert_eq(sched_node_start(s.addr, "node-b", NULL, sb, &b), 0, "%s", sched_err);
	int32_t ia = kvn_membership_worker_id(a), ib = kvn_membership_worker_id(b);
	cr_assert(ia >= 0 && ib >= 0 && ia != ib, "distinct worker ids (%d, %d)", ia, ib);
	cr_assert(WAIT_UNTIL(sched_seen_get(sa, &sa->up[ib]) > 0),
		  "node-a hears that node-b joined");
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
	cr_assert(WAIT_UNTIL(sched_seen_get(sa, &sa->down[ib]) > 0), "node-a hears node-b left");
	cr_assert(WAIT_UNTIL(kvn_membership_worker_count(a) == 1));
	cr_assert_eq(sched_node_start(s.addr, "node-c", NULL, NULL, &c), 0, "%s", sched_err);
	cr_assert_eq(sched_node_start(s.addr, "node-b", NULL, sb, &b), 0, "%s", sched_err);
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
	if (sched_node_start(addr, name, NULL, NULL, &m) == 0) {
		struct kvn_cf_pub *ix = sched_make_index(n, salt);
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
	struct seen *sw = sched_seen_new();
	struct kvn_membership *w;
	cr_assert_eq(sched_node_start(s.addr, "watcher", NULL, sw, &w), 0, "%s", sched_err);
	cr_assert(WAIT_UNTIL(sched_found_on(w, 500, 7, (uint32_t)vid) == 500),
		  "the victim's 500 keys are in the directory");

	kill(victim, SIGKILL);
	waitpid(victim, NULL, 0);
	cr_assert(WAIT_UNTIL(sched_seen_get(sw, &sw->down[vid]) > 0),
		  "the watcher is told the victim is gone");
	cr_assert_eq(sched_found_on(w, 500, 7, (uint32_t)vid), 0, "none of its keys is returned");
	cr_assert_eq(kvn_membership_worker_count(w), 1);
	cr_assert(kvn_membership_connected(w), "the other member keeps working");
	cr_assert_eq(kvn_membership_joins(w), 1, "its heartbeats kept it a member all along");
	cr_assert_eq(sched_found_on(w, 1, 7, (uint32_t)vid), 0);

	/* The victim's name comes back: its old worker id with it. */
	struct kvn_membership *again;
	cr_assert_eq(sched_node_start(s.addr, "victim", NULL, NULL, &again), 0, "%s", sched_err);
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
	struct seen *so = sched_seen_new();
	enum { N = 3000 };
	so->index = sched_make_index(N, 11);
	so->nindex = N;
	struct kvn_membership *owner, *reader;
	cr_assert_eq(sched_node_start(s.addr, "owner", NULL, so, &owner), 0, "%s", sched_err);
	cr_assert_eq(sched_node_start(s.addr, "reader", NULL, NULL, &reader), 0, "%s", sched_err);
	uint32_t oid = (uint32_t)kvn_membership_worker_id(owner);
	cr_assert(WAIT_UNTIL(sched_found_on(reader, N, 11, oid) == N));

	proc_stop(&s.p, SIGKILL, 5000);
	cr_assert(WAIT_UNTIL(!kvn_membership_connected(reader)), "the reader notices");
	cr_assert_eq(sched_found_on(reader, 1, 11, oid), 0, "no answers without a scheduler");
	sched_start(&s, listen, NULL);
	cr_assert(WAIT_UNTIL(sched_found_on(reader, N, 11, oid) == N),
		  "the owner re-joined and re-published its whole index");
	cr_assert_geq(sched_seen_get(so, &so->joins), 2);
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
	char *tok = sched_host_token();
	struct kvn_membership_opts o = {.scheduler = s.addr,
					.name = "slow",
					.heartbeat_ms = 5000,
					.timeout_ms = 10000,
					.auth_token = tok};
	struct kvn_membership *m;
	cr_assert_eq(kvn_membership_start(&o, NULL, &m, sched_err, sizeof(sched_err)), 0, "%s",
		     sched_err);
	sched_sleep_ms(
	    1500); /* 15 of the scheduler's beats: expired by now unless it beats at 100 */
	cr_assert(kvn_membership_connected(m));
	cr_assert_eq(kvn_membership_joins(m), 1, "never expired and re-joined");
	kvn_membership_stop(m);
	sched_stop(&s);
	free(tok);
}

Test(scheduler, a_wrong_or_missing_auth_token_is_refused)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", "s3cret-token");
	struct kvn_membership *m;
	cr_assert_eq(sched_node_start(s.addr, "intruder", "wrong", NULL, &m), -EACCES, "%s",
		     sched_err);
	cr_assert(strstr(sched_err, "auth_token"), "the message names the token: %s", sched_err);
	cr_assert_eq(sched_node_start(s.addr, "intruder", NULL, NULL, &m), -EACCES);
	char *json = NULL;
	cr_assert_eq(
	    kvn_membership_fetch_stats(s.addr, NULL, 5000, &json, sched_err, sizeof(sched_err)),
	    -EACCES, "the cluster view needs the token too");
	cr_assert_eq(sched_node_start(s.addr, "friend", "s3cret-token", NULL, &m), 0, "%s",
		     sched_err);
	cr_assert_eq(kvn_membership_fetch_stats(s.addr, "s3cret-token", 5000, &json, sched_err,
						sizeof(sched_err)),
		     0, "%s", sched_err);
	cr_assert(strstr(json, "\"friend\""));
	cr_assert(!strstr(json, "intruder"), "refused nodes never became members");
	free(json);
	kvn_membership_stop(m);
	sched_stop(&s);
}

/* The re-join raced the stop: LEAVE went out while the thread still believed it should stay, so
 * it saw the scheduler close the connection and joined once more before stopping. To open that
 * window the stop runs at idle priority on one CPU shared with the scheduler, the membership
 * thread and a spinning thread: the scheduler, woken by LEAVE, preempts the stopping thread
 * right after the send, and the stopping thread then waits behind the spinner while the
 * scheduler closes the connection. The count is exact (every join runs the joined callback
 * before the thread exits, and stop joins the thread); a join before the stop (a starved node
 * expired and coming back) is fine. */
struct stopper {
	struct kvn_membership *m;
	int cpu;
	atomic_bool spin_stop;
};

static void *
stop_idle(void *arg)
{
	struct stopper *st = arg;
	proc_pin_self(st->cpu);
	struct sched_param sp = {0};
	pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
	kvn_membership_stop(st->m);
	return NULL;
}

static void *
spinner(void *arg)
{
	struct stopper *st = arg;
	proc_pin_self(st->cpu);
	while (!atomic_load(&st->spin_stop))
		;
	return NULL;
}

Test(scheduler, a_stopping_node_leaves_without_joining_again)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", NULL);
	cpu_set_t all;
	CPU_ZERO(&all);
	pthread_getaffinity_np(pthread_self(), sizeof(all), &all);
	int cpu = -1;
	for (int c = 0; c < CPU_SETSIZE && cpu < 0; c++)
		if (CPU_ISSET(c, &all))
			cpu = c;
	if (CPU_COUNT(&all) < 2)
		cpu = -1; /* one CPU: no spinner, the test still runs the cycles */
	if (cpu >= 0) {
		cpu_set_t one;
		CPU_ZERO(&one);
		CPU_SET(cpu, &one);
		sched_setaffinity(s.p.pid, sizeof(one), &one);
	}
	struct stopper st = {.cpu = cpu};
	pthread_t spin;
	if (cpu >= 0)
		cr_assert_eq(pthread_create(&spin, NULL, spinner, &st), 0);
	struct seen *sa = sched_seen_new();
	for (int i = 0; i < 20; i++) {
		int before = sched_seen_get(sa, &sa->joins);
		proc_pin_self(cpu); /* the membership thread inherits it */
		cr_assert_eq(sched_node_start(s.addr, "leaver", NULL, sa, &st.m), 0, "%s",
			     sched_err);
		pthread_setaffinity_np(pthread_self(), sizeof(all), &all);
		cr_assert(WAIT_UNTIL(sched_seen_get(sa, &sa->joins) > before),
			  "cycle %d: the joined callback never ran", i);
		int joins = sched_seen_get(sa, &sa->joins);
		pthread_t t;
		cr_assert_eq(pthread_create(&t, NULL, stop_idle, &st), 0);
		pthread_join(t, NULL);
		cr_assert_eq(sched_seen_get(sa, &sa->joins), joins,
			     "cycle %d: the node joined again while stopping (after sending LEAVE)",
			     i);
	}
	atomic_store(&st.spin_stop, true);
	if (cpu >= 0)
		pthread_join(spin, NULL);
	sched_stop(&s);
	free(sa);
}

/* ------------------------------------------------------------------------------------------
 * Against a scripted scheduler: what a node makes of what it is told
 * ------------------------------------------------------------------------------------------ */

struct fake {
	int lfd;
	char addr[64];
	pthread_mutex_t mu;	 /* reply: the test rewrites it while the thread may send it */
	struct kvn_cf_buf reply; /* sent once the first frame after the HELLO came */
	char *token;		 /* proved in its CHALLENGE; the tests' host token when NULL */
	pthread_t th;
	atomic_bool stop;
};

/* The scheduler's half of the auth set-up, as the real one does it (ctlframe.h "Auth"). */
static void
fake_challenge(const struct fake *f, int fd, const struct kvn_cf_hdr *h, const uint8_t *body)
{
	struct kvn_auth a;
	kvn_auth_init(&a, f->token);
	uint8_t nonce_s[KVN_AUTH_NONCE], proof[KVN_AUTH_MAC];
	kvn_auth_nonce(nonce_s);
	const struct kvn_auth_part parts[] = {{body, KVN_AUTH_NONCE}, {nonce_s, KVN_AUTH_NONCE}};
	kvn_auth_mac(&a, KVN_CF_SCHED_LABEL, parts, 2, proof);
	struct kvn_cf_buf b = {0};
	kvn_cf_begin(&b, KVN_CF_CHALLENGE, h->seq);
	kvn_cf_put_bytes(&b, nonce_s, sizeof(nonce_s));
	kvn_cf_put_u32(&b, KVN_CF_F_TOKEN);
	kvn_cf_put_bytes(&b, proof, sizeof(proof));
	kvn_cf_end(&b);
	kvn_cf_send_all(fd, b.p, b.len);
	kvn_cf_buf_free(&b);
}

static void *
fake_main(void *arg)
{
	struct fake *f = arg;
	while (!atomic_load(&f->stop)) {
		struct pollfd pf = {.fd = f->lfd, .events = POLLIN};
		if (poll(&pf, 1, 50) <= 0)
			continue;
		int fd = accept(f->lfd, NULL, NULL);
		if (fd < 0)
			continue;
		struct kvn_cf_rx rx = {0};
		bool answered = false;
		while (!atomic_load(&f->stop)) {
			struct kvn_cf_hdr h;
			const uint8_t *body;
			char err[256];
			int rc = kvn_cf_rx_wait(&rx, fd, 50, &h, &body, err, sizeof(err));
			if (rc == -ETIMEDOUT)
				continue;
			if (rc)
				break;
			if (h.type == KVN_CF_HELLO && h.len == KVN_AUTH_NONCE) {
				fake_challenge(f, fd, &h, body);
			} else if (!answered) {
				pthread_mutex_lock(&f->mu);
				kvn_cf_send_all(fd, f->reply.p, f->reply.len);
				pthread_mutex_unlock(&f->mu);
				answered = true;
			} else if (h.type == KVN_CF_HEARTBEAT) {
				struct kvn_cf_buf ack = {0};
				kvn_cf_begin(&ack, KVN_CF_HEARTBEAT_ACK, h.seq);
				kvn_cf_put_u64(&ack, 5);
				kvn_cf_put_u32(&ack, 2);
				kvn_cf_put_u32(&ack, 0);
				kvn_cf_end(&ack);
				kvn_cf_send_all(fd, ack.p, ack.len);
				kvn_cf_buf_free(&ack);
			}
			kvn_cf_rx_consume(&rx, &h);
		}
		kvn_cf_rx_free(&rx);
		close(fd);
	}
	return NULL;
}

static void
fake_start(struct fake *f)
{
	if (!f->token)
		f->token = sched_host_token();
	uint16_t port = 0;
	f->lfd = kvn_tcp_listen("127.0.0.1", 0, 16, &port, sched_err, sizeof(sched_err));
	cr_assert_geq(f->lfd, 0, "%s", sched_err);
	snprintf(f->addr, sizeof(f->addr), "127.0.0.1:%u", port);
	cr_assert_eq(pthread_create(&f->th, NULL, fake_main, f), 0);
}

static void
fake_stop(struct fake *f)
{
	atomic_store(&f->stop, true);
	pthread_join(f->th, NULL);
	close(f->lfd);
	kvn_cf_buf_free(&f->reply);
	free(f->token);
}

static void
fake_error(struct fake *f, const char *json)
{
	pthread_mutex_lock(&f->mu);
	kvn_cf_buf_reset(&f->reply);
	int rc = kvn_cf_put_json_frame(&f->reply, KVN_CF_ERROR, 0, json, NULL, 0);
	pthread_mutex_unlock(&f->mu);
	cr_assert_eq(rc, 0);
}

Test(scheduler, a_refusal_is_told_apart_by_its_error_code_not_by_its_text)
{
	struct fake f = {.mu = PTHREAD_MUTEX_INITIALIZER, .token = strdup("some-token")};
	char json[128];
	snprintf(json, sizeof(json), "{\"error\":\"refused by this cluster's policy\",\"code\":%d}",
		 EACCES);
	fake_error(&f, json);
	fake_start(&f);
	struct kvn_membership *m;
	cr_assert_eq(sched_node_start(f.addr, "node", "some-token", NULL, &m), -EACCES,
		     "EACCES is an auth failure whatever the text: %s", sched_err);
	cr_assert(strstr(sched_err, "refused by this cluster's policy"), "%s", sched_err);
	char *stats = NULL;
	cr_assert_eq(
	    kvn_membership_fetch_stats(f.addr, "some-token", 5000, &stats, sched_err,
				       sizeof(sched_err)),
	    -EACCES, "%s", sched_err);
	snprintf(json, sizeof(json), "{\"error\":\"bad auth_token field type\",\"code\":%d}",
		 EINVAL);
	fake_error(&f, json);
	cr_assert_eq(sched_node_start(f.addr, "node", "some-token", NULL, &m), -EINVAL,
		     "a text that names auth_token is not an auth failure: %s", sched_err);
	fake_stop(&f);
}

static long
rss_kb(void)
{
	char *text = proc_read_file("/proc/self/status", NULL);
	cr_assert(text);
	const char *p = strstr(text, "VmRSS:");
	long kb = p ? atol(p + 6) : -1;
	free(text);
	return kb;
}

Test(scheduler, a_member_notice_with_a_huge_worker_id_costs_a_node_one_record_not_a_table)
{
	struct fake f = {.mu = PTHREAD_MUTEX_INITIALIZER};
	kvn_cf_put_json_frame(
	    &f.reply, KVN_CF_JOIN_OK, 0,
	    "{\"worker_id\":0,\"worker_count\":2,\"epoch\":5,\"heartbeat_ms\":100}", NULL, 0);
	kvn_cf_put_json_frame(&f.reply, KVN_CF_MEMBER, 0,
			      "{\"worker_id\":65534,\"name\":\"far\",\"data_addr\":\"127.0.0.1:9\","
			      "\"transport\":\"tcp\",\"capacity\":1,\"state\":\"up\",\"epoch\":5,"
			      "\"worker_count\":2}",
			      "r", 1);
	fake_start(&f);
	long before = rss_kb();
	struct kvn_membership *m;
	cr_assert_eq(sched_node_start(f.addr, "node", NULL, NULL, &m), 0, "%s", sched_err);
	struct kvn_member_info mi;
	char reg[8];
	cr_assert(WAIT_UNTIL(kvn_membership_member(m, 65534, &mi, reg, sizeof(reg)) == 0),
		  "the member is known");
	cr_assert_str_eq(mi.name, "far");
	cr_assert_eq(kvn_membership_member(m, 1000, &mi, reg, sizeof(reg)), -ENOENT);
	long grown = rss_kb() - before;
	cr_assert_lt(grown, 8 * 1024, "one member notice cost %ld KiB", grown);
	kvn_membership_stop(m);
	fake_stop(&f);
}

/* A wall clock the test can step. This program's clock_gettime is the one the library calls;
 * the monotonic clock is left alone. */
static _Atomic long realtime_shift_s;

int
clock_gettime(clockid_t id, struct timespec *ts)
{
	int rc = (int)syscall(SYS_clock_gettime, id, ts);
	if (rc == 0 && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE))
		ts->tv_sec += atomic_load(&realtime_shift_s);
	return rc;
}

static double
mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

Test(scheduler, a_wall_clock_step_does_not_cut_a_lookup_wait_short)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", NULL);
	struct kvn_membership *m;
	cr_assert_eq(sched_node_start(s.addr, "stepper", NULL, NULL, &m), 0, "%s", sched_err);
	kill(s.p.pid, SIGSTOP); /* the scheduler answers nothing now */
	atomic_store(&realtime_shift_s, -3600);
	struct kvn_digest k = sched_key_digest(1, 1);
	uint32_t n;
	struct kvn_loc loc;
	double t0 = mono_s();
	int rc = kvn_membership_lookup(m, &k, 1, 1, &n, &loc, 1500);
	double waited = mono_s() - t0;
	atomic_store(&realtime_shift_s, 0);
	kill(s.p.pid, SIGCONT);
	cr_assert_eq(rc, -ETIMEDOUT, "%s", kvn_strerror(rc));
	cr_assert_geq(waited, 1.4,
		      "the wall clock went back an hour: a wait of 1.5 s lasted %.3f s", waited);
	kvn_membership_stop(m);
	sched_stop(&s);
}
