/* A backend module as one built against kvnode ABI 2.0 is: zmem's code (examples/backends/
 * zmem.c, included whole) exporting its ops table as ABI 2.0 laid it out. A minor version only
 * appends, so 2.0's table is 2.1's up to the first member 2.1 added (sync):
 * KVN_BACKEND_OPS_SIZE_2_0 bytes, with abi 2.0 and that size. The loader must accept it on a
 * 2.1 node and treat sync as absent. Right after the table lies a function that aborts: a
 * node that read past the declared size would call it. */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zmem.c"

/* 2.1 added exactly sync, after stats: what a 2.0 module's table holds ends there. */
#define SIZE_2_0 offsetof(struct kvn_backend_ops, sync)
_Static_assert(SIZE_2_0 == offsetof(struct kvn_backend_ops, stats) + sizeof(void (*)(void)),
	       "ABI 2.1 appended exactly one member after stats");

static int
past_the_table(struct kvn_backend *be)
{
	(void)be;
	fprintf(stderr, "zmem_abi20: the node called a member past the declared size of the "
			"ABI 2.0 table\n");
	abort();
}

struct export_2_0 {
	unsigned char ops[SIZE_2_0];	       /* a struct kvn_backend_ops of ABI 2.0 */
	int (*poison)(struct kvn_backend *be); /* where 2.1's sync would be */
};

ZMEM_EXPORT struct export_2_0 kvn_test_zmem_abi20_ops = {.poison = past_the_table};

__attribute__((constructor)) static void
fill_table(void)
{
	struct kvn_backend_ops t = kvn_zmem_backend_ops;
	t.abi = KVN_ABI_MAKE(2, 0);
	t.size = SIZE_2_0;
	t.name = "zmem-abi20";
	memcpy(kvn_test_zmem_abi20_ops.ops, &t, SIZE_2_0);
}
