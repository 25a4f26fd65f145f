/* Fuzzes the decoding of etcd's JSON gateway answers (node/cluster/etcd_json.c): what a range and a
 * watch stream decode to, from bytes any etcd (or anything listening where it should be) can
 * send. The first input byte picks the mode:
 *   0  the rest is a range answer;
 *   1  the rest is a watch stream (start revision from the next byte);
 *   2  a range answer built from the input (value bytes, revisions, a lease) by cJSON and
 *      libsodium, as etcd writes one;
 *   3  a watch stream built from the input: created, then events (type, revision) in lines.
 * Properties: a refusal is a negative errno with a reason; an answer is deterministic and does
 * not depend on err being given; a decoded value fits KVN_ETCD_VALUE_MAX and is terminated; an
 * event is at or after the start revision; what is built decodes to what it was built from. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "node/cluster/etcd.h"
#include "tests/fuzz/fuzz_common.h"

static struct kvn_etcd_kv kv, kv2;

static void
fuzz_range(const char *p, size_t n)
{
	char err[256] = "";
	int64_t rev = -1, rev2 = -1;
	int rc = kvn_etcd_decode_range(p, n, &kv, &rev, err, sizeof(err));
	FZ_ASSERT(rc == 0 || (rc < 0 && err[0]), "range: %d without a reason", rc);
	FZ_ASSERT(kvn_etcd_decode_range(p, n, &kv2, &rev2, NULL, 0) == rc && rev2 == rev,
		  "range decodes otherwise without err");
	if (rc == 0 || rc == -ENOENT)
		FZ_ASSERT(rev > 0, "range answered %d with revision %" PRId64, rc, rev);
	if (rc == 0) {
		FZ_ASSERT(kv.len <= KVN_ETCD_VALUE_MAX && kv.value[kv.len] == '\0',
			  "value of %zu bytes, unterminated or over the limit", kv.len);
		FZ_ASSERT(kv2.len == kv.len && !memcmp(kv.value, kv2.value, kv.len) &&
			      kv.mod_rev == kv2.mod_rev && kv.create_rev == kv2.create_rev &&
			      kv.lease == kv2.lease,
			  "range decodes to another kv the second time");
	}
}

static void
fuzz_watch(const char *p, size_t n, int64_t start)
{
	char err[256] = "";
	bool del = false, del2 = false;
	int64_t rev = -1, rev2 = -1;
	int rc = kvn_etcd_decode_watch(p, n, start, &del, &rev, err, sizeof(err));
	FZ_ASSERT(rc == 0 || rc == 1 || (rc < 0 && err[0]), "watch: %d without a reason", rc);
	FZ_ASSERT(kvn_etcd_decode_watch(p, n, start, &del2, &rev2, NULL, 0) == rc,
		  "watch decodes otherwise without err");
	if (rc == 1) {
		FZ_ASSERT(rev > 0 && rev2 == rev && del2 == del, "watch event revision %" PRId64,
			  rev);
		/* An event before start_rev is not the change asked for (a compaction is any). */
		FZ_ASSERT(rev >= start || !del, "a delete at %" PRId64 " before %" PRId64, rev,
			  start);
	} else {
		FZ_ASSERT(rev == -1, "watch answered %d and wrote a revision", rc);
	}
}

static void
add_b64(cJSON *o, const char *name, const uint8_t *p, size_t n)
{
	char *b = malloc(sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL));
	FZ_ASSERT(b, "out of memory");
	sodium_bin2base64(b, sodium_base64_ENCODED_LEN(n, sodium_base64_VARIANT_ORIGINAL), p, n,
			  sodium_base64_VARIANT_ORIGINAL);
	cJSON_AddStringToObject(o, name, b);
	free(b);
}

/* A revision as the gateway writes int64 (a string), or as a number when asked to. */
static void
add_rev(cJSON *o, const char *name, int64_t v, bool number)
{
	char s[32];
	snprintf(s, sizeof(s), "%" PRId64, v);
	if (number)
		cJSON_AddNumberToObject(o, name, (double)v);
	else
		cJSON_AddStringToObject(o, name, s);
}

