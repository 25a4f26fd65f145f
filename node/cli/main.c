/* The kvnode program: `kvnode serve` (the daemon), the client commands that talk to it over its
 * unix socket (put/get/rm/ls/stat), `demo` (node/cli/demo.c), and the help texts (docs/architecture.md
 * §9). */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "kvnode/client.h"
#include "kvnode/plugin.h"
#include "node/cluster/cluster.h"
#include "node/cli/client.h"
#include "node/engine/config.h"
#include "node/engine/engine.h"
#include "node/cli/demo.h"
#include "node/cli/doctor.h"
#include "core/log.h"
#include "core/pool.h"
#include "node/cluster/membership.h"
#include "node/metrics/metrics.h"
#include "node/cli/reload.h"
#include "node/scheduler/scheduler.h"
#include "node/serve/lm_server.h"
#include "node/serve/server.h"

enum exit_code { EXIT_OK = 0, EXIT_MISS = 1, EXIT_USAGE = 2, EXIT_CONN = 3 };

#define HELP_COMMON                                                                                \
	"  -c, --config FILE    YAML config (default: $KVNODE_CONFIG_FILE, then\n"                 \
	"                       $LMCACHE_CONFIG_FILE, else built-in defaults)\n"                   \
	"      --node PATH      node socket (alias --socket; default: the config's socket_path)\n" \
	"  -v, --verbose        one more level of logging (repeatable)\n"                          \
	"      --log-level LVL  error, warn, info or debug\n"                                      \
	"  -h, --help           this text\n"

#define HELP_EXIT                                                                                  \
	"EXIT STATUS\n"                                                                            \
	"  0  success\n"                                                                           \
	"  1  miss: the node does not hold the key\n"                                              \
	"  2  usage, config or local file error (bad option, invalid key, unreadable FILE)\n"      \
	"  3  connection error: no node on the socket, connection lost, or the node failed\n"      \
	"     the request (e.g. out of space)\n"

static const char help_main[] =
    "NAME\n"
    "  kvnode - RDMA KV-cache cluster node for LLM serving (LMCache-compatible)\n"
    "\n"
    "SYNOPSIS\n"
    "  kvnode serve [-c FILE] [--socket PATH]\n"
    "  kvnode put KEY [FILE|-]\n"
    "  kvnode get KEY [-o FILE]\n"
    "  kvnode rm KEY\n"
    "  kvnode ls\n"
    "  kvnode stat [--json] [--scheduler HOST:PORT]\n"
    "  kvnode scheduler [-c FILE] [--listen HOST:PORT]\n"
    "  kvnode demo [-c FILE]\n"
    "  kvnode doctor [-c FILE] [--peers] [--json]\n"
    "  kvnode help [COMMAND] | --help | --version\n"
    "\n"
    "COMMANDS\n"
    "  serve   run a node: open the storage tiers, serve clients on a unix socket\n"
    "  put     store the bytes of FILE (or stdin) under KEY\n"
    "  get     write the value of KEY to stdout (or FILE)\n"
    "  rm      remove KEY from every tier\n"
    "  ls      list the keys held, one per line: KEY<TAB>LENGTH\n"
    "  stat    per-tier counts, bytes, hits, misses, evictions (or, with\n"
    "          --scheduler, the cluster view: members, worker ids, chunks)\n"
    "  scheduler  run the membership service and chunk directory of a cluster\n"
    "  demo    a scheduler and 3 nodes: put chunks on one, read them on another by RDMA READ\n"
    "  doctor  check RDMA bring-up (devices, ports, GID, MTU, memlock, GPUDirect) for a config\n"
    "  help    the manual of one command (also `kvnode COMMAND --help`)\n"
    "\n"
    "  Keys are LMCache CacheEngineKey strings (model@world_size@worker_id@hash@dtype\n"
    "  [@tag%value...], layer keys with @layer after the dtype; older forms are read too)\n"
    "  or any UTF-8 text without control characters, up to 512 bytes.\n"
    "\n"
    "OPTIONS\n" HELP_COMMON "      --version        version and build features\n"
    "\n" HELP_EXIT "\n"
    "ENVIRONMENT\n"
    "  KVNODE_CONFIG_FILE, LMCACHE_CONFIG_FILE   config file when -c is not given\n"
    "  KVNODE_<KEY>, LMCACHE_<KEY>               override one config key (KVNODE_ wins)\n"
    "  KVNODE_SOCKET                             default socket path\n"
    "  XDG_RUNTIME_DIR                           default socket directory\n"
    "\n"
    "FILES\n"
    "  $XDG_RUNTIME_DIR/kvnode.sock, else /tmp/kvnode-UID.sock   default node socket\n"
    "\n"
    "EXAMPLES\n"
    "  kvnode serve -c /etc/kvnode/kvnode.yaml &\n"
    "  kvnode put 'meta-llama/Llama-3.1-8B@1@0@a1b2c3@bfloat16' chunk.bin\n"
    "  kvnode get 'meta-llama/Llama-3.1-8B@1@0@a1b2c3@bfloat16' -o copy.bin\n"
    "  kvnode stat --json | jq '.backends[] | {name, count, hits}'\n";

struct command;
struct opts {
	const char *config;
	const char *node;
	const char *output;
	bool json;
	const char *listen; /* scheduler: --listen */
	const char *scheduler; /* stat, doctor: --scheduler */
	bool peers;	       /* doctor: --peers */
	int verbose;
	int log_level; /* -1: not given */
	const struct command *cmd;
	char **args; /* positional arguments after the command's options */
	int nargs;
};

struct command {
	const char *name;
	int (*run)(struct opts *o);
	int min_args, max_args;
	const char *opt_allowed; /* command-specific long options accepted ("output json") */
	const char *help;
};

/* ------------------------------------------------------------------------------------------
 * Shared pieces: messages, logging, key and socket resolution
 * ------------------------------------------------------------------------------------------ */

