/* `kvnode stat --scheduler`: one STATS request for the scheduler's cluster view, printed as a
 * table — one row per member with its worker id, state, last heartbeat and chunks. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/auth.h"
#include "core/log.h"
#include "node/cluster/membership.h"
#include "core/netaddr.h"

#define DEFAULT_TMO_MS 5000

int
kvn_membership_fetch_stats(const char *addr, const char *token, int timeout_ms, char **json,
			   char *err, size_t errlen)
{
	return kvn_membership_fetch_stats_etcd(addr, NULL, token, timeout_ms, json, err, errlen);
}

int
kvn_membership_fetch_stats_etcd(const char *addr, const struct kvn_etcd_opts *eo, const char *token,
				int timeout_ms, char **json, char *err, size_t errlen)
{
	char host[KVN_HOST_MAX], why[512];
	uint16_t port;
	int rc = kvn_scheduler_resolve(addr, eo, host, &port, err, errlen);
	if (rc)
		return rc;
	if (timeout_ms <= 0)
		timeout_ms = DEFAULT_TMO_MS;
	int fd = kvn_tcp_connect(host, port, timeout_ms, why, sizeof(why));
	if (fd < 0)
		return kvn_seterr(fd, err, errlen, "scheduler %s: %s", addr, why);
	struct kvn_cf_rx r = {0};
	struct kvn_auth a;
	kvn_auth_init(&a, token);
	char proof[KVN_CF_PROOF_HEX];
	rc = kvn_cf_client_auth(fd, &r, &a, timeout_ms, proof, why, sizeof(why));
	kvn_auth_wipe(&a);
	if (rc) {
		close(fd);
		kvn_cf_rx_free(&r);
		return kvn_seterr(rc, err, errlen, "scheduler %s %s", addr, why);
	}
	cJSON *j = cJSON_CreateObject();
	if (proof[0])
		cJSON_AddStringToObject(j, "proof", proof);
	char *text = cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	struct kvn_cf_buf b = {0};
	rc = text ? kvn_cf_put_json_frame(&b, KVN_CF_STATS, 1, text, NULL, 0) : -ENOMEM;
	free(text);
	if (!rc)
		rc = kvn_cf_send_all(fd, b.p, b.len);
	kvn_cf_buf_free(&b);
	struct kvn_cf_hdr h;
	const uint8_t *body;
	if (rc) {
		kvn_seterr(rc, err, errlen, "scheduler %s: sending STATS: %s", addr,
			   kvn_strerror(rc));
	} else if ((rc = kvn_cf_rx_wait(&r, fd, timeout_ms, &h, &body, why, sizeof(why)))) {
		kvn_seterr(rc, err, errlen, "scheduler %s: %s", addr, why);
	} else if (h.type == KVN_CF_ERROR) {
		rc = kvn_cf_error_decode(body, h.len, why, sizeof(why)); /* -EACCES: the token */
		kvn_seterr(-EINVAL, err, errlen, "scheduler %s refused: %s", addr, why);
	} else if (h.type != KVN_CF_STATS_REPLY || h.seq != 1) {
		kvn_seterr(-EINVAL, err, errlen, "scheduler %s answered STATS with %s", addr,
			   kvn_cf_type_name(h.type));
		rc = -EPROTO;
	} else if (!(*json = strndup((const char *)body, h.len))) {
		rc = -ENOMEM;
	}
	kvn_cf_rx_free(&r);
	close(fd);
	return rc;
}
