/* `kvnode doctor`: each check's decision from sysfs fixture trees (a real RDMA device cannot be
 * had here), the facts a process cannot fake (memlock, the kernel, CAP_IPC_LOCK) set in the
 * facts after they were read; and the command itself on this host and on a fixture. */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "node/cli/doctor.h"
#include "node/cluster/cluster.h"
#include "node/engine/config.h"
#include "rdma/sysfs.h"
#include "tests/helpers/proc.h"

static char root[256];
static struct kvn_config *cfg;
static struct kvn_doctor_facts facts;
static struct kvn_doctor_report rep;

static void
setup(void)
{
	cr_assert_eq(proc_mkdtemp("doctor", root, sizeof(root)), 0);
}

static void
teardown(void)
{
	kvn_config_free(cfg);
	cfg = NULL;
	proc_rm_tree(root);
}

TestSuite(doctor, .init = setup, .fini = teardown);

/* Writes text to root/rel, making the directories on the way. */
static void put_file(const char *text, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
put_file(const char *text, const char *fmt, ...)
{
	char rel[512], path[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(rel, sizeof(rel), fmt, ap);
	va_end(ap);
	snprintf(path, sizeof(path), "%s/%s", root, rel);
	for (char *s = path + strlen(root) + 1; (s = strchr(s, '/')); s++) {
		*s = '\0';
		mkdir(path, 0755);
		*s = '/';
	}
	cr_assert_eq(proc_write_file(path, text, strlen(text)), 0, "%s", path);
}

/* A RoCE port of dev on netdev with MTU mtu: link-local and 10.0.0.5 GIDs, each as v1 and v2
 * (the table a kernel builds for one IPv4 address). */
static void
roce_port_at(const char *dev, const char *state, const char *netdev, int mtu, const char *v4,
	     int numa)
{
	char mapped[64];
	snprintf(mapped, sizeof(mapped), "0000:0000:0000:0000:0000:ffff:%s", v4);
	const char *const gids[] = {"fe80:0000:0000:0000:5054:00ff:fe12:3456",
				    "fe80:0000:0000:0000:5054:00ff:fe12:3456", mapped, mapped};
	static const char *const types[] = {"IB/RoCE v1", "RoCE v2", "IB/RoCE v1", "RoCE v2"};
	put_file(state, "class/infiniband/%s/ports/1/state", dev);
	put_file(strstr(state, "ACTIVE") ? "5: LinkUp\n" : "3: Disabled\n",
		 "class/infiniband/%s/ports/1/phys_state", dev);
	put_file("Ethernet\n", "class/infiniband/%s/ports/1/link_layer", dev);
	put_file("100 Gb/sec (4X EDR)\n", "class/infiniband/%s/ports/1/rate", dev);
	char nn[16];
	snprintf(nn, sizeof(nn), "%d\n", numa);
	put_file(nn, "class/infiniband/%s/device/numa_node", dev);
	for (int i = 0; i < 4; i++) {
		put_file(gids[i], "class/infiniband/%s/ports/1/gids/%d", dev, i);
		put_file(types[i], "class/infiniband/%s/ports/1/gid_attrs/types/%d", dev, i);
		put_file(netdev, "class/infiniband/%s/ports/1/gid_attrs/ndevs/%d", dev, i);
	}
	/* an empty entry, as every table has past its last address */
	put_file("0000:0000:0000:0000:0000:0000:0000:0000\n", "class/infiniband/%s/ports/1/gids/4",
		 dev);
	char m[16];
	snprintf(m, sizeof(m), "%d\n", mtu);
	put_file(m, "class/net/%s/mtu", netdev);
}

static void
roce_port(const char *dev, const char *state, const char *netdev, int mtu)
{
	roce_port_at(dev, state, netdev, mtu, "0a00:0005", 0);
}

static void
ib_port(const char *dev, const char *state)
{
	put_file(state, "class/infiniband/%s/ports/1/state", dev);
	put_file("5: LinkUp\n", "class/infiniband/%s/ports/1/phys_state", dev);
	put_file("InfiniBand\n", "class/infiniband/%s/ports/1/link_layer", dev);
	put_file("fe80:0000:0000:0000:0002:c903:00f1:e2d1\n", "class/infiniband/%s/ports/1/gids/0",
		 dev);
}

/* Reads the facts of root for yaml (no file: defaults), as a host without privileges and
 * with a new kernel would have them, then decides. */
static void
decide(const char *yaml)
{
	kvn_config_free(cfg);
	char err[512];
	cr_assert_eq(kvn_config_parse(yaml, strlen(yaml), "test.yaml", &cfg, err, sizeof(err)), 0,
		     "%s", err);
	kvn_doctor_facts(cfg, root, &facts);
	facts.cap_ipc_lock = false;
	facts.memlock = UINT64_MAX;
	snprintf(facts.kernel, sizeof(facts.kernel), "6.1.0-test");
	facts.fork_unneeded = true;
	kvn_doctor_decide(cfg, &facts, &rep);
}

static const struct kvn_doctor_check *
check(const char *name)
{
	for (size_t i = 0; i < rep.n; i++)
		if (!strcmp(rep.c[i].name, name))
			return &rep.c[i];
	char all[2048] = "";
	for (size_t i = 0; i < rep.n; i++)
		strncat(all, rep.c[i].name, sizeof(all) - strlen(all) - 3), strcat(all, ", ");
	cr_assert_fail("no check %s (there are: %s)", name, all);
	return NULL;
}

static void
expect(const char *name, int status, const char *what, const char *fix)
{
	const struct kvn_doctor_check *c = check(name);
	cr_assert_eq(c->status, status, "%s: %s, want %s: %s (fix: %s)", name,
		     kvn_doctor_status_name(c->status), kvn_doctor_status_name(status), c->what,
		     c->fix);
	if (what)
		cr_assert(strstr(c->what, what), "%s: \"%s\" lacks \"%s\"", name, c->what, what);
	if (fix)
		cr_assert(strstr(c->fix, fix), "%s: fix \"%s\" lacks \"%s\"", name, c->fix, fix);
}

Test(doctor, no_rdma_device_fails_and_says_tcp_will_be_used)
{
	decide("local_cpu: true\n");
	expect("rdma-devices", KVN_DR_FAIL, "no RDMA device", "rdma link add rxe0");
	expect("transport", KVN_DR_OK, "auto picks tcp", NULL);
	cr_assert_eq(rep.status, KVN_DR_FAIL);
}

Test(doctor, an_active_roce_port_whose_v2_gid_is_the_listen_address_is_ok)
{
	roce_port("rxe0", "4: ACTIVE\n", "eth0", 9000);
	decide("listen: 10.0.0.5:0\n");
	expect("rdma-devices", KVN_DR_OK, "rxe0", NULL);
	expect("port rxe0/1", KVN_DR_OK, "ACTIVE, Ethernet, 100 Gb/sec (4X EDR), netdev eth0",
	       NULL);
	expect("gid rxe0/1", KVN_DR_OK, "GID index 3: RoCE v2, 10.0.0.5 on eth0", NULL);
	expect("mtu rxe0/1", KVN_DR_OK, "active 4096", NULL);
	if (facts.verbs_built)
		expect("transport", KVN_DR_OK, "auto picks verbs on rxe0 port 1", NULL);
	cr_assert_eq(facts.ports[0].numa_node, 0);
	cr_assert_eq(facts.ports[0].ngids, 4, "the empty entry is not a GID");
	cr_assert_eq(rep.status, KVN_DR_OK, "%s", rep.c[rep.n - 1].what);
}

Test(doctor, the_gid_check_names_the_entry_and_why)
{
	roce_port("rxe0", "4: ACTIVE\n", "eth0", 9000);
	decide("listen: 127.0.0.1:0\n");
	expect("gid rxe0/1", KVN_DR_WARN, "rdma_cm binds no address of rxe0",
	       "address of eth0 (for example 10.0.0.5:0)");
	decide("listen: 10.9.9.9:0\n");
	expect("gid rxe0/1", KVN_DR_FAIL,
	       "10.9.9.9 is not a RoCE v2 GID of rxe0 (they are: 1 "
	       "fe80::5054:ff:fe12:3456, 3 10.0.0.5)",
	       NULL);
	decide("gid_index: 2\n");
	expect("gid rxe0/1", KVN_DR_WARN, "gid_index 2 is IB/RoCE v1 (10.0.0.5)", "3 10.0.0.5");
	decide("gid_index: 4\n");
	expect("gid rxe0/1", KVN_DR_FAIL, "gid_index 4 is an empty entry", "RoCE v2 entry");
	decide("gid_index: 3\n");
	expect("gid rxe0/1", KVN_DR_OK, "gid_index 3: RoCE v2, 10.0.0.5 on eth0", NULL);
}

Test(doctor, a_listen_address_on_another_device_than_the_first_active_one_names_it)
{
	roce_port("rxe0", "4: ACTIVE\n", "eth0", 9000);
	put_file("4: ACTIVE\n", "class/infiniband/rxe1/ports/1/state");
	put_file("Ethernet\n", "class/infiniband/rxe1/ports/1/link_layer");
	put_file("0000:0000:0000:0000:0000:ffff:0a01:0001", "class/infiniband/rxe1/ports/1/gids/1");
	put_file("RoCE v2", "class/infiniband/rxe1/ports/1/gid_attrs/types/1");
	put_file("eth1", "class/infiniband/rxe1/ports/1/gid_attrs/ndevs/1");
	decide("listen: 10.1.0.1:0\n");
	expect("gid rxe0/1", KVN_DR_FAIL, "it is one of rxe1", "set rdma_device: rxe1");
	decide("listen: 10.1.0.1:0\nrdma_device: rxe1\n");
	expect("gid rxe1/1", KVN_DR_OK, "GID index 1: RoCE v2, 10.1.0.1 on eth1", NULL);
}

Test(doctor, a_netdev_mtu_of_1500_runs_roce_at_1024_and_says_how_to_get_4096)
{
	roce_port("rxe0", "4: ACTIVE\n", "eth0", 1500);
	decide("listen: 10.0.0.5:0\n");
	expect("mtu rxe0/1", KVN_DR_WARN, "active 1024 of 4096: eth0 has MTU 1500",
	       "MTU 9000 on eth0");
	cr_assert_eq(rep.status, KVN_DR_WARN);
	cr_assert_eq(kvn_roce_mtu(1500), 1024);
	cr_assert_eq(kvn_roce_mtu(9000), 4096);
	cr_assert_eq(kvn_roce_mtu(4200), 4096);
	cr_assert_eq(kvn_roce_mtu(4000), 2048);
	cr_assert_eq(kvn_roce_mtu(300), 0);
}

Test(doctor, a_peers_mtu_that_differs_from_this_hosts_is_a_warning)
{
	roce_port("rxe0", "4: ACTIVE\n", "eth0", 1500);
	decide("listen: 10.0.0.5:0\n");
	int own = kvn_doctor_own_mtu(cfg, &facts);
	if (facts.verbs_built)
		cr_assert_eq(own, 1024, "a netdev MTU of 1500 runs RoCE at 1024, not %d", own);
	char why[128];
	cr_assert_eq(kvn_doctor_mtu_match(1024, 4096, why, sizeof(why)), KVN_DR_WARN);
	cr_assert_str_eq(why, "; its MTU is 4096, this host's 1024: the connection runs at 1024");
	cr_assert_eq(kvn_doctor_mtu_match(4096, 4096, why, sizeof(why)), KVN_DR_OK);
	cr_assert_str_eq(why, "");
	/* tcp members publish none, and a tcp host has none: nothing to compare */
	cr_assert_eq(kvn_doctor_mtu_match(4096, 0, why, sizeof(why)), KVN_DR_OK);
	cr_assert_eq(kvn_doctor_mtu_match(0, 4096, why, sizeof(why)), KVN_DR_OK);
	decide("transport: tcp\n");
	cr_assert_eq(kvn_doctor_own_mtu(cfg, &facts), 0);
}

Test(doctor, a_memlock_limit_below_the_pool_fails_with_the_fix)
{
	roce_port("rxe0", "4: ACTIVE\n", "eth0", 9000);
	decide("listen: 10.0.0.5:0\nmax_local_cpu_size: 1\n");
	facts.memlock = 64ull << 20;
	kvn_doctor_decide(cfg, &facts, &rep);
	if (facts.verbs_built)
		expect("memlock", KVN_DR_FAIL,
		       "ulimit -l is 64 MiB, below the 1024 MiB pool (max_local_cpu_size)",
		       "LimitMEMLOCK=infinity");
	cr_assert_eq(rep.status, facts.verbs_built ? KVN_DR_FAIL : KVN_DR_WARN);
	/* with tcp it is only a warning: nothing is pinned until verbs is used */
	decide("transport: tcp\nmax_local_cpu_size: 1\n");
	facts.memlock = 64ull << 20;
	kvn_doctor_decide(cfg, &facts, &rep);
	expect("memlock", KVN_DR_WARN, "tcp registers nothing", "ulimit -l unlimited");
	facts.cap_ipc_lock = true;
	kvn_doctor_decide(cfg, &facts, &rep);
	expect("memlock", KVN_DR_OK, "CAP_IPC_LOCK", NULL);
}

Test(doctor, ports_that_are_down_warn_and_the_configured_one_fails)
{
	roce_port("rxe0", "1: DOWN\n", "eth0", 9000);
	ib_port("mlx5_0", "2: INIT\n");
	decide("local_cpu: true\n");
	expect("port rxe0/1", KVN_DR_WARN, "DOWN (physical state Disabled)", "ip link set eth0 up");
	expect("port mlx5_0/1", KVN_DR_WARN, "INIT", "subnet manager");
	expect("transport", KVN_DR_OK, "auto picks tcp", NULL);
	decide("rdma_device: rxe0\n");
	expect("port rxe0/1", KVN_DR_FAIL, "DOWN", NULL);
	decide("rdma_device: mlx5_9\n");
	expect("rdma-devices", KVN_DR_FAIL, "rdma_device mlx5_9 is not on this host (mlx5_0, rxe0)",
	       "one of mlx5_0, rxe0");
	decide("transport: verbs\n");
	expect("transport", KVN_DR_FAIL, "transport: verbs, but", "transport: auto or tcp");
}

Test(doctor, an_old_kernel_without_rdmav_fork_safe_warns)
{
	decide("local_cpu: true\n");
	facts.fork_unneeded = false;
	snprintf(facts.kernel, sizeof(facts.kernel), "5.10.0-old");
	facts.fork_safe_env = false;
	kvn_doctor_decide(cfg, &facts, &rep);
	expect("fork", KVN_DR_WARN, "5.10.0-old is older than 5.13", "RDMAV_FORK_SAFE=1");
	facts.fork_safe_env = true;
	kvn_doctor_decide(cfg, &facts, &rep);
	expect("fork", KVN_DR_OK, "RDMAV_FORK_SAFE set", NULL);
}

Test(doctor, gpu_checks_follow_the_gpu_mode_and_what_the_driver_has)
{
	decide("gpu: true\n");
	if (facts.gpu_rc == 0)
		cr_skip_test(
		    "this host has a usable GPU: the no-driver decision needs one without");
	expect("gpu", KVN_DR_FAIL, "kvnode serve refuses to start", "install the NVIDIA driver");
	decide("gpu: auto\n");
	expect("gpu", KVN_DR_OK, "auto, no GPU used", NULL);
	/* with a driver (facts as one would give them): peermem, dma-buf, neither */
	facts.gpu_rc = 0;
	facts.ngpus = 2;
	facts.gpu_dmabuf = false;
	kvn_doctor_decide(cfg, &facts, &rep);
	expect("gpu", KVN_DR_OK, "2 CUDA devices", NULL);
	expect("gpudirect", KVN_DR_WARN, "no GPUDirect", "modprobe nvidia-peermem");
	facts.gpu_dmabuf = true;
	kvn_doctor_decide(cfg, &facts, &rep);
	expect("gpudirect", KVN_DR_OK, "exports dma-buf", NULL);
	put_file("", "module/nvidia_peermem/refcnt");
	kvn_devreg_read_sysfs(root, &facts.peermem);
	kvn_doctor_decide(cfg, &facts, &rep);
	expect("gpudirect", KVN_DR_OK, "nvidia-peermem is loaded", NULL);
	/* the start probe's answers, one line per GPU: staging is news on verbs, not on tcp */
	facts.ngpu_reg = 3;
	facts.gpu_reg_rc[0] = 0, facts.gpu_reg_method[0] = KVN_REG_STAGING;
	snprintf(facts.gpu_reg_why[0], sizeof(facts.gpu_reg_why[0]), "verbs");
	facts.gpu_reg_rc[1] = 0, facts.gpu_reg_method[1] = KVN_REG_STAGING;
	snprintf(facts.gpu_reg_why[1], sizeof(facts.gpu_reg_why[1]), "tcp");
	facts.gpu_reg_rc[2] = -EOPNOTSUPP, facts.gpu_reg_method[2] = KVN_REG_NONE;
	snprintf(facts.gpu_reg_why[2], sizeof(facts.gpu_reg_why[2]), "dma-buf passed over: x");
	kvn_doctor_decide(cfg, &facts, &rep);
	expect("gpu 0 memory", KVN_DR_WARN, "registers with verbs by host staging", "no GPUDirect");
	expect("gpu 1 memory", KVN_DR_OK, "registers with tcp by host staging", NULL);
	expect("gpu 2 memory", KVN_DR_WARN, "does not register: dma-buf passed over: x", NULL);
}

/* ------------------------------------------------------------------------------------------
 * The command
 * ------------------------------------------------------------------------------------------ */

static int
run_doctor(const char *const *env, const char *out)
{
	const char *argv[] = {KVN_BINARY_DIR "/kvnode", "doctor", "--json", NULL};
	struct proc_opts po = {.stdout_path = out, .env = env};
	return proc_run(argv, &po, 60000);
}

static cJSON *
read_json(const char *path)
{
	size_t len;
	char *text = proc_read_file(path, &len);
	cr_assert_not_null(text, "no output in %s", path);
	cJSON *j = cJSON_Parse(text);
	cr_assert_not_null(j, "not JSON: %s", text);
	free(text);
	return j;
}

Test(doctor, the_command_exits_2_on_this_host_without_an_rdma_device)
{
	struct kvn_sysfs_port p[4];
	if (kvn_sysfs_ports("/sys", p, 4) > 0)
		cr_skip_test("this host has an RDMA device: the no-device answer is tested on "
			     "hosts without one (and on fixtures above)");
	char out[300];
	snprintf(out, sizeof(out), "%s/out.json", root);
	const char *env[] = {"KVNODE_SYSFS", NULL}; /* unset: the real /sys */
	cr_assert_eq(run_doctor(env, out), 2);
	cJSON *j = read_json(out);
	cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(j, "status")), "fail");
	char *text = cJSON_PrintUnformatted(j);
	cr_assert(strstr(text, "no RDMA device") && strstr(text, "kvnode will use tcp"), "%s",
		  text);
	free(text);
	cJSON_Delete(j);
}

