/* `kvnode doctor`: the facts (kvn_doctor_facts), the checks decided from them alone
 * (kvn_doctor_decide), and their report (docs/doctor.md). */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/utsname.h>

#include "core/clock.h"
#include "core/netaddr.h"
#include "gpu/gpu.h"
#include "node/cli/doctor.h"
#include "node/cluster/cluster.h"
#include "node/cluster/membership.h"
#include "node/engine/config.h"

#define MIB (1024.0 * 1024.0)

/* ------------------------------------------------------------------------------------------
 * Facts
 * ------------------------------------------------------------------------------------------ */

/* Bit 14 of CapEff in /proc/self/status: CAP_IPC_LOCK, which lifts RLIMIT_MEMLOCK. */
static bool
have_cap_ipc_lock(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	unsigned long long cap = 0;
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "CapEff: %llx", &cap) == 1)
			break;
	if (f)
		fclose(f);
	return cap & (1ull << 14);
}

static uint64_t
read_u64(const char *root, const char *rel)
{
	char path[600];
	snprintf(path, sizeof(path), "%s%s", root, rel);
	FILE *f = fopen(path, "r");
	unsigned long long v = 0;
	if (f) {
		if (fscanf(f, "%llu", &v) != 1)
			v = 0;
		fclose(f);
	}
	return v;
}

/* Active and maximum MTU of each port from the device itself (not in sysfs). */
static void
query_mtus(struct kvn_doctor_facts *f)
{
	for (int i = 0; i < f->nports; i++)
		kvn_rdma_port_mtu(f->ports[i].dev, f->ports[i].port, &f->active_mtu[i],
				  &f->max_mtu[i]);
}

#define PEER_TIMEOUT_MS 5000

/* The transport the node would open for cfg (its transport, rdma_device, gid_index and
 * auth_token), with doctor's timeout. *ops is NULL when the name is not one; 0 or -errno
 * with err set. */
static int
open_transport(const struct kvn_config *cfg, const struct kvn_transport_ops **ops,
	       struct kvn_transport **tp, char *err, size_t errlen)
{
	struct kvn_transport_cfg tcfg = {KVN_TRANSPORT_CFG_INIT, .rdma_device = cfg->rdma_device,
					 .gid_index = cfg->gid_index, .auth_token = cfg->auth_token,
					 .timeout_ms = PEER_TIMEOUT_MS};
	*tp = NULL;
	*ops = kvn_transport_by_name(cfg->transport ? cfg->transport : "auto", &tcfg, err, errlen);
	return !*ops ? -EINVAL : (*ops)->open(&tcfg, tp, err, errlen);
}

/* The registration ladder on each GPU, with the transport the node would open: what kvnode
 * stat shows after a start, found without starting one. */
/* GPU i's PCI function (CUDA writes its hex in upper case, sysfs in lower) and its place. */
static void
gpu_place(struct kvn_doctor_facts *f, int i, const char *bdf)
{
	snprintf(f->gpu_bdf[i], sizeof(f->gpu_bdf[i]), "%s", bdf);
	for (char *c = f->gpu_bdf[i]; *c; c++)
		*c = (char)tolower((unsigned char)*c);
	kvn_sysfs_pci_path(f->sysfs, f->gpu_bdf[i], f->gpu_pci[i], sizeof(f->gpu_pci[i]));
}

static void
probe_gpus(const struct kvn_config *cfg, struct kvn_gpu *gpu, struct kvn_doctor_facts *f)
{
	char err[512];
	const struct kvn_transport_ops *ops;
	struct kvn_transport *tp;
	int rc = open_transport(cfg, &ops, &tp, err, sizeof(err));
	if (rc == 0 && (!KVN_ABI_HAS(ops, reg_dev) || !ops->reg_dev)) {
		rc = -EOPNOTSUPP;
		snprintf(err, sizeof(err), "the %s transport registers no device memory",
			 ops->name);
	}
	f->ngpu_reg = f->ngpus < 8 ? f->ngpus : 8;
	for (int i = 0; i < f->ngpu_reg; i++) {
		struct kvn_gpu_info in;
		struct kvn_reg_report rep = {KVN_REG_REPORT_INIT};
		char why[512];
		f->gpu_reg_method[i] = KVN_REG_NONE;
		f->gpu_reg_rc[i] = rc ? rc : kvn_gpu_device_info(gpu, i, &in, why, sizeof(why));
		if (f->gpu_reg_rc[i] == 0) {
			gpu_place(f, i, in.pci_bus_id);
			f->gpu_reg_rc[i] =
			    kvn_cluster_gpu_probe(ops, tp, gpu, &in, &rep, why, sizeof(why));
		}
		if (f->gpu_reg_rc[i] == 0)
			snprintf(why, sizeof(why), "%s", ops->name);
		else if (rc)
			snprintf(why, sizeof(why), "%s", err);
		f->gpu_reg_method[i] = rep.method;
		snprintf(f->gpu_reg_why[i], sizeof(f->gpu_reg_why[i]), "%.399s", why);
	}
	if (tp)
		ops->close(tp);
}

