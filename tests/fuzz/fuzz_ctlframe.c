/* Fuzzes the scheduler's control frames (node/cluster/ctlframe.c) and chunk directory
 * (node/scheduler/scheduler_dir.c). The first input byte picks what the rest is:
 *   0 a frame header          1 a JSON + blob body (JOIN, MEMBER)   2 a PUBLISH body
 *   3 a LOOKUP body           4 a LOOKUP_REPLY (count and max_locs from the input first)
 *   5 an EVICTED body         6 an ERROR body                       7 a receive stream
 *   8 a frame built from parts (type, seq, body)
 *   9+ a program of directory operations run against the directory and a reference model.
 * Properties: a decoder that accepts a body describes only bytes inside it and re-encodes to the
 * same bytes; every refusal says why; the directory answers exactly as the model does. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "node/cluster/ctlframe.h"
#include "node/scheduler/scheduler_dir.h"
#include "tests/fuzz/fuzz_common.h"

static void
fuzz_hdr(const uint8_t *p, size_t n)
{
	uint8_t w[KVN_CF_HDR_SIZE] = {0}, back[KVN_CF_HDR_SIZE];
	memcpy(w, p, n < sizeof(w) ? n : sizeof(w));
	struct kvn_cf_hdr h;
	char err[256] = "";
	int rc = kvn_cf_hdr_decode(w, &h, err, sizeof(err));
	if (rc) {
		FZ_ASSERT((rc == -EPROTO || rc == -EMSGSIZE) && err[0], "refusal %d: '%s'", rc,
			  err);
		FZ_ASSERT(kvn_cf_hdr_decode(w, &h, NULL, 0) == rc, "decides otherwise without err");
		return;
	}
	FZ_ASSERT(strcmp(kvn_cf_type_name(h.type), "?") && !h.flags &&
		      h.version == KVN_CF_VERSION && h.len <= kvn_cf_body_max(h.type),
		  "accepted type %u flags %u length %u", h.type, h.flags, h.len);
	kvn_cf_hdr_encode(&h, back);
	FZ_ASSERT(!memcmp(w, back, sizeof(w)), "header does not round-trip");
}

static void
fuzz_json_blob(const uint8_t *p, size_t n)
{
	const char *json;
	const uint8_t *blob;
	size_t jl, bl;
	char err[256] = "";
	if (kvn_cf_split_json_blob(p, (uint32_t)n, &json, &jl, &blob, &bl, err, sizeof(err))) {
		FZ_ASSERT(err[0], "refusal without a reason");
		return;
	}
	FZ_ASSERT((const uint8_t *)json == p + 4 && jl >= 1 && jl <= KVN_CF_JSON_MAX &&
		      blob == p + 4 + jl && 4 + jl + bl == n && bl <= KVN_CF_BLOB_MAX,
		  "split describes bytes outside the body");
	/* Built back from its parts, the body is the same. */
	char *j = strndup(json, jl);
	FZ_ASSERT(j, "out of memory");
	if (strlen(j) == jl) {
		struct kvn_cf_buf b = {0};
		FZ_ASSERT(kvn_cf_put_json_frame(&b, KVN_CF_JOIN, 3, j, blob, bl) == 0,
			  "a split body cannot be rebuilt");
		FZ_ASSERT(b.len == KVN_CF_HDR_SIZE + n && !memcmp(b.p + KVN_CF_HDR_SIZE, p, n),
			  "a rebuilt body differs");
		kvn_cf_buf_free(&b);
	}
	free(j);
}

static void
fuzz_publish(const uint8_t *p, size_t n)
{
	uint32_t count;
	char err[256] = "";
	if (kvn_cf_publish_check(p, (uint32_t)n, &count, err, sizeof(err))) {
		FZ_ASSERT(err[0], "refusal without a reason");
		return;
	}
	FZ_ASSERT(8 + (size_t)count * KVN_CF_PUB_REC == n && count <= KVN_CF_PUBLISH_MAX,
		  "count %u for %zu bytes", count, n);
	struct kvn_cf_buf b = {0};
	kvn_cf_put_u32(&b, count);
	kvn_cf_put_u32(&b, 0);
	for (uint32_t i = 0; i < count; i++) {
		struct kvn_cf_pub r;
		kvn_cf_publish_rec(p, i, &r);
		FZ_ASSERT(r.op == KVN_CF_ADMIT || r.op == KVN_CF_EVICT, "record %u op %u", i, r.op);
		if (r.op == KVN_CF_ADMIT)
			FZ_ASSERT(r.loc.len && r.loc.generation && !(r.loc.generation & 1) &&
				      r.loc.addr + r.loc.len >= r.loc.addr,
				  "record %u: an admit with a bad range or generation", i);
		kvn_cf_put_pub(&b, &r);
	}
	FZ_ASSERT(!b.err && b.len == n && !memcmp(b.p, p, n), "PUBLISH does not round-trip");
	kvn_cf_buf_free(&b);
}