Test(doctor, the_command_reads_a_fixture_tree_and_exits_with_its_status)
{
	roce_port("rxe0", "4: ACTIVE\n", "eth0", 1500);
	char out[300], env0[300];
	snprintf(out, sizeof(out), "%s/out.json", root);
	snprintf(env0, sizeof(env0), "KVNODE_SYSFS=%s", root);
	const char *env[] = {env0, "KVNODE_LISTEN=10.0.0.5:0", "KVNODE_MAX_LOCAL_CPU_SIZE=0.01",
			     NULL};
	int rc = run_doctor(env, out);
	cJSON *j = read_json(out);
	const char *status = cJSON_GetStringValue(cJSON_GetObjectItem(j, "status"));
	cr_assert_eq(rc,
		     !strcmp(status, "fail")   ? 2
		     : !strcmp(status, "warn") ? 1
					       : 0,
		     "exit %d for status %s", rc, status);
	cr_assert(rc >= 1, "the MTU of 1500 is at least a warning");
	bool mtu = false;
	cJSON *c;
	cJSON_ArrayForEach(c, cJSON_GetObjectItem(j, "checks"))
	{
		const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(c, "check"));
		if (name && !strcmp(name, "mtu rxe0/1"))
			mtu =
			    !strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(c, "status")), "warn");
	}
	cr_assert(mtu, "no mtu warning in the command's output");
	cJSON_Delete(j);
}

