/* The lm:// server (LMCache's cache-server protocol, docs/architecture.md §10): the wire codec,
 * every command against an in-process server, robustness against malformed requests (400 and close,
 * the server keeps serving), the lm_listen config key, and a `kvnode serve` child driven by an
 * independent Python client that packs LMCache's frames with struct.pack. */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "core/fdio.h"
#include "kvnode/connector.h"
#include "node/engine/config.h"
#include "node/serve/ctlproto.h"
#include "node/serve/lm_server.h"
#include "connectors/lmproto.h"
#include "core/netaddr.h"
#include "connectors/remote_value.h"
#include "tests/helpers/proc.h"
#include "tests/helpers/rawsock.h"

#define KVNODE	 KVN_BINARY_DIR "/kvnode"
#define DEADLINE 120000 /* ms */
#define MIB	 (1024 * 1024)

/* ------------------------------------------------------------------------------------------
 * Codec
 * ------------------------------------------------------------------------------------------ */

static int32_t
i32_at(const uint8_t *p, int i)
{
	int32_t v;
	memcpy(&v, p + 4 * i, 4);
	return v;
}

Test(lmproto, a_request_is_nine_int32_then_the_key_space_padded_to_150_bytes)
{
	uint8_t w[KVN_LM_REQ_SIZE];
	struct kvn_lm_meta m = {.fmt = 1, .dtype = 3, .shape = {2, 32, 256, 1024}};
	cr_assert_eq(KVN_LM_REQ_SIZE, 186);
	cr_assert_eq(kvn_lm_req_encode(w, KVN_LM_PUT, "abc", 3, 4096, &m), 0);
	const int32_t want[9] = {1, 4096, 1, 3, 0, 2, 32, 256, 1024};
	for (int i = 0; i < 9; i++)
		cr_assert_eq(i32_at(w, i), want[i], "int %d", i);
	cr_assert(!memcmp(w + 36, "abc", 3));
	for (int i = 39; i < KVN_LM_REQ_SIZE; i++)
		cr_assert_eq(w[i], ' ', "byte %d pads with a space", i);

	struct kvn_lm_req r;
	kvn_lm_req_decode(w, &r);
	cr_assert_eq(r.command, KVN_LM_PUT);
	cr_assert_eq(r.length, 4096);
	cr_assert_eq(r.meta.dtype, 3);
	cr_assert_eq(r.meta.shape[3], 1024);
	cr_assert_str_eq(r.key, "abc");
	cr_assert_eq(r.key_len, 3);
}

Test(lmproto, nul_padding_is_stripped_like_space_padding)
{
	uint8_t w[KVN_LM_REQ_SIZE] = {0};
	memcpy(w + 36, "k@1", 3);
	struct kvn_lm_req r;
	kvn_lm_req_decode(w, &r);
	cr_assert_str_eq(r.key, "k@1");
}

Test(lmproto, a_reply_puts_location_last)
{
	uint8_t w[KVN_LM_REPLY_SIZE];
	struct kvn_lm_meta m = {.fmt = 4, .dtype = 6, .shape = {7, 8, 9, 10}};
	cr_assert_eq(KVN_LM_REPLY_SIZE, 36);
	kvn_lm_reply_encode(w, KVN_LM_OK, 99, &m);
	const int32_t want[9] = {200, 99, 4, 6, 7, 8, 9, 10, 0};
	for (int i = 0; i < 9; i++)
		cr_assert_eq(i32_at(w, i), want[i], "int %d", i);
	struct kvn_lm_reply r;
	kvn_lm_reply_decode(w, &r);
	cr_assert_eq(r.code, 200);
	cr_assert_eq(r.length, 99);
	cr_assert_eq(r.meta.shape[0], 7);
	cr_assert_eq(r.location, 0);
}

/* LMCache before the location field (lmcache/v1/protocol.py at 0e65d2fc…):
 * struct.pack("iiiiiiii150s", command, length, fmt, dtype, shape0..3, key.ljust(150)). */
Test(lmproto, a_v0_request_is_eight_int32_then_the_key_space_padded_in_182_bytes)
{
	uint8_t w[KVN_LM_REQ_SIZE];
	struct kvn_lm_meta m = {.fmt = 1, .dtype = 3, .shape = {2, 32, 256, 1024}};
	cr_assert_eq(KVN_LM_V0_REQ_SIZE, 182);
	cr_assert_eq(kvn_lm_req_size(KVN_LM_V0), 182);
	cr_assert_eq(kvn_lm_req_size(KVN_LM_V1), 186);
	memset(w, 0xee, sizeof(w));
	cr_assert_eq(kvn_lm_req_encode_gen(KVN_LM_V0, w, KVN_LM_PUT, "abc", 3, 4096, &m), 0);
	const int32_t want[8] = {1, 4096, 1, 3, 2, 32, 256, 1024};
	for (int i = 0; i < 8; i++)
		cr_assert_eq(i32_at(w, i), want[i], "int %d", i);
	cr_assert(!memcmp(w + 32, "abc", 3));
	for (int i = 35; i < KVN_LM_V0_REQ_SIZE; i++)
		cr_assert_eq(w[i], ' ', "byte %d pads with a space", i);
	cr_assert_eq(w[KVN_LM_V0_REQ_SIZE], 0xee, "nothing is written past 182 bytes");

	struct kvn_lm_req r;
	kvn_lm_req_decode_gen(KVN_LM_V0, w, &r);
	cr_assert_eq(r.command, KVN_LM_PUT);
	cr_assert_eq(r.length, 4096);
	cr_assert_eq(r.meta.dtype, 3);
	cr_assert_eq(r.location, 0);
	cr_assert_eq(r.meta.shape[0], 2);
	cr_assert_eq(r.meta.shape[3], 1024);
	cr_assert_str_eq(r.key, "abc");
	cr_assert_eq(kvn_lm_req_encode_gen(KVN_LM_V0, w, KVN_LM_GET, "k", 151, 0, NULL),
		     -ENAMETOOLONG);
}

Test(lmproto, a_v0_reply_is_eight_int32_without_location)
{
	uint8_t w[KVN_LM_REPLY_SIZE];
	struct kvn_lm_meta m = {.fmt = 4, .dtype = 6, .shape = {7, 8, 9, 10}};
	cr_assert_eq(kvn_lm_reply_size(KVN_LM_V0), 32);
	cr_assert_eq(kvn_lm_reply_size(KVN_LM_V1), 36);
	memset(w, 0xee, sizeof(w));
	kvn_lm_reply_encode_gen(KVN_LM_V0, w, KVN_LM_OK, 99, &m);
	const int32_t want[8] = {200, 99, 4, 6, 7, 8, 9, 10};
	for (int i = 0; i < 8; i++)
		cr_assert_eq(i32_at(w, i), want[i], "int %d", i);
	cr_assert_eq(w[32], 0xee, "nothing is written past 32 bytes");
	struct kvn_lm_reply r;
	kvn_lm_reply_decode_gen(KVN_LM_V0, w, &r);
	cr_assert(r.code == 200 && r.length == 99 && r.meta.shape[3] == 10 && r.location == 0);
}

/* Bytes 32..35: v0's first key bytes (text, space-padded: each >= 0x20), v1's shape[3]. */
Test(lmproto, the_generation_is_told_from_bytes_32_to_35_of_the_first_request)
{
	uint8_t w[KVN_LM_REQ_SIZE];
	static const char *const v0_keys[] = {"", "a", "abc", "vllm@meta-llama/Llama-3.1-8B@1@0@-5",
					      "\xc3\xa9t\xc3\xa9@m@1@0@1"};
	for (size_t i = 0; i < sizeof(v0_keys) / sizeof(v0_keys[0]); i++)
		for (int32_t cmd = KVN_LM_PUT; cmd <= KVN_LM_HEALTH; cmd++) {
			struct kvn_lm_meta m = {.fmt = 1, .dtype = 3, .shape = {2, 32, 256, 1024}};
			kvn_lm_req_encode_gen(KVN_LM_V0, w, cmd, v0_keys[i], strlen(v0_keys[i]),
					      cmd == KVN_LM_PUT ? 4096 : 0,
					      cmd == KVN_LM_PUT ? &m : NULL);
			cr_assert_eq(kvn_lm_gen_detect(w), KVN_LM_V0, "v0 %s with key '%s'",
				     kvn_lm_cmd_name(cmd), v0_keys[i]);
		}
	/* Every v1 shape[3] below 0x20202020 (538 million), the largest one at that edge. */
	static const int32_t v1_shape3[] = {0, 1, 128, 1024, 65536, 0x1fffffff, 0x2020201f};
	for (size_t i = 0; i < sizeof(v1_shape3) / sizeof(v1_shape3[0]); i++) {
		struct kvn_lm_meta m = {.fmt = 1, .dtype = 3, .shape = {2, 32, 256, v1_shape3[i]}};
		kvn_lm_req_encode(w, KVN_LM_PUT, "vllm@1@0@ab@half", 16, 4096, &m);
		cr_assert_eq(kvn_lm_gen_detect(w), KVN_LM_V1, "v1 with shape[3] %d", v1_shape3[i]);
		kvn_lm_req_encode(w, KVN_LM_HEALTH, "", 0, 0, NULL);
		cr_assert_eq(kvn_lm_gen_detect(w), KVN_LM_V1);
	}
	cr_assert_str_eq(kvn_lm_gen_name(KVN_LM_V0), "v0");
	cr_assert_str_eq(kvn_lm_gen_name(KVN_LM_V1), "v1");
}

Test(lmproto, a_key_over_150_bytes_cannot_be_encoded)
{
	uint8_t w[KVN_LM_REQ_SIZE];
	char key[200];
	memset(key, 'k', sizeof(key));
	cr_assert_eq(kvn_lm_req_encode(w, KVN_LM_GET, key, 151, 0, NULL), -ENAMETOOLONG);
	cr_assert_eq(kvn_lm_req_encode(w, KVN_LM_GET, key, 150, 0, NULL), 0);
}

/* ------------------------------------------------------------------------------------------
 * Config
 * ------------------------------------------------------------------------------------------ */

Test(lm_config, lm_listen_is_off_by_default_and_takes_host_port)
{
	struct kvn_config *cfg = kvn_config_new_defaults();
	cr_assert_null(cfg->lm_listen);
	kvn_config_free(cfg);
	char err[512];
	const char *text = "lm_listen: \"[::1]:65432\"\n";
	cr_assert_eq(kvn_config_parse(text, strlen(text), "k.yaml", &cfg, err, sizeof(err)), 0,
		     "%s", err);
	cr_assert_str_eq(cfg->lm_listen, "[::1]:65432");
	kvn_config_free(cfg);
}

