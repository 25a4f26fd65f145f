/* The local control protocol (node/ctlproto.*) and the daemon's robustness against bad
 * clients: codec and validation unit tests, then raw frames — garbage, bad magic, over-long
 * lengths, truncated requests, idle and slow clients — against a `kvnode serve` child, and an
 * in-process server for the I/O timeout and the connection cap. */
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/fdio.h"
#include "node/cli/client.h"
#include "node/engine/config.h"
#include "node/serve/ctlproto.h"
#include "node/serve/server.h"
#include "tests/helpers/proc.h"
#include "tests/helpers/rawsock.h"

#define KVNODE	 KVN_BINARY_DIR "/kvnode"
#define DEADLINE 120000 /* ms */
#define MIB	 (1024 * 1024)

/* ------------------------------------------------------------------------------------------
 * Codec and validation
 * ------------------------------------------------------------------------------------------ */

Test(ctlproto, request_header_round_trips_through_encode_and_decode)
{
	struct kvn_ctl_req a = kvn_ctl_req_make(KVN_CTL_PUT, 77, 0x123456789abull), b;
	uint8_t wire[KVN_CTL_REQ_SIZE];
	kvn_ctl_req_encode(&a, wire);
	kvn_ctl_req_decode(wire, &b);
	cr_assert_eq(b.magic, KVN_CTL_REQ_MAGIC);
	cr_assert_eq(b.version, KVN_CTL_VERSION);
	cr_assert_eq(b.op, KVN_CTL_PUT);
	cr_assert_eq(b.flags, 0);
	cr_assert_eq(b.key_len, 77);
	cr_assert_eq(b.reserved, 0);
	cr_assert_eq(b.value_len, 0x123456789abull);
}

Test(ctlproto, the_wire_layout_is_little_endian_as_documented)
{
	struct kvn_ctl_req r = kvn_ctl_req_make(KVN_CTL_GET, 0x0102, 0);
	uint8_t w[KVN_CTL_REQ_SIZE];
	kvn_ctl_req_encode(&r, w);
	cr_assert(!memcmp(w, "KVNQ", 4), "request magic reads KVNQ on the wire");
	cr_assert_eq(w[4], KVN_CTL_VERSION);
	cr_assert_eq(w[5], 0);
	cr_assert_eq(w[6], KVN_CTL_GET);
	cr_assert_eq(w[8], 0x02);
	cr_assert_eq(w[9], 0x01);

	struct kvn_ctl_reply rep = {KVN_CTL_REPLY_MAGIC, -ENOENT, 5}, back;
	uint8_t rw[KVN_CTL_REPLY_SIZE];
	kvn_ctl_reply_encode(&rep, rw);
	cr_assert(!memcmp(rw, "KVNR", 4), "reply magic reads KVNR on the wire");
	cr_assert_eq(rw[8], 5);
	kvn_ctl_reply_decode(rw, &back);
	cr_assert_eq(back.status, -ENOENT, "negative status survives the round trip");
	cr_assert_eq(back.payload_len, 5);
}

static int
check(struct kvn_ctl_req r)
{
	char why[256] = "";
	int rc = kvn_ctl_req_validate(&r, 1000, why, sizeof(why));
	cr_assert(rc == 0 || why[0], "a rejection must say why");
	return rc;
}

Test(ctlproto, validation_accepts_well_formed_requests)
{
	cr_assert_eq(check(kvn_ctl_req_make(KVN_CTL_PUT, 1, 1000)), 0);
	cr_assert_eq(check(kvn_ctl_req_make(KVN_CTL_PUT, KVN_KEY_MAX, 0)), 0);
	cr_assert_eq(check(kvn_ctl_req_make(KVN_CTL_GET, 10, 0)), 0);
	cr_assert_eq(check(kvn_ctl_req_make(KVN_CTL_RM, 10, 0)), 0);
	cr_assert_eq(check(kvn_ctl_req_make(KVN_CTL_LS, 0, 0)), 0);
	cr_assert_eq(check(kvn_ctl_req_make(KVN_CTL_STAT, 0, 0)), 0);
	cr_assert_eq(check(kvn_ctl_req_make(KVN_CTL_PING, 0, 0)), 0);
}

