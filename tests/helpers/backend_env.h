/* Test helper: a struct kvn_backend_env built from a table of (option, value) pairs, so a backend
 * test can create any backend without a config file or a storage manager. */
#ifndef KVN_TESTS_BACKEND_ENV_H
#define KVN_TESTS_BACKEND_ENV_H

#include "backends/backends.h"
#include "kvnode/backend.h"

struct backend_opt {
	const char *opt;
	const char *value;
};

/* Copies name and the table (terminated by an entry whose opt is NULL; opts may be NULL) into a
 * new env with abi = KVN_ABI, config_dir "." and the given pool (NULL for every backend
 * but cpu). get_opt answers from the table; log goes to kvn_log with the name as component.
 * Returns NULL when out of memory. */
struct kvn_backend_env *backend_env_new(const char *name, const struct backend_opt *opts,
					struct kvn_pool *pool);
/* The device region a gpu tier created with env uses (not copied: it must outlive the tier). */
void backend_env_set_gpu(struct kvn_backend_env *env, const struct kvn_gpu_region *rg);
/* Sets config_dir (copied). */
int backend_env_set_config_dir(struct kvn_backend_env *env, const char *dir);
/* The text of the last line the backend logged at or above level (KVN_LOG_ERROR … DEBUG),
 * "" when none: lets a test assert that a message names the option. Valid until the next log
 * call or backend_env_free. */
const char *backend_env_last_log(const struct kvn_backend_env *env, int level);
void backend_env_free(struct kvn_backend_env *env);

#endif
