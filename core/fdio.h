/* Whole reads and writes on descriptors: a large value takes many syscalls and any of them may
 * be short or interrupted. Shared by the local control protocol, the lm:// server and
 * connector, the connectors that keep files, and the tools. */
#ifndef KVN_CORE_FDIO_H
#define KVN_CORE_FDIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Both return 0 or a negative errno; a socket timeout (SO_RCVTIMEO/SO_SNDTIMEO) is
 * -ETIMEDOUT. kvn_fd_read_full returns -ECONNRESET when the peer closes early and stores the
 * bytes actually read in *got (may be NULL). Writes never raise SIGPIPE on sockets. */
int kvn_fd_read_full(int fd, void *buf, size_t len, size_t *got);
int kvn_fd_write_full(int fd, const void *buf, size_t len);
/* A header and a body on a socket in one sendmsg where they fit (one wake-up of the reader,
 * not two), the rest of a long body after it. */
int kvn_fd_send2(int fd, const void *hdr, size_t hlen, const void *body, size_t blen);
/* len bytes and a file descriptor (SCM_RIGHTS) on a unix socket in one sendmsg, which must take
 * them whole (a reply small enough for any socket buffer): 0, or -errno (-EIO when short). */
int kvn_fd_send_with_fd(int sock, const void *buf, size_t len, int fd);
/* Reads and throws away len bytes (keeps a connection in step after an unwanted payload). */
int kvn_fd_discard(int fd, uint64_t len);
/* On a socket: reads exactly len bytes unless kvn_now_ms() reaches deadline_ms first
 * (-ETIMEDOUT): a sender trickling a byte at a time cannot stretch it, as it can a socket's
 * SO_RCVTIMEO. Otherwise as kvn_fd_read_full. kvn_fd_discard_by reads and throws away len
 * bytes under the same deadline, *got (may be NULL) getting how many it read. */
int kvn_fd_read_by(int fd, void *buf, size_t len, uint64_t deadline_ms, size_t *got);
int kvn_fd_discard_by(int fd, uint64_t len, uint64_t deadline_ms, uint64_t *got);
/* Copies exactly len bytes from in_fd to out_fd through a bounce buffer: the streaming path
 * for files and pipes of any size. On failure *out_failed (may be NULL) tells which side failed
 * (true: writing out_fd) so that a caller can name the right file or socket. */
int kvn_fd_copy(int in_fd, int out_fd, uint64_t len, bool *out_failed);
/* pwrite of all n bytes at off. */
int kvn_pwrite_full(int fd, const void *buf, size_t n, off_t off);
/* mkdir -p: every missing level made with mode. */
int kvn_mkdir_p(const char *path, mode_t mode);

#endif
