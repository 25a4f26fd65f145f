/* Test helper for cluster tests (see cluster_env.h). */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/helpers/cluster_env.h"

struct ready_ctx {
	struct cnode *n;
};

static bool
node_ready(void *arg)
{
	struct cnode *n = arg;
	char *text = proc_read_file(n->out, NULL);
	bool ok = text && strstr(text, " data on ") && proc_cond_socket_accepts(n->sock);
	free(text);
	return ok || !proc_alive(&n->p);
}

void
cnode_start(struct cnode *n, const char *name, const struct cnode_opts *o)
{
	memset(n, 0, sizeof(*n));
	snprintf(n->name, sizeof(n->name), "%s", name);
	snprintf(n->cfg, sizeof(n->cfg), "%s/%s.yaml", o->dir, name);
	snprintf(n->sock, sizeof(n->sock), "%s/%s.sock", o->dir, name);
	snprintf(n->out, sizeof(n->out), "%s/%s.out", o->dir, name);
	snprintf(n->err, sizeof(n->err), "%s/%s.err", o->dir, name);
	char cfg[2048];
	int len = snprintf(cfg, sizeof(cfg),
			   "node_name: %s\nscheduler_url: %s\nsocket_path: %s\nlisten: %s\n"
			   "max_local_cpu_size: %s\ntransport: tcp\nheartbeat_ms: 100\n"
			   "promote_to_cpu: %s\n%s%s%s%s",
			   name, o->sched, n->sock, o->listen ? o->listen : "127.0.0.1:0",
			   o->cpu_gb ? o->cpu_gb : "0.02", o->no_promote ? "false" : "true",
			   o->token ? "auth_token: " : "", o->token ? o->token : "",
			   o->token ? "\n" : "", o->extra ? o->extra : "");
	cr_assert_eq(proc_write_file(n->cfg, cfg, (size_t)len), 0);
	const char *argv[16];
	size_t a = 0;
	for (size_t i = 0; o->wrap && o->wrap[i] && a < 10; i++)
		argv[a++] = o->wrap[i];
	argv[a++] = KVNODE;
	argv[a++] = "serve";
	argv[a++] = "-c";
	argv[a++] = n->cfg;
	argv[a++] = "-v";
	argv[a] = NULL;
	const char *env[] = {"KVNODE_CONFIG_FILE", "LMCACHE_CONFIG_FILE", "KVNODE_SCHEDULER_URL",
			     "KVNODE_AUTH_TOKEN", NULL};
	struct proc_opts po = {.stdout_path = n->out, .stderr_path = n->err, .env = env};
	cr_assert_eq(proc_spawn(&n->p, argv, &po), 0);
	bool up = proc_wait_for(node_ready, n, DEADLINE) && proc_alive(&n->p);
	if (!up) {
		char *e = proc_read_file(n->err, NULL);
		cr_assert_fail("node %s did not come up: %s", name, e ? e : "");
	}
	char err[512];
	cr_assert_eq(kvn_cli_connect(n->sock, 10000, &n->c, err, sizeof(err)), 0, "%s", err);
}

void
cnode_stop(struct cnode *n)
{
	kvn_cli_close(n->c);
	n->c = NULL;
	if (n->p.pid)
		proc_stop(&n->p, SIGTERM, 10000);
}

void
cnode_kill(struct cnode *n)
{
	kvn_cli_close(n->c);
	n->c = NULL;
	if (n->p.pid)
		proc_stop(&n->p, SIGKILL, 10000);
}

void
cluster_key(struct kvn_key *k, const char *tag, unsigned i)
{
	char text[200];
	snprintf(text, sizeof(text), "vllm@test-model@1@0@%s%08x@bfloat16", tag, i);
	cr_assert_eq(kvn_key_from_str(k, text), 0, "key %s", text);
}

void
cluster_value(void *buf, size_t len, const char *tag, unsigned i)
{
	uint64_t x = sched_mix(i ^ ((uint64_t)(unsigned char)tag[0] << 32)) | 1;
	uint8_t *p = buf;
	for (size_t j = 0; j < len; j++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[j] = (uint8_t)x;
	}
}

void
cnode_put(struct cnode *n, const char *tag, unsigned i, size_t len)
{
	struct kvn_key k;
	cluster_key(&k, tag, i);
	void *v = malloc(len);
	cluster_value(v, len, tag, i);
	int rc = kvn_cli_put(n->c, &k, v, len);
	free(v);
	cr_assert_eq(rc, 0, "put %s on %s: %s", k.str, n->name, kvn_cli_error(n->c));
}

int
cnode_get_check(struct cnode *n, const char *tag, unsigned i, size_t len)
{
	struct kvn_key k;
	cluster_key(&k, tag, i);
	void *data = NULL;
	size_t got = 0;
	int rc = kvn_cli_get(n->c, &k, &data, &got);
	if (rc == -ENOENT)
		return 0;
	cr_assert_eq(rc, 0, "get %s on %s: %s", k.str, n->name, kvn_cli_error(n->c));
	void *v = malloc(len);
	cluster_value(v, len, tag, i);
	int ok = got == len && !memcmp(v, data, len) ? 1 : -1;
	free(v);
	free(data);
	return ok;
}

/* The node's stats, parsed; NULL when it cannot be asked. */
cJSON *
cnode_stat_json(struct cnode *n)
{
	char *json = NULL, err[256];
	struct kvn_cli_conn *c; /* its own connection: n->c may have idled out during a long test */
	if (kvn_cli_connect(n->sock, 10000, &c, err, sizeof(err)) < 0)
		return NULL;
	int rc = kvn_cli_stat(c, &json);
	kvn_cli_close(c);
	cJSON *root = rc < 0 ? NULL : cJSON_Parse(json);
	free(json);
	return root;
}

long long
cnode_tier_stat(struct cnode *n, const char *tier, const char *field)
{
	long long v = -1;
	cJSON *root = cnode_stat_json(n), *t;
	cJSON_ArrayForEach(t, cJSON_GetObjectItem(root, "backends"))
	{
		cJSON *nm = cJSON_GetObjectItem(t, "name"), *f = cJSON_GetObjectItem(t, field);
		if (cJSON_IsString(nm) && !strcmp(nm->valuestring, tier) && cJSON_IsNumber(f))
			v = (long long)f->valuedouble;
	}
	cJSON_Delete(root);
	return v;
}

long long
cnode_stat(struct cnode *n, const char *section, const char *field)
{
	cJSON *root = cnode_stat_json(n);
	cJSON *f = cJSON_GetObjectItem(cJSON_GetObjectItem(root, section), field);
	long long v = cJSON_IsNumber(f) ? (long long)f->valuedouble : -1;
	cJSON_Delete(root);
	return v;
}
