/* kvnode-bench remote: put/get through kvnode's redis connector (LMCache layout, integrity tag
 * computed on put and checked on get, as the remote tier does) against raw hiredis SET/GET of
 * the same sizes on one connection each, in alternating trials, against a redis-server the
 * bench starts on 127.0.0.1 (or --url). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "bench/bench.h"
#include "connectors/registry.h"
#include "node/engine/config.h"
#include "core/log.h"
#include "core/url.h"
#include "connectors/remote_value.h"
#include "core/netaddr.h"

#define WSET_MAX (128ull << 20) /* per key set: the store holds two of them */

extern char **environ;

enum op { OP_PUT, OP_GET, OP_RAW_SET, OP_RAW_GET, OP_PEER };

struct ctx {
	const struct kvn_connector_ops *ops;
	struct kvn_connector *conn;
	redisContext *raw;
	struct kvn_key *keys;
	size_t nkeys;
	size_t size;
	struct kvn_buf *val;
	struct bench_peer_fetch *peer; /* --peer */
	/* The baseline's commands, formatted once per size as redis-benchmark does: the key is
	 * patched in place, the value is never copied again. */
	char *raw_set, *raw_get;
	size_t raw_set_len, raw_get_len, raw_set_key, raw_get_key;
};

/* --------------------------------------------------------------------------------------------
 * A private redis-server
 * -------------------------------------------------------------------------------------------- */

struct server {
	pid_t pid;
	char dir[64];
	int port;
};

static int
server_start(struct server *s)
{
	char port[16], log[128];
	snprintf(s->dir, sizeof(s->dir), "/tmp/kvn-bench-redis-XXXXXX");
	if (!mkdtemp(s->dir))
		return -errno;
	s->port = kvn_tcp_free_port();
	snprintf(port, sizeof(port), "%d", s->port);
	snprintf(log, sizeof(log), "%s/redis.log", s->dir);
	char *argv[] = {"redis-server",
			"--port",
			port,
			"--bind",
			"127.0.0.1",
			"--dir",
			s->dir,
			"--save",
			"",
			"--appendonly",
			"no",
			"--protected-mode",
			"no",
			"--logfile",
			log,
			NULL};
	int rc = posix_spawnp(&s->pid, "redis-server", NULL, NULL, argv, environ);
	if (rc) {
		fprintf(stderr,
			"kvnode-bench: cannot start redis-server: %s (install it with "
			"scripts/install-deps, or pass --url redis://HOST:PORT)\n",
			strerror(rc));
		s->pid = 0;
		return -rc;
	}
	for (int i = 0; i < 300; i++) { /* up to 30 s on a loaded machine */
		struct timeval tv = {1, 0};
		redisContext *c = redisConnectWithTimeout("127.0.0.1", s->port, tv);
		redisReply *r = c && !c->err ? redisCommand(c, "PING") : NULL;
		bool ok = r && r->type == REDIS_REPLY_STATUS;
		if (r)
			freeReplyObject(r);
		if (c)
			redisFree(c);
		if (ok)
			return 0;
		if (waitpid(s->pid, NULL, WNOHANG) == s->pid) {
			s->pid = 0;
			break;
		}
		usleep(100 * 1000);
	}
	fprintf(stderr, "kvnode-bench: redis-server on 127.0.0.1:%d did not come up (see %s)\n",
		s->port, log);
	return -ETIMEDOUT;
}

static void
server_stop(struct server *s)
{
	if (s->pid > 0) {
		kill(s->pid, SIGTERM);
		waitpid(s->pid, NULL, 0);
	}
	if (s->dir[0]) {
		char log[128];
		snprintf(log, sizeof(log), "%s/redis.log", s->dir);
		unlink(log);
		rmdir(s->dir);
	}
}

/* --------------------------------------------------------------------------------------------
 * Measuring
 * -------------------------------------------------------------------------------------------- */

/* Sends a pre-formatted command (a write loop from an offset: hiredis's own output buffer
 * would move the unsent rest down after each partial write) and reads its reply with hiredis.
 */