Test(ctlproto, validation_rejects_each_malformed_field)
{
	struct kvn_ctl_req r = kvn_ctl_req_make(KVN_CTL_GET, 10, 0);
	r.magic ^= 1;
	cr_assert_eq(check(r), -EPROTO, "bad magic");
	r = kvn_ctl_req_make(KVN_CTL_GET, 10, 0);
	r.version = KVN_CTL_VERSION + 1;
	cr_assert_eq(check(r), -EPROTO, "future version");
	r = kvn_ctl_req_make(KVN_CTL_GET, 10, 0);
	r.flags = 0x80;
	cr_assert_eq(check(r), -EPROTO, "unknown flag");
	r = kvn_ctl_req_make(KVN_CTL_GET, 10, 0);
	r.reserved = 1;
	cr_assert_eq(check(r), -EPROTO, "reserved bits");
	cr_assert_eq(check(kvn_ctl_req_make(0, 0, 0)), -EPROTO, "op 0");
	cr_assert_eq(check(kvn_ctl_req_make(99, 0, 0)), -EPROTO, "unknown op");
	cr_assert_eq(check(kvn_ctl_req_make(KVN_CTL_GET, 0, 0)), -EPROTO, "GET without a key");
	cr_assert_eq(check(kvn_ctl_req_make(KVN_CTL_PUT, KVN_KEY_MAX + 1, 1)), -EPROTO,
		     "over-long key");
	cr_assert_eq(check(kvn_ctl_req_make(KVN_CTL_GET, UINT32_MAX, 0)), -EPROTO, "huge key");
	cr_assert_eq(check(kvn_ctl_req_make(KVN_CTL_LS, 3, 0)), -EPROTO, "LS with a key");
	cr_assert_eq(check(kvn_ctl_req_make(KVN_CTL_GET, 3, 1)), -EPROTO, "GET with a value");
	cr_assert_eq(check(kvn_ctl_req_make(KVN_CTL_PING, 0, 9)), -EPROTO, "PING with a value");
	cr_assert_eq(check(kvn_ctl_req_make(KVN_CTL_PUT, 3, 1001)), -EMSGSIZE, "value too big");
}

Test(ctlproto, reply_validation_rejects_bad_magic_status_and_length)
{
	struct kvn_ctl_reply ok = {KVN_CTL_REPLY_MAGIC, 0, 10};
	cr_assert_eq(kvn_ctl_reply_validate(&ok, 10, NULL, 0), 0);
	struct kvn_ctl_reply r = ok;
	r.magic = KVN_CTL_REQ_MAGIC;
	cr_assert_eq(kvn_ctl_reply_validate(&r, 10, NULL, 0), -EPROTO);
	r = ok;
	r.status = 5;
	cr_assert_eq(kvn_ctl_reply_validate(&r, 10, NULL, 0), -EPROTO);
	r.status = -5000;
	cr_assert_eq(kvn_ctl_reply_validate(&r, 10, NULL, 0), -EPROTO);
	r = ok;
	r.payload_len = 11;
	cr_assert_eq(kvn_ctl_reply_validate(&r, 10, NULL, 0), -EPROTO);
}

/* ------------------------------------------------------------------------------------------
 * I/O loops over a socketpair
 * ------------------------------------------------------------------------------------------ */

struct dribble {
	int fd;
	const uint8_t *data;
	size_t len;
	bool close_early; /* stop at half and close */
};

static void *
dribble_main(void *arg)
{
	struct dribble *d = arg;
	size_t end = d->close_early ? d->len / 2 : d->len;
	/* Odd-sized pieces: every read on the other side is short. */
	for (size_t off = 0, step = 1; off < end; off += step, step = step * 3 % 65521 + 1) {
		if (step > end - off)
			step = end - off;
		if (kvn_fd_write_full(d->fd, d->data + off, step))
			break;
	}
	if (d->close_early)
		shutdown(d->fd, SHUT_WR);
	return NULL;
}

static uint8_t *
pattern(size_t len)
{
	uint8_t *p = malloc(len);
	cr_assert_not_null(p);
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)(i * 131 + (i >> 11));
	return p;
}

Test(ctlproto, read_full_assembles_a_value_sent_in_small_pieces)
{
	int sv[2];
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	size_t len = 3 * MIB + 5;
	uint8_t *src = pattern(len), *dst = malloc(len);
	struct dribble d = {sv[0], src, len, false};
	pthread_t t;
	pthread_create(&t, NULL, dribble_main, &d);
	size_t got = 0;
	cr_assert_eq(kvn_fd_read_full(sv[1], dst, len, &got), 0);
	pthread_join(t, NULL);
	cr_assert_eq(got, len);
	cr_assert(!memcmp(src, dst, len));
	free(src);
	free(dst);
	close(sv[0]);
	close(sv[1]);
}

