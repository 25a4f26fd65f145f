/* Registering device memory for peers' READs (rdma/devreg.c, docs/gpu.md "Registration"): the
 * ladder's decision from fixtures of its facts (sysfs trees in temp dirs), the walk down it with
 * ways that fail on purpose, host staging through the tcp transport end to end, and, where
 * verbs has an active port (the rxe VM), a host dma-buf that rxe refuses.
 *
 * Nothing here stands for a GPU. Where a "device range" is needed it is host memory and the
 * test says so; the dma-buf is host memory exported by the kernel (dma_heap, udmabuf or vgem).
 * What needs a GPU is in test_gpu_device.c (ctest -L gpu). */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvnode/transport.h"
#include "node/cli/client.h"
#include "rdma/devreg.h"
#include "tests/helpers/hostdmabuf.h"
#include "tests/helpers/pattern.h"
#if KVN_HAVE_VERBS
#include "rdma/verbs/verbs.h"
#endif

#define MIB (1024 * 1024)

static char err[2048];

static void
assert_contains(const char *s, const char *want)
{
	cr_assert(s && strstr(s, want), "\"%s\" does not contain \"%s\"", s ? s : "(null)", want);
}

/* ---------------------------------------------------------------------------------------------
 * Fixtures: a sysfs tree in a temp dir, the log captured from stderr
 * ------------------------------------------------------------------------------------------- */

static char sysroot[64];

static void
sysfs_fixture(const char *with)
{
	char cmd[256];
	snprintf(sysroot, sizeof(sysroot), "/tmp/kvn-sysfs-XXXXXX");
	cr_assert_not_null(mkdtemp(sysroot));
	if (with) {
		snprintf(cmd, sizeof(cmd), "mkdir -p '%s%s'", sysroot, with);
		cr_assert_eq(system(cmd), 0, "%s", cmd);
	}
}

static void
sysfs_fixture_rm(void)
{
	char cmd[128];
	if (!sysroot[0])
		return;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", sysroot);
	cr_assert_eq(system(cmd), 0);
}

static int saved_stderr = -1;
static char logpath[64];

static void
log_capture(void)
{
	snprintf(logpath, sizeof(logpath), "/tmp/kvn-devreg-log-XXXXXX");
	int fd = mkstemp(logpath);
	cr_assert_geq(fd, 0);
	saved_stderr = dup(STDERR_FILENO);
	dup2(fd, STDERR_FILENO);
	close(fd);
}

/* What the code logged since log_capture (the caller frees it). */
static char *
log_captured(void)
{
	dup2(saved_stderr, STDERR_FILENO);
	close(saved_stderr);
	FILE *f = fopen(logpath, "r");
	cr_assert_not_null(f);
	char *text = calloc(1, 1 << 16);
	size_t n = fread(text, 1, (1 << 16) - 1, f);
	text[n] = '\0';
	fclose(f);
	unlink(logpath);
	return text;
}

/* ---------------------------------------------------------------------------------------------
 * The decision
 * ------------------------------------------------------------------------------------------- */

/* A verbs transport on a NIC that takes dma-buf, nvidia-peermem loaded, both offered. */
static struct kvn_devreg_facts
all_good(void)
{
	struct kvn_devreg_facts f = {.transport = "verbs",
				     .nic = "mlx5_0",
				     .can_dmabuf = true,
				     .dmabuf_probe = -EBADF,
				     .can_peermem = true,
				     .dmabuf_offered = true,
				     .staging_offered = true};
	f.sysfs.peermem = true;
	snprintf(f.sysfs.path, sizeof(f.sysfs.path), "/sys/module/nvidia_peermem");
	return f;
}

static void
assert_step(const struct kvn_devreg_plan *p, unsigned i, int method, int tried)
{
	cr_assert_eq(p->step[i].method, method, "step %u is %s", i,
		     kvn_reg_method_name(p->step[i].method));
	cr_assert_eq(p->step[i].tried, tried, "step %u (%s) tried=%d: %s", i,
		     kvn_reg_method_name(method), p->step[i].tried, p->step[i].why);
	if (!tried)
		cr_assert_lt(p->step[i].status, 0, "a way passed over carries its -errno");
}

Test(ladder, every_way_is_tried_in_order_when_every_fact_allows_it)
{
	struct kvn_devreg_facts f = all_good();
	struct kvn_devreg_plan p;
	kvn_devreg_plan(&f, &p);
	assert_step(&p, 0, KVN_REG_DMABUF, 1);
	assert_step(&p, 1, KVN_REG_PEERMEM, 1);
	assert_step(&p, 2, KVN_REG_STAGING, 1);
}

Test(ladder, a_probe_answer_of_eopnotsupp_passes_dma_buf_over_naming_the_nic_and_the_answer)
{
	struct kvn_devreg_facts f = all_good();
	f.nic = "rxe0";
	f.dmabuf_probe = -EOPNOTSUPP;
	struct kvn_devreg_plan p;
	kvn_devreg_plan(&f, &p);
	assert_step(&p, 0, KVN_REG_DMABUF, 0);
	cr_assert_eq(p.step[0].status, -EOPNOTSUPP);
	assert_contains(p.step[0].why, "rxe0");
	assert_contains(p.step[0].why, "answered EOPNOTSUPP, not EBADF");
	assert_step(&p, 1, KVN_REG_PEERMEM, 1);
	assert_step(&p, 2, KVN_REG_STAGING, 1);
}

