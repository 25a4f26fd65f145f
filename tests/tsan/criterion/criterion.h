/* The part of Criterion's API the test files use, for the ThreadSanitizer build (make tsan):
 * Criterion itself cannot run under TSan (its shared-memory arena is mapped at random fixed
 * addresses, which TSan reserves: Snaipe/Criterion#274), so KVN_TSAN builds the same test files
 * against this header and tests/tsan/runner.c. Same semantics where the tests rely on them:
 * each test runs in its own process (suite .init, test .init, the test, test .fini, suite .fini),
 * a failed cr_assert ends the test and still runs the .fini functions, cr_expect goes on,
 * .timeout (or --timeout) kills a test, --jobs N runs N at a time, --tap=FILE writes TAP. */
#ifndef KVN_TSAN_CRITERION_H
#define KVN_TSAN_CRITERION_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

struct criterion_test_extra_data {
	void (*init)(void);
	void (*fini)(void);
	double timeout; /* seconds; 0: the runner's --timeout */
	bool disabled;
	const char *description;
};

struct criterion_test_params {
	size_t size;
	void *params;
	size_t length;
	void (*cleanup)(struct criterion_test_params *);
};

struct cri_test {
	const char *suite, *name;
	void (*fn)(void);
	void (*pfn)(void *);			      /* parameterized tests */
	struct criterion_test_params (*params)(void); /* their parameters */
	struct criterion_test_extra_data data;
	struct cri_test *next;
};

struct cri_suite {
	const char *name;
	struct criterion_test_extra_data data;
	struct cri_suite *next;
};

void cri_register_test(struct cri_test *t);
void cri_register_suite(struct cri_suite *s);

#define CRI_ID(S_, N_, what) cri_##S_##__##N_##_##what

