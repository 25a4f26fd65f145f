/* The membership service (node/scheduler/scheduler.h): one epoll thread, non-blocking sockets, every
 * frame validated before it is acted on. A bad frame gets an ERROR and closes that connection
 * only; members that miss their beats are expired and their directory entries dropped. */
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

#include "core/log.h"
#include "core/netaddr.h"
#include "node/scheduler/scheduler_int.h"

#define DEFAULT_HB_MS		500
#define DEFAULT_MISSED		3
#define DEFAULT_MAX_CONNS	1024
#define DEFAULT_UNJOINED	10000
#define DEFAULT_REPLY_QUEUE_MAX (256ull << 20)
#define DEFAULT_GRACE_MS	600000
#define OUT_MAX			(64u << 20)  /* one connection's queue, whatever the total */
#define OUT_KEEP		(256u << 10) /* a drained queue's buffer over this is freed */
#define READ_BUDGET		(4u << 20) /* per wake-up, so one busy peer cannot starve others */
/* Frames one connection has handled per turn of the loop: a peer that sent thousands at once
 * (STATS each answered with a JSON of the cluster) waits its turn behind the others' frames,
 * heartbeats among them, instead of keeping the loop to itself for seconds. */
#define FRAMES_PER_TURN		256
#define ACCEPT_PAUSE_MS		100	   /* accepts rest this long when fds run out */
#define LOG_EVERY_MS		5000	   /* one line per kind of refusal at most this often */

/* ------------------------------------------------------------------------------------------
 * Connections
 * ------------------------------------------------------------------------------------------ */

static void
conn_watch(struct kvn_scheduler *s, struct conn *c)
{
	if (c->drop)
		return; /* not watched at all: it is closed after this batch */
	/* A closing connection reads nothing more: waiting only for room to send its ERROR
	 * keeps level-triggered input from spinning the loop. */
	struct epoll_event ev = {.events = c->closing ? 0u : EPOLLIN | EPOLLRDHUP, .data.ptr = c};
	if (c->out.len > c->out_sent)
		ev.events |= EPOLLOUT;
	epoll_ctl(s->efd, EPOLL_CTL_MOD, c->fd, &ev);
}

