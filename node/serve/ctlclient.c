/* Client side of the local control protocol (node/serve/ctlproto.h): one connection to a running
 * `kvnode serve`, requests in sequence, failures attributed to the node, the connection or the
 * caller's own file so that the CLI can pick the right exit code and message. It sits beside the
 * protocol, below the programs, so that kvnode and kvnode-bench (its old-path rows) share it. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/fdio.h"
#include "node/serve/ctlclient.h"
#include "node/serve/ctlproto.h"
#include "core/log.h"

#define DEFAULT_TIMEOUT_MS 60000
#define TEXT_MAX	   (1ull << 30) /* LS / STAT replies */
#define MSG_MAX		   4096		/* an error reply's message */

struct kvn_cli_conn {
	int fd;
	char *path;
	enum kvn_cli_fault fault;
	uint64_t pending; /* payload bytes of a GET between begin and finish */
	/* A request failed half-way (timeout, lost connection, a reply left unread): the stream
	 * is out of step, and a later request would read an earlier one's reply. */
	bool broken;
	char msg[MSG_MAX + 256];
};

static int fail(struct kvn_cli_conn *c, enum kvn_cli_fault fault, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int
fail(struct kvn_cli_conn *c, enum kvn_cli_fault fault, int rc, const char *fmt, ...)
{
	if (fault == KVN_CLIENT_CONN)
		c->broken = true;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->msg, sizeof(c->msg), fmt, ap);
	va_end(ap);
	c->fault = fault;
	return rc;
}

int
kvn_cli_connect(const char *socket_path, int timeout_ms, struct kvn_cli_conn **out, char *err,
		size_t errlen)
{
	if (!socket_path || !*socket_path)
		return kvn_seterr(-EINVAL, err, errlen, "no node socket given: use --node PATH");
	if (!strncmp(socket_path, "unix:", 5))
		socket_path += 5;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(socket_path) >= sizeof(sa.sun_path))
		return kvn_seterr(-EINVAL, err, errlen,
				  "node socket path %s is longer than %zu bytes", socket_path,
				  sizeof(sa.sun_path) - 1);
	memcpy(sa.sun_path, socket_path, strlen(socket_path) + 1);

	struct kvn_cli_conn *c = calloc(1, sizeof(*c));
	if (!c || !(c->path = strdup(socket_path))) {
		free(c);
		return -ENOMEM;
	}
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		int rc = -errno;
		kvn_seterr(rc, err, errlen, "socket: %s", strerror(errno));
		kvn_cli_close(c);
		return rc;
	}
	if (timeout_ms <= 0)
		timeout_ms = DEFAULT_TIMEOUT_MS;
	struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
	/* A unix connect waits on SO_SNDTIMEO when the daemon's backlog is full. */
	setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	while (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno == EINTR)
			continue;
		int e = errno;
		const char *hint = e == ENOENT || e == ECONNREFUSED
				       ? " (is `kvnode serve` running there?)"
				   : e == EACCES ? " (no permission on the socket file)"
						 : "";
		kvn_seterr(-EINVAL, err, errlen, "cannot connect to node at %s: %s%s", socket_path,
			   strerror(e == EAGAIN ? ETIMEDOUT : e), hint);
		kvn_cli_close(c);
		return -(e == EAGAIN ? ETIMEDOUT : e);
	}
	*out = c;
	return 0;
}

void
kvn_cli_close(struct kvn_cli_conn *c)
{
	if (!c)
		return;
	if (c->fd >= 0)
		close(c->fd);
	free(c->path);
	free(c);
}

enum kvn_cli_fault
kvn_cli_fault(const struct kvn_cli_conn *c)
{
	return c->fault;
}

const char *
kvn_cli_error(const struct kvn_cli_conn *c)
{
	return c->fault ? c->msg : "";
}

/* ------------------------------------------------------------------------------------------
 * Frames
 * ------------------------------------------------------------------------------------------ */

static int
conn_fail(struct kvn_cli_conn *c, int rc, const char *doing)
{
	return fail(c, KVN_CLIENT_CONN, rc, "%s node at %s: %s", doing, c->path,
		    rc == -ECONNRESET ? "connection closed by the node" : kvn_strerror(rc));
}

