/* TCP transport cases beyond the conformance suite: the wire protocol seen from a raw socket
 * (the authenticated set-up, replays, the hello deadline, the connection cap, running out of
 * descriptors), stalls, reconnects to the same address, striping, and deregistration during a
 * transfer. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench.h"
#include "kvnode/transport.h"
#include "core/netaddr.h"
#include "rdma/tcp/tcp.h"
#include "tests/helpers/proc.h"

#define MIB (1024 * 1024)
#define DEADLINE_MS 120000
#define BENCH KVN_BINARY_DIR "/kvnode-bench"

static const struct kvn_transport_ops *ops = &kvn_transport_tcp;

static struct kvn_transport *
tp_open(int timeout_ms, int conns)
{
	struct kvn_transport *tp;
	char err[256] = "";
	struct kvn_transport_cfg cfg = {KVN_TRANSPORT_CFG_INIT, .timeout_ms = timeout_ms,
					.conns_per_peer = conns};
	cr_assert_eq(ops->open(&cfg, &tp, err, sizeof(err)), 0, "%s", err);
	return tp;
}

static char *
pattern_buf(size_t len)
{
	char *p = NULL;
	cr_assert_eq(posix_memalign((void **)&p, 4096, len), 0);
	for (size_t i = 0; i < len; i++)
		p[i] = (char)bench_pattern(i);
	return p;
}

static void
expect_pattern(const char *buf, uint64_t off, uint64_t len)
{
	for (uint64_t j = 0; j < len; j++)
		if ((uint8_t)buf[j] != bench_pattern(off + j))
			cr_assert_fail("byte %" PRIu64 " of %" PRIu64 " at offset %" PRIu64 " wrong", j,
				       len, off);
}

/* ---------------------------------------------------------------------------------------------
 * The wire, from a raw socket
 * ------------------------------------------------------------------------------------------- */

