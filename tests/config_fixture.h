/* Shared by the config tests: a temporary directory with kvnode.yaml, a clean environment,
 * stderr capture and the checks of "refused with file:line and key" and of the defaults. */
#ifndef KVN_TESTS_CONFIG_FIXTURE_H
#define KVN_TESTS_CONFIG_FIXTURE_H

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "node/engine/config.h"

static char tmpdir[PATH_MAX];	    /* realpath of a mkdtemp directory */
static char cfgpath[PATH_MAX + 64]; /* tmpdir/kvnode.yaml, or another config path */
static char err[1024];

static inline void
assert_contains(const char *hay, const char *needle)
{
	cr_assert(hay && strstr(hay, needle), "expected \"%s\" in: %s", needle,
		  hay ? hay : "(null)");
}

static inline void
assert_lacks(const char *hay, const char *needle)
{
	cr_assert(!strstr(hay, needle), "did not expect \"%s\" in: %s", needle, hay);
}

/* Tests must not see the caller's KVNODE_* / LMCACHE_* settings. */
static inline void
clear_env(void)
{
	char *names[512];
	size_t n = 0;
	for (char **e = environ; *e && n < 512; e++)
		if (!strncmp(*e, "KVNODE_", 7) || !strncmp(*e, "LMCACHE_", 8))
			names[n++] = strndup(*e, strcspn(*e, "="));
	for (size_t i = 0; i < n; i++) {
		unsetenv(names[i]);
		free(names[i]);
	}
}

static inline void
setup(void)
{
	char tmpl[] = "/tmp/kvn-config-XXXXXX";
	cr_assert(mkdtemp(tmpl));
	cr_assert(realpath(tmpl, tmpdir));
	snprintf(cfgpath, sizeof(cfgpath), "%s/kvnode.yaml", tmpdir);
	clear_env();
	err[0] = '\0';
}

static inline int
rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	return remove(path);
}

static inline void
teardown(void)
{
	nftw(tmpdir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

static inline void
write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	cr_assert(f, "cannot write %s", path);
	fputs(text, f);
	fclose(f);
}

/* Writes text as tmpdir/kvnode.yaml and loads it (environment included). */
static inline int
load(const char *text, struct kvn_config **cfg)
{
	write_file(cfgpath, text);
	err[0] = '\0';
	return kvn_config_load(cfgpath, cfg, err, sizeof(err));
}

static inline struct kvn_config *
load_ok(const char *text)
{
	struct kvn_config *cfg = NULL;
	int rc = load(text, &cfg);
	cr_assert_eq(rc, 0, "load failed (%d): %s", rc, err);
	cr_assert(cfg);
	return cfg;
}

/* The file must be refused with a message naming "kvnode.yaml:<line>: <key>" and want. */
static inline void
expect_bad(const char *text, int line, const char *key, const char *want)
{
	struct kvn_config *cfg = (struct kvn_config *)1;
	char where[128];
	cr_assert_eq(load(text, &cfg), -EINVAL, "accepted: %s", text);
	cr_assert_null(cfg);
	if (key)
		snprintf(where, sizeof(where), "kvnode.yaml:%d: %s", line, key);
	else
		snprintf(where, sizeof(where), "kvnode.yaml:%d:", line);
	assert_contains(err, where);
	if (want)
		assert_contains(err, want);
}

/* Everything written to fd 2 (kvn_log) while fn runs. */
struct capture {
	int saved, fd;
	char path[PATH_MAX + 16];
};

static inline void
capture_begin(struct capture *c)
{
	snprintf(c->path, sizeof(c->path), "%s/stderr.txt", tmpdir);
	c->fd = open(c->path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	cr_assert(c->fd >= 0);
	c->saved = dup(2);
	dup2(c->fd, 2);
}

static inline char *
capture_end(struct capture *c)
{
	static char text[16384];
	dup2(c->saved, 2);
	close(c->saved);
	ssize_t n = pread(c->fd, text, sizeof(text) - 1, 0);
	close(c->fd);
	text[n > 0 ? n : 0] = '\0';
	return text;
}

static inline const char *
extra_origin(const struct kvn_config *cfg, const char *key)
{
	for (size_t i = 0; i < cfg->n_extra; i++)
		if (!strcmp(cfg->extra[i].key, key))
			return cfg->extra[i].origin;
	return NULL;
}

static inline void
expect_defaults(const struct kvn_config *cfg)
{
	char host[256] = "";
	gethostname(host, sizeof(host) - 1);
	char *sock = kvn_config_default_socket();
	cr_assert_eq(cfg->chunk_size, 256);
	cr_assert(cfg->local_cpu);
	cr_assert_eq(cfg->max_local_cpu_size, 5ull << 30);
	cr_assert_null(cfg->local_disk);
	cr_assert_eq(cfg->max_local_disk_size, 0);
	cr_assert_null(cfg->remote_url);
	cr_assert_str_eq(cfg->remote_serde, "naive");
	cr_assert_eq(cfg->n_external_backends, 0);
	cr_assert_eq(cfg->n_extra, 0);
	cr_assert_eq(cfg->n_plugin_locations, 0);
	cr_assert_str_eq(cfg->node_name, host);
	cr_assert_str_eq(cfg->listen, "127.0.0.1:0");
	cr_assert_null(cfg->scheduler_url);
	cr_assert_str_eq(cfg->transport, "auto");
	cr_assert_null(cfg->rdma_device);
	cr_assert_eq(cfg->gid_index, -1);
	cr_assert_str_eq(cfg->gpu, "false");
	cr_assert_eq(cfg->heartbeat_ms, 500);
	cr_assert_null(cfg->auth_token);
	cr_assert_null(cfg->metrics_listen);
	cr_assert_eq(cfg->log_level, KVN_LOG_INFO);
	cr_assert_str_eq(cfg->socket_path, sock);
	cr_assert(cfg->hugepages);
	cr_assert(cfg->promote_to_cpu);
	cr_assert_eq(cfg->put_queue_depth, 64);
	cr_assert_eq(cfg->put_threads, 2);
	free(sock);
}

#endif
