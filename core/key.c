/* Keys: the LMCache CacheEngineKey generations (docs/architecture.md §3), opaque keys, and the
 * 128-bit xxh3 digest that every map and directory lookup uses. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "core/log.h"
#include "core/utf8.h"

KVN_API struct kvn_digest
kvn_digest_of(const void *data, size_t len)
{
	XXH128_hash_t h = XXH3_128bits(data, len);
	return (struct kvn_digest){.lo = h.low64, .hi = h.high64};
}

/* ------------------------------------------------------------------------------------------
 * Recognising the LMCache forms. LMCache's own parser (lmcache/utils.py: parse_cache_key,
 * CacheEngineKey.from_string, LayerCacheEngineKey.from_string) splits at '@'; world size,
 * worker id and layer are int(), the chunk hash int(x, 16) (to_string writes f"{h:x}", so a
 * negative hash has a '-'), the dtype one of TORCH_DTYPE_TO_STR_DTYPE's names, and every part
 * after the dtype (or the layer) is "tag%value". A key LMCache's parser would refuse stays
 * opaque here.
 * ------------------------------------------------------------------------------------------ */

#define MAX_PARTS 64 /* '@'-parts looked at; more make an opaque key */

/* TORCH_DTYPE_TO_STR_DTYPE's values (lmcache/utils.py), fp8 ones included. */
static const char *const dtype_names[] = {
    "half",	    "bfloat16",	    "float",	 "double",	 "int8",
    "uint8",	    "int16",	    "int32",	 "int64",	 "bool",
    "fp8_e4m3fn", "fp8_e4m3fnuz", "fp8_e5m2", "fp8_e5m2fnuz",
};

static bool
is_dtype(const char *s, size_t n)
{
	for (size_t i = 0; i < sizeof(dtype_names) / sizeof(dtype_names[0]); i++)
		if (strlen(dtype_names[i]) == n && !memcmp(dtype_names[i], s, n))
			return true;
	return false;
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
is_hash(const char *s, size_t n)
{
	size_t i = (n > 1 && s[0] == '-') ? 1 : 0; /* Python's f"{h:x}" of a negative hash */
	if (n == 0)
		return false;
	for (; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f') ||
		      (s[i] >= 'A' && s[i] <= 'F')))
			return false;
	return true;
}

struct parts {
	struct kvn_key_field p[MAX_PARTS];
	size_t n;
};

static bool
part_is(const struct kvn_key *key, const struct parts *ps, size_t i,
	bool (*test)(const char *, size_t))
{
	return i < ps->n && test(key->str + ps->p[i].off, ps->p[i].len);
}

/* Parts from..n-1 are all tag%value; fills key->tags and ntags. */
static bool
take_tags(struct kvn_key *key, const struct parts *ps, size_t from)
{
	key->ntags = 0;
	key->tags = (struct kvn_key_field){0, 0};
	for (size_t i = from; i < ps->n; i++)
		if (!memchr(key->str + ps->p[i].off, '%', ps->p[i].len))
			return false;
	if (from < ps->n) {
		key->ntags = (uint8_t)(ps->n - from);
		key->tags.off = ps->p[from].off;
		key->tags.len = (uint16_t)(key->len - ps->p[from].off);
	}
	return true;
}

static void
set_field(struct kvn_key *key, enum kvn_key_part f, const struct parts *ps, size_t i)
{
	key->field[f] = ps->p[i];
}