Test(lm_config, a_bad_lm_listen_is_refused_with_file_line_and_reason)
{
	static const char *const bad[][2] = {
	    {"lm_listen: 127.0.0.1\n", "has no port"},
	    {"lm_listen: \"127.0.0.1:70000\"\n", "0 to 65535"},
	    {"lm_listen: \":8000\"\n", "has no host"},
	    {"lm_listen: \"::1:8000\"\n", "[HOST]:PORT"},
	    {"chunk_size: 256\nlm_listen: \"h:x\"\n", "must be a number"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct kvn_config *cfg = NULL;
		char err[512] = "";
		int rc = kvn_config_parse(bad[i][0], strlen(bad[i][0]), "k.yaml", &cfg, err,
					  sizeof(err));
		cr_assert_eq(rc, -EINVAL, "%s was accepted", bad[i][0]);
		cr_assert(strstr(err, "k.yaml:") && strstr(err, "lm_listen") &&
			      strstr(err, bad[i][1]),
			  "message for %s: %s", bad[i][0], err);
	}
}

/* ------------------------------------------------------------------------------------------
 * In-process server
 * ------------------------------------------------------------------------------------------ */

static struct kvn_config *icfg;
static struct kvn_engine *ieng;
static struct kvn_lm_server *isrv;
static char ihost[KVN_HOST_MAX];
static uint16_t iport;

static uint64_t cpu_bytes = 128 * MIB;

/* An engine and an lm server on it with o (listen defaults to 127.0.0.1:0). */
static void
lm_start(struct kvn_lm_server_opts o)
{
	char err[512];
	icfg = kvn_config_new_defaults();
	icfg->max_local_cpu_size = cpu_bytes;
	icfg->hugepages = false;
	cr_assert_eq(kvn_engine_open(icfg, &ieng, err, sizeof(err)), 0, "%s", err);
	if (!o.listen)
		o.listen = "127.0.0.1:0";
	cr_assert_eq(kvn_lm_server_start(ieng, &o, &isrv, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(
	    kvn_hostport_parse(kvn_lm_server_address(isrv), ihost, &iport, err, sizeof(err)), 0,
	    "%s", err);
	cr_assert_neq(iport, 0, "the real port is reported");
}

static void
lm_up(unsigned max_conns, uint64_t value_max)
{
	lm_start((struct kvn_lm_server_opts){
	    .max_conns = max_conns, .io_timeout_ms = 5000, .value_max = value_max});
}

static void
lm_up_default(void)
{
	lm_up(0, 0);
}

static void
lm_down(void)
{
	kvn_lm_server_stop(isrv);
	isrv = NULL;
	kvn_engine_close(ieng);
	ieng = NULL;
	kvn_config_free(icfg);
	icfg = NULL;
}

static int
lm_connect(void)
{
	char err[256];
	int fd = kvn_tcp_connect(ihost, iport, DEADLINE, err, sizeof(err));
	cr_assert_geq(fd, 0, "%s", err);
	struct timeval tv = {.tv_sec = DEADLINE / 1000};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	return fd;
}

static void
send_req(int fd, int32_t cmd, const char *key, int32_t len, const struct kvn_lm_meta *m)
{
	uint8_t w[KVN_LM_REQ_SIZE];
	cr_assert_eq(kvn_lm_req_encode(w, cmd, key, strlen(key), len, m), 0);
	rawsock_send_all(fd, w, sizeof(w));
}

static struct kvn_lm_reply
recv_reply(int fd)
{
	uint8_t w[KVN_LM_REPLY_SIZE];
	size_t got;
	int rc = kvn_fd_read_full(fd, w, sizeof(w), &got);
	cr_assert_eq(rc, 0, "no reply header (%zu bytes): %s", got, kvn_strerror(rc));
	struct kvn_lm_reply r;
	kvn_lm_reply_decode(w, &r);
	return r;
}

static void
fill(uint8_t *p, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)(i * 131 + seed * 7 + (i >> 9));
}

static void
put_value(int fd, const char *key, const uint8_t *p, size_t len, const struct kvn_lm_meta *m)
{
	send_req(fd, KVN_LM_PUT, key, (int32_t)len, m);
	rawsock_send_all(fd, p, len);
}

/* GET key; asserts a hit and returns the payload (malloc'd) with the reply's metadata. */
static uint8_t *
get_value(int fd, const char *key, struct kvn_lm_reply *rep)
{
	send_req(fd, KVN_LM_GET, key, 0, NULL);
	*rep = recv_reply(fd);
	cr_assert_eq(rep->code, KVN_LM_OK, "GET %s: code %d", key, rep->code);
	cr_assert_geq(rep->length, 0);
	uint8_t *p = malloc((size_t)rep->length + 1);
	cr_assert_eq(kvn_fd_read_full(fd, p, (size_t)rep->length, NULL), 0);
	return p;
}

/* A 400 header, then the connection ends. */
static void
assert_400_and_closed(int fd)
{
	struct kvn_lm_reply r = recv_reply(fd);
	cr_assert_eq(r.code, KVN_LM_FAIL, "a malformed request gets 400, got %d", r.code);
	cr_assert_eq(r.length, 0);
	rawsock_assert_closed(fd, "the lm server");
	close(fd);
}

/* A fresh client is served: HEALTH and a PUT/GET round trip. */
static void
assert_still_serving(void)
{
	int fd = lm_connect();
	send_req(fd, KVN_LM_HEALTH, "", 0, NULL);
	cr_assert_eq(recv_reply(fd).code, KVN_LM_OK);
	uint8_t v[3] = {1, 2, 3};
	put_value(fd, "still-serving", v, 3, NULL);
	struct kvn_lm_reply r;
	uint8_t *got = get_value(fd, "still-serving", &r);
	cr_assert(r.length == 3 && !memcmp(got, v, 3));
	free(got);
	close(fd);
}

static struct kvn_lm_server_stats lm_stats(void);

TestSuite(lm, .init = lm_up_default, .fini = lm_down, .timeout = 300);

Test(lm, put_then_get_returns_the_payload_and_its_metadata)
{
	int fd = lm_connect();
	size_t len = 3 * MIB + 17;
	uint8_t *v = malloc(len);
	fill(v, len, 1);
	struct kvn_lm_meta m = {.fmt = 1, .dtype = 3, .shape = {2, 32, 256, 1024}};
	const char *key = "vllm@meta-llama/Llama-3.1-8B@1@0@a1b2c3@bfloat16";
	put_value(fd, key, v, len, &m);
	struct kvn_lm_reply r;
	uint8_t *got = get_value(fd, key, &r);
	cr_assert_eq((size_t)r.length, len);
	cr_assert(!memcmp(got, v, len), "payload differs");
	cr_assert_eq(r.meta.fmt, 1);
	cr_assert_eq(r.meta.dtype, 3);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(r.meta.shape[i], m.shape[i]);
	free(got);
	free(v);
	close(fd);
}

Test(lm, the_engine_holds_lmcache_s_28_byte_header_then_the_payload)
{
	int fd = lm_connect();
	uint8_t v[1000];
	fill(v, sizeof(v), 2);
	struct kvn_lm_meta m = {.fmt = 4, .dtype = 6, .shape = {1000, 0, 0, 0}};
	put_value(fd, "in-engine", v, sizeof(v), &m);
	/* PUT has no reply: a HEALTH after it proves the PUT was consumed in order. */
	send_req(fd, KVN_LM_HEALTH, "", 0, NULL);
	cr_assert_eq(recv_reply(fd).code, KVN_LM_OK);
	close(fd);

	struct kvn_key k;
	kvn_key_from_str(&k, "in-engine");
	struct kvn_buf *b;
	cr_assert_eq(kvn_engine_get(ieng, &k, &b), 0);
	cr_assert_eq(b->len, KVN_REMOTE_META_LEN + sizeof(v));
	const uint8_t *h = b->data;
	const int32_t want[7] = {1000, 4, 6, 1000, 0, 0, 0};
	for (int i = 0; i < 7; i++)
		cr_assert_eq(i32_at(h, i), want[i], "header int %d", i);
	cr_assert(!memcmp(h + KVN_REMOTE_META_LEN, v, sizeof(v)));
	kvn_buf_unref(b);
}

Test(lm, a_miss_is_400_with_length_0_and_nothing_after_it)
{
	int fd = lm_connect();
	send_req(fd, KVN_LM_GET, "never-stored", 0, NULL);
	struct kvn_lm_reply r = recv_reply(fd);
	cr_assert_eq(r.code, KVN_LM_FAIL);
	cr_assert_eq(r.length, 0);
	/* The next reply on the stream is HEALTH's: no stray bytes followed the miss. */
	send_req(fd, KVN_LM_HEALTH, "", 0, NULL);
	r = recv_reply(fd);
	cr_assert_eq(r.code, KVN_LM_OK);
	cr_assert_eq(r.length, 0);
	close(fd);
}

Test(lm, exist_answers_200_for_a_stored_key_and_400_otherwise)
{
	int fd = lm_connect();
	uint8_t v[10] = {0};
	put_value(fd, "here", v, sizeof(v), NULL);
	send_req(fd, KVN_LM_EXIST, "here", 0, NULL);
	cr_assert_eq(recv_reply(fd).code, KVN_LM_OK);
	send_req(fd, KVN_LM_EXIST, "not-here", 0, NULL);
	struct kvn_lm_reply r = recv_reply(fd);
	cr_assert_eq(r.code, KVN_LM_FAIL);
	cr_assert_eq(r.length, 0);
	close(fd);
}

Test(lm, health_answers_200_with_lmcache_s_reply_bytes)
{
	int fd = lm_connect();
	send_req(fd, KVN_LM_HEALTH, "", 0, NULL);
	uint8_t w[KVN_LM_REPLY_SIZE];
	cr_assert_eq(kvn_fd_read_full(fd, w, sizeof(w), NULL), 0);
	/* LMCache's server: ServerMetaMessage(200, 0, MemoryFormat(1), float16, (0,0,0,0)). */
	const int32_t want[9] = {200, 0, 1, 2, 0, 0, 0, 0, 0};
	for (int i = 0; i < 9; i++)
		cr_assert_eq(i32_at(w, i), want[i], "int %d", i);
	close(fd);
}

Test(lm, list_answers_the_newline_joined_keys)
{
	int fd = lm_connect();
	send_req(fd, KVN_LM_LIST, "", 0, NULL);
	struct kvn_lm_reply r = recv_reply(fd);
	cr_assert_eq(r.code, KVN_LM_OK);
	cr_assert_eq(r.length, 0, "an empty store lists nothing");

	uint8_t v[4] = {0};
	const char *keys[] = {"k-one", "k-two", "k-three"};
	for (int i = 0; i < 3; i++)
		put_value(fd, keys[i], v, sizeof(v), NULL);
	send_req(fd, KVN_LM_LIST, "", 0, NULL);
	r = recv_reply(fd);
	cr_assert_eq(r.code, KVN_LM_OK);
	char *text = calloc(1, (size_t)r.length + 1);
	cr_assert_eq(kvn_fd_read_full(fd, text, (size_t)r.length, NULL), 0);
	cr_assert_eq(r.length, (int32_t)strlen("k-one\nk-two\nk-three"), "list: %s", text);
	cr_assert_neq(text[r.length - 1], '\n', "no separator after the last key");
	char *copy = strdup(text);
	int found = 0;
	for (char *save, *t = strtok_r(copy, "\n", &save); t; t = strtok_r(NULL, "\n", &save))
		for (int i = 0; i < 3; i++)
			found += !strcmp(t, keys[i]);
	cr_assert_eq(found, 3, "list: %s", text);
	free(copy);
	free(text);
	close(fd);
}

Test(lm, many_requests_follow_each_other_on_one_connection)
{
	int fd = lm_connect();
	enum { N = 40 };
	uint8_t v[N][300];
	char key[N][32];
	for (int i = 0; i < N; i++) {
		fill(v[i], sizeof(v[i]), (unsigned)i);
		snprintf(key[i], sizeof(key[i]), "pipelined-%d", i);
		put_value(fd, key[i], v[i], sizeof(v[i]), NULL);
	}
	/* All requests first, then all replies: the server must answer in order. */
	for (int i = 0; i < N; i++)
		send_req(fd, KVN_LM_GET, key[i], 0, NULL);
	for (int i = 0; i < N; i++) {
		struct kvn_lm_reply r = recv_reply(fd);
		cr_assert_eq(r.code, KVN_LM_OK, "reply %d", i);
		cr_assert_eq(r.length, 300);
		uint8_t got[300];
		cr_assert_eq(kvn_fd_read_full(fd, got, sizeof(got), NULL), 0);
		cr_assert(!memcmp(got, v[i], sizeof(got)), "reply %d carries value %d", i, i);
	}
	close(fd);
}

Test(lm, values_of_shrinking_and_growing_sizes_on_one_connection_read_back_exactly)
{
	static const size_t sizes[] = {2 * MIB, 10, 0, 3 * MIB + 1, 4096, 1};
	enum { N = sizeof(sizes) / sizeof(sizes[0]) };
	int fd = lm_connect();
	uint8_t *v[N];
	for (int i = 0; i < N; i++) {
		char key[32];
		snprintf(key, sizeof(key), "sized-%d", i);
		v[i] = malloc(sizes[i] + 1);
		fill(v[i], sizes[i], (unsigned)i + 40);
		put_value(fd, key, v[i], sizes[i], NULL);
	}
	for (int i = 0; i < N; i++) {
		char key[32];
		snprintf(key, sizeof(key), "sized-%d", i);
		struct kvn_lm_reply r;
		uint8_t *got = get_value(fd, key, &r);
		cr_assert_eq((size_t)r.length, sizes[i], "%s", key);
		cr_assert(!memcmp(got, v[i], sizes[i]), "%s differs", key);
		free(got);
		free(v[i]);
	}
	close(fd);
}

Test(lm, a_value_put_without_lmcache_s_header_reads_as_a_miss)
{
	struct kvn_key k;
	kvn_key_from_str(&k, "raw-bytes");
	cr_assert_eq(kvn_engine_put(ieng, &k, "hello", 5), 0);
	int fd = lm_connect();
	send_req(fd, KVN_LM_GET, "raw-bytes", 0, NULL);
	struct kvn_lm_reply r = recv_reply(fd);
	cr_assert_eq(r.code, KVN_LM_FAIL, "bytes without a header are never served");
	cr_assert_eq(r.length, 0);
	send_req(fd, KVN_LM_HEALTH, "", 0, NULL);
	cr_assert_eq(recv_reply(fd).code, KVN_LM_OK, "and the connection stays in step");
	close(fd);
}

/* ------------------------------------------------------------------------------------------
 * The older generation: LMCache before the location field (8 int32 headers)
 * ------------------------------------------------------------------------------------------ */

/* LMCache's lmcache/v1/protocol.py at 0e65d2fc0ec3975c78c3ce33a48e81505f315a21 (and
 * lmcache/experimental/protocol.py before it), packed here by hand rather than with lmproto
 * so that the test states the layout on its own:
 *   ClientMetaMessage.serialize: struct.pack("iiiiiiii150s", command, length, fmt, dtype,
 *     shape[0..3], key.encode().ljust(150))          182 bytes
 *   ServerMetaMessage.serialize: struct.pack("iiiiiiii", code, length, fmt, dtype,
 *     shape[0..3])                                   32 bytes
 * Its LMCServerConnector sends GET and EXIST with MemoryFormat(1), float16 (2), shape 0. */
#define V0_REQ	 182
#define V0_REPLY 32

static void
v0_send(int fd, int32_t cmd, const char *key, int32_t len, const struct kvn_lm_meta *m)
{
	static const struct kvn_lm_meta none = {.fmt = 1, .dtype = 2};
	uint8_t w[V0_REQ];
	if (!m)
		m = &none;
	const int32_t v[8] = {cmd,	  len,	      m->fmt,	  m->dtype,
			      m->shape[0], m->shape[1], m->shape[2], m->shape[3]};
	memcpy(w, v, sizeof(v));
	size_t kl = strlen(key);
	cr_assert_leq(kl, 150);
	memcpy(w + 32, key, kl);
	memset(w + 32 + kl, ' ', 150 - kl);
	rawsock_send_all(fd, w, sizeof(w));
}

struct v0_reply {
	int32_t code, length;
	struct kvn_lm_meta meta;
};

/* Exactly 32 bytes: a 36-byte reply would put its last 4 bytes in front of the next one. */
static struct v0_reply
v0_recv(int fd)
{
	uint8_t w[V0_REPLY];
	size_t got;
	int rc = kvn_fd_read_full(fd, w, sizeof(w), &got);
	cr_assert_eq(rc, 0, "no 32-byte reply (%zu bytes): %s", got, kvn_strerror(rc));
	struct v0_reply r = {.code = i32_at(w, 0), .length = i32_at(w, 1)};
	r.meta.fmt = i32_at(w, 2);
	r.meta.dtype = i32_at(w, 3);
	for (int i = 0; i < 4; i++)
		r.meta.shape[i] = i32_at(w, 4 + i);
	return r;
}

static void
v0_put(int fd, const char *key, const uint8_t *p, size_t len, const struct kvn_lm_meta *m)
{
	v0_send(fd, KVN_LM_PUT, key, (int32_t)len, m);
	rawsock_send_all(fd, p, len);
}

/* The key form of that LMCache: CacheEngineKey.to_string, fmt@model@world@worker@hash. */
#define V0_KEY(h) "vllm@meta-llama/Llama-3.1-8B@1@0@" h

/* The reply LMCache's server of that time sent for EXIST, HEALTH and a miss. */
static void
assert_v0_none(struct v0_reply r, int32_t code)
{
	cr_assert_eq(r.code, code);
	cr_assert_eq(r.length, 0);
	cr_assert_eq(r.meta.fmt, 1);
	cr_assert_eq(r.meta.dtype, 2);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(r.meta.shape[i], 0);
}

Test(lm, a_v0_client_gets_32_byte_replies_to_put_get_exist_list_and_health)
{
	int fd = lm_connect();
	v0_send(fd, KVN_LM_HEALTH, V0_KEY("0"), 0, NULL);
	assert_v0_none(v0_recv(fd), KVN_LM_OK);

	size_t len = 2 * MIB + 9;
	uint8_t *v = malloc(len);
	fill(v, len, 21);
	struct kvn_lm_meta m = {.fmt = 1, .dtype = 3, .shape = {2, 32, 256, 1024}};
	v0_put(fd, V0_KEY("-8237491620534871"), v, len, &m);
	v0_send(fd, KVN_LM_EXIST, V0_KEY("-8237491620534871"), 0, NULL);
	assert_v0_none(v0_recv(fd), KVN_LM_OK);
	v0_send(fd, KVN_LM_GET, V0_KEY("-8237491620534871"), 0, NULL);
	struct v0_reply r = v0_recv(fd);
	cr_assert_eq(r.code, KVN_LM_OK);
	cr_assert_eq((size_t)r.length, len);
	cr_assert(r.meta.fmt == 1 && r.meta.dtype == 3);
	for (int i = 0; i < 4; i++)
		cr_assert_eq(r.meta.shape[i], m.shape[i]);
	uint8_t *got = malloc(len);
	cr_assert_eq(kvn_fd_read_full(fd, got, len, NULL), 0);
	cr_assert(!memcmp(got, v, len), "payload differs");

	v0_send(fd, KVN_LM_GET, V0_KEY("17"), 0, NULL);
	assert_v0_none(v0_recv(fd), KVN_LM_FAIL);
	v0_send(fd, KVN_LM_EXIST, V0_KEY("17"), 0, NULL);
	assert_v0_none(v0_recv(fd), KVN_LM_FAIL);

	/* That LMCache named LIST (4) but its server left it commented out: the reply its
	 * commented-out code describes, a header with the length of "\n".join(keys), then the
	 * keys. */
	v0_send(fd, KVN_LM_LIST, V0_KEY("0"), 0, NULL);
	r = v0_recv(fd);
	cr_assert_eq(r.code, KVN_LM_OK);
	char list[256] = "";
	cr_assert_eq((size_t)r.length, strlen(V0_KEY("-8237491620534871")));
	cr_assert_eq(kvn_fd_read_full(fd, list, (size_t)r.length, NULL), 0);
	cr_assert_str_eq(list, V0_KEY("-8237491620534871"));

	/* Nothing stray after the last reply: the server closes on our end of stream. */
	v0_send(fd, KVN_LM_HEALTH, V0_KEY("0"), 0, NULL);
	assert_v0_none(v0_recv(fd), KVN_LM_OK);
	shutdown(fd, SHUT_WR);
	rawsock_assert_closed(fd, "the lm server");
	close(fd);
	free(got);
	free(v);
	struct kvn_lm_server_stats st = lm_stats();
	cr_assert_eq(st.by_protocol[KVN_LM_V0], 1);
	cr_assert_eq(st.by_protocol[KVN_LM_V1], 0);
	cr_assert_eq(st.proto_errors, 0);
}

/* A key shorter than 4 bytes (or none) is padded with spaces by ljust: still the older form. */
Test(lm, a_v0_request_with_a_short_or_empty_key_is_told_apart)
{
	int fd = lm_connect();
	v0_send(fd, KVN_LM_HEALTH, "", 0, NULL);
	assert_v0_none(v0_recv(fd), KVN_LM_OK);
	close(fd);
	fd = lm_connect();
	uint8_t v[5] = {1, 2, 3, 4, 5};
	v0_put(fd, "ab", v, sizeof(v), NULL);
	v0_send(fd, KVN_LM_GET, "ab", 0, NULL);
	struct v0_reply r = v0_recv(fd);
	cr_assert(r.code == KVN_LM_OK && r.length == 5, "GET ab: %d, %d", r.code, r.length);
	uint8_t got[5];
	cr_assert_eq(kvn_fd_read_full(fd, got, sizeof(got), NULL), 0);
	cr_assert(!memcmp(got, v, sizeof(v)));
	close(fd);
}

/* An engine shared by both: what one generation puts the other reads, metadata and all. */
Test(lm, v0_and_v1_clients_are_served_side_by_side_from_one_store)
{
	int old = lm_connect(), cur = lm_connect();
	uint8_t a[3000], b[5000];
	fill(a, sizeof(a), 31);
	fill(b, sizeof(b), 32);
	struct kvn_lm_meta ma = {.fmt = 1, .dtype = 3, .shape = {2, 4, 3, 125}};
	struct kvn_lm_meta mb = {.fmt = 4, .dtype = 6, .shape = {5000, 0, 0, 0}};
	v0_put(old, V0_KEY("1"), a, sizeof(a), &ma);
	put_value(cur, "vllm@1@0@2@bfloat16", b, sizeof(b), &mb);
	/* Each one's PUT is in before the other reads: an EXIST after it on its own stream. */
	v0_send(old, KVN_LM_EXIST, V0_KEY("1"), 0, NULL);
	assert_v0_none(v0_recv(old), KVN_LM_OK);
	send_req(cur, KVN_LM_EXIST, "vllm@1@0@2@bfloat16", 0, NULL);
	cr_assert_eq(recv_reply(cur).code, KVN_LM_OK);

	struct kvn_lm_reply r;
	uint8_t *got = get_value(cur, V0_KEY("1"), &r);
	cr_assert(r.length == (int32_t)sizeof(a) && !memcmp(got, a, sizeof(a)));
	cr_assert(r.meta.fmt == 1 && r.meta.dtype == 3 && r.meta.shape[3] == 125);
	free(got);
	v0_send(old, KVN_LM_GET, "vllm@1@0@2@bfloat16", 0, NULL);
	struct v0_reply o = v0_recv(old);
	cr_assert(o.code == KVN_LM_OK && o.length == (int32_t)sizeof(b));
	cr_assert(o.meta.fmt == 4 && o.meta.dtype == 6 && o.meta.shape[0] == 5000);
	uint8_t gb[sizeof(b)];
	cr_assert_eq(kvn_fd_read_full(old, gb, sizeof(gb), NULL), 0);
	cr_assert(!memcmp(gb, b, sizeof(b)));
	/* And each stays in its own generation afterwards. */
	send_req(cur, KVN_LM_HEALTH, "", 0, NULL);
	cr_assert_eq(recv_reply(cur).code, KVN_LM_OK);
	v0_send(old, KVN_LM_HEALTH, V0_KEY("0"), 0, NULL);
	assert_v0_none(v0_recv(old), KVN_LM_OK);
	close(old);
	close(cur);
	struct kvn_lm_server_stats st = lm_stats();
	cr_assert_eq(st.by_protocol[KVN_LM_V0], 1);
	cr_assert_eq(st.by_protocol[KVN_LM_V1], 1);
}

/* ------------------------------------------------------------------------------------------
 * Malformed requests: 400, close, keep serving
 * ------------------------------------------------------------------------------------------ */

Test(lm, garbage_gets_400_and_close_and_the_server_keeps_serving)
{
	int fd = lm_connect();
	uint8_t junk[KVN_LM_REQ_SIZE];
	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = (uint8_t)(0xa5 ^ (i * 29));
	rawsock_send_all(fd, junk, sizeof(junk));
	assert_400_and_closed(fd);
	assert_still_serving();
	struct kvn_lm_server_stats st;
	kvn_lm_server_stats(isrv, &st);
	cr_assert_geq(st.proto_errors, 1);
}

Test(lm, unknown_commands_get_400_and_close)
{
	const int32_t bad[] = {0, 6, -1, 200, INT32_MAX};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int fd = lm_connect();
		send_req(fd, bad[i], "k", 0, NULL);
		assert_400_and_closed(fd);
	}
	assert_still_serving();
}

Test(lm, a_short_header_closes_the_connection_and_others_are_served)
{
	int fd = lm_connect();
	uint8_t w[KVN_LM_REQ_SIZE];
	kvn_lm_req_encode(w, KVN_LM_GET, "k", 1, 0, NULL);
	rawsock_send_all(fd, w, 100);
	shutdown(fd, SHUT_WR);
	/* The server may or may not get its 400 out before noticing the end: either way the
	 * connection ends and nothing else comes. */
	uint8_t r[KVN_LM_REPLY_SIZE];
	size_t got = 0;
	int rc = kvn_fd_read_full(fd, r, sizeof(r), &got);
	if (rc == 0) {
		cr_assert_eq(i32_at(r, 0), KVN_LM_FAIL);
		rawsock_assert_closed(fd, "the lm server");
	} else {
		cr_assert_eq(got, 0, "a partial reply is never sent");
	}
	close(fd);
	assert_still_serving();
}

Test(lm, a_negative_put_length_gets_400_and_close)
{
	int fd = lm_connect();
	send_req(fd, KVN_LM_PUT, "negative", -5, NULL);
	assert_400_and_closed(fd);
	assert_still_serving();
}

/* Over max_chunk_size (64 MiB by default) nothing is allocated for it: what comes is dropped,
 * and the connection ends with the stream. */
Test(lm, a_huge_put_length_is_never_allocated_and_nothing_is_stored)
{
	int fd = lm_connect();
	send_req(fd, KVN_LM_PUT, "huge", INT32_MAX, NULL);
	uint8_t some[4096] = {0};
	rawsock_send_all(fd, some, sizeof(some));
	shutdown(fd, SHUT_WR);
	rawsock_assert_closed(fd, "the lm server");
	close(fd);
	assert_still_serving();
	struct kvn_key k;
	kvn_key_from_str(&k, "huge");
	cr_assert_eq(kvn_engine_contains(ieng, &k), 0);
	struct kvn_lm_server_stats st;
	kvn_lm_server_stats(isrv, &st);
	cr_assert_eq(st.oversized, 1);
}

Test(lm, an_invalid_key_gets_400_and_close)
{
	int fd = lm_connect();
	send_req(fd, KVN_LM_GET, "", 0, NULL);
	assert_400_and_closed(fd);
	fd = lm_connect();
	send_req(fd, KVN_LM_EXIST, "bad\x01key", 0, NULL);
	assert_400_and_closed(fd);
	assert_still_serving();
}

/* PUT has no reply. A refused one is read to its end, so that the client's sendall of the
 * payload completes (a server closing with a payload unread resets the connection under it),
 * then the connection is closed with nothing sent: a 400 would be read as the answer to the
 * client's next request. LMCache's own server also closes on a key or metadata it cannot
 * parse. 8 MiB is more than loopback's socket buffers hold. */
static void
assert_put_read_whole_then_closed(const char *key, const struct kvn_lm_meta *m)
{
	size_t len = 8 * MIB;
	uint8_t *v = calloc(1, len);
	int fd = lm_connect();
	put_value(fd, key, v, len, m);
	char b;
	ssize_t n;
	while ((n = read(fd, &b, 1)) < 0 && errno == EINTR)
		;
	cr_assert_eq(n, 0, "after the refused PUT: read %zd (%s); the server should have read "
			   "the payload, sent nothing and closed",
		     n, n < 0 ? strerror(errno) : "a reply");
	close(fd);
	free(v);
	assert_still_serving();
}

Test(lm, a_put_with_an_invalid_key_is_read_whole_then_its_connection_closed)
{
	assert_put_read_whole_then_closed("bad\x01key", NULL);
	struct kvn_lm_server_stats st = lm_stats();
	cr_assert_eq(st.proto_errors, 1);
	cr_assert_eq(st.dropped_puts[KVN_LM_DROP_BAD_KEY], 1);
	cr_assert_eq(st.bytes_in, 3, "only still-serving's bytes were taken as a value");
}

Test(lm, a_put_with_out_of_range_metadata_is_read_whole_then_its_connection_closed)
{
	struct kvn_lm_meta m = {.fmt = 99, .dtype = 2};
	assert_put_read_whole_then_closed("bad-meta", &m);
	struct kvn_lm_meta neg = {.fmt = 1, .dtype = 2, .shape = {2, -1, 0, 0}};
	assert_put_read_whole_then_closed("bad-shape", &neg);
	struct kvn_key k;
	kvn_key_from_str(&k, "bad-meta");
	cr_assert_eq(kvn_engine_contains(ieng, &k), 0);
	kvn_key_from_str(&k, "bad-shape");
	cr_assert_eq(kvn_engine_contains(ieng, &k), 0);
	cr_assert_eq(lm_stats().proto_errors, 2);
	cr_assert_eq(lm_stats().dropped_puts[KVN_LM_DROP_BAD_METADATA], 2);
}

Test(lm, a_truncated_put_stores_nothing)
{
	int fd = lm_connect();
	send_req(fd, KVN_LM_PUT, "cut-short", 1000, NULL);
	uint8_t half[500] = {0};
	rawsock_send_all(fd, half, sizeof(half));
	shutdown(fd, SHUT_WR);
	char b[64];
	while (read(fd, b, sizeof(b)) > 0)
		; /* until the server closes */
	close(fd);
	assert_still_serving(); /* also orders us after the server's handling of fd */
	struct kvn_key k;
	kvn_key_from_str(&k, "cut-short");
	cr_assert_eq(kvn_engine_contains(ieng, &k), 0);
}

/* A client that never pauses: PUTs have no replies, so it only ever writes. */
struct hammer {
	int fd;
	_Atomic int sent;
	int err;
};

static void *
hammer_main(void *arg)
{
	struct hammer *h = arg;
	static uint8_t v[256 * 1024];
	uint8_t w[KVN_LM_REQ_SIZE];
	kvn_lm_req_encode(w, KVN_LM_PUT, "hammered", 8, (int32_t)sizeof(v), NULL);
	for (;;) {
		int rc = kvn_fd_write_full(h->fd, w, sizeof(w));
		if (!rc)
			rc = kvn_fd_write_full(h->fd, v, sizeof(v));
		if (rc) {
			h->err = rc;
			return NULL;
		}
		atomic_fetch_add(&h->sent, 1);
	}
}

static bool
hammer_going(void *arg)
{
	return atomic_load(&((struct hammer *)arg)->sent) > 2;
}

Test(lm, stop_ends_a_connection_that_never_pauses_and_the_client_sees_it)
{
	struct hammer h = {.fd = lm_connect()};
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, hammer_main, &h), 0);
	cr_assert(proc_wait_for(hammer_going, &h, DEADLINE), "no PUT went out");
	kvn_lm_server_stop(isrv); /* returns: the connection is not served to its end */
	isrv = NULL;
	pthread_join(t, NULL);
	cr_assert(h.err == -EPIPE || h.err == -ECONNRESET, "the writer got %s",
		  kvn_strerror(h.err));
	close(h.fd);
}