/* ---------------------------------------------------------------------------------------------
 * Which rails a node opens (node/cluster/rails_plan.c), from the same fixture trees
 * ------------------------------------------------------------------------------------------- */

static int
plan(const char *yaml, bool verbs, struct kvn_rails_plan *pl, char *err, size_t errlen)
{
	kvn_config_free(cfg);
	char perr[512];
	cr_assert_eq(kvn_config_parse(yaml, strlen(yaml), "test.yaml", &cfg, perr, sizeof(perr)), 0,
		     "%s", perr);
	return kvn_cluster_rails_plan(cfg, verbs, root, pl, err, errlen);
}

static void
two_roce_devices(void)
{
	roce_port_at("mlx5_0", "4: ACTIVE\n", "eth0", 9000, "0a00:0005", 0);
	roce_port_at("mlx5_1", "4: ACTIVE\n", "eth1", 9000, "0a00:0105", 1);
}

Test(doctor, rails_from_rdma_devices_listen_on_each_devices_own_address)
{
	two_roce_devices();
	struct kvn_rails_plan pl;
	char err[512] = "";
	cr_assert_eq(plan("rdma_devices: [mlx5_0, mlx5_1]\nlisten: 0.0.0.0:7000\n", true, &pl, err,
			  sizeof(err)),
		     0, "%s", err);
	cr_assert_eq(pl.n, 2);
	cr_assert_str_eq(pl.device[0], "mlx5_0");
	cr_assert_str_eq(pl.listen[0], "10.0.0.5:7000");
	cr_assert_str_eq(pl.device[1], "mlx5_1");
	cr_assert_str_eq(pl.listen[1], "10.0.1.5:7000");
	cr_assert_eq(pl.numa[0], 0);
	cr_assert_eq(pl.numa[1], 1, "the rail knows its device's NUMA node");
}

