/* Test helper: deterministic byte patterns (see pattern.h). */
#include "tests/helpers/pattern.h"

/* Varies with the offset in two ways (i * 13 and i >> 11), so a slice shifted by a multiple
 * of 256 or a page does not match by accident. */
static inline uint8_t
byte_at(uint64_t seed, size_t i)
{
	return (uint8_t)((seed * 151 + i * 13 + (i >> 11)) & 0xff);
}

void
pattern_fill(void *p, size_t n, uint64_t seed)
{
	uint8_t *b = p;
	for (size_t i = 0; i < n; i++)
		b[i] = byte_at(seed, i);
}

bool
pattern_check(const void *p, size_t n, uint64_t seed)
{
	const uint8_t *b = p;
	for (size_t i = 0; i < n; i++)
		if (b[i] != byte_at(seed, i))
			return false;
	return true;
}
