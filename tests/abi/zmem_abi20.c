/* A backend module as one built against kvnode ABI 2.0 is: zmem's code (examples/backends/
 * zmem.c, included whole) exporting the ops table as ABI 2.0's headers laid it out, one member
 * shorter than ABI 2.1's, which added sync at the end. The loader must accept it on a 2.1 node
 * and treat sync as absent (its size says the table ends before it). Right after the table
 * lies a function that aborts: a node that read past the declared size would call it. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include "zmem.c"

/* include/kvnode/backend.h at ABI 2.0. */
struct kvn_backend_ops_2_0 {
	uint32_t abi;
	uint32_t size;
	uint32_t flags;
	const char *name;
	int (*create)(const struct kvn_backend_env *env, struct kvn_backend **out);
	void (*destroy)(struct kvn_backend *be);
	int (*contains)(struct kvn_backend *be, const struct kvn_key *key, bool pin);
	int (*put)(struct kvn_backend *be, const struct kvn_key *key, struct kvn_buf *buf);
	int (*get)(struct kvn_backend *be, const struct kvn_key *key, struct kvn_buf **out);
	int (*remove)(struct kvn_backend *be, const struct kvn_key *key);
	int (*pin)(struct kvn_backend *be, const struct kvn_key *key);
	int (*unpin)(struct kvn_backend *be, const struct kvn_key *key);
	int (*list)(struct kvn_backend *be, kvn_list_cb cb, void *ctx);
	void (*stats)(struct kvn_backend *be, struct kvn_backend_stats *out);
};

/* ABI 2.1 only appended: every 2.0 member is where 2.0 had it. */
#define SAME_PLACE(m)                                                                              \
	_Static_assert(offsetof(struct kvn_backend_ops_2_0, m) ==                                  \
			   offsetof(struct kvn_backend_ops, m),                                    \
		       "ABI 2.1 moved " #m)
SAME_PLACE(flags);
SAME_PLACE(name);
SAME_PLACE(create);
SAME_PLACE(list);
SAME_PLACE(stats);
_Static_assert(sizeof(struct kvn_backend_ops_2_0) == offsetof(struct kvn_backend_ops, sync),
	       "ABI 2.1 added exactly sync after stats");

static int
past_the_table(struct kvn_backend *be)
{
	(void)be;
	fprintf(stderr, "zmem_abi20: the node called a member past the declared size of the "
			"ABI 2.0 table\n");
	abort();
}

struct export_2_0 {
	struct kvn_backend_ops_2_0 ops;
	int (*poison)(struct kvn_backend *be); /* where 2.1's sync would be */
};

ZMEM_EXPORT const struct export_2_0 kvn_test_zmem_abi20_ops = {
    .ops = {.abi = KVN_ABI_MAKE(2, 0),
	    .size = sizeof(struct kvn_backend_ops_2_0),
	    .flags = KVN_BACKEND_F_SLOW,
	    .name = "zmem-abi20",
	    .create = zmem_create,
	    .destroy = zmem_destroy,
	    .contains = zmem_contains,
	    .put = zmem_put,
	    .get = zmem_get,
	    .remove = zmem_remove,
	    .pin = zmem_pin,
	    .unpin = zmem_unpin,
	    .list = zmem_list,
	    .stats = zmem_stats},
    .poison = past_the_table,
};
