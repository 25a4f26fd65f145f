/* Connection management of the verbs transport (rdma_cm): the listener and its accepted QPs,
 * connecting an endpoint (protocol version and the reader's auth proof out, the owner's region
 * descriptors and its proof back, both in the private data), and disconnect events, which fail
 * an endpoint's outstanding reads at once. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "core/log.h"
#include "core/netaddr.h"
#include "rdma/verbs/verbs.h"

#define LOG "verbs"

/* Little-endian on the wire, packed by hand. REQ: magic u32 | proto u16 | flags u16 | nonce
 * (16) | proof (32) = the 56 bytes an RC REQ carries over rdma_cm; proof = MAC(READER_LABEL |
 * nonce | the reader's QP number), zeros without a token. REP: magic u32 | proto u16 | count u8
 * | complete u8 | proof (16: a MAC prefix) | descriptors, within 196 bytes; proof =
 * MAC(OWNER_LABEL | the REQ's nonce | the owner's QP number | the REP's first 8 bytes | the
 * descriptors). REJ: magic u32 | errno u8 | text, within 148. */
#define REQ_SIZE     (8 + KVN_AUTH_NONCE + KVN_AUTH_MAC)
#define REQ_TOKEN    1u /* flags: the reader has an auth_token */
#define REP_PROOF    16
#define REP_HDR	     (8 + REP_PROOF)
#define REP_DESC     20
#define READER_LABEL "kvnode verbs reader v3"
#define OWNER_LABEL  "kvnode verbs owner v3"
#define REJ_HDR	  5
#define REJ_MAX	  148
_Static_assert(REQ_SIZE <= 56, "REQ private data limit");
_Static_assert(VB_SEEN >= 64, "replay window");
_Static_assert(REP_HDR + VB_MAX_DESC * REP_DESC <= 196, "REP private data limit");

struct cm_ev { /* what we keep of an event after acking it */
	enum rdma_cm_event_type type;
	int status;
	uint8_t pdata[196];
	uint8_t plen;
	uint8_t responder_resources; /* in a REQ: the peer's initiator depth (the kernel swaps) */
	uint32_t qp_num;	     /* the other side's QP number (REQ, ESTABLISHED) */
};

static void
put_le(uint8_t *p, uint64_t v, int n)
{
	for (int i = 0; i < n; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t
get_le(const uint8_t *p, int n)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++)
		v |= (uint64_t)p[i] << (8 * i);
	return v;
}

static void
keep_event(const struct rdma_cm_event *ev, struct cm_ev *out)
{
	out->type = ev->event;
	out->status = ev->status;
	out->plen = 0;
	out->responder_resources = ev->param.conn.responder_resources;
	out->qp_num = ev->param.conn.qp_num;
	if (ev->param.conn.private_data && ev->param.conn.private_data_len) {
		out->plen = ev->param.conn.private_data_len > sizeof(out->pdata)
				? sizeof(out->pdata)
				: ev->param.conn.private_data_len;
		memcpy(out->pdata, ev->param.conn.private_data, out->plen);
	}
}

void
kvn_vb_destroy_id(struct rdma_cm_id *id)
{
	if (!id)
		return;
	rdma_disconnect(id); /* lets the other side free its QP now; harmless if already down */
	if (id->qp)
		rdma_destroy_qp(id);
	rdma_destroy_id(id);
}

/* "HOST:PORT" or "[V6]:PORT"; host may be a name. */
static int
parse_addr(const char *s, struct sockaddr_storage *ss, char *err, size_t errlen)
{
	char host[128];
	const char *colon = strrchr(s, ':');
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_flags = AI_NUMERICSERV}, *ai = NULL;
	size_t hl;

	if (!colon || colon == s || !colon[1]) {
		return kvn_seterr(-EINVAL, err, errlen, "address '%s' is not HOST:PORT", s);
	}
	hl = (size_t)(colon - s);
	if (s[0] == '[' && colon[-1] == ']')
		s++, hl -= 2;
	if (hl >= sizeof(host)) {
		return kvn_seterr(-EINVAL, err, errlen, "address '%s': host part too long", s);
	}
	memcpy(host, s, hl);
	host[hl] = 0;
	int rc = getaddrinfo(host, colon + 1, &hints, &ai);
	if (rc || !ai) {
		return kvn_seterr(-EINVAL, err, errlen, "address '%s': %s", s, gai_strerror(rc));
	}
	memset(ss, 0, sizeof(*ss));
	memcpy(ss, ai->ai_addr, ai->ai_addrlen);
	freeaddrinfo(ai);
	return 0;
}

