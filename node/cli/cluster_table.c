/* `kvnode stat --scheduler` as a table: one row per member with its worker id, state, last
 * heartbeat and chunks, then the scheduler's plugins. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>

#include "node/cli/client.h"

static double
num(const cJSON *j, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, name);
	return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static const char *
str(const cJSON *j, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, name);
	return cJSON_IsString(v) && *v->valuestring ? v->valuestring : "-";
}

int
kvn_cli_print_cluster(const char *json, FILE *out)
{
	cJSON *j = cJSON_Parse(json);
	const cJSON *members = cJSON_GetObjectItemCaseSensitive(j, "members");
	if (!cJSON_IsObject(j) || !cJSON_IsArray(members)) {
		cJSON_Delete(j);
		return -EPROTO;
	}
	fprintf(out, "scheduler %s  epoch %.0f  members alive %.0f  heartbeat %.0f ms\n",
		str(j, "scheduler"), num(j, "epoch"), num(j, "worker_count"),
		num(j, "heartbeat_ms"));
	const cJSON *ha = cJSON_GetObjectItemCaseSensitive(j, "ha");
	if (cJSON_IsObject(ha)) /* scheduler_url etcd:// */
		fprintf(
		    out,
		    "cluster %s (etcd): this scheduler is the %s, leader %s; lease %.0f s, %.0f "
		    "elections won, %.0f stepdowns, %.0f failovers seen\n",
		    str(ha, "cluster"), str(ha, "role"), str(ha, "leader"), num(ha, "lease_ttl_s"),
		    num(ha, "elections"), num(ha, "stepdowns"), num(ha, "failovers"));
	fprintf(out,
		"directory: %.0f entries, %.1f MiB; %.0f lookups (%.0f keys), %.0f "
		"publish records; %.0f connections\n\n",
		num(j, "entries"), num(j, "directory_bytes") / (1024.0 * 1024.0), num(j, "lookups"),
		num(j, "keys_looked_up"), num(j, "published"), num(j, "connections"));
	fprintf(out, "%-6s %-20s %-8s %-22s %-9s %14s %12s\n", "WORKER", "NAME", "STATE",
		"DATA ADDRESS", "TRANSPORT", "LAST BEAT (ms)", "CHUNKS");
	const cJSON *m;
	cJSON_ArrayForEach(m, members)
	{
		fprintf(out, "%-6.0f %-20s %-8s %-22s %-9s %14.0f %12.0f\n", num(m, "worker_id"),
			str(m, "name"), str(m, "state"), str(m, "data_addr"), str(m, "transport"),
			num(m, "last_heartbeat_ms_ago"), num(m, "chunks"));
	}
	kvn_cli_print_plugins(cJSON_GetObjectItemCaseSensitive(j, "plugins"), out);
	cJSON_Delete(j);
	return 0;
}
