/* The membership service (node/scheduler.h): one epoll thread, non-blocking sockets, every
 * frame validated before it is acted on. A bad frame gets an ERROR and closes that connection
 * only; members that miss their beats are expired and their directory entries dropped. */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "node/ctlframe.h"
#include "node/log.h"
#include "node/netaddr.h"
#include "node/scheduler.h"
#include "node/scheduler_dir.h"

#define COMP		  "scheduler"
#define DEFAULT_HB_MS	  500
#define DEFAULT_MISSED	  3
#define DEFAULT_MAX_CONNS 1024
#define DEFAULT_UNJOINED  10000
#define OUT_MAX		  (64u << 20) /* a peer that reads nothing is cut off here */
#define READ_BUDGET	  (4u << 20)  /* per wake-up, so one busy peer cannot starve others */
#define TRANSPORT_MAX	  31

enum mstate { M_UNUSED = 0, M_ALIVE, M_EXPIRED };

struct member {
	enum mstate state;
	char name[KVN_CF_NAME_MAX + 1];
	char data_addr[KVN_CF_ADDR_MAX + 1];
	char transport[TRANSPORT_MAX + 1];
	uint8_t *blob;
	size_t blob_len;
	uint64_t capacity;
	int64_t last_beat_ms;
	int64_t joined_ms;
	struct conn *conn; /* NULL while disconnected */
};

struct conn {
	int fd;
	char peer[64];
	int32_t member; /* worker id once joined, else -1 */
	bool want_evicts;
	bool closing; /* flush what is queued (an ERROR), then close */
	bool dead;    /* closed; freed once the current batch of events is handled */
	int64_t opened_ms;
	uint8_t *in;
	size_t in_len, in_cap;
	struct kvn_cf_buf out;
	size_t out_sent;
	struct conn *prev, *next;
};

struct kvn_scheduler {
	int lfd, efd, wake_fd;
	char addr[KVN_HOST_MAX + 8];
	uint32_t hb_ms, missed, unjoined_ms;
	char *token;
	unsigned max_conns, nconns;
	struct conn *conns;
	struct conn *dead; /* closed connections an event batch may still name */
	struct member *members; /* indexed by worker id */
	size_t nmembers;
	uint32_t alive;
	uint64_t epoch;
	struct kvn_dir *dir;
	struct kvn_cf_buf scratch; /* notices built once, copied to each member */
	uint64_t frames, lookups, keys_looked_up, publishes, refused, proto_errors;
};

static int64_t
now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------------------------------
 * Connections
 * ------------------------------------------------------------------------------------------ */

