/* The scheduler's chunk directory: which member holds which key digest, where, at which slot
 * generation. One open-addressing table of fixed 48-byte entries (no per-entry allocation),
 * keyed by (digest, member); every member's copy of a key sits in the same probe run. */
#ifndef KVN_NODE_SCHEDULER_SCHEDULER_DIR_H
#define KVN_NODE_SCHEDULER_SCHEDULER_DIR_H

#include <stddef.h>
#include <stdint.h>

#include "node/cluster/ctlframe.h"

/* Worker ids the directory can hold: ids are stored in 16 bits (0 marks an empty entry). */
#define KVN_DIR_MAX_WORKERS 65535u

struct kvn_dir;

/* A directory sized for about expect entries before its first growth (0: a small default). */
int kvn_dir_create(size_t expect, struct kvn_dir **out);
void kvn_dir_destroy(struct kvn_dir *d);

/* Records that worker loc->worker_id holds digest at loc (replacing its older entry for the
 * same digest). -EINVAL for a worker id over the cap, -ENOMEM when the table cannot grow. */
int kvn_dir_admit(struct kvn_dir *d, struct kvn_digest digest, const struct kvn_loc *loc);
/* Drops worker's entry for digest when its generation is gen (gen 0: any). 1 dropped, 0 not. */
int kvn_dir_evict(struct kvn_dir *d, uint32_t worker_id, struct kvn_digest digest, uint64_t gen);
/* Up to max locations of digest into locs; returns how many (0: nobody holds it). */
uint32_t kvn_dir_lookup(const struct kvn_dir *d, struct kvn_digest digest, struct kvn_loc *locs,
			uint32_t max);
/* Drops every entry of worker (expired, or re-joining with a fresh index). Returns how many. */
size_t kvn_dir_drop_worker(struct kvn_dir *d, uint32_t worker_id);

size_t kvn_dir_entries(const struct kvn_dir *d);
size_t kvn_dir_worker_entries(const struct kvn_dir *d, uint32_t worker_id);
/* Bytes the directory has allocated (table and per-worker counters). */
size_t kvn_dir_bytes(const struct kvn_dir *d);
/* Bytes of one entry: the table's unit of memory. */
size_t kvn_dir_entry_size(void);

#endif