static const char *
devname(struct ibv_context *ctx)
{
	return ctx ? ibv_get_device_name(ctx->device) : "(none)";
}

/* ---------------------------------------------------------------------------------------------
 * The owner's side: accept with the region descriptors, drop connections that go away.
 * --------------------------------------------------------------------------------------------- */

/* Refuses a connect request: the reader learns why (status, a positive errno, and the text)
 * from the REJ's private data. */
static void
reject(struct rdma_cm_id *id, uint8_t status, const char *why)
{
	uint8_t rej[REJ_MAX] = {0};
	size_t len = strnlen(why, REJ_MAX - REJ_HDR - 1);
	put_le(rej, VB_MAGIC, 4);
	rej[4] = status;
	memcpy(rej + REJ_HDR, why, len);
	rdma_reject(id, rej, (uint8_t)(REJ_HDR + len + 1));
}

/* The reader's proof: the MAC of its nonce and its QP number, so a REQ replayed from another
 * QP does not check; an exact replay is caught by the window of nonces seen. */
static bool
reader_proven(struct kvn_transport *tp, const struct cm_ev *ev)
{
	if (!tp->auth.set)
		return true;
	if (!(get_le(ev->pdata + 6, 2) & REQ_TOKEN))
		return false;
	uint8_t qpn[4];
	put_le(qpn, ev->qp_num, 4);
	const uint8_t *nonce = ev->pdata + 8;
	const struct kvn_auth_part parts[] = {{nonce, KVN_AUTH_NONCE}, {qpn, 4}};
	if (!kvn_auth_verify(&tp->auth, READER_LABEL, parts, 2, nonce + KVN_AUTH_NONCE,
			     KVN_AUTH_MAC))
		return false;
	/* Only the cm thread accepts, so the window needs no lock. */
	for (unsigned i = 0; i < VB_SEEN; i++)
		if (!memcmp(tp->seen[i], nonce, KVN_AUTH_NONCE))
			return false;
	memcpy(tp->seen[tp->seen_next++ % VB_SEEN], nonce, KVN_AUTH_NONCE);
	return true;
}

static void
owner_proof(const struct kvn_transport *tp, const uint8_t *nonce, uint32_t qp_num,
	    const uint8_t *rep, size_t ndesc, uint8_t out[KVN_AUTH_MAC])
{
	uint8_t qpn[4];
	put_le(qpn, qp_num, 4);
	const struct kvn_auth_part parts[] = {
	    {nonce, KVN_AUTH_NONCE}, {qpn, 4}, {rep, 8}, {rep + REP_HDR, ndesc * REP_DESC}};
	kvn_auth_mac(&tp->auth, OWNER_LABEL, parts, 4, out);
}

static unsigned
srv_count(struct kvn_transport *tp)
{
	unsigned n = 0;
	pthread_mutex_lock(&tp->lock);
	for (struct vb_srv_conn *c = tp->srv; c; c = c->next)
		n++;
	pthread_mutex_unlock(&tp->lock);
	return n;
}

