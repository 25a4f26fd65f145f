/* Device memory in the verbs transport (docs/gpu.md "Registration"): the provider's dma-buf
 * probe, and reg_dev, which walks rdma/devreg.c's ladder with the three verbs registrations:
 * ibv_reg_dmabuf_mr, ibv_reg_mr on the device pointer, ibv_reg_mr_iova of a staging area. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "rdma/devreg.h"
#include "rdma/verbs/verbs.h"

#define LOG "verbs"
/* Peers may read, never write: no IBV_ACCESS_REMOTE_WRITE, ever. */
#define ACCESS (IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ)

/* UCX's probe (openucx/ucx src/uct/ib/base/ib_md.c, uct_ib_md_check_dmabuf): a dma-buf
 * registration of fd -1. A provider that takes dma-buf looks at the fd and answers EBADF; one
 * that does not answers EOPNOTSUPP (libibverbs' default for a provider without the call, or
 * the kernel driver's) before it looks. A registration that succeeds means support too. */
int
kvn_vb_probe_dmabuf(struct kvn_transport *tp)
{
#if KVN_HAVE_IBV_DMABUF
	errno = 0;
	struct ibv_mr *mr =
	    ibv_reg_dmabuf_mr(tp->pd, 0, (size_t)sysconf(_SC_PAGESIZE), 0, -1, ACCESS);
	if (mr) {
		ibv_dereg_mr(mr);
		return 0;
	}
	int rc = errno ? -errno : -EIO;
	kvn_debug(LOG, "%s: ibv_reg_dmabuf_mr(fd -1) answered %s: dma-buf %s", tp->devname,
		  strerror(-rc), rc == -EBADF ? "supported" : "not supported");
	return rc;
#else
	(void)tp;
	return -EOPNOTSUPP;
#endif
}

static int
mr_fail(struct kvn_transport *tp, const char *call, size_t len, char *err, size_t errlen)
{
	int rc = errno ? -errno : -EIO;
	return kvn_seterr(rc, err, errlen, "%s of %zu bytes on %s: %s", call, len, tp->devname,
			  strerror(-rc));
}

static int
way_dmabuf(void *t, int fd, uint64_t offset, void *iova, size_t len, void **reg, char *err,
	   size_t errlen)
{
#if KVN_HAVE_IBV_DMABUF
	struct kvn_transport *tp = t;
	errno = 0;
	/* iova: peers and local reads name the device pointer, as with the other ways. */
	*reg = ibv_reg_dmabuf_mr(tp->pd, offset, len, (uintptr_t)iova, fd, ACCESS);
	return *reg ? 0 : mr_fail(tp, "ibv_reg_dmabuf_mr", len, err, errlen);
#else
	(void)t, (void)fd, (void)offset, (void)iova, (void)len, (void)reg;
	return kvn_seterr(-EOPNOTSUPP, err, errlen, "built without ibv_reg_dmabuf_mr");
#endif
}

static int
way_peermem(void *t, void *ptr, size_t len, void **reg, char *err, size_t errlen)
{
	struct kvn_transport *tp = t;
	errno = 0;
	*reg = ibv_reg_mr(tp->pd, ptr, len, ACCESS);
	return *reg ? 0 : mr_fail(tp, "ibv_reg_mr of the device pointer", len, err, errlen);
}

static int
way_host(void *t, void *host, void *iova, size_t len, void **reg, char *err, size_t errlen)
{
	struct kvn_transport *tp = t;
	errno = 0;
	*reg = ibv_reg_mr_iova(tp->pd, host, len, (uintptr_t)iova, ACCESS);
	return *reg ? 0
		    : mr_fail(tp, "ibv_reg_mr_iova of the staging area (raise 'ulimit -l')", len,
			      err, errlen);
}

void
kvn_vb_devreg_facts(struct kvn_transport *tp, const struct kvn_dev_mem *src,
		    struct kvn_devreg_facts *f)
{
	*f = (struct kvn_devreg_facts){
	    .transport = LOG,
	    .nic = tp->devname,
	    .can_dmabuf = KVN_HAVE_IBV_DMABUF,
	    .dmabuf_probe = tp->dmabuf_probe,
	    .can_peermem = true,
	    /* the caller's struct may be older than ours: callbacks it lacks are not offered */
	    .dmabuf_offered = src && KVN_ABI_HAS(src, dmabuf) && src->dmabuf,
	    .staging_offered = src && KVN_ABI_HAS(src, staging) && src->staging,
	};
	kvn_devreg_read_sysfs(NULL, &f->sysfs);
}

int
kvn_vb_reg_dev_plan(struct kvn_transport *tp, const struct kvn_devreg_plan *plan,
		    const struct kvn_devreg_facts *f, void *ptr, size_t len,
		    const struct kvn_dev_mem *src, struct kvn_tp_mr **out,
		    struct kvn_mem_desc *desc, struct kvn_reg_report *report, char *err,
		    size_t errlen)
{
	static const struct kvn_devreg_ways ways_tmpl = {
	    .dmabuf = way_dmabuf, .peermem = way_peermem, .host = way_host};
	struct kvn_devreg_ways w = ways_tmpl;
	struct kvn_tp_mr *mr = calloc(1, sizeof(*mr));
	void *reg = NULL;

	if (!mr)
		return kvn_seterr(-ENOMEM, err, errlen, "out of memory");
	w.t = tp;
	int rc = kvn_devreg_run(plan, f, src, ptr, len, &w, &reg, &mr->rel, report, err, errlen);
	if (rc < 0) {
		free(mr);
		return rc;
	}
	mr->mr = reg;
	mr->base = (uintptr_t)ptr;
	mr->len = len;
	mr->method = rc;
	*desc = (struct kvn_mem_desc){.addr = (uintptr_t)ptr, .len = len, .rkey = mr->mr->rkey};
	kvn_vb_mr_link(tp, mr);
	*out = mr;
	return 0;
}

int
kvn_vb_reg_dev(struct kvn_transport *tp, void *ptr, size_t len, const struct kvn_dev_mem *src,
	       struct kvn_tp_mr **out, struct kvn_mem_desc *desc, struct kvn_reg_report *report,
	       char *err, size_t errlen)
{
	struct kvn_devreg_facts f;
	struct kvn_devreg_plan plan;
	int rc = kvn_vb_dev_enter(tp, err, errlen);
	if (rc)
		return rc;
	kvn_vb_devreg_facts(tp, src, &f);
	kvn_devreg_plan(&f, &plan);
	rc = kvn_vb_reg_dev_plan(tp, &plan, &f, ptr, len, src, out, desc, report, err, errlen);
	kvn_vb_dev_leave(tp);
	return rc;
}
