/* Test helper for the membership service (see sched_env.h). */
#include <criterion/criterion.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/netaddr.h"
#include "node/scheduler/scheduler.h"
#include "core/auth.h"
#include "tests/helpers/sched_env.h"

char sched_err[1024];

uint64_t
sched_mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

struct kvn_digest
sched_key_digest(uint64_t i, uint64_t salt)
{
	return (struct kvn_digest){.lo = sched_mix(i ^ (salt << 40)), .hi = sched_mix(~i + salt)};
}

struct kvn_loc
sched_key_loc(uint64_t i)
{
	return (struct kvn_loc){.rkey = (uint32_t)sched_mix(i) | 1,
				.addr = 0x10000 + i * 4096,
				.len = 64 + (i % 1000) + 1,
				.generation = 2 * (i % 50 + 1)};
}

/* ------------------------------------------------------------------------------------------
 * A scheduler child process
 * ------------------------------------------------------------------------------------------ */

struct out_ctx {
	const char *path;
	char *addr;
};

static bool
sched_ready(void *arg)
{
	struct out_ctx *c = arg;
	char *text = proc_read_file(c->path, NULL);
	const char *p = text ? strstr(text, "scheduler on ") : NULL;
	bool ok = p && strchr(p, '\n');
	if (ok)
		sscanf(p + strlen("scheduler on "), "%63s", c->addr);
	free(text);
	return ok;
}

void
sched_start(struct sched *s, const char *listen, const char *token)
{
	sched_start_env(s, listen, token, NULL);
}

void
sched_start_env(struct sched *s, const char *listen, const char *token,
		const char *const *extra_env)
{
	if (!s->dir[0]) {
		cr_assert_eq(access(KVNODE, X_OK), 0, "%s is not built", KVNODE);
		cr_assert_eq(proc_mkdtemp("sched", s->dir, sizeof(s->dir)), 0);
	}
	snprintf(s->out, sizeof(s->out), "%s/sched.out", s->dir);
	char err[300], tok[128];
	snprintf(err, sizeof(err), "%s/sched.err", s->dir);
	snprintf(tok, sizeof(tok), token ? "KVNODE_AUTH_TOKEN=%s" : "KVNODE_AUTH_TOKEN",
		 token ? token : "");
	const char *env[24] = {"KVNODE_CONFIG_FILE", "LMCACHE_CONFIG_FILE", "KVNODE_SCHEDULER_URL",
			       "KVNODE_HEARTBEAT_MS=100", tok};
	size_t n = 5;
	for (size_t i = 0; extra_env && extra_env[i]; i++) {
		/* One that sets a variable above replaces it (the child sees the first). */
		size_t nl = strcspn(extra_env[i], "=");
		size_t k = 0;
		while (k < n && !(strncmp(env[k], extra_env[i], nl) == 0 &&
				  (env[k][nl] == '=' || env[k][nl] == '\0')))
			k++;
		cr_assert_lt(k, sizeof(env) / sizeof(env[0]) - 1, "too many extra variables");
		env[k] = extra_env[i];
		n += k == n;
	}
	const char *argv[] = {KVNODE, "scheduler", "--listen", listen, "-v", NULL};
	struct proc_opts po = {.stdout_path = s->out, .stderr_path = err, .env = env};
	memset(&s->p, 0, sizeof(s->p));
	cr_assert_eq(proc_spawn(&s->p, argv, &po), 0);
	struct out_ctx c = {s->out, s->addr};
	bool up = proc_wait_for(sched_ready, &c, DEADLINE);
	if (!up) {
		char *e = proc_read_file(err, NULL);
		cr_assert_fail("kvnode scheduler did not come up: %s", e ? e : "");
	}
}

void
sched_stop(struct sched *s)
{
	if (s->p.pid)
		proc_stop(&s->p, SIGTERM, 10000);
	if (s->dir[0])
		proc_rm_tree(s->dir);
}