static void
accept_conn(struct kvn_transport *tp, struct rdma_cm_id *id, const struct cm_ev *ev)
{
	struct ibv_qp_init_attr qa = {
	    .send_cq = tp->cq,
	    .recv_cq = tp->cq,
	    .qp_type = IBV_QPT_RC,
	    .cap = {.max_send_wr = 1, .max_recv_wr = 1, .max_send_sge = 1, .max_recv_sge = 1}};
	struct rdma_conn_param cp = {0};
	uint8_t rep[REP_HDR + VB_MAX_DESC * REP_DESC];
	struct vb_srv_conn *c = NULL;
	uint32_t n = 0, total = 0;
	const char *why = NULL;
	uint8_t status = ECONNREFUSED;
	char peer[INET6_ADDRSTRLEN + 8];

	kvn_sockaddr_format(rdma_get_peer_addr(id), ntohs(rdma_get_dst_port(id)), peer, sizeof(peer));
	if (ev->plen < 8 || get_le(ev->pdata, 4) != VB_MAGIC)
		why = "not a kvnode verbs peer";
	else if (get_le(ev->pdata + 4, 2) != VB_PROTO)
		why = "protocol version mismatch (upgrade both nodes)";
	else if (ev->plen < REQ_SIZE)
		why = "not a kvnode verbs peer (short connect request)";
	else if (!reader_proven(tp, ev)) {
		why = get_le(ev->pdata + 6, 2) & REQ_TOKEN
			  ? "wrong or missing auth_token (its proof does not check, or the "
			    "connect request is a replay)"
			  : "wrong or missing auth_token (it has none, this node has one)";
		status = EACCES;
		__atomic_fetch_add(&tp->st.auth_refused, 1, __ATOMIC_RELAXED);
	} else if (tp->removed)
		why = "this node's RDMA device is being removed";
	else if (id->verbs != tp->ctx)
		why = "request arrived on another RDMA device than this node registered on";
	else if (srv_count(tp) >= tp->max_conns) {
		why = "too many readers (transport_max_connections)";
		status = EBUSY;
		__atomic_fetch_add(&tp->st.refused_full, 1, __ATOMIC_RELAXED);
	} else if (!(c = calloc(1, sizeof(*c))) || rdma_create_qp(id, tp->pd, &qa)) {
		why = "cannot create a QP (out of memory or device limits)";
		__atomic_fetch_add(&tp->st.accept_errors, 1, __ATOMIC_RELAXED);
	}
	if (why) {
		/* Before the REP: a refused reader never learns a region descriptor, and without a
		 * connected QP it cannot READ anything. */
		static struct kvn_ratelimit rl;
		uint64_t missed;
		if (kvn_ratelimit_ok(&rl, 1000, &missed))
			kvn_warn(LOG, "refusing reader %s on %s: %s%s (%llu more refusals not logged)",
				 peer, devname(id->verbs), why,
				 status == EACCES ? "; nothing served" : "",
				 (unsigned long long)missed);
		reject(id, status, why);
		free(c);
		if (id->qp)
			rdma_destroy_qp(id);
		rdma_destroy_id(id);
		return;
	}
	pthread_mutex_lock(&tp->lock);
	for (struct kvn_tp_mr *mr = tp->mrs; mr; mr = mr->next, total++) {
		if (n == VB_MAX_DESC)
			continue;
		uint8_t *d = rep + REP_HDR + n++ * REP_DESC;
		put_le(d, mr->base, 8);
		put_le(d + 8, mr->len, 8);
		put_le(d + 16, mr->mr->rkey, 4);
	}
	c->id = id;
	c->next = tp->srv;
	tp->srv = c;
	pthread_mutex_unlock(&tp->lock);
	__atomic_fetch_add(&tp->st.accepted, 1, __ATOMIC_RELAXED);
	put_le(rep, VB_MAGIC, 4);
	put_le(rep + 4, VB_PROTO, 2);
	rep[6] = (uint8_t)n;
	rep[7] = total == n; /* the list is complete */
	uint8_t proof[KVN_AUTH_MAC];
	owner_proof(tp, ev->pdata + 8, id->qp->qp_num, rep, n, proof);
	memcpy(rep + 8, proof, REP_PROOF);
	cp.private_data = rep;
	cp.private_data_len = (uint8_t)(REP_HDR + n * REP_DESC);
	cp.responder_resources =
	    ev->responder_resources < tp->resp_depth ? ev->responder_resources : tp->resp_depth;
	cp.initiator_depth = 0;
	if (rdma_accept(id, &cp)) {
		kvn_warn(LOG, "rdma_accept on %s failed: %s", devname(id->verbs), strerror(errno));
		/* The DISCONNECTED / CONNECT_ERROR event that follows frees it. */
	}
}

/* The device goes (verbs_removal.c has the whole sequence): no new work from now on, and the
 * ids this thread owns are destroyed here; the progress thread does the rest. */
static void
device_removed(struct kvn_transport *tp)
{
	struct vb_srv_conn *srv;
	struct rdma_cm_id *listen, *anchor;

	pthread_mutex_lock(&tp->lock);
	if (tp->removed) {
		pthread_mutex_unlock(&tp->lock);
		return;
	}
	__atomic_store_n(&tp->removed, true, __ATOMIC_RELEASE);
	tp->dev_users++; /* until the ids below are gone */
	srv = tp->srv, tp->srv = NULL;
	listen = tp->listen_id, tp->listen_id = NULL;
	anchor = tp->anchor, tp->anchor = NULL;
	pthread_mutex_unlock(&tp->lock);
	kvn_warn(LOG,
		 "RDMA device %s is being removed: its reads fail with ENODEV, it serves "
		 "nothing more, and this instance lets go of it",
		 tp->devname);
	while (srv) {
		struct vb_srv_conn *next = srv->next;
		kvn_vb_destroy_id(srv->id);
		free(srv);
		srv = next;
	}
	if (listen)
		rdma_destroy_id(listen);
	if (anchor)
		rdma_destroy_id(anchor);
	kvn_vb_removal_note(tp);
	kvn_vb_dev_leave(tp);
}

