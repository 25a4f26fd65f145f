/* The scheduler against rogue and heavy clients, and its command-line faces: garbage,
 * oversized, truncated and random frames, the connection cap, unjoined sockets, publish/lookup
 * of many keys, `kvnode stat --scheduler`, `kvnode-bench scheduler --json`; the limits on what
 * peers can hold: worker ids, id hints, names, reply queues, file descriptors. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <iconv.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/auth.h"
#include "node/scheduler/scheduler.h"
#include "tests/helpers/rawsock.h"
#include "tests/helpers/sched_env.h"

/* The tests' host token: what `kvnode scheduler` processes without auth_token use, and what the
 * in-process schedulers here are given, so members and raw clients prove the same token. */
static const char *
tok(void)
{
	static char *t;
	if (!t)
		t = sched_host_token();
	return t;
}

Test(scheduler, garbage_oversized_and_truncated_frames_close_only_that_connection)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", NULL);
	struct kvn_membership *good;
	cr_assert_eq(sched_node_start(s.addr, "good", NULL, NULL, &good), 0, "%s", sched_err);
	struct kvn_cf_pub one = {
	    .op = KVN_CF_ADMIT, .digest = sched_key_digest(0, 3), .loc = sched_key_loc(0)};
	kvn_membership_publish(good, &one, 1);
	cr_assert_eq(kvn_membership_flush(good, DEADLINE), 0);
	bool err;

	int fd = sched_raw_connect(s.addr);
	const char garbage[] = "GET / HTTP/1.1\r\nHost: scheduler\r\n\r\n";
	send(fd, garbage, sizeof(garbage) - 1, MSG_NOSIGNAL);
	cr_assert(sched_closed(fd, &err), "garbage closes the connection");
	cr_assert(err, "with an ERROR frame saying sched_err");

	fd = sched_raw_connect(s.addr);
	sched_send_hdr(fd, KVN_CF_PUBLISH, 0x7fffffff);
	cr_assert(sched_closed(fd, &err), "a 2 GiB frame is refused from its header");
	cr_assert(err);

	fd = sched_raw_connect(s.addr);
	sched_send_hdr(fd, KVN_CF_LOOKUP, 8 + 16);
	uint8_t body[24] = {1, 0, 0, 0, 1, 0, 0, 0};
	send(fd, body, sizeof(body), MSG_NOSIGNAL);
	cr_assert(sched_closed(fd, &err), "LOOKUP before JOIN is refused");

	fd = sched_raw_connect(s.addr);
	uint8_t join[64] = {200, 0, 0, 0, '{'};
	sched_send_hdr(fd, KVN_CF_JOIN, sizeof(join));
	send(fd, join, sizeof(join), MSG_NOSIGNAL);
	cr_assert(sched_closed(fd, &err), "a JOIN whose JSON length lies is refused");

	fd = sched_raw_connect(s.addr);
	sched_send_hdr(fd, KVN_CF_JOIN_OK, 2);
	send(fd, "{}", 2, MSG_NOSIGNAL);
	cr_assert(sched_closed(fd, &err), "a frame only a scheduler sends is refused");

	/* Truncated: half a header, then half a body, then gone. */
	fd = sched_raw_connect(s.addr);
	send(fd, "KVNM\x01", 5, MSG_NOSIGNAL);
	close(fd);
	fd = sched_raw_connect(s.addr);
	sched_send_hdr(fd, KVN_CF_STATS, 100);
	send(fd, "{\"auth", 6, MSG_NOSIGNAL);
	close(fd);

	/* The scheduler still serves: the good member still joined, lookups still right. */
	cr_assert_eq(sched_found_on(good, 1, 3, (uint32_t)kvn_membership_worker_id(good)), 1);
	cr_assert(kvn_membership_connected(good));
	char *json = NULL;
	cr_assert_eq(
	    kvn_membership_fetch_stats(s.addr, tok(), 5000, &json, sched_err, sizeof(sched_err)), 0,
	    "%s", sched_err);
	cr_assert(strstr(json, "\"protocol_errors\":5"), "five refusals counted: %s", json);
	free(json);
	kvn_membership_stop(good);
	cr_assert(proc_alive(&s.p), "the scheduler process survived all of it");
	sched_stop(&s);
}

/* ------------------------------------------------------------------------------------------
 * Directory through the wire
 * ------------------------------------------------------------------------------------------ */

Test(scheduler, publish_and_lookup_agree_on_many_keys_and_evicts_are_announced)
{
	struct sched s = {0};
	/* Not a test of expiry: 100k-key publishes and lookups keep a loaded 2-core machine (and
	 * ASan) busy for seconds, and the suites' 100 ms heartbeat would expire both nodes there
	 * (3 missed beats), turning announced evictions into a member going down. */
	sched_start_env(&s, "127.0.0.1:0", NULL,
			(const char *const[]){"KVNODE_HEARTBEAT_MS=3000", NULL});
	struct seen *sa = sched_seen_new(), *sb = sched_seen_new();
	struct kvn_membership *a, *b;
	cr_assert_eq(sched_node_start(s.addr, "pub", NULL, sa, &a), 0, "%s", sched_err);
	cr_assert_eq(sched_node_start(s.addr, "sub", NULL, sb, &b), 0, "%s", sched_err);
	uint32_t ia = (uint32_t)kvn_membership_worker_id(a),
		 ib = (uint32_t)kvn_membership_worker_id(b);
	enum { N = 100000 };
	struct kvn_cf_pub *ix = sched_make_index(N, 5);
	cr_assert_eq(kvn_membership_publish(a, ix, N), 0);
	cr_assert_eq(kvn_membership_flush(a, DEADLINE), 0);
	cr_assert(WAIT_UNTIL(sched_found_on(b, N, 5, ia) == N),
		  "all 100k keys found with their data");
	cr_assert_eq(sched_found_on(b, N, 6, ia), 0, "keys never published are not found");

	/* Both hold key 0: two locations. */
	kvn_membership_publish(b, ix, 1);
	kvn_membership_flush(b, DEADLINE);
	cr_assert(WAIT_UNTIL(sched_found_on(a, 1, 5, ib) == 1));
	cr_assert_eq(sched_found_on(a, 1, 5, ia), 1);

	/* a evicts the even keys: gone from lookups, announced to b. */
	size_t ev = 0;
	for (size_t i = 0; i < N; i += 2, ev++) {
		ix[ev] = ix[i];
		ix[ev].op = KVN_CF_EVICT;
		ix[ev].loc.generation = 0;
	}
	kvn_membership_publish(a, ix, ev);
	kvn_membership_flush(a, DEADLINE);
	cr_assert(WAIT_UNTIL(sched_found_on(b, N, 5, ia) == N - ev));
	pthread_mutex_lock(&sb->mu);
	size_t told = sb->evicted;
	pthread_mutex_unlock(&sb->mu);
	cr_assert(WAIT_UNTIL(({
			  pthread_mutex_lock(&sb->mu);
			  told = sb->evicted;
			  pthread_mutex_unlock(&sb->mu);
			  told == ev;
		  })),
		  "b was told of every eviction (%zu of %zu)", told, ev);
	pthread_mutex_lock(&sa->mu);
	cr_assert_eq(sa->evicted, 0, "the evicting node is not told its own evictions");
	pthread_mutex_unlock(&sa->mu);
	kvn_membership_stop(a);
	kvn_membership_stop(b);
	sched_stop(&s);
	free(ix);
	free(sa);
	free(sb);
}