static void
lm_up_capped(void)
{
	lm_up(1, 4096);
}

/* A connection in the middle of a request: never the one closed to make room. */
static int
lm_connect_busy(void)
{
	int fd = lm_connect();
	uint8_t w[KVN_LM_REQ_SIZE];
	kvn_lm_req_encode(w, KVN_LM_HEALTH, "", 0, 0, NULL);
	rawsock_send_all(fd, w, 10);
	return fd;
}

/* The rest of the HEALTH lm_connect_busy began: the connection was served throughout. */
static void
finish_busy(int fd)
{
	uint8_t w[KVN_LM_REQ_SIZE];
	kvn_lm_req_encode(w, KVN_LM_HEALTH, "", 0, 0, NULL);
	rawsock_send_all(fd, w + 10, sizeof(w) - 10);
	cr_assert_eq(recv_reply(fd).code, KVN_LM_OK);
}

Test(lm_capped, past_the_connection_cap_with_none_idle_a_client_is_closed, .init = lm_up_capped,
     .fini = lm_down, .timeout = 300)
{
	int a = lm_connect_busy();
	int b = lm_connect(); /* the kernel accepts it; the server then closes it */
	rawsock_assert_closed(b, "the lm server");
	close(b);
	struct kvn_lm_server_stats st;
	kvn_lm_server_stats(isrv, &st);
	cr_assert_eq(st.refused, 1);
	cr_assert_eq(st.evicted, 0, "a connection mid-request is never closed to make room");
	finish_busy(a);
	close(a);
	/* Once a is gone (the server notices asynchronously) a new client gets in. */
	bool served = false;
	for (int i = 0; i < 200 && !served; i++) {
		int c = lm_connect();
		uint8_t w[KVN_LM_REQ_SIZE], r[KVN_LM_REPLY_SIZE];
		kvn_lm_req_encode(w, KVN_LM_HEALTH, "", 0, 0, NULL);
		if (kvn_fd_write_full(c, w, sizeof(w)) == 0 &&
		    kvn_fd_read_full(c, r, sizeof(r), NULL) == 0)
			served = i32_at(r, 0) == KVN_LM_OK;
		close(c);
		if (!served)
			poll(NULL, 0, 50);
	}
	cr_assert(served, "a client was served after the first one left");
}

