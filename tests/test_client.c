/* The client library (kvnode/client.h) against real `kvnode serve` nodes: views and one-copy
 * puts through the mapped pool, batches, contains-prefix with one scheduler lookup, peer hits
 * as views, leases under eviction pressure and after a SIGKILL, the write protection of
 * committed slots, gather puts, listings across pages, ping, a node older than LIST, 100
 * clients at once, the asynchronous form, and older callers. No per-test .timeout (the
 * runner's --timeout 300 holds): Criterion 2.4 leaks a timer when timed tests run in parallel,
 * which the ASan run reports as a leak; every wait here has its own deadline. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client/proto.h"
#include "core/fdio.h"
#include "kvnode/client.h"
#include "tests/helpers/cluster_env.h"
#include "tests/helpers/pattern.h"

static char dir[256];
static struct sched sched;
static struct cnode a, b;

static void
start_sized(const char *extra, const char *cpu_gb)
{
	cr_assert_eq(proc_mkdtemp("kvn-client", dir, sizeof(dir)), 0);
	sched_start(&sched, "127.0.0.1:0", NULL);
	cnode_start(&a, "a",
		    &(struct cnode_opts){
			.dir = dir, .sched = sched.addr, .extra = extra, .cpu_gb = cpu_gb});
}

static void
start_one(const char *extra)
{
	start_sized(extra, NULL);
}

static void
start_two(void)
{
	start_one(NULL);
	cnode_start(&b, "b", &(struct cnode_opts){.dir = dir, .sched = sched.addr});
}

static void
stop_all(void)
{
	if (b.p.pid)
		cnode_stop(&b);
	if (a.p.pid)
		cnode_stop(&a);
	sched_stop(&sched);
	if (dir[0] && !getenv("KVN_TEST_KEEP"))
		proc_rm_tree(dir);
	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	dir[0] = '\0';
}

static struct kvn_client *
open_client(const struct cnode *n)
{
	struct kvn_client *c = NULL;
	char err[512] = "";
	struct kvn_client_opts o = {KVN_CLIENT_OPTS_INIT, .socket_path = n->sock, .name = "test",
				    .timeout_ms = 60000};
	cr_assert_eq(kvn_client_open(&o, &c, err, sizeof(err)), 0, "%s", err);
	return c;
}

static void
key_text(char *out, size_t len, const char *tag, unsigned i)
{
	snprintf(out, len, "model@1@0@%08x%s@bfloat16", i, tag);
}

/* A field of the node's "clients" stats, -1 when absent. */
static long long
client_stat(const struct cnode *n, const char *field)
{
	char *json = NULL, err[256];
	struct kvn_cli_conn *c;
	long long v = -1;
	if (kvn_cli_connect(n->sock, 10000, &c, err, sizeof(err)) < 0)
		return -1;
	int rc = kvn_cli_stat(c, &json);
	kvn_cli_close(c);
	if (rc < 0)
		return -1;
	cJSON *root = cJSON_Parse(json), *o = cJSON_GetObjectItem(root, "clients");
	cJSON *f = strchr(field, '.') ? cJSON_GetObjectItem(cJSON_GetObjectItem(o, "requests"),
							    strchr(field, '.') + 1)
				      : cJSON_GetObjectItem(o, field);
	if (cJSON_IsNumber(f))
		v = (long long)f->valuedouble;
	cJSON_Delete(root);
	free(json);
	return v;
}

/* ------------------------------------------------------------------------------------------
 * One node
 * ------------------------------------------------------------------------------------------ */

Test(client, put_then_get_as_a_view_and_into_a_buffer_byte_for_byte, .fini = stop_all)
{
	start_one(NULL);
	struct kvn_client *c = open_client(&a);
	static const size_t sizes[] = {1, 4097, 256 << 10, 3u << 20};
	for (unsigned i = 0; i < 4; i++) {
		char k[96];
		key_text(k, sizeof(k), "one", i);
		uint8_t *v = malloc(sizes[i]), *got = malloc(sizes[i]);
		pattern_fill(v, sizes[i], i + 1);
		cr_assert_eq(kvn_client_put(c, k, v, sizes[i]), 0, "%s", kvn_client_error(c));
		struct kvn_view view;
		cr_assert_eq(kvn_client_get(c, k, &view), 0, "%s", kvn_client_error(c));
		cr_assert_eq(view.len, sizes[i]);
		cr_assert(view.lease != 0);
		cr_assert_arr_eq(view.data, v, sizes[i], "the view of %s differs", k);
		kvn_client_release(c, &view, 1);
		cr_assert_null(view.data);
		size_t len = 0;
		cr_assert_eq(kvn_client_get_into(c, k, got, sizes[i], &len), 0, "%s",
			     kvn_client_error(c));
		cr_assert_eq(len, sizes[i]);
		cr_assert_arr_eq(got, v, sizes[i]);
		if (sizes[i] > 1)
			cr_assert_eq(kvn_client_get_into(c, k, got, sizes[i] - 1, &len), -ENOSPC);
		cr_assert_eq(len, sizes[i], "a short buffer still says the value's length");
		free(v);
		free(got);
	}
	char k[96];
	key_text(k, sizeof(k), "one", 0);
	cr_assert_eq(kvn_client_remove(c, k), 0);
	struct kvn_view view;
	cr_assert_eq(kvn_client_get(c, k, &view), -ENOENT);
	cr_assert(strstr(kvn_client_error(c), k), "the error names the key: %s",
		  kvn_client_error(c));
	cr_assert_eq(kvn_client_remove(c, k), -ENOENT);
	cr_assert_eq(kvn_client_get(c, "bad\x01key", &view), -EINVAL);
	kvn_client_close(c);
	cr_assert_eq(client_stat(&a, "leases"), 0, "every lease was given back");
}

Test(client, a_put_over_max_chunk_size_is_refused_before_anything_is_sent, .fini = stop_all)
{
	start_one("max_chunk_size: 65536\n");
	struct kvn_client *c = open_client(&a);
	cr_assert_eq(kvn_client_max_value(c), 65536);
	static uint8_t v[65537];
	cr_assert_eq(kvn_client_put(c, "model@1@0@00aa@half", v, sizeof(v)), -EMSGSIZE);
	cr_assert(strstr(kvn_client_error(c), "max_chunk_size"), "%s", kvn_client_error(c));
	struct iovec two[2] = {{v, 28}, {v + 28, sizeof(v) - 28}};
	cr_assert_eq(kvn_client_putv(c, "model@1@0@00aa@half", two, 2), -EMSGSIZE,
		     "the pieces together are over it");
	cr_assert_eq(kvn_client_put(c, "model@1@0@00aa@half", v, 65536), 0, "%s",
		     kvn_client_error(c));
	kvn_client_close(c);
}

