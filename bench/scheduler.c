/* kvnode-bench scheduler: key lookups per second through the real scheduler (its epoll thread,
 * frame codec and directory) over loopback TCP with a pipelined client, for batches of 1, 16
 * and 256 keys; and the directory's memory per entry at --entries N, measured as RSS growth. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench/bench.h"
#include "core/auth.h"
#include "node/cluster/ctlframe.h"
#include "node/cluster/membership.h"
#include "node/engine/config.h"
#include "core/log.h"
#include "core/netaddr.h"
#include "node/scheduler/scheduler.h"
#include "node/scheduler/scheduler_dir.h"

#define LOOKUP_KEYS (1u << 20) /* directory size the lookups run against */

static uint64_t
mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static struct kvn_digest
digest(uint64_t i)
{
	return (struct kvn_digest){.lo = mix(i), .hi = mix(i ^ 0x5555)};
}

static struct kvn_loc
loc(uint64_t i)
{
	return (struct kvn_loc){.rkey = 7, .addr = i * 4096, .len = 4096 + 64, .generation = 2};
}

/* ------------------------------------------------------------------------------------------
 * A raw client: the benchmark speaks the frames itself so that it can keep many in flight.
 * ------------------------------------------------------------------------------------------ */

struct client {
	int fd;
	struct kvn_cf_rx rx;
};

/* Next whole frame (blocking). */
static int
next_frame(struct client *c, struct kvn_cf_hdr *h, const uint8_t **body)
{
	char err[256];
	int rc = kvn_cf_rx_wait(&c->rx, c->fd, -1, h, body, err, sizeof(err));
	if (rc)
		fprintf(stderr, "kvnode-bench: reading from the scheduler: %s\n", err);
	return rc;
}

/* Joins and publishes keys 0..n-1 (then waits for a heartbeat's ack: everything before it has
 * been applied, frames on one connection are handled in order). */
static int
client_open(struct client *c, const char *addr, const char *token, size_t n)
{
	char host[KVN_HOST_MAX], err[512];
	uint16_t port;
	if (kvn_hostport_parse(addr, host, &port, err, sizeof(err)) < 0 ||
	    (c->fd = kvn_tcp_connect(host, port, 5000, err, sizeof(err))) < 0) {
		fprintf(stderr, "kvnode-bench: %s\n", err);
		return -ECONNREFUSED;
	}
	/* The scheduler the benchmark runs has no token: the set-up proves nothing, but a
	 * scheduler takes a JOIN only after it. A running one (--connect) has this host's. */
	struct kvn_auth a;
	char proof[KVN_CF_PROOF_HEX], join[64 + KVN_CF_PROOF_HEX];
	kvn_auth_init(&a, token);
	int rc = kvn_cf_client_auth(c->fd, &c->rx, &a, 5000, proof, err, sizeof(err));
	kvn_auth_wipe(&a);
	if (rc) {
		fprintf(stderr, "kvnode-bench: scheduler %s %s\n", addr, err);
		return rc;
	}
	snprintf(join, sizeof(join),
		 proof[0] ? "{\"name\":\"kvnode-bench\",\"proof\":\"%s\"}"
			  : "{\"name\":\"kvnode-bench\"}",
		 proof);
	struct kvn_cf_buf b = {0};
	kvn_cf_put_json_frame(&b, KVN_CF_JOIN, 1, join, NULL, 0);
	for (size_t off = 0; off < n; off += KVN_CF_PUBLISH_MAX) {
		size_t k = n - off < KVN_CF_PUBLISH_MAX ? n - off : KVN_CF_PUBLISH_MAX;
		kvn_cf_begin(&b, KVN_CF_PUBLISH, 0);
		kvn_cf_put_u32(&b, (uint32_t)k);
		kvn_cf_put_u32(&b, 0);
		for (size_t i = off; i < off + k; i++) {
			struct kvn_cf_pub r = {
			    .op = KVN_CF_ADMIT, .digest = digest(i), .loc = loc(i)};
			kvn_cf_put_pub(&b, &r);
		}
		kvn_cf_end(&b);
	}
	kvn_cf_begin(&b, KVN_CF_HEARTBEAT, 2);
	kvn_cf_end(&b);
	rc = b.err ? b.err : kvn_cf_send_all(c->fd, b.p, b.len);
	kvn_cf_buf_free(&b);
	if (rc) /* the scheduler's ERROR, if it sent one, says why */
		fprintf(stderr, "kvnode-bench: sending the JOIN and %zu keys to %s: %s\n", n, addr,
			kvn_strerror(rc));
	for (bool acked = false; !rc && !acked;) {
		struct kvn_cf_hdr h;
		const uint8_t *body;
		if ((rc = next_frame(c, &h, &body)))
			break;
		if (h.type == KVN_CF_ERROR) {
			fprintf(stderr, "kvnode-bench: the scheduler refused the benchmark's JOIN "
					"(does it want an auth_token?)\n");
			rc = -EACCES;
		}
		acked = h.type == KVN_CF_HEARTBEAT_ACK;
		kvn_cf_rx_consume(&c->rx, &h);
	}
	return rc;
}

