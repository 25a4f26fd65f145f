/* The scheduler's membership (node/scheduler/scheduler_int.h): joins with stable worker ids per node
 * name (kept worker_id_grace_ms after the name goes, then reused), expiry of silent members,
 * MEMBER notices to everyone, and the cluster view (STATS). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stddef.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvnode/plugin.h"
#include "plugins/plugins.h"
#include "core/log.h"
#include "node/scheduler/scheduler_int.h"

/* A JOIN's worker_id hint is honoured below max(HINT_FLOOR, 2 x the ids held): a cluster's
 * ids survive a scheduler restart, and no one frame sizes the tables indexed by worker id (here
 * and on every node) past what the members need. */
#define HINT_FLOOR 256u

/* ------------------------------------------------------------------------------------------
 * Names to ids: a chained hash through struct member.name_next, one bucket per held id or more
 * ------------------------------------------------------------------------------------------ */

static int32_t *
bucket_of(struct kvn_scheduler *s, const char *name)
{
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
	for (; *name; name++)
		h = (h ^ (unsigned char)*name) * 0x100000001b3ull;
	return &s->name_buckets[h & (s->nbuckets - 1)];
}

static int32_t
name_find(struct kvn_scheduler *s, const char *name)
{
	if (!s->nbuckets)
		return -1;
	for (int32_t id = *bucket_of(s, name); id >= 0; id = s->members[id].name_next)
		if (!strcmp(s->members[id].name, name))
			return id;
	return -1;
}

/* Indexes id (its name set, not yet counted in held). */
static int
name_add(struct kvn_scheduler *s, uint32_t id)
{
	if (s->held + 1 > s->nbuckets) {
		size_t n = s->nbuckets ? s->nbuckets * 2 : 64;
		int32_t *b = malloc(n * sizeof(*b));
		if (!b)
			return -ENOMEM;
		for (size_t i = 0; i < n; i++)
			b[i] = -1;
		free(s->name_buckets);
		s->name_buckets = b;
		s->nbuckets = n;
		for (uint32_t i = 0; i < s->nmembers; i++) {
			if (s->members[i].state == M_UNUSED || i == id)
				continue;
			int32_t *head = bucket_of(s, s->members[i].name);
			s->members[i].name_next = *head;
			*head = (int32_t)i;
		}
	}
	int32_t *head = bucket_of(s, s->members[id].name);
	s->members[id].name_next = *head;
	*head = (int32_t)id;
	return 0;
}

static void
name_del(struct kvn_scheduler *s, uint32_t id)
{
	for (int32_t *pp = bucket_of(s, s->members[id].name); *pp >= 0;
	     pp = &s->members[*pp].name_next)
		if (*pp == (int32_t)id) {
			*pp = s->members[id].name_next;
			return;
		}
}

/* The name down for longer than worker_id_grace_ms gives its id back. */
static void
reclaim(struct kvn_scheduler *s, uint32_t id)
{
	struct member *m = &s->members[id];
	kvn_debug(COMP, "worker id %u of node %s is free again: down for over %lld ms", id, m->name,
		  (long long)s->grace_ms);
	if (s->ha)
		kvn_sched_ha_forget(s, m->name);
	name_del(s, id);
	free(m->blob);
	memset(m, 0, sizeof(*m)); /* M_UNUSED */
	m->name_next = -1;
	s->held--;
	s->reclaimed++;
	if (id < s->free_from)
		s->free_from = id;
}

static void
reclaim_expired(struct kvn_scheduler *s, int64_t now)
{
	for (uint32_t id = 0; id < s->nmembers; id++)
		if (s->members[id].state == M_EXPIRED &&
		    now - s->members[id].down_ms >= s->grace_ms)
			reclaim(s, id);
}

/* ------------------------------------------------------------------------------------------
 * Membership
 * ------------------------------------------------------------------------------------------ */

