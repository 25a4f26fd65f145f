/* Loader test module: a current-ABI ops table whose required get operation is NULL. */
#include <errno.h>

#include "kvnode/backend.h"

static int
create(const struct kvn_backend_env *env, struct kvn_backend **out)
{
	(void)env;
	*out = NULL;
	return -ENOTSUP;
}

static void
destroy(struct kvn_backend *be)
{
	(void)be;
}

static int
contains(struct kvn_backend *be, const struct kvn_key *key, bool pin)
{
	(void)be, (void)key, (void)pin;
	return 0;
}

static int
put(struct kvn_backend *be, const struct kvn_key *key, struct kvn_buf *buf)
{
	(void)be, (void)key, (void)buf;
	return -ENOSPC;
}

static int
remove_key(struct kvn_backend *be, const struct kvn_key *key)
{
	(void)be, (void)key;
	return -ENOENT;
}

static void
stats(struct kvn_backend *be, struct kvn_backend_stats *out)
{
	(void)be;
	*out = (struct kvn_backend_stats){0};
}

__attribute__((visibility("default"))) const struct kvn_backend_ops kvn_test_null_op_ops = {
    KVN_BACKEND_OPS_INIT,
    .name = "null_op",
    .create = create,
    .destroy = destroy,
    .contains = contains,
    .put = put,
    .get = NULL, /* the point of this module */
    .remove = remove_key,
    .stats = stats,
};
