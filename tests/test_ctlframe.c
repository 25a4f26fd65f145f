/* The scheduler's control frame codec (node/ctlframe.*): wire layout, and that every decoder
 * refuses what does not add up (lengths, counts, caps, field ranges) instead of trusting it. */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "node/cluster/ctlframe.h"

static char why[512];

Test(ctlframe, header_round_trips_and_is_little_endian_on_the_wire)
{
	struct kvn_cf_hdr h = {.version = KVN_CF_VERSION,
			       .type = KVN_CF_LOOKUP,
			       .seq = 0x01020304,
			       .len = 16 + 8},
			  back;
	uint8_t w[KVN_CF_HDR_SIZE];
	kvn_cf_hdr_encode(&h, w);
	cr_assert(!memcmp(w, "KVNM", 4), "magic reads KVNM on the wire");
	cr_assert_eq(w[4], KVN_CF_VERSION);
	cr_assert_eq(w[5], KVN_CF_LOOKUP);
	cr_assert_eq(w[8], 0x04, "seq is little-endian");
	cr_assert_eq(w[12], 24);
	cr_assert_eq(kvn_cf_hdr_decode(w, &back, why, sizeof(why)), 0, "%s", why);
	cr_assert_eq(back.type, KVN_CF_LOOKUP);
	cr_assert_eq(back.seq, 0x01020304u);
	cr_assert_eq(back.len, 24u);
}

static int
decode_with(uint8_t type, uint32_t len, void (*tweak)(uint8_t *w))
{
	struct kvn_cf_hdr h = {.version = KVN_CF_VERSION, .type = type, .len = len}, back;
	uint8_t w[KVN_CF_HDR_SIZE];
	kvn_cf_hdr_encode(&h, w);
	if (tweak)
		tweak(w);
	why[0] = '\0';
	int rc = kvn_cf_hdr_decode(w, &back, why, sizeof(why));
	cr_assert(rc == 0 || why[0], "a refusal says why");
	return rc;
}

static void
bad_magic(uint8_t *w)
{
	w[0] = 'G';
}
static void
bad_version(uint8_t *w)
{
	w[4] = 9;
}
static void
some_flags(uint8_t *w)
{
	w[6] = 1;
}

Test(ctlframe, header_decode_refuses_bad_magic_version_type_flags_and_lengths)
{
	cr_assert_eq(decode_with(KVN_CF_HEARTBEAT, 0, NULL), 0);
	cr_assert_eq(decode_with(KVN_CF_HEARTBEAT, 0, bad_magic), -EPROTO);
	cr_assert_eq(decode_with(KVN_CF_HEARTBEAT, 0, bad_version), -EPROTO);
	cr_assert_eq(decode_with(KVN_CF_HEARTBEAT, 0, some_flags), -EPROTO);
	cr_assert_eq(decode_with(99, 0, NULL), -EPROTO, "unknown type");
	cr_assert_eq(decode_with(KVN_CF_HEARTBEAT, 1, NULL), -EMSGSIZE, "a heartbeat has no body");
	cr_assert_eq(decode_with(KVN_CF_LOOKUP, kvn_cf_body_max(KVN_CF_LOOKUP), NULL), 0);
	cr_assert_eq(decode_with(KVN_CF_LOOKUP, kvn_cf_body_max(KVN_CF_LOOKUP) + 1, NULL),
		     -EMSGSIZE);
	cr_assert_eq(decode_with(KVN_CF_PUBLISH, 0xffffffffu, NULL), -EMSGSIZE,
		     "a 4 GiB length is refused before anything is allocated");
}

Test(ctlframe, a_frame_over_its_cap_is_not_built)
{
	struct kvn_cf_buf b = {0};
	kvn_cf_begin(&b, KVN_CF_HEARTBEAT, 1);
	kvn_cf_end(&b);
	size_t one = b.len;
	cr_assert_eq(one, KVN_CF_HDR_SIZE);
	kvn_cf_begin(&b, KVN_CF_HEARTBEAT, 2);
	kvn_cf_put_u32(&b, 7);
	cr_assert_eq(kvn_cf_end(&b), -EMSGSIZE);
	cr_assert_eq(b.len, one, "the refused frame is dropped, the earlier one kept");
	kvn_cf_buf_free(&b);
}