Test(ladder, a_probe_answer_of_ebadf_or_a_registration_means_the_provider_takes_dma_buf)
{
	struct kvn_devreg_facts f = all_good();
	struct kvn_devreg_plan p;
	f.dmabuf_probe = -EBADF;
	kvn_devreg_plan(&f, &p);
	assert_step(&p, 0, KVN_REG_DMABUF, 1);
	f.dmabuf_probe = 0;
	kvn_devreg_plan(&f, &p);
	assert_step(&p, 0, KVN_REG_DMABUF, 1);
}

Test(ladder, any_other_probe_answer_passes_dma_buf_over_with_that_errno_named)
{
	struct kvn_devreg_facts f = all_good();
	struct kvn_devreg_plan p;
	f.dmabuf_probe = -EINVAL;
	kvn_devreg_plan(&f, &p);
	assert_step(&p, 0, KVN_REG_DMABUF, 0);
	assert_contains(p.step[0].why, "answered EINVAL");
}

Test(ladder, an_owner_without_a_dma_buf_exporter_passes_dma_buf_over)
{
	struct kvn_devreg_facts f = all_good();
	f.dmabuf_offered = false;
	struct kvn_devreg_plan p;
	kvn_devreg_plan(&f, &p);
	assert_step(&p, 0, KVN_REG_DMABUF, 0);
	assert_contains(p.step[0].why, "exports no dma-buf");
	assert_step(&p, 1, KVN_REG_PEERMEM, 1);
}

Test(ladder, a_build_without_ibv_reg_dmabuf_mr_says_so)
{
	struct kvn_devreg_facts f = all_good();
	f.can_dmabuf = false;
	struct kvn_devreg_plan p;
	kvn_devreg_plan(&f, &p);
	assert_step(&p, 0, KVN_REG_DMABUF, 0);
	assert_contains(p.step[0].why, "no ibv_reg_dmabuf_mr");
}

Test(ladder, without_nvidia_peermem_loaded_the_device_pointer_is_not_registered)
{
	struct kvn_devreg_facts f = all_good();
	f.sysfs.peermem = false;
	struct kvn_devreg_plan p;
	kvn_devreg_plan(&f, &p);
	assert_step(&p, 0, KVN_REG_DMABUF, 1);
	assert_step(&p, 1, KVN_REG_PEERMEM, 0);
	cr_assert_eq(p.step[1].status, -ENOENT);
	assert_contains(p.step[1].why,
			"nvidia-peermem is not loaded (no /sys/module/nvidia_peermem)");
	assert_step(&p, 2, KVN_REG_STAGING, 1);
}

Test(ladder, the_tcp_transport_has_only_host_staging)
{
	struct kvn_devreg_facts f = {
	    .transport = "tcp", .dmabuf_offered = true, .staging_offered = true};
	f.sysfs.peermem = true; /* loaded or not, tcp has no NIC to use it */
	struct kvn_devreg_plan p;
	kvn_devreg_plan(&f, &p);
	assert_step(&p, 0, KVN_REG_DMABUF, 0);
	assert_contains(p.step[0].why, "the tcp transport has no NIC");
	assert_step(&p, 1, KVN_REG_PEERMEM, 0);
	assert_contains(p.step[1].why, "the tcp transport has no NIC");
	assert_step(&p, 2, KVN_REG_STAGING, 1);
}

Test(ladder, nothing_offered_and_no_module_passes_every_way_over)
{
	struct kvn_devreg_facts f = all_good();
	f.dmabuf_offered = f.staging_offered = f.sysfs.peermem = false;
	struct kvn_devreg_plan p;
	kvn_devreg_plan(&f, &p);
	for (unsigned i = 0; i < KVN_REG_STEPS; i++)
		assert_step(&p, i, p.step[i].method, 0);
	assert_contains(p.step[2].why, "no host staging area");
}

/* ---------------------------------------------------------------------------------------------
 * sysfs facts, from fixture trees
 * ------------------------------------------------------------------------------------------- */

TestSuite(sysfs, .fini = sysfs_fixture_rm);

Test(sysfs, each_peer_memory_module_counts_and_is_named)
{
	static const char *const paths[] = {"/module/nvidia_peermem", "/module/nv_peer_mem",
					    "/kernel/mm/memory_peers/nv_mem"};
	for (size_t i = 0; i < 3; i++) {
		struct kvn_devreg_sysfs s;
		char want[256];
		sysfs_fixture(paths[i]);
		kvn_devreg_read_sysfs(sysroot, &s);
		cr_assert(s.peermem, "%s not seen", paths[i]);
		snprintf(want, sizeof(want), "%s%s", sysroot, paths[i]);
		cr_assert_str_eq(s.path, want);
		sysfs_fixture_rm();
	}
}

Test(sysfs, a_tree_without_them_says_no_and_names_the_first_path_looked_for)
{
	struct kvn_devreg_sysfs s;
	char want[256];
	sysfs_fixture("/module/nvidia"); /* the driver itself is not the peer-memory module */
	kvn_devreg_read_sysfs(sysroot, &s);
	cr_assert_not(s.peermem);
	snprintf(want, sizeof(want), "%s/module/nvidia_peermem", sysroot);
	cr_assert_str_eq(s.path, want);
}