static void
fuzz_lookup(const uint8_t *p, size_t n)
{
	uint32_t count, max;
	char err[256] = "";
	if (kvn_cf_lookup_check(p, (uint32_t)n, &count, &max, err, sizeof(err))) {
		FZ_ASSERT(err[0], "refusal without a reason");
		return;
	}
	FZ_ASSERT(count >= 1 && count <= KVN_CF_LOOKUP_MAX && 8 + (size_t)count * 16 == n &&
		      max >= 1 && max <= KVN_CF_LOCS_MAX,
		  "count %u max %u for %zu bytes", count, max, n);
	for (uint32_t i = 0; i < count; i++) {
		struct kvn_digest d = kvn_cf_lookup_key(p, i);
		FZ_ASSERT(d.lo == kvn_cf_get_u64(p + 8 + 16 * (size_t)i) &&
			      d.hi == kvn_cf_get_u64(p + 16 + 16 * (size_t)i),
			  "key %u read from elsewhere", i);
	}
}

static void
fuzz_lookup_reply(const uint8_t *p, size_t n)
{
	struct fz_in in = {p, n};
	uint32_t count = fz_u8(&in) % 65;
	uint32_t max = fz_u8(&in) % (KVN_CF_LOCS_MAX + 1);
	uint32_t *nloc = calloc(count + 1, sizeof(*nloc));
	struct kvn_loc *locs = calloc((size_t)count * max + 1, sizeof(*locs));
	FZ_ASSERT(nloc && locs, "out of memory");
	char err[256] = "";
	int rc = kvn_cf_lookup_reply_decode(in.p, (uint32_t)in.n, count, max, nloc, locs, err,
					    sizeof(err));
	if (rc) {
		FZ_ASSERT(rc == -EPROTO && err[0], "refusal %d without a reason", rc);
	} else {
		struct kvn_cf_buf b = {0};
		kvn_cf_put_u32(&b, count);
		kvn_cf_put_u32(&b, kvn_cf_get_u32(in.p + 4));
		for (uint32_t i = 0; i < count; i++) {
			FZ_ASSERT(nloc[i] <= max, "key %u has %u locations, max %u", i, nloc[i],
				  max);
			kvn_cf_put_u32(&b, nloc[i]);
			for (uint32_t j = 0; j < nloc[i]; j++)
				kvn_cf_put_loc(&b, &locs[(size_t)i * max + j]);
		}
		FZ_ASSERT(!b.err && b.len == in.n && !memcmp(b.p, in.p, in.n),
			  "LOOKUP_REPLY does not round-trip");
		kvn_cf_buf_free(&b);
	}
	free(nloc);
	free(locs);
}

static void
fuzz_evicted(const uint8_t *p, size_t n)
{
	uint32_t wid, count;
	char err[256] = "";
	if (kvn_cf_evicted_check(p, (uint32_t)n, &wid, &count, err, sizeof(err))) {
		FZ_ASSERT(err[0], "refusal without a reason");
		return;
	}
	FZ_ASSERT(8 + (size_t)count * 16 == n && count <= KVN_CF_EVICT_MAX &&
		      wid == kvn_cf_get_u32(p),
		  "EVICTED count %u for %zu bytes", count, n);
}

static void
fuzz_error_text(const uint8_t *p, size_t n)
{
	struct fz_in in = {p, n};
	size_t cap = fz_u8(&in);
	char *out = malloc(cap + 1);
	FZ_ASSERT(out, "out of memory");
	out[cap] = 'X';
	kvn_cf_error_text(in.p, (uint32_t)in.n, out, cap);
	FZ_ASSERT(out[cap] == 'X', "error text wrote past its buffer");
	if (cap)
		FZ_ASSERT(strlen(out) < cap, "error text not terminated");
	free(out);
}

