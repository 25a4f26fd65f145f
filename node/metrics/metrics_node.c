/* The metrics of `kvnode serve` and the families both daemons share: reads the counters the
 * tiers, the peer tier, the membership client, the lm server and the plugin launcher already
 * keep (the same ones `kvnode stat` shows) and writes them out. docs/metrics.md lists them. */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvnode/plugin.h"
#include "plugins/plugins.h"
#include "kvnode/transport.h"
#include "node/cluster/cluster.h"
#include "node/serve/lm_server.h"
#include "connectors/lmproto.h"
#include "node/cluster/membership.h"
#include "node/engine/engine.h"
#include "node/metrics/metrics.h"
#include "node/serve/server.h"
#include "node/engine/storage.h"
#include "core/pool.h"
#include "rdma/devreg.h"

#define MAX_TIERS 16

/* ------------------------------------------------------------------------------------------
 * Shared families
 * ------------------------------------------------------------------------------------------ */

/* A snapshot of the launcher's plugins, taken under its lock. */
static void
plugins(struct kvn_expo *e, struct kvn_plugins *pl)
{
	struct kvn_plugin_stat *st;
	size_t n;
	if (kvn_plugins_snapshot(pl, &st, &n)) {
		e->oom = true;
		return;
	}
	if (n > 0) {
		kvn_expo_family(e, "kvnode_plugin_up", "gauge",
				"1 while the plugin's process runs, else 0");
		for (size_t i = 0; i < n; i++)
			kvn_expo_u64(e, "kvnode_plugin_up", &(struct kvn_label){"plugin", st[i].name},
				     1, !strcmp(st[i].state, "running"));
		kvn_expo_family(e, "kvnode_plugin_restarts_total", "counter",
				"Restarts of the plugin (plugin_restart: on-failure)");
		for (size_t i = 0; i < n; i++)
			kvn_expo_u64(e, "kvnode_plugin_restarts_total",
				     &(struct kvn_label){"plugin", st[i].name}, 1, st[i].restarts);
		kvn_expo_family(e, "kvnode_plugin_dropped_lines_total", "counter",
				"Output lines of the plugin dropped because the log queue was full");
		for (size_t i = 0; i < n; i++)
			kvn_expo_u64(e, "kvnode_plugin_dropped_lines_total",
				     &(struct kvn_label){"plugin", st[i].name}, 1, st[i].dropped_lines);
	}
	kvn_plugins_snapshot_free(st, n);
}

void
kvn_metrics_common(struct kvn_expo *e, struct kvn_plugins *pl)
{
	kvn_expo_family(e, "kvnode_build_info", "gauge",
			"Always 1; the labels say which kvnode build this is");
	struct kvn_label l[] = {{"version", KVN_VERSION_STRING},
				{"verbs", KVN_HAVE_VERBS ? "yes" : "no"}};
	kvn_expo_u64(e, "kvnode_build_info", l, 2, 1);
	plugins(e, pl);
}

/* ------------------------------------------------------------------------------------------
 * Node
 * ------------------------------------------------------------------------------------------ */

struct tier_snap {
	const char *name;
	struct kvn_backend_stats s;
	uint64_t read, written, skipped, moved;
};

