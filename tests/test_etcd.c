/* The etcd v3 client (node/cluster/etcd.c) against a real etcd (Debian's etcd-server, its JSON
 * gateway): leases, get/put/create/delete, prefix ranges, watches, endpoint failover, an etcd
 * killed and restarted, and auth with tokens etcd hands out and forgets. */
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "helpers/etcd_server.h"
#include "core/clock.h"
#include "core/netaddr.h"
#include "node/cluster/etcd.h"

static struct etcd_server es;
static char err[1024];

static void
setup(void)
{
	if (!etcd_server_available())
		cr_skip_test("etcd is not installed (Debian's etcd-server: scripts/install-deps)");
	int rc = etcd_server_start(&es);
	cr_assert_eq(rc, 0, "etcd did not start (%d); its log is in %s", rc, es.dir);
}

static void
teardown(void)
{
	etcd_server_destroy(&es);
}

static struct kvn_etcd *
open_opts(const struct kvn_etcd_opts *o)
{
	struct kvn_etcd *e = NULL;
	int rc = kvn_etcd_open(o, &e, err, sizeof(err));
	cr_assert_eq(rc, 0, "open %s: %d %s", o->endpoints, rc, err);
	return e;
}

static struct kvn_etcd *
open_client(const char *endpoints)
{
	/* Generous: a loaded 2-core machine, and etcd fsyncs every write. */
	struct kvn_etcd_opts o = {.endpoints = endpoints, .timeout_ms = 20000};
	return open_opts(&o);
}

static void
put_ok(struct kvn_etcd *e, const char *key, const char *value, int64_t lease)
{
	int rc = kvn_etcd_put(e, key, value, lease, err, sizeof(err));
	cr_assert_eq(rc, 0, "put %s: %d %s", key, rc, err);
}

static struct kvn_etcd_kv kv;

static void
get_ok(struct kvn_etcd *e, const char *key, int64_t *rev)
{
	int rc = kvn_etcd_get(e, key, &kv, rev, err, sizeof(err));
	cr_assert_eq(rc, 0, "get %s: %d %s", key, rc, err);
}

/* A 127.0.0.1 port nothing listens on. */
static int
dead_port(void)
{
	int p = kvn_tcp_free_port();
	cr_assert_gt(p, 0);
	return p;
}

TestSuite(etcd, .init = setup, .fini = teardown, .timeout = 240);

Test(etcd, a_lease_is_granted_kept_alive_and_revoked_and_then_is_gone)
{
	struct kvn_etcd *e = open_client(es.endpoint);
	int64_t id = 0;
	int rc = kvn_etcd_lease_grant(e, 30, &id, err, sizeof(err));
	cr_assert_eq(rc, 0, "grant: %d %s", rc, err);
	cr_assert_neq(id, 0);
	int ttl = 0;
	rc = kvn_etcd_lease_keepalive(e, id, &ttl, err, sizeof(err));
	cr_assert_eq(rc, 0, "keepalive: %d %s", rc, err);
	cr_assert(ttl > 0 && ttl <= 30, "keepalive granted %d s of a 30 s lease", ttl);
	cr_assert_eq(kvn_etcd_lease_revoke(e, id, err, sizeof(err)), 0, "revoke: %s", err);
	err[0] = '\0';
	cr_assert_eq(kvn_etcd_lease_keepalive(e, id, &ttl, err, sizeof(err)), -ENOENT);
	cr_assert(strstr(err, es.endpoint) && strstr(err, "gone"), "err: %s", err);
	cr_assert_eq(kvn_etcd_lease_revoke(e, id, err, sizeof(err)), -ENOENT);
	cr_assert(strstr(err, "lease not found"), "etcd's message is not in err: %s", err);
	cr_assert_eq(kvn_etcd_lease_grant(e, 0, &id, err, sizeof(err)), -EINVAL);
	kvn_etcd_close(e);
}

