/* Fuzzes the real scheduler (node/scheduler/scheduler*.c): one kvn_scheduler on 127.0.0.1:0, its loop on a
 * thread, started once. Each input goes over a fresh TCP connection; the first byte picks the
 * mode: even, the rest is sent raw; odd, a HELLO and a valid JOIN (as a node "fuzz-node" sends
 * them to a scheduler without a token) go first, so PUBLISH, LOOKUP, HEARTBEAT and LEAVE reach
 * the directory. Properties: everything the scheduler sends is a whole, valid frame of a
 * scheduler-to-node type, CHALLENGE then JOIN_OK come first after them, an ERROR is the last
 * frame, the connection is closed after the input ends, and every 64
 * inputs a STATS request over another connection (and from another thread,
 * kvn_scheduler_stats_json_sync) is answered with a JSON object. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "node/cluster/ctlframe.h"
#include "node/scheduler/scheduler.h"
#include "tests/fuzz/fuzz_common.h"

#define IDLE_MS	    8000
#define REPLY_KEEP  (16u << 20)
#define CHECK_EVERY 64

static struct kvn_scheduler *sched;
static pthread_t runner;
static char addr[128];
static struct kvn_cf_buf join;

static void *
run_main(void *arg)
{
	kvn_scheduler_run(arg);
	return NULL;
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fz_init();
	char err[512];
	struct kvn_scheduler_opts o = {
	    .listen = "127.0.0.1:0", .heartbeat_ms = 500, .max_conns = 64, .unjoined_ms = 5000};
	if (kvn_scheduler_create(&o, &sched, err, sizeof(err)) < 0)
		fz_fail("scheduler: %s", err);
	snprintf(addr, sizeof(addr), "%s", kvn_scheduler_address(sched));
	if (pthread_create(&runner, NULL, run_main, sched))
		fz_fail("cannot start the scheduler thread");
	static const char regions[] = "regions-of-fuzz-node";
	static const uint8_t nonce[16] = "fuzz-node-nonce";
	kvn_cf_begin(&join, KVN_CF_HELLO, 0);
	kvn_cf_put_bytes(&join, nonce, sizeof(nonce));
	kvn_cf_end(&join);
	if (kvn_cf_put_json_frame(
		&join, KVN_CF_JOIN, 1,
		"{\"name\":\"fuzz-node\",\"data_addr\":\"127.0.0.1:9\","
		"\"transport\":\"tcp\",\"capacity\":1048576,\"want_evicts\":true}",
		regions, sizeof(regions) - 1))
		fz_fail("cannot build the JOIN frame");
	return 0;
}

static bool
to_node_type(unsigned t)
{
	return t == KVN_CF_JOIN_OK || t == KVN_CF_HEARTBEAT_ACK || t == KVN_CF_LOOKUP_REPLY ||
	       t == KVN_CF_STATS_REPLY || t == KVN_CF_ERROR || t == KVN_CF_MEMBER ||
	       t == KVN_CF_EVICTED || t == KVN_CF_CHALLENGE;
}

/* whole: the connection ended with a FIN; after a reset the last frame may be cut. */
static void
check_frames(const struct fz_bytes *r, bool whole)
{
	size_t off = 0;
	while (off < r->len) {
		if (!whole && r->len - off < KVN_CF_HDR_SIZE)
			break;
		FZ_ASSERT(r->len - off >= KVN_CF_HDR_SIZE, "a truncated frame header (%zu bytes)",
			  r->len - off);
		struct kvn_cf_hdr h;
		char why[256];
		FZ_ASSERT(kvn_cf_hdr_decode(r->p + off, &h, why, sizeof(why)) == 0,
			  "the scheduler sent an invalid frame at offset %zu: %s", off, why);
		FZ_ASSERT(to_node_type(h.type), "the scheduler sent a %s frame",
			  kvn_cf_type_name(h.type));
		off += KVN_CF_HDR_SIZE;
		if (!whole && h.len > r->len - off)
			break;
		FZ_ASSERT(h.len <= r->len - off, "a truncated %s body", kvn_cf_type_name(h.type));
		const uint8_t *body = r->p + off;
		const char *js;
		const uint8_t *blob;
		size_t jl, bl;
		uint32_t wid, cnt;
		if (h.type == KVN_CF_MEMBER)
			FZ_ASSERT(!kvn_cf_split_json_blob(body, h.len, &js, &jl, &blob, &bl, why,
							  sizeof(why)),
				  "a MEMBER frame nodes cannot split: %s", why);
		if (h.type == KVN_CF_EVICTED)
			FZ_ASSERT(!kvn_cf_evicted_check(body, h.len, &wid, &cnt, why, sizeof(why)),
				  "an EVICTED frame nodes refuse: %s", why);
		if (h.type == KVN_CF_ERROR || h.type == KVN_CF_JOIN_OK ||
		    h.type == KVN_CF_STATS_REPLY) {
			cJSON *j = cJSON_ParseWithLength((const char *)body, h.len);
			FZ_ASSERT(cJSON_IsObject(j), "a %s body that is not a JSON object",
				  kvn_cf_type_name(h.type));
			cJSON_Delete(j);
		}
		off += h.len;
		FZ_ASSERT(h.type != KVN_CF_ERROR || off == r->len, "frames after an ERROR");
	}
}