/* One family per counter, every tier in it. */
static void
tiers(struct kvn_expo *e, struct kvn_storage *st)
{
	struct tier_snap t[MAX_TIERS];
	size_t n = 0;
	for (size_t i = 0; i < kvn_storage_count(st) && n < MAX_TIERS; i++, n++) {
		kvn_storage_tier(st, i, &t[n].name, &t[n].s);
		kvn_storage_tier_io(st, i, &t[n].read, &t[n].written);
		t[n].skipped = kvn_storage_tier_skipped(st, i);
		t[n].moved = kvn_storage_tier_moved(st, i, NULL);
	}
#define TIER_FIELD(f) offsetof(struct tier_snap, f)
	static const struct {
		const char *name, *type, *help;
		size_t off;
	} fam[] = {
	    {"kvnode_tier_hits_total", "counter", "Gets this tier answered", TIER_FIELD(s.hits)},
	    {"kvnode_tier_misses_total", "counter", "Gets that asked this tier and missed",
	     TIER_FIELD(s.misses)},
	    {"kvnode_tier_puts_total", "counter", "Values this tier stored", TIER_FIELD(s.puts)},
	    {"kvnode_tier_read_bytes_total", "counter", "Value bytes gets returned from this tier",
	     TIER_FIELD(read)},
	    {"kvnode_tier_written_bytes_total", "counter",
	     "Value bytes stored into this tier (puts, write-behind and promotions)",
	     TIER_FIELD(written)},
	    {"kvnode_tier_evictions_total", "counter", "Chunks this tier evicted to make room",
	     TIER_FIELD(s.evictions)},
	    {"kvnode_tier_errors_total", "counter",
	     "Failed I/O, or corrupt data found and dropped, in this tier", TIER_FIELD(s.errors)},
	    {"kvnode_tier_writes_skipped_total", "counter",
	     "Writes to this slow tier skipped: its store out of service or its queue full",
	     TIER_FIELD(skipped)},
	    {"kvnode_tier_moved_to_cpu_total", "counter",
	     "Chunks this gpu tier evicted and moved into the cpu tier first (0 for other tiers)",
	     TIER_FIELD(moved)},
	    {"kvnode_tier_chunks", "gauge", "Chunks this tier holds now", TIER_FIELD(s.count)},
	    {"kvnode_tier_stored_bytes", "gauge", "Value bytes this tier holds now",
	     TIER_FIELD(s.bytes)},
	    {"kvnode_tier_capacity_bytes", "gauge",
	     "Value bytes this tier may hold (0: unbounded or not known)", TIER_FIELD(s.capacity)},
	};
#undef TIER_FIELD
	for (size_t f = 0; f < sizeof(fam) / sizeof(fam[0]); f++) {
		kvn_expo_family(e, fam[f].name, fam[f].type, fam[f].help);
		for (size_t i = 0; i < n; i++) {
			uint64_t v;
			memcpy(&v, (const char *)&t[i] + fam[f].off, sizeof(v));
			struct kvn_label l = {"tier", t[i].name};
			kvn_expo_u64(e, fam[f].name, &l, 1, v);
		}
	}
}

/* Per rail (docs/architecture.md §12.6): what peer READs moved over it and how it failed. */
static void
rails(struct kvn_expo *e, const struct kvn_peer_read_stats *p)
{
	static const struct {
		const char *name, *type, *help;
	} fam[] = {
	    {"kvnode_rail_reads_total", "counter", "Slices of peer READs completed on the rail"},
	    {"kvnode_rail_bytes_total", "counter", "Bytes peer READs moved over the rail"},
	    {"kvnode_rail_errors_total", "counter", "Slices that failed on the rail"},
	    {"kvnode_rail_reissued_total", "counter",
	     "Slices that failed on the rail and were reissued on another"},
	    {"kvnode_rail_downs_total", "counter",
	     "Times a peer connection took the rail out (retried after rail_retry_ms)"},
	    {"kvnode_rail_up", "gauge", "1 while no peer connection has the rail out, else 0"},
	};
	for (size_t f = 0; f < sizeof(fam) / sizeof(fam[0]); f++) {
		kvn_expo_family(e, fam[f].name, fam[f].type, fam[f].help);
		for (size_t i = 0; i < p->nrails; i++) {
			const struct kvn_rail_stats *r = &p->rails[i];
			char idx[24];
			snprintf(idx, sizeof(idx), "%zu", i);
			struct kvn_label l[2] = {{"rail", idx}, {"device", r->device}};
			const uint64_t v[] = {r->slices,   r->bytes, r->errors,
					      r->reissued, r->downs, !r->down};
			kvn_expo_u64(e, fam[f].name, l, 2, v[f]);
		}
	}
}

