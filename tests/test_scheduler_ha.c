/* Schedulers on etcd (docs/architecture.md §5.6): a real etcd on 127.0.0.1, two `kvnode
 * scheduler` processes of one cluster and three `kvnode serve` nodes, all finding the leader
 * through etcd. The leader is SIGKILLed under a loop of peer gets: the standby takes over, no
 * get returns wrong bytes, worker ids stay, peer gets work again; then etcd itself is down for
 * twice the lease TTL and the cluster recovers without restarting anything. Timings are
 * printed; the deadlines asserted are generous (a loaded 2-core machine). */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "node/cluster/etcd.h"
#include "node/cluster/membership.h"
#include "tests/helpers/cluster_env.h"
#include "tests/helpers/etcd_server.h"

#define VAL    8192
#define NKEYS  32
#define TTL_S  2
#define TTL_MS (TTL_S * 1000)

static double
now_ms(void)
{
	return (double)kvn_now_ns() / 1e6;
}

struct ha {
	struct etcd_server es;
	struct kvn_etcd *etcd;
	char url[160], env_url[200], leader_key[128];
	struct sched s1, s2;
	char dir[256];
	struct cnode a, b, c;
};

static const char *env_ttl = "KVNODE_SCHEDULER_LEASE_TTL_S=2";

/* The leader key's value now ("" when absent or etcd does not answer). */
static void
leader_now(struct ha *h, char *out, size_t cap)
{
	struct kvn_etcd_kv *kv = malloc(sizeof(*kv));
	char err[512];
	cr_assert_not_null(kv);
	*out = 0;
	if (kvn_etcd_get(h->etcd, h->leader_key, kv, NULL, err, sizeof(err)) == 0)
		snprintf(out, cap, "%.*s", (int)(cap - 1), kv->value);
	free(kv);
}

struct leader_is {
	struct ha *h;
	const char *want;
};

static bool
leader_is(void *arg)
{
	struct leader_is *l = arg;
	char cur[128];
	leader_now(l->h, cur, sizeof(cur));
	return !strcmp(cur, l->want);
}

static void
start_sched(struct ha *h, struct sched *s)
{
	const char *env[] = {h->env_url, env_ttl, NULL};
	sched_start_env(s, "127.0.0.1:0", NULL, env);
}

/* The cluster view of the scheduler at addr (HOST:PORT, or etcd://: the leader), with this
 * host's token; NULL when it does not answer. The caller deletes it. */
static cJSON *
view_of(const char *addr)
{
	char *json = NULL, err[512], *tok = sched_host_token();
	int rc = kvn_membership_fetch_stats(addr, tok, 5000, &json, err, sizeof(err));
	free(tok);
	cJSON *j = rc ? NULL : cJSON_Parse(json);
	free(json);
	return j;
}

/* name -> worker id from the leader's cluster view (found through etcd); -1: not a member. */
static int
worker_id_of(struct ha *h, const char *name)
{
	cJSON *j = view_of(h->url);
	int id = -1;
	const cJSON *m;
	cJSON_ArrayForEach(m, cJSON_GetObjectItem(j, "members"))
	{
		const cJSON *n = cJSON_GetObjectItem(m, "name"),
			    *st = cJSON_GetObjectItem(m, "state");
		if (cJSON_IsString(n) && !strcmp(n->valuestring, name) && cJSON_IsString(st) &&
		    !strcmp(st->valuestring, "alive"))
			id = cJSON_GetObjectItem(m, "worker_id")->valueint;
	}
	cJSON_Delete(j);
	return id;
}

/* The role one scheduler reports (asked directly, not through etcd). */
struct role_is {
	struct sched *s;
	const char *want;
};

static bool
role_is(void *arg)
{
	struct role_is *r = arg;
	cJSON *j = view_of(r->s->addr);
	const cJSON *role = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "ha"), "role");
	bool ok = cJSON_IsString(role) && !strcmp(role->valuestring, r->want);
	cJSON_Delete(j);
	return ok;
}

struct member_ctx {
	struct ha *h;
	const char *name;
};

static bool
is_member(void *arg)
{
	struct member_ctx *m = arg;
	return worker_id_of(m->h, m->name) >= 0;
}

struct get_ctx {
	struct cnode *n;
	const char *tag;
	unsigned i;
};

static bool
peer_get_works(void *arg)
{
	struct get_ctx *g = arg;
	return cnode_get_check(g->n, g->tag, g->i, VAL) == 1;
}

/* Keys of tag put on a now: reading them on n needs a lookup in the leader's directory (n has
 * never seen them, so no cached location answers for the scheduler). */
