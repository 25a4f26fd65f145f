/* The kvnode program end to end (docs/architecture.md §9): `kvnode serve` as a child process on a
 * unix socket in a temp dir, the CLI commands as further children, exit codes 0/1/2/3, help and
 * version, shutdown on SIGTERM, the disk tier across a restart, and the demo. */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "tests/helpers/proc.h"

#define KVNODE	 KVN_BINARY_DIR "/kvnode"
#define DEADLINE 120000 /* ms: generous, for a loaded 2-core machine under sanitizers */
#define MAX_ARGS 32
#define MIB	 (1024 * 1024)
#define LMKEY(h) "vllm@meta-llama/Llama-3.1-8B@1@0@" h "@bfloat16"

/* The daemon must not pick up the developer's own config or socket. */
static const char *const clean_env[] = {"KVNODE_CONFIG_FILE", "LMCACHE_CONFIG_FILE",
					"KVNODE_SOCKET", NULL};

static char dir[256], sock[PATH_MAX], cfg[PATH_MAX];
static char out_path[PATH_MAX], err_path[PATH_MAX];
static struct proc daemon_proc;

static void
path_in_dir(char *out, const char *name)
{
	snprintf(out, PATH_MAX, "%s/%s", dir, name);
}

static void
write_config(const char *extra)
{
	char text[2048];
	snprintf(text, sizeof(text), "max_local_cpu_size: 0.25\nhugepages: false\n%s", extra);
	cr_assert_eq(proc_write_file(cfg, text, strlen(text)), 0, "writing %s", cfg);
}

static void
make_dir(void)
{
	cr_assert_eq(access(KVNODE, X_OK), 0,
		     "%s is not built: build the kvnode_cli target before these tests", KVNODE);
	cr_assert_eq(proc_mkdtemp("cli", dir, sizeof(dir)), 0, "mkdtemp: %s", strerror(errno));
	path_in_dir(sock, "kvnode.sock");
	path_in_dir(cfg, "kvnode.yaml");
	path_in_dir(out_path, "cli.out");
	path_in_dir(err_path, "cli.err");
	write_config("");
}

static char *
slurp(const char *name)
{
	char path[PATH_MAX];
	path_in_dir(path, name);
	char *text = proc_read_file(path, NULL);
	return text ? text : strdup("(unreadable)");
}

/* Starts `kvnode serve -c cfg --socket sock` and waits until the socket accepts. */
static void
start_daemon(void)
{
	char sout[PATH_MAX], serr[PATH_MAX];
	path_in_dir(sout, "serve.out");
	path_in_dir(serr, "serve.err");
	const char *argv[] = {KVNODE, "serve", "-c", cfg, "--socket", sock, NULL};
	struct proc_opts po = {.stdout_path = sout, .stderr_path = serr, .env = clean_env};
	cr_assert_eq(proc_spawn(&daemon_proc, argv, &po), 0);
	bool up = proc_wait_for(proc_cond_socket_accepts, sock, DEADLINE);
	if (!up || !proc_alive(&daemon_proc)) {
		proc_stop(&daemon_proc, SIGKILL, 0);
		cr_assert_fail("kvnode serve did not come up on %s: %s", sock, slurp("serve.err"));
	}
}

static int
stop_daemon(void)
{
	return proc_stop(&daemon_proc, SIGTERM, DEADLINE);
}

static void
setup(void)
{
	make_dir();
	start_daemon();
}

static void
setup_no_daemon(void)
{
	make_dir();
	memset(&daemon_proc, 0, sizeof(daemon_proc));
}

static void
teardown(void)
{
	if (daemon_proc.pid)
		proc_stop(&daemon_proc, SIGKILL, DEADLINE);
	proc_rm_tree(dir);
}

/* Runs kvnode with the given arguments (NULL-terminated), stdin from in (NULL: /dev/null),
 * stdout/stderr into cli.out/cli.err. Returns the exit code. */
static int
run_argv(const char *in, const char *const *args)
{
	const char *argv[MAX_ARGS] = {KVNODE};
	int n = 1;
	for (; args[n - 1] && n < MAX_ARGS - 1; n++)
		argv[n] = args[n - 1];
	argv[n] = NULL;
	struct proc_opts po = {
	    .stdin_path = in, .stdout_path = out_path, .stderr_path = err_path, .env = clean_env};
	int rc = proc_run(argv, &po, DEADLINE);
	cr_assert_geq(rc, 0, "kvnode %s did not finish: %s", args[0], strerror(-rc));
	return rc;
}