/* LMCache sends a PUT's payload right after its header and reads no reply: the server drops
 * the payload, stores nothing, and the client's next requests are answered in step. */
Test(lm_capped, a_put_over_max_chunk_size_is_dropped_and_the_connection_stays_in_step,
     .init = lm_up_capped, .fini = lm_down, .timeout = 300)
{
	int fd = lm_connect();
	static uint8_t big[4097];
	fill(big, sizeof(big), 5);
	put_value(fd, "big", big, sizeof(big), NULL);
	uint8_t v[3] = {7, 8, 9};
	put_value(fd, "small", v, sizeof(v), NULL);
	send_req(fd, KVN_LM_GET, "big", 0, NULL);
	struct kvn_lm_reply r = recv_reply(fd);
	cr_assert(r.code == KVN_LM_FAIL && r.length == 0, "GET big: a miss, got %d", r.code);
	uint8_t *got = get_value(fd, "small", &r);
	cr_assert(r.length == 3 && !memcmp(got, v, 3), "the PUT after the dropped one was stored");
	free(got);
	send_req(fd, KVN_LM_HEALTH, "", 0, NULL);
	cr_assert_eq(recv_reply(fd).code, KVN_LM_OK);
	close(fd);
	struct kvn_lm_server_stats st;
	kvn_lm_server_stats(isrv, &st);
	cr_assert_eq(st.oversized, 1);
	cr_assert_eq(st.dropped_puts[KVN_LM_DROP_OVERSIZED], 1);
	cr_assert_eq(st.proto_errors, 0);
}

/* ------------------------------------------------------------------------------------------
 * Limits: idle clients, requests that never complete, the connection cap
 * ------------------------------------------------------------------------------------------ */

#define CLOSE_WAIT_S 20 /* a server that never closes fails the test after this */

static void
rcv_timeout(int fd, int seconds)
{
	struct timeval tv = {.tv_sec = seconds};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

static struct kvn_lm_server_stats
lm_stats(void)
{
	struct kvn_lm_server_stats st;
	kvn_lm_server_stats(isrv, &st);
	return st;
}

static void
lm_up_idle(void)
{
	lm_start((struct kvn_lm_server_opts){.idle_timeout_ms = 300, .io_timeout_ms = 60000});
}

Test(lm_limits, an_idle_client_is_closed_after_lm_idle_timeout_ms, .init = lm_up_idle,
     .fini = lm_down, .timeout = 300)
{
	int fd = lm_connect();
	send_req(fd, KVN_LM_HEALTH, "", 0, NULL);
	cr_assert_eq(recv_reply(fd).code, KVN_LM_OK);
	rcv_timeout(fd, CLOSE_WAIT_S);
	rawsock_assert_closed(fd, "the lm server (lm_idle_timeout_ms 300)");
	close(fd);
	cr_assert_eq(lm_stats().idle_closed, 1);
	cr_assert_eq(lm_stats().request_timeouts, 0);
}

static void
lm_up_request_timeout(void)
{
	lm_start((struct kvn_lm_server_opts){.io_timeout_ms = 500});
}

/* Sends p one byte every 100 ms (each well inside any per-read timeout) until the server
 * ends the connection; returns how many bytes went out by then, or len if it never did. */
static size_t
trickle(int fd, const uint8_t *p, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		if (send(fd, p + i, 1, MSG_NOSIGNAL) != 1)
			return i;
		struct pollfd pf = {.fd = fd, .events = POLLIN};
		if (poll(&pf, 1, 100) > 0) {
			char b;
			ssize_t n = read(fd, &b, 1);
			cr_assert(n <= 0, "the server answered a request it never got whole");
			return i + 1;
		}
	}
	return len;
}

Test(lm_limits, a_header_trickling_past_lm_request_timeout_ms_is_cut,
     .init = lm_up_request_timeout, .fini = lm_down, .timeout = 300)
{
	int fd = lm_connect();
	uint8_t w[KVN_LM_REQ_SIZE];
	kvn_lm_req_encode(w, KVN_LM_HEALTH, "", 0, 0, NULL);
	/* All but the last byte: 18.5 s of trickle, the server must give up long before. */
	size_t sent = trickle(fd, w, sizeof(w) - 1);
	cr_assert_lt(sent, sizeof(w) - 1,
		     "the server kept a header trickling in for %zu bytes (lm_request_timeout_ms "
		     "500)",
		     sent);
	close(fd);
	cr_assert_eq(lm_stats().request_timeouts, 1);
	assert_still_serving();
}

Test(lm_limits, a_put_payload_trickling_past_lm_request_timeout_ms_is_cut,
     .init = lm_up_request_timeout, .fini = lm_down, .timeout = 300)
{
	int fd = lm_connect();
	send_req(fd, KVN_LM_PUT, "trickled", 1000, NULL);
	uint8_t v[200] = {0};
	size_t sent = trickle(fd, v, sizeof(v));
	cr_assert_lt(sent, sizeof(v),
		     "the server kept a PUT payload trickling in for %zu bytes "
		     "(lm_request_timeout_ms 500)",
		     sent);
	close(fd);
	cr_assert_eq(lm_stats().request_timeouts, 1);
	struct kvn_key k;
	kvn_key_from_str(&k, "trickled");
	cr_assert_eq(kvn_engine_contains(ieng, &k), 0);
	assert_still_serving();
}

/* A header that stops short and stays silent (the older LMCache's 182 bytes were one to a
 * server that took every header for 186; a client that died mid-send is another) never holds
 * its connection: after lm_request_timeout_ms it is closed, nothing answered. Cut before 182
 * bytes, and after 182 bytes of a request of the current generation (186). */
Test(lm_limits, a_header_that_stops_short_is_closed_after_lm_request_timeout_ms,
     .init = lm_up_request_timeout, .fini = lm_down, .timeout = 300)
{
	static const size_t cut[] = {1, 120, 181, 184};
	uint8_t w[KVN_LM_REQ_SIZE];
	kvn_lm_req_encode(w, KVN_LM_GET, "vllm@1@0@beef@half", 18, 0, NULL);
	for (size_t i = 0; i < sizeof(cut) / sizeof(cut[0]); i++) {
		int fd = lm_connect();
		rawsock_send_all(fd, w, cut[i]);
		rcv_timeout(fd, CLOSE_WAIT_S);
		rawsock_assert_closed(fd, "the lm server (lm_request_timeout_ms 500)");
		close(fd);
	}
	cr_assert_eq(lm_stats().request_timeouts, sizeof(cut) / sizeof(cut[0]));
	assert_still_serving();
}

static void
lm_up_three(void)
{
	lm_start((struct kvn_lm_server_opts){.max_conns = 3, .io_timeout_ms = 60000});
}

