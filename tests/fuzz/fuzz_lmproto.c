/* Fuzzes LMCache's cache-server codec (connectors/lmproto.c) and the lm:// connector's side of it
 * (connectors/lm.c) against a fake server. The first input byte picks the mode:
 *   0  a request: decode (the key's padding stripped), re-encode, decode again;
 *   1  a reply: decode, re-encode;
 *   2+ what a broken or hostile lm server answers to one connector call (exists, get, list,
 *      ping, a batched get, by the mode), read by the real connector code.
 * Properties: a decoded key holds no padding and re-encodes to the same request; replies
 * round-trip; no reply makes the connector crash, hang, return a value whose header does not
 * describe its payload, or hand out a payload on failure. */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "connectors/registry.h"
#include "kvnode/connector.h"
#include "connectors/lmproto.h"
#include "core/log.h"
#include "core/netaddr.h"
#include "connectors/remote_value.h"
#include "tests/fuzz/fuzz_common.h"

static int lfd = -1;
static char url[128];

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fz_init();
	char err[256];
	uint16_t port;
	lfd = kvn_tcp_listen("127.0.0.1", 0, 16, &port, err, sizeof(err));
	if (lfd < 0)
		fz_fail("fake lm server: %s", err);
	snprintf(url, sizeof(url), "lm://127.0.0.1:%u", port);
	return 0;
}

static void
fuzz_request(const uint8_t *p, size_t n)
{
	uint8_t w[KVN_LM_REQ_SIZE] = {0}, back[KVN_LM_REQ_SIZE];
	memcpy(w, p, n < sizeof(w) ? n : sizeof(w));
	struct kvn_lm_req r, r2;
	kvn_lm_req_decode(w, &r);
	FZ_ASSERT(r.key_len <= KVN_LM_KEY_MAX && r.key[r.key_len] == '\0',
		  "key of %zu bytes, not terminated", r.key_len);
	FZ_ASSERT(!r.key_len || (r.key[r.key_len - 1] != ' ' && r.key[r.key_len - 1] != '\0'),
		  "a decoded key ends in padding");
	FZ_ASSERT(!memcmp(r.key, w + 36, r.key_len), "decoded key is not the request's");
	FZ_ASSERT(kvn_lm_req_encode(back, r.command, r.key, r.key_len, r.length, &r.meta) == 0,
		  "a decoded request cannot be encoded");
	kvn_lm_req_decode(back, &r2);
	FZ_ASSERT(r2.command == r.command && r2.length == r.length &&
		      !memcmp(&r2.meta, &r.meta, sizeof(r.meta)) && r2.key_len == r.key_len &&
		      !memcmp(r2.key, r.key, r.key_len) && r2.location == 0,
		  "request does not round-trip");
	FZ_ASSERT(!memcmp(back, w, 16) && !memcmp(back + 20, w + 20, 16 + r.key_len),
		  "re-encoded request differs outside location and padding");
	(void)kvn_lm_cmd_name(r.command);
}

static void
fuzz_reply(const uint8_t *p, size_t n)
{
	uint8_t w[KVN_LM_REPLY_SIZE] = {0}, back[KVN_LM_REPLY_SIZE];
	memcpy(w, p, n < sizeof(w) ? n : sizeof(w));
	struct kvn_lm_reply r;
	kvn_lm_reply_decode(w, &r);
	kvn_lm_reply_encode(back, r.code, r.length, &r.meta);
	FZ_ASSERT(!memcmp(back, w, 32), "reply does not round-trip");
}

/* ------------------------------------------------------------------------------------------
 * The connector against a fake server: a thread accepts one connection, reads whatever the
 * connector sends, answers the input's bytes and closes.
 * ------------------------------------------------------------------------------------------ */

struct fake {
	const uint8_t *p;
	size_t n;
};

static void *
fake_main(void *arg)
{
	struct fake *f = arg;
	int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		return NULL;
	size_t off = 0;
	while (off < f->n) {
		ssize_t w = send(fd, f->p + off, f->n - off, MSG_NOSIGNAL);
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	shutdown(fd, SHUT_WR);
	/* Drain until the connector closes, so it never sees a reset before our bytes. */
	char sink[4096];
	while (recv(fd, sink, sizeof(sink), 0) > 0)
		;
	close(fd);
	return NULL;
}


static int
count_keys(void *ctx, const char *key, size_t len)
{
	FZ_ASSERT(len && !memchr(key, '\n', len), "listed a key of %zu bytes holding a newline",
		  len);
	++*(size_t *)ctx;
	return 0;
}

static void
check_value(int rc, struct kvn_remote_value *v)
{
	if (rc == 0) {
		FZ_ASSERT(v->payload && (size_t)v->meta.length == v->payload->len,
			  "a value whose header announces %d bytes for %zu", v->meta.length,
			  v->payload ? v->payload->len : 0);
		char why[128];
		(void)kvn_remote_value_check(v, why, sizeof(why));
	} else {
		FZ_ASSERT(!v->payload, "a failed get left a payload");
	}
	kvn_remote_value_release(v);
}

static void
fuzz_connector(unsigned op, const uint8_t *p, size_t n)
{
	struct kvn_connector_env env;
	kvn_connector_env_plain(&env, url, NULL, 5000);
	const struct kvn_connector_ops *ops = &kvn_lm_connector_ops;
	struct fake f = {p, n};
	pthread_t t;
	if (pthread_create(&t, NULL, fake_main, &f))
		fz_fail("cannot start the fake server");
	struct kvn_connector *c;
	int rc = ops->connect(&env, &c);
	if (rc == 0) {
		struct kvn_key k[2];
		kvn_key_from_str(&k[0], "vllm@model@1@0@abc123@bfloat16");
		kvn_key_from_str(&k[1], "vllm@model@1@0@def456@bfloat16");
		struct kvn_remote_value v[2] = {0};
		size_t nkeys = 0;
		switch (op % 5) {
		case 0:
			rc = ops->exists(c, &k[0]);
			FZ_ASSERT(rc == 0 || rc == 1 || rc < 0, "exists returned %d", rc);
			break;
		case 1:
			check_value(ops->get(c, &k[0], &v[0]), &v[0]);
			break;
		case 2:
			rc = ops->list(c, count_keys, &nkeys);
			break;
		case 3:
			rc = ops->ping(c);
			break;
		default: {
			const struct kvn_key *keys[2] = {&k[0], &k[1]};
			int rcs[2];
			rc = kvn_connector_get_batch(ops, c, 2, keys, v, rcs);
			for (int i = 0; i < 2; i++)
				check_value(rc == 0 ? rcs[i] : -EIO, &v[i]);
			break;
		}
		}
		ops->close(c);
	}
	pthread_join(t, NULL);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	if (data[0] == 0)
		fuzz_request(data + 1, size - 1);
	else if (data[0] == 1)
		fuzz_reply(data + 1, size - 1);
	else
		fuzz_connector(data[0] - 2u, data + 1, size - 1);
	return 0;
}