static void
put_member_frame(struct kvn_scheduler *s, struct kvn_cf_buf *b, uint32_t id)
{
	const struct member *m = &s->members[id];
	cJSON *j = cJSON_CreateObject();
	cJSON_AddNumberToObject(j, "worker_id", id);
	cJSON_AddStringToObject(j, "name", m->name);
	cJSON_AddStringToObject(j, "data_addr", m->data_addr);
	cJSON_AddStringToObject(j, "transport", m->transport);
	cJSON_AddNumberToObject(j, "capacity", (double)m->capacity);
	cJSON_AddStringToObject(j, "state", m->state == M_ALIVE ? "up" : "down");
	cJSON_AddNumberToObject(j, "epoch", (double)s->epoch);
	cJSON_AddNumberToObject(j, "worker_count", s->alive);
	char *text = cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	if (text)
		kvn_cf_put_json_frame(b, KVN_CF_MEMBER, 0, text,
				      m->state == M_ALIVE ? m->blob : NULL,
				      m->state == M_ALIVE ? m->blob_len : 0);
	else
		b->err = -ENOMEM;
	free(text);
}

/* Sends the frames in s->scratch to every joined connection but skip. */
void
kvn_sched_broadcast(struct kvn_scheduler *s, const struct conn *skip, bool evict_notice)
{
	if (s->scratch.err || !s->scratch.len)
		return;
	for (struct conn *c = s->conns, *next; c; c = next) {
		next = c->next;
		if (c == skip || c->member < 0 || c->closing || (evict_notice && !c->want_evicts))
			continue;
		kvn_cf_put_bytes(&c->out, s->scratch.p, s->scratch.len);
		kvn_sched_conn_flush(s, c);
	}
}

void
kvn_sched_member_down(struct kvn_scheduler *s, uint32_t id, const char *why)
{
	struct member *m = &s->members[id];
	size_t dropped = kvn_dir_drop_worker(s->dir, id);
	m->state = M_EXPIRED;
	m->down_ms = kvn_sched_now_ms();
	s->alive--;
	s->epoch++;
	kvn_info(COMP,
		 "node %s (worker %u) %s: %zu directory entries dropped; %u members, epoch %llu",
		 m->name, id, why, dropped, s->alive, (unsigned long long)s->epoch);
	struct conn *c = m->conn;
	m->conn = NULL;
	if (c) {
		c->member = -1;
		kvn_sched_conn_fail(s, c, 0, -ETIMEDOUT, "node %s was %s", m->name, why);
		kvn_sched_conn_flush(s, c);
	}
	kvn_cf_buf_reset(&s->scratch);
	put_member_frame(s, &s->scratch, id);
	kvn_sched_broadcast(s, NULL, false);
	/* A name down keeps only its id for worker_id_grace_ms: its regions (up to 64 KiB) come
	 * with its next JOIN, so 65535 names gone cannot hold 4 GiB here. */
	s->blob_bytes -= m->blob_len;
	free(m->blob);
	m->blob = NULL;
	m->blob_len = 0;
}

void
kvn_sched_expire(struct kvn_scheduler *s)
{
	int64_t now = kvn_sched_now_ms(), limit = (int64_t)s->hb_ms * s->missed;
	for (uint32_t id = 0; id < s->nmembers; id++) {
		struct member *m = &s->members[id];
		if (m->state == M_ALIVE && now - m->last_beat_ms > limit) {
			char why[96];
			snprintf(why, sizeof(why), "expired after %lld ms without a heartbeat",
				 (long long)(now - m->last_beat_ms));
			s->expiries++;
			kvn_sched_member_down(s, id, why);
		}
	}
	reclaim_expired(s, now);
	for (struct conn *c = s->conns, *next; c; c = next) {
		next = c->next;
		if (c->member < 0 && !c->closing && now - c->opened_ms > (int64_t)s->unjoined_ms)
			kvn_sched_conn_close(s, c, "it did not join in time");
	}
}

/* A string of the JOIN into dst (cap bytes): the name by kvn_cf_name_check, the others printable
 * ASCII without spaces (an address, a transport's name). All are shown in logs, JSON and
 * `kvnode stat` as they are. */