/* A stream of frames through the receive buffer, as a node's membership client reads them. */
static void
fuzz_rx(const uint8_t *p, size_t n)
{
	struct kvn_cf_rx r = {0};
	r.p = malloc(n + 1);
	FZ_ASSERT(r.p, "out of memory");
	memcpy(r.p, p, n);
	r.len = r.cap = n;
	size_t off = 0;
	for (;;) {
		struct kvn_cf_hdr h;
		const uint8_t *body;
		char err[256] = "";
		int rc = kvn_cf_rx_frame(&r, &h, &body, err, sizeof(err));
		if (rc <= 0) {
			FZ_ASSERT(rc == 0 || (rc == -EPROTO && err[0]), "rx refusal %d: '%s'", rc,
				  err);
			FZ_ASSERT(rc < 0 || r.len < KVN_CF_HDR_SIZE ||
				      r.len < KVN_CF_HDR_SIZE + (size_t)h.len,
				  "rx waits for more with a whole frame buffered");
			break;
		}
		FZ_ASSERT(body == r.p + KVN_CF_HDR_SIZE && KVN_CF_HDR_SIZE + (size_t)h.len <= r.len,
			  "rx frame outside the buffer");
		FZ_ASSERT(!memcmp(r.p, p + off, KVN_CF_HDR_SIZE + (size_t)h.len),
			  "rx lost or reordered bytes");
		off += KVN_CF_HDR_SIZE + (size_t)h.len;
		kvn_cf_rx_consume(&r, &h);
		FZ_ASSERT(r.len == n - off, "rx consumed %zu, buffer holds %zu", off, r.len);
	}
	kvn_cf_rx_free(&r);
}

static void
fuzz_build(const uint8_t *p, size_t n)
{
	struct fz_in in = {p, n};
	uint8_t type = fz_u8(&in);
	uint32_t seq = fz_u32(&in);
	struct kvn_cf_buf b = {0};
	kvn_cf_put_bytes(&b, "junk", fz_u8(&in) & 1 ? 4 : 0); /* frames may follow others */
	size_t start = b.len;
	kvn_cf_begin(&b, type, seq);
	kvn_cf_put_bytes(&b, in.p, in.n);
	int rc = kvn_cf_end(&b);
	if (rc) {
		FZ_ASSERT(rc == -EMSGSIZE && in.n > kvn_cf_body_max(type), "end refused with %d",
			  rc);
		FZ_ASSERT(b.len == start, "a refused frame was left in the buffer");
	} else {
		struct kvn_cf_hdr h;
		char err[256] = "";
		FZ_ASSERT(b.len == start + KVN_CF_HDR_SIZE + in.n, "built frame length");
		rc = kvn_cf_hdr_decode(b.p + start, &h, err, sizeof(err));
		FZ_ASSERT(rc == 0 || !strcmp(kvn_cf_type_name(type), "?"),
			  "a built %s frame does not decode: %s", kvn_cf_type_name(type), err);
		if (!rc)
			FZ_ASSERT(h.type == type && h.seq == seq && h.len == in.n &&
				      !memcmp(b.p + start + KVN_CF_HDR_SIZE, in.p, in.n),
				  "a built frame decodes to another");
	}
	kvn_cf_buf_free(&b);
}

/* ------------------------------------------------------------------------------------------
 * The directory against a reference model. Programs only use digests from a fixed set (key
 * numbers), so the model is a table indexed by key number and worker, plus a list of what it
 * holds.
 * ------------------------------------------------------------------------------------------ */

#define NWORKERS   4
#define SMALL_KEYS 256
#define BURST_KEYS 200
#define MAX_BURSTS 6
#define NKEYS	   (SMALL_KEYS + 256 * BURST_KEYS)

static const uint32_t workers[NWORKERS] = {0, 1, 7, KVN_DIR_MAX_WORKERS - 1};

struct model {
	bool has[NKEYS][NWORKERS];
	struct kvn_loc loc[NKEYS][NWORKERS];
	uint32_t *held; /* key * NWORKERS + worker index, for every entry ever admitted */
	size_t nheld, capheld;
	size_t n, per_worker[NWORKERS];
};

static struct model model;

