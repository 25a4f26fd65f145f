/* The client protocol, node side (node/serve/clientsrv.h). One thread per connection (the
 * local socket's skeleton) reads a request, answers it from the engine and writes the reply;
 * no lock is held while a client reads or writes its pool mapping. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/fdio.h"
#include "core/log.h"
#include "core/pool.h"
#include "node/engine/engine.h"
#include "node/engine/storage.h"
#include "node/serve/clientsrv.h"

#define COMP	       "client"
#define DEFAULT_IO_MS  30000
#define LOOKUP_TIMEOUT 5000
#define IN_READ	       (64u << 10) /* what one recv takes of a client's frames */

struct kvn_clientsrv {
	struct kvn_engine *eng;
	struct kvn_storage *st;
	struct kvn_pool *pool;
	uint8_t *base;
	struct kvn_clientsrv_opts o;
	kvn_clientsrv_held_fn held_fn;
	void *held_ctx;

	_Atomic uint64_t clients, leases, reservations, held_bytes;
	_Atomic uint64_t requests[KVN_CP_NOPS], keys, held_refused, lookups, copied, proto_errors;
	struct kvn_ratelimit rl_held;
};

/* What a client holds: a lease (a view) or a reservation (a slot it writes). */
struct hold {
	uint64_t id; /* 0: a free entry */
	bool resv;
	struct kvn_buf *view;  /* lease */
	struct kvn_slot *slot; /* reservation */
	struct kvn_key *key;   /* reservation: the key it is for */
	uint64_t len;
};

struct kvn_client_conn {
	int fd;
	char peer[48];
	uint64_t next_id;
	struct hold *tab; /* open addressing by id */
	size_t cap, n;
	uint64_t held; /* bytes */
	struct kvn_cp_buf out;
	struct kvn_cp_buf in; /* frames read, not yet handled: empty between two calls of serve */
};

/* ------------------------------------------------------------------------------------------
 * Holds
 * ------------------------------------------------------------------------------------------ */

static size_t
slot_of(const struct kvn_client_conn *cc, uint64_t id)
{
	return (size_t)(id * 0x9e3779b97f4a7c15ull) & (cc->cap - 1);
}

static struct hold *
hold_find(struct kvn_client_conn *cc, uint64_t id)
{
	if (!id || !cc->cap)
		return NULL;
	for (size_t i = slot_of(cc, id), k = 0; k < cc->cap; i = (i + 1) & (cc->cap - 1), k++) {
		if (cc->tab[i].id == id)
			return &cc->tab[i];
		if (!cc->tab[i].id)
			return NULL;
	}
	return NULL;
}

static int
hold_add(struct kvn_client_conn *cc, const struct hold *h)
{
	if ((cc->n + 1) * 2 > cc->cap) {
		size_t cap = cc->cap ? cc->cap * 2 : 64;
		struct hold *t = calloc(cap, sizeof(*t)), *old = cc->tab;
		if (!t)
			return -ENOMEM;
		size_t ocap = cc->cap;
		cc->tab = t;
		cc->cap = cap;
		for (size_t i = 0; i < ocap; i++)
			if (old[i].id) {
				size_t j = slot_of(cc, old[i].id);
				while (t[j].id)
					j = (j + 1) & (cap - 1);
				t[j] = old[i];
			}
		free(old);
	}
	size_t j = slot_of(cc, h->id);
	while (cc->tab[j].id)
		j = (j + 1) & (cc->cap - 1);
	cc->tab[j] = *h;
	cc->n++;
	return 0;
}

/* Removes h, keeping every probe chain intact (backward shift). */
static void
hold_del(struct kvn_client_conn *cc, struct hold *h)
{
	size_t i = (size_t)(h - cc->tab);
	cc->tab[i].id = 0;
	cc->n--;
	for (size_t j = (i + 1) & (cc->cap - 1); cc->tab[j].id; j = (j + 1) & (cc->cap - 1)) {
		struct hold t = cc->tab[j];
		cc->tab[j].id = 0;
		size_t k = slot_of(cc, t.id);
		while (cc->tab[k].id)
			k = (k + 1) & (cc->cap - 1);
		cc->tab[k] = t;
	}
}