static int
copy_str(const cJSON *j, const char *field, char *dst, size_t cap, bool is_name, char *err,
	 size_t errlen)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, field);
	if (!v || cJSON_IsNull(v)) {
		if (is_name)
			return kvn_seterr(-EINVAL, err, errlen,
					  "JOIN lacks \"%s\": names are " KVN_CF_NAME_RULE, field);
		dst[0] = '\0';
		return 0;
	}
	if (!cJSON_IsString(v))
		return kvn_seterr(-EINVAL, err, errlen, "JOIN \"%s\" must be a string", field);
	const char *str = v->valuestring;
	size_t n = strlen(str);
	if (is_name) {
		char why[256];
		if (kvn_cf_name_check(str, why, sizeof(why)))
			return kvn_seterr(-EINVAL, err, errlen,
					  "JOIN \"%s\" refused: %s (set node_name)", field, why);
	} else {
		if (n >= cap)
			return kvn_seterr(-EINVAL, err, errlen,
					  "JOIN \"%s\" of %zu bytes: it must be 0..%zu bytes of "
					  "printable ASCII",
					  field, n, cap - 1);
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)str[i] <= 0x20 || (unsigned char)str[i] >= 0x7f)
				return kvn_seterr(-EINVAL, err, errlen,
						  "JOIN \"%s\" must be printable ASCII without "
						  "spaces; byte %zu is 0x%02x",
						  field, i, (unsigned char)str[i]);
	}
	memcpy(dst, str, n + 1);
	return 0;
}

/* The member table reaches id (< KVN_DIR_MAX_WORKERS): doubling, the new entries unused. */
static int
grow_to(struct kvn_scheduler *s, uint32_t id)
{
	if (id < s->nmembers)
		return 0;
	size_t n = id + 1 > s->nmembers * 2 ? id + 1 : s->nmembers * 2;
	if (n < 16)
		n = 16;
	if (n > KVN_DIR_MAX_WORKERS)
		n = KVN_DIR_MAX_WORKERS;
	struct member *p = realloc(s->members, n * sizeof(*p));
	if (!p)
		return -ENOMEM;
	memset(p + s->nmembers, 0, (n - s->nmembers) * sizeof(*p));
	s->members = p;
	s->nmembers = n;
	return 0;
}

/* The worker id for name: its own while it holds one, else the hint when that is free and
 * under the hint bound, else the lowest free id. *fresh: the id was free (name not indexed). */
static int
pick_id(struct kvn_scheduler *s, const char *name, double hint, uint32_t *id, bool *fresh)
{
	int32_t own = name_find(s, name);
	if (own >= 0) {
		*id = (uint32_t)own;
		*fresh = false;
		return 0;
	}
	*fresh = true;
	if (s->held >= KVN_DIR_MAX_WORKERS)
		reclaim_expired(s, kvn_sched_now_ms()); /* the periodic pass may not have run */
	if (s->held >= KVN_DIR_MAX_WORKERS)
		return -EUSERS;
	uint64_t bound = 2 * (uint64_t)(s->held + 1);
	if (bound < HINT_FLOOR)
		bound = HINT_FLOOR;
	if (bound > KVN_DIR_MAX_WORKERS)
		bound = KVN_DIR_MAX_WORKERS;
	uint32_t want = UINT32_MAX;
	if (hint >= 0 && hint < (double)bound &&
	    ((uint32_t)hint >= s->nmembers || s->members[(uint32_t)hint].state == M_UNUSED))
		want = (uint32_t)hint;
	if (want == UINT32_MAX) {
		uint32_t i = s->free_from;
		while (i < s->nmembers && s->members[i].state != M_UNUSED)
			i++;
		s->free_from = want = i; /* held < the cap: i is below it */
	}
	int rc = grow_to(s, want);
	if (!rc)
		*id = want;
	return rc;
}

/* The client's proof in a JOIN or STATS (ctlframe.h "Auth"): its HELLO must have come first,
 * and with a token the proof must check. 0, or the connection is refused (ERROR, closed). */
static int
check_proof(struct kvn_scheduler *s, struct conn *c, uint32_t seq, const cJSON *j,
	    const char *what)
{
	if (!c->hello)
		return kvn_sched_conn_fail(s, c, seq, -EPROTO,
					   "%s before HELLO: the node is older than this scheduler "
					   "(upgrade it to the same version)",
					   what);
	if (!s->auth.set || c->authed)
		return 0; /* a connection proves the token once */
	const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "proof");
	uint8_t mac[KVN_AUTH_MAC];
	size_t n = 0;
	const struct kvn_auth_part parts[] = {{c->nonce_s, KVN_AUTH_NONCE},
					      {c->nonce_c, KVN_AUTH_NONCE}};
	if (cJSON_IsString(p) &&
	    !sodium_hex2bin(mac, sizeof(mac), p->valuestring, strlen(p->valuestring), NULL, &n,
			    NULL) &&
	    n == sizeof(mac) && kvn_auth_verify(&s->auth, KVN_CF_NODE_LABEL, parts, 2, mac, n)) {
		c->authed = true;
		return 0;
	}
	s->refused++;
	return kvn_sched_conn_fail(s, c, seq, -EACCES,
				   "%s refused: wrong or missing auth_token (set the same "
				   "auth_token on nodes and scheduler)",
				   what);
}