/* Key numbers below SMALL_KEYS collide on purpose: the same home slot, neighbouring ones, the
 * table's last slots (probe runs that wrap), the same low word with another high word. Burst
 * keys are spread out, to make the table grow. */
static struct kvn_digest
digest_of(uint32_t key)
{
	if (key >= SMALL_KEYS) {
		uint32_t b = key - SMALL_KEYS;
		return (struct kvn_digest){.lo = (uint64_t)b * 1021 + 77, .hi = b / BURST_KEYS};
	}
	uint64_t k = key & 63, lo;
	switch (key >> 6) {
	case 0:
		lo = k;
		break;
	case 1:
		lo = 5 + ((k + 1) << 10);
		break;
	case 2:
		lo = 1023 - k + ((k & 3) << 12);
		break;
	default:
		lo = 0x9e3779b97f4a7c15ull * (k + 1);
		break;
	}
	return (struct kvn_digest){.lo = lo, .hi = (key >> 6) == 1 ? k & 3 : 0};
}

static void
model_reset(struct model *m)
{
	for (size_t i = 0; i < m->nheld; i++)
		m->has[m->held[i] / NWORKERS][m->held[i] % NWORKERS] = false;
	m->nheld = m->n = 0;
	memset(m->per_worker, 0, sizeof(m->per_worker));
}

static void
model_check_key(const struct kvn_dir *dir, struct model *m, uint32_t key)
{
	struct kvn_digest d = digest_of(key);
	struct kvn_loc locs[KVN_CF_LOCS_MAX];
	uint32_t got = kvn_dir_lookup(dir, d, locs, KVN_CF_LOCS_MAX);
	uint32_t want = 0;
	for (int w = 0; w < NWORKERS; w++)
		want += m->has[key][w];
	/* digest_of is injective on the key numbers: the model's count is the directory's. */
	FZ_ASSERT(got == want, "lookup of key %u (%016llx:%016llx) found %u, the model holds %u",
		  key, (unsigned long long)d.hi, (unsigned long long)d.lo, got, want);
	for (uint32_t j = 0; j < got; j++) {
		int w = 0;
		while (w < NWORKERS && workers[w] != locs[j].worker_id)
			w++;
		FZ_ASSERT(
		    w < NWORKERS && m->has[key][w] &&
			!memcmp(&m->loc[key][w], &locs[j], sizeof(locs[j])),
		    "lookup of key %u returned a location the model does not hold (worker %u)", key,
		    locs[j].worker_id);
		for (uint32_t k = 0; k < j; k++)
			FZ_ASSERT(locs[k].worker_id != locs[j].worker_id,
				  "lookup returned worker %u twice", locs[j].worker_id);
	}
}

static void
model_check_all(const struct kvn_dir *dir, struct model *m)
{
	FZ_ASSERT(kvn_dir_entries(dir) == m->n, "directory holds %zu entries, the model %zu",
		  kvn_dir_entries(dir), m->n);
	for (int w = 0; w < NWORKERS; w++)
		FZ_ASSERT(kvn_dir_worker_entries(dir, workers[w]) == m->per_worker[w],
			  "worker %u: %zu entries, the model %zu", workers[w],
			  kvn_dir_worker_entries(dir, workers[w]), m->per_worker[w]);
	for (size_t i = 0; i < m->nheld; i++)
		if (m->has[m->held[i] / NWORKERS][m->held[i] % NWORKERS])
			model_check_key(dir, m, m->held[i] / NWORKERS);
}

static void
model_admit(struct kvn_dir *dir, struct model *m, uint32_t key, int w, struct kvn_loc loc)
{
	loc.worker_id = workers[w];
	FZ_ASSERT(kvn_dir_admit(dir, digest_of(key), &loc) == 0, "admit failed");
	m->loc[key][w] = loc;
	if (m->has[key][w])
		return;
	m->has[key][w] = true;
	m->n++;
	m->per_worker[w]++;
	if (m->nheld == m->capheld) {
		m->capheld = m->capheld ? m->capheld * 2 : 1024;
		m->held = realloc(m->held, m->capheld * sizeof(*m->held));
		FZ_ASSERT(m->held, "out of memory");
	}
	m->held[m->nheld++] = key * NWORKERS + (uint32_t)w;
}

