/* The client library (kvnode/client.h): one connection to the node's socket, the node's pool
 * mapped read-only, and an event loop run by the caller's thread. Frames go out through one
 * buffer and come back in request order, so a reply pairs with the oldest frame in flight.
 * A put is two frames: RESERVE gives the slots, the library copies (and checksums) each value
 * into its slot through a second, writable mapping of the pool, then COMMIT publishes them. PING
 * and LIST are synchronous calls of one frame each, without a struct kvn_client_req. Device
 * buffers (kvn_client_req.mem) are copied to and from the pool through gpu/'s staging. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "client/proto.h"
#include "core/abi.h"
#include "core/clock.h"
#include "core/copysum.h"
#include "core/fdio.h"
#include "core/log.h"
#include "core/netaddr.h"
#include "core/pool.h"
#include "gpu/gpu.h"
#include "gpu/staging.h"
#include "kvnode/client.h"

#define MAX_INFLIGHT	   64 /* requests; each is at most two frames in flight */
#define MAX_FRAMES	   (2 * MAX_INFLIGHT)
#define DEFAULT_TIMEOUT_MS 30000
#define SLOT_HDR	   64 /* struct kvn_slot_hdr before each payload */
#define WARM_SHIFT	   21 /* warm(): 2 MiB regions */
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14; older headers lack it */
#endif

/* A gather put's pieces (kvn_client_batch_putv): key i's value is iov[i][0..iovcnt[i]). */
struct gather {
	const struct iovec *const *iov;
	const int *iovcnt;
};

/* What the library keeps of a request while it is in flight. */
struct rstate {
	struct kvn_client_req *req;
	int *rc;	    /* per key */
	uint64_t *resv;	    /* PUT: the reservation of key i, 0 when none */
	const size_t *lens; /* PUT: the length of key i's value (req->lens_in, or own_lens) */
	size_t *own_lens;   /* a gather put's totals */
	struct gather g;    /* a gather put's pieces (iov NULL: req->data) */
	uint32_t frames;    /* in flight */
	bool whole_failed;  /* a frame's status failed every key */
};

/* A synchronous call without a request (PING, LIST): the reply of its one frame. */
struct syncop {
	bool done;
	int status;
	uint16_t flags;
	uint32_t count;
	uint8_t *body; /* a copy of the reply's body (malloc), len bytes */
	size_t len;
};

/* A frame in flight: the request it belongs to (or the synchronous call) and what it asked. */
struct frame {
	uint64_t id;
	uint16_t op;
	struct rstate *rs;   /* NULL for a synchronous call's frame */
	struct syncop *sync; /* that call's */
	uint32_t n;	     /* entries asked */
	uint32_t *keys;	     /* COMMIT: the key index of each entry (NULL: entry i is key i) */
	bool abort;	     /* COMMIT of reservations given back: their keys keep their error */
};

struct kvn_client {
	int fd;
	uint8_t *pool;	/* read-only: views point into it */
	uint8_t *wpool; /* the same pages writable: only the library's copies into reserved slots */
	size_t pool_size;
	/* A bit per 2 MiB region of each mapping (reads: pool, writes: wpool): its page tables
	 * are filled. */
	uint64_t *warm_r, *warm_w;
	bool no_populate; /* the kernel has no MADV_POPULATE_*: pages fault in one by one */
	struct kvn_cp_hello_ok hello;
	int timeout_ms;
	int broken; /* 0, or the error every later call gets */
	uint64_t next_id;

	struct kvn_cp_buf out; /* frames not yet written */
	size_t out_off;
	/* out[0, out_must) holds frames that wait for a reply: they go out at once. What follows
	 * is RELEASEs, which need no reply: while other frames are in flight they wait to go out
	 * with the next frame (one write, one wake-up of the node), at the latest when the last
	 * reply is in. */
	size_t out_must;
	struct kvn_cp_buf in; /* bytes of replies not yet handled */

	struct frame frames[MAX_FRAMES]; /* FIFO */
	size_t fhead, nframes;
	size_t nreqs;
	char err[512];

	/* Device buffers: the driver, a copy engine and a staging area for one GPU, set up by
	 * the first request that names it (gpu_ready). */
	struct kvn_gpu *gpu;
	struct kvn_copy_engine *ce;
	struct kvn_staging *st;
	int gpu_dev; /* the GPU they copy for, -1 before */
};

static int fail(struct kvn_client *c, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int
fail(struct kvn_client *c, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->err, sizeof(c->err), fmt, ap);
	va_end(ap);
	return rc;
}

const char *
kvn_client_error(const struct kvn_client *c)
{
	return c ? c->err : "no client";
}

uint64_t
kvn_client_max_value(const struct kvn_client *c)
{
	return c->hello.max_chunk;
}

int
kvn_client_fd(const struct kvn_client *c)
{
	return c->fd;
}

/* ------------------------------------------------------------------------------------------
 * Connecting
 * ------------------------------------------------------------------------------------------ */

static int
dial(const char *path, int timeout_ms, char *err, size_t errlen)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path) >= sizeof(sa.sun_path))
		return kvn_seterr(-ENAMETOOLONG, err, errlen, "socket path %s is longer than %zu",
				  path, sizeof(sa.sun_path) - 1);
	memcpy(sa.sun_path, path, strlen(path) + 1);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return kvn_seterr(-errno, err, errlen, "socket: %s", strerror(errno));
	int e = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ? errno : 0;
	if (e == EINTR) {
		/* A signal (the caller's timer, say) came first: the connection goes on. */
		struct pollfd pf = {.fd = fd, .events = POLLOUT};
		uint64_t deadline = kvn_now_ms() + (uint64_t)timeout_ms;
		int r;
		socklen_t elen = sizeof(e);
		while ((r = poll(&pf, 1, 100)) <= 0 && (r == 0 || errno == EINTR) &&
		       kvn_now_ms() < deadline)
			;
		if (r <= 0)
			e = r == 0 ? ETIMEDOUT : errno;
		else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &elen) < 0)
			e = errno;
	}
	if (e) {
		close(fd);
		return kvn_seterr(-e, err, errlen,
				  "cannot connect to the kvnode socket %s: %s (is `kvnode serve` "
				  "running there? set socket_path or $KVNODE_SOCKET_PATH)",
				  path, strerror(e));
	}
	struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	return fd;
}