/* Gives back what h holds (a lease's view; a reservation's slot unless commit took it). */
static void
hold_drop(struct kvn_clientsrv *cs, struct kvn_client_conn *cc, struct hold *h, bool slot_taken)
{
	cc->held -= h->len;
	atomic_fetch_sub(&cs->held_bytes, h->len);
	if (h->resv) {
		if (!slot_taken)
			kvn_storage_abort(cs->st, h->slot);
		free(h->key);
		atomic_fetch_sub(&cs->reservations, 1);
	} else {
		kvn_buf_unref(h->view);
		atomic_fetch_sub(&cs->leases, 1);
	}
	hold_del(cc, h);
}

/* Whether cc may hold len more bytes. */
static bool
hold_room(struct kvn_clientsrv *cs, struct kvn_client_conn *cc, const char *what,
	  const struct kvn_key *key, uint64_t len)
{
	if (cc->held + len <= cs->o.max_held)
		return true;
	atomic_fetch_add(&cs->held_refused, 1);
	uint64_t missed;
	if (kvn_ratelimit_ok(&cs->rl_held, 1000, &missed))
		kvn_warn(COMP,
			 "client %s: %s %s refused: it holds %" PRIu64 " bytes of leases and "
			 "reservations, %" PRIu64 " more would pass client_max_held_bytes (%" PRIu64
			 "); release views sooner%s",
			 cc->peer, what, key->str, cc->held, len, cs->o.max_held,
			 missed ? " (more like it not logged)" : "");
	return false;
}

/* ------------------------------------------------------------------------------------------
 * Replies
 * ------------------------------------------------------------------------------------------ */

static int
send_reply_flags(struct kvn_client_conn *cc, const struct kvn_cp_hdr *req, int status,
		 uint32_t count, uint16_t flags)
{
	if (cc->out.err)
		status = -ENOMEM, cc->out.len = 0, count = 0, flags = 0;
	uint8_t hdr[KVN_CP_HDR_SIZE];
	struct kvn_cp_hdr h = {.magic = KVN_CP_REPLY_MAGIC,
			       .op = req->op,
			       .flags = flags,
			       .count = count,
			       .status = status,
			       .id = req->id,
			       .body_len = cc->out.len};
	kvn_cp_hdr_encode(&h, hdr);
	int rc = kvn_fd_send2(cc->fd, hdr, sizeof(hdr), cc->out.p, cc->out.len);
	kvn_cp_buf_reset(&cc->out);
	if (rc)
		kvn_debug(COMP, "client %s: reply to %s not delivered: %s", cc->peer,
			  kvn_cp_op_name(req->op), kvn_strerror(rc));
	return rc ? -1 : 0;
}

static int
send_reply(struct kvn_client_conn *cc, const struct kvn_cp_hdr *req, int status, uint32_t count)
{
	return send_reply_flags(cc, req, status, count, 0);
}

/* A reply failing the whole request, its body the message. */
static int
send_error(struct kvn_client_conn *cc, const struct kvn_cp_hdr *req, int status, const char *msg)
{
	kvn_cp_buf_reset(&cc->out);
	kvn_cp_put_bytes(&cc->out, msg, strlen(msg));
	return send_reply(cc, req, status, 0);
}

static void
put_entry(struct kvn_client_conn *cc, int rc, uint64_t handle, uint64_t off, uint64_t len)
{
	uint8_t *p = kvn_cp_room(&cc->out, KVN_CP_ENTRY_SIZE);
	if (p)
		kvn_cp_entry_encode(&(struct kvn_cp_entry){rc, handle, off, len}, p);
}

/* ------------------------------------------------------------------------------------------
 * Requests
 * ------------------------------------------------------------------------------------------ */

/* The next key of a body; rc -EINVAL for one that is not a key (the reply says so per key),
 * -EPROTO when the body ends (the connection closes). */
static int
next_key(struct kvn_cp_rd *rd, struct kvn_key *key)
{
	const char *k;
	size_t n = kvn_cp_get_key(rd, &k);
	if (rd->bad)
		return -EPROTO;
	return kvn_key_parse(key, k, n, NULL, 0) < 0 ? -EINVAL : 0;
}

/* A lease on buf for the client: buf itself when it is a view of the pool, else a copy into
 * it. 0 with id/off/len; else why not (the caller still drops buf). */