Test(scheduler, connections_over_the_cap_are_closed_at_once)
{
	struct kvn_scheduler *s;
	struct kvn_scheduler_opts o = {.listen = "127.0.0.1:0", .max_conns = 3, .auth_token = tok()};
	cr_assert_eq(kvn_scheduler_create(&o, &s, sched_err, sizeof(sched_err)), 0, "%s",
		     sched_err);
	pthread_t th;
	pthread_create(&th, NULL, sched_run, s);
	int fds[3];
	for (int i = 0; i < 3; i++)
		fds[i] = sched_raw_connect(kvn_scheduler_address(s));
	sched_sleep_ms(100);
	int extra = sched_raw_connect(kvn_scheduler_address(s));
	bool err;
	cr_assert(sched_closed(extra, &err), "the fourth connection is closed");
	close(fds[0]);
	/* A slot freed: stats work again on a new connection. */
	char *json = NULL;
	cr_assert(WAIT_UNTIL(kvn_membership_fetch_stats(kvn_scheduler_address(s), tok(), 5000, &json,
							sched_err, sizeof(sched_err)) == 0));
	const char *r = strstr(json, "\"refused\":");
	cr_assert(r && atoi(r + strlen("\"refused\":")) >= 1, "the refusal is counted: %s", json);
	free(json);
	close(fds[1]);
	close(fds[2]);
	kvn_scheduler_stop(s);
	pthread_join(th, NULL);
	kvn_scheduler_destroy(s);
}

Test(scheduler, a_connection_that_never_joins_is_closed_and_frees_its_slot)
{
	struct kvn_scheduler *s;
	struct kvn_scheduler_opts o = {
	    .listen = "127.0.0.1:0", .max_conns = 1, .unjoined_ms = 200, .auth_token = tok()};
	cr_assert_eq(kvn_scheduler_create(&o, &s, sched_err, sizeof(sched_err)), 0, "%s",
		     sched_err);
	pthread_t th;
	pthread_create(&th, NULL, sched_run, s);
	int idle = sched_raw_connect(kvn_scheduler_address(s));
	bool err;
	cr_assert(sched_closed(idle, &err), "the idle connection is closed");
	struct kvn_membership *m;
	cr_assert_eq(sched_node_start(kvn_scheduler_address(s), "late", NULL, NULL, &m), 0, "%s",
		     sched_err);
	sched_sleep_ms(600); /* three times the limit: a joined member must still be there */
	cr_assert(kvn_membership_connected(m), "a joined member is not subject to that limit");
	cr_assert_eq(kvn_membership_joins(m), 1, "and was never cut off and re-joined");
	kvn_membership_stop(m);
	kvn_scheduler_stop(s);
	pthread_join(th, NULL);
	kvn_scheduler_destroy(s);
}

Test(scheduler, kvnode_stat_shows_the_cluster_view)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", NULL);
	struct kvn_membership *m;
	cr_assert_eq(sched_node_start(s.addr, "stat-node", NULL, NULL, &m), 0, "%s", sched_err);
	struct kvn_cf_pub ix[3];
	for (int i = 0; i < 3; i++)
		ix[i] = (struct kvn_cf_pub){
		    .op = KVN_CF_ADMIT, .digest = sched_key_digest(i, 9), .loc = sched_key_loc(i)};
	kvn_membership_publish(m, ix, 3);
	kvn_membership_flush(m, DEADLINE);
	cr_assert(WAIT_UNTIL(sched_found_on(m, 3, 9, (uint32_t)kvn_membership_worker_id(m)) == 3));
	char out[300];
	snprintf(out, sizeof(out), "%s/stat.out", s.dir);
	const char *argv[] = {KVNODE, "stat", "--scheduler", s.addr, NULL};
	const char *env[] = {"KVNODE_CONFIG_FILE", "LMCACHE_CONFIG_FILE", "KVNODE_AUTH_TOKEN",
			     NULL};
	struct proc_opts po = {.stdout_path = out, .env = env};
	cr_assert_eq(proc_run(argv, &po, DEADLINE), 0);
	char *text = proc_read_file(out, NULL);
	cr_assert(text && strstr(text, "stat-node"), "the member is listed: %s", text);
	cr_assert(strstr(text, "alive"));
	cr_assert(strstr(text, "CHUNKS"));
	free(text);
	kvn_membership_stop(m);
	/* A scheduler that is not there: exit 3. */
	const char *argv2[] = {KVNODE, "stat", "--scheduler", "127.0.0.1:1", NULL};
	cr_assert_eq(proc_run(argv2, &po, DEADLINE), 3);
	sched_stop(&s);
}