static void
cm_event(struct kvn_transport *tp, struct rdma_cm_id *id, const struct cm_ev *ev)
{
	struct vb_srv_conn *gone = NULL;

	if (ev->type == RDMA_CM_EVENT_CONNECT_REQUEST) {
		accept_conn(tp, id, ev);
		return;
	}
	if (ev->type == RDMA_CM_EVENT_DEVICE_REMOVAL) {
		device_removed(tp);
		return;
	}
	if (ev->type != RDMA_CM_EVENT_DISCONNECTED && ev->type != RDMA_CM_EVENT_CONNECT_ERROR &&
	    ev->type != RDMA_CM_EVENT_UNREACHABLE && ev->type != RDMA_CM_EVENT_REJECTED)
		return;
	pthread_mutex_lock(&tp->lock);
	for (struct vb_srv_conn **p = &tp->srv; *p; p = &(*p)->next) {
		if ((*p)->id == id) {
			gone = *p;
			*p = gone->next;
			break;
		}
	}
	for (struct kvn_tp_ep *ep = tp->eps; !gone && ep; ep = ep->next)
		if (ep->id == id)
			kvn_vb_ep_break(ep, -ECONNRESET, false, "peer %s disconnected (%s)",
					ep->peer, rdma_event_str(ev->type));
	pthread_mutex_unlock(&tp->lock);
	if (gone) {
		kvn_vb_destroy_id(gone->id);
		free(gone);
	}
}

static void *
cm_main(void *arg)
{
	struct kvn_transport *tp = arg;
	struct pollfd pfd[2] = {{.fd = tp->cm_ch->fd, .events = POLLIN},
				{.fd = tp->cm_stop_fd, .events = POLLIN}};
	struct rdma_cm_event *ev;
	struct cm_ev kept;

	for (;;) {
		if (poll(pfd, 2, -1) < 0 && errno != EINTR)
			break;
		if (pfd[1].revents)
			break;
		while (!rdma_get_cm_event(tp->cm_ch, &ev)) {
			struct rdma_cm_id *id = ev->id;
			keep_event(ev, &kept);
			/* Acked before acting: rdma_destroy_id elsewhere waits for our acks. */
			rdma_ack_cm_event(ev);
			cm_event(tp, id, &kept);
		}
	}
	return NULL;
}

/* An address of the port (its GID table: the first IPv4-mapped entry, else a global IPv6 one),
 * or false: the port has no IP address (InfiniBand without IPoIB). */
static bool
port_addr(struct kvn_transport *tp, struct sockaddr_storage *ss)
{
	struct sockaddr_storage g;
	bool v6 = false;

	if (tp->have_src) {
		*ss = tp->src;
		return true;
	}
	for (int i = 0; i < tp->gid_tbl_len; i++) {
		int af = kvn_vb_gid_addr(tp, i, &g);
		const uint8_t *a = ((struct sockaddr_in6 *)&g)->sin6_addr.s6_addr;
		if (af == AF_INET) {
			*ss = g;
			return true;
		}
		if (af == AF_INET6 && !v6 && !(a[0] == 0xfe && (a[1] & 0xc0) == 0x80)) {
			*ss = g;
			v6 = true;
		}
	}
	return v6;
}

/* The anchor: an id bound to the port's address, so that the device's removal reaches this
 * instance even when it has no listener and no connection. Without one (no address) removal is
 * heard only through the ids there are. */
static void
anchor_bind(struct kvn_transport *tp)
{
	struct sockaddr_storage ss;
	struct rdma_cm_id *id = NULL;

	if (!port_addr(tp, &ss)) {
		kvn_debug(LOG,
			  "%s port %u has no IP address: its removal is seen only by its "
			  "connections",
			  tp->devname, tp->port);
		return;
	}
	if (rdma_create_id(tp->cm_ch, &id, NULL, RDMA_PS_TCP) ||
	    rdma_bind_addr(id, (struct sockaddr *)&ss) || id->verbs != tp->ctx) {
		kvn_debug(LOG,
			  "%s: no id bound to the port's address (%s): its removal is seen "
			  "only by its connections",
			  tp->devname, id && id->verbs ? "another device has it" : strerror(errno));
		if (id)
			rdma_destroy_id(id);
		return;
	}
	tp->anchor = id;
}