Test(etcd, a_value_with_bytes_base64_must_carry_round_trips_under_a_key_with_slashes)
{
	struct kvn_etcd *e = open_client(es.endpoint);
	const char *key = "/kvnode/scheduler/leader";
	const char *value = "{\"addr\": \"10.0.0.1:7470\"} +/= \t\n\\ \xc3\xa9\x01\x7f\xff end";
	put_ok(e, key, value, 0);
	int64_t rev = 0;
	get_ok(e, key, &rev);
	cr_assert_eq(kv.len, strlen(value));
	cr_assert_str_eq(kv.value, value);
	cr_assert(kv.create_rev > 0 && kv.mod_rev == kv.create_rev && kv.lease == 0,
		  "create %" PRId64 " mod %" PRId64 " lease %" PRId64, kv.create_rev, kv.mod_rev,
		  kv.lease);
	cr_assert_geq(rev, kv.mod_rev);
	int64_t created = kv.create_rev;

	/* A second put moves mod_revision on, not create_revision; an empty value is a value. */
	put_ok(e, key, "", 0);
	get_ok(e, key, &rev);
	cr_assert(kv.len == 0 && kv.value[0] == '\0', "empty value came back as '%s'", kv.value);
	cr_assert(kv.create_rev == created && kv.mod_rev > created);

	/* The largest value fits exactly; one byte more is refused before it is sent. */
	char *big = malloc(KVN_ETCD_VALUE_MAX + 2);
	memset(big, 'v', KVN_ETCD_VALUE_MAX + 1);
	big[KVN_ETCD_VALUE_MAX] = '\0';
	put_ok(e, "/big", big, 0);
	get_ok(e, "/big", NULL);
	cr_assert(kv.len == KVN_ETCD_VALUE_MAX && !memcmp(kv.value, big, kv.len));
	big[KVN_ETCD_VALUE_MAX] = 'v';
	big[KVN_ETCD_VALUE_MAX + 1] = '\0';
	cr_assert_eq(kvn_etcd_put(e, "/big", big, 0, err, sizeof(err)), -EMSGSIZE);
	cr_assert(strstr(err, "/big"), "err: %s", err);
	free(big);

	cr_assert_eq(kvn_etcd_delete(e, key, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kvn_etcd_get(e, key, &kv, NULL, err, sizeof(err)), -ENOENT);
	cr_assert_eq(kvn_etcd_delete(e, key, err, sizeof(err)), 0, "an absent key: %s", err);
	kvn_etcd_close(e);
}

Test(etcd, a_value_someone_else_wrote_over_the_limit_is_emsgsize_and_a_huge_range_too)
{
	struct kvn_etcd *e = open_client(es.endpoint);
	/* Written through the gateway directly: 200 KiB values, six of them are a range answer of
	 * over 1 MiB of base64. */
	size_t vlen = 200 * 1024, blen = vlen / 3 * 4 + 8;
	char *b64 = malloc(blen + 1), *body = malloc(blen + 64);
	for (size_t i = 0; i < blen; i++)
		b64[i] = 'A';
	b64[vlen / 3 * 4] = '\0';
	for (int i = 0; i < 6; i++) {
		/* "/h/<i>" in base64: "L2gv" is "/h/", then one digit with padding. */
		const char *keys[] = {
		    "L2gvMA==", "L2gvMQ==", "L2gvMg==", "L2gvMw==", "L2gvNA==", "L2gvNQ=="};
		snprintf(body, blen + 64, "{\"key\":\"%s\",\"value\":\"%s\"}", keys[i], b64);
		cr_assert_eq(etcd_server_post(&es, "/v3/kv/put", body, NULL, NULL), 200);
	}
	free(b64);
	free(body);
	cr_assert_eq(kvn_etcd_get(e, "/h/0", &kv, NULL, err, sizeof(err)), -EMSGSIZE);
	cr_assert(strstr(err, "/h/0") && strstr(err, "4096"), "err: %s", err);
	int calls = 0;
	int rc = kvn_etcd_range_prefix(e, "/h/", NULL, &calls, err, sizeof(err));
	cr_assert_eq(rc, -EMSGSIZE, "range of 1.6 MB: %d %s", rc, err);
	cr_assert(strstr(err, "over") && strstr(err, es.endpoint), "err: %s", err);
	kvn_etcd_close(e);
}

Test(etcd, a_missing_key_is_enoent_with_the_revision_to_watch_from)
{
	struct kvn_etcd *e = open_client(es.endpoint);
	put_ok(e, "/x", "1", 0);
	int64_t put_rev = 0;
	get_ok(e, "/x", &put_rev);
	int64_t rev = -1;
	err[0] = '\0';
	cr_assert_eq(kvn_etcd_get(e, "/absent", &kv, &rev, err, sizeof(err)), -ENOENT);
	cr_assert_geq(rev, put_rev, "rev %" PRId64 " is before the put's %" PRId64, rev, put_rev);
	cr_assert(strstr(err, "/absent") && strstr(err, es.endpoint), "err: %s", err);
	kvn_etcd_close(e);
}

Test(etcd, create_creates_once_and_then_hands_back_the_first_value_and_its_lease)
{
	struct kvn_etcd *e = open_client(es.endpoint);
	int64_t lease;
	cr_assert_eq(kvn_etcd_lease_grant(e, 60, &lease, err, sizeof(err)), 0, "%s", err);
	struct kvn_etcd_kv cur;
	int rc = kvn_etcd_create(e, "/leader", "node-a", lease, &cur, err, sizeof(err));
	cr_assert_eq(rc, 1, "first create: %d %s", rc, err);
	memset(&cur, 0, sizeof(cur));
	rc = kvn_etcd_create(e, "/leader", "node-b", 0, &cur, err, sizeof(err));
	cr_assert_eq(rc, 0, "second create: %d %s", rc, err);
	cr_assert_str_eq(cur.value, "node-a");
	cr_assert_eq(cur.lease, lease);
	cr_assert_gt(cur.create_rev, 0);
	cr_assert_eq(kvn_etcd_create(e, "/leader", "node-c", 0, NULL, err, sizeof(err)), 0);
	get_ok(e, "/leader", NULL);
	cr_assert_str_eq(kv.value, "node-a");
	cr_assert_eq(kv.lease, lease);
	/* A lease that does not exist: etcd's own refusal, not a create. */
	rc = kvn_etcd_create(e, "/other", "x", lease + 1, NULL, err, sizeof(err));
	cr_assert_eq(rc, -ENOENT, "create under an unknown lease: %d %s", rc, err);
	kvn_etcd_close(e);
}

Test(etcd, a_key_attached_to_a_lease_goes_when_the_lease_is_revoked)
{
	struct kvn_etcd *e = open_client(es.endpoint);
	int64_t lease;
	cr_assert_eq(kvn_etcd_lease_grant(e, 60, &lease, err, sizeof(err)), 0, "%s", err);
	put_ok(e, "/members/node-1", "10.0.0.2:7471", lease);
	put_ok(e, "/members/node-2", "10.0.0.3:7471", 0);
	get_ok(e, "/members/node-1", NULL);
	cr_assert_eq(kv.lease, lease);
	cr_assert_eq(kvn_etcd_lease_revoke(e, lease, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kvn_etcd_get(e, "/members/node-1", &kv, NULL, err, sizeof(err)), -ENOENT);
	get_ok(e, "/members/node-2", NULL);
	cr_assert_str_eq(kv.value, "10.0.0.3:7471");
	kvn_etcd_close(e);
}

struct seen {
	char keys[16][64];
	char values[16][64];
	int n, stop_at;
};

static int
collect(void *ctx, const char *key, const struct kvn_etcd_kv *k)
{
	struct seen *s = ctx;
	cr_assert_lt(s->n, 16);
	snprintf(s->keys[s->n], sizeof(s->keys[0]), "%.63s", key);
	snprintf(s->values[s->n], sizeof(s->values[0]), "%.63s", k->value);
	s->n++;
	return s->n == s->stop_at ? 7 : 0;
}

Test(etcd, range_prefix_returns_exactly_the_keys_under_the_prefix_in_key_order)
{
	struct kvn_etcd *e = open_client(es.endpoint);
	/* Put out of order; "/p0" is the range's end ('/' + 1), "/o" and "/p" sort before. */
	const char *puts[][2] = {{"/p/c/d", "4"}, {"/p0", "no"}, {"/p/a", "2"}, {"/o", "no"},
				 {"/p/", "1"},	  {"/p", "no"},	 {"/p/b", "3"}, {"/p00", "no"}};
	for (size_t i = 0; i < sizeof(puts) / sizeof(puts[0]); i++)
		put_ok(e, puts[i][0], puts[i][1], 0);
	struct seen s = {0};
	int rc = kvn_etcd_range_prefix(e, "/p/", collect, &s, err, sizeof(err));
	cr_assert_eq(rc, 0, "range: %d %s", rc, err);
	const char *want[] = {"/p/", "/p/a", "/p/b", "/p/c/d"};
	cr_assert_eq(s.n, 4, "%d keys under /p/", s.n);
	for (int i = 0; i < 4; i++) {
		cr_assert_str_eq(s.keys[i], want[i]);
		char v[4];
		snprintf(v, sizeof(v), "%d", i + 1);
		cr_assert_str_eq(s.values[i], v);
	}
	/* fn's non-zero return stops the walk and is the answer. */
	struct seen s2 = {.stop_at = 2};
	cr_assert_eq(kvn_etcd_range_prefix(e, "/p/", collect, &s2, err, sizeof(err)), 7);
	cr_assert_eq(s2.n, 2);
	struct seen none = {0};
	cr_assert_eq(kvn_etcd_range_prefix(e, "/q/", collect, &none, err, sizeof(err)), 0);
	cr_assert_eq(none.n, 0);
	kvn_etcd_close(e);
}

struct writer {
	struct kvn_etcd *e;
	int rc;
	char err[512];
};

static void *
put_later(void *arg)
{
	struct writer *w = arg;
	usleep(300 * 1000); /* so that the watch is (most likely) waiting; correct either way */
	w->rc = kvn_etcd_put(w->e, "/watched", "v2", 0, w->err, sizeof(w->err));
	return NULL;
}

Test(etcd, a_watch_returns_the_put_another_thread_makes_and_then_the_delete)
{
	struct kvn_etcd *e = open_client(es.endpoint);
	int64_t rev = 0;
	cr_assert_eq(kvn_etcd_get(e, "/watched", &kv, &rev, err, sizeof(err)), -ENOENT);
	struct writer w = {.e = e};
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, put_later, &w), 0);
	bool deleted = true;
	int64_t at = 0;
	int rc = kvn_etcd_watch(e, "/watched", rev + 1, 60000, &deleted, &at, err, sizeof(err));
	pthread_join(t, NULL);
	cr_assert_eq(w.rc, 0, "put: %s", w.err);
	cr_assert_eq(rc, 1, "watch: %d %s", rc, err);
	cr_assert_not(deleted);
	get_ok(e, "/watched", NULL);
	cr_assert_eq(at, kv.mod_rev, "watch rev %" PRId64 ", the put's %" PRId64, at, kv.mod_rev);

	/* A delete made before the watch starts is in etcd's history: found at once. */
	cr_assert_eq(kvn_etcd_delete(e, "/watched", err, sizeof(err)), 0, "%s", err);
	rc = kvn_etcd_watch(e, "/watched", at + 1, 60000, &deleted, &at, err, sizeof(err));
	cr_assert_eq(rc, 1, "watch: %d %s", rc, err);
	cr_assert(deleted);
	cr_assert_gt(at, kv.mod_rev);
	int64_t now;
	cr_assert_eq(kvn_etcd_get(e, "/watched", &kv, &now, err, sizeof(err)), -ENOENT);
	cr_assert_eq(at, now, "the delete is the store's last revision");
	kvn_etcd_close(e);
}