static redisReply *
raw_command(redisContext *x, const char *cmd, size_t len)
{
	while (len > 0) {
		ssize_t w = write(x->fd, cmd, len);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return NULL;
		cmd += w;
		len -= (size_t)w;
	}
	redisReply *r;
	return redisGetReply(x, (void **)&r) == REDIS_OK ? r : NULL;
}

static int
one(struct ctx *c, enum op op, size_t i)
{
	const struct kvn_key *k = &c->keys[i];
	struct kvn_remote_value v;
	redisReply *r = NULL;
	int rc = 0;
	switch (op) {
	case OP_PUT:
		/* What the remote tier does for a put: header + tag, then the connector. */
		if ((rc = kvn_remote_value_for_put(&v, k, c->val, c->ops)) == 0)
			rc = c->ops->put(c->conn, k, &v);
		break;
	case OP_GET:
		rc = c->ops->get(c->conn, k, &v);
		if (rc == 0) {
			rc = kvn_remote_value_check_key(&v, k, NULL, 0);
			if (rc == 0 && v.payload->len != c->size)
				rc = -EBADMSG;
			kvn_remote_value_release(&v);
		}
		break;
	case OP_RAW_SET:
		memcpy(c->raw_set + c->raw_set_key, k->str, k->len);
		r = raw_command(c->raw, c->raw_set, c->raw_set_len);
		rc = r && r->type == REDIS_REPLY_STATUS ? 0 : -EIO;
		break;
	case OP_RAW_GET:
		memcpy(c->raw_get + c->raw_get_key, k->str, k->len);
		r = raw_command(c->raw, c->raw_get, c->raw_get_len);
		rc = r && r->type == REDIS_REPLY_STRING && r->len == c->size ? 0 : -EIO;
		break;
	case OP_PEER:
		rc = bench_peer_fetch_one(c->peer, i, c->size, true);
		break;
	}
	if (r)
		freeReplyObject(r);
	if (rc < 0)
		fprintf(stderr, "kvnode-bench: %s of key %s (%zu bytes) failed: %s\n",
			op == OP_PUT	   ? "connector put"
			: op == OP_GET	   ? "connector get"
			: op == OP_RAW_SET ? "hiredis SET"
			: op == OP_RAW_GET ? "hiredis GET"
					   : "peer fetch",
			k->str, c->size, kvn_strerror(rc));
	return rc;
}

/* Formats "SET raw:<key> <value>" and "GET raw:<key>" for key 0; every key of one size has the
 * same length, so the others are written over it. */
static int
raw_format(struct ctx *c)
{
	const struct kvn_key *k = &c->keys[0];
	int n = redisFormatCommand(&c->raw_set, "SET raw:%b %b", k->str, (size_t)k->len,
				   c->val->data, c->val->len);
	int m = redisFormatCommand(&c->raw_get, "GET raw:%b", k->str, (size_t)k->len);
	if (n < 0 || m < 0)
		return -ENOMEM;
	c->raw_set_len = (size_t)n, c->raw_get_len = (size_t)m;
	/* The key is the first "raw:" in either command (the value comes after it). */
	c->raw_set_key = (size_t)(strstr(c->raw_set, "raw:") - c->raw_set) + 4;
	c->raw_get_key = (size_t)(strstr(c->raw_get, "raw:") - c->raw_get) + 4;
	return 0;
}

