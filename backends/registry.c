/* The built-in tiers by name (backends/backends.h), as connectors/registry.c is for schemes. */
#include <string.h>

#include "backends/backends.h"

static const struct {
	const char *name;
	const struct kvn_backend_ops *ops;
} builtin[] = {
    {"cpu", &kvn_cpu_backend_ops},
    {"disk", &kvn_disk_backend_ops},
    {"remote", &kvn_remote_backend_ops},
};

const struct kvn_backend_ops *
kvn_builtin_backend(const char *name)
{
	for (size_t i = 0; i < sizeof(builtin) / sizeof(builtin[0]); i++)
		if (!strcmp(name, builtin[i].name))
			return builtin[i].ops;
	return NULL;
}
