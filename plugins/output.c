/* Plugin launcher, output: plugins' stdout/stderr cut into lines and logged as
 * "[plugin <file>] <line>" by a logger thread behind a bounded queue, so that a plugin that
 * prints without pause (or a slow log reader) never blocks the node: past the bound lines
 * are dropped, counted and reported. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "plugins/launcher.h"

struct logq_entry {
	struct logq_entry *next;
	int level;
	size_t size; /* counted against PLUGIN_QUEUE_BYTES */
	char text[];
};

static void *
logger_main(void *arg)
{
	struct kvn_plugins *pl = arg;
	pthread_mutex_lock(&pl->qlock);
	for (;;) {
		while (!pl->qhead && !pl->qclosed)
			pthread_cond_wait(&pl->qcond, &pl->qlock);
		struct logq_entry *e = pl->qhead;
		if (!e)
			break; /* closed and empty */
		pl->qhead = pl->qtail = NULL;
		pthread_mutex_unlock(&pl->qlock);
		/* Written outside the lock: a slow stderr holds up this thread only. */
		while (e) {
			struct logq_entry *next = e->next;
			kvn_log(e->level, COMP, "%s", e->text);
			pthread_mutex_lock(&pl->qlock);
			pl->qbytes -= e->size;
			pthread_mutex_unlock(&pl->qlock);
			free(e);
			e = next;
		}
		pthread_mutex_lock(&pl->qlock);
	}
	pthread_mutex_unlock(&pl->qlock);
	return NULL;
}

int
kvn_logq_start(struct kvn_plugins *pl)
{
	return -pthread_create(&pl->logger, NULL, logger_main, pl);
}

void
kvn_logq_finish(struct kvn_plugins *pl)
{
	pthread_mutex_lock(&pl->qlock);
	pl->qclosed = true;
	pthread_cond_signal(&pl->qcond);
	pthread_mutex_unlock(&pl->qlock);
	pthread_join(pl->logger, NULL);
}

static void
push_locked(struct kvn_plugins *pl, struct logq_entry *e)
{
	e->next = NULL;
	if (pl->qtail)
		pl->qtail->next = e;
	else
		pl->qhead = e;
	pl->qtail = e;
	pl->qbytes += e->size;
	pthread_cond_signal(&pl->qcond);
}

static struct logq_entry *
make_entry(int level, const struct plugin *p, const char *text, size_t len)
{
	size_t size = sizeof(struct logq_entry) + strlen(p->file) + len + 12;
	struct logq_entry *e = malloc(size);
	if (!e)
		return NULL;
	e->level = level;
	e->size = size;
	snprintf(e->text, size - sizeof(*e), "[plugin %s] %.*s", p->file, (int)len, text);
	return e;
}

/* Only the monitor thread queues, so dropped_pending needs no lock of its own. */
static void
enqueue(struct kvn_plugins *pl, struct plugin *p, int level, const char *text, size_t len,
	bool note)
{
	struct logq_entry *e = make_entry(level, p, text, len), *warn = NULL;
	char msg[160];
	if (p->dropped_pending && e) {
		int m = snprintf(msg, sizeof(msg),
				 "%llu lines of output dropped: the log could not keep up",
				 (unsigned long long)p->dropped_pending);
		warn = make_entry(KVN_LOG_WARN, p, msg, (size_t)m);
	}
	pthread_mutex_lock(&pl->qlock);
	if (!e || (!note && pl->qbytes + e->size + (warn ? warn->size : 0) > PLUGIN_QUEUE_BYTES)) {
		p->dropped_pending++;
		pthread_mutex_unlock(&pl->qlock);
		pthread_mutex_lock(&pl->lock); /* read by stat */
		p->dropped++;
		pthread_mutex_unlock(&pl->lock);
		free(e);
		free(warn);
		return;
	}
	if (warn) {
		push_locked(pl, warn);
		p->dropped_pending = 0;
	}
	push_locked(pl, e);
	pthread_mutex_unlock(&pl->qlock);
}

void
kvn_logq_note(struct kvn_plugins *pl, int level, const struct plugin *p, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	enqueue(pl, (struct plugin *)p, level, msg, strlen(msg), true);
}

/* Queues the first len bytes of stream s's buffer as one line and keeps the rest. */
static void
emit(struct kvn_plugins *pl, struct plugin *p, int s, size_t len)
{
	struct linebuf *lb = &p->line[s];
	size_t shown = len;
	while (shown && lb->buf[shown - 1] == '\r')
		shown--;
	for (size_t i = 0; i < shown; i++)
		if (!lb->buf[i])
			lb->buf[i] = '?'; /* a NUL would end the log line early */
	enqueue(pl, p, s ? KVN_LOG_WARN : KVN_LOG_INFO, lb->buf, shown, false);
	memmove(lb->buf, lb->buf + len, lb->len - len);
	lb->len -= len;
}

/* A full buffer without a newline: cut it before a UTF-8 sequence that did not fit whole. */
static void
emit_partial(struct kvn_plugins *pl, struct plugin *p, int s)
{
	struct linebuf *lb = &p->line[s];
	size_t cut = lb->len, i = lb->len;
	while (i > 0 && lb->len - i < 4 && ((unsigned char)lb->buf[i - 1] & 0xc0) == 0x80)
		i--;
	if (i > 1) {
		unsigned char lead = (unsigned char)lb->buf[i - 1];
		size_t need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
		if (i - 1 + need > lb->len)
			cut = i - 1;
	}
	emit(pl, p, s, cut);
}

void
kvn_plugin_output_feed(struct kvn_plugins *pl, struct plugin *p, int s, const char *data, size_t n)
{
	struct linebuf *lb = &p->line[s];
	while (n) {
		const char *nl = memchr(data, '\n', n);
		size_t take = nl ? (size_t)(nl - data) : n;
		while (take) {
			size_t room = PLUGIN_CHUNK - lb->len;
			size_t c = take < room ? take : room;
			memcpy(lb->buf + lb->len, data, c);
			lb->len += c;
			data += c;
			n -= c;
			take -= c;
			if (lb->len == PLUGIN_CHUNK)
				emit_partial(pl, p, s);
		}
		if (nl) {
			emit(pl, p, s, lb->len);
			data++;
			n--;
		}
	}
}

void
kvn_plugin_output_flush(struct kvn_plugins *pl, struct plugin *p, int s)
{
	if (p->line[s].len)
		emit(pl, p, s, p->line[s].len);
}