Test(ctlproto, read_full_reports_what_arrived_before_the_peer_closed)
{
	int sv[2];
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	size_t len = 100000;
	uint8_t *src = pattern(len), *dst = malloc(len);
	struct dribble d = {sv[0], src, len, true};
	pthread_t t;
	pthread_create(&t, NULL, dribble_main, &d);
	size_t got = 0;
	cr_assert_eq(kvn_fd_read_full(sv[1], dst, len, &got), -ECONNRESET);
	pthread_join(t, NULL);
	cr_assert_eq(got, len / 2);
	cr_assert(!memcmp(src, dst, got));
	free(src);
	free(dst);
	close(sv[0]);
	close(sv[1]);
}

Test(ctlproto, a_read_timeout_is_etimedout)
{
	int sv[2];
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	struct timeval tv = {.tv_usec = 50000};
	setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	char b[4];
	size_t got = 99;
	cr_assert_eq(kvn_fd_read_full(sv[1], b, sizeof(b), &got), -ETIMEDOUT);
	cr_assert_eq(got, 0);
	close(sv[0]);
	close(sv[1]);
}

Test(ctlproto, writing_to_a_closed_peer_is_epipe_not_a_signal)
{
	int sv[2];
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	close(sv[1]);
	cr_assert_eq(kvn_fd_write_full(sv[0], "x", 1), -EPIPE);
	close(sv[0]);
}

struct copy_job {
	int in, out;
	uint64_t len;
	int rc;
	bool wside;
};

static void *
copy_main(void *arg)
{
	struct copy_job *j = arg;
	j->rc = kvn_fd_copy(j->in, j->out, j->len, &j->wside);
	return NULL;
}

Test(ctlproto, copy_moves_exactly_len_bytes_and_names_the_failing_side)
{
	int a[2], b[2];
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
	size_t len = 2 * MIB + 3;
	uint8_t *src = pattern(len), *dst = malloc(len);
	/* writer -> a -> copy -> b -> this thread, all concurrently: no buffer size matters */
	struct dribble d = {a[0], src, len, false};
	struct copy_job j = {a[1], b[0], len, 1, true};
	pthread_t tw, tc;
	pthread_create(&tw, NULL, dribble_main, &d);
	pthread_create(&tc, NULL, copy_main, &j);
	cr_assert_eq(kvn_fd_read_full(b[1], dst, len, NULL), 0);
	pthread_join(tw, NULL);
	pthread_join(tc, NULL);
	cr_assert_eq(j.rc, 0);
	cr_assert(!memcmp(src, dst, len));

	/* Output side closed: the failure is the writer's. */
	close(b[1]);
	cr_assert_eq(kvn_fd_write_full(a[0], "abc", 3), 0);
	bool wside = false;
	cr_assert_eq(kvn_fd_copy(a[1], b[0], 3, &wside), -EPIPE);
	cr_assert(wside);
	/* Input ends early: the failure is the reader's. */
	close(a[0]);
	int e[2];
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, e), 0);
	cr_assert_eq(kvn_fd_copy(a[1], e[0], 3, &wside), -ECONNRESET);
	cr_assert(!wside);
	free(src);
	free(dst);
	close(a[1]);
	close(b[0]);
	close(e[0]);
	close(e[1]);
}

/* ------------------------------------------------------------------------------------------
 * Raw frames against a `kvnode serve` child
 * ------------------------------------------------------------------------------------------ */

static const char *const clean_env[] = {"KVNODE_CONFIG_FILE", "LMCACHE_CONFIG_FILE",
					"KVNODE_SOCKET", NULL};
static char dir[256], sock[PATH_MAX], serr[PATH_MAX];
static struct proc daemon_proc;

