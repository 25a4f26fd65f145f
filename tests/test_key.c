/* Keys: LMCache forms recognised, opaque keys accepted, bad keys refused with a reason. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
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

/* The forms are LMCache's own (lmcache/utils.py: CacheEngineKey.to_string and from_string,
 * LayerCacheEngineKey, parse_cache_key): current keys have no fmt@ field. */
Test(key, lmcache_current_form_is_recognised_with_its_fields)
{
	cr_assert_eq(parse("meta-llama/Llama-3.1-8B@8@3@1a2b3c4d@bfloat16"), 0, "%s", err);
	cr_assert_eq(key.form, KVN_KEY_LMCACHE);
	cr_assert_eq(key.nfields, 5);
	cr_assert_eq(key.field[KVN_KEYF_FMT].len, 0, "no fmt field");
	expect_field(KVN_KEYF_MODEL, "meta-llama/Llama-3.1-8B");
	expect_field(KVN_KEYF_WORLD_SIZE, "8");
	expect_field(KVN_KEYF_WORKER_ID, "3");
	expect_field(KVN_KEYF_HASH, "1a2b3c4d");
	expect_field(KVN_KEYF_DTYPE, "bfloat16");
	cr_assert_eq(key.world_size, 8);
	cr_assert_eq(key.worker_id, 3);
	cr_assert_eq(key.layer_id, -1);
	cr_assert_eq(key.ntags, 0);
}

Test(key, lmcache_current_form_with_tags_is_recognised_with_its_tags)
{
	cr_assert_eq(parse("m@1@0@ff@half@lora%adapter1@user%42"), 0, "%s", err);
	cr_assert_eq(key.form, KVN_KEY_LMCACHE);
	cr_assert_eq(key.worker_id, 0);
	cr_assert_eq(key.ntags, 2);
	cr_assert_eq(key.tags.len, strlen("lora%adapter1@user%42"));
	cr_assert(!memcmp(key.str + key.tags.off, "lora%adapter1@user%42", key.tags.len));
}

Test(key, lmcache_layer_keys_are_recognised_with_their_layer)
{
	cr_assert_eq(parse("Qwen/Qwen3-8B@2@1@-7f3a@half@17"), 0, "%s", err);
	cr_assert_eq(key.form, KVN_KEY_LMCACHE_LAYER);
	cr_assert_eq(key.layer_id, 17);
	expect_field(KVN_KEYF_HASH, "-7f3a");
	cr_assert_eq(parse("Qwen/Qwen3-8B@2@1@7f3a@half@0@lora%a"), 0, "%s", err);
	cr_assert_eq(key.form, KVN_KEY_LMCACHE_LAYER);
	cr_assert_eq(key.layer_id, 0);
	cr_assert_eq(key.ntags, 1);
}

Test(key, every_lmcache_dtype_name_is_recognised)
{
	static const char *const names[] = {
	    "half",  "bfloat16", "float", "double",	"int8",	      "uint8",	   "int16",
	    "int32", "int64",	 "bool",  "fp8_e4m3fn", "fp8_e4m3fnuz", "fp8_e5m2", "fp8_e5m2fnuz"};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char s[128];
		snprintf(s, sizeof(s), "m@1@0@ab@%s", names[i]);
		cr_assert_eq(parse(s), 0, "%s: %s", s, err);
		cr_assert_eq(key.form, KVN_KEY_LMCACHE, "%s is a current key", s);
		expect_field(KVN_KEYF_DTYPE, names[i]);
	}
}

Test(key, older_five_field_form_is_recognised)
{
	cr_assert_eq(parse("vllm@mistral-7b@2@1@-7f3a"), 0, "%s", err);
	cr_assert_eq(key.form, KVN_KEY_LMCACHE_V0);
	cr_assert_eq(key.nfields, 5);
	cr_assert_eq(key.world_size, 2);
	cr_assert_eq(key.worker_id, 1);
	expect_field(KVN_KEYF_FMT, "vllm");
	expect_field(KVN_KEYF_MODEL, "mistral-7b");
	expect_field(KVN_KEYF_HASH, "-7f3a");
	cr_assert_eq(key.field[KVN_KEYF_DTYPE].len, 0);
	cr_assert_eq(parse("vllm@mistral-7b@2@1@123456789012"), 0, "%s", err);
	cr_assert_eq(key.form, KVN_KEY_LMCACHE_V0, "a decimal hash");
}