static void
full_write(int fd, const void *p, size_t n)
{
	cr_assert_eq(send(fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

static void
full_read(int fd, void *p, size_t n)
{
	size_t got = 0;
	while (got < n) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		cr_assert_gt(poll(&pfd, 1, DEADLINE_MS), 0, "no answer from the responder");
		ssize_t r = recv(fd, (char *)p + got, n - got, 0);
		cr_assert_gt(r, 0, "the responder closed the connection");
		got += (size_t)r;
	}
}

static int
raw_connect(const char *bound)
{
	char host[KVN_HOST_MAX], err[256];
	uint16_t port;
	cr_assert_eq(kvn_hostport_parse(bound, host, &port, err, sizeof(err)), 0);
	int fd = kvn_tcp_connect(host, port, 5000, err, sizeof(err));
	cr_assert_geq(fd, 0, "%s", err);
	return fd;
}

static struct tcp_resp
raw_request(int fd, uint32_t op, uint32_t rkey, uint64_t seq, uint64_t addr, uint64_t len)
{
	uint8_t frame[TCP_REQ_SIZE], hdr[TCP_RESP_SIZE];
	kvn_tcp_req_encode(&(struct tcp_req){op, rkey, seq, addr, len}, frame);
	full_write(fd, frame, sizeof(frame));
	full_read(fd, hdr, sizeof(hdr));
	struct tcp_resp r;
	kvn_tcp_resp_decode(hdr, &r);
	cr_assert_eq(r.seq, seq, "responses answer requests in order");
	return r;
}

/* The reader's half of the set-up (rdma/tcp/tcp.h), by hand: sends a hello with nonce_r, reads the
 * challenge (nonce_o, the owner's flags and proof). */
static void
raw_hello(int fd, const struct kvn_auth *a, const uint8_t nonce_r[KVN_AUTH_NONCE],
	  uint8_t nonce_o[KVN_AUTH_NONCE], struct tcp_hdr *h)
{
	uint8_t m[TCP_CHALLENGE_SIZE];
	kvn_tcp_hdr_encode(0, a->set ? TCP_F_TOKEN : 0, m);
	memcpy(m + TCP_HDR_SIZE, nonce_r, KVN_AUTH_NONCE);
	full_write(fd, m, TCP_HELLO_SIZE);
	full_read(fd, m, TCP_CHALLENGE_SIZE);
	kvn_tcp_hdr_decode(m, TCP_CHALLENGE_SIZE, h);
	memcpy(nonce_o, m + TCP_HDR_SIZE, KVN_AUTH_NONCE);
}

/* The proof for (nonce_o, nonce_r) under a, as an honest reader makes it. */
static void
reader_proof(const struct kvn_auth *a, const uint8_t nonce_o[KVN_AUTH_NONCE],
	     const uint8_t nonce_r[KVN_AUTH_NONCE], uint8_t out[TCP_PROOF_SIZE])
{
	const struct kvn_auth_part parts[] = {{nonce_o, KVN_AUTH_NONCE}, {nonce_r, KVN_AUTH_NONCE}};
	kvn_tcp_hdr_encode(0, a->set ? TCP_F_TOKEN : 0, out);
	kvn_auth_mac(a, TCP_READER_LABEL, parts, 2, out + TCP_HDR_SIZE);
}

/* Sends proof and, right behind it without waiting, a valid read request; returns the verdict
 * status and (in after) everything the owner sends until it closes, or the first response. */
static uint32_t
proof_then_read(int fd, const uint8_t proof[TCP_PROOF_SIZE], const struct kvn_mem_desc *d,
		uint8_t *after, ssize_t *nafter)
{
	uint8_t out[TCP_PROOF_SIZE + TCP_REQ_SIZE], verdict[TCP_VERDICT_SIZE];
	memcpy(out, proof, TCP_PROOF_SIZE);
	kvn_tcp_req_encode(&(struct tcp_req){TCP_REQ_READ, d->rkey, 1, d->addr, 4096},
			   out + TCP_PROOF_SIZE);
	full_write(fd, out, sizeof(out));
	full_read(fd, verdict, sizeof(verdict));
	struct tcp_hdr h;
	kvn_tcp_hdr_decode(verdict, sizeof(verdict), &h);
	*nafter = 0;
	for (;;) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		cr_assert_gt(poll(&pfd, 1, DEADLINE_MS), 0,
			     "the responder neither sent nor closed");
		ssize_t r = recv(fd, after + *nafter, TCP_RESP_SIZE + 4096 - (size_t)*nafter, 0);
		if (r <= 0)
			break;
		*nafter += r;
		if (*nafter == TCP_RESP_SIZE + 4096)
			break;
	}
	return h.status;
}

struct owner {
	struct kvn_transport *tp;
	char *region;
	struct kvn_tp_mr *mr;
	struct kvn_mem_desc d;
	char bound[128];
};

static void
owner_open(struct owner *o, const struct kvn_transport_cfg *cfg)
{
	char err[256] = "";
	cr_assert_eq(ops->open(cfg, &o->tp, err, sizeof(err)), 0, "%s", err);
	o->region = pattern_buf(MIB);
	cr_assert_eq(ops->reg_mem(o->tp, o->region, MIB, KVN_MEM_HOST, &o->mr, &o->d, err,
				  sizeof(err)),
		     0, "%s", err);
	cr_assert_eq(ops->listen(o->tp, "127.0.0.1:0", o->bound, sizeof(o->bound), err,
				 sizeof(err)),
		     0, "%s", err);
}

static void
owner_close(struct owner *o)
{
	ops->dereg(o->mr);
	ops->close(o->tp);
	free(o->region);
}

/* A reader refused for its auth_token is answered EACCES and then only the close, even when it
 * sends a valid read request right behind its proof without waiting: not one byte of the
 * region. The right proof, sent the same way, gets the bytes. */
Test(tcp, a_reader_refused_for_its_auth_token_is_sent_no_byte_of_the_region)
{
	struct owner o;
	owner_open(&o, &(struct kvn_transport_cfg){KVN_TRANSPORT_CFG_INIT, .auth_token = "s3cret"});
	static uint8_t after[TCP_RESP_SIZE + 4096];
	ssize_t n;
	const char *tokens[] = { "s3cre", "s3cret!", NULL, "s3cret" };
	for (int i = 0; i < 4; i++) {
		struct kvn_auth a;
		kvn_auth_init(&a, tokens[i]);
		uint8_t nr[KVN_AUTH_NONCE], no[KVN_AUTH_NONCE], proof[TCP_PROOF_SIZE];
		kvn_auth_nonce(nr);
		struct tcp_hdr h;
		int fd = raw_connect(o.bound);
		raw_hello(fd, &a, nr, no, &h);
		cr_assert_eq(h.status, 0);
		cr_assert(h.flags & TCP_F_TOKEN, "an owner with a token says so");
		reader_proof(&a, no, nr, proof);
		uint32_t st = proof_then_read(fd, proof, &o.d, after, &n);
		close(fd);
		const char *what = tokens[i] ? tokens[i] : "(none)";
		if (i < 3) {
			cr_assert_eq(st, EACCES, "token %s: verdict %u", what, st);
			cr_assert_eq(n, 0, "token %s: %zd bytes sent after the refusal", what, n);
			continue;
		}
		cr_assert_eq(st, 0, "the right token: verdict %u", st);
		cr_assert_eq(n, TCP_RESP_SIZE + 4096, "the right token: %zd bytes", n);
		struct tcp_resp r;
		kvn_tcp_resp_decode(after, &r);
		cr_assert_eq(r.status, 0);
		expect_pattern((const char *)after + TCP_RESP_SIZE, 0, 4096);
	}
	struct kvn_transport_stats st = { 0 };
	ops->stats(o.tp, &st);
	cr_expect_eq(st.auth_refused, 3, "refusals counted: %" PRIu64, st.auth_refused);
	owner_close(&o);
}

/* A proof seen on the wire is worth nothing on another connection: the owner's nonce is new
 * each time (with version 2's fixed digest, anyone who saw one connect could read the pool). */
Test(tcp, a_proof_replayed_from_another_connection_is_refused)
{
	struct owner o;
	owner_open(&o, &(struct kvn_transport_cfg){KVN_TRANSPORT_CFG_INIT, .auth_token = "s3cret"});
	struct kvn_auth a;
	kvn_auth_init(&a, "s3cret");
	uint8_t nr[KVN_AUTH_NONCE], no[KVN_AUTH_NONCE], no2[KVN_AUTH_NONCE];
	uint8_t seen[TCP_PROOF_SIZE];
	static uint8_t after[TCP_RESP_SIZE + 4096];
	ssize_t n;
	struct tcp_hdr h;
	kvn_auth_nonce(nr);
	int fd = raw_connect(o.bound);
	raw_hello(fd, &a, nr, no, &h);
	reader_proof(&a, no, nr, seen);
	cr_assert_eq(proof_then_read(fd, seen, &o.d, after, &n), 0, "the honest reader is served");
	close(fd);

	/* Someone without the token replays the whole conversation it saw. */
	fd = raw_connect(o.bound);
	raw_hello(fd, &a, nr, no2, &h);
	cr_assert_neq(memcmp(no, no2, KVN_AUTH_NONCE), 0, "the owner's nonce is fresh");
	cr_assert_eq(proof_then_read(fd, seen, &o.d, after, &n), EACCES, "the replay is refused");
	cr_assert_eq(n, 0, "%zd bytes sent to the replayer", n);
	close(fd);
	owner_close(&o);
}

/* A reader with a token reads only from an owner that proves it: something listening at a
 * member's address without the token (or with another) is refused before any read. */
Test(tcp, a_reader_refuses_an_owner_that_does_not_prove_the_token)
{
	static const char *const owners[] = { NULL, "other" };
	for (int i = 0; i < 2; i++) {
		struct owner o;
		owner_open(&o, &(struct kvn_transport_cfg){KVN_TRANSPORT_CFG_INIT,
							   .auth_token = owners[i]});
		struct kvn_transport *tp;
		char err[256] = "";
		cr_assert_eq(ops->open(&(struct kvn_transport_cfg){KVN_TRANSPORT_CFG_INIT,
								   .auth_token = "s3cret"},
				       &tp, err, sizeof(err)),
			     0, "%s", err);
		struct kvn_tp_ep *ep = NULL;
		int rc = ops->connect(tp, o.bound, 0, &ep, err, sizeof(err));
		cr_assert_eq(rc, -EACCES, "owner token %s: got %d (%s)",
			     owners[i] ? owners[i] : "(none)", rc, err);
		cr_assert(strstr(err, o.bound) && strstr(err, "auth_token"), "message: %s", err);
		ops->close(tp);
		owner_close(&o);
	}
}

static bool
peer_closed(void *arg)
{
	int fd = *(int *)arg;
	char c;
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	return poll(&pfd, 1, 0) > 0 && recv(fd, &c, 1, MSG_DONTWAIT) <= 0;
}

/* A connection that never completes its set-up is closed after transport_hello_timeout_ms: idle
 * sockets from strangers cannot pile up (before, they were kept for ever). */
Test(tcp, a_reader_that_never_authenticates_is_closed_after_the_hello_timeout)
{
	struct owner o;
	owner_open(&o, &(struct kvn_transport_cfg){KVN_TRANSPORT_CFG_INIT, .auth_token = "s3cret",
						   .hello_timeout_ms = 300});
	int silent = raw_connect(o.bound);
	int half = raw_connect(o.bound); /* a hello, then nothing */
	struct kvn_auth a;
	kvn_auth_init(&a, "s3cret");
	uint8_t nr[KVN_AUTH_NONCE], no[KVN_AUTH_NONCE];
	struct tcp_hdr h;
	kvn_auth_nonce(nr);
	raw_hello(half, &a, nr, no, &h);
	cr_assert(proc_wait_for(peer_closed, &silent, DEADLINE_MS), "the silent one stays open");
	cr_assert(proc_wait_for(peer_closed, &half, DEADLINE_MS), "the half-done one stays open");
	close(silent);
	close(half);
	struct kvn_transport_stats st = { 0 };
	ops->stats(o.tp, &st);
	cr_expect_geq(st.hello_timeouts, 2);
	owner_close(&o);
}

/* transport_max_connections: strangers in set-up give way to a real reader; once every slot
 * holds an authenticated reader, newcomers are refused and counted. */
Test(tcp, the_connection_cap_makes_strangers_give_way_and_then_refuses)
{
	struct owner o;
	owner_open(&o, &(struct kvn_transport_cfg){KVN_TRANSPORT_CFG_INIT, .auth_token = "s3cret",
						   .max_conns = 4});
	int idle[4];
	for (int i = 0; i < 4; i++)
		idle[i] = raw_connect(o.bound);
	struct kvn_transport *tp;
	char err[256] = "";
	cr_assert_eq(
	    ops->open(&(struct kvn_transport_cfg){KVN_TRANSPORT_CFG_INIT, .auth_token = "s3cret",
						  .conns_per_peer = 2},
		      &tp, err, sizeof(err)),
	    0, "%s", err);
	struct kvn_tp_ep *ep[2];
	for (int i = 0; i < 2; i++)
		cr_assert_eq(ops->connect(tp, o.bound, 0, &ep[i], err, sizeof(err)), 0,
			     "reader %d is let in past the strangers: %s", i, err);
	/* All four slots are authenticated readers now: the strangers were dropped. */
	for (int i = 0; i < 4; i++) {
		cr_assert(proc_wait_for(peer_closed, &idle[i], DEADLINE_MS), "stranger %d kept", i);
		close(idle[i]);
	}
	int late = raw_connect(o.bound);
	cr_assert(proc_wait_for(peer_closed, &late, DEADLINE_MS), "a fifth connection is kept");
	close(late);
	struct kvn_transport_stats st = { 0 };
	ops->stats(o.tp, &st);
	cr_expect_eq(st.conns, 4, "%" PRIu64 " connections", st.conns);
	cr_expect_geq(st.refused_full, 5);
	for (int i = 0; i < 2; i++)
		ops->ep_close(ep[i]);
	ops->close(tp);
	owner_close(&o);
}

static double
cpu_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double
wall_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Out of descriptors, accept fails while the listener stays readable: the progress thread must
 * back off (it spun at 100% CPU writing millions of log lines) and resume once some free up. This
 * bounds CPU use, not time: the process may use at most half of one core while it waits. */
Test(tcp, out_of_descriptors_the_listener_backs_off_and_resumes, .timeout = 240)
{
	struct owner o;
	owner_open(&o,
		   &(struct kvn_transport_cfg){KVN_TRANSPORT_CFG_INIT, .hello_timeout_ms = 60000});
	/* A low limit for this test process only (Criterion runs each test in its own). */
	int probe = dup(0);
	struct rlimit rl = { (rlim_t)probe + 12, (rlim_t)probe + 12 };
	close(probe);
	struct rlimit old;
	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &(struct rlimit){ rl.rlim_cur, old.rlim_max }), 0);
	/* The connecting side shares the limit, so keep connecting until one fails here or the
	 * owner has run out on its side. */
	int fds[64], n = 0;
	char host[KVN_HOST_MAX], err[256];
	uint16_t port;
	cr_assert_eq(kvn_hostport_parse(o.bound, host, &port, err, sizeof(err)), 0);
	for (; n < 64; n++)
		if ((fds[n] = kvn_tcp_connect(host, port, 2000, err, sizeof(err))) < 0)
			break;
	cr_assert_gt(n, 0);
	struct kvn_transport_stats st = { 0 };
	for (int i = 0; i < 2000 && !st.accept_errors; i++) {
		usleep(10000);
		ops->stats(o.tp, &st);
	}
	cr_assert_gt(st.accept_errors, 0, "accept never ran out of descriptors");
	double c0 = cpu_seconds(), w0 = wall_seconds();
	sleep(2);
	double cpu = cpu_seconds() - c0, wall = wall_seconds() - w0;
	cr_expect_lt(cpu, wall / 2, "%.2f s of CPU in %.2f s while out of descriptors", cpu, wall);
	for (int i = 0; i < n; i++)
		close(fds[i]);
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
	/* Descriptors are back: a reader gets in again. */
	struct kvn_transport *tp = tp_open(0, 1);
	struct kvn_tp_ep *ep = NULL;
	cr_assert_eq(ops->connect(tp, o.bound, 20000, &ep, err, sizeof(err)), 0, "%s", err);
	ops->ep_close(ep);
	ops->close(tp);
	owner_close(&o);
}