static void
peer(struct kvn_expo *e, struct kvn_storage *st)
{
	struct kvn_backend *be = kvn_storage_backend(st, &kvn_peer_backend_ops);
	struct kvn_peer_read_stats p = {0};
	if (be)
		kvn_peer_read_stats(be, &p);
	kvn_expo_one(e, "kvnode_peer_reads_total", "counter",
		     "One-sided READs of chunks from other nodes' pools", p.reads);
	kvn_expo_one(e, "kvnode_peer_read_bytes_total", "counter",
		     "Slot-image bytes READ from other nodes", p.bytes);
	kvn_expo_one(e, "kvnode_peer_read_errors_total", "counter",
		     "Peer reads that gave no verified chunk (transport error, chunk evicted or "
		     "rewritten since the directory heard of it, no room for it)",
		     p.errors);
	kvn_expo_one(e, "kvnode_peer_oversized_total", "counter",
		     "Directory entries longer than max_chunk_size, answered as a miss unread",
		     p.oversized);
	kvn_expo_one(e, "kvnode_peer_promoted_in_place_total", "counter",
		     "Peer hits the cpu tier indexed in the pool slot the READ landed in (no copy)",
		     p.promoted_in_place);
	kvn_expo_one(e, "kvnode_peer_location_cache_hits_total", "counter",
		     "Keys a peer get or contains found located in the directory cache (no lookup)",
		     p.location_cache_hits);
	kvn_expo_one(e, "kvnode_peer_location_cache_misses_total", "counter",
		     "Keys a peer get or contains had to ask the scheduler's directory for",
		     p.location_cache_misses);
	kvn_expo_one(e, "kvnode_transport_errors_total", "counter",
		     "READs the data transport (verbs or tcp) failed", p.transport_errors);
	rails(e, &p);
	kvn_expo_family(e, "kvnode_peer_read_duration_seconds", "histogram",
			"Time from posting a READ to a peer to its completion");
	static const struct kvn_histogram none;
	kvn_expo_histogram(e, "kvnode_peer_read_duration_seconds", p.latency ? p.latency : &none);
}

/* The data listener: who holds connections to this node's pool, and who was turned away. */
static void
listener(struct kvn_expo *e, struct kvn_cluster *c)
{
	struct kvn_transport_stats t;
	kvn_cluster_listener_stats(c, &t);
	kvn_expo_one(e, "kvnode_transport_connections", "gauge",
		     "Readers connected to this node's data listener now", t.conns);
	kvn_expo_one(e, "kvnode_transport_accepted_total", "counter",
		     "Connections the data listener accepted", t.accepted);
	kvn_expo_family(e, "kvnode_transport_refused_total", "counter",
			"Data connections refused or closed before being served, by reason: full "
			"(transport_max_connections), hello_timeout (transport_hello_timeout_ms), "
			"auth (wrong or missing auth_token proof), accept_error (accept failed, "
			"e.g. out of file descriptors)");
	const struct {
		const char *reason;
		uint64_t v;
	} r[] = {{"full", t.refused_full},
		 {"hello_timeout", t.hello_timeouts},
		 {"auth", t.auth_refused},
		 {"accept_error", t.accept_errors}};
	for (size_t i = 0; i < sizeof(r) / sizeof(r[0]); i++) {
		struct kvn_label l = {"reason", r[i].reason};
		kvn_expo_u64(e, "kvnode_transport_refused_total", &l, 1, r[i].v);
	}
}

static void
membership(struct kvn_expo *e, struct kvn_cluster *c)
{
	struct kvn_membership *m = c ? kvn_cluster_membership(c) : NULL;
	kvn_expo_one(e, "kvnode_cluster_joined", "gauge",
		     "1 while this node is a member of its scheduler's cluster, else 0",
		     m && kvn_membership_connected(m));
	kvn_expo_family(e, "kvnode_cluster_worker_id", "gauge",
			"This node's worker id (-1: not joined, or no scheduler_url)");
	kvn_expo_double(e, "kvnode_cluster_worker_id", NULL, 0,
			m ? (double)kvn_membership_worker_id(m) : -1);
	kvn_expo_one(e, "kvnode_cluster_members", "gauge",
		     "Members alive in the cluster (the worker count), as the scheduler last said",
		     m ? kvn_membership_worker_count(m) : 0);
	kvn_expo_one(e, "kvnode_cluster_epoch", "gauge",
		     "Cluster epoch (changes on every join and expiry)",
		     m ? kvn_membership_epoch(m) : 0);
	kvn_expo_one(e, "kvnode_cluster_joins_total", "counter",
		     "Successful joins (a re-join after a scheduler restart adds one)",
		     m ? kvn_membership_joins(m) : 0);
}

