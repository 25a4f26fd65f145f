/* Fuzzes the tcp transport's owner side (rdma/tcp/tcp_serve.c): a transport with an auth_token, two
 * registered regions of known bytes with unregistered guard pages around and between them, a
 * third registration already dropped, listening on 127.0.0.1:0, opened once. The first input
 * byte picks the mode; the rest goes over a fresh connection:
 *   0  raw bytes from the start (the set-up parser; no proof can check);
 *   1  the real set-up (hello, challenge, proof), then requests built from the input: each 16
 *      input bytes choose op, registration, an offset near a region's edges and a length;
 *   2  the real set-up, then the raw bytes as requests;
 *   3  the real hello, then the raw bytes from the proof on.
 * Properties: without the set-up the responder sends only set-up messages, never a response;
 * after it, every whole request gets one response, in order; a read is served exactly when it
 * lies inside a live registration, and what is served is that memory's bytes: a byte of a guard
 * page or of the dropped registration on the wire is a finding. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "kvnode/transport.h"
#include "core/auth.h"
#include "rdma/tcp/tcp.h"
#include "tests/fuzz/fuzz_common.h"

#define TOKEN	    "fuzz-secret"
#define GUARD	    4096
#define A_LEN	    (64u << 10)
#define B_LEN	    (16u << 10)
#define C_LEN	    4096
#define IDLE_MS	    8000
#define CHECK_EVERY 64

static const struct kvn_transport_ops *ops = &kvn_transport_tcp;
static struct kvn_transport *tp;
static struct kvn_auth auth;
static uint8_t *mem; /* guard | A | guard | B | guard | C | guard */
static size_t mem_len;
static struct kvn_mem_desc da, db, dc; /* dc: deregistered */
static struct kvn_tp_mr *ma, *mb;
static char bound[128];

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fz_init();
	char err[512];
	struct kvn_transport_cfg cfg = {KVN_TRANSPORT_CFG_INIT, .auth_token = TOKEN,
					.timeout_ms = 5000, .max_conns = 64,
					.hello_timeout_ms = 3000};
	if (ops->open(&cfg, &tp, err, sizeof(err)) < 0)
		fz_fail("tcp transport: %s", err);
	kvn_auth_init(&auth, TOKEN);
	mem_len = 4 * GUARD + A_LEN + B_LEN + C_LEN;
	if (posix_memalign((void **)&mem, 4096, mem_len))
		fz_fail("out of memory");
	memset(mem, 0xA5, mem_len); /* guards */
	uint8_t *a = mem + GUARD, *b = a + A_LEN + GUARD, *c = b + B_LEN + GUARD;
	for (size_t i = 0; i < A_LEN; i++)
		a[i] = (uint8_t)(i * 131 + 7);
	for (size_t i = 0; i < B_LEN; i++)
		b[i] = (uint8_t)(i * 37 + 101);
	memset(c, 0x5A, C_LEN);
	struct kvn_tp_mr *mc;
	if (ops->reg_mem(tp, a, A_LEN, KVN_MEM_HOST, &ma, &da, err, sizeof(err)) ||
	    ops->reg_mem(tp, b, B_LEN, KVN_MEM_HOST, &mb, &db, err, sizeof(err)) ||
	    ops->reg_mem(tp, c, C_LEN, KVN_MEM_HOST, &mc, &dc, err, sizeof(err)))
		fz_fail("reg_mem: %s", err);
	ops->dereg(mc);
	if (ops->listen(tp, "127.0.0.1:0", bound, sizeof(bound), err, sizeof(err)))
		fz_fail("listen: %s", err);
	return 0;
}

/* ------------------------------------------------------------------------------------------
 * The reader's set-up, by the book (rdma/tcp/tcp.h)
 * ------------------------------------------------------------------------------------------ */

/* Waits on fd with a deadline. libFuzzer's -timeout arms a SIGALRM timer without SA_RESTART
 * (every timeout/2 + 1 s): when it lands on this thread inside poll, poll returns EINTR, which
 * is no answer yet, not the end of the wait. */