struct result {
	double keys_per_s;
	uint64_t frames;
};

/* Keeps `window` LOOKUP frames of `batch` keys in flight for duration seconds; every reply is
 * decoded and checked (every key must be found, at its published address). */
static int
run_lookups(struct client *c, uint32_t batch, int window, double duration, uint64_t nkeys,
	    struct result *res)
{
	struct kvn_cf_buf req = {0};
	uint32_t *nloc = malloc(batch * sizeof(*nloc));
	struct kvn_loc *locs = malloc(batch * sizeof(*locs));
	uint64_t *first = malloc((size_t)window * sizeof(*first)), next = 1, sent = 0, done = 0;
	int rc = nloc && locs && first ? 0 : -ENOMEM;
	double start = kvn_now_s(), end = start + duration;
	bool stop = false;
	while (!rc && (!stop || done < sent)) {
		/* Top the window up in one write once half of it has come back: one send per
		 * reply would measure the client's syscalls, not the scheduler. */
		kvn_cf_buf_reset(&req);
		while (!stop && sent - done < (uint64_t)window &&
		       (req.len || sent - done <= (uint64_t)window / 2)) {
			kvn_cf_begin(&req, KVN_CF_LOOKUP, (uint32_t)sent);
			kvn_cf_put_u32(&req, batch);
			kvn_cf_put_u32(&req, 1);
			first[sent % (uint64_t)window] = next;
			for (uint32_t i = 0; i < batch; i++) {
				struct kvn_digest d = digest(mix(next++) % nkeys);
				kvn_cf_put_u64(&req, d.lo);
				kvn_cf_put_u64(&req, d.hi);
			}
			kvn_cf_end(&req);
			sent++;
		}
		if (req.len && (rc = req.err ? req.err : kvn_cf_send_all(c->fd, req.p, req.len)))
			break;
		struct kvn_cf_hdr h;
		const uint8_t *body;
		char err[256];
		if ((rc = next_frame(c, &h, &body)))
			break;
		if (h.type != KVN_CF_LOOKUP_REPLY || h.seq != (uint32_t)done ||
		    kvn_cf_lookup_reply_decode(body, h.len, batch, 1, nloc, locs, err,
					       sizeof(err))) {
			fprintf(stderr,
				"kvnode-bench: reply %llu is not the LOOKUP_REPLY expected\n",
				(unsigned long long)done);
			rc = -EPROTO;
			break;
		}
		uint64_t k = first[done % (uint64_t)window];
		for (uint32_t i = 0; i < batch; i++, k++)
			if (nloc[i] != 1 || locs[i].addr != loc(mix(k) % nkeys).addr) {
				fprintf(stderr, "kvnode-bench: key %u of reply %llu is wrong\n", i,
					(unsigned long long)done);
				rc = -EPROTO;
				break;
			}
		kvn_cf_rx_consume(&c->rx, &h);
		done++;
		if (!stop && kvn_now_s() >= end)
			stop = true;
	}
	double dt = kvn_now_s() - start;
	res->frames = done;
	res->keys_per_s = (double)done * batch / dt;
	kvn_cf_buf_free(&req);
	free(nloc);
	free(locs);
	free(first);
	return rc;
}

/* The anchor: the same lookups straight into a directory in this process, no frames, no
 * socket: what one core can do at best. */
static double
direct_lookups(struct kvn_dir *d, uint32_t batch, double duration, uint64_t nkeys)
{
	uint64_t next = 1, keys = 0;
	volatile uint64_t sink = 0;
	double start = kvn_now_s(), now;
	do {
		for (uint32_t i = 0; i < batch; i++) {
			struct kvn_loc l;
			sink += kvn_dir_lookup(d, digest(mix(next++) % nkeys), &l, 1) ? l.addr : 0;
		}
		keys += batch;
	} while ((now = kvn_now_s()) - start < duration);
	(void)sink;
	return (double)keys / (now - start);
}

/* ------------------------------------------------------------------------------------------
 * Memory per entry
 * ------------------------------------------------------------------------------------------ */

static long
rss_bytes(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	long size = 0, rss = 0;
	if (f) {
		if (fscanf(f, "%ld %ld", &size, &rss) != 2)
			rss = 0;
		fclose(f);
	}
	return rss * sysconf(_SC_PAGESIZE);
}