/* Reads the HELLO reply and the memfd that comes with it. */
static int
recv_hello(struct kvn_client *c, const char *path, int *pool_fd, char *err, size_t errlen)
{
	uint8_t buf[KVN_CP_HDR_SIZE + 512];
	char ctl[CMSG_SPACE(sizeof(int))];
	struct iovec iov = {buf, KVN_CP_HDR_SIZE};
	struct msghdr mh = {
	    .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof(ctl)};
	/* The socket has SO_RCVTIMEO, so a signal handler's return is never restarted (signal(7)):
	 * a signal interrupts the wait with EINTR, or MSG_WAITALL with part of the header. */
	uint64_t deadline = kvn_now_ms() + (uint64_t)c->timeout_ms;
	ssize_t n;
	while ((n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | MSG_WAITALL)) < 0 && errno == EINTR &&
	       kvn_now_ms() < deadline)
		;
	*pool_fd = -1;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); n > 0 && cm; cm = CMSG_NXTHDR(&mh, cm))
		if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS)
			memcpy(pool_fd, CMSG_DATA(cm), sizeof(int));
	if (n > 0 && n < KVN_CP_HDR_SIZE && /* the fd came with the first byte */
	    kvn_fd_read_by(c->fd, buf + n, KVN_CP_HDR_SIZE - (size_t)n, deadline, NULL) == 0)
		n = KVN_CP_HDR_SIZE;
	if (n != KVN_CP_HDR_SIZE)
		return kvn_seterr(n < 0 ? -errno : -EPROTO, err, errlen,
				  "kvnode socket %s: no answer to HELLO (%s): not a kvnode of this "
				  "version?",
				  path, n < 0 ? strerror(errno) : "closed");
	struct kvn_cp_hdr h;
	kvn_cp_hdr_decode(buf, &h);
	char why[200];
	int rc = kvn_cp_hdr_validate(&h, true, why, sizeof(why));
	if (rc || h.op != KVN_CP_HELLO || h.body_len > sizeof(buf) - KVN_CP_HDR_SIZE)
		return kvn_seterr(-EPROTO, err, errlen, "kvnode socket %s: bad HELLO reply: %s",
				  path, rc ? why : "not a HELLO reply");
	rc = kvn_fd_read_by(c->fd, buf + KVN_CP_HDR_SIZE, (size_t)h.body_len, deadline, NULL);
	if (rc)
		return kvn_seterr(rc, err, errlen, "kvnode socket %s: reading HELLO reply: %s",
				  path, kvn_strerror(rc));
	if (h.status < 0)
		return kvn_seterr(h.status, err, errlen,
				  "kvnode socket %s refused this client: %.*s", path,
				  (int)h.body_len, (const char *)buf + KVN_CP_HDR_SIZE);
	if (h.body_len < KVN_CP_HELLO_OK_SIZE || *pool_fd < 0)
		return kvn_seterr(-EPROTO, err, errlen,
				  "kvnode socket %s: HELLO reply without the pool", path);
	kvn_cp_hello_ok_decode(buf + KVN_CP_HDR_SIZE, &c->hello);
	if (c->hello.major != KVN_CP_MAJOR)
		return kvn_seterr(-EPROTO, err, errlen,
				  "kvnode socket %s speaks client protocol %u.%u, this library "
				  "%u.%u: use the library of the node's version",
				  path, c->hello.major, c->hello.minor, KVN_CP_MAJOR, KVN_CP_MINOR);
	return 0;
}

static int
hello(struct kvn_client *c, const char *path, const char *name, char *err, size_t errlen)
{
	char dflt[32];
	if (!name || !*name) {
		snprintf(dflt, sizeof(dflt), "pid %d", (int)getpid());
		name = dflt;
	}
	size_t nl = strnlen(name, KVN_CP_NAME_MAX);
	uint8_t buf[KVN_CP_HDR_SIZE + 8 + KVN_CP_NAME_MAX];
	struct kvn_cp_hdr h = {
	    .magic = KVN_CP_REQ_MAGIC, .op = KVN_CP_HELLO, .id = 0, .body_len = 8 + nl};
	kvn_cp_hdr_encode(&h, buf);
	uint8_t *b = buf + KVN_CP_HDR_SIZE;
	b[0] = KVN_CP_MAJOR, b[1] = 0, b[2] = KVN_CP_MINOR, b[3] = 0;
	memset(b + 4, 0, 4);
	memcpy(b + 8, name, nl);
	int rc = kvn_fd_write_full(c->fd, buf, KVN_CP_HDR_SIZE + 8 + nl);
	if (rc)
		return kvn_seterr(rc, err, errlen, "kvnode socket %s: sending HELLO: %s", path,
				  kvn_strerror(rc));
	int pool_fd;
	rc = recv_hello(c, path, &pool_fd, err, errlen);
	if (rc == 0) {
		c->pool_size = c->hello.pool_size;
		/* Mapped twice. Views point into a read-only mapping, so that no stray write of
		 * this process through one reaches a chunk; the library copies puts through a
		 * second, writable mapping of the same pages whose addresses it never hands out.
		 * Protecting each reserved slot in one mapping instead took two mprotect calls
		 * per put, a fifth of a 256 KiB put's time. */
		c->pool = mmap(NULL, c->pool_size, PROT_READ, MAP_SHARED, pool_fd, 0);
		c->wpool = c->pool == MAP_FAILED ? MAP_FAILED
						 : mmap(NULL, c->pool_size, PROT_READ | PROT_WRITE,
							MAP_SHARED, pool_fd, 0);
		if (c->pool == MAP_FAILED || c->wpool == MAP_FAILED)
			rc = kvn_seterr(-errno, err, errlen,
					"cannot map the node's pool (%zu bytes): %s", c->pool_size,
					strerror(errno));
		size_t words = ((c->pool_size >> WARM_SHIFT) + 64) / 64;
		if (rc == 0) { /* without them, pages fault in one by one: no error */
			c->warm_r = calloc(words, sizeof(*c->warm_r));
			c->warm_w = calloc(words, sizeof(*c->warm_w));
		}
	}
	if (pool_fd >= 0)
		close(pool_fd);
	if (c->pool == MAP_FAILED)
		c->pool = NULL;
	if (c->wpool == MAP_FAILED)
		c->wpool = NULL;
	return rc;
}

static void
unmap_pool(struct kvn_client *c)
{
	if (c->pool)
		munmap(c->pool, c->pool_size);
	if (c->wpool)
		munmap(c->wpool, c->pool_size);
	free(c->warm_r);
	free(c->warm_w);
}

int
kvn_client_open(const struct kvn_client_opts *opts, struct kvn_client **out, char *err,
		size_t errlen)
{
	struct kvn_client_opts o = {KVN_CLIENT_OPTS_INIT};
	*out = NULL;
	if (opts && kvn_abi_read_in(opts, &o, sizeof(o), "struct kvn_client_opts",
				    "KVN_CLIENT_OPTS_INIT", err, errlen))
		return -EINVAL;
	char *dflt = NULL;
	const char *path =
	    o.socket_path && *o.socket_path ? o.socket_path : getenv("KVNODE_SOCKET_PATH");
	if (!path || !*path)
		path = dflt = kvn_default_socket_path();
	if (!path)
		return kvn_seterr(-ENOMEM, err, errlen, "out of memory");
	struct kvn_client *c = calloc(1, sizeof(*c));
	if (!c) {
		free(dflt);
		return kvn_seterr(-ENOMEM, err, errlen, "out of memory");
	}
	c->timeout_ms = o.timeout_ms > 0 ? o.timeout_ms : DEFAULT_TIMEOUT_MS;
	c->next_id = 1;
	c->gpu_dev = -1;
	int rc = c->fd = dial(path, c->timeout_ms, err, errlen);
	if (rc >= 0)
		rc = hello(c, path, o.name, err, errlen);
	free(dflt);
	if (rc < 0) {
		if (c->fd >= 0)
			close(c->fd);
		unmap_pool(c);
		free(c);
		return rc;
	}
	snprintf(c->err, sizeof(c->err), "no error");
	*out = c;
	return 0;
}

/* ------------------------------------------------------------------------------------------
 * Requests and their completion
 * ------------------------------------------------------------------------------------------ */

static void
rstate_free(struct rstate *rs)
{
	free(rs->rc);
	free(rs->resv);
	free(rs->own_lens);
	free(rs);
}

