/* The metrics of `kvnode scheduler`: its counters and members (what `kvnode stat --scheduler`
 * shows), taken by the event loop's thread as a typed snapshot, written out as Prometheus
 * families. */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "node/metrics/metrics.h"
#include "node/scheduler/scheduler.h"

#define VIEW_TIMEOUT_MS 5000 /* the loop answers between events; it is never busy this long */

static void
members(struct kvn_expo *e, const struct kvn_sched_stats *st)
{
	uint64_t alive = 0;
	for (size_t i = 0; i < st->nmembers; i++)
		alive += st->members[i].alive;
	kvn_expo_family(e, "kvnode_scheduler_members", "gauge",
			"Node names holding a worker id, by state (alive, or expired/left and "
			"keeping it for worker_id_grace_ms)");
	kvn_expo_u64(e, "kvnode_scheduler_members", &(struct kvn_label){"state", "alive"}, 1,
		     alive);
	kvn_expo_u64(e, "kvnode_scheduler_members", &(struct kvn_label){"state", "expired"}, 1,
		     st->nmembers - alive);
	kvn_expo_family(e, "kvnode_scheduler_member_chunks", "gauge",
			"Directory entries (chunks) each member published");
	for (size_t i = 0; i < st->nmembers; i++) {
		const struct kvn_sched_member_stats *m = &st->members[i];
		char id[24];
		snprintf(id, sizeof(id), "%" PRIu32, m->worker_id);
		struct kvn_label l[] = {{"node", m->name}, {"worker_id", id}};
		kvn_expo_u64(e, "kvnode_scheduler_member_chunks", l, 2, m->chunks);
	}
}

int
kvn_metrics_collect_sched(void *ctx, struct kvn_expo *e)
{
	const struct kvn_sched_metrics *sm = ctx;
	struct kvn_sched_stats st;
	if (kvn_scheduler_stats_sync(sm->sched, VIEW_TIMEOUT_MS, &st))
		return -EAGAIN; /* stopping, or out of memory: this scrape gets 503 */
	kvn_metrics_common(e, sm->plugins);
#define U(f) offsetof(struct kvn_sched_stats, f)
	static const struct {
		const char *name, *type, *help;
		size_t off;
	} fam[] = {
	    {"kvnode_scheduler_epoch", "gauge", "Cluster epoch (grows on every join and expiry)",
	     U(epoch)},
	    {"kvnode_scheduler_directory_entries", "gauge",
	     "Chunks in the directory (one entry per chunk and holder)", U(entries)},
	    {"kvnode_scheduler_directory_bytes", "gauge", "Memory the chunk directory uses",
	     U(directory_bytes)},
	    {"kvnode_scheduler_connections", "gauge", "Open connections (nodes and stat clients)",
	     U(connections)},
	    {"kvnode_scheduler_frames_total", "counter", "Control frames received from members",
	     U(frames)},
	    {"kvnode_scheduler_lookups_total", "counter", "LOOKUP frames answered", U(lookups)},
	    {"kvnode_scheduler_looked_up_keys_total", "counter", "Keys asked for in LOOKUP frames",
	     U(keys_looked_up)},
	    {"kvnode_scheduler_publishes_total", "counter",
	     "Admit and evict records members published", U(published)},
	    {"kvnode_scheduler_joins_total", "counter", "Successful JOINs (re-joins included)",
	     U(joins)},
	    {"kvnode_scheduler_leaves_total", "counter", "Members that sent LEAVE", U(leaves)},
	    {"kvnode_scheduler_expiries_total", "counter",
	     "Members expired for missing their heartbeats", U(expiries)},
	    {"kvnode_scheduler_refused_total", "counter",
	     "Connections refused over the connection cap, JOIN or STATS requests refused "
	     "for a wrong auth_token, and JOINs refused for want of a free worker id",
	     U(refused)},
	    {"kvnode_scheduler_reply_queue_bytes", "gauge",
	     "Replies and notices queued to all connections, not yet read by their peers",
	     U(reply_queue_bytes)},
	    {"kvnode_scheduler_slow_readers_dropped_total", "counter",
	     "Connections closed because they did not read their replies (the largest queue "
	     "when all together passed scheduler_reply_queue_max, or one over 64 MiB)",
	     U(slow_readers_dropped)},
	    {"kvnode_scheduler_accept_errors_total", "counter",
	     "accept() failures for want of file descriptors or memory (each pauses accepting "
	     "for 100 ms)",
	     U(accept_errors)},
	    {"kvnode_scheduler_worker_ids_reclaimed_total", "counter",
	     "Worker ids freed because their name was gone longer than worker_id_grace_ms",
	     U(worker_ids_reclaimed)},
	    {"kvnode_scheduler_rejected_frames_total", "counter",
	     "Frames rejected as malformed or not allowed (the connection is closed)",
	     U(protocol_errors)},
	};
#undef U
	for (size_t i = 0; i < sizeof(fam) / sizeof(fam[0]); i++)
		kvn_expo_one(e, fam[i].name, fam[i].type, fam[i].help,
			     *(const uint64_t *)((const char *)&st + fam[i].off));
	members(e, &st);
	{ /* scheduler_url etcd:// (docs/architecture.md §5.6); a single scheduler: 1, 0, 0, 0 */
		kvn_expo_one(
		    e, "kvnode_scheduler_leader", "gauge",
		    "1 while this scheduler leads its cluster (in etcd; a single scheduler "
		    "always does), 0 while it stands by",
		    st.leading);
		kvn_expo_one(e, "kvnode_scheduler_elections_total", "counter",
			     "Elections this scheduler won (it created the cluster's leader key)",
			     st.elections);
		kvn_expo_one(
		    e, "kvnode_scheduler_stepdowns_total", "counter",
		    "Leads given up: etcd did not confirm the lease in time, or the leader "
		    "key was deleted or taken",
		    st.stepdowns);
		kvn_expo_one(e, "kvnode_scheduler_failovers_total", "counter",
			     "Times this scheduler saw the lead pass from one scheduler to another",
			     st.failovers);
	}
	kvn_sched_stats_free(&st);
	return e->oom ? -ENOMEM : 0;
}
