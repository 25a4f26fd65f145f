/* kvnode version and ABI numbers. An external module is built against these and the node
 * refuses one whose ABI differs from its own. */
#ifndef KVNODE_VERSION_H
#define KVNODE_VERSION_H

#define KVN_VERSION_MAJOR 0
#define KVN_VERSION_MINOR 1
#define KVN_VERSION_PATCH 0
#define KVN_VERSION_STRING "0.1.0"

/* Bumped whenever struct kvn_backend_ops / kvn_backend_env / kvn_buf change layout or meaning. */
#define KVN_BACKEND_ABI 1
/* Bumped whenever struct kvn_connector_ops / kvn_connector_env / kvn_remote_value change. */
#define KVN_CONNECTOR_ABI 1

#endif
