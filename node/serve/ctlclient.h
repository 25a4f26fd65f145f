/* Client side of the local control protocol: what the kvnode CLI (rm/ls/stat, and put/get on a
 * node without the client protocol), kvnode-bench and tests use to talk to a running
 * `kvnode serve` over its unix socket. */
#ifndef KVN_NODE_SERVE_CTLCLIENT_H
#define KVN_NODE_SERVE_CTLCLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include "kvnode/kvnode.h"

struct kvn_cli_conn;

/* Who is to blame for the last failure: the CLI turns this into its exit code. */
enum kvn_cli_fault {
	KVN_CLIENT_OK = 0,
	KVN_CLIENT_NODE,  /* the node answered with an error status (-ENOENT: a miss) */
	KVN_CLIENT_CONN,  /* connection lost, timed out, or a reply that is not a valid frame */
	KVN_CLIENT_LOCAL, /* reading or writing the caller's own file descriptor */
};

/* Connects to the node at socket_path ("unix:" prefix allowed). timeout_ms (0 = 60 s) bounds
 * the connect and every later read or write that makes no progress. err names the path. */
int kvn_cli_connect(const char *socket_path, int timeout_ms, struct kvn_cli_conn **out, char *err,
		    size_t errlen);
void kvn_cli_close(struct kvn_cli_conn *c);

/* Every call below returns 0 or a negative errno. After a failure kvn_cli_fault() says whose
 * it was and kvn_cli_error() gives a one-line message (the node's own when it sent one).
 * After a KVN_CLIENT_CONN or KVN_CLIENT_LOCAL fault the connection is unusable. */
enum kvn_cli_fault kvn_cli_fault(const struct kvn_cli_conn *c);
const char *kvn_cli_error(const struct kvn_cli_conn *c);

/* *banner (malloc'd, may be NULL) gets the node's "kvnode <version>". */
int kvn_cli_ping(struct kvn_cli_conn *c, char **banner);
int kvn_cli_put(struct kvn_cli_conn *c, const struct kvn_key *key, const void *data, size_t len);
/* Streams exactly len bytes read from fd as the value. */
int kvn_cli_put_fd(struct kvn_cli_conn *c, const struct kvn_key *key, int fd, uint64_t len);
/* *data (malloc'd) and *len get the value; -ENOENT on a miss. */
int kvn_cli_get(struct kvn_cli_conn *c, const struct kvn_key *key, void **data, size_t *len);
/* Two steps so that a caller opens its output only once the node has the value:
 * get_begin returns 0 with *len set, then get_finish streams the *len bytes into fd. */
int kvn_cli_get_begin(struct kvn_cli_conn *c, const struct kvn_key *key, uint64_t *len);
int kvn_cli_get_finish(struct kvn_cli_conn *c, int fd);
/* -ENOENT when the node did not hold key. */
int kvn_cli_rm(struct kvn_cli_conn *c, const struct kvn_key *key);
/* *text (malloc'd, NUL-terminated) gets "<key>\t<length>\n" per key; *len its length. */
int kvn_cli_ls(struct kvn_cli_conn *c, char **text, size_t *len);
/* *json (malloc'd, NUL-terminated) gets the node's statistics object. */
int kvn_cli_stat(struct kvn_cli_conn *c, char **json);

#endif