int
kvn_vb_cm_start(struct kvn_transport *tp, char *err, size_t errlen)
{
	tp->cm_ch = rdma_create_event_channel();
	if (!tp->cm_ch) {
		kvn_seterr(-EINVAL, err, errlen, "rdma_cm event channel: %s (is rdma_ucm loaded?)",
			   strerror(errno));
		return -errno ? -errno : -EIO;
	}
	fcntl(tp->cm_ch->fd, F_SETFL, fcntl(tp->cm_ch->fd, F_GETFL) | O_NONBLOCK);
	anchor_bind(tp);
	tp->cm_stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (tp->cm_stop_fd < 0)
		return -errno;
	int rc = pthread_create(&tp->cm_thread, NULL, cm_main, tp);
	if (rc) {
		return kvn_seterr(-rc, err, errlen, "starting the rdma_cm thread: %s",
				  strerror(rc));
	}
	tp->cm_running = true;
	return 0;
}

void
kvn_vb_cm_stop(struct kvn_transport *tp)
{
	uint64_t one = 1;
	if (tp->cm_running) {
		if (write(tp->cm_stop_fd, &one, sizeof(one)) < 0)
			kvn_warn(LOG, "stopping the rdma_cm thread: %s", strerror(errno));
		pthread_join(tp->cm_thread, NULL);
		tp->cm_running = false;
	}
	if (tp->listen_id) {
		rdma_destroy_id(tp->listen_id);
		tp->listen_id = NULL;
	}
	if (tp->anchor) {
		rdma_destroy_id(tp->anchor);
		tp->anchor = NULL;
	}
	while (tp->srv) {
		struct vb_srv_conn *c = tp->srv;
		tp->srv = c->next;
		kvn_vb_destroy_id(c->id);
		free(c);
	}
}

void
kvn_vb_cm_free(struct kvn_transport *tp)
{
	if (tp->cm_ch)
		rdma_destroy_event_channel(tp->cm_ch);
	if (tp->cm_stop_fd >= 0)
		close(tp->cm_stop_fd);
}

static int
listen_on(struct kvn_transport *tp, const char *addr, char *bound, size_t boundlen, char *err,
	  size_t errlen)
{
	struct sockaddr_storage ss;
	struct rdma_cm_id *id = NULL;
	char e[160];
	int rc;

	if (tp->listen_id) {
		return kvn_seterr(-EALREADY, err, errlen,
				  "verbs: this instance already listens; listen is once per "
				  "instance");
	}
	rc = parse_addr(addr, &ss, e, sizeof(e));
	if (rc) {
		return kvn_seterr(rc, err, errlen, "verbs listen: %s", e);
	}
	if ((ss.ss_family == AF_INET &&
	     (ntohl(((struct sockaddr_in *)&ss)->sin_addr.s_addr) >> 24) == 127) ||
	    (ss.ss_family == AF_INET6 &&
	     IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)&ss)->sin6_addr))) {
		/* rdma_cm binds it, but no route to a loopback address exists over RoCE. */
		return kvn_seterr(-EADDRNOTAVAIL, err, errlen,
				  "verbs cannot serve on loopback address %s: listen on the "
				  "address of the RDMA device's netdev (%s) instead",
				  addr, devname(tp->ctx));
	}
	if (rdma_create_id(tp->cm_ch, &id, NULL, RDMA_PS_TCP) ||
	    rdma_bind_addr(id, (struct sockaddr *)&ss) || rdma_listen(id, 128)) {
		rc = errno ? -errno : -EIO;
		kvn_seterr(rc, err, errlen,
			   "verbs: cannot listen on %s: %s (is that an address of an RDMA "
			   "device's netdev?)",
			   addr, strerror(-rc));
		if (id)
			rdma_destroy_id(id);
		return rc;
	}
	if (id->verbs && id->verbs != tp->ctx) {
		kvn_seterr(-EINVAL, err, errlen,
			   "verbs: %s belongs to RDMA device %s but this node uses %s (set "
			   "rdma_device)",
			   addr, devname(id->verbs), devname(tp->ctx));
		rdma_destroy_id(id);
		return -ENODEV;
	}
	kvn_sockaddr_format(rdma_get_local_addr(id), ntohs(rdma_get_src_port(id)), bound, boundlen);
	kvn_info(LOG, "serving RDMA READs of registered memory at %s (%s)", bound, tp->devname);
	pthread_mutex_lock(&tp->lock); /* from here on the cm thread may destroy it (removal) */
	tp->listen_id = id;
	pthread_mutex_unlock(&tp->lock);
	return 0;
}