static int die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int
die(int code, const char *fmt, ...)
{
	char line[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	fprintf(stderr, "kvnode: %s\n", line);
	return code;
}

static void
apply_log_level(const struct opts *o, int base)
{
	int level = o->log_level >= 0 ? o->log_level : base + o->verbose;
	kvn_log_set_level(level);
}

static int
parse_key(const char *text, struct kvn_key *key)
{
	char why[256], shown[600];
	if (kvn_key_parse(key, text, strlen(text), why, sizeof(why)) == 0)
		return 0;
	/* The message stays one line whatever bytes the key holds. */
	size_t n = 0;
	for (const unsigned char *p = (const unsigned char *)text; *p && n + 8 < sizeof(shown); p++)
		n += (size_t)snprintf(shown + n, sizeof(shown) - n,
				      *p >= 0x20 && *p < 0x7f ? "%c" : "\\x%02x", *p);
	shown[n] = '\0';
	return die(EXIT_USAGE, "invalid key \"%s%s\": %s", shown,
		   n + 8 >= sizeof(shown) ? "..." : "", why);
}

/* --node, else the config's socket_path: the config is read only when it is needed. */
static int
resolve_socket(const struct opts *o, char **path)
{
	if (o->node) {
		*path = strdup(o->node);
		return *path ? 0 : die(EXIT_CONN, "out of memory");
	}
	struct kvn_config *cfg;
	char err[1024];
	if (kvn_config_load(o->config, &cfg, err, sizeof(err)) < 0)
		return die(EXIT_USAGE, "%s", err);
	*path = cfg->socket_path ? strdup(cfg->socket_path) : kvn_config_default_socket();
	kvn_config_free(cfg);
	return *path ? 0 : die(EXIT_CONN, "out of memory");
}

static int
client_open(const struct opts *o, struct kvn_cli_conn **c, char **path)
{
	apply_log_level(o, KVN_LOG_WARN);
	int rc = resolve_socket(o, path);
	if (rc)
		return rc;
	char err[1024];
	if (kvn_cli_connect(*path, 0, c, err, sizeof(err)) < 0) {
		free(*path);
		return die(EXIT_CONN, "%s", err);
	}
	return 0;
}

/* Maps a failed client call onto the exit codes of §9 with a one-line message. */
static int
client_fail(struct kvn_cli_conn *c, int err, const char *what, const char *key, const char *path)
{
	const char *msg = kvn_cli_error(c);
	switch (kvn_cli_fault(c)) {
	case KVN_CLIENT_NODE:
		if (key && err == -ENOENT)
			return die(EXIT_MISS, "%s: key %s not found on node %s", what, key, path);
		return die(EXIT_CONN, "%s%s%s: node %s: %s", what, key ? " " : "", key ? key : "",
			   path, msg);
	case KVN_CLIENT_LOCAL:
		return die(EXIT_USAGE, "%s%s%s: %s", what, key ? " " : "", key ? key : "", msg);
	default:
		return die(EXIT_CONN, "%s%s%s: %s", what, key ? " " : "", key ? key : "", msg);
	}
}

/* ------------------------------------------------------------------------------------------
 * Client commands
 * ------------------------------------------------------------------------------------------ */

/* A pipe or terminal has no size up front and the frame needs one: read it all. */
static int
slurp(int fd, char **data, size_t *len)
{
	size_t cap = 1 << 20, n = 0;
	char *p = malloc(cap);
	while (p) {
		if (n == cap) {
			char *q = realloc(p, cap *= 2);
			if (!q)
				break;
			p = q;
		}
		ssize_t r = read(fd, p + n, cap - n);
		if (r > 0) {
			n += (size_t)r;
		} else if (r == 0) {
			*data = p;
			*len = n;
			return 0;
		} else if (errno != EINTR) {
			int e = errno;
			free(p);
			return -e;
		}
	}
	free(p);
	return -ENOMEM;
}

/* put over the control protocol: the value streamed through the socket. */
static int
put_ctl(struct opts *o)
{
	struct kvn_key key;
	const char *src = o->nargs > 1 ? o->args[1] : "-";
	int e, rc = parse_key(o->args[0], &key);
	if (rc)
		return rc;
	int fd = strcmp(src, "-") ? open(src, O_RDONLY | O_CLOEXEC) : STDIN_FILENO;
	const char *src_name = strcmp(src, "-") ? src : "stdin";
	if (fd < 0)
		return die(EXIT_USAGE, "put %s: cannot open %s: %s", key.str, src, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0) {
		rc = die(EXIT_USAGE, "put %s: cannot stat %s: %s", key.str, src_name,
			 strerror(errno));
		goto out_fd;
	}
	struct kvn_cli_conn *c;
	char *path;
	rc = client_open(o, &c, &path);
	if (rc)
		goto out_fd;
	if (S_ISREG(st.st_mode)) {
		/* A regular file streams: its size is known and nothing is held in memory. */
		off_t pos = lseek(fd, 0, SEEK_CUR);
		uint64_t len = (uint64_t)(st.st_size - (pos > 0 ? pos : 0));
		if ((e = kvn_cli_put_fd(c, &key, fd, len)) < 0)
			rc = client_fail(c, e, "put", key.str, path);
	} else {
		char *data = NULL;
		size_t len = 0;
		if (isatty(fd))
			fprintf(stderr,
				"kvnode: reading the value of %s from the terminal; end it "
				"with Ctrl-D\n",
				key.str);
		e = slurp(fd, &data, &len);
		if (e < 0) {
			rc = die(EXIT_USAGE, "put %s: reading %s: %s", key.str, src_name,
				 kvn_strerror(e));
		} else {
			if ((e = kvn_cli_put(c, &key, data, len)) < 0)
				rc = client_fail(c, e, "put", key.str, path);
			free(data);
		}
	}
	kvn_cli_close(c);
	free(path);
out_fd:
	if (fd != STDIN_FILENO)
		close(fd);
	return rc;
}

/* get's output: -o FILE (created now), else stdout. 0, or the exit status once said. */
static int
output_open(const struct opts *o, const struct kvn_key *key, int *fd)
{
	bool to_file = o->output && strcmp(o->output, "-");
	*fd = to_file ? open(o->output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)
		      : STDOUT_FILENO;
	if (*fd < 0)
		return die(EXIT_USAGE, "get %s: cannot create %s: %s", key->str, o->output,
			   strerror(errno));
	return 0;
}

/* Closes -o FILE; a get that failed (rc, or the close) leaves no partial value behind. */
static int
output_close(const struct opts *o, const struct kvn_key *key, int fd, int rc)
{
	if (close(fd) < 0 && !rc)
		rc = die(EXIT_USAGE, "get %s: writing %s: %s", key->str, o->output,
			 strerror(errno));
	if (rc) {
		struct stat st;
		if (stat(o->output, &st) == 0 && S_ISREG(st.st_mode))
			unlink(o->output);
	}
	return rc;
}

/* get over the control protocol: the value streamed through the socket. */
static int
get_ctl(struct opts *o)
{
	struct kvn_key key;
	int e, rc = parse_key(o->args[0], &key);
	if (rc)
		return rc;
	struct kvn_cli_conn *c;
	char *path;
	rc = client_open(o, &c, &path);
	if (rc)
		return rc;
	uint64_t len;
	if ((e = kvn_cli_get_begin(c, &key, &len)) < 0) {
		rc = client_fail(c, e, "get", key.str, path);
		goto out;
	}
	/* The output is opened only now, so that a miss leaves an existing FILE untouched. */
	bool to_file = o->output && strcmp(o->output, "-");
	int fd;
	if ((rc = output_open(o, &key, &fd)) != 0)
		goto out;
	if ((e = kvn_cli_get_finish(c, fd)) < 0)
		rc = client_fail(c, e, "get", key.str, path);
	if (to_file)
		rc = output_close(o, &key, fd, rc);
out:
	kvn_cli_close(c);
	free(path);
	return rc;
}

/* The client library (kvnode/client.h) on the node's socket; 1 when the node has no client
 * protocol (no cpu tier: the caller falls back to the control protocol), 0 when open, else the
 * exit status once the error is said. */
static int
data_open(const struct opts *o, const char *what, const struct kvn_key *key, struct kvn_client **c,
	  char **path)
{
	apply_log_level(o, KVN_LOG_WARN);
	int rc = resolve_socket(o, path);
	if (rc)
		return rc;
	char err[1024], name[64];
	/* The node shows this name in its log and stat (the first 24 bytes of it). */
	snprintf(name, sizeof(name), "kvnode %s %.40s", what, key->str);
	struct kvn_client_opts co = {KVN_CLIENT_OPTS_INIT,
				     .socket_path = strncmp(*path, "unix:", 5) ? *path : *path + 5,
				     .name = name,
				     .timeout_ms = 60000};
	rc = kvn_client_open(&co, c, err, sizeof(err));
	if (rc == 0)
		return 0;
	free(*path);
	*path = NULL;
	return rc == -ENOTSUP ? 1 : die(EXIT_CONN, "%s", err);
}

/* A failed client call as an exit status: a miss is 1, a refused key 2, the rest 3. */
static int
data_fail(struct kvn_client *c, int err, const char *what, const char *key, const char *path)
{
	if (err == -ENOENT && strcmp(what, "put"))
		return die(EXIT_MISS, "%s: key %s not found on node %s", what, key, path);
	return die(err == -EINVAL ? EXIT_USAGE : EXIT_CONN, "node %s: %s", path,
		   kvn_client_error(c));
}

/* The value of a regular file is mapped, and the client copies it once into the node's pool;
 * a pipe or terminal is read into memory first. */
static int
put_value(struct kvn_client *c, const struct kvn_key *key, int fd, const struct stat *st,
	  const char *src_name, const char *path)
{
	char *data = NULL;
	size_t len = 0, map_len = 0;
	void *map = NULL;
	int e;
	if (S_ISREG(st->st_mode)) {
		off_t pos = lseek(fd, 0, SEEK_CUR);
		pos = pos > 0 ? pos : 0;
		len = st->st_size > pos ? (size_t)(st->st_size - pos) : 0;
		map_len = (size_t)pos + len;
		if (len && (map = mmap(NULL, map_len, PROT_READ, MAP_PRIVATE, fd, 0)) == MAP_FAILED)
			return die(EXIT_USAGE, "put %s: cannot map %s: %s", key->str, src_name,
				   strerror(errno));
		if (map)
			madvise(map, map_len, MADV_SEQUENTIAL);
		data = map ? (char *)map + pos : NULL;
	} else {
		if (isatty(fd))
			fprintf(stderr,
				"kvnode: reading the value of %s from the terminal; end it "
				"with Ctrl-D\n",
				key->str);
		if ((e = slurp(fd, &data, &len)) < 0)
			return die(EXIT_USAGE, "put %s: reading %s: %s", key->str, src_name,
				   kvn_strerror(e));
	}
	int rc = 0;
	if ((e = kvn_client_put(c, key->str, data, len)) < 0)
		rc = data_fail(c, e, "put", key->str, path);
	if (map)
		munmap(map, map_len);
	else
		free(data);
	return rc;
}

static int
cmd_put(struct opts *o)
{
	struct kvn_key key;
	const char *src = o->nargs > 1 ? o->args[1] : "-";
	int rc = parse_key(o->args[0], &key);
	if (rc)
		return rc;
	int fd = strcmp(src, "-") ? open(src, O_RDONLY | O_CLOEXEC) : STDIN_FILENO;
	const char *src_name = strcmp(src, "-") ? src : "stdin";
	if (fd < 0)
		return die(EXIT_USAGE, "put %s: cannot open %s: %s", key.str, src, strerror(errno));
	struct stat st;
	struct kvn_client *c = NULL;
	char *path = NULL;
	if (fstat(fd, &st) < 0)
		rc = die(EXIT_USAGE, "put %s: cannot stat %s: %s", key.str, src_name,
			 strerror(errno));
	else if ((rc = data_open(o, "put", &key, &c, &path)) == 0)
		rc = put_value(c, &key, fd, &st, src_name, path);
	bool fallback = rc == 1 && !c; /* no client protocol there: the control protocol */
	kvn_client_close(c);
	free(path);
	if (fd != STDIN_FILENO)
		close(fd);
	return fallback ? put_ctl(o) : rc;
}

/* Writes all of a view to fd: the bytes go from the node's pool to the output, no copy here. */
static int
write_view(int fd, const struct kvn_view *v)
{
	const char *p = v->data;
	size_t left = v->len;
	while (left) {
		ssize_t w = write(fd, p, left);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		p += w;
		left -= (size_t)w;
	}
	return 0;
}

static int
cmd_get(struct opts *o)
{
	struct kvn_key key;
	int e, rc = parse_key(o->args[0], &key);
	if (rc)
		return rc;
	struct kvn_client *c = NULL;
	char *path = NULL;
	if ((rc = data_open(o, "get", &key, &c, &path)) != 0)
		return rc == 1 ? get_ctl(o) : rc;
	struct kvn_view v = {0};
	if ((e = kvn_client_get(c, key.str, &v)) < 0) {
		rc = data_fail(c, e, "get", key.str, path);
		goto out;
	}
	/* The output is opened only now, so that a miss leaves an existing FILE untouched. */
	bool to_file = o->output && strcmp(o->output, "-");
	int fd;
	if ((rc = output_open(o, &key, &fd)) != 0)
		goto out;
	if ((e = write_view(fd, &v)) < 0)
		rc = die(EXIT_USAGE, "get %s: writing %s: %s", key.str, to_file ? o->output : "stdout",
			 strerror(-e));
	if (to_file)
		rc = output_close(o, &key, fd, rc);
out:
	kvn_client_release(c, &v, 1);
	kvn_client_close(c);
	free(path);
	return rc;
}

static int
cmd_rm(struct opts *o)
{
	struct kvn_key key;
	int e, rc = parse_key(o->args[0], &key);
	if (rc)
		return rc;
	struct kvn_cli_conn *c;
	char *path;
	rc = client_open(o, &c, &path);
	if (rc)
		return rc;
	if ((e = kvn_cli_rm(c, &key)) < 0)
		rc = client_fail(c, e, "rm", key.str, path);
	kvn_cli_close(c);
	free(path);
	return rc;
}

static int
cmd_ls(struct opts *o)
{
	struct kvn_cli_conn *c;
	char *path, *text;
	size_t len;
	int e, rc = client_open(o, &c, &path);
	if (rc)
		return rc;
	if ((e = kvn_cli_ls(c, &text, &len)) < 0) {
		rc = client_fail(c, e, "ls", NULL, path);
	} else {
		if (fwrite(text, 1, len, stdout) != len || fflush(stdout))
			rc = die(EXIT_USAGE, "ls: writing stdout: %s", strerror(errno));
		free(text);
	}
	kvn_cli_close(c);
	free(path);
	return rc;
}

/* `kvnode stat --scheduler`: the cluster view, with the config's auth_token. */
static int
stat_scheduler(struct opts *o)
{
	apply_log_level(o, KVN_LOG_WARN);
	struct kvn_config *cfg;
	char err[1024], *json = NULL;
	if (kvn_config_load(o->config, &cfg, err, sizeof(err)) < 0)
		return die(EXIT_USAGE, "%s", err);
	/* This host's generated token, when the config names none: read, never created. */
	if (kvn_config_resolve_token(cfg, false, err, sizeof(err)) < 0) {
		kvn_config_free(cfg);
		return die(EXIT_USAGE, "stat: %s", err);
	}
	struct kvn_etcd_opts eo = kvn_config_etcd_opts(cfg);
	int e = kvn_membership_fetch_stats_etcd(o->scheduler, &eo, cfg->auth_token, 0, &json, err,
						sizeof(err));
	kvn_config_free(cfg);
	if (e < 0)
		return die(e == -EINVAL ? EXIT_USAGE : EXIT_CONN, "stat: %s", err);
	int rc = EXIT_OK;
	if (o->json)
		printf("%s\n", json);
	else if (kvn_cli_print_cluster(json, stdout) < 0)
		rc = die(EXIT_CONN, "stat: scheduler %s sent a cluster view that is not JSON",
			 o->scheduler);
	free(json);
	if (!rc && fflush(stdout))
		rc = die(EXIT_USAGE, "stat: writing stdout: %s", strerror(errno));
	return rc;
}

static int
cmd_stat(struct opts *o)
{
	if (o->scheduler)
		return stat_scheduler(o);
	struct kvn_cli_conn *c;
	char *path, *json;
	int e, rc = client_open(o, &c, &path);
	if (rc)
		return rc;
	if ((e = kvn_cli_stat(c, &json)) < 0) {
		rc = client_fail(c, e, "stat", NULL, path);
		goto out;
	}
	if (o->json)
		printf("%s\n", json);
	else if (kvn_cli_print_stats(json, stdout) < 0)
		rc = die(EXIT_CONN, "stat: node %s sent statistics that are not JSON", path);
	free(json);
	if (!rc && fflush(stdout))
		rc = die(EXIT_USAGE, "stat: writing stdout: %s", strerror(errno));
out:
	kvn_cli_close(c);
	free(path);
	return rc;
}

/* ------------------------------------------------------------------------------------------ serve
 * ------------------------------------------------------------------------------------------ */ /*
 * Plugins beside this process (docs/architecture.md §6). They get this program and the node's
 * socket (if any), so that `kvnode stat` in a plugin reaches it. A launcher that cannot start is a
 * warning: the process runs on. */
static struct kvn_plugins *
start_plugins(const struct kvn_config *cfg, enum kvn_plugin_role role, int worker_id,
	      int worker_count, const char *socket_path)
{
	char exe[PATH_MAX], cwd[PATH_MAX], *sock_env = NULL, *bin_env = NULL, err[1024];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	exe[n > 0 ? n : 0] = '\0';
	bool rel = socket_path && socket_path[0] != '/' && getcwd(cwd, sizeof(cwd));
	if (socket_path && asprintf(&sock_env, "KVNODE_SOCKET_PATH=%s%s%s", rel ? cwd : "",
				    rel ? "/" : "", socket_path) < 0)
		sock_env = NULL;
	if (asprintf(&bin_env, "KVNODE_BIN=%s", n > 0 ? exe : "kvnode") < 0)
		bin_env = NULL;
	const char *env[] = {bin_env, sock_env, NULL};
	struct kvn_plugins_opts po = {KVN_PLUGINS_OPTS_INIT, .role = role, .worker_id = worker_id,
				      .worker_count = worker_count, .extra_env = env};
	struct kvn_plugins *pl = NULL;
	if (kvn_plugins_start(cfg, &po, &pl, err, sizeof(err)) < 0)
		kvn_warn(role == KVN_PLUGIN_SCHEDULER ? "scheduler" : "serve",
			 "%s: running without plugins", err);
	free(sock_env);
	free(bin_env);
	return pl;
}

static void
stop_server(void *srv)
{
	kvn_server_stop(srv);
}

static void
stop_scheduler(void *s)
{
	kvn_scheduler_stop(s);
}

/* Loads the config (-c, else the usual lookup) and sets the log level from it and the flags;
 * 0, or the exit status once the error is said. */
static int
load_config(const struct opts *o, struct kvn_config **cfg)
{
	char err[1024];
	if (kvn_config_load(o->config, cfg, err, sizeof(err)) < 0)
		return die(EXIT_USAGE, "%s", err);
	apply_log_level(o, (*cfg)->log_level);
	return 0;
}

/* Before any thread exists, so that every thread (engine writers included) inherits the mask
 * and the signals reach the signal thread only. */
static void
block_signals(void)
{
	kvn_sigctl_block();
	signal(SIGPIPE, SIG_IGN); /* a vanished client or stderr reader is an error return */
}

/* What a SIGHUP re-reads: the running config, with the flags that win over the file. */
static struct kvn_reload
reload_for(const struct opts *o, struct kvn_config *cfg, struct kvn_plugins *plugins,
	   const char *role)
{
	return (struct kvn_reload){.config_arg = o->config,
				   .running = cfg,
				   .plugins = plugins,
				   .cli_log_level = o->log_level,
				   .verbose = o->verbose,
				   .role = role};
}

/* The metrics endpoint when metrics_listen is set (else *out stays NULL). */
static int
start_metrics(const struct kvn_config *cfg, kvn_metrics_collect_fn collect, void *ctx,
	      struct kvn_metrics **out, char *err, size_t errlen)
{
	struct kvn_metrics_opts mo = {.listen = cfg->metrics_listen,
				      .max_conns = cfg->metrics_max_connections,
				      .timeout_s = cfg->metrics_timeout_s};
	if (!cfg->metrics_listen)
		return 0;
	return kvn_metrics_start(&mo, collect, ctx, out, err, errlen);
}

/* The parts of a running node; serve_close takes them down in order. */
struct serve_node {
	char *socket_path;
	struct kvn_engine *eng;
	struct kvn_server *srv;
	struct kvn_lm_server *lm;
	struct kvn_plugins *plugins;
	struct kvn_cluster *cluster;
	struct kvn_metrics *metrics;
	struct kvn_sigctl *sig;
	struct kvn_node_metrics nm; /* what scrapes read, until the metrics stop */
	int32_t wid;		    /* worker id; -1 outside a cluster or before the join */
};

/* A client's CONTAINS for keys this node does not hold: one scheduler lookup. */
static int
cluster_held(void *ctx, const struct kvn_digest *keys, size_t n, bool *held)
{
	return kvn_cluster_held(ctx, keys, n, held, 5000);
}

/* Opens the storage tiers and the client socket, starts the lm:// server (lm_listen) and joins
 * the cluster (scheduler_url); 0, or the exit status once the error is said. */
static int
serve_open(struct serve_node *n, struct kvn_config *cfg)
{
	char err[1024];
	if (kvn_server_probe(n->socket_path, err, sizeof(err)) < 0)
		return die(EXIT_CONN, "%s", err);
	if (kvn_engine_open(cfg, &n->eng, err, sizeof(err)) < 0)
		return die(EXIT_USAGE, "cannot open the storage tiers%s%s: %s",
			   cfg->path ? " of " : "", cfg->path ? cfg->path : "", err);
	struct kvn_pool *pool = kvn_engine_pool(n->eng);
	if (cfg->pool_populate && pool && kvn_pool_populate_start(pool) < 0)
		kvn_warn("serve", "cannot start making the pool resident (out of threads): its "
				  "pages fault in on first use");
	struct kvn_server_opts so = {.socket_path = n->socket_path,
				     .max_conns = cfg->client_max_connections,
				     .value_max = cfg->max_chunk_size,
				     .client_max_held = cfg->client_max_held_bytes};
	if (kvn_server_create(n->eng, &so, &n->srv, err, sizeof(err)) < 0)
		return die(EXIT_CONN, "%s", err);
	if (cfg->lm_listen) {
		struct kvn_lm_server_opts lo = {.listen = cfg->lm_listen,
						.max_conns = cfg->lm_max_connections,
						.idle_timeout_ms = (int)cfg->lm_idle_timeout_ms,
						.io_timeout_ms = (int)cfg->lm_request_timeout_ms,
						.value_max = cfg->max_chunk_size};
		if (kvn_lm_server_start(n->eng, &lo, &n->lm, err, sizeof(err)) < 0)
			return die(EXIT_CONN, "%s", err);
	}
	if (kvn_cluster_start(cfg, n->eng, &n->cluster, err, sizeof(err)) < 0)
		return die(EXIT_CONN, "cannot join the cluster: %s", err);
	if (n->cluster)
		kvn_server_set_held(n->srv, cluster_held, n->cluster);
	return 0;
}

/* Starts the plugins (told the node's worker id), then the signal thread, then the metrics
 * endpoint; 0, or the exit status once the error is said. */
static int
serve_start(struct serve_node *n, const struct opts *o, struct kvn_config *cfg)
{
	char err[1024];
	/* The membership service's worker id once joined (the join is synchronous when the
	 * scheduler is up), else worker 0 of 1. */
	struct kvn_membership *mship = n->cluster ? kvn_cluster_membership(n->cluster) : NULL;
	n->wid = mship ? kvn_membership_worker_id(mship) : -1;
	n->plugins =
	    start_plugins(cfg, KVN_PLUGIN_WORKER, n->wid < 0 ? 0 : n->wid,
			  n->wid < 0 ? 1 : (int)kvn_membership_worker_count(mship), n->socket_path);
	kvn_server_set_plugins(n->srv, n->plugins);
	kvn_server_set_lm(n->srv, n->lm);
	/* The signal thread starts once the plugins run, so that a SIGHUP (pending until then)
	 * finds them; a stop signal meanwhile also waits, blocked, for the thread. */
	struct kvn_reload reload = reload_for(o, cfg, n->plugins, NULL);
	if (kvn_sigctl_start(&reload, stop_server, n->srv, &n->sig) < 0)
		return die(EXIT_CONN, "cannot start the signal thread");
	n->nm = (struct kvn_node_metrics){.eng = n->eng,
					  .srv = n->srv,
					  .cluster = n->cluster,
					  .lm = n->lm,
					  .plugins = n->plugins};
	if (start_metrics(cfg, kvn_metrics_collect_node, &n->nm, &n->metrics, err, sizeof(err)) < 0)
		return die(EXIT_CONN, "%s", err);
	return 0;
}

/* The addresses the node serves on, on stdout (tests and scripts read them). */
static void
serve_announce(const struct serve_node *n, const struct kvn_config *cfg)
{
	printf("kvnode: serving on %s\n", kvn_server_address(n->srv));
	if (n->lm)
		printf("kvnode: lm:// server on %s\n", kvn_lm_server_address(n->lm));
	if (n->cluster)
		printf("kvnode: %s data on %s, worker %d\n", kvn_cluster_transport(n->cluster),
		       kvn_cluster_data_addr(n->cluster), (int)n->wid);
	if (n->metrics)
		printf("kvnode: metrics on http://%s/metrics\n", kvn_metrics_address(n->metrics));
	fflush(stdout);
	kvn_info("serve", "node %s serving on %s (config: %s)",
		 cfg->node_name ? cfg->node_name : "?", kvn_server_address(n->srv),
		 cfg->path ? cfg->path : "defaults");
}

static void
serve_close(struct serve_node *n)
{
	kvn_sigctl_shutdown(n->sig);  /* first: no reload touches what is freed below */
	kvn_metrics_stop(n->metrics); /* scrapes read everything below */
	kvn_plugins_stop(n->plugins); /* SIGTERM, then SIGKILL after plugin_stop_timeout_ms */
	kvn_lm_server_stop(n->lm);    /* before the engine it serves from */
	kvn_cluster_stop(n->cluster); /* leaves the cluster before the pool goes */
	kvn_engine_close(n->eng);     /* drains queued disk writes: the disk tier is consistent */
	kvn_sigctl_destroy(n->sig); /* kept until now: a second signal may cut a slow flush short */
	kvn_server_destroy(n->srv); /* the socket file goes last: its absence means "finished" */
	free(n->socket_path);
}

static int
cmd_serve(struct opts *o)
{
	struct kvn_config *cfg;
	char err[1024];
	int rc = load_config(o, &cfg);
	if (rc)
		return rc;
	/* A node in a cluster authenticates every join and data connection (core/auth.h). */
	if (cfg->scheduler_url &&
	    (kvn_config_check_listener(cfg, "listen", cfg->listen, err, sizeof(err)) < 0 ||
	     kvn_config_resolve_token(cfg, true, err, sizeof(err)) < 0)) {
		kvn_config_free(cfg);
		return die(EXIT_USAGE, "%s", err);
	}
	block_signals();
	struct serve_node n = {.wid = -1};
	n.socket_path = o->node		   ? strdup(o->node)
			: cfg->socket_path ? strdup(cfg->socket_path)
					   : kvn_config_default_socket();
	if (!n.socket_path) {
		rc = die(EXIT_CONN, "out of memory");
		goto out;
	}
	if ((rc = serve_open(&n, cfg)) || (rc = serve_start(&n, o, cfg)))
		goto out;
	serve_announce(&n, cfg);
	kvn_server_run(n.srv);
	kvn_info("serve", "all clients done; closing the storage tiers");
out:
	serve_close(&n);
	kvn_config_free(cfg);
	return rc;
}

/* ------------------------------------------------------------------------------------------
 * scheduler
 * ------------------------------------------------------------------------------------------ */

#define SCHEDULER_DEFAULT_LISTEN "127.0.0.1:7470"

/* --listen, else the address nodes are told (scheduler_url), else the default; without a
 * trailing '/'. */
static void
scheduler_listen(const struct opts *o, const struct kvn_config *cfg, char *addr, size_t len)
{
	const char *listen = o->listen, *url = cfg->scheduler_url;
	/* etcd://: the URL names etcd, not this scheduler; it listens where it tells nodes to go */
	if (!listen && kvn_scheduler_url_is_etcd(url))
		listen = cfg->scheduler_advertise;
	else if (!listen && url)
		listen = strstr(url, "://") ? strstr(url, "://") + 3 : url;
	snprintf(addr, len, "%s", listen ? listen : SCHEDULER_DEFAULT_LISTEN);
	size_t n = strlen(addr);
	if (n && addr[n - 1] == '/')
		addr[n - 1] = '\0';
}

static struct kvn_scheduler_opts
scheduler_opts(const struct kvn_config *cfg, const char *addr, const struct kvn_etcd_opts *eo)
{
	return (struct kvn_scheduler_opts){
	    .cluster_url =
		kvn_scheduler_url_is_etcd(cfg->scheduler_url) ? cfg->scheduler_url : NULL,
	    .etcd = eo,
	    .lease_ttl_s = cfg->scheduler_lease_ttl_s,
	    .advertise = cfg->scheduler_advertise,
	    .listen = addr,
	    .heartbeat_ms = cfg->heartbeat_ms,
	    .auth_token = cfg->auth_token,
	    .max_conns = cfg->scheduler_max_connections,
	    .unjoined_ms = cfg->scheduler_unjoined_timeout_ms,
	    .reply_queue_max = cfg->scheduler_reply_queue_max,
	    /* 0 in the config: ids are free as soon as their name is gone */
	    .worker_id_grace_ms = cfg->worker_id_grace_ms ? (int64_t)cfg->worker_id_grace_ms : -1};
}

static int
cmd_scheduler(struct opts *o)
{
	struct kvn_config *cfg;
	char err[1024], addr[512];
	int rc = load_config(o, &cfg);
	if (rc)
		return rc;
	scheduler_listen(o, cfg, addr, sizeof(addr));
	if (kvn_config_check_listener(cfg, "--listen", addr, err, sizeof(err)) < 0 ||
	    kvn_config_resolve_token(cfg, true, err, sizeof(err)) < 0) {
		kvn_config_free(cfg);
		return die(EXIT_USAGE, "scheduler: %s", err);
	}
	block_signals();
	struct kvn_scheduler *sched;
	struct kvn_etcd_opts eo = kvn_config_etcd_opts(cfg);
	struct kvn_scheduler_opts so = scheduler_opts(cfg, addr, &eo);
	rc = kvn_scheduler_create(&so, &sched, err, sizeof(err));
	if (rc < 0) {
		kvn_config_free(cfg);
		return die(rc == -EINVAL ? EXIT_USAGE : EXIT_CONN, "scheduler: %s", err);
	}
	/* Workers join later: the scheduler's plugins start knowing of none (count 0). They
	 * start before the signal thread so that a SIGHUP (pending until then) finds them. */
	struct kvn_plugins *plugins = start_plugins(cfg, KVN_PLUGIN_SCHEDULER, -1, 0, NULL);
	kvn_scheduler_set_plugins(sched, plugins);
	struct kvn_reload reload = reload_for(o, cfg, plugins, "scheduler");
	struct kvn_sigctl *sig;
	if (kvn_sigctl_start(&reload, stop_scheduler, sched, &sig) < 0) {
		kvn_plugins_stop(plugins);
		kvn_scheduler_destroy(sched);
		kvn_config_free(cfg);
		return die(EXIT_CONN, "scheduler: cannot start the signal thread");
	}
	printf("kvnode: scheduler on %s\n", kvn_scheduler_address(sched));
	fflush(stdout);
	kvn_info("scheduler", "membership service on %s (heartbeat %u ms, auth %s)",
		 kvn_scheduler_address(sched), so.heartbeat_ms ? so.heartbeat_ms : 500,
		 so.auth_token && *so.auth_token ? "token" : "none");
	struct kvn_sched_metrics sm = {.sched = sched, .plugins = plugins};
	struct kvn_metrics *metrics = NULL;
	if (start_metrics(cfg, kvn_metrics_collect_sched, &sm, &metrics, err, sizeof(err)) < 0) {
		rc = die(EXIT_CONN, "scheduler: %s", err);
		kvn_scheduler_stop(sched); /* the loop returns at once: it sees the stop first */
	} else if (metrics) {
		printf("kvnode: metrics on http://%s/metrics\n", kvn_metrics_address(metrics));
		fflush(stdout);
	}
	int run_rc = kvn_scheduler_run(sched);
	kvn_sigctl_shutdown(sig); /* first: no reload touches what is freed below */
	kvn_metrics_stop(metrics);
	kvn_plugins_stop(plugins);
	kvn_sigctl_destroy(sig);
	kvn_scheduler_destroy(sched);
	kvn_config_free(cfg);
	if (rc)
		return rc;
	if (run_rc < 0)
		return die(EXIT_CONN, "scheduler: event loop failed: %s", kvn_strerror(run_rc));
	return EXIT_OK;
}

/* ------------------------------------------------------------------------------------------
 * doctor (node/cli/doctor.c)
 * ------------------------------------------------------------------------------------------ */

static int
cmd_doctor(struct opts *o)
{
	apply_log_level(o, KVN_LOG_ERROR);
	struct kvn_config *cfg;
	char err[1024];
	if (kvn_config_load(o->config, &cfg, err, sizeof(err)) < 0)
		return die(KVN_DR_FAIL, "doctor: %s", err);
	/* --peers reads with this host's token, as the node does: read, never created. */
	if (o->peers && kvn_config_resolve_token(cfg, false, err, sizeof(err)) < 0) {
		kvn_config_free(cfg);
		return die(KVN_DR_FAIL, "doctor: %s", err);
	}
	struct kvn_doctor_facts *f = malloc(sizeof(*f));
	struct kvn_doctor_report *r = malloc(sizeof(*r));
	int rc = KVN_DR_FAIL;
	if (!f || !r) {
		die(KVN_DR_FAIL, "doctor: out of memory");
	} else {
		kvn_doctor_facts(cfg, NULL, f);
		kvn_doctor_decide(cfg, f, r);
		if (o->peers)
			kvn_doctor_peers(cfg, f, o->scheduler, r);
		kvn_doctor_print(r, o->json, stdout);
		rc = r->status;
		if (fflush(stdout))
			rc = die(KVN_DR_FAIL, "doctor: writing stdout: %s", strerror(errno));
	}
	free(f);
	free(r);
	kvn_config_free(cfg);
	return rc;
}

/* ------------------------------------------------------------------------------------------
 * demo (node/cli/demo.c)
 * ------------------------------------------------------------------------------------------ */

static int
cmd_demo(struct opts *o)
{
	apply_log_level(o, KVN_LOG_WARN);
	return kvn_demo_run(o->config);
}

/* ------------------------------------------------------------------------------------------
 * Commands, options, help
 * ------------------------------------------------------------------------------------------ */

static const struct command commands[] = {
    {"serve", cmd_serve, 0, 0, "",
     "NAME\n  kvnode serve - run a node\n\n"
     "SYNOPSIS\n  kvnode serve [-c FILE] [--socket PATH]\n\n"
     "DESCRIPTION\n"
     "  Loads the config (no file: a single node on defaults), opens the storage tiers and\n"
     "  serves clients on a unix socket, printing `kvnode: serving on unix:PATH` once ready.\n"
     "  A socket file nothing answers on is replaced; a live node there is left alone.\n"
     "  The plugins of plugin_locations for workers run beside it (examples/plugins/).\n"
     "  lm_listen HOST:PORT: also answer LMCache's lm:// cache-server protocol there, so an\n"
     "  unmodified LMCache with remote_url: lm://HOST:PORT uses this node (its tiers and\n"
     "  eviction) as its remote store; `kvnode stat` then shows the lm server's counters.\n"
     "  SIGTERM or SIGINT: stop accepting, finish requests in flight, stop the plugins,\n"
     "  write queued chunks to the disk tier, remove the socket, exit 0. A second signal\n"
     "  exits at once.\n"
     "  SIGHUP: re-read the config file and apply log_level, plugin_restart and\n"
     "  plugin_stop_timeout_ms; any other key that changed is logged as \"KEY changed:\n"
     "  needs a restart\" and keeps its old value; a file that no longer loads is logged\n"
     "  with file:line and the running config kept (systemctl reload kvnode).\n"
     "  metrics_listen HOST:PORT: Prometheus metrics on http://HOST:PORT/metrics\n"
     "  (docs/metrics.md).\n\n"
     "OPTIONS\n"
     "      --socket PATH    listen here instead of the config's socket_path\n" HELP_COMMON
     "\nEXIT STATUS\n  0 clean shutdown; 2 bad option or config, or a tier could not be opened;\n"
     "  3 the socket could not be set up (a live node already serves it, path too long,\n"
     "  no permission)\n\n"
     "EXAMPLES\n  kvnode serve -c kvnode.yaml --socket /run/kvnode/kvnode.sock\n"},
    {"put", cmd_put, 1, 2, "",
     "NAME\n  kvnode put - store a value\n\n"
     "SYNOPSIS\n  kvnode put KEY [FILE|-]\n\n"
     "DESCRIPTION\n"
     "  Stores the bytes of FILE (stdin when FILE is - or absent) under KEY on the node,\n"
     "  replacing an older value, through the client library (kvnode/client.h): a regular\n"
     "  FILE is mapped and copied once, into the slot the node reserved in its pool; stdin\n"
     "  that is a pipe or terminal is read into memory first. A node without the cpu tier\n"
     "  (no client protocol) gets the value streamed over its control protocol.\n\n"
     "OPTIONS\n" HELP_COMMON "\n" HELP_EXIT "\n"
     "EXAMPLES\n  kvnode put 'meta-llama/Llama-3.1-8B@1@0@a1b2@bfloat16' chunk.bin\n"
     "  head -c 1M /dev/urandom | kvnode put test-key\n"},
    {"get", cmd_get, 1, 1, "output",
     "NAME\n  kvnode get - read a value\n\n"
     "SYNOPSIS\n  kvnode get KEY [-o FILE]\n\n"
     "DESCRIPTION\n"
     "  Writes the value of KEY to stdout, or to FILE, with write(2) straight from a\n"
     "  read-only view of the node's pool (the client library, kvnode/client.h; no copy\n"
     "  in between). On a miss FILE is not touched; a transfer that fails half way\n"
     "  removes the partial FILE.\n\n"
     "OPTIONS\n  -o, --output FILE    write here instead of stdout\n" HELP_COMMON "\n" HELP_EXIT
     "\nEXAMPLES\n  kvnode get 'meta-llama/Llama-3.1-8B@1@0@a1b2@bfloat16' -o chunk.bin\n"},
    {"rm", cmd_rm, 1, 1, "",
     "NAME\n  kvnode rm - remove a key\n\n"
     "SYNOPSIS\n  kvnode rm KEY\n\n"
     "DESCRIPTION\n  Removes KEY from every tier of the node (exit 1 when no tier held it).\n\n"
     "OPTIONS\n" HELP_COMMON "\n" HELP_EXIT "\nEXAMPLES\n  kvnode rm test-key\n"},
    {"ls", cmd_ls, 0, 0, "",
     "NAME\n  kvnode ls - list keys\n\n"
     "SYNOPSIS\n  kvnode ls\n\n"
     "DESCRIPTION\n  One line per key held in any tier: KEY, a tab, the value's length in\n"
     "  bytes. Order is unspecified.\n\n"
     "OPTIONS\n" HELP_COMMON "\n" HELP_EXIT "\nEXAMPLES\n  kvnode ls | sort | cut -f1\n"},
    {"stat", cmd_stat, 0, 0, "json scheduler",
     "NAME\n  kvnode stat - node statistics\n\n"
     "SYNOPSIS\n  kvnode stat [--json]\n  kvnode stat --scheduler HOST:PORT [--json]\n\n"
     "DESCRIPTION\n  Per tier: chunks held, bytes, capacity, hits, misses, puts, evictions,\n"
     "  errors; node-wide hits and misses; client connections; with lm_listen, the lm://\n"
     "  server's connections, requests by command, payload bytes in and out and errors.\n"
     "  With --scheduler: the cluster view of that membership service instead: every\n"
     "  member ever joined with its worker id, state (alive, expired), data address,\n"
     "  transport, milliseconds since its last heartbeat and chunks in the directory.\n"
     "  The config's auth_token is sent when the scheduler wants one.\n\n"
     "OPTIONS\n      --json           the node's statistics object, one line of JSON\n"
     "      --scheduler HOST:PORT  ask the scheduler there (scheduler_url form also\n"
     "                       accepted) for the cluster view; etcd://HOST:PORT/CLUSTER\n"
     "                       asks the cluster's leader, found in etcd (etcd_* keys)\n" HELP_COMMON
     "\n" HELP_EXIT "\nEXAMPLES\n  kvnode stat --json | jq '.backends[0].hits'\n"
     "  kvnode stat --scheduler 10.0.0.1:7470\n"
     "  kvnode stat --scheduler etcd://10.0.0.1:2379/prod\n"},
    {"scheduler", cmd_scheduler, 0, 0, "listen",
     "NAME\n  kvnode scheduler - run the membership service and chunk directory\n\n"
     "SYNOPSIS\n  kvnode scheduler [-c FILE] [--listen HOST:PORT]\n\n"
     "DESCRIPTION\n"
     "  One small daemon per cluster. Nodes join it with their\n"
     "  node_name, data address, transport and region descriptors; each name gets a\n"
     "  stable worker id (a node that restarts gets its id back) and every member is told\n"
     "  the worker count, a cluster epoch and every join and expiry. Members heartbeat\n"
     "  every heartbeat_ms; one silent for 3 beats is expired and its chunks dropped from\n"
     "  the directory. Nodes publish which chunks they hold and look up where others are.\n"
     "  After a scheduler restart the nodes re-join and re-publish, rebuilding the\n"
     "  directory. Prints `kvnode: scheduler on HOST:PORT` once listening. With\n"
     "  auth_token set, a join or stats request without the same token is refused.\n"
     "  The plugins of plugin_locations for the scheduler run beside it.\n"
     "  With scheduler_url: etcd://HOST:PORT[,HOST:PORT...]/CLUSTER several schedulers\n"
     "  share CLUSTER: the one holding etcd's leader key (under a lease of\n"
     "  scheduler_lease_ttl_s) leads and is the one nodes join; the others stand by and\n"
     "  take over within about the TTL when it dies. A leader that cannot keep its lease\n"
     "  steps down before it lapses. Worker ids are kept in etcd. Nodes are told\n"
     "  scheduler_advertise (default: the --listen address).\n"
     "  SIGTERM or SIGINT: stop the plugins, close every connection and exit 0 (with\n"
     "  etcd, the lease is revoked first so that a standby leads at once).\n"
     "  SIGHUP: re-read the config file and apply log_level, plugin_restart and\n"
     "  plugin_stop_timeout_ms; other changed keys are logged as needing a restart.\n\n"
     "OPTIONS\n"
     "      --listen HOST:PORT  where nodes connect (default: the HOST:PORT of the\n"
     "                       config's scheduler_url, with etcd:// scheduler_advertise,\n"
     "                       else " SCHEDULER_DEFAULT_LISTEN ";\n"
     "                       port 0 picks a free one)\n" HELP_COMMON
     "\nCONFIG KEYS\n  heartbeat_ms (default 500), auth_token, scheduler_url, log_level;\n"
     "  with etcd: scheduler_lease_ttl_s (5), scheduler_advertise, etcd_timeout_ms,\n"
     "  etcd_user, etcd_password, etcd_token, etcd_tls, etcd_ca_file, etcd_cert_file,\n"
     "  etcd_key_file\n"
     "\nEXIT STATUS\n  0 clean shutdown; 2 bad option or config; 3 cannot listen\n\n"
     "EXAMPLES\n  kvnode scheduler --listen 0.0.0.0:7470\n"
     "  kvnode stat --scheduler 127.0.0.1:7470\n"
     "  KVNODE_SCHEDULER_URL=etcd://10.0.0.1:2379,10.0.0.2:2379/prod \\\n"
     "      kvnode scheduler --listen 10.0.0.7:7470\n"
     "  kvnode stat --scheduler etcd://10.0.0.1:2379/prod\n"},
    {"doctor", cmd_doctor, 0, 0, "json peers scheduler",
     "NAME\n  kvnode doctor - check what RDMA bring-up needs, one line per check\n\n"
     "SYNOPSIS\n  kvnode doctor [-c FILE] [--peers [--scheduler HOST:PORT]] [--json]\n\n"
     "DESCRIPTION\n"
     "  Checks, for the config given (none: the embedded defaults), what breaks RDMA\n"
     "  bring-up, and prints one line per check - ok, warn or fail, the check, what it\n"
     "  found - with the fix under each line that needs one:\n"
     "    rdma-devices  RDMA devices (sysfs), rdma_device among them\n"
     "    port D/N      each port's state, physical state, link layer and rate\n"
     "    gid D/N       RoCE: the GID table entry the node will use and why (gid_index,\n"
     "                  or the RoCE v2 entry of the address listen binds)\n"
     "    mtu D/N       active against maximum MTU (RoCE: from the netdev's MTU)\n"
     "    transport     what transport: auto picks, and why\n"
     "    memlock       ulimit -l against the pool (max_local_cpu_size) it must pin\n"
     "    hugepages     free 2 MiB pages against the pool (hugepages: true)\n"
     "    fork          whether a forked plugin can disturb registered memory\n"
     "    gpu, gpudirect  with gpu: true|auto: the driver, nvidia-peermem, dma-buf\n"
     "    peer NAME     with --peers: every live member the scheduler lists, connected to\n"
     "                  over the configured transport and read (64 bytes of its pool),\n"
     "                  with the connect and READ times\n"
     "  Nothing is changed and no node is started. KVNODE_SYSFS=DIR reads DIR in place\n"
     "  of /sys (a copy of another host's tree, or a test fixture).\n\n"
     "OPTIONS\n      --peers          also READ from every member (needs a scheduler)\n"
     "      --scheduler HOST:PORT  the scheduler to ask (default: scheduler_url;\n"
     "                       etcd://HOST:PORT/CLUSTER: its leader)\n"
     "      --json           one JSON object: status and every check (check,\n"
     "                       status, what, fix)\n" HELP_COMMON
     "\nEXIT STATUS\n  0 every check ok; 1 some warn, none fail; 2 some fail (or the config\n"
     "  does not load)\n\n"
     "EXAMPLES\n  kvnode doctor -c /etc/kvnode/kvnode.yaml\n"
     "  kvnode doctor --json | jq '.checks[] | select(.status != \"ok\")'\n"},
    {"demo", cmd_demo, 0, 0, "",
     "NAME\n  kvnode demo - a scheduler and three nodes sharing KV-cache chunks\n\n"
     "SYNOPSIS\n  kvnode demo [-c FILE]\n\n"
     "DESCRIPTION\n"
     "  Starts `kvnode scheduler` and three `kvnode serve` nodes as separate processes\n"
     "  (this program, with configs, sockets and logs in a temp directory), puts 4 chunks\n"
     "  of 32 MiB under LMCache keys on node-1, gets them on node-3 - found through the\n"
     "  scheduler and fetched from node-1's pool by one-sided READ, every byte verified -\n"
     "  then again from node-3's cpu tier, all through the client library\n"
     "  (kvnode/client.h), and prints hits per tier, bytes moved, the client-visible put\n"
     "  and peer-get bandwidth beside the transport's own READ bandwidth for the same\n"
     "  chunk size (two instances in the demo's process, one READ right after each peer\n"
     "  get, so both are measured under the same load) and their ratio (goal >= 0.80;\n"
     "  informational). node-1 runs a demo plugin whose prefixed output is shown. Then\n"
     "  it stops the nodes and the scheduler and removes the temp directory; if the demo\n"
     "  is killed, its children die with it.\n\n"
     "  Without FILE the nodes listen on 127.0.0.1 with a 256 MiB cpu tier and transport\n"
     "  auto (verbs when an RDMA device is up, else tcp). With FILE every node uses it (the\n"
     "  demo sets node_name, socket_path and scheduler_url per node): put `listen:\n"
     "  10.0.0.5:0` to carry the READs over that host's NIC, `transport: verbs` and\n"
     "  `rdma_device` for RDMA, and `scheduler_url: HOST:PORT` to join a scheduler that\n"
     "  already runs (for example on another host) instead of starting one. The demo's\n"
     "  processes serve no metrics (they would share one metrics_listen port).\n\n"
     "OPTIONS\n" HELP_COMMON
     "\nEXIT STATUS\n  0 all chunks verified; 1 a chunk was missing or corrupt; 2 bad option;\n"
     "  3 a process could not start\n\nEXAMPLES\n  kvnode demo\n"
     "  kvnode demo -c examples/configs/demo-rdma.yaml\n"},
};

static const struct command *
find_command(const char *name)
{
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		if (!strcmp(commands[i].name, name))
			return &commands[i];
	return NULL;
}

static void
print_version(void)
{
	printf("kvnode %s\n", kvn_version());
	printf("module ABI %u.%u (loads modules of ABI %u.0 to %u.%u)\n", KVN_ABI_MAJOR,
	       KVN_ABI_MINOR, KVN_ABI_MAJOR, KVN_ABI_MAJOR, KVN_ABI_MINOR);
	printf("features: verbs=%s cuda=%s\n", KVN_HAVE_VERBS ? "yes" : "no",
	       KVN_HAVE_CUDA ? "yes" : "no");
}

enum { OPT_NODE = 256, OPT_LOG_LEVEL, OPT_VERSION, OPT_JSON, OPT_LISTEN, OPT_SCHEDULER, OPT_PEERS };

static const struct option long_opts[] = {
    {"config", required_argument, NULL, 'c'},
    {"node", required_argument, NULL, OPT_NODE},
    {"socket", required_argument, NULL, OPT_NODE},
    {"verbose", no_argument, NULL, 'v'},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, OPT_VERSION},
    {"output", required_argument, NULL, 'o'},
    {"json", no_argument, NULL, OPT_JSON},
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"scheduler", required_argument, NULL, OPT_SCHEDULER},
    {"peers", no_argument, NULL, OPT_PEERS},
    {0},
};