static int
lease(struct kvn_clientsrv *cs, struct kvn_client_conn *cc, const struct kvn_key *key,
      struct kvn_buf *buf, uint64_t *id, uint64_t *off, uint64_t *len)
{
	struct kvn_buf *view = NULL;
	if (!hold_room(cs, cc, "get", key, buf->len))
		return -ENOBUFS;
	if (!kvn_pool_view_slot(buf))
		atomic_fetch_add(&cs->copied, 1);
	int rc = kvn_storage_to_pool(cs->st, buf, &view);
	if (rc)
		return rc;
	*id = cc->next_id++;
	*off = (uint64_t)((const uint8_t *)view->data - cs->base);
	*len = view->len;
	rc = hold_add(cc, &(struct hold){.id = *id, .view = view, .len = *len});
	if (rc) {
		kvn_buf_unref(view);
		*id = *off = *len = 0;
		return rc;
	}
	cc->held += *len;
	atomic_fetch_add(&cs->held_bytes, *len);
	atomic_fetch_add(&cs->leases, 1);
	return 0;
}

/* The batch's keys go to the engine in one call, so that those no local tier holds cost one
 * scheduler lookup and one round of peer READs together; the entries are then built in
 * order, each key with its own status, leases bounded as one by one. */
static int
do_get(struct kvn_clientsrv *cs, struct kvn_client_conn *cc, const struct kvn_cp_hdr *h,
       struct kvn_cp_rd *rd)
{
	size_t n = h->count ? h->count : 1;
	struct kvn_key *keys = malloc(sizeof(*keys) * n);
	struct kvn_buf **bufs = malloc(sizeof(*bufs) * n);
	int *rcs = malloc(sizeof(*rcs) * n), *got = malloc(sizeof(*got) * n);
	int rc = keys && bufs && rcs && got ? 0 : -ENOMEM;
	uint32_t nk = 0;
	for (uint32_t i = 0; !rc && i < h->count; i++) {
		rcs[i] = next_key(rd, &keys[nk]);
		if (rcs[i] == -EPROTO)
			rc = -EPROTO;
		else if (rcs[i] == 0)
			nk++;
	}
	uint64_t lookups = 0;
	if (!rc && nk)
		kvn_engine_get_batch(cs->eng, keys, nk, bufs, got, &lookups);
	if (lookups)
		atomic_fetch_add(&cs->lookups, lookups);
	for (uint32_t i = 0, k = 0; !rc && i < h->count; i++) {
		uint64_t id = 0, off = 0, len = 0;
		int r = rcs[i];
		if (r == 0) {
			r = got[k];
			if (!r)
				r = lease(cs, cc, &keys[k], bufs[k], &id, &off, &len);
			kvn_buf_unref(bufs[k++]);
		}
		put_entry(cc, r, id, off, len);
	}
	free(keys);
	free(bufs);
	free(rcs);
	free(got);
	if (rc == -EPROTO)
		return rc;
	return rc ? send_error(cc, h, rc, "GET: out of memory") : send_reply(cc, h, 0, h->count);
}

static int
do_reserve(struct kvn_clientsrv *cs, struct kvn_client_conn *cc, const struct kvn_cp_hdr *h,
	   struct kvn_cp_rd *rd)
{
	for (uint32_t i = 0; i < h->count; i++) {
		struct kvn_key key;
		int rc = next_key(rd, &key);
		uint64_t len = kvn_cp_get_u64(rd), id = 0, off = 0;
		if (rc == -EPROTO || rd->bad)
			return -EPROTO;
		struct kvn_slot *slot = NULL;
		struct kvn_key *kc = NULL;
		if (!rc && len > cs->o.max_chunk)
			rc = -EMSGSIZE;
		if (!rc && !hold_room(cs, cc, "put", &key, len))
			rc = -ENOBUFS;
		if (!rc && !(kc = malloc(sizeof(*kc))))
			rc = -ENOMEM;
		if (!rc)
			rc = kvn_storage_reserve(cs->st, &key, (size_t)len, &slot);
		if (!rc) {
			*kc = key;
			id = cc->next_id++;
			rc = hold_add(
			    cc, &(struct hold){
				    .id = id, .resv = true, .slot = slot, .key = kc, .len = len});
		}
		if (rc) {
			if (slot)
				kvn_storage_abort(cs->st, slot);
			free(kc);
			id = 0;
		} else {
			off = (uint64_t)((const uint8_t *)kvn_slot_payload(slot) - cs->base);
			cc->held += len;
			atomic_fetch_add(&cs->held_bytes, len);
			atomic_fetch_add(&cs->reservations, 1);
		}
		put_entry(cc, rc, id, off, rc ? 0 : len);
	}
	return send_reply(cc, h, 0, h->count);
}

