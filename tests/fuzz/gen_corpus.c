/* Writes the seed corpora of the fuzzers (tests/fuzz/corpus/<harness>/): small valid inputs made
 * by the codecs themselves, so that each harness starts past its magic numbers and length
 * checks. Run by hand when a harness's input layout changes; its output is committed:
 *   build-fuzz/fuzz/gen-corpus tests/fuzz/corpus examples/configs */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "client/proto.h"
#include "node/cluster/ctlframe.h"
#include "node/serve/ctlproto.h"
#include "connectors/lmproto.h"
#include "connectors/remote_value.h"
#include "rdma/tcp/tcp.h"

static const char *out_dir;

struct seed {
	uint8_t p[65536];
	size_t n;
};

static void
add(struct seed *s, const void *p, size_t n)
{
	if (s->n + n > sizeof(s->p)) {
		fprintf(stderr, "gen-corpus: seed too long\n");
		exit(1);
	}
	if (n)
		memcpy(s->p + s->n, p, n);
	s->n += n;
}

static void
add_u8(struct seed *s, uint8_t v)
{
	add(s, &v, 1);
}

static void
add_le(struct seed *s, uint64_t v, int bytes)
{
	for (int i = 0; i < bytes; i++)
		add_u8(s, (uint8_t)(v >> (8 * i)));
}

static void
add_str(struct seed *s, const char *t)
{
	add(s, t, strlen(t));
}

static void
write_seed(const char *harness, const char *name, const struct seed *s)
{
	char path[1024];
	snprintf(path, sizeof(path), "%s/%s", out_dir, harness);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/%s/%s", out_dir, harness, name);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(s->p, 1, s->n, f) != s->n || fclose(f)) {
		fprintf(stderr, "gen-corpus: %s: %s\n", path, strerror(errno));
		exit(1);
	}
}

static struct seed *
seed_new(void)
{
	static struct seed s;
	s.n = 0;
	return &s;
}

/* ------------------------------------------------------------------------------------------ */

static const char *const keys[] = {
    "vllm@model@1@0@abc123@bfloat16",
    "vllm@meta-llama/Llama-3-8B@8@3@-1a2b3c@half@lora%adapter1",
    "fmt@model@1@0@123456",
    "an opaque key with spaces inside",
    "k",
};

static void
gen_key(void)
{
	char name[32];
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		struct seed *s = seed_new();
		add_str(s, keys[i]);
		snprintf(name, sizeof(name), "key-%zu", i);
		write_seed("key", name, s);
	}
}

static void
add_ctl_req(struct seed *s, enum kvn_ctl_op op, const char *key, const char *val)
{
	uint8_t w[KVN_CTL_REQ_SIZE];
	struct kvn_ctl_req r = kvn_ctl_req_make(op, key ? strlen(key) : 0, val ? strlen(val) : 0);
	kvn_ctl_req_encode(&r, w);
	add(s, w, sizeof(w));
	if (key)
		add_str(s, key);
	if (val)
		add_str(s, val);
}

static void
add_ctl_reply(struct seed *s, int status, const char *payload, size_t len)
{
	uint8_t w[KVN_CTL_REPLY_SIZE];
	struct kvn_ctl_reply r = {KVN_CTL_REPLY_MAGIC, status, payload ? len : 0};
	kvn_ctl_reply_encode(&r, w);
	add(s, w, sizeof(w));
	if (payload)
		add(s, payload, len);
}