static struct kvn_cf_buf
publish_body(const struct kvn_cf_pub *r, uint32_t n, uint32_t claimed)
{
	struct kvn_cf_buf b = {0};
	kvn_cf_put_u32(&b, claimed);
	kvn_cf_put_u32(&b, 0);
	for (uint32_t i = 0; i < n; i++)
		kvn_cf_put_pub(&b, &r[i]);
	return b;
}

static const struct kvn_cf_pub good = {
    .op = KVN_CF_ADMIT,
    .digest = {.lo = 0x1122334455667788ull, .hi = 0x99aabbccddeeff00ull},
    .loc = {.rkey = 0xdeadbeef, .addr = 0x7f0000001000ull, .len = 4160, .generation = 42}};

Test(ctlframe, publish_records_round_trip)
{
	struct kvn_cf_pub r[2] = {good, good};
	r[1].op = KVN_CF_EVICT;
	r[1].loc.generation = 0;
	struct kvn_cf_buf b = publish_body(r, 2, 2);
	uint32_t n;
	cr_assert_eq(kvn_cf_publish_check(b.p, (uint32_t)b.len, &n, why, sizeof(why)), 0, "%s",
		     why);
	cr_assert_eq(n, 2);
	struct kvn_cf_pub back;
	kvn_cf_publish_rec(b.p, 0, &back);
	cr_assert_eq(back.op, KVN_CF_ADMIT);
	cr_assert(kvn_digest_eq(back.digest, good.digest));
	cr_assert_eq(back.loc.rkey, good.loc.rkey);
	cr_assert_eq(back.loc.addr, good.loc.addr);
	cr_assert_eq(back.loc.len, good.loc.len);
	cr_assert_eq(back.loc.generation, 42);
	kvn_cf_publish_rec(b.p, 1, &back);
	cr_assert_eq(back.op, KVN_CF_EVICT);
	kvn_cf_buf_free(&b);
}

static int
check_one(struct kvn_cf_pub r, uint32_t claimed)
{
	struct kvn_cf_buf b = publish_body(&r, 1, claimed);
	uint32_t n;
	int rc = kvn_cf_publish_check(b.p, (uint32_t)b.len, &n, why, sizeof(why));
	kvn_cf_buf_free(&b);
	return rc;
}

Test(ctlframe, publish_check_refuses_wrong_counts_ops_and_ranges)
{
	cr_assert_eq(check_one(good, 1), 0, "%s", why);
	cr_assert_eq(check_one(good, 2), -EPROTO, "count larger than the body");
	cr_assert_eq(check_one(good, 0), -EPROTO, "count smaller than the body");
	struct kvn_cf_pub r = good;
	r.op = 3;
	cr_assert_eq(check_one(r, 1), -EPROTO, "unknown op");
	r = good;
	r.loc.generation = 43;
	cr_assert_eq(check_one(r, 1), -EPROTO, "an odd generation is a slot being written");
	r.loc.generation = 0;
	cr_assert_eq(check_one(r, 1), -EPROTO, "an admit needs a generation");
	r = good;
	r.loc.len = 0;
	cr_assert_eq(check_one(r, 1), -EPROTO, "an admit needs a length");
	r = good;
	r.loc.addr = UINT64_MAX - 10;
	cr_assert_eq(check_one(r, 1), -EPROTO, "a range that wraps");
	struct kvn_cf_buf b = publish_body(&good, 1, 1);
	b.p[9] = 1; /* padding after the op */
	uint32_t n;
	cr_assert_eq(kvn_cf_publish_check(b.p, (uint32_t)b.len, &n, why, sizeof(why)), -EPROTO);
	cr_assert_eq(kvn_cf_publish_check(b.p, 4, &n, why, sizeof(why)), -EPROTO, "no count");
	kvn_cf_buf_free(&b);
}

