/* The verbs baseline of kvnode-bench peer --baseline: perftest's ib_read_bw (RDMA READ, RC, over
 * rdma_cm) at the same message size, on the same device, towards the same address, in this run. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/peer_verbs.h"

#if KVN_HAVE_VERBS
#include <infiniband/verbs.h>

extern char **environ;

/* The device the verbs transport picks by default: the first with an active port. */
static int
active_device(char *name, size_t len)
{
	int n = 0, rc = -ENODEV;
	struct ibv_device **list = ibv_get_device_list(&n);
	for (int i = 0; list && i < n && rc; i++) {
		struct ibv_context *ctx = ibv_open_device(list[i]);
		struct ibv_port_attr pa;
		if (!ctx)
			continue;
		if (!ibv_query_port(ctx, 1, &pa) && pa.state == IBV_PORT_ACTIVE) {
			snprintf(name, len, "%s", ibv_get_device_name(list[i]));
			rc = 0;
		}
		ibv_close_device(ctx);
	}
	if (list)
		ibv_free_device_list(list);
	return rc;
}

/* perftest prints one row per size under "#bytes #iterations BW peak[MB/sec] BW average..."
 * with MB = 2^20 bytes. */
static double
parse_bw(FILE *f, size_t size, char *why, size_t whylen)
{
	char line[512];
	bool table = false;
	double gbps = -EPROTO;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long bytes, iters;
		double peak, avg;
		size_t n = strcspn(line, "\n");
		if (n && line[0] != '-' && line[0] != ' ') /* the last word it said, for errors */
			snprintf(why, whylen, "%.*s", (int)n, line);
		if (strstr(line, "#bytes"))
			table = true;
		else if (table &&
			 sscanf(line, "%llu %llu %lf %lf", &bytes, &iters, &peak, &avg) == 4 &&
			 bytes == size)
			gbps = avg * 1048576.0 / 1e9;
	}
	return gbps;
}

#define BASE_MAX 16
#define BASE_TIMEOUT_S 120 /* one ib_read_bw client run */

/* One ib_read_bw pair of a baseline run: its device, host, port and client output. */
struct pair {
	char dev[64], host[128], port[16];
	pid_t srv;
	FILE *cli;
	double gbps;
	char why[200];
};