static void
gen_ctl(void)
{
	static const enum kvn_ctl_op opsv[] = {KVN_CTL_PING, KVN_CTL_PUT, KVN_CTL_GET,
					       KVN_CTL_RM,   KVN_CTL_LS,  KVN_CTL_STAT};
	char name[32];
	/* ctlproto: headers, then a daemon's replies to each client call */
	for (size_t i = 0; i < 6; i++) {
		struct seed *s = seed_new();
		add_u8(s, 0);
		bool keyed =
		    opsv[i] == KVN_CTL_PUT || opsv[i] == KVN_CTL_GET || opsv[i] == KVN_CTL_RM;
		add_ctl_req(s, opsv[i], keyed ? keys[0] : NULL,
			    opsv[i] == KVN_CTL_PUT ? "v" : NULL);
		s->n = 1 + KVN_CTL_REQ_SIZE;
		add_le(s, 1u << 20, 8);
		snprintf(name, sizeof(name), "req-%s", kvn_ctl_op_name(opsv[i]));
		write_seed("ctlproto", name, s);
	}
	struct seed *s = seed_new();
	add_u8(s, 1);
	add_ctl_reply(s, -ENOENT, NULL, 0);
	add_le(s, 4096, 8);
	write_seed("ctlproto", "reply-enoent", s);
	static const char stat_json[] =
	    "{\"node\":\"n1\",\"backends\":[{\"name\":\"cpu\",\"hits\":1,\"misses\":2,\"bytes\":10,"
	    "\"capacity\":100}],\"server\":{\"connections\":1,\"requests\":3}}";
	struct {
		uint8_t mode;
		int status;
		const char *payload;
		const char *name;
	} cl[] = {
	    {2, 0, "kvnode " KVN_VERSION_STRING, "client-ping"},
	    {3, 0, NULL, "client-put"},
	    {3, -ENOSPC, "PUT: no space", "client-put-error"},
	    {4, 0, "a value", "client-get-stream"},
	    {5, 0, "a value", "client-get"},
	    {6, -ENOENT, NULL, "client-rm"},
	    {7, 0, "k1\t10\nk2\t20\n", "client-ls"},
	    {8, 0, stat_json, "client-stat"},
	};
	for (size_t i = 0; i < sizeof(cl) / sizeof(cl[0]); i++) {
		s = seed_new();
		add_u8(s, cl[i].mode);
		add_ctl_reply(s, cl[i].status, cl[i].payload,
			      cl[i].payload ? strlen(cl[i].payload) : 0);
		write_seed("ctlproto", cl[i].name, s);
	}

	/* ctlserver: request streams */
	for (size_t i = 0; i < 6; i++) {
		s = seed_new();
		bool keyed =
		    opsv[i] == KVN_CTL_PUT || opsv[i] == KVN_CTL_GET || opsv[i] == KVN_CTL_RM;
		add_ctl_req(s, opsv[i], keyed ? keys[i % 5] : NULL,
			    opsv[i] == KVN_CTL_PUT ? "some value bytes" : NULL);
		snprintf(name, sizeof(name), "%s", kvn_ctl_op_name(opsv[i]));
		write_seed("ctlserver", name, s);
	}
	s = seed_new();
	add_ctl_req(s, KVN_CTL_PUT, keys[1], "0123456789");
	add_ctl_req(s, KVN_CTL_GET, keys[1], NULL);
	add_ctl_req(s, KVN_CTL_LS, NULL, NULL);
	add_ctl_req(s, KVN_CTL_RM, keys[1], NULL);
	add_ctl_req(s, KVN_CTL_GET, keys[1], NULL);
	write_seed("ctlserver", "pipeline", s);
}

/* ------------------------------------------------------------------------------------------ */

static void
add_frame(struct seed *s, enum kvn_cf_type type, uint32_t seq, const void *body, size_t len)
{
	uint8_t h[KVN_CF_HDR_SIZE];
	kvn_cf_hdr_encode(
	    &(struct kvn_cf_hdr){
		.version = KVN_CF_VERSION, .type = (uint8_t)type, .seq = seq, .len = (uint32_t)len},
	    h);
	add(s, h, sizeof(h));
	add(s, body, len);
}

static void
publish_body(struct kvn_cf_buf *b, unsigned n)
{
	kvn_cf_buf_reset(b);
	kvn_cf_put_u32(b, n);
	kvn_cf_put_u32(b, 0);
	for (unsigned i = 0; i < n; i++) {
		struct kvn_cf_pub r = {.op = i % 3 == 2 ? KVN_CF_EVICT : KVN_CF_ADMIT,
				       .digest = {.lo = 1000 + i / 3, .hi = 7},
				       .loc = {.rkey = 0x1234,
					       .addr = 0x10000 + 4096 * i,
					       .len = 4096,
					       .generation = 2 * (i + 1)}};
		kvn_cf_put_pub(b, &r);
	}
}

