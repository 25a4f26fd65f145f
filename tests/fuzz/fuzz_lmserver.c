/* Fuzzes the real lm:// server (node/serve/lm_server.c over node/serve/connsrv.c): LMCache's cache-server
 * protocol on 127.0.0.1:0 in front of an engine with a 32 MiB cpu tier, started once. Each
 * input is sent raw over a fresh TCP connection (then the writing side is shut). Properties:
 * the server answers only with whole reply headers (200 with its payload, or 400 without one)
 * and closes; every 64 inputs a HEALTH, a PUT and a GET of the value just put must work over
 * another connection. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "core/fdio.h"
#include "node/engine/config.h"
#include "node/serve/ctlproto.h"
#include "node/serve/lm_server.h"
#include "connectors/lmproto.h"
#include "tests/fuzz/fuzz_common.h"

#define MIB	    (1024 * 1024)
#define VALUE_MAX   MIB /* the fuzzer's malloc limit would count the default 1 GiB */
#define IDLE_MS	    8000
#define REPLY_KEEP  (16u * MIB)
#define CHECK_EVERY 64

static struct kvn_config *cfg;
static struct kvn_engine *eng;
static struct kvn_lm_server *srv;
static char addr[128];

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fz_init();
	char err[512];
	cfg = kvn_config_new_defaults();
	if (!cfg)
		fz_fail("out of memory");
	cfg->max_local_cpu_size = 32 * MIB;
	cfg->hugepages = false;
	if (kvn_engine_open(cfg, &eng, err, sizeof(err)) < 0)
		fz_fail("engine: %s", err);
	struct kvn_lm_server_opts o = {.listen = "127.0.0.1:0",
				       .max_conns = 32,
				       .io_timeout_ms = 2000,
				       .value_max = VALUE_MAX};
	if (kvn_lm_server_start(eng, &o, &srv, err, sizeof(err)) < 0)
		fz_fail("lm server: %s", err);
	snprintf(addr, sizeof(addr), "%s", kvn_lm_server_address(srv));
	return 0;
}

/* whole: the connection ended with a FIN; after a reset the last reply may be cut. Replies are
 * in the generation of the connection's first request (kvn_lm_gen_detect). */
static void
check_replies(const struct fz_bytes *r, bool whole, enum kvn_lm_gen gen)
{
	size_t off = 0, rs = kvn_lm_reply_size(gen);
	while (off < r->len) {
		if (!whole && r->len - off < rs)
			break;
		FZ_ASSERT(r->len - off >= rs, "a truncated %s reply header (%zu bytes)",
			  kvn_lm_gen_name(gen), r->len - off);
		struct kvn_lm_reply rep;
		kvn_lm_reply_decode_gen(gen, r->p + off, &rep);
		off += rs;
		FZ_ASSERT(rep.code == KVN_LM_OK || rep.code == KVN_LM_FAIL, "reply code %d",
			  rep.code);
		FZ_ASSERT(rep.location == 0, "reply location %d", rep.location);
		FZ_ASSERT(rep.length >= 0, "reply length %d", rep.length);
		if (rep.code == KVN_LM_FAIL) {
			FZ_ASSERT(rep.length == 0, "a 400 reply announcing %d bytes", rep.length);
			continue;
		}
		if (!whole && (size_t)rep.length > r->len - off)
			break;
		FZ_ASSERT((size_t)rep.length <= r->len - off, "a truncated %d-byte payload",
			  rep.length);
		off += (size_t)rep.length;
	}
}

static void
lm_send(int fd, int32_t cmd, const char *key, const void *val, int32_t len)
{
	uint8_t req[KVN_LM_REQ_SIZE];
	struct kvn_lm_meta meta = {.fmt = 4, .dtype = 6, .shape = {len, 1, 1, 1}};
	if (kvn_lm_req_encode(req, cmd, key, strlen(key), len, &meta) ||
	    kvn_fd_write_full(fd, req, sizeof(req)) || (len && kvn_fd_write_full(fd, val, len)))
		fz_fail("lm server: cannot send a %s request", kvn_lm_cmd_name(cmd));
}

static struct kvn_lm_reply
lm_reply(int fd, const char *what)
{
	uint8_t hdr[KVN_LM_REPLY_SIZE];
	if (kvn_fd_read_full(fd, hdr, sizeof(hdr), NULL))
		fz_fail("lm server no longer answers %s", what);
	struct kvn_lm_reply rep;
	kvn_lm_reply_decode(hdr, &rep);
	return rep;
}

static void
check_alive(void)
{
	int fd = fz_connect_tcp(addr);
	struct timeval tv = {.tv_sec = IDLE_MS / 1000};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	lm_send(fd, KVN_LM_HEALTH, "", NULL, 0);
	FZ_ASSERT(lm_reply(fd, "HEALTH").code == KVN_LM_OK, "HEALTH is not 200");
	static const char v[] = "still serving";
	const char *key = "vllm@fuzz@1@0@1234abcd@uint8";
	lm_send(fd, KVN_LM_PUT, key, v, (int32_t)sizeof(v));
	lm_send(fd, KVN_LM_GET, key, NULL, 0);
	struct kvn_lm_reply rep = lm_reply(fd, "GET");
	FZ_ASSERT(rep.code == KVN_LM_OK && rep.length == (int32_t)sizeof(v),
		  "GET of a value just put: code %d length %d", rep.code, rep.length);
	char got[sizeof(v)];
	if (kvn_fd_read_full(fd, got, sizeof(got), NULL) || memcmp(got, v, sizeof(v)))
		fz_fail("lm server returned another value");
	close(fd);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static unsigned long count;
	struct fz_bytes r = {0};
	int rc = fz_exchange(fz_connect_tcp(addr), data, size, IDLE_MS, &r, REPLY_KEEP);
	FZ_ASSERT(rc >= 0, "the lm server neither answered nor closed for %d ms after the input",
		  IDLE_MS);
	enum kvn_lm_gen gen = size >= KVN_LM_GEN_PROBE_LEN ? kvn_lm_gen_detect(data) : KVN_LM_V1;
	if (r.len < REPLY_KEEP)
		check_replies(&r, rc == 0, gen);
	fz_bytes_free(&r);
	if (++count % CHECK_EVERY == 0)
		check_alive();
	return 0;
}