Test(client, batches_are_one_request_each_and_say_per_key_what_happened, .fini = stop_all)
{
	start_one(NULL);
	struct kvn_client *c = open_client(&a);
	enum { N = 32, LEN = 100000 };
	char text[N][96];
	const char *keys[N];
	const void *data[N];
	size_t lens[N], caps[N], got_len[N];
	void *dst[N];
	uint8_t *vals = malloc((size_t)N * LEN), *out = malloc((size_t)N * LEN);
	for (unsigned i = 0; i < N; i++) {
		key_text(text[i], sizeof(text[i]), "batch", i);
		keys[i] = text[i];
		pattern_fill(vals + (size_t)i * LEN, LEN, 100 + i);
		data[i] = vals + (size_t)i * LEN;
		lens[i] = caps[i] = LEN;
		dst[i] = out + (size_t)i * LEN;
	}
	long long puts0 = client_stat(&a, "requests.RESERVE");
	int rcs[N];
	cr_assert_eq(kvn_client_batch_put(c, keys, N, data, lens, rcs), 0, "%s",
		     kvn_client_error(c));
	cr_assert_eq(client_stat(&a, "requests.RESERVE"), puts0 + 1, "32 puts, one RESERVE");
	cr_assert_eq(kvn_client_batch_get_into(c, keys, N, dst, caps, got_len, rcs), 0, "%s",
		     kvn_client_error(c));
	for (unsigned i = 0; i < N; i++) {
		cr_assert_eq(got_len[i], LEN);
		cr_assert_arr_eq(out + (size_t)i * LEN, vals + (size_t)i * LEN, LEN, "key %u", i);
	}
	struct kvn_view views[N];
	cr_assert_eq(kvn_client_batch_get(c, keys, N, views, rcs), 0);
	for (unsigned i = 0; i < N; i++)
		cr_assert_arr_eq(views[i].data, vals + (size_t)i * LEN, LEN);
	cr_assert_eq(client_stat(&a, "leases"), N);
	kvn_client_release(c, views, N);
	/* Half removed: the batch says which. */
	cr_assert_eq(kvn_client_batch_remove(c, keys, N / 2, rcs), 0);
	cr_assert_eq(kvn_client_batch_get(c, keys, N, views, rcs), -ENOENT);
	for (unsigned i = 0; i < N; i++)
		cr_assert_eq(rcs[i], i < N / 2 ? -ENOENT : 0, "key %u: %d", i, rcs[i]);
	kvn_client_release(c, views, N);
	size_t found = 99;
	cr_assert_eq(kvn_client_contains_prefix(c, keys + N / 2, N / 2, &found), 0);
	cr_assert_eq(found, N / 2);
	cr_assert_eq(kvn_client_contains_prefix(c, keys, N, &found), 0);
	cr_assert_eq(found, 0, "the first key is gone: the prefix is empty");
	kvn_client_close(c);
	free(vals);
	free(out);
}

/* ------------------------------------------------------------------------------------------
 * Two nodes
 * ------------------------------------------------------------------------------------------ */

static long long sched_stat(const char *field);

Test(client, a_peer_hit_is_a_view_and_a_prefix_batch_is_one_scheduler_lookup, .fini = stop_all)
{
	start_two();
	struct kvn_client *ca = open_client(&a), *cb = open_client(&b);
	enum { N = 32, HELD = 20, LEN = 300000 };
	char text[N][96];
	const char *keys[N];
	uint8_t *v = malloc(LEN);
	for (unsigned i = 0; i < N; i++) {
		key_text(text[i], sizeof(text[i]), "peer", i);
		keys[i] = text[i];
	}
	/* The first 20 keys exist, alternately on a and on b; the rest nowhere. */
	for (unsigned i = 0; i < HELD; i++) {
		pattern_fill(v, LEN, 500 + i);
		cr_assert_eq(kvn_client_put(i % 2 ? cb : ca, keys[i], v, LEN), 0);
	}
	/* b learns of a's chunks through the scheduler: wait until it sees them all. */
	size_t found = 0;
	for (int t = 0; t < DEADLINE / 50 && found != HELD; t++) {
		cr_assert_eq(kvn_client_contains_prefix(cb, keys, N, &found), 0, "%s",
			     kvn_client_error(cb));
		if (found != HELD)
			sched_sleep_ms(50);
	}
	cr_assert_eq(found, HELD, "b sees the prefix of 20 keys held by a and b");
	long long l0 = client_stat(&b, "cluster_lookups"),
		  r0 = client_stat(&b, "requests.CONTAINS"), s0 = sched_stat("lookups");
	cr_assert_eq(kvn_client_contains_prefix(cb, keys, N, &found), 0);
	cr_assert_eq(found, HELD);
	cr_assert_eq(client_stat(&b, "requests.CONTAINS") - r0, 1, "one node round trip");
	cr_assert_eq(client_stat(&b, "cluster_lookups") - l0, 1, "one scheduler lookup");
	cr_assert_eq(sched_stat("lookups") - s0, 1, "the scheduler counts one lookup too");
	/* A key a holds, read through b's client: b READs it into its pool, the client sees it
	 * there. */
	struct kvn_view view;
	cr_assert_eq(kvn_client_get(cb, keys[0], &view), 0, "%s", kvn_client_error(cb));
	pattern_fill(v, LEN, 500);
	cr_assert_eq(view.len, LEN);
	cr_assert_arr_eq(view.data, v, LEN, "the peer hit's bytes");
	kvn_client_release(cb, &view, 1);
	kvn_client_close(ca);
	kvn_client_close(cb);
	free(v);
}

/* A top-level number of the scheduler's STATS reply, -1 when it cannot be had. */
static long long
sched_stat(const char *field)
{
	char *json = NULL, *tok = sched_host_token();
	long long v = -1;
	if (kvn_membership_fetch_stats(sched.addr, tok, 10000, &json, sched_err,
				       sizeof(sched_err)) == 0) {
		cJSON *root = cJSON_Parse(json), *f = cJSON_GetObjectItem(root, field);
		if (cJSON_IsNumber(f))
			v = (long long)f->valuedouble;
		cJSON_Delete(root);
	}
	free(json);
	free(tok);
	return v;
}