static int
do_commit(struct kvn_clientsrv *cs, struct kvn_client_conn *cc, const struct kvn_cp_hdr *h,
	  struct kvn_cp_rd *rd)
{
	bool abort_all = h->flags & KVN_CP_F_ABORT;
	for (uint32_t i = 0; i < h->count; i++) {
		uint64_t id = kvn_cp_get_u64(rd), sum = kvn_cp_get_u64(rd);
		if (rd->bad)
			return -EPROTO;
		/* Only a reservation of this connection that is not committed yet: a client
		 * cannot publish a slot it did not reserve, nor reach one again once published. */
		struct hold *ho = hold_find(cc, id);
		int rc = 0;
		if (!ho || !ho->resv) {
			rc = -ENOENT;
		} else if (abort_all) {
			hold_drop(cs, cc, ho, false);
		} else {
			struct kvn_key key = *ho->key;
			struct kvn_slot *slot = ho->slot;
			hold_drop(cs, cc, ho, true);
			rc = kvn_storage_commit(cs->st, &key, slot, sum);
			if (rc)
				kvn_debug(COMP, "client %s: put %s not stored: %s", cc->peer,
					  key.str, kvn_strerror(rc));
		}
		kvn_cp_put_u32(&cc->out, (uint32_t)rc);
	}
	return send_reply(cc, h, 0, h->count);
}

static int
do_release(struct kvn_clientsrv *cs, struct kvn_client_conn *cc, const struct kvn_cp_hdr *h,
	   struct kvn_cp_rd *rd)
{
	for (uint32_t i = 0; i < h->count; i++) {
		uint64_t id = kvn_cp_get_u64(rd);
		if (rd->bad)
			return -EPROTO;
		struct hold *ho = hold_find(cc, id);
		if (ho && !ho->resv)
			hold_drop(cs, cc, ho, false);
	}
	return 0; /* no reply */
}

static int
do_remove(struct kvn_clientsrv *cs, struct kvn_client_conn *cc, const struct kvn_cp_hdr *h,
	  struct kvn_cp_rd *rd)
{
	for (uint32_t i = 0; i < h->count; i++) {
		struct kvn_key key;
		int rc = next_key(rd, &key);
		if (rc == -EPROTO)
			return rc;
		if (!rc)
			rc = kvn_engine_remove(cs->eng, &key);
		kvn_cp_put_u32(&cc->out, (uint32_t)rc);
	}
	return send_reply(cc, h, 0, h->count);
}

/* Keys this node does not hold are asked of the scheduler in one lookup. With PREFIX the
 * answer stops at the first key held nowhere (LMCache's contains-prefix). */
static int
do_contains(struct kvn_clientsrv *cs, struct kvn_client_conn *cc, const struct kvn_cp_hdr *h,
	    struct kvn_cp_rd *rd)
{
	bool prefix = h->flags & KVN_CP_F_PREFIX;
	struct kvn_digest *ask = malloc(sizeof(*ask) * (h->count ? h->count : 1));
	uint32_t *at = malloc(sizeof(*at) * (h->count ? h->count : 1));
	int32_t *res = calloc(h->count ? h->count : 1, sizeof(*res));
	bool *held = malloc(sizeof(*held) * (h->count ? h->count : 1));
	int rc = ask && at && res && held ? 0 : -ENOMEM;
	uint32_t nask = 0;
	for (uint32_t i = 0; i < h->count && rc != -EPROTO; i++) {
		struct kvn_key key;
		int r = next_key(rd, &key);
		if (r == -EPROTO) {
			rc = r;
			break;
		}
		if (rc)
			continue;
		res[i] = r < 0 ? r : kvn_storage_contains_here(cs->st, &key) > 0;
		if (res[i] == 0) {
			ask[nask] = key.digest;
			at[nask++] = i;
		}
	}
	if (!rc && nask && cs->held_fn) {
		atomic_fetch_add(&cs->lookups, 1);
		if (cs->held_fn(cs->held_ctx, ask, nask, held) == 0)
			for (uint32_t k = 0; k < nask; k++)
				res[at[k]] = held[k] ? 2 : 0;
	}
	if (!rc) {
		bool stop = false;
		for (uint32_t i = 0; i < h->count; i++) {
			if (prefix && (stop || res[i] <= 0)) {
				stop = true;
				res[i] = res[i] < 0 ? res[i] : 0;
			}
			kvn_cp_put_u32(&cc->out, (uint32_t)res[i]);
		}
	}
	free(ask);
	free(at);
	free(res);
	free(held);
	if (rc == -EPROTO)
		return rc;
	return rc ? send_error(cc, h, rc, "CONTAINS: out of memory")
		  : send_reply(cc, h, 0, h->count);
}

