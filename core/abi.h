/* The module ABI's version rules (kvnode/version.h) in one place: what a loader accepts of a
 * module's ops table, and how a caller's options struct of an older minor version is read. */
#ifndef KVN_CORE_ABI_H
#define KVN_CORE_ABI_H

#include <stddef.h>
#include <stdint.h>

#include "kvnode/version.h"

/* "2.1", or "1" for a number from before ABI 2 (no minor part), into buf. */
const char *kvn_abi_str(uint32_t abi, char *buf, size_t len);

/* Checks the (abi, size) a module's ops table declares: the same major version as this node,
 * a minor version no newer, and a size from base_size (the struct at ABI 2.0) to full_size
 * (this node's sizeof). 0, or -EINVAL with err naming what (a "module FILE (symbol S)" text
 * from the caller), both versions and the fix. */
int kvn_abi_check(uint32_t abi, uint32_t size, size_t base_size, size_t full_size, const char *type,
		  const char *what, char *err, size_t errlen);

/* Reads a caller's struct that starts with (abi, size) into out (full_size bytes, holding the
 * defaults): the caller's first min(size, full_size) bytes replace them, so members its older
 * headers lack keep their defaults. abi and size of out are set to this node's. -EINVAL with
 * err naming type and init (the macro that starts one) when the caller's major version
 * differs or size is below the header. */
int kvn_abi_read_in(const void *in, void *out, size_t full_size, const char *type, const char *init,
		    char *err, size_t errlen);

#endif