Test(client, a_batch_of_peer_misses_is_one_scheduler_lookup_and_every_byte_checks, .fini = stop_all)
{
	start_two();
	struct kvn_client *ca = open_client(&a), *cb = open_client(&b);
	/* 32 chunks of a prompt on a; 4 keys held nowhere, spread through the batch. */
	enum { HELD = 32, N = HELD + 4, LEN = 100000 };
	char text[N][96];
	const char *keys[N];
	bool missing[N];
	unsigned seed[N];
	uint8_t *v = malloc(LEN), *out = malloc((size_t)N * LEN);
	for (unsigned i = 0, h = 0; i < N; i++) {
		missing[i] = i % 9 == 4; /* 4, 13, 22, 31 */
		seed[i] = missing[i] ? 0 : 700 + h++;
		key_text(text[i], sizeof(text[i]), missing[i] ? "nowhere" : "prompt", i);
		keys[i] = text[i];
		if (missing[i])
			continue;
		pattern_fill(v, LEN, seed[i]);
		cr_assert_eq(kvn_client_put(ca, keys[i], v, LEN), 0, "%s", kvn_client_error(ca));
	}
	/* The directory hears of a's chunks asynchronously: wait until it has all of them. */
	const char *held[HELD];
	for (unsigned i = 0, h = 0; i < N; i++)
		if (!missing[i])
			held[h++] = keys[i];
	size_t found = 0;
	for (int t = 0; t < DEADLINE / 50 && found != HELD; t++) {
		cr_assert_eq(kvn_client_contains_prefix(cb, held, HELD, &found), 0, "%s",
			     kvn_client_error(cb));
		if (found != HELD)
			sched_sleep_ms(50);
	}
	cr_assert_eq(found, HELD, "the directory has a's 32 chunks");

	long long l0 = sched_stat("lookups"), k0 = sched_stat("keys_looked_up"),
		  c0 = client_stat(&b, "cluster_lookups"), g0 = client_stat(&b, "requests.GET"),
		  h0 = cnode_tier_stat(&b, "peer", "hits");
	cr_assert(l0 >= 0 && k0 >= 0 && c0 >= 0 && h0 >= 0, "stats: %s", sched_err);
	struct kvn_view views[N];
	int rcs[N];
	cr_assert_eq(kvn_client_batch_get(cb, keys, N, views, rcs), -ENOENT, "%s",
		     kvn_client_error(cb));
	for (unsigned i = 0; i < N; i++) {
		if (missing[i]) {
			cr_assert_eq(rcs[i], -ENOENT, "key %u: %d", i, rcs[i]);
			cr_assert_null(views[i].data);
			continue;
		}
		cr_assert_eq(rcs[i], 0, "key %u: %d", i, rcs[i]);
		cr_assert_eq(views[i].len, LEN);
		pattern_fill(v, LEN, seed[i]);
		cr_assert_arr_eq(views[i].data, v, LEN, "the bytes of key %u", i);
	}
	kvn_client_release(cb, views, N);
	cr_assert_eq(client_stat(&b, "requests.GET") - g0, 1, "one node round trip");
	cr_assert_eq(sched_stat("lookups") - l0, 1, "one scheduler lookup for the batch");
	cr_assert_eq(sched_stat("keys_looked_up") - k0, N, "asking for all 36 keys");
	cr_assert_eq(client_stat(&b, "cluster_lookups") - c0, 1);
	cr_assert_eq(cnode_tier_stat(&b, "peer", "hits") - h0, HELD, "32 peer hits");
	cr_assert_eq(cnode_tier_stat(&b, "peer", "errors"), 0);

	/* Promoted into b's cpu tier: again, only the 4 missing keys go to the scheduler (one
	 * lookup, 4 keys) and the peer tier serves nothing. */
	size_t caps[N], lens[N];
	void *dst[N];
	for (unsigned i = 0; i < N; i++) {
		caps[i] = LEN;
		dst[i] = out + (size_t)i * LEN;
	}
	cr_assert_eq(kvn_client_batch_get_into(cb, keys, N, dst, caps, lens, rcs), -ENOENT);
	for (unsigned i = 0; i < N; i++) {
		cr_assert_eq(rcs[i], missing[i] ? -ENOENT : 0, "key %u: %d", i, rcs[i]);
		if (missing[i])
			continue;
		cr_assert_eq(lens[i], LEN);
		pattern_fill(v, LEN, seed[i]);
		cr_assert_arr_eq(out + (size_t)i * LEN, v, LEN, "the bytes of key %u", i);
	}
	cr_assert_eq(sched_stat("lookups") - l0, 2);
	cr_assert_eq(sched_stat("keys_looked_up") - k0, N + 4);
	cr_assert_eq(cnode_tier_stat(&b, "peer", "hits") - h0, HELD, "local hits now");
	/* RELEASE has no reply: the count may lag behind the call */
	cr_assert(WAIT_UNTIL(client_stat(&b, "leases") == 0), "every lease was given back");
	kvn_client_close(ca);
	kvn_client_close(cb);
	free(v);
	free(out);
}

/* ------------------------------------------------------------------------------------------
 * Leases and what a client may not do
 * ------------------------------------------------------------------------------------------ */

Test(client, a_lease_survives_eviction_pressure_and_is_freed_on_release, .fini = stop_all)
{
	start_one(NULL); /* a 20 MB pool */
	struct kvn_client *c = open_client(&a);
	enum { LEN = 1 << 20 };
	uint8_t *v = malloc(LEN), *w = malloc(LEN);
	pattern_fill(v, LEN, 7);
	cr_assert_eq(kvn_client_put(c, "model@1@0@0001@half", v, LEN), 0);
	struct kvn_view held;
	cr_assert_eq(kvn_client_get(c, "model@1@0@0001@half", &held), 0);
	/* Three times the pool in other values: the held one's slot is never reused. */
	for (unsigned i = 0; i < 60; i++) {
		char k[96];
		key_text(k, sizeof(k), "press", i);
		pattern_fill(w, LEN, 1000 + i);
		int rc = kvn_client_put(c, k, w, LEN);
		cr_assert(rc == 0 || rc == -ENOMEM, "%s", kvn_client_error(c));
	}
	cr_assert_arr_eq(held.data, v, LEN, "a leased view changed under eviction pressure");
	cr_assert_eq(client_stat(&a, "leases"), 1);
	kvn_client_release(c, &held, 1);
	for (int t = 0; t < DEADLINE / 20 && client_stat(&a, "leases") != 0; t++)
		sched_sleep_ms(20);
	cr_assert_eq(client_stat(&a, "leases"), 0);
	cr_assert_eq(client_stat(&a, "held_bytes"), 0);
	kvn_client_close(c);
	free(v);
	free(w);
}

Test(client, a_sigkilled_client_loses_its_leases_and_reservations_at_once, .fini = stop_all)
{
	start_one(NULL);
	struct kvn_client *c = open_client(&a);
	static uint8_t v[1 << 16];
	pattern_fill(v, sizeof(v), 3);
	cr_assert_eq(kvn_client_put(c, "model@1@0@00cc@half", v, sizeof(v)), 0);
	kvn_client_close(c);
	int ready[2];
	cr_assert_eq(pipe(ready), 0);
	pid_t pid = fork();
	if (pid == 0) {
		struct kvn_client *k = NULL;
		struct kvn_client_opts o = {KVN_CLIENT_OPTS_INIT, .socket_path = a.sock};
		struct kvn_view views[8];
		const char *keys[8];
		for (int i = 0; i < 8; i++)
			keys[i] = "model@1@0@00cc@half";
		if (kvn_client_open(&o, &k, NULL, 0) ||
		    kvn_client_batch_get(k, keys, 8, views, NULL))
			_exit(1);
		if (write(ready[1], "x", 1) != 1)
			_exit(1);
		pause();
		_exit(0);
	}
	char x;
	cr_assert_eq(read(ready[0], &x, 1), 1, "the child did not get its leases");
	cr_assert_eq(client_stat(&a, "leases"), 8);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	for (int t = 0; t < DEADLINE / 20 && client_stat(&a, "leases") != 0; t++)
		sched_sleep_ms(20);
	cr_assert_eq(client_stat(&a, "leases"), 0, "the killed client's leases are gone");
	cr_assert_eq(client_stat(&a, "held_bytes"), 0);
	cr_assert_eq(client_stat(&a, "connected"), 0);
	close(ready[0]);
	close(ready[1]);
}

