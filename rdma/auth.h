/* Data-connection auth shared by the transports (include/kvnode/transport.h, "Data-connection
 * auth"): the 16-byte proof a reader sends for its auth_token and the listener's check of it. */
#ifndef KVN_RDMA_AUTH_H
#define KVN_RDMA_AUTH_H

#include <stdbool.h>
#include <stdint.h>

#define KVN_TP_PROOF_SIZE 16

/* An instance's token, kept as its proof only (the string is the caller's). */
struct kvn_tp_auth {
	bool set;			  /* a non-empty auth_token was configured */
	uint8_t proof[KVN_TP_PROOF_SIZE]; /* all zero when !set */
};

/* token NULL or "": none. */
void kvn_tp_auth_init(struct kvn_tp_auth *a, const char *token);
/* Whether a listener holding a serves a reader that sent (has, proof): always without a token of
 * its own, else only for the same proof, compared in constant time. */
bool kvn_tp_auth_ok(const struct kvn_tp_auth *a, bool has, const uint8_t proof[KVN_TP_PROOF_SIZE]);

/* The err line of a reader refused for its token; returns -EACCES. */
int kvn_tp_auth_refused(const char *transport, const char *peer, const struct kvn_tp_auth *a,
			char *err, size_t errlen);

#endif
