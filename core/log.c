/* Logging and error strings: one line per event, written with a single write(2) so lines from
 * threads and plugins never interleave. */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/log.h"

static _Atomic int log_level = KVN_LOG_INFO;
static const char *const level_names[] = { "error", "warn", "info", "debug" };

KVN_API void
kvn_log_set_level(int level)
{
	if (level < KVN_LOG_ERROR)
		level = KVN_LOG_ERROR;
	if (level > KVN_LOG_DEBUG)
		level = KVN_LOG_DEBUG;
	atomic_store(&log_level, level);
}

KVN_API int
kvn_log_get_level(void)
{
	return atomic_load_explicit(&log_level, memory_order_relaxed);
}

KVN_API int
kvn_log_level_parse(const char *name)
{
	if (!name)
		return -EINVAL;
	if (!strcasecmp(name, "warning"))
		return KVN_LOG_WARN;
	for (int i = 0; i <= KVN_LOG_DEBUG; i++)
		if (!strcasecmp(name, level_names[i]))
			return i;
	return -EINVAL;
}

void
kvn_logv(int level, const char *component, const char *fmt, va_list ap)
{
	if (level > kvn_log_get_level())
		return;
	char line[4096];
	struct timeval tv;
	struct tm tm;
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %s: ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			 tm.tm_sec, (long)(tv.tv_usec / 1000),
			 level_names[level < 0 ? 0 : level > 3 ? 3 : level],
			 component ? component : "kvnode");
	if (n < 0)
		return;
	int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	size_t len = m < 0 ? (size_t)n : (size_t)n + (size_t)m;
	if (len > sizeof(line) - 2)
		len = sizeof(line) - 2; /* truncated: keep the line a line */
	line[len++] = '\n';
	ssize_t w = write(STDERR_FILENO, line, len);
	(void)w;
}

void
kvn_log(int level, const char *component, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	kvn_logv(level, component, fmt, ap);
	va_end(ap);
}

int
kvn_seterr(int code, char *err, size_t errlen, const char *fmt, ...)
{
	if (err && errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return code;
}

KVN_API const char *
kvn_strerror(int err)
{
	switch (err) {
	case 0:
		return "success";
	case -ENOENT:
		return "not found";
	case -EPROTO:
		return "protocol error (bad frame)";
	case -ENOSPC:
		return "no space (value larger than the tier can hold)";
	case -EBADMSG:
		return "corrupt data (header or checksum mismatch)";
	}
	static _Thread_local char buf[128];
	if (err < 0) {
		/* strerror_r (GNU) returns a pointer that may or may not be buf. */
		const char *s = strerror_r(-err, buf, sizeof(buf));
		return s ? s : "unknown error";
	}
	snprintf(buf, sizeof(buf), "unexpected status %d", err);
	return buf;
}

bool
kvn_ratelimit_ok(struct kvn_ratelimit *rl, unsigned interval_ms, uint64_t *missed)
{
	uint64_t now = kvn_now_ns();
	uint64_t next = atomic_load(&rl->next_ns);
	/* One thread wins the slot; the others count themselves as held back. */
	if (now < next ||
	    !atomic_compare_exchange_strong(&rl->next_ns, &next, now + interval_ms * 1000000ull)) {
		atomic_fetch_add(&rl->missed, 1);
		return false;
	}
	*missed = atomic_exchange(&rl->missed, 0);
	return true;
}
