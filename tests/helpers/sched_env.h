/* Test helper for the membership service: a `kvnode scheduler` child process, member nodes
 * (in-process kvn_membership) that record what they are told, deterministic keys and
 * locations, and raw sockets for rogue-client tests. */
#ifndef KVN_TEST_SCHED_ENV_H
#define KVN_TEST_SCHED_ENV_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "node/cluster/ctlframe.h"
#include "node/cluster/membership.h"
#include "tests/helpers/proc.h"

#define KVNODE	 KVN_BINARY_DIR "/kvnode"
#define HB_MS	 100
#define DEADLINE 30000 /* ms */

/* The last error message of a helper or of a call the tests make with it. */
extern char sched_err[1024];

struct sched {
	struct proc p;
	char dir[256];
	char out[300];
	char addr[64];
};

/* Starts `kvnode scheduler --listen listen` (heartbeat_ms 100, token or none) and waits for
 * its "scheduler on" line; s->addr gets the bound address. Restarting reuses s->dir. */
void sched_start(struct sched *s, const char *listen, const char *token);
/* The same with more environment ("KVNODE_<KEY>=VALUE" config overrides; one naming a
 * variable set above replaces it), NULL-terminated. */
void sched_start_env(struct sched *s, const char *listen, const char *token,
		     const char *const *extra_env);
/* SIGTERM (then SIGKILL) and removes the temporary directory. */
void sched_stop(struct sched *s);

/* What a node's callbacks saw. */
struct seen {
	pthread_mutex_t mu;
	int up[16], down[16];
	char name[16][KVN_CF_NAME_MAX + 1];
	uint8_t regions[16][32];
	size_t regions_len[16];
	size_t evicted;
	int joins;
	/* republished on every join, like a node's cpu tier */
	const struct kvn_cf_pub *index;
	size_t nindex;
};

struct seen *sched_seen_new(void);
int sched_seen_get(struct seen *s, int *field);
/* A member node named name (data address 127.0.0.1:9, transport tcp, region blob
 * "regions-of-<name>", evict notices on); s (may be NULL) records its callbacks and holds the
 * index it re-publishes on every join. Returns kvn_membership_start's code, sched_err set. */
int sched_node_start(const char *addr, const char *name, const char *token, struct seen *s,
		     struct kvn_membership **m);

uint64_t sched_mix(uint64_t x);
struct kvn_digest sched_key_digest(uint64_t i, uint64_t salt);
struct kvn_loc sched_key_loc(uint64_t i);
/* Admit records of keys 0..n-1 of salt (calloc'd). */
struct kvn_cf_pub *sched_make_index(size_t n, uint64_t salt);
/* Looks up keys 0..n-1 of salt: how many have a location on worker; asserts that every such
 * location is the one published. */
size_t sched_found_on(struct kvn_membership *m, size_t n, uint64_t salt, uint32_t worker);
void sched_sleep_ms(int ms);

/* Polls cond every 20 ms until it holds (true) or DEADLINE passes (false). */
#define WAIT_UNTIL(cond)                                                                           \
	({                                                                                         \
		bool ok_ = false;                                                                  \
		for (int t_ = 0; t_ < DEADLINE / 20 && !(ok_ = (cond)); t_++)                      \
			sched_sleep_ms(20);                                                        \
		ok_;                                                                               \
	})

/* The token of the tests' host (what `kvnode scheduler` and `kvnode serve` without auth_token
 * use: KVNODE_STATE_DIR is the build tree's test-state), malloc'd; created when missing. */
char *sched_host_token(void);
/* The client's half of the auth set-up on a raw connection (HELLO, CHALLENGE): proof gets what
 * a JOIN or STATS must carry. token NULL: the tests' host token (what a scheduler without one
 * uses). Asserts success. */
void sched_raw_auth(int fd, const char *token, char proof[KVN_CF_PROOF_HEX]);
/* json (an object) with "proof": proof added first. */
void sched_json_with_proof(const char *json, const char *proof, char *out, size_t cap);
/* Raw TCP connection to addr with a 20 s receive timeout. */
int sched_raw_connect(const char *addr);
/* Reads until EOF: whether the scheduler closed the connection, and whether an ERROR frame
 * came first. Closes fd. */
bool sched_closed(int fd, bool *sent_error);
void sched_send_hdr(int fd, uint8_t type, uint32_t len);
/* pthread body running kvn_scheduler_run(arg). */
void *sched_run(void *arg);

#endif
