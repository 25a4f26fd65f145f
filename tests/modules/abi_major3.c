/* Loader test module: a backend table of kvnode ABI 3.0, another major version: refused. */
#include "kvnode/backend.h"

__attribute__((visibility("default"))) const struct kvn_backend_ops kvn_test_abi_major3_ops = {
    .abi = KVN_ABI_MAKE(3, 0),
    .size = sizeof(struct kvn_backend_ops),
    .name = "abi_major3",
};
