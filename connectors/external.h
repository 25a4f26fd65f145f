/* External connectors (docs/architecture.md §4): a remote_url scheme served by a .so named in
 * extra_config `external_connector.<scheme>.module_path` / `.class_name` (an exported const struct
 * kvn_connector_ops), loaded with the external backends' search rules. */
#ifndef KVN_CONNECTORS_EXTERNAL_H
#define KVN_CONNECTORS_EXTERNAL_H

#include <stddef.h>

#include "kvnode/kvnode.h"

/* Reads one extra_config key; NULL when unset. */
typedef const char *(*kvn_extra_get_fn)(void *ctx, const char *key);

/* When extra_config configures a module for url's scheme, loads it, checks its ops (ABI, the
 * required operations) and registers it for that scheme (kvn_connector_register). Returns 0
 * when registered, or when nothing is configured for the scheme (kvn_connector_find then tells
 * a built-in scheme from an unknown one). On error nothing stays loaded and err names the
 * file, the symbol and the extra_config key to fix. A registered module stays loaded for the
 * life of the process: the registry hands its ops out to every remote tier. */
int kvn_connector_load_external(const char *url, const char *config_dir,
					kvn_extra_get_fn get, void *ctx, char *err, size_t errlen);

#endif