int
kvn_vb_listen(struct kvn_transport *tp, const char *addr, char *bound, size_t boundlen, char *err,
	      size_t errlen)
{
	int rc = kvn_vb_dev_enter(tp, err, errlen);
	if (rc)
		return rc;
	rc = listen_on(tp, addr, bound, boundlen, err, errlen);
	kvn_vb_dev_leave(tp);
	return rc;
}

/* ---------------------------------------------------------------------------------------------
 * The reader's side.
 * --------------------------------------------------------------------------------------------- */

static int
wait_event(struct rdma_event_channel *ch, struct timespec *deadline, struct cm_ev *out)
{
	struct rdma_cm_event *ev;
	struct pollfd pfd = {.fd = ch->fd, .events = POLLIN};

	for (;;) {
		int64_t ms = kvn_ms_until(deadline);
		if (ms <= 0)
			return -ETIMEDOUT;
		int rc = poll(&pfd, 1, (int)ms);
		if (rc < 0 && errno != EINTR)
			return -errno;
		if (rc > 0 && !rdma_get_cm_event(ch, &ev)) {
			keep_event(ev, out);
			rdma_ack_cm_event(ev);
			return 0;
		}
	}
}

static int
event_error(const struct kvn_transport *tp, const struct cm_ev *ev, const char *peer, char *err,
	    size_t errlen)
{
	if (ev->type == RDMA_CM_EVENT_REJECTED && ev->plen > REJ_HDR &&
	    get_le(ev->pdata, 4) == VB_MAGIC) {
		if (ev->pdata[4] == EACCES)
			return kvn_tp_auth_refused("verbs", peer, &tp->auth, err, errlen);
		return kvn_seterr(
		    -ECONNREFUSED, err, errlen, "peer %s refused the connection: %.*s", peer,
		    (int)strnlen((const char *)ev->pdata + REJ_HDR, ev->plen - REJ_HDR),
		    (const char *)ev->pdata + REJ_HDR);
	}
	if (ev->type == RDMA_CM_EVENT_REJECTED) {
		/* A consumer reject carries our reason text; otherwise nothing listens there. */
		bool ours = ev->plen && ev->pdata[0] >= 'a' && ev->pdata[0] <= 'z';
		return kvn_seterr(
		    -ECONNREFUSED, err, errlen, "peer %s refused the connection: %.*s", peer,
		    ours ? (int)strnlen((const char *)ev->pdata, ev->plen) : 42,
		    ours ? (const char *)ev->pdata : "no kvnode verbs listener at that address");
	}
	kvn_seterr(-EINVAL, err, errlen, "peer %s: connecting failed: %s (status %d)", peer,
		   rdma_event_str(ev->type), ev->status);
	return ev->type == RDMA_CM_EVENT_ADDR_ERROR || ev->type == RDMA_CM_EVENT_ROUTE_ERROR ||
		       ev->type == RDMA_CM_EVENT_UNREACHABLE
		   ? -EHOSTUNREACH
		   : -ECONNREFUSED;
}

static int
step(const struct kvn_transport *tp, struct rdma_event_channel *ch, struct timespec *dl,
     enum rdma_cm_event_type want, const char *what, const char *peer, int timeout_ms,
     struct cm_ev *ev, char *err, size_t errlen)
{
	int rc = wait_event(ch, dl, ev);
	if (rc == -ETIMEDOUT) {
		return kvn_seterr(rc, err, errlen, "peer %s: no answer within %d ms (%s)", peer,
				  timeout_ms, what);
	}
	if (rc) {
		return kvn_seterr(rc, err, errlen, "peer %s: waiting for rdma_cm: %s", peer,
				  strerror(-rc));
	}
	return ev->type == want ? 0 : event_error(tp, ev, peer, err, errlen);
}

/* One connect of kvn_vb_connect_id: its rdma_cm channel and id, its deadline and the last
 * event, shared by the steps below. */