/* LIST: a page of the engine's listing (what `kvnode ls` shows), in byte order of the key
 * text, after the request's cursor. The node keeps nothing between pages: each walks the
 * listing once, keeping the page's size of smallest keys past the cursor in a max-heap (of
 * indexes, so that a replaced entry is written once), so a reply is bounded however many keys
 * the node holds, and a key held throughout a listing is in exactly one of its pages. */
struct list_ent {
	uint64_t len;
	uint16_t n;
	char key[KVN_KEY_MAX];
};

struct list_page {
	const char *after;
	size_t after_len;
	uint32_t want, n;
	struct list_ent *ent;
	uint32_t *heap; /* indexes into ent, the largest key first */
	bool more;	/* a key past the cursor did not fit the page */
};

static int
keycmp(const char *a, size_t an, const char *b, size_t bn)
{
	int r = memcmp(a, b, an < bn ? an : bn);
	return r ? r : (an > bn) - (an < bn);
}

static int
ent_cmp(const struct list_page *p, uint32_t a, uint32_t b)
{
	const struct list_ent *x = &p->ent[p->heap[a]], *y = &p->ent[p->heap[b]];
	return keycmp(x->key, x->n, y->key, y->n);
}

static void
heap_swap(struct list_page *p, uint32_t a, uint32_t b)
{
	uint32_t t = p->heap[a];
	p->heap[a] = p->heap[b];
	p->heap[b] = t;
}

static void
heap_down(struct list_page *p, uint32_t n, uint32_t i)
{
	for (;;) {
		uint32_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < n && ent_cmp(p, l, m) > 0)
			m = l;
		if (r < n && ent_cmp(p, r, m) > 0)
			m = r;
		if (m == i)
			return;
		heap_swap(p, i, m);
		i = m;
	}
}

static void
ent_set(struct list_ent *e, const struct kvn_key *key, size_t len)
{
	e->len = len;
	e->n = key->len;
	memcpy(e->key, key->str, key->len);
}

static int
list_one(void *ctx, const struct kvn_key *key, size_t len)
{
	struct list_page *p = ctx;
	if (keycmp(key->str, key->len, p->after, p->after_len) <= 0)
		return 0;
	if (p->n < p->want) { /* a new leaf, up to where it belongs */
		uint32_t i = p->n++;
		ent_set(&p->ent[i], key, len);
		p->heap[i] = i;
		for (; i > 0 && ent_cmp(p, i, (i - 1) / 2) > 0; i = (i - 1) / 2)
			heap_swap(p, i, (i - 1) / 2);
		return 0;
	}
	p->more = true;
	const struct list_ent *top = &p->ent[p->heap[0]];
	if (keycmp(key->str, key->len, top->key, top->n) < 0) { /* replaces the largest */
		ent_set(&p->ent[p->heap[0]], key, len);
		heap_down(p, p->n, 0);
	}
	return 0;
}

static int
do_list(struct kvn_clientsrv *cs, struct kvn_client_conn *cc, const struct kvn_cp_hdr *h,
	struct kvn_cp_rd *rd)
{
	struct list_page p = {.after = "", .want = kvn_cp_get_u32(rd)};
	kvn_cp_get_u32(rd); /* reserved */
	if (h->count == 1)
		p.after_len = kvn_cp_get_key(rd, &p.after);
	if (h->count > 1 || rd->bad || rd->off != rd->len)
		return -EPROTO;
	if (p.want == 0 || p.want > KVN_CP_BATCH_MAX)
		p.want = KVN_CP_BATCH_MAX;
	p.ent = malloc(sizeof(*p.ent) * p.want);
	p.heap = malloc(sizeof(*p.heap) * p.want);
	int rc = p.ent && p.heap ? kvn_engine_list(cs->eng, list_one, &p) : -ENOMEM;
	if (rc == 0) {
		/* Heap sort: the largest to the end, n times, gives byte order. */
		for (uint32_t k = p.n; k > 1; k--) {
			heap_swap(&p, 0, k - 1);
			heap_down(&p, k - 1, 0);
		}
		for (uint32_t i = 0; i < p.n; i++) {
			const struct list_ent *e = &p.ent[p.heap[i]];
			kvn_cp_put_u64(&cc->out, e->len);
			kvn_cp_put_key(&cc->out, e->key, e->n);
		}
	}
	free(p.ent);
	free(p.heap);
	if (rc) {
		char msg[200];
		snprintf(msg, sizeof(msg), "LIST failed: %s", kvn_strerror(rc));
		return send_error(cc, h, rc, msg);
	}
	return send_reply_flags(cc, h, 0, p.n, p.more ? KVN_CP_F_MORE : 0);
}