Test(client, a_committed_slot_cannot_be_written_and_keeps_its_bytes, .fini = stop_all)
{
	start_one(NULL);
	struct kvn_client *c = open_client(&a);
	static uint8_t v[1 << 16];
	pattern_fill(v, sizeof(v), 9);
	cr_assert_eq(kvn_client_put(c, "model@1@0@00dd@half", v, sizeof(v)), 0);
	struct kvn_view view;
	cr_assert_eq(kvn_client_get(c, "model@1@0@00dd@half", &view), 0);
	fflush(NULL);
	pid_t pid = fork();
	if (pid == 0) {
		/* The kernel's verdict, not a sanitizer's report of it. */
		signal(SIGSEGV, SIG_DFL);
		((volatile uint8_t *)view.data)[100] ^= 0xff; /* faults: the pool is read-only */
		_exit(0);
	}
	int st;
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGSEGV,
		  "a write into a committed slot was not refused (status 0x%x)", st);
	kvn_client_release(c, &view, 1);
	uint8_t got[sizeof(v)];
	size_t len;
	cr_assert_eq(kvn_client_get_into(c, "model@1@0@00dd@half", got, sizeof(got), &len), 0);
	cr_assert_arr_eq(got, v, sizeof(v), "the bytes stay");
	kvn_client_close(c);
}

/* A raw connection that speaks the protocol by hand: HELLO (keeping the pool fd away), then
 * a frame of ours. */
static int
raw_hello(const char *sock, uint16_t major, uint16_t minor, struct kvn_cp_hdr *reply)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	cr_assert_lt(strlen(sock), sizeof(sa.sun_path));
	memcpy(sa.sun_path, sock, strlen(sock) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	struct timeval tv = {.tv_sec = 30};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	uint8_t buf[KVN_CP_HDR_SIZE + 12];
	kvn_cp_hdr_encode(
	    &(struct kvn_cp_hdr){.magic = KVN_CP_REQ_MAGIC, .op = KVN_CP_HELLO, .body_len = 12},
	    buf);
	uint8_t *b = buf + KVN_CP_HDR_SIZE;
	b[0] = (uint8_t)major, b[1] = (uint8_t)(major >> 8), b[2] = (uint8_t)minor,
	b[3] = (uint8_t)(minor >> 8);
	memset(b + 4, 0, 4);
	memcpy(b + 8, "raw!", 4);
	cr_assert_eq(write(fd, buf, sizeof(buf)), (ssize_t)sizeof(buf));
	uint8_t rep[KVN_CP_HDR_SIZE + 256];
	char ctl[CMSG_SPACE(sizeof(int))];
	struct iovec iov = {rep, KVN_CP_HDR_SIZE};
	struct msghdr mh = {
	    .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof(ctl)};
	cr_assert_eq(recvmsg(fd, &mh, MSG_WAITALL | MSG_CMSG_CLOEXEC), KVN_CP_HDR_SIZE);
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
		int pfd;
		memcpy(&pfd, CMSG_DATA(cm), sizeof(pfd));
		close(pfd);
	}
	kvn_cp_hdr_decode(rep, reply);
	cr_assert_leq(reply->body_len, 256);
	cr_assert_eq(recv(fd, rep + KVN_CP_HDR_SIZE, (size_t)reply->body_len, MSG_WAITALL),
		     (ssize_t)reply->body_len);
	return fd;
}

Test(client, a_commit_of_a_slot_the_client_did_not_reserve_is_refused, .fini = stop_all)
{
	start_one(NULL);
	struct kvn_cp_hdr h;
	int fd = raw_hello(a.sock, KVN_CP_MAJOR, 0, &h);
	cr_assert_eq(h.status, 0);
	/* Reservation ids are the connection's own: 1 is one this client never got. */
	uint8_t buf[KVN_CP_HDR_SIZE + 16];
	kvn_cp_hdr_encode(&(struct kvn_cp_hdr){.magic = KVN_CP_REQ_MAGIC,
					       .op = KVN_CP_COMMIT,
					       .count = 1,
					       .id = 7,
					       .body_len = 16},
			  buf);
	memset(buf + KVN_CP_HDR_SIZE, 0, 16);
	buf[KVN_CP_HDR_SIZE] = 1;
	cr_assert_eq(write(fd, buf, sizeof(buf)), (ssize_t)sizeof(buf));
	uint8_t rep[KVN_CP_HDR_SIZE + 4];
	cr_assert_eq(recv(fd, rep, sizeof(rep), MSG_WAITALL), (ssize_t)sizeof(rep));
	kvn_cp_hdr_decode(rep, &h);
	cr_assert_eq(h.id, 7);
	int32_t rc;
	memcpy(&rc, rep + KVN_CP_HDR_SIZE, 4);
	cr_assert_eq(rc, -ENOENT, "a forged commit got %d", rc);
	close(fd);
}

/* The node takes what a client sent with one read: frames that came together are each
 * answered, in order, and a frame cut off where a read ended is completed, not dropped. */
Test(client, frames_sent_together_or_split_anywhere_are_each_answered_in_order, .fini = stop_all)
{
	start_one(NULL);
	struct kvn_cp_hdr h;
	int fd = raw_hello(a.sock, KVN_CP_MAJOR, 0, &h);
	cr_assert_eq(h.status, 0);
	enum { N = 5 };
	uint8_t buf[N * KVN_CP_HDR_SIZE];
	for (unsigned i = 0; i < N; i++)
		kvn_cp_hdr_encode(&(struct kvn_cp_hdr){.magic = KVN_CP_REQ_MAGIC,
						       .op = KVN_CP_PING,
						       .id = 100 + i},
				  buf + i * KVN_CP_HDR_SIZE);
	/* Two whole frames and half a header; then the rest of that header alone; then the
	 * rest. The pauses make the node likely to read each piece on its own. */
	size_t cuts[] = {2 * KVN_CP_HDR_SIZE + KVN_CP_HDR_SIZE / 2, 3 * KVN_CP_HDR_SIZE,
			 sizeof(buf)};
	for (size_t k = 0, at = 0; k < 3; at = cuts[k++]) {
		cr_assert_eq(write(fd, buf + at, cuts[k] - at), (ssize_t)(cuts[k] - at));
		usleep(100000);
	}
	for (unsigned i = 0; i < N; i++) {
		uint8_t rep[KVN_CP_HDR_SIZE];
		cr_assert_eq(recv(fd, rep, sizeof(rep), MSG_WAITALL), (ssize_t)sizeof(rep),
			     "reply %u of %d", i, N);
		kvn_cp_hdr_decode(rep, &h);
		cr_assert_eq(h.id, 100 + i, "reply %u answers request %llu", i,
			     (unsigned long long)h.id);
		cr_assert_eq(h.status, 0);
	}
	/* Half a header and the connection closed: the node drops it and serves on. */
	cr_assert_eq(write(fd, buf, KVN_CP_HDR_SIZE / 2), (ssize_t)(KVN_CP_HDR_SIZE / 2));
	close(fd);
	struct kvn_client *c = open_client(&a);
	cr_assert_eq(kvn_client_ping(c), 0, "%s", kvn_client_error(c));
	kvn_client_close(c);
}

