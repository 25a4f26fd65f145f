/* gpu/ on a real NVIDIA device (ctest -L gpu, scripts/gpu-checks): device info, device memory,
 * dma-buf export, staging through the "cuda" copy engine from 1 byte to 64 MiB, and device
 * memory registered for peers' READs (tcp: host staging; verbs: whichever way this machine
 * takes), and the client library putting from and getting into device memory through a node,
 * all byte-verified. Every test is skipped, with kvn_gpu_open's answer as the reason, on a
 * host where the driver or a device is missing. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gpu/gpu.h"
#include "gpu/staging.h"
#include "kvnode/client.h"
#include "kvnode/transport.h"
#include "node/cluster/cluster.h"
#include "node/engine/config.h"
#include "node/engine/engine.h"
#include "node/engine/storage.h"
#include "node/metrics/metrics.h"
#include "rdma/devreg.h"
#include "tests/helpers/cluster_env.h"
#include "tests/helpers/engine_env.h"
#include "tests/helpers/expo.h"
#include "tests/helpers/pattern.h"
#include "tests/helpers/proc.h"

static char err[1024];

static struct kvn_gpu *
gpu_or_skip(void)
{
	struct kvn_gpu *gpu = NULL;
	char why[1024];
	int rc = kvn_gpu_open(&gpu, why, sizeof(why));
	if (rc)
		cr_skip_test("no usable GPU (%d): %s", rc, why);
	return gpu;
}

Test(gpu_device, open_finds_devices_with_names_and_pci_ids)
{
	struct kvn_gpu *gpu = gpu_or_skip();
	int n = kvn_gpu_device_count(gpu);
	cr_assert_gt(n, 0);
	cr_assert_geq(kvn_gpu_driver_version(gpu), KVN_GPU_MIN_DRIVER);
	for (int d = 0; d < n; d++) {
		struct kvn_gpu_info in;
		cr_assert_eq(kvn_gpu_device_info(gpu, d, &in, err, sizeof(err)), 0, "%s", err);
		cr_assert_eq(in.index, d);
		cr_assert_neq(in.name[0], '\0');
		/* dddd:bb:dd.f, what /sys/bus/pci/devices/ names it */
		cr_assert_eq(strlen(in.pci_bus_id), 12, "PCI id \"%s\"", in.pci_bus_id);
		cr_assert_gt(in.cc_major, 0);
		cr_log_info("GPU %d: %s, PCI %s, compute %d.%d", d, in.name, in.pci_bus_id,
			    in.cc_major, in.cc_minor);
	}
	struct kvn_gpu_info in;
	cr_assert_eq(kvn_gpu_device_info(gpu, n, &in, err, sizeof(err)), -ENODEV);
	cr_assert(strstr(err, "absent: this host has"), "%s", err);
	kvn_gpu_close(gpu);
}

Test(gpu_device, device_memory_is_allocated_freed_and_known_as_device_memory)
{
	struct kvn_gpu *gpu = gpu_or_skip();
	static const size_t sizes[] = {1, 4096, 1 << 20, 64 << 20, 256 << 20};
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		struct kvn_gpu_mem *m = NULL;
		cr_assert_eq(kvn_gpu_mem_alloc(gpu, 0, sizes[i], &m, err, sizeof(err)), 0,
			     "%zu bytes: %s", sizes[i], err);
		cr_assert_neq(kvn_gpu_mem_ptr(m), 0);
		cr_assert_eq(kvn_gpu_mem_len(m), sizes[i]);
		int dev = -1;
		cr_assert_eq(kvn_gpu_pointer_device(gpu, (void *)(uintptr_t)kvn_gpu_mem_ptr(m),
						    &dev, err, sizeof(err)),
			     1, "%s", err);
		cr_assert_eq(dev, 0);
		kvn_gpu_mem_free(m);
	}
	int dev = -1, host = 0;
	cr_assert_eq(kvn_gpu_pointer_device(gpu, &host, &dev, err, sizeof(err)), 0,
		     "a stack address is not device memory: %s", err);
	struct kvn_gpu_mem *m = NULL;
	cr_assert_eq(kvn_gpu_mem_alloc(gpu, 0, (size_t)1 << 50, &m, err, sizeof(err)), -ENOMEM);
	cr_assert(strstr(err, "CUDA_ERROR_OUT_OF_MEMORY"), "%s", err);
	cr_assert_eq(kvn_gpu_mem_alloc(gpu, 0, 0, &m, err, sizeof(err)), -EINVAL);
	kvn_gpu_close(gpu);
}

