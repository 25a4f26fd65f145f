/* Data-connection auth shared by the transports: the proof of an auth_token a reader sends in
 * its hello / connect request, and the listener's constant-time check (rdma/auth.h). */
#include <errno.h>
#include <string.h>
#include <xxhash.h>

#include "node/log.h"
#include "rdma/auth.h"

/* Seeds the digest for this one use, so the data-path proof is not the digest of the token
 * any other part of kvnode might compute. */
#define PROOF_SEED 0x6b766e2d64617461ull /* "kvn-data" */

void
kvn_tp_auth_init(struct kvn_tp_auth *a, const char *token)
{
	memset(a, 0, sizeof(*a));
	if (!token || !*token)
		return;
	XXH128_hash_t h = XXH3_128bits_withSeed(token, strlen(token), PROOF_SEED);
	XXH128_canonical_t c;
	XXH128_canonicalFromHash(&c, h); /* big-endian bytes: the same on every machine */
	_Static_assert(sizeof(c.digest) == KVN_TP_PROOF_SIZE, "proof size");
	memcpy(a->proof, c.digest, KVN_TP_PROOF_SIZE);
	a->set = true;
}

bool
kvn_tp_auth_ok(const struct kvn_tp_auth *a, bool has, const uint8_t proof[KVN_TP_PROOF_SIZE])
{
	if (!a->set)
		return true;
	/* Every byte is looked at whatever differs: the time says nothing about how much of a
	 * guess matched. */
	unsigned diff = has ? 0 : 1;
	for (int i = 0; i < KVN_TP_PROOF_SIZE; i++)
		diff |= (unsigned)(a->proof[i] ^ proof[i]);
	return diff == 0;
}

int
kvn_tp_auth_refused(const char *transport, const char *peer, const struct kvn_tp_auth *a, char *err,
		    size_t errlen)
{
	kvn_seterr(err, errlen,
		   "%s: peer %s refused this node's data connection: wrong or missing auth_token "
		   "(this node has %s); set the same auth_token on every node of the cluster",
		   transport, peer, a->set ? "one" : "none");
	return -EACCES;
}