void
kvn_sched_conn_close(struct kvn_scheduler *s, struct conn *c, const char *why)
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
	s->out_bytes -= c->charged;
	c->charged = 0;
	if (c->backlog) {
		c->backlog = false;
		s->backlogged--;
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

/* Marks c to be closed after this batch of events: its queue no longer counts. */
static void
drop_slow(struct kvn_scheduler *s, struct conn *c, const char *why)
{
	uint64_t missed;
	if (kvn_ratelimit_ok(&s->rl_drop, LOG_EVERY_MS, &missed))
		kvn_warn(COMP,
			 "dropping the connection of %s%s%s: it does not read its replies (%zu "
			 "bytes queued; %s)%s",
			 c->peer, c->member >= 0 ? ", node " : "",
			 c->member >= 0 ? s->members[c->member].name : "", c->charged, why,
			 missed ? " (and more like it since the last such line)" : "");
	s->out_bytes -= c->charged;
	c->charged = 0;
	/* Never to be sent: the memory goes now, not once the batch of events is done (every
	 * hog in one batch would otherwise hold its queue until then). */
	kvn_cf_buf_free(&c->out);
	c->out_sent = 0;
	c->drop = c->closing = true;
	s->any_drop = true;
	s->slow_dropped++;
	struct epoll_event ev = {.events = 0, .data.ptr = c};
	epoll_ctl(s->efd, EPOLL_CTL_MOD, c->fd, &ev);
}

int
kvn_sched_charge(struct kvn_scheduler *s, struct conn *c)
{
	if (c->drop || c->dead)
		return -1;
	size_t q = c->out.len - c->out_sent;
	s->out_bytes = s->out_bytes - c->charged + q;
	c->charged = q;
	if (q > OUT_MAX)
		drop_slow(s, c, "over 64 MiB for one connection");
	while (s->out_bytes > s->out_max) {
		struct conn *big = NULL;
		for (struct conn *x = s->conns; x; x = x->next)
			if (!x->drop && (!big || x->charged > big->charged))
				big = x;
		if (!big || !big->charged)
			break;
		char why[160];
		snprintf(why, sizeof(why),
			 "the largest of all queues, which together passed "
			 "scheduler_reply_queue_max = %llu bytes",
			 (unsigned long long)s->out_max);
		drop_slow(s, big, why);
	}
	return c->drop ? -1 : 0;
}

/* Closes the connections drop_slow marked. */
static void
close_dropped(struct kvn_scheduler *s)
{
	for (struct conn *c = s->conns, *next; c; c = next) {
		next = c->next;
		if (c->drop)
			kvn_sched_conn_close(s, c, "dropped: it does not read its replies");
	}
	s->any_drop = false;
}

/* Writes what is queued without blocking. Returns -1 when the connection is gone or must go. */
int
kvn_sched_conn_flush(struct kvn_scheduler *s, struct conn *c)
{
	if (c->drop || c->dead)
		return -1;
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
		kvn_sched_conn_close(s, c, n < 0 ? strerror(errno) : "send returned 0");
		return -1;
	}
	if (c->out_sent == c->out.len) {
		/* A burst's buffer goes back once sent: an idle connection holds little. */
		if (c->out.cap > OUT_KEEP)
			kvn_cf_buf_free(&c->out);
		else
			kvn_cf_buf_reset(&c->out);
		c->out_sent = 0;
		kvn_sched_charge(s, c);
		if (c->closing) {
			kvn_sched_conn_close(s, c, "closed after an error reply");
			return -1;
		}
	} else {
		/* What was sent leaves the buffer, so its memory is what the charge says. */
		if (c->out_sent >= OUT_KEEP && c->out_sent >= c->out.len / 2) {
			memmove(c->out.p, c->out.p + c->out_sent, c->out.len - c->out_sent);
			c->out.len -= c->out_sent;
			c->out.frame = 0;
			c->out_sent = 0;
		}
		if (kvn_sched_charge(s, c))
			return -1;
	}
	conn_watch(s, c);
	return 0;
}

int
kvn_sched_conn_fail(struct kvn_scheduler *s, struct conn *c, uint32_t seq, int code,
		    const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	s->proto_errors++;
	uint64_t missed;
	if (kvn_ratelimit_ok(&s->rl_fail, LOG_EVERY_MS, &missed))
		kvn_warn(COMP, "%s%s%s: %s; closing its connection%s", c->peer,
			 c->member >= 0 ? " node " : "",
			 c->member >= 0 ? s->members[c->member].name : "", msg,
			 missed ? " (more refusals since the last such line: see "
				  "kvnode_scheduler_rejected_frames_total)"
				: "");
	kvn_cf_put_error(&c->out, seq, code, msg);
	c->closing = true;
	return -1;
}

/* ------------------------------------------------------------------------------------------
 * Directory frames
 * ------------------------------------------------------------------------------------------ */

