/* Test helper: struct kvn_backend_env from an (option, value) table; see backend_env.h. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "tests/helpers/backend_env.h"

#define LAST_LOG_MAX 1024

struct test_env {
	struct kvn_tier_env tenv; /* first: the env pointer is the struct's */
	char *name;
	char *config_dir;
	struct backend_opt *opts;
	size_t nopts;
	pthread_mutex_t lock;
	char last[KVN_LOG_DEBUG + 1][LAST_LOG_MAX]; /* last line at or above each level */
};

static const char *
get_opt(const struct kvn_backend_env *env, const char *opt)
{
	const struct test_env *te = (const struct test_env *)env;
	for (size_t i = 0; i < te->nopts; i++)
		if (!strcmp(te->opts[i].opt, opt))
			return te->opts[i].value;
	return NULL;
}

static void
env_log(const struct kvn_backend_env *env, int level, const char *fmt, ...)
{
	struct test_env *te = (struct test_env *)env;
	char line[LAST_LOG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	kvn_log(level, env->name, "%s", line);
	pthread_mutex_lock(&te->lock);
	for (int l = level < 0 ? 0 : level; l <= KVN_LOG_DEBUG; l++)
		memcpy(te->last[l], line, sizeof(line));
	pthread_mutex_unlock(&te->lock);
}

struct kvn_backend_env *
backend_env_new(const char *name, const struct backend_opt *opts, struct kvn_pool *pool)
{
	struct test_env *te = calloc(1, sizeof(*te));
	if (!te)
		return NULL;
	size_t n = 0;
	while (opts && opts[n].opt)
		n++;
	te->name = strdup(name);
	te->config_dir = strdup(".");
	te->opts = calloc(n ? n : 1, sizeof(*te->opts));
	if (!te->name || !te->config_dir || !te->opts)
		goto fail;
	for (; te->nopts < n; te->nopts++) {
		const struct backend_opt *o = &opts[te->nopts];
		te->opts[te->nopts].opt = strdup(o->opt);
		te->opts[te->nopts].value = o->value ? strdup(o->value) : NULL;
		if (!te->opts[te->nopts].opt || (o->value && !te->opts[te->nopts].value)) {
			te->nopts++;
			goto fail;
		}
	}
	pthread_mutex_init(&te->lock, NULL);
	te->tenv.env = (struct kvn_backend_env){
	    KVN_BACKEND_ENV_INIT,
	    .name = te->name,
	    .config_dir = te->config_dir,
	    .get_opt = get_opt,
	    .log = env_log,
	    .node_priv = te,
	};
	te->tenv.pool = pool;
	return &te->tenv.env;
fail:
	for (size_t i = 0; i < te->nopts; i++) {
		free((char *)te->opts[i].opt);
		free((char *)te->opts[i].value);
	}
	free(te->opts);
	free(te->name);
	free(te->config_dir);
	free(te);
	return NULL;
}

void
backend_env_set_gpu(struct kvn_backend_env *env, const struct kvn_gpu_region *rg)
{
	((struct test_env *)env)->tenv.gpu = rg;
}

int
backend_env_set_config_dir(struct kvn_backend_env *env, const char *dir)
{
	struct test_env *te = (struct test_env *)env;
	char *d = strdup(dir);
	if (!d)
		return -1;
	free(te->config_dir);
	te->config_dir = d;
	env->config_dir = d;
	return 0;
}

const char *
backend_env_last_log(const struct kvn_backend_env *env, int level)
{
	const struct test_env *te = (const struct test_env *)env;
	if (level < 0)
		level = 0;
	if (level > KVN_LOG_DEBUG)
		level = KVN_LOG_DEBUG;
	return te->last[level];
}

void
backend_env_free(struct kvn_backend_env *env)
{
	if (!env)
		return;
	struct test_env *te = (struct test_env *)env;
	for (size_t i = 0; i < te->nopts; i++) {
		free((char *)te->opts[i].opt);
		free((char *)te->opts[i].value);
	}
	pthread_mutex_destroy(&te->lock);
	free(te->opts);
	free(te->name);
	free(te->config_dir);
	free(te);
}
