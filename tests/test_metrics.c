/* Prometheus metrics end to end (docs/metrics.md): real `kvnode scheduler` and `kvnode serve`
 * processes with metrics_listen on loopback, scraped over a plain socket, every documented
 * family present, counters that move with puts and gets (peer reads included), the format
 * checked strictly here and by `promtool check metrics` where it is installed (a skip where it
 * is not), and the errors for a bad metrics_listen or a port already taken. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/netaddr.h"
#include "kvnode/client.h"
#include "tests/helpers/expo.h"
#include "tests/helpers/proc.h"
#include "tests/helpers/redis_server.h"

#define KVNODE	  KVN_BINARY_DIR "/kvnode"
#define DOC	  KVN_SOURCE_DIR "/docs/metrics.md"
#define DEADLINE  60000 /* ms: generous, for a loaded 2-core machine under sanitizers */
#define KEY	  "vllm@llama@1@0@a1b2c3@bfloat16"
#define VALUE_LEN 100000

static const char *const clean_env[] = {"KVNODE_CONFIG_FILE", "LMCACHE_CONFIG_FILE",
					"KVNODE_SOCKET", "KVNODE_METRICS_LISTEN", NULL};
static char dir[256];

struct daemon {
	struct proc p;
	char name[32];
	char cfg[PATH_MAX], sock[PATH_MAX], out[PATH_MAX], err[PATH_MAX];
	int metrics_port;
	char sched_addr[64]; /* scheduler: where nodes join */
};

static struct daemon sched, node_a, node_b;

static void
setup(void)
{
	cr_assert_eq(access(KVNODE, X_OK), 0, "%s is not built", KVNODE);
	cr_assert_eq(proc_mkdtemp("metrics", dir, sizeof(dir)), 0);
}

static void
teardown(void)
{
	struct daemon *all[] = {&node_b, &node_a, &sched};
	for (size_t i = 0; i < 3; i++)
		if (all[i]->p.pid)
			proc_stop(&all[i]->p, SIGTERM, 20000);
	proc_rm_tree(dir);
}

TestSuite(metrics, .init = setup, .fini = teardown, .timeout = 240);

static void
daemon_paths(struct daemon *d, const char *name)
{
	snprintf(d->name, sizeof(d->name), "%s", name);
	snprintf(d->cfg, sizeof(d->cfg), "%s/%s.yaml", dir, name);
	snprintf(d->sock, sizeof(d->sock), "%s/%s.sock", dir, name);
	snprintf(d->out, sizeof(d->out), "%s/%s.out", dir, name);
	snprintf(d->err, sizeof(d->err), "%s/%s.err", dir, name);
}

static void
write_cfg(const struct daemon *d, const char *text)
{
	cr_assert_eq(proc_write_file(d->cfg, text, strlen(text)), 0);
}

static bool
out_has_metrics_line(void *ctx)
{
	struct daemon *d = ctx;
	char *s = proc_read_file(d->out, NULL);
	bool up = s && strstr(s, "kvnode: metrics on http://");
	if (up && !d->sched_addr[0] && strstr(s, "scheduler on "))
		sscanf(strstr(s, "scheduler on ") + 13, "%63s", d->sched_addr);
	free(s);
	return up || !proc_alive(&d->p);
}

static void
wait_up(struct daemon *d)
{
	bool ok = proc_wait_for(out_has_metrics_line, d, DEADLINE) && proc_alive(&d->p);
	if (!ok) {
		char *e = proc_read_file(d->err, NULL);
		cr_assert_fail("%s did not come up with its metrics listener: %s", d->name,
			       e ? e : "");
	}
}

static void
start(struct daemon *d, const char *const argv[])
{
	struct proc_opts po = {.stdout_path = d->out, .stderr_path = d->err, .env = clean_env};
	cr_assert_eq(proc_spawn(&d->p, argv, &po), 0);
	wait_up(d);
}

static void
start_sched(void)
{
	daemon_paths(&sched, "sched");
	sched.metrics_port = kvn_tcp_free_port();
	char text[256];
	snprintf(text, sizeof(text), "heartbeat_ms: 100\nmetrics_listen: 127.0.0.1:%d\n",
		 sched.metrics_port);
	write_cfg(&sched, text);
	const char *argv[] = {KVNODE,	  "scheduler",	 "-c", sched.cfg,
			      "--listen", "127.0.0.1:0", NULL};
	start(&sched, argv);
	cr_assert(sched.sched_addr[0], "no scheduler address in its output");
}

