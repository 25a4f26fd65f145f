/* kvnode serve and the gpu key on a host without an NVIDIA driver: gpu: true refuses to start
 * naming libcuda.so.1, gpu: auto serves and says once why it uses no GPU, and kvnode-bench gpu
 * exits 2 naming what is missing. (On a host with a driver these answers differ: the tests skip
 * there.) */
#include <criterion/criterion.h>
#include <dlfcn.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/helpers/proc.h"

#define KVNODE	 KVN_BINARY_DIR "/kvnode"
#define DEADLINE 120000 /* ms */

static const char *const clean_env[] = {"KVNODE_CONFIG_FILE", "LMCACHE_CONFIG_FILE",
					"KVNODE_SOCKET",      "KVNODE_GPU",
					"LMCACHE_GPU",	      NULL};
static char dir[256], sock[PATH_MAX], cfg[PATH_MAX], serr[PATH_MAX];

static void
setup(void)
{
	void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (h) {
		dlclose(h);
		cr_skip_test("this host has libcuda.so.1: these tests are of hosts without one");
	}
	cr_assert_eq(access(KVNODE, X_OK), 0, "%s is not built", KVNODE);
	cr_assert_eq(proc_mkdtemp("gpu", dir, sizeof(dir)), 0);
	snprintf(sock, sizeof(sock), "%s/kvnode.sock", dir);
	snprintf(cfg, sizeof(cfg), "%s/kvnode.yaml", dir);
	snprintf(serr, sizeof(serr), "%s/serve.err", dir);
}

static void
teardown(void)
{
	if (dir[0])
		proc_rm_tree(dir);
}

TestSuite(gpu_serve, .init = setup, .fini = teardown);

static void
write_config(const char *gpu)
{
	char text[256];
	snprintf(text, sizeof(text), "max_local_cpu_size: 0.05\nhugepages: false\ngpu: %s\n", gpu);
	cr_assert_eq(proc_write_file(cfg, text, strlen(text)), 0);
}

/* What a host without a driver is told: a build with CUDA's headers looks for the driver and
 * names it; one without them (no toolkit at build time) says so instead. */
#if KVN_HAVE_CUDA
#define NO_GPU_WHY "libcuda.so.1 not found"
#else
#define NO_GPU_WHY "GPU support: kvnode was built without CUDA headers"
#endif

Test(gpu_serve, gpu_true_without_a_driver_refuses_to_start_naming_libcuda)
{
	write_config("true");
	const char *argv[] = {KVNODE, "serve", "-c", cfg, "--socket", sock, NULL};
	struct proc_opts po = {.stderr_path = serr, .env = clean_env};
	int code = proc_run(argv, &po, DEADLINE);
	char *text = proc_read_file(serr, NULL);
	cr_assert_neq(code, 0, "kvnode serve with gpu: true started: %s", text);
	cr_assert_gt(code, 0, "exited by itself (%d)", code);
	cr_assert(text && strstr(text, KVN_HAVE_CUDA ? "gpu: true: libcuda.so.1 not found (no "
							"NVIDIA driver on this host)"
						      : "gpu: true: " NO_GPU_WHY),
		  "stderr: %s", text ? text : "(none)");
	cr_assert_eq(access(sock, F_OK), -1, "no socket was left behind");
	free(text);
}

Test(gpu_serve, gpu_auto_without_a_driver_serves_and_says_why_once)
{
	write_config("auto");
	const char *argv[] = {KVNODE, "serve", "-c", cfg, "--socket", sock, NULL};
	struct proc_opts po = {.stderr_path = serr, .env = clean_env};
	struct proc p = {0};
	cr_assert_eq(proc_spawn(&p, argv, &po), 0);
	if (!proc_wait_for(proc_cond_socket_accepts, sock, DEADLINE)) {
		proc_stop(&p, SIGKILL, 0);
		cr_assert_fail("kvnode serve with gpu: auto did not come up: %s",
			       proc_read_file(serr, NULL));
	}
	int code = proc_stop(&p, SIGTERM, DEADLINE);
	char *text = proc_read_file(serr, NULL);
	cr_assert_eq(code, 0, "exit %d: %s", code, text);
	const char *why = "gpu: auto: not using GPUs: " NO_GPU_WHY;
	const char *first = text ? strstr(text, why) : NULL;
	cr_assert(first, "stderr: %s", text ? text : "(none)");
	cr_assert_null(strstr(first + 1, why), "said once: %s", text);
	free(text);
}

/* kvnode-bench gpu has nothing to measure here: it names what is missing and exits 2, the
 * status scripts/gpu-checks also gives a machine without a GPU. */
Test(gpu_serve, kvnode_bench_gpu_without_a_driver_names_what_is_missing_and_exits_2)
{
	const char *bench = KVN_BINARY_DIR "/kvnode-bench";
	cr_assert_eq(access(bench, X_OK), 0, "%s is not built", bench);
	const char *argv[] = {bench, "gpu", "--baseline", "--sizes", "4M", NULL};
	struct proc_opts po = {.stderr_path = serr, .env = clean_env};
	int code = proc_run(argv, &po, DEADLINE);
	char *text = proc_read_file(serr, NULL);
	cr_assert_eq(code, 2, "exit %d: %s", code, text);
	cr_assert(text && strstr(text, "kvnode-bench gpu: ") &&
		      strstr(text, KVN_HAVE_CUDA ? "libcuda.so.1 not found" : "CUDA headers"),
		  "stderr: %s", text ? text : "(none)");
	free(text);
}