static int
pass(void *arg, int op_)
{
	struct ctx *c = arg;
	enum op op = (enum op)op_;
	for (size_t i = 0; i < c->nkeys; i++) {
		int rc = one(c, op, i);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int
row(const struct bench_opts *o, struct ctx *c, enum op op, enum op base_op, const char *name,
    const char *base_name)
{
	struct bench_trial mine[99], base[99];
	/* Passes of the two sides alternate (bench_measure_pair), and which side goes first
	 * alternates from trial to trial: load elsewhere on the machine, or what the store does
	 * after the first writes of a size (growing its memory), is not paid by one side only.
	 * Each side starts with an untimed pass. */
	for (int i = 0; i < o->trials; i++) {
		int rc;
		if (!o->baseline)
			rc = bench_measure(pass, c, op, c->nkeys, c->size, o->duration_s, &mine[i]);
		else if (i % 2)
			rc = bench_measure_pair(pass, c, base_op, op, c->nkeys, c->size,
						o->duration_s, &base[i], &mine[i]);
		else
			rc = bench_measure_pair(pass, c, op, base_op, c->nkeys, c->size,
						o->duration_s, &mine[i], &base[i]);
		if (rc < 0)
			return rc;
	}
	/* With a baseline, the reported trial is the one of median ratio, both sides from that
	 * same trial: they were measured side by side. */
	int mid = o->baseline ? bench_median_ratio(mine, base, o->trials) : 0;
	const struct bench_trial *m = o->baseline ? &mine[mid] : bench_median(mine, o->trials);
	struct bench_row r = {
	    .mode = "remote",
	    .op = name,
	    .bytes = c->size,
	    .iterations = m->iterations,
	    .gbps = m->gbps,
	    .peak_gbps = m->peak_gbps,
	    .baseline_gbps = o->baseline ? base[mid].gbps : 0,
	    .baseline_name = base_name,
	};
	bench_table_row(o, &r);
	return 0;
}

static int
one_size(const struct bench_opts *o, struct ctx *c, size_t size, uint64_t wset)
{
	c->size = size;
	c->nkeys = wset / size ? wset / size : 1;
	c->keys = calloc(c->nkeys, sizeof(*c->keys));
	c->val = kvn_buf_new(size);
	int rc = -ENOMEM;
	if (!c->keys || !c->val)
		goto out;
	for (size_t i = 0; i < size; i++)
		((unsigned char *)c->val->data)[i] = (unsigned char)(i * 31 + 7);
	for (size_t i = 0; i < c->nkeys; i++) {
		char text[128];
		snprintf(text, sizeof(text), "bench@llama-3-8b@1@0@%zx%08zx@bfloat16", size, i);
		kvn_key_from_str(&c->keys[i], text);
	}
	if ((rc = raw_format(c)) < 0 ||
	    (rc = row(o, c, OP_PUT, OP_RAW_SET, "put", "hiredis SET")) < 0 ||
	    (rc = row(o, c, OP_GET, OP_RAW_GET, "get", "hiredis GET")) < 0)
		goto out;
	if (c->peer && ((rc = bench_peer_fetch_fill(c->peer, c->keys, c->nkeys, c->val)) < 0 ||
			(rc = row(o, c, OP_PEER, OP_RAW_GET, "peer", "hiredis GET")) < 0))
		goto out;
	/* Leave the store as we found it. */
	for (size_t i = 0; i < c->nkeys; i++) {
		c->ops->remove(c->conn, &c->keys[i]);
		redisReply *r =
		    redisCommand(c->raw, "DEL raw:%b", c->keys[i].str, (size_t)c->keys[i].len);
		if (r)
			freeReplyObject(r);
	}
out:
	if (c->peer)
		bench_peer_fetch_clear(c->peer);
	redisFreeCommand(c->raw_set);
	redisFreeCommand(c->raw_get);
	c->raw_set = c->raw_get = NULL;
	kvn_buf_unref(c->val);
	free(c->keys);
	return rc;
}


/* host, port, password and db of a redis:// URL, for the baseline's own connection. */
static int
raw_connect(const char *url, int default_port, redisContext **out)
{
	char host[256] = "127.0.0.1", pass[256] = "";
	int port = default_port, db = 0;
	const char *p = strstr(url, "://") + 3, *at = strchr(p, '@');
	if (at) {
		const char *colon = memchr(p, ':', (size_t)(at - p));
		snprintf(pass, sizeof(pass), "%.*s", colon ? (int)(at - colon - 1) : (int)(at - p),
			 colon ? colon + 1 : p);
		p = at + 1;
	}
	int n = sscanf(p, "%255[^:/?]:%d/%d", host, &port, &db);
	if (n < 2)
		port = 6379;
	struct timeval tv = {60, 0};
	redisContext *c = redisConnectWithTimeout(host, port, tv);
	if (!c || c->err) {
		fprintf(stderr, "kvnode-bench: baseline connection to %s:%d failed: %s\n", host,
			port, c ? c->errstr : "out of memory");
		if (c)
			redisFree(c);
		return -ECONNREFUSED;
	}
	redisSetTimeout(c, tv);
	redisReply *r = pass[0] ? redisCommand(c, "AUTH %s", pass) : NULL;
	if (r)
		freeReplyObject(r);
	r = db ? redisCommand(c, "SELECT %d", db) : NULL;
	if (r)
		freeReplyObject(r);
	*out = c;
	return 0;
}

int
bench_remote(const struct bench_opts *o)
{
	struct server srv = {0};
	char url[512], err[1024];
	int rc;
	if (o->url) {
		snprintf(url, sizeof(url), "%s", o->url);
	} else {
		if ((rc = server_start(&srv)) < 0) {
			server_stop(&srv);
			return rc;
		}
		snprintf(url, sizeof(url), "redis://127.0.0.1:%d", srv.port);
	}
	struct ctx c = {0};
	char *shown = kvn_url_redact(url);
	struct kvn_connector_env env;
	kvn_connector_env_plain(&env, url, shown ? shown : "(url)", 60000);
	if ((rc = kvn_connector_find(url, &c.ops, err, sizeof(err))) < 0 ||
	    strcmp(c.ops->scheme, "redis")) {
		fprintf(stderr, "kvnode-bench: --url %s: %s\n", env.url_redacted,
			rc < 0 ? err : "remote mode measures the redis connector: give redis://");
		rc = rc < 0 ? rc : -EINVAL;
		goto out;
	}
	if ((rc = c.ops->connect(&env, &c.conn)) < 0) {
		fprintf(stderr, "kvnode-bench: cannot connect to %s: %s\n", env.url_redacted,
			kvn_strerror(rc));
		goto out;
	}
	/* The baseline: a plain hiredis connection to the same server (AUTH and SELECT as the
	 * URL says), nothing of kvnode's in its path. */
	if ((rc = raw_connect(url, srv.port, &c.raw)) < 0)
		goto out;
	uint64_t wset = o->working_set < WSET_MAX ? o->working_set : WSET_MAX;
	size_t max_size = 0;
	for (size_t i = 0; i < o->nsizes; i++)
		max_size = o->sizes[i] > max_size ? o->sizes[i] : max_size;
	if (o->peer && (rc = bench_peer_fetch_open(o, max_size, wset, &c.peer)) < 0)
		goto out;
	char setup[1024], peer[384] = "";
	if (c.peer)
		snprintf(peer, sizeof(peer),
			 "\n peer rows: fetch over %s, from a pool in this process",
			 bench_peer_fetch_desc(c.peer));
	snprintf(setup, sizeof(setup),
		 "store: %s%s   working set: %llu MiB per size   trials: %d x %.2f s\n "
		 "baseline: %s%s",
		 env.url_redacted, o->url ? "" : " (redis-server started by the bench)",
		 (unsigned long long)(wset >> 20), o->trials, o->duration_s,
		 o->baseline ? "raw SET/GET (redis-benchmark style), one connection, one request "
			       "at a time"
			     : "none",
		 peer);
	bench_table_header(o, "kvnode-bench remote: kvnode's redis connector (LMCache layout)",
			   setup);
	for (size_t i = 0; i < o->nsizes && rc == 0; i++)
		rc = one_size(o, &c, o->sizes[i], wset);
	bench_table_footer(o);
	if (o->json)
		bench_json_flush();
out:
	bench_peer_fetch_close(c.peer);
	if (c.raw)
		redisFree(c.raw);
	if (c.conn)
		c.ops->close(c.conn);
	free(shown);
	server_stop(&srv);
	return rc;
}