/* A node on 0.05 GB of cpu tier, in sched's cluster when that runs; extra: more config. */
static void
start_node(struct daemon *d, const char *name, const char *extra)
{
	daemon_paths(d, name);
	d->metrics_port = kvn_tcp_free_port();
	char *text;
	cr_assert(asprintf(&text,
			   "node_name: %s\nmax_local_cpu_size: 0.05\nhugepages: false\n"
			   "socket_path: %s\nmetrics_listen: 127.0.0.1:%d\nheartbeat_ms: 100\n"
			   "%s%s%s%s",
			   name, d->sock, d->metrics_port,
			   sched.sched_addr[0] ? "transport: tcp\nlisten: 127.0.0.1:0\n" : "",
			   sched.sched_addr[0] ? "scheduler_url: " : "", sched.sched_addr,
			   sched.sched_addr[0] ? "\n" : "") > 0);
	char *all;
	cr_assert(asprintf(&all, "%s%s", text, extra ? extra : "") > 0);
	write_cfg(d, all);
	free(text);
	free(all);
	const char *argv[] = {KVNODE, "serve", "-c", d->cfg, NULL};
	start(d, argv);
}

/* GET /metrics of d, checked against the grammar (and by promtool when installed). */
static char *
scrape(const struct daemon *d)
{
	char *body;
	int st = http_request(d->metrics_port, "GET", "/metrics", &body, 20000);
	cr_assert_eq(st, 200, "GET /metrics of %s: status %d (%s)", d->name, st, body ? body : "");
	char why[512];
	cr_assert(expo_check(body, why, sizeof(why)), "%s's exposition is malformed: %s\n%s",
		  d->name, why, body);
	return body;
}

static const char *
promtool_path(void)
{
	static const char *const cands[] = {"/usr/bin/promtool", "/usr/local/bin/promtool"};
	for (size_t i = 0; i < 2; i++)
		if (access(cands[i], X_OK) == 0)
			return cands[i];
	return NULL;
}

static void
promtool_check(const char *pt, const char *text, const char *what)
{
	char in[PATH_MAX], out[PATH_MAX];
	snprintf(in, sizeof(in), "%s/promtool.in", dir);
	snprintf(out, sizeof(out), "%s/promtool.out", dir);
	cr_assert_eq(proc_write_file(in, text, strlen(text)), 0);
	const char *argv[] = {pt, "check", "metrics", NULL};
	struct proc_opts po = {.stdin_path = in, .stdout_path = out, .stderr_path = out};
	int rc = proc_run(argv, &po, DEADLINE);
	char *msg = proc_read_file(out, NULL);
	cr_expect_eq(rc, 0, "promtool check metrics on %s: exit %d: %s", what, rc, msg ? msg : "");
	free(msg);
}

static void
cli(const struct daemon *d, const char *const args[], const char *stdout_path)
{
	const char *argv[16] = {KVNODE};
	size_t n = 1;
	for (; args[n - 1]; n++)
		argv[n] = args[n - 1];
	argv[n++] = "--node";
	argv[n++] = d->sock;
	argv[n] = NULL;
	struct proc_opts po = {.stdout_path = stdout_path, .env = clean_env};
	cr_assert_eq(proc_run(argv, &po, DEADLINE), 0, "kvnode %s on %s failed", args[0], d->name);
}

struct dir_wait {
	const struct daemon *d;
	const char *series;
	double at_least;
};

static bool
series_reaches(void *ctx)
{
	struct dir_wait *w = ctx;
	char *body;
	int st = http_request(w->d->metrics_port, "GET", "/metrics", &body, 20000);
	bool ok = st == 200 && expo_value(body, w->series) >= w->at_least;
	free(body);
	return ok;
}

/* The names docs/metrics.md documents: every `kvnode_...` word in backquotes. */
static size_t
documented_names(char names[][96], size_t max)
{
	char *doc = proc_read_file(DOC, NULL);
	cr_assert(doc, "cannot read %s", DOC);
	size_t n = 0;
	for (const char *p = doc; (p = strstr(p, "`kvnode_")) && n < max;) {
		p++;
		size_t len = 0;
		while (isalnum((unsigned char)p[len]) || p[len] == '_')
			len++;
		bool dup = false;
		for (size_t i = 0; i < n; i++)
			dup |= strlen(names[i]) == len && !strncmp(names[i], p, len);
		if (!dup)
			snprintf(names[n++], 96, "%.*s", (int)len, p);
		p += len;
	}
	free(doc);
	return n;
}

/* The scheduler, node-a and node-b; node-a also runs an lm:// server and a plugin, so that
 * those families exist. */