Test(tcp, responder_refuses_bad_requests_on_the_wire_and_keeps_the_connection)
{
	struct kvn_transport *owner = tp_open(0, 0);
	char *region = pattern_buf(4 * MIB), err[256], bound[128];
	struct kvn_tp_mr *mr;
	struct kvn_mem_desc d;
	cr_assert_eq(ops->reg_mem(owner, region, 4 * MIB, KVN_MEM_HOST, &mr, &d, err, sizeof(err)), 0);
	cr_assert_eq(ops->listen(owner, "127.0.0.1:0", bound, sizeof(bound), err, sizeof(err)), 0);
	int fd = raw_connect(bound);
	struct kvn_auth none;
	kvn_auth_init(&none, NULL);
	uint8_t nr[KVN_AUTH_NONCE], no[KVN_AUTH_NONCE], proof[TCP_PROOF_SIZE], verdict[TCP_HDR_SIZE];
	struct tcp_hdr h;
	kvn_auth_nonce(nr);
	raw_hello(fd, &none, nr, no, &h);
	cr_assert_eq(h.flags & TCP_F_TOKEN, 0, "an owner without a token says so");
	reader_proof(&none, no, nr, proof);
	full_write(fd, proof, sizeof(proof));
	full_read(fd, verdict, sizeof(verdict));
	kvn_tcp_hdr_decode(verdict, sizeof(verdict), &h);
	cr_assert_eq(h.status, 0, "hello accepted");

	struct tcp_resp r = raw_request(fd, TCP_REQ_READ, d.rkey, 0, d.addr, TCP_MAX_MSG + 1);
	cr_assert_eq(r.status, EMSGSIZE, "a request over the max message is refused");
	cr_assert_eq(r.len, 0);
	r = raw_request(fd, 0x99, d.rkey, 1, d.addr, 16);
	cr_assert_eq(r.status, EPROTO, "an unknown request type is refused");
	r = raw_request(fd, TCP_REQ_READ, d.rkey + 1, 2, d.addr, 16);
	cr_assert_eq(r.status, EACCES);
	cr_assert_eq(r.reason, TCP_UNKNOWN_RKEY);
	r = raw_request(fd, TCP_REQ_READ, d.rkey, 3, d.addr + 4 * MIB - 8, 16);
	cr_assert_eq(r.status, EACCES);
	cr_assert_eq(r.reason, TCP_OUT_OF_RANGE);
	/* Still serving on the same connection. */
	r = raw_request(fd, TCP_REQ_READ, d.rkey, 4, d.addr + 100, 64);
	cr_assert_eq(r.status, 0);
	cr_assert_eq(r.len, 64);
	char payload[64];
	full_read(fd, payload, sizeof(payload));
	expect_pattern(payload, 100, 64);
	close(fd);
	ops->dereg(mr);
	ops->close(owner);
	free(region);
}