static void
lookup_body(struct kvn_cf_buf *b, unsigned n, unsigned max)
{
	kvn_cf_buf_reset(b);
	kvn_cf_put_u32(b, n);
	kvn_cf_put_u32(b, max);
	for (unsigned i = 0; i < n; i++) {
		kvn_cf_put_u64(b, 1000 + i);
		kvn_cf_put_u64(b, 7);
	}
}

static const char join_json[] = "{\"name\":\"node-a\",\"data_addr\":\"127.0.0.1:7000\","
				"\"transport\":\"tcp\",\"capacity\":1073741824,"
				"\"want_evicts\":true}";

static void
gen_ctlframe(void)
{
	char name[48];
	static const enum kvn_cf_type types[] = {
	    KVN_CF_JOIN,	 KVN_CF_HEARTBEAT,   KVN_CF_PUBLISH, KVN_CF_LOOKUP,
	    KVN_CF_STATS,	 KVN_CF_LEAVE,	     KVN_CF_JOIN_OK, KVN_CF_HEARTBEAT_ACK,
	    KVN_CF_LOOKUP_REPLY, KVN_CF_STATS_REPLY, KVN_CF_ERROR,   KVN_CF_MEMBER,
	    KVN_CF_EVICTED};
	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		struct seed *s = seed_new();
		add_u8(s, 0);
		add_frame(s, types[i], 9, NULL, 0);
		s->p[1 + 12] = 8; /* a body length under every cap but the empty ones' */
		if (types[i] == KVN_CF_HEARTBEAT || types[i] == KVN_CF_LEAVE)
			s->p[1 + 12] = 0;
		snprintf(name, sizeof(name), "hdr-%s", kvn_cf_type_name(types[i]));
		write_seed("ctlframe", name, s);
	}
	struct kvn_cf_buf b = {0};
	struct seed *s = seed_new();
	add_u8(s, 1);
	kvn_cf_put_json_frame(&b, KVN_CF_JOIN, 1, join_json, "regions", 7);
	add(s, b.p + KVN_CF_HDR_SIZE, b.len - KVN_CF_HDR_SIZE);
	write_seed("ctlframe", "join-body", s);

	s = seed_new();
	add_u8(s, 2);
	publish_body(&b, 6);
	add(s, b.p, b.len);
	write_seed("ctlframe", "publish-body", s);

	s = seed_new();
	add_u8(s, 3);
	lookup_body(&b, 4, 8);
	add(s, b.p, b.len);
	write_seed("ctlframe", "lookup-body", s);

	s = seed_new();
	add_u8(s, 4);
	add_u8(s, 2); /* count */
	add_u8(s, 2); /* max_locs */
	kvn_cf_buf_reset(&b);
	kvn_cf_put_u32(&b, 2);
	kvn_cf_put_u32(&b, 0);
	kvn_cf_put_u32(&b, 1);
	kvn_cf_put_loc(&b, &(struct kvn_loc){3, 0x77, 0x1000, 4096, 8});
	kvn_cf_put_u32(&b, 0);
	add(s, b.p, b.len);
	write_seed("ctlframe", "lookup-reply-body", s);

	s = seed_new();
	add_u8(s, 5);
	kvn_cf_buf_reset(&b);
	kvn_cf_put_u32(&b, 3);
	kvn_cf_put_u32(&b, 2);
	for (int i = 0; i < 4; i++)
		kvn_cf_put_u64(&b, 42 + i);
	add(s, b.p, b.len);
	write_seed("ctlframe", "evicted-body", s);

	s = seed_new();
	add_u8(s, 6);
	add_u8(s, 64);
	add_str(s, "{\"error\":\"JOIN refused: wrong or missing auth_token\"}");
	write_seed("ctlframe", "error-body", s);

	s = seed_new();
	add_u8(s, 7);
	add_frame(s, KVN_CF_HEARTBEAT_ACK, 3, "\1\0\0\0\0\0\0\0\2\0\0\0\0\0\0\0", 16);
	publish_body(&b, 1);
	add_frame(s, KVN_CF_PUBLISH, 0, b.p, b.len);
	add_frame(s, KVN_CF_LEAVE, 0, NULL, 0);
	write_seed("ctlframe", "rx-stream", s);

	s = seed_new();
	add_u8(s, 8);
	add_u8(s, KVN_CF_STATS);
	add_le(s, 5, 4);
	add_u8(s, 1);
	add_str(s, "{\"auth_token\":\"x\"}");
	write_seed("ctlframe", "build-stats", s);

	/* directory programs: admits, evicts, drops, a burst */
	static const uint8_t prog1[] = {9, 16, 0, 0, 8, 0, 1,	64, 0,	 65, 3,
					0, 35, 1, 4, 0, 0, 128, 3,  128, 24, 5};
	s = seed_new();
	add(s, prog1, sizeof(prog1));
	write_seed("ctlframe", "dir-program", s);
	static const uint8_t prog2[] = {9,   0, 5,   1,	 13, 2, 0, 200, 8, 201, 16,
					202, 3, 200, 12, 0,  4, 0, 6,	9, 11,	200};
	s = seed_new();
	add(s, prog2, sizeof(prog2));
	write_seed("ctlframe", "dir-burst", s);
	kvn_cf_buf_free(&b);
}