#define kv(in, ...) run_argv(in, (const char *const[]){__VA_ARGS__, NULL})
#define cli_out()   slurp("cli.out")
#define cli_err()   slurp("cli.err")

static void
assert_stderr_mentions(const char *what)
{
	char *err = cli_err();
	cr_assert(strstr(err, what), "stderr should name \"%s\", got: %s", what, err);
	free(err);
}

static void
random_file(const char *path, size_t len, uint64_t seed)
{
	uint64_t *buf = malloc(len + 8);
	cr_assert_not_null(buf);
	uint64_t x = seed | 1;
	for (size_t i = 0; i < len / 8 + 1; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		buf[i] = x;
	}
	cr_assert_eq(proc_write_file(path, buf, len), 0);
	free(buf);
}

static void
assert_same_file(const char *a, const char *b)
{
	size_t la, lb;
	char *x = proc_read_file(a, &la), *y = proc_read_file(b, &lb);
	cr_assert(x && y, "reading %s and %s", a, b);
	cr_assert_eq(la, lb, "%s has %zu bytes, %s has %zu", a, la, b, lb);
	cr_assert(!memcmp(x, y, la), "%s and %s differ", a, b);
	free(x);
	free(y);
}

/* ------------------------------------------------------------------------------------------
 * put / get / rm
 * ------------------------------------------------------------------------------------------ */

TestSuite(cli, .init = setup, .fini = teardown, .timeout = 300);

Test(cli, round_trips_a_random_32mib_value_byte_for_byte)
{
	char in[PATH_MAX], got[PATH_MAX];
	path_in_dir(in, "value.bin");
	path_in_dir(got, "got.bin");
	random_file(in, 32 * MIB + 13, 42);
	cr_assert_eq(kv(NULL, "put", "--node", sock, LMKEY("a1"), in), 0, "put: %s", cli_err());
	cr_assert_eq(kv(NULL, "get", "--node", sock, LMKEY("a1"), "-o", got), 0, "get: %s",
		     cli_err());
	assert_same_file(in, got);
}

Test(cli, put_reads_stdin_and_get_writes_stdout)
{
	char in[PATH_MAX];
	path_in_dir(in, "value.bin");
	random_file(in, 300000, 7);
	/* stdin as a file (streamed), as "-", and as a pipe (read whole: no size up front) */
	cr_assert_eq(kv(in, "put", "--node", sock, "k-file"), 0, "%s", cli_err());
	cr_assert_eq(kv(in, "put", "--socket", sock, "k-dash", "-"), 0, "%s", cli_err());
	char script[PATH_MAX * 3];
	snprintf(script, sizeof(script), "cat '%s' | '%s' put --node '%s' k-pipe", in, KVNODE,
		 sock);
	const char *sh[] = {"/bin/sh", "-c", script, NULL};
	struct proc_opts po = {.stderr_path = err_path, .env = clean_env};
	cr_assert_eq(proc_run(sh, &po, DEADLINE), 0, "%s", cli_err());

	const char *keys[] = {"k-file", "k-dash", "k-pipe"};
	for (int i = 0; i < 3; i++) {
		cr_assert_eq(kv(NULL, "get", "--node", sock, keys[i]), 0, "%s", cli_err());
		assert_same_file(in, out_path);
	}
}

Test(cli, get_of_a_missing_key_exits_1_naming_the_key_and_leaves_the_output_alone)
{
	char got[PATH_MAX];
	path_in_dir(got, "untouched.bin");
	cr_assert_eq(proc_write_file(got, "keep", 4), 0);
	cr_assert_eq(kv(NULL, "get", "--node", sock, LMKEY("ffee"), "-o", got), 1);
	assert_stderr_mentions(LMKEY("ffee"));
	size_t len;
	char *text = proc_read_file(got, &len);
	cr_assert(text && len == 4 && !memcmp(text, "keep", 4), "a miss must not touch %s", got);
	free(text);
}