Test(sysfs, kvnode_sysfs_in_the_environment_stands_for_sys)
{
	struct kvn_devreg_sysfs s;
	sysfs_fixture("/module/nvidia_peermem");
	setenv("KVNODE_SYSFS", sysroot, 1);
	kvn_devreg_read_sysfs(NULL, &s);
	cr_assert(s.peermem);
	assert_contains(s.path, sysroot);
}

/* ---------------------------------------------------------------------------------------------
 * The walk, with ways that fail on purpose
 * ------------------------------------------------------------------------------------------- */

struct fake {
	int dmabuf_rc, peermem_rc, host_rc; /* what each way answers */
	int calls[4];			    /* per method */
	int exported_fd;		    /* the "dma-buf" the owner handed out: a pipe's end */
	int other_end;
	void *staged;	  /* the area the owner's staging gave */
	int staging_done; /* times it was handed back */
	size_t misalign;  /* gives the area at this offset from the range's in-page offset */
	_Alignas(4096) char area[8192];
	int reg_token;
};

static int
f_export(void *ctx, void *ptr, size_t len, int *fd, uint64_t *off, char *e, size_t el)
{
	struct fake *f = ctx;
	(void)ptr, (void)len, (void)e, (void)el;
	int p[2];
	cr_assert_eq(pipe(p), 0);
	f->exported_fd = *fd = p[0];
	f->other_end = p[1];
	*off = 64;
	return 0;
}

static int
f_staging(void *ctx, void *ptr, size_t len, void **host, char *e, size_t el)
{
	struct fake *f = ctx;
	(void)ptr, (void)len, (void)e, (void)el;
	f->staged = *host = f->area + f->misalign;
	return 0;
}

static void
f_staging_done(void *ctx, void *ptr, void *host)
{
	struct fake *f = ctx;
	(void)ptr;
	cr_assert_eq(host, f->staged);
	f->staging_done++;
}

static int
w_dmabuf(void *t, int fd, uint64_t off, void *iova, size_t len, void **reg, char *e, size_t el)
{
	struct fake *f = t;
	(void)iova, (void)len;
	f->calls[KVN_REG_DMABUF]++;
	cr_assert_eq(fd, f->exported_fd, "the way gets the owner's fd");
	cr_assert_eq(off, 64, "and its offset");
	*reg = &f->reg_token;
	return f->dmabuf_rc ? kvn_seterr(f->dmabuf_rc, e, el, "fake dma-buf way refused") : 0;
}

static int
w_peermem(void *t, void *ptr, size_t len, void **reg, char *e, size_t el)
{
	struct fake *f = t;
	(void)ptr, (void)len;
	f->calls[KVN_REG_PEERMEM]++;
	*reg = &f->reg_token;
	return f->peermem_rc ? kvn_seterr(f->peermem_rc, e, el, "fake peermem way refused") : 0;
}

static int
w_host(void *t, void *host, void *iova, size_t len, void **reg, char *e, size_t el)
{
	struct fake *f = t;
	(void)len;
	f->calls[KVN_REG_STAGING]++;
	cr_assert_eq(host, f->area, "the owner's area is what gets registered");
	cr_assert_eq(iova, (void *)0x10000, "under the device range's addresses");
	*reg = &f->reg_token;
	return f->host_rc ? kvn_seterr(f->host_rc, e, el, "fake host way refused") : 0;
}

static int
walk(struct fake *fk, const struct kvn_devreg_facts *facts, struct kvn_reg_report *rep,
     struct kvn_devreg_release *rel)
{
	struct kvn_dev_mem src = {
	    KVN_DEV_MEM_INIT,	.device = "test range", .ctx = fk,
	    .dmabuf = f_export, .staging = f_staging,	.staging_done = f_staging_done};
	struct kvn_devreg_ways w = {
	    .t = fk, .dmabuf = w_dmabuf, .peermem = w_peermem, .host = w_host};
	struct kvn_devreg_plan plan;
	void *reg = NULL;
	kvn_devreg_plan(facts, &plan);
	err[0] = '\0';
	int rc = kvn_devreg_run(&plan, facts, &src, (void *)0x10000, 4096, &w, &reg, rel, rep, err,
				sizeof(err));
	if (rc > 0)
		cr_assert_eq(reg, &fk->reg_token);
	return rc;
}

Test(walk, the_first_way_that_registers_wins_and_the_ways_after_it_are_not_tried)
{
	struct fake fk = {.dmabuf_rc = -EIO};
	struct kvn_devreg_facts facts = all_good();
	struct kvn_reg_report rep = {KVN_REG_REPORT_INIT};
	struct kvn_devreg_release rel;
	log_capture();
	int rc = walk(&fk, &facts, &rep, &rel);
	char *log = log_captured();
	cr_assert_eq(rc, KVN_REG_PEERMEM, "rc %d: %s", rc, err);
	cr_assert_eq(fk.calls[KVN_REG_DMABUF], 1);
	cr_assert_eq(fk.calls[KVN_REG_PEERMEM], 1);
	cr_assert_eq(fk.calls[KVN_REG_STAGING], 0, "a way after the winner was tried");
	cr_assert_eq(rep.method, KVN_REG_PEERMEM);
	cr_assert_eq(rep.nsteps, 2);
	cr_assert_eq(rep.step[0].status, -EIO);
	cr_assert(rep.step[0].tried);
	assert_contains(rep.step[0].why, "fake dma-buf way refused");
	cr_assert_eq(rep.step[1].status, 0);
	cr_assert_null(rep.staging);
	/* each attempt at info, naming the device and why */
	assert_contains(log, "test range: dma-buf failed: fake dma-buf way refused");
	assert_contains(log, "test range: 4096 bytes at 0x10000 registered by nvidia-peermem");
	free(log);
	kvn_devreg_release(&rel);
	cr_assert_eq(fk.staging_done, 0);
}

