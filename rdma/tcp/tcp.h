/* TCP transport internals shared by tcp.c (instance, registrations, progress thread),
 * kvn_tcp_read.c (the reading side: endpoints) and tcp_serve.c (the owner's responder). */
#ifndef KVN_RDMA_TCP_TCP_H
#define KVN_RDMA_TCP_TCP_H

#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "kvnode/transport.h"
#include "rdma/devreg.h"
#include "core/auth.h"
#include "core/clock.h"
#include "core/netaddr.h"
#include "rdma/auth.h"

/*
 * Wire protocol, version 3 (all fields little-endian). Connection set-up is a challenge-response
 * in both directions (core/auth.h), before any request is read:
 *   reader -> owner   HELLO      header (flags: TCP_F_TOKEN when it has an auth_token), nonce_r
 *   owner  -> reader  CHALLENGE  header (status 0, or EPROTO: another version), nonce_o,
 *                                proof_o = MAC("kvnode tcp owner v3" | nonce_r | nonce_o)
 *   reader -> owner   PROOF      header, proof_r = MAC("kvnode tcp reader v3" | nonce_o | nonce_r)
 *   owner  -> reader  VERDICT    header (status 0, or EACCES and the owner closes)
 * header = magic u32 | version u16 | status u16 | flags u32 | reserved u32. A proof is the
 * HMAC-SHA256 under the auth_token's key, zeros without a token. An owner with a token serves
 * only readers whose proof checks; a reader with a token reads only from an owner whose proof
 * checks, so neither side can be impersonated without the token, and a proof seen on the wire
 * is useless on any other connection (both nonces are fresh). The whole set-up must finish
 * within the owner's hello timeout. Version 2 readers (8-byte header, version and status in its
 * second word) are answered with such a header carrying EPROTO.
 * Then the reader sends 32-byte read requests and the responder answers each, in order, with a
 * 24-byte response header followed (status 0 only) by exactly len payload bytes. A read longer
 * than TCP_MAX_MSG is split by the reader into several requests, so one response never
 * monopolises a connection for long and the responder bounds what it accepts.
 */
#define TCP_MAGIC	   0x544e564bu /* "KVNT" */
#define TCP_VERSION	   3u	       /* 3: challenge-response set-up */
#define TCP_REQ_READ	   0x52u
#define TCP_HDR_SIZE	   16
#define TCP_V2_HDR_SIZE	   8 /* magic, version | status << 16: what a version 2 peer reads */
#define TCP_F_TOKEN	   1u
#define TCP_HELLO_SIZE	   (TCP_HDR_SIZE + KVN_AUTH_NONCE)
#define TCP_CHALLENGE_SIZE (TCP_HDR_SIZE + KVN_AUTH_NONCE + KVN_AUTH_MAC)
#define TCP_PROOF_SIZE	   (TCP_HDR_SIZE + KVN_AUTH_MAC)
#define TCP_VERDICT_SIZE   TCP_HDR_SIZE
#define TCP_OWNER_LABEL	   "kvnode tcp owner v3"
#define TCP_READER_LABEL   "kvnode tcp reader v3"
#define TCP_REQ_SIZE	   32
#define TCP_RESP_SIZE	   24
#define TCP_MAX_MSG	   (1u << 20)

/* Why the responder refused a request (the reader turns it into the message). */
enum tcp_reason {
	TCP_OK = 0,
	TCP_UNKNOWN_RKEY = 1,
	TCP_OUT_OF_RANGE = 2,
	TCP_ZERO_LEN = 3,
	TCP_TOO_LONG = 4,
	TCP_BAD_OP = 5,
};

struct tcp_req {
	uint32_t op;
	uint32_t rkey;
	uint64_t seq;
	uint64_t addr;
	uint64_t len;
};

struct tcp_resp {
	uint32_t status; /* 0 or a positive errno */
	uint32_t reason; /* enum tcp_reason */
	uint64_t seq;
	uint64_t len; /* payload bytes that follow */
};