static void
health(int fd)
{
	send_req(fd, KVN_LM_HEALTH, "", 0, NULL);
	cr_assert_eq(recv_reply(fd).code, KVN_LM_OK);
}

/* Idle connections (of clients long gone, say) must not lock new clients out: at the cap a
 * newcomer takes the place of the connection idle the longest, once that one has been idle
 * a second. A connection in the middle of a request is never taken. */
Test(lm_limits, at_lm_max_connections_a_new_client_closes_the_connection_idle_the_longest,
     .init = lm_up_three, .fini = lm_down, .timeout = 300)
{
	int a = lm_connect();
	health(a);
	poll(NULL, 0, 300); /* a has been idle longer than b */
	int b = lm_connect();
	health(b);
	int busy = lm_connect_busy();
	poll(NULL, 0, 1500); /* both idle past the one-second minimum */
	int c = lm_connect();
	health(c); /* served, not refused */
	rcv_timeout(a, CLOSE_WAIT_S);
	rawsock_assert_closed(a, "the lm server (a was idle the longest)");
	close(a);
	health(b);
	finish_busy(busy);
	struct kvn_lm_server_stats st = lm_stats();
	cr_assert_eq(st.evicted, 1);
	cr_assert_eq(st.refused, 0);
	close(b);
	close(busy);
	close(c);
}

static void
lm_up_small(void)
{
	cpu_bytes = 16 * MIB;
	lm_up(0, 0);
}

Test(lm_small, the_node_s_eviction_applies_to_what_lmcache_puts, .init = lm_up_small,
     .fini = lm_down, .timeout = 300)
{
	enum { N = 12 }; /* 12 x 4 MiB into a 16 MiB cpu tier */
	int fd = lm_connect();
	uint8_t *v = malloc(4 * MIB);
	for (int i = 0; i < N; i++) {
		char key[32];
		snprintf(key, sizeof(key), "evict-%d", i);
		fill(v, 4 * MIB, (unsigned)i);
		put_value(fd, key, v, 4 * MIB, NULL);
	}
	int hits = 0;
	for (int i = 0; i < N; i++) {
		char key[32];
		snprintf(key, sizeof(key), "evict-%d", i);
		send_req(fd, KVN_LM_EXIST, key, 0, NULL);
		hits += recv_reply(fd).code == KVN_LM_OK;
	}
	cr_assert_lt(hits, N, "the cpu tier cannot hold all %d values", N);
	struct kvn_lm_reply r;
	uint8_t *got = get_value(fd, "evict-11", &r); /* the newest survives */
	fill(v, 4 * MIB, 11);
	cr_assert(r.length == 4 * MIB && !memcmp(got, v, 4 * MIB));
	send_req(fd, KVN_LM_GET, "evict-0", 0, NULL); /* the oldest went first (LRU) */
	r = recv_reply(fd);
	cr_assert_eq(r.code, KVN_LM_FAIL);
	cr_assert_eq(r.length, 0);
	free(got);
	free(v);
	close(fd);
}

/* A value the engine cannot take (larger than the whole cpu tier) is read whole before the
 * engine refuses it, and the connection goes on: the client's stream is in step. */
Test(lm_small, a_put_the_engine_refuses_is_read_whole_and_the_connection_stays_in_step,
     .init = lm_up_small, .fini = lm_down, .timeout = 300)
{
	size_t len = 20 * MIB; /* over the 16 MiB cpu tier, under max_chunk_size */
	uint8_t *v = calloc(1, len);
	int fd = lm_connect();
	put_value(fd, "no-tier-holds-it", v, len, NULL);
	health(fd);
	send_req(fd, KVN_LM_GET, "no-tier-holds-it", 0, NULL);
	struct kvn_lm_reply r = recv_reply(fd);
	cr_assert(r.code == KVN_LM_FAIL && r.length == 0, "GET: a miss, got %d", r.code);
	close(fd);
	free(v);
	struct kvn_lm_server_stats st = lm_stats();
	cr_assert_eq(st.errors, 1);
	cr_assert_eq(st.proto_errors, 0);
	cr_assert_eq(st.dropped_puts[KVN_LM_DROP_NOT_STORED], 1);
}

static void
lm_up_roomy(void)
{
	lm_start((struct kvn_lm_server_opts){.io_timeout_ms = 120000, .value_max = 1u << 30});
}

static uint64_t
address_space_now(void)
{
	char *t = proc_read_file("/proc/self/statm", NULL);
	cr_assert_not_null(t);
	unsigned long long pages = strtoull(t, NULL, 10);
	free(t);
	return (uint64_t)pages * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* Out of memory for a value: its payload is read and dropped, and the connection goes on.
 * RLIMIT_AS makes the server's malloc fail (the server runs in this process). */
Test(lm_roomy, a_put_the_node_has_no_memory_for_is_read_whole_and_the_connection_stays_in_step,
     .init = lm_up_roomy, .fini = lm_down, .timeout = 300)
{
#if defined(__SANITIZE_ADDRESS__)
	cr_skip_test("AddressSanitizer reserves terabytes of address space: RLIMIT_AS cannot make "
		     "one malloc fail under it");
#elif defined(__SANITIZE_THREAD__)
	cr_skip_test("ThreadSanitizer's allocator aborts the process when a malloc fails instead of "
		     "returning NULL: the plain build runs this case");
#endif
	int fd = lm_connect();
	health(fd); /* its thread and stack exist before the limit */
	size_t step = 4 * MIB, len = 512 * MIB;
	uint8_t *v = calloc(1, step);
	struct rlimit was;
	cr_assert_eq(getrlimit(RLIMIT_AS, &was), 0);
	struct rlimit lim = {.rlim_cur = address_space_now() + 256 * MIB, .rlim_max = was.rlim_max};
	cr_assert_eq(setrlimit(RLIMIT_AS, &lim), 0);
	send_req(fd, KVN_LM_PUT, "no-room", (int32_t)len, NULL);
	for (size_t sent = 0; sent < len; sent += step)
		rawsock_send_all(fd, v, step);
	health(fd);
	cr_assert_eq(setrlimit(RLIMIT_AS, &was), 0);
	close(fd);
	free(v);
	struct kvn_key k;
	kvn_key_from_str(&k, "no-room");
	cr_assert_eq(kvn_engine_contains(ieng, &k), 0);
	struct kvn_lm_server_stats st = lm_stats();
	cr_assert_eq(st.errors, 1);
	cr_assert_eq(st.proto_errors, 0);
	cr_assert_eq(st.dropped_puts[KVN_LM_DROP_NO_MEMORY], 1);
}

/* ------------------------------------------------------------------------------------------
 * The lm:// connector (client) against the in-process server
 * ------------------------------------------------------------------------------------------ */

extern const struct kvn_connector_ops kvn_lm_connector_ops;

static char curl[128];

static const char *
no_opt(const struct kvn_connector_env *env, const char *opt)
{
	(void)env;
	(void)opt;
	return NULL;
}

static void
env_log(const struct kvn_connector_env *env, int level, const char *fmt, ...)
{
	(void)env;
	(void)level;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "lm connector: ");
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
}

static struct kvn_connector_env cenv = {KVN_CONNECTOR_ENV_INIT,
					.get_opt = no_opt,
					.log = env_log,
					.timeout_ms = 10000};

static struct kvn_connector *
conn_open(void)
{
	snprintf(curl, sizeof(curl), "lm://%s", kvn_lm_server_address(isrv));
	cenv.url = cenv.url_redacted = curl;
	struct kvn_connector *c = NULL;
	int rc = kvn_lm_connector_ops.connect(&cenv, &c);
	cr_assert_eq(rc, 0, "connect %s: %s", curl, kvn_strerror(rc));
	return c;
}

static struct kvn_remote_value
bytes_value(size_t len, unsigned seed)
{
	struct kvn_remote_value v = {0};
	struct kvn_buf *b = kvn_buf_new(len);
	fill(b->data, len, seed);
	cr_assert_eq(kvn_remote_value_from_buf(&v, b), 0);
	return v; /* payload is b, one reference: drop with kvn_buf_unref(v.payload) */
}

struct seen_ctx {
	const struct kvn_key *want;
	int seen;
};

static int
count_key(void *ctx, const char *key, size_t len)
{
	struct seen_ctx *sc = ctx;
	sc->seen += len == sc->want->len && !memcmp(key, sc->want->str, len);
	return 0;
}

TestSuite(lm_connector, .init = lm_up_default, .fini = lm_down, .timeout = 300);

Test(lm_connector, put_get_exists_list_and_ping_round_trip)
{
	struct kvn_connector *c = conn_open();
	const struct kvn_connector_ops *ops = &kvn_lm_connector_ops;
	cr_assert_eq(ops->ping(c), 0);
	struct kvn_key k;
	kvn_key_from_str(&k, "vllm@m@1@0@feed@bfloat16");
	cr_assert_eq(ops->exists(c, &k), 0);
	struct kvn_remote_value out;
	cr_assert_eq(ops->get(c, &k, &out), -ENOENT);

	struct kvn_remote_value v = bytes_value(2 * MIB + 5, 3);
	v.meta.fmt = 1;
	v.meta.dtype = 3;
	cr_assert_eq(ops->put(c, &k, &v), 0);
	cr_assert_eq(ops->exists(c, &k), 1);
	cr_assert_eq(ops->get(c, &k, &out), 0);
	cr_assert_eq(out.meta.length, v.meta.length);
	cr_assert_eq(out.meta.fmt, 1);
	cr_assert_eq(out.meta.dtype, 3);
	cr_assert_eq(out.meta.shape[0], v.meta.shape[0]);
	cr_assert_eq(out.payload->len, v.payload->len);
	cr_assert(!memcmp(out.payload->data, v.payload->data, v.payload->len));
	cr_assert_eq(out.tag_len, 0, "lm:// carries no kvnode tag");
	cr_assert_eq(kvn_remote_value_check(&out, NULL, 0), 0);
	kvn_remote_value_release(&out);
	kvn_buf_unref(v.payload);

	struct seen_ctx sc = {.want = &k};
	cr_assert_eq(ops->list(c, count_key, &sc), 0);
	cr_assert_eq(sc.seen, 1);
	cr_assert_eq(ops->remove(c, &k), -EOPNOTSUPP, "LMCache's protocol has no delete");
	ops->close(c);
}

Test(lm_connector, batches_are_pipelined_and_misses_stay_per_key)
{
	enum { N = 70 }; /* more than one pipeline window */
	struct kvn_connector *c = conn_open();
	const struct kvn_connector_ops *ops = &kvn_lm_connector_ops;
	static struct kvn_key keys[N];
	const struct kvn_key *kp[N];
	struct kvn_remote_value vals[N], out[N];
	int rcs[N];
	for (int i = 0; i < N; i++) {
		char t[32];
		snprintf(t, sizeof(t), "batch-%d", i);
		kvn_key_from_str(&keys[i], t);
		kp[i] = &keys[i];
		vals[i] = bytes_value(1000 + (size_t)i, (unsigned)i);
	}
	/* Only the even keys are stored. */
	const struct kvn_key *even[N / 2];
	struct kvn_remote_value evals[N / 2];
	for (int i = 0; i < N / 2; i++) {
		even[i] = kp[2 * i];
		evals[i] = vals[2 * i];
	}
	cr_assert_eq(ops->put_batch(c, N / 2, even, evals, rcs), 0);
	for (int i = 0; i < N / 2; i++)
		cr_assert_eq(rcs[i], 0);
	cr_assert_eq(ops->exists_batch(c, N, kp, rcs), 0);
	for (int i = 0; i < N; i++)
		cr_assert_eq(rcs[i], i % 2 == 0, "exists %d", i);
	cr_assert_eq(ops->get_batch(c, N, kp, out, rcs), 0);
	for (int i = 0; i < N; i++) {
		if (i % 2) {
			cr_assert_eq(rcs[i], -ENOENT, "get %d", i);
			continue;
		}
		cr_assert_eq(rcs[i], 0, "get %d", i);
		cr_assert_eq(out[i].payload->len, vals[i].payload->len);
		cr_assert(
		    !memcmp(out[i].payload->data, vals[i].payload->data, vals[i].payload->len));
		kvn_remote_value_release(&out[i]);
	}
	for (int i = 0; i < N; i++)
		kvn_buf_unref(vals[i].payload);
	ops->close(c);
}

Test(lm_connector, a_key_over_150_bytes_is_refused_without_breaking_the_connection)
{
	struct kvn_connector *c = conn_open();
	const struct kvn_connector_ops *ops = &kvn_lm_connector_ops;
	char t[200];
	memset(t, 'x', sizeof(t) - 1);
	t[sizeof(t) - 1] = '\0';
	struct kvn_key k;
	kvn_key_from_str(&k, t);
	struct kvn_remote_value v = bytes_value(10, 1);
	cr_assert_eq(ops->put(c, &k, &v), -ENAMETOOLONG);
	cr_assert_eq(ops->ping(c), 0);
	kvn_buf_unref(v.payload);
	ops->close(c);
}