/* Parses argv from argv[0] (the program or the command) on. Returns -1 to go on, else the
 * exit code. cmd is NULL for the options before the command. */
static int
parse_opts(int argc, char **argv, const struct command *cmd, struct opts *o)
{
	const char *where = cmd ? cmd->name : NULL;
	opterr = 0;
	optind = 0; /* glibc: a full rescan of a new argv */
	for (;;) {
		int ch = getopt_long(argc, argv, cmd ? ":c:vho:" : "+:c:vh", long_opts, NULL);
		if (ch == -1)
			break;
		char arg[128];
		if (optopt > 0 && optopt < 128)
			snprintf(arg, sizeof(arg), "-%c", optopt);
		else
			snprintf(arg, sizeof(arg), "%s", argv[optind > 0 ? optind - 1 : 0]);
		switch (ch) {
		case 'c':
			o->config = optarg;
			break;
		case OPT_LISTEN:
		case OPT_SCHEDULER: {
			const char *name = ch == OPT_LISTEN ? "listen" : "scheduler";
			if (!cmd || !strstr(cmd->opt_allowed, name))
				return die(EXIT_USAGE,
					   "option --%s does not apply to `kvnode %s` "
					   "(see kvnode %s --help)",
					   name, where ? where : "", where ? where : "");
			*(ch == OPT_LISTEN ? &o->listen : &o->scheduler) = optarg;
			break;
		}
		case OPT_NODE:
			o->node = optarg;
			break;
		case 'v':
			o->verbose++;
			break;
		case OPT_LOG_LEVEL:
			o->log_level = kvn_log_level_parse(optarg);
			if (o->log_level < 0)
				return die(EXIT_USAGE,
					   "--log-level %s: use error, warn, info or debug",
					   optarg);
			break;
		case 'h':
			fputs(cmd ? cmd->help : help_main, stdout);
			return EXIT_OK;
		case OPT_VERSION:
			print_version();
			return EXIT_OK;
		case OPT_PEERS:
			if (!cmd || !strstr(cmd->opt_allowed, "peers"))
				return die(EXIT_USAGE,
					   "option --peers does not apply to `kvnode %s` "
					   "(see kvnode %s --help)",
					   where ? where : "", where ? where : "");
			o->peers = true;
			break;
		case 'o':
		case OPT_JSON: {
			const char *name = ch == 'o' ? "output" : "json";
			if (!cmd || !strstr(cmd->opt_allowed, name))
				return die(EXIT_USAGE,
					   "option --%s does not apply to `kvnode %s` "
					   "(see kvnode %s --help)",
					   name, where ? where : "", where ? where : "");
			if (ch == 'o')
				o->output = optarg;
			else
				o->json = true;
			break;
		}
		case ':':
			return die(EXIT_USAGE, "option %s needs a value (see kvnode %s%s--help)",
				   arg, where ? where : "", where ? " " : "");
		default:
			return die(EXIT_USAGE, "unknown option %s (see kvnode %s%s--help)", arg,
				   where ? where : "", where ? " " : "");
		}
	}
	return -1;
}