Test(client, an_older_caller_is_served_and_another_major_protocol_is_refused, .fini = stop_all)
{
	start_one(NULL);
	struct kvn_cp_hdr h;
	int fd = raw_hello(a.sock, KVN_CP_MAJOR, 0, &h);
	cr_assert_eq(h.status, 0, "protocol %u.0 is served", KVN_CP_MAJOR);
	close(fd);
	fd = raw_hello(a.sock, KVN_CP_MAJOR + 1, 0, &h);
	cr_assert_eq(h.status, -EPROTO);
	close(fd);
	/* A caller built before timeout_ms existed passes the shorter options. */
	struct kvn_client_opts o = {KVN_CLIENT_OPTS_INIT, .socket_path = a.sock};
	o.size = (uint32_t)offsetof(struct kvn_client_opts, timeout_ms);
	o.timeout_ms = -12345; /* past its size: never read */
	struct kvn_client *c = NULL;
	char err[512];
	cr_assert_eq(kvn_client_open(&o, &c, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kvn_client_put(c, "model@1@0@00ee@half", "x", 1), 0);
	kvn_client_close(c);
}

static void
count_done(struct kvn_client_req *req)
{
	++*(int *)req->ctx;
}

/* ------------------------------------------------------------------------------------------
 * Gather puts, listing, ping
 * ------------------------------------------------------------------------------------------ */

/* A value of many pieces: sizes that cross the 64 KiB copy blocks and zero-length pieces
 * first, last and in between. The pieces point into joined, which is their concatenation. */
enum { PIECES = 1200 };

static size_t
make_pieces(struct iovec *iov, uint8_t *joined, size_t cap, unsigned seed)
{
	size_t off = 0;
	for (unsigned i = 0; i < PIECES; i++) {
		size_t n = i % 97 == 0 || i == 2 || i == PIECES - 1 ? 0 : (i * 37u + seed) % 700;
		if (i == 500)
			n = 200000; /* one piece over several copy blocks */
		cr_assert_leq(off + n, cap);
		/* Piece 2 has neither base nor length: it contributes nothing either. */
		iov[i] = (struct iovec){i == 2 ? NULL : joined + off, n};
		off += n;
	}
	pattern_fill(joined, off, seed);
	return off;
}

Test(client, a_gather_put_stores_its_pieces_back_to_back_and_peers_verify_it, .fini = stop_all)
{
	start_two();
	struct kvn_client *ca = open_client(&a), *cb = open_client(&b);
	static struct iovec iov[PIECES];
	size_t cap = PIECES * 700 + 200000;
	uint8_t *joined = malloc(cap);
	size_t len = make_pieces(iov, joined, cap, 3);
	cr_assert_gt(len, 600000);
	const char *key = "model@1@0@00f1@bfloat16";
	long long r0 = client_stat(&a, "requests.RESERVE");
	cr_assert_eq(kvn_client_putv(ca, key, iov, PIECES), 0, "%s", kvn_client_error(ca));
	cr_assert_eq(client_stat(&a, "requests.RESERVE") - r0, 1, "one put of 1200 pieces");
	struct kvn_view view;
	cr_assert_eq(kvn_client_get(ca, key, &view), 0, "%s", kvn_client_error(ca));
	cr_assert_eq(view.len, len);
	cr_assert_arr_eq(view.data, joined, len, "the stored value is the pieces joined");
	kvn_client_release(ca, &view, 1);
	/* b READs the slot from a and verifies it against the checksum the put computed while it
	 * copied: a wrong checksum would be no hit. */
	int held = 0;
	for (int t = 0; t < DEADLINE / 50 && held != 1; t++)
		if ((held = kvn_client_contains(cb, key)) != 1)
			sched_sleep_ms(50);
	cr_assert_eq(held, 1, "b sees a's value");
	cr_assert_eq(kvn_client_get(cb, key, &view), 0, "%s", kvn_client_error(cb));
	cr_assert_eq(view.len, len);
	cr_assert_arr_eq(view.data, joined, len, "the peer hit's bytes");
	kvn_client_release(cb, &view, 1);

	/* A batch of LMCache-like values, header and payload, and an empty one (no pieces). */
	enum { N = 3, HDR = 28, PAY = 70000 };
	uint8_t hdr[N][HDR], *pay = malloc((size_t)N * PAY), *got = malloc(HDR + PAY);
	struct iovec two[N][2];
	const struct iovec *iovs[N + 1];
	int cnt[N + 1], rcs[N + 1];
	char text[N + 1][96];
	const char *keys[N + 1];
	for (unsigned i = 0; i <= N; i++) {
		key_text(text[i], sizeof(text[i]), "gather", i);
		keys[i] = text[i];
		if (i == N) {
			iovs[i] = NULL;
			cnt[i] = 0;
			continue;
		}
		pattern_fill(hdr[i], HDR, 40 + i);
		pattern_fill(pay + (size_t)i * PAY, PAY, 50 + i);
		two[i][0] = (struct iovec){hdr[i], HDR};
		two[i][1] = (struct iovec){pay + (size_t)i * PAY, PAY - i};
		iovs[i] = two[i];
		cnt[i] = 2;
	}
	cr_assert_eq(kvn_client_batch_putv(ca, keys, N + 1, iovs, cnt, rcs), 0, "%s",
		     kvn_client_error(ca));
	for (unsigned i = 0; i <= N; i++) {
		size_t n = 0;
		cr_assert_eq(kvn_client_get_into(ca, keys[i], got, HDR + PAY, &n), 0, "%s",
			     kvn_client_error(ca));
		if (i == N) {
			cr_assert_eq(n, 0, "no pieces store an empty value");
			continue;
		}
		cr_assert_eq(n, HDR + PAY - i);
		cr_assert_arr_eq(got, hdr[i], HDR, "key %u's header", i);
		cr_assert_arr_eq(got + HDR, pay + (size_t)i * PAY, PAY - i, "key %u's payload", i);
	}
	/* Malformed pieces are refused before anything is sent. */
	struct iovec bad[2] = {{hdr[0], HDR}, {NULL, 10}};
	cr_assert_eq(kvn_client_putv(ca, keys[0], bad, 2), -EINVAL);
	cr_assert(strstr(kvn_client_error(ca), "piece 1"), "%s", kvn_client_error(ca));
	cr_assert_eq(kvn_client_putv(ca, keys[0], bad, -1), -EINVAL);
	cr_assert_eq(kvn_client_get_into(ca, keys[0], got, HDR + PAY, NULL), 0, "still stored");
	kvn_client_close(ca);
	kvn_client_close(cb);
	free(joined);
	free(pay);
	free(got);
}

struct listed {
	size_t n, cap, stop_at;
	char (*key)[96];
	uint64_t *len;
};

static int
collect(void *ctx, const char *key, uint64_t len)
{
	struct listed *l = ctx;
	cr_assert_lt(l->n, l->cap, "more keys listed than were put");
	cr_assert_lt(strlen(key), sizeof(l->key[0]));
	strcpy(l->key[l->n], key);
	l->len[l->n++] = len;
	return l->stop_at && l->n == l->stop_at;
}

static int
by_text(const void *a, const void *b)
{
	return strcmp(a, b);
}

Test(client, a_listing_is_exactly_the_keys_held_in_order_across_pages, .fini = stop_all)
{
	start_sized(NULL, "0.1");
	struct kvn_client *c = open_client(&a);
	enum { N = 5000, GONE = 3, STEP = 1000 }; /* more than one page of 4096 */
	static char text[N][96];
	static const char *keys[N];
	static const void *data[N];
	static size_t lens[N];
	static uint8_t bytes[16];
	for (unsigned i = 0; i < N; i++) {
		/* Keys whose order is not the order they were put in. */
		key_text(text[i], sizeof(text[i]), "list", (i * 7919u) % 100003u);
		keys[i] = text[i];
		data[i] = bytes;
		lens[i] = 1 + i % 16;
	}
	for (unsigned i = 0; i < N; i += STEP)
		cr_assert_eq(kvn_client_batch_put(c, keys + i, STEP, data + i, lens + i, NULL), 0,
			     "%s", kvn_client_error(c));
	for (unsigned i = 0; i < GONE; i++)
		cr_assert_eq(kvn_client_remove(c, keys[i * 100]), 0);
	/* What the listing must be: the keys put, less those removed, in byte order. */
	static char want[N][96];
	size_t nw = 0;
	for (unsigned i = 0; i < N; i++)
		if (i % 100 || i / 100 >= GONE)
			strcpy(want[nw++], text[i]);
	qsort(want, nw, sizeof(want[0]), by_text);

	static char got_key[N][96];
	static uint64_t got_len[N];
	struct listed l = {.cap = N, .key = got_key, .len = got_len};
	long long p0 = client_stat(&a, "requests.LIST");
	cr_assert_eq(kvn_client_list(c, NULL, 0, collect, &l), 0, "%s", kvn_client_error(c));
	cr_assert_eq(client_stat(&a, "requests.LIST") - p0, 2, "%zu keys are two pages", nw);
	cr_assert_eq(l.n, nw, "listed %zu keys, %zu held", l.n, nw);
	for (size_t i = 0; i < nw; i++) {
		cr_assert_str_eq(got_key[i], want[i], "key %zu of the listing", i);
		unsigned k = 0;
		while (strcmp(text[k], want[i]))
			k++;
		cr_assert_eq(got_len[i], lens[k], "%s's length", want[i]);
	}

	/* A bounded listing, resumed after its last key. */
	l = (struct listed){.cap = N, .key = got_key, .len = got_len};
	cr_assert_eq(kvn_client_list(c, NULL, 10, collect, &l), 1, "keys follow the first 10");
	cr_assert_eq(l.n, 10);
	char after[96];
	strcpy(after, got_key[9]);
	cr_assert_eq(kvn_client_list(c, after, 4200, collect, &l), 1, "%s", kvn_client_error(c));
	cr_assert_eq(l.n, 4210);
	for (size_t i = 0; i < l.n; i++)
		cr_assert_str_eq(got_key[i], want[i], "key %zu of the resumed listing", i);
	/* The callback stops it; after the last key, nothing follows. */
	l = (struct listed){.cap = N, .key = got_key, .len = got_len, .stop_at = 3};
	cr_assert_eq(kvn_client_list(c, NULL, 0, collect, &l), 1);
	cr_assert_eq(l.n, 3);
	l = (struct listed){.cap = N, .key = got_key, .len = got_len};
	cr_assert_eq(kvn_client_list(c, want[nw - 2], 0, collect, &l), 0);
	cr_assert_eq(l.n, 1);
	cr_assert_str_eq(got_key[0], want[nw - 1]);
	cr_assert_eq(kvn_client_list(c, want[nw - 1], 0, collect, &l), 0);
	cr_assert_eq(l.n, 1, "nothing after the last key");
	cr_assert_eq(kvn_client_list(c, "bad\x01key", 0, collect, &l), -EINVAL);
	cr_assert_eq(kvn_client_ping(c), 0, "the connection is fine after all that");
	kvn_client_close(c);
}

Test(client, ping_is_one_round_trip_behind_requests_in_flight_and_fails_once_the_node_is_gone,
     .fini = stop_all)
{
	start_one(NULL);
	struct kvn_client *c = open_client(&a);
	long long p0 = client_stat(&a, "requests.PING");
	cr_assert_eq(kvn_client_ping(c), 0, "%s", kvn_client_error(c));
	cr_assert_eq(client_stat(&a, "requests.PING") - p0, 1);
	/* A put in flight: the ping's reply comes after the put's, and both complete. */
	const char *key = "model@1@0@00b0@half";
	static uint8_t v[100000];
	pattern_fill(v, sizeof(v), 9);
	const void *data = v;
	size_t len = sizeof(v);
	int done = 0;
	struct kvn_client_req put = {KVN_CLIENT_REQ_INIT, .op = KVN_CLIENT_PUT, .n = 1,
				     .keys = &key,	  .data = &data,	.lens_in = &len,
				     .done = count_done,  .ctx = &done};
	cr_assert_eq(kvn_client_submit(c, &put), 0, "%s", kvn_client_error(c));
	cr_assert_eq(kvn_client_ping(c), 0, "%s", kvn_client_error(c));
	cr_assert_eq(kvn_client_wait(c, &put, 60000), 0);
	cr_assert_eq(done, 1);
	cr_assert_eq(put.status, 0, "%d", put.status);
	cnode_kill(&a);
	int rc = kvn_client_ping(c);
	cr_assert(rc == -ENOTCONN || rc == -ECONNRESET || rc == -EPIPE, "ping of a dead node: %d",
		  rc);
	cr_assert(strstr(kvn_client_error(c), "connection"), "%s", kvn_client_error(c));
	cr_assert_eq(kvn_client_ping(c), -ENOTCONN, "and it stays broken");
	kvn_client_close(c);
}

/* A node of client protocol 1.0, before LIST: it answers HELLO (a small memfd for a pool) and
 * PING, and closes the connection on any other op, as such a node does on one it does not
 * know. */
struct old_node {
	char path[300];
	int lfd;
	int other_ops; /* frames that were not PING */
};

static void *
old_node_main(void *arg)
{
	struct old_node *o = arg;
	int fd = accept(o->lfd, NULL, NULL);
	uint8_t buf[KVN_CP_HDR_SIZE + 256];
	struct kvn_cp_hdr h;
	if (fd < 0 || recv(fd, buf, KVN_CP_HDR_SIZE, MSG_WAITALL) != KVN_CP_HDR_SIZE)
		return NULL;
	kvn_cp_hdr_decode(buf, &h);
	if (h.body_len > 256 || recv(fd, buf, (size_t)h.body_len, MSG_WAITALL) < 0)
		return NULL;
	uint8_t rep[KVN_CP_HDR_SIZE + KVN_CP_HELLO_OK_SIZE];
	kvn_cp_hdr_encode(&(struct kvn_cp_hdr){.magic = KVN_CP_REPLY_MAGIC,
					       .op = KVN_CP_HELLO,
					       .id = h.id,
					       .body_len = KVN_CP_HELLO_OK_SIZE},
			  rep);
	kvn_cp_hello_ok_encode(&(struct kvn_cp_hello_ok){.major = KVN_CP_MAJOR,
							 .minor = 0,
							 .max_batch = KVN_CP_BATCH_MAX,
							 .pool_size = 1 << 20,
							 .max_chunk = 1 << 20,
							 .max_held = 1 << 20},
			       rep + KVN_CP_HDR_SIZE);
	int pool = memfd_create("old-node", MFD_CLOEXEC);
	if (pool < 0 || ftruncate(pool, 1 << 20) < 0)
		return NULL;
	if (kvn_fd_send_with_fd(fd, rep, sizeof(rep), pool) < 0)
		return NULL;
	close(pool);
	while (recv(fd, buf, KVN_CP_HDR_SIZE, MSG_WAITALL) == KVN_CP_HDR_SIZE) {
		kvn_cp_hdr_decode(buf, &h);
		if (h.op != KVN_CP_PING) {
			o->other_ops++;
			break;
		}
		kvn_cp_hdr_encode(&(struct kvn_cp_hdr){.magic = KVN_CP_REPLY_MAGIC,
						       .op = KVN_CP_PING,
						       .id = h.id},
				  buf);
		if (send(fd, buf, KVN_CP_HDR_SIZE, MSG_NOSIGNAL) != KVN_CP_HDR_SIZE)
			break;
	}
	close(fd);
	return NULL;
}

Test(client, a_node_older_than_list_gets_no_list_frame_and_the_call_says_so)
{
	char d[256];
	cr_assert_eq(proc_mkdtemp("kvn-oldnode", d, sizeof(d)), 0);
	struct old_node o = {0};
	snprintf(o.path, sizeof(o.path), "%s/old.sock", d);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	memcpy(sa.sun_path, o.path, strlen(o.path) + 1);
	o.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_eq(bind(o.lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(o.lfd, 1), 0);
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, old_node_main, &o), 0);
	struct kvn_client *c = NULL;
	char err[512];
	struct kvn_client_opts opts = {KVN_CLIENT_OPTS_INIT, .socket_path = o.path,
				       .timeout_ms = 30000};
	cr_assert_eq(kvn_client_open(&opts, &c, err, sizeof(err)), 0, "%s", err);
	struct listed l = {0};
	cr_assert_eq(kvn_client_list(c, NULL, 0, collect, &l), -EOPNOTSUPP);
	const char *msg = kvn_client_error(c);
	cr_assert(strstr(msg, "LIST") && strstr(msg, "1.0") && strstr(msg, "upgrade"), "%s", msg);
	cr_assert_eq(kvn_client_ping(c), 0, "the connection is still up: %s", kvn_client_error(c));
	kvn_client_close(c);
	pthread_join(t, NULL);
	cr_assert_eq(o.other_ops, 0, "the old node was sent an op it does not know");
	close(o.lfd);
	proc_rm_tree(d);
}