Test(scheduler, a_bad_listen_address_is_a_usage_error_and_sigterm_exits_cleanly)
{
	const char *env[] = {"KVNODE_CONFIG_FILE", "LMCACHE_CONFIG_FILE", NULL};
	struct proc_opts po = {.env = env};
	const char *bad[] = {KVNODE, "scheduler", "--listen", "127.0.0.1", NULL};
	cr_assert_eq(proc_run(bad, &po, DEADLINE), 2, "a listen address without a port");
	const char *misplaced[] = {KVNODE, "stat", "--listen", "127.0.0.1:1", NULL};
	cr_assert_eq(proc_run(misplaced, &po, DEADLINE), 2, "--listen belongs to scheduler only");
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", NULL);
	cr_assert_eq(proc_stop(&s.p, SIGTERM, DEADLINE), 0, "SIGTERM: exit 0");
	sched_stop(&s);
}

Test(scheduler, kvnode_bench_scheduler_reports_lookups_and_memory_as_json)
{
	char dir[256], out[300];
	cr_assert_eq(proc_mkdtemp("schedbench", dir, sizeof(dir)), 0);
	snprintf(out, sizeof(out), "%s/bench.json", dir);
	const char *argv[] = {KVN_BINARY_DIR "/kvnode-bench",
			      "scheduler",
			      "--json",
			      "--duration",
			      "0.1",
			      "--entries",
			      "20000",
			      NULL};
	struct proc_opts po = {.stdout_path = out};
	cr_assert_eq(proc_run(argv, &po, 120000), 0);
	char *text = proc_read_file(out, NULL);
	cr_assert(text);
	cJSON *rows = cJSON_Parse(text);
	cr_assert(cJSON_IsArray(rows), "JSON array: %s", text);
	int lookups = 0, memory = 0;
	const cJSON *r;
	cJSON_ArrayForEach(r, rows)
	{
		cr_assert_str_eq(cJSON_GetObjectItem(r, "mode")->valuestring, "scheduler");
		const char *op = cJSON_GetObjectItem(r, "op")->valuestring;
		if (!strcmp(op, "lookup")) {
			int batch = cJSON_GetObjectItem(r, "batch")->valueint;
			cr_assert(batch == 1 || batch == 16 || batch == 256);
			cr_assert_gt(cJSON_GetObjectItem(r, "ops_per_s")->valuedouble, 0);
			lookups++;
		} else {
			cr_assert_str_eq(op, "memory");
			cr_assert_eq(cJSON_GetObjectItem(r, "entries")->valuedouble, 20000);
			cr_assert(cJSON_IsNumber(cJSON_GetObjectItem(r, "bytes_per_entry")));
			/* A table at most 3/4 full holds more than one entry's bytes per entry. */
			cr_assert_gt(
			    cJSON_GetObjectItem(r, "allocated_bytes_per_entry")->valuedouble, 48);
			memory++;
		}
	}
	cr_assert_eq(lookups, 3);
	cr_assert_eq(memory, 1);
	cJSON_Delete(rows);
	free(text);
	proc_rm_tree(dir);
}

/* Random bodies behind valid headers, from joined and unjoined connections, into an
 * in-process scheduler (so a sanitizer build sees any bad memory access in the decoders). */
Test(scheduler, random_frame_bodies_never_hurt_the_scheduler)
{
	struct kvn_scheduler *s;
	struct kvn_scheduler_opts o = {.listen = "127.0.0.1:0", .auth_token = tok()};
	cr_assert_eq(kvn_scheduler_create(&o, &s, sched_err, sizeof(sched_err)), 0, "%s",
		     sched_err);
	pthread_t th;
	pthread_create(&th, NULL, sched_run, s);
	const char *addr = kvn_scheduler_address(s);
	static const uint8_t types[] = {KVN_CF_JOIN, KVN_CF_PUBLISH, KVN_CF_LOOKUP, KVN_CF_STATS,
					KVN_CF_HEARTBEAT};
	uint64_t r = 42;
	for (int i = 0; i < 300; i++) {
		int fd = sched_raw_connect(addr);
		struct kvn_cf_buf b = {0};
		if (i % 2) { /* joined first: PUBLISH and LOOKUP bodies reach their checks */
			char proof[KVN_CF_PROOF_HEX], json[160];
			sched_raw_auth(fd, tok(), proof);
			sched_json_with_proof("{\"name\":\"fuzz\"}", proof, json, sizeof(json));
			kvn_cf_put_json_frame(&b, KVN_CF_JOIN, 1, json, NULL, 0);
		}
		r = sched_mix(r);
		uint8_t type = types[r % sizeof(types)];
		uint32_t len = type == KVN_CF_HEARTBEAT ? 0 : (uint32_t)((r >> 8) % 600);
		kvn_cf_begin(&b, type, 7);
		for (uint32_t k = 0; k < len; k++) {
			uint8_t byte = (uint8_t)sched_mix(r + k);
			/* Small counts now and then, so some bodies get past the first check. */
			if (k < 8 && (r >> 20) % 2)
				byte = k == 0 ? (uint8_t)(len / 48) : k == 4 ? 1 : 0;
			kvn_cf_put_bytes(&b, &byte, 1);
		}
		kvn_cf_end(&b);
		send(fd, b.p, b.len, MSG_NOSIGNAL);
		kvn_cf_buf_free(&b);
		close(fd);
	}
	struct kvn_membership *m;
	cr_assert_eq(sched_node_start(addr, "after-fuzz", NULL, NULL, &m), 0, "%s", sched_err);
	struct kvn_cf_pub one = {
	    .op = KVN_CF_ADMIT, .digest = sched_key_digest(1, 77), .loc = sched_key_loc(1)};
	kvn_membership_publish(m, &one, 1);
	kvn_membership_flush(m, DEADLINE);
	cr_assert(WAIT_UNTIL(sched_found_on(m, 2, 77, (uint32_t)kvn_membership_worker_id(m)) == 1),
		  "the scheduler still answers correctly");
	kvn_membership_stop(m);
	kvn_scheduler_stop(s);
	pthread_join(th, NULL);
	kvn_scheduler_destroy(s);
}

