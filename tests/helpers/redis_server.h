/* Test helper: a real redis-server on a free 127.0.0.1 port in a temp directory, which a test
 * can stop (SIGKILL: "the store died mid-operation") and restart on the same port. */
#ifndef KVN_TESTS_REDIS_SERVER_H
#define KVN_TESTS_REDIS_SERVER_H

#include <limits.h>
#include <stdbool.h>

#include "proc.h"

struct redis_server {
	struct proc proc;
	int port;
	char dir[PATH_MAX - 64]; /* temp dir: redis.log, and nothing persisted */
	char url[64];		 /* redis://127.0.0.1:<port> */
	char port_text[16];
};

/* true when redis-server and redis-cli are on PATH (scripts/install-deps installs them). */
bool redis_server_available(void);
/* Starts one and waits (generous deadline) until it answers PING. 0 or a negative errno. */
int redis_server_start(struct redis_server *rs);
/* Kills it with sig (SIGKILL for a crash) and reaps it; the directory stays. */
void redis_server_stop(struct redis_server *rs, int sig);
/* Starts it again on the same port and waits until it answers. 0 or a negative errno. */
int redis_server_restart(struct redis_server *rs);
/* Stops it and removes its directory. Safe on a never-started one. */
void redis_server_destroy(struct redis_server *rs);
/* Runs redis-cli -p <port> with args (NULL-terminated), stdin from in_path (NULL: none),
 * stdout into out_path (NULL: discarded). Returns redis-cli's exit code or a negative errno. */
int redis_cli(const struct redis_server *rs, const char *in_path, const char *out_path, ...);

#endif
