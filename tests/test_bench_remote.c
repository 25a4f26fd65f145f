/* kvnode-bench remote runs end to end against a redis-server it starts: every row (connector
 * put/get, peer fetch) is measured next to its baseline, and a value read back wrong fails it
 * (the connector's tag check, kvn_slot_verify on the peer side). Sizes and durations are tiny:
 * this checks that the mode works, not how fast. */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/helpers/proc.h"
#include "tests/helpers/redis_server.h"

#define BENCH	 KVN_BINARY_DIR "/kvnode-bench"
#define DEADLINE 240000 /* ms */

static char dir[256];

static void
cleanup(void)
{
	if (dir[0])
		proc_rm_tree(dir);
}

static cJSON *
run_bench(const char *const *argv)
{
	char out[300], err[300];
	cr_assert_eq(proc_mkdtemp("bench", dir, sizeof(dir)), 0);
	snprintf(out, sizeof(out), "%s/out.json", dir);
	snprintf(err, sizeof(err), "%s/err.txt", dir);
	struct proc_opts po = {.stdout_path = out, .stderr_path = err};
	int code = proc_run(argv, &po, DEADLINE);
	char *text = proc_read_file(out, NULL), *etext = proc_read_file(err, NULL);
	cr_assert_eq(code, 0, "kvnode-bench exited with %d: %s", code, etext ? etext : "");
	cJSON *j = cJSON_Parse(text ? text : "");
	cr_assert(cJSON_IsArray(j), "not a JSON array: %s", text ? text : "");
	free(text);
	free(etext);
	return j;
}

/* The row of op at bytes, or NULL. */
static cJSON *
row(cJSON *rows, const char *op, double bytes)
{
	cJSON *r;
	cJSON_ArrayForEach(r, rows)
	{
		if (!strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(r, "op")), op) &&
		    cJSON_GetNumberValue(cJSON_GetObjectItem(r, "bytes")) == bytes)
			return r;
	}
	return NULL;
}

Test(bench_remote, put_get_and_peer_fetch_rows_each_come_with_a_redis_baseline, .fini = cleanup,
     .timeout = 300)
{
	if (!redis_server_available())
		cr_skip_test("redis-server/redis-cli not installed (scripts/install-deps)");
	const char *argv[] = {BENCH,	      "remote", "--baseline", "--peer", "--json",
			      "--sizes",      "64K,1M", "--duration", "0.05",	"--trials",
			      "1",	      "--working-set", "4",	   NULL};
	cJSON *rows = run_bench(argv);
	static const char *const ops[] = {"put", "get", "peer"};
	for (int s = 0; s < 2; s++) {
		double bytes = s ? 1 << 20 : 64 << 10;
		for (int i = 0; i < 3; i++) {
			cJSON *r = row(rows, ops[i], bytes);
			cr_assert(r, "no %s row of %.0f bytes", ops[i], bytes);
			cr_expect_gt(cJSON_GetNumberValue(cJSON_GetObjectItem(r, "iterations")), 0);
			cr_expect_gt(cJSON_GetNumberValue(cJSON_GetObjectItem(r, "gbps")), 0);
			cr_expect_gt(cJSON_GetNumberValue(cJSON_GetObjectItem(r, "baseline_gbps")), 0,
				     "%s row of %.0f bytes has no baseline", ops[i], bytes);
		}
	}
	cJSON_Delete(rows);
}