/* The request's last frame is done: its status, the caller's arrays, its callback. */
static void
complete(struct kvn_client *c, struct rstate *rs)
{
	struct kvn_client_req *req = rs->req;
	req->status = 0;
	for (size_t i = 0; i < req->n; i++) {
		if (req->rcs)
			req->rcs[i] = rs->rc[i];
		if (rs->rc[i] < 0 && !req->status)
			req->status = rs->rc[i];
	}
	if (req->op == KVN_CLIENT_CONTAINS_PREFIX) {
		req->found = 0;
		while (req->found < req->n && rs->rc[req->found] > 0)
			req->found++;
	}
	req->priv[0] = 0;
	c->nreqs--;
	rstate_free(rs);
	if (req->done)
		req->done(req);
}

/* Every key of rs gets rc (a whole request failed, or the connection broke). */
static void
fail_all_keys(struct rstate *rs, int rc)
{
	for (size_t i = 0; i < rs->req->n; i++)
		if (rs->rc[i] >= 0 || rs->req->op == KVN_CLIENT_CONTAINS_PREFIX)
			rs->rc[i] = rc;
	rs->whole_failed = true;
}

static struct frame *
frame_push(struct kvn_client *c, uint16_t op, struct rstate *rs, uint32_t n, uint32_t *keys)
{
	struct frame *f = &c->frames[(c->fhead + c->nframes) % MAX_FRAMES];
	c->nframes++;
	*f = (struct frame){.id = c->next_id++, .op = op, .rs = rs, .n = n, .keys = keys};
	if (rs)
		rs->frames++;
	return f;
}

/* Appends a request header to the outgoing buffer; the body follows with kvn_cp_put_*. */
static void
begin(struct kvn_client *c, uint16_t op, uint16_t flags, uint32_t count, uint64_t id,
      size_t *hdr_at)
{
	*hdr_at = c->out.len;
	uint8_t hdr[KVN_CP_HDR_SIZE] = {0};
	kvn_cp_put_bytes(&c->out, hdr, sizeof(hdr));
	struct kvn_cp_hdr h = {
	    .magic = KVN_CP_REQ_MAGIC, .op = op, .flags = flags, .count = count, .id = id};
	if (!c->out.err)
		kvn_cp_hdr_encode(&h, c->out.p + *hdr_at);
}

static int
end(struct kvn_client *c, size_t hdr_at)
{
	if (c->out.err)
		return -ENOMEM;
	struct kvn_cp_hdr h;
	kvn_cp_hdr_decode(c->out.p + hdr_at, &h);
	h.body_len = c->out.len - hdr_at - KVN_CP_HDR_SIZE;
	kvn_cp_hdr_encode(&h, c->out.p + hdr_at);
	return 0;
}

static void break_conn(struct kvn_client *c, int rc);

