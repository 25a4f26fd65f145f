/* The CLI's renderings of a node's and a scheduler's statistics (`kvnode stat`, `kvnode demo`);
 * the protocol client itself is node/serve/ctlclient.c. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "node/cli/client.h"

/* ------------------------------------------------------------------------------------------
 * Rendering (shared by `kvnode stat` and `kvnode demo`)
 * ------------------------------------------------------------------------------------------ */

static double
num(const cJSON *obj, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
	return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

const char *
kvn_cli_human_bytes(double bytes, char *buf, size_t len)
{
	static const char *const unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
	int u = 0;
	while (bytes >= 1024 && u < 4) {
		bytes /= 1024;
		u++;
	}
	snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", bytes, unit[u]);
	return buf;
}

int
kvn_cli_print_stats(const char *json, FILE *out)
{
	cJSON *root = cJSON_Parse(json);
	if (!root)
		return -EPROTO;
	char a[32], b[32];
	const cJSON *name = cJSON_GetObjectItemCaseSensitive(root, "node_name");
	const cJSON *ver = cJSON_GetObjectItemCaseSensitive(root, "version");
	const cJSON *srv = cJSON_GetObjectItemCaseSensitive(root, "server");
	const cJSON *addr = cJSON_GetObjectItemCaseSensitive(srv, "address");
	fprintf(out, "node     %s (kvnode %s)%s%s\n",
		cJSON_IsString(name) ? name->valuestring : "?",
		cJSON_IsString(ver) ? ver->valuestring : "?", cJSON_IsString(addr) ? " on " : "",
		cJSON_IsString(addr) ? addr->valuestring : "");
	const cJSON *pool = cJSON_GetObjectItemCaseSensitive(root, "pool");
	if (pool)
		fprintf(out, "pool     %s%s\n",
			kvn_cli_human_bytes(num(pool, "size"), a, sizeof(a)),
			cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(pool, "hugepages"))
			    ? " (hugepages)"
			    : "");
	fprintf(out, "gets     %.0f hits, %.0f misses\n", num(root, "hits"), num(root, "misses"));
	if (srv)
		fprintf(out, "clients  %.0f connected, %.0f requests, %.0f protocol errors\n",
			num(srv, "connections"), num(srv, "requests"), num(srv, "protocol_errors"));
	const cJSON *lm = cJSON_GetObjectItemCaseSensitive(root, "lm_server");
	if (lm) {
		const cJSON *la = cJSON_GetObjectItemCaseSensitive(lm, "address");
		const cJSON *cmd = cJSON_GetObjectItemCaseSensitive(lm, "requests_by_command");
		fprintf(out,
			"lm       %s: %.0f connected, %.0f requests (PUT %.0f, GET %.0f, "
			"EXIST %.0f, LIST %.0f, HEALTH %.0f), %s in, %s out, %.0f errors, %.0f "
			"protocol errors\n",
			cJSON_IsString(la) ? la->valuestring : "?", num(lm, "connections"),
			num(lm, "requests"), num(cmd, "PUT"), num(cmd, "GET"), num(cmd, "EXIST"),
			num(cmd, "LIST"), num(cmd, "HEALTH"),
			kvn_cli_human_bytes(num(lm, "bytes_in"), a, sizeof(a)),
			kvn_cli_human_bytes(num(lm, "bytes_out"), b, sizeof(b)), num(lm, "errors"),
			num(lm, "protocol_errors"));
	}
	const cJSON *t;
	const cJSON *remote = cJSON_GetObjectItemCaseSensitive(root, "remote");
	const cJSON *rurl = cJSON_GetObjectItemCaseSensitive(remote, "url");
	if (remote)
		fprintf(out, "remote   %s %s, %.0f disconnects, %.0f reconnects, %.0f corrupt values\n",
			cJSON_IsString(rurl) ? rurl->valuestring : "?",
			cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(remote, "connected"))
			    ? "connected"
			    : "UNREACHABLE (serving from the other tiers, reconnecting)",
			num(remote, "disconnects"), num(remote, "reconnects"), num(remote, "corrupt"));
	/* How each GPU's memory registers for peers' READs (docs/gpu.md "Registration"). */
	cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(root, "gpus"))
	{
		const cJSON *reg = cJSON_GetObjectItemCaseSensitive(t, "registration");
		const cJSON *m = cJSON_GetObjectItemCaseSensitive(reg, "method");
		const cJSON *tp = cJSON_GetObjectItemCaseSensitive(reg, "transport");
		const cJSON *why = cJSON_GetObjectItemCaseSensitive(reg, "why");
		const cJSON *gn = cJSON_GetObjectItemCaseSensitive(t, "name");
		const cJSON *pci = cJSON_GetObjectItemCaseSensitive(t, "pci_bus_id");
		bool none = !cJSON_IsString(m) || !strcmp(m->valuestring, "none");
		fprintf(out, "gpu %-4.0f %s (%s): %s%s%s%s\n", num(t, "index"),
			cJSON_IsString(gn) ? gn->valuestring : "?",
			cJSON_IsString(pci) ? pci->valuestring : "?",
			none ? "memory not registered: " : "memory registers by ",
			none ? (cJSON_IsString(why) ? why->valuestring : "?") : m->valuestring,
			!none && cJSON_IsString(tp) ? " with " : "",
			!none && cJSON_IsString(tp) ? tp->valuestring : "");
	}
	/* The rails peer READs go over, when there are several (docs/architecture.md §12.6). */
	const cJSON *rails = cJSON_GetObjectItemCaseSensitive(
	    cJSON_GetObjectItemCaseSensitive(root, "peer"), "rails");
	int ri = 0;
	cJSON_ArrayForEach(t, (cJSON_GetArraySize(rails) > 1 ? rails : NULL))
	{
		const cJSON *dev = cJSON_GetObjectItemCaseSensitive(t, "device");
		const cJSON *ra = cJSON_GetObjectItemCaseSensitive(t, "address");
		fprintf(out,
			"rail %-3d %s%s%s: %s, %.0f reads, %s, %.0f errors (%.0f reissued), out "
			"%.0f times\n",
			ri++, cJSON_IsString(dev) ? dev->valuestring : "",
			cJSON_IsString(dev) ? " on " : "",
			cJSON_IsString(ra) ? ra->valuestring : "?",
			cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(t, "up")) ? "up" : "OUT",
			num(t, "reads"), kvn_cli_human_bytes(num(t, "bytes"), a, sizeof(a)),
			num(t, "errors"), num(t, "reissued"), num(t, "downs"));
	}
	fprintf(out, "\n%-10s %10s %12s %12s %10s %10s %10s %10s %8s\n", "BACKEND", "COUNT",
		"BYTES", "CAPACITY", "HITS", "MISSES", "PUTS", "EVICTIONS", "ERRORS");
	cJSON_ArrayForEach(t, cJSON_GetObjectItemCaseSensitive(root, "backends"))
	{
		const cJSON *tn = cJSON_GetObjectItemCaseSensitive(t, "name");
		double cap = num(t, "capacity");
		fprintf(out, "%-10s %10.0f %12s %12s %10.0f %10.0f %10.0f %10.0f %8.0f\n",
			cJSON_IsString(tn) ? tn->valuestring : "?", num(t, "count"),
			kvn_cli_human_bytes(num(t, "bytes"), a, sizeof(a)),
			cap ? kvn_cli_human_bytes(cap, b, sizeof(b)) : "unbounded", num(t, "hits"),
			num(t, "misses"), num(t, "puts"), num(t, "evictions"), num(t, "errors"));
	}
	kvn_cli_print_plugins(cJSON_GetObjectItemCaseSensitive(root, "plugins"), out);
	cJSON_Delete(root);
	return 0;
}

