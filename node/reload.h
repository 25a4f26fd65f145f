/* `kvnode serve` and `kvnode scheduler` on SIGHUP: re-reads the config file and applies the keys that can change
 * while the node runs; the others are named in the log as needing a restart. */
#ifndef KVN_NODE_RELOAD_H
#define KVN_NODE_RELOAD_H

struct kvn_config;
struct kvn_plugins;

struct kvn_reload {
	const char *config_arg;	     /* -c FILE, or NULL: the same lookup as at start */
	struct kvn_config *running;  /* the config the node started with; updated in place */
	struct kvn_plugins *plugins; /* NULL: none */
	int cli_log_level;	     /* --log-level (it wins over the file), -1 when not given */
	int verbose;		     /* -v count, added to the file's log_level */
	const char *role;	     /* log component: "serve" (NULL) or "scheduler" */
};

/* Keys applied at run time: log_level, plugin_restart, plugin_stop_timeout_ms. A file that no
 * longer loads is logged (file:line and why) and the running config kept. Runs on an ordinary
 * thread (the signal thread after sigwait), never in a signal handler. Returns how many keys
 * changed but need a restart, or a negative errno when the file did not load. */
int kvn_reload_config(struct kvn_reload *r);

#endif