Test(cli, rm_removes_a_key_and_a_second_rm_misses)
{
	char in[PATH_MAX];
	path_in_dir(in, "v");
	cr_assert_eq(proc_write_file(in, "value", 5), 0);
	cr_assert_eq(kv(NULL, "put", "--node", sock, "gone-soon", in), 0, "%s", cli_err());
	cr_assert_eq(kv(NULL, "rm", "--node", sock, "gone-soon"), 0, "%s", cli_err());
	cr_assert_eq(kv(NULL, "get", "--node", sock, "gone-soon"), 1);
	cr_assert_eq(kv(NULL, "rm", "--node", sock, "gone-soon"), 1);
	assert_stderr_mentions("gone-soon");
}

Test(cli, an_invalid_key_is_a_usage_error_with_the_reason)
{
	char longkey[700];
	memset(longkey, 'k', sizeof(longkey) - 1);
	longkey[sizeof(longkey) - 1] = '\0';
	cr_assert_eq(kv(NULL, "get", "--node", sock, "bad\001key"), 2);
	assert_stderr_mentions("invalid key");
	cr_assert_eq(kv(NULL, "put", "--node", sock, longkey, "-"), 2);
	assert_stderr_mentions("invalid key");
	cr_assert_eq(kv(NULL, "rm", "--node", sock, ""), 2);
	assert_stderr_mentions("invalid key");
}

Test(cli, bad_options_and_commands_are_usage_errors)
{
	cr_assert_eq(kv(NULL, "get", "--node", sock, "k", "--bogus"), 2);
	assert_stderr_mentions("--bogus");
	cr_assert_eq(kv(NULL, "frobnicate"), 2);
	assert_stderr_mentions("frobnicate");
	cr_assert_eq(kv(NULL, "get", "--node", sock), 2);
	assert_stderr_mentions("KEY");
	cr_assert_eq(kv(NULL, "rm", "--node", sock, "a", "b"), 2);
	cr_assert_eq(kv(NULL, "ls", "--json", "--node", sock), 2); /* --json is stat's */
	assert_stderr_mentions("--json");
	cr_assert_eq(kv(NULL, "stat", "--log-level", "loud", "--node", sock), 2);
	assert_stderr_mentions("loud");
	cr_assert_eq(kv(NULL, "get", "k", "--node"), 2);
	cr_assert_eq(kv(NULL, "put", "--node", sock, "k", "/nonexistent/input"), 2);
	assert_stderr_mentions("/nonexistent/input");
}

/* ------------------------------------------------------------------------------------------
 * ls / stat
 * ------------------------------------------------------------------------------------------ */

static void
put_text(const char *key, size_t len)
{
	char in[PATH_MAX];
	path_in_dir(in, "v");
	char *buf = malloc(len);
	memset(buf, 'x', len);
	cr_assert_eq(proc_write_file(in, buf, len), 0);
	free(buf);
	cr_assert_eq(kv(NULL, "put", "--node", sock, key, in), 0, "put %s: %s", key, cli_err());
}

Test(cli, ls_lists_every_key_with_its_length)
{
	put_text(LMKEY("01"), 1000);
	put_text(LMKEY("02"), 2000);
	put_text("opaque key with spaces", 3);
	cr_assert_eq(kv(NULL, "ls", "--node", sock), 0, "%s", cli_err());
	char *text = cli_out();
	int lines = 0;
	bool seen[3] = {0};
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"), lines++) {
		char *tab = strchr(line, '\t');
		cr_assert_not_null(tab, "ls line without a tab: %s", line);
		*tab = '\0';
		long len = strtol(tab + 1, NULL, 10);
		if (!strcmp(line, LMKEY("01")))
			seen[0] = len == 1000;
		else if (!strcmp(line, LMKEY("02")))
			seen[1] = len == 2000;
		else if (!strcmp(line, "opaque key with spaces"))
			seen[2] = len == 3;
	}
	cr_assert_eq(lines, 3, "ls printed %d lines", lines);
	cr_assert(seen[0] && seen[1] && seen[2], "ls must list each key with its length");
	free(text);
}