static int
do_publish(struct kvn_scheduler *s, struct conn *c, uint32_t seq, const uint8_t *body, uint32_t len)
{
	char err[256];
	uint32_t n;
	if (kvn_cf_publish_check(body, len, &n, err, sizeof(err)))
		return kvn_sched_conn_fail(s, c, seq, -EPROTO, "%s", err);
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
				return kvn_sched_conn_fail(
				    s, c, seq, -ENOMEM,
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
			kvn_sched_broadcast(s, c, true);
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
		return kvn_sched_conn_fail(s, c, seq, -EPROTO, "%s", err);
	struct kvn_cf_buf *b = &c->out;
	/* Room for the worst case up front: the loop below then writes without checks. */
	if (!kvn_cf_buf_room(b, KVN_CF_HDR_SIZE + 8 + (size_t)n * (4 + max * KVN_CF_LOC_SIZE)))
		return kvn_sched_conn_fail(s, c, seq, -ENOMEM, "LOOKUP: out of memory");
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
	return kvn_cf_end(b)
		   ? kvn_sched_conn_fail(s, c, seq, -ENOMEM, "LOOKUP reply: out of memory")
		   : 0;
}

/* One validated frame. Returns -1 when the connection is to be closed. */
static int
dispatch(struct kvn_scheduler *s, struct conn *c, const struct kvn_cf_hdr *h, const uint8_t *body)
{
	s->frames++;
	if (h->type == KVN_CF_HELLO)
		return kvn_sched_hello(s, c, h->seq, body, h->len);
	if (h->type == KVN_CF_JOIN)
		return kvn_sched_join(s, c, h->seq, body, h->len);
	if (h->type == KVN_CF_STATS)
		return kvn_sched_stats(s, c, h->seq, body, h->len);
	if (h->type != KVN_CF_HEARTBEAT && h->type != KVN_CF_PUBLISH && h->type != KVN_CF_LOOKUP &&
	    h->type != KVN_CF_LEAVE)
		return kvn_sched_conn_fail(s, c, h->seq, -EPROTO,
					   "%s is not a request a node may send",
					   kvn_cf_type_name(h->type));
	if (c->member < 0)
		return kvn_sched_conn_fail(s, c, h->seq, -EPROTO, "%s before JOIN",
					   kvn_cf_type_name(h->type));
	struct member *m = &s->members[c->member];
	m->last_beat_ms = kvn_sched_now_ms(); /* any frame proves the member alive */
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
		s->leaves++;
		kvn_sched_member_down(s, (uint32_t)(m - s->members), "left");
		c->closing = true;
		return -1;
	}
}

static void conn_frames(struct kvn_scheduler *s, struct conn *c);

/* Reads what is there, then handles its whole frames (FRAMES_PER_TURN of them this turn). */
static void
conn_readable(struct kvn_scheduler *s, struct conn *c)
{
	while (!c->closing && !c->eof) {
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
				kvn_sched_conn_close(s, c, "out of memory for its input");
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
			c->eof = true;
			break;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			break;
		kvn_sched_conn_close(s, c, strerror(errno));
		return;
	}
	conn_frames(s, c);
}

/* Whether a whole frame waits at the start of c's input. */
static bool
frame_waits(const struct conn *c)
{
	struct kvn_cf_hdr h;
	return c->in_len >= KVN_CF_HDR_SIZE && (kvn_cf_hdr_decode(c->in, &h, NULL, 0) ||
						KVN_CF_HDR_SIZE + (size_t)h.len <= c->in_len);
}

/* Handles up to FRAMES_PER_TURN whole frames of c's input; any left make it backlogged, and
 * the loop comes back to it after the next round of events. */
static void
conn_frames(struct kvn_scheduler *s, struct conn *c)
{
	size_t off = 0;
	for (unsigned k = 0; k < FRAMES_PER_TURN && !c->closing; k++) {
		if (c->in_len - off < KVN_CF_HDR_SIZE)
			break;
		struct kvn_cf_hdr h;
		char err[256];
		int rc = kvn_cf_hdr_decode(c->in + off, &h, err, sizeof(err));
		if (rc) {
			kvn_sched_conn_fail(s, c, 0, rc, "%s", err);
			break;
		}
		if (c->in_len - off < KVN_CF_HDR_SIZE + (size_t)h.len)
			break;
		const uint8_t *body = c->in + off + KVN_CF_HDR_SIZE;
		off += KVN_CF_HDR_SIZE + h.len;
		if (dispatch(s, c, &h, body) < 0 && !c->closing) {
			kvn_sched_conn_close(s, c, "failed to queue a reply");
			return;
		}
		/* Per frame: a batch of small requests can ask for far more than it weighs. */
		if (kvn_sched_charge(s, c))
			return;
	}
	memmove(c->in, c->in + off, c->in_len - off);
	c->in_len -= off;
	bool more = !c->closing && frame_waits(c);
	if (more && !c->backlog)
		s->backlogged++;
	else if (!more && c->backlog)
		s->backlogged--;
	c->backlog = more;
	if (c->eof && !c->closing && !more) {
		if (c->in_len)
			kvn_warn(COMP, "%s closed in the middle of a frame (%zu bytes of it read)",
				 c->peer, c->in_len);
		/* A peer that sent its last requests and shut down its side still gets their
		 * replies, as far as the socket takes them now (no waiting on a closed peer). */
		if (kvn_sched_conn_flush(s, c) == 0)
			kvn_sched_conn_close(s, c, "closed by the peer");
		return;
	}
	kvn_sched_conn_flush(s, c);
}