/* ------------------------------------------------------------------------------------------
 * Connections
 * ------------------------------------------------------------------------------------------ */

static int
proto_fail(struct kvn_clientsrv *cs, struct kvn_client_conn *cc, const char *why)
{
	atomic_fetch_add(&cs->proto_errors, 1);
	kvn_warn(COMP, "client %s: %s; closing its connection", cc->peer, why);
	return -1;
}

/* Handles one frame: its header h, its body in rd. */
static int
serve_frame(struct kvn_clientsrv *cs, struct kvn_client_conn *cc, const struct kvn_cp_hdr *h,
	    struct kvn_cp_rd *rd)
{
	atomic_fetch_add(&cs->requests[h->op], 1);
	atomic_fetch_add(&cs->keys, h->count);
	kvn_cp_buf_reset(&cc->out);
	int rc = 0;
	switch (h->op) {
	case KVN_CP_GET:
		rc = do_get(cs, cc, h, rd);
		break;
	case KVN_CP_RESERVE:
		rc = do_reserve(cs, cc, h, rd);
		break;
	case KVN_CP_COMMIT:
		rc = do_commit(cs, cc, h, rd);
		break;
	case KVN_CP_RELEASE:
		rc = do_release(cs, cc, h, rd);
		break;
	case KVN_CP_REMOVE:
		rc = do_remove(cs, cc, h, rd);
		break;
	case KVN_CP_CONTAINS:
		rc = do_contains(cs, cc, h, rd);
		break;
	case KVN_CP_PING:
		rc = send_reply(cc, h, 0, 0);
		break;
	case KVN_CP_LIST:
		rc = do_list(cs, cc, h, rd);
		break;
	}
	if (rc == -EPROTO) {
		char why[256];
		snprintf(why, sizeof(why), "malformed %s body (%u entries in %" PRIu64 " bytes)",
			 kvn_cp_op_name(h->op), h->count, h->body_len);
		return proto_fail(cs, cc, why);
	}
	return rc;
}

/* Reads the rest of a frame begun in cc->in, so that it holds need bytes: what the client
 * has not sent yet it must send within the I/O timeout. */
static int
read_rest(struct kvn_clientsrv *cs, struct kvn_client_conn *cc, size_t need, uint64_t deadline,
	  const char *what)
{
	if (cc->in.len >= need)
		return 0;
	size_t got;
	uint8_t *at = kvn_cp_spare(&cc->in, need - cc->in.len);
	if (!at)
		return proto_fail(cs, cc, "out of memory for a request");
	int rc = kvn_fd_read_by(cc->fd, at, need - cc->in.len, deadline, &got);
	cc->in.len += got;
	return rc ? proto_fail(cs, cc, what) : 0;
}

/* The socket is readable: one recv takes what the client has sent (a GET and the RELEASEs
 * that rode with it, a burst of pipelined requests), and every frame of it is handled before
 * the connection's thread polls again. A frame cut off at the end of what arrived is read
 * whole first, within the I/O timeout, as a single one always was. */