static void
start_cluster(void)
{
	start_sched();
	char plugdir[300], plug[340], extra[700];
	snprintf(plugdir, sizeof(plugdir), "%s/plugins", dir);
	cr_assert_eq(mkdir(plugdir, 0755), 0);
	snprintf(plug, sizeof(plug), "%s/worker_idle.sh", plugdir);
	const char *script = "while :; do sleep 0.2; done\n";
	cr_assert_eq(proc_write_file(plug, script, strlen(script)), 0);
	snprintf(extra, sizeof(extra), "lm_listen: 127.0.0.1:0\nplugin_locations: [\"%s\"]\n",
		 plugdir);
	start_node(&node_a, "node-a", extra);
	start_node(&node_b, "node-b", NULL);
}

/* Writes VALUE_LEN bytes for KEY into dir/value.bin; their paths go to value and got. */
static void
value_files(char value[PATH_MAX], char got[PATH_MAX])
{
	snprintf(value, PATH_MAX, "%s/value.bin", dir);
	snprintf(got, PATH_MAX, "%s/got.bin", dir);
	char *data = malloc(VALUE_LEN);
	cr_assert_not_null(data);
	for (size_t i = 0; i < VALUE_LEN; i++)
		data[i] = (char)(i * 131 + 7);
	cr_assert_eq(proc_write_file(value, data, VALUE_LEN), 0);
	free(data);
}

static bool
api_settled(void *ctx)
{
	char *body;
	int st = http_request(((struct daemon *)ctx)->metrics_port, "GET", "/metrics", &body,
			      20000);
	bool ok = st == 200 && expo_value(body, "kvnode_api_clients") == 1 &&
		  expo_value(body, "kvnode_api_leases") == 1;
	free(body);
	return ok;
}

static int
count_key(void *ctx, const char *key, uint64_t len)
{
	(void)key;
	(void)len;
	++*(int *)ctx;
	return 0;
}

/* A client-library connection holding one view shows in the kvnode_api_* families, and its
 * listing and ping in requests_total by op. */
static void
api_client_is_counted(void)
{
	struct kvn_client_opts o = {KVN_CLIENT_OPTS_INIT, .socket_path = node_a.sock};
	struct kvn_client *c;
	char err[256];
	cr_assert_eq(kvn_client_open(&o, &c, err, sizeof(err)), 0, "%s", err);
	struct kvn_view v;
	cr_assert_eq(kvn_client_get(c, KEY, &v), 0, "%s", kvn_client_error(c));
	int listed = 0;
	cr_assert_eq(kvn_client_list(c, NULL, 0, count_key, &listed), 0, "%s", kvn_client_error(c));
	cr_assert_geq(listed, 1, "the listing holds the key just read");
	cr_assert_eq(kvn_client_ping(c), 0, "%s", kvn_client_error(c));
	/* Connections that came before (the CLI's) end on the node a moment after they close. */
	cr_assert(proc_wait_for(api_settled, &node_a, DEADLINE),
		  "the node never showed one client holding one lease");
	char *a = scrape(&node_a);
	cr_expect_eq(expo_value(a, "kvnode_api_held_bytes"), VALUE_LEN, "%s", a);
	cr_expect_geq(expo_value(a, "kvnode_api_requests_total{op=\"get\"}"), 1);
	cr_expect_eq(expo_value(a, "kvnode_api_requests_total{op=\"list\"}"), 1, "%s", a);
	cr_expect_eq(expo_value(a, "kvnode_api_requests_total{op=\"ping\"}"), 1);
	cr_expect_geq(expo_value(a, "kvnode_api_keys_total"), 1);
	cr_expect_gt(expo_value(a, "kvnode_api_max_held_bytes"), VALUE_LEN);
	free(a);
	kvn_client_release(c, &v, 1);
	kvn_client_close(c);
}

