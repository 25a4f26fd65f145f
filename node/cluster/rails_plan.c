/* Which rails a node opens (docs/configuration.md "Rails"): from rdma_devices (each device on
 * its own address at listen's port), from a listen list (one rail per address), or the one rail
 * of rdma_device and listen. Decided from sysfs, so the tests decide it from fixture trees. */
#include <dirent.h>
#include <errno.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/netaddr.h"
#include "node/cluster/cluster.h"
#include "rdma/sysfs.h"

#define PORTS_MAX 64

/* The IPv4 address of netdev ifname, "" when it has none. */
static void
netdev_addr(const char *ifname, char *out, size_t cap)
{
	struct ifaddrs *ifa = NULL;
	*out = 0;
	if (getifaddrs(&ifa))
		return;
	for (struct ifaddrs *i = ifa; i && !*out; i = i->ifa_next)
		if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET &&
		    !strcmp(i->ifa_name, ifname))
			inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, out,
				  (socklen_t)cap);
	freeifaddrs(ifa);
}

/* Where a rail on port p listens: its RoCE v2 IPv4 address (any IPv4 GID after that), else on
 * InfiniBand the address of the device's IPoIB netdev. "" when it has none. */
static void
device_addr(const char *root, const struct kvn_sysfs_port *p, char *out, size_t cap)
{
	*out = 0;
	for (int pass = 0; pass < 2 && !*out; pass++)
		for (size_t g = 0; g < p->ngids && !*out; g++) {
			const struct kvn_sysfs_gid *e = &p->gids[g];
			if ((pass == 0 && strcmp(e->type, "RoCE v2")) || !strchr(e->addr, '.'))
				continue;
			snprintf(out, cap, "%s", e->addr);
		}
	if (*out)
		return;
	char dir[512];
	snprintf(dir, sizeof(dir), "%s/class/infiniband/%s/device/net", kvn_sysfs_root(root),
		 p->dev);
	DIR *d = opendir(dir);
	for (struct dirent *de; d && !*out && (de = readdir(d));)
		if (de->d_name[0] != '.')
			netdev_addr(de->d_name, out, cap);
	if (d)
		closedir(d);
}

/* The first active port of dev in ports (dev NULL: any device's); -1 when none. */
static int
active_port(const struct kvn_sysfs_port *ports, int n, const char *dev)
{
	return kvn_sysfs_pick_port(ports, n, dev);
}

/* The device one of whose GIDs is host ("" when none). */
static const struct kvn_sysfs_port *
device_of_addr(const struct kvn_sysfs_port *ports, int n, const char *host)
{
	for (int i = 0; i < n; i++)
		for (size_t g = 0; g < ports[i].ngids; g++)
			if (!strcmp(ports[i].gids[g].addr, host))
				return &ports[i];
	return NULL;
}

static int
add_rail(struct kvn_rails_plan *pl, const char *dev, const char *listen, int numa, char *err,
	 size_t errlen)
{
	if (pl->n == KVN_RAILS_MAX)
		return kvn_seterr(-EINVAL, err, errlen, "more than %d rails", KVN_RAILS_MAX);
	for (size_t i = 0; dev && *dev && i < pl->n; i++)
		if (!strcmp(pl->device[i], dev))
			return kvn_seterr(-EINVAL, err, errlen,
					  "rdma_devices: %s is listed twice (one rail per device)",
					  dev);
	snprintf(pl->device[pl->n], sizeof(pl->device[0]), "%s", dev ? dev : "");
	snprintf(pl->listen[pl->n], sizeof(pl->listen[0]), "%s", listen);
	pl->numa[pl->n++] = numa;
	return 0;
}