static void
accept_watch(struct kvn_scheduler *s, bool on)
{
	struct epoll_event ev = {.events = on ? EPOLLIN : 0, .data.ptr = &s->lfd};
	epoll_ctl(s->efd, EPOLL_CTL_MOD, s->lfd, &ev);
}

/* accept() failed for want of a file descriptor or memory: the listener stays readable, so
 * asking again at once would spin. It rests ACCEPT_PAUSE_MS (the run loop resumes it), while
 * closing connections free descriptors. */
static void
accept_pause(struct kvn_scheduler *s, int err)
{
	s->accept_errors++;
	s->accept_resume_ms = kvn_sched_now_ms() + ACCEPT_PAUSE_MS;
	accept_watch(s, false);
	uint64_t missed;
	if (kvn_ratelimit_ok(&s->rl_accept, LOG_EVERY_MS, &missed))
		kvn_warn(COMP,
			 "cannot accept connections on %s: %s with %u open; not accepting for "
			 "%d ms (%llu more times since the last such line): raise the open-file "
			 "limit (ulimit -n) above scheduler_max_connections (%u)",
			 s->addr, strerror(err), s->nconns, ACCEPT_PAUSE_MS,
			 (unsigned long long)missed, s->max_conns);
}

static void
accept_all(struct kvn_scheduler *s)
{
	for (;;) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int fd = accept4(s->lfd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO ||
			    errno == EPERM)
				continue;
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM)
				accept_pause(s, errno);
			return;
		}
		char peer[64]; /* as struct conn's */
		kvn_sockaddr_format((struct sockaddr *)&ss, 0, peer, sizeof(peer));
		if (s->nconns >= s->max_conns) {
			s->refused++;
			uint64_t missed;
			if (kvn_ratelimit_ok(&s->rl_cap, LOG_EVERY_MS, &missed))
				kvn_warn(COMP,
					 "refusing %s: %u connections already "
					 "(scheduler_max_connections)%s",
					 peer, s->max_conns,
					 missed ? "; more refused since the last such line" : "");
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
		c->opened_ms = kvn_sched_now_ms();
		snprintf(c->peer, sizeof(c->peer), "%s", peer);
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
	int rc =
	    kvn_hostport_parse(o->listen ? o->listen : "127.0.0.1:0", host, &port, err, errlen);
	if (rc)
		return rc;
	struct kvn_scheduler *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->lfd = s->efd = s->wake_fd = s->stats_fd = -1;
	pthread_mutex_init(&s->stats_lock, NULL);
	kvn_cond_init_monotonic(&s->stats_cond);
	s->hb_ms = o->heartbeat_ms ? o->heartbeat_ms : DEFAULT_HB_MS;
	s->missed = o->missed_beats ? o->missed_beats : DEFAULT_MISSED;
	s->max_conns = o->max_conns ? o->max_conns : DEFAULT_MAX_CONNS;
	s->unjoined_ms = o->unjoined_ms ? o->unjoined_ms : DEFAULT_UNJOINED;
	s->out_max = o->reply_queue_max ? o->reply_queue_max : DEFAULT_REPLY_QUEUE_MAX;
	s->grace_ms = o->worker_id_grace_ms > 0	   ? o->worker_id_grace_ms
		      : o->worker_id_grace_ms == 0 ? DEFAULT_GRACE_MS
						   : 0;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	/* Epochs keep growing across scheduler restarts (barring clock steps). */
	s->epoch = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
	kvn_auth_init(&s->auth, o->auth_token);
	if ((rc = kvn_dir_create(o->expect_entries, &s->dir))) {
		kvn_seterr(rc, err, errlen, "cannot allocate the chunk directory: %s",
			   kvn_strerror(rc));
		goto fail;
	}
	s->lfd = rc = kvn_tcp_listen(host, port, 512, &bound, err, errlen);
	if (rc < 0)
		goto fail;
	snprintf(s->addr, sizeof(s->addr), strchr(host, ':') ? "[%s]:%u" : "%s:%u", host, bound);
	s->efd = epoll_create1(EPOLL_CLOEXEC);
	s->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	s->stats_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &s->lfd};
	struct epoll_event wev = {.events = EPOLLIN, .data.ptr = &s->wake_fd};
	struct epoll_event sev = {.events = EPOLLIN, .data.ptr = &s->stats_fd};
	if (s->efd < 0 || s->wake_fd < 0 || s->stats_fd < 0 || set_nonblock(s->lfd) < 0 ||
	    epoll_ctl(s->efd, EPOLL_CTL_ADD, s->lfd, &lev) < 0 ||
	    epoll_ctl(s->efd, EPOLL_CTL_ADD, s->wake_fd, &wev) < 0 ||
	    epoll_ctl(s->efd, EPOLL_CTL_ADD, s->stats_fd, &sev) < 0) {
		rc = -errno;
		kvn_seterr(rc, err, errlen, "scheduler on %s: epoll set-up failed: %s",
			   s->addr, strerror(errno));
		goto fail;
	}
	s->leading = !o->cluster_url;
	if (o->cluster_url && (rc = kvn_sched_ha_start(s, o, err, errlen)))
		goto fail;
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

