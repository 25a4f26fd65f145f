/* Keys: LMCache CacheEngineKey string forms (docs/architecture.md §3), opaque keys, and the 128-bit
 * xxh3 digest that every map and directory lookup uses. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "node/log.h"

KVN_API struct kvn_digest
kvn_digest_of(const void *data, size_t len)
{
	XXH128_hash_t h = XXH3_128bits(data, len);
	return (struct kvn_digest){ .lo = h.low64, .hi = h.high64 };
}

static bool
all_digits(const char *s, size_t n)
{
	if (n == 0 || n > 9) /* fits an int32 */
		return false;
	for (size_t i = 0; i < n; i++)
		if (s[i] < '0' || s[i] > '9')
			return false;
	return true;
}

static bool
all_hex(const char *s, size_t n)
{
	if (n == 0)
		return false;
	size_t i = (n > 1 && s[0] == '-') ? 1 : 0; /* Python's %x of a negative hash */
	for (; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f') ||
		      (s[i] >= 'A' && s[i] <= 'F')))
			return false;
	return true;
}

/* Recognises the LMCache forms; leaves the key opaque when the text does not fit one. The
 * model name may hold '/' but never '@', so '@' splits fields unambiguously. */
static void
classify(struct kvn_key *key)
{
	const char *s = key->str;
	struct kvn_key_field f[6];
	size_t nf = 0, start = 0;
	bool tags_ok = true;

	for (size_t i = 0; i <= key->len; i++) {
		if (i < key->len && s[i] != '@')
			continue;
		if (nf < 6) {
			f[nf].off = (uint16_t)start;
			f[nf].len = (uint16_t)(i - start);
		} else if (!memchr(s + start, '%', i - start)) {
			tags_ok = false; /* fields past the sixth must be tag%value */
		}
		nf++;
		start = i + 1;
	}
	key->form = KVN_KEY_OPAQUE;
	key->nfields = 0;
	key->world_size = key->worker_id = -1;
	if (nf < 5 || (nf > 6 && !tags_ok))
		return;
	for (size_t i = 0; i < (nf < 6 ? nf : 6); i++)
		if (f[i].len == 0)
			return;
	if (!all_digits(s + f[2].off, f[2].len) || !all_digits(s + f[3].off, f[3].len))
		return;
	if (nf == 5) {
		/* The older form printed the hash as a decimal int or a hex string. */
		if (!all_hex(s + f[4].off, f[4].len))
			return;
		key->form = KVN_KEY_LMCACHE_V0;
		key->nfields = 5;
	} else {
		if (!all_hex(s + f[4].off, f[4].len))
			return;
		key->form = KVN_KEY_LMCACHE;
		key->nfields = 6;
	}
	memcpy(key->field, f, sizeof(f[0]) * key->nfields);
	key->world_size = atoi(s + f[2].off);
	key->worker_id = atoi(s + f[3].off);
}

KVN_API int
kvn_key_parse(struct kvn_key *key, const char *s, size_t len, char *err, size_t errlen)
{
	if (!s || len == 0)
		return kvn_seterr(err, errlen, "empty key");
	if (len > KVN_KEY_MAX)
		return kvn_seterr(err, errlen, "key is %zu bytes, longer than the maximum of %d",
				  len, KVN_KEY_MAX);
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c > 0x7e)
			return kvn_seterr(err, errlen,
					  "key has a non-printable byte 0x%02x at offset %zu", c, i);
	}
	/* lm:// pads keys with spaces, so edge spaces could not survive a round trip. */
	if (s[0] == ' ' || s[len - 1] == ' ')
		return kvn_seterr(err, errlen, "key starts or ends with a space");
	memcpy(key->str, s, len);
	key->str[len] = '\0';
	key->len = (uint16_t)len;
	key->digest = kvn_digest_of(s, len);
	classify(key);
	return 0;
}

KVN_API int
kvn_key_from_str(struct kvn_key *key, const char *s)
{
	return kvn_key_parse(key, s, s ? strnlen(s, KVN_KEY_MAX + 1) : 0, NULL, 0);
}

KVN_API size_t
kvn_key_print(const struct kvn_key *key, char *out, size_t outlen)
{
	if (outlen)
		snprintf(out, outlen, "%s", key->str);
	return key->len;
}