static int
bench_memory(const struct bench_opts *o, cJSON *rows)
{
	uint64_t n = o->entries;
	long before = rss_bytes();
	struct kvn_dir *d;
	if (kvn_dir_create(0, &d))
		return -ENOMEM;
	double t0 = kvn_now_s();
	for (uint64_t i = 0; i < n; i++) {
		struct kvn_loc l = loc(i);
		l.worker_id = (uint32_t)(i % 4); /* a cluster of 4 nodes */
		if (kvn_dir_admit(d, digest(i), &l)) {
			fprintf(stderr,
				"kvnode-bench: the directory ran out of memory at %llu "
				"entries\n",
				(unsigned long long)i);
			kvn_dir_destroy(d);
			return -ENOMEM;
		}
	}
	double dt = kvn_now_s() - t0;
	long grown = rss_bytes() - before;
	double per = (double)grown / (double)n;
	size_t alloc = kvn_dir_bytes(d);
	if (o->json) {
		cJSON *j = cJSON_CreateObject();
		cJSON_AddStringToObject(j, "mode", "scheduler");
		cJSON_AddStringToObject(j, "op", "memory");
		cJSON_AddNumberToObject(j, "entries", (double)n);
		cJSON_AddNumberToObject(j, "bytes", (double)grown);
		cJSON_AddNumberToObject(j, "bytes_per_entry", per);
		cJSON_AddStringToObject(j, "measured", "RSS growth of the process while filling");
		cJSON_AddNumberToObject(j, "allocated_bytes", (double)alloc);
		cJSON_AddNumberToObject(j, "allocated_bytes_per_entry", (double)alloc / (double)n);
		cJSON_AddNumberToObject(j, "entry_bytes", (double)kvn_dir_entry_size());
		cJSON_AddNumberToObject(j, "inserts_per_s", (double)n / dt);
		cJSON_AddItemToArray(rows, j);
	} else {
		printf(" %-9s %12llu entries: RSS +%.1f MiB = %.1f bytes/entry (allocated %.1f "
		       "bytes/entry, %zu-byte entries), %.2f M inserts/s\n",
		       "memory", (unsigned long long)n, (double)grown / (1 << 20), per,
		       (double)alloc / (double)n, kvn_dir_entry_size(), (double)n / dt / 1e6);
	}
	kvn_dir_destroy(d);
	return 0;
}

/* ------------------------------------------------------------------------------------------
 * The mode
 * ------------------------------------------------------------------------------------------ */

static void *
serve(void *arg)
{
	kvn_scheduler_run(arg);
	return NULL;
}

static const uint32_t batches[] = {1, 16, 256};
/* Enough frames in flight to hide the round trip, few enough for the socket buffers. */
static const int windows[] = {128, 64, 16};

/* Starts an in-process scheduler on 127.0.0.1 on its own thread. */
static int
start_scheduler(struct kvn_scheduler **s, pthread_t *th)
{
	char err[512];
	struct kvn_scheduler_opts so = {
	    .listen = "127.0.0.1:0", .heartbeat_ms = 60000, .expect_entries = LOOKUP_KEYS};
	if (kvn_scheduler_create(&so, s, err, sizeof(err)) < 0) {
		fprintf(stderr, "kvnode-bench: %s\n", err);
		return -1;
	}
	pthread_create(th, NULL, serve, *s);
	return 0;
}

/* The baseline's directory, holding the same keys as the scheduler's (NULL when out of
 * memory: the rows then go without a baseline). */
static void
fill_direct(struct kvn_dir **direct)
{
	kvn_dir_create(LOOKUP_KEYS, direct);
	for (uint64_t i = 0; *direct && i < LOOKUP_KEYS; i++) {
		struct kvn_loc l = loc(i);
		kvn_dir_admit(*direct, digest(i), &l);
	}
}

static void
print_header(const struct bench_opts *o, bool in_process, const char *addr)
{
	char setup[512];
	snprintf(setup, sizeof(setup),
		 "%s scheduler at %s over loopback TCP, one pipelined client connection; "
		 "directory of %u entries; 1 location asked per key",
		 in_process ? "in-process (its own epoll thread)" : "external", addr, LOOKUP_KEYS);
	printf("--------------------------------------------------------------------------"
	       "-------------------\n %s\n",
	       setup);
	printf("--------------------------------------------------------------------------"
	       "-------------------\n");
	printf(" %-9s %8s %12s %16s%s\n", "#op", "#batch", "#frames", "keys/s",
	       o->baseline ? "   baseline keys/s (in-process)   ratio" : "");
}

/* The lookup row of batch size batches[b]: measured through the scheduler (and, with a
 * direct directory, the baseline), then added to rows (--json) or printed. */
