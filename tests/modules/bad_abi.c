/* Loader test module: exports a backend ops table claiming ABI 999, which no kvnode accepts. */
#include "kvnode/backend.h"

__attribute__((visibility("default"))) const struct kvn_backend_ops kvn_test_bad_abi_ops = {
    .abi = 999,
    .name = "bad_abi",
};