Test(metrics, every_documented_family_is_served_and_counters_follow_puts_gets_and_peer_reads)
{
	start_cluster();
	char *before = scrape(&node_a);
	cr_expect_eq(expo_value(before, "kvnode_tier_hits_total{tier=\"cpu\"}"), 0);
	cr_expect_eq(expo_value(before, "kvnode_cluster_joined"), 1);
	cr_expect_eq(expo_value(before, "kvnode_plugin_up{plugin=\"worker_idle.sh\"}"), 1,
		     "the plugin should be up:\n%s", before);
	free(before);

	char value[PATH_MAX], got[PATH_MAX];
	value_files(value, got);
	cli(&node_a, (const char *[]){"put", KEY, value, NULL}, NULL);
	cli(&node_a, (const char *[]){"get", KEY, "-o", got, NULL}, NULL);

	char *a = scrape(&node_a);
	cr_expect_eq(expo_value(a, "kvnode_tier_hits_total{tier=\"cpu\"}"), 1, "%s", a);
	cr_expect_eq(expo_value(a, "kvnode_tier_puts_total{tier=\"cpu\"}"), 1);
	cr_expect_eq(expo_value(a, "kvnode_tier_read_bytes_total{tier=\"cpu\"}"), VALUE_LEN);
	cr_expect_eq(expo_value(a, "kvnode_tier_written_bytes_total{tier=\"cpu\"}"), VALUE_LEN);
	cr_expect_eq(expo_value(a, "kvnode_tier_chunks{tier=\"cpu\"}"), 1);
	cr_expect_eq(expo_value(a, "kvnode_gets_total{result=\"hit\"}"), 1);
	cr_expect(expo_value(a, "kvnode_tier_capacity_bytes{tier=\"cpu\"}") > 0);
	cr_expect_geq(expo_value(a, "kvnode_client_requests_total"), 2, "the put and the get");
	cr_expect_geq(expo_value(a, "kvnode_client_accepted_total"), 2);
	api_client_is_counted();

	/* node-b finds the chunk through the directory and READs it from node-a's pool. */
	struct dir_wait w = {&sched, "kvnode_scheduler_directory_entries", 1};
	cr_assert(proc_wait_for(series_reaches, &w, DEADLINE), "node-a's chunk never reached "
							       "the directory");
	cli(&node_b, (const char *[]){"get", KEY, "-o", got, NULL}, NULL);
	char *b = scrape(&node_b);
	cr_expect_eq(expo_value(b, "kvnode_tier_hits_total{tier=\"peer\"}"), 1, "%s", b);
	cr_expect_geq(expo_value(b, "kvnode_peer_reads_total"), 1);
	cr_expect_gt(expo_value(b, "kvnode_peer_read_bytes_total"), VALUE_LEN);
	cr_expect_geq(expo_value(b, "kvnode_peer_read_duration_seconds_count"), 1);
	cr_expect_eq(expo_value(b, "kvnode_peer_read_duration_seconds_bucket{le=\"+Inf\"}"),
		     expo_value(b, "kvnode_peer_read_duration_seconds_count"));
	cr_expect_gt(expo_value(b, "kvnode_peer_read_duration_seconds_sum"), 0);
	cr_expect_eq(expo_value(b, "kvnode_cluster_members"), 2);

	char *s = scrape(&sched);
	cr_expect_eq(expo_value(s, "kvnode_scheduler_members{state=\"alive\"}"), 2, "%s", s);
	cr_expect_geq(expo_value(s, "kvnode_scheduler_joins_total"), 2);
	cr_expect_geq(expo_value(s, "kvnode_scheduler_lookups_total"), 1);
	cr_expect_geq(expo_value(s, "kvnode_scheduler_publishes_total"), 1);
	const char *row = strstr(s, "\nkvnode_scheduler_member_chunks{node=\"node-a\",");
	cr_expect(row && strstr(row, "} 1\n") == strchr(row, '}'),
		  "node-a's one chunk should be listed under it:\n%s", s);

	/* Every documented name is served (the remote tier's: in the test with a store; the GPUs':
	 * only with a device, test_gpu_device checks their stats). */
	char names[128][96];
	size_t n = documented_names(names, 128);
	cr_assert_gt(n, 30, "docs/metrics.md documents only %zu names", n);
	for (size_t i = 0; i < n; i++) {
		if (!strncmp(names[i], "kvnode_remote_", 14) ||
		    !strncmp(names[i], "kvnode_gpu_", 11))
			continue;
		cr_expect(expo_has_family(a, names[i]) || expo_has_family(s, names[i]),
			  "documented %s is served by neither node-a nor the scheduler", names[i]);
	}
	free(a);
	free(b);
	free(s);
}

/* Prometheus' own parser over the same three expositions (after the same traffic), where it is
 * installed: Debian's prometheus package is 332 MB, so neither CI nor make test installs it. */
