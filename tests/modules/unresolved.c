/* Loader test module: references a function nothing defines, so dlopen(RTLD_NOW) must refuse it
 * (built without -Wl,--no-undefined on purpose). */
#include "kvnode/backend.h"

extern int kvn_test_function_nobody_defines(void);

__attribute__((visibility("default"))) int
kvn_test_unresolved_entry(void)
{
	return kvn_test_function_nobody_defines();
}

__attribute__((visibility("default"))) const struct kvn_backend_ops kvn_test_unresolved_ops = {
    KVN_BACKEND_OPS_INIT,
    .name = "unresolved",
};
