/* Test helper: raw-socket steps shared by the protocol tests (see rawsock.h). */
#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "core/fdio.h"
#include "node/serve/ctlproto.h"
#include "tests/helpers/rawsock.h"

void
rawsock_send_all(int fd, const void *p, size_t len)
{
	int rc = kvn_fd_write_full(fd, p, len);
	cr_assert_eq(rc, 0, "writing %zu bytes to the server: %s", len, strerror(-rc));
}

void
rawsock_assert_closed(int fd, const char *who)
{
	char b;
	ssize_t n;
	while ((n = read(fd, &b, 1)) < 0 && errno == EINTR)
		;
	cr_assert(n == 0 || (n < 0 && errno == ECONNRESET),
		  "%s should have closed the connection (read: %zd, %s)", who, n,
		  n < 0 ? strerror(errno) : "more data");
}
