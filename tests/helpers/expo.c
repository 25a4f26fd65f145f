/* Test helper for /metrics (tests/helpers/expo.h): HTTP over a plain socket, and a strict
 * checker of the Prometheus text format that needs nothing installed. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "tests/helpers/expo.h"

int
http_request(int port, const char *method, const char *path, char **body, int timeout_ms)
{
	*body = NULL;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = -errno;
		close(fd);
		return e;
	}
	char req[512];
	int n = snprintf(req, sizeof(req), "%s %s HTTP/1.0\r\nHost: 127.0.0.1:%d\r\n\r\n", method,
			 path, port);
	if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
		close(fd);
		return -EIO;
	}
	size_t len = 0, cap = 65536;
	char *buf = malloc(cap);
	for (;;) {
		char *more = len + 1 >= cap ? realloc(buf, cap *= 2) : buf;
		if (!more) {
			free(buf);
			close(fd);
			return -ENOMEM;
		}
		buf = more;
		ssize_t r = recv(fd, buf + len, cap - len - 1, 0);
		if (r > 0) {
			len += (size_t)r;
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = -errno;
			free(buf);
			close(fd);
			return e;
		}
		break;
	}
	close(fd);
	buf[len] = '\0';
	int status = 0;
	char *hdr_end = strstr(buf, "\r\n\r\n");
	if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1 || !hdr_end) {
		free(buf);
		return -EPROTO;
	}
	*body = strdup(hdr_end + 4);
	free(buf);
	return status;
}

/* ------------------------------------------------------------------------------------------
 * Checker
 * ------------------------------------------------------------------------------------------ */

struct hgroup {
	char key[512]; /* labels without le */
	double last_le, last_cnt, inf_cnt, count;
	bool has_inf, has_sum, has_count, any_bucket;
};

struct fam {
	char name[256];
	char type[16];
	bool typed;
	struct hgroup g[64];
	size_t ng;
};

struct checker {
	char *why;
	size_t whylen;
	int line;
	struct fam cur;
	bool have_cur;
	char **seen_fams;
	size_t nseen_fams;
	char **series;
	size_t nseries;
	char *labels[32]; /* of the sample line being checked, freed by the next one */
	size_t nl;
};

static bool fail(struct checker *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static bool
fail(struct checker *c, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	snprintf(c->why, c->whylen, "line %d: %s", c->line, msg);
	return false;
}

static size_t
metric_name_len(const char *s)
{
	size_t n = 0;
	if (!(isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == ':'))
		return 0;
	while (isalnum((unsigned char)s[n]) || s[n] == '_' || s[n] == ':')
		n++;
	return n;
}

static size_t
label_name_len(const char *s)
{
	size_t n = 0;
	if (!(isalpha((unsigned char)s[0]) || s[0] == '_'))
		return 0;
	while (isalnum((unsigned char)s[n]) || s[n] == '_')
		n++;
	return n;
}

static bool
parse_value(const char *s, double *v)
{
	if (!strcmp(s, "+Inf")) {
		*v = INFINITY;
		return true;
	}
	if (!strcmp(s, "-Inf")) {
		*v = -INFINITY;
		return true;
	}
	if (!strcmp(s, "NaN")) {
		*v = NAN;
		return true;
	}
	if (!*s || isalpha((unsigned char)*s) || strpbrk(s, "xXpP"))
		return false;
	char *end;
	errno = 0;
	*v = strtod(s, &end);
	return !*end && !errno && !isnan(*v) && !isinf(*v);
}

static bool
ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);
	return a >= b && !strcmp(s + a - b, suffix);
}

static bool
close_family(struct checker *c)
{
	if (!c->have_cur)
		return true;
	c->have_cur = false;
	for (size_t i = 0; i < c->cur.ng; i++) {
		struct hgroup *g = &c->cur.g[i];
		if (!g->has_inf)
			return fail(c, "histogram %s{%s} has no le=\"+Inf\" bucket", c->cur.name,
				    g->key);
		if (!g->has_sum || !g->has_count)
			return fail(c, "histogram %s{%s} lacks _sum or _count", c->cur.name,
				    g->key);
		if (g->count != g->inf_cnt)
			return fail(c,
				    "histogram %s{%s}: _count %g differs from the +Inf bucket %g",
				    c->cur.name, g->key, g->count, g->inf_cnt);
	}
	return true;
}

