/* The registration ladder for device memory: the decision (pure), the sysfs facts and the walk
 * (rdma/devreg.h). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/abi.h"
#include "core/log.h"
#include "rdma/devreg.h"

const char *
kvn_reg_method_name(int method)
{
	switch (method) {
	case KVN_REG_DMABUF:
		return "dma-buf";
	case KVN_REG_PEERMEM:
		return "nvidia-peermem";
	case KVN_REG_STAGING:
		return "host staging";
	default:
		return "none";
	}
}

/* The errno's own name ("EOPNOTSUPP"): that is what a reader greps for. */
static const char *
errno_name(int e)
{
	const char *n = strerrorname_np(e < 0 ? -e : e);
	return n ? n : "an unknown errno";
}

/* ---------------------------------------------------------------------------------------------
 * Facts from sysfs
 * ------------------------------------------------------------------------------------------- */

/* The files UCX looks for (openucx/ucx src/uct/ib/base/ib_md.c, uct_ib_check_gpudirect_driver):
 * the nvidia-peermem module of the NVIDIA driver, the older out-of-tree nv_peer_mem, and the
 * peer-memory client that MLNX_OFED's nv_peer_mem registers. The module's directory is enough:
 * it exists while the module is loaded. */
static const char *const peermem_paths[] = {
    "/module/nvidia_peermem",
    "/module/nv_peer_mem",
    "/kernel/mm/memory_peers/nv_mem",
};

void
kvn_devreg_read_sysfs(const char *root, struct kvn_devreg_sysfs *out)
{
	if (!root)
		root = getenv("KVNODE_SYSFS");
	if (!root || !*root)
		root = "/sys";
	memset(out, 0, sizeof(*out));
	for (size_t i = 0; i < sizeof(peermem_paths) / sizeof(peermem_paths[0]); i++) {
		char p[sizeof(out->path)];
		struct stat st;
		snprintf(p, sizeof(p), "%s%s", root, peermem_paths[i]);
		if (i == 0)
			memcpy(out->path, p, sizeof(p));
		if (stat(p, &st) == 0) {
			out->peermem = true;
			memcpy(out->path, p, sizeof(p));
			return;
		}
	}
}

/* ---------------------------------------------------------------------------------------------
 * The decision
 * ------------------------------------------------------------------------------------------- */

static void pass_over(struct kvn_reg_step *s, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
pass_over(struct kvn_reg_step *s, int status, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->why, sizeof(s->why), fmt, ap);
	va_end(ap);
	s->tried = 0;
	s->status = status;
}

void
kvn_devreg_plan(const struct kvn_devreg_facts *f, struct kvn_devreg_plan *out)
{
	const char *tp = f->transport ? f->transport : "this";
	memset(out, 0, sizeof(*out));
	struct kvn_reg_step *d = &out->step[0], *p = &out->step[1], *h = &out->step[2];
	d->method = KVN_REG_DMABUF;
	p->method = KVN_REG_PEERMEM;
	h->method = KVN_REG_STAGING;
	d->tried = p->tried = h->tried = 1;

	if (!f->nic)
		pass_over(d, -EOPNOTSUPP, "the %s transport has no NIC to hand a dma-buf to", tp);
	else if (!f->can_dmabuf)
		pass_over(d, -EOPNOTSUPP,
			  "this build's libibverbs has no ibv_reg_dmabuf_mr (rdma-core 34 or newer "
			  "has it)");
	else if (f->dmabuf_probe != 0 && f->dmabuf_probe != -EBADF)
		/* UCX's probe: only a provider that looks at the fd (EBADF for -1) takes one. */
		pass_over(
		    d, -EOPNOTSUPP,
		    "the verbs provider of %s does not take dma-buf (ibv_reg_dmabuf_mr with fd "
		    "-1 answered %s, not EBADF)",
		    f->nic, errno_name(f->dmabuf_probe));
	else if (!f->dmabuf_offered)
		pass_over(d, -EOPNOTSUPP,
			  "the memory's owner exports no dma-buf of it (a CUDA driver without "
			  "cuMemGetHandleForAddressRange, or none offered)");

	if (!f->nic || !f->can_peermem)
		pass_over(p, -EOPNOTSUPP,
			  "the %s transport has no NIC to register a device pointer with", tp);
	else if (!f->sysfs.peermem)
		pass_over(p, -ENOENT, "nvidia-peermem is not loaded (no %s)", f->sysfs.path);

	if (!f->staging_offered)
		pass_over(h, -EOPNOTSUPP, "the memory's owner offers no host staging area");
}