int
kvn_sched_hello(struct kvn_scheduler *s, struct conn *c, uint32_t seq, const uint8_t *body,
		uint32_t len)
{
	if (c->hello || len != KVN_AUTH_NONCE)
		return kvn_sched_conn_fail(s, c, seq, -EPROTO,
					   c->hello ? "a second HELLO" : "HELLO of %u bytes, not %d",
					   len, KVN_AUTH_NONCE);
	memcpy(c->nonce_c, body, KVN_AUTH_NONCE);
	kvn_auth_nonce(c->nonce_s);
	c->hello = true;
	uint8_t proof[KVN_AUTH_MAC];
	const struct kvn_auth_part parts[] = {{c->nonce_c, KVN_AUTH_NONCE},
					      {c->nonce_s, KVN_AUTH_NONCE}};
	kvn_auth_mac(&s->auth, KVN_CF_SCHED_LABEL, parts, 2, proof);
	kvn_cf_begin(&c->out, KVN_CF_CHALLENGE, seq);
	kvn_cf_put_bytes(&c->out, c->nonce_s, KVN_AUTH_NONCE);
	kvn_cf_put_u32(&c->out, s->auth.set ? KVN_CF_F_TOKEN : 0);
	kvn_cf_put_bytes(&c->out, proof, sizeof(proof));
	return kvn_cf_end(&c->out) ? -1 : 0;
}

/* What a JOIN asks for, read from its body. */
struct join_req {
	struct member nm; /* name, data_addr, transport, capacity; blob not yet copied */
	double hint;	  /* the worker_id it asks for, -1 for none */
	const uint8_t *blob;
	size_t blob_len;
};

/* The JOIN JSON's fields into q: 0, or an error written to err. */
static int
join_fields(const cJSON *j, struct join_req *q, char *err, size_t errlen)
{
	struct member *nm = &q->nm;
	const cJSON *cap = cJSON_GetObjectItemCaseSensitive(j, "capacity");
	const cJSON *mtu = cJSON_GetObjectItemCaseSensitive(j, "mtu");
	const cJSON *hint = cJSON_GetObjectItemCaseSensitive(j, "worker_id");
	int rc = copy_str(j, "name", nm->name, sizeof(nm->name), true, err, errlen);
	nm->name_next = -1;
	if (!rc)
		rc = copy_str(j, "data_addr", nm->data_addr, sizeof(nm->data_addr), false, err,
			      errlen);
	if (!rc)
		rc = copy_str(j, "transport", nm->transport, sizeof(nm->transport), false, err,
			      errlen);
	if (!rc && cap &&
	    !(cJSON_IsNumber(cap) && cap->valuedouble >= 0 && cap->valuedouble < 1e19))
		rc = kvn_seterr(-EINVAL, err, errlen, "JOIN \"capacity\" must be a byte count");
	nm->capacity = cJSON_IsNumber(cap) && !rc ? (uint64_t)cap->valuedouble : 0;
	if (!rc && mtu &&
	    !(cJSON_IsNumber(mtu) && mtu->valuedouble >= 0 && mtu->valuedouble <= 65536))
		rc = kvn_seterr(-EINVAL, err, errlen,
				"JOIN \"mtu\" must be a byte count up to 65536");
	nm->mtu = cJSON_IsNumber(mtu) && !rc ? (uint32_t)mtu->valuedouble : 0;
	q->hint = cJSON_IsNumber(hint) ? hint->valuedouble : -1;
	return rc;
}

/* Validates a JOIN (a first JOIN on the connection, a JSON object, the proof, its fields) into
 * q; 0, or the connection is refused. */
