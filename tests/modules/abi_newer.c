/* Loader test module: a backend table of a newer minor ABI than the node's: refused (it may
 * count on members this node does not know). */
#include "kvnode/backend.h"

__attribute__((visibility("default"))) const struct kvn_backend_ops kvn_test_abi_newer_ops = {
    .abi = KVN_ABI_MAKE(KVN_ABI_MAJOR, KVN_ABI_MINOR + 1),
    .size = sizeof(struct kvn_backend_ops),
    .name = "abi_newer",
};