/* ------------------------------------------------------------------------------------------
 * Limits: worker ids, hints, names, reply queues, file descriptors
 * ------------------------------------------------------------------------------------------ */

/* The first frame the scheduler sends on fd. */
static struct kvn_cf_hdr
raw_first_frame(int fd, struct kvn_cf_rx *rx, const uint8_t **body)
{
	struct kvn_cf_hdr h;
	cr_assert_eq(kvn_cf_rx_wait(rx, fd, DEADLINE, &h, body, sched_err, sizeof(sched_err)), 0,
		     "no reply from the scheduler: %s", sched_err);
	return h;
}

/* A JOIN of json on a new connection: the worker id its JOIN_OK gives (the connection stays
 * open in *fdp when fdp is not NULL), or -1 with the ERROR's message in msg and its code (a
 * negative errno, -EPROTO without one) in *code. */
static int
raw_join(const char *addr, const char *json, char *msg, size_t cap, int *code, int *fdp)
{
	int fd = sched_raw_connect(addr);
	char proof[KVN_CF_PROOF_HEX], full[1024];
	sched_raw_auth(fd, NULL, proof);
	sched_json_with_proof(json, proof, full, sizeof(full));
	struct kvn_cf_buf b = {0};
	cr_assert_eq(kvn_cf_put_json_frame(&b, KVN_CF_JOIN, 1, full, NULL, 0), 0);
	rawsock_send_all(fd, b.p, b.len);
	kvn_cf_buf_free(&b);
	struct kvn_cf_rx rx = {0};
	const uint8_t *body;
	struct kvn_cf_hdr h = raw_first_frame(fd, &rx, &body);
	int id = -1;
	msg[0] = '\0';
	if (h.type == KVN_CF_JOIN_OK) {
		cJSON *j = cJSON_ParseWithLength((const char *)body, h.len);
		const cJSON *w = cJSON_GetObjectItem(j, "worker_id");
		cr_assert(cJSON_IsNumber(w), "JOIN_OK without a worker_id");
		id = w->valueint;
		cJSON_Delete(j);
	} else {
		cr_assert_eq(h.type, KVN_CF_ERROR, "JOIN answered with %s",
			     kvn_cf_type_name(h.type));
		cJSON *j = cJSON_ParseWithLength((const char *)body, h.len);
		const cJSON *e = cJSON_GetObjectItem(j, "error"),
			    *c = cJSON_GetObjectItem(j, "code");
		snprintf(msg, cap, "%s", cJSON_IsString(e) ? e->valuestring : "");
		*code = cJSON_IsNumber(c) ? -c->valueint : -EPROTO;
		cJSON_Delete(j);
	}
	kvn_cf_rx_free(&rx);
	if (fdp && id >= 0)
		*fdp = fd;
	else
		close(fd);
	return id;
}

/* JOIN then LEAVE as prefix<first> .. prefix<first + n - 1>, 64 connections at a time, each
 * read up to its first reply (both frames are handled by then). Returns the JOINs refused. */
static unsigned
churn(const char *addr, const char *prefix, unsigned first, unsigned n)
{
	enum { BATCH = 64 };
	unsigned refused = 0;
	for (unsigned i = 0; i < n; i += BATCH) {
		int fds[BATCH];
		unsigned k = n - i < BATCH ? n - i : BATCH;
		for (unsigned j = 0; j < k; j++) {
			fds[j] = sched_raw_connect(addr);
			char json[96], proof[KVN_CF_PROOF_HEX], full[256];
			sched_raw_auth(fds[j], NULL, proof);
			snprintf(json, sizeof(json), "{\"name\":\"%s%u\"}", prefix, first + i + j);
			sched_json_with_proof(json, proof, full, sizeof(full));
			struct kvn_cf_buf b = {0};
			kvn_cf_put_json_frame(&b, KVN_CF_JOIN, 1, full, NULL, 0);
			kvn_cf_begin(&b, KVN_CF_LEAVE, 0);
			kvn_cf_end(&b);
			rawsock_send_all(fds[j], b.p, b.len);
			kvn_cf_buf_free(&b);
		}
		for (unsigned j = 0; j < k; j++) {
			struct kvn_cf_rx rx = {0};
			const uint8_t *body;
			struct kvn_cf_hdr h = raw_first_frame(fds[j], &rx, &body);
			refused += h.type == KVN_CF_ERROR;
			kvn_cf_rx_free(&rx);
			/* A reset leaves no TIME_WAIT behind: 65k closes would use up the ports. */
			struct linger lg = {.l_onoff = 1, .l_linger = 0};
			setsockopt(fds[j], SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
			close(fds[j]);
		}
	}
	return refused;
}

static cJSON *
stats_of(const char *addr)
{
	char *json = NULL;
	cr_assert_eq(
	    kvn_membership_fetch_stats(addr, tok(), DEADLINE, &json, sched_err, sizeof(sched_err)),
	    0, "%s", sched_err);
	cJSON *j = cJSON_Parse(json);
	cr_assert(cJSON_IsObject(j), "%s", json);
	free(json);
	return j;
}

static double
stat_num(const char *addr, const char *field)
{
	cJSON *j = stats_of(addr);
	const cJSON *v = cJSON_GetObjectItem(j, field);
	double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
	cJSON_Delete(j);
	return d;
}

Test(scheduler, names_gone_longer_than_worker_id_grace_ms_give_their_ids_to_new_names,
     .timeout = 600)
{
	struct sched s = {0};
	const char *env[] = {"KVNODE_WORKER_ID_GRACE_MS=1", NULL};
	sched_start_env(&s, "127.0.0.1:0", NULL, env);
	/* More made-up names than there are worker ids, each joining once and leaving. */
	cr_assert_eq(churn(s.addr, "made-up-", 0, 70000), 0,
		     "every JOIN got an id: the ids of departed names came back");
	cr_assert(WAIT_UNTIL(stat_num(s.addr, "worker_ids_reclaimed") == 70000),
		  "every name's id is freed once its grace is over");
	cr_assert_eq(stat_num(s.addr, "worker_ids_held"), 0);
	struct kvn_membership *m;
	cr_assert_eq(sched_node_start(s.addr, "newcomer", NULL, NULL, &m), 0, "%s", sched_err);
	cr_assert_eq(kvn_membership_worker_id(m), 0, "it gets the lowest id, freed again");
	kvn_membership_stop(m);
	sched_stop(&s);
}

Test(scheduler, a_name_within_worker_id_grace_ms_keeps_its_id_and_a_full_table_says_so,
     .timeout = 600)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", NULL); /* the default grace: ten minutes */
	struct kvn_membership *m;
	cr_assert_eq(sched_node_start(s.addr, "keeper", NULL, NULL, &m), 0, "%s", sched_err);
	int32_t kid = kvn_membership_worker_id(m);
	kvn_membership_stop(m);
	cr_assert_eq(churn(s.addr, "held-", 0, 65534), 0);
	char msg[512];
	int code = 0;
	cr_assert_eq(raw_join(s.addr, "{\"name\":\"one-too-many\"}", msg, sizeof(msg), &code, NULL),
		     -1, "all 65535 ids are held by names within their grace");
	cr_assert_eq(code, -EUSERS, "the ERROR's code says why (%s)", msg);
	cr_assert(strstr(msg, "worker id") && strstr(msg, "worker_id_grace_ms"),
		  "the message names the cause and the key: %s", msg);
	cr_assert(!strstr(msg, "tier"), "and nothing about a tier: %s", msg);
	cr_assert_eq(sched_node_start(s.addr, "one-too-many", NULL, NULL, &m), -EUSERS,
		     "a node is refused with the same code: %s", sched_err);
	cr_assert(strstr(sched_err, "worker_id_grace_ms"), "%s", sched_err);
	cr_assert(!strstr(sched_err, "tier"), "%s", sched_err);
	cr_assert_eq(sched_node_start(s.addr, "keeper", NULL, NULL, &m), 0, "%s", sched_err);
	cr_assert_eq(kvn_membership_worker_id(m), kid, "a name within its grace keeps its id");
	kvn_membership_stop(m);
	sched_stop(&s);
}

