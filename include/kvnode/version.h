/* kvnode version and module ABI numbers.
 *
 * The module ABI (struct kvn_backend_ops / kvn_backend_env, kvn_connector_ops /
 * kvn_connector_env, kvn_transport_ops / kvn_transport_cfg, kvn_plugins_opts, and the types
 * they pass) has a major and a minor number. Every one of those structs starts with
 *
 *	uint32_t abi;	KVN_ABI of the headers its filler was built with
 *	uint32_t size;	sizeof the struct in those headers
 *
 * A minor version only appends: new members go at the end of a struct, and an old filler's
 * shorter struct reads as having none of them (KVN_ABI_HAS). A module built against an older
 * minor version therefore loads; one built against a newer minor or another major version is
 * refused with a message naming the file, the symbol and both versions. A major version
 * changes layouts or meanings and needs the module rebuilt.
 *
 * History: 1 (kvnode 0.1): no size members, the number had to match exactly. 2.0: abi and
 * size in every struct, struct kvn_buf without _Atomic (C++), no internal type in the
 * backend env, the connectors' header and tag helpers installed. 2.1: kvn_backend_ops.sync.
 * 2.2: the client API (kvnode/client.h, struct kvn_client_opts and kvn_client_req). 2.3:
 * device memory in the transports (kvn_transport_ops.reg_dev, struct kvn_dev_mem and
 * kvn_reg_report); kvn_client_putv, kvn_client_batch_putv, kvn_client_ping, kvn_client_list.
 * 2.4: device buffers in client requests (kvn_client_req.mem, mem_device) and in the engine
 * API (kvn_engine_put_from_gpu, kvn_engine_get_into_gpu). */
#ifndef KVNODE_VERSION_H
#define KVNODE_VERSION_H

#define KVN_VERSION_MAJOR 0
#define KVN_VERSION_MINOR 1
#define KVN_VERSION_PATCH 0
#define KVN_VERSION_STRING "0.1.0"

#define KVN_ABI_MAJOR		   2
#define KVN_ABI_MINOR		   4
#define KVN_ABI_MAKE(major, minor) ((((unsigned)(major)) << 16) | ((unsigned)(minor)&0xffffu))
#define KVN_ABI_MAJOR_OF(abi)	   (((unsigned)(abi)) >> 16)
#define KVN_ABI_MINOR_OF(abi)	   (((unsigned)(abi)) & 0xffffu)
/* What a module sets in the abi member of every struct it fills. */
#define KVN_ABI KVN_ABI_MAKE(KVN_ABI_MAJOR, KVN_ABI_MINOR)

/* Whether the struct at s, filled by code built against ABI 2.0 or later, holds member m:
 * its size reaches past m. Read a member a later minor version added only when this holds
 * (then a NULL callback still means "not provided"). */
#define KVN_ABI_HAS(s, m)                                                                          \
	((unsigned long)((const char *)&(s)->m - (const char *)(s)) + sizeof((s)->m) <=            \
	 (unsigned long)(s)->size)

#endif