/* Writes what the outgoing buffer holds, without blocking. */
static int
flush(struct kvn_client *c)
{
	while (c->out_off < c->out.len) {
		ssize_t n = send(c->fd, c->out.p + c->out_off, c->out.len - c->out_off,
				 MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n > 0) {
			c->out_off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return 0;
		int rc = n < 0 ? -errno : -EIO;
		fail(c, rc, "the kvnode connection broke while sending: %s", kvn_strerror(rc));
		break_conn(c, rc);
		return rc;
	}
	kvn_cp_buf_reset(&c->out);
	c->out_off = c->out_must = 0;
	return 0;
}

/* Whether the outgoing buffer must be written now (see out_must). */
static bool
out_due(const struct kvn_client *c)
{
	return c->out_off < c->out_must || (c->out_off < c->out.len && !c->nframes);
}

/* A frame that waits for its reply is complete in the outgoing buffer: write it, and what
 * waited before it, now. */
static void
send_frames(struct kvn_client *c)
{
	c->out_must = c->out.len;
	flush(c);
}

/* ------------------------------------------------------------------------------------------
 * Replies
 * ------------------------------------------------------------------------------------------ */

/* Before the library first copies into or out of a region of a mapping, one madvise fills this
 * process's page tables for it (the node has made the pages resident): on 4 KiB pages a first
 * touch otherwise takes a fault per page, about 30 ms per 32 MiB on the machine this was
 * measured on, against 5 ms for the madvise. Once per region and mapping for the client's
 * life. A view is handed out as it is: what of it the caller reads is the caller's to fault
 * in. */
static void
warm(struct kvn_client *c, bool write, uint64_t off, uint64_t len)
{
	uint64_t *bits = write ? c->warm_w : c->warm_r;
	if (c->no_populate || !bits)
		return;
	uint8_t *map = write ? c->wpool : c->pool;
	uint64_t from = (off - SLOT_HDR) >> WARM_SHIFT, to = (off + len - 1) >> WARM_SHIFT;
	for (uint64_t r = from; r <= to; r++) {
		if (bits[r / 64] & (1ull << (r % 64)))
			continue;
		uint64_t at = r << WARM_SHIFT, n = (uint64_t)1 << WARM_SHIFT;
		if (n > c->pool_size - at)
			n = c->pool_size - at;
		if (madvise(map + at, n, write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ) < 0 &&
		    errno == EINVAL) {
			c->no_populate = true; /* before Linux 5.14 */
			return;
		}
		bits[r / 64] |= 1ull << (r % 64);
	}
}

static bool
in_pool(const struct kvn_client *c, uint64_t off, uint64_t len)
{
	return off >= SLOT_HDR && off <= c->pool_size && len <= c->pool_size - off;
}

/* ------------------------------------------------------------------------------------------
 * Device buffers
 * ------------------------------------------------------------------------------------------ */

static bool
on_gpu(const struct kvn_client_req *req)
{
	return KVN_ABI_HAS(req, mem_device) && req->mem == KVN_CLIENT_MEM_GPU;
}

static void
gpu_close(struct kvn_client *c)
{
	kvn_gpu_staging_close(c->ce, c->st);
	if (c->gpu)
		kvn_gpu_close(c->gpu);
	c->st = NULL;
	c->ce = NULL;
	c->gpu = NULL;
	c->gpu_dev = -1;
}

/* The driver, a copy engine on GPU dev and a staging area, set up once per client; 0, or why
 * not in c->err. */
static int
gpu_ready(struct kvn_client *c, int dev)
{
	if (c->st)
		return dev == c->gpu_dev ? 0
					 : fail(c, -EINVAL,
						"device buffers: this client copies for GPU %d, a "
						"request named GPU %d (one GPU per client)",
						c->gpu_dev, dev);
	char err[400] = "";
	struct kvn_gpu_info info;
	int rc = dev < 0 ? kvn_seterr(-EINVAL, err, sizeof(err), "no GPU %d", dev) : 0;
	if (!rc)
		rc = kvn_gpu_open(&c->gpu, err, sizeof(err));
	if (!rc)
		rc = kvn_gpu_device_info(c->gpu, dev, &info, err, sizeof(err));
	if (!rc)
		rc = kvn_gpu_staging_open(c->gpu, dev, &c->ce, &c->st, err, sizeof(err));
	if (rc) {
		gpu_close(c);
		return fail(c, rc, "device buffers on GPU %d: %s", dev, err);
	}
	c->gpu_dev = dev;
	return 0;
}

/* A PUT's value i from device memory into its slot, and the slot checksum of it. */
static int
copy_from_gpu(struct kvn_client *c, const struct kvn_client_req *req, size_t i, uint8_t *slot,
	      size_t len, uint64_t *sum)
{
	char err[400];
	int rc = kvn_staging_get_sum(c->st, slot, (kvn_devptr_t)(uintptr_t)req->data[i], len, sum,
				     err, sizeof(err));
	return rc ? fail(c, rc, "put %s: copying %zu bytes from GPU %d: %s", req->keys[i], len,
			 c->gpu_dev, err)
		  : 0;
}

/* A GET_INTO's value i from the pool into device memory. */
static int
copy_to_gpu(struct kvn_client *c, const struct kvn_client_req *req, size_t i, const uint8_t *src,
	    size_t len)
{
	char err[400];
	int rc = kvn_staging_put_buf(c->st, (kvn_devptr_t)(uintptr_t)req->dst[i], src, len, err,
				     sizeof(err));
	return rc ? fail(c, rc, "get_into %s: copying %zu bytes to GPU %d: %s", req->keys[i], len,
			 c->gpu_dev, err)
		  : 0;
}

/* RESERVE answered: copy each value into its slot, checksumming as it copies, then COMMIT the
 * ones reserved in one frame. Every reservation is committed or the connection breaks: the
 * node holds them against this client's bound until then. */
static int
on_reserved(struct kvn_client *c, struct frame *f, struct kvn_cp_rd *rd)
{
	struct rstate *rs = f->rs;
	struct kvn_client_req *req = rs->req;
	uint32_t *idx = malloc(sizeof(*idx) * (req->n ? req->n : 1));
	uint64_t *sum = malloc(sizeof(*sum) * (req->n ? req->n : 1));
	uint32_t *bad = on_gpu(req) ? malloc(sizeof(*bad) * (req->n ? req->n : 1)) : NULL;
	if (!idx || !sum || (on_gpu(req) && !bad)) {
		free(idx);
		free(sum);
		free(bad);
		return fail(c, -ENOMEM, "put: out of memory committing %zu values", req->n);
	}
	uint32_t m = 0, nbad = 0;
	for (uint32_t i = 0; i < f->n && i < req->n; i++) {
		uint8_t raw[KVN_CP_ENTRY_SIZE];
		struct kvn_cp_entry e = {.rc = -EPROTO};
		if (rd->len - rd->off >= sizeof(raw)) {
			memcpy(raw, rd->p + rd->off, sizeof(raw));
			rd->off += sizeof(raw);
			kvn_cp_entry_decode(raw, &e);
		}
		if (e.rc == 0 && (!in_pool(c, e.off, rs->lens[i]) || e.len != rs->lens[i]))
			e.rc = -EPROTO;
		rs->rc[i] = e.rc;
		if (e.rc < 0)
			continue;
		rs->resv[i] = e.handle;
		warm(c, true, e.off, e.len);
		if (on_gpu(req)) {
			/* a value that cannot be copied in gives its reservation back */
			int r = copy_from_gpu(c, req, i, c->wpool + e.off, (size_t)e.len, &sum[m]);
			if (r < 0)
				rs->rc[i] = r, bad[nbad++] = i;
			else
				idx[m++] = i;
			continue;
		}
		/* A plain put is a gather of one piece. */
		const struct iovec *v =
		    rs->g.iov ? rs->g.iov[i] : &(struct iovec){(void *)req->data[i], (size_t)e.len};
		idx[m] = i;
		sum[m++] = kvn_copyv_checksum(c->wpool + e.off, v, rs->g.iov ? rs->g.iovcnt[i] : 1);
	}
	int rc = 0;
	if (m) {
		/* The frame owns idx as its key map from here on. */
		struct frame *cf = frame_push(c, KVN_CP_COMMIT, rs, m, idx);
		size_t at;
		begin(c, KVN_CP_COMMIT, 0, m, cf->id, &at);
		for (uint32_t k = 0; k < m; k++) {
			kvn_cp_put_u64(&c->out, rs->resv[idx[k]]);
			kvn_cp_put_u64(&c->out, sum[k]);
		}
		rc = end(c, at);
		c->out_must = c->out.len; /* written when the replies being handled are */
		idx = NULL;
	}
	if (nbad && !rc) {
		struct frame *af = frame_push(c, KVN_CP_COMMIT, rs, nbad, bad);
		size_t at;
		af->abort = true;
		begin(c, KVN_CP_COMMIT, KVN_CP_F_ABORT, nbad, af->id, &at);
		for (uint32_t k = 0; k < nbad; k++) {
			kvn_cp_put_u64(&c->out, rs->resv[bad[k]]);
			kvn_cp_put_u64(&c->out, 0);
		}
		rc = end(c, at);
		c->out_must = c->out.len;
		bad = NULL;
	}
	free(bad);
	free(idx);
	free(sum);
	return rc ? fail(c, rc, "put: out of memory committing %zu values", req->n) : 0;
}

static int
on_entries(struct kvn_client *c, struct frame *f, struct kvn_cp_rd *rd)
{
	struct rstate *rs = f->rs;
	struct kvn_client_req *req = rs->req;
	uint64_t *leases = req->op == KVN_CLIENT_GET_INTO ? malloc(8 * (f->n ? f->n : 1)) : NULL;
	uint32_t nl = 0;
	int rc = 0;
	for (uint32_t i = 0; i < f->n && i < req->n; i++) {
		uint8_t raw[KVN_CP_ENTRY_SIZE];
		struct kvn_cp_entry e = {.rc = -EPROTO};
		if (rd->len - rd->off >= sizeof(raw)) {
			memcpy(raw, rd->p + rd->off, sizeof(raw));
			rd->off += sizeof(raw);
			kvn_cp_entry_decode(raw, &e);
		}
		if (e.rc == 0 && !in_pool(c, e.off, e.len))
			e.rc = -EPROTO;
		rs->rc[i] = e.rc;
		if (req->op == KVN_CLIENT_GET) {
			req->views[i] =
			    e.rc == 0 ? (struct kvn_view){c->pool + e.off, (size_t)e.len, e.handle}
				      : (struct kvn_view){NULL, 0, 0};
			continue;
		}
		if (e.rc == 0) {
			if (req->lens)
				req->lens[i] = (size_t)e.len;
			if (e.len > req->caps[i]) {
				rs->rc[i] = -ENOSPC;
			} else if (on_gpu(req)) {
				warm(c, false, e.off, e.len);
				int r = copy_to_gpu(c, req, i, c->pool + e.off, (size_t)e.len);
				if (r < 0)
					rs->rc[i] = r;
			} else {
				warm(c, false, e.off, e.len);
				memcpy(req->dst[i], c->pool + e.off, (size_t)e.len);
			}
		}
		if (e.handle && leases)
			leases[nl++] = e.handle;
		else if (e.handle)
			rc = -ENOMEM; /* cannot even say which leases to give back */
	}
	if (nl) {
		size_t at;
		begin(c, KVN_CP_RELEASE, 0, nl, 0, &at);
		for (uint32_t k = 0; k < nl; k++)
			kvn_cp_put_u64(&c->out, leases[k]);
		if (end(c, at))
			rc = -ENOMEM;
	}
	free(leases);
	return rc ? fail(c, rc, "get: out of memory giving back %u leases", f->n) : 0;
}

static void
on_codes(struct frame *f, struct kvn_cp_rd *rd)
{
	struct rstate *rs = f->rs;
	for (uint32_t i = 0; i < f->n; i++) {
		int32_t v = (int32_t)kvn_cp_get_u32(rd);
		uint32_t k = f->keys ? f->keys[i] : i;
		if (k < rs->req->n && !f->abort)
			rs->rc[k] = rd->bad ? -EPROTO : v;
	}
}

/* A synchronous call's reply: kept for the call, which reads it once this returns. */
static void
on_sync(struct kvn_client *c, struct frame *f, const struct kvn_cp_hdr *h, const uint8_t *body)
{
	struct syncop *so = f->sync;
	*so = (struct syncop){
	    .done = true, .status = h->status, .flags = h->flags, .count = h->count};
	if (h->status < 0)
		fail(c, h->status, "kvnode %s: %.*s", kvn_cp_op_name(f->op), (int)h->body_len,
		     (const char *)body);
	else if (h->body_len && !(so->body = malloc((size_t)h->body_len)))
		so->status = fail(c, -ENOMEM, "%s: out of memory for a reply of %" PRIu64 " bytes",
				  kvn_cp_op_name(f->op), h->body_len);
	else if (h->body_len)
		memcpy(so->body, body, so->len = (size_t)h->body_len);
}

/* The reply to the oldest frame: 1 when it completed a synchronous call, else 0 (requests
 * that completed are counted by c->nreqs). */
static int
handle_reply(struct kvn_client *c, const struct kvn_cp_hdr *h, const uint8_t *body)
{
	struct frame *f = &c->frames[c->fhead];
	c->fhead = (c->fhead + 1) % MAX_FRAMES;
	c->nframes--;
	if (!f->rs) {
		on_sync(c, f, h, body);
		return 1;
	}
	struct rstate *rs = f->rs;
	struct kvn_cp_rd rd = {body, (size_t)h->body_len, 0, false};
	int rc = 0;
	if (h->status < 0) {
		fail(c, h->status, "kvnode %s: %.*s", kvn_cp_op_name(f->op), (int)h->body_len,
		     (const char *)body);
		fail_all_keys(rs, h->status);
	} else if (f->op == KVN_CP_RESERVE) {
		rc = on_reserved(c, f, &rd);
	} else if (f->op == KVN_CP_GET) {
		rc = on_entries(c, f, &rd);
	} else if (f->op == KVN_CP_COMMIT || f->op == KVN_CP_REMOVE || f->op == KVN_CP_CONTAINS) {
		on_codes(f, &rd);
	}
	free(f->keys);
	if (--rs->frames == 0)
		complete(c, rs);
	if (rc) /* the node frees what this client held when the connection goes */
		break_conn(c, rc);
	return 0;
}

/* Handles every complete reply in the input buffer. */
static int
drain_input(struct kvn_client *c)
{
	size_t off = 0;
	int done = 0;
	while (c->in.len - off >= KVN_CP_HDR_SIZE && !c->broken) {
		struct kvn_cp_hdr h;
		kvn_cp_hdr_decode(c->in.p + off, &h);
		char why[200];
		int rc = kvn_cp_hdr_validate(&h, true, why, sizeof(why));
		if (!rc && (!c->nframes || h.id != c->frames[c->fhead].id))
			rc = -EPROTO,
			snprintf(why, sizeof(why), "a reply to no request (id %" PRIu64 ")", h.id);
		if (rc) {
			fail(c, -EPROTO, "the kvnode node sent a bad reply: %s", why);
			break_conn(c, -EPROTO);
			return -EPROTO;
		}
		if (c->in.len - off - KVN_CP_HDR_SIZE < h.body_len)
			break;
		size_t before = c->nreqs;
		int synced = handle_reply(c, &h, c->in.p + off + KVN_CP_HDR_SIZE);
		done += (int)(before - c->nreqs) + synced;
		off += KVN_CP_HDR_SIZE + (size_t)h.body_len;
	}
	if (off) {
		memmove(c->in.p, c->in.p + off, c->in.len - off);
		c->in.len -= off;
	}
	return done;
}

/* Reads what the socket has, without blocking. */
static int
read_input(struct kvn_client *c)
{
	for (;;) {
		if (!kvn_cp_spare(&c->in, 65536))
			return -ENOMEM;
		size_t room = c->in.cap - c->in.len;
		ssize_t n = recv(c->fd, c->in.p + c->in.len, room, MSG_DONTWAIT);
		if (n > 0) {
			c->in.len += (size_t)n;
			if ((size_t)n < room)
				return 0; /* a short read emptied the socket: no second recv */
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return 0;
		return n == 0 ? -ECONNRESET : -errno;
	}
}

static void
break_conn(struct kvn_client *c, int rc)
{
	if (c->broken)
		return;
	c->broken = rc;
	shutdown(c->fd, SHUT_RDWR);
	while (c->nframes) {
		struct frame *f = &c->frames[c->fhead];
		c->fhead = (c->fhead + 1) % MAX_FRAMES;
		c->nframes--;
		if (!f->rs) {
			*f->sync = (struct syncop){.done = true, .status = rc};
			continue;
		}
		free(f->keys);
		fail_all_keys(f->rs, rc);
		if (--f->rs->frames == 0)
			complete(c, f->rs);
	}
}

int
kvn_client_progress(struct kvn_client *c, int timeout_ms)
{
	uint64_t deadline = timeout_ms < 0 ? UINT64_MAX : kvn_now_ms() + (uint64_t)timeout_ms;
	int done = 0;
	for (;;) {
		if (c->broken)
			return done ? done : c->broken;
		int rc = out_due(c) ? flush(c) : 0;
		if (rc)
			return done ? done : rc;
		if ((rc = read_input(c)) < 0) {
			fail(c, rc, "the kvnode connection broke: %s", kvn_strerror(rc));
			break_conn(c, rc == -ECONNRESET ? -ENOTCONN : rc);
			continue;
		}
		rc = drain_input(c);
		if (rc < 0)
			continue;
		done += rc;
		if (out_due(c) && (rc = flush(c)))
			continue;
		if (done || !c->nframes)
			return done;
		uint64_t now = kvn_now_ms();
		if (now >= deadline)
			return 0;
		uint64_t wait = deadline - now;
		struct pollfd pf = {.fd = c->fd, .events = POLLIN | (out_due(c) ? POLLOUT : 0)};
		if (poll(&pf, 1, wait > INT32_MAX ? INT32_MAX : (int)wait) < 0 && errno != EINTR)
			return -errno;
	}
}

int
kvn_client_wait(struct kvn_client *c, struct kvn_client_req *req, int timeout_ms)
{
	uint64_t deadline = kvn_now_ms() + (uint64_t)(timeout_ms < 0 ? c->timeout_ms : timeout_ms);
	while (req->priv[0]) {
		uint64_t now = kvn_now_ms();
		if (now >= deadline)
			return -ETIMEDOUT;
		int rc = kvn_client_progress(c, (int)(deadline - now));
		if (rc < 0 && req->priv[0])
			return rc;
	}
	return 0;
}

/* ------------------------------------------------------------------------------------------
 * Submitting
 * ------------------------------------------------------------------------------------------ */

/* The length of key i's value in a put: its one buffer's, or its pieces' together. */
static size_t
value_len(const struct kvn_client_req *req, const struct gather *g, size_t i)
{
	if (!g)
		return req->lens_in[i];
	size_t t = 0;
	for (int k = 0; k < g->iovcnt[i]; k++) /* saturating: past max_chunk_size either way */
		t = g->iov[i][k].iov_len > SIZE_MAX - t ? SIZE_MAX : t + g->iov[i][k].iov_len;
	return t;
}

/* Key i's value in a put: its bytes are there, and it fits the node's max_chunk_size. */
static int
check_value(struct kvn_client *c, const struct kvn_client_req *req, const struct gather *g,
	    size_t i)
{
	const char *key = req->keys[i];
	if (!g && (!req->data || !req->lens_in || (!req->data[i] && req->lens_in[i])))
		return fail(c, -EINVAL, "put %s: no data", key);
	if (g && (!g->iov || !g->iovcnt))
		return fail(c, -EINVAL, "put %s: no pieces", key);
	if (g && (g->iovcnt[i] < 0 || (g->iovcnt[i] > 0 && !g->iov[i])))
		return fail(c, -EINVAL, "put %s: %d pieces%s", key, g->iovcnt[i],
			    g->iovcnt[i] < 0 ? "" : " and no iovec array");
	for (int k = 0; g && k < g->iovcnt[i]; k++)
		if (!g->iov[i][k].iov_base && g->iov[i][k].iov_len)
			return fail(c, -EINVAL, "put %s: piece %d has %zu bytes and no base", key,
				    k, g->iov[i][k].iov_len);
	size_t len = value_len(req, g, i);
	if (len > c->hello.max_chunk)
		return fail(c, -EMSGSIZE,
			    "put %s: %zu bytes is more than the node's max_chunk_size (%" PRIu64
			    ")",
			    key, len, c->hello.max_chunk);
	return 0;
}

static int
check_req(struct kvn_client *c, const struct kvn_client_req *req, const struct gather *g)
{
	/* a caller built against ABI 2.2 or 2.3 has the request without mem */
	if (KVN_ABI_MAJOR_OF(req->abi) != KVN_ABI_MAJOR ||
	    req->size < offsetof(struct kvn_client_req, mem))
		return fail(c, -EINVAL,
			    "struct kvn_client_req not started from KVN_CLIENT_REQ_INIT");
	if (KVN_ABI_HAS(req, mem_device) && req->mem != KVN_CLIENT_MEM_HOST) {
		if (req->mem != KVN_CLIENT_MEM_GPU)
			return fail(c, -EINVAL, "unknown request memory kind %d", (int)req->mem);
		if (req->op != KVN_CLIENT_GET_INTO && req->op != KVN_CLIENT_PUT)
			return fail(c, -EINVAL,
				    "device memory is for GET_INTO and PUT requests only");
		if (g)
			return fail(c, -EINVAL, "a gather put takes host memory only");
	}
	if (req->op < KVN_CLIENT_GET || req->op > KVN_CLIENT_CONTAINS_PREFIX)
		return fail(c, -EINVAL, "unknown request op %d", (int)req->op);
	if (req->n == 0 || req->n > KVN_CP_BATCH_MAX || req->n > c->hello.max_batch)
		return fail(c, -EINVAL, "a request of %zu keys (1 to %u)", req->n,
			    c->hello.max_batch < KVN_CP_BATCH_MAX ? c->hello.max_batch
								  : KVN_CP_BATCH_MAX);
	if (!req->keys)
		return fail(c, -EINVAL, "a request without keys");
	for (size_t i = 0; i < req->n; i++) {
		struct kvn_key k;
		char why[200];
		if (!req->keys[i])
			return fail(c, -EINVAL, "key %zu of the request is NULL", i);
		if (kvn_key_parse(&k, req->keys[i], strlen(req->keys[i]), why, sizeof(why)) < 0)
			return fail(c, -EINVAL, "key \"%.80s\": %s", req->keys[i], why);
		int rc = req->op == KVN_CLIENT_PUT ? check_value(c, req, g, i) : 0;
		if (rc)
			return rc;
	}
	if (req->op == KVN_CLIENT_GET && !req->views)
		return fail(c, -EINVAL, "a GET request without views");
	if (req->op == KVN_CLIENT_GET_INTO && (!req->dst || !req->caps))
		return fail(c, -EINVAL, "a GET_INTO request without dst or caps");
	return 0;
}

/* kvn_client_submit, or with g a gather put (kvn_client_batch_putv). */
static int
submit(struct kvn_client *c, struct kvn_client_req *req, const struct gather *g)
{
	int rc = check_req(c, req, g);
	if (rc)
		return rc;
	if (on_gpu(req) && (rc = gpu_ready(c, req->mem_device)))
		return rc;
	if (c->broken)
		return fail(c, -ENOTCONN, "the kvnode connection is broken (%s): open a new client",
			    kvn_strerror(c->broken));
	if (c->nreqs >= MAX_INFLIGHT || c->nframes + 2 > MAX_FRAMES)
		return fail(c, -EAGAIN, "%d requests in flight already: progress them first",
			    MAX_INFLIGHT);
	bool put = req->op == KVN_CLIENT_PUT;
	struct rstate *rs = calloc(1, sizeof(*rs));
	if (rs)
		rs->rc = calloc(req->n, sizeof(int));
	if (rs && put)
		rs->resv = calloc(req->n, sizeof(uint64_t));
	if (rs && put && g)
		rs->own_lens = malloc(req->n * sizeof(size_t));
	if (!rs || !rs->rc || (put && !rs->resv) || (put && g && !rs->own_lens)) {
		if (rs)
			rstate_free(rs);
		return fail(c, -ENOMEM, "out of memory");
	}
	rs->req = req;
	if (g) {
		rs->g = *g;
		for (size_t i = 0; i < req->n; i++)
			rs->own_lens[i] = value_len(req, g, i);
	}
	rs->lens = g ? rs->own_lens : req->lens_in;
	static const uint16_t wire[] = {
	    [KVN_CLIENT_GET] = KVN_CP_GET,
	    [KVN_CLIENT_GET_INTO] = KVN_CP_GET,
	    [KVN_CLIENT_PUT] = KVN_CP_RESERVE,
	    [KVN_CLIENT_REMOVE] = KVN_CP_REMOVE,
	    [KVN_CLIENT_CONTAINS_PREFIX] = KVN_CP_CONTAINS,
	};
	uint16_t op = wire[req->op];
	size_t at, mark = c->out.len;
	struct frame *f = frame_push(c, op, rs, (uint32_t)req->n, NULL);
	begin(c, op, req->op == KVN_CLIENT_CONTAINS_PREFIX ? KVN_CP_F_PREFIX : 0, (uint32_t)req->n,
	      f->id, &at);
	for (size_t i = 0; i < req->n; i++) {
		kvn_cp_put_key(&c->out, req->keys[i], strlen(req->keys[i]));
		if (op == KVN_CP_RESERVE)
			kvn_cp_put_u64(&c->out, rs->lens[i]);
	}
	if (end(c, at)) {
		c->out.len = mark;
		c->out.err = false;
		c->nframes--;
		c->next_id--;
		rstate_free(rs);
		return fail(c, -ENOMEM, "out of memory");
	}
	req->priv[0] = (uint64_t)(uintptr_t)rs;
	c->nreqs++;
	send_frames(c);
	return 0;
}

int
kvn_client_submit(struct kvn_client *c, struct kvn_client_req *req)
{
	return submit(c, req, NULL);
}

/* A synchronous call: submit, then wait; a request the node does not answer in time breaks
 * the connection, so that nothing of the caller's stack stays in flight. */
static int
run(struct kvn_client *c, struct kvn_client_req *req, const struct gather *g)
{
	int rc = submit(c, req, g);
	if (rc) {
		for (size_t i = 0; req->rcs && i < req->n; i++)
			req->rcs[i] = rc;
		return req->status = rc;
	}
	rc = kvn_client_wait(c, req, -1);
	if (rc == -ETIMEDOUT) {
		fail(c, rc, "the kvnode node did not answer within %d ms", c->timeout_ms);
		break_conn(c, -ETIMEDOUT);
	}
	if (req->status < 0 && !strcmp(c->err, "no error"))
		fail(c, req->status, "%s", kvn_strerror(req->status));
	return req->status;
}

/* The error of key i, named in c->err. */
static int
key_error(struct kvn_client *c, const char *what, const char *key, int rc)
{
	if (rc >= 0 || rc == -EINVAL || rc == -EMSGSIZE || rc == -EAGAIN)
		return rc; /* refused before sending: the message says why */
	if (c->broken)
		return fail(c, rc, "%s %s: the kvnode connection broke: %s", what, key,
			    kvn_strerror(c->broken));
	return fail(c, rc, "%s %s: %s", what, key,
		    rc == -ENOENT ? "no node of the cluster holds it" : kvn_strerror(rc));
}

static int
first_error(struct kvn_client *c, const char *what, const char *const *keys, size_t n,
	    const int *rcs, int status)
{
	if (status == -EINVAL || status == -EMSGSIZE || status == -EAGAIN)
		return status; /* refused before sending: the message says why */
	for (size_t i = 0; i < n; i++)
		if (rcs[i] < 0)
			return key_error(c, what, keys[i], rcs[i]);
	return status;
}

int
kvn_client_batch_get(struct kvn_client *c, const char *const *keys, size_t n,
		     struct kvn_view *views, int *rcs)
{
	int own[64], *r = rcs ? rcs : (n <= 64 ? own : NULL);
	struct kvn_client_req req = {KVN_CLIENT_REQ_INIT, .op = KVN_CLIENT_GET, .n = n,
				     .keys = keys,	  .views = views,	.rcs = r};
	int rc = run(c, &req, NULL);
	return r && rc < 0 ? first_error(c, "get", keys, n, r, rc) : rc;
}

int
kvn_client_get(struct kvn_client *c, const char *key, struct kvn_view *out)
{
	int rc;
	kvn_client_batch_get(c, &key, 1, out, &rc);
	return key_error(c, "get", key, rc);
}

void
kvn_client_release(struct kvn_client *c, struct kvn_view *views, size_t n)
{
	size_t at, cnt = 0;
	for (size_t i = 0; i < n; i++)
		cnt += views[i].lease != 0;
	if (!cnt || c->broken) {
		for (size_t i = 0; i < n; i++)
			views[i] = (struct kvn_view){NULL, 0, 0};
		return;
	}
	begin(c, KVN_CP_RELEASE, 0, (uint32_t)cnt, 0, &at);
	for (size_t i = 0; i < n; i++) {
		if (views[i].lease)
			kvn_cp_put_u64(&c->out, views[i].lease);
		views[i] = (struct kvn_view){NULL, 0, 0};
	}
	if (end(c, at))
		break_conn(c, -ENOMEM); /* the node frees the leases with the connection */
	else if (out_due(c))
		flush(c); /* else it goes with the next frame or after the last reply */
}

int
kvn_client_batch_get_into(struct kvn_client *c, const char *const *keys, size_t n, void *const *dst,
			  const size_t *caps, size_t *lens, int *rcs)
{
	int own[64], *r = rcs ? rcs : (n <= 64 ? own : NULL);
	struct kvn_client_req req = {KVN_CLIENT_REQ_INIT,
				     .op = KVN_CLIENT_GET_INTO,
				     .n = n,
				     .keys = keys,
				     .dst = dst,
				     .caps = caps,
				     .lens = lens,
				     .rcs = r};
	int rc = run(c, &req, NULL);
	return r && rc < 0 ? first_error(c, "get", keys, n, r, rc) : rc;
}

int
kvn_client_get_into(struct kvn_client *c, const char *key, void *dst, size_t cap, size_t *len)
{
	int rc;
	size_t l = 0;
	kvn_client_batch_get_into(c, &key, 1, &dst, &cap, &l, &rc);
	if (len)
		*len = l;
	return key_error(c, "get", key, rc);
}

int
kvn_client_batch_put(struct kvn_client *c, const char *const *keys, size_t n,
		     const void *const *data, const size_t *lens, int *rcs)
{
	int own[64], *r = rcs ? rcs : (n <= 64 ? own : NULL);
	struct kvn_client_req req = {
	    KVN_CLIENT_REQ_INIT, .op = KVN_CLIENT_PUT, .n = n,	.keys = keys,
	    .data = data,	 .lens_in = lens,      .rcs = r};
	int rc = run(c, &req, NULL);
	return r && rc < 0 ? first_error(c, "put", keys, n, r, rc) : rc;
}

int
kvn_client_put(struct kvn_client *c, const char *key, const void *data, size_t len)
{
	int rc;
	kvn_client_batch_put(c, &key, 1, &data, &len, &rc);
	return key_error(c, "put", key, rc);
}

int
kvn_client_batch_putv(struct kvn_client *c, const char *const *keys, size_t n,
		      const struct iovec *const *iovs, const int *iovcnts, int *rcs)
{
	int own[64], *r = rcs ? rcs : (n <= 64 ? own : NULL);
	struct kvn_client_req req = {KVN_CLIENT_REQ_INIT, .op = KVN_CLIENT_PUT, .n = n,
				     .keys = keys, .rcs = r};
	int rc = run(c, &req, &(struct gather){iovs, iovcnts});
	return r && rc < 0 ? first_error(c, "put", keys, n, r, rc) : rc;
}

int
kvn_client_putv(struct kvn_client *c, const char *key, const struct iovec *iov, int iovcnt)
{
	int rc;
	kvn_client_batch_putv(c, &key, 1, &iov, &iovcnt, &rc);
	return key_error(c, "put", key, rc);
}

int
kvn_client_batch_remove(struct kvn_client *c, const char *const *keys, size_t n, int *rcs)
{
	int own[64], *r = rcs ? rcs : (n <= 64 ? own : NULL);
	struct kvn_client_req req = {KVN_CLIENT_REQ_INIT, .op = KVN_CLIENT_REMOVE, .n = n,
				     .keys = keys, .rcs = r};
	int rc = run(c, &req, NULL);
	return r && rc < 0 ? first_error(c, "remove", keys, n, r, rc) : rc;
}

int
kvn_client_remove(struct kvn_client *c, const char *key)
{
	int rc;
	kvn_client_batch_remove(c, &key, 1, &rc);
	return key_error(c, "remove", key, rc);
}

int
kvn_client_contains_prefix(struct kvn_client *c, const char *const *keys, size_t n, size_t *found)
{
	struct kvn_client_req req = {KVN_CLIENT_REQ_INIT, .op = KVN_CLIENT_CONTAINS_PREFIX, .n = n,
				     .keys = keys};
	int rc = run(c, &req, NULL);
	*found = rc == 0 ? req.found : 0;
	return rc;
}

int
kvn_client_contains(struct kvn_client *c, const char *key)
{
	size_t found = 0;
	int rc = kvn_client_contains_prefix(c, &key, 1, &found);
	return rc < 0 ? key_error(c, "contains", key, rc) : found == 1;
}

/* ------------------------------------------------------------------------------------------
 * Synchronous calls of one frame: PING, LIST
 * ------------------------------------------------------------------------------------------ */

/* Starts the frame of op (count entries); its body follows with kvn_cp_put_*, then
 * sync_wait. The node must know op: an older one closes the connection on an op it lacks. */
static int
sync_begin(struct kvn_client *c, uint16_t op, uint32_t count, struct syncop *so, size_t *at,
	   size_t *mark)
{
	*so = (struct syncop){0};
	*at = *mark = 0; /* set on every path: a Release build cannot prove sync_wait's use */
	if (c->hello.minor < kvn_cp_op_minor(op))
		return fail(c, -EOPNOTSUPP,
			    "%s is not supported by this kvnode node: it speaks client protocol "
			    "%u.%u, %s came with %u.%u (this library speaks %u.%u); upgrade the "
			    "node",
			    kvn_cp_op_name(op), c->hello.major, c->hello.minor, kvn_cp_op_name(op),
			    KVN_CP_MAJOR, kvn_cp_op_minor(op), KVN_CP_MAJOR, KVN_CP_MINOR);
	if (c->broken)
		return fail(c, -ENOTCONN, "the kvnode connection is broken (%s): open a new client",
			    kvn_strerror(c->broken));
	if (c->nframes + 1 > MAX_FRAMES)
		return fail(c, -EAGAIN, "%d requests in flight already: progress them first",
			    MAX_INFLIGHT);
	*mark = c->out.len;
	struct frame *f = frame_push(c, op, NULL, count, NULL);
	f->sync = so;
	begin(c, op, 0, count, f->id, at);
	return 0;
}

/* Sends the frame and progresses until its reply came: so->status, and so holds the reply. A
 * node that does not answer within the client's timeout breaks the connection, as in run. */
static int
sync_wait(struct kvn_client *c, struct syncop *so, size_t at, size_t mark)
{
	if (end(c, at)) {
		c->out.len = mark;
		c->out.err = false;
		c->nframes--;
		c->next_id--;
		return fail(c, -ENOMEM, "out of memory");
	}
	send_frames(c);
	uint64_t deadline = kvn_now_ms() + (uint64_t)c->timeout_ms;
	while (!so->done) {
		uint64_t now = kvn_now_ms();
		if (now >= deadline) {
			fail(c, -ETIMEDOUT, "the kvnode node did not answer within %d ms",
			     c->timeout_ms);
			break_conn(c, -ETIMEDOUT);
			break;
		}
		int rc = kvn_client_progress(c, (int)(deadline - now));
		if (rc < 0 && !so->done) /* poll failed: the frame cannot be waited for */
			break_conn(c, rc);
	}
	if (so->status < 0 && !strcmp(c->err, "no error"))
		fail(c, so->status, "%s", kvn_strerror(so->status));
	return so->status;
}

int
kvn_client_ping(struct kvn_client *c)
{
	struct syncop so;
	size_t at, mark;
	int rc = sync_begin(c, KVN_CP_PING, 0, &so, &at, &mark);
	if (!rc)
		rc = sync_wait(c, &so, at, mark);
	free(so.body);
	return rc;
}

/* Byte order of key texts (the node's order of a listing). */
static int
keycmp(const char *a, size_t an, const char *b, size_t bn)
{
	int r = memcmp(a, b, an < bn ? an : bn);
	return r ? r : (an > bn) - (an < bn);
}

/* One page of a listing: the keys after cur (curlen bytes; 0: from the first), at most want.
 * fn runs for each; cur becomes the last one fn saw; *seen counts them. 0 when the listing
 * ended, 1 when keys follow cur, 2 when the page was taken whole and more pages follow. */
static int
list_page(struct kvn_client *c, char *cur, size_t *curlen, uint32_t want, kvn_client_list_fn fn,
	  void *ctx, size_t *seen)
{
	struct syncop so;
	size_t at, mark;
	int rc = sync_begin(c, KVN_CP_LIST, *curlen ? 1 : 0, &so, &at, &mark);
	if (!rc) {
		kvn_cp_put_u32(&c->out, want);
		kvn_cp_put_u32(&c->out, 0);
		if (*curlen)
			kvn_cp_put_key(&c->out, cur, *curlen);
		rc = sync_wait(c, &so, at, mark);
	}
	if (rc) {
		free(so.body);
		return rc;
	}
	bool more = so.flags & KVN_CP_F_MORE;
	/* Keys in order and after the cursor, so that a listing always advances. */
	if (so.count > want || (more && so.count == 0))
		rc = fail(c, -EPROTO, "LIST: the node sent %u keys%s for a page of %u", so.count,
			  more ? " and more to follow" : "", want);
	struct kvn_cp_rd rd = {so.body, so.len, 0, false};
	uint32_t i = 0;
	int stop = 0;
	for (; !rc && i < so.count && !stop; i++) {
		uint64_t len = kvn_cp_get_u64(&rd);
		const char *k;
		size_t n = kvn_cp_get_key(&rd, &k);
		if (rd.bad || memchr(k, '\0', n) || keycmp(k, n, cur, *curlen) <= 0) {
			rc = fail(c, -EPROTO, "LIST: entry %u of the node's page is %s", i,
				  rd.bad ? "malformed" : "out of order");
			break;
		}
		memcpy(cur, k, n);
		cur[n] = '\0';
		*curlen = n;
		++*seen;
		stop = fn(ctx, cur, len);
	}
	if (!rc && !stop && rd.off != rd.len)
		rc = fail(c, -EPROTO, "LIST: %zu bytes after the page's %u keys", rd.len - rd.off,
			  so.count);
	free(so.body);
	if (rc)
		return rc;
	if (i < so.count)
		return 1;
	return more ? (stop ? 1 : 2) : 0;
}

int
kvn_client_list(struct kvn_client *c, const char *after, size_t max, kvn_client_list_fn fn,
		void *ctx)
{
	char cur[KVN_KEY_MAX + 1] = "";
	size_t curlen = after ? strlen(after) : 0, seen = 0;
	if (!fn)
		return fail(c, -EINVAL, "list: no callback");
	if (curlen) {
		struct kvn_key k;
		char why[200];
		if (kvn_key_parse(&k, after, curlen, why, sizeof(why)) < 0)
			return fail(c, -EINVAL, "list after \"%.80s\": %s", after, why);
		memcpy(cur, after, curlen + 1);
	}
	for (;;) {
		size_t want = max ? max - seen : KVN_CP_BATCH_MAX;
		int rc = list_page(c, cur, &curlen,
				   want < KVN_CP_BATCH_MAX ? (uint32_t)want : KVN_CP_BATCH_MAX, fn,
				   ctx, &seen);
		if (rc != 2)
			return rc;
		if (max && seen == max)
			return 1;
	}
}

void
kvn_client_close(struct kvn_client *c)
{
	if (!c)
		return;
	if (!c->broken)
		fail(c, -ECANCELED, "the client was closed");
	break_conn(c, -ECANCELED);
	close(c->fd);
	unmap_pool(c);
	kvn_cp_buf_free(&c->out);
	kvn_cp_buf_free(&c->in);
	gpu_close(c);
	free(c);
}