Test(scheduler, a_worker_id_hint_far_above_the_member_count_is_not_honoured)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", NULL);
	char msg[512];
	int code = 0, fd = -1;
	int id = raw_join(s.addr, "{\"name\":\"far\",\"worker_id\":65534}", msg, sizeof(msg), &code,
			  &fd);
	cr_assert_geq(id, 0, "the JOIN itself is fine: %s", msg);
	cr_assert_lt(id, 256, "a hint of 65534 with no members would size every table to it");
	/* A restarting cluster's hints below the bound are kept (ids survive a restart). */
	int fd2 = -1;
	cr_assert_eq(
	    raw_join(s.addr, "{\"name\":\"near\",\"worker_id\":40}", msg, sizeof(msg), &code, &fd2),
	    40, "%s", msg);
	close(fd);
	close(fd2);
	sched_stop(&s);
}

/* The text is valid UTF-8 (iconv checks it independently of the scheduler's own rules). */
static bool
valid_utf8(const char *text)
{
	iconv_t cd = iconv_open("UTF-8", "UTF-8");
	cr_assert(cd != (iconv_t)-1);
	size_t in = strlen(text), outcap = in * 4 + 4, out = outcap;
	char *ip = (char *)text, *buf = malloc(outcap), *op = buf;
	size_t rc = iconv(cd, &ip, &in, &op, &out);
	iconv_close(cd);
	free(buf);
	return rc != (size_t)-1 && in == 0;
}

/* JOIN number i (its JSON) is refused with -EINVAL; msg gets the scheduler's words. */
static void
expect_join_refused(const char *addr, const char *json, size_t i, char *msg, size_t cap)
{
	int code = 0;
	cr_assert_eq(raw_join(addr, json, msg, cap, &code, NULL), -1, "JOIN %zu was let in", i);
	cr_assert_eq(code, -EINVAL, "JOIN %zu: %s", i, msg);
}

/* A node's RDMA MTU (JOIN "mtu") is kept and listed, for doctor --peers; a bad one is refused. */
Test(scheduler, a_join_mtu_is_listed_with_the_member_and_a_bad_one_is_refused)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", NULL);
	static const char *bad[] = {"{\"name\":\"m1\",\"mtu\":\"4096\"}",
				    "{\"name\":\"m1\",\"mtu\":70000}",
				    "{\"name\":\"m1\",\"mtu\":-1}"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char msg[512];
		expect_join_refused(s.addr, bad[i], i, msg, sizeof(msg));
		cr_assert(strstr(msg, "\"mtu\""), "JOIN %zu: the message names mtu: %s", i, msg);
	}
	char msg[512];
	int code = 0, fd = -1, fd2 = -1;
	cr_assert_geq(
	    raw_join(s.addr, "{\"name\":\"m1\",\"mtu\":4096}", msg, sizeof(msg), &code, &fd), 0,
	    "%s", msg);
	cr_assert_geq(raw_join(s.addr, "{\"name\":\"m2\"}", msg, sizeof(msg), &code, &fd2), 0, "%s",
		      msg);
	char *json = NULL;
	cr_assert_eq(
	    kvn_membership_fetch_stats(s.addr, tok(), 5000, &json, sched_err, sizeof(sched_err)), 0,
	    "%s", sched_err);
	cJSON *view = cJSON_Parse(json);
	cr_assert_not_null(view);
	int seen = 0;
	const cJSON *m;
	cJSON_ArrayForEach(m, cJSON_GetObjectItemCaseSensitive(view, "members"))
	{
		const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(m, "name"));
		const cJSON *mtu = cJSON_GetObjectItemCaseSensitive(m, "mtu");
		if (!strcmp(name, "m1")) {
			cr_assert(cJSON_IsNumber(mtu) && mtu->valuedouble == 4096, "%s", json);
			seen++;
		}
		if (!strcmp(name, "m2")) {
			cr_assert_null(mtu, "m2 gave no mtu: %s", json);
			seen++;
		}
	}
	cr_assert_eq(seen, 2, "%s", json);
	cJSON_Delete(view);
	free(json);
	close(fd);
	close(fd2);
	sched_stop(&s);
}