Test(lm_connector, a_stopped_server_is_a_connection_error_and_a_new_one_is_reachable)
{
	struct kvn_connector *c = conn_open();
	const struct kvn_connector_ops *ops = &kvn_lm_connector_ops;
	cr_assert_eq(ops->ping(c), 0);
	char addr[300];
	snprintf(addr, sizeof(addr), "%s", kvn_lm_server_address(isrv));
	kvn_lm_server_stop(isrv);
	isrv = NULL;
	struct kvn_key k;
	kvn_key_from_str(&k, "gone");
	int rc = ops->exists(c, &k);
	cr_assert(rc == -ECONNRESET || rc == -EPIPE || rc == -ENOTCONN,
		  "exists against a stopped server: %s", kvn_strerror(rc));
	ops->close(c);
	struct kvn_connector *c2 = NULL;
	rc = ops->connect(&cenv, &c2);
	cr_assert(rc == -ECONNREFUSED, "connect to a stopped server: %s", kvn_strerror(rc));

	/* The same address served again (the node's reconnect finds it). */
	char err[256];
	struct kvn_lm_server_opts o = {.listen = addr};
	cr_assert_eq(kvn_lm_server_start(ieng, &o, &isrv, err, sizeof(err)), 0, "%s", err);
	c = conn_open();
	cr_assert_eq(ops->ping(c), 0);
	ops->close(c);
}

Test(lm_connector, bad_urls_are_refused_with_a_reason)
{
	static const char *const bad[] = {"lm://", "lm://host", "lm://127.0.0.1:0",
					  "lm://127.0.0.1:80/path", "redis://127.0.0.1:6379"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct kvn_connector_env e = cenv;
		e.url = e.url_redacted = bad[i];
		struct kvn_connector *c = NULL;
		cr_assert_eq(kvn_lm_connector_ops.connect(&e, &c), -EINVAL, "%s", bad[i]);
		cr_assert_null(c);
	}
}

/* An independent server: LMCache's cache server (lmcache/v1/server/__main__.py) restated with
 * struct.pack and a dict, LIST left unanswered as LMCache leaves it. Like LMCache's, it parses
 * every key with CacheEngineKey.from_string's rules (lmcache/utils.py: '@' parts, int world
 * size and worker id, int(hash, 16), a dtype name, tag%value parts) and on a key it cannot
 * parse raises, which ends the connection (handle_client's finally: close). With "forget" it
 * reads PUTs and keeps nothing (a server that takes a value and loses it). kvnode's lm://
 * connector must interoperate with it. */
static const char lmcache_server_py[] =
    "import socket, struct, sys, threading\n"
    "MAX_KEY_LENGTH = 150\n"
    "DTYPES = {'half', 'bfloat16', 'float', 'double', 'int8', 'uint8', 'int16', 'int32',\n"
    "          'int64', 'bool', 'fp8_e4m3fn', 'fp8_e4m3fnuz', 'fp8_e5m2', 'fp8_e5m2fnuz'}\n"
    "forget = len(sys.argv) > 1 and sys.argv[1] == 'forget'\n"
    "store = {}\n"
    "def from_string(s):\n"
    "    parts = s.split('@')\n"
    "    if len(parts) < 5: raise ValueError(f'Invalid key string: {s}')\n"
    "    int(parts[1]); int(parts[2]); int(parts[3], 16)\n"
    "    if parts[4] not in DTYPES: raise KeyError(parts[4])\n"
    "    for kv in parts[5:]:\n"
    "        if len(kv.split('%', 1)) != 2: raise ValueError(f'Invalid key string: {s}')\n"
    "    return s\n"
    "def recv_all(c, n):\n"
    "    b = bytearray()\n"
    "    while len(b) < n:\n"
    "        p = c.recv(n - len(b))\n"
    "        if not p: return None\n"
    "        b.extend(p)\n"
    "    return bytes(b)\n"
    "def reply(c, code, length=0, fmt=1, dtype=2, shape=(0, 0, 0, 0)):\n"
    "    c.sendall(struct.pack('iiiiiiiii', code, length, fmt, dtype, *shape, 0))\n"
    "def serve(c):\n"
    "  try:\n"
    "    while True:\n"
    "        h = recv_all(c, 36 + MAX_KEY_LENGTH)\n"
    "        if not h: break\n"
    "        cmd, length, fmt, dtype, loc, s0, s1, s2, s3, key = struct.unpack(\n"
    "            f'iiiiiiiii{MAX_KEY_LENGTH}s', h)\n"
    "        key = from_string(key.decode().strip())\n"
    "        if cmd == 1:\n"
    "            data = recv_all(c, length)\n"
    "            if not forget: store[key] = (fmt, dtype, (s0, s1, s2, s3), data)\n"
    "        elif cmd == 2:\n"
    "            if key in store:\n"
    "                fmt, dtype, shape, data = store[key]\n"
    "                reply(c, 200, len(data), fmt, dtype, shape)\n"
    "                c.sendall(data)\n"
    "            else:\n"
    "                reply(c, 400)\n"
    "        elif cmd == 3:\n"
    "            reply(c, 200 if key in store else 400)\n"
    "        elif cmd == 5:\n"
    "            reply(c, 200)\n"
    "  finally:\n"
    "    c.close()\n"
    "srv = socket.socket()\n"
    "srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "srv.bind(('127.0.0.1', 0))\n"
    "srv.listen()\n"
    "print(srv.getsockname()[1], flush=True)\n"
    "while True:\n"
    "    c, _ = srv.accept()\n"
    "    threading.Thread(target=serve, args=(c,), daemon=True).start()\n";

static bool
has_line(void *path)
{
	char *text = proc_read_file(path, NULL);
	bool ok = text && strchr(text, '\n');
	free(text);
	return ok;
}

static char pydir[256];

/* Starts the Python server (mode "forget" or NULL) and points curl at it. */
static void
lmcache_server_start(struct proc *srv, const char *mode)
{
	char py[PATH_MAX], out[PATH_MAX];
	if (proc_run((const char *const[]){"/bin/sh", "-c", "command -v python3", NULL}, NULL,
		     DEADLINE) != 0)
		cr_skip_test("python3 is not installed");
	cr_assert_eq(proc_mkdtemp("lmpy", pydir, sizeof(pydir)), 0);
	snprintf(py, sizeof(py), "%s/lmcache_server.py", pydir);
	snprintf(out, sizeof(out), "%s/server.out", pydir);
	cr_assert_eq(proc_write_file(py, lmcache_server_py, strlen(lmcache_server_py)), 0);
	const char *argv[] = {"/usr/bin/env", "python3", py, mode, NULL};
	struct proc_opts po = {.stdout_path = out, .stderr_path = out};
	cr_assert_eq(proc_spawn(srv, argv, &po), 0);
	cr_assert(proc_wait_for(has_line, out, DEADLINE), "the Python server printed no port");
	char *text = proc_read_file(out, NULL);
	snprintf(curl, sizeof(curl), "lm://127.0.0.1:%d", atoi(text));
	free(text);
}

static void
lmcache_server_stop(struct proc *srv)
{
	proc_stop(srv, SIGTERM, DEADLINE);
	proc_rm_tree(pydir);
}

static struct kvn_connector *
lmcache_conn(void)
{
	struct kvn_connector_env *e = &cenv;
	e->url = e->url_redacted = curl;
	struct kvn_connector *c = NULL;
	cr_assert_eq(kvn_lm_connector_ops.connect(e, &c), 0);
	return c;
}

Test(lm_interop, kvnode_s_lm_connector_works_against_lmcache_s_server_protocol, .timeout = 300)
{
	struct proc srv;
	lmcache_server_start(&srv, NULL);
	struct kvn_connector_env e = cenv;
	e.url = e.url_redacted = curl;
	e.timeout_ms = 2000; /* LIST is never answered: this is how long it waits */
	const struct kvn_connector_ops *ops = &kvn_lm_connector_ops;
	struct kvn_connector *c = NULL;
	cr_assert_eq(ops->connect(&e, &c), 0);
	cr_assert_eq(ops->ping(c), 0);
	struct kvn_key k;
	kvn_key_from_str(&k, "meta-llama/Llama-3.1-8B@1@0@77aa@bfloat16");
	cr_assert_eq(ops->exists(c, &k), 0);
	struct kvn_remote_value v = bytes_value(MIB + 3, 9), got;
	v.meta.fmt = 1;
	v.meta.dtype = 3;
	v.meta.shape[0] = 2, v.meta.shape[1] = 32, v.meta.shape[2] = 16, v.meta.shape[3] = 9;
	cr_assert_eq(ops->put(c, &k, &v), 0);
	cr_assert_eq(ops->exists(c, &k), 1);
	cr_assert_eq(ops->get(c, &k, &got), 0);
	cr_assert_eq(got.payload->len, v.payload->len);
	cr_assert(!memcmp(got.payload->data, v.payload->data, v.payload->len));
	cr_assert_eq(got.meta.dtype, 3);
	cr_assert_eq(got.meta.shape[2], 16);
	cr_assert_eq(got.meta.shape[3], 9);
	kvn_remote_value_release(&got);
	kvn_buf_unref(v.payload);
	struct kvn_key miss;
	kvn_key_from_str(&miss, "meta-llama/Llama-3.1-8B@1@0@dead@bfloat16");
	cr_assert_eq(ops->get(c, &miss, &got), -ENOENT);
	cr_assert_null(got.payload);
	struct seen_ctx sc = {.want = &k};
	cr_assert_eq(ops->list(c, count_key, &sc), -ETIMEDOUT,
		     "LMCache's server does not answer LIST: the connector times out");
	ops->close(c);
	lmcache_server_stop(&srv);
}

/* PUT has no reply: a value the server dropped (with the connection) or did not keep must be
 * a failed put, never a success, and the values after it must not vanish unnoticed. */
Test(lm_interop, a_put_lmcaches_server_drops_with_the_connection_fails, .timeout = 300)
{
	struct proc srv;
	lmcache_server_start(&srv, NULL);
	const struct kvn_connector_ops *ops = &kvn_lm_connector_ops;
	struct kvn_connector *c = lmcache_conn();
	struct kvn_key bad, good;
	kvn_key_from_str(&bad, "vllm@m@1@0@ab@half"); /* model "m" where LMCache wants an int */
	kvn_key_from_str(&good, "m@1@0@ab@half");
	struct kvn_remote_value v = bytes_value(4096, 3), got;
	int rc = ops->put(c, &bad, &v);
	cr_assert_lt(rc, 0, "the server closed the connection: the put did not happen");
	cr_assert_lt(ops->put(c, &good, &v), 0, "nor does the next one on that connection");
	ops->close(c);
	/* The node reopens the connection: puts work again. */
	c = lmcache_conn();
	cr_assert_eq(ops->put(c, &good, &v), 0);
	cr_assert_eq(ops->get(c, &good, &got), 0);
	kvn_remote_value_release(&got);
	/* A batch with the bad key in the middle fails, not only that key. */
	struct kvn_key k2;
	kvn_key_from_str(&k2, "m@1@0@cd@half");
	const struct kvn_key *keys[] = {&good, &bad, &k2};
	struct kvn_remote_value vals[] = {v, v, v};
	int rcs[3];
	cr_assert_lt(ops->put_batch(c, 3, keys, vals, rcs), 0);
	ops->close(c);
	c = lmcache_conn();
	cr_assert_eq(ops->exists(c, &k2), 0, "the key after the bad one never arrived");
	ops->close(c);
	kvn_buf_unref(v.payload);
	lmcache_server_stop(&srv);
}

Test(lm_interop, a_put_the_server_does_not_hold_afterwards_is_an_error, .timeout = 300)
{
	struct proc srv;
	lmcache_server_start(&srv, "forget");
	const struct kvn_connector_ops *ops = &kvn_lm_connector_ops;
	struct kvn_connector *c = lmcache_conn();
	struct kvn_key k;
	kvn_key_from_str(&k, "m@1@0@ab@half");
	struct kvn_remote_value v = bytes_value(4096, 4);
	cr_assert_eq(ops->put(c, &k, &v), -EREMOTEIO);
	const struct kvn_key *keys[] = {&k, &k};
	struct kvn_remote_value vals[] = {v, v};
	int rcs[2];
	cr_assert_eq(ops->put_batch(c, 2, keys, vals, rcs), 0, "the connection is fine");
	cr_assert_eq(rcs[0], -EREMOTEIO);
	cr_assert_eq(rcs[1], -EREMOTEIO);
	cr_assert_eq(ops->ping(c), 0);
	ops->close(c);
	kvn_buf_unref(v.payload);
	lmcache_server_stop(&srv);
}

static bool
engine_has(void *arg)
{
	struct kvn_engine *eng = arg;
	struct kvn_key k;
	kvn_key_from_str(&k, "m@1@0@feed@half");
	struct kvn_buf *b = NULL;
	if (kvn_engine_get(eng, &k, &b) != 0)
		return false;
	kvn_buf_unref(b);
	return true;
}

static bool
engine_put_valid(void *arg)
{
	struct kvn_engine *eng = arg;
	struct kvn_key k;
	kvn_key_from_str(&k, "m@1@0@feed@half");
	char data[100] = "value";
	kvn_engine_put(eng, &k, data, sizeof(data));
	kvn_engine_flush(eng);
	return engine_has(eng);
}

