/* Thread-per-connection server skeleton (node/serve/connsrv.h): the accept loop, the connection cap
 * and list (and whom to close to make room), each connection's poll on its socket and the wake
 * fd with its idle limit, deadline reads, and the drain at stop. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "node/serve/connsrv.h"
#include "core/log.h"

#define THREAD_STACK (2u << 20) /* headroom for sanitizer builds */
/* How long the accept loop waits for an evicted connection's thread to leave before it gives
 * up and refuses the newcomer after all (the thread only has to notice its shut-down socket). */
#define EVICT_WAIT_MS 2000

int
kvn_connsrv_init(struct kvn_connsrv *cs, const struct kvn_connsrv_opts *opts,
		 const struct kvn_connsrv_ops *ops, void *owner, char *err, size_t errlen)
{
	memset(cs, 0, sizeof(*cs));
	cs->o = *opts;
	cs->ops = ops;
	cs->owner = owner;
	cs->lfd = -1;
	pthread_mutex_init(&cs->lock, NULL);
	int rc = kvn_cond_init_monotonic(&cs->drained);
	if (rc < 0) {
		pthread_mutex_destroy(&cs->lock);
		cs->wake_fd = -1;
		return kvn_seterr(rc, err, errlen, "%s: condition variable: %s", opts->comp,
				  strerror(-rc));
	}
	cs->wake_fd = eventfd(0, EFD_CLOEXEC);
	if (cs->wake_fd < 0) {
		rc = -errno;
		return kvn_seterr(rc, err, errlen, "%s: eventfd: %s", opts->comp, strerror(errno));
	}
	return 0;
}

void
kvn_connsrv_destroy(struct kvn_connsrv *cs)
{
	if (cs->wake_fd >= 0)
		close(cs->wake_fd);
	cs->wake_fd = -1;
	pthread_mutex_destroy(&cs->lock);
	pthread_cond_destroy(&cs->drained);
}

void
kvn_connsrv_stop(struct kvn_connsrv *cs)
{
	uint64_t one = 1;
	ssize_t n = write(cs->wake_fd, &one, sizeof(one));
	(void)n;
}

unsigned
kvn_connsrv_conns(struct kvn_connsrv *cs)
{
	pthread_mutex_lock(&cs->lock);
	unsigned n = cs->nconns;
	pthread_mutex_unlock(&cs->lock);
	return n;
}

static void
conn_unlink(struct kvn_connsrv_conn *c)
{
	struct kvn_connsrv *cs = c->cs;
	pthread_mutex_lock(&cs->lock);
	if (c->prev)
		c->prev->next = c->next;
	else
		cs->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	cs->nconns--;
	pthread_cond_broadcast(&cs->drained);
	pthread_mutex_unlock(&cs->lock);
}

static void *
conn_main(void *arg)
{
	struct kvn_connsrv_conn *c = arg;
	struct kvn_connsrv *cs = c->cs;
	if (cs->ops->conn_start)
		cs->ops->conn_start(cs->owner, c);
	for (;;) {
		uint64_t idle_from = kvn_now_ms();
		atomic_store(&c->idle_since_ms, idle_from);
		struct pollfd pf[2] = {
		    {.fd = c->fd, .events = POLLIN},
		    {.fd = cs->wake_fd, .events = POLLIN},
		};
		int n;
		for (;;) {
			int wait = -1;
			if (cs->o.idle_timeout_ms > 0 && !c->never_idle) {
				uint64_t spent = kvn_now_ms() - idle_from;
				wait = spent >= (uint64_t)cs->o.idle_timeout_ms
					   ? 0
					   : (int)((uint64_t)cs->o.idle_timeout_ms - spent);
			}
			n = poll(pf, 2, wait);
			if (n >= 0 || errno != EINTR)
				break;
		}
		if (n == 0) {
			atomic_fetch_add(&cs->idle_closed, 1);
			if (cs->ops->idle)
				cs->ops->idle(cs->owner, c);
			break;
		}
		if (n < 0 || (cs->o.stop_drops_queued && pf[1].revents) ||
		    !(pf[0].revents & (POLLIN | POLLHUP | POLLERR)))
			break;
		atomic_store(&c->idle_since_ms, 0);
		if (cs->ops->serve_one(cs->owner, c) < 0)
			break;
	}
	if (cs->ops->conn_end)
		cs->ops->conn_end(cs->owner, c);
	/* Unlinked under the lock before close: the drain and the eviction may shutdown() any
	 * fd still listed, and must never touch one that has been closed and reused. From here
	 * on the server may be gone (the drain saw the last connection leave): only c is
	 * touched. */
	conn_unlink(c);
	close(c->fd);
	free(c);
	return NULL;
}

static void
refuse(struct kvn_connsrv *cs, int fd, int status, const char *why)
{
	atomic_fetch_add(&cs->refused, 1);
	cs->ops->refuse(cs->owner, fd, status, why);
	close(fd);
}

/* At the cap: closes the connection idle the longest, if one has been idle evict_idle_ms, and
 * waits for its thread to leave. Caller holds cs->lock; true when there is room now. Idle
 * connections must not lock new clients out, and one that just finished a request is likely
 * to send the next: the minimum keeps busy clients from being closed between two requests. */
