/* Whole reads and writes on descriptors (core/fdio.h). */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/fdio.h"

#define NO_DEADLINE UINT64_MAX

/* One syscall moves at most this much: keeps a huge value from being a single giant request
 * and bounds the bounce buffer of kvn_fd_copy. */
#define IO_STEP	  (8u << 20)
#define COPY_STEP (1u << 20)

static int
io_errno(int e)
{
	/* A blocking socket with SO_RCVTIMEO/SO_SNDTIMEO reports its timeout as EAGAIN. */
	if (e == EAGAIN || e == EWOULDBLOCK)
		return -ETIMEDOUT;
	return -e;
}

/* Waits until fd is readable or the monotonic deadline passes (-ETIMEDOUT). */
static int
wait_readable(int fd, uint64_t deadline_ms)
{
	uint64_t now = kvn_now_ms();
	if (now >= deadline_ms)
		return -ETIMEDOUT;
	uint64_t wait = deadline_ms - now;
	struct pollfd pf = {.fd = fd, .events = POLLIN};
	if (poll(&pf, 1, wait > INT32_MAX ? INT32_MAX : (int)wait) < 0 && errno != EINTR)
		return -errno;
	return 0;
}

/* The one read loop. Without a deadline (NO_DEADLINE) it blocks in read(); with one, fd is a
 * socket read without blocking, polled only when nothing is there (a fast sender costs no more
 * syscalls than blocking reads would). */
static int
read_until(int fd, void *buf, size_t len, uint64_t deadline_ms, size_t *got)
{
	size_t done = 0;
	int rc = 0;
	while (done < len) {
		size_t step = len - done > IO_STEP ? IO_STEP : len - done;
		ssize_t n = deadline_ms == NO_DEADLINE
				? read(fd, (char *)buf + done, step)
				: recv(fd, (char *)buf + done, step, MSG_DONTWAIT);
		if (n > 0) {
			done += (size_t)n;
			continue;
		}
		if (n == 0) {
			rc = -ECONNRESET;
			break;
		}
		if (errno == EINTR)
			continue;
		if (deadline_ms == NO_DEADLINE || (errno != EAGAIN && errno != EWOULDBLOCK)) {
			rc = io_errno(errno);
			break;
		}
		if ((rc = wait_readable(fd, deadline_ms)))
			break;
	}
	if (got)
		*got = done;
	return rc;
}

static int
discard_until(int fd, uint64_t len, uint64_t deadline_ms, uint64_t *got)
{
	char sink[16384];
	uint64_t done = 0;
	int rc = 0;
	while (done < len && !rc) {
		size_t step = len - done > sizeof(sink) ? sizeof(sink) : (size_t)(len - done), n = 0;
		rc = read_until(fd, sink, step, deadline_ms, &n);
		done += n;
	}
	if (got)
		*got = done;
	return rc;
}

int
kvn_fd_read_full(int fd, void *buf, size_t len, size_t *got)
{
	return read_until(fd, buf, len, NO_DEADLINE, got);
}

int
kvn_fd_read_by(int fd, void *buf, size_t len, uint64_t deadline_ms, size_t *got)
{
	return read_until(fd, buf, len, deadline_ms, got);
}

static ssize_t
write_some(int fd, const void *buf, size_t len, bool *not_socket)
{
	if (!*not_socket) {
		/* send() with MSG_NOSIGNAL: a vanished peer is an EPIPE return, not a signal. */
		ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
		if (n >= 0 || errno != ENOTSOCK)
			return n;
		*not_socket = true;
	}
	return write(fd, buf, len);
}

int
kvn_fd_write_full(int fd, const void *buf, size_t len)
{
	bool not_socket = false;
	size_t done = 0;
	while (done < len) {
		size_t step = len - done > IO_STEP ? IO_STEP : len - done;
		ssize_t n = write_some(fd, (const char *)buf + done, step, &not_socket);
		if (n > 0) {
			done += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		return n == 0 ? -EIO : io_errno(errno);
	}
	return 0;
}

int
kvn_fd_send_with_fd(int sock, const void *buf, size_t len, int fd)
{
	char ctl[CMSG_SPACE(sizeof(int))] = {0};
	struct iovec iov = {(void *)buf, len};
	struct msghdr mh = {
	    .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof(ctl)};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	ssize_t n;
	while ((n = sendmsg(sock, &mh, MSG_NOSIGNAL)) < 0 && errno == EINTR)
		;
	if (n < 0)
		return io_errno(errno);
	return n == (ssize_t)len ? 0 : -EIO;
}

int
kvn_fd_send2(int fd, const void *hdr, size_t hlen, const void *body, size_t blen)
{
	struct iovec iov[2] = {{(void *)hdr, hlen}, {(void *)body, blen}};
	struct msghdr mh = {.msg_iov = iov, .msg_iovlen = blen ? 2 : 1};
	for (;;) {
		ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n == 0 ? -EIO : io_errno(errno);
		size_t sent = (size_t)n;
		if (sent < iov[0].iov_len) {
			iov[0].iov_base = (char *)iov[0].iov_base + sent;
			iov[0].iov_len -= sent;
			continue;
		}
		/* The header is out: the rest of the body goes as the one write it now is. */
		sent -= iov[0].iov_len;
		return blen > sent ? kvn_fd_write_full(fd, (const char *)body + sent, blen - sent)
				   : 0;
	}
}

int
kvn_fd_discard(int fd, uint64_t len)
{
	return discard_until(fd, len, NO_DEADLINE, NULL);
}

int
kvn_fd_discard_by(int fd, uint64_t len, uint64_t deadline_ms, uint64_t *got)
{
	return discard_until(fd, len, deadline_ms, got);
}

int
kvn_fd_copy(int in_fd, int out_fd, uint64_t len, bool *out_failed)
{
	size_t cap = len > COPY_STEP ? COPY_STEP : (size_t)len;
	char *bounce = malloc(cap ? cap : 1);
	int rc = 0;
	bool wfail = false;
	if (!bounce)
		return -ENOMEM;
	while (len) {
		size_t step = len > cap ? cap : (size_t)len;
		rc = kvn_fd_read_full(in_fd, bounce, step, NULL);
		if (rc)
			break;
		rc = kvn_fd_write_full(out_fd, bounce, step);
		if (rc) {
			wfail = true;
			break;
		}
		len -= step;
	}
	free(bounce);
	if (out_failed)
		*out_failed = wfail;
	return rc;
}

int
kvn_pwrite_full(int fd, const void *buf, size_t n, off_t off)
{
	size_t done = 0;
	while (done < n) {
		ssize_t w = pwrite(fd, (const char *)buf + done, n - done, off + (off_t)done);
		if (w > 0) {
			done += (size_t)w;
			continue;
		}
		if (w < 0 && errno == EINTR)
			continue;
		return w == 0 ? -EIO : -errno;
	}
	return 0;
}

int
kvn_mkdir_p(const char *path, mode_t mode)
{
	char buf[4096];
	if (strlen(path) >= sizeof(buf))
		return -ENAMETOOLONG;
	strcpy(buf, path);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, mode) && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, mode) && errno != EEXIST)
		return -errno;
	return 0;
}