double
bench_verbs_baseline_sum(size_t n, const char *const *addrs, const char *const *devices,
			 size_t size, uint64_t iterations, int inflight)
{
	struct pair pr[BASE_MAX];
	char sz[32], iters[24], depth[16], cmd[8192] = "";
	if (n < 1 || n > BASE_MAX)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		const char *colon = strrchr(addrs[i], ':');
		if (devices && devices[i])
			snprintf(pr[i].dev, sizeof(pr[i].dev), "%s", devices[i]);
		else if (active_device(pr[i].dev, sizeof(pr[i].dev)) < 0) {
			fprintf(stderr, "kvnode-bench: ib_read_bw baseline: no RDMA device with an "
					"active port\n");
			return -ENODEV;
		}
		if (!colon || (size_t)(colon - addrs[i]) >= sizeof(pr[i].host))
			return -EINVAL;
		snprintf(pr[i].host, sizeof(pr[i].host), "%.*s", (int)(colon - addrs[i]), addrs[i]);
	}
	snprintf(sz, sizeof(sz), "%zu", size);
	/* The same work as kvnode's reads, shared out over the runs: iterations and the
	 * send-queue depth (reads posted at once). perftest's duration mode (-D) starves at large
	 * sizes under emulation. */
	uint64_t each = iterations / n;
	snprintf(iters, sizeof(iters), "%llu", (unsigned long long)(each < 8 ? 8 : each));
	snprintf(depth, sizeof(depth), "%d", inflight < 1 ? 1 : inflight > 128 ? 128 : inflight);
	/* perftest converts cycles to seconds with a CPU clock it calibrates itself; under
	 * emulation that calibration fails now and then ("Correlation coefficient r^2 < 0.9") and
	 * the row says 0.00. Its server also needs a moment before it listens. So: several
	 * attempts, each with fresh servers, until every run of one attempt gave a figure. */
	double sum = -EIO;
	bool timed_out = false; /* a run that hung is a broken path: no attempt would do better */
	for (int attempt = 0; attempt < 12 && sum <= 0 && !timed_out; attempt++) {
		for (size_t i = 0; i < n; i++) {
			snprintf(pr[i].port, sizeof(pr[i].port), "%d",
				 20000 + (int)((getpid() * 7919u + (unsigned)time(NULL) * 31u +
						(unsigned)attempt * 101u + (unsigned)size +
						(unsigned)i * 1009u) %
					       20000));
			char *sargv[] = {"ib_read_bw", "-d", pr[i].dev,	 "-R",	"-F",
					 "-s",	       sz,   "-n",	 iters, "-t",
					 depth,	       "-p", pr[i].port, NULL};
			posix_spawn_file_actions_t fa;
			posix_spawn_file_actions_init(&fa);
			posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY,
							 0);
			posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY,
							 0);
			int rc = posix_spawnp(&pr[i].srv, "ib_read_bw", &fa, NULL, sargv, environ);
			posix_spawn_file_actions_destroy(&fa);
			if (rc) {
				fprintf(
				    stderr,
				    "kvnode-bench: cannot run ib_read_bw: %s (install perftest: "
				    "scripts/install-vm-deps)\n",
				    strerror(rc));
				for (size_t k = 0; k < i; k++) {
					kill(pr[k].srv, SIGTERM);
					waitpid(pr[k].srv, NULL, 0);
				}
				return -rc;
			}
		}
		usleep(300000u + 100000u * (unsigned)attempt);
		for (size_t i = 0; i < n; i++) { /* every client at once */
			snprintf(
			    cmd, sizeof(cmd),
			    "timeout %d ib_read_bw -d %s -R -F -s %s -n %s -t %s -p %s %s 2>&1",
			    BASE_TIMEOUT_S, pr[i].dev, sz, iters, depth, pr[i].port, pr[i].host);
			pr[i].cli = popen(cmd, "r");
		}
		sum = 0;
		for (size_t i = 0; i < n; i++) {
			pr[i].why[0] = 0;
			pr[i].gbps = pr[i].cli
					 ? parse_bw(pr[i].cli, size, pr[i].why, sizeof(pr[i].why))
					 : -EIO;
			if (pr[i].cli) {
				int st = pclose(pr[i].cli);
				if (st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 124) {
					snprintf(pr[i].why, sizeof(pr[i].why),
						 "no result within %d s (timed out)",
						 BASE_TIMEOUT_S);
					pr[i].gbps = -ETIMEDOUT;
					timed_out = true;
				}
			}
			kill(pr[i].srv, SIGTERM);
			waitpid(pr[i].srv, NULL, 0);
			sum = pr[i].gbps > 0 && sum >= 0 ? sum + pr[i].gbps : -EIO;
		}
	}
	if (sum <= 0) {
		for (size_t i = 0; i < n; i++)
			if (pr[i].gbps <= 0)
				fprintf(stderr,
					"kvnode-bench: ib_read_bw on %s towards %s (one of %zu at "
					"once) gave no bandwidth; its last line: %s\n",
					pr[i].dev, pr[i].host, n,
					*pr[i].why ? pr[i].why : "(none)");
		return -EIO;
	}
	return sum;
}

double
bench_verbs_baseline_gbps(const char *peer_addr, const char *device, size_t size,
			  uint64_t iterations, int inflight)
{
	return bench_verbs_baseline_sum(1, &peer_addr, &device, size, iterations, inflight);
}

#else

double
bench_verbs_baseline_gbps(const char *peer_addr, const char *device, size_t size,
			  uint64_t iterations, int inflight)
{
	(void)peer_addr, (void)device, (void)size, (void)iterations, (void)inflight;
	fprintf(stderr, "kvnode-bench: this build has no verbs (libibverbs was not found)\n");
	return -EOPNOTSUPP;
}

double
bench_verbs_baseline_sum(size_t n, const char *const *addrs, const char *const *devices,
			 size_t size, uint64_t iterations, int inflight)
{
	(void)n, (void)devices;
	return bench_verbs_baseline_gbps(addrs ? addrs[0] : NULL, NULL, size, iterations, inflight);
}

#endif