void
kvn_doctor_facts(const struct kvn_config *cfg, const char *root, struct kvn_doctor_facts *f)
{
	memset(f, 0, sizeof(*f));
	f->sysfs = kvn_sysfs_root(root);
	f->nports = kvn_sysfs_ports(f->sysfs, f->ports, KVN_DOCTOR_PORTS_MAX);
	f->verbs_built = KVN_HAVE_VERBS;
	if (f->nports > 0 && !strcmp(f->sysfs, "/sys"))
		query_mtus(f);
	struct rlimit rl;
	f->memlock = getrlimit(RLIMIT_MEMLOCK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
			 ? (uint64_t)rl.rlim_cur
			 : UINT64_MAX;
	f->cap_ipc_lock = have_cap_ipc_lock();
	f->hugepages_free =
	    read_u64(f->sysfs, "/kernel/mm/hugepages/hugepages-2048kB/free_hugepages");
	struct utsname u;
	if (uname(&u) == 0)
		snprintf(f->kernel, sizeof(f->kernel), "%.64s", u.release);
	int maj = 0, min = 0;
	sscanf(f->kernel, "%d.%d", &maj, &min);
	f->fork_unneeded = maj > 5 || (maj == 5 && min >= 13);
	f->fork_safe_env = getenv("RDMAV_FORK_SAFE") || getenv("IBV_FORK_SAFE");
	kvn_devreg_read_sysfs(f->sysfs, &f->peermem);
	if (kvn_config_gpu_mode(cfg) != KVN_GPU_OFF) {
		struct kvn_gpu *gpu = NULL;
		f->gpu_rc = kvn_gpu_open(&gpu, f->gpu_why, sizeof(f->gpu_why));
		if (f->gpu_rc == 0) {
			f->ngpus = kvn_gpu_device_count(gpu);
			f->gpu_dmabuf = kvn_gpu_has_dmabuf(gpu);
			probe_gpus(cfg, gpu, f);
			kvn_gpu_close(gpu);
		}
	}
}

/* ------------------------------------------------------------------------------------------
 * Checks
 * ------------------------------------------------------------------------------------------ */

static struct kvn_doctor_check *add(struct kvn_doctor_report *r, int status, const char *name,
				    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static struct kvn_doctor_check *
add(struct kvn_doctor_report *r, int status, const char *name, const char *fmt, ...)
{
	static struct kvn_doctor_check spare; /* past the last: dropped, never written out */
	struct kvn_doctor_check *c = r->n < KVN_DOCTOR_CHECKS_MAX ? &r->c[r->n++] : &spare;
	memset(c, 0, sizeof(*c));
	c->status = status;
	snprintf(c->name, sizeof(c->name), "%s", name);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->what, sizeof(c->what), fmt, ap);
	va_end(ap);
	if (status > r->status)
		r->status = status;
	return c;
}

static void fix(struct kvn_doctor_check *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
fix(struct kvn_doctor_check *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->fix, sizeof(c->fix), fmt, ap);
	va_end(ap);
}

static bool
is_roce(const struct kvn_sysfs_port *p)
{
	return !strcmp(p->link_layer, "Ethernet");
}

/* The port the verbs transport opens; -1 when none. */
static int
chosen_port(const struct kvn_config *cfg, const struct kvn_doctor_facts *f)
{
	return kvn_sysfs_pick_port(f->ports, f->nports, cfg->rdma_device);
}

static void
check_devices(const struct kvn_config *cfg, const struct kvn_doctor_facts *f,
	      struct kvn_doctor_report *r)
{
	if (f->nports < 0) {
		struct kvn_doctor_check *c =
		    add(r, KVN_DR_FAIL, "rdma-devices", "cannot read %s/class/infiniband: %s",
			f->sysfs, strerror(-f->nports));
		fix(c, "run doctor as a user that can read sysfs");
		return;
	}
	if (f->nports == 0) {
		struct kvn_doctor_check *c =
		    add(r, KVN_DR_FAIL, "rdma-devices",
			"no RDMA device (nothing under %s/class/infiniband): kvnode will use tcp",
			f->sysfs);
		fix(c, "load the NIC's RDMA driver (mlx5_ib, irdma, bnxt_re ...; rdma-core's "
		       "ibv_devices lists what it finds), or for Soft-RoCE without such a NIC: "
		       "rdma link add rxe0 type rxe netdev eth0");
		return;
	}
	char list[300] = "";
	size_t len = 0;
	for (int i = 0; i < f->nports; i++)
		if (i == 0 || strcmp(f->ports[i].dev, f->ports[i - 1].dev))
			len += (size_t)snprintf(list + len,
						len < sizeof(list) ? sizeof(list) - len : 0, "%s%s",
						len ? ", " : "", f->ports[i].dev);
	bool found = !cfg->rdma_device;
	for (int i = 0; i < f->nports && !found; i++)
		found = !strcmp(f->ports[i].dev, cfg->rdma_device);
	if (!found) {
		struct kvn_doctor_check *c =
		    add(r, KVN_DR_FAIL, "rdma-devices", "rdma_device %s is not on this host (%s)",
			cfg->rdma_device, list);
		fix(c, "set rdma_device to one of %s, or leave it unset (the first active port)",
		    list);
		return;
	}
	add(r, KVN_DR_OK, "rdma-devices", "%s", list);
	for (int i = 0; i < f->nports; i++) {
		const struct kvn_sysfs_port *p = &f->ports[i];
		char name[96];
		snprintf(name, sizeof(name), "port %s/%u", p->dev, p->port);
		if (p->active) {
			add(r, KVN_DR_OK, name, "ACTIVE, %s, %s%s%s", p->link_layer,
			    p->rate[0] ? p->rate : "rate unknown", p->netdev[0] ? ", netdev " : "",
			    p->netdev);
			continue;
		}
		bool used = cfg->rdma_device && !strcmp(cfg->rdma_device, p->dev);
		struct kvn_doctor_check *c =
		    add(r, used ? KVN_DR_FAIL : KVN_DR_WARN, name, "%s (physical state %s), %s",
			p->state[0] ? p->state : "state unknown",
			p->phys_state[0] ? p->phys_state : "unknown", p->link_layer);
		if (is_roce(p))
			fix(c,
			    "bring the netdev up (ip link set %s up) and check its cable and "
			    "switch port",
			    p->netdev[0] ? p->netdev : "DEV");
		else if (!strcmp(p->state, "INIT"))
			fix(c, "the link is up but no subnet manager has configured it: run "
			       "opensm on the fabric (or enable the switch's SM)");
		else
			fix(c, "check the cable and the switch port (ibstat %s %u)", p->dev,
			    p->port);
	}
}

/* An example listen address of p: its first RoCE v2 IPv4 GID, else its first v2 GID
 * (bracketed IPv6). */
static void
listen_example(const struct kvn_sysfs_port *p, char *out, size_t len)
{
	const struct kvn_sysfs_gid *pick = NULL;
	for (size_t i = 0; i < p->ngids; i++)
		if (!strcmp(p->gids[i].type, "RoCE v2") &&
		    (!pick || (strchr(pick->addr, ':') && !strchr(p->gids[i].addr, ':'))))
			pick = &p->gids[i];
	if (!pick)
		snprintf(out, len, "ADDRESS:0");
	else if (strchr(pick->addr, ':'))
		snprintf(out, len, "[%s]:0", pick->addr);
	else
		snprintf(out, len, "%s:0", pick->addr);
}

/* The port other than p whose RoCE v2 GIDs hold host, or NULL. */
static const struct kvn_sysfs_port *
port_with_addr(const struct kvn_doctor_facts *f, const struct kvn_sysfs_port *p, const char *host)
{
	for (int i = 0; i < f->nports; i++)
		for (size_t k = 0; &f->ports[i] != p && k < f->ports[i].ngids; k++)
			if (!strcmp(f->ports[i].gids[k].addr, host) &&
			    !strcmp(f->ports[i].gids[k].type, "RoCE v2"))
				return &f->ports[i];
	return NULL;
}

static void
check_gid(const struct kvn_config *cfg, const struct kvn_doctor_facts *f,
	  const struct kvn_sysfs_port *p, struct kvn_doctor_report *r)
{
	char name[96], v2[200] = "";
	size_t len = 0;
	snprintf(name, sizeof(name), "gid %s/%u", p->dev, p->port);
	for (size_t i = 0; i < p->ngids; i++)
		if (!strcmp(p->gids[i].type, "RoCE v2"))
			len += (size_t)snprintf(v2 + len, len < sizeof(v2) ? sizeof(v2) - len : 0,
						"%s%d %s", len ? ", " : "", p->gids[i].index,
						p->gids[i].addr);
	if (cfg->gid_index >= 0) {
		const struct kvn_sysfs_gid *g = NULL;
		for (size_t i = 0; i < p->ngids && !g; i++)
			if (p->gids[i].index == cfg->gid_index)
				g = &p->gids[i];
		if (!g) {
			struct kvn_doctor_check *c = add(
			    r, KVN_DR_FAIL, name, "gid_index %d is an empty entry", cfg->gid_index);
			fix(c, "use a RoCE v2 entry (%s) or leave gid_index unset",
			    v2[0] ? v2 : "none: give the netdev an IP address");
		} else if (strcmp(g->type, "RoCE v2")) {
			struct kvn_doctor_check *c =
			    add(r, KVN_DR_WARN, name,
				"gid_index %d is %s (%s): RoCE v1 is not routable", g->index,
				g->type, g->addr);
			fix(c, "use a RoCE v2 entry (%s)", v2[0] ? v2 : "none on this port");
		} else {
			add(r, KVN_DR_OK, name, "gid_index %d: RoCE v2, %s on %s", g->index,
			    g->addr, g->ndev);
		}
		return;
	}
	if (!v2[0]) {
		struct kvn_doctor_check *c =
		    add(r, KVN_DR_WARN, name, "no RoCE v2 GID on this port");
		fix(c, "give %s an IP address: its RoCE v2 GIDs appear with it",
		    p->netdev[0] ? p->netdev : "the netdev");
		return;
	}
	/* Without gid_index, rdma_cm picks the GID through the address the node binds. */
	char host[KVN_HOST_MAX] = "";
	uint16_t port;
	char err[128];
	const char *listen = cfg->listen ? cfg->listen : "127.0.0.1:0";
	if (kvn_hostport_parse(listen, host, &port, err, sizeof(err)) < 0 ||
	    kvn_host_is_loopback(host) || !strcmp(host, "0.0.0.0") || !strcmp(host, "::")) {
		struct kvn_doctor_check *c =
		    add(r, KVN_DR_WARN, name,
			"listen is %s: rdma_cm binds no address of %s, so the GID is not chosen "
			"(RoCE v2 GIDs: %s)",
			listen, p->dev, v2);
		char ex[80];
		listen_example(p, ex, sizeof(ex));
		fix(c, "set listen to an address of %s (for example %s), or gid_index",
		    p->netdev[0] ? p->netdev : p->dev, ex);
		return;
	}
	for (size_t i = 0; i < p->ngids; i++)
		if (!strcmp(p->gids[i].addr, host) && !strcmp(p->gids[i].type, "RoCE v2")) {
			add(r, KVN_DR_OK, name,
			    "GID index %d: RoCE v2, %s on %s (the address listen "
			    "binds)",
			    p->gids[i].index, host, p->gids[i].ndev);
			return;
		}
	const struct kvn_sysfs_port *other = port_with_addr(f, p, host);
	struct kvn_doctor_check *c =
	    add(r, KVN_DR_FAIL, name, "listen %s is not a RoCE v2 GID of %s (they are: %s)%s%s",
		host, p->dev, v2, other ? ": it is one of " : "", other ? other->dev : "");
	if (other)
		fix(c,
		    "set rdma_device: %s, the device of %s (without rdma_device the node "
		    "registers its memory on the first active port, %s)",
		    other->dev, host, p->dev);
	else
		fix(c,
		    "set listen to one of those addresses, or rdma_device to the device that "
		    "has %s",
		    host);
}

static void
check_mtu(const struct kvn_doctor_facts *f, int i, struct kvn_doctor_report *r)
{
	const struct kvn_sysfs_port *p = &f->ports[i];
	char name[96];
	snprintf(name, sizeof(name), "mtu %s/%u", p->dev, p->port);
	int active = kvn_sysfs_known_mtu(p, f->active_mtu[i]);
	int max = f->max_mtu[i] ? f->max_mtu[i] : 4096;
	if (!active) {
		add(r, KVN_DR_OK, name, "not known from sysfs (ibv_devinfo shows active_mtu)");
		return;
	}
	if (active >= max) {
		add(r, KVN_DR_OK, name, "active %d, the maximum%s", active,
		    is_roce(p) ? " (netdev MTU large enough)" : "");
		return;
	}
	struct kvn_doctor_check *c;
	if (is_roce(p)) {
		c = add(r, KVN_DR_WARN, name, "active %d of %d: %s has MTU %d", active, max,
			p->netdev[0] ? p->netdev : "the netdev", p->netdev_mtu);
		fix(c,
		    "set MTU 9000 on %s and on the switch ports (jumbo frames); every peer "
		    "must run the same MTU",
		    p->netdev[0] ? p->netdev : "the netdev");
	} else {
		c = add(r, KVN_DR_WARN, name, "active %d of %d", active, max);
		fix(c, "the subnet manager sets the MTU: raise the partition's MTU (opensm "
		       "partitions.conf mtu=5 for 4096); every peer must run the same MTU");
	}
}

static uint64_t
pinned_bytes(const struct kvn_config *cfg)
{
	return cfg->local_cpu ? cfg->max_local_cpu_size : 0;
}

static void
check_memlock(const struct kvn_config *cfg, const struct kvn_doctor_facts *f, bool verbs,
	      struct kvn_doctor_report *r)
{
	uint64_t need = pinned_bytes(cfg);
	if (f->cap_ipc_lock || f->memlock == UINT64_MAX) {
		add(r, KVN_DR_OK, "memlock", "%s: the %.0f MiB pool can be registered",
		    f->cap_ipc_lock ? "CAP_IPC_LOCK (no limit applies)" : "unlimited",
		    (double)need / MIB);
		return;
	}
	if (f->memlock >= need) {
		add(r, KVN_DR_OK, "memlock", "%.0f MiB, the pool needs %.0f MiB",
		    (double)f->memlock / MIB, (double)need / MIB);
		return;
	}
	struct kvn_doctor_check *c =
	    add(r, verbs ? KVN_DR_FAIL : KVN_DR_WARN, "memlock",
		"ulimit -l is %.0f MiB, below the %.0f MiB pool (max_local_cpu_size): %s",
		(double)f->memlock / MIB, (double)need / MIB,
		verbs ? "registering it with the NIC fails"
		      : "tcp registers nothing, but verbs will fail to");
	fix(c, "raise the limit: LimitMEMLOCK=infinity in the systemd unit (the package's "
	       "kvnode.service has it), `ulimit -l unlimited` before kvnode serve, or "
	       "'* - memlock unlimited' in /etc/security/limits.conf");
}

static void
check_hugepages(const struct kvn_config *cfg, const struct kvn_doctor_facts *f,
		struct kvn_doctor_report *r)
{
	uint64_t need = pinned_bytes(cfg), have = f->hugepages_free * 2 * 1024 * 1024;
	if (!cfg->hugepages || !need) {
		add(r, KVN_DR_OK, "hugepages", "not asked for (hugepages: false or no cpu tier)");
		return;
	}
	if (have >= need) {
		add(r, KVN_DR_OK, "hugepages",
		    "%" PRIu64 " free 2 MiB pages hold the %.0f MiB pool", f->hugepages_free,
		    (double)need / MIB);
		return;
	}
	struct kvn_doctor_check *c = add(
	    r, KVN_DR_OK, "hugepages",
	    "%" PRIu64 " free 2 MiB pages, the pool needs %" PRIu64
	    " (%.0f MiB): it uses transparent huge pages instead (kvnode stat shows the backing)",
	    f->hugepages_free, (need + (2u << 20) - 1) / (2u << 20), (double)need / MIB);
	fix(c, "for hugetlb pages: sysctl vm.nr_hugepages=%" PRIu64 " (optional)",
	    (need + (2u << 20) - 1) / (2u << 20));
}

static void
check_fork(const struct kvn_doctor_facts *f, struct kvn_doctor_report *r)
{
	if (f->fork_unneeded) {
		add(r, KVN_DR_OK, "fork",
		    "kernel %s copies pinned pages on fork: the plugins "
		    "kvnode starts cannot disturb registered memory",
		    f->kernel);
		return;
	}
	if (f->fork_safe_env) {
		add(r, KVN_DR_OK, "fork", "kernel %s, RDMAV_FORK_SAFE set", f->kernel);
		return;
	}
	struct kvn_doctor_check *c =
	    add(r, KVN_DR_WARN, "fork",
		"kernel %s is older than 5.13 (no copy-on-fork of pinned pages): a plugin "
		"forked by the node can corrupt registered memory",
		f->kernel);
	fix(c, "set RDMAV_FORK_SAFE=1 in the node's environment, or run no plugins");
}

/* The RDMA device nearest GPU i by PCIe topology: GPUDirect traffic between them stays under
 * one switch when they share one, and crosses the CPU interconnect when no NIC shares the
 * GPU's root complex. Nothing when the GPU's place is unknown. */
static void
check_gpu_nic(const struct kvn_doctor_facts *f, int i, struct kvn_doctor_report *r)
{
	if (!*f->gpu_pci[i] || f->nports <= 0)
		return;
	int best = -1, hops = -1;
	for (int p = 0; p < f->nports; p++) {
		int h = kvn_sysfs_pci_hops(f->gpu_pci[i], f->ports[p].pci);
		if (f->ports[p].active && h >= 0 && (hops < 0 || h < hops)) {
			best = p;
			hops = h;
		}
	}
	char name[32];
	snprintf(name, sizeof(name), "gpu %d nic", i);
	if (best < 0) {
		struct kvn_doctor_check *c =
		    add(r, KVN_DR_WARN, name,
			"no active RDMA device shares the PCIe root complex of GPU %d (%s): "
			"GPUDirect traffic crosses the CPU interconnect",
			i, f->gpu_bdf[i]);
		fix(c, "put a NIC on the GPU's PCIe switch or root complex (lspci -t)");
		return;
	}
	add(r, KVN_DR_OK, name, "GPU %d (%s) is nearest %s: %d PCIe hop%s%s", i, f->gpu_bdf[i],
	    f->ports[best].dev, hops, hops == 1 ? "" : "s",
	    hops <= 2 ? " (under one switch port)" : "");
}

static void
check_gpu(const struct kvn_config *cfg, const struct kvn_doctor_facts *f,
	  struct kvn_doctor_report *r)
{
	enum kvn_gpu_mode mode = kvn_config_gpu_mode(cfg);
	if (mode == KVN_GPU_OFF) {
		add(r, KVN_DR_OK, "gpu", "off (gpu: false)");
		return;
	}
	if (f->gpu_rc) {
		struct kvn_doctor_check *c =
		    add(r, mode == KVN_GPU_ON ? KVN_DR_FAIL : KVN_DR_OK, "gpu", "gpu: %s: %s",
			mode == KVN_GPU_ON ? "true, kvnode serve refuses to start"
					   : "auto, no GPU used",
			f->gpu_why);
		if (mode == KVN_GPU_ON)
			fix(c,
			    "install the NVIDIA driver (libcuda.so.1), or set gpu: auto or false");
		return;
	}
	add(r, KVN_DR_OK, "gpu", "%d CUDA device%s", f->ngpus, f->ngpus == 1 ? "" : "s");
	for (int i = 0; i < f->ngpu_reg; i++) {
		char name[32];
		snprintf(name, sizeof(name), "gpu %d memory", i);
		if (f->gpu_reg_rc[i] == 0) {
			/* tcp has no NIC: staging is its only way, nothing to fix */
			bool nic = f->gpu_reg_method[i] == KVN_REG_STAGING &&
				   strcmp(f->gpu_reg_why[i], "tcp");
			struct kvn_doctor_check *c =
			    add(r, nic ? KVN_DR_WARN : KVN_DR_OK, name, "registers with %s by %s",
				f->gpu_reg_why[i], kvn_reg_method_name(f->gpu_reg_method[i]));
			if (nic)
				fix(c, "no GPUDirect on this NIC: see the gpudirect line; peers "
				       "read a "
				       "host copy of GPU memory meanwhile");
		} else {
			struct kvn_doctor_check *c =
			    add(r, KVN_DR_WARN, name, "does not register: %s", f->gpu_reg_why[i]);
			fix(c,
			    "the node serves its GPU memory to itself only; kvnode stat shows the "
			    "same after a start");
		}
	}
	for (int i = 0; i < f->ngpu_reg; i++)
		check_gpu_nic(f, i, r);
	if (f->peermem.peermem) {
		add(r, KVN_DR_OK, "gpudirect",
		    "nvidia-peermem is loaded (%s): GPU memory "
		    "registers with the NIC directly",
		    f->peermem.path);
	} else if (f->gpu_dmabuf) {
		add(r, KVN_DR_OK, "gpudirect",
		    "the driver exports dma-buf; whether the NIC's "
		    "provider takes it is found at start (kvnode stat)");
	} else {
		struct kvn_doctor_check *c =
		    add(r, KVN_DR_WARN, "gpudirect",
			"no GPUDirect: no nvidia-peermem (%s) and no dma-buf export in this "
			"driver: peers read GPU memory through a host copy of it",
			f->peermem.path);
		fix(c, "modprobe nvidia-peermem, or a driver of CUDA 11.7+ with rdma-core 34+ "
		       "for dma-buf");
	}
}

/* The rails the config asks for (rdma_devices, or a listen list): each device and the address
 * it serves on, or why the node would refuse to start. Nothing with one rail. */
static void
check_rails(const struct kvn_config *cfg, const struct kvn_doctor_facts *f, bool verbs,
	    struct kvn_doctor_report *r)
{
	if (!cfg->n_rdma_devices && !(cfg->listen && strchr(cfg->listen, ',')))
		return;
	struct kvn_rails_plan *pl = malloc(sizeof(*pl));
	char err[512] = "";
	int rc = pl ? kvn_cluster_rails_plan(cfg, verbs, f->sysfs, pl, err, sizeof(err)) : -ENOMEM;
	if (rc < 0) {
		struct kvn_doctor_check *c =
		    add(r, KVN_DR_FAIL, "rails", "kvnode serve would refuse to start: %s",
			*err ? err : strerror(-rc));
		fix(c, "see rdma_devices and listen in docs/configuration.md");
	} else {
		char what[sizeof(r->c[0].what)] = "";
		size_t at = 0;
		for (size_t i = 0; i < pl->n && at < sizeof(what); i++) {
			char numa[24] = "";
			if (pl->numa[i] >= 0)
				snprintf(numa, sizeof(numa), " (NUMA %d)", pl->numa[i]);
			int w = snprintf(what + at, sizeof(what) - at, "%s%s%s%s%s", i ? ", " : "",
					 pl->device[i], *pl->device[i] ? " on " : "", pl->listen[i],
					 numa);
			at += w > 0 ? (size_t)w : 0;
		}
		add(r, pl->n > 1 ? KVN_DR_OK : KVN_DR_WARN, "rails", "%zu rail%s: %s", pl->n,
		    pl->n == 1 ? " only" : "s", what);
	}
	free(pl);
}

void
kvn_doctor_decide(const struct kvn_config *cfg, const struct kvn_doctor_facts *f,
		  struct kvn_doctor_report *r)
{
	memset(r, 0, sizeof(*r));
	check_devices(cfg, f, r);
	int at = chosen_port(cfg, f);
	const char *t = cfg->transport ? cfg->transport : "auto";
	bool verbs = f->verbs_built && at >= 0 && strcmp(t, "tcp");
	if (at >= 0) {
		if (is_roce(&f->ports[at]))
			check_gid(cfg, f, &f->ports[at], r);
		for (int i = 0; i < f->nports; i++)
			if (f->ports[i].active)
				check_mtu(f, i, r);
	}
	struct kvn_doctor_check *c;
	if (!strcmp(t, "tcp")) {
		add(r, KVN_DR_OK, "transport", "tcp (transport: tcp)");
	} else if (verbs) {
		add(r, KVN_DR_OK, "transport", "%s picks verbs on %s port %u", t, f->ports[at].dev,
		    f->ports[at].port);
	} else if (!strcmp(t, "verbs")) {
		c = add(r, KVN_DR_FAIL, "transport",
			"transport: verbs, but %s: kvnode serve cannot start",
			!f->verbs_built ? "this build has no verbs (rdma-core was not found)"
					: "no RDMA device has an active port");
		fix(c, "bring an RDMA port up (the lines above), or set transport: auto or tcp");
	} else {
		add(r, KVN_DR_OK, "transport", "auto picks tcp: %s",
		    !f->verbs_built ? "this build has no verbs"
				    : "no RDMA device has an active port");
	}
	check_rails(cfg, f, verbs, r);
	check_memlock(cfg, f, verbs, r);
	check_hugepages(cfg, f, r);
	check_fork(f, r);
	check_gpu(cfg, f, r);
}

/* ------------------------------------------------------------------------------------------
 * --peers: one READ of every member's pool
 * ------------------------------------------------------------------------------------------ */

#define PEER_READ 64

static int
hex_digit(char c)
{
	return c >= '0' && c <= '9'   ? c - '0'
	       : c >= 'a' && c <= 'f' ? c - 'a' + 10
	       : c >= 'A' && c <= 'F' ? c - 'A' + 10
				      : -1;
}

int
kvn_doctor_region_hex(const char *hex, struct kvn_mem_desc *d)
{
	uint8_t blob[32];
	size_t n = 0;
	while (hex && n < sizeof(blob) && hex[2 * n] && hex[2 * n + 1]) {
		int hi = hex_digit(hex[2 * n]), lo = hex_digit(hex[2 * n + 1]);
		if (hi < 0 || lo < 0)
			return -EPROTO;
		blob[n++] = (uint8_t)(hi << 4 | lo);
	}
	return kvn_cluster_region_decode(blob, n, d);
}

/* A member's pool descriptor from the scheduler's hex "region". */
static int
member_region(const cJSON *m, struct kvn_mem_desc *d)
{
	return kvn_doctor_region_hex(cJSON_GetStringValue(cJSON_GetObjectItem(m, "region")), d);
}

int
kvn_doctor_own_mtu(const struct kvn_config *cfg, const struct kvn_doctor_facts *f)
{
	int at = chosen_port(cfg, f);
	const char *t = cfg->transport ? cfg->transport : "auto";
	if (at < 0 || !f->verbs_built || !strcmp(t, "tcp"))
		return 0;
	return kvn_sysfs_known_mtu(&f->ports[at], f->active_mtu[at]);
}

int
kvn_doctor_mtu_match(int own, int peer_mtu, char *why, size_t len)
{
	why[0] = '\0';
	if (!own || !peer_mtu || own == peer_mtu)
		return KVN_DR_OK;
	snprintf(why, len, "; its MTU is %d, this host's %d: the connection runs at %d", peer_mtu,
		 own, own < peer_mtu ? own : peer_mtu);
	return KVN_DR_WARN;
}

/* Connects to one member and READs PEER_READ bytes of its pool, timed. */
static void
read_member(const struct kvn_transport_ops *ops, struct kvn_transport *tp, struct kvn_tp_mr *mr,
	    void *buf, const cJSON *m, int own_mtu, struct kvn_doctor_report *r)
{
	const char *mname = cJSON_GetStringValue(cJSON_GetObjectItem(m, "name"));
	const char *addr = cJSON_GetStringValue(cJSON_GetObjectItem(m, "data_addr"));
	const char *mt = cJSON_GetStringValue(cJSON_GetObjectItem(m, "transport"));
	const cJSON *w = cJSON_GetObjectItem(m, "worker_id");
	double wv = cJSON_IsNumber(w) ? w->valuedouble : -1;
	int wid = wv >= 0 && wv < 1e9 ? (int)wv : -1;
	char name[96], err[512];
	snprintf(name, sizeof(name), "peer %s", mname ? mname : "?");
	struct kvn_mem_desc d;
	struct kvn_doctor_check *c;
	if (!addr || !*addr || member_region(m, &d) < 0) {
		c = add(r, KVN_DR_FAIL, name, "worker %d published no data address or region", wid);
		fix(c, "the member joined without a transport (scheduler_url unset at its start?)");
		return;
	}
	if (mt && strcmp(mt, ops->name)) {
		c = add(r, KVN_DR_FAIL, name,
			"worker %d at %s serves over %s, this host reads over %s", wid, addr, mt,
			ops->name);
		fix(c, "set the same transport on every node (verbs needs an active port on both)");
		return;
	}
	struct kvn_tp_ep *ep = NULL;
	uint64_t t0 = kvn_now_ns();
	int rc = ops->connect(tp, addr, PEER_TIMEOUT_MS, &ep, err, sizeof(err));
	uint64_t t1 = kvn_now_ns();
	if (rc) {
		c = add(r, KVN_DR_FAIL, name, "worker %d at %s: cannot connect: %s", wid, addr,
			err);
		fix(c, "%s",
		    rc == -EACCES ? "set the same auth_token on every node"
				  : "check that the node runs and that its listen address "
				    "is reachable from here (routes, firewall)");
		return;
	}
	struct kvn_read rd = {.local = buf,
			      .local_mr = mr,
			      .remote_addr = d.addr,
			      .rkey = d.rkey,
			      .len = d.len < PEER_READ ? d.len : PEER_READ};
	rc = kvn_transport_read_sync(ops, ep, &rd, 1, err, sizeof(err));
	uint64_t t2 = kvn_now_ns();
	ops->ep_close(ep);
	if (rc) {
		c = add(r, KVN_DR_FAIL, name, "worker %d at %s: connected, but a READ failed: %s",
			wid, addr, err);
		fix(c, "%s",
		    rc == -EACCES ? "the member's registration changed (restarted?): run "
				    "doctor again"
				  : "check the fabric between the hosts (ib_read_lat)");
		return;
	}
	const cJSON *mj = cJSON_GetObjectItem(m, "mtu");
	int peer_mtu = cJSON_IsNumber(mj) && mj->valuedouble > 0 && mj->valuedouble <= 65536
			   ? (int)mj->valuedouble
			   : 0;
	char mtu_why[128];
	int st = kvn_doctor_mtu_match(own_mtu, peer_mtu, mtu_why, sizeof(mtu_why));
	c = add(r, st, name,
		"worker %d at %s over %s: connected in %.1f ms, a READ of %llu B in %.1f us%s", wid,
		addr, ops->name, (double)(t1 - t0) / 1e6, (unsigned long long)rd.len,
		(double)(t2 - t1) / 1e3, mtu_why);
	if (st)
		fix(c, "set the same MTU on every host (RoCE: the netdevs' and switch ports' MTU; "
		       "InfiniBand: the subnet manager's partition MTU)");
}

void
kvn_doctor_peers(const struct kvn_config *cfg, const struct kvn_doctor_facts *f,
		 const char *scheduler, struct kvn_doctor_report *r)
{
	int own_mtu = kvn_doctor_own_mtu(cfg, f);
	const char *sched = scheduler ? scheduler : cfg->scheduler_url;
	char err[1024], *json = NULL;
	struct kvn_doctor_check *c;
	if (!sched) {
		c = add(r, KVN_DR_FAIL, "peers", "no scheduler to ask for the members");
		fix(c, "set scheduler_url in the config or give --scheduler HOST:PORT");
		return;
	}
	struct kvn_etcd_opts eo = kvn_config_etcd_opts(cfg);
	int rc = kvn_membership_fetch_stats_etcd(sched, &eo, cfg->auth_token, PEER_TIMEOUT_MS,
						 &json, err, sizeof(err));
	cJSON *root = rc ? NULL : cJSON_Parse(json);
	free(json);
	if (!root) {
		c = add(r, KVN_DR_FAIL, "peers", "scheduler %s: %s", sched,
			rc ? err : "its member list is not JSON");
		fix(c, "check that the scheduler runs there and that auth_token matches");
		return;
	}
	const struct kvn_transport_ops *ops = NULL;
	struct kvn_transport *tp = NULL;
	struct kvn_tp_mr *mr = NULL;
	struct kvn_mem_desc desc;
	void *buf = aligned_alloc(4096, 4096);
	if (!buf || open_transport(cfg, &ops, &tp, err, sizeof(err)) ||
	    ops->reg_mem(tp, buf, 4096, KVN_MEM_HOST, &mr, &desc, err, sizeof(err))) {
		c = add(r, KVN_DR_FAIL, "peers", "cannot open the %s transport here: %s",
			ops ? ops->name : "configured", buf ? err : "out of memory");
		fix(c, "see the checks above");
	} else {
		size_t n = 0;
		const cJSON *m;
		cJSON_ArrayForEach(m, cJSON_GetObjectItem(root, "members"))
		{
			const char *state = cJSON_GetStringValue(cJSON_GetObjectItem(m, "state"));
			if (state && !strcmp(state, "alive"))
				read_member(ops, tp, mr, buf, m, own_mtu, r), n++;
		}
		if (!n)
			add(r, KVN_DR_WARN, "peers", "scheduler %s has no live member", sched);
	}
	if (mr)
		ops->dereg(mr);
	if (tp)
		ops->close(tp);
	free(buf);
	cJSON_Delete(root);
}

const char *
kvn_doctor_status_name(int status)
{
	return status == KVN_DR_FAIL ? "fail" : status == KVN_DR_WARN ? "warn" : "ok";
}

void
kvn_doctor_print(const struct kvn_doctor_report *r, bool json, FILE *out)
{
	if (json) {
		cJSON *root = cJSON_CreateObject();
		cJSON_AddStringToObject(root, "status", kvn_doctor_status_name(r->status));
		cJSON *arr = cJSON_AddArrayToObject(root, "checks");
		for (size_t i = 0; i < r->n; i++) {
			const struct kvn_doctor_check *c = &r->c[i];
			cJSON *o = cJSON_CreateObject();
			cJSON_AddStringToObject(o, "check", c->name);
			cJSON_AddStringToObject(o, "status", kvn_doctor_status_name(c->status));
			cJSON_AddStringToObject(o, "what", c->what);
			if (c->fix[0])
				cJSON_AddStringToObject(o, "fix", c->fix);
			cJSON_AddItemToArray(arr, o);
		}
		char *text = cJSON_PrintUnformatted(root);
		if (text)
			fprintf(out, "%s\n", text);
		free(text);
		cJSON_Delete(root);
		return;
	}
	for (size_t i = 0; i < r->n; i++) {
		const struct kvn_doctor_check *c = &r->c[i];
		fprintf(out, "%-4s  %-16s %s\n", kvn_doctor_status_name(c->status), c->name,
			c->what);
		if (c->fix[0])
			fprintf(out, "      %-16s fix: %s\n", "", c->fix);
	}
}