Test(walk, the_owners_dma_buf_fd_is_closed_once_registered_or_refused)
{
	for (int refuse = 0; refuse < 2; refuse++) {
		struct fake fk = {.dmabuf_rc = refuse ? -EOPNOTSUPP : 0};
		struct kvn_devreg_facts facts = all_good();
		struct kvn_devreg_release rel;
		walk(&fk, &facts, NULL, &rel);
		cr_assert_eq(fk.calls[KVN_REG_DMABUF], 1);
		errno = 0;
		cr_assert_eq(fcntl(fk.exported_fd, F_GETFD), -1, "fd %d left open", fk.exported_fd);
		cr_assert_eq(errno, EBADF);
		close(fk.other_end);
	}
}

Test(walk, host_staging_wins_when_the_others_fail_and_its_area_is_handed_back_once)
{
	struct fake fk = {.dmabuf_rc = -EOPNOTSUPP, .peermem_rc = -EFAULT};
	struct kvn_devreg_facts facts = all_good();
	struct kvn_reg_report rep = {KVN_REG_REPORT_INIT};
	struct kvn_devreg_release rel;
	log_capture();
	int rc = walk(&fk, &facts, &rep, &rel);
	char *log = log_captured();
	cr_assert_eq(rc, KVN_REG_STAGING, "rc %d: %s", rc, err);
	cr_assert_eq(rep.staging, fk.area);
	cr_assert_eq(rep.nsteps, 3);
	assert_contains(log, "registered by host staging (no GPUDirect");
	free(log);
	cr_assert_eq(fk.staging_done, 0, "handed back before dereg");
	kvn_devreg_release(&rel);
	kvn_devreg_release(&rel);
	cr_assert_eq(fk.staging_done, 1);
	close(fk.other_end);
}

Test(walk, a_staging_area_the_transport_cannot_register_goes_back_to_its_owner)
{
	struct fake fk = {.host_rc = -ENOMEM};
	struct kvn_devreg_facts facts = all_good();
	facts.dmabuf_offered = false;
	facts.sysfs.peermem = false;
	struct kvn_reg_report rep = {KVN_REG_REPORT_INIT};
	struct kvn_devreg_release rel;
	int rc = walk(&fk, &facts, &rep, &rel);
	cr_assert_eq(rc, -ENOMEM, "the tried way's own error: %d", rc);
	cr_assert_eq(fk.staging_done, 1);
	cr_assert_eq(rep.method, KVN_REG_NONE);
}

Test(walk, a_staging_area_off_the_ranges_offset_in_its_page_is_refused_and_given_back)
{
	struct fake fk = {.misalign = 16};
	struct kvn_devreg_facts facts = all_good();
	facts.dmabuf_offered = false;
	facts.sysfs.peermem = false;
	struct kvn_devreg_release rel;
	int rc = walk(&fk, &facts, NULL, &rel);
	cr_assert_eq(rc, -EINVAL, "rc %d: %s", rc, err);
	assert_contains(err, "is not at 0x10000's offset in a page");
	cr_assert_eq(fk.calls[KVN_REG_STAGING], 0, "registered anyway");
	cr_assert_eq(fk.staging_done, 1);
}

Test(walk, when_nothing_registers_err_gives_every_reason_in_the_ladders_order)
{
	struct fake fk = {0};
	struct kvn_devreg_facts facts = all_good();
	facts.dmabuf_probe = -EOPNOTSUPP;
	facts.sysfs.peermem = false;
	facts.staging_offered = false;
	struct kvn_reg_report rep = {KVN_REG_REPORT_INIT};
	struct kvn_devreg_release rel;
	int rc = walk(&fk, &facts, &rep, &rel);
	cr_assert_eq(rc, -EOPNOTSUPP);
	assert_contains(err, "verbs: cannot register 4096 bytes of test range: dma-buf: the verbs "
			     "provider of mlx5_0 does not take dma-buf");
	assert_contains(err, "; nvidia-peermem: nvidia-peermem is not loaded");
	assert_contains(err, "; host staging: the memory's owner offers no host staging area");
	cr_assert_eq(fk.calls[1] + fk.calls[2] + fk.calls[3], 0, "a way passed over was tried");
	cr_assert_eq(rep.nsteps, 3);
}