static int
parse_join(struct kvn_scheduler *s, struct conn *c, uint32_t seq, const uint8_t *body, uint32_t len,
	   struct join_req *q)
{
	char err[256];
	const char *jtext;
	size_t jlen;
	if (c->member >= 0)
		return kvn_sched_conn_fail(s, c, seq, -EPROTO,
					   "JOIN on a connection that already joined");
	if (kvn_cf_split_json_blob(body, len, &jtext, &jlen, &q->blob, &q->blob_len, err,
				   sizeof(err)))
		return kvn_sched_conn_fail(s, c, seq, -EPROTO, "JOIN: %s", err);
	cJSON *j = cJSON_ParseWithLength(jtext, jlen);
	if (!cJSON_IsObject(j)) {
		cJSON_Delete(j);
		return kvn_sched_conn_fail(s, c, seq, -EPROTO, "JOIN body is not a JSON object");
	}
	/* The proof first: nothing about the cluster is told to a peer without it. */
	int prc = check_proof(s, c, seq, j, "JOIN");
	if (prc) {
		cJSON_Delete(j);
		return prc;
	}
	memset(&q->nm, 0, sizeof(q->nm));
	int rc = join_fields(j, q, err, sizeof(err));
	c->want_evicts = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "want_evicts"));
	cJSON_Delete(j);
	if (rc)
		return kvn_sched_conn_fail(s, c, seq, -EINVAL, "%s", err);
	return 0;
}

/* A worker id for the joining name (its own again, or a free one), the blob copied into
 * q->nm and a fresh id's name indexed; 0, or the connection is refused. */
static int
claim_id(struct kvn_scheduler *s, struct conn *c, uint32_t seq, struct join_req *q, uint32_t *id,
	 bool *fresh)
{
	struct member *nm = &q->nm;
	size_t blen = q->blob_len;
	int rc;
	if ((rc = pick_id(s, nm->name, q->hint, id, fresh)) == -EUSERS) {
		s->refused++;
		return kvn_sched_conn_fail(
		    s, c, seq, -EUSERS,
		    "JOIN of %s refused: all %u worker ids are held by node names that are members "
		    "or left less than worker_id_grace_ms (%lld ms) ago; an id is reused once its "
		    "name has been gone that long",
		    nm->name, KVN_DIR_MAX_WORKERS, (long long)s->grace_ms);
	}
	if (rc)
		return kvn_sched_conn_fail(s, c, seq, rc, "JOIN of %s: out of memory", nm->name);
	nm->blob = blen ? malloc(blen) : NULL;
	if (blen && !nm->blob)
		return kvn_sched_conn_fail(s, c, seq, -ENOMEM, "JOIN of %s: out of memory",
					   nm->name);
	if (blen)
		memcpy(nm->blob, q->blob, blen);
	nm->blob_len = blen;

	char why[512];
	if (*fresh && s->ha && (rc = kvn_sched_ha_record(s, nm->name, id, why, sizeof(why)))) {
		free(nm->blob);
		s->refused++;
		return kvn_sched_conn_fail(s, c, seq, -EAGAIN,
					   "JOIN of %s: its worker id cannot be recorded in etcd "
					   "(%s); join again",
					   nm->name, why);
	}
	struct member *m = &s->members[*id];
	if (*fresh) {
		memcpy(m->name, nm->name, sizeof(m->name));
		if (name_add(s, *id)) {
			free(nm->blob);
			memset(m, 0, sizeof(*m));
			m->name_next = -1;
			return kvn_sched_conn_fail(s, c, seq, -ENOMEM, "JOIN of %s: out of memory",
						   nm->name);
		}
		s->held++;
	}
	return 0;
}

/* The same name from a new connection: the node restarted before its old connection was
 * noticed gone (or two nodes share a name, which is a config error the log makes visible). */
static void
drop_old_conn(struct kvn_scheduler *s, struct member *m, struct conn *c)
{
	kvn_warn(COMP, "node %s joined again from %s; dropping its old connection %s", m->name,
		 c->peer, m->conn->peer);
	struct conn *old = m->conn;
	old->member = -1;
	m->conn = NULL;
	kvn_sched_conn_close(s, old, "replaced by a new JOIN of the same node");
}

