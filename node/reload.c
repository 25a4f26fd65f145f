/* Config reload of `kvnode serve` (SIGHUP): the file is loaded the same way as at start, then
 * compared key by key with the running config. Only what is read at each use can change in
 * place; everything else (tier sizes, addresses, names) was baked into objects at start. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvnode/plugin.h"
#include "node/config.h"
#include "node/config_keys.h"
#include "node/log.h"
#include "node/reload.h"

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

int
kvn_reload_config(struct kvn_reload *r)
{
	struct kvn_config *next;
	char err[1024], where[KVN_ORIGIN_MAX + 32];
	int rc = kvn_config_load(r->config_arg, &next, err, sizeof(err));
	if (rc < 0) {
		kvn_err(COMP, "SIGHUP: the config does not load, keeping the running one: %s", err);
		return rc;
	}
	int restart = 0, applied = 0;
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
	kvn_config_free(next);
	return restart;
}
