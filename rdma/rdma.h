/* What the transport providers (rdma/tcp, rdma/verbs) share beyond the public ABI. */
#ifndef KVN_RDMA_RDMA_H
#define KVN_RDMA_RDMA_H

#include <stddef.h>

#include "kvnode/transport.h"

/* The caller's cfg (NULL: every default) as this build's struct: members a caller built
 * against older headers lacks keep their defaults (gid_index -1, the rest 0). -EINVAL with
 * err set for a cfg of another major ABI or without abi and size. */
int kvn_transport_cfg_read(const struct kvn_transport_cfg *in, struct kvn_transport_cfg *out,
			   char *err, size_t errlen);

#endif