static void
seen_member(void *ctx, const struct kvn_member_info *mi)
{
	struct seen *s = ctx;
	if (mi->worker_id >= 16)
		return;
	pthread_mutex_lock(&s->mu);
	if (mi->up)
		s->up[mi->worker_id]++;
	else
		s->down[mi->worker_id]++;
	snprintf(s->name[mi->worker_id], sizeof(s->name[0]), "%s", mi->name);
	if (mi->regions_len <= 32) {
		memcpy(s->regions[mi->worker_id], mi->regions, mi->regions_len);
		s->regions_len[mi->worker_id] = mi->regions_len;
	}
	pthread_mutex_unlock(&s->mu);
}

static void
seen_evicted(void *ctx, uint32_t worker_id, const struct kvn_digest *d, size_t n)
{
	(void)worker_id;
	(void)d;
	struct seen *s = ctx;
	pthread_mutex_lock(&s->mu);
	s->evicted += n;
	pthread_mutex_unlock(&s->mu);
}

static void
seen_joined(void *ctx, struct kvn_membership *m, uint32_t id, uint32_t count, uint64_t epoch)
{
	(void)id;
	(void)count;
	(void)epoch;
	struct seen *s = ctx;
	pthread_mutex_lock(&s->mu);
	s->joins++;
	pthread_mutex_unlock(&s->mu);
	if (s->nindex)
		kvn_membership_publish(m, s->index, s->nindex);
}

int
sched_seen_get(struct seen *s, int *field)
{
	pthread_mutex_lock(&s->mu);
	int v = *field;
	pthread_mutex_unlock(&s->mu);
	return v;
}

int
sched_node_start(const char *addr, const char *name, const char *token, struct seen *s,
		 struct kvn_membership **m)
{
	static const char regions[] = "regions-of-";
	char blob[32];
	snprintf(blob, sizeof(blob), "%s%s", regions, name);
	/* No token given: the one a scheduler without auth_token uses, this host's generated
	 * file (in the tests' state directory, see proc_spawn). */
	char *generated = token ? NULL : sched_host_token();
	if (generated)
		token = generated;
	struct kvn_membership_opts o = {.scheduler = addr,
					.name = name,
					.data_addr = "127.0.0.1:9",
					.transport = "tcp",
					.regions = blob,
					.regions_len = strlen(blob),
					.capacity = 1 << 30,
					.auth_token = token,
					.heartbeat_ms = HB_MS,
					.timeout_ms = 10000,
					.want_evicts = true};
	struct kvn_membership_cbs cb = {
	    .ctx = s, .joined = seen_joined, .member = seen_member, .evicted = seen_evicted};
	sched_err[0] = '\0';
	int rc = kvn_membership_start(&o, s ? &cb : NULL, m, sched_err, sizeof(sched_err));
	free(generated);
	return rc;
}

struct seen *
sched_seen_new(void)
{
	struct seen *s = calloc(1, sizeof(*s));
	pthread_mutex_init(&s->mu, NULL);
	return s;
}

struct kvn_cf_pub *
sched_make_index(size_t n, uint64_t salt)
{
	struct kvn_cf_pub *p = calloc(n, sizeof(*p));
	for (size_t i = 0; i < n; i++) {
		p[i].op = KVN_CF_ADMIT;
		p[i].digest = sched_key_digest(i, salt);
		p[i].loc = sched_key_loc(i);
	}
	return p;
}

void
sched_sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
	nanosleep(&ts, NULL);
}

/* Lookup of keys 0..n-1 of salt: how many have a location of worker (with the right data). */
size_t
sched_found_on(struct kvn_membership *m, size_t n, uint64_t salt, uint32_t worker)
{
	struct kvn_digest *k = malloc(n * sizeof(*k));
	uint32_t *nloc = malloc(n * sizeof(*nloc));
	struct kvn_loc *locs = malloc(n * 2 * sizeof(*locs));
	cr_assert(n && k && nloc && locs);
	for (size_t i = 0; i < n; i++)
		k[i] = sched_key_digest(i, salt);
	size_t hits = 0;
	if (kvn_membership_lookup(m, k, n, 2, nloc, locs, 10000) == 0)
		for (size_t i = 0; i < n; i++)
			for (uint32_t j = 0; j < nloc[i]; j++) {
				const struct kvn_loc *l = &locs[i * 2 + j], want = sched_key_loc(i);
				if (l->worker_id != worker)
					continue;
				cr_assert(
				    l->addr == want.addr && l->len == want.len &&
					l->rkey == want.rkey && l->generation == want.generation,
				    "key %zu: the location differs from the one published", i);
				hits++;
			}
	free(k);
	free(nloc);
	free(locs);
	return hits;
}

