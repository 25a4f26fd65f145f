/* Test helper: memcached on a free loopback port (see memcached_server.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "memcached_server.h"
#include "core/netaddr.h"

#define MEMCACHED_BIN "/usr/bin/memcached"
#define DEADLINE_MS   60000

bool
memcached_server_available(void)
{
	return access(MEMCACHED_BIN, X_OK) == 0;
}

static int
raw_connect(const struct memcached_server *ms)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET,
				 .sin_port = htons((uint16_t)ms->port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (fd < 0)
		return -errno;
	struct timeval tv = {.tv_sec = DEADLINE_MS / 1000};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	return fd;
}

static bool
answers(void *arg)
{
	struct memcached_server *ms = arg;
	if (!proc_alive(&ms->proc))
		return true; /* exited: start() looks at why */
	int fd = raw_connect(ms);
	if (fd < 0)
		return false;
	char buf[64];
	bool ok = write(fd, "version\r\n", 9) == 9 && read(fd, buf, sizeof(buf)) > 0 &&
		  !strncmp(buf, "VERSION", 7);
	close(fd);
	return ok;
}

static int
spawn(struct memcached_server *ms)
{
	char port[16];
	snprintf(port, sizeof(port), "%d", ms->port);
	/* -I 64m: chunks of up to 32 MiB plus header and tag; -m 1024: room for a few. */
	/* memcached refuses to run as root unless told which user to be. */
	const char *argv[] = {
	    MEMCACHED_BIN, "-l",  "127.0.0.1", "-p",   port, "-U", "0",
	    "-I",	   "64m", "-m",	       "1024", "-t", "2",  getuid() == 0 ? "-u" : NULL,
	    "root",	   NULL};
	memset(&ms->proc, 0, sizeof(ms->proc));
	int rc = proc_spawn(&ms->proc, argv, NULL);
	if (rc)
		return rc;
	if (!proc_wait_for(answers, ms, DEADLINE_MS)) {
		proc_stop(&ms->proc, SIGKILL, DEADLINE_MS);
		return -ETIMEDOUT;
	}
	return proc_alive(&ms->proc) ? 0 : -EADDRINUSE;
}

int
memcached_server_start(struct memcached_server *ms)
{
	int rc = -EADDRINUSE;
	for (int tries = 0; tries < 5 && rc == -EADDRINUSE; tries++) {
		ms->port = kvn_tcp_free_port();
		if (ms->port < 0)
			return -EADDRNOTAVAIL;
		snprintf(ms->url, sizeof(ms->url), "memcached://127.0.0.1:%d", ms->port);
		rc = spawn(ms);
	}
	return rc;
}

void
memcached_server_stop(struct memcached_server *ms, int sig)
{
	proc_stop(&ms->proc, sig, DEADLINE_MS);
}

int
memcached_server_restart(struct memcached_server *ms)
{
	int rc = -EADDRINUSE;
	/* The old socket may linger for a moment after a kill: retry the same port. */
	for (int tries = 0; tries < 50 && rc == -EADDRINUSE; tries++) {
		rc = spawn(ms);
		if (rc == -EADDRINUSE)
			poll(NULL, 0, 100);
	}
	return rc;
}

void
memcached_server_destroy(struct memcached_server *ms)
{
	if (ms->proc.pid)
		proc_stop(&ms->proc, SIGKILL, DEADLINE_MS);
}

static int
write_all(int fd, const void *p, size_t len)
{
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n <= 0)
			return -EIO;
		p = (const char *)p + n;
		len -= (size_t)n;
	}
	return 0;
}

/* Reads until the buffer holds at least want bytes or a line, as asked. */
static ssize_t
read_some(int fd, char *buf, size_t have, size_t cap)
{
	ssize_t n = read(fd, buf + have, cap - have);
	return n <= 0 ? -1 : n;
}

void *
memcached_raw_get(const struct memcached_server *ms, const char *key, size_t *len)
{
	int fd = raw_connect(ms);
	if (fd < 0)
		return NULL;
	char cmd[600], line[700];
	snprintf(cmd, sizeof(cmd), "get %s\r\n", key);
	size_t have = 0;
	char *val = NULL;
	if (write_all(fd, cmd, strlen(cmd)))
		goto out;
	/* "VALUE <key> <flags> <bytes>\r\n" or "END\r\n" */
	while (!memchr(line, '\n', have)) {
		ssize_t n = read_some(fd, line, have, sizeof(line) - 1);
		if (n < 0)
			goto out;
		have += (size_t)n;
	}
	size_t bytes;
	unsigned flags;
	char k[600];
	line[have] = '\0';
	if (sscanf(line, "VALUE %599s %u %zu", k, &flags, &bytes) != 3)
		goto out;
	size_t hl = (size_t)(strchr(line, '\n') - line) + 1, total = bytes + 2 + 5;
	val = malloc(total + 1);
	if (!val)
		goto out;
	memcpy(val, line + hl, have - hl);
	size_t got = have - hl;
	while (got < bytes + 2) {
		ssize_t n = read(fd, val + got, total - got);
		if (n <= 0) {
			free(val);
			val = NULL;
			goto out;
		}
		got += (size_t)n;
	}
	*len = bytes;
out:
	close(fd);
	return val;
}

int
memcached_raw_set(const struct memcached_server *ms, const char *key, const void *val, size_t len)
{
	int fd = raw_connect(ms);
	if (fd < 0)
		return fd;
	char cmd[600], reply[64] = "";
	snprintf(cmd, sizeof(cmd), "set %s 0 0 %zu\r\n", key, len);
	int rc = write_all(fd, cmd, strlen(cmd));
	if (!rc)
		rc = write_all(fd, val, len);
	if (!rc)
		rc = write_all(fd, "\r\n", 2);
	if (!rc && (read(fd, reply, sizeof(reply) - 1) <= 0 || strncmp(reply, "STORED", 6)))
		rc = -EIO;
	close(fd);
	return rc;
}
