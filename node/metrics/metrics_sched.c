/* The metrics of `kvnode scheduler`: its cluster view (the same one `kvnode stat --scheduler`
 * shows), taken from the event loop's thread, written out as Prometheus families. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "node/metrics/metrics.h"
#include "node/scheduler/scheduler.h"

#define VIEW_TIMEOUT_MS 5000 /* the loop answers between events; it is never busy this long */

static void
members(struct kvn_expo *e, const cJSON *view)
{
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(view, "members"), *m;
	uint64_t alive = 0, expired = 0;
	cJSON_ArrayForEach(m, arr)
	{
		if (!strcmp(kvn_metrics_json_str(m, "state"), "alive"))
			alive++;
		else
			expired++;
	}
	kvn_expo_family(e, "kvnode_scheduler_members", "gauge",
			"Node names holding a worker id, by state (alive, or expired/left and "
			"keeping it for worker_id_grace_ms)");
	kvn_expo_u64(e, "kvnode_scheduler_members", &(struct kvn_label){"state", "alive"}, 1,
		     alive);
	kvn_expo_u64(e, "kvnode_scheduler_members", &(struct kvn_label){"state", "expired"}, 1,
		     expired);
	kvn_expo_family(e, "kvnode_scheduler_member_chunks", "gauge",
			"Directory entries (chunks) each member published");
	cJSON_ArrayForEach(m, arr)
	{
		char id[24];
		snprintf(id, sizeof(id), "%llu",
			 (unsigned long long)kvn_metrics_json_u64(m, "worker_id"));
		struct kvn_label l[] = {{"node", kvn_metrics_json_str(m, "name")},
					{"worker_id", id}};
		kvn_expo_u64(e, "kvnode_scheduler_member_chunks", l, 2,
			     kvn_metrics_json_u64(m, "chunks"));
	}
}

int
kvn_metrics_collect_sched(void *ctx, struct kvn_expo *e)
{
	const struct kvn_sched_metrics *sm = ctx;
	char *text = kvn_scheduler_stats_json_sync(sm->sched, VIEW_TIMEOUT_MS);
	cJSON *view = text ? cJSON_Parse(text) : NULL;
	free(text);
	if (!cJSON_IsObject(view)) {
		cJSON_Delete(view);
		return -EAGAIN; /* stopping, or out of memory: this scrape gets 503 */
	}
	kvn_metrics_common(e, sm->plugins);
	static const struct {
		const char *name, *type, *help, *field;
	} fam[] = {
	    {"kvnode_scheduler_epoch", "gauge", "Cluster epoch (grows on every join and expiry)",
	     "epoch"},
	    {"kvnode_scheduler_directory_entries", "gauge",
	     "Chunks in the directory (one entry per chunk and holder)", "entries"},
	    {"kvnode_scheduler_directory_bytes", "gauge", "Memory the chunk directory uses",
	     "directory_bytes"},
	    {"kvnode_scheduler_connections", "gauge", "Open connections (nodes and stat clients)",
	     "connections"},
	    {"kvnode_scheduler_frames_total", "counter", "Control frames received from members",
	     "frames"},
	    {"kvnode_scheduler_lookups_total", "counter", "LOOKUP frames answered", "lookups"},
	    {"kvnode_scheduler_looked_up_keys_total", "counter", "Keys asked for in LOOKUP frames",
	     "keys_looked_up"},
	    {"kvnode_scheduler_publishes_total", "counter",
	     "Admit and evict records members published", "published"},
	    {"kvnode_scheduler_joins_total", "counter", "Successful JOINs (re-joins included)",
	     "joins"},
	    {"kvnode_scheduler_leaves_total", "counter", "Members that sent LEAVE", "leaves"},
	    {"kvnode_scheduler_expiries_total", "counter",
	     "Members expired for missing their heartbeats", "expiries"},
	    {"kvnode_scheduler_refused_total", "counter",
	     "Connections refused over the connection cap, JOIN or STATS requests refused "
	     "for a wrong auth_token, and JOINs refused for want of a free worker id",
	     "refused"},
	    {"kvnode_scheduler_reply_queue_bytes", "gauge",
	     "Replies and notices queued to all connections, not yet read by their peers",
	     "reply_queue_bytes"},
	    {"kvnode_scheduler_slow_readers_dropped_total", "counter",
	     "Connections closed because they did not read their replies (the largest queue "
	     "when all together passed scheduler_reply_queue_max, or one over 64 MiB)",
	     "slow_readers_dropped"},
	    {"kvnode_scheduler_accept_errors_total", "counter",
	     "accept() failures for want of file descriptors or memory (each pauses accepting "
	     "for 100 ms)",
	     "accept_errors"},
	    {"kvnode_scheduler_worker_ids_reclaimed_total", "counter",
	     "Worker ids freed because their name was gone longer than worker_id_grace_ms",
	     "worker_ids_reclaimed"},
	    {"kvnode_scheduler_rejected_frames_total", "counter",
	     "Frames rejected as malformed or not allowed (the connection is closed)",
	     "protocol_errors"},
	};
	for (size_t i = 0; i < sizeof(fam) / sizeof(fam[0]); i++)
		kvn_expo_one(e, fam[i].name, fam[i].type, fam[i].help,
			     kvn_metrics_json_u64(view, fam[i].field));
	members(e, view);
	cJSON_Delete(view);
	return e->oom ? -ENOMEM : 0;
}
