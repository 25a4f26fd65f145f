/* Helpers of the libFuzzer harnesses (fuzz_common.h). */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "kvnode/kvnode.h"
#include "core/netaddr.h"
#include "node/engine/config.h"
#include "node/serve/server.h"
#include "tests/fuzz/fuzz_common.h"

static int report_fd = STDERR_FILENO;

void
fz_init(void)
{
	static int done;
	if (done++)
		return;
	const char *lv = getenv("KVN_FUZZ_LOG");
	int level = lv ? kvn_log_level_parse(lv) : KVN_LOG_ERROR;
	kvn_log_set_level(level < 0 ? KVN_LOG_ERROR : level);
	int fd = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
	if (fd >= 0)
		report_fd = fd;
}

void
fz_fail(const char *fmt, ...)
{
	char msg[2048];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof(msg) - 1, fmt, ap);
	va_end(ap);
	size_t len = n < 0 ? 0 : (size_t)n >= sizeof(msg) - 1 ? sizeof(msg) - 2 : (size_t)n;
	msg[len++] = '\n';
	static const char pre[] = "==kvnode-fuzz== property violated: ";
	ssize_t w = write(report_fd, pre, sizeof(pre) - 1);
	w = write(report_fd, msg, len);
	(void)w;
	abort();
}

/* ------------------------------------------------------------------------------------------
 * Scratch directories
 * ------------------------------------------------------------------------------------------ */

static char dirs[8][256];
static int ndirs;

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

static void
rm_dirs(void)
{
	for (int i = 0; i < ndirs; i++)
		nftw(dirs[i], rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

const char *
fz_tmpdir(const char *tag)
{
	if (ndirs == (int)(sizeof(dirs) / sizeof(dirs[0])))
		fz_fail("fz_tmpdir: too many scratch directories");
	const char *base = getenv("TMPDIR");
	char *d = dirs[ndirs];
	snprintf(d, sizeof(dirs[0]), "%s/kvn-fuzz-%s-XXXXXX", base && *base ? base : "/tmp", tag);
	if (!mkdtemp(d))
		fz_fail("fz_tmpdir: mkdtemp %s: %s", d, strerror(errno));
	if (ndirs++ == 0)
		atexit(rm_dirs);
	return d;
}

/* ------------------------------------------------------------------------------------------
 * Connections and exchanges
 * ------------------------------------------------------------------------------------------ */

void
fz_bytes_free(struct fz_bytes *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

static void
append(struct fz_bytes *b, const uint8_t *p, size_t n, size_t max)
{
	if (b->len >= max)
		return;
	if (n > max - b->len)
		n = max - b->len;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 4096;
		while (cap < b->len + n)
			cap *= 2;
		uint8_t *q = realloc(b->p, cap);
		if (!q)
			fz_fail("out of memory keeping %zu reply bytes", b->len + n);
		b->p = q;
		b->cap = cap;
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

int
fz_connect_unix(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		fz_fail("the server on %s no longer accepts: %s", path, strerror(errno));
	return fd;
}

int
fz_connect_tcp(const char *hostport)
{
	char host[KVN_HOST_MAX], err[256];
	uint16_t port;
	if (kvn_hostport_parse(hostport, host, &port, err, sizeof(err)) < 0)
		fz_fail("bad server address %s: %s", hostport, err);
	int fd = kvn_tcp_connect(host, port, 10000, err, sizeof(err));
	if (fd < 0)
		fz_fail("the server on %s no longer accepts: %s", hostport, err);
	return fd;
}

int
fz_exchange(int fd, const uint8_t *in, size_t n, int idle_ms, struct fz_bytes *out, size_t out_max)
{
	int fl = fcntl(fd, F_GETFL);
	fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	size_t sent = 0;
	bool wr_open = true;
	int rc = 0;
	if (n == 0) {
		shutdown(fd, SHUT_WR);
		wr_open = false;
	}
	for (;;) {
		struct pollfd pf = {.fd = fd, .events = POLLIN | (wr_open ? POLLOUT : 0)};
		int pr = poll(&pf, 1, idle_ms);
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr == 0) {
			rc = -ETIMEDOUT;
			break;
		}
		if (wr_open && (pf.revents & (POLLOUT | POLLERR | POLLHUP))) {
			ssize_t w = send(fd, in + sent, n - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
			if (w > 0)
				sent += (size_t)w;
			/* The server may close before taking everything: a valid answer to a
			 * bad frame. Reading on gets its reply and the EOF. */
			if ((w < 0 && errno != EAGAIN && errno != EINTR) || sent == n) {
				shutdown(fd, SHUT_WR);
				wr_open = false;
			}
		}
		if (pf.revents & (POLLIN | POLLERR | POLLHUP)) {
			uint8_t buf[65536];
			ssize_t r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
			if (r > 0) {
				if (out)
					append(out, buf, (size_t)r, out_max);
				continue;
			}
			if (r == 0)
				break;
			if (errno != EAGAIN && errno != EINTR) {
				/* A reset: the server closed with our bytes unread, and the kernel
				 * dropped what it had sent and we had not read yet. */
				rc = 1;
				break;
			}
		}
	}
	/* Closed with a reset: the server's side, which closed first, then ends at once instead
	 * of in TIME_WAIT. Thousands of connections a second otherwise fill the port range, and
	 * the kernel starts answering new connects on reused ports late or not at all. */
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
	return rc;
}

/* ------------------------------------------------------------------------------------------
 * Input reader
 * ------------------------------------------------------------------------------------------ */

uint8_t
fz_u8(struct fz_in *in)
{
	if (!in->n)
		return 0;
	in->n--;
	return *in->p++;
}

uint32_t
fz_u32(struct fz_in *in)
{
	uint32_t v = 0;
	for (int i = 0; i < 4; i++)
		v |= (uint32_t)fz_u8(in) << (8 * i);
	return v;
}

uint64_t
fz_u64(struct fz_in *in)
{
	return (uint64_t)fz_u32(in) | (uint64_t)fz_u32(in) << 32;
}

size_t
fz_take(struct fz_in *in, size_t max, const uint8_t **out)
{
	size_t n = in->n < max ? in->n : max;
	*out = in->p;
	in->p += n;
	in->n -= n;
	return n;
}

/* The harnesses that need no set-up of their own get this one; the others define their own
 * (which calls fz_init first). */
__attribute__((weak)) int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fz_init();
	return 0;
}

static void *
local_server_main(void *arg)
{
	kvn_server_run(arg);
	return NULL;
}

struct kvn_server *
fz_local_server(const char *tag, uint64_t value_max, char *sock, size_t socklen)
{
	char err[512];
	snprintf(sock, socklen, "%s/kvnode.sock", fz_tmpdir(tag));
	struct kvn_config *cfg = kvn_config_new_defaults();
	if (!cfg)
		fz_fail("out of memory");
	cfg->max_local_cpu_size = 32 * 1024 * 1024;
	cfg->hugepages = false;
	struct kvn_engine *eng;
	if (kvn_engine_open(cfg, &eng, err, sizeof(err)) < 0)
		fz_fail("engine: %s", err);
	struct kvn_server_opts o = {
	    .socket_path = sock, .max_conns = 32, .io_timeout_ms = 2000, .value_max = value_max};
	struct kvn_server *srv;
	if (kvn_server_create(eng, &o, &srv, err, sizeof(err)) < 0)
		fz_fail("server: %s", err);
	pthread_t runner;
	if (pthread_create(&runner, NULL, local_server_main, srv))
		fz_fail("cannot start the server thread");
	return srv; /* the engine, its config and the thread live until exit */
}
