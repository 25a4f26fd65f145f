/* What sysfs says of the host's RDMA devices, their ports and GID tables, read without opening a
 * device (so that it also works from fixture trees): `kvnode doctor` decides from it, and the
 * rails pick devices by its NUMA nodes. The files are the kernel's (drivers/infiniband/core/
 * sysfs.c): /sys/class/infiniband/DEV/ports/N/{state,phys_state,link_layer,rate,gids/I,
 * gid_attrs/types/I,gid_attrs/ndevs/I} and /sys/class/infiniband/DEV/device/numa_node. */
#ifndef KVN_RDMA_SYSFS_H
#define KVN_RDMA_SYSFS_H

#include <stdbool.h>
#include <stddef.h>

#define KVN_SYSFS_GIDS_MAX 64 /* entries read per port; tables are 16 to 256 long */

struct kvn_sysfs_gid {
	int index;
	char gid[48];  /* as sysfs writes it: "0000:0000:0000:0000:0000:ffff:0a00:0005" */
	char addr[48]; /* the same as an address: "10.0.0.5" for an IPv4-mapped GID, else IPv6 */
	char type[16]; /* "RoCE v2", "IB/RoCE v1"; "" on InfiniBand */
	char ndev[32]; /* the netdev of a RoCE GID ("eth0"); "" on InfiniBand */
};

struct kvn_sysfs_port {
	char dev[64]; /* "mlx5_0" */
	unsigned port;
	bool active;	     /* state "4: ACTIVE" */
	char state[32];	     /* "ACTIVE", "DOWN", "INIT", "ARMED" */
	char phys_state[32]; /* "LinkUp", "Disabled", "Polling" */
	char link_layer[16]; /* "InfiniBand", "Ethernet" */
	char rate[48];	     /* "100 Gb/sec (4X EDR)" */
	int numa_node;	     /* of the device's PCI function; -1 unknown */
	char pci[256];	     /* that function's place in the PCI tree ("" unknown): see below */
	char netdev[32];     /* RoCE: the netdev of its GIDs ("" unknown) */
	int netdev_mtu;	     /* RoCE: that netdev's MTU, 0 unknown */
	size_t ngids;	     /* non-zero entries, in index order */
	struct kvn_sysfs_gid gids[KVN_SYSFS_GIDS_MAX];
};

/* The sysfs root: root when given, else $KVNODE_SYSFS (the tests' fixture trees), else /sys. */
const char *kvn_sysfs_root(const char *root);
/* Fills ports[0 .. max) with every port of every device, devices in name order; returns how many
 * (0: no RDMA device), or -errno when the class directory cannot be read for another reason
 * than its absence. */
int kvn_sysfs_ports(const char *root, struct kvn_sysfs_port *ports, size_t max);
/* The port the verbs transport opens: want's first active port (want NULL: any device's), as
 * index into ports[0 .. n); -1 when there is none. */
int kvn_sysfs_pick_port(const struct kvn_sysfs_port *ports, int n, const char *want);
/* Active and maximum MTU in bytes of port on dev, from the device itself (ibv_query_port: sysfs
 * has neither); -ENOTSUP in a build without verbs, -ENODEV when dev cannot be opened. */
int kvn_rdma_port_mtu(const char *dev, unsigned port, int *active, int *max);
/* The active MTU of port p: kvn_rdma_port_mtu's when a device answers, else for RoCE the one
 * its netdev's MTU gives (kvn_roce_mtu); 0 when not known. */
int kvn_sysfs_port_mtu(const struct kvn_sysfs_port *p);
/* The same from an active MTU already asked for (0: the device did not say). */
int kvn_sysfs_known_mtu(const struct kvn_sysfs_port *p, int active);
/* Where PCI function bdf ("0000:17:00.0") sits in the PCI tree: the path of its directory under
 * root's devices/ ("pci0000:16/0000:16:02.0/0000:17:00.0"), resolved through
 * bus/pci/devices/BDF; "" when sysfs does not have it. */
void kvn_sysfs_pci_path(const char *root, const char *bdf, char *out, size_t cap);
/* PCIe hops between two functions of those paths: the bridges from each up to the closest one
 * they share (2: under one switch port; more: further apart; a different root complex adds
 * the CPU interconnect). -1 when either is unknown or they share no root. */
int kvn_sysfs_pci_hops(const char *a, const char *b);
/* Whether the two share their root complex (the first path component). */
bool kvn_sysfs_pci_same_root(const char *a, const char *b);

/* The IB MTU a RoCE port runs at on a netdev of MTU mtu (the kernel's iboe_get_mtu: the
 * largest of 256 .. 4096 that fits with 96 bytes of headers); 0 when none does. */
int kvn_roce_mtu(int netdev_mtu);

#endif
