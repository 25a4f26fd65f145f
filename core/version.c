/* The library's version at run time (kvnode/kvnode.h). */
#include "kvnode/kvnode.h"

KVN_API const char *
kvn_version(void)
{
	return KVN_VERSION_STRING;
}

KVN_API unsigned
kvn_abi_version(void)
{
	return KVN_ABI;
}