Test(gpu_device, dma_buf_export_of_an_offset_inside_an_allocation)
{
	struct kvn_gpu *gpu = gpu_or_skip();
	struct kvn_gpu_mem *m = NULL;
	cr_assert_eq(kvn_gpu_mem_alloc(gpu, 0, 8 << 20, &m, err, sizeof(err)), 0, "%s", err);
	int fd = -1;
	uint64_t off = 0;
	int rc = kvn_gpu_dmabuf_export(gpu, 0, kvn_gpu_mem_ptr(m) + 65536, 1 << 20, &fd, &off, err,
				       sizeof(err));
	if (rc == -EOPNOTSUPP) {
		kvn_gpu_mem_free(m);
		kvn_gpu_close(gpu);
		cr_skip_test("this driver or device cannot export dma-buf: %s", err);
	}
	cr_assert_eq(rc, 0, "%s", err);
	cr_assert_geq(fd, 0);
	cr_assert_eq(off, 65536, "the offset of the pointer in its allocation");
	close(fd);
	cr_assert_eq(kvn_gpu_dmabuf_export(gpu, 0, kvn_gpu_mem_ptr(m), 16 << 20, &fd, &off, err,
					   sizeof(err)),
		     -EINVAL, "a range past the allocation");
	kvn_gpu_mem_free(m);
	kvn_gpu_close(gpu);
}

static void
staged_round_trip(struct kvn_staging *st, struct kvn_gpu_mem *m, size_t len, uint64_t seed)
{
	unsigned char *src = malloc(len), *back = malloc(len);
	cr_assert(src && back);
	pattern_fill(src, len, seed);
	memset(back, 0, len);
	cr_assert_eq(kvn_staging_put_buf(st, kvn_gpu_mem_ptr(m), src, len, err, sizeof(err)), 0,
		     "put %zu: %s", len, err);
	cr_assert_eq(kvn_staging_get_buf(st, back, kvn_gpu_mem_ptr(m), len, err, sizeof(err)), 0,
		     "get %zu: %s", len, err);
	cr_assert(pattern_check(back, len, seed), "%zu bytes through the device: wrong bytes", len);
	free(src);
	free(back);
}