static void
gen_scheduler(void)
{
	struct kvn_cf_buf b = {0};
	struct seed *s = seed_new();
	add_u8(s, 1); /* after the harness's JOIN */
	add_frame(s, KVN_CF_HEARTBEAT, 2, NULL, 0);
	write_seed("scheduler", "heartbeat", s);

	s = seed_new();
	add_u8(s, 1);
	publish_body(&b, 6);
	add_frame(s, KVN_CF_PUBLISH, 0, b.p, b.len);
	lookup_body(&b, 3, 4);
	add_frame(s, KVN_CF_LOOKUP, 3, b.p, b.len);
	write_seed("scheduler", "publish-lookup", s);

	s = seed_new();
	add_u8(s, 1);
	add_frame(s, KVN_CF_LEAVE, 4, NULL, 0);
	write_seed("scheduler", "leave", s);

	s = seed_new();
	add_u8(s, 0);
	add_frame(s, KVN_CF_STATS, 5, NULL, 0);
	write_seed("scheduler", "stats", s);

	s = seed_new();
	add_u8(s, 0);
	kvn_cf_buf_reset(&b);
	kvn_cf_put_json_frame(&b, KVN_CF_JOIN, 1, join_json, "regions", 7);
	add(s, b.p, b.len);
	add_frame(s, KVN_CF_HEARTBEAT, 2, NULL, 0);
	publish_body(&b, 3);
	add_frame(s, KVN_CF_PUBLISH, 0, b.p, b.len);
	write_seed("scheduler", "join-publish", s);
	kvn_cf_buf_free(&b);
}

/* ------------------------------------------------------------------------------------------ */

static void
add_lm_req(struct seed *s, int32_t cmd, const char *key, const char *val)
{
	uint8_t w[KVN_LM_REQ_SIZE];
	int32_t len = val ? (int32_t)strlen(val) : 0;
	struct kvn_lm_meta m = {.fmt = 4, .dtype = 6, .shape = {len, 1, 1, 1}};
	kvn_lm_req_encode(w, cmd, key, key ? strlen(key) : 0, len, val ? &m : NULL);
	add(s, w, sizeof(w));
	if (val)
		add_str(s, val);
}

static void
add_lm_reply(struct seed *s, int32_t code, const char *payload)
{
	uint8_t w[KVN_LM_REPLY_SIZE];
	int32_t len = payload ? (int32_t)strlen(payload) : 0;
	struct kvn_lm_meta m = {.fmt = 4, .dtype = 6, .shape = {len, 1, 1, 1}};
	kvn_lm_reply_encode(w, code, len, payload ? &m : NULL);
	add(s, w, sizeof(w));
	if (payload)
		add_str(s, payload);
}

