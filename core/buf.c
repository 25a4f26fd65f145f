/* Heap-backed and wrapping kvn_buf views (pool views live in core/pool.c). */
#include <stdlib.h>

#include "kvnode/kvnode.h"

static void
heap_release(struct kvn_buf *buf)
{
	free(buf); /* header and bytes are one allocation */
}

KVN_API struct kvn_buf *
kvn_buf_new(size_t len)
{
	/* The payload follows the view, aligned to 64 bytes for vectorised copies. */
	const size_t hdr = (sizeof(struct kvn_buf) + 63) & ~(size_t)63;
	struct kvn_buf *buf;
	if (posix_memalign((void **)&buf, 64, hdr + (len ? len : 1)))
		return NULL;
	kvn_buf_init(buf, (char *)buf + hdr, len, heap_release, NULL, 0);
	return buf;
}

KVN_API struct kvn_buf *
kvn_buf_wrap(void *data, size_t len)
{
	struct kvn_buf *buf = malloc(sizeof(*buf));
	if (!buf)
		return NULL;
	kvn_buf_init(buf, data, len, heap_release, NULL, 0);
	return buf;
}
