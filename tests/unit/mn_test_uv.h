/*
 * mn_test_uv.h - running a real libuv loop in a unit test until something
 * has happened, with a deadline instead of sleeps.
 */
#ifndef MN_TEST_UV_H
#define MN_TEST_UV_H

#include <check.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

static inline void mn_test_uv_tick(uv_timer_t *t)
{
	(void)t;
}

/*
 * Runs loop until done(arg) is true, failing the test (naming what) after
 * timeout_ms. A timer wakes the loop every 2 ms, so a callback that ran
 * before a turn's wait for I/O cannot leave the loop waiting for an event
 * that is not coming.
 */
static inline void mn_test_uv_run_until(uv_loop_t *loop, bool (*done)(void *arg), void *arg,
                                        uint64_t timeout_ms, const char *what)
{
	static uv_timer_t ticker;
	uint64_t end;

	ck_assert_int_eq(uv_timer_init(loop, &ticker), 0);
	ck_assert_int_eq(uv_timer_start(&ticker, mn_test_uv_tick, 2, 2), 0);
	uv_update_time(loop);
	end = uv_now(loop) + timeout_ms;
	while (!done(arg)) {
		ck_assert_msg(uv_now(loop) < end, "%s: not within %llu ms", what,
		              (unsigned long long)timeout_ms);
		uv_run(loop, UV_RUN_ONCE);
	}
	uv_close((uv_handle_t *)&ticker, NULL);
	/* The close completes at the end of this turn: the timer never outlives the call. */
	uv_run(loop, UV_RUN_NOWAIT);
}

#endif