/* The loop's side of kvn_scheduler_stats_sync. */
static void
answer_stats(struct kvn_scheduler *s)
{
	uint64_t v;
	ssize_t r = read(s->stats_fd, &v, sizeof(v));
	(void)r;
	pthread_mutex_lock(&s->stats_lock);
	bool want = s->stats_want;
	pthread_mutex_unlock(&s->stats_lock);
	if (!want)
		return;
	struct kvn_sched_stats st;
	int rc = kvn_scheduler_stats(s, &st);
	pthread_mutex_lock(&s->stats_lock);
	if (s->stats_want) {
		s->stats_reply = st;
		s->stats_rc = rc;
		s->stats_want = false;
		st.members = NULL;
		pthread_cond_broadcast(&s->stats_cond);
	}
	pthread_mutex_unlock(&s->stats_lock);
	kvn_sched_stats_free(&st); /* nothing once handed over; else the asker gave up */
}

/* Waiters give up at once once the loop is gone. */
static int
loop_ended(struct kvn_scheduler *s, int rc)
{
	pthread_mutex_lock(&s->stats_lock);
	s->stats_stopped = true;
	pthread_cond_broadcast(&s->stats_cond);
	pthread_mutex_unlock(&s->stats_lock);
	return rc;
}

int
kvn_scheduler_stats_sync(struct kvn_scheduler *s, int timeout_ms, struct kvn_sched_stats *out)
{
	struct timespec dl = kvn_deadline_in_ms(timeout_ms > 0 ? (uint64_t)timeout_ms : 0);
	int rc = 0;
	*out = (struct kvn_sched_stats){0};
	pthread_mutex_lock(&s->stats_lock);
	while (s->stats_busy && !s->stats_stopped && rc == 0)
		rc = pthread_cond_timedwait(&s->stats_cond, &s->stats_lock, &dl);
	if (s->stats_busy || s->stats_stopped) {
		pthread_mutex_unlock(&s->stats_lock);
		return s->stats_stopped ? -ESHUTDOWN : -ETIMEDOUT;
	}
	s->stats_busy = s->stats_want = true;
	uint64_t one = 1;
	ssize_t w = write(s->stats_fd, &one, sizeof(one));
	(void)w;
	while (s->stats_want && !s->stats_stopped && rc == 0)
		rc = pthread_cond_timedwait(&s->stats_cond, &s->stats_lock, &dl);
	if (s->stats_want) { /* not answered: the loop ended or did not get to it in time */
		rc = s->stats_stopped ? -ESHUTDOWN : -ETIMEDOUT;
		s->stats_want = false;
	} else {
		rc = s->stats_rc;
		*out = s->stats_reply;
		s->stats_reply = (struct kvn_sched_stats){0};
	}
	s->stats_busy = false;
	pthread_cond_broadcast(&s->stats_cond);
	pthread_mutex_unlock(&s->stats_lock);
	return rc;
}