/* Something that is not a kvnode responder: the connect fails with a message saying so. */
Test(tcp, a_peer_that_is_not_kvnode_is_refused_at_connect)
{
	char err[256];
	uint16_t port;
	int lfd = kvn_tcp_listen("127.0.0.1", 0, 4, &port, err, sizeof(err));
	cr_assert_geq(lfd, 0, "%s", err);
	struct kvn_transport *tp = tp_open(5000, 0);
	char addr[64];
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", port);
	pid_t pid = fork();
	if (pid == 0) { /* answers like a web server would */
		int c = accept(lfd, NULL, NULL);
		const char reply[] = "HTTP/1.1 400 Bad Request\r\n\r\n";
		ssize_t w = write(c, reply, sizeof(reply) - 1);
		(void)w;
		sleep(5);
		_exit(0);
	}
	struct kvn_tp_ep *ep = NULL;
	int rc = ops->connect(tp, addr, 0, &ep, err, sizeof(err));
	cr_assert_eq(rc, -EPROTO, "got %d: %s", rc, err);
	cr_assert(strstr(err, addr) && strstr(err, "not a kvnode"), "message: %s", err);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	close(lfd);
	ops->close(tp);
}

/* ---------------------------------------------------------------------------------------------
 * Failures and recovery
 * ------------------------------------------------------------------------------------------- */

