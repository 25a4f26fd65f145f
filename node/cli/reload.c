/* Config reload of `kvnode serve` (SIGHUP): the file is loaded the same way as at start, then
 * compared key by key with the running config. Only what is read at each use can change in
 * place; everything else (tier sizes, addresses, names) was baked into objects at start. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvnode/plugin.h"
#include "node/engine/config.h"
#include "node/engine/config_keys.h"
#include "core/log.h"
#include "node/cli/reload.h"

/* The log component: the role whose config this is. */
#define COMP (r->role ? r->role : "serve")

static bool
extra_equal(const struct kvn_config *a, const struct kvn_config *b)
{
	if (a->n_extra != b->n_extra)
		return false;
	for (size_t i = 0; i < a->n_extra; i++)
		if (strcmp(a->extra[i].key, b->extra[i].key) ||
		    strcmp(a->extra[i].value, b->extra[i].value))
			return false;
	return true;
}

static bool
key_equal(const struct kvn_config *a, const struct kvn_config *b, const char *key)
{
	if (!strcmp(key, "extra_config"))
		return extra_equal(a, b);
	char va[4096], vb[4096];
	int ra = kvn_config_value(a, key, va, sizeof(va));
	int rb = kvn_config_value(b, key, vb, sizeof(vb));
	if (ra < 0 || rb < 0)
		return ra == rb; /* both unset (or both too long to tell: taken as unchanged) */
	return !strcmp(va, vb);
}

static void
apply_log_level(struct kvn_reload *r, const struct kvn_config *next, const char *where)
{
	if (r->cli_log_level >= 0) {
		kvn_warn(COMP, "log_level changed (%s) but --log-level on the command line wins",
			 where);
		return;
	}
	r->running->log_level = next->log_level;
	kvn_log_set_level(next->log_level + r->verbose);
	char name[32];
	if (kvn_config_value(next, "log_level", name, sizeof(name)) < 0)
		name[0] = '\0';
	kvn_info(COMP, "log_level is now %s (%s)", name, where);
}

static int
apply_plugin_policy(struct kvn_reload *r, const struct kvn_config *next)
{
	char *restart = next->plugin_restart ? strdup(next->plugin_restart) : NULL;
	if (next->plugin_restart && !restart)
		return -ENOMEM;
	free(r->running->plugin_restart);
	r->running->plugin_restart = restart;
	r->running->plugin_stop_timeout_ms = next->plugin_stop_timeout_ms;
	kvn_plugins_set_policy(r->plugins, restart && !strcmp(restart, "on-failure"),
			       next->plugin_stop_timeout_ms);
	kvn_info(COMP, "plugins: plugin_restart %s, plugin_stop_timeout_ms %u now apply",
		 restart ? restart : "never", next->plugin_stop_timeout_ms);
	return 0;
}

/* "c.yaml:3", or "back to its default" when the file no longer sets key. */
static void
origin_of(const struct kvn_config *next, const char *key, char *where, size_t len)
{
	const char *origin = kvn_config_origin(next, key);
	snprintf(where, len, "%s",
		 origin && strcmp(origin, "default") ? origin : "back to its default");
}

/* Compares next with the running config and applies what can change in place. */
static int
apply(struct kvn_reload *r, struct kvn_config *next)
{
	char where[KVN_ORIGIN_MAX + 32];
	int rc, restart = 0, applied = 0;
	/* log_level first, so that a level this file raises already shows what follows. */
	if (!key_equal(r->running, next, "log_level")) {
		origin_of(next, "log_level", where, sizeof(where));
		apply_log_level(r, next, where);
		applied++;
	}
	bool plugins_changed = false;
	for (size_t ki = 0; ki < KVN_NKEYS; ki++) {
		const char *key = kvn_config_keys[ki].name;
		if (!strcmp(key, "log_level") || key_equal(r->running, next, key))
			continue;
		if (!strcmp(key, "plugin_restart") || !strcmp(key, "plugin_stop_timeout_ms")) {
			plugins_changed = true;
			continue;
		}
		origin_of(next, key, where, sizeof(where));
		kvn_warn(
		    COMP,
		    "%s changed: needs a restart (%s; the node keeps the old value until then)",
		    key, where);
		restart++;
	}
	if (plugins_changed) {
		if ((rc = apply_plugin_policy(r, next)) < 0)
			kvn_err(COMP, "SIGHUP: applying the plugin settings: %s", kvn_strerror(rc));
		else
			applied++;
	}
	kvn_info(COMP, "SIGHUP: re-read %s: %d change%s applied, %d need%s a restart",
		 next->path ? next->path : "built-in defaults", applied, applied == 1 ? "" : "s",
		 restart, restart == 1 ? "s" : "");
	return restart;
}

static int
load(struct kvn_reload *r, struct kvn_config **next)
{
	char err[1024];
	int rc = kvn_config_load(r->config_arg, next, err, sizeof(err));
	/* The running token came from a file: read it the same way, so that an unchanged file
	 * does not show as a changed auth_token. */
	if (!rc && r->running->auth_token_from_file &&
	    (rc = kvn_config_resolve_token(*next, false, err, sizeof(err))) < 0) {
		kvn_config_free(*next);
		*next = NULL;
	}
	if (rc < 0)
		kvn_err(COMP, "SIGHUP: the config does not load, keeping the running one: %s", err);
	return rc;
}

