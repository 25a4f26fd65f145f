/* The scheduler's membership (node/scheduler_int.h): joins with stable worker ids per node
 * name, expiry of silent members, MEMBER notices to everyone, and the cluster view (STATS). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvnode/plugin.h"
#include "node/log.h"
#include "node/scheduler_int.h"

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
	s->alive--;
	s->epoch++;
	kvn_info(COMP,
		 "node %s (worker %u) %s: %zu directory entries dropped; %u members, epoch %llu",
		 m->name, id, why, dropped, s->alive, (unsigned long long)s->epoch);
	struct conn *c = m->conn;
	m->conn = NULL;
	if (c) {
		c->member = -1;
		kvn_sched_conn_fail(s, c, 0, "node %s was %s", m->name, why);
		kvn_sched_conn_flush(s, c);
	}
	kvn_cf_buf_reset(&s->scratch);
	put_member_frame(s, &s->scratch, id);
	kvn_sched_broadcast(s, NULL, false);
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
	for (struct conn *c = s->conns, *next; c; c = next) {
		next = c->next;
		if (c->member < 0 && !c->closing && now - c->opened_ms > (int64_t)s->unjoined_ms)
			kvn_sched_conn_close(s, c, "it did not join in time");
	}
}

static int
copy_str(const cJSON *j, const char *name, char *dst, size_t cap, bool required, char *err,
	 size_t errlen)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, name);
	if (!v || cJSON_IsNull(v)) {
		if (required)
			return kvn_seterr(err, errlen, "JOIN lacks \"%s\"", name);
		dst[0] = '\0';
		return 0;
	}
	size_t n = cJSON_IsString(v) ? strlen(v->valuestring) : 0;
	if (!cJSON_IsString(v) || n >= cap || (required && !n))
		return kvn_seterr(err, errlen, "JOIN \"%s\" must be a string of 1..%zu bytes", name,
				  cap - 1);
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)v->valuestring[i] < 0x20 || v->valuestring[i] == 0x7f)
			return kvn_seterr(err, errlen, "JOIN \"%s\" holds control characters",
					  name);
	memcpy(dst, v->valuestring, n + 1);
	return 0;
}

/* The worker id for name: its old one, else the hint when free, else the lowest free one. */
static int
pick_id(struct kvn_scheduler *s, const char *name, double hint, uint32_t *id)
{
	for (uint32_t i = 0; i < s->nmembers; i++)
		if (s->members[i].state != M_UNUSED && !strcmp(s->members[i].name, name)) {
			*id = i;
			return 0;
		}
	uint32_t want = UINT32_MAX;
	if (hint >= 0 && hint < KVN_DIR_MAX_WORKERS &&
	    ((uint32_t)hint >= s->nmembers || s->members[(uint32_t)hint].state == M_UNUSED))
		want = (uint32_t)hint;
	for (uint32_t i = 0; want == UINT32_MAX && i <= s->nmembers; i++)
		if (i == s->nmembers || s->members[i].state == M_UNUSED)
			want = i;
	if (want >= KVN_DIR_MAX_WORKERS)
		return -ENOSPC;
	if (want >= s->nmembers) {
		size_t n = want + 1 > s->nmembers * 2 ? want + 1 : s->nmembers * 2;
		struct member *p = realloc(s->members, n * sizeof(*p));
		if (!p)
			return -ENOMEM;
		memset(p + s->nmembers, 0, (n - s->nmembers) * sizeof(*p));
		s->members = p;
		s->nmembers = n;
	}
	*id = want;
	return 0;
}