Test(metrics, promtool_accepts_the_node_peer_reader_and_scheduler_expositions)
{
	const char *pt = promtool_path();
	if (!pt)
		cr_skip_test("promtool is not installed (Debian package prometheus): the in-test "
			     "format checker of the test above covers the format");
	start_cluster();
	char value[PATH_MAX], got[PATH_MAX];
	value_files(value, got);
	cli(&node_a, (const char *[]){"put", KEY, value, NULL}, NULL);
	cli(&node_a, (const char *[]){"get", KEY, "-o", got, NULL}, NULL);
	struct dir_wait w = {&sched, "kvnode_scheduler_directory_entries", 1};
	cr_assert(proc_wait_for(series_reaches, &w, DEADLINE), "node-a's chunk never reached "
							       "the directory");
	cli(&node_b, (const char *[]){"get", KEY, "-o", got, NULL}, NULL);
	const struct {
		const struct daemon *d;
		const char *what;
	} all[] = {{&node_a, "a node's metrics"},
		   {&node_b, "a peer-reading node's metrics"},
		   {&sched, "the scheduler's metrics"}};
	for (size_t i = 0; i < 3; i++) {
		char *text = scrape(all[i].d);
		promtool_check(pt, text, all[i].what);
		free(text);
	}
}

Test(metrics, other_paths_get_404_and_other_methods_405_while_head_works)
{
	start_node(&node_a, "solo", NULL);
	char *body;
	cr_expect_eq(http_request(node_a.metrics_port, "GET", "/", &body, 20000), 404);
	free(body);
	cr_expect_eq(http_request(node_a.metrics_port, "GET", "/metricsx", &body, 20000), 404);
	free(body);
	cr_expect_eq(http_request(node_a.metrics_port, "POST", "/metrics", &body, 20000), 405);
	free(body);
	cr_expect_eq(http_request(node_a.metrics_port, "DELETE", "/metrics", &body, 20000), 405);
	free(body);
	cr_expect_eq(http_request(node_a.metrics_port, "HEAD", "/metrics", &body, 20000), 200);
	cr_expect_str_empty(body ? body : "", "HEAD must not send a body");
	free(body);
	/* A node alone still answers the cluster families, as "not joined". */
	char *m = scrape(&node_a);
	cr_expect_eq(expo_value(m, "kvnode_cluster_joined"), 0);
	cr_expect_eq(expo_value(m, "kvnode_cluster_worker_id"), -1);
	free(m);
}

Test(metrics, the_format_checker_rejects_what_prometheus_would)
{
	static const struct {
		const char *text, *why;
	} bad[] = {
	    {"kvnode_x_total 1\n", "before its family's HELP and TYPE"},
	    {"# HELP a h\n# TYPE a gauge\na 1", "must end with a newline"},
	    {"# HELP a h\n# TYPE a gauge\na 1\na 2\n", "appears twice"},
	    {"# HELP a h\n# TYPE a counter\na 1\n", "does not end in _total"},
	    {"# HELP a h\n# TYPE a gauge\na{x=\"1} 1\n", "unterminated label value"},
	    {"# HELP a h\n# TYPE a gauge\na{x=\"\\q\"} 1\n", "bad escape"},
	    {"# HELP a h\n# TYPE a gauge\na one\n", "bad value"},
	    {"# HELP a h\n# TYPE a gauge\nb 1\n", "sample b in family a"},
	    {"# HELP a h\n# TYPE a gauge\na 1\n# HELP a h\n# TYPE a gauge\n", "declared twice"},
	    {"# TYPE a gauge\na 1\n", "without its HELP"},
	    {"# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\n"
	     "h_sum 1\nh_count 1\n",
	     "below the previous"},
	    {"# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\n"
	     "h_sum 1\nh_count 3\n",
	     "differs from the +Inf bucket"},
	    {"# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
	     "no le=\"+Inf\" bucket"},
	    {"# HELP a h\n# TYPE a gauge\n\na 1\n", "empty line"},
	};
	char why[512];
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why[0] = '\0';
		cr_expect_not(expo_check(bad[i].text, why, sizeof(why)), "accepted bad input:\n%s",
			      bad[i].text);
		cr_expect(strstr(why, bad[i].why), "rejected\n%sfor \"%s\", expected \"%s\"",
			  bad[i].text, why, bad[i].why);
	}
	const char *good = "# HELP a Some \\\\ help\\n\n# TYPE a gauge\na{x=\"q\\\"\",y=\"\"} 1.5\n"
			   "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"0.5\"} 1\n"
			   "h_bucket{le=\"+Inf\"} 2\nh_sum 3.25\nh_count 2\n";
	cr_expect(expo_check(good, why, sizeof(why)), "rejected good input: %s", why);
}

