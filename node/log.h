/* Logging: one line per event with time, level, component and the thing involved. */
#ifndef KVN_NODE_LOG_H
#define KVN_NODE_LOG_H

#include <stdarg.h>

#include "kvnode/kvnode.h"

KVN_API void kvn_log(int level, const char *component, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
KVN_API void kvn_logv(int level, const char *component, const char *fmt, va_list ap);

#define kvn_err(comp, ...) kvn_log(KVN_LOG_ERROR, comp, __VA_ARGS__)
#define kvn_warn(comp, ...) kvn_log(KVN_LOG_WARN, comp, __VA_ARGS__)
#define kvn_info(comp, ...) kvn_log(KVN_LOG_INFO, comp, __VA_ARGS__)
#define kvn_debug(comp, ...)                                                                       \
	do {                                                                                       \
		if (kvn_log_get_level() >= KVN_LOG_DEBUG)                                          \
			kvn_log(KVN_LOG_DEBUG, comp, __VA_ARGS__);                                 \
	} while (0)

/* Formats into a caller's error buffer (NULL allowed) and returns -EINVAL: the usual way a
 * validating function reports what was wrong. */
KVN_API int kvn_seterr(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