static void
model_drop(struct model *m, uint32_t key, int w)
{
	m->has[key][w] = false;
	m->n--;
	m->per_worker[w]--;
}

static void
fuzz_dir(const uint8_t *p, size_t n)
{
	struct fz_in in = {p, n};
	struct kvn_dir *dir;
	struct model *m = &model;
	model_reset(m);
	FZ_ASSERT(kvn_dir_create(fz_u8(&in) * 8u, &dir) == 0, "create failed");
	uint64_t gen = 2;
	unsigned bursts = 0;
	for (unsigned step = 0; in.n; step++) {
		uint8_t op = fz_u8(&in), key = fz_u8(&in);
		int w = (op >> 3) & 3;
		struct kvn_digest d = digest_of(key);
		struct kvn_loc loc = {.rkey = key,
				      .addr = (uint64_t)key << 12,
				      .len = 4096 + op,
				      .generation = gen += 2};
		switch (op & 7) {
		case 0:
		case 1:
		case 2:
			model_admit(dir, m, key, w, loc);
			break;
		case 3: { /* evict with gen 0 (any), the entry's own, or another one */
			bool has = m->has[key][w];
			uint64_t own = has ? m->loc[key][w].generation : 0;
			uint64_t g = (op >> 5) == 0 ? 0 : (op >> 5) == 1 ? own : 1;
			bool want = has && (g == 0 || g == own);
			FZ_ASSERT(
			    kvn_dir_evict(dir, workers[w], d, g) == (int)want,
			    "evict of key %u worker %u answered otherwise than the model (%d)", key,
			    workers[w], want);
			if (want)
				model_drop(m, key, w);
			break;
		}
		case 4: {
			size_t want = m->per_worker[w];
			for (size_t i = 0; i < m->nheld; i++)
				if (m->held[i] % NWORKERS == (uint32_t)w &&
				    m->has[m->held[i] / NWORKERS][w])
					model_drop(m, m->held[i] / NWORKERS, w);
			FZ_ASSERT(kvn_dir_drop_worker(dir, workers[w]) == want,
				  "drop of worker %u: not the %zu entries of the model", workers[w],
				  want);
			break;
		}
		case 5: /* a burst: enough entries to make the table grow (a few times) */
			if (bursts++ >= MAX_BURSTS)
				break;
			for (uint32_t i = 0; i < BURST_KEYS; i++) {
				loc.generation = gen += 2;
				model_admit(dir, m, SMALL_KEYS + key * BURST_KEYS + i, w, loc);
			}
			break;
		case 6: { /* ids past the cap are refused and hold nothing */
			struct kvn_loc bad = loc;
			bad.worker_id = KVN_DIR_MAX_WORKERS + (op >> 3);
			FZ_ASSERT(kvn_dir_admit(dir, d, &bad) == -EINVAL, "admit of worker %u",
				  bad.worker_id);
			FZ_ASSERT(kvn_dir_evict(dir, bad.worker_id, d, 0) == 0,
				  "evict of worker %u", bad.worker_id);
			break;
		}
		default:
			break;
		}
		model_check_key(dir, m, key);
		if (step % 256 == 255 || !in.n)
			model_check_all(dir, m);
	}
	FZ_ASSERT(kvn_dir_bytes(dir) >= kvn_dir_entries(dir) * kvn_dir_entry_size(),
		  "directory bytes below its entries");
	kvn_dir_destroy(dir);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	/* The bodies get their own copy of exactly their length, so ASan sees any overread. */
	size_t n = size - 1;
	uint8_t *p = malloc(n ? n : 1);
	FZ_ASSERT(p, "out of memory");
	memcpy(p, data + 1, n);
	switch (data[0]) {
	case 0:
		fuzz_hdr(p, n);
		break;
	case 1:
		fuzz_json_blob(p, n);
		break;
	case 2:
		fuzz_publish(p, n);
		break;
	case 3:
		fuzz_lookup(p, n);
		break;
	case 4:
		fuzz_lookup_reply(p, n);
		break;
	case 5:
		fuzz_evicted(p, n);
		break;
	case 6:
		fuzz_error_text(p, n);
		break;
	case 7:
		fuzz_rx(p, n);
		break;
	case 8:
		fuzz_build(p, n);
		break;
	default:
		fuzz_dir(p, n);
		break;
	}
	free(p);
	return 0;
}