void kvn_tcp_req_encode(const struct tcp_req *r, uint8_t out[TCP_REQ_SIZE]);
void kvn_tcp_req_decode(const uint8_t in[TCP_REQ_SIZE], struct tcp_req *r);
void kvn_tcp_resp_encode(const struct tcp_resp *r, uint8_t out[TCP_RESP_SIZE]);
void kvn_tcp_resp_decode(const uint8_t in[TCP_RESP_SIZE], struct tcp_resp *r);
struct tcp_hdr {
	uint32_t magic;
	uint32_t version;
	uint32_t status; /* 0 or a positive errno */
	uint32_t flags;
};
void kvn_tcp_hdr_encode(uint32_t status, uint32_t flags, uint8_t out[TCP_HDR_SIZE]);
/* Decodes the first TCP_V2_HDR_SIZE bytes (all a version 2 peer sends) and, when have is
 * enough, the rest. */
void kvn_tcp_hdr_decode(const uint8_t *in, size_t have, struct tcp_hdr *h);
const char *kvn_tcp_reason_str(uint32_t reason);

extern const struct kvn_transport_ops kvn_transport_tcp;

/* What the progress thread's epoll events point at. */
enum tcp_pollable_kind { TCP_P_WAKE, TCP_P_LISTEN, TCP_P_SERVE, TCP_P_READ };
struct tcp_pollable {
	enum tcp_pollable_kind kind;
	int fd;
	uint32_t events; /* currently registered with epoll */
};

struct kvn_tp_mr {
	struct kvn_transport *tp;
	char *base;    /* the bytes */
	uint64_t addr; /* what reads name them by: base, or a staged device range's pointer */
	uint64_t len;
	struct kvn_devreg_release rel; /* staged device memory: the owner's area, for dereg */
	uint32_t rkey;
	/* Responses streaming from it plus reads landing in it; dereg waits for 0. */
	atomic_int users;
	atomic_bool dead;
};

struct tcp_serve_conn; /* tcp_serve.c */
struct tcp_op; /* one posted read, below */

struct kvn_transport {
	struct kvn_transport_cfg cfg; /* auth_token NULL: the token lives on as auth only */
	struct kvn_auth auth;
	int epfd;
	struct tcp_pollable wake; /* eventfd */
	pthread_t thread;
	bool thread_started;
	atomic_bool stop;
	atomic_int work; /* set by posters and ep_close: the thread looks at endpoints */
	atomic_int dereg_waiting; /* dereg calls waiting for users to drop */

	pthread_mutex_t lock; /* regions, endpoint list, closing handshakes */
	pthread_cond_t cond;
	struct kvn_tp_mr **regions;
	size_t nregions, capregions;
	struct kvn_tp_ep *eps; /* linked through ep->next */

	/* Responder: touched by the progress thread only, after listen. */
	struct tcp_pollable listener;
	char bound[80];
	struct tcp_serve_conn *serve_conns;
	unsigned nserve;		/* connections in serve_conns */
	uint64_t listen_paused_until;	/* accept hit EMFILE/ENFILE: listener off until then */
	struct kvn_transport_stats st;	/* counters of the responder (atomic reads elsewhere) */

	/* Reading side, progress thread only: request chunks sent and not yet answered, and
	 * reads completed whose callbacks run once no lock is held. */
	uint64_t chunks_out;
	struct tcp_op *done_head, *done_tail;
};

/* Instance helpers (tcp.c). */
pid_t kvn_tcp_gettid(void);
bool kvn_tcp_on_progress_thread(const struct kvn_transport *tp);
void kvn_tcp_kick(struct kvn_transport *tp);
int kvn_tcp_epoll_set(struct kvn_transport *tp, struct tcp_pollable *p, uint32_t events);
void kvn_tcp_epoll_del(struct kvn_transport *tp, struct tcp_pollable *p);
void kvn_tcp_mr_put(struct kvn_tp_mr *mr);
/* The registration named rkey with one more user, or NULL. */
struct kvn_tp_mr *kvn_tcp_mr_get(struct kvn_transport *tp, uint32_t rkey);
void kvn_tcp_tune_socket(int fd);

/* ---------------------------------------------------------------------------------------------
 * Reading side: endpoints (tcp_ep.c) and their progress-thread half (kvn_tcp_read.c)
 * ------------------------------------------------------------------------------------------- */

#define TCP_MAX_CONNS 16

enum ep_state { EP_UP, EP_BROKEN };

struct tcp_batch {
	size_t left; /* ops not yet completed; progress thread only */
};

