/* Loader test module: a connector ops table of the right ABI that lacks ping (and everything
 * after the first few operations), which the loader must refuse by name. */
#include <errno.h>

#include "kvnode/connector.h"

static int
no_connect(const struct kvn_connector_env *env, struct kvn_connector **out)
{
	(void)env;
	(void)out;
	return -ECONNREFUSED;
}

static void
no_close(struct kvn_connector *c)
{
	(void)c;
}

static int
no_exists(struct kvn_connector *c, const struct kvn_key *key)
{
	(void)c;
	(void)key;
	return 0;
}

static int
no_get(struct kvn_connector *c, const struct kvn_key *key, struct kvn_remote_value *out)
{
	(void)c;
	(void)key;
	out->payload = 0;
	return -ENOENT;
}

static int
no_put(struct kvn_connector *c, const struct kvn_key *key, const struct kvn_remote_value *v)
{
	(void)c;
	(void)key;
	(void)v;
	return 0;
}

static int
no_remove(struct kvn_connector *c, const struct kvn_key *key)
{
	(void)c;
	(void)key;
	return -ENOENT;
}

static int
no_list(struct kvn_connector *c, kvn_connector_list_cb cb, void *ctx)
{
	(void)c;
	(void)cb;
	(void)ctx;
	return 0;
}

__attribute__((visibility("default"))) const struct kvn_connector_ops kvn_test_conn_no_ping_ops = {
    KVN_CONNECTOR_OPS_INIT,
    .scheme = "noping",
    .connect = no_connect,
    .close = no_close,
    .exists = no_exists,
    .get = no_get,
    .put = no_put,
    .remove = no_remove,
    .list = no_list,
};