static int
send_req(struct kvn_cli_conn *c, enum kvn_ctl_op op, const struct kvn_key *key, uint64_t value_len)
{
	uint8_t frame[KVN_CTL_REQ_SIZE + KVN_KEY_MAX];
	size_t klen = key ? key->len : 0;
	struct kvn_ctl_req req = kvn_ctl_req_make(op, klen, value_len);
	kvn_ctl_req_encode(&req, frame);
	if (klen)
		memcpy(frame + KVN_CTL_REQ_SIZE, key->str, klen);
	c->fault = KVN_CLIENT_OK;
	if (c->broken)
		return -ENOTCONN;
	return kvn_fd_write_full(c->fd, frame, KVN_CTL_REQ_SIZE + klen);
}

/* Reads a reply header. A node error (status < 0) is returned with its message read from the
 * payload; 0 leaves the payload (*len bytes) on the wire for the caller. */
static int
recv_reply(struct kvn_cli_conn *c, enum kvn_ctl_op op, uint64_t payload_max, uint64_t *len)
{
	uint8_t hdr[KVN_CTL_REPLY_SIZE];
	int rc = kvn_fd_read_full(c->fd, hdr, sizeof(hdr), NULL);
	if (rc)
		return conn_fail(c, rc, "waiting for the reply of");
	struct kvn_ctl_reply rep;
	kvn_ctl_reply_decode(hdr, &rep);
	char why[256];
	rc = kvn_ctl_reply_validate(&rep, rep.status ? MSG_MAX : payload_max, why, sizeof(why));
	if (rc)
		return fail(c, KVN_CLIENT_CONN, rc, "bad %s reply from %s: %s", kvn_ctl_op_name(op),
			    c->path, why);
	if (rep.status == 0) {
		*len = rep.payload_len;
		return 0;
	}
	char text[MSG_MAX + 1];
	rc = kvn_fd_read_full(c->fd, text, (size_t)rep.payload_len, NULL);
	if (rc)
		return conn_fail(c, rc, "reading the error message of");
	text[rep.payload_len] = '\0';
	return fail(c, KVN_CLIENT_NODE, rep.status, "%s", *text ? text : kvn_strerror(rep.status));
}

/* After a failed send the node may already have answered (a refused frame, a busy node) and
 * closed: its reply explains the failure better than EPIPE does. */
static int
send_failed(struct kvn_cli_conn *c, enum kvn_ctl_op op, int rc)
{
	uint64_t len;
	if (c->broken)
		return fail(c, KVN_CLIENT_CONN, -ENOTCONN,
			    "connection to the node at %s is out of step after an earlier error: "
			    "reconnect",
			    c->path);
	int st = recv_reply(c, op, 0, &len);
	if (st < 0 && c->fault == KVN_CLIENT_NODE)
		return st;
	return conn_fail(c, rc, "sending to");
}

/* A whole request whose reply payload (if any) is read into a malloc'd, NUL-terminated
 * buffer. */
static int
call(struct kvn_cli_conn *c, enum kvn_ctl_op op, const struct kvn_key *key, char **out,
     size_t *out_len)
{
	int rc = send_req(c, op, key, 0);
	if (rc)
		return send_failed(c, op, rc);
	uint64_t len;
	rc = recv_reply(c, op, out ? TEXT_MAX : 0, &len);
	if (rc)
		return rc;
	if (!out)
		return 0;
	char *p = malloc((size_t)len + 1);
	if (!p) {
		c->broken = true; /* the reply is still on the wire */
		return fail(c, KVN_CLIENT_LOCAL, -ENOMEM, "no memory for a %llu-byte reply",
			    (unsigned long long)len);
	}
	rc = kvn_fd_read_full(c->fd, p, (size_t)len, NULL);
	if (rc) {
		free(p);
		return conn_fail(c, rc, "reading the reply of");
	}
	p[len] = '\0';
	*out = p;
	if (out_len)
		*out_len = (size_t)len;
	return 0;
}

