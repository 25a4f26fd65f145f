/* Module ABI version checks (core/abi.h). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/abi.h"
#include "core/log.h"

/* The header every versioned struct starts with. */
struct abi_head {
	uint32_t abi;
	uint32_t size;
};

const char *
kvn_abi_str(uint32_t abi, char *buf, size_t len)
{
	if (KVN_ABI_MAJOR_OF(abi) == 0)
		snprintf(buf, len, "%u", (unsigned)abi); /* kvnode 0.1's plain ABI numbers */
	else
		snprintf(buf, len, "%u.%u", KVN_ABI_MAJOR_OF(abi), KVN_ABI_MINOR_OF(abi));
	return buf;
}

int
kvn_abi_check(uint32_t abi, uint32_t size, size_t base_size, size_t full_size, const char *type,
	      const char *what, char *err, size_t errlen)
{
	char theirs[24], ours[24];
	kvn_abi_str(abi, theirs, sizeof(theirs));
	kvn_abi_str(KVN_ABI, ours, sizeof(ours));

	if (KVN_ABI_MAJOR_OF(abi) != KVN_ABI_MAJOR)
		return kvn_seterr(-EINVAL, err, errlen,
				  "%s was built against kvnode ABI %s; this kvnode has ABI %s and "
				  "loads modules of ABI %u.0 to %s: rebuild the module against "
				  "this kvnode's headers",
				  what, theirs, ours, KVN_ABI_MAJOR, ours);
	if (KVN_ABI_MINOR_OF(abi) > KVN_ABI_MINOR)
		return kvn_seterr(-EINVAL, err, errlen,
				  "%s was built against kvnode ABI %s, newer than this kvnode's "
				  "ABI %s: upgrade kvnode, or rebuild the module against this "
				  "kvnode's headers",
				  what, theirs, ours);
	if (size < base_size || size > full_size)
		return kvn_seterr(-EINVAL, err, errlen,
				  "%s declares size %u for its %s, which ABI %s makes %zu to %zu "
				  "bytes: set .size = sizeof(%s)",
				  what, (unsigned)size, type, ours, base_size, full_size, type);
	return 0;
}

int
kvn_abi_read_in(const void *in, void *out, size_t full_size, const char *type, const char *init,
		char *err, size_t errlen)
{
	struct abi_head h;
	memcpy(&h, in, sizeof(h));
	char theirs[24], ours[24];
	if (KVN_ABI_MAJOR_OF(h.abi) != KVN_ABI_MAJOR || h.size < sizeof(h))
		return kvn_seterr(-EINVAL, err, errlen,
				  "%s of kvnode ABI %s (size %u): this library has ABI %s; start "
				  "the struct from %s (it sets abi and size) and rebuild",
				  type, kvn_abi_str(h.abi, theirs, sizeof(theirs)),
				  (unsigned)h.size, kvn_abi_str(KVN_ABI, ours, sizeof(ours)), init);
	memcpy(out, in, h.size < full_size ? h.size : full_size);
	h.abi = KVN_ABI;
	h.size = (uint32_t)full_size;
	memcpy(out, &h, sizeof(h));
	return 0;
}