static void
fresh_keys_reach(struct ha *h, struct cnode *n, const char *tag, double since, const char *what)
{
	for (unsigned i = 0; i < 4; i++)
		cnode_put(&h->a, tag, i, VAL);
	struct get_ctx g = {n, tag, 3};
	cr_assert(proc_wait_for(peer_get_works, &g, DEADLINE),
		  "%s: a chunk put on node-a afterwards never reached %s", what, n->name);
	cr_log_info("%s: a chunk put on node-a is read by %s %.0f ms after", what, n->name,
		    now_ms() - since);
	for (unsigned i = 0; i < 3; i++)
		cr_assert_eq(cnode_get_check(n, tag, i, VAL), 1, "%s: %s chunk %u", what, tag, i);
}

static void
ha_up(struct ha *h)
{
	memset(h, 0, sizeof(*h));
	if (!etcd_server_available())
		cr_skip_test("no etcd binary on PATH (scripts/install-deps installs etcd-server)");
	cr_assert_eq(etcd_server_start(&h->es), 0, "etcd did not start");
	snprintf(h->url, sizeof(h->url), "etcd://%s/ha-test", h->es.endpoint);
	snprintf(h->env_url, sizeof(h->env_url), "KVNODE_SCHEDULER_URL=%s", h->url);
	kvn_sched_etcd_key("ha-test", "leader", h->leader_key, sizeof(h->leader_key));
	char err[512];
	struct kvn_etcd_opts eo = {.endpoints = h->es.endpoint, .timeout_ms = 2000};
	cr_assert_eq(kvn_etcd_open(&eo, &h->etcd, err, sizeof(err)), 0, "%s", err);
	/* s1 first, so that it leads */
	start_sched(h, &h->s1);
	struct leader_is l = {h, h->s1.addr};
	cr_assert(proc_wait_for(leader_is, &l, DEADLINE), "scheduler 1 never led");
	start_sched(h, &h->s2);
	cr_assert_eq(proc_mkdtemp("ha", h->dir, sizeof(h->dir)), 0);
	struct cnode_opts o = {.dir = h->dir, .sched = h->url, .no_promote = true};
	cnode_start(&h->a, "node-a", &o);
	cnode_start(&h->b, "node-b", &o);
	cnode_start(&h->c, "node-c", &o);
	const char *names[] = {"node-a", "node-b", "node-c"};
	for (int i = 0; i < 3; i++) {
		struct member_ctx m = {h, names[i]};
		cr_assert(proc_wait_for(is_member, &m, DEADLINE), "%s never joined", names[i]);
	}
}

static void
ha_down(struct ha *h)
{
	cnode_stop(&h->a);
	cnode_stop(&h->b);
	cnode_stop(&h->c);
	if (h->s1.dir[0])
		sched_stop(&h->s1);
	sched_stop(&h->s2);
	proc_rm_tree(h->dir);
	kvn_etcd_close(h->etcd);
	etcd_server_destroy(&h->es);
}

/* Peer gets by c of a's chunks, round and round, counting what they bring. */
struct loop {
	struct ha *h;
	atomic_bool stop;
	atomic_size_t hits, misses, wrong;
};

static void *
get_loop(void *arg)
{
	struct loop *lp = arg;
	for (unsigned i = 0; !atomic_load(&lp->stop); i = (i + 1) % NKEYS) {
		int r =
		    cnode_get_check(&lp->h->c, "ha", i, VAL); /* c's connection is this thread's */
		atomic_fetch_add(r == 1 ? &lp->hits : r == 0 ? &lp->misses : &lp->wrong, 1);
	}
	return NULL;
}

