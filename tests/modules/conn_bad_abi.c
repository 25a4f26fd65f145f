/* Loader test module: a connector ops table claiming ABI 999, which no kvnode accepts. */
#include "kvnode/connector.h"

__attribute__((visibility("default"))) const struct kvn_connector_ops kvn_test_conn_bad_abi_ops = {
    .abi = 999,
    .scheme = "badabi",
};
