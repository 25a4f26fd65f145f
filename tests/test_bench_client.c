/* kvnode-bench client runs end to end against the `kvnode serve` children it starts: every row
 * (the client library's put, get_into, view, 32-key batch; the CLI's old protocol; a peer hit
 * through a second node) is measured next to its baseline. Sizes, working set and durations are
 * tiny: this checks that the mode works and reports every row, not how fast anything is. */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/helpers/proc.h"

#define BENCH	 KVN_BINARY_DIR "/kvnode-bench"
#define DEADLINE 240000 /* ms */

static char dir[256];

static void
cleanup(void)
{
	if (dir[0])
		proc_rm_tree(dir);
}

/* Runs argv; its exit code, and its stdout in *out (malloc'd). */
static int
run_bench(const char *const *argv, char **out, char **err)
{
	char o[300], e[300];
	if (!dir[0])
		cr_assert_eq(proc_mkdtemp("bench-client", dir, sizeof(dir)), 0);
	snprintf(o, sizeof(o), "%s/out.txt", dir);
	snprintf(e, sizeof(e), "%s/err.txt", dir);
	struct proc_opts po = {.stdout_path = o, .stderr_path = e};
	int code = proc_run(argv, &po, DEADLINE);
	*out = proc_read_file(o, NULL);
	*err = proc_read_file(e, NULL);
	return code;
}

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

static double
num(cJSON *r, const char *field)
{
	cJSON *f = cJSON_GetObjectItem(r, field);
	return cJSON_IsNumber(f) ? f->valuedouble : -1;
}

Test(bench_client, every_row_of_every_size_is_measured_beside_its_baseline, .fini = cleanup,
     .timeout = 300)
{
	const char *argv[] = {BENCH,	"client",   "--baseline", "--peer",
			      "--json", "--sizes",  "64K,256K",	  "--duration",
			      "0.05",	"--trials", "1",	  "--working-set",
			      "4",	"--depth",  "4",	  NULL};
	char *out, *err;
	int code = run_bench(argv, &out, &err);
	cr_assert_eq(code, 0, "kvnode-bench client exited with %d: %s", code, err ? err : "");
	cJSON *rows = cJSON_Parse(out ? out : "");
	cr_assert(cJSON_IsArray(rows), "not a JSON array: %s", out ? out : "");
	static const char *const ops[] = {"put",     "get_into", "get_view", "batch32",
					  "cli_put", "cli_get",	 "peer_get"};
	for (int s = 0; s < 2; s++) {
		double bytes = s ? 256 << 10 : 64 << 10;
		for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
			cJSON *r = row(rows, ops[i], bytes);
			cr_assert(r, "no %s row of %.0f bytes", ops[i], bytes);
			cr_expect_eq(
			    strcmp(cJSON_GetStringValue(cJSON_GetObjectItem(r, "mode")), "client"),
			    0);
			cr_expect_gt(num(r, "iterations"), 0, "%s %.0f", ops[i], bytes);
			cr_expect_gt(num(r, "gbps"), 0, "%s %.0f", ops[i], bytes);
			cr_expect_gt(num(r, "baseline_gbps"), 0,
				     "%s row of %.0f bytes has no baseline", ops[i], bytes);
			cr_expect_gt(num(r, "ratio"), 0, "%s %.0f", ops[i], bytes);
		}
		/* The documented goals come with their rows (met or not: never asserted). */
		cr_expect_eq(num(row(rows, "get_into", bytes), "goal"), 0.8);
		cr_expect_eq(num(row(rows, "put", bytes), "goal"), 0.7);
		cr_expect_eq(num(row(rows, "peer_get", bytes), "goal"), 0.8);
	}
	cJSON_Delete(rows);
	free(out);
	free(err);
}

Test(bench_client, a_bad_depth_is_a_usage_error_and_help_describes_the_mode, .fini = cleanup)
{
	const char *bad[] = {BENCH, "client", "--depth", "65", NULL};
	char *out, *err;
	cr_assert_eq(run_bench(bad, &out, &err), 2);
	cr_expect(err && strstr(err, "--depth"), "stderr: %s", err ? err : "");
	free(out);
	free(err);
	const char *help[] = {BENCH, "--help", NULL};
	cr_assert_eq(run_bench(help, &out, &err), 0);
	cr_expect(out && strstr(out, "get_into") && strstr(out, "--depth"), "%s", out ? out : "");
	free(out);
	free(err);
}
