/* xxhash for the hashes over whole values (pool slot checksums, the remote tier's tag): on
 * x86-64, libxxhash's run-time dispatching entry points (AVX2/AVX-512 where the CPU has them,
 * about 40 GB/s) instead of its plain ones, built for baseline x86-64 (SSE2, about 8 GB/s: a
 * third of a 256 KiB chunk's time on loopback TCP). The header maps XXH3_64bits* onto them. */
#ifndef KVN_CORE_XXH_H
#define KVN_CORE_XXH_H

#include <xxhash.h>
#if defined(__x86_64__) && __has_include(<xxh_x86dispatch.h>)
#include <xxh_x86dispatch.h>
#endif

#endif