void
kvn_cli_print_plugins(const cJSON *plugins, FILE *out)
{
	char a[32], b[32];
	const cJSON *t;
	if (cJSON_GetArraySize(plugins) > 0)
		fprintf(out, "\n%-32s %8s %-12s %8s %5s\n", "PLUGIN", "PID", "STATE", "RESTARTS",
			"EXIT");
	cJSON_ArrayForEach(t, plugins)
	{
		const cJSON *pn = cJSON_GetObjectItemCaseSensitive(t, "name");
		const cJSON *ps = cJSON_GetObjectItemCaseSensitive(t, "state");
		const cJSON *pid = cJSON_GetObjectItemCaseSensitive(t, "pid");
		const cJSON *code = cJSON_GetObjectItemCaseSensitive(t, "exit_code");
		const cJSON *restarts = cJSON_GetObjectItemCaseSensitive(t, "restarts");
		snprintf(a, sizeof(a), "%.0f", cJSON_IsNumber(pid) ? pid->valuedouble : -1);
		snprintf(b, sizeof(b), "%.0f", cJSON_IsNumber(code) ? code->valuedouble : -1);
		fprintf(out, "%-32s %8s %-12s %8.0f %5s\n",
			cJSON_IsString(pn) ? pn->valuestring : "?", cJSON_IsNumber(pid) ? a : "-",
			cJSON_IsString(ps) ? ps->valuestring : "?",
			cJSON_IsNumber(restarts) ? restarts->valuedouble : 0,
			cJSON_IsNumber(code) ? b : "-");
	}
}
