/* Fuzzes the local control protocol's codec (node/serve/ctlproto.c) and its client (node/serve/ctlclient.c).
 * The first input byte picks the mode:
 *   0  a request header: decode, validate against a value limit from the input, re-encode;
 *   1  a reply header: the same;
 *   2+ the CLI's side: the rest of the input is what a broken or hostile daemon answers to one
 *      request (ping, put, get, rm, ls, stat, by the mode), read by the real client code.
 * Properties: the codec round-trips every header bit for bit, validation accepts exactly the
 * documented frames and always says why it refuses, and no reply makes the client crash, hang
 * or report success with a reply that is not a valid frame. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "node/cli/client.h"
#include "node/cluster/ctlframe.h"
#include "node/serve/ctlproto.h"
#include "tests/fuzz/fuzz_common.h"

static char sock_path[300];
static int lfd = -1, devnull = -1;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fz_init();
	snprintf(sock_path, sizeof(sock_path), "%s/daemon.sock", fz_tmpdir("ctlproto"));
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 4) < 0)
		fz_fail("fake daemon socket %s: %s", sock_path, strerror(errno));
	devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
	return 0;
}

static void
fuzz_request(const uint8_t *p, size_t n)
{
	uint8_t w[KVN_CTL_REQ_SIZE] = {0}, back[KVN_CTL_REQ_SIZE];
	memcpy(w, p, n < sizeof(w) ? n : sizeof(w));
	struct fz_in in = {p + (n < sizeof(w) ? n : sizeof(w)), n > sizeof(w) ? n - sizeof(w) : 0};
	uint64_t value_max = fz_u64(&in);
	struct kvn_ctl_req r;
	kvn_ctl_req_decode(w, &r);
	kvn_ctl_req_encode(&r, back);
	FZ_ASSERT(!memcmp(w, back, sizeof(w)), "request header does not round-trip");
	char err[256] = "";
	int rc = kvn_ctl_req_validate(&r, value_max, err, sizeof(err));
	FZ_ASSERT(strcmp(kvn_ctl_op_name(r.op), "?") || rc, "unknown op %u accepted", r.op);
	if (rc) {
		FZ_ASSERT(rc == -EPROTO || rc == -EMSGSIZE, "validate returned %d", rc);
		FZ_ASSERT(err[0], "refusal without a reason");
		FZ_ASSERT(kvn_ctl_req_validate(&r, value_max, NULL, 0) == rc,
			  "validate without an err buffer decides otherwise");
		return;
	}
	bool keyed = r.op == KVN_CTL_PUT || r.op == KVN_CTL_GET || r.op == KVN_CTL_RM;
	FZ_ASSERT(r.magic == KVN_CTL_REQ_MAGIC && r.version == KVN_CTL_VERSION && !r.flags &&
		      !r.reserved,
		  "accepted a bad magic, version, flags or reserved field");
	FZ_ASSERT(keyed ? r.key_len >= 1 && r.key_len <= KVN_KEY_MAX : r.key_len == 0,
		  "accepted key length %u for %s", r.key_len, kvn_ctl_op_name(r.op));
	FZ_ASSERT(r.op == KVN_CTL_PUT ? r.value_len <= value_max : r.value_len == 0,
		  "accepted value length %llu for %s", (unsigned long long)r.value_len,
		  kvn_ctl_op_name(r.op));
	struct kvn_ctl_req m = kvn_ctl_req_make(r.op, r.key_len, r.value_len);
	uint8_t made[KVN_CTL_REQ_SIZE];
	kvn_ctl_req_encode(&m, made);
	FZ_ASSERT(!memcmp(made, w, sizeof(w)), "kvn_ctl_req_make builds another header");
}

static void
fuzz_reply(const uint8_t *p, size_t n)
{
	uint8_t w[KVN_CTL_REPLY_SIZE] = {0}, back[KVN_CTL_REPLY_SIZE];
	memcpy(w, p, n < sizeof(w) ? n : sizeof(w));
	struct fz_in in = {p + (n < sizeof(w) ? n : sizeof(w)), n > sizeof(w) ? n - sizeof(w) : 0};
	uint64_t payload_max = fz_u64(&in);
	struct kvn_ctl_reply r;
	kvn_ctl_reply_decode(w, &r);
	kvn_ctl_reply_encode(&r, back);
	FZ_ASSERT(!memcmp(w, back, sizeof(w)), "reply header does not round-trip");
	char err[256] = "";
	int rc = kvn_ctl_reply_validate(&r, payload_max, err, sizeof(err));
	if (rc) {
		FZ_ASSERT(rc == -EPROTO && err[0], "refusal %d without -EPROTO and a reason", rc);
		return;
	}
	FZ_ASSERT(r.magic == KVN_CTL_REPLY_MAGIC && r.status <= 0 && r.status >= -4095 &&
		      r.payload_len <= payload_max,
		  "accepted reply magic 0x%08x status %d length %llu", r.magic, r.status,
		  (unsigned long long)r.payload_len);
}

/* The daemon's answer is queued before the client asks: one thread, nothing to wait for. */
static void
fuzz_client(unsigned op, const uint8_t *p, size_t n)
{
	char err[512];
	struct kvn_cli_conn *c;
	if (kvn_cli_connect(sock_path, 10000, &c, err, sizeof(err)) < 0)
		fz_fail("client connect: %s", err);
	int sfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (sfd < 0)
		fz_fail("accept: %s", strerror(errno));
	/* Small inputs fit the socket buffer; a longer tail is not sent (the client would block
	 * on a reply it has not asked for yet). */
	size_t room = n < 65536 ? n : 65536;
	if (room && send(sfd, p, room, MSG_NOSIGNAL) != (ssize_t)room)
		fz_fail("fake daemon send: %s", strerror(errno));
	shutdown(sfd, SHUT_WR);

	struct kvn_key key;
	kvn_key_from_str(&key, "vllm@model@1@0@abc123@bfloat16");
	char *text = NULL;
	void *data = NULL;
	size_t len = 0;
	uint64_t glen = 0;
	int rc;
	switch (op % 7) {
	case 0:
		rc = kvn_cli_ping(c, &text);
		break;
	case 1:
		rc = kvn_cli_put(c, &key, "value", 5);
		break;
	case 2:
		rc = kvn_cli_get_begin(c, &key, &glen);
		if (rc == 0) {
			FZ_ASSERT(glen <= KVN_CTL_VALUE_MAX, "GET of %llu bytes accepted",
				  (unsigned long long)glen);
			rc = kvn_cli_get_finish(c, devnull);
		}
		break;
	case 3:
		/* Only lengths the input can hold: a client mallocs the announced value. */
		if (n >= KVN_CTL_REPLY_SIZE && kvn_cf_get_u64(p + 8) <= n)
			rc = kvn_cli_get(c, &key, &data, &len);
		else
			rc = kvn_cli_rm(c, &key);
		break;
	case 4:
		rc = kvn_cli_rm(c, &key);
		break;
	case 5:
		rc = kvn_cli_ls(c, &text, &len);
		break;
	default:
		rc = kvn_cli_stat(c, &text);
		if (rc == 0) {
			FILE *f = fopen("/dev/null", "w");
			kvn_cli_print_stats(text, f);
			fclose(f);
		}
		break;
	}
	if (rc == 0) {
		/* Success needs a whole valid reply header in the input. */
		FZ_ASSERT(n >= KVN_CTL_REPLY_SIZE && !memcmp(p, "KVNR", 4),
			  "op %u succeeded on a %zu-byte reply without the reply magic", op % 7, n);
		FZ_ASSERT(kvn_cli_fault(c) == KVN_CLIENT_OK, "success with a fault set");
		if (text)
			FZ_ASSERT(strlen(text) <= n, "reply text longer than what was sent");
	} else {
		FZ_ASSERT(rc < 0 && kvn_cli_fault(c) != KVN_CLIENT_OK, "failure %d without a fault",
			  rc);
		FZ_ASSERT(kvn_cli_error(c)[0], "failure without a message");
	}
	free(text);
	free(data);
	kvn_cli_close(c);
	close(sfd);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	uint8_t mode = data[0];
	if (mode == 0)
		fuzz_request(data + 1, size - 1);
	else if (mode == 1)
		fuzz_reply(data + 1, size - 1);
	else
		fuzz_client(mode - 2u, data + 1, size - 1);
	return 0;
}
