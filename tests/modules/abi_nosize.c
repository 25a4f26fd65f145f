/* Loader test module: a table of this ABI that forgot .size (0): refused, saying to set it. */
#include "kvnode/backend.h"

__attribute__((visibility("default"))) const struct kvn_backend_ops kvn_test_abi_nosize_ops = {
    .abi = KVN_ABI,
    .name = "abi_nosize",
};