static void
conn_watch(struct kvn_scheduler *s, struct conn *c)
{
	/* A closing connection reads nothing more: waiting only for room to send its ERROR
	 * keeps level-triggered input from spinning the loop. */
	struct epoll_event ev = {.events = c->closing ? 0u : EPOLLIN | EPOLLRDHUP, .data.ptr = c};
	if (c->out.len > c->out_sent)
		ev.events |= EPOLLOUT;
	epoll_ctl(s->efd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void
conn_close(struct kvn_scheduler *s, struct conn *c, const char *why)
{
	if (c->member >= 0) {
		struct member *m = &s->members[c->member];
		if (m->conn == c)
			m->conn = NULL;
		kvn_info(COMP, "node %s (worker %d, %s) disconnected: %s", m->name, c->member,
			 c->peer, why);
	} else {
		kvn_debug(COMP, "connection from %s closed: %s", c->peer, why);
	}
	epoll_ctl(s->efd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	s->nconns--;
	c->dead = true;
	c->next = s->dead;
	s->dead = c;
}

static void
free_dead(struct kvn_scheduler *s)
{
	while (s->dead) {
		struct conn *c = s->dead;
		s->dead = c->next;
		free(c->in);
		kvn_cf_buf_free(&c->out);
		free(c);
	}
}

static int
set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Writes what is queued without blocking. Returns -1 when the connection is gone or must go. */
static int
conn_flush(struct kvn_scheduler *s, struct conn *c)
{
	while (c->out_sent < c->out.len) {
		ssize_t n = send(c->fd, c->out.p + c->out_sent, c->out.len - c->out_sent,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n > 0) {
			c->out_sent += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		conn_close(s, c, n < 0 ? strerror(errno) : "send returned 0");
		return -1;
	}
	if (c->out_sent == c->out.len) {
		kvn_cf_buf_reset(&c->out);
		c->out_sent = 0;
		if (c->closing) {
			conn_close(s, c, "closed after an error reply");
			return -1;
		}
	} else if (c->out.len - c->out_sent > OUT_MAX) {
		conn_close(s, c, "it does not read its replies (over 64 MiB queued)");
		return -1;
	}
	conn_watch(s, c);
	return 0;
}

/* Queues an ERROR frame and marks the connection to close once it is sent. */
static int
conn_fail(struct kvn_scheduler *s, struct conn *c, uint32_t seq, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int
conn_fail(struct kvn_scheduler *s, struct conn *c, uint32_t seq, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	s->proto_errors++;
	kvn_warn(COMP, "%s%s%s: %s; closing its connection", c->peer,
		 c->member >= 0 ? " node " : "", c->member >= 0 ? s->members[c->member].name : "",
		 msg);
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "error", msg);
	char *text = cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	if (text)
		kvn_cf_put_json_frame(&c->out, KVN_CF_ERROR, seq, text, NULL, 0);
	free(text);
	c->closing = true;
	return -1;
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
		kvn_cf_put_json_frame(b, KVN_CF_MEMBER, 0, text, m->state == M_ALIVE ? m->blob : NULL,
				      m->state == M_ALIVE ? m->blob_len : 0);
	else
		b->err = -ENOMEM;
	free(text);
}

/* Sends the frames in s->scratch to every joined connection but skip. */
static void
broadcast(struct kvn_scheduler *s, const struct conn *skip, bool evict_notice)
{
	if (s->scratch.err || !s->scratch.len)
		return;
	for (struct conn *c = s->conns, *next; c; c = next) {
		next = c->next;
		if (c == skip || c->member < 0 || c->closing || (evict_notice && !c->want_evicts))
			continue;
		kvn_cf_put_bytes(&c->out, s->scratch.p, s->scratch.len);
		conn_flush(s, c);
	}
}

static void
member_down(struct kvn_scheduler *s, uint32_t id, const char *why)
{
	struct member *m = &s->members[id];
	size_t dropped = kvn_dir_drop_worker(s->dir, id);
	m->state = M_EXPIRED;
	s->alive--;
	s->epoch++;
	kvn_info(COMP, "node %s (worker %u) %s: %zu directory entries dropped; %u members, epoch %llu",
		 m->name, id, why, dropped, s->alive, (unsigned long long)s->epoch);
	struct conn *c = m->conn;
	m->conn = NULL;
	if (c) {
		c->member = -1;
		conn_fail(s, c, 0, "node %s was %s", m->name, why);
		conn_flush(s, c);
	}
	kvn_cf_buf_reset(&s->scratch);
	put_member_frame(s, &s->scratch, id);
	broadcast(s, NULL, false);
}

static void
expire_silent(struct kvn_scheduler *s)
{
	int64_t now = now_ms(), limit = (int64_t)s->hb_ms * s->missed;
	for (uint32_t id = 0; id < s->nmembers; id++) {
		struct member *m = &s->members[id];
		if (m->state == M_ALIVE && now - m->last_beat_ms > limit) {
			char why[96];
			snprintf(why, sizeof(why), "expired after %lld ms without a heartbeat",
				 (long long)(now - m->last_beat_ms));
			member_down(s, id, why);
		}
	}
	for (struct conn *c = s->conns, *next; c; c = next) {
		next = c->next;
		if (c->member < 0 && !c->closing && now - c->opened_ms > (int64_t)s->unjoined_ms)
			conn_close(s, c, "it did not join in time");
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

static int
do_join(struct kvn_scheduler *s, struct conn *c, uint32_t seq, const uint8_t *body, uint32_t len)
{
	char err[256];
	const char *jtext;
	const uint8_t *blob;
	size_t jlen, blen;
	if (c->member >= 0)
		return conn_fail(s, c, seq, "JOIN on a connection that already joined");
	if (kvn_cf_split_json_blob(body, len, &jtext, &jlen, &blob, &blen, err, sizeof(err)))
		return conn_fail(s, c, seq, "JOIN: %s", err);
	cJSON *j = cJSON_ParseWithLength(jtext, jlen);
	if (!cJSON_IsObject(j)) {
		cJSON_Delete(j);
		return conn_fail(s, c, seq, "JOIN body is not a JSON object");
	}
	/* The token first: nothing about the cluster is told to a peer without it. */
	const cJSON *tok = cJSON_GetObjectItemCaseSensitive(j, "auth_token");
	if (s->token && !(cJSON_IsString(tok) && kvn_cf_token_eq(tok->valuestring, s->token))) {
		cJSON_Delete(j);
		s->refused++;
		return conn_fail(s, c, seq,
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
	if (!rc && cap && !(cJSON_IsNumber(cap) && cap->valuedouble >= 0 && cap->valuedouble < 1e19))
		rc = kvn_seterr(err, sizeof(err), "JOIN \"capacity\" must be a byte count");
	nm.capacity = cJSON_IsNumber(cap) && !rc ? (uint64_t)cap->valuedouble : 0;
	double h = cJSON_IsNumber(hint) ? hint->valuedouble : -1;
	c->want_evicts = cJSON_IsTrue(we);
	cJSON_Delete(j);
	if (rc)
		return conn_fail(s, c, seq, "%s", err);
	uint32_t id;
	if ((rc = pick_id(s, nm.name, h, &id)))
		return conn_fail(s, c, seq, "JOIN of %s: no worker id left (%s)", nm.name,
				 kvn_strerror(rc));
	nm.blob = blen ? malloc(blen) : NULL;
	if (blen && !nm.blob)
		return conn_fail(s, c, seq, "JOIN of %s: out of memory", nm.name);
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
		conn_close(s, old, "replaced by a new JOIN of the same node");
	}
	/* Whatever it published before belongs to an index it is about to re-publish. */
	size_t dropped = kvn_dir_drop_worker(s->dir, id);
	if (m->state != M_ALIVE)
		s->alive++;
	free(m->blob);
	*m = nm;
	m->state = M_ALIVE;
	m->last_beat_ms = m->joined_ms = now_ms();
	m->conn = c;
	c->member = (int32_t)id;
	s->epoch++;
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
		return conn_fail(s, c, seq, "JOIN of %s: out of memory", m->name);
	kvn_cf_put_json_frame(&c->out, KVN_CF_JOIN_OK, seq, text, NULL, 0);
	free(text);
	/* The newcomer learns of everyone alive (itself included), everyone else of it. */
	for (uint32_t i = 0; i < s->nmembers; i++)
		if (s->members[i].state == M_ALIVE)
			put_member_frame(s, &c->out, i);
	kvn_cf_buf_reset(&s->scratch);
	put_member_frame(s, &s->scratch, id);
	broadcast(s, c, false);
	return c->out.err ? conn_fail(s, c, seq, "out of memory") : 0;
}

/* ------------------------------------------------------------------------------------------
 * Directory frames
 * ------------------------------------------------------------------------------------------ */

static int
do_publish(struct kvn_scheduler *s, struct conn *c, uint32_t seq, const uint8_t *body,
	   uint32_t len)
{
	char err[256];
	uint32_t n;
	if (kvn_cf_publish_check(body, len, &n, err, sizeof(err)))
		return conn_fail(s, c, seq, "%s", err);
	uint32_t id = (uint32_t)c->member, evicted = 0;
	struct kvn_cf_buf *note = &s->scratch;
	kvn_cf_buf_reset(note);
	kvn_cf_begin(note, KVN_CF_EVICTED, 0);
	kvn_cf_put_u32(note, id);
	kvn_cf_put_u32(note, 0); /* count, patched below */
	for (uint32_t i = 0; i < n; i++) {
		struct kvn_cf_pub r;
		kvn_cf_publish_rec(body, i, &r);
		if (r.op == KVN_CF_ADMIT) {
			r.loc.worker_id = id;
			if (kvn_dir_admit(s->dir, r.digest, &r.loc))
				return conn_fail(s, c, seq,
						 "PUBLISH: the directory is out of memory at %zu "
						 "entries",
						 kvn_dir_entries(s->dir));
		} else if (kvn_dir_evict(s->dir, id, r.digest, r.loc.generation)) {
			kvn_cf_put_u64(note, r.digest.lo);
			kvn_cf_put_u64(note, r.digest.hi);
			evicted++;
		}
	}
	s->publishes += n;
	if (evicted && !note->err) {
		uint8_t *cnt = note->p + note->frame + KVN_CF_HDR_SIZE + 4;
		cnt[0] = (uint8_t)evicted;
		cnt[1] = (uint8_t)(evicted >> 8);
		cnt[2] = (uint8_t)(evicted >> 16);
		cnt[3] = (uint8_t)(evicted >> 24);
		if (kvn_cf_end(note) == 0)
			broadcast(s, c, true);
	}
	kvn_cf_buf_reset(note);
	return 0;
}

static int
do_lookup(struct kvn_scheduler *s, struct conn *c, uint32_t seq, const uint8_t *body, uint32_t len)
{
	char err[256];
	uint32_t n, max;
	if (kvn_cf_lookup_check(body, len, &n, &max, err, sizeof(err)))
		return conn_fail(s, c, seq, "%s", err);
	struct kvn_cf_buf *b = &c->out;
	/* Room for the worst case up front: the loop below then writes without checks. */
	if (!kvn_cf_buf_room(b, KVN_CF_HDR_SIZE + 8 + (size_t)n * (4 + max * KVN_CF_LOC_SIZE)))
		return conn_fail(s, c, seq, "LOOKUP: out of memory");
	kvn_cf_begin(b, KVN_CF_LOOKUP_REPLY, seq);
	kvn_cf_put_u32(b, n);
	kvn_cf_put_u32(b, 0);
	for (uint32_t i = 0; i < n; i++) {
		struct kvn_loc locs[KVN_CF_LOCS_MAX];
		uint32_t k = kvn_dir_lookup(s->dir, kvn_cf_lookup_key(body, i), locs, max);
		kvn_cf_put_u32(b, k);
		for (uint32_t j = 0; j < k; j++)
			kvn_cf_put_loc(b, &locs[j]);
	}
	s->lookups++;
	s->keys_looked_up += n;
	return kvn_cf_end(b) ? conn_fail(s, c, seq, "LOOKUP reply: out of memory") : 0;
}

char *
kvn_scheduler_stats_json(struct kvn_scheduler *s)
{
	int64_t now = now_ms();
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
		cJSON_AddNumberToObject(o, "last_heartbeat_ms_ago", (double)(now - m->last_beat_ms));
		cJSON_AddBoolToObject(o, "connected", m->conn != NULL);
		cJSON_AddStringToObject(o, "peer", m->conn ? m->conn->peer : "");
		cJSON_AddItemToArray(arr, o);
	}
	char *text = cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	return text;
}

static int
do_stats(struct kvn_scheduler *s, struct conn *c, uint32_t seq, const uint8_t *body, uint32_t len)
{
	if (s->token) {
		cJSON *j = len ? cJSON_ParseWithLength((const char *)body, len) : NULL;
		const cJSON *tok = cJSON_GetObjectItemCaseSensitive(j, "auth_token");
		bool ok = cJSON_IsString(tok) && kvn_cf_token_eq(tok->valuestring, s->token);
		cJSON_Delete(j);
		if (!ok) {
			s->refused++;
			return conn_fail(s, c, seq, "STATS refused: wrong or missing auth_token");
		}
	}
	char *text = kvn_scheduler_stats_json(s);
	if (!text)
		return conn_fail(s, c, seq, "STATS: out of memory");
	kvn_cf_begin(&c->out, KVN_CF_STATS_REPLY, seq);
	kvn_cf_put_bytes(&c->out, text, strlen(text));
	free(text);
	return kvn_cf_end(&c->out) ? conn_fail(s, c, seq, "STATS reply too large") : 0;
}

/* One validated frame. Returns -1 when the connection is to be closed. */
static int
dispatch(struct kvn_scheduler *s, struct conn *c, const struct kvn_cf_hdr *h, const uint8_t *body)
{
	s->frames++;
	if (h->type == KVN_CF_JOIN)
		return do_join(s, c, h->seq, body, h->len);
	if (h->type == KVN_CF_STATS)
		return do_stats(s, c, h->seq, body, h->len);
	if (h->type != KVN_CF_HEARTBEAT && h->type != KVN_CF_PUBLISH && h->type != KVN_CF_LOOKUP &&
	    h->type != KVN_CF_LEAVE)
		return conn_fail(s, c, h->seq, "%s is not a request a node may send",
				 kvn_cf_type_name(h->type));
	if (c->member < 0)
		return conn_fail(s, c, h->seq, "%s before JOIN", kvn_cf_type_name(h->type));
	struct member *m = &s->members[c->member];
	m->last_beat_ms = now_ms(); /* any frame proves the member alive */
	switch (h->type) {
	case KVN_CF_HEARTBEAT:
		kvn_cf_begin(&c->out, KVN_CF_HEARTBEAT_ACK, h->seq);
		kvn_cf_put_u64(&c->out, s->epoch);
		kvn_cf_put_u32(&c->out, s->alive);
		kvn_cf_put_u32(&c->out, 0);
		return kvn_cf_end(&c->out) ? -1 : 0;
	case KVN_CF_PUBLISH:
		return do_publish(s, c, h->seq, body, h->len);
	case KVN_CF_LOOKUP:
		return do_lookup(s, c, h->seq, body, h->len);
	default: /* LEAVE */
		c->member = -1;
		m->conn = NULL;
		member_down(s, (uint32_t)(m - s->members), "left");
		c->closing = true;
		return -1;
	}
}

/* Reads what is there and handles every whole frame. */
static void
conn_readable(struct kvn_scheduler *s, struct conn *c)
{
	bool eof = false;
	while (!c->closing) {
		if (c->in_len == c->in_cap) {
			size_t cap = c->in_cap ? c->in_cap * 2 : 16384;
			/* Past the read budget the buffer grows only toward a frame that does
			 * not fit yet: whole frames already here are handled first. */
			if (c->in_cap >= READ_BUDGET) {
				struct kvn_cf_hdr h;
				if (kvn_cf_hdr_decode(c->in, &h, NULL, 0) ||
				    KVN_CF_HDR_SIZE + (size_t)h.len <= c->in_len)
					break;
				if (cap < KVN_CF_HDR_SIZE + (size_t)h.len)
					cap = KVN_CF_HDR_SIZE + (size_t)h.len;
			}
			uint8_t *p = realloc(c->in, cap);
			if (!p) {
				conn_close(s, c, "out of memory for its input");
				return;
			}
			c->in = p;
			c->in_cap = cap;
		}
		ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, MSG_DONTWAIT);
		if (n > 0) {
			c->in_len += (size_t)n;
			continue;
		}
		if (n == 0) {
			eof = true;
			break;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			break;
		conn_close(s, c, strerror(errno));
		return;
	}
	size_t off = 0;
	while (!c->closing && c->in_len - off >= KVN_CF_HDR_SIZE) {
		struct kvn_cf_hdr h;
		char err[256];
		if (kvn_cf_hdr_decode(c->in + off, &h, err, sizeof(err))) {
			conn_fail(s, c, 0, "%s", err);
			break;
		}
		if (c->in_len - off < KVN_CF_HDR_SIZE + (size_t)h.len)
			break;
		const uint8_t *body = c->in + off + KVN_CF_HDR_SIZE;
		off += KVN_CF_HDR_SIZE + h.len;
		if (dispatch(s, c, &h, body) < 0 && !c->closing) {
			conn_close(s, c, "failed to queue a reply");
			return;
		}
	}
	memmove(c->in, c->in + off, c->in_len - off);
	c->in_len -= off;
	if (eof && !c->closing) {
		if (c->in_len)
			kvn_warn(COMP, "%s closed in the middle of a frame (%zu bytes of it read)",
				 c->peer, c->in_len);
		conn_close(s, c, "closed by the peer");
		return;
	}
	conn_flush(s, c);
}

static void
accept_all(struct kvn_scheduler *s)
{
	for (;;) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int fd = accept4(s->lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;
		char host[INET6_ADDRSTRLEN] = "?";
		uint16_t port = 0;
		if (ss.ss_family == AF_INET) {
			struct sockaddr_in *a = (struct sockaddr_in *)&ss;
			inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
			port = ntohs(a->sin_port);
		} else if (ss.ss_family == AF_INET6) {
			struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
			inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
			port = ntohs(a->sin6_port);
		}
		if (s->nconns >= s->max_conns) {
			s->refused++;
			kvn_warn(COMP, "refusing %s:%u: %u connections already (the cap)", host, port,
				 s->max_conns);
			close(fd);
			continue;
		}
		struct conn *c = calloc(1, sizeof(*c));
		if (!c) {
			close(fd);
			continue;
		}
		c->fd = fd;
		c->member = -1;
		c->opened_ms = now_ms();
		snprintf(c->peer, sizeof(c->peer), ss.ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u",
			 host, port);
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
		if (epoll_ctl(s->efd, EPOLL_CTL_ADD, fd, &ev) < 0) {
			close(fd);
			free(c);
			continue;
		}
		c->next = s->conns;
		if (s->conns)
			s->conns->prev = c;
		s->conns = c;
		s->nconns++;
		kvn_debug(COMP, "connection from %s", c->peer);
	}
}

/* ------------------------------------------------------------------------------------------
 * Life cycle
 * ------------------------------------------------------------------------------------------ */

int
kvn_scheduler_create(const struct kvn_scheduler_opts *o, struct kvn_scheduler **out, char *err,
		     size_t errlen)
{
	char host[KVN_HOST_MAX];
	uint16_t port, bound = 0;
	int rc = kvn_hostport_parse(o->listen ? o->listen : "127.0.0.1:0", host, &port, err,
				    errlen);
	if (rc)
		return rc;
	struct kvn_scheduler *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->lfd = s->efd = s->wake_fd = -1;
	s->hb_ms = o->heartbeat_ms ? o->heartbeat_ms : DEFAULT_HB_MS;
	s->missed = o->missed_beats ? o->missed_beats : DEFAULT_MISSED;
	s->max_conns = o->max_conns ? o->max_conns : DEFAULT_MAX_CONNS;
	s->unjoined_ms = o->unjoined_ms ? o->unjoined_ms : DEFAULT_UNJOINED;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	/* Epochs keep growing across scheduler restarts (barring clock steps). */
	s->epoch = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	if (o->auth_token && *o->auth_token && !(s->token = strdup(o->auth_token))) {
		rc = -ENOMEM;
		goto fail;
	}
	if ((rc = kvn_dir_create(o->expect_entries, &s->dir))) {
		kvn_seterr(err, errlen, "cannot allocate the chunk directory: %s", kvn_strerror(rc));
		goto fail;
	}
	s->lfd = rc = kvn_tcp_listen(host, port, 512, &bound, err, errlen);
	if (rc < 0)
		goto fail;
	snprintf(s->addr, sizeof(s->addr), strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, bound);
	s->efd = epoll_create1(EPOLL_CLOEXEC);
	s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &s->lfd};
	struct epoll_event wev = {.events = EPOLLIN, .data.ptr = &s->wake_fd};
	if (s->efd < 0 || s->wake_fd < 0 || set_nonblock(s->lfd) < 0 ||
	    epoll_ctl(s->efd, EPOLL_CTL_ADD, s->lfd, &lev) < 0 ||
	    epoll_ctl(s->efd, EPOLL_CTL_ADD, s->wake_fd, &wev) < 0) {
		rc = -errno;
		kvn_seterr(err, errlen, "scheduler on %s: epoll set-up failed: %s", s->addr,
			   strerror(errno));
		goto fail;
	}
	*out = s;
	return 0;
fail:
	kvn_scheduler_destroy(s);
	return rc;
}

const char *
kvn_scheduler_address(const struct kvn_scheduler *s)
{
	return s->addr;
}

int
kvn_scheduler_run(struct kvn_scheduler *s)
{
	struct epoll_event evs[64];
	int64_t next_check = now_ms() + s->hb_ms / 2;
	for (;;) {
		int64_t wait = next_check - now_ms();
		int n = epoll_wait(s->efd, evs, 64, wait < 0 ? 0 : (int)wait);
		if (n < 0 && errno != EINTR)
			return -errno;
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			if (p == &s->wake_fd)
				return 0;
			if (p == &s->lfd) {
				accept_all(s);
				continue;
			}
			struct conn *c = p;
			if (c->dead)
				continue;
			if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
				conn_readable(s, c);
			else if (evs[i].events & EPOLLOUT)
				conn_flush(s, c);
		}
		if (now_ms() >= next_check) {
			expire_silent(s);
			next_check = now_ms() + (s->hb_ms / 2 ? s->hb_ms / 2 : 1);
		}
		free_dead(s);
	}
}

void
kvn_scheduler_stop(struct kvn_scheduler *s)
{
	uint64_t one = 1;
	ssize_t n = write(s->wake_fd, &one, sizeof(one));
	(void)n;
}

void
kvn_scheduler_destroy(struct kvn_scheduler *s)
{
	if (!s)
		return;
	while (s->conns)
		conn_close(s, s->conns, "scheduler shutting down");
	free_dead(s);
	for (size_t i = 0; i < s->nmembers; i++)
		free(s->members[i].blob);
	free(s->members);
	if (s->lfd >= 0)
		close(s->lfd);
	if (s->efd >= 0)
		close(s->efd);
	if (s->wake_fd >= 0)
		close(s->wake_fd);
	kvn_dir_destroy(s->dir);
	kvn_cf_buf_free(&s->scratch);
	free(s->token);
	free(s);
}
