/* UTF-8 decoding and the clean-text rule (core/utf8.h). */
#include "core/utf8.h"

size_t
kvn_utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
	unsigned char c = s[0];
	size_t len;
	uint32_t v, min;
	*cp = c;
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2, v = c & 0x1fu, min = 0x80;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3, v = c & 0x0fu, min = 0x800;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4, v = c & 0x07u, min = 0x10000;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		v = v << 6 | (s[i] & 0x3fu);
	}
	if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff))
		return 0; /* overlong, beyond Unicode, or a surrogate */
	*cp = v;
	return len;
}

bool
kvn_utf8_clean(const char *s, size_t n, size_t *bad)
{
	for (size_t i = 0; i < n;) {
		uint32_t cp;
		size_t l = kvn_utf8_decode((const unsigned char *)s + i, n - i, &cp);
		if (!l || kvn_utf8_is_control(cp)) {
			if (bad)
				*bad = i;
			return false;
		}
		i += l;
	}
	return true;
}
