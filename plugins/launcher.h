/* Internal to the plugin launcher: one plugin's state, the launcher, and the pieces shared by
 * launcher.c (lifecycle), scan.c (finding and targeting files) and output.c (logging output). */
#ifndef KVN_PLUGINS_LAUNCHER_H
#define KVN_PLUGINS_LAUNCHER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "kvnode/plugin.h"
#include "plugins/plugins.h"
#include "core/clock.h"

#define COMP "plugins"

/* Longest piece of a line logged as one log line: the logger's line is 4 KiB including the
 * time, level and prefix, so longer output lines are split (at a UTF-8 boundary). */
#define PLUGIN_CHUNK 3072
/* Bound of the output waiting for the logger (all plugins together); past it lines are
 * dropped and counted, so that a chatty plugin never blocks the node. */
#define PLUGIN_QUEUE_BYTES (8u << 20)

enum plugin_state {
	PLUGIN_NOT_STARTED, /* its interpreter is missing */
	PLUGIN_RUNNING,
	PLUGIN_RESTARTING, /* waiting out the back-off */
	PLUGIN_EXITED,	   /* ended with status 0 */
	PLUGIN_FAILED,	   /* ended otherwise, not restarted */
	PLUGIN_STOPPED,	   /* ended by kvn_plugins_stop */
};

/* A partial line of one output stream. */
struct linebuf {
	char buf[PLUGIN_CHUNK];
	size_t len;
};

struct plugin {
	char *path;  /* as found under its location */
	char *dir;   /* its working directory */
	char *file;  /* base name: the log prefix */
	char *name;  /* base name up to the first '.': plugin.<name>.<key> settings */
	char **argv; /* interpreter (absolute) [its argument] path, or path alone */
	char **envp;
	char *interp;	 /* for messages and stat: "/usr/bin/bash", "(executable)" */
	char *exec_fail; /* written by the child when execve fails */

	/* Below: owned by the monitor thread; stat reads them under kvn_plugins.lock. */
	enum plugin_state state;
	pid_t pid; /* running process (its group id too); 0 when none */
	int pidfd; /* -1 where pidfd_open is not available: polled instead */
	int fd[2]; /* read ends of stdout, stderr; -1 once closed */
	struct linebuf line[2];
	int exit_code; /* last exit status, 128 + signal when killed; -1 none yet */
	unsigned restarts;
	unsigned backoff_ms;
	uint64_t started_ms, restart_at_ms;
	uint64_t dropped;	  /* lines dropped in all (stat) */
	uint64_t dropped_pending; /* dropped since the last warning about it */
};

struct logq_entry;

struct kvn_plugins {
	struct plugin *p;
	size_t n;
	uint32_t stop_timeout_ms;
	bool restart_on_failure;

	pthread_mutex_t lock; /* the plugins' state, for stat */
	pthread_cond_t launched_cond;
	bool launched; /* the first start of every plugin is done */
	pthread_t monitor;
	int wake_fd;  /* eventfd: stop requested */
	int guard_fd; /* socket to the guard process (launcher.c); -1 without one */
	pid_t guard_pid;
	atomic_bool stopping;

	/* Lines waiting for the logger thread. */
	pthread_mutex_t qlock;
	pthread_cond_t qcond;
	struct logq_entry *qhead, *qtail;
	size_t qbytes;
	bool qclosed;
	pthread_t logger;
};

/* scan.c: the plugins of l->locations that target this process, with interpreter and
 * environment ready to exec. 0 or -ENOMEM. */
int kvn_plugin_scan(const struct kvn_plugins_launch *l, struct plugin **out, size_t *n);
void kvn_plugin_free(struct plugin *p);

/* output.c */
int kvn_logq_start(struct kvn_plugins *pl);
/* Lets the logger write what is queued, then ends it. */
void kvn_logq_finish(struct kvn_plugins *pl);
/* A message about plugin p (exit status, restart): never dropped. */
void kvn_logq_note(struct kvn_plugins *pl, int level, const struct plugin *p, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* Output bytes of stream s (0 stdout, 1 stderr) of p: complete lines are queued. */
void kvn_plugin_output_feed(struct kvn_plugins *pl, struct plugin *p, int s, const char *data,
			    size_t n);
/* End of stream s: a partial last line is queued too. */
void kvn_plugin_output_flush(struct kvn_plugins *pl, struct plugin *p, int s);

#endif