static void
daemon_up(void)
{
	char cfg[PATH_MAX];
	cr_assert_eq(access(KVNODE, X_OK), 0,
		     "%s is not built: build the kvnode_cli target before these tests", KVNODE);
	cr_assert_eq(proc_mkdtemp("srv", dir, sizeof(dir)), 0);
	snprintf(sock, sizeof(sock), "%s/kvnode.sock", dir);
	snprintf(cfg, sizeof(cfg), "%s/kvnode.yaml", dir);
	snprintf(serr, sizeof(serr), "%s/serve.err", dir);
	const char *text = "max_local_cpu_size: 0.25\nhugepages: false\n";
	cr_assert_eq(proc_write_file(cfg, text, strlen(text)), 0);
	const char *argv[] = {KVNODE, "serve", "-c", cfg, "--socket", sock, NULL};
	struct proc_opts po = {.stderr_path = serr, .env = clean_env};
	cr_assert_eq(proc_spawn(&daemon_proc, argv, &po), 0);
	if (!proc_wait_for(proc_cond_socket_accepts, sock, DEADLINE)) {
		proc_stop(&daemon_proc, SIGKILL, 0);
		cr_assert_fail("kvnode serve did not come up: %s", proc_read_file(serr, NULL));
	}
}

static void
daemon_down(void)
{
	/* A daemon that survived every test must also shut down cleanly. */
	int code = proc_stop(&daemon_proc, SIGTERM, DEADLINE);
	proc_rm_tree(dir);
	cr_expect_eq(code, 0, "kvnode serve exited with %d after the test", code);
}

static int
raw_connect(const char *path)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	strcpy(sa.sun_path, path);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0, "connect %s: %s", path,
		     strerror(errno));
	struct timeval tv = {.tv_sec = DEADLINE / 1000};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	return fd;
}

static void
send_req(int fd, struct kvn_ctl_req r, const char *key)
{
	/* Header and key go out in one write: a daemon that refuses the header may close
	 * before reading further, and a second write would then fail with EPIPE. */
	uint8_t w[KVN_CTL_REQ_SIZE + KVN_KEY_MAX];
	size_t klen = key ? strlen(key) : 0;
	cr_assert_leq(klen, KVN_KEY_MAX);
	kvn_ctl_req_encode(&r, w);
	memcpy(w + KVN_CTL_REQ_SIZE, key ? key : "", klen);
	rawsock_send_all(fd, w, KVN_CTL_REQ_SIZE + klen);
}

/* Reads one reply; its payload (up to cap-1 bytes, NUL-terminated) into payload. */
static struct kvn_ctl_reply
recv_reply(int fd, char *payload, size_t cap)
{
	uint8_t w[KVN_CTL_REPLY_SIZE];
	size_t got;
	int rc = kvn_fd_read_full(fd, w, sizeof(w), &got);
	cr_assert_eq(rc, 0, "no reply header (%zu bytes): %s", got, kvn_strerror(rc));
	struct kvn_ctl_reply rep;
	kvn_ctl_reply_decode(w, &rep);
	cr_assert_eq(kvn_ctl_reply_validate(&rep, cap - 1, NULL, 0), 0, "malformed reply");
	cr_assert_eq(kvn_fd_read_full(fd, payload, (size_t)rep.payload_len, NULL), 0);
	payload[rep.payload_len] = '\0';
	return rep;
}

/* A new client is served: PING and a small PUT/GET round trip. */
static void
assert_daemon_serves(void)
{
	char err[256];
	struct kvn_cli_conn *c;
	cr_assert_eq(kvn_cli_connect(sock, DEADLINE, &c, err, sizeof(err)), 0, "%s", err);
	char *banner = NULL;
	cr_assert_eq(kvn_cli_ping(c, &banner), 0, "%s", kvn_cli_error(c));
	cr_assert_str_eq(banner, "kvnode " KVN_VERSION_STRING);
	free(banner);
	struct kvn_key k;
	kvn_key_from_str(&k, "still-serving");
	cr_assert_eq(kvn_cli_put(c, &k, "yes", 3), 0, "%s", kvn_cli_error(c));
	void *v;
	size_t len;
	cr_assert_eq(kvn_cli_get(c, &k, &v, &len), 0, "%s", kvn_cli_error(c));
	cr_assert(len == 3 && !memcmp(v, "yes", 3));
	free(v);
	kvn_cli_close(c);
	cr_assert(proc_alive(&daemon_proc), "the daemon died");
}

TestSuite(daemon, .init = daemon_up, .fini = daemon_down, .timeout = 300);

