/* TCP addresses written as HOST:PORT (config keys such as lm_listen, connector URLs): parsing
 * with messages that name the text, and listening / connecting sockets built from them. */
#ifndef KVN_CORE_NETADDR_H
#define KVN_CORE_NETADDR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KVN_HOST_MAX 256

/* Splits "host:port" or "[v6 host]:port" (port 0..65535; 0 means "any" for listen). Returns 0
 * or -EINVAL with the reason in err. */
int kvn_hostport_parse(const char *text, char host[KVN_HOST_MAX], uint16_t *port, char *err,
		       size_t errlen);
/* A listening TCP socket (SO_REUSEADDR, CLOEXEC) on host:port; *bound gets the port actually
 * bound (useful with port 0). Returns the fd or a negative errno with err naming the address. */
int kvn_tcp_listen(const char *host, uint16_t port, int backlog, uint16_t *bound, char *err,
		   size_t errlen);
/* A connected TCP socket (TCP_NODELAY, CLOEXEC) to host:port, giving up after timeout_ms
 * per address tried. Returns the fd or a negative errno with err naming the address. */
int kvn_tcp_connect(const char *host, uint16_t port, int timeout_ms, char *err, size_t errlen);
/* A loopback port the kernel just handed out, for starting a helper server (redis, memcached,
 * a responder) on it: free now, but a caller must cope with losing it to someone else before
 * its server binds. -1 when no socket could be bound. */
int kvn_tcp_free_port(void);

/* Whether host (as kvn_hostport_parse gives it) is a loopback address: "localhost", 127.0.0.0/8,
 * ::1 (or ::ffff:127.x.y.z). Names are not resolved: any other name counts as reachable from
 * elsewhere, which is the safe answer for a listener. */
bool kvn_host_is_loopback(const char *host);

struct sockaddr;
/* "host:port" for IPv4, "[host]:port" for IPv6, "?" for any other family (log lines, peer
 * names). port_override, when not 0, replaces the address's own port (rdma_cm keeps it apart). */
void kvn_sockaddr_format(const struct sockaddr *sa, uint16_t port_override, char *out,
			 size_t outlen);
/* kvn_sockaddr_format of a connected socket's peer ("?:0" when getpeername fails). */
void kvn_peer_format(int fd, char *out, size_t outlen);

/* The node's default unix socket (malloc'd, NULL when out of memory): $KVNODE_SOCKET, else
 * $XDG_RUNTIME_DIR/kvnode.sock, else /tmp/kvnode-<uid>.sock. */
char *kvn_default_socket_path(void);

#endif
