/* Fuzzes key parsing (node/key.c): any bytes are accepted or refused with a reason, and an
 * accepted key is self-consistent: its text, length and digest are the input's, its LMCache
 * fields lie inside the text, and parsing its printed form gives the same key. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kvnode/kvnode.h"
#include "tests/fuzz/fuzz_common.h"

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fz_init();
	return 0;
}

static void
check_fields(const struct kvn_key *k)
{
	FZ_ASSERT(k->form <= KVN_KEY_LMCACHE, "form %u", k->form);
	if (k->form == KVN_KEY_OPAQUE) {
		FZ_ASSERT(k->nfields == 0 && k->world_size == -1 && k->worker_id == -1,
			  "an opaque key has no fields");
		return;
	}
	FZ_ASSERT(k->nfields == (k->form == KVN_KEY_LMCACHE ? 6 : 5), "nfields %u for form %u",
		  k->nfields, k->form);
	size_t end = 0;
	for (unsigned i = 0; i < k->nfields; i++) {
		const struct kvn_key_field *f = &k->field[i];
		FZ_ASSERT(f->len > 0 && f->off >= end && (size_t)f->off + f->len <= k->len,
			  "field %u (%u+%u) outside the %u-byte key or overlapping", i, f->off,
			  f->len, k->len);
		FZ_ASSERT(!memchr(k->str + f->off, '@', f->len), "field %u holds '@'", i);
		FZ_ASSERT(i == 0 || k->str[f->off - 1] == '@', "field %u not after an '@'", i);
		end = (size_t)f->off + f->len;
	}
	FZ_ASSERT(k->world_size >= 0 && k->worker_id >= 0, "LMCache key numbers %d %d",
		  k->world_size, k->worker_id);
	char num[16];
	memcpy(num, k->str + k->field[2].off, k->field[2].len);
	num[k->field[2].len] = '\0';
	FZ_ASSERT(atoi(num) == k->world_size, "world_size %d, text %s", k->world_size, num);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct kvn_key k, again;
	char err[256] = "";
	int rc = kvn_key_parse(&k, (const char *)data, size, err, sizeof(err));
	if (rc < 0) {
		FZ_ASSERT(rc == -EINVAL, "refusal %d is not -EINVAL", rc);
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
	for (size_t i = 0; i < size; i++)
		FZ_ASSERT(data[i] >= 0x20 && data[i] <= 0x7e, "accepted byte 0x%02x", data[i]);
	FZ_ASSERT(data[0] != ' ' && data[size - 1] != ' ', "accepted edge spaces");
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
		      again.worker_id == k.worker_id &&
		      !memcmp(again.field, k.field, sizeof(k.field[0]) * k.nfields),
		  "the printed key parses to another key");
	return 0;
}
