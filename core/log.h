/* Logging: one line per event with time, level, component and the thing involved. */
#ifndef KVN_CORE_LOG_H
#define KVN_CORE_LOG_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "kvnode/kvnode.h"

void kvn_log(int level, const char *component, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
void kvn_logv(int level, const char *component, const char *fmt, va_list ap);

#define kvn_err(comp, ...) kvn_log(KVN_LOG_ERROR, comp, __VA_ARGS__)
#define kvn_warn(comp, ...) kvn_log(KVN_LOG_WARN, comp, __VA_ARGS__)
#define kvn_info(comp, ...) kvn_log(KVN_LOG_INFO, comp, __VA_ARGS__)
#define kvn_debug(comp, ...)                                                                       \
	do {                                                                                       \
		if (kvn_log_get_level() >= KVN_LOG_DEBUG)                                          \
			kvn_log(KVN_LOG_DEBUG, comp, __VA_ARGS__);                                 \
	} while (0)

/* At most one line per interval for events a peer can repeat at will (a reader retrying with a
 * wrong token): kvn_ratelimit_ok is true when this one may be logged, and *missed then gets how
 * many were held back since the last logged one. Zero-initialize; safe from any thread. */
struct kvn_ratelimit {
	_Atomic uint64_t next_ns;
	_Atomic uint64_t missed;
};
bool kvn_ratelimit_ok(struct kvn_ratelimit *rl, unsigned interval_ms, uint64_t *missed);

/* Formats into a caller's error buffer (NULL allowed) and returns code, so that a failing
 * function says what went wrong and returns in one statement:
 *	return kvn_seterr(-ENOENT, err, errlen, "no key %s", key); */
int kvn_seterr(int code, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
