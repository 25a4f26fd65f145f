/* A small etcd v3 client over etcd's JSON gateway (HTTP through libcurl, JSON through cJSON,
 * keys and values base64 through libsodium): leases, get/put/delete, create-if-absent by
 * transaction, a prefix range, and a watch of one key. What the highly available scheduler
 * needs (docs/architecture.md §5.6), nothing more.
 *
 * Endpoints are "HOST:PORT[,HOST:PORT...]"; a call that cannot reach one (connect refused,
 * timeout, HTTP 5xx) tries the next, and the client keeps using the last one that answered.
 * Every call is bounded by opts.timeout_ms (a watch by its own timeout). Calls are safe from
 * several threads at once (each call uses its own HTTP handle). Errors are negative errnos with
 * err naming the endpoint, the call and etcd's own message. */
#ifndef KVN_NODE_CLUSTER_ETCD_H
#define KVN_NODE_CLUSTER_ETCD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KVN_ETCD_VALUE_MAX 4096 /* the largest value get/range hand back */

struct kvn_etcd;

struct kvn_etcd_opts {
	const char *endpoints; /* "HOST:PORT[,HOST:PORT...]"; at most 16 */
	int timeout_ms;	       /* each call (connect included); 0 = 2000 */
	/* Auth: user and password (POST /v3/auth/authenticate, the token then sent in the
	 * Authorization header and fetched again when etcd says it is invalid), or a token
	 * given as is. NULL or "": none. */
	const char *user, *password, *token;
	/* TLS (https://) when tls is set or any file is given: the CA that signed the servers'
	 * certificates, and a client certificate and key for etcd's --client-cert-auth. */
	bool tls;
	const char *ca_file, *cert_file, *key_file;
};

/* Parses the endpoints and checks the options; connects to nothing yet. -EINVAL with err
 * naming the bad endpoint. */
int kvn_etcd_open(const struct kvn_etcd_opts *opts, struct kvn_etcd **out, char *err,
		  size_t errlen);
void kvn_etcd_close(struct kvn_etcd *e);
/* "HOST:PORT" of the endpoint that answered last (the first before any call). */
const char *kvn_etcd_endpoint(const struct kvn_etcd *e);

/* POST /v3/lease/grant: a lease of ttl_s seconds; *id its ID. */
int kvn_etcd_lease_grant(struct kvn_etcd *e, int ttl_s, int64_t *id, char *err, size_t errlen);
/* POST /v3/lease/keepalive, one round: *ttl_s the TTL etcd granted again. -ENOENT when the
 * lease is gone (expired or revoked: etcd answers TTL 0). */
int kvn_etcd_lease_keepalive(struct kvn_etcd *e, int64_t id, int *ttl_s, char *err, size_t errlen);
/* POST /v3/lease/revoke: the lease and every key attached to it go. -ENOENT: no such lease. */
int kvn_etcd_lease_revoke(struct kvn_etcd *e, int64_t id, char *err, size_t errlen);

struct kvn_etcd_kv {
	char value[KVN_ETCD_VALUE_MAX + 1]; /* NUL-terminated; values are text here */
	size_t len;
	int64_t create_rev, mod_rev, lease;
};

/* POST /v3/kv/range of one key: 0 and *kv, or -ENOENT (then *rev still set). rev (may be NULL):
 * the store's revision of the answer, to watch from rev + 1. -EMSGSIZE: a value over
 * KVN_ETCD_VALUE_MAX. */
int kvn_etcd_get(struct kvn_etcd *e, const char *key, struct kvn_etcd_kv *kv, int64_t *rev,
		 char *err, size_t errlen);
/* Every key under prefix (range_end = prefix with its last byte + 1), in key order: fn gets each
 * key (the prefix included) and value; a non-zero return of fn stops and is returned. */
int kvn_etcd_range_prefix(struct kvn_etcd *e, const char *prefix,
			  int (*fn)(void *ctx, const char *key, const struct kvn_etcd_kv *kv),
			  void *ctx, char *err, size_t errlen);
/* POST /v3/kv/put; lease 0: none. */
int kvn_etcd_put(struct kvn_etcd *e, const char *key, const char *value, int64_t lease, char *err,
		 size_t errlen);
/* POST /v3/kv/txn: puts key = value (attached to lease when non-zero) only if the key does not
 * exist (compare CREATE revision == 0). 1: created; 0: it existed, and *cur (may be NULL) is
 * what it holds. */
int kvn_etcd_create(struct kvn_etcd *e, const char *key, const char *value, int64_t lease,
		    struct kvn_etcd_kv *cur, char *err, size_t errlen);
/* POST /v3/kv/deleterange of one key; deleting an absent key is 0. */
int kvn_etcd_delete(struct kvn_etcd *e, const char *key, char *err, size_t errlen);

/* POST /v3/watch of one key from start_rev (> 0): waits up to timeout_ms for a change. 1: the
 * key was put or deleted at a revision >= start_rev (*deleted says which, *rev the revision of
 * that event); 0: no change within timeout_ms; negative: an error (etcd unreachable: the
 * caller reads the key again and watches from there). A watch whose start_rev was compacted
 * away answers 1 with *rev the compact revision (the caller must read the key again). */
int kvn_etcd_watch(struct kvn_etcd *e, const char *key, int64_t start_rev, int timeout_ms,
		   bool *deleted, int64_t *rev, char *err, size_t errlen);

/* The decoding of the gateway's answers, exposed for tests/fuzz/fuzz_etcd.c: body (len bytes,
 * not NUL-terminated, from the network) of a range answer into kv as kvn_etcd_get does. */
int kvn_etcd_decode_range(const char *body, size_t len, struct kvn_etcd_kv *kv, int64_t *rev,
			  char *err, size_t errlen);
/* ... and a watch stream's bytes as kvn_etcd_watch reads them (one or more JSON objects). */
int kvn_etcd_decode_watch(const char *body, size_t len, int64_t start_rev, bool *deleted,
			  int64_t *rev, char *err, size_t errlen);

#endif