Test(ctlframe, lookup_check_bounds_keys_and_locations)
{
	struct kvn_cf_buf b = {0};
	kvn_cf_put_u32(&b, 2);
	kvn_cf_put_u32(&b, 4);
	kvn_cf_put_u64(&b, 1);
	kvn_cf_put_u64(&b, 2);
	kvn_cf_put_u64(&b, 3);
	kvn_cf_put_u64(&b, 4);
	uint32_t n, ml;
	cr_assert_eq(kvn_cf_lookup_check(b.p, (uint32_t)b.len, &n, &ml, why, sizeof(why)), 0);
	cr_assert_eq(n, 2);
	cr_assert_eq(ml, 4);
	struct kvn_digest d = kvn_cf_lookup_key(b.p, 1);
	cr_assert(d.lo == 3 && d.hi == 4);
	cr_assert_eq(kvn_cf_lookup_check(b.p, (uint32_t)b.len - 1, &n, &ml, why, sizeof(why)),
		     -EPROTO, "truncated key");
	b.p[4] = 0;
	cr_assert_eq(kvn_cf_lookup_check(b.p, (uint32_t)b.len, &n, &ml, why, sizeof(why)), -EPROTO,
		     "zero locations per key");
	b.p[4] = KVN_CF_LOCS_MAX + 1;
	cr_assert_eq(kvn_cf_lookup_check(b.p, (uint32_t)b.len, &n, &ml, why, sizeof(why)), -EPROTO);
	b.p[4] = 1;
	b.p[0] = 0;
	cr_assert_eq(kvn_cf_lookup_check(b.p, 8, &n, &ml, why, sizeof(why)), -EPROTO, "no keys");
	kvn_cf_buf_free(&b);
}

static struct kvn_cf_buf
reply_body(uint32_t count, const uint32_t *nloc, const struct kvn_loc *l)
{
	struct kvn_cf_buf b = {0};
	kvn_cf_put_u32(&b, count);
	kvn_cf_put_u32(&b, 0);
	for (uint32_t i = 0; i < count; i++) {
		kvn_cf_put_u32(&b, nloc[i]);
		for (uint32_t j = 0; j < nloc[i]; j++)
			kvn_cf_put_loc(&b, l++);
	}
	return b;
}

Test(ctlframe, lookup_reply_round_trips_and_refuses_what_was_not_asked)
{
	struct kvn_loc l[3] = {{1, 2, 3, 4, 6}, {7, 8, 9, 10, 12}, {13, 14, 15, 16, 18}};
	uint32_t nloc[2] = {2, 1}, got[2];
	struct kvn_loc out[2 * 2];
	struct kvn_cf_buf b = reply_body(2, nloc, l);
	cr_assert_eq(
	    kvn_cf_lookup_reply_decode(b.p, (uint32_t)b.len, 2, 2, got, out, why, sizeof(why)), 0,
	    "%s", why);
	cr_assert_eq(got[0], 2);
	cr_assert_eq(got[1], 1);
	cr_assert_eq(out[1].worker_id, 7);
	cr_assert_eq(out[1].generation, 12);
	cr_assert_eq(out[2].addr, 15, "key 1's first location sits at index max_locs");
	cr_assert_eq(
	    kvn_cf_lookup_reply_decode(b.p, (uint32_t)b.len, 2, 1, got, out, why, sizeof(why)),
	    -EPROTO, "more locations than asked for");
	cr_assert_eq(
	    kvn_cf_lookup_reply_decode(b.p, (uint32_t)b.len, 3, 2, got, out, why, sizeof(why)),
	    -EPROTO, "answers a different number of keys");
	cr_assert_eq(
	    kvn_cf_lookup_reply_decode(b.p, (uint32_t)b.len - 1, 2, 2, got, out, why, sizeof(why)),
	    -EPROTO, "truncated");
	kvn_cf_put_u32(&b, 0);
	cr_assert_eq(
	    kvn_cf_lookup_reply_decode(b.p, (uint32_t)b.len, 2, 2, got, out, why, sizeof(why)),
	    -EPROTO, "trailing bytes");
	kvn_cf_buf_free(&b);
}