Test(scheduler, join_names_that_are_not_short_valid_utf8_words_are_refused_naming_the_rule)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", NULL);
	static const char *bad[] = {
	    "{\"name\":\"\xff\xfe-node\"}",
	    "{\"name\":\"a\\\"b\"}",
	    "{\"name\":\"a b\"}",
	    "{\"name\":\"a\\u0085b\"}",
	    "{\"name\":\"12345678901234567890123456789012345678901234567890123456789012345\"}",
	    "{\"name\":\"ok\",\"data_addr\":\"\xc3\x28\"}",
	    "{\"name\":\"ok\",\"transport\":\"t\xff\"}"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char msg[512];
		expect_join_refused(s.addr, bad[i], i, msg, sizeof(msg));
		cr_assert(strstr(msg, "UTF-8") || strstr(msg, "printable"),
			  "JOIN %zu: the message states the rule: %s", i, msg);
		cr_assert(valid_utf8(msg), "JOIN %zu: the message is valid UTF-8", i);
	}
	char msg[512];
	int code = 0, fd = -1;
	cr_assert_geq(raw_join(s.addr, "{\"name\":\"k\xc3\xb6ln-\xe8\x8a\x82.1_x\"}", msg,
			       sizeof(msg), &code, &fd),
		      0, "letters beyond ASCII are fine: %s", msg);
	char *json = NULL;
	cr_assert_eq(
	    kvn_membership_fetch_stats(s.addr, tok(), 5000, &json, sched_err, sizeof(sched_err)), 0,
	    "%s", sched_err);
	cr_assert(valid_utf8(json), "stat --json is valid UTF-8: %s", json);
	cJSON *view = cJSON_Parse(json);
	cr_assert(view != NULL);
	cJSON_Delete(view);
	cr_assert(strstr(json, "\"k\xc3\xb6ln-\xe8\x8a\x82.1_x\""), "%s", json);
	free(json);
	close(fd);

	/* A node checks its own name before it connects, naming the key. */
	struct kvn_membership *m;
	cr_assert_eq(sched_node_start(s.addr, "bad name", NULL, NULL, &m), -EINVAL);
	cr_assert(strstr(sched_err, "node_name"), "%s", sched_err);
	sched_stop(&s);
}

static long
proc_status_kb(pid_t pid, const char *field)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	char *text = proc_read_file(path, NULL);
	cr_assert(text);
	const char *p = strstr(text, field);
	long kb = p ? atol(p + strlen(field) + 1) : -1;
	free(text);
	return kb;
}

/* Members that ask for cluster views and never read them: the replies queued to all of them
 * together stay within scheduler_reply_queue_max (the largest queue is dropped first), and a
 * member that reads its replies is never cut off. */
Test(scheduler, clients_that_never_read_are_dropped_to_keep_all_reply_queues_within_the_max,
     .timeout = 600)
{
	struct sched s = {0};
	/* The loop answers a hog's burst 256 frames per turn, in turn with the others. The hogs
	 * never beat: with beats of 3 s they live 9 s, long enough on a loaded machine (or under
	 * ASan) for their queues to pass the bound before they expire, however slowly the turns
	 * go. The member that reads beats too, and is answered between the turns. */
	const char *env[] = {"KVNODE_SCHEDULER_REPLY_QUEUE_MAX=4194304", "KVNODE_HEARTBEAT_MS=3000",
			     NULL};
	sched_start_env(&s, "127.0.0.1:0", NULL, env);
	struct kvn_membership *good;
	cr_assert_eq(sched_node_start(s.addr, "reads-its-replies", NULL, NULL, &good), 0, "%s",
		     sched_err);
	long hwm0 = proc_status_kb(s.p.pid, "VmHWM:");
	enum { HOGS = 8, ASKS = 5000 };
	int hog[HOGS];
	for (int i = 0; i < HOGS; i++) {
		char json[64], msg[256];
		int code;
		snprintf(json, sizeof(json), "{\"name\":\"hog-%d\"}", i);
		int rcv = 4096;
		cr_assert_geq(raw_join(s.addr, json, msg, sizeof(msg), &code, &hog[i]), 0, "%s",
			      msg);
		setsockopt(hog[i], SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
	}
	/* Every hog asks ASKS times (16 bytes each, about 2.5 KiB of reply each), then leaves. */
	struct kvn_cf_buf b = {0};
	for (int k = 0; k < ASKS; k++) {
		kvn_cf_begin(&b, KVN_CF_STATS, (uint32_t)k + 1);
		kvn_cf_end(&b);
	}
	kvn_cf_begin(&b, KVN_CF_LEAVE, 0);
	kvn_cf_end(&b);
	for (int i = 0; i < HOGS; i++)
		send(hog[i], b.p, b.len, MSG_NOSIGNAL); /* the scheduler may cut it off meanwhile */
	kvn_cf_buf_free(&b);
	/* Each hog is gone once it left or was dropped (then it stops beating and expires). */
	cr_assert(WAIT_UNTIL(stat_num(s.addr, "worker_count") == 1), "the hogs never went away");
	cr_assert_geq(stat_num(s.addr, "slow_readers_dropped"), 1,
		      "%d x %d replies of 2 KiB do not fit in 4 MiB: some hog was dropped", HOGS,
		      ASKS);
	cr_assert_leq(stat_num(s.addr, "reply_queue_bytes"), 4194304);
	cr_assert(kvn_membership_connected(good));
	cr_assert_eq(kvn_membership_joins(good), 1, "the member that reads was never cut off");
#ifndef __SANITIZE_ADDRESS__ /* ASan's quarantine holds freed memory: RSS says nothing */
	long grown = proc_status_kb(s.p.pid, "VmHWM:") - hwm0;
	/* About 5 MiB here (4 MiB of queues); without the bound, every hog's 12 MiB. */
	cr_assert_lt(grown, 24 * 1024, "the scheduler's peak memory grew by %ld KiB", grown);
#else
	(void)hwm0;
#endif
	for (int i = 0; i < HOGS; i++)
		close(hog[i]);
	kvn_membership_stop(good);
	sched_stop(&s);
}

static double
cpu_seconds(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	char *text = proc_read_file(path, NULL);
	cr_assert(text);
	/* Fields 14 and 15 (utime, stime) follow the command name's closing parenthesis. */
	const char *p = strrchr(text, ')');
	unsigned long ut = 0, st = 0;
	cr_assert_eq(sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st),
		     2);
	free(text);
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static int
open_fds(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	DIR *d = opendir(path);
	int n = 0;
	for (struct dirent *e; d && (e = readdir(d));)
		n += e->d_name[0] != '.';
	if (d)
		closedir(d);
	return n;
}

static double
wall_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Out of file descriptors, accept() fails while the listener stays readable: the scheduler
 * must pause accepting instead of asking again at once, forever. */
Test(scheduler, out_of_file_descriptors_the_scheduler_pauses_accepting_instead_of_spinning)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", NULL);
	struct rlimit rl = {.rlim_cur = 32, .rlim_max = 32};
	cr_assert_eq(prlimit(s.p.pid, RLIMIT_NOFILE, &rl, NULL), 0, "%s", strerror(errno));
	enum { N = 60 };
	int fds[N];
	for (int i = 0; i < N; i++)
		fds[i] = sched_raw_connect(s.addr); /* the kernel's backlog takes what it cannot */
	cr_assert(WAIT_UNTIL(open_fds(s.p.pid) >= 32), "the scheduler never used up its fds");
	sched_sleep_ms(200);
	double cpu0 = cpu_seconds(s.p.pid), t0 = wall_seconds();
	sched_sleep_ms(2000);
	double cpu = cpu_seconds(s.p.pid) - cpu0, wall = wall_seconds() - t0;
	/* Resting, it wakes 10 times a second (about 1% of a CPU); a busy loop takes all the
	 * CPU it can get, a quarter even on a loaded machine. */
	cr_assert_lt(cpu, wall / 4, "%.2f s of CPU in %.2f s: accept() failing in a busy loop", cpu,
		     wall);
	for (int i = 0; i < N; i++)
		close(fds[i]);
	struct kvn_membership *m;
	cr_assert_eq(sched_node_start(s.addr, "after-emfile", NULL, NULL, &m), 0, "%s", sched_err);
	cr_assert(WAIT_UNTIL(kvn_membership_connected(m)), "a node joins once fds are free");
	cr_assert_geq(stat_num(s.addr, "accept_errors"), 1, "the failures are counted");
	kvn_membership_stop(m);
	cr_assert(proc_alive(&s.p));
	sched_stop(&s);
}