int
main(int argc, char **argv)
{
	struct opts o = {.log_level = -1};
	if (argc < 2)
		return die(EXIT_USAGE, "no command given: try `kvnode --help`");
	int rc = parse_opts(argc, argv, NULL, &o);
	if (rc >= 0)
		return rc;
	if (optind >= argc)
		return die(EXIT_USAGE, "no command given: try `kvnode --help`");
	int cmd_at = optind;
	const char *name = argv[cmd_at];
	if (!strcmp(name, "help")) {
		if (cmd_at + 1 >= argc) {
			fputs(help_main, stdout);
			return EXIT_OK;
		}
		const struct command *hc = find_command(argv[cmd_at + 1]);
		if (!hc)
			return die(EXIT_USAGE,
				   "help: no command %s (commands: serve put get rm ls "
				   "stat scheduler demo doctor)",
				   argv[cmd_at + 1]);
		fputs(hc->help, stdout);
		return EXIT_OK;
	}
	o.cmd = find_command(name);
	if (!o.cmd)
		return die(EXIT_USAGE, "unknown command %s: try `kvnode --help`", name);
	int sub_argc = argc - cmd_at;
	char **sub_argv = argv + cmd_at;
	rc = parse_opts(sub_argc, sub_argv, o.cmd, &o);
	if (rc >= 0)
		return rc;
	o.args = sub_argv + optind;
	o.nargs = sub_argc - optind;
	if (o.nargs < o.cmd->min_args)
		return die(EXIT_USAGE, "%s: missing %s (see kvnode %s --help)", name,
			   o.cmd->min_args == 1 ? "KEY" : "arguments", name);
	if (o.nargs > o.cmd->max_args)
		return die(EXIT_USAGE, "%s: unexpected argument %s (see kvnode %s --help)", name,
			   o.args[o.cmd->max_args], name);
	return o.cmd->run(&o);
}