Test(etcd, a_watch_without_a_change_returns_0_after_its_timeout)
{
	struct kvn_etcd *e = open_client(es.endpoint);
	put_ok(e, "/quiet", "1", 0);
	int64_t rev;
	get_ok(e, "/quiet", &rev);
	put_ok(e, "/elsewhere", "changes of other keys are not this key's", 0);
	bool deleted;
	int64_t at = -1;
	int rc = kvn_etcd_watch(e, "/quiet", rev + 1, 1500, &deleted, &at, err, sizeof(err));
	cr_assert_eq(rc, 0, "watch: %d %s", rc, err);
	cr_assert_eq(at, -1, "rev written without an event");
	kvn_etcd_close(e);
}

Test(etcd, a_watch_from_a_compacted_revision_answers_the_compact_revision)
{
	struct kvn_etcd *e = open_client(es.endpoint);
	put_ok(e, "/c", "1", 0);
	int64_t first;
	get_ok(e, "/c", &first);
	put_ok(e, "/c", "2", 0);
	put_ok(e, "/c", "3", 0);
	int64_t last;
	get_ok(e, "/c", &last);
	char body[64];
	snprintf(body, sizeof(body), "{\"revision\":\"%" PRId64 "\"}", last);
	cr_assert_eq(etcd_server_post(&es, "/v3/kv/compaction", body, NULL, NULL), 200);
	bool deleted = true;
	int64_t at = 0;
	int rc = kvn_etcd_watch(e, "/c", first, 30000, &deleted, &at, err, sizeof(err));
	cr_assert_eq(rc, 1, "watch: %d %s", rc, err);
	cr_assert_eq(at, last, "compact revision %" PRId64 ", compacted at %" PRId64, at, last);
	cr_assert_not(deleted);
	kvn_etcd_close(e);
}