struct dial {
	struct kvn_transport *tp;
	struct kvn_tp_ep *ep;
	struct rdma_event_channel *ch;
	struct rdma_cm_id *id;
	struct timespec dl;
	int timeout_ms;
	struct cm_ev ev;
	char *err;
	size_t errlen;
};

static int
dial_step(struct dial *d, enum rdma_cm_event_type want, const char *what)
{
	return step(d->tp, d->ch, &d->dl, want, what, d->ep->peer, d->timeout_ms, &d->ev, d->err,
		    d->errlen);
}

/* Resolves the peer's address and route, on the device this node registered its memory on. */
static int
dial_resolve(struct dial *d, struct sockaddr_storage *dst)
{
	struct kvn_transport *tp = d->tp;
	const char *peer = d->ep->peer;
	int rc;
	if (rdma_resolve_addr(d->id, tp->have_src ? (struct sockaddr *)&tp->src : NULL,
			      (struct sockaddr *)dst, d->timeout_ms)) {
		rc = -errno;
		return kvn_seterr(rc, d->err, d->errlen, "peer %s: resolving the address: %s", peer,
				  strerror(errno));
	}
	rc = dial_step(d, RDMA_CM_EVENT_ADDR_RESOLVED, "address");
	if (rc)
		return rc;
	if (d->id->verbs != tp->ctx) {
		return kvn_seterr(-ENODEV, d->err, d->errlen,
				  "peer %s is reached through RDMA device %s but this node "
				  "registered its memory on %s (set rdma_device)",
				  peer, devname(d->id->verbs), devname(tp->ctx));
	}
	if (rdma_resolve_route(d->id, d->timeout_ms)) {
		rc = -errno;
		return kvn_seterr(rc, d->err, d->errlen, "peer %s: resolving the route: %s", peer,
				  strerror(errno));
	}
	return dial_step(d, RDMA_CM_EVENT_ROUTE_RESOLVED, "route");
}

/* Creates the QP and sends the REQ (req: magic, version, the reader's nonce and proof). */
static int
dial_connect(struct dial *d, uint8_t req[REQ_SIZE])
{
	struct kvn_transport *tp = d->tp;
	struct ibv_qp_init_attr qa = {.send_cq = tp->cq,
				      .recv_cq = tp->cq,
				      .qp_type = IBV_QPT_RC,
				      .sq_sig_all = 1,
				      .cap = {.max_send_wr = tp->sq_depth,
					      .max_recv_wr = 1,
					      .max_send_sge = 1,
					      .max_recv_sge = 1}};
	struct rdma_conn_param cp = {.private_data = req,
				     .private_data_len = REQ_SIZE,
				     .initiator_depth = tp->init_depth,
				     .retry_count = 7,
				     .rnr_retry_count = 7};
	int rc;
	/* rdma_cm's RoCE ACK timeout (0.5-1 s) stays: a shorter one (~270 ms) made rxe under
	 * emulation retransmit large outstanding reads before their responses had drained. */
	if (rdma_create_qp(d->id, tp->pd, &qa)) {
		rc = errno ? -errno : -ENOMEM;
		return kvn_seterr(rc, d->err, d->errlen, "peer %s: creating the QP: %s",
				  d->ep->peer, strerror(-rc));
	}
	put_le(req, VB_MAGIC, 4);
	put_le(req + 4, VB_PROTO, 2);
	put_le(req + 6, tp->auth.set ? REQ_TOKEN : 0, 2);
	kvn_auth_nonce(req + 8);
	{
		uint8_t qpn[4];
		put_le(qpn, d->id->qp->qp_num, 4);
		const struct kvn_auth_part parts[] = {{req + 8, KVN_AUTH_NONCE}, {qpn, 4}};
		kvn_auth_mac(&tp->auth, READER_LABEL, parts, 2, req + 8 + KVN_AUTH_NONCE);
	}
	if (rdma_connect(d->id, &cp)) {
		rc = -errno;
		return kvn_seterr(rc, d->err, d->errlen, "peer %s: rdma_connect: %s", d->ep->peer,
				  strerror(errno));
	}
	return 0;
}

/* Waits for the accept and checks its private data: a REP of our protocol and, with a token,
 * the owner's proof over req's nonce. */
