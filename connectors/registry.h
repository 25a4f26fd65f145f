/* Connector registry: remote_url scheme -> struct kvn_connector_ops. Built-in connectors are
 * always there; external ones (dlopen'ed by the node's loader) are added with
 * kvn_connector_register. Also the batch helpers that fall back to single calls. */
#ifndef KVN_CONNECTORS_REGISTRY_H
#define KVN_CONNECTORS_REGISTRY_H

#include "kvnode/connector.h"

extern const struct kvn_connector_ops kvn_redis_connector_ops;
extern const struct kvn_connector_ops kvn_fs_connector_ops;
extern const struct kvn_connector_ops kvn_blackhole_connector_ops;
extern const struct kvn_connector_ops kvn_lm_connector_ops;

/* Fault injection for tests: while > 0, each command the redis connector appends to its output
 * buffer counts it down, and the append that brings it to 0 fails as if out of memory. */
extern _Atomic int kvn_redis_fail_append_in;

/* Adds an external connector for scheme (letters, digits, '+', '-', '.'). 0 when added or when
 * the same ops are already registered for it; -EEXIST when the scheme is built in or taken by
 * other ops; -EINVAL for a bad scheme or ops that fail kvn_connector_check_abi. The ops (and
 * the module holding them) must stay valid until kvn_connector_unregister. */
/* The env of a connector used without a remote tier (a tool, a fuzzer, a test): no options
 * (get_opt answers NULL), config_dir ".", log lines through kvn_log under "connector
 * <scheme>". url_redacted NULL: url is shown as it is (it holds no password). */
void kvn_connector_env_plain(struct kvn_connector_env *env, const char *url,
			     const char *url_redacted, uint32_t timeout_ms);

/* Whether this node can drive ops (their abi and size, kvnode/version.h); -EINVAL with err
 * starting with what ("external connector module F (symbol S)") and saying how to fix it. */
int kvn_connector_check_abi(const struct kvn_connector_ops *ops, const char *what, char *err,
			    size_t errlen);
int kvn_connector_register(const char *scheme, const struct kvn_connector_ops *ops);
/* Removes an external registration; -ENOENT when there is none. */
int kvn_connector_unregister(const char *scheme);

/* The ops for url's scheme. Unknown scheme: -EINVAL, err lists the known schemes. A scheme
 * this build lacks (rediss without hiredis SSL, infinistore, mooncakestore): -ENOTSUP, err
 * says "not built in this build: needs <library>". A URL without "://": -EINVAL. */
int kvn_connector_find(const char *url, const struct kvn_connector_ops **ops, char *err,
			       size_t errlen);
/* The known schemes, ", "-joined, into buf; returns the length it needs. */
size_t kvn_connector_schemes(char *buf, size_t len);
/* Copies url's scheme (before "://") into out; -EINVAL without one or when it is too long. */
int kvn_connector_scheme_of(const char *url, char *out, size_t outlen);

/* Batched calls: the connector's batch op when it has one, else a loop of single calls. */
int kvn_connector_get_batch(const struct kvn_connector_ops *ops, struct kvn_connector *c,
				    size_t n, const struct kvn_key *const *keys,
				    struct kvn_remote_value *out, int *rcs);
int kvn_connector_put_batch(const struct kvn_connector_ops *ops, struct kvn_connector *c,
				    size_t n, const struct kvn_key *const *keys,
				    const struct kvn_remote_value *vals, int *rcs);
int kvn_connector_exists_batch(const struct kvn_connector_ops *ops, struct kvn_connector *c,
				       size_t n, const struct kvn_key *const *keys, int *rcs);

#endif
