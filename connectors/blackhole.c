/* blackhole:// — accepts every value and keeps none (get always misses): measures the node's
 * own cost of the remote tier in benchmarks, without any store behind it. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "connectors/registry.h"

struct kvn_connector {
	int unused;
};

static int
bh_connect(const struct kvn_connector_env *env, struct kvn_connector **out)
{
	const char *rest = strstr(env->url, "://");
	if (!rest || (rest[3] && rest[3] != '?' && rest[3] != '/')) {
		env->log(env, KVN_LOG_ERROR,
			 "remote_url %s: blackhole takes no address: write "
			 "blackhole://",
			 env->url_redacted);
		return -EINVAL;
	}
	*out = calloc(1, sizeof(**out));
	return *out ? 0 : -ENOMEM;
}

static void
bh_close(struct kvn_connector *c)
{
	free(c);
}

static int
bh_exists(struct kvn_connector *c, const struct kvn_key *key)
{
	(void)c, (void)key;
	return 0;
}

static int
bh_get(struct kvn_connector *c, const struct kvn_key *key, struct kvn_remote_value *out)
{
	(void)c, (void)key;
	memset(out, 0, sizeof(*out));
	return -ENOENT;
}

static int
bh_put(struct kvn_connector *c, const struct kvn_key *key, const struct kvn_remote_value *val)
{
	(void)c, (void)key, (void)val;
	return 0;
}

static int
bh_remove(struct kvn_connector *c, const struct kvn_key *key)
{
	(void)c, (void)key;
	return -ENOENT;
}

static int
bh_list(struct kvn_connector *c, kvn_connector_list_cb cb, void *ctx)
{
	(void)c, (void)cb, (void)ctx;
	return 0;
}

static int
bh_ping(struct kvn_connector *c)
{
	(void)c;
	return 0;
}

const struct kvn_connector_ops kvn_blackhole_connector_ops = {
    KVN_CONNECTOR_OPS_INIT,
    .flags = KVN_CONNECTOR_F_DISCARDS,
    .scheme = "blackhole",
    .connect = bh_connect,
    .close = bh_close,
    .exists = bh_exists,
    .get = bh_get,
    .put = bh_put,
    .remove = bh_remove,
    .list = bh_list,
    .ping = bh_ping,
};