/* How each GPU's memory registers with the node's transport: one series per GPU and way, 1 for
 * the way the cluster glue's probe found at start (method="none" when none did, or no
 * transport is open), so that an alert can say "GPU 1 fell back to host staging". */
static void
gpus(struct kvn_expo *e, struct kvn_engine *eng)
{
	struct kvn_engine_gpus *g = kvn_engine_gpus(eng);
	size_t n;
	kvn_engine_gpus_driver(g, &n);
	if (!n)
		return;
	kvn_expo_family(e, "kvnode_gpu_registration", "gauge",
			"1 for the way the GPU's memory registers with the node's transport "
			"(dma-buf, nvidia-peermem, host staging, or none), else 0");
	for (size_t i = 0; i < n; i++) {
		int dev = -1, won = kvn_engine_gpus_reg(g, i, &dev);
		char idx[16];
		snprintf(idx, sizeof(idx), "%d", dev);
		for (int m = KVN_REG_NONE; m <= KVN_REG_STAGING; m++) {
			struct kvn_label l[2] = {{"gpu", idx}, {"method", kvn_reg_method_name(m)}};
			kvn_expo_u64(e, "kvnode_gpu_registration", l, 2, m == won);
		}
	}
}

static void
remote(struct kvn_expo *e, struct kvn_storage *st)
{
	struct kvn_remote_status rs;
	if (kvn_storage_remote_status(st, &rs) < 0)
		return;
	kvn_expo_one(e, "kvnode_remote_connected", "gauge",
		     "1 while the remote tier's store (remote_url) is reachable, else 0",
		     rs.connected);
	kvn_expo_one(e, "kvnode_remote_disconnects_total", "counter",
		     "Times the remote store went away", rs.disconnects);
	kvn_expo_one(e, "kvnode_remote_reconnects_total", "counter",
		     "Times the connection to the remote store was made again", rs.reconnects);
	kvn_expo_one(e, "kvnode_remote_corrupt_total", "counter",
		     "Values from the remote store that failed their checks", rs.corrupt);
	kvn_expo_one(e, "kvnode_remote_stale_tags_total", "counter",
		     "kvnode tags found beside a value another writer (LMCache) replaced; the tag "
		     "ignored, the value checked as LMCache checks it",
		     rs.stale_tags);
}