Test(daemon, garbage_bytes_get_eproto_and_the_next_client_is_served)
{
	int fd = raw_connect(sock);
	const char junk[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
	rawsock_send_all(fd, junk, sizeof(junk) - 1);
	char msg[512];
	struct kvn_ctl_reply rep = recv_reply(fd, msg, sizeof(msg));
	cr_assert_eq(rep.status, -EPROTO);
	cr_assert(strstr(msg, "magic"), "the reply should say what was wrong: %s", msg);
	rawsock_assert_closed(fd, "the daemon");
	close(fd);
	assert_daemon_serves();
}

Test(daemon, a_bad_magic_gets_eproto_and_the_connection_is_closed)
{
	int fd = raw_connect(sock);
	struct kvn_ctl_req r = kvn_ctl_req_make(KVN_CTL_PING, 0, 0);
	r.magic = 0xdeadbeef;
	send_req(fd, r, NULL);
	char msg[512];
	cr_assert_eq(recv_reply(fd, msg, sizeof(msg)).status, -EPROTO);
	rawsock_assert_closed(fd, "the daemon");
	close(fd);
	assert_daemon_serves();
}

Test(daemon, an_over_long_key_length_is_refused_without_reading_the_key)
{
	int fd = raw_connect(sock);
	send_req(fd, kvn_ctl_req_make(KVN_CTL_GET, 1u << 30, 0), NULL);
	char msg[512];
	cr_assert_eq(recv_reply(fd, msg, sizeof(msg)).status, -EPROTO);
	cr_assert(strstr(msg, "key length"), "%s", msg);
	rawsock_assert_closed(fd, "the daemon");
	close(fd);
	assert_daemon_serves();
}

Test(daemon, a_value_over_the_limit_is_refused_with_emsgsize)
{
	int fd = raw_connect(sock);
	send_req(fd, kvn_ctl_req_make(KVN_CTL_PUT, 3, 5ull << 30), "big");
	char msg[512];
	cr_assert_eq(recv_reply(fd, msg, sizeof(msg)).status, -EMSGSIZE);
	rawsock_assert_closed(fd, "the daemon");
	close(fd);
	assert_daemon_serves();
}

Test(daemon, a_truncated_header_gets_eproto_and_the_daemon_keeps_serving)
{
	uint8_t w[KVN_CTL_REQ_SIZE];
	struct kvn_ctl_req r = kvn_ctl_req_make(KVN_CTL_PING, 0, 0);
	kvn_ctl_req_encode(&r, w);
	/* half a header, then close outright */
	int fd = raw_connect(sock);
	rawsock_send_all(fd, w, sizeof(w) / 2);
	close(fd);
	assert_daemon_serves();
	/* half a header, then end of stream: the reply names the truncation */
	fd = raw_connect(sock);
	rawsock_send_all(fd, w, sizeof(w) / 2);
	shutdown(fd, SHUT_WR);
	char msg[512];
	cr_assert_eq(recv_reply(fd, msg, sizeof(msg)).status, -EPROTO);
	cr_assert(strstr(msg, "truncated"), "%s", msg);
	close(fd);
	assert_daemon_serves();
}

Test(daemon, a_truncated_value_stores_nothing)
{
	int fd = raw_connect(sock);
	size_t len = 4 * MIB;
	uint8_t *v = pattern(len);
	send_req(fd, kvn_ctl_req_make(KVN_CTL_PUT, 4, len), "half");
	rawsock_send_all(fd, v, len / 2);
	close(fd);
	free(v);
	assert_daemon_serves();
	char err[256];
	struct kvn_cli_conn *c;
	cr_assert_eq(kvn_cli_connect(sock, DEADLINE, &c, err, sizeof(err)), 0, "%s", err);
	struct kvn_key k;
	kvn_key_from_str(&k, "half");
	void *got;
	size_t glen;
	cr_assert_eq(kvn_cli_get(c, &k, &got, &glen), -ENOENT);
	cr_assert_eq(kvn_cli_fault(c), KVN_CLIENT_NODE);
	kvn_cli_close(c);
}

Test(daemon, an_invalid_key_gets_einval_and_the_connection_stays_usable)
{
	int fd = raw_connect(sock);
	send_req(fd, kvn_ctl_req_make(KVN_CTL_GET, 3, 0), "a\001b");
	char msg[512];
	struct kvn_ctl_reply rep = recv_reply(fd, msg, sizeof(msg));
	cr_assert_eq(rep.status, -EINVAL);
	cr_assert(strstr(msg, "invalid key"), "%s", msg);
	send_req(fd, kvn_ctl_req_make(KVN_CTL_PING, 0, 0), NULL);
	cr_assert_eq(recv_reply(fd, msg, sizeof(msg)).status, 0);
	close(fd);
}

Test(daemon, pipelined_requests_are_answered_in_order)
{
	int fd = raw_connect(sock);
	send_req(fd, kvn_ctl_req_make(KVN_CTL_PUT, 2, 5), "p1");
	rawsock_send_all(fd, "one..", 5);
	send_req(fd, kvn_ctl_req_make(KVN_CTL_PUT, 2, 3), "p2");
	rawsock_send_all(fd, "two", 3);
	send_req(fd, kvn_ctl_req_make(KVN_CTL_GET, 2, 0), "p1");
	send_req(fd, kvn_ctl_req_make(KVN_CTL_GET, 2, 0), "p2");
	send_req(fd, kvn_ctl_req_make(KVN_CTL_GET, 2, 0), "p3");
	send_req(fd, kvn_ctl_req_make(KVN_CTL_RM, 2, 0), "p1");
	send_req(fd, kvn_ctl_req_make(KVN_CTL_LS, 0, 0), NULL);
	char p[512];
	cr_assert_eq(recv_reply(fd, p, sizeof(p)).status, 0);
	cr_assert_eq(recv_reply(fd, p, sizeof(p)).status, 0);
	cr_assert_eq(recv_reply(fd, p, sizeof(p)).status, 0);
	cr_assert_str_eq(p, "one..");
	cr_assert_eq(recv_reply(fd, p, sizeof(p)).status, 0);
	cr_assert_str_eq(p, "two");
	cr_assert_eq(recv_reply(fd, p, sizeof(p)).status, -ENOENT);
	cr_assert_eq(recv_reply(fd, p, sizeof(p)).status, 0);
	cr_assert_eq(recv_reply(fd, p, sizeof(p)).status, 0);
	cr_assert_str_eq(p, "p2\t3\n");
	close(fd);
}

Test(daemon, idle_clients_do_not_block_others)
{
	int fds[20];
	for (int i = 0; i < 20; i++)
		fds[i] = raw_connect(sock);
	assert_daemon_serves();
	for (int i = 0; i < 20; i++)
		close(fds[i]);
}

Test(daemon, a_slow_large_put_does_not_block_other_clients)
{
	size_t len = 32 * MIB;
	uint8_t *v = pattern(len);
	int fd = raw_connect(sock);
	send_req(fd, kvn_ctl_req_make(KVN_CTL_PUT, 4, len), "slow");
	rawsock_send_all(fd, v, len / 2);
	/* The slow client is mid-value: others are still served. */
	assert_daemon_serves();
	rawsock_send_all(fd, v + len / 2, len - len / 2);
	char p[512];
	cr_assert_eq(recv_reply(fd, p, sizeof(p)).status, 0, "%s", p);
	close(fd);

	char err[256];
	struct kvn_cli_conn *c;
	cr_assert_eq(kvn_cli_connect(sock, DEADLINE, &c, err, sizeof(err)), 0, "%s", err);
	struct kvn_key k;
	kvn_key_from_str(&k, "slow");
	void *got;
	size_t glen;
	cr_assert_eq(kvn_cli_get(c, &k, &got, &glen), 0, "%s", kvn_cli_error(c));
	cr_assert(glen == len && !memcmp(got, v, len), "the slow PUT must land whole");
	free(got);
	free(v);
	kvn_cli_close(c);
}

struct worker {
	int id;
	int failures;
};

static void *
worker_main(void *arg)
{
	struct worker *w = arg;
	char err[256], name[64];
	struct kvn_cli_conn *c;
	if (kvn_cli_connect(sock, DEADLINE, &c, err, sizeof(err))) {
		w->failures++;
		return NULL;
	}
	size_t len = 65536 + (size_t)w->id;
	uint8_t *v = malloc(len), *back;
	for (int i = 0; i < 20; i++) {
		memset(v, w->id * 31 + i, len);
		snprintf(name, sizeof(name), "w%d-%d", w->id, i);
		struct kvn_key k;
		kvn_key_from_str(&k, name);
		size_t blen;
		if (kvn_cli_put(c, &k, v, len) || kvn_cli_get(c, &k, (void **)&back, &blen)) {
			w->failures++;
			continue;
		}
		w->failures += blen != len || memcmp(back, v, len);
		free(back);
	}
	free(v);
	kvn_cli_close(c);
	return NULL;
}

Test(daemon, concurrent_clients_each_see_their_own_values)
{
	struct worker w[8];
	pthread_t t[8];
	for (int i = 0; i < 8; i++) {
		w[i] = (struct worker){.id = i};
		pthread_create(&t[i], NULL, worker_main, &w[i]);
	}
	for (int i = 0; i < 8; i++) {
		pthread_join(t[i], NULL);
		cr_assert_eq(w[i].failures, 0, "client %d had %d failures", i, w[i].failures);
	}
}

/* ------------------------------------------------------------------------------------------
 * In-process server: I/O timeout, connection cap, stop
 * ------------------------------------------------------------------------------------------ */

static struct kvn_config *icfg;
static struct kvn_engine *ieng;
static struct kvn_server *isrv;
static pthread_t irun;
static uint64_t ivalue_max; /* value_max (max_chunk_size) of the next inproc_up; 0: default */

static void *
run_main(void *arg)
{
	return (void *)(intptr_t)kvn_server_run(arg);
}

static void
inproc_up(unsigned max_conns, int io_timeout_ms)
{
	char err[512];
	cr_assert_eq(proc_mkdtemp("srvi", dir, sizeof(dir)), 0);
	snprintf(sock, sizeof(sock), "%s/inproc.sock", dir);
	icfg = kvn_config_new_defaults();
	icfg->max_local_cpu_size = 64 * MIB;
	icfg->hugepages = false;
	cr_assert_eq(kvn_engine_open(icfg, &ieng, err, sizeof(err)), 0, "%s", err);
	struct kvn_server_opts o = {
	    .socket_path = sock,
	    .max_conns = max_conns,
	    .io_timeout_ms = io_timeout_ms,
	    .value_max = ivalue_max};
	cr_assert_eq(kvn_server_create(ieng, &o, &isrv, err, sizeof(err)), 0, "%s", err);
	pthread_create(&irun, NULL, run_main, isrv);
}

static void
inproc_down(void)
{
	if (isrv) {
		kvn_server_stop(isrv);
		void *rc;
		pthread_join(irun, &rc);
		kvn_server_destroy(isrv);
		isrv = NULL;
	}
	kvn_engine_close(ieng);
	kvn_config_free(icfg);
	proc_rm_tree(dir);
}

TestSuite(server, .fini = inproc_down, .timeout = 300);

Test(server, a_stalled_client_is_cut_off_after_the_io_timeout)
{
	inproc_up(0, 200);
	uint8_t w[KVN_CTL_REQ_SIZE];
	struct kvn_ctl_req r = kvn_ctl_req_make(KVN_CTL_PING, 0, 0);
	kvn_ctl_req_encode(&r, w);
	int fd = raw_connect(sock);
	rawsock_send_all(fd, w, 5); /* and then nothing */
	char msg[512];
	struct kvn_ctl_reply rep = recv_reply(fd, msg, sizeof(msg));
	cr_assert_eq(rep.status, -EPROTO);
	cr_assert(strstr(msg, "truncated"), "%s", msg);
	rawsock_assert_closed(fd, "the daemon");
	close(fd);
	/* An idle connection is closed too, without a reply. */
	fd = raw_connect(sock);
	rawsock_assert_closed(fd, "the daemon");
	close(fd);
}

Test(server, past_the_connection_cap_a_client_gets_ebusy)
{
	inproc_up(2, 0);
	char err[256];
	struct kvn_cli_conn *c[3];
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(kvn_cli_connect(sock, DEADLINE, &c[i], err, sizeof(err)), 0);
		cr_assert_eq(kvn_cli_ping(c[i], NULL), 0, "%s", kvn_cli_error(c[i]));
	}
	cr_assert_eq(kvn_cli_connect(sock, DEADLINE, &c[2], err, sizeof(err)), 0);
	cr_assert_eq(kvn_cli_ping(c[2], NULL), -EBUSY);
	cr_assert(strstr(kvn_cli_error(c[2]), "busy"), "%s", kvn_cli_error(c[2]));
	kvn_cli_close(c[2]);
	/* A slot freed is a slot reused. */
	kvn_cli_close(c[0]);
	bool ok = false;
	for (int tries = 0; tries < 1000 && !ok; tries++) {
		struct kvn_cli_conn *d;
		cr_assert_eq(kvn_cli_connect(sock, DEADLINE, &d, err, sizeof(err)), 0);
		ok = kvn_cli_ping(d, NULL) == 0;
		kvn_cli_close(d);
		if (!ok)
			usleep(10000);
	}
	cr_assert(ok, "a closed connection must free its slot");
	kvn_cli_close(c[1]);
}

