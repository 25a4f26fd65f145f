/* The kvnode CLI's client side: the control protocol's client (node/serve/ctlclient.h) and the
 * tables it prints of a node's and a scheduler's statistics. */
#ifndef KVN_NODE_CLI_CLIENT_H
#define KVN_NODE_CLI_CLIENT_H

#include <stdio.h>

#include "node/serve/ctlclient.h"

/* Prints a stats object (kvn_engine_stats_json, plus the daemon's "server" part) as a table:
 * node, pool, hits and misses, then one row per tier. -EPROTO when json is not JSON. */
int kvn_cli_print_stats(const char *json, FILE *out);
/* The PLUGIN table of a "plugins" array (kvn_plugins_stats_json); nothing when it is empty.
 * Shared by the node's and the scheduler's stat views. */
struct cJSON;
void kvn_cli_print_plugins(const struct cJSON *plugins, FILE *out);
/* "32.0 MiB": bytes in binary units, into buf. */
const char *kvn_cli_human_bytes(double bytes, char *buf, size_t len);

/* The scheduler's cluster view (kvn_membership_fetch_stats's JSON) as a table: members, worker
 * ids, last heartbeat, chunks per node, plugins. -EPROTO when json is not a scheduler's stats. */
int kvn_cli_print_cluster(const char *json, FILE *out);

#endif