/* Makes nm the alive member id on connection c (a new epoch). */
static void
admit_member(struct kvn_scheduler *s, struct conn *c, uint32_t id, struct member *nm, bool rejoin)
{
	struct member *m = &s->members[id];
	/* Whatever it published before belongs to an index it is about to re-publish. */
	size_t dropped = kvn_dir_drop_worker(s->dir, id);
	if (m->state != M_ALIVE)
		s->alive++;
	s->blob_bytes += nm->blob_len - m->blob_len;
	free(m->blob);
	nm->name_next = m->name_next;
	*m = *nm;
	m->state = M_ALIVE;
	m->last_beat_ms = m->joined_ms = kvn_sched_now_ms();
	m->conn = c;
	c->member = (int32_t)id;
	s->epoch++;
	s->joins++;
	kvn_info(COMP,
		 "node %s %sjoined from %s as worker %u (data %s, transport %s%s); %u members, "
		 "epoch %llu",
		 m->name, rejoin ? "re" : "", c->peer, id, m->data_addr[0] ? m->data_addr : "-",
		 m->transport[0] ? m->transport : "-",
		 dropped ? ", its old directory entries dropped" : "", s->alive,
		 (unsigned long long)s->epoch);
}

/* JOIN_OK and the MEMBER frames: the newcomer learns of everyone alive (itself included),
 * everyone else of it. */
static int
send_join_ok(struct kvn_scheduler *s, struct conn *c, uint32_t seq, uint32_t id)
{
	cJSON *r = cJSON_CreateObject();
	cJSON_AddNumberToObject(r, "worker_id", id);
	cJSON_AddNumberToObject(r, "worker_count", s->alive);
	cJSON_AddNumberToObject(r, "epoch", (double)s->epoch);
	cJSON_AddNumberToObject(r, "heartbeat_ms", s->hb_ms);
	char *text = cJSON_PrintUnformatted(r);
	cJSON_Delete(r);
	if (!text)
		return kvn_sched_conn_fail(s, c, seq, -ENOMEM, "JOIN of %s: out of memory",
					   s->members[id].name);
	kvn_cf_put_json_frame(&c->out, KVN_CF_JOIN_OK, seq, text, NULL, 0);
	free(text);
	for (uint32_t i = 0; i < s->nmembers; i++)
		if (s->members[i].state == M_ALIVE)
			put_member_frame(s, &c->out, i);
	kvn_cf_buf_reset(&s->scratch);
	put_member_frame(s, &s->scratch, id);
	kvn_sched_broadcast(s, c, false);
	return c->out.err ? kvn_sched_conn_fail(s, c, seq, -ENOMEM, "out of memory") : 0;
}

int
kvn_sched_join(struct kvn_scheduler *s, struct conn *c, uint32_t seq, const uint8_t *body,
	       uint32_t len)
{
	struct join_req q;
	uint32_t id = 0;
	bool fresh = false;
	if (!s->leading) {
		char why[256];
		kvn_sched_ha_standby_why(s, why, sizeof(why));
		return kvn_sched_conn_fail(s, c, seq, -EAGAIN, "JOIN refused: this scheduler is %s",
					   why);
	}
	int rc = parse_join(s, c, seq, body, len, &q);
	if (!rc)
		rc = claim_id(s, c, seq, &q, &id, &fresh);
	if (rc)
		return rc;
	struct member *m = &s->members[id];
	if (m->conn)
		drop_old_conn(s, m, c);
	admit_member(s, c, id, &q.nm, !fresh);
	return send_join_ok(s, c, seq, id);
}

int
kvn_sched_reserve(struct kvn_scheduler *s, const char *name, uint32_t id)
{
	if (id >= KVN_DIR_MAX_WORKERS)
		return -ERANGE;
	int32_t own = name_find(s, name);
	if (own >= 0)
		return (uint32_t)own == id ? 0 : -EEXIST;
	int rc = grow_to(s, id);
	if (rc)
		return rc;
	struct member *m = &s->members[id];
	if (m->state != M_UNUSED)
		return -EEXIST;
	snprintf(m->name, sizeof(m->name), "%s", name);
	if (name_add(s, id)) {
		memset(m, 0, sizeof(*m));
		m->name_next = -1;
		return -ENOMEM;
	}
	m->state = M_EXPIRED;
	m->down_ms = kvn_sched_now_ms();
	s->held++;
	return 0;
}