Test(etcd, a_dead_first_endpoint_is_passed_over_and_only_dead_ones_fail_naming_them)
{
	char eps[128];
	int dead = dead_port();
	snprintf(eps, sizeof(eps), "127.0.0.1:%d,%s", dead, es.endpoint);
	struct kvn_etcd *e = open_client(eps);
	cr_assert(strstr(kvn_etcd_endpoint(e), ":") &&
		      atoi(strrchr(kvn_etcd_endpoint(e), ':') + 1) == dead,
		  "the first endpoint before any call: %s", kvn_etcd_endpoint(e));
	put_ok(e, "/f", "over the live one", 0);
	cr_assert_str_eq(kvn_etcd_endpoint(e), es.endpoint);
	get_ok(e, "/f", NULL);
	cr_assert_str_eq(kv.value, "over the live one");
	kvn_etcd_close(e);

	int dead2 = dead_port();
	snprintf(eps, sizeof(eps), "127.0.0.1:%d,127.0.0.1:%d", dead, dead2);
	struct kvn_etcd_opts o = {.endpoints = eps, .timeout_ms = 3000};
	e = open_opts(&o);
	uint64_t t0 = kvn_now_ms();
	int rc = kvn_etcd_put(e, "/f", "x", 0, err, sizeof(err));
	uint64_t took = kvn_now_ms() - t0;
	cr_assert_lt(rc, 0);
	char a[32], b[32];
	snprintf(a, sizeof(a), "127.0.0.1:%d", dead);
	snprintf(b, sizeof(b), "127.0.0.1:%d", dead2);
	cr_assert(strstr(err, a) && strstr(err, b) && strstr(err, "put \"/f\""), "err: %s", err);
	/* Bounded by the timeout (a generous margin: the machine may be loaded). */
	cr_assert_lt(took, 60000, "a call over dead endpoints took %" PRIu64 " ms", took);
	kvn_etcd_close(e);
}

