/* Data-connection auth messages shared by the transports (rdma/auth.h). */
#include <errno.h>

#include "rdma/auth.h"

int
kvn_tp_auth_refused(const char *transport, const char *peer, const struct kvn_auth *a, char *err,
		    size_t errlen)
{
	return kvn_seterr(
	    -EACCES, err, errlen,
	    "%s: peer %s refused this node's data connection: wrong or missing auth_token "
	    "(this node has %s); set the same auth_token on every node of the cluster",
	    transport, peer, a->set ? "one" : "none");
}

int
kvn_tp_auth_unproven(const char *transport, const char *peer, const struct kvn_auth *a,
		     char *err, size_t errlen)
{
	(void)a;
	return kvn_seterr(
	    -EACCES, err, errlen,
	    "%s: peer %s did not prove this node's auth_token (it has another token or none: "
	    "another cluster, or not a kvnode node of this one); nothing read from it",
	    transport, peer);
}

void
kvn_tp_auth_log_refusal(struct kvn_ratelimit *rl, const char *transport, const char *peer,
			const char *listener, const char *why)
{
	uint64_t missed;
	if (kvn_ratelimit_ok(rl, 1000, &missed))
		kvn_warn(transport,
			 "reader %s refused on %s: wrong or missing auth_token (%s); nothing served "
			 "(%llu more refusals not logged)",
			 peer, listener, why, (unsigned long long)missed);
}