static void
gen_lm(void)
{
	struct seed *s = seed_new();
	add_u8(s, 0);
	add_lm_req(s, KVN_LM_PUT, keys[0], "abc");
	s->n = 1 + KVN_LM_REQ_SIZE;
	write_seed("lmproto", "req-put", s);
	s = seed_new();
	add_u8(s, 1);
	add_lm_reply(s, KVN_LM_OK, NULL);
	write_seed("lmproto", "reply-ok", s);
	static const struct {
		uint8_t mode;
		int32_t code;
		const char *payload;
		const char *name;
	} cl[] = {
	    {2, KVN_LM_OK, NULL, "exists"},	{3, KVN_LM_OK, "a value", "get"},
	    {3, KVN_LM_FAIL, NULL, "get-miss"}, {4, KVN_LM_OK, "k1\nk2\nk3", "list"},
	    {5, KVN_LM_OK, NULL, "health"},	{6, KVN_LM_OK, "first", "batch"},
	};
	for (size_t i = 0; i < sizeof(cl) / sizeof(cl[0]); i++) {
		s = seed_new();
		add_u8(s, cl[i].mode);
		add_lm_reply(s, cl[i].code, cl[i].payload);
		if (cl[i].mode == 6)
			add_lm_reply(s, KVN_LM_FAIL, NULL);
		write_seed("lmproto", cl[i].name, s);
	}

	s = seed_new();
	add_lm_req(s, KVN_LM_HEALTH, "", NULL);
	write_seed("lmserver", "health", s);
	s = seed_new();
	add_lm_req(s, KVN_LM_PUT, keys[0], "0123456789");
	add_lm_req(s, KVN_LM_EXIST, keys[0], NULL);
	add_lm_req(s, KVN_LM_GET, keys[0], NULL);
	write_seed("lmserver", "put-exist-get", s);
	s = seed_new();
	add_lm_req(s, KVN_LM_PUT, keys[1], "xyz");
	add_lm_req(s, KVN_LM_LIST, "", NULL);
	write_seed("lmserver", "put-list", s);
	s = seed_new();
	add_lm_req(s, KVN_LM_GET, keys[2], NULL);
	write_seed("lmserver", "get-miss", s);
}

static void
gen_remote_value(void)
{
	struct kvn_remote_meta m;
	uint8_t h[KVN_REMOTE_META_LEN];
	kvn_remote_meta_for_bytes(5, &m);
	kvn_remote_meta_encode(&m, h);
	struct seed *s = seed_new();
	add_u8(s, 0);
	add(s, h, sizeof(h));
	write_seed("remote_value", "header", s);

	/* value: header | tag length | tag | cut points | payload */
	struct kvn_buf *b = kvn_buf_new(5);
	memcpy(b->data, "hello", 5);
	struct kvn_remote_value v;
	kvn_remote_value_from_buf(&v, b);
	s = seed_new();
	add_u8(s, 1);
	add(s, h, sizeof(h));
	add_u8(s, (uint8_t)v.tag_len);
	add(s, v.tag, v.tag_len);
	add_u8(s, 2);
	add_u8(s, 1);
	add_str(s, "hello");
	write_seed("remote_value", "value-tagged", s);
	kvn_buf_unref(b);

	/* fs file: key length | key | tag length | tag | xattr key | file bytes */
	s = seed_new();
	add_u8(s, 2);
	add_u8(s, (uint8_t)strlen(keys[1]));
	add_str(s, keys[1]);
	add_u8(s, 0);
	add_u8(s, 0);
	add(s, h, sizeof(h));
	add_str(s, "hello");
	write_seed("remote_value", "fs-file", s);

	s = seed_new();
	add_u8(s, 3);
	add_str(s, "vllm@model@1@0@abc%2F1@half");
	write_seed("remote_value", "fs-name", s);
}