/* ------------------------------------------------------------------------------------------
 * Operations
 * ------------------------------------------------------------------------------------------ */

int
kvn_cli_ping(struct kvn_cli_conn *c, char **banner)
{
	char *text = NULL;
	int rc = call(c, KVN_CTL_PING, NULL, &text, NULL);
	if (banner)
		*banner = text;
	else
		free(text);
	return rc;
}

int
kvn_cli_put(struct kvn_cli_conn *c, const struct kvn_key *key, const void *data, size_t len)
{
	int rc = send_req(c, KVN_CTL_PUT, key, len);
	if (!rc)
		rc = kvn_fd_write_full(c->fd, data, len);
	if (rc)
		return send_failed(c, KVN_CTL_PUT, rc);
	uint64_t plen;
	return recv_reply(c, KVN_CTL_PUT, 0, &plen);
}

int
kvn_cli_put_fd(struct kvn_cli_conn *c, const struct kvn_key *key, int fd, uint64_t len)
{
	int rc = send_req(c, KVN_CTL_PUT, key, len);
	if (rc)
		return send_failed(c, KVN_CTL_PUT, rc);
	bool write_side;
	rc = kvn_fd_copy(fd, c->fd, len, &write_side);
	if (rc && write_side)
		return send_failed(c, KVN_CTL_PUT, rc);
	if (rc) {
		/* The node now holds a truncated frame and will drop the connection. */
		c->broken = true;
		return fail(c, KVN_CLIENT_LOCAL, rc, "reading the value: %s",
			    rc == -ECONNRESET ? "input ended early (file changed while read?)"
					      : kvn_strerror(rc));
	}
	uint64_t plen;
	return recv_reply(c, KVN_CTL_PUT, 0, &plen);
}

int
kvn_cli_get_begin(struct kvn_cli_conn *c, const struct kvn_key *key, uint64_t *len)
{
	*len = 0;
	int rc = send_req(c, KVN_CTL_GET, key, 0);
	if (rc)
		return send_failed(c, KVN_CTL_GET, rc);
	rc = recv_reply(c, KVN_CTL_GET, KVN_CTL_VALUE_MAX, len);
	c->pending = rc ? 0 : *len;
	return rc;
}

int
kvn_cli_get_finish(struct kvn_cli_conn *c, int fd)
{
	bool write_side;
	uint64_t len = c->pending;
	c->pending = 0;
	int rc = kvn_fd_copy(c->fd, fd, len, &write_side);
	if (rc)
		c->broken = true; /* the rest of the value is still on the wire */
	if (rc && write_side)
		return fail(c, KVN_CLIENT_LOCAL, rc, "writing the value: %s", kvn_strerror(rc));
	if (rc)
		return conn_fail(c, rc, "receiving the value from");
	return 0;
}

int
kvn_cli_get(struct kvn_cli_conn *c, const struct kvn_key *key, void **data, size_t *len)
{
	uint64_t n;
	int rc = kvn_cli_get_begin(c, key, &n);
	if (rc)
		return rc;
	void *p = malloc(n ? (size_t)n : 1);
	if (!p) {
		c->broken = true; /* the value is still on the wire */
		return fail(c, KVN_CLIENT_LOCAL, -ENOMEM, "no memory for a %llu-byte value",
			    (unsigned long long)n);
	}
	c->pending = 0;
	rc = kvn_fd_read_full(c->fd, p, (size_t)n, NULL);
	if (rc) {
		free(p);
		return conn_fail(c, rc, "receiving the value from");
	}
	*data = p;
	*len = (size_t)n;
	return 0;
}

int
kvn_cli_rm(struct kvn_cli_conn *c, const struct kvn_key *key)
{
	return call(c, KVN_CTL_RM, key, NULL, NULL);
}

int
kvn_cli_ls(struct kvn_cli_conn *c, char **text, size_t *len)
{
	return call(c, KVN_CTL_LS, NULL, text, len);
}

int
kvn_cli_stat(struct kvn_cli_conn *c, char **json)
{
	return call(c, KVN_CTL_STAT, NULL, json, NULL);
}
