/* Gathered copy and checksum in one pass (core/copysum.h). */
#include <string.h>
#define XXH_STATIC_LINKING_ONLY /* XXH3_state_t on the stack */

#include "core/copysum.h"
#include "core/xxh.h"

uint64_t
kvn_copyv_checksum(void *dst, const struct iovec *iov, int iovcnt)
{
	/* Block by block, each block hashed while it is still in cache (a put costs about one
	 * pass over memory, not a copy pass and a hash pass). Streaming XXH3 over the pieces
	 * gives the one-shot hash of their concatenation, whatever the piece boundaries. */
	enum { BLOCK = 64 << 10 };
	XXH3_state_t st;
	XXH3_64bits_reset(&st);
	char *out = dst;
	for (int i = 0; i < iovcnt; i++) {
		const char *src = iov[i].iov_base;
		for (size_t off = 0; off < iov[i].iov_len; off += BLOCK) {
			size_t n = iov[i].iov_len - off < BLOCK ? iov[i].iov_len - off : BLOCK;
			memcpy(out, src + off, n);
			XXH3_64bits_update(&st, out, n);
			out += n;
		}
	}
	return XXH3_64bits_digest(&st);
}