static void
gen_tcp(void)
{
	uint8_t m[TCP_PROOF_SIZE];
	struct seed *s = seed_new();
	add_u8(s, 0);
	kvn_tcp_hdr_encode(0, TCP_F_TOKEN, m);
	add(s, m, TCP_HDR_SIZE);
	for (int i = 0; i < KVN_AUTH_NONCE; i++)
		add_u8(s, (uint8_t)i);
	kvn_tcp_hdr_encode(0, TCP_F_TOKEN, m);
	memset(m + TCP_HDR_SIZE, 0x42, KVN_AUTH_MAC);
	add(s, m, TCP_PROOF_SIZE);
	write_seed("tcp_responder", "raw-hello-bad-proof", s);

	s = seed_new();
	add_u8(s, 3);
	add(s, m, TCP_PROOF_SIZE);
	write_seed("tcp_responder", "bad-proof", s);

	/* request selectors (16 bytes each): sel, length choice, length, offset, raw word */
	static const uint8_t sels[][4] = {
	    {0x00, 4, 0x00, 0x10}, /* region A from its start, 4 KiB */
	    {0x01, 1, 0, 0},	   /* region B to its end */
	    {0x04, 4, 0xff, 0x0f}, /* past A's end */
	    {0x02, 4, 0x10, 0},	   /* the dropped registration */
	    {0x08, 5, 0x20, 0},	   /* inside A */
	    {0x00, 2, 0, 0},	   /* over TCP_MAX_MSG */
	    {0x80, 4, 1, 0},	   /* a bad op */
	    {0x00, 0, 0, 0},	   /* zero length */
	};
	s = seed_new();
	add_u8(s, 1);
	for (size_t i = 0; i < sizeof(sels) / sizeof(sels[0]); i++) {
		add(s, sels[i], 4);
		add_le(s, i == 2 ? (uint32_t)-16 : i == 4 ? 100 : 0, 4);
		add_le(s, 0x52, 8);
	}
	write_seed("tcp_responder", "requests", s);

	s = seed_new();
	add_u8(s, 2);
	uint8_t r[TCP_REQ_SIZE];
	kvn_tcp_req_encode(&(struct tcp_req){TCP_REQ_READ, 0x1234, 1, 0x1000, 4096}, r);
	add(s, r, sizeof(r));
	kvn_tcp_req_encode(&(struct tcp_req){7, 0, 2, 0, 0}, r);
	add(s, r, sizeof(r));
	write_seed("tcp_responder", "raw-requests", s);
}

/* Config seeds: every example file as YAML, and an environment. */
static void
gen_config(const char *examples)
{
	DIR *d = opendir(examples);
	struct dirent *e;
	while (d && (e = readdir(d))) {
		size_t n = strlen(e->d_name);
		if (n < 6 || strcmp(e->d_name + n - 5, ".yaml"))
			continue;
		char path[1024];
		snprintf(path, sizeof(path), "%s/%s", examples, e->d_name);
		FILE *f = fopen(path, "rb");
		if (!f)
			continue;
		struct seed *s = seed_new();
		add_u8(s, 0);
		s->n += fread(s->p + 1, 1, sizeof(s->p) - 1, f);
		fclose(f);
		write_seed("config", e->d_name, s);
	}
	if (d)
		closedir(d);
	struct seed *s = seed_new();
	add_u8(s, 1);
	/* key bytes index node/engine/config.c's table: 2 max_local_cpu_size, 8 extra_config,
	 * 10 node_name, 23 hugepages; 0x80 | key: LMCACHE_<KEY>. */
	add_u8(s, 2);
	add_str(s, "0.25\n");
	add_u8(s, 8);
	add_str(s, "{\"remote.fsync\":\"true\"}\n");
	add_u8(s, 10);
	add_str(s, "node-from-env\n");
	add_u8(s, 0x80 | 23);
	add_str(s, "false");
	write_seed("config", "environment", s);
}

/* Client protocol seeds (fuzz_clientsrv): an even first byte, then the frames the harness sends
 * after its own HELLO; and one raw HELLO (odd first byte). Reservation and lease ids count from
 * 1 per connection, so the COMMIT and RELEASE below name the ones just handed out. */
static void
add_cp(struct seed *s, enum kvn_cp_op op, uint16_t flags, uint32_t count, uint64_t id,
       const struct kvn_cp_buf *body)
{
	uint8_t w[KVN_CP_HDR_SIZE];
	kvn_cp_hdr_encode(&(struct kvn_cp_hdr){KVN_CP_REQ_MAGIC, op, flags, count, 0, id,
					       body ? body->len : 0},
			  w);
	add(s, w, sizeof(w));
	if (body)
		add(s, body->p, body->len);
}

