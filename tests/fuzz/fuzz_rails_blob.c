/* Fuzzes the region blob a member joins with, as every reader decodes it (rdma/rails.c,
 * docs/architecture.md §12.6): any bytes either decode to rails whose counts and addresses are
 * within their bounds, or are refused with -EPROTO, without a crash or a read past the end. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "rdma/rails.h"
#include "tests/fuzz/fuzz_common.h"

static struct kvn_rails_peer_buf *buf;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	fz_init();
	buf = malloc(sizeof(*buf));
	return buf ? 0 : -1;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* a copy of exactly size bytes, so that ASan sees a read past the end */
	uint8_t *blob = malloc(size ? size : 1);
	if (!blob)
		return 0;
	memcpy(blob, data, size);
	int rc = kvn_rails_blob_decode(blob, size, "127.0.0.1:7000", buf);
	FZ_ASSERT(rc == 0 || rc == -EPROTO, "decode returned %d", rc);
	if (rc == 0) {
		const struct kvn_rails_peer *p = &buf->p;
		FZ_ASSERT(p->nrails >= 1 && p->nrails <= KVN_RAILS_MAX, "%zu rails", p->nrails);
		FZ_ASSERT(p->nregions <= KVN_RAILS_PEER_REGIONS, "%zu regions", p->nregions);
		FZ_ASSERT(p->desc == buf->desc, "descriptors outside the buffer");
		for (size_t i = 0; i < p->nrails; i++)
			FZ_ASSERT(p->addr[i] == buf->addr[i] &&
				      strlen(p->addr[i]) <= KVN_RAILS_ADDR_MAX,
				  "rail %zu's address", i);
		FZ_ASSERT(p->nregions || (p->nrails == 1 && !strcmp(p->addr[0], "127.0.0.1:7000")),
			  "a blob without rails is one rail at the data address");
	}
	free(blob);
	return 0;
}