Test(etcd, a_killed_etcd_fails_calls_and_once_restarted_they_work_again)
{
	struct kvn_etcd_opts o = {.endpoints = es.endpoint, .timeout_ms = 5000};
	struct kvn_etcd *e = open_opts(&o);
	put_ok(e, "/durable", "kept", 0);
	etcd_server_stop(&es, SIGKILL);
	int rc = kvn_etcd_get(e, "/durable", &kv, NULL, err, sizeof(err));
	cr_assert_lt(rc, 0);
	cr_assert_neq(rc, -ENOENT);
	cr_assert(strstr(err, es.endpoint), "err: %s", err);
	bool deleted;
	int64_t at;
	rc = kvn_etcd_watch(e, "/durable", 1, 1000, &deleted, &at, err, sizeof(err));
	cr_assert_lt(rc, 0, "a watch of a dead etcd: %d", rc);
	int64_t lease;
	cr_assert_lt(kvn_etcd_lease_grant(e, 10, &lease, err, sizeof(err)), 0);
	rc = etcd_server_restart(&es);
	cr_assert_eq(rc, 0, "restart: %d (log in %s)", rc, es.dir);
	/* Right after the restart etcd may still be electing itself: a few tries. */
	for (int i = 0; i < 10; i++) {
		rc = kvn_etcd_get(e, "/durable", &kv, NULL, err, sizeof(err));
		if (rc == 0)
			break;
		usleep(500 * 1000);
	}
	cr_assert_eq(rc, 0, "get after the restart: %d %s", rc, err);
	cr_assert_str_eq(kv.value, "kept");
	put_ok(e, "/durable", "again", 0);
	kvn_etcd_close(e);
}

struct racer {
	struct kvn_etcd *e;
	int id, fails;
	char err[512];
};

static void *
race(void *arg)
{
	struct racer *r = arg;
	for (int i = 0; i < 10; i++) {
		char key[32], val[32];
		snprintf(key, sizeof(key), "/race/%d/%02d", r->id, i);
		snprintf(val, sizeof(val), "%d", r->id * 100 + i);
		if (kvn_etcd_put(r->e, key, val, 0, r->err, sizeof(r->err)))
			r->fails++;
	}
	return NULL;
}

static int
count(void *ctx, const char *key, const struct kvn_etcd_kv *k)
{
	(void)key;
	(void)k;
	(*(int *)ctx)++;
	return 0;
}

