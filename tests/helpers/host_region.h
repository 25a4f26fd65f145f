/* Test helper: a gpu tier's region (backends/backends.h, struct kvn_gpu_region) made of host
 * memory behind the host copy engine of gpu/staging.h, with a 64 KiB bounce area so that a
 * chunk goes through in many pieces. It drives the gpu tier's own logic where there is no
 * GPU; it is not a GPU. Failures are Criterion assertions. */
#ifndef KVN_TESTS_HOST_REGION_H
#define KVN_TESTS_HOST_REGION_H

#include <stddef.h>

#include "backends/backends.h"

struct host_region {
	struct kvn_copy_engine *ce;
	struct kvn_staging *stg;
	void *mem;
	struct kvn_gpu_region rg; /* what the tier is given */
};

/* len bytes standing for device memory of CUDA ordinal device (it names the tier "gpuN"). */
void host_region_open(struct host_region *h, size_t len, int device);
void host_region_close(struct host_region *h);

#endif
