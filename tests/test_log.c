/* core/log.c: the rate limiter that keeps events a peer can repeat at will (refused readers)
 * from flooding the log. Nothing here depends on how fast the machine is. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <time.h>

#include "core/log.h"

Test(ratelimit, the_first_event_is_logged_and_the_next_ones_within_the_interval_are_counted)
{
	struct kvn_ratelimit rl = {0};
	uint64_t missed = 99;
	cr_assert(kvn_ratelimit_ok(&rl, 3600 * 1000, &missed));
	cr_assert_eq(missed, 0);
	for (int i = 0; i < 5; i++)
		cr_assert_not(kvn_ratelimit_ok(&rl, 3600 * 1000, &missed), "event %d logged", i);
	cr_assert_eq(atomic_load(&rl.missed), 5);
}

Test(ratelimit, after_the_interval_the_next_event_is_logged_with_the_count_held_back)
{
	struct kvn_ratelimit rl = {0};
	uint64_t missed;
	cr_assert(kvn_ratelimit_ok(&rl, 20, &missed));
	/* Count held-back events until the 20 ms interval has passed (however long that takes
	 * on a loaded machine): the one that gets through reports them all. */
	uint64_t held = 0;
	struct timespec t0, t;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		if (kvn_ratelimit_ok(&rl, 20, &missed))
			break;
		held++;
		clock_gettime(CLOCK_MONOTONIC, &t);
		cr_assert_lt(t.tv_sec - t0.tv_sec, 60, "never let an event through again");
	}
	cr_assert_eq(missed, held);
	cr_assert_eq(atomic_load(&rl.missed), 0);
}

static struct kvn_ratelimit shared;
static _Atomic int logged;

static void *
hammer(void *arg)
{
	(void)arg;
	uint64_t missed;
	for (int i = 0; i < 10000; i++)
		if (kvn_ratelimit_ok(&shared, 3600 * 1000, &missed))
			atomic_fetch_add(&logged, 1);
	return NULL;
}

Test(ratelimit, threads_racing_for_one_slot_log_once_and_count_the_rest)
{
	pthread_t th[4];
	for (int i = 0; i < 4; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, hammer, NULL), 0);
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	cr_assert_eq(atomic_load(&logged), 1);
	cr_assert_eq(atomic_load(&shared.missed), 4 * 10000 - 1);
}