struct tcp_op {
	struct kvn_read *rd;
	struct tcp_batch *batch;
	struct tcp_op *next_done;
	struct kvn_tp_mr *local_mr; /* held (one user) until completion, NULL if refused */
	uint32_t chunks_left;
	int status;
	char *msg;
};

/* A piece of one read, at most TCP_MAX_MSG bytes: one request/response on the wire. */
struct chunk {
	struct tcp_op *op;
	uint64_t off; /* LOCAL_FAIL: the op was refused locally, complete it as it is */
	uint64_t len;
};
#define LOCAL_FAIL UINT64_MAX

struct chunkq {
	struct chunk *v;
	size_t head, n, cap;
};

struct read_conn {
	struct tcp_pollable p; /* first: epoll events point here */
	struct kvn_tp_ep *ep;
	struct chunkq fifo; /* requested (or being requested), answered in this order */
	uint64_t head_seq; /* sequence number of fifo's head */
	uint8_t *out; /* request frames not yet sent */
	size_t out_off, out_len, out_cap;
	uint8_t hdr[TCP_RESP_SIZE];
	size_t hdr_off;
	bool in_payload;
	uint64_t pay_off;
	uint64_t outstanding; /* bytes requested and not yet received, for striping */
	uint64_t last_rx_ms;
};

struct kvn_tp_ep {
	struct kvn_transport *tp;
	struct kvn_tp_ep *next;
	char peer[128];
	char host[KVN_HOST_MAX];
	uint16_t port;
	int timeout_ms;
	atomic_int state; /* enum ep_state */
	pthread_mutex_t reconnect_lock;

	pthread_mutex_t lock; /* subq, rearm, closing */
	struct chunkq subq;
	int new_fds[TCP_MAX_CONNS];
	bool rearm;
	bool closing;
	bool close_failed; /* progress thread: its reads are failed; callbacks pending */
	bool closed; /* under tp->lock: ep_close may free it */

	int nconns;
	struct read_conn conns[TCP_MAX_CONNS];
};

int kvn_tcp_q_push(struct chunkq *q, struct chunk c);
/* malloc'd printf, NULL when out of memory (the reader then reports the bare errno). */
char *kvn_tcp_fmt_msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

int kvn_tcp_op_connect(struct kvn_transport *tp, const char *peer, int timeout_ms,
		       struct kvn_tp_ep **out, char *err, size_t errlen);
void kvn_tcp_ep_close(struct kvn_tp_ep *ep);
int kvn_tcp_read(struct kvn_tp_ep *ep, struct kvn_read *reads, size_t n);
void kvn_tcp_read_event(struct kvn_transport *tp, struct tcp_pollable *p, uint32_t events);
/* Progress thread: takes posted reads, installs reconnected sockets, closes endpoints, fails
 * stalled connections. */
void kvn_tcp_read_work(struct kvn_transport *tp, uint64_t now_ms);
/* Progress thread: fails endpoints reading into a region being deregistered. */
void kvn_tcp_read_drop_dead(struct kvn_transport *tp);
/* Progress thread, at stop: fails every endpoint's reads and closes their sockets. */
void kvn_tcp_read_shutdown(struct kvn_transport *tp);
/* Whether a stalled-connection check is due (some read outstanding). */
bool kvn_tcp_read_busy(struct kvn_transport *tp);

/* Responder (tcp_serve.c). */
int kvn_tcp_op_listen(struct kvn_transport *tp, const char *addr, char *bound, size_t boundlen,
		      char *err, size_t errlen);
void kvn_tcp_serve_event(struct kvn_transport *tp, struct tcp_pollable *p, uint32_t events);
void kvn_tcp_serve_drop_dead(struct kvn_transport *tp);
void kvn_tcp_serve_shutdown(struct kvn_transport *tp);
/* Closes readers past their hello deadline, resumes a paused listener. Progress thread. */
void kvn_tcp_serve_tick(struct kvn_transport *tp, uint64_t now);
/* Milliseconds until kvn_tcp_serve_tick has something to do, -1 when nothing is pending. */
int kvn_tcp_serve_timeout(struct kvn_transport *tp, uint64_t now);
void kvn_tcp_serve_stats(struct kvn_transport *tp, struct kvn_transport_stats *out);

#endif