Test(metrics, the_scheduler_counts_a_garbage_frame_as_rejected)
{
	start_sched();
	char host[64];
	int port = 0;
	cr_assert_eq(sscanf(sched.sched_addr, "%63[^:]:%d", host, &port), 2);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert(fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	char junk[64];
	memset(junk, 0xff, sizeof(junk));
	cr_assert_eq(send(fd, junk, sizeof(junk), MSG_NOSIGNAL), (ssize_t)sizeof(junk));
	struct dir_wait w = {&sched, "kvnode_scheduler_rejected_frames_total", 1};
	cr_expect(proc_wait_for(series_reaches, &w, DEADLINE), "the garbage was not counted");
	close(fd);
	char *m = scrape(&sched);
	cr_expect_eq(expo_value(m, "kvnode_scheduler_joins_total"), 0, "%s", m);
	cr_expect_eq(expo_value(m, "kvnode_scheduler_members{state=\"alive\"}"), 0);
	free(m);
}

/* A stranger holding a data connection without authenticating is closed after
 * transport_hello_timeout_ms, and the listener's families say so. */
Test(metrics, the_data_listener_counts_connections_and_a_reader_that_never_authenticates)
{
	start_sched();
	start_node(&node_a, "node-a", "transport_hello_timeout_ms: 300\n");
	char *out = proc_read_file(node_a.out, NULL);
	const char *at = out ? strstr(out, " data on ") : NULL;
	cr_assert(at, "node-a printed no data address: %s", out ? out : "");
	char host[64];
	int port = 0;
	cr_assert_eq(sscanf(at + strlen(" data on "), "%63[^:]:%d", host, &port), 2, "%s", at);
	free(out);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert(fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	struct dir_wait w = {&node_a, "kvnode_transport_refused_total{reason=\"hello_timeout\"}", 1};
	cr_assert(proc_wait_for(series_reaches, &w, DEADLINE), "the silent reader was not counted");
	close(fd);
	char *m = scrape(&node_a);
	cr_expect_geq(expo_value(m, "kvnode_transport_accepted_total"), 1, "%s", m);
	cr_expect_eq(expo_value(m, "kvnode_transport_connections"), 0, "%s", m);
	cr_expect_eq(expo_value(m, "kvnode_transport_refused_total{reason=\"auth\"}"), 0);
	free(m);
}

/* ------------------------------------------------------------------------------------------
 * Slow clients: metrics_max_connections and metrics_timeout_s
 * ------------------------------------------------------------------------------------------ */

#define TRICKLERS      40 /* more than any cap: the old hard-coded one was 32 */
#define TRICKLE_PREFIX "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: "

static int
trickler_open(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_geq(fd, 0);
	int rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	cr_assert(rc == 0 || errno == EINPROGRESS, "connect: %s", strerror(errno));
	struct pollfd pf = {.fd = fd, .events = POLLOUT};
	cr_assert_eq(poll(&pf, 1, DEADLINE), 1, "connect to the metrics port never completed");
	/* A request line and a header that never ends: the request stays incomplete forever. */
	send(fd, TRICKLE_PREFIX, strlen(TRICKLE_PREFIX), MSG_NOSIGNAL);
	return fd;
}

struct scrape_job {
	int port;
	char *body;
	int status;
	_Atomic bool done;
};

static void *
scrape_main(void *arg)
{
	struct scrape_job *j = arg;
	j->status = http_request(j->port, "GET", "/metrics", &j->body, 2 * DEADLINE);
	atomic_store(&j->done, true);
	return NULL;
}

/* TRICKLERS connections send a byte of a never-ending header every 200 ms (each well inside
 * libmicrohttpd's idle timeout); one that the daemon closes comes straight back. A scrape
 * started among them must still be answered; d runs with metrics_timeout_s: 1. */
static void
scrape_while_trickling(struct daemon *d)
{
	int fds[TRICKLERS];
	for (int i = 0; i < TRICKLERS; i++)
		fds[i] = trickler_open(d->metrics_port);
	struct scrape_job j = {.port = d->metrics_port};
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, scrape_main, &j), 0);
	int reopened = 0;
	for (int round = 0; round < DEADLINE / 200 && !atomic_load(&j.done); round++) {
		for (int i = 0; i < TRICKLERS; i++) {
			struct pollfd pf = {.fd = fds[i], .events = POLLIN};
			bool gone = send(fds[i], "a", 1, MSG_NOSIGNAL) != 1 && errno != EAGAIN;
			if (!gone && poll(&pf, 1, 0) == 1)
				gone = true; /* the daemon closed it (or answered: not expected) */
			if (gone) {
				close(fds[i]);
				fds[i] = trickler_open(d->metrics_port);
				reopened++;
			}
		}
		poll(NULL, 0, 200);
	}
	bool answered = atomic_load(&j.done);
	for (int i = 0; i < TRICKLERS; i++)
		close(fds[i]);
	pthread_join(t, NULL);
	cr_assert(answered,
		  "%s: no scrape answered in %d s while %d clients trickled (metrics_max_connections "
		  "4, metrics_timeout_s 1); the daemon closed %d of them",
		  d->name, DEADLINE / 1000, TRICKLERS, reopened);
	cr_assert_eq(j.status, 200, "%s: scrape status %d", d->name, j.status);
	cr_expect_geq(expo_value(j.body, "kvnode_metrics_cut_total"), 1, "%s", j.body);
	cr_expect_leq(expo_value(j.body, "kvnode_metrics_connections"), 4, "%s", j.body);
	free(j.body);
	char *e = proc_read_file(d->err, NULL);
	cr_expect(e && strstr(e, "metrics_timeout_s"), "%s: the cuts are logged naming the key: %s",
		  d->name, e ? e : "");
	free(e);
}