static void
classify(struct kvn_key *key)
{
	const char *s = key->str;
	struct parts ps = {.n = 0};
	size_t start = 0;

	memset(key->field, 0, sizeof(key->field));
	key->form = KVN_KEY_OPAQUE;
	key->nfields = 0;
	key->world_size = key->worker_id = key->layer_id = -1;
	key->ntags = 0;
	key->tags = (struct kvn_key_field){0, 0};
	for (size_t i = 0; i <= key->len; i++) {
		if (i < key->len && s[i] != '@')
			continue;
		if (ps.n == MAX_PARTS)
			return;
		ps.p[ps.n++] = (struct kvn_key_field){(uint16_t)start, (uint16_t)(i - start)};
		start = i + 1;
	}
	if (ps.n < 5 || ps.p[0].len == 0 || ps.p[1].len == 0)
		return;

	size_t ws, wid;
	if (part_is(key, &ps, 1, all_digits) && part_is(key, &ps, 2, all_digits) &&
	    part_is(key, &ps, 3, is_hash) && part_is(key, &ps, 4, is_dtype)) {
		/* Current: model@ws@wid@hash@dtype, then a layer (all digits) or tags. */
		bool layer = part_is(key, &ps, 5, all_digits);
		if (!take_tags(key, &ps, layer ? 6 : 5))
			return;
		key->form = layer ? KVN_KEY_LMCACHE_LAYER : KVN_KEY_LMCACHE;
		if (layer)
			key->layer_id = atoi(s + ps.p[5].off);
		set_field(key, KVN_KEYF_MODEL, &ps, 0);
		set_field(key, KVN_KEYF_WORLD_SIZE, &ps, 1);
		set_field(key, KVN_KEYF_WORKER_ID, &ps, 2);
		set_field(key, KVN_KEYF_HASH, &ps, 3);
		set_field(key, KVN_KEYF_DTYPE, &ps, 4);
		ws = 1;
		wid = 2;
	} else if (part_is(key, &ps, 2, all_digits) && part_is(key, &ps, 3, all_digits) &&
		   part_is(key, &ps, 4, is_hash) &&
		   (ps.n == 5 || (part_is(key, &ps, 5, is_dtype) && take_tags(key, &ps, 6)))) {
		/* fmt@model@ws@wid@hash (older LMCache) or fmt@...@hash@dtype[@tags] (kvnode's
		 * earlier documentation). */
		key->form = ps.n == 5 ? KVN_KEY_LMCACHE_V0 : KVN_KEY_KVNODE_FMT;
		set_field(key, KVN_KEYF_FMT, &ps, 0);
		set_field(key, KVN_KEYF_MODEL, &ps, 1);
		set_field(key, KVN_KEYF_WORLD_SIZE, &ps, 2);
		set_field(key, KVN_KEYF_WORKER_ID, &ps, 3);
		set_field(key, KVN_KEYF_HASH, &ps, 4);
		if (ps.n > 5)
			set_field(key, KVN_KEYF_DTYPE, &ps, 5);
		ws = 2;
		wid = 3;
	} else {
		return;
	}
	key->nfields = (uint8_t)ps.n;
	key->world_size = atoi(s + ps.p[ws].off);
	key->worker_id = atoi(s + ps.p[wid].off);
}

/* ------------------------------------------------------------------------------------------
 * Text: UTF-8 without control characters. LMCache keys are Python str (model names are not
 * ASCII-only, and may start with a space); a control character would break the line-based
 * listings (LIST replies, `kvnode ls`) and log lines.
 * ------------------------------------------------------------------------------------------ */

KVN_API int
kvn_key_parse(struct kvn_key *key, const char *s, size_t len, char *err, size_t errlen)
{
	if (!s || len == 0)
		return kvn_seterr(-EINVAL, err, errlen, "empty key");
	if (len > KVN_KEY_MAX)
		return kvn_seterr(-EINVAL, err, errlen,
				  "key is %zu bytes, longer than the maximum of %d", len,
				  KVN_KEY_MAX);
	for (size_t i = 0; i < len;) {
		uint32_t cp;
		size_t n = kvn_utf8_decode((const unsigned char *)s + i, len - i, &cp);
		if (n && !kvn_utf8_is_control(cp))
			i += n;
		else if (n && (cp < 0x20 || cp == 0x7f))
			return kvn_seterr(-EINVAL, err, errlen,
					  "key has a control character 0x%02x at offset %zu", cp,
					  i);
		else if (n)
			return kvn_seterr(-EINVAL, err, errlen,
					  "key has a control character U+%04X at offset %zu", cp,
					  i);
		else
			return kvn_seterr(-EINVAL, err, errlen,
					  "key is not UTF-8: byte 0x%02x at offset %zu starts no "
					  "valid character",
					  (unsigned)(unsigned char)s[i], i);
	}
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

KVN_API int
kvn_key_hash_mod(const struct kvn_key *key, uint32_t n)
{
	const struct kvn_key_field *h = &key->field[KVN_KEYF_HASH];
	/* The older form's hash was not always hex (and LMCache never sharded by it). */
	if (n == 0 || h->len == 0 || key->form == KVN_KEY_OPAQUE ||
	    key->form == KVN_KEY_LMCACHE_V0)
		return -EINVAL;
	/* abs(chunk_hash) % n, the hex digits taken one at a time (the hash is wider than any C
	 * integer: Python's int has no bound). */
	uint64_t r = 0;
	for (size_t i = key->str[h->off] == '-'; i < h->len; i++) {
		char c = key->str[h->off + i];
		unsigned d = c <= '9' ? (unsigned)(c - '0') : (unsigned)((c | 0x20) - 'a' + 10);
		r = (r * 16 + d) % n;
	}
	return (int)r;
}
