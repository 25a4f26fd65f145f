/* Fuzzes key parsing (core/key.c): any bytes are accepted exactly when they are 1..512 bytes of
 * UTF-8 without control characters, a refusal has a reason, and an accepted key is
 * self-consistent: its text, length and digest are the input's, the fields of its LMCache form
 * lie inside the text, and parsing its printed form gives the same key. */
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "kvnode/kvnode.h"
#include "tests/fuzz/fuzz_common.h"

/* Whether p[0..n) is UTF-8 without control characters (C0, DEL, C1): what a key may be. */
static bool
clean_utf8(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n;) {
		uint8_t c = p[i];
		if (c < 0x20 || c == 0x7f)
			return false;
		if (c < 0x80) {
			i++;
			continue;
		}
		size_t l = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 0;
		if (!l || c > 0xf4 || i + l > n)
			return false;
		uint32_t cp = c & (0x3f >> (l - 1));
		for (size_t j = 1; j < l; j++) {
			if ((p[i + j] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (p[i + j] & 0x3f);
		}
		if ((l == 3 && cp < 0x800) || (l == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp <= 0x9f))
			return false;
		i += l;
	}
	return true;
}

/* A field the form has lies inside the text, holds no '@' and follows an '@' (or starts it). */
static void
check_span(const struct kvn_key *k, const struct kvn_key_field *f, const char *what)
{
	FZ_ASSERT((size_t)f->off + f->len <= k->len, "%s (%u+%u) outside the %u-byte key", what,
		  f->off, f->len, k->len);
	if (!f->len)
		return;
	FZ_ASSERT(f->off == 0 || k->str[f->off - 1] == '@', "%s not after an '@'", what);
}

static void
check_fields(const struct kvn_key *k)
{
	FZ_ASSERT(k->form <= KVN_KEY_KVNODE_FMT, "form %u", k->form);
	if (k->form == KVN_KEY_OPAQUE) {
		FZ_ASSERT(k->nfields == 0 && k->world_size == -1 && k->worker_id == -1 &&
			      k->layer_id == -1,
			  "an opaque key has no fields");
		return;
	}
	bool fmt = k->form == KVN_KEY_LMCACHE_V0 || k->form == KVN_KEY_KVNODE_FMT;
	FZ_ASSERT(fmt == (k->field[KVN_KEYF_FMT].len > 0), "fmt field of form %u", k->form);
	FZ_ASSERT((k->form == KVN_KEY_LMCACHE_V0) == (k->field[KVN_KEYF_DTYPE].len == 0),
		  "dtype field of form %u", k->form);
	static const char *const names[] = {"fmt", "model", "world_size", "worker_id", "hash",
					    "dtype"};
	for (unsigned i = 0; i < 6; i++) {
		check_span(k, &k->field[i], names[i]);
		if (i && i < 5)
			FZ_ASSERT(k->field[i].len > 0, "an LMCache key without %s", names[i]);
		FZ_ASSERT(i == KVN_KEYF_MODEL || !memchr(k->str + k->field[i].off, '@',
							 k->field[i].len),
			  "%s holds '@'", names[i]);
	}
	check_span(k, &k->tags, "tags");
	FZ_ASSERT(k->world_size >= 0 && k->worker_id >= 0, "LMCache key numbers %d %d",
		  k->world_size, k->worker_id);
	FZ_ASSERT((k->form == KVN_KEY_LMCACHE_LAYER) == (k->layer_id >= 0), "layer %d of form %u",
		  k->layer_id, k->form);
	char num[16];
	const struct kvn_key_field *ws = &k->field[KVN_KEYF_WORLD_SIZE];
	FZ_ASSERT(ws->len < sizeof(num), "world_size of %u digits", ws->len);
	memcpy(num, k->str + ws->off, ws->len);
	num[ws->len] = '\0';
	FZ_ASSERT(atoi(num) == k->world_size, "world_size %d, text %s", k->world_size, num);
	/* LMCache's abs(hash) % n: defined for hex hashes, in range. */
	int m = kvn_key_hash_mod(k, 7);
	FZ_ASSERT(m == -EINVAL || (m >= 0 && m < 7), "hash_mod %d", m);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kvn_key k, again;
	char err[256] = "";
	int rc = kvn_key_parse(&k, (const char *)data, size, err, sizeof(err));
	if (rc < 0) {
		FZ_ASSERT(rc == -EINVAL, "refusal %d is not -EINVAL", rc);
		FZ_ASSERT(!size || size > KVN_KEY_MAX || !clean_utf8(data, size),
			  "refused clean UTF-8 text of %zu bytes: %s", size, err);
		FZ_ASSERT(err[0], "a refused key has no reason");
		/* The NUL-terminated entry point refuses the same text (unless a NUL cut it). */
		if (!memchr(data, '\0', size) && size <= KVN_KEY_MAX) {
			char *s = strndup((const char *)data, size);
			FZ_ASSERT(s, "out of memory");
			FZ_ASSERT(kvn_key_from_str(&again, s) < 0,
				  "from_str accepts a refused key");
			free(s);
		}
		return 0;
	}
	FZ_ASSERT(rc == 0, "kvn_key_parse returned %d", rc);
	FZ_ASSERT(k.len == size && size >= 1 && size <= KVN_KEY_MAX, "len %u for %zu bytes", k.len,
		  size);
	FZ_ASSERT(!memcmp(k.str, data, size) && k.str[size] == '\0', "text differs from the input");
	FZ_ASSERT(clean_utf8(data, size), "accepted text that is not clean UTF-8");
	FZ_ASSERT(kvn_digest_eq(k.digest, kvn_digest_of(data, size)), "digest is not the text's");
	check_fields(&k);

	char out[KVN_KEY_MAX + 1], small[8];
	size_t n = kvn_key_print(&k, out, sizeof(out));
	FZ_ASSERT(n == size && !strcmp(out, k.str), "print gives other text");
	FZ_ASSERT(kvn_key_print(&k, small, sizeof(small)) == size && strlen(small) < sizeof(small),
		  "print into a short buffer overflows or misreports");
	FZ_ASSERT(kvn_key_from_str(&again, out) == 0, "printed key does not parse");
	FZ_ASSERT(again.len == k.len && again.form == k.form && again.nfields == k.nfields &&
		      kvn_digest_eq(again.digest, k.digest) && again.world_size == k.world_size &&
		      again.worker_id == k.worker_id && again.layer_id == k.layer_id &&
		      !memcmp(again.field, k.field, sizeof(k.field)),
		  "the printed key parses to another key");
	return 0;
}