int
kvn_sched_join(struct kvn_scheduler *s, struct conn *c, uint32_t seq, const uint8_t *body,
	       uint32_t len)
{
	char err[256];
	const char *jtext;
	const uint8_t *blob;
	size_t jlen, blen;
	if (c->member >= 0)
		return kvn_sched_conn_fail(s, c, seq, "JOIN on a connection that already joined");
	if (kvn_cf_split_json_blob(body, len, &jtext, &jlen, &blob, &blen, err, sizeof(err)))
		return kvn_sched_conn_fail(s, c, seq, "JOIN: %s", err);
	cJSON *j = cJSON_ParseWithLength(jtext, jlen);
	if (!cJSON_IsObject(j)) {
		cJSON_Delete(j);
		return kvn_sched_conn_fail(s, c, seq, "JOIN body is not a JSON object");
	}
	/* The token first: nothing about the cluster is told to a peer without it. */
	const cJSON *tok = cJSON_GetObjectItemCaseSensitive(j, "auth_token");
	if (s->token && !(cJSON_IsString(tok) && kvn_cf_token_eq(tok->valuestring, s->token))) {
		cJSON_Delete(j);
		s->refused++;
		return kvn_sched_conn_fail(
		    s, c, seq,
		    "JOIN refused: wrong or missing auth_token (set the same "
		    "auth_token on nodes and scheduler)");
	}
	struct member nm = {0};
	const cJSON *cap = cJSON_GetObjectItemCaseSensitive(j, "capacity");
	const cJSON *hint = cJSON_GetObjectItemCaseSensitive(j, "worker_id");
	const cJSON *we = cJSON_GetObjectItemCaseSensitive(j, "want_evicts");
	int rc = copy_str(j, "name", nm.name, sizeof(nm.name), true, err, sizeof(err));
	if (!rc)
		rc = copy_str(j, "data_addr", nm.data_addr, sizeof(nm.data_addr), false, err,
			      sizeof(err));
	if (!rc)
		rc = copy_str(j, "transport", nm.transport, sizeof(nm.transport), false, err,
			      sizeof(err));
	if (!rc && cap &&
	    !(cJSON_IsNumber(cap) && cap->valuedouble >= 0 && cap->valuedouble < 1e19))
		rc = kvn_seterr(err, sizeof(err), "JOIN \"capacity\" must be a byte count");
	nm.capacity = cJSON_IsNumber(cap) && !rc ? (uint64_t)cap->valuedouble : 0;
	double h = cJSON_IsNumber(hint) ? hint->valuedouble : -1;
	c->want_evicts = cJSON_IsTrue(we);
	cJSON_Delete(j);
	if (rc)
		return kvn_sched_conn_fail(s, c, seq, "%s", err);
	uint32_t id;
	if ((rc = pick_id(s, nm.name, h, &id)))
		return kvn_sched_conn_fail(s, c, seq, "JOIN of %s: no worker id left (%s)", nm.name,
					   kvn_strerror(rc));
	nm.blob = blen ? malloc(blen) : NULL;
	if (blen && !nm.blob)
		return kvn_sched_conn_fail(s, c, seq, "JOIN of %s: out of memory", nm.name);
	if (blen)
		memcpy(nm.blob, blob, blen);
	nm.blob_len = blen;

	struct member *m = &s->members[id];
	bool rejoin = m->state != M_UNUSED;
	if (m->conn) {
		/* The same name from a new connection: the node restarted before its old
		 * connection was noticed gone (or two nodes share a name, which is a config
		 * error the log makes visible). */
		kvn_warn(COMP, "node %s joined again from %s; dropping its old connection %s",
			 nm.name, c->peer, m->conn->peer);
		struct conn *old = m->conn;
		old->member = -1;
		m->conn = NULL;
		kvn_sched_conn_close(s, old, "replaced by a new JOIN of the same node");
	}
	/* Whatever it published before belongs to an index it is about to re-publish. */
	size_t dropped = kvn_dir_drop_worker(s->dir, id);
	if (m->state != M_ALIVE)
		s->alive++;
	free(m->blob);
	*m = nm;
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

	cJSON *r = cJSON_CreateObject();
	cJSON_AddNumberToObject(r, "worker_id", id);
	cJSON_AddNumberToObject(r, "worker_count", s->alive);
	cJSON_AddNumberToObject(r, "epoch", (double)s->epoch);
	cJSON_AddNumberToObject(r, "heartbeat_ms", s->hb_ms);
	char *text = cJSON_PrintUnformatted(r);
	cJSON_Delete(r);
	if (!text)
		return kvn_sched_conn_fail(s, c, seq, "JOIN of %s: out of memory", m->name);
	kvn_cf_put_json_frame(&c->out, KVN_CF_JOIN_OK, seq, text, NULL, 0);
	free(text);
	/* The newcomer learns of everyone alive (itself included), everyone else of it. */
	for (uint32_t i = 0; i < s->nmembers; i++)
		if (s->members[i].state == M_ALIVE)
			put_member_frame(s, &c->out, i);
	kvn_cf_buf_reset(&s->scratch);
	put_member_frame(s, &s->scratch, id);
	kvn_sched_broadcast(s, c, false);
	return c->out.err ? kvn_sched_conn_fail(s, c, seq, "out of memory") : 0;
}