static const cJSON *
tier(const cJSON *root, const char *name)
{
	const cJSON *t;
	cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(root, "backends"))
	{
		const cJSON *n = cJSON_GetObjectItemCaseSensitive(t, "name");
		if (cJSON_IsString(n) && !strcmp(n->valuestring, name))
			return t;
	}
	return NULL;
}

static double
num(const cJSON *obj, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
	cr_assert(cJSON_IsNumber(v), "stat --json: \"%s\" missing or not a number", name);
	return v->valuedouble;
}

Test(cli, stat_json_counts_keys_bytes_hits_and_misses)
{
	put_text("s1", 100);
	put_text("s2", 200);
	put_text("s3", 300);
	cr_assert_eq(kv(NULL, "get", "--node", sock, "s1"), 0);
	cr_assert_eq(kv(NULL, "get", "--node", sock, "s2"), 0);
	cr_assert_eq(kv(NULL, "get", "--node", sock, "absent"), 1);
	cr_assert_eq(kv(NULL, "stat", "--json", "--node", sock), 0, "%s", cli_err());
	char *text = cli_out();
	cJSON *root = cJSON_Parse(text);
	cr_assert_not_null(root, "stat --json is not JSON: %s", text);
	const cJSON *cpu = tier(root, "cpu");
	cr_assert_not_null(cpu, "no cpu tier in %s", text);
	cr_assert_eq(num(cpu, "count"), 3);
	cr_assert_eq(num(cpu, "bytes"), 600);
	cr_assert_eq(num(cpu, "hits"), 2);
	cr_assert_geq(num(cpu, "misses"), 1);
	cr_assert_eq(num(cpu, "evictions"), 0);
	cr_assert_eq(num(root, "hits"), 2);
	cr_assert_eq(num(root, "misses"), 1);
	cJSON_Delete(root);
	free(text);
}

Test(cli, stat_without_json_prints_a_table_of_the_tiers)
{
	put_text("t1", 10);
	cr_assert_eq(kv(NULL, "stat", "--node", sock), 0, "%s", cli_err());
	char *text = cli_out();
	cr_assert(strstr(text, "BACKEND") && strstr(text, "EVICTIONS"), "no table header: %s",
		  text);
	cr_assert(strstr(text, "\ncpu "), "no cpu row: %s", text);
	cr_assert(strstr(text, sock), "the table should name the node's socket: %s", text);
	free(text);
}

/* ------------------------------------------------------------------------------------------
 * Without a daemon
 * ------------------------------------------------------------------------------------------ */

TestSuite(cli_alone, .init = setup_no_daemon, .fini = teardown, .timeout = 300);

Test(cli_alone, no_daemon_is_a_connection_error_naming_the_socket)
{
	cr_assert_eq(kv(NULL, "get", "--node", sock, "k"), 3);
	assert_stderr_mentions(sock);
	cr_assert_eq(kv(NULL, "stat", "--node", sock), 3);
	assert_stderr_mentions(sock);
}

Test(cli_alone, the_socket_defaults_to_the_configs_socket_path)
{
	char text[PATH_MAX + 64];
	snprintf(text, sizeof(text), "socket_path: %s\n", sock);
	write_config(text);
	cr_assert_eq(kv(NULL, "ls", "-c", cfg), 3);
	assert_stderr_mentions(sock);
	start_daemon();
	cr_assert_eq(kv(NULL, "ls", "-c", cfg), 0, "%s", cli_err());
}

Test(cli_alone, help_pages_have_the_manual_sections)
{
	cr_assert_eq(kv(NULL, "--help"), 0);
	char *text = cli_out();
	const char *sections[] = {"NAME",	 "SYNOPSIS",	"COMMANDS", "OPTIONS",
				  "EXIT STATUS", "ENVIRONMENT", "FILES",    "EXAMPLES"};
	for (size_t i = 0; i < sizeof(sections) / sizeof(sections[0]); i++)
		cr_assert(strstr(text, sections[i]), "--help lacks %s", sections[i]);
	free(text);

	const char *cmds[] = {"serve", "put", "get", "rm", "ls", "stat", "demo"};
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		cr_assert_eq(kv(NULL, "help", cmds[i]), 0);
		char *a = cli_out();
		cr_assert_eq(kv(NULL, cmds[i], "--help"), 0);
		char *b = cli_out();
		char name[32];
		snprintf(name, sizeof(name), "kvnode %s", cmds[i]);
		cr_assert(strstr(a, name) && strstr(a, "SYNOPSIS") && strstr(a, "EXAMPLES"),
			  "help %s: %s", cmds[i], a);
		cr_assert_str_eq(a, b, "`help %s` and `%s --help` differ", cmds[i], cmds[i]);
		free(a);
		free(b);
	}
	cr_assert_eq(kv(NULL, "help", "nosuch"), 2);
}