Test(scheduler, scheduler_max_connections_and_scheduler_unjoined_timeout_ms_are_read_from_config)
{
	struct sched s = {0};
	const char *env[] = {"KVNODE_SCHEDULER_MAX_CONNECTIONS=2",
			     "KVNODE_SCHEDULER_UNJOINED_TIMEOUT_MS=300", NULL};
	sched_start_env(&s, "127.0.0.1:0", NULL, env);
	cr_assert_eq(stat_num(s.addr, "max_connections"), 2);
	cr_assert_eq(stat_num(s.addr, "unjoined_timeout_ms"), 300);
	int a = sched_raw_connect(s.addr), b = sched_raw_connect(s.addr);
	sched_sleep_ms(50);
	int c = sched_raw_connect(s.addr);
	bool err;
	cr_assert(sched_closed(c, &err), "the third connection is over the cap of 2");
	cr_assert(sched_closed(a, &err), "an unjoined connection is closed");
	cr_assert(sched_closed(b, &err));
	cr_assert_geq(stat_num(s.addr, "refused"), 1);
	sched_stop(&s);
}

/* The raw set-up with a chosen nonce: the CHALLENGE's nonce. */
static void
raw_hello(int fd, const uint8_t nonce_c[KVN_AUTH_NONCE], uint8_t nonce_s[KVN_AUTH_NONCE])
{
	struct kvn_cf_buf b = {0};
	kvn_cf_begin(&b, KVN_CF_HELLO, 0);
	kvn_cf_put_bytes(&b, nonce_c, KVN_AUTH_NONCE);
	kvn_cf_end(&b);
	rawsock_send_all(fd, b.p, b.len);
	kvn_cf_buf_free(&b);
	struct kvn_cf_rx rx = {0};
	const uint8_t *body;
	struct kvn_cf_hdr h = raw_first_frame(fd, &rx, &body);
	cr_assert_eq(h.type, KVN_CF_CHALLENGE, "HELLO answered with %s", kvn_cf_type_name(h.type));
	memcpy(nonce_s, body, KVN_AUTH_NONCE);
	kvn_cf_rx_free(&rx);
}

/* The first frame after sending json as a JOIN: JOIN_OK or ERROR (with its code). */
static int
raw_join_after_hello(int fd, const char *json, int *code)
{
	struct kvn_cf_buf b = {0};
	cr_assert_eq(kvn_cf_put_json_frame(&b, KVN_CF_JOIN, 1, json, NULL, 0), 0);
	rawsock_send_all(fd, b.p, b.len);
	kvn_cf_buf_free(&b);
	struct kvn_cf_rx rx = {0};
	const uint8_t *body;
	struct kvn_cf_hdr h = raw_first_frame(fd, &rx, &body);
	char msg[256];
	*code = h.type == KVN_CF_ERROR ? kvn_cf_error_decode(body, h.len, msg, sizeof(msg)) : 0;
	kvn_cf_rx_free(&rx);
	return h.type;
}

/* The join is a challenge-response: the token never crosses the wire, and a proof seen on one
 * connection is refused on another (the scheduler's nonce is new each time). Before, the JOIN
 * carried the token itself, for anyone on the path to read and use. */