static bool
comment_line(struct checker *c, const char *l)
{
	bool help = !strncmp(l, "# HELP ", 7), type = !strncmp(l, "# TYPE ", 7);
	if (!help && !type)
		return fail(c, "a comment that is neither HELP nor TYPE: %s", l);
	const char *name = l + 7;
	size_t n = metric_name_len(name);
	if (!n || name[n] != ' ')
		return fail(c, "bad metric name or missing text after it: %s", l);
	char nm[256];
	snprintf(nm, sizeof(nm), "%.*s", (int)n, name);
	const char *rest = name + n + 1;
	if (help) {
		for (const char *p = rest; *p; p++)
			if (*p == '\\' && p[1] != '\\' && p[1] != 'n')
				return fail(c, "HELP of %s: bad escape \\%c", nm, p[1]);
			else if (*p == '\\')
				p++;
		if (!close_family(c))
			return false;
		for (size_t i = 0; i < c->nseen_fams; i++)
			if (!strcmp(c->seen_fams[i], nm))
				return fail(c, "family %s declared twice", nm);
		c->seen_fams = realloc(c->seen_fams, (c->nseen_fams + 1) * sizeof(char *));
		c->seen_fams[c->nseen_fams++] = strdup(nm);
		memset(&c->cur, 0, sizeof(c->cur));
		snprintf(c->cur.name, sizeof(c->cur.name), "%s", nm);
		c->have_cur = true;
		return true;
	}
	if (!c->have_cur || strcmp(c->cur.name, nm))
		return fail(c, "TYPE of %s without its HELP line just before", nm);
	if (c->cur.typed)
		return fail(c, "second TYPE line for %s", nm);
	static const char *const types[] = {"counter", "gauge", "histogram", "summary", "untyped"};
	for (size_t i = 0; i < 5; i++)
		if (!strcmp(rest, types[i])) {
			snprintf(c->cur.type, sizeof(c->cur.type), "%s", rest);
			c->cur.typed = true;
			return true;
		}
	return fail(c, "unknown type \"%s\" for %s", rest, nm);
}

static int
cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool
histogram_sample(struct checker *c, const char *suffix, const char *key, const char *le, double v)
{
	struct hgroup *g = NULL;
	for (size_t i = 0; i < c->cur.ng && !g; i++)
		if (!strcmp(c->cur.g[i].key, key))
			g = &c->cur.g[i];
	if (!g) {
		if (c->cur.ng == 64)
			return fail(c, "too many label sets for the checker");
		g = &c->cur.g[c->cur.ng++];
		snprintf(g->key, sizeof(g->key), "%s", key);
	}
	if (!strcmp(suffix, "_bucket")) {
		double b;
		if (!le || !parse_value(le, &b))
			return fail(c, "bucket without a valid le label");
		if (g->has_inf)
			return fail(c, "bucket after le=\"+Inf\"");
		if (g->any_bucket && b <= g->last_le)
			return fail(c, "le %g not above the previous %g", b, g->last_le);
		if (g->any_bucket && v < g->last_cnt)
			return fail(c, "bucket count %g below the previous %g", v, g->last_cnt);
		g->any_bucket = true;
		g->last_le = b;
		g->last_cnt = v;
		if (isinf(b)) {
			g->has_inf = true;
			g->inf_cnt = v;
		}
		return true;
	}
	if (le)
		return fail(c, "le label on %s%s", c->cur.name, suffix);
	if (!strcmp(suffix, "_sum"))
		g->has_sum = true;
	else {
		g->has_count = true;
		g->count = v;
	}
	return true;
}

static void
free_labels(struct checker *c)
{
	for (size_t i = 0; i < c->nl; i++)
		free(c->labels[i]);
	c->nl = 0;
}

