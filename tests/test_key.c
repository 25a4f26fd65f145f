/* Keys: LMCache forms recognised, opaque keys accepted, bad keys refused with a reason. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>
#include <xxhash.h>

#include "kvnode/kvnode.h"

static struct kvn_key key;
static char err[256];

static int
parse(const char *s)
{
	err[0] = '\0';
	return kvn_key_parse(&key, s, strlen(s), err, sizeof(err));
}

static void
expect_field(int i, const char *want)
{
	cr_assert_eq(key.field[i].len, strlen(want), "field %d length", i);
	cr_assert(!memcmp(key.str + key.field[i].off, want, strlen(want)), "field %d is %s", i, want);
}

Test(key, lmcache_current_form_is_recognised_with_its_fields)
{
	cr_assert_eq(parse("vllm@meta-llama/Llama-3.1-8B@8@3@1a2b3c4d@bfloat16"), 0, "%s", err);
	cr_assert_eq(key.form, KVN_KEY_LMCACHE);
	cr_assert_eq(key.nfields, 6);
	expect_field(0, "vllm");
	expect_field(1, "meta-llama/Llama-3.1-8B");
	expect_field(4, "1a2b3c4d");
	expect_field(5, "bfloat16");
	cr_assert_eq(key.world_size, 8);
	cr_assert_eq(key.worker_id, 3);
}

Test(key, lmcache_form_with_tag_suffixes_is_recognised)
{
	cr_assert_eq(parse("vllm@m@1@0@ff@half@lora%adapter1@user%42"), 0, "%s", err);
	cr_assert_eq(key.form, KVN_KEY_LMCACHE);
	cr_assert_eq(key.worker_id, 0);
}

Test(key, older_five_field_form_is_recognised)
{
	cr_assert_eq(parse("vllm@mistral-7b@2@1@-7f3a"), 0, "%s", err);
	cr_assert_eq(key.form, KVN_KEY_LMCACHE_V0);
	cr_assert_eq(key.nfields, 5);
	cr_assert_eq(key.world_size, 2);
	cr_assert_eq(key.worker_id, 1);
	expect_field(4, "-7f3a");
}

Test(key, text_that_only_looks_like_a_key_stays_opaque)
{
	const char *opaque[] = {
		"hello",
		"a@b@c@d@e", /* world_size not a number */
		"vllm@m@1@0@nothex@half", /* chunk hash not hex */
		"vllm@m@1@0@ff@half@notatag", /* 7th field without tag%value */
		"vllm@@1@0@ff@half", /* empty model */
		"x@y@1@2", /* too few fields */
	};
	for (size_t i = 0; i < sizeof(opaque) / sizeof(opaque[0]); i++) {
		cr_assert_eq(parse(opaque[i]), 0, "%s: %s", opaque[i], err);
		cr_assert_eq(key.form, KVN_KEY_OPAQUE, "%s is opaque", opaque[i]);
		cr_assert_eq(key.world_size, -1);
	}
}

Test(key, digest_is_xxh3_128_of_the_text_and_print_round_trips)
{
	const char *s = "vllm@m@1@0@ff@half";
	cr_assert_eq(parse(s), 0);
	XXH128_hash_t h = XXH3_128bits(s, strlen(s));
	cr_assert_eq(key.digest.lo, h.low64);
	cr_assert_eq(key.digest.hi, h.high64);
	char out[KVN_KEY_MAX + 1];
	cr_assert_eq(kvn_key_print(&key, out, sizeof(out)), strlen(s));
	cr_assert_str_eq(out, s);

	struct kvn_key other;
	cr_assert_eq(kvn_key_from_str(&other, "vllm@m@1@0@ff@halF"), 0);
	cr_assert(!kvn_digest_eq(key.digest, other.digest), "different keys, different digests");
}

Test(key, empty_key_is_refused)
{
	cr_assert_eq(parse(""), -EINVAL);
	cr_assert(strstr(err, "empty"), "reason: %s", err);
	cr_assert_eq(kvn_key_from_str(&key, NULL), -EINVAL);
}

Test(key, over_long_key_is_refused_and_the_maximum_accepted)
{
	char s[KVN_KEY_MAX + 2];
	memset(s, 'k', sizeof(s));
	s[KVN_KEY_MAX] = '\0';
	cr_assert_eq(parse(s), 0, "exactly %d bytes is fine: %s", KVN_KEY_MAX, err);
	s[KVN_KEY_MAX] = 'k';
	s[KVN_KEY_MAX + 1] = '\0';
	cr_assert_eq(parse(s), -EINVAL);
	cr_assert(strstr(err, "513"), "reason names the length: %s", err);
	cr_assert_eq(kvn_key_from_str(&key, s), -EINVAL);
}

Test(key, non_printable_bytes_are_refused_with_their_offset)
{
	cr_assert_eq(kvn_key_parse(&key, "ab\ncd", 5, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "0x0a") && strstr(err, "offset 2"), "reason: %s", err);
	cr_assert_eq(kvn_key_parse(&key, "ab\0cd", 5, err, sizeof(err)), -EINVAL);
	cr_assert_eq(parse("caf\xc3\xa9"), -EINVAL, "non-ASCII bytes are refused");
	cr_assert_eq(parse(" padded"), -EINVAL);
	cr_assert_eq(parse("padded "), -EINVAL);
	cr_assert_eq(parse("inner space ok"), 0);
}