Test(ctlframe, json_blob_bodies_round_trip_and_lengths_are_checked)
{
	struct kvn_cf_buf b = {0};
	const uint8_t blob[5] = {0, 1, 2, 0xff, 0};
	cr_assert_eq(kvn_cf_put_json_frame(&b, KVN_CF_JOIN, 7, "{\"name\":\"a\"}", blob, 5), 0);
	struct kvn_cf_hdr h;
	cr_assert_eq(kvn_cf_hdr_decode(b.p, &h, why, sizeof(why)), 0);
	cr_assert_eq(h.seq, 7);
	const char *json;
	const uint8_t *bl;
	size_t jl, bll;
	const uint8_t *body = b.p + KVN_CF_HDR_SIZE;
	cr_assert_eq(kvn_cf_split_json_blob(body, h.len, &json, &jl, &bl, &bll, why, sizeof(why)),
		     0);
	cr_assert_eq(jl, strlen("{\"name\":\"a\"}"));
	cr_assert(!memcmp(json, "{\"name\":\"a\"}", jl));
	cr_assert_eq(bll, 5);
	cr_assert(!memcmp(bl, blob, 5), "the opaque blob survives byte for byte");
	uint8_t bad[8] = {200, 0, 0, 0, '{', '}', 0, 0};
	cr_assert_eq(kvn_cf_split_json_blob(bad, 8, &json, &jl, &bl, &bll, why, sizeof(why)),
		     -EPROTO, "JSON length past the body");
	bad[0] = 0;
	cr_assert_eq(kvn_cf_split_json_blob(bad, 8, &json, &jl, &bl, &bll, why, sizeof(why)),
		     -EPROTO, "empty JSON");
	cr_assert_eq(kvn_cf_split_json_blob(bad, 3, &json, &jl, &bl, &bll, why, sizeof(why)),
		     -EPROTO, "no room for the length");
	cr_assert_eq(kvn_cf_put_json_frame(&b, KVN_CF_STATS, 1, "{}", blob, 5), -EMSGSIZE,
		     "only JOIN and MEMBER carry a blob");
	kvn_cf_buf_free(&b);
}

Test(ctlframe, evicted_notice_count_must_match_its_body)
{
	struct kvn_cf_buf b = {0};
	kvn_cf_put_u32(&b, 3);
	kvn_cf_put_u32(&b, 1);
	kvn_cf_put_u64(&b, 5);
	kvn_cf_put_u64(&b, 6);
	uint32_t id, n;
	cr_assert_eq(kvn_cf_evicted_check(b.p, (uint32_t)b.len, &id, &n, why, sizeof(why)), 0);
	cr_assert(id == 3 && n == 1);
	b.p[4] = 2;
	cr_assert_eq(kvn_cf_evicted_check(b.p, (uint32_t)b.len, &id, &n, why, sizeof(why)),
		     -EPROTO);
	kvn_cf_buf_free(&b);
}

/* The auth set-up's frames have fixed sizes: a HELLO or CHALLENGE of any other length is refused
 * from its header. */
Test(ctlframe, hello_and_challenge_carry_exactly_their_nonce_and_proof)
{
	cr_assert_eq(kvn_cf_body_max(KVN_CF_HELLO), 16);
	cr_assert_eq(kvn_cf_body_max(KVN_CF_CHALLENGE), KVN_CF_CHALLENGE_SIZE);
	cr_assert_str_eq(kvn_cf_type_name(KVN_CF_HELLO), "HELLO");
	cr_assert_str_eq(kvn_cf_type_name(KVN_CF_CHALLENGE), "CHALLENGE");
	uint8_t raw[KVN_CF_HDR_SIZE];
	struct kvn_cf_hdr h = {.version = KVN_CF_VERSION, .type = KVN_CF_HELLO, .len = 17};
	kvn_cf_hdr_encode(&h, raw);
	cr_assert_eq(kvn_cf_hdr_decode(raw, &h, why, sizeof(why)), -EMSGSIZE);
}

