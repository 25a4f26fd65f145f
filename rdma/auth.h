/* Data-connection auth shared by the transports (include/kvnode/transport.h, "Data-connection
 * auth"): the messages a reader gets when an owner refuses it or fails to prove the token, and
 * the owner's rate-limited log of refusals. The proofs themselves are core/auth.h's. */
#ifndef KVN_RDMA_AUTH_H
#define KVN_RDMA_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "core/auth.h"
#include "core/log.h"

/* The err line of a reader the owner refused for its token; returns -EACCES. */
int kvn_tp_auth_refused(const char *transport, const char *peer, const struct kvn_auth *a,
			char *err, size_t errlen);
/* The err line of a reader whose owner did not prove the reader's token (another cluster,
 * another token, or someone else at that address); returns -EACCES. */
int kvn_tp_auth_unproven(const char *transport, const char *peer, const struct kvn_auth *a,
			 char *err, size_t errlen);
/* Logs a refused reader at most once a second per rl, with the count of those not logged. */
void kvn_tp_auth_log_refusal(struct kvn_ratelimit *rl, const char *transport, const char *peer,
			     const char *listener, const char *why);

#endif
