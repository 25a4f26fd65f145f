/* Test helper: raw-socket steps shared by the protocol tests (test_server's control frames,
 * test_lm's LMCache frames) that write bytes no well-behaved client would. */
#ifndef KVN_TESTS_RAWSOCK_H
#define KVN_TESTS_RAWSOCK_H

#include <stddef.h>

/* Writes all len bytes to fd; fails the test when it cannot. */
void rawsock_send_all(int fd, const void *p, size_t len);
/* Fails the test unless the peer ends the connection (EOF, or ECONNRESET when it closed with
 * our unread bytes still queued). who names the server in the failure message. */
void rawsock_assert_closed(int fd, const char *who);

#endif