Test(etcd, threads_share_one_client)
{
	struct kvn_etcd *e = open_client(es.endpoint);
	struct racer r[4];
	pthread_t t[4];
	for (int i = 0; i < 4; i++) {
		r[i] = (struct racer){.e = e, .id = i};
		cr_assert_eq(pthread_create(&t[i], NULL, race, &r[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		cr_assert_eq(r[i].fails, 0, "thread %d: %s", i, r[i].err);
	}
	int n = 0;
	cr_assert_eq(kvn_etcd_range_prefix(e, "/race/", count, &n, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(n, 40);
	kvn_etcd_close(e);
}

/* Turns auth on through the gateway: a root role and user (etcd requires them), then enable. */
static void
enable_auth(void)
{
	cr_assert_eq(etcd_server_post(&es, "/v3/auth/role/add", "{\"name\":\"root\"}", NULL, NULL),
		     200);
	cr_assert_eq(etcd_server_post(&es, "/v3/auth/user/add",
				      "{\"name\":\"root\",\"password\":\"s3cret\"}", NULL, NULL),
		     200);
	cr_assert_eq(etcd_server_post(&es, "/v3/auth/user/grant",
				      "{\"user\":\"root\",\"role\":\"root\"}", NULL, NULL),
		     200);
	cr_assert_eq(etcd_server_post(&es, "/v3/auth/enable", "{}", NULL, NULL), 200);
}

Test(etcd, with_auth_a_user_gets_a_token_and_a_token_etcd_forgot_is_fetched_again)
{
	enable_auth();
	struct kvn_etcd_opts o = {
	    .endpoints = es.endpoint, .timeout_ms = 20000, .user = "root", .password = "s3cret"};
	struct kvn_etcd *e = open_opts(&o);
	put_ok(e, "/auth/k", "v", 0);
	get_ok(e, "/auth/k", NULL);
	cr_assert_str_eq(kv.value, "v");

	/* No credentials: etcd refuses, and says why. */
	struct kvn_etcd *anon = open_client(es.endpoint);
	int rc = kvn_etcd_get(anon, "/auth/k", &kv, NULL, err, sizeof(err));
	cr_assert_eq(rc, -EACCES, "%d %s", rc, err);
	cr_assert(strstr(err, "user name is empty"), "err: %s", err);
	kvn_etcd_close(anon);

	/* A wrong password. */
	struct kvn_etcd_opts bad = o;
	bad.password = "wrong";
	struct kvn_etcd *b = open_opts(&bad);
	rc = kvn_etcd_put(b, "/auth/k", "w", 0, err, sizeof(err));
	cr_assert_eq(rc, -EACCES, "%d %s", rc, err);
	cr_assert(strstr(err, "authentication failed") && strstr(err, "root"), "err: %s", err);
	kvn_etcd_close(b);

	/* A token etcd does not know (as after its restart): with a user, fetched again; a
	 * token alone is refused with etcd's reason. */
	struct kvn_etcd_opts stale = o;
	stale.token = "NotAToken.1";
	struct kvn_etcd *s = open_opts(&stale);
	get_ok(s, "/auth/k", NULL);
	bool deleted;
	int64_t at;
	rc = kvn_etcd_watch(s, "/auth/k", 1, 30000, &deleted, &at, err, sizeof(err));
	cr_assert_eq(rc, 1, "watch with auth: %d %s", rc, err);
	kvn_etcd_close(s);
	struct kvn_etcd_opts only = {
	    .endpoints = es.endpoint, .timeout_ms = 20000, .token = "NotAToken.1"};
	s = open_opts(&only);
	rc = kvn_etcd_get(s, "/auth/k", &kv, NULL, err, sizeof(err));
	cr_assert_eq(rc, -EACCES, "%d %s", rc, err);
	cr_assert(strstr(err, "invalid auth token"), "err: %s", err);
	rc = kvn_etcd_watch(s, "/auth/k", 1, 30000, &deleted, &at, err, sizeof(err));
	cr_assert_eq(rc, -EACCES, "%d %s", rc, err);
	kvn_etcd_close(s);

	/* A restart forgets every simple token: the client logs in again by itself. */
	cr_assert_eq(etcd_server_restart(&es), 0);
	for (int i = 0; i < 10; i++) {
		rc = kvn_etcd_get(e, "/auth/k", &kv, NULL, err, sizeof(err));
		if (rc == 0)
			break;
		usleep(500 * 1000);
	}
	cr_assert_eq(rc, 0, "get after the restart: %d %s", rc, err);
	kvn_etcd_close(e);
}

/* ------------------------------------------------------------------------------------------
 * Without an etcd: options and the decoders
 * ------------------------------------------------------------------------------------------ */

static int
open_fails(const struct kvn_etcd_opts *o, const char *needle)
{
	struct kvn_etcd *e = (struct kvn_etcd *)1;
	err[0] = '\0';
	int rc = kvn_etcd_open(o, &e, err, sizeof(err));
	cr_assert_null(e);
	cr_assert(strstr(err, needle), "err '%s' does not name '%s'", err, needle);
	return rc;
}

Test(etcd_offline, bad_options_are_refused_naming_the_value)
{
	struct kvn_etcd_opts o = {.endpoints = ""};
	cr_assert_eq(open_fails(&o, "empty"), -EINVAL);
	o.endpoints = "127.0.0.1:2379,etcd-2";
	cr_assert_eq(open_fails(&o, "etcd-2"), -EINVAL);
	o.endpoints = "127.0.0.1:2379,,127.0.0.1:2380";
	cr_assert_eq(open_fails(&o, "endpoint 2 is empty"), -EINVAL);
	o.endpoints = "h:0";
	cr_assert_eq(open_fails(&o, "h:0"), -EINVAL);
	char many[512] = "";
	for (int i = 0; i < 17; i++)
		snprintf(many + strlen(many), sizeof(many) - strlen(many), "%sh%d:1", i ? "," : "",
			 i);
	o.endpoints = many;
	cr_assert_eq(open_fails(&o, "more than 16"), -EINVAL);
	o.endpoints = "h:1";
	o.user = "root";
	cr_assert_eq(open_fails(&o, "root"), -EINVAL);
	o.user = NULL;
	o.ca_file = "/nonexistent/ca.pem";
	cr_assert_eq(open_fails(&o, "/nonexistent/ca.pem"), -ENOENT);
	o.ca_file = NULL;
	o.tls = true;
	o.endpoints = "http://h:1";
	cr_assert_eq(open_fails(&o, "http://h:1"), -EINVAL);

	struct kvn_etcd *e;
	struct kvn_etcd_opts ok = {.endpoints = " http://a:1 , [::1]:2379/ "};
	cr_assert_eq(kvn_etcd_open(&ok, &e, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(kvn_etcd_endpoint(e), "a:1");
	cr_assert_eq(kvn_etcd_get(e, "", &kv, NULL, err, sizeof(err)), -EINVAL);
	kvn_etcd_close(e);
}

static int
decode_range(const char *body, int64_t *rev)
{
	return kvn_etcd_decode_range(body, strlen(body), &kv, rev, err, sizeof(err));
}

Test(etcd_offline, range_answers_decode_with_int64_as_strings_or_numbers)
{
	int64_t rev;
	cr_assert_eq(decode_range("{\"header\":{\"revision\":\"12\"},\"kvs\":[{\"key\":\"YQ==\","
				  "\"create_revision\":\"3\",\"mod_revision\":9,\"lease\":"
				  "\"7587862512795556362\",\"value\":\"aGk=\"}],\"count\":\"1\"}",
				  &rev),
		     0, "%s", err);
	cr_assert(rev == 12 && kv.create_rev == 3 && kv.mod_rev == 9 &&
		  kv.lease == 7587862512795556362 && kv.len == 2 && !strcmp(kv.value, "hi"));
	cr_assert_eq(decode_range("{\"header\":{\"revision\":\"5\"}}", &rev), -ENOENT);
	cr_assert_eq(rev, 5);
	cr_assert_eq(decode_range("{\"error\":\"etcdserver: x\",\"code\":3,\"message\":"
				  "\"etcdserver: too many operations\"}",
				  &rev),
		     -EINVAL);
	cr_assert_str_eq(err, "etcdserver: too many operations");
	cr_assert_eq(
	    decode_range("{\"header\":{\"revision\":\"5\"},\"kvs\":[{\"value\":\"@@\"}]}", &rev),
	    -EPROTO);
	cr_assert_eq(decode_range("{\"header\":{\"revision\":\"1e3\"}}", &rev), -EPROTO);
	cr_assert_eq(decode_range("{\"header\":{\"rev", &rev), -EPROTO);
	cr_assert_eq(kvn_etcd_decode_range("{}", 1, &kv, &rev, err, sizeof(err)), -EPROTO);
}

static int
decode_watch(const char *body, int64_t start, bool *del, int64_t *rev)
{
	return kvn_etcd_decode_watch(body, strlen(body), start, del, rev, err, sizeof(err));
}

Test(etcd_offline, watch_streams_decode_put_delete_compaction_and_cancel)
{
	const char *created = "{\"result\":{\"header\":{\"revision\":\"4\"},\"created\":true}}\n";
	const char *put = "{\"result\":{\"header\":{\"revision\":\"6\"},\"events\":[{\"kv\":{"
			  "\"key\":\"YQ==\",\"mod_revision\":\"6\",\"value\":\"MQ==\"}}]}}\n";
	const char *del = "{\"result\":{\"events\":[{\"type\":\"DELETE\",\"kv\":{\"key\":\"YQ==\","
			  "\"mod_revision\":\"7\"}}]}}";
	bool d = true;
	int64_t rev = 0;
	cr_assert_eq(decode_watch(created, 5, &d, &rev), 0, "%s", err);
	char both[1024];
	snprintf(both, sizeof(both), "%s%s", created, put);
	cr_assert_eq(decode_watch(both, 5, &d, &rev), 1, "%s", err);
	cr_assert(!d && rev == 6);
	cr_assert_eq(decode_watch(put, 7, &d, &rev), 0, "an event before start_rev counts");
	snprintf(both, sizeof(both), "%s%s", put, del);
	cr_assert_eq(decode_watch(both, 7, &d, &rev), 1);
	cr_assert(d && rev == 7);
	cr_assert_eq(decode_watch("{\"result\":{\"canceled\":true,\"compact_revision\":\"4\"}}", 2,
				  &d, &rev),
		     1);
	cr_assert(!d && rev == 4);
	cr_assert_eq(decode_watch("{\"result\":{\"canceled\":true,\"cancel_reason\":\"rpc error: "
				  "code = Unauthenticated desc = etcdserver: invalid auth "
				  "token\"}}",
				  2, &d, &rev),
		     -EACCES);
	cr_assert(strstr(err, "invalid auth token"), "err: %s", err);
	cr_assert_eq(
	    decode_watch("{\"error\":{\"grpc_code\":14,\"message\":\"no leader\"}}", 2, &d, &rev),
	    -EAGAIN);
	cr_assert_str_eq(err, "no leader");
	cr_assert_eq(decode_watch("{\"result\":{\"events\":[{\"type\":\"MERGE\",\"kv\":{"
				  "\"mod_revision\":\"7\"}}]}}",
				  2, &d, &rev),
		     -EPROTO);
	cr_assert_eq(decode_watch("{\"result\":{}} garbage", 2, &d, &rev), -EPROTO);
	cr_assert_eq(decode_watch("", 2, &d, &rev), 0);
}

/* ------------------------------------------------------------------------------------------
 * TLS: an etcd serving https only and requiring client certificates (--client-cert-auth), with
 * certificates of a CA made for the test
 * ------------------------------------------------------------------------------------------ */

static void
setup_tls(void)
{
	if (!etcd_server_available())
		cr_skip_test("etcd is not installed (Debian's etcd-server: scripts/install-deps)");
	int rc = etcd_server_start_tls(&es);
	if (rc == -ENOENT)
		cr_skip_test("openssl is not installed: no certificates for the TLS cases");
	cr_assert_eq(rc, 0, "etcd with TLS did not start (%d); etcd.*.log, openssl.log in %s", rc,
		     es.dir);
}

TestSuite(etcd_tls, .init = setup_tls, .fini = teardown, .timeout = 240);

static int
get_with(const struct kvn_etcd_opts *o)
{
	struct kvn_etcd *e = open_opts(o);
	int rc = kvn_etcd_get(e, "/tls/k", &kv, NULL, err, sizeof(err));
	kvn_etcd_close(e);
	return rc;
}

Test(etcd_tls, https_with_the_ca_and_a_client_certificate_works_and_without_either_is_refused)
{
	struct kvn_etcd_opts o = {.endpoints = es.endpoint,
				  .timeout_ms = 20000,
				  .tls = true,
				  .ca_file = es.ca,
				  .cert_file = es.client_cert,
				  .key_file = es.client_key};
	struct kvn_etcd *e = open_opts(&o);
	put_ok(e, "/tls/k", "over https", 0);
	get_ok(e, "/tls/k", NULL);
	cr_assert_str_eq(kv.value, "over https");
	kvn_etcd_close(e);

	/* The server's certificate is not from a CA the client trusts. */
	struct kvn_etcd_opts noca = o;
	noca.ca_file = NULL;
	int rc = get_with(&noca);
	cr_assert_lt(rc, 0, "a server of an unknown CA was trusted");
	cr_assert(strstr(err, es.endpoint), "err does not name the endpoint: %s", err);
	/* No client certificate: etcd refuses the connection. */
	struct kvn_etcd_opts nocert = o;
	nocert.cert_file = nocert.key_file = NULL;
	rc = get_with(&nocert);
	cr_assert_lt(rc, 0, "etcd took a client without a certificate");
	cr_assert(strstr(err, es.endpoint), "err: %s", err);
	/* Plain http to an https-only etcd. */
	struct kvn_etcd_opts plain = {.endpoints = es.endpoint, .timeout_ms = 5000};
	rc = get_with(&plain);
	cr_assert_lt(rc, 0, "plain http was answered by an https-only etcd");
	/* The files given but tls not set: https all the same (the header's rule). */
	struct kvn_etcd_opts implied = o;
	implied.tls = false;
	cr_assert_eq(get_with(&implied), 0, "%s", err);
	cr_assert_str_eq(kv.value, "over https");
}