static bool
sample_line(struct checker *c, const char *l)
{
	free_labels(c);
	size_t n = metric_name_len(l);
	if (!n)
		return fail(c, "not a sample line: %s", l);
	char nm[256];
	snprintf(nm, sizeof(nm), "%.*s", (int)n, l);
	if (!c->have_cur || !c->cur.typed)
		return fail(c, "sample %s before its family's HELP and TYPE", nm);
	const char *suffix = "";
	bool hist = !strcmp(c->cur.type, "histogram");
	if (hist) {
		static const char *const sfx[] = {"_bucket", "_sum", "_count"};
		size_t fl = strlen(c->cur.name);
		suffix = NULL;
		for (size_t i = 0; i < 3; i++)
			if (!strncmp(nm, c->cur.name, fl) && !strcmp(nm + fl, sfx[i]))
				suffix = sfx[i];
		if (!suffix)
			return fail(c, "sample %s in histogram family %s", nm, c->cur.name);
	} else if (strcmp(nm, c->cur.name)) {
		return fail(c, "sample %s in family %s", nm, c->cur.name);
	}
	if (!strcmp(c->cur.type, "counter") && !ends_with(nm, "_total"))
		return fail(c, "counter %s does not end in _total", nm);
	const char *p = l + n;
	char le[512] = "";
	bool has_le = false;
	if (*p == '{') {
		p++;
		while (*p != '}') {
			size_t ln = label_name_len(p);
			if (!ln || p[ln] != '=' || p[ln + 1] != '"')
				return fail(c, "bad label in %s", l);
			char val[512];
			size_t vn = 0;
			const char *q = p + ln + 2;
			for (; *q && *q != '"'; q++) {
				if (*q == '\\') {
					q++;
					if (*q != '\\' && *q != '"' && *q != 'n')
						return fail(c, "bad escape in a label value: %s",
							    l);
				}
				if (vn + 1 < sizeof(val))
					val[vn++] = *q;
			}
			val[vn] = '\0';
			if (*q != '"')
				return fail(c, "unterminated label value: %s", l);
			char pair[700];
			snprintf(pair, sizeof(pair), "%.*s=\"%s\"", (int)ln, p, val);
			for (size_t i = 0; i < c->nl; i++)
				if (!strncmp(c->labels[i], p, ln) && c->labels[i][ln] == '=')
					return fail(c, "label %.*s twice: %s", (int)ln, p, l);
			if (ln == 2 && !strncmp(p, "le", 2)) {
				has_le = true;
				snprintf(le, sizeof(le), "%s", val);
			} else if (c->nl < 32) {
				c->labels[c->nl++] = strdup(pair);
			}
			p = q + 1;
			if (*p == ',' && p[1] != '}')
				p++;
			else if (*p != '}')
				return fail(c, "expected , or } in %s", l);
		}
		p++;
	}
	if (*p != ' ')
		return fail(c, "expected one space before the value: %s", l);
	p++;
	char vtext[64];
	const char *sp = strchr(p, ' ');
	size_t vl = sp ? (size_t)(sp - p) : strlen(p);
	snprintf(vtext, sizeof(vtext), "%.*s", (int)vl, p);
	double v;
	bool ok = parse_value(vtext, &v);
	if (ok && sp) {
		char *end;
		strtoll(sp + 1, &end, 10);
		ok = *end == '\0' && end != sp + 1;
	}
	if (!ok)
		return fail(c, "bad value or timestamp: %s", l);
	qsort(c->labels, c->nl, sizeof(char *), cmp_str);
	char key[1024] = "", series[1400];
	for (size_t i = 0; i < c->nl; i++) {
		size_t kl = strlen(key);
		snprintf(key + kl, sizeof(key) - kl, "%s%s", i ? "," : "", c->labels[i]);
	}
	int sn = snprintf(series, sizeof(series), "%s{%s%s%s%s%s}", nm, key,
			  has_le && c->nl ? "," : "", has_le ? "le=\"" : "", has_le ? le : "",
			  has_le ? "\"" : "");
	if (sn < 0 || (size_t)sn >= sizeof(series))
		return fail(c, "series too long to check: %s", l);
	for (size_t i = 0; i < c->nseries; i++)
		if (!strcmp(c->series[i], series))
			return fail(c, "series %s appears twice", series);
	c->series = realloc(c->series, (c->nseries + 1) * sizeof(char *));
	c->series[c->nseries++] = strdup(series);
	if (hist)
		return histogram_sample(c, suffix, key, has_le ? le : NULL, v);
	if (has_le)
		return fail(c, "le label outside a histogram: %s", l);
	return true;
}

bool
expo_check(const char *text, char *why, size_t whylen)
{
	struct checker c = {.why = why, .whylen = whylen};
	bool ok = true;
	size_t len = strlen(text);
	if (!len || text[len - 1] != '\n') {
		snprintf(why, whylen, "the exposition must end with a newline");
		return false;
	}
	for (const char *l = text; ok && *l;) {
		const char *nl = strchr(l, '\n');
		char *line = strndup(l, (size_t)(nl - l));
		c.line++;
		if (!*line)
			ok = fail(&c, "empty line");
		else if (line[0] == '#')
			ok = comment_line(&c, line);
		else
			ok = sample_line(&c, line);
		free(line);
		l = nl + 1;
	}
	if (ok)
		ok = close_family(&c);
	free_labels(&c);
	for (size_t i = 0; i < c.nseen_fams; i++)
		free(c.seen_fams[i]);
	for (size_t i = 0; i < c.nseries; i++)
		free(c.series[i]);
	free(c.seen_fams);
	free(c.series);
	return ok;
}

double
expo_value(const char *text, const char *series)
{
	size_t n = strlen(series);
	for (const char *l = text; l && *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
		if (!strncmp(l, series, n) && l[n] == ' ')
			return strtod(l + n + 1, NULL);
	return -1;
}

bool
expo_has_family(const char *text, const char *name)
{
	char needle[300];
	snprintf(needle, sizeof(needle), "# TYPE %s ", name);
	return strstr(text, needle) != NULL;
}