Test(gpu_device, staging_put_get_through_the_cuda_engine_1_byte_to_64_MiB)
{
	struct kvn_gpu *gpu = gpu_or_skip();
	struct kvn_copy_engine *e = NULL;
	struct kvn_staging *st = NULL;
	struct kvn_gpu_mem *m = NULL;
	cr_assert_eq(kvn_gpu_copy_engine(gpu, 0, 2, &e, err, sizeof(err)), 0, "%s", err);
	cr_assert_str_eq(e->ops->name, "cuda");
	cr_assert_eq(kvn_staging_create(e, 8 << 20, &st, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kvn_gpu_mem_alloc(gpu, 0, 64 << 20, &m, err, sizeof(err)), 0, "%s", err);
	static const size_t sizes[] = {
	    1, 2, 4095, 4096, 4097, 65536, 1 << 20, (4 << 20) + 3, 8 << 20, 16 << 20, 64 << 20};
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
		staged_round_trip(st, m, sizes[i], 77 + i);
	kvn_gpu_mem_free(m);
	kvn_staging_destroy(st);
	kvn_copy_engine_destroy(e);
	kvn_gpu_close(gpu);
}

Test(gpu_device, cuda_engine_copies_directly_on_each_stream)
{
	struct kvn_gpu *gpu = gpu_or_skip();
	struct kvn_copy_engine *e = NULL;
	struct kvn_gpu_mem *m = NULL;
	size_t len = 3 << 20;
	cr_assert_eq(kvn_gpu_copy_engine(gpu, 0, 2, &e, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kvn_gpu_mem_alloc(gpu, 0, len, &m, err, sizeof(err)), 0, "%s", err);
	unsigned char *a = malloc(len), *b = calloc(1, len);
	pattern_fill(a, len, 5);
	cr_assert_eq(e->ops->copy_to_dev(e, kvn_gpu_mem_ptr(m), a, len, 1, err, sizeof(err)), 0,
		     "%s", err);
	cr_assert_eq(e->ops->sync(e, 1, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(e->ops->copy_to_host(e, b, kvn_gpu_mem_ptr(m), len, 0, err, sizeof(err)), 0,
		     "%s", err);
	cr_assert_eq(e->ops->sync(e, 0, err, sizeof(err)), 0, "%s", err);
	cr_assert(pattern_check(b, len, 5));
	cr_assert_eq(e->ops->sync(e, 2, err, sizeof(err)), -EINVAL);
	free(a);
	free(b);
	kvn_gpu_mem_free(m);
	kvn_copy_engine_destroy(e);
	kvn_gpu_close(gpu);
}

/* ------------------------------------------------------------------------------------------
 * Device memory down the registration ladder (docs/gpu.md "Registration")
 * ------------------------------------------------------------------------------------------ */

#define REG_LEN ((size_t)4 << 20)

/* Device memory holding pattern seed, and the engine that filled it. */
static struct kvn_gpu_mem *
filled_device_memory(struct kvn_gpu *gpu, struct kvn_copy_engine **e, uint64_t seed)
{
	struct kvn_gpu_mem *m = NULL;
	unsigned char *a = malloc(REG_LEN);
	pattern_fill(a, REG_LEN, seed);
	cr_assert_eq(kvn_gpu_copy_engine(gpu, 0, 2, e, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kvn_gpu_mem_alloc(gpu, 0, REG_LEN, &m, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(
	    (*e)->ops->copy_to_dev(*e, kvn_gpu_mem_ptr(m), a, REG_LEN, 0, err, sizeof(err)), 0,
	    "%s", err);
	cr_assert_eq((*e)->ops->sync(*e, 0, err, sizeof(err)), 0, "%s", err);
	free(a);
	return m;
}

/* A reader of the same transport reads the whole registration and finds the pattern. */
static void
read_back(const struct kvn_transport_ops *ops, struct kvn_transport *owner,
	  const struct kvn_transport_cfg *cfg, const char *listen, const struct kvn_mem_desc *d,
	  uint64_t seed)
{
	struct kvn_transport *reader;
	struct kvn_tp_mr *dmr;
	struct kvn_mem_desc dd;
	struct kvn_tp_ep *ep;
	char bound[160];
	char *dst = calloc(1, d->len);
	cr_assert_eq(ops->open(cfg, &reader, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ops->reg_mem(reader, dst, d->len, KVN_MEM_HOST, &dmr, &dd, err, sizeof(err)),
		     0, "%s", err);
	cr_assert_eq(ops->listen(owner, listen, bound, sizeof(bound), err, sizeof(err)), 0, "%s",
		     err);
	cr_assert_eq(ops->connect(reader, bound, 0, &ep, err, sizeof(err)), 0, "%s", err);
	struct kvn_read rd = {
	    .local = dst, .local_mr = dmr, .remote_addr = d->addr, .rkey = d->rkey, .len = d->len};
	cr_assert_eq(kvn_transport_read_sync(ops, ep, &rd, 1, err, sizeof(err)), 0, "%s", err);
	cr_assert(pattern_check(dst, d->len, seed), "the READ did not return the device's bytes");
	ops->ep_close(ep);
	ops->dereg(dmr);
	ops->close(reader);
	free(dst);
}

/* Registers m through reg_dev; when host staging won, fills the area from the device as the
 * owner must; reads it all back over the transport. */
static void
ladder_round_trip(struct kvn_gpu *gpu, const struct kvn_transport_ops *ops,
		  const struct kvn_transport_cfg *cfg, const char *listen)
{
	struct kvn_copy_engine *e = NULL;
	struct kvn_gpu_mem *m = filled_device_memory(gpu, &e, 31);
	struct kvn_gpu_info in;
	struct kvn_gpu_dev_src ctx;
	struct kvn_dev_mem src;
	struct kvn_reg_report rep = {KVN_REG_REPORT_INIT};
	struct kvn_transport *owner;
	struct kvn_tp_mr *mr;
	struct kvn_mem_desc d;
	void *ptr = (void *)(uintptr_t)kvn_gpu_mem_ptr(m);
	cr_assert_eq(kvn_gpu_device_info(gpu, 0, &in, err, sizeof(err)), 0, "%s", err);
	kvn_gpu_dev_mem(gpu, &in, &ctx, &src);
	cr_assert_eq(ops->open(cfg, &owner, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(ops->reg_dev(owner, ptr, REG_LEN, &src, &mr, &d, &rep, err, sizeof(err)), 0,
		     "%s", err);
	for (unsigned i = 0; i < rep.nsteps; i++)
		cr_log_info("%s on %s: %s: %s%s", ctx.name, ops->name,
			    kvn_reg_method_name(rep.step[i].method),
			    rep.step[i].tried ? "" : "passed over: ", rep.step[i].why);
	cr_assert_neq(rep.method, KVN_REG_NONE);
	cr_assert_eq(d.addr, (uintptr_t)ptr, "peers name the device pointer");
	if (rep.method == KVN_REG_STAGING) {
		cr_assert_not_null(rep.staging);
		cr_assert_eq(e->ops->copy_to_host(e, rep.staging, kvn_gpu_mem_ptr(m), REG_LEN, 0,
						  err, sizeof(err)),
			     0, "%s", err);
		cr_assert_eq(e->ops->sync(e, 0, err, sizeof(err)), 0, "%s", err);
	}
	read_back(ops, owner, cfg, listen, &d, 31);
	ops->dereg(mr);
	ops->close(owner);
	kvn_gpu_mem_free(m);
	kvn_copy_engine_destroy(e);
}

Test(gpu_device, device_memory_registers_by_host_staging_over_tcp_and_reads_back)
{
	struct kvn_gpu *gpu = gpu_or_skip();
	const struct kvn_transport_ops *ops = kvn_transport_by_name("tcp", NULL, err, sizeof(err));
	cr_assert_not_null(ops, "%s", err);
	ladder_round_trip(gpu, ops, NULL, "127.0.0.1:0");
	kvn_gpu_close(gpu);
}

/* dma-buf or nvidia-peermem when this machine's NIC and driver take them, else host staging:
 * whichever wins, a peer's READ must return the device's bytes. */
Test(gpu_device, device_memory_goes_down_the_ladder_on_verbs_and_reads_back)
{
	struct kvn_gpu *gpu = gpu_or_skip();
	struct kvn_transport_cfg cfg = {KVN_TRANSPORT_CFG_INIT, .gid_index = -1};
	const struct kvn_transport_ops *ops =
	    kvn_transport_by_name("verbs", &cfg, err, sizeof(err));
	if (!ops)
		cr_skip_test("verbs: %s", err);
	if (ops->probe(&cfg, err, sizeof(err)) < 0)
		cr_skip_test("verbs cannot run on this machine: %s", err);
	const char *h = getenv("KVN_TEST_TRANSPORT_HOST");
	char listen[160];
	snprintf(listen, sizeof(listen), "%s:0", h && *h ? h : "127.0.0.1");
	ladder_round_trip(gpu, ops, &cfg, listen);
	kvn_gpu_close(gpu);
}

/* A node with a GPU and a transport finds at start how the GPU's memory registers, and says so
 * in its stats and metrics. The scheduler is unreachable on purpose (port 9): that is not fatal,
 * and the probe happens before the node joins. */
Test(gpu_device, a_node_records_how_its_gpus_memory_registers_in_its_stats)
{
	struct kvn_gpu *gpu = gpu_or_skip();
	kvn_gpu_close(gpu);
	struct kvn_config *cfg;
	struct kvn_engine *eng;
	struct kvn_cluster *c = NULL;
	engine_env_open("max_local_cpu_size: 0.05\nhugepages: false\ngpu: true\ngpu_devices: [0]\n"
			"scheduler_url: 127.0.0.1:9\ntransport: tcp\n",
			&cfg, &eng);
	cr_assert_eq(kvn_cluster_start(cfg, eng, &c, err, sizeof(err)), 0, "%s", err);
	char *text = kvn_engine_stats_json(eng);
	cr_log_info("%s", text);
	cJSON *root = cJSON_Parse(text);
	cJSON *g0 = cJSON_GetArrayItem(cJSON_GetObjectItem(root, "gpus"), 0);
	cJSON *reg = cJSON_GetObjectItem(g0, "registration");
	cr_assert_not_null(reg, "no gpus[0].registration in %s", text);
	cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(reg, "transport")), "tcp");
	cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(reg, "method")), "host staging");
	cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItem(reg, "steps")), 3);
	cJSON_Delete(root);
	free(text);
	/* and kvnode_gpu_registration: 1 for the winner, 0 for the other ways */
	struct kvn_node_metrics nm = {.eng = eng, .cluster = c};
	struct kvn_expo e = {0};
	char why[256];
	cr_assert_eq(kvn_metrics_collect_node(&nm, &e), 0);
	cr_assert(expo_check(e.p, why, sizeof(why)), "%s", why);
	cr_assert_eq(expo_value(e.p, "kvnode_gpu_registration{gpu=\"0\",method=\"host staging\"}"),
		     1, "%s", e.p);
	cr_assert_eq(expo_value(e.p, "kvnode_gpu_registration{gpu=\"0\",method=\"dma-buf\"}"), 0);
	cr_assert_eq(expo_value(e.p, "kvnode_gpu_registration{gpu=\"0\",method=\"none\"}"), 0);
	free(e.p);
	kvn_cluster_stop(c);
	kvn_engine_close(eng);
	kvn_config_free(cfg);
}

/* kvnode doctor on a GPU host runs the same registration probe as a node's start. */
Test(gpu_device, doctor_shows_how_each_gpus_memory_registers)
{
	kvn_gpu_close(gpu_or_skip());
	char dir[256], out[300];
	cr_assert_eq(proc_mkdtemp("gpu-doctor", dir, sizeof(dir)), 0);
	snprintf(out, sizeof(out), "%s/doctor.txt", dir);
	const char *argv[] = {KVN_BINARY_DIR "/kvnode", "doctor", NULL};
	const char *env[] = {"KVNODE_GPU=true", "KVNODE_TRANSPORT=tcp", NULL};
	struct proc_opts po = {.stdout_path = out, .env = env};
	int rc = proc_run(argv, &po, 120000);
	char *text = proc_read_file(out, NULL);
	cr_assert_not_null(text, "doctor printed nothing (exit %d)", rc);
	cr_log_info("%s", text);
	cr_assert(strstr(text, "gpu 0 memory") &&
		      strstr(text, "registers with tcp by host staging"),
		  "%s", text);
	free(text);
	proc_rm_tree(dir);
}

/* What the device-buffer tests move: a pattern put on the host, a device source and a device
 * destination of MAX bytes each, and the bytes copied back from the destination. */
enum { DEV_MAX = 32 << 20 };
static const size_t dev_sizes[] = {1, 4096, (5 << 20) + 3, 32 << 20};

struct devbufs {
	struct kvn_gpu *gpu;
	struct kvn_copy_engine *e;
	struct kvn_gpu_mem *src, *dst;
	uint8_t *want, *got;
};

static void
devbufs_open(struct devbufs *b)
{
	b->gpu = gpu_or_skip();
	cr_assert_eq(kvn_gpu_copy_engine(b->gpu, 0, 1, &b->e, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kvn_gpu_mem_alloc(b->gpu, 0, DEV_MAX, &b->src, err, sizeof(err)), 0, "%s",
		     err);
	cr_assert_eq(kvn_gpu_mem_alloc(b->gpu, 0, DEV_MAX, &b->dst, err, sizeof(err)), 0, "%s",
		     err);
	b->want = malloc(DEV_MAX);
	b->got = malloc(DEV_MAX);
	cr_assert(b->want && b->got);
}

static void
devbufs_close(struct devbufs *b)
{
	free(b->want);
	free(b->got);
	kvn_gpu_mem_free(b->src);
	kvn_gpu_mem_free(b->dst);
	kvn_copy_engine_destroy(b->e);
	kvn_gpu_close(b->gpu);
}

/* len bytes of pattern seed in want and in the device source. */
static void
devbufs_fill(struct devbufs *b, size_t len, unsigned seed)
{
	pattern_fill(b->want, len, seed);
	cr_assert_eq(b->e->ops->copy_to_dev(b->e, kvn_gpu_mem_ptr(b->src), b->want, len, 0, err,
					    sizeof(err)),
		     0, "%s", err);
	cr_assert_eq(b->e->ops->sync(b->e, 0, err, sizeof(err)), 0, "%s", err);
}

/* The device destination's first len bytes are want's. */
static void
devbufs_check(struct devbufs *b, size_t len)
{
	memset(b->got, 0, len);
	cr_assert_eq(b->e->ops->copy_to_host(b->e, b->got, kvn_gpu_mem_ptr(b->dst), len, 0, err,
					     sizeof(err)),
		     0, "%s", err);
	cr_assert_eq(b->e->ops->sync(b->e, 0, err, sizeof(err)), 0, "%s", err);
	cr_assert_arr_eq(b->got, b->want, len, "%zu bytes through device memory both ways", len);
}

/* The client library with device buffers (kvn_client_req.mem): a put from device memory and a
 * get_into device memory through a node's pool, 1 byte to 32 MiB, every byte checked on the
 * host and through a plain host get of the same key. */
Test(gpu_device, a_client_puts_from_and_gets_into_device_memory_byte_for_byte)
{
	struct devbufs b = {0};
	devbufs_open(&b);
	char dir[256];
	struct sched s = {0};
	struct cnode n = {0};
	cr_assert_eq(proc_mkdtemp("kvn-gpu-client", dir, sizeof(dir)), 0);
	sched_start(&s, "127.0.0.1:0", NULL);
	cnode_start(&n, "a", &(struct cnode_opts){.dir = dir, .sched = s.addr, .cpu_gb = "0.2"});
	struct kvn_client *c = NULL;
	struct kvn_client_opts o = {KVN_CLIENT_OPTS_INIT, .socket_path = n.sock, .name = "gpu",
				    .timeout_ms = 60000};
	cr_assert_eq(kvn_client_open(&o, &c, err, sizeof(err)), 0, "%s", err);
	for (size_t i = 0; i < sizeof(dev_sizes) / sizeof(dev_sizes[0]); i++) {
		char key[96];
		const char *k = key;
		size_t len = dev_sizes[i], cap = DEV_MAX, got_len = 0;
		snprintf(key, sizeof(key), "vllm@test-model@1@0@%08zx00@bfloat16", i);
		devbufs_fill(&b, len, 11 + (unsigned)i);
		const void *data = (const void *)(uintptr_t)kvn_gpu_mem_ptr(b.src);
		void *out = (void *)(uintptr_t)kvn_gpu_mem_ptr(b.dst);
		struct kvn_client_req put = {KVN_CLIENT_REQ_INIT,
					     .op = KVN_CLIENT_PUT,
					     .n = 1,
					     .keys = &k,
					     .data = &data,
					     .lens_in = &len,
					     .mem = KVN_CLIENT_MEM_GPU,
					     .mem_device = 0};
		cr_assert_eq(kvn_client_submit(c, &put), 0, "%s", kvn_client_error(c));
		cr_assert_eq(kvn_client_wait(c, &put, -1), 0);
		cr_assert_eq(put.status, 0, "put of %zu bytes: %s", len, kvn_client_error(c));
		struct kvn_client_req get = {KVN_CLIENT_REQ_INIT,
					     .op = KVN_CLIENT_GET_INTO,
					     .n = 1,
					     .keys = &k,
					     .dst = &out,
					     .caps = &cap,
					     .lens = &got_len,
					     .mem = KVN_CLIENT_MEM_GPU,
					     .mem_device = 0};
		cr_assert_eq(kvn_client_submit(c, &get), 0, "%s", kvn_client_error(c));
		cr_assert_eq(kvn_client_wait(c, &get, -1), 0);
		cr_assert_eq(get.status, 0, "get_into of %zu bytes: %s", len, kvn_client_error(c));
		cr_assert_eq(got_len, len);
		devbufs_check(&b, len);
		struct kvn_view v;
		cr_assert_eq(kvn_client_get(c, k, &v), 0, "%s", kvn_client_error(c));
		cr_assert_eq(v.len, len);
		cr_assert_arr_eq(v.data, b.want, len, "the pool holds the device's bytes");
		kvn_client_release(c, &v, 1);
	}
	kvn_client_close(c);
	cnode_stop(&n);
	sched_stop(&s);
	proc_rm_tree(dir);
	devbufs_close(&b);
}

/* The engine API with device pointers (kvn_engine_put_from_gpu, kvn_engine_get_into_gpu), 1 byte
 * to 32 MiB, and the pool holding the device's bytes; a GPU the engine did not open is
 * refused. */
Test(gpu_device, the_engine_puts_from_and_gets_into_device_memory_byte_for_byte)
{
	struct devbufs b = {0};
	devbufs_open(&b);
	struct kvn_config *cfg;
	struct kvn_engine *eng;
	engine_env_open("max_local_cpu_size: 0.2\nhugepages: false\ngpu: true\ngpu_devices: [0]\n",
			&cfg, &eng);
	for (size_t i = 0; i < sizeof(dev_sizes) / sizeof(dev_sizes[0]); i++) {
		size_t len = dev_sizes[i], got_len = 0;
		char text[96];
		struct kvn_key k;
		snprintf(text, sizeof(text), "vllm@test-model@1@0@%08zx01@bfloat16", i);
		cr_assert_eq(kvn_key_from_str(&k, text), 0);
		devbufs_fill(&b, len, 21 + (unsigned)i);
		cr_assert_eq(kvn_engine_put_from_gpu(eng, &k, 0, kvn_gpu_mem_ptr(b.src), len), 0,
			     "put of %zu bytes", len);
		cr_assert_eq(engine_get_pattern(eng, text, len, 21 + (unsigned)i), 0,
			     "the pool holds the device's %zu bytes", len);
		cr_assert_eq(
		    kvn_engine_get_into_gpu(eng, &k, 0, kvn_gpu_mem_ptr(b.dst), DEV_MAX, &got_len),
		    0, "get of %zu bytes", len);
		cr_assert_eq(got_len, len);
		devbufs_check(&b, len);
	}
	struct kvn_key k;
	size_t len;
	cr_assert_eq(kvn_key_from_str(&k, "vllm@test-model@1@0@00000000ff@bfloat16"), 0);
	cr_assert_eq(kvn_engine_put_from_gpu(eng, &k, kvn_gpu_device_count(b.gpu),
					     kvn_gpu_mem_ptr(b.src), 16),
		     -ENODEV, "a GPU the engine did not open");
	cr_assert_eq(kvn_engine_get_into_gpu(eng, &k, 0, kvn_gpu_mem_ptr(b.dst), DEV_MAX, &len),
		     -ENOENT);
	kvn_engine_close(eng);
	kvn_config_free(cfg);
	devbufs_close(&b);
}

/* The gpu tier on device memory in a node: first in lookup order, written through with the
 * cpu tier, evicting when full, and every chunk read back byte for byte from whichever tier
 * still holds it. */
Test(gpu_device, a_gpu_tier_holds_chunks_in_device_memory_and_evicts_when_full)
{
	kvn_gpu_close(gpu_or_skip());
	struct kvn_config *cfg;
	struct kvn_engine *eng;
	engine_env_open("max_local_cpu_size: 0.2\nhugepages: false\ngpu: true\ngpu_devices: [0]\n"
			"max_gpu_size: 0.03125\n",
			&cfg, &eng);
	struct kvn_storage *st = kvn_engine_storage(eng);
	const char *name;
	struct kvn_backend_stats s;
	cr_assert_eq(kvn_storage_tier(st, 0, &name, &s), 0);
	cr_assert_str_eq(name, "gpu0", "tier 0 is %s", name);
	cr_assert_eq(s.capacity, 32u << 20, "capacity %" PRIu64, s.capacity);
	enum { N = 24, LEN = 4 << 20 }; /* 96 MiB through 32 MiB of device memory */
	for (int i = 0; i < N; i++) {
		char key[96];
		snprintf(key, sizeof(key), "vllm@test-model@1@0@%08x02@bfloat16", i);
		engine_put_pattern(eng, key, LEN, 500 + (unsigned)i);
	}
	cr_assert_eq(kvn_storage_tier(st, 0, &name, &s), 0);
	cr_assert(s.count > 0 && s.count < N, "the gpu tier holds %" PRIu64 " of %d", s.count, N);
	cr_assert_gt(s.evictions, 0);
	bool gpu;
	cr_assert_eq(kvn_storage_tier_moved(st, 0, &gpu), 0, "cpu held every chunk evicted");
	cr_assert(gpu);
	char *json = kvn_engine_stats_json(eng);
	cr_assert(strstr(json, "\"moved_to_cpu\":0"), "%s", json);
	free(json);
	uint64_t hits = s.hits;
	for (int i = N - 1; i >= 0; i--) {
		char key[96];
		snprintf(key, sizeof(key), "vllm@test-model@1@0@%08x02@bfloat16", i);
		cr_assert_eq(engine_get_pattern(eng, key, LEN, 500 + (unsigned)i), 0, "%s", key);
	}
	cr_assert_eq(kvn_storage_tier(st, 0, &name, &s), 0);
	cr_assert_geq(s.hits - hits, 1, "no get was served from device memory");
	cr_assert_eq(s.errors, 0, "%" PRIu64 " chunks failed their checksum", s.errors);

	/* Into device memory of the same GPU: one device to device copy from the tier. */
	struct devbufs b = {0};
	devbufs_open(&b);
	struct kvn_key k;
	char key[96];
	size_t got = 0;
	snprintf(key, sizeof(key), "vllm@test-model@1@0@%08x02@bfloat16", N - 1);
	cr_assert_eq(kvn_key_from_str(&k, key), 0);
	hits = s.hits;
	cr_assert_eq(kvn_engine_get_into_gpu(eng, &k, 0, kvn_gpu_mem_ptr(b.dst), DEV_MAX, &got), 0);
	cr_assert_eq(got, LEN);
	cr_assert_eq(kvn_storage_tier(st, 0, &name, &s), 0);
	cr_assert_eq(s.hits, hits + 1, "the get into GPU 0 was not served by its tier");
	pattern_fill(b.want, LEN, 500 + N - 1);
	devbufs_check(&b, LEN);
	devbufs_close(&b);
	kvn_engine_close(eng);
	kvn_config_free(cfg);
}

/* Peers READ what only a node's gpu tier holds: node A's cpu tier (30 MiB) is smaller than its
 * gpu tier (64 MiB), so the first chunks put are evicted from cpu and their locations become
 * the gpu tier's (served over tcp from the host copy the tier keeps current). Node B gets
 * every chunk byte for byte. */
Test(gpu_device, peers_read_chunks_that_only_a_nodes_gpu_tier_holds, .timeout = 240)
{
	kvn_gpu_close(gpu_or_skip());
	struct sched s = {0};
	struct cnode a = {0}, b = {0};
	char dir[256];
	sched_start(&s, "127.0.0.1:0", NULL);
	cr_assert_eq(proc_mkdtemp("gpu-tier", dir, sizeof(dir)), 0);
	struct cnode_opts o = {.dir = dir,
			       .sched = s.addr,
			       .cpu_gb = "0.03",
			       .extra = "gpu: true\ngpu_devices: [0]\nmax_gpu_size: 0.0625\n"};
	cnode_start(&a, "node-a", &o);
	o.extra = NULL;
	o.cpu_gb = NULL;
	cnode_start(&b, "node-b", &o);
	enum { N = 12, LEN = 4 << 20 };
	for (unsigned i = 0; i < N; i++)
		cnode_put(&a, "gpu-tier", i, LEN);
	cr_assert_eq(cnode_tier_stat(&a, "gpu0", "count"), N, "the gpu tier holds %lld",
		     cnode_tier_stat(&a, "gpu0", "count"));
	cr_assert_gt(cnode_tier_stat(&a, "cpu", "evictions"), 0, "nothing only on the gpu tier");
	for (unsigned i = 0; i < N; i++) {
		int got = 0;
		for (int tries = 0; tries < 200 && got == 0; tries++) {
			got = cnode_get_check(&b, "gpu-tier", i, LEN);
			if (got == 0)
				usleep(100 * 1000); /* the directory catches up */
		}
		cr_assert_eq(got, 1, "chunk %u from node-a: %s", i, got ? "other bytes" : "a miss");
	}
	cnode_stop(&b);
	cnode_stop(&a);
	sched_stop(&s);
	proc_rm_tree(dir);
}
