/* The one monotonic clock: "now" for deadlines and durations, and condition variables that
 * wait on it, so that a wall-clock step (NTP, an operator's `date`) never shortens or stretches
 * a timeout. The wall clock is for log time stamps only (core/log.c). */
#ifndef KVN_CORE_CLOCK_H
#define KVN_CORE_CLOCK_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

static inline uint64_t
kvn_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline uint64_t
kvn_now_ms(void)
{
	return kvn_now_ns() / 1000000u;
}

/* Seconds, for rates and reports. */
static inline double
kvn_now_s(void)
{
	return (double)kvn_now_ns() * 1e-9;
}

/* A condition variable whose timed waits measure CLOCK_MONOTONIC. */
static inline int
kvn_cond_init_monotonic(pthread_cond_t *cond)
{
	pthread_condattr_t ca;
	int rc = pthread_condattr_init(&ca);
	if (rc)
		return -rc;
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	rc = pthread_cond_init(cond, &ca);
	pthread_condattr_destroy(&ca);
	return -rc;
}

/* The absolute CLOCK_MONOTONIC time ms from now, for pthread_cond_timedwait on a condition
 * made by kvn_cond_init_monotonic. */
static inline struct timespec
kvn_deadline_in_ms(uint64_t ms)
{
	uint64_t t = kvn_now_ns() + ms * 1000000u;
	return (struct timespec){.tv_sec = (time_t)(t / 1000000000u),
				 .tv_nsec = (long)(t % 1000000000u)};
}

/* Milliseconds from now until deadline (a kvn_deadline_in_ms value); 0 once it has passed. */
static inline int64_t
kvn_ms_until(const struct timespec *deadline)
{
	int64_t left =
	    ((int64_t)deadline->tv_sec * 1000000000 + deadline->tv_nsec) - (int64_t)kvn_now_ns();
	return left <= 0 ? 0 : (left + 999999) / 1000000;
}

#endif
