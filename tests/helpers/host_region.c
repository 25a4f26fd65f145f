/* Test helper: a gpu tier's region of host memory; see host_region.h. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gpu/staging.h"
#include "tests/helpers/host_region.h"

void
host_region_open(struct host_region *h, size_t len, int device)
{
	char err[256] = "";
	memset(h, 0, sizeof(*h));
	cr_assert_eq(kvn_copy_engine_host(2, &h->ce, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(kvn_staging_create(h->ce, 64 * 1024, &h->stg, err, sizeof(err)), 0, "%s", err);
	h->mem = malloc(len);
	cr_assert_not_null(h->mem, "out of memory for a %zu-byte region", len);
	h->rg = (struct kvn_gpu_region){(uint64_t)(uintptr_t)h->mem, len, h->stg, device};
}

void
host_region_close(struct host_region *h)
{
	if (h->ce) {
		kvn_staging_destroy(h->stg);
		kvn_copy_engine_destroy(h->ce);
	}
	free(h->mem);
	memset(h, 0, sizeof(*h));
}
