/* Shared by the libFuzzer harnesses (tests/fuzz/fuzz_*.c): quiet-or-verbose logging, a failure
 * that names the broken property before abort(), a scratch directory, and one request/reply
 * exchange with a real server over a fresh connection that never hangs. */
#ifndef KVN_TESTS_FUZZ_COMMON_H
#define KVN_TESTS_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* Every harness's LLVMFuzzerInitialize calls this first (fuzz_common.c's weak default, for a
 * harness without set-up of its own, does only this): sets the log level from
 * $KVN_FUZZ_LOG (error | warn | info | debug; default error, so a manual run of one input is
 * readable; scripts/run-fuzzers sets debug, so every message a peer can trigger is formatted,
 * and -close_fd_mask=2 drops the lines) and keeps a copy of stderr for fz_fail. */
void fz_init(void);

/* A property of the code under test does not hold: prints why (to the stderr kept by fz_init,
 * which -close_fd_mask does not close) and abort()s, which libFuzzer reports as a crash. */
void fz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
#define FZ_ASSERT(cond, ...)                                                                       \
	do {                                                                                       \
		if (!(cond))                                                                       \
			fz_fail(__VA_ARGS__);                                                      \
	} while (0)

/* A fresh directory under $TMPDIR (or /tmp), removed with everything in it at exit. */
const char *fz_tmpdir(const char *tag);

/* The local server of `kvnode serve` (node/serve/server.c) over an engine with a 32 MiB cpu
 * tier, on a unix socket under fz_tmpdir(tag) (its path in sock), served by a thread of its
 * own until exit; values over value_max are refused. fz_fail when it cannot start. */
struct kvn_server;
struct kvn_server *fz_local_server(const char *tag, uint64_t value_max, char *sock, size_t socklen);

/* Bytes received from a server. */
struct fz_bytes {
	uint8_t *p;
	size_t len, cap;
};
void fz_bytes_free(struct fz_bytes *b);

/* Connections (blocking connect, then non-blocking); fz_fail when they cannot be made: a
 * server that stops accepting is a finding. */
int fz_connect_unix(const char *path);
int fz_connect_tcp(const char *hostport);

/* Sends all of in[0..n) on fd (stopping early when the server closes), then shuts down the
 * writing side and reads until the server closes. What arrives is appended to out (NULL:
 * dropped) up to out_max bytes (more is read and dropped). Returns 0 at EOF, 1 when the
 * connection was reset (the server closed with input unread: the end of what it sent may be
 * lost), -ETIMEDOUT when the server neither sent nor closed for idle_ms. Closes fd. */
int fz_exchange(int fd, const uint8_t *in, size_t n, int idle_ms, struct fz_bytes *out,
		size_t out_max);

/* A small deterministic byte reader over a fuzz input (ints from the front, the rest as a
 * tail), so harnesses can split one input into choices and data. */
struct fz_in {
	const uint8_t *p;
	size_t n;
};
uint8_t fz_u8(struct fz_in *in);
uint32_t fz_u32(struct fz_in *in);
uint64_t fz_u64(struct fz_in *in);
/* Up to max bytes from the front (returns how many, *out points at them). */
size_t fz_take(struct fz_in *in, size_t max, const uint8_t **out);

#endif