Test(walk, an_older_callers_report_is_filled_only_as_far_as_its_size)
{
	struct {
		struct kvn_reg_report r;
		char guard[64];
	} old;
	memset(&old, 0x5a, sizeof(old));
	old.r.abi = KVN_ABI;
	old.r.size = (uint32_t)offsetof(struct kvn_reg_report, step[1]);
	struct fake fk = {.dmabuf_rc = -EIO, .peermem_rc = -EIO};
	struct kvn_devreg_facts facts = all_good();
	struct kvn_devreg_release rel;
	cr_assert_eq(walk(&fk, &facts, &old.r, &rel), KVN_REG_STAGING);
	cr_assert_eq(old.r.method, KVN_REG_STAGING);
	cr_assert_eq(old.r.size, offsetof(struct kvn_reg_report, step[1]));
	const unsigned char *past = (const unsigned char *)&old.r.step[1];
	for (size_t i = 0; i < sizeof(old.r.step[1]); i++)
		cr_assert_eq(past[i], 0x5a, "byte %zu past the caller's size written", i);
	kvn_devreg_release(&rel);
	close(fk.other_end);
}

/* ---------------------------------------------------------------------------------------------
 * Host staging through the tcp transport. The "device range" is host memory (peers must never
 * read it: it is zeroed once staged); the staging area is a copy the owner made.
 * ------------------------------------------------------------------------------------------- */

struct owner_range {
	char *range;   /* stands for the device range: what reg_dev is given */
	char *staging; /* the owner's host copy */
	void *base;    /* what to free of it */
	size_t len;
	int done;
};

/* len bytes at ptr's offset in a page, as a staging area must be; *base is what to free. */
static void *
area_like(const void *ptr, size_t len, void **base)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	cr_assert_eq(posix_memalign(base, pg, len + pg), 0);
	return (char *)*base + ((uintptr_t)ptr & (pg - 1));
}

static int
o_staging(void *ctx, void *ptr, size_t len, void **host, char *e, size_t el)
{
	struct owner_range *o = ctx;
	(void)e, (void)el;
	cr_assert_eq(ptr, o->range);
	o->staging = area_like(ptr, len, &o->base);
	memcpy(o->staging, o->range, len); /* what a device -> host copy does on a GPU */
	*host = o->staging;
	return 0;
}

static void
o_staging_done(void *ctx, void *ptr, void *host)
{
	struct owner_range *o = ctx;
	cr_assert_eq(ptr, o->range);
	cr_assert_eq(host, o->staging);
	free(o->base);
	o->staging = NULL;
	o->done++;
}

static const struct kvn_transport_ops *
tcp_ops(void)
{
	const struct kvn_transport_ops *ops = kvn_transport_by_name("tcp", NULL, err, sizeof(err));
	cr_assert_not_null(ops, "%s", err);
	cr_assert(KVN_ABI_HAS(ops, reg_dev) && ops->reg_dev);
	return ops;
}