Test(key, kvnodes_earlier_six_field_form_is_still_accepted_as_input)
{
	cr_assert_eq(parse("vllm@meta-llama/Llama-3.1-8B@8@3@1a2b3c4d@bfloat16"), 0, "%s", err);
	cr_assert_eq(key.form, KVN_KEY_KVNODE_FMT);
	expect_field(KVN_KEYF_FMT, "vllm");
	expect_field(KVN_KEYF_MODEL, "meta-llama/Llama-3.1-8B");
	expect_field(KVN_KEYF_DTYPE, "bfloat16");
	cr_assert_eq(key.world_size, 8);
	cr_assert_eq(key.worker_id, 3);
	cr_assert_eq(parse("vllm@m@1@0@ff@half@lora%x"), 0, "%s", err);
	cr_assert_eq(key.form, KVN_KEY_KVNODE_FMT);
	cr_assert_eq(key.ntags, 1);
}

Test(key, text_that_only_looks_like_a_key_stays_opaque)
{
	const char *opaque[] = {
	    "hello",
	    "a@b@c@d@e",		 /* no numbers where LMCache has them */
	    "m@1@0@nothex@half",	 /* chunk hash not hex */
	    "m@1@0@ff@halF",		 /* not one of LMCache's dtype names */
	    "m@1@0@ff@half@notatag",	 /* a sixth part neither a layer nor tag%value */
	    "m@1@0@ff@half@3@notatag",	 /* after the layer, tags only */
	    "@1@0@ff@half",		 /* empty model */
	    "x@y@1@2",			 /* too few parts */
	    "vllm@m@1@0@ff@notadtype",	 /* the six-field form needs a dtype too */
	};
	for (size_t i = 0; i < sizeof(opaque) / sizeof(opaque[0]); i++) {
		cr_assert_eq(parse(opaque[i]), 0, "%s: %s", opaque[i], err);
		cr_assert_eq(key.form, KVN_KEY_OPAQUE, "%s is opaque", opaque[i]);
		cr_assert_eq(key.world_size, -1);
		cr_assert_eq(key.layer_id, -1);
	}
}

Test(key, utf8_model_names_and_leading_spaces_are_keys_like_any_other)
{
	const char *ok[] = {"模型/千问@1@0@ab@half", " leading-space@1@0@ab@half",
			    "trailing space ", "caf\xc3\xa9", "emoji \xf0\x9f\x98\x80"};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		cr_assert_eq(parse(ok[i]), 0, "%s: %s", ok[i], err);
	cr_assert_eq(parse("模型/千问@1@0@ab@half"), 0);
	cr_assert_eq(key.form, KVN_KEY_LMCACHE);
	expect_field(KVN_KEYF_MODEL, "模型/千问");
	cr_assert_eq(parse(" leading-space@1@0@ab@half"), 0);
	cr_assert_eq(key.form, KVN_KEY_LMCACHE);
	expect_field(KVN_KEYF_MODEL, " leading-space");
}

Test(key, the_chunk_hash_picks_a_shard_as_lmcaches_abs_hash_modulo)
{
	/* abs(int("-ff", 16)) % 3 == 0, 0x10 % 3 == 1, a 128-bit hash % 7 as Python has it. */
	cr_assert_eq(parse("m@1@0@-ff@half"), 0);
	cr_assert_eq(kvn_key_hash_mod(&key, 3), 0);
	cr_assert_eq(parse("m@1@0@10@half@2"), 0);
	cr_assert_eq(kvn_key_hash_mod(&key, 3), 1);
	cr_assert_eq(parse("m@1@0@ffffffffffffffffffffffffffffffff@bfloat16"), 0);
	cr_assert_eq(kvn_key_hash_mod(&key, 7), (int)((((unsigned __int128)1 << 127) * 2 - 1) % 7));
	cr_assert_eq(parse("opaque"), 0);
	cr_assert_eq(kvn_key_hash_mod(&key, 3), -EINVAL);
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

Test(key, control_characters_and_bytes_that_are_not_utf8_are_refused_with_their_offset)
{
	cr_assert_eq(kvn_key_parse(&key, "ab\ncd", 5, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "0x0a") && strstr(err, "offset 2"), "reason: %s", err);
	cr_assert_eq(kvn_key_parse(&key, "ab\0cd", 5, err, sizeof(err)), -EINVAL);
	cr_assert_eq(parse("ab\x7f"), -EINVAL, "DEL");
	cr_assert_eq(parse("ab\xc2\x85"), -EINVAL, "C1 control U+0085");
	cr_assert(strstr(err, "U+0085"), "reason: %s", err);
	cr_assert_eq(parse("ab\xff"), -EINVAL, "not UTF-8");
	cr_assert(strstr(err, "UTF-8") && strstr(err, "offset 2"), "reason: %s", err);
	cr_assert_eq(parse("\xc0\xaf"), -EINVAL, "overlong");
	cr_assert_eq(parse("\xed\xa0\x80"), -EINVAL, "surrogate");
	cr_assert_eq(parse("caf\xc3"), -EINVAL, "cut short");
	cr_assert_eq(parse("inner space ok"), 0);
}