struct waiter {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	size_t left, failed;
	int status;
};

static void
waiter_cb(struct kvn_read *rd, int status, const char *msg)
{
	(void)msg;
	struct waiter *w = rd->ctx;
	pthread_mutex_lock(&w->mu);
	if (status) {
		w->failed++;
		w->status = status;
	}
	if (--w->left == 0)
		pthread_cond_broadcast(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

static bool
waiter_wait(struct waiter *w, int timeout_ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += timeout_ms / 1000;
	int rc = 0;
	pthread_mutex_lock(&w->mu);
	while (w->left && rc != ETIMEDOUT)
		rc = pthread_cond_timedwait(&w->cv, &w->mu, &ts);
	bool done = w->left == 0;
	pthread_mutex_unlock(&w->mu);
	return done;
}

struct served {
	struct proc p;
	char dir[256], out[300];
	char addr[128];
	struct kvn_mem_desc d;
};

static bool
serving_line(void *arg)
{
	struct served *s = arg;
	char *text = proc_read_file(s->out, NULL), name[32];
	bool ok = text && sscanf(text, "serving %31s %127s addr=0x%" SCNx64 " len=%" SCNu64
				 " rkey=0x%" SCNx32, name, s->addr, &s->d.addr, &s->d.len,
				 &s->d.rkey) == 5;
	free(text);
	return ok;
}

/* A peer that stops answering (SIGSTOP: sockets stay open) fails the reads after the timeout. */
Test(tcp, reads_from_a_stalled_peer_fail_with_a_timeout)
{
	struct served s = { 0 };
	cr_assert_eq(proc_mkdtemp("tcp", s.dir, sizeof(s.dir)), 0);
	snprintf(s.out, sizeof(s.out), "%s/serve.out", s.dir);
	const char *argv[] = { BENCH, "peer", "--serve", "--sizes", "4M", NULL };
	cr_assert_eq(proc_spawn(&s.p, argv, &(struct proc_opts){ .stdout_path = s.out }), 0);
	cr_assert(proc_wait_for(serving_line, &s, DEADLINE_MS), "no serving line from %s", BENCH);
	struct kvn_transport *tp = tp_open(1000, 0);
	char err[256], *dst = malloc(8 * MIB);
	struct kvn_tp_mr *mr;
	struct kvn_mem_desc d;
	cr_assert_eq(ops->reg_mem(tp, dst, 8 * MIB, KVN_MEM_HOST, &mr, &d, err, sizeof(err)), 0);
	struct kvn_tp_ep *ep;
	cr_assert_eq(ops->connect(tp, s.addr, 0, &ep, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kill(s.p.pid, SIGSTOP), 0);
	enum { N = 32 };
	struct kvn_read rds[N];
	struct waiter w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, N, 0, 0 };
	for (int i = 0; i < N; i++)
		rds[i] = (struct kvn_read){ .local = dst + (i % 8) * MIB, .local_mr = mr,
					    .remote_addr = s.d.addr + (uint64_t)i * MIB,
					    .rkey = s.d.rkey, .len = MIB, .done = waiter_cb,
					    .ctx = &w };
	cr_assert_eq(ops->read(ep, rds, N), 0);
	cr_assert(waiter_wait(&w, DEADLINE_MS), "reads from a stalled peer never completed");
	cr_assert_gt(w.failed, 0, "a stopped peer answered");
	cr_assert_eq(w.status, -ETIMEDOUT);
	kill(s.p.pid, SIGCONT);
	ops->ep_close(ep);
	ops->dereg(mr);
	ops->close(tp);
	proc_stop(&s.p, SIGTERM, DEADLINE_MS);
	proc_rm_tree(s.dir);
	free(dst);
}

/* An owner restarted on the same address: the old endpoint's next read reconnects by itself. */
Test(tcp, endpoint_reconnects_to_a_peer_restarted_on_the_same_address)
{
	struct kvn_transport *owner = tp_open(0, 0), *reader = tp_open(5000, 0);
	char *region = pattern_buf(MIB), *dst = malloc(MIB), err[256], bound[128];
	struct kvn_tp_mr *rmr, *dmr;
	struct kvn_mem_desc d, dd;
	cr_assert_eq(ops->reg_mem(owner, region, MIB, KVN_MEM_HOST, &rmr, &d, err, sizeof(err)), 0);
	cr_assert_eq(ops->listen(owner, "127.0.0.1:0", bound, sizeof(bound), err, sizeof(err)), 0);
	cr_assert_eq(ops->reg_mem(reader, dst, MIB, KVN_MEM_HOST, &dmr, &dd, err, sizeof(err)), 0);
	struct kvn_tp_ep *ep;
	cr_assert_eq(ops->connect(reader, bound, 0, &ep, err, sizeof(err)), 0, "%s", err);
	struct kvn_read rd = { .local = dst, .local_mr = dmr, .remote_addr = d.addr, .rkey = d.rkey,
			       .len = 4096 };
	cr_assert_eq(kvn_transport_read_sync(ops, ep, &rd, 1, err, sizeof(err)), 0, "%s", err);

	ops->dereg(rmr);
	ops->close(owner); /* the reader sees its connection close */
	owner = tp_open(0, 0);
	cr_assert_eq(ops->reg_mem(owner, region, MIB, KVN_MEM_HOST, &rmr, &d, err, sizeof(err)), 0);
	char again[128];
	cr_assert_eq(ops->listen(owner, bound, again, sizeof(again), err, sizeof(err)), 0, "%s", err);
	/* The first read after the restart may still meet the closing socket; one more must work. */
	rd = (struct kvn_read){ .local = dst, .local_mr = dmr, .remote_addr = d.addr + 5,
				.rkey = d.rkey, .len = 70000 };
	int rc = kvn_transport_read_sync(ops, ep, &rd, 1, err, sizeof(err));
	if (rc)
		rc = kvn_transport_read_sync(ops, ep, &rd, 1, err, sizeof(err));
	cr_assert_eq(rc, 0, "read after the owner restarted: %s", err);
	expect_pattern(dst, 5, 70000);
	ops->ep_close(ep);
	ops->dereg(dmr);
	ops->dereg(rmr);
	ops->close(reader);
	ops->close(owner);
	free(region);
	free(dst);
}

/* Reads striped over several sockets still land byte-exact. */
Test(tcp, reads_striped_over_four_connections_are_exact)
{
	struct kvn_transport *owner = tp_open(0, 0), *reader = tp_open(0, 4);
	size_t len = 24 * MIB;
	char *region = pattern_buf(len), *dst = calloc(1, len), err[256], bound[128];
	struct kvn_tp_mr *rmr, *dmr;
	struct kvn_mem_desc d, dd;
	cr_assert_eq(ops->reg_mem(owner, region, len, KVN_MEM_HOST, &rmr, &d, err, sizeof(err)), 0);
	cr_assert_eq(ops->listen(owner, "127.0.0.1:0", bound, sizeof(bound), err, sizeof(err)), 0);
	cr_assert_eq(ops->reg_mem(reader, dst, len, KVN_MEM_HOST, &dmr, &dd, err, sizeof(err)), 0);
	struct kvn_tp_ep *ep;
	cr_assert_eq(ops->connect(reader, bound, 0, &ep, err, sizeof(err)), 0, "%s", err);
	struct kvn_read rds[3] = {
		{ .local = dst, .local_mr = dmr, .remote_addr = d.addr + 3, .rkey = d.rkey,
		  .len = 11 * MIB + 1 },
		{ .local = dst + 12 * MIB, .local_mr = dmr, .remote_addr = d.addr + 12 * MIB,
		  .rkey = d.rkey, .len = 12 * MIB },
		{ .local = dst + 11 * MIB + 1, .local_mr = dmr, .remote_addr = d.addr + 7,
		  .rkey = d.rkey, .len = 100 },
	};
	cr_assert_eq(kvn_transport_read_sync(ops, ep, rds, 3, err, sizeof(err)), 0, "%s", err);
	expect_pattern(dst, 3, 11 * MIB + 1);
	expect_pattern(dst + 11 * MIB + 1, 7, 100);
	expect_pattern(dst + 12 * MIB, 12 * MIB, 12 * MIB);
	ops->ep_close(ep);
	ops->dereg(dmr);
	ops->dereg(rmr);
	ops->close(reader);
	ops->close(owner);
	free(region);
	free(dst);
}

/* dereg while a peer streams from the region: it returns, the memory is untouched afterwards
 * (freed at once: ASan/valgrind would see a late access) and the reads complete. */
Test(tcp, dereg_during_a_transfer_cuts_it_and_returns)
{
	struct kvn_transport *owner = tp_open(0, 0), *reader = tp_open(5000, 0);
	size_t len = 32 * MIB;
	char *region = pattern_buf(len), *dst = malloc(8 * MIB), err[256], bound[128];
	struct kvn_tp_mr *rmr, *dmr;
	struct kvn_mem_desc d, dd;
	cr_assert_eq(ops->reg_mem(owner, region, len, KVN_MEM_HOST, &rmr, &d, err, sizeof(err)), 0);
	cr_assert_eq(ops->listen(owner, "127.0.0.1:0", bound, sizeof(bound), err, sizeof(err)), 0);
	cr_assert_eq(ops->reg_mem(reader, dst, 8 * MIB, KVN_MEM_HOST, &dmr, &dd, err, sizeof(err)),
		     0);
	struct kvn_tp_ep *ep;
	cr_assert_eq(ops->connect(reader, bound, 0, &ep, err, sizeof(err)), 0, "%s", err);
	enum { N = 256 };
	struct kvn_read *rds = calloc(N, sizeof(*rds));
	struct waiter w = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, N, 0, 0 };
	for (int i = 0; i < N; i++)
		rds[i] = (struct kvn_read){ .local = dst + (i % 8) * MIB, .local_mr = dmr,
					    .remote_addr = d.addr + (uint64_t)(i % 32) * MIB,
					    .rkey = d.rkey, .len = MIB, .done = waiter_cb,
					    .ctx = &w };
	cr_assert_eq(ops->read(ep, rds, N), 0);
	ops->dereg(rmr);
	free(region);
	cr_assert(waiter_wait(&w, DEADLINE_MS), "reads never completed after dereg");
	cr_assert_gt(w.failed, 0, "256 MiB of reads all finished before dereg returned");
	ops->ep_close(ep);
	ops->dereg(dmr);
	ops->close(reader);
	ops->close(owner);
	free(rds);
	free(dst);
}

Test(tcp, gpu_memory_is_refused_with_a_reason)
{
	struct kvn_transport *tp = tp_open(0, 0);
	char buf[64], err[256] = "";
	struct kvn_tp_mr *mr;
	struct kvn_mem_desc d;
	cr_assert_eq(ops->reg_mem(tp, buf, sizeof(buf), KVN_MEM_GPU, &mr, &d, err, sizeof(err)),
		     -EOPNOTSUPP);
	cr_assert(strstr(err, "GPU"), "%s", err);
	ops->close(tp);
}

Test(tcp, auto_picks_tcp_without_an_rdma_device)
{
	char err[256] = "";
	struct kvn_transport_cfg cfg = {KVN_TRANSPORT_CFG_INIT, .gid_index = -1};
	const struct kvn_transport_ops *a = kvn_transport_by_name("auto", &cfg, err, sizeof(err));
	cr_assert_not_null(a, "%s", err);
	const struct kvn_transport_ops *v = kvn_transport_by_name("verbs", &cfg, err, sizeof(err));
	if (v && v->probe(&cfg, err, sizeof(err)) == 0)
		cr_assert_str_eq(a->name, "verbs", "an active RDMA device is here: auto must pick it");
	else
		cr_assert_str_eq(a->name, "tcp");
	cr_assert_null(kvn_transport_by_name("carrier-pigeon", &cfg, err, sizeof(err)));
	cr_assert(strstr(err, "carrier-pigeon"), "%s", err);
}

/* kvnode-bench peer --rails: a rail out from the start (its connect refused) fails the run,
 * naming the rail, instead of reporting a figure of fewer rails than --rails says. The VM meets
 * it after a link flap; here rail 1's address in the responder's line is a port nobody serves. */
Test(tcp, the_rails_bench_refuses_to_measure_with_a_rail_out)
{
	struct served s = {0};
	cr_assert_eq(proc_mkdtemp("tcp", s.dir, sizeof(s.dir)), 0);
	snprintf(s.out, sizeof(s.out), "%s/serve.out", s.dir);
	const char *argv[] = {BENCH,	 "peer",     "--serve",
			      "--rails", "2",	     "--transport",
			      "tcp",	 "--listen", "127.0.0.1:0,127.0.0.1:0",
			      "--sizes", "1M",	     NULL};
	cr_assert_eq(proc_spawn(&s.p, argv, &(struct proc_opts){.stdout_path = s.out}), 0);
	cr_assert(proc_wait_for(serving_line, &s, DEADLINE_MS), "no serving line from %s", BENCH);
	char *line = proc_read_file(s.out, NULL), *rail = line ? strstr(line, " rail=") : NULL;
	cr_assert(rail, "no second rail in: %s", line ? line : "(nothing)");
	rail[strcspn(rail, "\n")] = 0;
	/* A loopback port bound and let go: nothing listens there. */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);
	cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
	close(fd);
	char remote[1024];
	snprintf(remote, sizeof(remote), "%.*s rail=127.0.0.1:%u%s", (int)(rail - line), line,
		 ntohs(a.sin_port), strchr(rail, '/'));
	char errf[300];
	snprintf(errf, sizeof(errf), "%s/bench.err", s.dir);
	const char *bargv[] = {BENCH,	  "peer",      "--rails",    "2",	 "--transport",
			       "tcp",	  "--connect", s.addr,	     "--remote", remote,
			       "--sizes", "1M",	       "--duration", "0.2",	 NULL};
	int rc = proc_run(bargv, &(struct proc_opts){.stderr_path = errf}, DEADLINE_MS);
	char *err = proc_read_file(errf, NULL);
	cr_assert_neq(rc, 0, "the bench measured with rail 1 out; stderr: %s", err ? err : "");
	cr_assert(err && strstr(err, "rail 1") && strstr(err, "is out"),
		  "stderr does not name the rail that is out: %s", err ? err : "(nothing)");
	free(err);
	free(line);
	proc_stop(&s.p, SIGTERM, DEADLINE_MS);
	proc_rm_tree(s.dir);
}
