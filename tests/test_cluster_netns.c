/* The cluster test once more with distinct addresses: the scheduler and each node in a network
 * namespace of its own (created here), joined by veth pairs to a bridge in a hub namespace, on
 * 10.77.0.0/24 — addresses that exist only inside those namespaces. Skipped with a message
 * where namespaces cannot be made (not root, no CAP_NET_ADMIN, no `ip`). */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/helpers/cluster_env.h"

#define VAL 65536
#define NNS 5 /* hub, scheduler, three nodes */

static char ns[NNS][32];
static bool made[NNS];

static int
ip(const char *const argv[])
{
	return proc_run(argv, NULL, 20000);
}

static void
netns_down(void)
{
	for (int i = NNS - 1; i >= 0; i--)
		if (made[i]) {
			const char *del[] = {"/usr/sbin/ip", "netns", "del", ns[i], NULL};
			ip(del);
			made[i] = false;
		}
}

/* Namespace i (1..) with 10.77.0.i on eth0, its veth peer on the hub's bridge. */
static bool
netns_member(int i)
{
	char addr[32], peer[16];
	snprintf(addr, sizeof(addr), "10.77.0.%d/24", i);
	snprintf(peer, sizeof(peer), "h%d", i);
	const char *add[] = {"/usr/sbin/ip", "netns", "add", ns[i], NULL};
	if (ip(add))
		return false;
	made[i] = true;
	const char *const steps[][12] = {
	    {"/usr/sbin/ip", "-n", ns[i], "link", "set", "lo", "up", NULL},
	    {"/usr/sbin/ip", "-n", ns[i], "link", "add", "eth0", "type", "veth", "peer", "name",
	     peer, NULL},
	    {"/usr/sbin/ip", "-n", ns[i], "link", "set", peer, "netns", ns[0], NULL},
	    {"/usr/sbin/ip", "-n", ns[0], "link", "set", peer, "master", "br0", NULL},
	    {"/usr/sbin/ip", "-n", ns[0], "link", "set", peer, "up", NULL},
	    {"/usr/sbin/ip", "-n", ns[i], "addr", "add", addr, "dev", "eth0", NULL},
	    {"/usr/sbin/ip", "-n", ns[i], "link", "set", "eth0", "up", NULL},
	};
	for (size_t s = 0; s < sizeof(steps) / sizeof(steps[0]); s++)
		if (ip(steps[s]))
			return false;
	return true;
}

static const char *
netns_up(void)
{
	if (access("/usr/sbin/ip", X_OK))
		return "no /usr/sbin/ip (iproute2)";
	for (int i = 0; i < NNS; i++)
		snprintf(ns[i], sizeof(ns[i]), "kvn%d-%d", (int)getpid(), i);
	const char *add[] = {"/usr/sbin/ip", "netns", "add", ns[0], NULL};
	if (ip(add))
		return "`ip netns add` failed (needs root or CAP_NET_ADMIN and CAP_SYS_ADMIN)";
	made[0] = true;
	const char *br[] = {"/usr/sbin/ip", "-n",   ns[0],    "link", "add",
			    "br0",	    "type", "bridge", NULL};
	const char *brup[] = {"/usr/sbin/ip", "-n", ns[0], "link", "set", "br0", "up", NULL};
	if (ip(br) || ip(brup))
		return "cannot make a bridge in the hub namespace";
	for (int i = 1; i < NNS; i++)
		if (!netns_member(i))
			return "cannot make a veth pair between namespaces";
	return NULL;
}

static bool
sched_up(void *path)
{
	char *text = proc_read_file(path, NULL);
	bool ok = text && strstr(text, "scheduler on ");
	free(text);
	return ok;
}

/* A failed assertion skips the cleanup above: never leave namespaces behind. */
static void
fini(void)
{
	netns_down();
}

TestSuite(cluster_netns, .fini = fini);

Test(cluster_netns, nodes_in_their_own_namespaces_share_chunks_over_veth, .timeout = 240)
{
	const char *why = netns_up();
	if (why) {
		netns_down();
		cr_skip_test("network namespaces unavailable here: %s", why);
	}
	char dir[256], out[300], err[300];
	cr_assert_eq(proc_mkdtemp("cluster-netns", dir, sizeof(dir)), 0);
	snprintf(out, sizeof(out), "%s/sched.out", dir);
	snprintf(err, sizeof(err), "%s/sched.err", dir);
	struct proc sched = {0};
	const char *sargv[] = {"/usr/sbin/ip", "netns",	   "exec",	     ns[1], KVNODE,
			       "scheduler",    "--listen", "10.77.0.1:7470", NULL};
	/* Listeners on 10.77.0.x are not loopback: the cluster needs a configured token. */
	const char *senv[] = {"KVNODE_CONFIG_FILE", "KVNODE_HEARTBEAT_MS=100",
			      "KVNODE_AUTH_TOKEN=netns-secret", NULL};
	struct proc_opts po = {.stdout_path = out, .stderr_path = err, .env = senv};
	cr_assert_eq(proc_spawn(&sched, sargv, &po), 0);
	cr_assert(proc_wait_for(sched_up, out, DEADLINE), "scheduler in %s", ns[1]);

	struct cnode n[3];
	for (int i = 0; i < 3; i++) {
		char listen[32], name[16];
		snprintf(listen, sizeof(listen), "10.77.0.%d:0", i + 2);
		snprintf(name, sizeof(name), "node-%c", 'a' + i);
		const char *wrap[] = {"/usr/sbin/ip", "netns", "exec", ns[i + 2], NULL};
		struct cnode_opts o = {.dir = dir,
				       .sched = "10.77.0.1:7470",
				       .listen = listen,
				       .token = "netns-secret",
				       .no_promote = true,
				       .wrap = wrap};
		cnode_start(&n[i], name, &o);
		char *text = proc_read_file(n[i].out, NULL);
		cr_assert(text && strstr(text, "data on 10.77.0."), "node %s: %s", name, text);
		free(text);
	}
	/* put on a, get on c: the READ crosses two veth pairs and the bridge */
	cnode_put(&n[0], "n", 1, VAL);
	int got = 0;
	for (int t = 0; t < DEADLINE / 20 && (got = cnode_get_check(&n[2], "n", 1, VAL)) == 0; t++)
		sched_sleep_ms(20);
	cr_assert_eq(got, 1, "node-c reads node-a's chunk across namespaces, byte for byte");
	cr_assert_geq(cnode_tier_stat(&n[2], "peer", "hits"), 1);

	/* b dies: its chunk is no longer returned; a and c keep working */
	cnode_put(&n[1], "n", 2, VAL);
	for (int t = 0; t < DEADLINE / 20 && (got = cnode_get_check(&n[2], "n", 2, VAL)) == 0; t++)
		sched_sleep_ms(20);
	cr_assert_eq(got, 1, "node-c reads node-b's chunk");
	cnode_kill(&n[1]);
	for (int t = 0; t < DEADLINE / 20 && (got = cnode_get_check(&n[2], "n", 2, VAL)) != 0; t++)
		sched_sleep_ms(20);
	cr_assert_eq(got, 0, "node-b's chunk is gone with it");
	cnode_put(&n[0], "n", 3, VAL);
	for (int t = 0; t < DEADLINE / 20 && (got = cnode_get_check(&n[2], "n", 3, VAL)) == 0; t++)
		sched_sleep_ms(20);
	cr_assert_eq(got, 1, "node-a and node-c keep working");

	cnode_stop(&n[0]);
	cnode_stop(&n[2]);
	proc_stop(&sched, SIGTERM, 10000);
	netns_down();
	proc_rm_tree(dir);
}