Test(cli_alone, version_names_the_release_and_build_features)
{
	cr_assert_eq(kv(NULL, "--version"), 0);
	char *text = cli_out();
	cr_assert(!strncmp(text, "kvnode 0.1.0\n", 13), "--version: %s", text);
	cr_assert(strstr(text, "verbs=") && strstr(text, "cuda="), "--version: %s", text);
	free(text);
}

Test(cli_alone, demo_stores_and_verifies_chunks_in_process)
{
	cr_assert_eq(kv(NULL, "demo"), 0, "%s", cli_err());
	char *text = cli_out();
	cr_assert(strstr(text, "all verified"), "demo output: %s", text);
	cr_assert(strstr(text, "vllm@"), "demo should show LMCache keys: %s", text);
	cr_assert(strstr(text, "cpu "), "demo should show the tier statistics: %s", text);
	free(text);
}

/* ------------------------------------------------------------------------------------------
 * serve
 * ------------------------------------------------------------------------------------------ */

TestSuite(serve, .init = setup_no_daemon, .fini = teardown, .timeout = 300);

static bool
serve_out_has_a_line(void *ctx)
{
	(void)ctx;
	char *text = slurp("serve.out");
	bool done = strchr(text, '\n') != NULL;
	free(text);
	return done;
}

Test(serve, prints_its_address_and_exits_0_on_sigterm_removing_the_socket)
{
	start_daemon();
	/* The socket accepts from listen() on; the line follows right after. */
	cr_assert(proc_wait_for(serve_out_has_a_line, NULL, DEADLINE), "serve printed nothing");
	char *text = slurp("serve.out");
	char want[PATH_MAX + 32];
	snprintf(want, sizeof(want), "kvnode: serving on unix:%s\n", sock);
	cr_assert_str_eq(text, want);
	free(text);
	cr_assert_eq(stop_daemon(), 0, "serve: %s", slurp("serve.err"));
	cr_assert(proc_cond_path_gone(sock), "the socket file must be removed");
}

Test(serve, sigint_shuts_down_cleanly_too)
{
	start_daemon();
	cr_assert_eq(proc_stop(&daemon_proc, SIGINT, DEADLINE), 0);
	cr_assert(proc_cond_path_gone(sock));
}

Test(serve, refuses_a_socket_a_live_daemon_serves)
{
	start_daemon();
	const char *argv[] = {"serve", "-c", cfg, "--socket", sock, NULL};
	cr_assert_eq(run_argv(NULL, argv), 3);
	assert_stderr_mentions("already serving");
	assert_stderr_mentions(sock);
	cr_assert(proc_alive(&daemon_proc));
	cr_assert_eq(kv(NULL, "ls", "--node", sock), 0, "the first daemon must still serve");
}

Test(serve, replaces_a_stale_socket_file)
{
	/* What a SIGKILLed daemon leaves: a socket file nothing listens on. */
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	strcpy(sa.sun_path, sock);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
	start_daemon();
	cr_assert_eq(kv(NULL, "ls", "--node", sock), 0, "%s", cli_err());
}