static void
gen_client(void)
{
	static const char *const ck[] = {"model@1@0@00aa@half", "model@1@0@00bb@half",
					  "model@1@0@00cc@bfloat16@5"};
	struct kvn_cp_buf b = {0};
	struct seed *s = seed_new();
	add_u8(s, 0);
	for (int i = 0; i < 3; i++) {
		kvn_cp_put_key(&b, ck[i], strlen(ck[i]));
		kvn_cp_put_u64(&b, 4096u << i);
	}
	add_cp(s, KVN_CP_RESERVE, 0, 3, 2, &b);
	kvn_cp_buf_reset(&b);
	for (uint64_t id = 1; id <= 3; id++) {
		kvn_cp_put_u64(&b, id);
		kvn_cp_put_u64(&b, 0x1234);
	}
	add_cp(s, KVN_CP_COMMIT, 0, 3, 3, &b);
	kvn_cp_buf_reset(&b);
	for (int i = 0; i < 3; i++)
		kvn_cp_put_key(&b, ck[i], strlen(ck[i]));
	add_cp(s, KVN_CP_GET, 0, 3, 4, &b);
	add_cp(s, KVN_CP_CONTAINS, KVN_CP_F_PREFIX, 3, 5, &b);
	add_cp(s, KVN_CP_REMOVE, 0, 3, 6, &b);
	kvn_cp_buf_reset(&b);
	kvn_cp_put_u64(&b, 4);
	add_cp(s, KVN_CP_RELEASE, 0, 1, 7, &b);
	add_cp(s, KVN_CP_PING, 0, 0, 8, NULL);
	write_seed("clientsrv", "reserve-commit-get-contains-remove", s);

	/* A listing in pages: the first two keys, then the ones after the second (1.1). */
	s = seed_new();
	add_u8(s, 0);
	kvn_cp_buf_reset(&b);
	for (int i = 0; i < 3; i++) {
		kvn_cp_put_key(&b, ck[i], strlen(ck[i]));
		kvn_cp_put_u64(&b, 100);
	}
	add_cp(s, KVN_CP_RESERVE, 0, 3, 2, &b);
	kvn_cp_buf_reset(&b);
	for (uint64_t id = 1; id <= 3; id++) {
		kvn_cp_put_u64(&b, id);
		kvn_cp_put_u64(&b, 0);
	}
	add_cp(s, KVN_CP_COMMIT, 0, 3, 3, &b);
	kvn_cp_buf_reset(&b);
	kvn_cp_put_u32(&b, 2);
	kvn_cp_put_u32(&b, 0);
	add_cp(s, KVN_CP_LIST, 0, 0, 4, &b);
	kvn_cp_buf_reset(&b);
	kvn_cp_put_u32(&b, 0);
	kvn_cp_put_u32(&b, 0);
	kvn_cp_put_key(&b, ck[1], strlen(ck[1]));
	add_cp(s, KVN_CP_LIST, 0, 1, 5, &b);
	write_seed("clientsrv", "reserve-commit-list-pages", s);

	s = seed_new();
	add_u8(s, 0);
	kvn_cp_buf_reset(&b);
	kvn_cp_put_key(&b, ck[0], strlen(ck[0]));
	kvn_cp_put_u64(&b, 100);
	add_cp(s, KVN_CP_RESERVE, 0, 1, 2, &b);
	kvn_cp_buf_reset(&b);
	kvn_cp_put_u64(&b, 1);
	kvn_cp_put_u64(&b, 0);
	add_cp(s, KVN_CP_COMMIT, KVN_CP_F_ABORT, 1, 3, &b);
	write_seed("clientsrv", "reserve-abort", s);

	s = seed_new();
	add_u8(s, 1);
	kvn_cp_buf_reset(&b);
	kvn_cp_put_u16(&b, KVN_CP_MAJOR);
	kvn_cp_put_u16(&b, KVN_CP_MINOR);
	kvn_cp_put_u32(&b, 0);
	kvn_cp_put_bytes(&b, "seed", 4);
	add_cp(s, KVN_CP_HELLO, 0, 0, 1, &b);
	add_cp(s, KVN_CP_PING, 0, 0, 2, NULL);
	write_seed("clientsrv", "raw-hello-ping", s);
	kvn_cp_buf_free(&b);
}

int
main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: gen-corpus OUT_DIR EXAMPLE_CONFIG_DIR\n");
		return 2;
	}
	out_dir = argv[1];
	mkdir(out_dir, 0755);
	gen_key();
	gen_ctl();
	gen_ctlframe();
	gen_scheduler();
	gen_lm();
	gen_remote_value();
	gen_tcp();
	gen_client();
	gen_config(argv[2]);
	return 0;
}