static bool
make_room_locked(struct kvn_connsrv *cs, int newcomer_fd)
{
	if (cs->o.evict_idle_ms <= 0)
		return false;
	uint64_t now = kvn_now_ms(), oldest = 0;
	struct kvn_connsrv_conn *victim = NULL;
	for (struct kvn_connsrv_conn *c = cs->conns; c; c = c->next) {
		uint64_t since = atomic_load(&c->idle_since_ms);
		/* since > now: it went idle again after now was read, so not for long */
		if (!since || c->evicting || since > now ||
		    now - since < (uint64_t)cs->o.evict_idle_ms)
			continue;
		if (!victim || since < oldest) {
			victim = c;
			oldest = since;
		}
	}
	if (!victim)
		return false;
	victim->evicting = true;
	atomic_fetch_add(&cs->evicted, 1);
	if (cs->ops->evicted)
		cs->ops->evicted(cs->owner, victim, newcomer_fd);
	/* Its thread sees the end of its stream, as from a client that closed. */
	shutdown(victim->fd, SHUT_RDWR);
	struct timespec deadline = kvn_deadline_in_ms(EVICT_WAIT_MS);
	while (cs->nconns >= cs->o.max_conns)
		if (pthread_cond_timedwait(&cs->drained, &cs->lock, &deadline) == ETIMEDOUT)
			break;
	return cs->nconns < cs->o.max_conns;
}

static void
start_conn(struct kvn_connsrv *cs, int fd)
{
	struct timeval tv = {.tv_sec = cs->o.io_timeout_ms / 1000,
			     .tv_usec = (cs->o.io_timeout_ms % 1000) * 1000};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (cs->o.nodelay) {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	struct kvn_connsrv_conn *c = calloc(1, cs->ops->conn_size);
	if (!c) {
		refuse(cs, fd, -ENOMEM, "node out of memory: try again later");
		return;
	}
	c->cs = cs;
	c->fd = fd;

	pthread_mutex_lock(&cs->lock);
	if (cs->nconns >= cs->o.max_conns && !make_room_locked(cs, fd)) {
		unsigned open = cs->nconns;
		pthread_mutex_unlock(&cs->lock);
		free(c);
		char why[200];
		const char *key = cs->o.max_conns_key ? cs->o.max_conns_key : "the connection cap";
		if (cs->o.evict_idle_ms > 0)
			snprintf(why, sizeof(why),
				 "node busy: %u connections open, over %s=%u, none of them idle "
				 "for %d ms to make room: retry later",
				 open, key, cs->o.max_conns, cs->o.evict_idle_ms);
		else
			snprintf(why, sizeof(why),
				 "node busy: %u connections open, over %s=%u: retry later", open,
				 key, cs->o.max_conns);
		refuse(cs, fd, -EBUSY, why);
		return;
	}
	c->next = cs->conns;
	if (c->next)
		c->next->prev = c;
	cs->conns = c;
	cs->nconns++;
	pthread_mutex_unlock(&cs->lock);

	pthread_attr_t attr;
	pthread_t tid;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, THREAD_STACK);
	int rc = pthread_create(&tid, &attr, conn_main, c);
	pthread_attr_destroy(&attr);
	if (rc) {
		conn_unlink(c);
		free(c);
		refuse(cs, fd, -EAGAIN, "node cannot start another connection thread: retry later");
		return;
	}
	atomic_fetch_add(&cs->accepted, 1);
}

void
kvn_connsrv_accept_loop(struct kvn_connsrv *cs)
{
	for (;;) {
		struct pollfd pf[2] = {
		    {.fd = cs->lfd, .events = POLLIN},
		    {.fd = cs->wake_fd, .events = POLLIN},
		};
		int n = poll(pf, 2, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			kvn_err(cs->o.comp, "poll on %s: %s", cs->o.addr, strerror(errno));
			break;
		}
		if (pf[1].revents)
			break;
		if (!pf[0].revents)
			continue;
		int fd = accept4(cs->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN)
				continue;
			kvn_warn(cs->o.comp, "accept on %s: %s", cs->o.addr, strerror(errno));
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM)
				poll(NULL, 0, 100); /* let connections close instead of spinning */
			continue;
		}
		start_conn(cs, fd);
	}
}

void
kvn_connsrv_drain(struct kvn_connsrv *cs)
{
	struct timespec deadline = kvn_deadline_in_ms((uint64_t)cs->o.io_timeout_ms + 1000);
	pthread_mutex_lock(&cs->lock);
	bool cut = false;
	while (cs->nconns) {
		if (!cut &&
		    pthread_cond_timedwait(&cs->drained, &cs->lock, &deadline) == ETIMEDOUT) {
			kvn_warn(cs->o.comp, "%u connection(s) on %s still busy at shutdown: "
					     "cutting them",
				 cs->nconns, cs->o.addr);
			for (struct kvn_connsrv_conn *c = cs->conns; c; c = c->next)
				shutdown(c->fd, SHUT_RDWR);
			cut = true;
		} else if (cut) {
			pthread_cond_wait(&cs->drained, &cs->lock);
		}
	}
	pthread_mutex_unlock(&cs->lock);
}