Test(ctlframe, error_frames_carry_an_errno_code_beside_their_message)
{
	struct kvn_cf_buf b = {0};
	cr_assert_eq(kvn_cf_put_error(&b, 9, -EACCES, "JOIN refused: no \"token\" here"), 0);
	struct kvn_cf_hdr h;
	cr_assert_eq(kvn_cf_hdr_decode(b.p, &h, why, sizeof(why)), 0);
	cr_assert(h.type == KVN_CF_ERROR && h.seq == 9);
	char msg[128];
	const uint8_t *body = b.p + KVN_CF_HDR_SIZE;
	cr_assert_eq(kvn_cf_error_decode(body, h.len, msg, sizeof(msg)), -EACCES,
		     "the code decides, whatever the text says");
	cr_assert_str_eq(msg, "JOIN refused: no \"token\" here");
	kvn_cf_error_text(body, h.len, msg, sizeof(msg));
	cr_assert_str_eq(msg, "JOIN refused: no \"token\" here", "the text reads as before");

	const char *old = "{\"error\":\"from an older scheduler\"}";
	cr_assert_eq(
	    kvn_cf_error_decode((const uint8_t *)old, (uint32_t)strlen(old), msg, sizeof(msg)),
	    -EPROTO, "an ERROR without a code is a protocol error");
	cr_assert_str_eq(msg, "from an older scheduler");
	const char *odd[] = {"{\"error\":\"x\",\"code\":0}", "{\"error\":\"x\",\"code\":-13}",
			     "{\"error\":\"x\",\"code\":1e9}", "{\"error\":\"x\",\"code\":\"13\"}",
			     "not json"};
	for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++)
		cr_assert_eq(kvn_cf_error_decode((const uint8_t *)odd[i], (uint32_t)strlen(odd[i]),
						 msg, sizeof(msg)),
			     -EPROTO, "%s", odd[i]);
	kvn_cf_buf_free(&b);
}

Test(ctlframe, node_names_are_1_to_64_bytes_of_utf8_letters_digits_dash_underscore_dot)
{
	const char *good[] = {"node-a",
			      "gpu_node.7",
			      "A",
			      "kv-node-1.rack12.example.com",
			      "k\xc3\xb6ln",		    /* köln */
			      "\xe8\x8a\x82\xe7\x82\xb9-1", /* 节点-1 */
			      "\xf0\x9f\x9a\x80",	    /* a four-byte character */
			      "1234567890123456789012345678901234567890123456789012345678901234"};
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		cr_assert_eq(kvn_cf_name_check(good[i], why, sizeof(why)), 0, "%s: %s", good[i],
			     why);
	const char *bad[] = {
	    "",
	    "12345678901234567890123456789012345678901234567890123456789012345", /* 65 */
	    "a b",
	    "a\"b",
	    "a\\b",
	    "a\nb",
	    "a\tb",
	    "a{b}",
	    "a:b",
	    "a/b",
	    "\xff",
	    "a\xfe",
	    "\xc0\x80",		/* overlong NUL */
	    "\xe0\x80\xaf",	/* overlong '/' */
	    "\xed\xa0\x80",	/* a UTF-16 surrogate */
	    "\xf4\x90\x80\x80", /* past U+10FFFF */
	    "\xe8\x8a",		/* cut short */
	    "\xc2\x85",		/* U+0085, a C1 control */
	    "\xe2\x80\xa8",	/* U+2028, a line separator */
	    "\x7f"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		why[0] = '\0';
		cr_assert_neq(kvn_cf_name_check(bad[i], why, sizeof(why)), 0, "bad name %zu passed",
			      i);
		cr_assert(why[0], "refusal %zu says why", i);
		for (const char *p = why; *p; p++)
			cr_assert((unsigned char)*p >= 0x20 && (unsigned char)*p < 0x7f,
				  "the message never echoes the bytes it refused: %s", why);
	}
}
