/* Test helper: deterministic byte patterns, so a reader can check what a writer stored
 * (seed = which value, offset = where in it) without keeping a copy. */
#ifndef KVN_TESTS_PATTERN_H
#define KVN_TESTS_PATTERN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

void pattern_fill(void *p, size_t n, uint64_t seed);
/* true when the n bytes at p are exactly pattern_fill's for seed. */
bool pattern_check(const void *p, size_t n, uint64_t seed);

#endif
