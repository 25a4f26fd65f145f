/* UTF-8 as kvnode takes text from peers, files and the environment: decoding one character
 * strictly (no overlong forms, surrogates or code points past U+10FFFF), and the rule for text
 * that goes into keys, logs, JSON and metric labels: no control characters. */
#ifndef KVN_CORE_UTF8_H
#define KVN_CORE_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Length (1..4) of the valid UTF-8 character at s (n > 0 bytes there), its code point in *cp;
 * 0 when no valid character starts there (then *cp is the byte). */
size_t kvn_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp);

/* C0 (U+0000..U+001F), DEL and C1 (U+0080..U+009F). */
static inline bool
kvn_utf8_is_control(uint32_t cp)
{
	return cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp <= 0x9f);
}

/* Whether s[0..n) is valid UTF-8 without control characters; *bad (may be NULL) gets the
 * offset of the first byte that is not. */
bool kvn_utf8_clean(const char *s, size_t n, size_t *bad);

#endif