Test(lm_interop, the_remote_tier_reopens_a_connection_lmcaches_server_dropped, .timeout = 300)
{
	struct proc srv;
	lmcache_server_start(&srv, NULL);
	char yaml[512], err[1024];
	snprintf(yaml, sizeof(yaml),
		 "local_cpu: false\nremote_url: \"%s\"\nextra_config:\n"
		 "  remote.retry_min_ms: 50\n  remote.retry_max_ms: 200\n",
		 curl);
	struct kvn_config *cfg;
	struct kvn_engine *eng;
	cr_assert_eq(kvn_config_parse(yaml, strlen(yaml), "t.yaml", &cfg, err, sizeof(err)), 0,
		     "%s", err);
	cr_assert_eq(kvn_engine_open(cfg, &eng, err, sizeof(err)), 0, "%s", err);
	struct kvn_key bad;
	kvn_key_from_str(&bad, "not-an-lmcache-key");
	char data[100] = "dropped";
	cr_assert_eq(kvn_engine_put(eng, &bad, data, sizeof(data)), 0, "queued");
	kvn_engine_flush(eng);
	/* The dropped connection is reopened and the next put of a valid key arrives. */
	cr_assert(proc_wait_for(engine_put_valid, eng, DEADLINE),
		  "a valid key never reached LMCache's server after the drop");
	char *stats = kvn_engine_stats_json(eng);
	cr_assert(stats && strstr(stats, "\"errors\":"), "%s", stats ? stats : "");
	free(stats);
	kvn_engine_close(eng);
	kvn_config_free(cfg);
	lmcache_server_stop(&srv);
}

/* ------------------------------------------------------------------------------------------
 * `kvnode serve` with lm_listen, driven by LMCache's frames packed in Python
 * ------------------------------------------------------------------------------------------ */

/* An independent client: it knows nothing of kvnode's code, only LMCache's protocol.py
 * layouts ("iiiiiiiii150s" requests, "iiiiiiiii" replies). */
static const char lmcache_client_py[] =
    "import socket, struct, sys\n"
    "MAX_KEY_LENGTH = 150\n"
    "PUT, GET, EXIST, LIST, HEALTH = 1, 2, 3, 4, 5\n"
    "host, port = sys.argv[1], int(sys.argv[2])\n"
    "s = socket.create_connection((host, port))\n"
    "def req(cmd, key, length=0, fmt=1, dtype=2, shape=(0, 0, 0, 0)):\n"
    "    s.sendall(struct.pack(f'iiiiiiiii{MAX_KEY_LENGTH}s', cmd, length, fmt, dtype, 0,\n"
    "                          *shape, key.encode().ljust(MAX_KEY_LENGTH)))\n"
    "def recv_all(n):\n"
    "    b = bytearray()\n"
    "    while len(b) < n:\n"
    "        p = s.recv(n - len(b))\n"
    "        if not p: raise SystemExit('server closed the connection')\n"
    "        b.extend(p)\n"
    "    return bytes(b)\n"
    "def reply():\n"
    "    return struct.unpack('iiiiiiiii', recv_all(36))\n"
    "req(HEALTH, '')\n"
    "assert reply()[0] == 200, 'health'\n"
    "vals = {}\n"
    "for i, n in enumerate((1, 4096, 1 << 20, 5 * (1 << 20) + 3)):\n"
    "    key = f'vllm@meta-llama/Llama-3.1-8B@1@0@{i:x}beef@bfloat16'\n"
    "    data = bytes((j * 7 + i) & 0xff for j in range(min(n, 4096))) * (n // 4096 + 1)\n"
    "    vals[key] = (data[:n], (2, 32, 256, i + 1))\n"
    "    req(PUT, key, n, 1, 3, vals[key][1])\n"
    "    s.sendall(data[:n])\n"
    "for key, (data, shape) in vals.items():\n"
    "    req(EXIST, key)\n"
    "    assert reply()[0] == 200, 'exist ' + key\n"
    "    req(GET, key)\n"
    "    code, length, fmt, dtype, s0, s1, s2, s3, loc = reply()\n"
    "    assert code == 200, f'get {key}: {code}'\n"
    "    assert (length, fmt, dtype, (s0, s1, s2, s3)) == (len(data), 1, 3, shape), 'meta'\n"
    "    assert recv_all(length) == data, 'payload ' + key\n"
    "req(GET, 'nope')\n"
    "code, length = reply()[:2]\n"
    "assert (code, length) == (400, 0), 'miss'\n"
    "req(EXIST, 'nope')\n"
    "assert reply()[0] == 400, 'exist of a miss'\n"
    "req(LIST, '')\n"
    "code, length = reply()[:2]\n"
    "keys = recv_all(length).decode().split('\\n')\n"
    "assert code == 200 and sorted(keys) == sorted(vals), keys\n"
    "print('lmcache-client: ok')\n";

static char ddir[256];
static struct proc dproc;

static bool
lm_line_ready(void *path)
{
	char *text = proc_read_file(path, NULL);
	bool ok = text && strstr(text, "lm:// server on ") && strchr(strstr(text, "lm:// "), '\n');
	free(text);
	return ok;
}

struct stat_ctx {
	const char *sock, *out;
	char *last; /* the last JSON seen, for the failure message */
};

/* cond: `kvnode stat --json` shows the lm server's byte totals of the client above. */
static bool
lm_stats_settled(void *arg)
{
	struct stat_ctx *sc = arg;
	static const char *const env[] = {"KVNODE_CONFIG_FILE", "KVNODE_SOCKET", NULL};
	const char *argv[] = {KVNODE, "stat", "--json", "--node", sc->sock, NULL};
	struct proc_opts po = {.stdout_path = sc->out, .env = env};
	if (proc_run(argv, &po, DEADLINE) != 0)
		return false;
	free(sc->last);
	sc->last = proc_read_file(sc->out, NULL);
	cJSON *j = cJSON_Parse(sc->last ? sc->last : ""), *lm = cJSON_GetObjectItem(j, "lm_server");
	/* GET payloads, then the LIST text: the four keys joined by newlines. */
	double out = 6295556.0 + 4 * strlen("vllm@meta-llama/Llama-3.1-8B@1@0@0beef@bfloat16") + 3;
	bool ok = cJSON_GetNumberValue(cJSON_GetObjectItem(lm, "bytes_in")) == 6295556.0 &&
		  cJSON_GetNumberValue(cJSON_GetObjectItem(lm, "bytes_out")) == out &&
		  cJSON_GetNumberValue(cJSON_GetObjectItem(
		      cJSON_GetObjectItem(lm, "requests_by_command"), "GET")) == 5.0;
	cJSON_Delete(j);
	return ok;
}

Test(lm_daemon, an_lmcache_client_speaking_the_wire_format_uses_kvnode_serve, .timeout = 300)
{
	char cfg[PATH_MAX], out[PATH_MAX], errp[PATH_MAX], py[PATH_MAX], pyout[PATH_MAX],
	    sock[PATH_MAX];
	if (proc_run((const char *const[]){"/bin/sh", "-c", "command -v python3", NULL}, NULL,
		     DEADLINE) != 0)
		cr_skip_test("python3 is not installed");
	cr_assert_eq(access(KVNODE, X_OK), 0, "%s is not built", KVNODE);
	cr_assert_eq(proc_mkdtemp("lmd", ddir, sizeof(ddir)), 0);
	snprintf(cfg, sizeof(cfg), "%s/kvnode.yaml", ddir);
	snprintf(out, sizeof(out), "%s/serve.out", ddir);
	snprintf(errp, sizeof(errp), "%s/serve.err", ddir);
	snprintf(py, sizeof(py), "%s/lmcache_client.py", ddir);
	snprintf(pyout, sizeof(pyout), "%s/client.out", ddir);
	snprintf(sock, sizeof(sock), "%s/kvnode.sock", ddir);
	const char *text = "max_local_cpu_size: 0.25\nhugepages: false\n"
			   "lm_listen: \"127.0.0.1:0\"\n";
	cr_assert_eq(proc_write_file(cfg, text, strlen(text)), 0);
	cr_assert_eq(proc_write_file(py, lmcache_client_py, strlen(lmcache_client_py)), 0);

	static const char *const env[] = {"KVNODE_CONFIG_FILE", "LMCACHE_CONFIG_FILE",
					  "KVNODE_SOCKET", NULL};
	const char *argv[] = {KVNODE, "serve", "-c", cfg, "--socket", sock, NULL};
	struct proc_opts po = {.stdout_path = out, .stderr_path = errp, .env = env};
	cr_assert_eq(proc_spawn(&dproc, argv, &po), 0);
	if (!proc_wait_for(lm_line_ready, out, DEADLINE)) {
		proc_stop(&dproc, SIGKILL, 0);
		cr_assert_fail("kvnode serve printed no lm:// address: %s",
			       proc_read_file(errp, NULL));
	}
	char *o = proc_read_file(out, NULL), host[KVN_HOST_MAX], addr[300], why[256];
	uint16_t port;
	cr_assert(
	    sscanf(strstr(o, "lm:// server on ") + strlen("lm:// server on "), "%299s", addr) == 1);
	free(o);
	cr_assert_eq(kvn_hostport_parse(addr, host, &port, why, sizeof(why)), 0, "%s", why);
	char portstr[8];
	snprintf(portstr, sizeof(portstr), "%u", port);

	const char *pyargv[] = {"/usr/bin/env", "python3", py, host, portstr, NULL};
	struct proc_opts pyo = {.stdout_path = pyout, .stderr_path = pyout};
	int code = proc_run(pyargv, &pyo, DEADLINE);
	char *log = proc_read_file(pyout, NULL);
	cr_expect_eq(code, 0, "the LMCache-protocol client failed (%d): %s\nserver: %s", code,
		     log ? log : "", proc_read_file(errp, NULL));
	cr_expect(log && strstr(log, "lmcache-client: ok"));
	free(log);

	/* The values went into the node's engine: the CLI sees them. */
	const char *ls[] = {KVNODE, "ls", "--node", sock, NULL};
	struct proc_opts lso = {.stdout_path = pyout, .env = env};
	cr_expect_eq(proc_run(ls, &lso, DEADLINE), 0);
	log = proc_read_file(pyout, NULL);
	cr_expect(log && strstr(log, "vllm@meta-llama/Llama-3.1-8B@1@0@3beef@bfloat16"),
		  "kvnode ls: %s", log ? log : "");
	free(log);

	/* kvnode stat counts what the client did: 4 PUTs of 6295556 payload bytes, 5 EXISTs,
	 * 5 GETs (4 hits sent back, one miss), a LIST and a HEALTH. A reply's bytes are counted
	 * once written, which may be just after the client read them: wait for the totals. */
	struct stat_ctx sc = {.sock = sock, .out = pyout};
	cr_expect(proc_wait_for(lm_stats_settled, &sc, DEADLINE),
		  "kvnode stat --json never showed the lm counters: %s", sc.last ? sc.last : "");
	free(sc.last);
	const char *st[] = {KVNODE, "stat", "--node", sock, NULL};
	cr_expect_eq(proc_run(st, &lso, DEADLINE), 0);
	log = proc_read_file(pyout, NULL);
	cr_expect(log && strstr(log, "lm       127.0.0.1:") &&
		      strstr(log, "16 requests (PUT 4, GET 5, EXIST 5, LIST 1, HEALTH 1)") &&
		      strstr(log, "0 errors, 0 protocol errors"),
		  "kvnode stat: %s", log ? log : "");
	free(log);

	int stop = proc_stop(&dproc, SIGTERM, DEADLINE);
	cr_expect_eq(stop, 0, "kvnode serve exited with %d", stop);
	proc_rm_tree(ddir);
}

/* The older generation's client, as LMCache before the location field packs its frames
 * (lmcache/v1/protocol.py at 0e65d2fc0ec3975c78c3ce33a48e81505f315a21: "iiiiiiii150s"
 * requests, "iiiiiiii" replies; CacheEngineKey.to_string fmt@model@world@worker@hash with an
 * int hash, lmcache/utils.py of the same commit). Last, a PUT the node refuses (a MemoryFormat
 * it does not know): its payload goes out whole, then the connection ends with no reply. */