char *
kvn_scheduler_stats_json(struct kvn_scheduler *s)
{
	int64_t now = kvn_sched_now_ms();
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "scheduler", s->addr);
	cJSON_AddNumberToObject(j, "epoch", (double)s->epoch);
	cJSON_AddNumberToObject(j, "worker_count", s->alive);
	cJSON_AddNumberToObject(j, "heartbeat_ms", s->hb_ms);
	cJSON_AddNumberToObject(j, "entries", (double)kvn_dir_entries(s->dir));
	cJSON_AddNumberToObject(j, "directory_bytes", (double)kvn_dir_bytes(s->dir));
	cJSON_AddNumberToObject(j, "connections", s->nconns);
	cJSON_AddNumberToObject(j, "max_connections", s->max_conns);
	cJSON_AddNumberToObject(j, "lookups", (double)s->lookups);
	cJSON_AddNumberToObject(j, "keys_looked_up", (double)s->keys_looked_up);
	cJSON_AddNumberToObject(j, "published", (double)s->publishes);
	cJSON_AddNumberToObject(j, "refused", (double)s->refused);
	cJSON_AddNumberToObject(j, "protocol_errors", (double)s->proto_errors);
	cJSON_AddNumberToObject(j, "frames", (double)s->frames);
	cJSON_AddNumberToObject(j, "joins", (double)s->joins);
	cJSON_AddNumberToObject(j, "leaves", (double)s->leaves);
	cJSON_AddNumberToObject(j, "expiries", (double)s->expiries);
	cJSON *arr = cJSON_AddArrayToObject(j, "members");
	for (uint32_t id = 0; id < s->nmembers; id++) {
		const struct member *m = &s->members[id];
		if (m->state == M_UNUSED)
			continue;
		cJSON *o = cJSON_CreateObject();
		cJSON_AddNumberToObject(o, "worker_id", id);
		cJSON_AddStringToObject(o, "name", m->name);
		cJSON_AddStringToObject(o, "state", m->state == M_ALIVE ? "alive" : "expired");
		cJSON_AddStringToObject(o, "data_addr", m->data_addr);
		cJSON_AddStringToObject(o, "transport", m->transport);
		cJSON_AddNumberToObject(o, "capacity", (double)m->capacity);
		cJSON_AddNumberToObject(o, "chunks", (double)kvn_dir_worker_entries(s->dir, id));
		cJSON_AddNumberToObject(o, "last_heartbeat_ms_ago",
					(double)(now - m->last_beat_ms));
		cJSON_AddBoolToObject(o, "connected", m->conn != NULL);
		cJSON_AddStringToObject(o, "peer", m->conn ? m->conn->peer : "");
		cJSON_AddItemToArray(arr, o);
	}
	if (s->plugins) {
		char *pl = kvn_plugins_stats_json(s->plugins);
		cJSON *parr = pl ? cJSON_Parse(pl) : NULL;
		free(pl);
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
	if (s->token) {
		cJSON *j = len ? cJSON_ParseWithLength((const char *)body, len) : NULL;
		const cJSON *tok = cJSON_GetObjectItemCaseSensitive(j, "auth_token");
		bool ok = cJSON_IsString(tok) && kvn_cf_token_eq(tok->valuestring, s->token);
		cJSON_Delete(j);
		if (!ok) {
			s->refused++;
			return kvn_sched_conn_fail(s, c, seq,
						   "STATS refused: wrong or missing auth_token");
		}
	}
	char *text = kvn_scheduler_stats_json(s);
	if (!text)
		return kvn_sched_conn_fail(s, c, seq, "STATS: out of memory");
	kvn_cf_begin(&c->out, KVN_CF_STATS_REPLY, seq);
	kvn_cf_put_bytes(&c->out, text, strlen(text));
	free(text);
	return kvn_cf_end(&c->out) ? kvn_sched_conn_fail(s, c, seq, "STATS reply too large") : 0;
}
