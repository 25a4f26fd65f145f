/* TCP addresses as HOST:PORT: parsing, listening and connecting (getaddrinfo, so names and
 * both address families work). Every error names the address and what failed. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/netaddr.h"

int
kvn_hostport_parse(const char *text, char host[KVN_HOST_MAX], uint16_t *port, char *err,
		   size_t errlen)
{
	const char *colon, *h = text;
	size_t hlen;
	if (!text || !*text)
		return kvn_seterr(-EINVAL, err, errlen, "address is empty: write HOST:PORT");
	if (text[0] == '[') {
		const char *end = strchr(text, ']');
		if (!end || end[1] != ':')
			return kvn_seterr(
			    -EINVAL, err, errlen,
			    "address \"%s\": an IPv6 host must be written [HOST]:PORT", text);
		h = text + 1;
		hlen = (size_t)(end - h);
		colon = end + 1;
	} else {
		colon = strrchr(text, ':');
		if (!colon)
			return kvn_seterr(-EINVAL, err, errlen,
					  "address \"%s\" has no port: write HOST:PORT", text);
		hlen = (size_t)(colon - text);
		if (memchr(text, ':', hlen))
			return kvn_seterr(
			    -EINVAL, err, errlen,
			    "address \"%s\": an IPv6 host must be written [HOST]:PORT", text);
	}
	if (hlen == 0)
		return kvn_seterr(-EINVAL, err, errlen,
				  "address \"%s\" has no host: write HOST:PORT (0.0.0.0 for every "
				  "interface)",
				  text);
	if (hlen >= KVN_HOST_MAX)
		return kvn_seterr(-EINVAL, err, errlen,
				  "address \"%.40s...\": host is longer than %d bytes", text,
				  KVN_HOST_MAX - 1);
	const char *p = colon + 1;
	char *end;
	errno = 0;
	long v = strtol(p, &end, 10);
	if (!*p || *end || errno || v < 0 || v > 65535 || *p == '+' || *p == '-' || *p == ' ')
		return kvn_seterr(-EINVAL, err, errlen,
				  "address \"%s\": port \"%s\" must be a number from 0 to 65535",
				  text, p);
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	*port = (uint16_t)v;
	return 0;
}

static int
resolve(const char *host, uint16_t port, bool passive, struct addrinfo **res, char *err,
	size_t errlen)
{
	char service[8];
	snprintf(service, sizeof(service), "%u", port);
	struct addrinfo hints = {.ai_family = AF_UNSPEC,
				 .ai_socktype = SOCK_STREAM,
				 .ai_flags = passive ? AI_PASSIVE : 0};
	int rc = getaddrinfo(host, service, &hints, res);
	if (rc) {
		kvn_seterr(rc, err, errlen, "cannot resolve %s:%u: %s", host, port,
			   gai_strerror(rc));
		return rc == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
	}
	return 0;
}

/* A socket for one resolved address; -1 with *rc = -errno when none can be made. */
static int
socket_for(const struct addrinfo *ai, int *rc)
{
	int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
	if (fd < 0)
		*rc = -errno;
	return fd;
}

int
kvn_tcp_listen(const char *host, uint16_t port, int backlog, uint16_t *bound, char *err,
	       size_t errlen)
{
	struct addrinfo *res;
	int rc = resolve(host, port, true, &res, err, errlen), fd = -1;
	if (rc)
		return rc;
	rc = -EADDRNOTAVAIL;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		if ((fd = socket_for(ai, &rc)) < 0)
			continue;
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, backlog) == 0)
			break;
		rc = -errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		return kvn_seterr(
		    rc, err, errlen, "cannot listen on %s:%u: %s%s", host, port, strerror(-rc),
		    rc == -EADDRINUSE ? " (another process holds the port: pick another)" : "");
	}
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	if (bound && getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
		*bound = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
							: ((struct sockaddr_in *)&ss)->sin_port);
	return fd;
}

/* connect() bounded by timeout_ms: non-blocking connect, poll, then back to blocking. */
static int
connect_timed(int fd, const struct sockaddr *sa, socklen_t len, int timeout_ms)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return -errno;
	int rc = 0;
	if (connect(fd, sa, len) < 0) {
		if (errno != EINPROGRESS) {
			rc = -errno;
		} else {
			struct pollfd pf = {.fd = fd, .events = POLLOUT};
			int n;
			do
				n = poll(&pf, 1, timeout_ms);
			while (n < 0 && errno == EINTR);
			int soerr = 0;
			socklen_t sl = sizeof(soerr);
			if (n == 0)
				rc = -ETIMEDOUT;
			else if (n < 0)
				rc = -errno;
			else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
				rc = -errno;
			else
				rc = -soerr;
		}
	}
	if (fcntl(fd, F_SETFL, fl) < 0 && !rc)
		rc = -errno;
	return rc;
}

int
kvn_tcp_connect(const char *host, uint16_t port, int timeout_ms, char *err, size_t errlen)
{
	struct addrinfo *res;
	int rc = resolve(host, port, false, &res, err, errlen), fd = -1;
	if (rc)
		return rc;
	rc = -EADDRNOTAVAIL;
	for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		if ((fd = socket_for(ai, &rc)) < 0)
			continue;
		rc = connect_timed(fd, ai->ai_addr, ai->ai_addrlen, timeout_ms);
		if (!rc)
			break;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		return kvn_seterr(rc, err, errlen, "cannot connect to %s:%u: %s", host, port,
				  strerror(-rc));
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

int
kvn_tcp_free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sa);
	int port = -1;
	if (fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&sa, &sl) == 0)
		port = ntohs(sa.sin_port);
	if (fd >= 0)
		close(fd);
	return port;
}

void
kvn_sockaddr_format(const struct sockaddr *sa, uint16_t port_override, char *out, size_t outlen)
{
	char host[INET6_ADDRSTRLEN] = "?";
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)sa;
		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		snprintf(out, outlen, "%s:%u", host,
			 port_override ? port_override : ntohs(in->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		snprintf(out, outlen, "[%s]:%u", host,
			 port_override ? port_override : ntohs(in6->sin6_port));
	} else {
		snprintf(out, outlen, "?");
	}
}

void
kvn_peer_format(int fd, char *out, size_t outlen)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0)
		kvn_sockaddr_format((struct sockaddr *)&ss, 0, out, outlen);
	else
		snprintf(out, outlen, "?:0");
}

bool
kvn_host_is_loopback(const char *host)
{
	struct in_addr a4;
	struct in6_addr a6;
	if (!strcasecmp(host, "localhost"))
		return true;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, host, &a6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&a6) ||
		       (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
	return false;
}

char *
kvn_default_socket_path(void)
{
	const char *s = getenv("KVNODE_SOCKET");
	char *out = NULL;
	if (s && *s)
		return strdup(s);
	s = getenv("XDG_RUNTIME_DIR");
	if (s && *s)
		return asprintf(&out, "%s/kvnode.sock", s) < 0 ? NULL : out;
	return asprintf(&out, "/tmp/kvnode-%u.sock", (unsigned)getuid()) < 0 ? NULL : out;
}