int
sched_raw_connect(const char *addr)
{
	char host[KVN_HOST_MAX];
	uint16_t port;
	cr_assert_eq(kvn_hostport_parse(addr, host, &port, sched_err, sizeof(sched_err)), 0);
	int fd = kvn_tcp_connect(host, port, 5000, sched_err, sizeof(sched_err));
	cr_assert_geq(fd, 0, "%s", sched_err);
	struct timeval tv = {.tv_sec = 20};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	return fd;
}

/* Reads until EOF; returns whether the scheduler closed (and not the timeout), and whether it
 * sent an ERROR frame first. */
bool
sched_closed(int fd, bool *sent_error)
{
	uint8_t buf[4096];
	size_t n = 0;
	for (;;) {
		ssize_t r = recv(fd, buf + n, sizeof(buf) - n, 0);
		if (r == 0)
			break;
		if (r < 0) {
			close(fd);
			return errno == ECONNRESET;
		}
		n += (size_t)r;
		if (n == sizeof(buf))
			n = 0;
	}
	struct kvn_cf_hdr h;
	*sent_error = n >= KVN_CF_HDR_SIZE && kvn_cf_hdr_decode(buf, &h, NULL, 0) == 0 &&
		      h.type == KVN_CF_ERROR;
	close(fd);
	return true;
}

void
sched_send_hdr(int fd, uint8_t type, uint32_t len)
{
	struct kvn_cf_hdr h = {.version = KVN_CF_VERSION, .type = type, .len = len};
	uint8_t w[KVN_CF_HDR_SIZE];
	kvn_cf_hdr_encode(&h, w);
	cr_assert_eq(send(fd, w, sizeof(w), MSG_NOSIGNAL), (ssize_t)sizeof(w));
}

void *
sched_run(void *arg)
{
	kvn_scheduler_run(arg);
	return NULL;
}

char *
sched_host_token(void)
{
	char path[PATH_MAX], *t = NULL;
	setenv("KVNODE_STATE_DIR", KVN_BINARY_DIR "/test-state", 0);
	cr_assert_eq(kvn_auth_default_file(path, sizeof(path)), 0);
	cr_assert_eq(kvn_auth_token_file(path, true, &t, sched_err, sizeof(sched_err)), 0, "%s",
		     sched_err);
	return t;
}

void
sched_raw_auth(int fd, const char *token, char proof[KVN_CF_PROOF_HEX])
{
	char *t = token ? NULL : sched_host_token();
	struct kvn_auth a;
	kvn_auth_init(&a, token ? token : t);
	free(t);
	struct kvn_cf_rx rx = {0};
	int rc = kvn_cf_client_auth(fd, &rx, &a, DEADLINE, proof, sched_err, sizeof(sched_err));
	cr_assert_eq(rc, 0, "auth set-up with the scheduler: %s", sched_err);
	cr_assert_eq(rx.len, 0, "the scheduler sent more than its CHALLENGE");
	kvn_cf_rx_free(&rx);
}

void
sched_json_with_proof(const char *json, const char *proof, char *out, size_t cap)
{
	cr_assert_eq(json[0], '{');
	const char *rest = json + 1;
	while (*rest == ' ')
		rest++;
	int n = snprintf(out, cap, "{\"proof\":\"%s\"%s%s", proof, *rest == '}' ? "" : ",", rest);
	cr_assert(n > 0 && (size_t)n < cap, "JSON too long for the buffer");
}