/* ---------------------------------------------------------------------------------------------
 * The walk
 * ------------------------------------------------------------------------------------------- */

static int
try_step(const struct kvn_devreg_ways *w, const struct kvn_dev_mem *src, int method, void *ptr,
	 size_t len, void **reg, struct kvn_devreg_release *rel, char *err, size_t errlen)
{
	int rc;
	switch (method) {
	case KVN_REG_DMABUF: {
		int fd = -1;
		uint64_t off = 0;
		if (!w->dmabuf)
			return kvn_seterr(-EOPNOTSUPP, err, errlen, "not built in");
		rc = src->dmabuf(src->ctx, ptr, len, &fd, &off, err, errlen);
		if (rc < 0)
			return rc;
		rc = w->dmabuf(w->t, fd, off, ptr, len, reg, err, errlen);
		close(fd); /* the registration holds its own reference to the dma-buf */
		return rc;
	}
	case KVN_REG_PEERMEM:
		if (!w->peermem)
			return kvn_seterr(-EOPNOTSUPP, err, errlen, "not built in");
		return w->peermem(w->t, ptr, len, reg, err, errlen);
	case KVN_REG_STAGING: {
		void *host = NULL;
		if (!w->host)
			return kvn_seterr(-EOPNOTSUPP, err, errlen, "not built in");
		rc = src->staging(src->ctx, ptr, len, &host, err, errlen);
		if (rc < 0)
			return rc;
		if (!host)
			return kvn_seterr(-EINVAL, err, errlen,
					  "the owner's staging answered no host area");
		/* The area is registered under ptr's addresses: the kernel takes a start and
		 * an iova only at the same offset in their pages (ib_uverbs_reg_mr). */
		size_t pg = (size_t)sysconf(_SC_PAGESIZE);
		if (((uintptr_t)host ^ (uintptr_t)ptr) & (pg - 1)) {
			rc = kvn_seterr(-EINVAL, err, errlen,
					"the owner's staging area %p is not at %p's offset in a "
					"page (%zu bytes): it cannot be registered under the "
					"range's addresses",
					host, ptr, pg);
			if (src->staging_done)
				src->staging_done(src->ctx, ptr, host);
			return rc;
		}
		rc = w->host(w->t, host, ptr, len, reg, err, errlen);
		if (rc < 0) {
			if (src->staging_done)
				src->staging_done(src->ctx, ptr, host);
			return rc;
		}
		*rel = (struct kvn_devreg_release){
		    .staging_done = src->staging_done, .ctx = src->ctx, .ptr = ptr, .host = host};
		return 0;
	}
	default:
		return kvn_seterr(-EINVAL, err, errlen, "no such way (%d)", method);
	}
}

static void
report_out(const struct kvn_reg_report *full, struct kvn_reg_report *rep)
{
	if (!rep || rep->size < 2 * sizeof(uint32_t))
		return;
	size_t n = rep->size < sizeof(*full) ? rep->size : sizeof(*full);
	uint32_t abi = rep->abi, size = rep->size;
	memcpy(rep, full, n);
	rep->abi = abi;
	rep->size = size;
}

