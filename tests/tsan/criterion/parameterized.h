/* Criterion's parameterized tests, for the ThreadSanitizer build (see criterion.h here): the
 * test runs once per parameter, each run in its own process. */
#ifndef KVN_TSAN_CRITERION_PARAMETERIZED_H
#define KVN_TSAN_CRITERION_PARAMETERIZED_H

#include "criterion/criterion.h"

#define cr_make_param_array(type, array, len, ...)                                                 \
	((struct criterion_test_params){.size = sizeof(type), .params = (array), .length = (len)})

#define ParameterizedTestParameters(S_, N_)                                                        \
	static struct criterion_test_params CRI_ID(S_, N_, params)(void)

#define ParameterizedTest(arg, S_, N_, ...)                                                        \
	static struct criterion_test_params CRI_ID(S_, N_, params)(void);                          \
	static void CRI_ID(S_, N_, pfn)(arg);                                                      \
	static struct cri_test CRI_ID(S_, N_, t) = {.suite = #S_,                                  \
						    .name = #N_,                                   \
						    .pfn = (void (*)(void *))CRI_ID(S_, N_, pfn),  \
						    .params = CRI_ID(S_, N_, params),              \
						    .data = {__VA_ARGS__}};                        \
	__attribute__((constructor)) static void CRI_ID(S_, N_, reg)(void)                         \
	{                                                                                          \
		cri_register_test(&CRI_ID(S_, N_, t));                                             \
	}                                                                                          \
	static void CRI_ID(S_, N_, pfn)(arg)

#endif
