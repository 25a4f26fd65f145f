/* The scheduler against rogue and heavy clients, and its command-line faces: garbage,
 * oversized, truncated and random frames, the connection cap, unjoined sockets, publish/lookup
 * of many keys, `kvnode stat --scheduler`, `kvnode-bench scheduler --json`. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "node/scheduler.h"
#include "tests/helpers/sched_env.h"

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
	    kvn_membership_fetch_stats(s.addr, NULL, 5000, &json, sched_err, sizeof(sched_err)), 0,
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
	sched_start(&s, "127.0.0.1:0", NULL);
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
	struct kvn_scheduler_opts o = {.listen = "127.0.0.1:0", .max_conns = 3};
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
	cr_assert(WAIT_UNTIL(kvn_membership_fetch_stats(kvn_scheduler_address(s), NULL, 5000, &json,
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
	struct kvn_scheduler_opts o = {.listen = "127.0.0.1:0", .max_conns = 1, .unjoined_ms = 200};
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
	struct kvn_scheduler_opts o = {.listen = "127.0.0.1:0"};
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
			kvn_cf_put_json_frame(&b, KVN_CF_JOIN, 1, "{\"name\":\"fuzz\"}", NULL, 0);
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