static int
dial_accepted(struct dial *d, const uint8_t req[REQ_SIZE])
{
	struct kvn_transport *tp = d->tp;
	const struct cm_ev *ev = &d->ev;
	int rc = dial_step(d, RDMA_CM_EVENT_ESTABLISHED, "connect");
	if (rc)
		return rc;
	if (ev->plen < REP_HDR || get_le(ev->pdata, 4) != VB_MAGIC ||
	    get_le(ev->pdata + 4, 2) != VB_PROTO || ev->pdata[6] > VB_MAX_DESC ||
	    ev->plen < REP_HDR + ev->pdata[6] * REP_DESC) {
		return kvn_seterr(-EPROTO, d->err, d->errlen,
				  "peer %s is not a kvnode verbs peer of protocol %d (bad "
				  "private data in its accept)",
				  d->ep->peer, VB_PROTO);
	}
	if (tp->auth.set) {
		uint8_t proof[KVN_AUTH_MAC];
		owner_proof(tp, req + 8, ev->qp_num, ev->pdata, ev->pdata[6], proof);
		if (sodium_memcmp(proof, ev->pdata + 8, REP_PROOF))
			return kvn_tp_auth_unproven("verbs", d->ep->peer, &tp->auth, d->err,
						    d->errlen);
	}
	return 0;
}

/* The endpoint takes the connected id and the owner's region descriptors, unless the device
 * was removed meanwhile. */
static int
dial_up(struct dial *d)
{
	struct kvn_transport *tp = d->tp;
	struct kvn_tp_ep *ep = d->ep;
	pthread_mutex_lock(&tp->lock);
	if (tp->removed) {
		pthread_mutex_unlock(&tp->lock);
		return kvn_seterr(-ENODEV, d->err, d->errlen,
				  "peer %s: RDMA device %s was removed while connecting", ep->peer,
				  tp->devname);
	}
	ep->ndesc = d->ev.pdata[6];
	ep->desc_complete = d->ev.pdata[7];
	for (uint32_t i = 0; i < ep->ndesc; i++) {
		const uint8_t *p = d->ev.pdata + REP_HDR + i * REP_DESC;
		ep->desc[i] = (struct kvn_mem_desc){.addr = get_le(p, 8),
						    .len = get_le(p + 8, 8),
						    .rkey = (uint32_t)get_le(p + 16, 4)};
	}
	ep->id = d->id;
	ep->state = EP_UP;
	ep->sq_free = tp->sq_depth;
	pthread_cond_broadcast(&tp->cond);
	pthread_mutex_unlock(&tp->lock);
	return 0;
}

int
kvn_vb_connect_id(struct kvn_transport *tp, struct kvn_tp_ep *ep, int timeout_ms, char *err,
		  size_t errlen)
{
	uint8_t req[REQ_SIZE] = {0};
	struct dial d = {.tp = tp,
			 .ep = ep,
			 .ch = rdma_create_event_channel(),
			 .timeout_ms = timeout_ms,
			 .err = err,
			 .errlen = errlen};
	struct sockaddr_storage dst;
	int rc;

	d.dl = kvn_deadline_in_ms(timeout_ms > 0 ? (uint64_t)timeout_ms : 0);
	rc = kvn_vb_dev_enter(tp, err, errlen);
	if (rc) {
		if (d.ch)
			rdma_destroy_event_channel(d.ch);
		return rc;
	}
	rc = parse_addr(ep->peer, &dst, err, errlen);
	if (rc)
		goto out;
	if (!d.ch || rdma_create_id(d.ch, &d.id, NULL, RDMA_PS_TCP)) {
		rc = errno ? -errno : -EIO;
		kvn_seterr(rc, err, errlen, "peer %s: rdma_cm id: %s", ep->peer,
			   strerror(-rc));
		goto out;
	}
	if ((rc = dial_resolve(&d, &dst)) || (rc = dial_connect(&d, req)) ||
	    (rc = dial_accepted(&d, req)))
		goto out;
	/* Disconnects from now on go to the instance's rdma_cm thread. */
	if (rdma_migrate_id(d.id, tp->cm_ch)) {
		rc = -errno;
		kvn_seterr(rc, err, errlen, "peer %s: rdma_migrate_id: %s", ep->peer,
			   strerror(errno));
		goto out;
	}
	rc = dial_up(&d);
	if (!rc)
		d.id = NULL;
out:
	if (d.id)
		kvn_vb_destroy_id(d.id);
	if (d.ch)
		rdma_destroy_event_channel(d.ch);
	kvn_vb_dev_leave(tp);
	return rc;
}
