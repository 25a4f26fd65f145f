/* A value gathered from pieces into one buffer (a pool slot), checksummed in the same pass:
 * the slot checksum, xxh3-64 of the whole payload, as kvn_copy_checksum (core/pool.h) gives
 * for one piece and as every reader of the slot verifies. */
#ifndef KVN_CORE_COPYSUM_H
#define KVN_CORE_COPYSUM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* Copies iov[0..iovcnt) back to back to dst and returns the xxh3-64 of the bytes copied
 * (their total length is the caller's to have checked); zero-length pieces are skipped. */
uint64_t kvn_copyv_checksum(void *dst, const struct iovec *iov, int iovcnt);

#endif