int
kvn_devreg_run(const struct kvn_devreg_plan *plan, const struct kvn_devreg_facts *f,
	       const struct kvn_dev_mem *in, void *ptr, size_t len, const struct kvn_devreg_ways *w,
	       void **reg, struct kvn_devreg_release *rel, struct kvn_reg_report *rep, char *err,
	       size_t errlen)
{
	const char *comp = f->transport ? f->transport : "rdma";
	struct kvn_dev_mem src = {KVN_DEV_MEM_INIT};
	struct kvn_reg_report r = {KVN_REG_REPORT_INIT};
	char dev[160], why[sizeof(r.step[0].why)];
	int rc = -EOPNOTSUPP;

	memset(rel, 0, sizeof(*rel));
	*reg = NULL;
	if (in && kvn_abi_read_in(in, &src, sizeof(src), "struct kvn_dev_mem", "KVN_DEV_MEM_INIT",
				  err, errlen))
		return -EINVAL;
	if (src.device && *src.device)
		snprintf(dev, sizeof(dev), "%s", src.device);
	else
		snprintf(dev, sizeof(dev), "device memory at %p", ptr);
	if (!ptr || !len)
		return kvn_seterr(-EINVAL, err, errlen,
				  "%s: cannot register an empty region of %s (%zu bytes)", comp,
				  dev, len);

	for (unsigned i = 0; i < KVN_REG_STEPS; i++) {
		struct kvn_reg_step *s = &r.step[r.nsteps++];
		*s = plan->step[i];
		const char *name = kvn_reg_method_name(s->method);
		/* A way the plan tries needs the owner's callback; a caller's plan may not know. */
		if (s->tried && ((s->method == KVN_REG_DMABUF && !src.dmabuf) ||
				 (s->method == KVN_REG_STAGING && !src.staging))) {
			s->tried = 0;
			s->status = -EOPNOTSUPP;
			snprintf(s->why, sizeof(s->why), "the memory's owner offers none");
		}
		if (!s->tried) {
			kvn_info(comp, "%s: %s passed over: %s", dev, name, s->why);
			continue;
		}
		why[0] = '\0';
		s->status = try_step(w, &src, s->method, ptr, len, reg, rel, why, sizeof(why));
		if (s->status == 0) {
			snprintf(s->why, sizeof(s->why), "registered %zu bytes", len);
			r.method = s->method;
			r.staging = rel->host;
			kvn_info(
			    comp, "%s: %zu bytes at %p registered by %s%s", dev, len, ptr, name,
			    s->method == KVN_REG_STAGING
				? " (no GPUDirect: peers read a host copy the owner keeps current)"
				: "");
			report_out(&r, rep);
			return s->method;
		}
		rc = s->status;
		snprintf(s->why, sizeof(s->why), "%s", why[0] ? why : kvn_strerror(s->status));
		kvn_info(comp, "%s: %s failed: %s", dev, name, s->why);
	}
	/* Nothing worked: every reason, in the order of the ladder. */
	size_t o = err && errlen
		       ? (size_t)snprintf(err, errlen, "%s: cannot register %zu bytes of %s:", comp,
					  len, dev)
		       : errlen;
	for (unsigned i = 0; i < r.nsteps && o < errlen; i++)
		o += (size_t)snprintf(err + o, errlen - o, "%s %s: %s", i ? ";" : "",
				      kvn_reg_method_name(r.step[i].method), r.step[i].why);
	r.method = KVN_REG_NONE;
	report_out(&r, rep);
	/* Passed over everywhere: the memory cannot be registered here (-EOPNOTSUPP); a way
	 * that was tried keeps its own error (-ENOMEM from a NIC out of MRs says more). */
	return rc;
}

void
kvn_devreg_release(struct kvn_devreg_release *rel)
{
	if (rel && rel->host && rel->staging_done)
		rel->staging_done(rel->ctx, rel->ptr, rel->host);
	if (rel)
		memset(rel, 0, sizeof(*rel));
}