static const char lmcache_v0_client_py[] =
    "import socket, struct, sys\n"
    "MAX_KEY_LENGTH = 150\n"
    "PUT, GET, EXIST, LIST, HEALTH = 1, 2, 3, 4, 5\n"
    "host, port = sys.argv[1], int(sys.argv[2])\n"
    "s = socket.create_connection((host, port))\n"
    "s.settimeout(100)\n"
    "def key(h):\n"
    "    return f'vllm@meta-llama/Llama-3.1-8B@1@0@{h}'\n"
    "def req(cmd, k, length=0, fmt=1, dtype=2, shape=(0, 0, 0, 0)):\n"
    "    s.sendall(struct.pack(f'iiiiiiii{MAX_KEY_LENGTH}s', cmd, length, fmt, dtype,\n"
    "                          *shape, k.encode().ljust(MAX_KEY_LENGTH)))\n"
    "def recv_all(n):\n"
    "    b = bytearray()\n"
    "    while len(b) < n:\n"
    "        p = s.recv(n - len(b))\n"
    "        if not p: raise SystemExit('server closed the connection')\n"
    "        b.extend(p)\n"
    "    return bytes(b)\n"
    "def reply():\n"
    "    return struct.unpack('iiiiiiii', recv_all(32))\n"
    "req(HEALTH, key(0))\n"
    "assert reply() == (200, 0, 1, 2, 0, 0, 0, 0), 'health'\n"
    "vals = {}\n"
    "for i, n in enumerate((1, 4096, 1 << 20, 3 * (1 << 20) + 5)):\n"
    "    k = key(-(i + 1) * 1234567890123457)\n"
    "    data = bytes((j * 5 + i) & 0xff for j in range(min(n, 4096))) * (n // 4096 + 1)\n"
    "    vals[k] = (data[:n], (2, 32, 256, i + 1))\n"
    "    req(PUT, k, n, 1, 3, vals[k][1])\n"
    "    s.sendall(data[:n])\n"
    "for k, (data, shape) in vals.items():\n"
    "    req(EXIST, k)\n"
    "    assert reply() == (200, 0, 1, 2, 0, 0, 0, 0), 'exist ' + k\n"
    "    req(GET, k)\n"
    "    code, length, fmt, dtype, s0, s1, s2, s3 = reply()\n"
    "    assert code == 200, f'get {k}: {code}'\n"
    "    assert (length, fmt, dtype, (s0, s1, s2, s3)) == (len(data), 1, 3, shape), 'meta'\n"
    "    assert recv_all(length) == data, 'payload ' + k\n"
    "req(GET, key(5))\n"
    "assert reply() == (400, 0, 1, 2, 0, 0, 0, 0), 'miss'\n"
    "req(EXIST, key(5))\n"
    "assert reply()[0] == 400, 'exist of a miss'\n"
    "req(LIST, key(0))\n"
    "code, length = reply()[:2]\n"
    "keys = recv_all(length).decode().split('\\n')\n"
    "assert code == 200 and sorted(keys) == sorted(vals), keys\n"
    "req(PUT, key(6), 2 << 20, 99, 3, (2, 1, 1, 1))\n"
    "s.sendall(bytes(2 << 20))\n"
    "assert s.recv(1) == b'', 'a refused PUT is answered by the close alone'\n"
    "print('lmcache-v0-client: ok')\n";

/* cond: `kvnode stat --json` shows the counters of the v0 client's session. */
static bool
lm_v0_stats_settled(void *arg)
{
	struct stat_ctx *sc = arg;
	static const char *const env[] = {"KVNODE_CONFIG_FILE", "KVNODE_SOCKET", NULL};
	const char *argv[] = {KVNODE, "stat", "--json", "--node", sc->sock, NULL};
	struct proc_opts po = {.stdout_path = sc->out, .env = env};
	if (proc_run(argv, &po, DEADLINE) != 0)
		return false;
	free(sc->last);
	sc->last = proc_read_file(sc->out, NULL);
	cJSON *j = cJSON_Parse(sc->last ? sc->last : ""), *lm = cJSON_GetObjectItem(j, "lm_server");
	/* The four values, and the refused PUT's 2 MiB are not among them. */
	bool ok = cJSON_GetNumberValue(cJSON_GetObjectItem(lm, "bytes_in")) == 4198406.0 &&
		  cJSON_GetNumberValue(cJSON_GetObjectItem(lm, "protocol_errors")) == 1.0 &&
		  cJSON_GetNumberValue(cJSON_GetObjectItem(lm, "connections")) == 0.0 &&
		  cJSON_GetNumberValue(cJSON_GetObjectItem(
		      cJSON_GetObjectItem(lm, "connections_by_protocol"), "v0")) == 1.0 &&
		  cJSON_GetNumberValue(cJSON_GetObjectItem(
		      cJSON_GetObjectItem(lm, "connections_by_protocol"), "v1")) == 0.0 &&
		  cJSON_GetNumberValue(cJSON_GetObjectItem(cJSON_GetObjectItem(lm, "dropped_puts"),
							   "bad_metadata")) == 1.0;
	cJSON_Delete(j);
	return ok;
}

Test(lm_daemon, an_lmcache_client_of_the_older_8_int_generation_uses_kvnode_serve, .timeout = 300)
{
	char cfg[PATH_MAX], out[PATH_MAX], errp[PATH_MAX], py[PATH_MAX], pyout[PATH_MAX],
	    sock[PATH_MAX];
	if (proc_run((const char *const[]){"/bin/sh", "-c", "command -v python3", NULL}, NULL,
		     DEADLINE) != 0)
		cr_skip_test("python3 is not installed");
	cr_assert_eq(access(KVNODE, X_OK), 0, "%s is not built", KVNODE);
	cr_assert_eq(proc_mkdtemp("lmd0", ddir, sizeof(ddir)), 0);
	snprintf(cfg, sizeof(cfg), "%s/kvnode.yaml", ddir);
	snprintf(out, sizeof(out), "%s/serve.out", ddir);
	snprintf(errp, sizeof(errp), "%s/serve.err", ddir);
	snprintf(py, sizeof(py), "%s/lmcache_v0_client.py", ddir);
	snprintf(pyout, sizeof(pyout), "%s/client.out", ddir);
	snprintf(sock, sizeof(sock), "%s/kvnode.sock", ddir);
	const char *text = "max_local_cpu_size: 0.25\nhugepages: false\n"
			   "lm_listen: \"127.0.0.1:0\"\n";
	cr_assert_eq(proc_write_file(cfg, text, strlen(text)), 0);
	cr_assert_eq(proc_write_file(py, lmcache_v0_client_py, strlen(lmcache_v0_client_py)), 0);
	static const char *const env[] = {"KVNODE_CONFIG_FILE", "LMCACHE_CONFIG_FILE",
					  "KVNODE_SOCKET", NULL};
	const char *argv[] = {KVNODE, "serve", "-c", cfg, "--socket", sock, NULL};
	struct proc_opts po = {.stdout_path = out, .stderr_path = errp, .env = env};
	cr_assert_eq(proc_spawn(&dproc, argv, &po), 0);
	if (!proc_wait_for(lm_line_ready, out, DEADLINE)) {
		proc_stop(&dproc, SIGKILL, 0);
		cr_assert_fail("kvnode serve printed no lm:// address: %s",
			       proc_read_file(errp, NULL));
	}
	char *o = proc_read_file(out, NULL), host[KVN_HOST_MAX], addr[300], why[256];
	uint16_t port;
	cr_assert(
	    sscanf(strstr(o, "lm:// server on ") + strlen("lm:// server on "), "%299s", addr) == 1);
	free(o);
	cr_assert_eq(kvn_hostport_parse(addr, host, &port, why, sizeof(why)), 0, "%s", why);
	char portstr[8];
	snprintf(portstr, sizeof(portstr), "%u", port);

	const char *pyargv[] = {"/usr/bin/env", "python3", py, host, portstr, NULL};
	struct proc_opts pyo = {.stdout_path = pyout, .stderr_path = pyout};
	int code = proc_run(pyargv, &pyo, DEADLINE);
	char *log = proc_read_file(pyout, NULL);
	cr_expect_eq(code, 0, "the older LMCache-protocol client failed (%d): %s\nserver: %s", code,
		     log ? log : "", proc_read_file(errp, NULL));
	cr_expect(log && strstr(log, "lmcache-v0-client: ok"));
	free(log);

	struct stat_ctx sc = {.sock = sock, .out = pyout};
	cr_expect(proc_wait_for(lm_v0_stats_settled, &sc, DEADLINE),
		  "kvnode stat --json never showed the v0 session's counters: %s",
		  sc.last ? sc.last : "");
	free(sc.last);
	log = proc_read_file(errp, NULL);
	cr_expect(log && strstr(log, "PUT vllm@meta-llama/Llama-3.1-8B@1@0@6") &&
		      strstr(log, "fmt 99") && strstr(log, "read and dropped"),
		  "the refused PUT is logged with its reason: %s", log ? log : "");
	free(log);
	int stop = proc_stop(&dproc, SIGTERM, DEADLINE);
	cr_expect_eq(stop, 0, "kvnode serve exited with %d", stop);
	proc_rm_tree(ddir);
}

struct json_ctx {
	const char *sock, *out;
	cJSON *lm; /* the lm_server object once stat answered (owned by root) */
	cJSON *root;
};

static bool
stat_answers(void *arg)
{
	struct json_ctx *jc = arg;
	static const char *const env[] = {"KVNODE_CONFIG_FILE", "KVNODE_SOCKET", NULL};
	const char *argv[] = {KVNODE, "stat", "--json", "--node", jc->sock, NULL};
	struct proc_opts po = {.stdout_path = jc->out, .env = env};
	if (proc_run(argv, &po, DEADLINE) != 0)
		return false;
	char *text = proc_read_file(jc->out, NULL);
	jc->root = cJSON_Parse(text ? text : "");
	free(text);
	jc->lm = cJSON_GetObjectItem(jc->root, "lm_server");
	return jc->lm != NULL;
}

/* lm_max_connections, lm_idle_timeout_ms, lm_request_timeout_ms and max_chunk_size reach the
 * lm server of `kvnode serve`: stat shows them, and an idle client is closed. */
Test(lm_daemon, the_lm_limits_come_from_the_config_keys, .timeout = 300)
{
	char cfg[PATH_MAX], out[PATH_MAX], errp[PATH_MAX], sock[PATH_MAX], sout[PATH_MAX];
	cr_assert_eq(access(KVNODE, X_OK), 0, "%s is not built", KVNODE);
	cr_assert_eq(proc_mkdtemp("lmk", ddir, sizeof(ddir)), 0);
	snprintf(cfg, sizeof(cfg), "%s/kvnode.yaml", ddir);
	snprintf(out, sizeof(out), "%s/serve.out", ddir);
	snprintf(errp, sizeof(errp), "%s/serve.err", ddir);
	snprintf(sock, sizeof(sock), "%s/kvnode.sock", ddir);
	snprintf(sout, sizeof(sout), "%s/stat.out", ddir);
	const char *text = "max_local_cpu_size: 0.05\nhugepages: false\nlm_listen: \"127.0.0.1:0\"\n"
			   "lm_max_connections: 7\nlm_idle_timeout_ms: 300\n"
			   "lm_request_timeout_ms: 4000\nmax_chunk_size: 1MiB\n";
	cr_assert_eq(proc_write_file(cfg, text, strlen(text)), 0);
	static const char *const env[] = {"KVNODE_CONFIG_FILE", "LMCACHE_CONFIG_FILE",
					  "KVNODE_SOCKET", NULL};
	const char *argv[] = {KVNODE, "serve", "-c", cfg, "--socket", sock, NULL};
	struct proc_opts po = {.stdout_path = out, .stderr_path = errp, .env = env};
	cr_assert_eq(proc_spawn(&dproc, argv, &po), 0);
	if (!proc_wait_for(lm_line_ready, out, DEADLINE)) {
		proc_stop(&dproc, SIGKILL, 0);
		cr_assert_fail("kvnode serve printed no lm:// address: %s",
			       proc_read_file(errp, NULL));
	}
	char *o = proc_read_file(out, NULL), addr[300], why[256];
	cr_assert(
	    sscanf(strstr(o, "lm:// server on ") + strlen("lm:// server on "), "%299s", addr) == 1);
	free(o);
	cr_assert_eq(kvn_hostport_parse(addr, ihost, &iport, why, sizeof(why)), 0, "%s", why);

	struct json_ctx jc = {.sock = sock, .out = sout};
	cr_assert(proc_wait_for(stat_answers, &jc, DEADLINE), "kvnode stat --json showed no lm_server");
	cr_expect_eq(cJSON_GetNumberValue(cJSON_GetObjectItem(jc.lm, "max_connections")), 7);
	cr_expect_eq(cJSON_GetNumberValue(cJSON_GetObjectItem(jc.lm, "idle_timeout_ms")), 300);
	cr_expect_eq(cJSON_GetNumberValue(cJSON_GetObjectItem(jc.lm, "request_timeout_ms")), 4000);
	cr_expect_eq(cJSON_GetNumberValue(cJSON_GetObjectItem(jc.lm, "max_chunk_size")), 1 << 20);
	cJSON_Delete(jc.root);

	int fd = lm_connect();
	health(fd);
	rcv_timeout(fd, CLOSE_WAIT_S);
	rawsock_assert_closed(fd, "kvnode serve's lm server (lm_idle_timeout_ms 300)");
	close(fd);
	char *log = proc_read_file(errp, NULL);
	cr_expect(log && strstr(log, "idle for 300 ms (lm_idle_timeout_ms)"),
		  "the close is logged with its reason: %s", log ? log : "");
	free(log);
	int stop = proc_stop(&dproc, SIGTERM, DEADLINE);
	cr_expect_eq(stop, 0, "kvnode serve exited with %d", stop);
	proc_rm_tree(ddir);
}