static void
lm(struct kvn_expo *e, struct kvn_lm_server *srv)
{
	if (!srv)
		return;
	struct kvn_lm_server_stats s;
	kvn_lm_server_stats(srv, &s);
	kvn_expo_one(e, "kvnode_lm_connections", "gauge",
		     "Open connections of the lm:// server (lm_listen)", s.connections);
	kvn_expo_one(e, "kvnode_lm_accepted_total", "counter",
		     "Connections the lm:// server accepted", s.accepted);
	kvn_expo_one(e, "kvnode_lm_refused_total", "counter",
		     "New lm:// clients refused at lm_max_connections, none open idle long enough "
		     "to make room",
		     s.refused);
	kvn_expo_family(e, "kvnode_lm_closed_total", "counter",
			"lm:// connections the server closed, by reason: idle (silent for "
			"lm_idle_timeout_ms), request_timeout (a request incomplete after "
			"lm_request_timeout_ms), evicted (idle, to make room for a new client at "
			"lm_max_connections)");
	kvn_expo_u64(e, "kvnode_lm_closed_total", &(struct kvn_label){"reason", "idle"}, 1,
		     s.idle_closed);
	kvn_expo_u64(e, "kvnode_lm_closed_total", &(struct kvn_label){"reason", "request_timeout"},
		     1, s.request_timeouts);
	kvn_expo_u64(e, "kvnode_lm_closed_total", &(struct kvn_label){"reason", "evicted"}, 1,
		     s.evicted);
	kvn_expo_one(e, "kvnode_lm_oversized_puts_total", "counter",
		     "lm:// PUTs over max_chunk_size, read and dropped without being stored",
		     s.oversized);
	kvn_expo_family(e, "kvnode_lm_dropped_puts_total", "counter",
			"lm:// PUTs read and dropped without being stored, by reason: oversized "
			"(over max_chunk_size), bad_key and bad_metadata (the connection then "
			"closed), no_memory, not_stored (the engine refused it)");
	for (int i = 0; i < KVN_LM_DROP_N; i++) {
		struct kvn_label l = {"reason", kvn_lm_drop_name((enum kvn_lm_drop)i)};
		kvn_expo_u64(e, "kvnode_lm_dropped_puts_total", &l, 1, s.dropped_puts[i]);
	}
	kvn_expo_family(e, "kvnode_lm_protocol_connections_total", "counter",
			"lm:// connections by the generation of LMCache's protocol their first "
			"request was in: v0 (8-int headers), v1 (9-int, with location)");
	for (int i = 0; i < 2; i++) {
		struct kvn_label l = {"protocol", kvn_lm_gen_name((enum kvn_lm_gen)i)};
		kvn_expo_u64(e, "kvnode_lm_protocol_connections_total", &l, 1, s.by_protocol[i]);
	}
	kvn_expo_one(e, "kvnode_lm_requests_total", "counter", "Requests the lm:// server answered",
		     s.requests);
	kvn_expo_one(e, "kvnode_lm_protocol_errors_total", "counter",
		     "Malformed requests that closed an lm:// connection", s.proto_errors);
	kvn_expo_family(e, "kvnode_lm_command_requests_total", "counter",
			"lm:// requests by command");
	for (int i = 0; i < KVN_LM_HEALTH; i++) {
		struct kvn_label l = {"command", kvn_lm_cmd_name(i + 1)};
		kvn_expo_u64(e, "kvnode_lm_command_requests_total", &l, 1, s.by_command[i]);
	}
	kvn_expo_one(e, "kvnode_lm_received_bytes_total", "counter",
		     "PUT payload bytes the lm:// server received", s.bytes_in);
	kvn_expo_one(e, "kvnode_lm_sent_bytes_total", "counter",
		     "GET and LIST payload bytes the lm:// server sent", s.bytes_out);
	kvn_expo_one(e, "kvnode_lm_errors_total", "counter",
		     "lm:// requests the node failed (a PUT not stored; a GET, EXIST or LIST "
		     "failing for another reason than a miss)",
		     s.errors);
}

static void
clients(struct kvn_expo *e, struct kvn_server *srv)
{
	if (!srv)
		return;
	struct kvn_server_stats s;
	struct kvn_clientsrv_stats cs;
	kvn_server_stats(srv, &s);
	kvn_server_client_stats(srv, &cs);
	/* The socket answers both protocols: the CLI's put and get speak the client library's. */
	uint64_t requests = s.requests;
	for (size_t i = 0; i < KVN_CP_NOPS; i++)
		requests += cs.requests[i];
	kvn_expo_one(e, "kvnode_client_connections", "gauge",
		     "Open connections on the node's client socket (socket_path)", s.connections);
	kvn_expo_one(e, "kvnode_client_accepted_total", "counter",
		     "Connections the client socket accepted", s.accepted);
	kvn_expo_one(e, "kvnode_client_requests_total", "counter",
		     "Requests the client socket answered: control protocol (rm, ls, stat …) and "
		     "client library frames (get, reserve, commit, release …)",
		     requests);
	kvn_expo_one(e, "kvnode_client_protocol_errors_total", "counter",
		     "Malformed client requests (the connection is closed)", s.proto_errors);
	kvn_expo_one(e, "kvnode_client_refused_total", "counter",
		     "Client connections refused over the connection cap (client_max_connections)",
		     s.refused);
	kvn_expo_one(e, "kvnode_client_oversized_total", "counter",
		     "PUTs on the client socket refused for declaring more than max_chunk_size",
		     s.oversized);
}

/* The client library's connections (include/kvnode/client.h): the host's inference workers
 * that map the pool. */