Test(tcp_staging, gpu_memory_without_an_owner_is_refused_with_every_reason)
{
	const struct kvn_transport_ops *ops = tcp_ops();
	struct kvn_transport *tp;
	struct kvn_tp_mr *mr = NULL;
	struct kvn_mem_desc d;
	char buf[4096];
	cr_assert_eq(ops->open(NULL, &tp, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ops->reg_mem(tp, buf, sizeof(buf), KVN_MEM_GPU, &mr, &d, err, sizeof(err)),
		     -EOPNOTSUPP);
	assert_contains(err, "reg_dev");
	cr_assert_eq(ops->reg_dev(tp, buf, sizeof(buf), NULL, &mr, &d, NULL, err, sizeof(err)),
		     -EOPNOTSUPP);
	assert_contains(err, "dma-buf: the tcp transport has no NIC");
	assert_contains(err, "host staging: the memory's owner offers no host staging area");
	cr_assert_null(mr);
	ops->close(tp);
}

Test(tcp_staging, peers_read_the_staged_copy_by_the_device_ranges_addresses)
{
	const struct kvn_transport_ops *ops = tcp_ops();
	struct kvn_transport *owner, *reader;
	struct owner_range o = {.len = 3 * MIB + 123};
	o.range = malloc(o.len);
	pattern_fill(o.range, o.len, 77);
	struct kvn_dev_mem src = {KVN_DEV_MEM_INIT,
				  .device = "host memory standing for a device range", .ctx = &o,
				  .staging = o_staging, .staging_done = o_staging_done};
	struct kvn_reg_report rep = {KVN_REG_REPORT_INIT};
	struct kvn_tp_mr *mr, *dmr;
	struct kvn_mem_desc d, dd;
	char bound[128];
	struct kvn_tp_ep *ep;
	cr_assert_eq(ops->open(NULL, &owner, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ops->open(NULL, &reader, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ops->reg_dev(owner, o.range, o.len, &src, &mr, &d, &rep, err, sizeof(err)), 0,
		     "%s", err);
	cr_assert_eq(rep.method, KVN_REG_STAGING);
	cr_assert_eq(rep.staging, o.staging);
	cr_assert_eq(d.addr, (uintptr_t)o.range, "peers name the range's own addresses");
	cr_assert_eq(d.len, o.len);
	memset(o.range, 0, o.len); /* from here only the staged copy has the pattern */

	char *dst = malloc(o.len);
	memset(dst, 0xee, o.len);
	cr_assert_eq(ops->reg_mem(reader, dst, o.len, KVN_MEM_HOST, &dmr, &dd, err, sizeof(err)),
		     0);
	cr_assert_eq(ops->listen(owner, "127.0.0.1:0", bound, sizeof(bound), err, sizeof(err)), 0,
		     "%s", err);
	cr_assert_eq(ops->connect(reader, bound, 0, &ep, err, sizeof(err)), 0, "%s", err);
	struct kvn_read rd = {
	    .local = dst, .local_mr = dmr, .remote_addr = d.addr, .rkey = d.rkey, .len = o.len};
	cr_assert_eq(kvn_transport_read_sync(ops, ep, &rd, 1, err, sizeof(err)), 0, "%s", err);
	cr_assert(pattern_check(dst, o.len, 77), "the read did not return the staged bytes");
	/* a read past the range is refused as for any registration */
	rd.remote_addr = d.addr + o.len - 10;
	rd.len = 20;
	cr_assert_eq(kvn_transport_read_sync(ops, ep, &rd, 1, err, sizeof(err)), -EACCES);

	ops->ep_close(ep);
	cr_assert_eq(o.done, 0);
	ops->dereg(mr);
	cr_assert_eq(o.done, 1, "dereg hands the staging area back");
	ops->dereg(dmr);
	ops->close(reader);
	ops->close(owner);
	free(dst);
	free(o.range);
}

Test(tcp_staging, a_read_into_a_staged_registration_lands_in_its_staging_area)
{
	const struct kvn_transport_ops *ops = tcp_ops();
	struct kvn_transport *owner, *reader;
	size_t len = MIB;
	char *region = malloc(len), bound[128];
	pattern_fill(region, len, 5);
	struct owner_range o = {.len = len, .range = calloc(1, len)};
	struct kvn_dev_mem src = {KVN_DEV_MEM_INIT, .ctx = &o, .staging = o_staging,
				  .staging_done = o_staging_done};
	struct kvn_tp_mr *mr, *dmr;
	struct kvn_mem_desc d, dd;
	struct kvn_tp_ep *ep;
	cr_assert_eq(ops->open(NULL, &owner, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ops->open(NULL, &reader, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ops->reg_mem(owner, region, len, KVN_MEM_HOST, &mr, &d, err, sizeof(err)), 0);
	cr_assert_eq(ops->reg_dev(reader, o.range, len, &src, &dmr, &dd, NULL, err, sizeof(err)), 0,
		     "%s", err);
	cr_assert_eq(ops->listen(owner, "127.0.0.1:0", bound, sizeof(bound), err, sizeof(err)), 0);
	cr_assert_eq(ops->connect(reader, bound, 0, &ep, err, sizeof(err)), 0, "%s", err);
	/* the local address is the range's; the bytes go to the staging area at that offset */
	struct kvn_read rd = {.local = o.range + 4096,
			      .local_mr = dmr,
			      .remote_addr = d.addr + 4096,
			      .rkey = d.rkey,
			      .len = len - 8192};
	cr_assert_eq(kvn_transport_read_sync(ops, ep, &rd, 1, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(memcmp(o.staging + 4096, region + 4096, len - 8192), 0);
	for (size_t i = 0; i < len; i++)
		cr_assert_eq(o.range[i], 0, "byte %zu of the range itself was written", i);
	ops->ep_close(ep);
	ops->dereg(dmr);
	ops->dereg(mr);
	ops->close(reader);
	ops->close(owner);
	cr_assert_eq(o.done, 1);
	free(region);
	free(o.range);
}

/* ---------------------------------------------------------------------------------------------
 * verbs and a host dma-buf (in the rxe VM: scripts/verbs-checks runs this suite there)
 * ------------------------------------------------------------------------------------------- */

#if KVN_HAVE_VERBS

static const char *
test_host(void)
{
	const char *h = getenv("KVN_TEST_TRANSPORT_HOST");
	return h && *h ? h : "127.0.0.1";
}

struct dmabuf_owner {
	struct hostdmabuf b;
	char *staging;
	void *base;
	int exports, done;
};

static int
d_export(void *ctx, void *ptr, size_t len, int *fd, uint64_t *off, char *e, size_t el)
{
	struct dmabuf_owner *o = ctx;
	(void)len;
	o->exports++;
	*fd = dup(o->b.fd);
	*off = (uint64_t)((char *)ptr - (char *)o->b.map);
	return *fd < 0 ? kvn_seterr(-errno, e, el, "dup: %s", strerror(errno)) : 0;
}

static int
d_staging(void *ctx, void *ptr, size_t len, void **host, char *e, size_t el)
{
	struct dmabuf_owner *o = ctx;
	(void)e, (void)el;
	o->staging = area_like(ptr, len, &o->base);
	memcpy(o->staging, ptr, len); /* the owner's copy of the dma-buf's bytes */
	*host = o->staging;
	return 0;
}

static void
d_staging_done(void *ctx, void *ptr, void *host)
{
	struct dmabuf_owner *o = ctx;
	(void)ptr;
	cr_assert_eq(host, o->staging);
	free(o->base);
	o->staging = NULL;
	o->done++;
}

static const struct kvn_transport_ops *vops;

static struct kvn_transport *
verbs_open_here(void)
{
	struct kvn_transport_cfg cfg = {KVN_TRANSPORT_CFG_INIT, .gid_index = -1};
	struct kvn_transport *tp;
	vops = kvn_transport_by_name("verbs", &cfg, err, sizeof(err));
	if (!vops)
		cr_skip_test("verbs: %s", err);
	if (vops->probe(&cfg, err, sizeof(err)) < 0)
		cr_skip_test("verbs cannot run here (it runs in the rxe VM: scripts/verbs-checks): "
			     "%s",
			     err);
	cr_assert_eq(vops->open(&cfg, &tp, err, sizeof(err)), 0, "%s", err);
	return tp;
}

static void
dmabuf_here(struct dmabuf_owner *o, size_t len)
{
	char why[1024];
	memset(o, 0, sizeof(*o));
	if (hostdmabuf_create(len, &o->b, why, sizeof(why)) < 0)
		cr_skip_test("no host dma-buf on this kernel: %s", why);
	cr_log_info("host dma-buf of %zu bytes from %s", o->b.len, o->b.via);
	pattern_fill(o->b.map, o->b.len, 9);
}

static struct kvn_dev_mem
dmabuf_src(struct dmabuf_owner *o)
{
	return (struct kvn_dev_mem){
	    KVN_DEV_MEM_INIT,	.device = "host dma-buf", .ctx = o,
	    .dmabuf = d_export, .staging = d_staging,	  .staging_done = d_staging_done};
}

/* A reader on the same device reads the whole registration and finds the pattern. */
static void
read_back(struct kvn_transport *owner, const struct kvn_mem_desc *d)
{
	struct kvn_transport_cfg cfg = {KVN_TRANSPORT_CFG_INIT, .gid_index = -1};
	struct kvn_transport *reader;
	struct kvn_tp_mr *dmr;
	struct kvn_mem_desc dd;
	struct kvn_tp_ep *ep;
	char addr[160], bound[160];
	char *dst = malloc(d->len);
	cr_assert_eq(vops->open(&cfg, &reader, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(vops->reg_mem(reader, dst, d->len, KVN_MEM_HOST, &dmr, &dd, err, sizeof(err)),
		     0, "%s", err);
	snprintf(addr, sizeof(addr), "%s:0", test_host());
	cr_assert_eq(vops->listen(owner, addr, bound, sizeof(bound), err, sizeof(err)), 0, "%s",
		     err);
	cr_assert_eq(vops->connect(reader, bound, 0, &ep, err, sizeof(err)), 0, "%s", err);
	memset(dst, 0, d->len);
	struct kvn_read rd = {
	    .local = dst, .local_mr = dmr, .remote_addr = d->addr, .rkey = d->rkey, .len = d->len};
	cr_assert_eq(kvn_transport_read_sync(vops, ep, &rd, 1, err, sizeof(err)), 0, "%s", err);
	cr_assert(pattern_check(dst, d->len, 9), "the READ did not return the staged bytes");
	vops->ep_close(ep);
	vops->dereg(dmr);
	vops->close(reader);
	free(dst);
}

TestSuite(verbs_dmabuf, .fini = sysfs_fixture_rm);

Test(verbs_dmabuf, the_provider_refuses_a_host_dma_buf_with_eopnotsupp_probe_and_real_fd_alike)
{
	struct kvn_transport *tp = verbs_open_here();
	struct dmabuf_owner o;
	dmabuf_here(&o, 2 * MIB);
	cr_log_info("dma-buf probe of %s answered %s", ibv_get_device_name(tp->ctx->device),
		    strerrorname_np(-tp->dmabuf_probe));
	cr_assert_eq(tp->dmabuf_probe, -EOPNOTSUPP, "the probe (fd -1) answered %d",
		     tp->dmabuf_probe);
	errno = 0;
	struct ibv_mr *mr = ibv_reg_dmabuf_mr(tp->pd, 0, o.b.len, (uintptr_t)o.b.map, o.b.fd,
					      IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ);
	int e = errno;
	if (mr)
		ibv_dereg_mr(mr);
	cr_assert_null(mr, "rxe registered a %s dma-buf", o.b.via);
	cr_log_info("ibv_reg_dmabuf_mr of the %s dma-buf: %s", o.b.via, strerrorname_np(e));
	cr_assert_eq(e, EOPNOTSUPP, "ibv_reg_dmabuf_mr of a real fd answered %s", strerror(e));
	vops->close(tp);
	hostdmabuf_destroy(&o.b);
}

Test(verbs_dmabuf, the_ladder_passes_dma_buf_over_falls_back_to_host_staging_and_says_why)
{
	struct kvn_transport *tp = verbs_open_here();
	struct dmabuf_owner o;
	dmabuf_here(&o, 2 * MIB);
	sysfs_fixture(NULL); /* no nvidia-peermem: rung 2 must not register the host pages */
	setenv("KVNODE_SYSFS", sysroot, 1);
	struct kvn_dev_mem src = dmabuf_src(&o);
	struct kvn_reg_report rep = {KVN_REG_REPORT_INIT};
	struct kvn_tp_mr *mr;
	struct kvn_mem_desc d;
	log_capture();
	int rc = vops->reg_dev(tp, o.b.map, o.b.len, &src, &mr, &d, &rep, err, sizeof(err));
	char *log = log_captured();
	cr_assert_eq(rc, 0, "%s", err);
	cr_assert_eq(rep.method, KVN_REG_STAGING);
	cr_assert_not(rep.step[0].tried);
	cr_assert_eq(rep.step[0].status, -EOPNOTSUPP);
	assert_contains(rep.step[0].why, "rxe0");
	assert_contains(rep.step[0].why, "EOPNOTSUPP");
	cr_assert_not(rep.step[1].tried);
	assert_contains(rep.step[1].why, "nvidia-peermem is not loaded");
	cr_assert(rep.step[2].tried);
	cr_assert_eq(o.exports, 0, "a dma-buf the provider cannot take was exported");
	assert_contains(log, "host dma-buf: dma-buf passed over: the verbs provider of rxe0 does "
			     "not take dma-buf (ibv_reg_dmabuf_mr with fd -1 answered EOPNOTSUPP");
	assert_contains(log, "registered by host staging");
	char *line = strstr(log, "dma-buf passed over");
	cr_log_info("%.*s", (int)strcspn(line, "\n"), line);
	free(log);
	cr_assert_eq(d.addr, (uintptr_t)o.b.map, "peers name the dma-buf's own addresses");
	memset(o.b.map, 0, o.b.len); /* only the staged copy has the pattern now */
	read_back(tp, &d);
	vops->dereg(mr);
	cr_assert_eq(o.done, 1, "dereg hands the staging area back");
	vops->close(tp);
	hostdmabuf_destroy(&o.b);
}

Test(verbs_dmabuf, a_real_dma_buf_registration_through_the_ladder_is_refused_and_falls_back)
{
	struct kvn_transport *tp = verbs_open_here();
	struct dmabuf_owner o;
	dmabuf_here(&o, 2 * MIB);
	sysfs_fixture(NULL);
	setenv("KVNODE_SYSFS", sysroot, 1);
	struct kvn_dev_mem src = dmabuf_src(&o);
	struct kvn_devreg_facts f;
	struct kvn_devreg_plan plan;
	kvn_vb_devreg_facts(tp, &src, &f);
	kvn_devreg_plan(&f, &plan);
	/* As if the probe had said yes: the dma-buf way itself meets rxe with the real fd. */
	plan.step[0].tried = 1;
	plan.step[0].status = 0;
	plan.step[0].why[0] = '\0';
	struct kvn_reg_report rep = {KVN_REG_REPORT_INIT};
	struct kvn_tp_mr *mr;
	struct kvn_mem_desc d;
	log_capture();
	int rc = kvn_vb_reg_dev_plan(tp, &plan, &f, o.b.map, o.b.len, &src, &mr, &d, &rep, err,
				     sizeof(err));
	char *log = log_captured();
	cr_assert_eq(rc, 0, "%s", err);
	cr_assert_eq(o.exports, 1, "the owner's dma-buf was asked for");
	cr_assert(rep.step[0].tried);
	cr_assert_eq(rep.step[0].status, -EOPNOTSUPP, "ibv_reg_dmabuf_mr answered %d: %s",
		     rep.step[0].status, rep.step[0].why);
	assert_contains(rep.step[0].why, "ibv_reg_dmabuf_mr of 2097152 bytes on rxe0");
	assert_contains(log, "host dma-buf: dma-buf failed: ibv_reg_dmabuf_mr");
	char *line = strstr(log, "dma-buf failed");
	cr_log_info("%.*s", (int)strcspn(line, "\n"), line);
	free(log);
	cr_assert_eq(rep.method, KVN_REG_STAGING);
	memset(o.b.map, 0, o.b.len);
	read_back(tp, &d);
	vops->dereg(mr);
	cr_assert_eq(o.done, 1);
	vops->close(tp);
	hostdmabuf_destroy(&o.b);
}

#else

Test(verbs_dmabuf, the_provider_refuses_a_host_dma_buf_with_eopnotsupp_probe_and_real_fd_alike)
{
	cr_skip_test("built without the verbs transport (rdma-core was not found)");
}

#endif

/* ---------------------------------------------------------------------------------------------
 * kvnode stat's table: one line per GPU from the stats JSON (the JSON here is written by hand
 * in the shape kvn_engine_gpus_json gives; test_gpu_device checks a node's own on a GPU)
 * ------------------------------------------------------------------------------------------- */

Test(stat_table, each_gpu_says_how_its_memory_registers_or_why_it_does_not)
{
	const char *json =
	    "{\"node_name\":\"n\",\"version\":\"0.1.0\",\"backends\":[],\"hits\":0,\"misses\":0,"
	    "\"gpus\":[{\"index\":0,\"name\":\"NVIDIA H200\",\"pci_bus_id\":\"0000:17:00.0\","
	    "\"registration\":{\"transport\":\"verbs\",\"method\":\"host staging\",\"steps\":[]}},"
	    "{\"index\":1,\"name\":\"NVIDIA H200\",\"pci_bus_id\":\"0000:2a:00.0\","
	    "\"registration\":{\"transport\":null,\"method\":\"none\",\"why\":\"no transport: the "
	    "node registers memory for peers only with scheduler_url set\",\"steps\":[]}}]}";
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);
	cr_assert_eq(kvn_cli_print_stats(json, out), 0);
	fclose(out);
	assert_contains(text, "gpu 0    NVIDIA H200 (0000:17:00.0): memory registers by host "
			      "staging with verbs\n");
	assert_contains(text, "gpu 1    NVIDIA H200 (0000:2a:00.0): memory not registered: no "
			      "transport: the node registers memory for peers only with "
			      "scheduler_url set\n");
	free(text);
}