void
kvn_sched_reset(struct kvn_scheduler *s, const char *why)
{
	while (s->conns)
		kvn_sched_conn_close(s, s->conns, why);
	for (uint32_t id = 0; id < s->nmembers; id++) {
		if (s->members[id].state == M_ALIVE)
			kvn_dir_drop_worker(s->dir, id);
		free(s->members[id].blob);
	}
	free(s->members);
	free(s->name_buckets);
	s->members = NULL;
	s->name_buckets = NULL;
	s->nmembers = s->nbuckets = 0;
	s->held = s->alive = s->free_from = 0;
	s->blob_bytes = 0;
	s->epoch++;
}

int
kvn_scheduler_stats(struct kvn_scheduler *s, struct kvn_sched_stats *out)
{
	int64_t now = kvn_sched_now_ms();
	*out = (struct kvn_sched_stats){
	    .epoch = s->epoch,
	    .entries = kvn_dir_entries(s->dir),
	    .directory_bytes = kvn_dir_bytes(s->dir),
	    .member_region_bytes = s->blob_bytes,
	    .connections = s->nconns,
	    .max_connections = s->max_conns,
	    .unjoined_timeout_ms = s->unjoined_ms,
	    .reply_queue_bytes = s->out_bytes,
	    .reply_queue_max = s->out_max,
	    .slow_readers_dropped = s->slow_dropped,
	    .accept_errors = s->accept_errors,
	    .worker_count = s->alive,
	    .worker_ids_held = s->held,
	    .worker_ids_reclaimed = s->reclaimed,
	    .worker_id_grace_ms = (uint64_t)s->grace_ms,
	    .heartbeat_ms = s->hb_ms,
	    .frames = s->frames,
	    .lookups = s->lookups,
	    .keys_looked_up = s->keys_looked_up,
	    .published = s->publishes,
	    .refused = s->refused,
	    .protocol_errors = s->proto_errors,
	    .joins = s->joins,
	    .leaves = s->leaves,
	    .expiries = s->expiries,
	    .leading = s->leading,
	};
	if (s->ha)
		kvn_sched_ha_stats(s, out);
	size_t n = 0;
	for (uint32_t id = 0; id < s->nmembers; id++)
		n += s->members[id].state != M_UNUSED;
	if (n && !(out->members = calloc(n, sizeof(*out->members))))
		return -ENOMEM;
	for (uint32_t id = 0; id < s->nmembers; id++) {
		const struct member *m = &s->members[id];
		if (m->state == M_UNUSED)
			continue;
		struct kvn_sched_member_stats *o = &out->members[out->nmembers++];
		o->worker_id = id;
		o->alive = m->state == M_ALIVE;
		o->connected = m->conn != NULL;
		snprintf(o->name, sizeof(o->name), "%s", m->name);
		snprintf(o->data_addr, sizeof(o->data_addr), "%s", m->data_addr);
		snprintf(o->transport, sizeof(o->transport), "%s", m->transport);
		snprintf(o->peer, sizeof(o->peer), "%s", m->conn ? m->conn->peer : "");
		o->capacity = m->capacity;
		o->mtu = m->mtu;
		o->chunks = kvn_dir_worker_entries(s->dir, id);
		o->last_heartbeat_ms_ago = now - m->last_beat_ms;
		o->region_len = m->blob_len < sizeof(o->region) ? m->blob_len : sizeof(o->region);
		if (o->region_len)
			memcpy(o->region, m->blob, o->region_len);
	}
	return 0;
}

void
kvn_sched_stats_free(struct kvn_sched_stats *st)
{
	free(st->members);
	st->members = NULL;
	st->nmembers = 0;
}