static void
pool_clients(struct kvn_expo *e, struct kvn_server *srv)
{
	struct kvn_clientsrv_stats s;
	kvn_server_client_stats(srv, &s);
	kvn_expo_one(e, "kvnode_api_clients", "gauge",
		     "Client-library connections (inference workers that map the pool) open now",
		     s.clients);
	kvn_expo_one(e, "kvnode_api_leases", "gauge",
		     "Views of chunks that client-library connections hold now (each keeps its "
		     "slot from eviction and reuse)",
		     s.leases);
	kvn_expo_one(e, "kvnode_api_reservations", "gauge",
		     "Pool slots reserved by client-library puts and not yet committed",
		     s.reservations);
	kvn_expo_one(e, "kvnode_api_held_bytes", "gauge",
		     "Value bytes of the leases and reservations all client-library connections "
		     "hold now",
		     s.held_bytes);
	kvn_expo_one(e, "kvnode_api_max_held_bytes", "gauge",
		     "Bytes of leases and reservations one client-library connection may hold "
		     "(client_max_held_bytes)",
		     s.max_held);
	kvn_expo_one(e, "kvnode_api_held_refused_total", "counter",
		     "Gets and puts refused because their connection would pass "
		     "client_max_held_bytes",
		     s.held_refused);
	kvn_expo_family(e, "kvnode_api_requests_total", "counter",
			"Client-library requests by operation");
	for (unsigned op = KVN_CP_GET; op < KVN_CP_NOPS; op++) {
		char name[16];
		const char *n = kvn_cp_op_name(op);
		size_t i = 0;
		for (; n[i] && i < sizeof(name) - 1; i++)
			name[i] = (char)tolower((unsigned char)n[i]);
		name[i] = '\0';
		struct kvn_label l = {"op", name};
		kvn_expo_u64(e, "kvnode_api_requests_total", &l, 1, s.requests[op]);
	}
	kvn_expo_one(e, "kvnode_api_keys_total", "counter",
		     "Keys and entries in all client-library requests (a batch counts each)",
		     s.keys);
	kvn_expo_one(e, "kvnode_api_cluster_lookups_total", "counter",
		     "Scheduler lookups made for client-library requests (one per request, for "
		     "all its keys this node does not hold)",
		     s.cluster_lookups);
	kvn_expo_one(e, "kvnode_api_copied_to_pool_total", "counter",
		     "Client-library gets whose value was not in the pool (a disk, remote or "
		     "external tier's) and was copied into a pool slot to be viewed",
		     s.copied_to_pool);
	kvn_expo_one(e, "kvnode_api_protocol_errors_total", "counter",
		     "Malformed client-library requests (the connection is closed)",
		     s.protocol_errors);
}

int
kvn_metrics_collect_node(void *ctx, struct kvn_expo *e)
{
	const struct kvn_node_metrics *nm = ctx;
	struct kvn_storage *st = kvn_engine_storage(nm->eng);
	kvn_metrics_common(e, nm->plugins);
	uint64_t hits, misses;
	kvn_engine_gets(nm->eng, &hits, &misses);
	kvn_expo_family(e, "kvnode_gets_total", "counter",
			"Gets of the node by outcome (hit: some tier had the key)");
	kvn_expo_u64(e, "kvnode_gets_total", &(struct kvn_label){"result", "hit"}, 1, hits);
	kvn_expo_u64(e, "kvnode_gets_total", &(struct kvn_label){"result", "miss"}, 1, misses);
	tiers(e, st);
	struct kvn_pool *pool = kvn_engine_pool(nm->eng);
	kvn_expo_one(e, "kvnode_pool_populated_bytes", "gauge",
		     "Pool bytes made resident at start so far (pool_populate)",
		     pool ? kvn_pool_populated(pool) : 0);
	clients(e, nm->srv);
	if (nm->srv)
		pool_clients(e, nm->srv);
	peer(e, st);
	listener(e, nm->cluster);
	membership(e, nm->cluster);
	remote(e, st);
	gpus(e, nm->eng);
	lm(e, nm->lm);
	return e->oom ? -ENOMEM : 0;
}