static void
fuzz_built_range(const uint8_t *p, size_t n)
{
	struct fz_in in = {p, n};
	uint8_t flags = fz_u8(&in);
	int64_t rev = 1 + (fz_u32(&in) & 0xffffff), lease = (int64_t)(fz_u64(&in) >> 1);
	int64_t create = 1 + (fz_u32(&in) & 0xffff), mod = create + fz_u8(&in);
	const uint8_t *v;
	size_t vn = fz_take(&in, KVN_ETCD_VALUE_MAX + 64, &v);
	cJSON *root = cJSON_CreateObject(), *h = cJSON_AddObjectToObject(root, "header");
	add_rev(h, "revision", rev, flags & 1);
	cJSON *k = cJSON_CreateObject();
	add_b64(k, "key", (const uint8_t *)"/k", 2);
	add_rev(k, "create_revision", create, flags & 2);
	add_rev(k, "mod_revision", mod, flags & 2);
	if (lease)
		add_rev(k, "lease", lease, false);
	if (vn) /* the gateway leaves an empty value out */
		add_b64(k, "value", v, vn);
	cJSON_AddItemToArray(cJSON_AddArrayToObject(root, "kvs"), k);
	char *body = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	FZ_ASSERT(body, "out of memory");
	char err[256] = "";
	int64_t got_rev = 0;
	int rc = kvn_etcd_decode_range(body, strlen(body), &kv, &got_rev, err, sizeof(err));
	if (vn > KVN_ETCD_VALUE_MAX) {
		FZ_ASSERT(rc == -EMSGSIZE, "a %zu-byte value answered %d", vn, rc);
	} else {
		FZ_ASSERT(rc == 0, "a range answer etcd could send is refused: %d %s", rc, err);
		FZ_ASSERT(got_rev == rev && kv.create_rev == create && kv.mod_rev == mod &&
			      kv.lease == lease && kv.len == vn && !memcmp(kv.value, v, vn) &&
			      kv.value[vn] == '\0',
			  "a range answer decodes to something else");
	}
	free(body);
}

static void
fuzz_built_watch(const uint8_t *p, size_t n)
{
	struct fz_in in = {p, n};
	int64_t start = 1 + fz_u8(&in);
	size_t cap = 64 + n * 160, len = 0;
	char *s = malloc(cap);
	FZ_ASSERT(s, "out of memory");
	len += (size_t)snprintf(s, cap,
				"{\"result\":{\"header\":{\"revision\":\"1\"},"
				"\"created\":true}}\n");
	int want = 0;
	bool want_del = false;
	int64_t want_rev = 0;
	while (in.n) {
		uint8_t t = fz_u8(&in);
		int64_t mod = 1 + fz_u8(&in);
		bool del = t & 1;
		len += (size_t)snprintf(s + len, cap - len,
					"{\"result\":{\"events\":[{%s\"kv\":{\"key\":\"L2s=\","
					"\"mod_revision\":\"%" PRId64 "\"}}]}}%s",
					del	  ? "\"type\":\"DELETE\","
					: (t & 2) ? "\"type\":\"PUT\","
						  : "",
					mod, (t & 4) ? "\r\n" : "\n");
		if (!want && mod >= start) {
			want = 1;
			want_del = del;
			want_rev = mod;
		}
	}
	bool del = false;
	int64_t rev = 0;
	char err[256] = "";
	int rc = kvn_etcd_decode_watch(s, len, start, &del, &rev, err, sizeof(err));
	FZ_ASSERT(rc == want, "a stream etcd could send answers %d, not %d: %s", rc, want, err);
	if (want)
		FZ_ASSERT(del == want_del && rev == want_rev,
			  "the first event from %" PRId64 " is not the one found", start);
	free(s);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	/* The rest gets its own copy of exactly its length, so ASan sees any overread. */
	size_t n = size - 1;
	char *p = malloc(n ? n : 1);
	FZ_ASSERT(p, "out of memory");
	memcpy(p, data + 1, n);
	switch (data[0] % 4) {
	case 0:
		fuzz_range(p, n);
		break;
	case 1:
		fuzz_watch(n ? p + 1 : p, n ? n - 1 : 0, n ? 1 + (uint8_t)p[0] : 1);
		break;
	case 2:
		fuzz_built_range((const uint8_t *)p, n);
		break;
	default:
		fuzz_built_watch((const uint8_t *)p, n);
		break;
	}
	free(p);
	return 0;
}