int
kvn_scheduler_run(struct kvn_scheduler *s)
{
	struct epoll_event evs[64];
	int64_t next_check = kvn_sched_now_ms() + s->hb_ms / 2;
	for (;;) {
		int64_t now = kvn_sched_now_ms(), wait = next_check - now;
		if (s->accept_resume_ms) {
			if (now >= s->accept_resume_ms) {
				s->accept_resume_ms = 0;
				accept_watch(s, true);
			} else if (s->accept_resume_ms - now < wait) {
				wait = s->accept_resume_ms - now;
			}
		}
		/* backlogged connections: only look for events, do not wait for them */
		int n = epoll_wait(s->efd, evs, 64, wait < 0 || s->backlogged ? 0 : (int)wait);
		if (n < 0 && errno != EINTR)
			return loop_ended(s, -errno);
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			if (p == &s->wake_fd)
				return loop_ended(s, 0);
			if (p == &s->stats_fd) {
				answer_stats(s);
				continue;
			}
			if (p == s->ha) {
				kvn_sched_ha_poll(s);
				continue;
			}
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
				kvn_sched_conn_flush(s, c);
		}
		for (struct conn *c = s->conns, *next; c && s->backlogged; c = next) {
			next = c->next; /* conn_frames may close c, never another */
			if (c->backlog)
				conn_frames(s, c);
		}
		if (kvn_sched_now_ms() >= next_check) {
			if (s->ha)
				kvn_sched_ha_poll(s); /* a lease about to lapse is given up here */
			kvn_sched_expire(s);
			next_check = kvn_sched_now_ms() + (s->hb_ms / 2 ? s->hb_ms / 2 : 1);
		}
		if (s->any_drop)
			close_dropped(s);
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
	kvn_sched_ha_stop(s); /* first: its thread may still wake the loop */
	while (s->conns)
		kvn_sched_conn_close(s, s->conns, "scheduler shutting down");
	free_dead(s);
	for (size_t i = 0; i < s->nmembers; i++)
		free(s->members[i].blob);
	free(s->members);
	free(s->name_buckets);
	if (s->lfd >= 0)
		close(s->lfd);
	if (s->efd >= 0)
		close(s->efd);
	if (s->wake_fd >= 0)
		close(s->wake_fd);
	if (s->stats_fd >= 0)
		close(s->stats_fd);
	kvn_sched_stats_free(&s->stats_reply);
	pthread_mutex_destroy(&s->stats_lock);
	pthread_cond_destroy(&s->stats_cond);
	kvn_dir_destroy(s->dir);
	kvn_cf_buf_free(&s->scratch);
	kvn_auth_wipe(&s->auth);
	free(s);
}