static void
wait_readable(int fd, const char *what)
{
	uint64_t deadline = kvn_now_ms() + IDLE_MS;
	for (;;) {
		struct pollfd pf = {.fd = fd, .events = POLLIN};
		uint64_t now = kvn_now_ms();
		int n = poll(&pf, 1, now < deadline ? (int)(deadline - now) : 0);
		if (n > 0)
			return;
		if (n < 0 && errno == EINTR)
			continue;
		struct kvn_transport_stats st;
		ops->stats(tp, &st);
		fz_fail("no %s from the responder within %d ms (%s; responder: %llu conns, %llu "
			"accepted, %llu refused full, %llu hello timeouts, %llu accept errors)",
			what, IDLE_MS, n < 0 ? strerror(errno) : "timed out",
			(unsigned long long)st.conns, (unsigned long long)st.accepted,
			(unsigned long long)st.refused_full, (unsigned long long)st.hello_timeouts,
			(unsigned long long)st.accept_errors);
	}
}

static void
read_exact(int fd, void *p, size_t n, const char *what)
{
	size_t got = 0;
	while (got < n) {
		wait_readable(fd, what);
		ssize_t r = recv(fd, (char *)p + got, n - got, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			fz_fail("the responder closed instead of sending its %s", what);
		got += (size_t)r;
	}
}

static void
send_exact(int fd, const void *p, size_t n)
{
	if (send(fd, p, n, MSG_NOSIGNAL) != (ssize_t)n)
		fz_fail("cannot send a set-up message: %s", strerror(errno));
}

/* Hello and challenge; with prove, the proof and the verdict too. */
static int
setup(bool prove)
{
	int fd = fz_connect_tcp(bound);
	uint8_t m[TCP_CHALLENGE_SIZE], nonce_r[KVN_AUTH_NONCE], nonce_o[KVN_AUTH_NONCE];
	kvn_auth_nonce(nonce_r);
	kvn_tcp_hdr_encode(0, TCP_F_TOKEN, m);
	memcpy(m + TCP_HDR_SIZE, nonce_r, KVN_AUTH_NONCE);
	send_exact(fd, m, TCP_HELLO_SIZE);
	read_exact(fd, m, TCP_CHALLENGE_SIZE, "challenge");
	struct tcp_hdr h;
	kvn_tcp_hdr_decode(m, TCP_CHALLENGE_SIZE, &h);
	FZ_ASSERT(h.magic == TCP_MAGIC && h.version == TCP_VERSION && h.status == 0 &&
		      (h.flags & TCP_F_TOKEN),
		  "challenge header: magic 0x%08x version %u status %u flags %u", h.magic,
		  h.version, h.status, h.flags);
	memcpy(nonce_o, m + TCP_HDR_SIZE, KVN_AUTH_NONCE);
	const struct kvn_auth_part owner[] = {{nonce_r, KVN_AUTH_NONCE}, {nonce_o, KVN_AUTH_NONCE}};
	FZ_ASSERT(kvn_auth_verify(&auth, TCP_OWNER_LABEL, owner, 2,
				  m + TCP_HDR_SIZE + KVN_AUTH_NONCE, KVN_AUTH_MAC),
		  "the owner's proof does not check");
	if (!prove)
		return fd;
	const struct kvn_auth_part reader[] = {{nonce_o, KVN_AUTH_NONCE},
					       {nonce_r, KVN_AUTH_NONCE}};
	kvn_tcp_hdr_encode(0, TCP_F_TOKEN, m);
	kvn_auth_mac(&auth, TCP_READER_LABEL, reader, 2, m + TCP_HDR_SIZE);
	send_exact(fd, m, TCP_PROOF_SIZE);
	read_exact(fd, m, TCP_VERDICT_SIZE, "verdict");
	kvn_tcp_hdr_decode(m, TCP_VERDICT_SIZE, &h);
	FZ_ASSERT(h.magic == TCP_MAGIC && h.status == 0, "a right proof got verdict %u", h.status);
	return fd;
}

/* ------------------------------------------------------------------------------------------
 * What the responder must answer
 * ------------------------------------------------------------------------------------------ */

/* The live registration [addr, addr+len) lies in with rkey, or NULL. */
static const struct kvn_mem_desc *
inside(uint32_t rkey, uint64_t addr, uint64_t len)
{
	const struct kvn_mem_desc *d = rkey == da.rkey ? &da : rkey == db.rkey ? &db : NULL;
	if (!d || !len || addr < d->addr || len > d->len || addr - d->addr > d->len - len)
		return NULL;
	return d;
}

/* Requests from the input: 16 bytes each choose a request. */
static size_t
build_requests(const uint8_t *p, size_t n, uint8_t **out)
{
	size_t count = n / 16;
	uint8_t *w = malloc(count * TCP_REQ_SIZE + 1);
	FZ_ASSERT(w, "out of memory");
	static const struct kvn_mem_desc *const which[] = {&da, &db, &dc, &da};
	for (size_t i = 0; i < count; i++) {
		struct fz_in in = {p + 16 * i, 16};
		uint8_t sel = fz_u8(&in), lsel = fz_u8(&in);
		uint16_t lraw = (uint16_t)(fz_u8(&in) | fz_u8(&in) << 8);
		int32_t off = (int32_t)fz_u32(&in);
		uint64_t raw = fz_u64(&in);
		const struct kvn_mem_desc *d = which[sel & 3];
		struct tcp_req r = {.op = sel & 0x80 ? (uint32_t)raw : TCP_REQ_READ,
				    .rkey = sel & 0x40 ? (uint32_t)raw : d->rkey,
				    .seq = 1000 + i};
		/* Offsets near both edges of the region, or anywhere. */
		switch ((sel >> 2) & 3) {
		case 0:
			r.addr = d->addr + (uint64_t)(int64_t)(off % 8192);
			break;
		case 1:
			r.addr = d->addr + d->len + (uint64_t)(int64_t)(off % 8192);
			break;
		case 2:
			r.addr = d->addr + (uint32_t)off % (d->len + 1);
			break;
		default:
			r.addr = raw;
			break;
		}
		switch (lsel & 7) {
		case 0:
			r.len = 0;
			break;
		case 1:
			r.len = d->len - (r.addr - d->addr); /* to the end */
			break;
		case 2:
			r.len = TCP_MAX_MSG + (lsel >> 3) - 16;
			break;
		case 3:
			r.len = (uint64_t) - (int64_t)(lraw + 1); /* wraps */
			break;
		default:
			r.len = lraw % 4097 + 1;
			break;
		}
		kvn_tcp_req_encode(&r, w + i * TCP_REQ_SIZE);
	}
	*out = w;
	return count * TCP_REQ_SIZE;
}

static void
check_responses(const uint8_t *req, size_t reqlen, const struct fz_bytes *r)
{
	size_t off = 0;
	for (size_t i = 0; i + TCP_REQ_SIZE <= reqlen; i += TCP_REQ_SIZE) {
		struct tcp_req q;
		struct tcp_resp s;
		kvn_tcp_req_decode(req + i, &q);
		FZ_ASSERT(r->len - off >= TCP_RESP_SIZE,
			  "request %zu (seq %llu) got no response (%zu bytes left)",
			  i / TCP_REQ_SIZE, (unsigned long long)q.seq, r->len - off);
		kvn_tcp_resp_decode(r->p + off, &s);
		off += TCP_RESP_SIZE;
		FZ_ASSERT(s.seq == q.seq, "response seq %llu for request seq %llu",
			  (unsigned long long)s.seq, (unsigned long long)q.seq);
		bool ok =
		    q.op == TCP_REQ_READ && q.len <= TCP_MAX_MSG && inside(q.rkey, q.addr, q.len);
		if (s.status) {
			FZ_ASSERT(!ok,
				  "a read of %llu bytes at 0x%llx inside a registration was "
				  "refused (%s)",
				  (unsigned long long)q.len, (unsigned long long)q.addr,
				  kvn_tcp_reason_str(s.reason));
			FZ_ASSERT(s.len == 0 && s.reason >= TCP_UNKNOWN_RKEY &&
				      s.reason <= TCP_BAD_OP,
				  "a refusal with length %llu reason %u", (unsigned long long)s.len,
				  s.reason);
			continue;
		}
		uintptr_t a = (uintptr_t)q.addr;
		bool in_mem = a >= (uintptr_t)mem && q.len <= mem_len &&
			      a - (uintptr_t)mem <= mem_len - q.len;
		FZ_ASSERT(ok,
			  "served %llu bytes at 0x%llx rkey 0x%08x, outside every live "
			  "registration (%s)",
			  (unsigned long long)q.len, (unsigned long long)q.addr, q.rkey,
			  in_mem ? "guard or dropped bytes" : "not even our memory");
		FZ_ASSERT(s.len == q.len, "served %llu bytes for a read of %llu",
			  (unsigned long long)s.len, (unsigned long long)q.len);
		FZ_ASSERT(r->len - off >= s.len, "a truncated payload");
		FZ_ASSERT(!memcmp(r->p + off, (const void *)a, s.len),
			  "served bytes differ from the region's");
		off += s.len;
	}
	FZ_ASSERT(off == r->len, "%zu bytes after the last response", r->len - off);
}

/* Before the set-up is done nothing but set-up messages may come. */
static void
check_setup_only(const struct fz_bytes *r, size_t before)
{
	FZ_ASSERT(r->len + before <= TCP_CHALLENGE_SIZE + TCP_VERDICT_SIZE,
		  "%zu bytes sent to a reader that never proved the token", r->len + before);
	if (r->len >= TCP_V2_HDR_SIZE) {
		struct tcp_hdr h;
		kvn_tcp_hdr_decode(r->p, r->len, &h);
		FZ_ASSERT(h.magic == TCP_MAGIC, "a set-up message without the magic");
	}
}

static void
check_alive(void)
{
	int fd = setup(true);
	uint8_t req[TCP_REQ_SIZE];
	kvn_tcp_req_encode(&(struct tcp_req){TCP_REQ_READ, da.rkey, 1, da.addr, da.len}, req);
	struct fz_bytes r = {0};
	FZ_ASSERT(fz_exchange(fd, req, sizeof(req), IDLE_MS, &r, SIZE_MAX) == 0,
		  "the responder no longer serves a whole region");
	check_responses(req, sizeof(req), &r);
	fz_bytes_free(&r);
	struct kvn_transport_stats st;
	ops->stats(tp, &st);
	FZ_ASSERT(st.conns <= 64, "%llu connections held", (unsigned long long)st.conns);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static unsigned long count;
	if (size < 1)
		return 0;
	uint8_t mode = data[0] % 4;
	const uint8_t *p = data + 1;
	size_t n = size - 1;
	struct fz_bytes r = {0};
	uint8_t *built = NULL;
	int rc;
	switch (mode) {
	case 0:
		rc = fz_exchange(fz_connect_tcp(bound), p, n, IDLE_MS, &r, 1u << 20);
		check_setup_only(&r, 0);
		break;
	case 1:
		n = build_requests(p, n, &built);
		p = built;
		/* fall through */
	case 2:
		/* Authenticated, the responder answers everything and closes only at our EOF. */
		rc = fz_exchange(setup(true), p, n, IDLE_MS, &r, SIZE_MAX);
		FZ_ASSERT(rc != 1, "the responder reset an authenticated connection");
		check_responses(p, n, &r);
		break;
	default:
		rc = fz_exchange(setup(false), p, n, IDLE_MS, &r, 1u << 20);
		check_setup_only(&r, TCP_CHALLENGE_SIZE);
		break;
	}
	FZ_ASSERT(rc >= 0, "the responder neither answered nor closed for %d ms", IDLE_MS);
	fz_bytes_free(&r);
	free(built);
	if (++count % CHECK_EVERY == 0)
		check_alive();
	return 0;
}
