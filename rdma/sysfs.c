/* RDMA devices as sysfs describes them (rdma/sysfs.h). */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rdma/sysfs.h"

#if KVN_HAVE_VERBS
#include <infiniband/verbs.h>
#endif

#define PATH_LEN 1024

/* snprintf into a path or a field; a longer result is cut (a path cut short names no file). */
static void pathf(char *buf, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
pathf(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, len, fmt, ap);
	va_end(ap);
}

const char *
kvn_sysfs_root(const char *root)
{
	if (!root || !*root)
		root = getenv("KVNODE_SYSFS");
	return root && *root ? root : "/sys";
}

/* The first line of the file at path, trailing blanks cut; false when it cannot be read (an
 * empty GID entry's type answers EINVAL). */
static bool
read_line(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	bool ok = fgets(buf, (int)len, f) != NULL;
	fclose(f);
	if (!ok)
		return false;
	size_t n = strlen(buf);
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
		buf[--n] = '\0';
	return true;
}

/* "4: ACTIVE" -> "ACTIVE" */
static void
after_colon(const char *in, char *out, size_t len)
{
	const char *c = strchr(in, ':');
	c = c ? c + 1 : in;
	while (*c == ' ')
		c++;
	pathf(out, len, "%s", c);
}

/* A sysfs GID ("fe80:0000:...:3456", eight groups) as an address; false for a zero or bad one. */
static bool
gid_addr(const char *gid, char *out, size_t len)
{
	unsigned char raw[16];
	unsigned g[8];
	if (sscanf(gid, "%x:%x:%x:%x:%x:%x:%x:%x", &g[0], &g[1], &g[2], &g[3], &g[4], &g[5], &g[6],
		   &g[7]) != 8)
		return false;
	bool zero = true;
	for (int i = 0; i < 8; i++) {
		raw[2 * i] = (unsigned char)(g[i] >> 8);
		raw[2 * i + 1] = (unsigned char)g[i];
		zero &= g[i] == 0;
	}
	if (zero)
		return false;
	static const unsigned char v4map[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	if (!memcmp(raw, v4map, sizeof(v4map)))
		return inet_ntop(AF_INET, raw + 12, out, (socklen_t)len) != NULL;
	return inet_ntop(AF_INET6, raw, out, (socklen_t)len) != NULL;
}

static int
name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The entries of dir that do not start with '.', sorted; *n of them (free each and the array). */
static char **
list_dir(const char *dir, size_t *n, int *err)
{
	*n = 0;
	*err = 0;
	DIR *d = opendir(dir);
	if (!d) {
		*err = errno == ENOENT ? 0 : -errno;
		return NULL;
	}
	char **v = NULL;
	size_t cap = 0;
	for (struct dirent *e; (e = readdir(d));) {
		if (e->d_name[0] == '.')
			continue;
		if (*n == cap) {
			cap = cap ? cap * 2 : 16;
			char **nv = realloc(v, cap * sizeof(*v));
			if (!nv)
				break;
			v = nv;
		}
		if (!(v[*n] = strdup(e->d_name)))
			break;
		++*n;
	}
	closedir(d);
	if (v)
		qsort(v, *n, sizeof(*v), name_cmp);
	return v;
}

static void
free_list(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static void
read_gids(const char *pdir, struct kvn_sysfs_port *p)
{
	char path[PATH_LEN], text[64];
	size_t n;
	int err;
	pathf(path, sizeof(path), "%s/gids", pdir);
	char **ids = list_dir(path, &n, &err);
	int idx[256];
	size_t ni = 0;
	for (size_t i = 0; i < n && ni < 256; i++)
		idx[ni++] = atoi(ids[i]);
	free_list(ids, n);
	/* in numeric order, not the names' */
	for (size_t i = 1; i < ni; i++)
		for (size_t j = i; j > 0 && idx[j - 1] > idx[j]; j--) {
			int t = idx[j];
			idx[j] = idx[j - 1];
			idx[j - 1] = t;
		}
	for (size_t i = 0; i < ni && p->ngids < KVN_SYSFS_GIDS_MAX; i++) {
		struct kvn_sysfs_gid *g = &p->gids[p->ngids];
		memset(g, 0, sizeof(*g));
		g->index = idx[i];
		pathf(path, sizeof(path), "%s/gids/%d", pdir, idx[i]);
		if (!read_line(path, g->gid, sizeof(g->gid)) ||
		    !gid_addr(g->gid, g->addr, sizeof(g->addr)))
			continue;
		pathf(path, sizeof(path), "%s/gid_attrs/types/%d", pdir, idx[i]);
		if (read_line(path, text, sizeof(text)))
			pathf(g->type, sizeof(g->type), "%s", text);
		pathf(path, sizeof(path), "%s/gid_attrs/ndevs/%d", pdir, idx[i]);
		if (read_line(path, text, sizeof(text)))
			pathf(g->ndev, sizeof(g->ndev), "%s", text);
		if (g->ndev[0] && !p->netdev[0])
			pathf(p->netdev, sizeof(p->netdev), "%s", g->ndev);
		p->ngids++;
	}
}

/* The part of link's real path below root's devices/ ("" when it is not under it). */
static void
tree_path(const char *root, const char *link, char *out, size_t cap)
{
	char real[PATH_MAX], top[PATH_MAX], devs[PATH_LEN];
	*out = 0;
	pathf(devs, sizeof(devs), "%s/devices", root);
	if (!realpath(link, real) || !realpath(devs, top))
		return;
	size_t n = strlen(top);
	if (!strncmp(real, top, n) && real[n] == '/')
		snprintf(out, cap, "%s", real + n + 1);
}

void
kvn_sysfs_pci_path(const char *root, const char *bdf, char *out, size_t cap)
{
	char link[PATH_LEN];
	root = kvn_sysfs_root(root);
	pathf(link, sizeof(link), "%s/bus/pci/devices/%s", root, bdf);
	tree_path(root, link, out, cap);
}

bool
kvn_sysfs_pci_same_root(const char *a, const char *b)
{
	size_t la = strcspn(a, "/"), lb = strcspn(b, "/");
	return *a && la == lb && !strncmp(a, b, la);
}

int
kvn_sysfs_pci_hops(const char *a, const char *b)
{
	if (!*a || !*b)
		return -1;
	/* the components they share from the top */
	size_t i = 0, common = 0;
	while (a[i] && a[i] == b[i]) {
		if (a[i] == '/')
			common = i + 1;
		i++;
	}
	if ((!a[i] || a[i] == '/') && (!b[i] || b[i] == '/'))
		common = i; /* one is the other's ancestor, or they are equal */
	if (!common)
		return -1;
	int hops = 0;
	for (const char *s = a + common; *s; s++)
		hops += *s == '/';
	for (const char *s = b + common; *s; s++)
		hops += *s == '/';
	/* each side's own component below the shared bridge counts once */
	hops += (a[common] != 0) + (b[common] != 0);
	return hops;
}

int
kvn_sysfs_ports(const char *root, struct kvn_sysfs_port *ports, size_t max)
{
	root = kvn_sysfs_root(root);
	char cls[PATH_LEN], path[PATH_LEN], text[128];
	size_t ndev, np = 0;
	int err;
	pathf(cls, sizeof(cls), "%s/class/infiniband", root);
	char **devs = list_dir(cls, &ndev, &err);
	if (err)
		return err;
	for (size_t d = 0; d < ndev && np < max; d++) {
		char ddir[PATH_LEN];
		pathf(ddir, sizeof(ddir), "%s/%s", cls, devs[d]);
		pathf(path, sizeof(path), "%s/device/numa_node", ddir);
		int numa = read_line(path, text, sizeof(text)) ? atoi(text) : -1;
		char pci[256];
		pathf(path, sizeof(path), "%s/device", ddir);
		tree_path(root, path, pci, sizeof(pci));
		size_t nport;
		pathf(path, sizeof(path), "%s/ports", ddir);
		char **pn = list_dir(path, &nport, &err);
		for (size_t k = 0; k < nport && np < max; k++) {
			struct kvn_sysfs_port *p = &ports[np++];
			char pdir[PATH_LEN];
			memset(p, 0, sizeof(*p));
			pathf(p->dev, sizeof(p->dev), "%s", devs[d]);
			p->port = (unsigned)atoi(pn[k]);
			p->numa_node = numa;
			pathf(p->pci, sizeof(p->pci), "%s", pci);
			pathf(pdir, sizeof(pdir), "%s/ports/%s", ddir, pn[k]);
			pathf(path, sizeof(path), "%s/state", pdir);
			if (read_line(path, text, sizeof(text)))
				after_colon(text, p->state, sizeof(p->state));
			p->active = !strcmp(p->state, "ACTIVE");
			pathf(path, sizeof(path), "%s/phys_state", pdir);
			if (read_line(path, text, sizeof(text)))
				after_colon(text, p->phys_state, sizeof(p->phys_state));
			pathf(path, sizeof(path), "%s/link_layer", pdir);
			read_line(path, p->link_layer, sizeof(p->link_layer));
			pathf(path, sizeof(path), "%s/rate", pdir);
			read_line(path, p->rate, sizeof(p->rate));
			read_gids(pdir, p);
			if (p->netdev[0]) {
				pathf(path, sizeof(path), "%s/class/net/%s/mtu", root, p->netdev);
				p->netdev_mtu =
				    read_line(path, text, sizeof(text)) ? atoi(text) : 0;
			}
		}
		free_list(pn, nport);
	}
	free_list(devs, ndev);
	return (int)np;
}

int
kvn_sysfs_pick_port(const struct kvn_sysfs_port *ports, int n, const char *want)
{
	for (int i = 0; i < n; i++)
		if (ports[i].active && (!want || !strcmp(want, ports[i].dev)))
			return i;
	return -1;
}

#if KVN_HAVE_VERBS
static int
mtu_bytes(enum ibv_mtu m)
{
	return m >= IBV_MTU_256 && m <= IBV_MTU_4096 ? 128 << m : 0;
}

int
kvn_rdma_port_mtu(const char *dev, unsigned port, int *active, int *max)
{
	int n = 0, rc = -ENODEV;
	struct ibv_device **list = ibv_get_device_list(&n);
	for (int d = 0; list && d < n && rc == -ENODEV; d++) {
		if (strcmp(dev, ibv_get_device_name(list[d])))
			continue;
		struct ibv_context *ctx = ibv_open_device(list[d]);
		struct ibv_port_attr pa;
		if (ctx && ibv_query_port(ctx, (uint8_t)port, &pa) == 0) {
			*active = mtu_bytes(pa.active_mtu);
			*max = mtu_bytes(pa.max_mtu);
			rc = 0;
		}
		if (ctx)
			ibv_close_device(ctx);
	}
	if (list)
		ibv_free_device_list(list);
	return rc;
}
#else
int
kvn_rdma_port_mtu(const char *dev, unsigned port, int *active, int *max)
{
	(void)dev, (void)port, (void)active, (void)max;
	return -ENOTSUP;
}
#endif

int
kvn_sysfs_known_mtu(const struct kvn_sysfs_port *p, int active)
{
	if (active)
		return active;
	return !strcmp(p->link_layer, "Ethernet") && p->netdev_mtu ? kvn_roce_mtu(p->netdev_mtu)
								   : 0;
}

int
kvn_sysfs_port_mtu(const struct kvn_sysfs_port *p)
{
	int active = 0, max = 0;
	if (kvn_rdma_port_mtu(p->dev, p->port, &active, &max) < 0)
		active = 0;
	return kvn_sysfs_known_mtu(p, active);
}

int
kvn_roce_mtu(int netdev_mtu)
{
	/* IB_GRH_BYTES 40 + IB_UDP_BYTES 8 + IB_BTH_BYTES 12 + IB_EXT_XRC_BYTES 4 +
	 * IB_EXT_ATOMICETH_BYTES 28 + IB_ICRC_BYTES 4 (include/rdma/ib_addr.h) */
	int room = netdev_mtu - 96;
	for (int m = 4096; m >= 256; m /= 2)
		if (room >= m)
			return m;
	return 0;
}
