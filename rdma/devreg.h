/* The registration ladder for device memory (docs/gpu.md "Registration"): which ways to try and
 * why the others are passed over (kvn_devreg_plan, a pure function of the facts), the facts
 * sysfs gives, and the walk down the ladder that a transport runs with its own registration
 * calls (kvn_devreg_run). rdma/verbs and rdma/tcp share it. */
#ifndef KVN_RDMA_DEVREG_H
#define KVN_RDMA_DEVREG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvnode/transport.h"

/* "dma-buf", "nvidia-peermem", "host staging"; "none" for KVN_REG_NONE or anything else. */
const char *kvn_reg_method_name(int method);

/* What sysfs says of GPUDirect's kernel side: nvidia-peermem, or the older nv_peer_mem. */
struct kvn_devreg_sysfs {
	bool peermem;
	char path[200]; /* the path that said so; else the one looked for first */
};
/* root: the sysfs mount ("/sys") or a fixture tree standing for it; NULL: $KVNODE_SYSFS when
 * set (the tests' override), else /sys. Reads nothing else. */
void kvn_devreg_read_sysfs(const char *root, struct kvn_devreg_sysfs *out);

/* Everything the decision takes. */
struct kvn_devreg_facts {
	const char *transport; /* "verbs", "tcp": the reasons name it */
	const char *nic;       /* the RDMA device ("rxe0"); NULL: the transport has none */
	/* The transport can hand a dma-buf to its NIC at all (verbs built with
	 * ibv_reg_dmabuf_mr); and, when it can, the provider's answer to the probe (a
	 * registration of fd -1): 0 or -EBADF: it takes dma-buf; any other -errno: it does not. */
	bool can_dmabuf;
	int dmabuf_probe;
	/* The transport registers device pointers with its NIC (verbs): nvidia-peermem applies. */
	bool can_peermem;
	struct kvn_devreg_sysfs sysfs;
	bool dmabuf_offered;  /* the memory's owner gave a dma-buf exporter */
	bool staging_offered; /* and a host staging area */
};

/* The ladder for these facts: KVN_REG_STEPS steps in the order tried (dma-buf, nvidia-peermem,
 * host staging); a step with tried = 1 is to be tried, the others carry the -errno and the
 * reason they are passed over with. Pure: reads nothing but f. */
struct kvn_devreg_plan {
	struct kvn_reg_step step[KVN_REG_STEPS];
};
void kvn_devreg_plan(const struct kvn_devreg_facts *f, struct kvn_devreg_plan *out);

/* A transport's registration calls, one a way; each fills *reg with its registration. */
struct kvn_devreg_ways {
	void *t;
	int (*dmabuf)(void *t, int fd, uint64_t offset, void *iova, size_t len, void **reg,
		      char *err, size_t errlen);
	int (*peermem)(void *t, void *ptr, size_t len, void **reg, char *err, size_t errlen);
	/* host memory registered so that peers address it as iova */
	int (*host)(void *t, void *host, void *iova, size_t len, void **reg, char *err,
		    size_t errlen);
};

/* What a registration that host staging won must give back on dereg: the owner's area. */
struct kvn_devreg_release {
	void (*staging_done)(void *ctx, void *ptr, void *host);
	void *ctx, *ptr, *host;
};

/* Walks plan down from its first step: each step tried or passed over is logged (info, the
 * transport as component, naming the device), and the first that registers wins. src may be
 * NULL (nothing offered); it is read as a struct of the caller's ABI version. On success it
 * returns the winner (enum kvn_reg_method, > 0), *reg is its registration and *rel what dereg
 * hands back (kvn_devreg_release). rep (NULL allowed) gets the steps, as much as the caller's
 * size holds. When nothing registers,
 * -EOPNOTSUPP (or the last tried way's own error) with every step's reason in err. */
int kvn_devreg_run(const struct kvn_devreg_plan *plan, const struct kvn_devreg_facts *f,
		   const struct kvn_dev_mem *src, void *ptr, size_t len,
		   const struct kvn_devreg_ways *w, void **reg, struct kvn_devreg_release *rel,
		   struct kvn_reg_report *rep, char *err, size_t errlen);
/* Gives the owner's staging area back (nothing when none was taken). */
void kvn_devreg_release(struct kvn_devreg_release *rel);

#endif
