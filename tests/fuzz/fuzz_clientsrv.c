/* Fuzzes the node's side of the client protocol (node/serve/clientsrv.c behind the real local
 * server of `kvnode serve`, node/serve/server.c): an engine with a 32 MiB cpu tier, started
 * once. An input whose first byte is odd is sent raw (the HELLO itself is fuzzed); any other
 * input follows a valid HELLO, so the frames after it reach GET, RESERVE, COMMIT, RELEASE,
 * REMOVE, CONTAINS, PING and LIST. Each input gets a fresh connection, then the writing side is
 * shut. Properties:
 *  - the replies are whole, valid frames: a known op, each body the size its op and count
 *    make, every per-entry status an errno or a documented value, every view and reserved
 *    slot inside the pool that HELLO announced, a LIST page's keys valid and in byte order;
 *  - what a client held is given back when it goes: once the connection is closed, the
 *    server's leases, reservations and held bytes return to 0;
 *  - the node goes on serving: every 64 inputs the real client library puts a value and gets
 *    it back through a view. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "client/proto.h"
#include "kvnode/client.h"
#include "node/serve/server.h"
#include "tests/fuzz/fuzz_common.h"

#define MIB	    (1024 * 1024)
#define VALUE_MAX   MIB /* far below the default: the fuzzer's malloc limit counts a put */
#define IDLE_MS	    8000
#define REPLY_KEEP  (16u * MIB)
#define CHECK_EVERY 64
#define SETTLE_MS   10000

static struct kvn_server *srv;
static char sock_path[300];

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fz_init();
	srv = fz_local_server("clientsrv", VALUE_MAX, sock_path, sizeof(sock_path));
	return 0;
}

/* A well-behaved client still connects, stores and reads back through a view. */
static void
check_alive(void)
{
	char err[512];
	struct kvn_client_opts o = {KVN_CLIENT_OPTS_INIT, .socket_path = sock_path};
	struct kvn_client *c;
	if (kvn_client_open(&o, &c, err, sizeof(err)) < 0)
		fz_fail("the node no longer accepts a client: %s", err);
	static const char key[] = "fuzz@1@0@0abc@half";
	static const char v[] = "still serving";
	if (kvn_client_put(c, key, v, sizeof(v)) < 0)
		fz_fail("the node no longer stores: %s", kvn_client_error(c));
	struct kvn_view view;
	if (kvn_client_get(c, key, &view) < 0)
		fz_fail("the node lost a value just stored: %s", kvn_client_error(c));
	FZ_ASSERT(view.len == sizeof(v) && !memcmp(view.data, v, sizeof(v)),
		  "the node returned another value");
	kvn_client_release(c, &view, 1);
	kvn_client_close(c);
}

/* Once the fuzzer's connection is closed, everything it held is given back (the server sees
 * the close a moment later: wait for it). */
static void
check_given_back(void)
{
	struct kvn_clientsrv_stats s;
	for (int t = 0; t < SETTLE_MS; t++) {
		kvn_server_client_stats(srv, &s);
		if (s.clients == 0 && s.leases == 0 && s.reservations == 0 && s.held_bytes == 0)
			return;
		nanosleep(&(struct timespec){0, 1000000}, NULL);
	}
	fz_fail("a closed client still holds: %llu connected, %llu leases, %llu reservations, "
		"%llu bytes",
		(unsigned long long)s.clients, (unsigned long long)s.leases,
		(unsigned long long)s.reservations, (unsigned long long)s.held_bytes);
}

/* The per-entry replies of GET and RESERVE: statuses are errnos, views and slots lie in the
 * pool. */