Test(serve, never_deletes_a_file_that_is_not_a_socket)
{
	cr_assert_eq(proc_write_file(sock, "precious", 8), 0);
	const char *argv[] = {"serve", "-c", cfg, "--socket", sock, NULL};
	cr_assert_eq(run_argv(NULL, argv), 3);
	assert_stderr_mentions("not a socket");
	struct stat st;
	cr_assert(stat(sock, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 8);
}

Test(serve, a_bad_config_is_a_usage_error_naming_the_file)
{
	cr_assert_eq(proc_write_file(cfg, "max_local_cpu_size: [oops\n", 26), 0);
	const char *argv[] = {"serve", "-c", cfg, "--socket", sock, NULL};
	cr_assert_eq(run_argv(NULL, argv), 2);
	assert_stderr_mentions("kvnode.yaml");
}

/* max_chunk_size bounds what the client socket takes: the CLI's put of a bigger file fails
 * with the node's reason, and the daemon keeps serving. */
Test(serve, a_put_over_max_chunk_size_fails_naming_the_key_and_the_daemon_keeps_serving)
{
	write_config("max_chunk_size: 64KiB\nclient_max_connections: 5\n");
	start_daemon();
	cr_assert_eq(kv(NULL, "stat", "--json", "--node", sock), 0, "%s", cli_err());
	char *json = cli_out();
	cJSON *j = cJSON_Parse(json), *srv = cJSON_GetObjectItem(j, "server");
	cr_expect_eq(cJSON_GetNumberValue(cJSON_GetObjectItem(srv, "max_chunk_size")), 65536,
		     "%s", json);
	cr_expect_eq(cJSON_GetNumberValue(cJSON_GetObjectItem(srv, "max_connections")), 5, "%s",
		     json);
	cJSON_Delete(j);
	free(json);
	char big[PATH_MAX], ok[PATH_MAX];
	path_in_dir(big, "big.bin");
	path_in_dir(ok, "ok.bin");
	random_file(big, 100000, 3);
	random_file(ok, 65536, 4);
	cr_assert_eq(kv(NULL, "put", LMKEY("b1"), big, "--node", sock), 3);
	assert_stderr_mentions("max_chunk_size");
	assert_stderr_mentions("100000");
	cr_assert_eq(kv(NULL, "put", LMKEY("b2"), ok, "--node", sock), 0, "%s", cli_err());
	cr_assert_eq(kv(NULL, "get", LMKEY("b1"), "--node", sock), 1, "nothing was stored");
	cr_assert_eq(stop_daemon(), 0);
}

Test(serve, the_disk_tier_keeps_values_across_a_restart)
{
	char text[PATH_MAX + 128], in1[PATH_MAX], in2[PATH_MAX], got[PATH_MAX];
	snprintf(text, sizeof(text), "local_disk: %s/disk\nmax_local_disk_size: 0.25\n", dir);
	write_config(text);
	path_in_dir(in1, "one.bin");
	path_in_dir(in2, "two.bin");
	path_in_dir(got, "got.bin");
	random_file(in1, 3 * MIB, 1);
	random_file(in2, 5 * MIB + 1, 2);
	start_daemon();
	cr_assert_eq(kv(NULL, "put", "--node", sock, LMKEY("d1"), in1), 0, "%s", cli_err());
	cr_assert_eq(kv(NULL, "put", "--node", sock, LMKEY("d2"), in2), 0, "%s", cli_err());
	cr_assert_eq(stop_daemon(), 0, "serve: %s", slurp("serve.err"));

	start_daemon();
	cr_assert_eq(kv(NULL, "get", "--node", sock, LMKEY("d1"), "-o", got), 0, "%s", cli_err());
	assert_same_file(in1, got);
	cr_assert_eq(kv(NULL, "get", "--node", sock, LMKEY("d2"), "-o", got), 0, "%s", cli_err());
	assert_same_file(in2, got);
	cr_assert_eq(stop_daemon(), 0);
}

/* Secure by default: a node or scheduler that others can reach (any address but loopback) does
 * not start without a configured token; it says how to set one. On loopback it runs on this
 * host's generated token, which the listener check does not count as configured. */
Test(serve, a_listener_others_can_reach_without_a_configured_token_is_refused)
{
	write_config("scheduler_url: 127.0.0.1:9\nlisten: 0.0.0.0:0\n");
	const char *argv[] = {"serve", "-c", cfg, "--socket", sock, NULL};
	cr_assert_eq(run_argv(NULL, argv), 2);
	assert_stderr_mentions("listen 0.0.0.0:0 is not a loopback address");
	assert_stderr_mentions("auth_token");

	const char *sargv[] = {"scheduler", "-c", cfg, "--listen", "0.0.0.0:0", NULL};
	cr_assert_eq(run_argv(NULL, sargv), 2);
	assert_stderr_mentions("--listen 0.0.0.0:0 is not a loopback address");
	assert_stderr_mentions("openssl rand -hex 32");
}

/* Puts keys (every third one twice, a newer version last), SIGKILLs the daemon right after the
 * last acknowledgement and restarts it on the same directory: returns how many keys did not
 * read back their latest version byte for byte (each named in the log). disk_opts: lines of
 * extra_config. */
static int
kill_after_acks_and_count_lost(const char *disk_opts)
{
	enum { N = 12 };
	char text[PATH_MAX + 256], in[PATH_MAX], got[PATH_MAX];
	snprintf(text, sizeof(text),
		 "local_disk: %s/disk\nmax_local_disk_size: 0.5\nextra_config:\n%s", dir,
		 disk_opts);
	write_config(text);
	path_in_dir(got, "got.bin");
	for (int round = 0; round < 2; round++)
		for (int i = 0; i < N; i++) {
			snprintf(in, sizeof(in), "%s/v%d-%d.bin", dir, round, i);
			random_file(in, 6 * MIB + 4096 * (size_t)i + 1,
				    (uint64_t)(round * 100 + i));
		}
	start_daemon();
	for (int i = 0; i < N; i++) {
		char key[64];
		snprintf(key, sizeof(key), "durable-%d", i);
		snprintf(in, sizeof(in), "%s/v0-%d.bin", dir, i);
		cr_assert_eq(kv(NULL, "put", "--node", sock, key, in), 0, "%s", cli_err());
	}
	/* The newer versions at once, from several clients: writes are still queued when the
	 * last acknowledgement arrives, unless a put waits for its disk write. */
	struct proc puts[N];
	char keys[N][64], ins[N][PATH_MAX];
	for (int i = 0; i < N; i += 3) {
		snprintf(keys[i], sizeof(keys[i]), "durable-%d", i);
		snprintf(ins[i], sizeof(ins[i]), "%s/v1-%d.bin", dir, i);
		const char *argv[] = {KVNODE, "put", "--node", sock, keys[i], ins[i], NULL};
		struct proc_opts po = {.env = clean_env};
		cr_assert_eq(proc_spawn(&puts[i], argv, &po), 0);
	}
	for (int i = 0; i < N; i += 3) {
		cr_assert_eq(proc_wait(&puts[i], DEADLINE), 0, "put %s did not finish", keys[i]);
		cr_assert_eq(proc_exit_code(&puts[i]), 0, "put %s failed", keys[i]);
	}
	cr_assert_geq(proc_stop(&daemon_proc, SIGKILL, DEADLINE), 0);

	start_daemon();
	int lost = 0;
	for (int i = 0; i < N; i++) {
		char key[64];
		snprintf(key, sizeof(key), "durable-%d", i);
		snprintf(in, sizeof(in), "%s/v%d-%d.bin", dir, i % 3 ? 0 : 1, i);
		unlink(got);
		int rc = kv(NULL, "get", "--node", sock, key, "-o", got);
		size_t la = 0, lb = 0;
		char *want = proc_read_file(in, &la), *have = rc ? NULL : proc_read_file(got, &lb);
		if (!have || la != lb || memcmp(want, have, la)) {
			cr_log_info("%s: %s after the SIGKILL", key,
				    rc ? "missing" : "an older or different version");
			lost++;
		}
		free(want);
		free(have);
	}
	cr_assert_eq(stop_daemon(), 0, "serve: %s", slurp("serve.err"));
	return lost;
}

Test(serve, with_disk_sync_put_every_acknowledged_value_survives_a_sigkill_in_its_latest_version)
{
	int lost = kill_after_acks_and_count_lost("  disk.sync_put: true\n");
	cr_assert_eq(lost, 0, "%d acknowledged keys lost or older after a SIGKILL", lost);
}

Test(serve, a_bad_disk_sync_put_is_a_config_error_naming_it)
{
	char text[PATH_MAX + 128];
	snprintf(text, sizeof(text),
		 "local_disk: %s/disk\nmax_local_disk_size: 0.25\nextra_config:\n"
		 "  disk.sync_put: sometimes\n",
		 dir);
	write_config(text);
	const char *argv[] = {"serve", "-c", cfg, "--socket", sock, NULL};
	cr_assert_neq(run_argv(NULL, argv), 0);
	assert_stderr_mentions("disk.sync_put");
}