Test(scheduler, a_join_proof_is_good_on_its_own_connection_only)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", "join-secret");
	struct kvn_auth a;
	kvn_auth_init(&a, "join-secret");
	uint8_t nc[KVN_AUTH_NONCE], ns[KVN_AUTH_NONCE], ns2[KVN_AUTH_NONCE], mac[KVN_AUTH_MAC];
	kvn_auth_nonce(nc);
	int fd = sched_raw_connect(s.addr);
	raw_hello(fd, nc, ns);
	const struct kvn_auth_part parts[] = {{ns, KVN_AUTH_NONCE}, {nc, KVN_AUTH_NONCE}};
	kvn_auth_mac(&a, KVN_CF_NODE_LABEL, parts, 2, mac);
	char hex[KVN_CF_PROOF_HEX], json[256];
	for (int i = 0; i < KVN_AUTH_MAC; i++)
		snprintf(hex + 2 * i, 3, "%02x", mac[i]);
	snprintf(json, sizeof(json), "{\"name\":\"honest\",\"proof\":\"%s\"}", hex);
	int code;
	cr_assert_eq(raw_join_after_hello(fd, json, &code), KVN_CF_JOIN_OK, "code %d", code);

	int fd2 = sched_raw_connect(s.addr);
	raw_hello(fd2, nc, ns2); /* the same client nonce, replayed */
	cr_assert_neq(memcmp(ns, ns2, KVN_AUTH_NONCE), 0, "the scheduler's nonce is fresh");
	snprintf(json, sizeof(json), "{\"name\":\"replayer\",\"proof\":\"%s\"}", hex);
	cr_assert_eq(raw_join_after_hello(fd2, json, &code), KVN_CF_ERROR);
	cr_assert_eq(code, -EACCES);
	close(fd2);

	/* The old way, the token in the clear, is no proof at all. */
	fd2 = sched_raw_connect(s.addr);
	raw_hello(fd2, nc, ns2);
	cr_assert_eq(raw_join_after_hello(fd2, "{\"name\":\"old\",\"auth_token\":\"join-secret\"}",
					  &code),
		     KVN_CF_ERROR);
	cr_assert_eq(code, -EACCES);
	close(fd2);

	/* And a JOIN without the set-up is told why. */
	fd2 = sched_raw_connect(s.addr);
	cr_assert_eq(raw_join_after_hello(fd2, "{\"name\":\"older-node\"}", &code), KVN_CF_ERROR);
	cr_assert_eq(code, -EPROTO);
	close(fd2);
	close(fd);
	sched_stop(&s);
}

/* A node with a token joins only a scheduler that proves it: one without it (or with another)
 * could feed the node made-up members and chunk locations. */
Test(scheduler, a_node_refuses_a_scheduler_that_does_not_prove_the_token)
{
	struct kvn_scheduler *s;
	struct kvn_scheduler_opts o = {.listen = "127.0.0.1:0"}; /* no token */
	cr_assert_eq(kvn_scheduler_create(&o, &s, sched_err, sizeof(sched_err)), 0, "%s",
		     sched_err);
	pthread_t th;
	pthread_create(&th, NULL, sched_run, s);
	struct kvn_membership *m = NULL;
	int rc = sched_node_start(kvn_scheduler_address(s), "careful", "node-secret", NULL, &m);
	cr_assert_eq(rc, -EACCES, "joined a scheduler without the token: %d %s", rc, sched_err);
	cr_assert(strstr(sched_err, "did not prove") && strstr(sched_err, "auth_token"), "%s",
		  sched_err);
	char *json = NULL;
	rc = kvn_membership_fetch_stats(kvn_scheduler_address(s), "node-secret", 5000, &json,
					sched_err, sizeof(sched_err));
	cr_assert_eq(rc, -EACCES, "%s", sched_err);
	kvn_scheduler_stop(s);
	pthread_join(th, NULL);
	kvn_scheduler_destroy(s);
}

/* A name that is down keeps its worker id for worker_id_grace_ms but not its regions (up to
 * 64 KiB each, sent again with its next JOIN): 65535 departed names could otherwise hold 4 GiB. */
Test(scheduler, a_departed_name_keeps_its_id_but_not_its_regions)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", NULL);
	struct kvn_membership *a, *b;
	cr_assert_eq(sched_node_start(s.addr, "keeps", NULL, NULL, &a), 0, "%s", sched_err);
	cr_assert_eq(sched_node_start(s.addr, "goes", NULL, NULL, &b), 0, "%s", sched_err);
	double both = stat_num(s.addr, "member_region_bytes");
	cr_assert_eq(both, strlen("regions-of-keeps") + strlen("regions-of-goes"), "%f", both);
	kvn_membership_stop(b); /* LEAVE */
	cr_assert(WAIT_UNTIL(stat_num(s.addr, "member_region_bytes") ==
			     (double)strlen("regions-of-keeps")),
		  "the departed name's regions are still held");
	cr_assert_eq(stat_num(s.addr, "worker_ids_held"), 2, "its id is kept for the grace");
	kvn_membership_stop(a);
	sched_stop(&s);
}

/* A client that sends its request and shuts down its side (as `printf … | nc -N` does) still
 * gets the reply: frames that arrive with the FIN are answered before the close. */
Test(scheduler, requests_that_arrive_with_the_fin_are_answered)
{
	struct sched s = {0};
	sched_start(&s, "127.0.0.1:0", "fin-secret");
	int fd = sched_raw_connect(s.addr);
	char proof[KVN_CF_PROOF_HEX], json[160];
	sched_raw_auth(fd, "fin-secret", proof);
	snprintf(json, sizeof(json), "{\"proof\":\"%s\"}", proof);
	struct kvn_cf_buf b = {0};
	kvn_cf_begin(&b, KVN_CF_STATS, 3);
	kvn_cf_put_bytes(&b, json, strlen(json));
	cr_assert_eq(kvn_cf_end(&b), 0);
	rawsock_send_all(fd, b.p, b.len);
	kvn_cf_buf_free(&b);
	shutdown(fd, SHUT_WR);
	struct kvn_cf_rx rx = {0};
	const uint8_t *body;
	struct kvn_cf_hdr h = raw_first_frame(fd, &rx, &body);
	cr_assert_eq(h.type, KVN_CF_STATS_REPLY, "got %s", kvn_cf_type_name(h.type));
	cr_assert_eq(h.seq, 3);
	kvn_cf_rx_free(&rx);
	close(fd);
	sched_stop(&s);
}