Test(metrics, a_scrape_is_answered_while_more_clients_than_the_cap_trickle_bytes)
{
	start_node(&node_a, "node-a", "metrics_max_connections: 4\nmetrics_timeout_s: 1\n");
	scrape_while_trickling(&node_a);
}

Test(metrics, the_scheduler_s_listener_has_the_same_limits)
{
	daemon_paths(&sched, "sched");
	sched.metrics_port = kvn_tcp_free_port();
	char text[256];
	snprintf(text, sizeof(text),
		 "metrics_listen: 127.0.0.1:%d\nmetrics_max_connections: 4\nmetrics_timeout_s: 1\n",
		 sched.metrics_port);
	write_cfg(&sched, text);
	const char *argv[] = {KVNODE,	  "scheduler",	 "-c", sched.cfg,
			      "--listen", "127.0.0.1:0", NULL};
	start(&sched, argv);
	scrape_while_trickling(&sched);
}

struct remote_wait {
	const char *series;
	double want;
};

/* A get of a key no tier has goes to the store: that is what notices it gone or back. */
static bool
remote_state_is(void *ctx)
{
	struct remote_wait *w = ctx;
	const char *argv[] = {KVNODE, "get", "no-such-key", "--node", node_a.sock, NULL};
	struct proc_opts po = {.env = clean_env};
	proc_run(argv, &po, DEADLINE);
	char *body;
	int st = http_request(node_a.metrics_port, "GET", "/metrics", &body, 20000);
	bool ok = st == 200 && expo_value(body, "kvnode_remote_connected") == w->want &&
		  expo_value(body, w->series) >= 1;
	free(body);
	return ok;
}