#define Test(S_, N_, ...)                                                                          \
	static void CRI_ID(S_, N_, fn)(void);                                                      \
	static struct cri_test CRI_ID(S_, N_, t) = {                                               \
	    .suite = #S_, .name = #N_, .fn = CRI_ID(S_, N_, fn), .data = {__VA_ARGS__}};           \
	__attribute__((constructor)) static void CRI_ID(S_, N_, reg)(void)                         \
	{                                                                                          \
		cri_register_test(&CRI_ID(S_, N_, t));                                             \
	}                                                                                          \
	static void CRI_ID(S_, N_, fn)(void)

#define TestSuite(S_, ...)                                                                         \
	static struct cri_suite cri_suite_##S_ = {.name = #S_, .data = {__VA_ARGS__}};             \
	__attribute__((constructor)) static void cri_suite_reg_##S_(void)                          \
	{                                                                                          \
		cri_register_suite(&cri_suite_##S_);                                               \
	}

/* Assertions. The message, when given, starts with a string literal (as with Criterion). */
void cri_fail_at(bool fatal, const char *file, int line, const char *expr, const char *fmt, ...);
void cri_fail_str(bool fatal, const char *file, int line, const char *expr, const char *a,
		  const char *b, const char *fmt, ...);
void cri_skip_at(const char *file, int line, const char *fmt, ...) __attribute__((noreturn));
void cri_log(const char *level, const char *fmt, ...);

#define CRI_CHECK(fatal, cond, expr, ...)                                                          \
	do {                                                                                       \
		if (!(cond))                                                                       \
			cri_fail_at(fatal, __FILE__, __LINE__, expr, "" __VA_ARGS__);              \
	} while (0)
#define CRI_STR(fatal, want_eq, a, b, expr, ...)                                                   \
	do {                                                                                       \
		const char *cri_a_ = (a), *cri_b_ = (b);                                           \
		if ((strcmp(cri_a_, cri_b_) == 0) != (want_eq))                                    \
			cri_fail_str(fatal, __FILE__, __LINE__, expr, cri_a_, cri_b_,              \
				     "" __VA_ARGS__);                                              \
	} while (0)

#define cr_assert(c, ...)	   CRI_CHECK(true, (c), #c, __VA_ARGS__)
#define cr_assert_not(c, ...)	   CRI_CHECK(true, !(c), "!(" #c ")", __VA_ARGS__)
#define cr_assert_fail(...)	   CRI_CHECK(true, 0, "fail", __VA_ARGS__)
#define cr_assert_eq(a, b, ...)	   CRI_CHECK(true, (a) == (b), #a " == " #b, __VA_ARGS__)
#define cr_assert_neq(a, b, ...)   CRI_CHECK(true, (a) != (b), #a " != " #b, __VA_ARGS__)
#define cr_assert_lt(a, b, ...)	   CRI_CHECK(true, (a) < (b), #a " < " #b, __VA_ARGS__)
#define cr_assert_leq(a, b, ...)   CRI_CHECK(true, (a) <= (b), #a " <= " #b, __VA_ARGS__)
#define cr_assert_gt(a, b, ...)	   CRI_CHECK(true, (a) > (b), #a " > " #b, __VA_ARGS__)
#define cr_assert_geq(a, b, ...)   CRI_CHECK(true, (a) >= (b), #a " >= " #b, __VA_ARGS__)
#define cr_assert_null(p, ...)	   CRI_CHECK(true, (p) == NULL, #p " == NULL", __VA_ARGS__)
#define cr_assert_not_null(p, ...) CRI_CHECK(true, (p) != NULL, #p " != NULL", __VA_ARGS__)
#define cr_assert_arr_eq(a, b, n, ...)                                                             \
	CRI_CHECK(true, !memcmp((a), (b), (n)), #a " == " #b, __VA_ARGS__)
#define cr_assert_str_eq(a, b, ...)  CRI_STR(true, true, a, b, #a " == " #b, __VA_ARGS__)
#define cr_assert_str_neq(a, b, ...) CRI_STR(true, false, a, b, #a " != " #b, __VA_ARGS__)
#define cr_assert_str_empty(s, ...)  CRI_CHECK(true, !*(s), #s " is empty", __VA_ARGS__)

#define cr_expect(c, ...)	     CRI_CHECK(false, (c), #c, __VA_ARGS__)
#define cr_expect_not(c, ...)	     CRI_CHECK(false, !(c), "!(" #c ")", __VA_ARGS__)
#define cr_expect_eq(a, b, ...)	     CRI_CHECK(false, (a) == (b), #a " == " #b, __VA_ARGS__)
#define cr_expect_neq(a, b, ...)     CRI_CHECK(false, (a) != (b), #a " != " #b, __VA_ARGS__)
#define cr_expect_lt(a, b, ...)	     CRI_CHECK(false, (a) < (b), #a " < " #b, __VA_ARGS__)
#define cr_expect_leq(a, b, ...)     CRI_CHECK(false, (a) <= (b), #a " <= " #b, __VA_ARGS__)
#define cr_expect_gt(a, b, ...)	     CRI_CHECK(false, (a) > (b), #a " > " #b, __VA_ARGS__)
#define cr_expect_geq(a, b, ...)     CRI_CHECK(false, (a) >= (b), #a " >= " #b, __VA_ARGS__)
#define cr_expect_null(p, ...)	     CRI_CHECK(false, (p) == NULL, #p " == NULL", __VA_ARGS__)
#define cr_expect_not_null(p, ...)   CRI_CHECK(false, (p) != NULL, #p " != NULL", __VA_ARGS__)
#define cr_expect_str_eq(a, b, ...)  CRI_STR(false, true, a, b, #a " == " #b, __VA_ARGS__)
#define cr_expect_str_neq(a, b, ...) CRI_STR(false, false, a, b, #a " != " #b, __VA_ARGS__)
#define cr_expect_str_empty(s, ...)  CRI_CHECK(false, !*(s), #s " is empty", __VA_ARGS__)

#define cr_skip_test(...) cri_skip_at(__FILE__, __LINE__, "" __VA_ARGS__)
/* No cr_log_warn or cr_log_error: Debian's Criterion 2.4.1 exits 1 after either, even when
 * every test passed. A missing optional tool is cr_skip_test with the reason. */
#define cr_log_info(...) cri_log("info", "" __VA_ARGS__)

#endif
