/* Test helper: start, kill, restart and remove a private redis-server on 127.0.0.1. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "redis_server.h"
#include "core/netaddr.h"

#define START_TIMEOUT_MS 30000

static bool
on_path(const char *prog)
{
	const char *path = getenv("PATH");
	char buf[PATH_MAX];
	if (!path)
		path = "/usr/bin:/bin";
	while (*path) {
		size_t n = strcspn(path, ":");
		snprintf(buf, sizeof(buf), "%.*s/%s", (int)n, path, prog);
		if (access(buf, X_OK) == 0)
			return true;
		path += n + (path[n] == ':');
	}
	return false;
}

bool
redis_server_available(void)
{
	return on_path("redis-server") && on_path("redis-cli");
}

static bool
answers(void *arg)
{
	struct redis_server *rs = arg;
	struct timeval tv = {1, 0};
	redisContext *c = redisConnectWithTimeout("127.0.0.1", rs->port, tv);
	bool ok = false;
	if (c && !c->err) {
		redisReply *r = redisCommand(c, "PING");
		ok = r && r->type == REDIS_REPLY_STATUS && !strcmp(r->str, "PONG");
		if (r)
			freeReplyObject(r);
	}
	if (c)
		redisFree(c);
	return ok || !proc_alive(&rs->proc);
}

static int
spawn(struct redis_server *rs)
{
	char log[PATH_MAX];
	snprintf(log, sizeof(log), "%s/redis.log", rs->dir);
	snprintf(rs->port_text, sizeof(rs->port_text), "%d", rs->port);
	const char *argv[] = {"/usr/bin/env",
			      "redis-server",
			      "--port",
			      rs->port_text,
			      "--bind",
			      "127.0.0.1",
			      "--dir",
			      rs->dir,
			      "--save",
			      "",
			      "--appendonly",
			      "no",
			      "--protected-mode",
			      "no",
			      "--daemonize",
			      "no",
			      "--logfile",
			      log,
			      NULL};
	memset(&rs->proc, 0, sizeof(rs->proc));
	int rc = proc_spawn(&rs->proc, argv, NULL);
	if (rc < 0)
		return rc;
	proc_wait_for(answers, rs, START_TIMEOUT_MS);
	if (!proc_alive(&rs->proc))
		return -EADDRINUSE; /* most likely the port was taken in between */
	return answers(rs) ? 0 : -ETIMEDOUT;
}

int
redis_server_start(struct redis_server *rs)
{
	memset(rs, 0, sizeof(*rs));
	int rc = proc_mkdtemp("kvn-redis", rs->dir, sizeof(rs->dir));
	if (rc < 0)
		return rc;
	for (int attempt = 0; attempt < 5; attempt++) {
		rs->port = kvn_tcp_free_port();
		if (rs->port < 0)
			return -EADDRNOTAVAIL;
		snprintf(rs->url, sizeof(rs->url), "redis://127.0.0.1:%d", rs->port);
		rc = spawn(rs);
		if (rc != -EADDRINUSE)
			break;
	}
	return rc;
}

void
redis_server_stop(struct redis_server *rs, int sig)
{
	if (rs->proc.pid)
		proc_stop(&rs->proc, sig, 10000);
}

int
redis_server_restart(struct redis_server *rs)
{
	redis_server_stop(rs, SIGTERM);
	int rc = -EADDRINUSE;
	/* The old socket may linger for a moment; redis sets SO_REUSEADDR, so retries suffice. */
	for (int attempt = 0; attempt < 20 && rc == -EADDRINUSE; attempt++) {
		rc = spawn(rs);
		if (rc == -EADDRINUSE)
			usleep(200 * 1000);
	}
	return rc;
}

void
redis_server_destroy(struct redis_server *rs)
{
	redis_server_stop(rs, SIGKILL);
	if (rs->dir[0])
		proc_rm_tree(rs->dir);
	rs->dir[0] = '\0';
}

int
redis_cli(const struct redis_server *rs, const char *in_path, const char *out_path, ...)
{
	const char *argv[32] = {"/usr/bin/env", "redis-cli", "-h",
				"127.0.0.1",	"-p",	     rs->port_text};
	size_t n = 6;
	va_list ap;
	va_start(ap, out_path);
	const char *a;
	while ((a = va_arg(ap, const char *)) && n < 31)
		argv[n++] = a;
	va_end(ap);
	argv[n] = NULL;
	struct proc_opts o = {.stdin_path = in_path, .stdout_path = out_path};
	return proc_run(argv, &o, 30000);
}
