/* kvnode-bench reporting: perftest-style tables on stdout, or one JSON array (cJSON). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#include "bench/bench.h"

static cJSON *rows;
static const char rule[] =
	"---------------------------------------------------------------------------------------------";

int
bench_measure(int (*pass)(void *ctx, int op), void *ctx, int op, size_t items, size_t item_bytes,
	      double duration, struct bench_trial *t)
{
	double bytes_per_pass = (double)items * (double)item_bytes;
	int rc = pass(ctx, op);
	if (rc < 0)
		return rc;
	*t = (struct bench_trial){ 0 };
	double start = kvn_now_s(), now = start;
	do {
		double p0 = now;
		if ((rc = pass(ctx, op)) < 0)
			return rc;
		now = kvn_now_s();
		double g = bytes_per_pass / (now - p0) / 1e9;
		if (g > t->peak_gbps)
			t->peak_gbps = g;
		t->iterations += items;
	} while (now - start < duration);
	t->gbps = (double)t->iterations * (double)item_bytes / (now - start) / 1e9;
	return 0;
}

int
bench_measure_pair(int (*pass)(void *ctx, int op), void *ctx, int op_a, int op_b, size_t items,
		   size_t item_bytes, double duration, struct bench_trial *a, struct bench_trial *b)
{
	double bytes_per_pass = (double)items * (double)item_bytes;
	int rc = pass(ctx, op_a);
	if (rc == 0)
		rc = pass(ctx, op_b);
	if (rc < 0)
		return rc;
	*a = *b = (struct bench_trial){ 0 };
	double time_a = 0, time_b = 0, start = kvn_now_s();
	do {
		struct bench_trial *t[2] = { a, b };
		double *spent[2] = { &time_a, &time_b };
		int ops[2] = { op_a, op_b };
		for (int i = 0; i < 2; i++) {
			double p0 = kvn_now_s();
			if ((rc = pass(ctx, ops[i])) < 0)
				return rc;
			double dt = kvn_now_s() - p0, g = bytes_per_pass / dt / 1e9;
			*spent[i] += dt;
			t[i]->iterations += items;
			if (g > t[i]->peak_gbps)
				t[i]->peak_gbps = g;
		}
	} while (kvn_now_s() - start < 2 * duration);
	a->gbps = (double)a->iterations * (double)item_bytes / time_a / 1e9;
	b->gbps = (double)b->iterations * (double)item_bytes / time_b / 1e9;
	return 0;
}

static int
cmp_trial(const void *a, const void *b)
{
	double x = ((const struct bench_trial *)a)->gbps, y = ((const struct bench_trial *)b)->gbps;
	return (x > y) - (x < y);
}

const struct bench_trial *
bench_median(struct bench_trial *t, int n)
{
	qsort(t, (size_t)n, sizeof(*t), cmp_trial);
	return &t[n / 2];
}

int
bench_median_ratio(const struct bench_trial *mine, const struct bench_trial *base, int n)
{
	double ratio[99];
	int mid = 0;
	for (int i = 0; i < n; i++)
		ratio[i] = mine[i].gbps / base[i].gbps;
	for (int i = 0; i < n; i++) {
		int below = 0, same = 0;
		for (int j = 0; j < n; j++)
			below += ratio[j] < ratio[i], same += ratio[j] == ratio[i];
		if (below <= n / 2 && n / 2 < below + same)
			mid = i;
	}
	return mid;
}

void
bench_table_header(const struct bench_opts *o, const char *title, const char *setup)
{
	if (o->json)
		return;
	printf("%s\n %s\n %s\n%s\n", rule, title, setup, rule);
	printf(" %-9s %12s %12s %15s %18s", "#op", "#bytes", "#iterations", "BW peak[GB/s]",
	       "BW average[GB/s]");
	if (o->baseline)
		printf(" %17s %7s", "baseline[GB/s]", "ratio");
	printf("\n");
}

void
bench_table_row(const struct bench_opts *o, const struct bench_row *r)
{
	if (o->json) {
		bench_json_add(r);
		return;
	}
	printf(" %-9s %12zu %12llu %15.2f %18.2f", r->op, r->bytes,
	       (unsigned long long)r->iterations, r->peak_gbps, r->gbps);
	if (o->baseline && r->baseline_gbps > 0) {
		double ratio = r->gbps / r->baseline_gbps;
		printf(" %17.2f %7.3f", r->baseline_gbps, ratio);
		if (r->goal > 0)
			printf("  goal >= %.2f %s", r->goal, ratio >= r->goal ? "pass" : "MISS");
	}
	printf("\n");
	fflush(stdout);
}

void
bench_table_footer(const struct bench_opts *o)
{
	if (!o->json)
		printf("%s\n", rule);
}

void
bench_json_add(const struct bench_row *r)
{
	if (!rows)
		rows = cJSON_CreateArray();
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "mode", r->mode);
	cJSON_AddStringToObject(j, "op", r->op);
	cJSON_AddNumberToObject(j, "bytes", (double)r->bytes);
	cJSON_AddNumberToObject(j, "iterations", (double)r->iterations);
	cJSON_AddNumberToObject(j, "gbps", r->gbps);
	cJSON_AddNumberToObject(j, "peak_gbps", r->peak_gbps);
	if (r->baseline_gbps > 0) {
		cJSON_AddStringToObject(j, "baseline", r->baseline_name);
		cJSON_AddNumberToObject(j, "baseline_gbps", r->baseline_gbps);
		cJSON_AddNumberToObject(j, "ratio", r->gbps / r->baseline_gbps);
		if (r->goal > 0) {
			cJSON_AddNumberToObject(j, "goal", r->goal);
			cJSON_AddBoolToObject(j, "goal_met", r->gbps / r->baseline_gbps >= r->goal);
		}
	}
	cJSON_AddItemToArray(rows, j);
}

void
bench_json_flush(void)
{
	if (!rows)
		rows = cJSON_CreateArray();
	char *text = cJSON_Print(rows);
	if (text)
		printf("%s\n", text);
	free(text);
	cJSON_Delete(rows);
	rows = NULL;
}

void *
bench_map_region(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	madvise(p, len, MADV_HUGEPAGE);
	return p;
}