static void
check_entries(const struct kvn_cp_hdr *h, const uint8_t *body, uint64_t pool_size)
{
	for (uint32_t i = 0; i < h->count; i++) {
		struct kvn_cp_entry e;
		kvn_cp_entry_decode(body + (size_t)i * KVN_CP_ENTRY_SIZE, &e);
		FZ_ASSERT(e.rc <= 0 && e.rc >= -4095, "%s entry %u: status %d",
			  kvn_cp_op_name(h->op), i, e.rc);
		if (e.rc)
			continue;
		FZ_ASSERT(e.len <= VALUE_MAX && e.off <= pool_size && e.len <= pool_size - e.off,
			  "%s entry %u: [%llu, +%llu) is outside the %llu-byte pool",
			  kvn_cp_op_name(h->op), i, (unsigned long long)e.off,
			  (unsigned long long)e.len, (unsigned long long)pool_size);
	}
}

/* COMMIT, REMOVE, CONTAINS: one i32 per entry. */
static void
check_statuses(const struct kvn_cp_hdr *h, const uint8_t *body)
{
	for (uint32_t i = 0; i < h->count; i++) {
		const uint8_t *p = body + (size_t)i * 4;
		int32_t rc = (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
				       (uint32_t)p[3] << 24);
		bool ok = rc <= 0 ? rc >= -4095 : h->op == KVN_CP_CONTAINS && rc <= 2;
		FZ_ASSERT(ok, "%s entry %u: status %d", kvn_cp_op_name(h->op), i, rc);
	}
}

/* A LIST page: count entries (len u64, key), each key valid and after the one before, filling
 * the body exactly. */
static void
check_listing(const struct kvn_cp_hdr *h, const uint8_t *body)
{
	struct kvn_cp_rd rd = {body, (size_t)h->body_len, 0, false};
	const char *prev = NULL;
	size_t prev_n = 0;
	for (uint32_t i = 0; i < h->count; i++) {
		uint64_t len = kvn_cp_get_u64(&rd);
		const char *k;
		size_t n = kvn_cp_get_key(&rd, &k);
		FZ_ASSERT(!rd.bad, "LIST entry %u of %u: malformed", i, h->count);
		FZ_ASSERT(len <= VALUE_MAX, "LIST entry %u: a value of %llu bytes", i,
			  (unsigned long long)len);
		struct kvn_key key;
		FZ_ASSERT(kvn_key_parse(&key, k, n, NULL, 0) == 0, "LIST entry %u: not a key", i);
		if (prev) {
			int r = memcmp(prev, k, prev_n < n ? prev_n : n);
			FZ_ASSERT(r < 0 || (r == 0 && prev_n < n), "LIST entry %u: out of order",
				  i);
		}
		prev = k;
		prev_n = n;
	}
	FZ_ASSERT(rd.off == rd.len, "LIST of %u keys: %zu bytes after them", h->count,
		  rd.len - rd.off);
}

/* One reply frame (header valid); its body is the size its op and count make. */
static void
check_body(const struct kvn_cp_hdr *h, const uint8_t *body, uint64_t *pool_size)
{
	const char *op = kvn_cp_op_name(h->op);
	if (h->status < 0) {
		FZ_ASSERT(h->body_len <= 4096, "%s: an error message of %llu bytes", op,
			  (unsigned long long)h->body_len);
		return;
	}
	uint64_t want = 0;
	switch (h->op) {
	case KVN_CP_HELLO:
		want = KVN_CP_HELLO_OK_SIZE;
		break;
	case KVN_CP_GET:
	case KVN_CP_RESERVE:
		want = (uint64_t)h->count * KVN_CP_ENTRY_SIZE;
		break;
	case KVN_CP_COMMIT:
	case KVN_CP_REMOVE:
	case KVN_CP_CONTAINS:
		want = (uint64_t)h->count * 4;
		break;
	case KVN_CP_RELEASE:
		fz_fail("RELEASE was answered");
	case KVN_CP_LIST:
		check_listing(h, body);
		return;
	}
	FZ_ASSERT(h->body_len == want, "%s of %u entries: a %llu-byte body, not %llu", op,
		  h->count, (unsigned long long)h->body_len, (unsigned long long)want);
	if (h->op == KVN_CP_HELLO) {
		struct kvn_cp_hello_ok ok;
		kvn_cp_hello_ok_decode(body, &ok);
		FZ_ASSERT(ok.major == KVN_CP_MAJOR && ok.pool_size >= 32 * MIB,
			  "HELLO: version %u.%u, a pool of %llu bytes", ok.major, ok.minor,
			  (unsigned long long)ok.pool_size);
		*pool_size = ok.pool_size;
	} else if (h->op == KVN_CP_GET || h->op == KVN_CP_RESERVE) {
		FZ_ASSERT(*pool_size, "%s answered before HELLO", op);
		check_entries(h, body, *pool_size);
	} else if (h->op != KVN_CP_PING) {
		check_statuses(h, body);
	}
}