char *
kvn_scheduler_stats_json(struct kvn_scheduler *s)
{
	struct kvn_sched_stats st;
	if (kvn_scheduler_stats(s, &st))
		return NULL;
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "scheduler", s->addr);
	static const struct {
		const char *name;
		size_t off;
	} num[] = {
#define F(f) {#f, offsetof(struct kvn_sched_stats, f)}
	    F(epoch), F(worker_count), F(heartbeat_ms), F(entries), F(directory_bytes),
	    F(connections), F(max_connections),
	    F(unjoined_timeout_ms), F(reply_queue_bytes), F(reply_queue_max),
	    F(slow_readers_dropped), F(accept_errors), F(worker_ids_held), F(member_region_bytes),
	    F(worker_ids_reclaimed), F(worker_id_grace_ms), F(lookups), F(keys_looked_up),
	    F(published), F(refused), F(protocol_errors), F(frames), F(joins), F(leaves),
	    F(expiries),
#undef F
	};
	for (size_t i = 0; i < sizeof(num) / sizeof(num[0]); i++)
		cJSON_AddNumberToObject(j, num[i].name,
					(double)*(const uint64_t *)((const char *)&st + num[i].off));
	if (st.ha) {
		cJSON *ha = cJSON_AddObjectToObject(j, "ha");
		cJSON_AddStringToObject(ha, "cluster", st.cluster);
		cJSON_AddStringToObject(ha, "role", st.leading ? "leader" : "standby");
		cJSON_AddStringToObject(ha, "leader", st.leader);
		cJSON_AddNumberToObject(ha, "lease_ttl_s", (double)st.lease_ttl_s);
		cJSON_AddNumberToObject(ha, "elections", (double)st.elections);
		cJSON_AddNumberToObject(ha, "stepdowns", (double)st.stepdowns);
		cJSON_AddNumberToObject(ha, "failovers", (double)st.failovers);
	}
	cJSON *arr = cJSON_AddArrayToObject(j, "members");
	for (size_t i = 0; i < st.nmembers; i++) {
		const struct kvn_sched_member_stats *m = &st.members[i];
		cJSON *o = cJSON_CreateObject();
		cJSON_AddNumberToObject(o, "worker_id", m->worker_id);
		cJSON_AddStringToObject(o, "name", m->name);
		cJSON_AddStringToObject(o, "state", m->alive ? "alive" : "expired");
		cJSON_AddStringToObject(o, "data_addr", m->data_addr);
		cJSON_AddStringToObject(o, "transport", m->transport);
		cJSON_AddNumberToObject(o, "capacity", (double)m->capacity);
		if (m->mtu)
			cJSON_AddNumberToObject(o, "mtu", m->mtu);
		cJSON_AddNumberToObject(o, "chunks", (double)m->chunks);
		cJSON_AddNumberToObject(o, "last_heartbeat_ms_ago", (double)m->last_heartbeat_ms_ago);
		cJSON_AddBoolToObject(o, "connected", m->connected);
		cJSON_AddStringToObject(o, "peer", m->peer);
		if (m->region_len) {
			char hex[2 * sizeof(m->region) + 1];
			for (size_t k = 0; k < m->region_len; k++)
				snprintf(hex + 2 * k, 3, "%02x", m->region[k]);
			cJSON_AddStringToObject(o, "region", hex);
		}
		cJSON_AddItemToArray(arr, o);
	}
	kvn_sched_stats_free(&st);
	if (s->plugins) {
		cJSON *parr = kvn_plugins_stats_cjson(s->plugins);
		if (parr && !cJSON_AddItemToObject(j, "plugins", parr))
			cJSON_Delete(parr);
	}
	char *text = cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	return text;
}

void
kvn_scheduler_set_plugins(struct kvn_scheduler *s, struct kvn_plugins *plugins)
{
	s->plugins = plugins;
}

int
kvn_sched_stats(struct kvn_scheduler *s, struct conn *c, uint32_t seq, const uint8_t *body,
		uint32_t len)
{
	cJSON *j = len ? cJSON_ParseWithLength((const char *)body, len) : NULL;
	int prc = check_proof(s, c, seq, j, "STATS");
	cJSON_Delete(j);
	if (prc)
		return prc;
	char *text = kvn_scheduler_stats_json(s);
	if (!text)
		return kvn_sched_conn_fail(s, c, seq, -ENOMEM, "STATS: out of memory");
	kvn_cf_begin(&c->out, KVN_CF_STATS_REPLY, seq);
	kvn_cf_put_bytes(&c->out, text, strlen(text));
	free(text);
	return kvn_cf_end(&c->out)
		   ? kvn_sched_conn_fail(s, c, seq, -EMSGSIZE, "STATS reply too large")
		   : 0;
}