/* The header alone is enough to refuse: the reply comes though not a byte of the value was
 * sent, names the size and the key to raise, and the connection is closed. */
Test(server, a_put_over_max_chunk_size_is_refused_from_its_header_naming_the_key)
{
	ivalue_max = 4096;
	inproc_up(0, 0);
	int fd = raw_connect(sock);
	send_req(fd, kvn_ctl_req_make(KVN_CTL_PUT, 7, 5000), "too-big");
	char msg[512];
	cr_assert_eq(recv_reply(fd, msg, sizeof(msg)).status, -EMSGSIZE);
	cr_assert(strstr(msg, "5000") && strstr(msg, "max_chunk_size") && strstr(msg, "4096"),
		  "the refusal names the size and max_chunk_size: %s", msg);
	rawsock_assert_closed(fd, "the daemon");
	close(fd);
	struct kvn_server_stats st;
	kvn_server_stats(isrv, &st);
	cr_assert_eq(st.oversized, 1);
	/* The client library reports it; a value at the bound is stored. */
	char err[256];
	struct kvn_cli_conn *c;
	cr_assert_eq(kvn_cli_connect(sock, DEADLINE, &c, err, sizeof(err)), 0, "%s", err);
	struct kvn_key k;
	kvn_key_from_str(&k, "too-big");
	static char v[5000];
	cr_assert_eq(kvn_cli_put(c, &k, v, sizeof(v)), -EMSGSIZE);
	cr_assert(strstr(kvn_cli_error(c), "max_chunk_size"), "%s", kvn_cli_error(c));
	kvn_cli_close(c);
	cr_assert_eq(kvn_engine_contains(ieng, &k), 0);
	cr_assert_eq(kvn_cli_connect(sock, DEADLINE, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kvn_cli_put(c, &k, v, 4096), 0, "%s", kvn_cli_error(c));
	kvn_cli_close(c);
}

Test(server, stop_drains_and_destroy_removes_the_socket)
{
	inproc_up(0, 0);
	char err[256];
	cr_assert_eq(kvn_server_probe(sock, err, sizeof(err)), -EADDRINUSE);
	cr_assert(strstr(err, sock), "%s", err);
	struct kvn_cli_conn *c;
	cr_assert_eq(kvn_cli_connect(sock, DEADLINE, &c, err, sizeof(err)), 0);
	cr_assert_eq(kvn_cli_ping(c, NULL), 0);
	/* An idle open connection must not hold up the stop. */
	kvn_server_stop(isrv);
	void *rc;
	pthread_join(irun, &rc);
	cr_assert_eq((intptr_t)rc, 0);
	kvn_server_destroy(isrv);
	isrv = NULL;
	cr_assert(proc_cond_path_gone(sock));
	kvn_cli_close(c);
}

/* ------------------------------------------------------------------------------------------
 * Client: a request that failed half-way leaves the stream out of step
 * ------------------------------------------------------------------------------------------ */

Test(client, after_a_timed_out_request_the_client_refuses_rather_than_read_the_late_reply)
{
	char tdir[64], path[96], err[256];
	cr_assert_eq(proc_mkdtemp("cli", tdir, sizeof(tdir)), 0);
	snprintf(path, sizeof(path), "%s/fake.sock", tdir);
	/* A node that accepts and answers late: the client gives up on the first PING. */
	int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	cr_assert_eq(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(lfd, 4), 0);
	struct kvn_cli_conn *c;
	cr_assert_eq(kvn_cli_connect(path, 200, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_lt(kvn_cli_ping(c, NULL), 0, "nothing answered the first PING");
	cr_assert_eq(kvn_cli_fault(c), KVN_CLIENT_CONN);
	int fd = accept(lfd, NULL, NULL);
	cr_assert_geq(fd, 0);
	uint8_t req[KVN_CTL_REQ_SIZE];
	cr_assert_eq(kvn_fd_read_full(fd, req, sizeof(req), NULL), 0);
	cr_assert_eq(kvn_ctl_send_reply(fd, 0, "late", 4), 0);
	/* The late reply belongs to the first PING: reading it as the second one's answer is
	 * how a GET would return another key's value. */
	cr_assert_eq(kvn_cli_ping(c, NULL), -ENOTCONN);
	cr_assert(strstr(kvn_cli_error(c), "out of step"), "%s", kvn_cli_error(c));
	kvn_cli_close(c);
	close(fd);
	close(lfd);
	proc_rm_tree(tdir);
}
