/* `kvnode serve` and `kvnode scheduler` on SIGHUP: re-reads the config file and applies the keys that can change
 * while the node runs; the others are named in the log as needing a restart. */
#ifndef KVN_NODE_CLI_RELOAD_H
#define KVN_NODE_CLI_RELOAD_H

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
 * thread, never in a signal handler. Returns how many keys changed but need a restart, or a
 * negative errno when the file did not load. */
int kvn_reload_config(struct kvn_reload *r);

/* The signals of `kvnode serve` and `kvnode scheduler`, taken by a thread of their own (they
 * must be blocked in every thread first: kvn_sigctl_block, before any thread exists). SIGTERM
 * or SIGINT calls stop(arg) once; a second one exits the process at once (a slow drain cut
 * short). SIGHUP asks a reload thread to re-read the config (kvn_reload_config), so that a
 * slow or hostile file never keeps a stop signal waiting; SIGHUPs that come while one reload
 * runs are coalesced into one more. */
struct kvn_sigctl;
void kvn_sigctl_block(void);
int kvn_sigctl_start(const struct kvn_reload *r, void (*stop)(void *arg), void *arg,
		     struct kvn_sigctl **out);
/* From here on SIGHUP is logged and ignored. Returns once no reload is applying changes, so
 * that the caller may free what reloads touch (the running config, the plugin launcher). A
 * stop signal is still taken. */
void kvn_sigctl_shutdown(struct kvn_sigctl *s);
/* Ends both threads and frees s (NULL: nothing). */
void kvn_sigctl_destroy(struct kvn_sigctl *s);

#endif