static int
lookup_row(const struct bench_opts *o, struct client *c, struct kvn_dir *direct, size_t b,
	   bool in_process, cJSON *rows)
{
	struct result r;
	int rc = run_lookups(c, batches[b], windows[b], o->duration_s, LOOKUP_KEYS, &r);
	if (rc)
		return rc;
	double base = direct ? direct_lookups(direct, batches[b], o->duration_s, LOOKUP_KEYS) : 0;
	if (o->json) {
		cJSON *j = cJSON_CreateObject();
		cJSON_AddStringToObject(j, "mode", "scheduler");
		cJSON_AddStringToObject(j, "op", "lookup");
		cJSON_AddNumberToObject(j, "batch", batches[b]);
		cJSON_AddNumberToObject(j, "bytes", 16.0 * batches[b]);
		cJSON_AddNumberToObject(j, "iterations", (double)r.frames);
		cJSON_AddNumberToObject(j, "ops_per_s", r.keys_per_s);
		cJSON_AddStringToObject(j, "path",
					in_process ? "loopback TCP, in-process scheduler thread"
						   : "loopback TCP, external scheduler");
		cJSON_AddNumberToObject(j, "frames_in_flight", windows[b]);
		cJSON_AddNumberToObject(j, "directory_entries", LOOKUP_KEYS);
		if (direct) {
			cJSON_AddStringToObject(j, "baseline", "in-process directory lookup");
			cJSON_AddNumberToObject(j, "baseline_ops_per_s", base);
			cJSON_AddNumberToObject(j, "ratio", r.keys_per_s / base);
		}
		cJSON_AddItemToArray(rows, j);
	} else {
		printf(" %-9s %8u %12llu %16.0f", "lookup", batches[b],
		       (unsigned long long)r.frames, r.keys_per_s);
		if (direct)
			printf(" %32.0f %7.3f", base, r.keys_per_s / base);
		printf("\n");
		fflush(stdout);
	}
	return 0;
}

int
bench_scheduler(const struct bench_opts *o)
{
	struct kvn_scheduler *s = NULL;
	pthread_t th;
	const char *addr = o->connect;
	char leader[KVN_HOST_MAX + 8];
	int rc = 0;
	if (kvn_scheduler_url_is_etcd(addr)) {
		/* the leader of an etcd cluster (docs/architecture.md §5.6): found once, through
		 * etcd; the lookups then go to it directly */
		char host[KVN_HOST_MAX], err[512];
		uint16_t port;
		if (kvn_scheduler_resolve(addr, NULL, host, &port, err, sizeof(err))) {
			fprintf(stderr, "kvnode-bench: %s\n", err);
			return -1;
		}
		snprintf(leader, sizeof(leader), strchr(host, ':') ? "[%s]:%u" : "%s:%u", host,
			 port);
		addr = leader;
	}
	if (!addr) {
		if (start_scheduler(&s, &th) < 0)
			return -1;
		addr = kvn_scheduler_address(s);
	}
	cJSON *rows = cJSON_CreateArray();
	struct client c = {.fd = -1};
	struct kvn_dir *direct = NULL;
	/* A running scheduler has this host's token (the config's, a file, or the generated
	 * one), as `kvnode stat` finds it. */
	struct kvn_config *cfg = NULL;
	char terr[512];
	if (o->connect && (kvn_config_load(NULL, &cfg, terr, sizeof(terr)) < 0 ||
			   kvn_config_resolve_token(cfg, false, terr, sizeof(terr)) < 0))
		fprintf(stderr, "kvnode-bench: %s (trying without a token)\n", terr);
	rc = client_open(&c, addr, cfg ? cfg->auth_token : NULL, LOOKUP_KEYS);
	kvn_config_free(cfg);
	if (rc)
		goto out;
	if (o->baseline)
		fill_direct(&direct);
	if (!o->json)
		print_header(o, s != NULL, addr);
	for (size_t b = 0; b < sizeof(batches) / sizeof(batches[0]); b++)
		if ((rc = lookup_row(o, &c, direct, b, s != NULL, rows)))
			goto out;
	kvn_dir_destroy(direct);
	direct = NULL;
	rc = bench_memory(o, rows);
	if (!o->json)
		printf("--------------------------------------------------------------------------"
		       "-------------------\n");
out:
	if (o->json && !rc) {
		char *text = cJSON_Print(rows);
		if (text)
			printf("%s\n", text);
		free(text);
	}
	cJSON_Delete(rows);
	kvn_dir_destroy(direct);
	if (c.fd >= 0)
		close(c.fd);
	kvn_cf_rx_free(&c.rx);
	if (s) {
		kvn_scheduler_stop(s);
		pthread_join(th, NULL);
		kvn_scheduler_destroy(s);
	}
	return rc < 0 ? -1 : 0;
}