/* ------------------------------------------------------------------------------------------
 * Many clients, asynchronous requests
 * ------------------------------------------------------------------------------------------ */

struct worker {
	const char *sock;
	unsigned id;
	int failures;
	char why[512];
};

static void *
worker_main(void *arg)
{
	struct worker *w = arg;
	struct kvn_client *c = NULL;
	struct kvn_client_opts o = {KVN_CLIENT_OPTS_INIT, .socket_path = w->sock,
				    .timeout_ms = 120000};
	if (kvn_client_open(&o, &c, w->why, sizeof(w->why))) {
		w->failures++;
		return NULL;
	}
	enum { K = 8, LEN = 20000 };
	char text[K][96];
	const char *keys[K];
	const void *data[K];
	size_t lens[K];
	uint8_t *vals = malloc((size_t)K * LEN), *got = malloc(LEN);
	for (unsigned round = 0; round < 5 && !w->failures; round++) {
		for (unsigned i = 0; i < K; i++) {
			key_text(text[i], sizeof(text[i]), "many", w->id * 1000 + round * K + i);
			keys[i] = text[i];
			pattern_fill(vals + (size_t)i * LEN, LEN, w->id * 100000 + round * K + i);
			data[i] = vals + (size_t)i * LEN;
			lens[i] = LEN - i;
		}
		struct kvn_view views[K];
		size_t len;
		if (kvn_client_batch_put(c, keys, K, data, lens, NULL) ||
		    kvn_client_batch_get(c, keys, K, views, NULL)) {
			snprintf(w->why, sizeof(w->why), "%s", kvn_client_error(c));
			w->failures++;
			break;
		}
		for (unsigned i = 0; i < K; i++)
			if (views[i].len != LEN - i ||
			    memcmp(views[i].data, vals + (size_t)i * LEN, LEN - i))
				w->failures++,
				    snprintf(w->why, sizeof(w->why), "%s differs", keys[i]);
		kvn_client_release(c, views, K);
		if (kvn_client_get_into(c, keys[round % K], got, LEN, &len) ||
		    memcmp(got, vals + (size_t)(round % K) * LEN, len))
			w->failures++, snprintf(w->why, sizeof(w->why), "get_into %s", keys[0]);
		if (kvn_client_batch_remove(c, keys, K / 2, NULL))
			w->failures++, snprintf(w->why, sizeof(w->why), "%s", kvn_client_error(c));
	}
	free(vals);
	free(got);
	kvn_client_close(c);
	return NULL;
}