Test(scheduler_ha, a_standby_takes_over_a_killed_leader_and_the_cluster_survives_an_etcd_outage)
{
	struct ha h;
	ha_up(&h);
	int ids[3] = {worker_id_of(&h, "node-a"), worker_id_of(&h, "node-b"),
		      worker_id_of(&h, "node-c")};
	for (unsigned i = 0; i < NKEYS; i++)
		cnode_put(&h.a, "ha", i, VAL);
	struct get_ctx g = {&h.c, "ha", NKEYS - 1};
	cr_assert(proc_wait_for(peer_get_works, &g, DEADLINE), "node-c never read node-a's chunk");

	struct loop lp = {.h = &h};
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, get_loop, &lp), 0);
	usleep(300 * 1000);
	/* The leader dies without a word: its lease lapses after the TTL, the standby leads. */
	size_t hits_before = atomic_load(&lp.hits);
	double t0 = now_ms();
	proc_stop(&h.s1.p, SIGKILL, 10000);
	struct leader_is l = {&h, h.s2.addr};
	cr_assert(proc_wait_for(leader_is, &l, TTL_MS + DEADLINE), "the standby never led");
	double took = now_ms() - t0;
	cr_log_info("the standby leads %.0f ms after the leader was killed (lease TTL %d s: "
		    "within TTL + 1 s: %s)",
		    took, TTL_S, took <= TTL_MS + 1000 ? "yes" : "no");
	fresh_keys_reach(&h, &h.b, "ha-after-kill", t0, "after the kill");
	usleep(300 * 1000);
	atomic_store(&lp.stop, true);
	pthread_join(th, NULL);
	cr_assert_eq(atomic_load(&lp.wrong), 0, "%zu gets brought wrong bytes",
		     atomic_load(&lp.wrong));
	cr_assert_gt(atomic_load(&lp.hits), hits_before, "no peer get hit after the failover");
	cr_log_info("during the failover: %zu hits, %zu misses, 0 wrong", atomic_load(&lp.hits),
		    atomic_load(&lp.misses));
	const char *names[] = {"node-a", "node-b", "node-c"};
	for (int i = 0; i < 3; i++) {
		struct member_ctx m = {&h, names[i]};
		cr_assert(proc_wait_for(is_member, &m, DEADLINE), "%s never re-joined", names[i]);
		cr_assert_eq(worker_id_of(&h, names[i]), ids[i], "%s's worker id changed",
			     names[i]);
	}

	/* etcd down for twice the TTL: the leader steps down (it cannot keep its lease), gets
	 * that need a peer miss quickly; back up, a leader is elected and gets work again. */
	etcd_server_stop(&h.es, SIGKILL);
	double t1 = now_ms();
	struct role_is st = {&h.s2, "standby"};
	cr_assert(proc_wait_for(role_is, &st, TTL_MS + DEADLINE),
		  "the leader did not step down when etcd went away");
	cr_log_info("the leader stepped down %.0f ms into the etcd outage (lease TTL %d s)",
		    now_ms() - t1, TTL_S);
	cnode_put(&h.a, "ha-outage", 0, VAL);
	double g0 = now_ms();
	int r = cnode_get_check(&h.b, "ha-outage", 0, VAL);
	cr_assert_eq(r, 0, "a get that needs a peer, with no scheduler leading, answered %d", r);
	cr_log_info("a get that needs a peer %.0f ms into the etcd outage missed in %.0f ms",
		    g0 - t1, now_ms() - g0);
	while (now_ms() - t1 < 2 * TTL_MS)
		usleep(50 * 1000);
	cr_assert_eq(etcd_server_restart(&h.es), 0, "etcd did not come back");
	double t2 = now_ms();
	fresh_keys_reach(&h, &h.c, "ha-after-etcd", t2, "after etcd came back");
	for (int i = 0; i < 3; i++) {
		struct member_ctx m = {&h, names[i]};
		cr_assert(proc_wait_for(is_member, &m, DEADLINE), "%s never re-joined", names[i]);
		cr_assert_eq(worker_id_of(&h, names[i]), ids[i], "%s's worker id changed",
			     names[i]);
	}
	for (unsigned i = 0; i < NKEYS; i++)
		cr_assert_neq(cnode_get_check(&h.b, "ha", i, VAL), -1, "chunk %u is wrong", i);
	ha_down(&h);
}

/* A scheduler that cannot be told apart from any other (0.0.0.0) is refused with the key. */
Test(scheduler_ha, a_scheduler_on_a_wildcard_address_needs_scheduler_advertise)
{
	if (!etcd_server_available())
		cr_skip_test("no etcd binary on PATH (scripts/install-deps installs etcd-server)");
	struct etcd_server es = {0};
	cr_assert_eq(etcd_server_start(&es), 0, "etcd did not start");
	char dir[256], url[200], errf[300];
	cr_assert_eq(proc_mkdtemp("ha", dir, sizeof(dir)), 0);
	snprintf(url, sizeof(url), "KVNODE_SCHEDULER_URL=etcd://%s/wild", es.endpoint);
	snprintf(errf, sizeof(errf), "%s/err", dir);
	const char *env[] = {url, "KVNODE_CONFIG_FILE", "KVNODE_AUTH_TOKEN=wildcard-test", NULL};
	const char *argv[] = {KVNODE, "scheduler", "--listen", "0.0.0.0:0", NULL};
	int rc = proc_run(argv, &(struct proc_opts){.stderr_path = errf, .env = env}, DEADLINE);
	char *err = proc_read_file(errf, NULL);
	cr_assert_neq(rc, 0, "a scheduler on 0.0.0.0 started; stderr: %s", err ? err : "");
	cr_assert(err && strstr(err, "scheduler_advertise"), "stderr: %s", err ? err : "");
	free(err);
	proc_rm_tree(dir);
	etcd_server_destroy(&es);
}
