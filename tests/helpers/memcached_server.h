/* Test helper: a real memcached on a free 127.0.0.1 port, which a test can kill ("the store
 * died mid-operation") and start again on the same port, plus a raw text-protocol client for
 * changing stored items behind kvnode's back. */
#ifndef KVN_TESTS_MEMCACHED_SERVER_H
#define KVN_TESTS_MEMCACHED_SERVER_H

#include <stdbool.h>
#include <stddef.h>

#include "proc.h"

struct memcached_server {
	struct proc proc;
	int port;
	char url[64]; /* memcached://127.0.0.1:<port> */
};

/* true when the memcached binary is installed (scripts/install-deps installs it). */
bool memcached_server_available(void);
/* Starts one allowing 64 MiB items and waits (generous deadline) until it answers. */
int memcached_server_start(struct memcached_server *ms);
/* Kills it with sig and reaps it. */
void memcached_server_stop(struct memcached_server *ms, int sig);
/* Starts it again on the same port (empty: memcached keeps nothing) and waits for it. */
int memcached_server_restart(struct memcached_server *ms);
void memcached_server_destroy(struct memcached_server *ms);

/* Raw text protocol, independent of libmemcached: the item stored under key (malloc'd, *len
 * set; NULL when absent or on error) and setting one. */
void *memcached_raw_get(const struct memcached_server *ms, const char *key, size_t *len);
int memcached_raw_set(const struct memcached_server *ms, const char *key, const void *val,
		      size_t len);

#endif