Test(client, a_hundred_clients_doing_mixed_batches_see_every_byte_right, .fini = stop_all)
{
	start_sized(NULL, "0.2");
	enum { W = 100 };
	static struct worker w[W];
	pthread_t t[W];
	for (unsigned i = 0; i < W; i++) {
		w[i] = (struct worker){.sock = a.sock, .id = i};
		cr_assert_eq(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
	}
	for (unsigned i = 0; i < W; i++)
		pthread_join(t[i], NULL);
	for (unsigned i = 0; i < W; i++)
		cr_assert_eq(w[i].failures, 0, "client %u: %s", i, w[i].why);
	for (int t2 = 0; t2 < DEADLINE / 20 && client_stat(&a, "connected") != 0; t2++)
		sched_sleep_ms(20);
	cr_assert_eq(client_stat(&a, "leases"), 0);
}

Test(client, asynchronous_requests_complete_through_the_fd_and_callbacks, .fini = stop_all)
{
	start_one(NULL);
	struct kvn_client *c = open_client(&a);
	enum { N = 16, LEN = 50000 };
	char text[N][96];
	const char *keys[N];
	const void *data[N];
	size_t lens[N], caps[N], got_len[N];
	void *dst[N];
	uint8_t *vals = malloc((size_t)N * LEN), *out = malloc((size_t)N * LEN);
	for (unsigned i = 0; i < N; i++) {
		key_text(text[i], sizeof(text[i]), "async", i);
		keys[i] = text[i];
		pattern_fill(vals + (size_t)i * LEN, LEN, 77 + i);
		data[i] = vals + (size_t)i * LEN;
		lens[i] = caps[i] = LEN;
		dst[i] = out + (size_t)i * LEN;
	}
	int done = 0;
	struct kvn_client_req put[N];
	for (unsigned i = 0; i < N; i++) {
		put[i] = (struct kvn_client_req){
		    KVN_CLIENT_REQ_INIT, .op = KVN_CLIENT_PUT, .n = 1,
		    .keys = &keys[i],	 .data = &data[i],     .lens_in = &lens[i],
		    .done = count_done,	 .ctx = &done};
		cr_assert_eq(kvn_client_submit(c, &put[i]), 0, "%s", kvn_client_error(c));
	}
	while (done < N) {
		struct pollfd pf = {.fd = kvn_client_fd(c), .events = POLLIN};
		cr_assert_geq(poll(&pf, 1, 60000), 1, "no completion within a minute");
		cr_assert_geq(kvn_client_progress(c, 0), 0, "%s", kvn_client_error(c));
	}
	for (unsigned i = 0; i < N; i++)
		cr_assert_eq(put[i].status, 0, "put %u: %d", i, put[i].status);
	struct kvn_client_req get = {KVN_CLIENT_REQ_INIT,
				     .op = KVN_CLIENT_GET_INTO,
				     .n = N,
				     .keys = keys,
				     .dst = dst,
				     .caps = caps,
				     .lens = got_len,
				     .done = count_done,
				     .ctx = &done};
	cr_assert_eq(kvn_client_submit(c, &get), 0);
	cr_assert_eq(kvn_client_wait(c, &get, 60000), 0);
	cr_assert_eq(done, N + 1);
	cr_assert_eq(get.status, 0);
	cr_assert_arr_eq(out, vals, (size_t)N * LEN);
	kvn_client_close(c);
	free(vals);
	free(out);
}

/* Device buffers on a host without a driver: the request is refused before anything is sent,
 * naming what is missing, and the client goes on serving host buffers. A caller built against
 * ABI 2.3 (a request without mem) is served as one asking for host memory. (With a driver the
 * answers differ: tests/test_gpu_device.c has the device side.) */
Test(client, device_buffers_without_a_driver_are_refused_by_name_and_older_requests_served,
     .fini = stop_all)
{
	void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (h) {
		dlclose(h);
		cr_skip_test("this host has libcuda.so.1: tests/test_gpu_device.c covers it");
	}
	start_one(NULL);
	struct kvn_client *c = open_client(&a);
	const char *key = "vllm@test-model@1@0@00de@bfloat16";
	uint8_t val[4096], out[4096];
	pattern_fill(val, sizeof(val), 5);
	cr_assert_eq(kvn_client_put(c, key, val, sizeof(val)), 0, "%s", kvn_client_error(c));
	void *dst[1] = {out};
	size_t cap = sizeof(out), len = 0;
	struct kvn_client_req r = {KVN_CLIENT_REQ_INIT,
				   .op = KVN_CLIENT_GET_INTO,
				   .n = 1,
				   .keys = &key,
				   .dst = dst,
				   .caps = &cap,
				   .lens = &len,
				   .mem = KVN_CLIENT_MEM_GPU,
				   .mem_device = 0};
	int rc = kvn_client_submit(c, &r);
	cr_assert(rc == -ENOENT || rc == -ENOTSUP, "submit: %d (%s)", rc, kvn_client_error(c));
	cr_assert(strstr(kvn_client_error(c), "device buffers on GPU 0: ") &&
		      strstr(kvn_client_error(c),
			     rc == -ENOENT ? "libcuda.so.1 not found" : "CUDA headers"),
		  "%s", kvn_client_error(c));
	const void *data[1] = {val};
	size_t vlen = sizeof(val);
	struct kvn_client_req p = {
	    KVN_CLIENT_REQ_INIT, .op = KVN_CLIENT_PUT,	   .n = 1, .keys = &key, .data = data,
	    .lens_in = &vlen,	 .mem = KVN_CLIENT_MEM_GPU};
	cr_assert_eq(kvn_client_submit(c, &p), rc, "a put from a device is refused alike");
	/* device memory is for GET_INTO and PUT; an unknown kind is refused */
	struct kvn_view v;
	struct kvn_client_req g = {
	    KVN_CLIENT_REQ_INIT, .op = KVN_CLIENT_GET, .n = 1,
	    .keys = &key,	 .views = &v,	       .mem = KVN_CLIENT_MEM_GPU};
	cr_assert_eq(kvn_client_submit(c, &g), -EINVAL);
	cr_assert(strstr(kvn_client_error(c), "GET_INTO and PUT"), "%s", kvn_client_error(c));
	r.mem = (enum kvn_client_mem)7;
	cr_assert_eq(kvn_client_submit(c, &r), -EINVAL);
	cr_assert(strstr(kvn_client_error(c), "memory kind 7"), "%s", kvn_client_error(c));
	/* A 2.3 request: its size ends before mem, whatever lies past it is never read. */
	r.size = (uint32_t)offsetof(struct kvn_client_req, mem);
	r.mem = KVN_CLIENT_MEM_GPU;
	cr_assert_eq(kvn_client_submit(c, &r), 0, "%s", kvn_client_error(c));
	cr_assert_eq(kvn_client_wait(c, &r, 60000), 0);
	cr_assert_eq(r.status, 0, "%s", kvn_client_error(c));
	cr_assert_eq(len, sizeof(val));
	cr_assert_arr_eq(out, val, sizeof(val), "host bytes, as the older caller meant");
	r.size = (uint32_t)offsetof(struct kvn_client_req, mem) - 1;
	cr_assert_eq(kvn_client_submit(c, &r), -EINVAL, "shorter than any 2.x request");
	kvn_client_close(c);
}

static void
on_alarm(int sig)
{
	(void)sig;
}

/* A worker's own signals (a profiler's timer, Python's handlers, installed without SA_RESTART)
 * interrupt the library's waits: connecting, the HELLO and requests must go on through them.
 * The HELLO's recvmsg, on a socket with SO_RCVTIMEO, is never restarted by the kernel; it used
 * to fail with "no answer to HELLO (Interrupted system call)" (found by fuzz_clientsrv under
 * libFuzzer's SIGALRM). */
Test(client, signals_interrupting_the_librarys_waits_do_not_fail_its_calls, .fini = stop_all)
{
	start_one(NULL);
	struct sigaction sa = {.sa_handler = on_alarm}, old;
	cr_assert_eq(sigaction(SIGALRM, &sa, &old), 0);
	struct itimerval every = {{0, 100}, {0, 100}}, off = {{0, 0}, {0, 0}};
	cr_assert_eq(setitimer(ITIMER_REAL, &every, NULL), 0);
	uint8_t val[65536], out[65536];
	pattern_fill(val, sizeof(val), 9);
	for (int i = 0; i < 300; i++) {
		struct kvn_client *c = NULL;
		char err[512] = "";
		struct kvn_client_opts o = {KVN_CLIENT_OPTS_INIT, .socket_path = a.sock,
					    .name = "signals", .timeout_ms = 60000};
		int rc = kvn_client_open(&o, &c, err, sizeof(err));
		if (rc)
			setitimer(ITIMER_REAL, &off, NULL);
		cr_assert_eq(rc, 0, "open %d: %s", i, err);
		char key[64];
		snprintf(key, sizeof(key), "vllm@test-model@1@0@%04x5151@bfloat16", i);
		size_t len = 0;
		rc = kvn_client_put(c, key, val, sizeof(val));
		if (!rc)
			rc = kvn_client_get_into(c, key, out, sizeof(out), &len);
		if (rc)
			setitimer(ITIMER_REAL, &off, NULL);
		cr_assert_eq(rc, 0, "round %d: %s", i, kvn_client_error(c));
		cr_assert_eq(len, sizeof(val));
		cr_assert_arr_eq(out, val, sizeof(val));
		kvn_client_close(c);
	}
	setitimer(ITIMER_REAL, &off, NULL);
	sigaction(SIGALRM, &old, NULL);
}
