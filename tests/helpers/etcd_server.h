/* Test helper: a real etcd (Debian's etcd-server) on two free 127.0.0.1 ports with its data in a
 * temp directory, which a test can stop (SIGKILL: "the store died mid-operation") and restart on
 * the same ports and data. */
#ifndef KVN_TESTS_ETCD_SERVER_H
#define KVN_TESTS_ETCD_SERVER_H

#include <limits.h>
#include <stdbool.h>

#include "proc.h"

struct etcd_server {
	struct proc proc;
	int client_port, peer_port;
	char dir[PATH_MAX - 64]; /* temp dir: etcd.log and data/ */
	char endpoint[64]; /* "127.0.0.1:<client_port>", as kvn_etcd_opts.endpoints takes it */
	/* etcd_server_start_tls: https only, certificates of a CA made for the test (in dir):
	 * ca.pem signed server.pem (for IP 127.0.0.1) and client.pem/client.key, which etcd
	 * requires of every client (--client-cert-auth). */
	bool tls;
	char ca[PATH_MAX], client_cert[PATH_MAX], client_key[PATH_MAX];
};

/* true when an etcd binary is there (/usr/bin/etcd or etcd on PATH; scripts/install-deps
 * installs etcd-server). */
bool etcd_server_available(void);
/* Starts one and waits (generous deadline) until it answers a range request. 0 or a negative
 * errno (the log is etcd.log in s->dir). */
int etcd_server_start(struct etcd_server *s);
/* The same serving https only and requiring a client certificate; the CA, server and client
 * certificates are made with openssl in s->dir first. -ENOENT without openssl. */
int etcd_server_start_tls(struct etcd_server *s);
/* Kills it with sig (SIGKILL for a crash) and reaps it; the directory and data stay. */
void etcd_server_stop(struct etcd_server *s, int sig);
/* Starts it again on the same ports and data directory and waits until it answers. 0 or a
 * negative errno. */
int etcd_server_restart(struct etcd_server *s);
/* Stops it and removes its directory. Safe on a never-started one. */
void etcd_server_destroy(struct etcd_server *s);
/* POSTs body (NULL: a GET) to http://<endpoint><path> (the gateway, for what the client does
 * not do: users, roles, auth enable, compaction); *answer (may be NULL) the malloc'd body. The
 * HTTP status or a negative errno. */
int etcd_server_post(const struct etcd_server *s, const char *path, const char *body,
		     const char *token, char **answer);

#endif
