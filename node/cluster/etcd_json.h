/* Internal to the etcd client (node/cluster/etcd.c, etcd_json.c): the gateway's JSON as
 * grpc-gateway writes it (proto field names, int64 as strings, zero values left out), its error
 * answers, and the decoding of range answers and watch streams. */
#ifndef KVN_NODE_CLUSTER_ETCD_JSON_H
#define KVN_NODE_CLUSTER_ETCD_JSON_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "node/cluster/etcd.h"

#define WHY_MAX	 512
#define BODY_MAX (1u << 20) /* the most of an answer read; a watch's unfinished object too */

/* An int64 field, string or number; absent: 0. 0 or -EPROTO. */
int kvn_etcd_field_i64(const cJSON *obj, const char *name, int64_t *out);
/* A bool field that is true (absent: false, as proto3 leaves out false). */
bool kvn_etcd_field_true(const cJSON *obj, const char *name);
/* A base64 field decoded into a malloc'd, NUL-terminated *out of at most max bytes (*len);
 * absent: empty. 0, -EMSGSIZE or -EPROTO. */
int kvn_etcd_field_b64(const cJSON *obj, const char *name, size_t max, char **out, size_t *len);
/* A gRPC status code as a negative errno. */
int kvn_etcd_grpc_errno(int64_t code);
/* root is a gateway error ({"error"|"message", "code"}): its errno, message into err; else 0. */
int kvn_etcd_gw_error(const cJSON *root, char *err, size_t errlen);
/* etcd's message says the auth token is not (or no longer) valid. */
bool kvn_etcd_token_rejected(const char *msg);
/* body (len bytes, not NUL-terminated) as JSON, NULL when it is not. */
cJSON *kvn_etcd_parse_body(const char *body, size_t len);
/* One kv object of an answer into kv (and its key, malloc'd, when key is not NULL). */
int kvn_etcd_decode_kv(const cJSON *j, struct kvn_etcd_kv *kv, char **key, char *err,
		       size_t errlen);
/* header.revision of an answer. */
int kvn_etcd_decode_header_rev(const cJSON *root, int64_t *rev, char *err, size_t errlen);
/* A range answer of one key: 0 and kv, -ENOENT (rev still set), or an error. */
int kvn_etcd_decode_range_json(const cJSON *root, struct kvn_etcd_kv *kv, int64_t *rev, char *err,
			       size_t errlen);

/* A watch stream as read so far. */
struct watch_state {
	int64_t start_rev;
	bool created;	   /* etcd confirmed the watch: a timeout after it is "no change" */
	bool token_bad;	   /* canceled because etcd no longer knows our token */
	bool deleted;	   /* the event found, */
	int64_t rev;	   /* its revision */
	int rc;		   /* 1 an event, negative an error, 0 none yet */
	char why[WHY_MAX]; /* the error */
};

/* Decodes the complete objects of body (a watch stream's bytes so far) into ws; returns ws->rc. */
int kvn_etcd_watch_decode(struct watch_state *ws, const char *body, size_t len);

#endif