Test(metrics, the_remote_store_families_follow_the_store_going_away_and_coming_back)
{
	if (!redis_server_available())
		cr_skip_test("redis-server is not installed (scripts/install-deps installs it)");
	struct redis_server rs = {0};
	cr_assert_eq(redis_server_start(&rs), 0, "redis-server did not start");
	char extra[128];
	snprintf(extra, sizeof(extra), "remote_url: %s\n", rs.url);
	start_node(&node_a, "remote-node", extra);
	char value[PATH_MAX];
	snprintf(value, sizeof(value), "%s/value.bin", dir);
	cr_assert_eq(proc_write_file(value, "0123456789", 10), 0);
	cli(&node_a, (const char *[]){"put", KEY, value, NULL}, NULL);
	/* The remote tier is written behind the put. */
	struct dir_wait w = {&node_a, "kvnode_tier_written_bytes_total{tier=\"remote\"}", 10};
	cr_expect(proc_wait_for(series_reaches, &w, DEADLINE), "the remote tier never got the "
							       "value");
	char *m = scrape(&node_a);
	cr_expect_eq(expo_value(m, "kvnode_remote_connected"), 1, "%s", m);
	cr_expect_eq(expo_value(m, "kvnode_tier_puts_total{tier=\"remote\"}"), 1);
	char names[128][96];
	size_t n = documented_names(names, 128);
	for (size_t i = 0; i < n; i++)
		if (!strncmp(names[i], "kvnode_remote_", 14))
			cr_expect(expo_has_family(m, names[i]), "documented %s is not served",
				  names[i]);
	cr_expect(expo_has_family(m, "kvnode_remote_stale_tags_total"));
	cr_expect_eq(expo_value(m, "kvnode_remote_stale_tags_total"), 0);
	free(m);

	/* LMCache writes over the value (RedisConnector: SET <key>kv_bytes, SET <key>metadata)
	 * and leaves kvnode's tag behind. A second node, which holds nothing itself, reads it
	 * from the store: served, and the tag counted stale rather than the value corrupt. */
	char hdr_path[PATH_MAX], data_path[PATH_MAX], got[PATH_MAX];
	snprintf(hdr_path, sizeof(hdr_path), "%s/lmcache.hdr", dir);
	snprintf(data_path, sizeof(data_path), "%s/lmcache.data", dir);
	snprintf(got, sizeof(got), "%s/got.bin", dir);
	/* LMCache's RemoteMetadata: length, fmt 4 (binary), dtype 6 (uint8), shape 20,1,1,1. */
	const int32_t hdr[7] = {20, 4, 6, 20, 1, 1, 1};
	cr_assert_eq(proc_write_file(hdr_path, hdr, sizeof(hdr)), 0);
	cr_assert_eq(proc_write_file(data_path, "LMCache wrote this!!", 20), 0);
	cr_assert_eq(redis_cli(&rs, data_path, NULL, "-x", "SET", KEY "kv_bytes", NULL), 0);
	cr_assert_eq(redis_cli(&rs, hdr_path, NULL, "-x", "SET", KEY "metadata", NULL), 0);
	start_node(&node_b, "remote-node-b", extra);
	cli(&node_b, (const char *[]){"get", KEY, "-o", got, NULL}, NULL);
	size_t got_len = 0;
	char *text = proc_read_file(got, &got_len);
	cr_expect(text && got_len == 20 && !memcmp(text, "LMCache wrote this!!", 20),
		  "node-b did not read LMCache's value");
	free(text);
	m = scrape(&node_b);
	cr_expect_eq(expo_value(m, "kvnode_remote_stale_tags_total"), 1, "%s", m);
	cr_expect_eq(expo_value(m, "kvnode_remote_corrupt_total"), 0);
	free(m);
	proc_stop(&node_b.p, SIGTERM, 20000);

	redis_server_stop(&rs, SIGKILL);
	struct remote_wait down = {"kvnode_remote_disconnects_total", 0};
	cr_expect(proc_wait_for(remote_state_is, &down, DEADLINE),
		  "kvnode_remote_connected never went to 0 with the store killed");
	cr_assert_eq(redis_server_restart(&rs), 0, "redis-server did not restart");
	struct remote_wait up = {"kvnode_remote_reconnects_total", 1};
	cr_expect(proc_wait_for(remote_state_is, &up, DEADLINE),
		  "kvnode_remote_connected never came back to 1 with the store back");
	proc_stop(&node_a.p, SIGTERM, 20000);
	redis_server_destroy(&rs);
}

static char *
run_expect_fail(const char *cmd, const char *cfg_text, int want_rc)
{
	struct daemon d = {0};
	daemon_paths(&d, cmd);
	write_cfg(&d, cfg_text);
	const char *serve[] = {KVNODE, "serve", "-c", d.cfg, "--socket", d.sock, NULL};
	const char *schd[] = {KVNODE, "scheduler", "-c", d.cfg, "--listen", "127.0.0.1:0", NULL};
	struct proc_opts po = {.stdout_path = d.out, .stderr_path = d.err, .env = clean_env};
	int rc = proc_run(strcmp(cmd, "serve") ? schd : serve, &po, DEADLINE);
	char *err = proc_read_file(d.err, NULL);
	cr_expect_eq(rc, want_rc, "kvnode %s exited %d, expected %d: %s", cmd, rc, want_rc,
		     err ? err : "");
	return err;
}

Test(metrics, a_bad_metrics_listen_is_a_config_error_naming_the_key)
{
	const char *cmds[] = {"serve", "scheduler"};
	for (size_t i = 0; i < 2; i++) {
		char *err = run_expect_fail(cmds[i], "metrics_listen: localhost-9300\n", 2);
		cr_expect(err && strstr(err, "metrics_listen") && strstr(err, ":1"),
			  "%s: the message should name metrics_listen and its line: %s", cmds[i],
			  err ? err : "");
		free(err);
	}
}

Test(metrics, a_metrics_port_already_in_use_is_a_clear_startup_error)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t sl = sizeof(sa);
	cr_assert(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
		  listen(fd, 1) == 0 && getsockname(fd, (struct sockaddr *)&sa, &sl) == 0);
	char text[128];
	snprintf(text, sizeof(text), "metrics_listen: 127.0.0.1:%u\n", ntohs(sa.sin_port));
	const char *cmds[] = {"serve", "scheduler"};
	for (size_t i = 0; i < 2; i++) {
		char *err = run_expect_fail(cmds[i], text, 3);
		cr_expect(err && strstr(err, "metrics_listen") && strstr(err, "in use"),
			  "%s: the message should name metrics_listen and say the port is in "
			  "use: %s",
			  cmds[i], err ? err : "");
		free(err);
	}
	close(fd);
}
