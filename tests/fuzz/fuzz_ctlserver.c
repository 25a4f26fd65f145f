/* Fuzzes the real local server (node/serve/server.c over node/serve/connsrv.c) of `kvnode serve`: an engine
 * with a 32 MiB cpu tier behind a unix socket, started once. Each input is sent as raw bytes
 * over a fresh connection (then the writing side is shut); the server must answer with whole,
 * valid reply frames only and close, and it must go on serving: every 64 inputs a PING and a
 * PUT/GET round trip over another connection must succeed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "node/cli/client.h"
#include "node/serve/ctlproto.h"
#include "tests/fuzz/fuzz_common.h"

#define MIB	    (1024 * 1024)
#define VALUE_MAX   MIB /* far below the default: the fuzzer's malloc limit counts a PUT */
#define IDLE_MS	    8000
#define REPLY_KEEP  (16u * MIB)
#define CHECK_EVERY 64

static char sock_path[300];

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fz_init();
	fz_local_server("ctlserver", VALUE_MAX, sock_path, sizeof(sock_path));
	return 0;
}

/* The server still answers a well-behaved client, and keeps what it is given. */
static void
check_alive(void)
{
	char err[512];
	struct kvn_cli_conn *c;
	if (kvn_cli_connect(sock_path, 10000, &c, err, sizeof(err)) < 0)
		fz_fail("server no longer accepts: %s", err);
	char *banner = NULL;
	if (kvn_cli_ping(c, &banner) < 0)
		fz_fail("server no longer answers PING: %s", kvn_cli_error(c));
	free(banner);
	struct kvn_key k;
	kvn_key_from_str(&k, "fuzz-liveness-probe");
	static const char v[] = "still serving";
	if (kvn_cli_put(c, &k, v, sizeof(v)) < 0)
		fz_fail("server no longer stores: %s", kvn_cli_error(c));
	void *got = NULL;
	size_t len = 0;
	if (kvn_cli_get(c, &k, &got, &len) < 0)
		fz_fail("server lost a value just stored: %s", kvn_cli_error(c));
	FZ_ASSERT(len == sizeof(v) && !memcmp(got, v, len), "server returned another value");
	free(got);
	kvn_cli_close(c);
}

/* Replies are whole frames, back to back, each one valid (the last one may be cut when the
 * connection was reset: whole is false). */
static void
check_replies(const struct fz_bytes *r, bool whole)
{
	size_t off = 0;
	while (off < r->len) {
		if (!whole && r->len - off < KVN_CTL_REPLY_SIZE)
			break;
		FZ_ASSERT(r->len - off >= KVN_CTL_REPLY_SIZE,
			  "a truncated reply header (%zu bytes)", r->len - off);
		struct kvn_ctl_reply rep;
		char why[256];
		kvn_ctl_reply_decode(r->p + off, &rep);
		FZ_ASSERT(kvn_ctl_reply_validate(&rep, UINT32_MAX, why, sizeof(why)) == 0,
			  "invalid reply at offset %zu: %s", off, why);
		off += KVN_CTL_REPLY_SIZE;
		if (!whole && rep.payload_len > r->len - off)
			break;
		FZ_ASSERT(rep.payload_len <= r->len - off, "a truncated reply payload (%llu bytes)",
			  (unsigned long long)rep.payload_len);
		if (rep.status < 0)
			FZ_ASSERT(rep.payload_len <= 4096, "an error message of %llu bytes",
				  (unsigned long long)rep.payload_len);
		off += rep.payload_len;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static unsigned long count;
	struct fz_bytes r = {0};
	int rc = fz_exchange(fz_connect_unix(sock_path), data, size, IDLE_MS, &r, REPLY_KEEP);
	FZ_ASSERT(rc >= 0, "the server neither answered nor closed for %d ms after the input",
		  IDLE_MS);
	if (r.len < REPLY_KEEP)
		check_replies(&r, rc == 0);
	fz_bytes_free(&r);
	if (++count % CHECK_EVERY == 0)
		check_alive();
	return 0;
}