static void
check_alive(void)
{
	int fd = fz_connect_tcp(addr);
	struct kvn_cf_buf req = {0};
	static const uint8_t nonce[16] = "alive-check-nonc";
	kvn_cf_begin(&req, KVN_CF_HELLO, 0);
	kvn_cf_put_bytes(&req, nonce, sizeof(nonce));
	kvn_cf_end(&req);
	kvn_cf_begin(&req, KVN_CF_STATS, 7);
	kvn_cf_end(&req);
	if (req.err || kvn_cf_send_all(fd, req.p, req.len))
		fz_fail("cannot send STATS to the scheduler");
	kvn_cf_buf_free(&req);
	struct kvn_cf_rx rx = {0};
	struct kvn_cf_hdr h;
	const uint8_t *body;
	char err[256];
	if (kvn_cf_rx_wait(&rx, fd, IDLE_MS, &h, &body, err, sizeof(err)) ||
	    h.type != KVN_CF_CHALLENGE)
		fz_fail("the scheduler no longer answers HELLO: %s", err);
	kvn_cf_rx_consume(&rx, &h);
	if (kvn_cf_rx_wait(&rx, fd, IDLE_MS, &h, &body, err, sizeof(err)))
		fz_fail("the scheduler no longer answers STATS: %s", err);
	FZ_ASSERT(h.type == KVN_CF_STATS_REPLY && h.seq == 7, "STATS answered with %s seq %u",
		  kvn_cf_type_name(h.type), h.seq);
	kvn_cf_rx_free(&rx);
	close(fd);
	struct kvn_sched_stats st;
	int rc = kvn_scheduler_stats_sync(sched, IDLE_MS, &st);
	FZ_ASSERT(rc == 0, "the scheduler loop no longer answers kvn_scheduler_stats_sync: %s",
		  kvn_strerror(rc));
	FZ_ASSERT(st.nmembers == st.worker_ids_held, "the stats list %zu members for %llu held ids",
		  st.nmembers, (unsigned long long)st.worker_ids_held);
	kvn_sched_stats_free(&st);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static unsigned long count;
	if (size < 1)
		return 0;
	const uint8_t *send = data + 1;
	size_t n = size - 1;
	uint8_t *buf = NULL;
	if (data[0] & 1) {
		buf = malloc(join.len + n);
		FZ_ASSERT(buf, "out of memory");
		memcpy(buf, join.p, join.len);
		memcpy(buf + join.len, data + 1, n);
		send = buf;
		n += join.len;
	}
	struct fz_bytes r = {0};
	int rc = fz_exchange(fz_connect_tcp(addr), send, n, IDLE_MS, &r, REPLY_KEEP);
	FZ_ASSERT(rc >= 0, "the scheduler neither answered nor closed for %d ms after the input",
		  IDLE_MS);
	if (r.len < REPLY_KEEP)
		check_frames(&r, rc == 0);
	/* Nothing at all may come back: the scheduler handles frames that arrive with the FIN
	 * but closes without sending their replies. */
	size_t ch = KVN_CF_HDR_SIZE + KVN_CF_CHALLENGE_SIZE;
	if ((data[0] & 1) && r.len)
		FZ_ASSERT(r.p[5] == KVN_CF_CHALLENGE, "a HELLO was answered with %s",
			  kvn_cf_type_name(r.p[5]));
	if ((data[0] & 1) && r.len > ch)
		FZ_ASSERT(r.len >= ch + KVN_CF_HDR_SIZE && r.p[ch + 5] == KVN_CF_JOIN_OK,
			  "a valid JOIN was answered with %s first", kvn_cf_type_name(r.p[ch + 5]));
	fz_bytes_free(&r);
	free(buf);
	if (++count % CHECK_EVERY == 0)
		check_alive();
	return 0;
}
