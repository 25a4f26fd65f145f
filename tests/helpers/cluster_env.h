/* Test helper for cluster tests: `kvnode serve` nodes as child processes joined to a scheduler
 * (tests/helpers/sched_env), talked to over their unix sockets with the client library. */
#ifndef KVN_TEST_CLUSTER_ENV_H
#define KVN_TEST_CLUSTER_ENV_H

#include <stdbool.h>
#include <stddef.h>

#include "kvnode/kvnode.h"
#include "node/cli/client.h"
#include "tests/helpers/proc.h"
#include "tests/helpers/sched_env.h"

struct cnode {
	struct proc p;
	char name[32];
	char cfg[300], sock[300], out[300], err[300];
	struct kvn_cli_conn *c;
};

struct cnode_opts {
	const char *dir;	 /* the test's temp directory */
	const char *sched;	 /* scheduler HOST:PORT */
	const char *listen;	 /* data address; NULL: 127.0.0.1:0 */
	const char *token;	 /* NULL: none */
	const char *cpu_gb;	 /* max_local_cpu_size; NULL: "0.02" */
	bool no_promote;	 /* promote_to_cpu: false */
	const char *const *wrap; /* argv prefix (e.g. ip netns exec NS), NULL-terminated */
	const char *extra;	 /* more config lines, each ending in \n; NULL: none */
};

/* Writes the node's config, starts it and waits until its socket accepts and it printed its
 * data address; connects a client (n->c). Asserts on failure with the node's stderr. */
void cnode_start(struct cnode *n, const char *name, const struct cnode_opts *o);
/* SIGTERM (SIGKILL after 10 s). */
void cnode_stop(struct cnode *n);
/* SIGKILL, no goodbye. */
void cnode_kill(struct cnode *n);

/* A deterministic value for key number i (len bytes) and its LMCache-style key. */
void cluster_key(struct kvn_key *k, const char *tag, unsigned i);
void cluster_value(void *buf, size_t len, const char *tag, unsigned i);
/* Puts value i under key i on n; asserts success. */
void cnode_put(struct cnode *n, const char *tag, unsigned i, size_t len);
/* 1: hit with exactly value i; 0: miss; -1: a hit with other bytes (corrupt). */
int cnode_get_check(struct cnode *n, const char *tag, unsigned i, size_t len);
/* The node's stats JSON field backends[name].field (hits …), -1 when absent. */
long long cnode_tier_stat(struct cnode *n, const char *tier, const char *field);
/* The node's stats JSON field section.field (peer.promoted_in_place …), -1 when absent. */
long long cnode_stat(struct cnode *n, const char *section, const char *field);
/* The node's whole stats JSON (asserts it answered); the caller deletes it. */
struct cJSON;
struct cJSON *cnode_stat_json(struct cnode *n);

#endif