/* Replies are whole frames, back to back (the last one may be cut when the connection was
 * reset: whole is false). */
static void
check_replies(const struct fz_bytes *r, bool whole)
{
	uint64_t pool_size = 0;
	size_t off = 0;
	while (off < r->len) {
		if (!whole && r->len - off < KVN_CP_HDR_SIZE)
			break;
		FZ_ASSERT(r->len - off >= KVN_CP_HDR_SIZE, "a truncated reply header (%zu bytes)",
			  r->len - off);
		struct kvn_cp_hdr h;
		char why[256];
		kvn_cp_hdr_decode(r->p + off, &h);
		FZ_ASSERT(kvn_cp_hdr_validate(&h, true, why, sizeof(why)) == 0,
			  "invalid reply at offset %zu: %s", off, why);
		FZ_ASSERT(off > 0 || h.op == KVN_CP_HELLO, "the first reply is %s, not HELLO",
			  kvn_cp_op_name(h.op));
		off += KVN_CP_HDR_SIZE;
		if (!whole && h.body_len > r->len - off)
			break;
		FZ_ASSERT(h.body_len <= r->len - off, "a truncated %s reply body (%llu bytes)",
			  kvn_cp_op_name(h.op), (unsigned long long)h.body_len);
		check_body(&h, r->p + off, &pool_size);
		off += (size_t)h.body_len;
	}
}

/* A valid HELLO, then the input. */
static uint8_t *
with_hello(const uint8_t *data, size_t size, size_t *n)
{
	static const char name[] = "fuzz";
	uint8_t *p = malloc(KVN_CP_HDR_SIZE + 8 + sizeof(name) + size);
	if (!p)
		fz_fail("out of memory");
	struct kvn_cp_hdr h = {.magic = KVN_CP_REQ_MAGIC,
			       .op = KVN_CP_HELLO,
			       .id = 1,
			       .body_len = 8 + sizeof(name) - 1};
	kvn_cp_hdr_encode(&h, p);
	uint8_t *b = p + KVN_CP_HDR_SIZE;
	memset(b, 0, 8);
	b[0] = KVN_CP_MAJOR;
	b[2] = KVN_CP_MINOR;
	memcpy(b + 8, name, sizeof(name) - 1);
	size_t at = KVN_CP_HDR_SIZE + 8 + sizeof(name) - 1;
	if (size)
		memcpy(p + at, data, size);
	*n = at + size;
	return p;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static unsigned long count;
	bool raw = size && (data[0] & 1);
	size_t n = size;
	uint8_t *in = raw ? NULL : with_hello(size ? data + 1 : data, size ? size - 1 : 0, &n);
	struct fz_bytes r = {0};
	int rc = fz_exchange(fz_connect_unix(sock_path), raw ? data + 1 : in, raw ? size - 1 : n,
			     IDLE_MS, &r, REPLY_KEEP);
	free(in);
	FZ_ASSERT(rc >= 0, "the node neither answered nor closed for %d ms after the input",
		  IDLE_MS);
	/* A raw input that is no valid HELLO is the control protocol's (fuzz_ctlserver). */
	bool client = !raw || (r.len >= 4 && r.p[0] == 'K' && r.p[1] == 'V' && r.p[2] == 'N' &&
			       r.p[3] == 'S');
	if (client && r.len < REPLY_KEEP)
		check_replies(&r, rc == 0);
	fz_bytes_free(&r);
	check_given_back();
	if (++count % CHECK_EVERY == 0)
		check_alive();
	return 0;
}