Test(doctor, rails_auto_takes_every_device_with_an_active_port)
{
	two_roce_devices();
	roce_port_at("mlx5_2", "1: DOWN\n", "eth2", 9000, "0a00:0205", 1);
	struct kvn_rails_plan pl;
	char err[512] = "";
	cr_assert_eq(plan("rdma_devices: auto\n", true, &pl, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(pl.n, 2, "mlx5_2's port is down");
	cr_assert_str_eq(pl.listen[1], "10.0.1.5:0", "listen's port (the default's 0)");
}

Test(doctor, rails_refuse_what_cannot_work_and_name_the_key)
{
	two_roce_devices();
	ib_port("mlx5_3", "4: ACTIVE\n"); /* no IPv4 GID, no IPoIB netdev in the fixture */
	struct kvn_rails_plan pl;
	char err[512];
	static const struct {
		const char *yaml;
		bool verbs;
		int rc;
		const char *says;
	} bad[] = {
	    {"rdma_devices: [mlx5_0, mlx5_1]\ntransport: tcp\n", false, -EINVAL, "rdma_devices"},
	    {"rdma_devices: [mlx5_0]\nrdma_device: mlx5_0\n", true, -EINVAL, "not both"},
	    {"rdma_devices: [mlx5_0, mlx5_9]\n", true, -ENODEV, "mlx5_9"},
	    {"rdma_devices: [mlx5_0, mlx5_0]\n", true, -EINVAL, "twice"},
	    {"rdma_devices: [mlx5_3]\n", true, -EADDRNOTAVAIL, "mlx5_3"},
	    {"rdma_devices: [mlx5_0]\nlisten: \"10.0.0.5:1,10.0.1.5:1\"\n", true, -EINVAL,
	     "port only"},
	    {"listen: \"10.0.0.5:7000,10.0.9.9:7000\"\n", true, -EADDRNOTAVAIL, "10.0.9.9"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = 0;
		int rc = plan(bad[i].yaml, bad[i].verbs, &pl, err, sizeof(err));
		cr_assert_eq(rc, bad[i].rc, "%s: got %d (%s)", bad[i].yaml, rc, err);
		cr_assert(strstr(err, bad[i].says), "%s: \"%s\" does not say %s", bad[i].yaml, err,
			  bad[i].says);
	}
}

Test(doctor, a_listen_list_is_one_rail_an_address)
{
	two_roce_devices();
	struct kvn_rails_plan pl;
	char err[512] = "";
	cr_assert_eq(plan("listen: \"10.0.1.5:7001,10.0.0.5:7000\"\n", true, &pl, err, sizeof(err)),
		     0, "%s", err);
	cr_assert_eq(pl.n, 2);
	cr_assert_str_eq(pl.device[0], "mlx5_1", "verbs: the device with that address");
	cr_assert_str_eq(pl.listen[0], "10.0.1.5:7001");
	cr_assert_str_eq(pl.device[1], "mlx5_0");
	/* tcp: no devices, the addresses as given */
	cr_assert_eq(plan("listen: \"127.0.0.1:0,127.0.0.1:0\"\ntransport: tcp\n", false, &pl, err,
			  sizeof(err)),
		     0, "%s", err);
	cr_assert_eq(pl.n, 2);
	cr_assert_str_eq(pl.device[1], "");
	/* neither: today's one rail */
	cr_assert_eq(
	    plan("rdma_device: mlx5_1\nlisten: 10.0.1.5:7000\n", true, &pl, err, sizeof(err)), 0,
	    "%s", err);
	cr_assert_eq(pl.n, 1);
	cr_assert_str_eq(pl.device[0], "mlx5_1");
}

/* The doctor's rails line: the check of issue 16's rails, from the same plan as the start. */
static const struct kvn_doctor_check *
rails_line(void)
{
	for (size_t i = 0; i < rep.n; i++)
		if (!strcmp(rep.c[i].name, "rails"))
			return &rep.c[i];
	return NULL;
}

Test(doctor, doctor_shows_the_rails_or_why_a_node_would_refuse_them)
{
	two_roce_devices();
	decide("rdma_devices: [mlx5_0, mlx5_1]\nlisten: 0.0.0.0:7000\n");
	const struct kvn_doctor_check *c = rails_line();
	cr_assert_not_null(c, "a rails line");
	cr_assert_eq(c->status, KVN_DR_OK, "%s", c->what);
	cr_assert(strstr(c->what, "mlx5_1 on 10.0.1.5:7000 (NUMA 1)"), "%s", c->what);
	decide("rdma_devices: [mlx5_0, mlx5_7]\n");
	c = rails_line();
	cr_assert_not_null(c);
	cr_assert_eq(c->status, KVN_DR_FAIL);
	cr_assert(strstr(c->what, "mlx5_7"), "%s", c->what);
}

/* A function of the fixture's PCI tree (devices/TREE) and link (under root) pointing at it. */
static void
pci_fn(const char *tree, const char *link)
{
	char parent[512], target[1024], at[1024];
	put_file("", "devices/%s/.keep", tree); /* makes the directories on the way */
	snprintf(parent, sizeof(parent), "%s", link);
	*strrchr(parent, '/') = 0;
	put_file("", "%s/.keep", parent);
	snprintf(target, sizeof(target), "%s/devices/%s", root, tree);
	snprintf(at, sizeof(at), "%s/%s", root, link);
	cr_assert_eq(symlink(target, at), 0, "symlink %s", at);
}

Test(doctor, each_gpu_is_told_its_nearest_nic_by_pcie_topology)
{
	/* mlx5_0 under the GPU's switch port, mlx5_1 on the other socket's root complex */
	pci_fn("pci0000:16/0000:16:02.0/0000:17:00.0", "bus/pci/devices/0000:17:00.0");
	pci_fn("pci0000:16/0000:16:02.0/0000:18:00.0", "class/infiniband/mlx5_0/device");
	pci_fn("pci0000:80/0000:80:02.0/0000:81:00.0", "class/infiniband/mlx5_1/device");
	pci_fn("pci0000:80/0000:80:03.0/0000:83:00.0", "bus/pci/devices/0000:83:00.0");
	roce_port_at("mlx5_0", "4: ACTIVE\n", "eth0", 9000, "0a00:0005", 0);
	roce_port_at("mlx5_1", "4: ACTIVE\n", "eth1", 9000, "0a00:0105", 1);
	decide("gpu: auto\n");
	facts.gpu_rc = 0;
	facts.ngpus = facts.ngpu_reg = 3;
	const char *bdf[] = {"0000:17:00.0", "0000:83:00.0", "0000:99:00.0"};
	for (int i = 0; i < 3; i++) {
		snprintf(facts.gpu_bdf[i], sizeof(facts.gpu_bdf[i]), "%s", bdf[i]);
		kvn_sysfs_pci_path(root, bdf[i], facts.gpu_pci[i], sizeof(facts.gpu_pci[i]));
	}
	cr_assert_str_eq(facts.gpu_pci[0], "pci0000:16/0000:16:02.0/0000:17:00.0");
	cr_assert_str_eq(facts.gpu_pci[2], "", "a function sysfs lacks has no place");
	kvn_doctor_decide(cfg, &facts, &rep);
	expect("gpu 0 nic", KVN_DR_OK, "nearest mlx5_0: 2 PCIe hops (under one switch port)", NULL);
	expect("gpu 1 nic", KVN_DR_OK, "nearest mlx5_1: 4 PCIe hops", NULL);
	/* mlx5_1 down: GPU 1 has no NIC on its root complex */
	roce_port_at("mlx5_1", "1: DOWN\n", "eth1", 9000, "0a00:0105", 1);
	facts.nports = kvn_sysfs_ports(root, facts.ports, KVN_DOCTOR_PORTS_MAX);
	kvn_doctor_decide(cfg, &facts, &rep);
	expect("gpu 1 nic", KVN_DR_WARN, "crosses the CPU interconnect", "lspci -t");
	for (size_t i = 0; i < rep.n; i++)
		cr_assert_str_neq(rep.c[i].name, "gpu 2 nic", "GPU 2's place is unknown: no line");
}
