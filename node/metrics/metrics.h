/* Prometheus metrics (docs/metrics.md): the /metrics listener of `kvnode serve` and `kvnode
 * scheduler` (config key metrics_listen, libmicrohttpd), the text exposition writer the
 * collectors fill, and the lock-free latency histogram hot paths record into. */
#ifndef KVN_NODE_METRICS_METRICS_H
#define KVN_NODE_METRICS_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/histogram.h"

/* ------------------------------------------------------------------------------------------
 * Exposition writer (text format 0.0.4). A family is declared once with kvn_expo_family and
 * its samples follow at once; the writer escapes label values and HELP text.
 * ------------------------------------------------------------------------------------------ */

struct kvn_expo {
	char *p;
	size_t len, cap;
	bool oom; /* an append failed: the text is incomplete and must not be served */
};

struct kvn_label {
	const char *name;
	const char *value;
};

/* "# HELP name help" and "# TYPE name type" (counter, gauge, histogram). */
void kvn_expo_family(struct kvn_expo *e, const char *name, const char *type, const char *help);
/* One sample: name{labels} value. Integers print exactly; doubles as %.17g. */
void kvn_expo_u64(struct kvn_expo *e, const char *name, const struct kvn_label *l, size_t nl,
		  uint64_t v);
void kvn_expo_double(struct kvn_expo *e, const char *name, const struct kvn_label *l, size_t nl,
		     double v);
/* A family with one unlabelled sample. */
void kvn_expo_one(struct kvn_expo *e, const char *name, const char *type, const char *help,
		  uint64_t v);
/* The _bucket, _sum and _count samples of h (name without suffix); _count is the sum of the
 * buckets read, so the +Inf bucket always equals it. */
void kvn_expo_histogram(struct kvn_expo *e, const char *name, const struct kvn_histogram *h);

/* ------------------------------------------------------------------------------------------
 * The listener
 * ------------------------------------------------------------------------------------------ */

/* Fills e with every family; runs on a listener thread, once per scrape. Returns 0, or a
 * negative errno: the scrape gets 503 Service Unavailable. */
typedef int (*kvn_metrics_collect_fn)(void *ctx, struct kvn_expo *e);

struct kvn_metrics;

struct kvn_metrics_opts {
	const char *listen; /* metrics_listen: "HOST:PORT", port 0 picks one */
	unsigned max_conns; /* metrics_max_connections; 0 = 16. Past it a client waits in the
			     * listen queue for a free slot. */
	/* metrics_timeout_s; 0 = 10. A connection that has gone this long without completing a
	 * request (since it opened or since its last reply) is closed, however it trickles. */
	unsigned timeout_s;
};

/* Serves GET /metrics on opts->listen from background threads: 404 for other paths, 405 for
 * other methods. err names metrics_listen, the address and what to do (address in use, cannot
 * resolve). Every exposition ends with the listener's own families (kvnode_metrics_*). */
int kvn_metrics_start(const struct kvn_metrics_opts *opts, kvn_metrics_collect_fn collect,
		      void *ctx, struct kvn_metrics **out, char *err, size_t errlen);
/* "HOST:PORT" actually bound. */
const char *kvn_metrics_address(const struct kvn_metrics *m);
/* Stops the listener, waiting for scrapes in flight. NULL is a no-op. */
void kvn_metrics_stop(struct kvn_metrics *m);

/* ------------------------------------------------------------------------------------------
 * Collectors (node/metrics/metrics_node.c, node/metrics/metrics_sched.c)
 * ------------------------------------------------------------------------------------------ */

struct kvn_engine;
struct kvn_cluster;
struct kvn_lm_server;
struct kvn_plugins;
struct kvn_scheduler;

/* What `kvnode serve` runs; any member but eng may be NULL. */
struct kvn_server;
struct kvn_node_metrics {
	struct kvn_engine *eng;
	struct kvn_server *srv; /* the client socket */
	struct kvn_cluster *cluster;
	struct kvn_lm_server *lm;
	struct kvn_plugins *plugins;
};
/* ctx: struct kvn_node_metrics. */
int kvn_metrics_collect_node(void *ctx, struct kvn_expo *e);

struct kvn_sched_metrics {
	struct kvn_scheduler *sched;
	struct kvn_plugins *plugins;
};
/* ctx: struct kvn_sched_metrics. */
int kvn_metrics_collect_sched(void *ctx, struct kvn_expo *e);

/* Shared by both: kvnode_build_info and the plugin families. */
void kvn_metrics_common(struct kvn_expo *e, struct kvn_plugins *plugins);

#endif