int
kvn_clientsrv_serve(struct kvn_clientsrv *cs, struct kvn_client_conn *cc)
{
	uint64_t deadline = kvn_now_ms() + (uint64_t)cs->o.io_timeout_ms;
	kvn_cp_buf_reset(&cc->in);
	if (!kvn_cp_spare(&cc->in, IN_READ))
		return proto_fail(cs, cc, "out of memory for a request");
	ssize_t n;
	do
		n = recv(cc->fd, cc->in.p, IN_READ, MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	cc->in.len = n > 0 ? (size_t)n : 0;
	if (n == 0 || (n < 0 && errno != EAGAIN))
		return -1; /* closed (or reset) between two frames */
	int rc = 0;
	for (size_t off = 0; !rc && off < cc->in.len;) {
		if (read_rest(cs, cc, off + KVN_CP_HDR_SIZE, deadline, "truncated request"))
			return -1;
		struct kvn_cp_hdr h;
		char why[256];
		kvn_cp_hdr_decode(cc->in.p + off, &h);
		if (kvn_cp_hdr_validate(&h, false, why, sizeof(why)) || h.op == KVN_CP_HELLO)
			return proto_fail(cs, cc, h.op == KVN_CP_HELLO ? "a second HELLO" : why);
		size_t end = off + KVN_CP_HDR_SIZE + (size_t)h.body_len; /* body <= BODY_MAX */
		if (read_rest(cs, cc, end, deadline, "truncated request body"))
			return -1;
		struct kvn_cp_rd rd = {cc->in.p + off + KVN_CP_HDR_SIZE, (size_t)h.body_len, 0,
				       false};
		rc = serve_frame(cs, cc, &h, &rd);
		off = end;
	}
	if (cc->in.cap > 2 * IN_READ) /* a large body once: not kept for the connection's life */
		kvn_cp_buf_free(&cc->in);
	return rc;
}

static int
send_hello_ok(struct kvn_clientsrv *cs, struct kvn_client_conn *cc, const struct kvn_cp_hdr *req)
{
	uint8_t buf[KVN_CP_HDR_SIZE + KVN_CP_HELLO_OK_SIZE];
	struct kvn_cp_hdr h = {.magic = KVN_CP_REPLY_MAGIC,
			       .op = KVN_CP_HELLO,
			       .id = req->id,
			       .body_len = KVN_CP_HELLO_OK_SIZE};
	kvn_cp_hdr_encode(&h, buf);
	struct kvn_cp_hello_ok ok = {.major = KVN_CP_MAJOR,
				     .minor = KVN_CP_MINOR,
				     .max_batch = KVN_CP_BATCH_MAX,
				     .pool_size = kvn_pool_size(cs->pool),
				     .max_chunk = cs->o.max_chunk,
				     .max_held = cs->o.max_held};
	kvn_cp_hello_ok_encode(&ok, buf + KVN_CP_HDR_SIZE);
	/* The header and the 32 bytes fit any socket buffer: sent whole or not at all. */
	return kvn_fd_send_with_fd(cc->fd, buf, sizeof(buf), kvn_pool_fd(cs->pool)) ? -1 : 0;
}

int
kvn_clientsrv_hello(struct kvn_clientsrv *cs, int fd, const char *peer, const struct kvn_cp_hdr *h,
		    struct kvn_client_conn **out)
{
	*out = NULL;
	uint8_t body[8 + KVN_CP_NAME_MAX];
	struct kvn_client_conn tmp = {.fd = fd};
	snprintf(tmp.peer, sizeof(tmp.peer), "%s", peer);
	if (h->body_len < 8 || h->body_len > sizeof(body))
		return proto_fail(cs, &tmp, "HELLO of a wrong size");
	size_t got;
	if (kvn_fd_read_by(fd, body, (size_t)h->body_len,
			   kvn_now_ms() + (uint64_t)cs->o.io_timeout_ms, &got))
		return proto_fail(cs, &tmp, "truncated HELLO");
	uint16_t major = (uint16_t)(body[0] | body[1] << 8),
		 minor = (uint16_t)(body[2] | body[3] << 8);
	if (major != KVN_CP_MAJOR) {
		char msg[200];
		snprintf(msg, sizeof(msg),
			 "client protocol %u.%u: this node (kvnode %s) speaks %u.%u; use the "
			 "client library of the node's version",
			 major, minor, KVN_VERSION_STRING, KVN_CP_MAJOR, KVN_CP_MINOR);
		kvn_warn(COMP, "client %s refused: %s", peer, msg);
		send_error(&tmp, h, -EPROTO, msg);
		kvn_cp_buf_free(&tmp.out);
		return -1;
	}
	struct kvn_client_conn *cc = calloc(1, sizeof(*cc));
	if (!cc) {
		send_error(&tmp, h, -ENOMEM, "the node is out of memory");
		kvn_cp_buf_free(&tmp.out);
		return -1;
	}
	cc->fd = fd;
	cc->next_id = 1;
	char name[25];
	size_t nl = (size_t)h->body_len - 8 < 24 ? (size_t)h->body_len - 8 : 24;
	for (size_t i = 0; i < nl; i++) /* a name for log lines: printable ASCII only */
		name[i] = body[8 + i] >= 0x20 && body[8 + i] < 0x7f ? (char)body[8 + i] : '?';
	name[nl] = '\0';
	snprintf(cc->peer, sizeof(cc->peer), "%s (%s)", name, peer);
	if (send_hello_ok(cs, cc, h)) {
		free(cc);
		return -1;
	}
	atomic_fetch_add(&cs->clients, 1);
	kvn_debug(COMP, "client %s connected (protocol %u.%u)", cc->peer, major, minor);
	*out = cc;
	return 0;
}

void
kvn_clientsrv_conn_end(struct kvn_clientsrv *cs, struct kvn_client_conn *cc)
{
	if (!cc)
		return;
	size_t leases = 0, resv = 0;
	for (size_t i = 0; i < cc->cap; i++) {
		struct hold *h = &cc->tab[i];
		if (!h->id)
			continue;
		if (h->resv) {
			resv++;
			kvn_storage_abort(cs->st, h->slot);
			free(h->key);
		} else {
			leases++;
			kvn_buf_unref(h->view);
		}
	}
	atomic_fetch_sub(&cs->leases, leases);
	atomic_fetch_sub(&cs->reservations, resv);
	atomic_fetch_sub(&cs->held_bytes, cc->held);
	if (leases || resv)
		kvn_debug(COMP, "client %s gone: %zu leases and %zu reservations given back",
			  cc->peer, leases, resv);
	atomic_fetch_sub(&cs->clients, 1);
	free(cc->tab);
	kvn_cp_buf_free(&cc->out);
	kvn_cp_buf_free(&cc->in);
	free(cc);
}

/* ------------------------------------------------------------------------------------------
 * The server
 * ------------------------------------------------------------------------------------------ */

int
kvn_clientsrv_create(struct kvn_engine *eng, const struct kvn_clientsrv_opts *opts,
		     struct kvn_clientsrv **out, char *err, size_t errlen)
{
	*out = NULL;
	struct kvn_pool *pool = kvn_engine_pool(eng);
	if (!pool)
		return kvn_seterr(-ENOTSUP, err, errlen,
				  "clients need the cpu tier (local_cpu: true): its pool is what "
				  "they map");
	struct kvn_clientsrv *cs = calloc(1, sizeof(*cs));
	if (!cs)
		return kvn_seterr(-ENOMEM, err, errlen, "out of memory");
	cs->eng = eng;
	cs->st = kvn_engine_storage(eng);
	cs->pool = pool;
	cs->base = kvn_pool_base(pool);
	cs->o = *opts;
	if (!cs->o.max_held)
		cs->o.max_held = kvn_pool_size(pool) / 4;
	if (!cs->o.io_timeout_ms)
		cs->o.io_timeout_ms = DEFAULT_IO_MS;
	if (!cs->o.max_chunk)
		cs->o.max_chunk = kvn_pool_size(pool);
	*out = cs;
	return 0;
}

void
kvn_clientsrv_destroy(struct kvn_clientsrv *cs)
{
	free(cs);
}

void
kvn_clientsrv_set_held(struct kvn_clientsrv *cs, kvn_clientsrv_held_fn fn, void *ctx)
{
	cs->held_fn = fn;
	cs->held_ctx = ctx;
}

void
kvn_clientsrv_stats(struct kvn_clientsrv *cs, struct kvn_clientsrv_stats *out)
{
	*out = (struct kvn_clientsrv_stats){0};
	if (!cs)
		return;
	out->clients = atomic_load(&cs->clients);
	out->leases = atomic_load(&cs->leases);
	out->reservations = atomic_load(&cs->reservations);
	out->held_bytes = atomic_load(&cs->held_bytes);
	out->max_held = cs->o.max_held;
	for (int i = 0; i < KVN_CP_NOPS; i++)
		out->requests[i] = atomic_load(&cs->requests[i]);
	out->keys = atomic_load(&cs->keys);
	out->held_refused = atomic_load(&cs->held_refused);
	out->cluster_lookups = atomic_load(&cs->lookups);
	out->copied_to_pool = atomic_load(&cs->copied);
	out->protocol_errors = atomic_load(&cs->proto_errors);
}