int
kvn_reload_config(struct kvn_reload *r)
{
	struct kvn_config *next;
	int rc = load(r, &next);
	if (rc < 0)
		return rc;
	rc = apply(r, next);
	kvn_config_free(next);
	return rc;
}

/* ------------------------------------------------------------------------------------------
 * Signals: a signal thread that never blocks, and a reload thread that may take its time
 * ------------------------------------------------------------------------------------------ */

struct kvn_sigctl {
	struct kvn_reload r;
	void (*stop)(void *arg);
	void *arg;
	sigset_t set;
	pthread_t sig_thread, reload_thread;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	bool pending;	/* a SIGHUP not yet acted on */
	bool shutdown;	/* no more reloads are applied */
	bool exit;	/* the reload thread ends */
	bool applying;	/* the reload thread is changing the running config */
	pthread_cond_t idle; /* signalled when applying ends */
};

static void
stop_set(sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGTERM);
	sigaddset(set, SIGINT);
	sigaddset(set, SIGHUP);
}

void
kvn_sigctl_block(void)
{
	sigset_t set;
	stop_set(&set);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
}

static void *
signal_main(void *arg)
{
	struct kvn_sigctl *s = arg;
	const char *comp = s->r.role ? s->r.role : "serve";
	for (int stops = 0;;) {
		int sig;
		if (sigwait(&s->set, &sig))
			continue;
		if (sig == SIGHUP) {
			pthread_mutex_lock(&s->lock);
			bool down = s->shutdown;
			s->pending = !down;
			pthread_cond_signal(&s->wake);
			pthread_mutex_unlock(&s->lock);
			if (down)
				kvn_info(comp, "SIGHUP during shutdown: ignored");
			continue;
		}
		if (stops++ == 0) {
			kvn_info(comp, "%s: shutting down (finishing requests in flight)",
				 strsignal(sig));
			/* From the stop signal on, not from when the caller gets to
			 * kvn_sigctl_shutdown: a SIGHUP in between is part of the shutdown. */
			pthread_mutex_lock(&s->lock);
			s->shutdown = true;
			s->pending = false;
			pthread_mutex_unlock(&s->lock);
			s->stop(s->arg);
		} else {
			kvn_warn(comp, "%s again: exiting without waiting", strsignal(sig));
			_exit(128 + sig);
		}
	}
	return NULL;
}

static void *
reload_main(void *arg)
{
	struct kvn_sigctl *s = arg;
	pthread_mutex_lock(&s->lock);
	while (!s->exit) {
		if (!s->pending) {
			pthread_cond_wait(&s->wake, &s->lock);
			continue;
		}
		s->pending = false;
		pthread_mutex_unlock(&s->lock);
		/* Loading takes the time (a slow disk, a large document), so it runs unlocked: a
		 * shutdown meanwhile only waits for an apply, never for a load. */
		struct kvn_config *next = NULL;
		bool loaded = load(&s->r, &next) == 0;
		pthread_mutex_lock(&s->lock);
		if (loaded && s->shutdown) {
			kvn_info(s->r.role ? s->r.role : "serve",
				 "SIGHUP during shutdown: ignored (the file was read, not applied)");
		} else if (loaded) {
			s->applying = true;
			pthread_mutex_unlock(&s->lock);
			apply(&s->r, next);
			pthread_mutex_lock(&s->lock);
			s->applying = false;
			pthread_cond_broadcast(&s->idle);
		}
		kvn_config_free(next);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

int
kvn_sigctl_start(const struct kvn_reload *r, void (*stop)(void *arg), void *arg,
		 struct kvn_sigctl **out)
{
	struct kvn_sigctl *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->r = *r;
	s->stop = stop;
	s->arg = arg;
	stop_set(&s->set);
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->wake, NULL);
	pthread_cond_init(&s->idle, NULL);
	int rc = pthread_create(&s->reload_thread, NULL, reload_main, s);
	if (rc) {
		free(s);
		return -rc;
	}
	if ((rc = pthread_create(&s->sig_thread, NULL, signal_main, s))) {
		s->exit = true;
		pthread_cond_signal(&s->wake);
		pthread_join(s->reload_thread, NULL);
		free(s);
		return -rc;
	}
	*out = s;
	return 0;
}

void
kvn_sigctl_shutdown(struct kvn_sigctl *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->shutdown = true;
	s->pending = false;
	while (s->applying)
		pthread_cond_wait(&s->idle, &s->lock);
	pthread_mutex_unlock(&s->lock);
}

void
kvn_sigctl_destroy(struct kvn_sigctl *s)
{
	if (!s)
		return;
	kvn_sigctl_shutdown(s);
	pthread_cancel(s->sig_thread); /* sigwait is a cancellation point */
	pthread_join(s->sig_thread, NULL);
	pthread_mutex_lock(&s->lock);
	s->exit = true;
	pthread_cond_signal(&s->wake);
	pthread_mutex_unlock(&s->lock);
	/* A reload still loading a file finishes that first (the loader's budgets bound it). */
	pthread_join(s->reload_thread, NULL);
	pthread_cond_destroy(&s->idle);
	pthread_cond_destroy(&s->wake);
	pthread_mutex_destroy(&s->lock);
	free(s);
}