/* Rails from rdma_devices: each device (every active one for "auto") on its own address. */
static int
plan_devices(const struct kvn_config *cfg, const char *root, const struct kvn_sysfs_port *ports,
	     int n, uint16_t port, struct kvn_rails_plan *pl, char *err, size_t errlen)
{
	bool any = cfg->n_rdma_devices == 1 && !strcmp(cfg->rdma_devices[0], "auto");
	size_t want = any ? (size_t)n : cfg->n_rdma_devices;
	for (size_t i = 0; i < want; i++) {
		int at;
		if (any) {
			at = (int)i;
			if (!ports[at].active ||
			    (at > 0 && !strcmp(ports[at].dev, ports[at - 1].dev)))
				continue; /* one rail a device: its first active port */
			int first = active_port(ports, n, ports[at].dev);
			if (first != at)
				continue;
		} else {
			at = active_port(ports, n, cfg->rdma_devices[i]);
			if (at < 0)
				return kvn_seterr(-ENODEV, err, errlen,
						  "rdma_devices: %s is not an RDMA device with an "
						  "active port here (see kvnode doctor)",
						  cfg->rdma_devices[i]);
		}
		char host[64], listen[KVN_RAILS_ADDR_MAX + 1];
		device_addr(root, &ports[at], host, sizeof(host));
		if (!*host)
			return kvn_seterr(
			    -EADDRNOTAVAIL, err, errlen,
			    "rdma_devices: %s has no IPv4 address (no RoCE v2 GID with "
			    "one, no IPoIB netdev with one) for its rail to listen on; "
			    "give the addresses in listen instead",
			    ports[at].dev);
		snprintf(listen, sizeof(listen), "%s:%u", host, port);
		int rc = add_rail(pl, ports[at].dev, listen, ports[at].numa_node, err, errlen);
		if (rc)
			return rc;
	}
	if (!pl->n)
		return kvn_seterr(-ENODEV, err, errlen,
				  "rdma_devices: auto found no RDMA device with an active port "
				  "(see kvnode doctor)");
	return 0;
}

int
kvn_cluster_rails_plan(const struct kvn_config *cfg, bool verbs, const char *root,
		       struct kvn_rails_plan *pl, char *err, size_t errlen)
{
	memset(pl, 0, sizeof(*pl));
	const char *listen = cfg->listen ? cfg->listen : "127.0.0.1:0";
	bool devices = cfg->n_rdma_devices > 0;
	if (devices && cfg->rdma_device)
		return kvn_seterr(-EINVAL, err, errlen,
				  "set rdma_device (one device) or rdma_devices (rails), not both");
	if (devices && !verbs)
		return kvn_seterr(
		    -EINVAL, err, errlen,
		    "rdma_devices names RDMA devices, but this node's transport is tcp "
		    "(transport: %s): use verbs on a host with an active RDMA port, or "
		    "give one address a rail in listen",
		    cfg->transport ? cfg->transport : "auto");
	struct kvn_sysfs_port *ports = verbs ? calloc(PORTS_MAX, sizeof(*ports)) : NULL;
	int n = ports ? kvn_sysfs_ports(root, ports, PORTS_MAX) : 0;
	if (n < 0)
		n = 0;
	int rc = 0;
	if (devices) {
		char host[KVN_HOST_MAX];
		uint16_t port;
		rc = strchr(listen, ',') ? kvn_seterr(-EINVAL, err, errlen,
						      "with rdma_devices, listen gives the port "
						      "only (each rail listens on its device's "
						      "address): want one HOST:PORT, not \"%s\"",
						      listen)
					 : kvn_hostport_parse(listen, host, &port, err, errlen);
		if (!rc)
			rc = plan_devices(cfg, root, ports, n, port, pl, err, errlen);
	} else {
		/* one rail a listen address; for verbs each on the device with that address */
		for (const char *s = listen; *s && !rc;) {
			size_t len = strcspn(s, ",");
			char one[KVN_RAILS_ADDR_MAX + 1], host[KVN_HOST_MAX];
			uint16_t port;
			snprintf(one, sizeof(one), "%.*s", (int)len, s);
			s += len + (s[len] == ',');
			rc = kvn_hostport_parse(one, host, &port, err, errlen);
			if (rc)
				break;
			bool many = strchr(listen, ',') != NULL;
			const struct kvn_sysfs_port *p =
			    verbs ? device_of_addr(ports, n, host) : NULL;
			if (verbs && many && !p)
				rc = kvn_seterr(
				    -EADDRNOTAVAIL, err, errlen,
				    "listen %s: no RDMA device has the address %s, so no "
				    "rail can serve on it",
				    one, host);
			else if (verbs && !many) /* today's one rail: rdma_device, or auto */
				rc = add_rail(pl, cfg->rdma_device, one, p ? p->numa_node : -1, err,
					      errlen);
			else
				rc = add_rail(pl, p ? p->dev : NULL, one, p ? p->numa_node : -1,
					      err, errlen);
		}
	}
	free(ports);
	return rc;
}
