/* Transport registry: the built-in implementations by name, "auto" (verbs when an RDMA device is
 * active, else tcp), and a synchronous read on top of the completion callbacks. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "core/abi.h"
#include "core/log.h"
#include "kvnode/transport.h"
#include "rdma/rdma.h"

/* rdma/verbs/verbs*.c are compiled only when rdma-core is found at build time. */
#define HAVE_VERBS_OPS KVN_HAVE_VERBS

extern const struct kvn_transport_ops kvn_transport_tcp;
#if HAVE_VERBS_OPS
extern const struct kvn_transport_ops kvn_transport_verbs;
#endif

/* In the order "auto" prefers them. */
static const struct kvn_transport_ops *const builtins[] = {
#if HAVE_VERBS_OPS
	&kvn_transport_verbs,
#endif
	&kvn_transport_tcp,
};
#define NBUILTINS (sizeof(builtins) / sizeof(builtins[0]))

int
kvn_transport_cfg_read(const struct kvn_transport_cfg *in, struct kvn_transport_cfg *out, char *err,
		       size_t errlen)
{
	*out = (struct kvn_transport_cfg){KVN_TRANSPORT_CFG_INIT, .gid_index = -1};
	return in ? kvn_abi_read_in(in, out, sizeof(*out), "struct kvn_transport_cfg",
				    "KVN_TRANSPORT_CFG_INIT", err, errlen)
		  : 0;
}

KVN_API const struct kvn_transport_ops *
kvn_transport_by_name(const char *name, const struct kvn_transport_cfg *cfg, char *err,
		      size_t errlen)
{
	if (!name || !*name)
		name = "auto";
	if (!strcmp(name, "auto")) {
		char why[256] = "no RDMA transport in this build (rdma-core was not found)";
		for (size_t i = 0; i < NBUILTINS; i++) {
			const struct kvn_transport_ops *ops = builtins[i];
			if (ops == &kvn_transport_tcp) {
				kvn_info("transport", "transport auto: picked tcp (%s)", why);
				return ops;
			}
			char perr[200] = "";
			if (ops->probe(cfg, perr, sizeof(perr)) == 0) {
				kvn_info("transport", "transport auto: picked %s", ops->name);
				return ops;
			}
			snprintf(why, sizeof(why), "%s: %s", ops->name, perr);
		}
	}
	for (size_t i = 0; i < NBUILTINS; i++)
		if (!strcmp(builtins[i]->name, name))
			return builtins[i];
	if (!strcmp(name, "verbs"))
		kvn_seterr(-EINVAL, err, errlen,
			   "transport \"verbs\" is not in this build (it needs "
			   "libibverbs and librdmacm at build time); use \"tcp\" or \"auto\"");
	else
		kvn_seterr(-EINVAL, err, errlen,
			   "unknown transport \"%s\"; want auto, verbs or tcp", name);
	return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Synchronous reads
 * ------------------------------------------------------------------------------------------- */

struct sync_wait {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	size_t left;
	int status;
	char *err;
	size_t errlen;
};

static void
sync_done(struct kvn_read *rd, int status, const char *msg)
{
	struct sync_wait *w = rd->ctx;
	pthread_mutex_lock(&w->lock);
	if (status && !w->status) {
		w->status = status;
		if (w->err && w->errlen)
			snprintf(w->err, w->errlen, "%s", msg ? msg : kvn_strerror(status));
	}
	/* Signal under the lock: the waiter frees w as soon as it sees left == 0. */
	if (--w->left == 0)
		pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

KVN_API int
kvn_transport_read_sync(const struct kvn_transport_ops *ops, struct kvn_tp_ep *ep,
			struct kvn_read *reads, size_t n, char *err, size_t errlen)
{
	if (!n)
		return 0;
	struct sync_wait w = { .left = n, .err = err, .errlen = errlen };
	pthread_mutex_init(&w.lock, NULL);
	pthread_cond_init(&w.cond, NULL);
	for (size_t i = 0; i < n; i++) {
		reads[i].done = sync_done;
		reads[i].ctx = &w;
	}
	int rc = ops->read(ep, reads, n);
	if (rc < 0) {
		kvn_seterr(rc, err, errlen, "%s: posting %zu reads failed: %s", ops->name, n,
			   kvn_strerror(rc));
	} else {
		pthread_mutex_lock(&w.lock);
		while (w.left)
			pthread_cond_wait(&w.cond, &w.lock);
		pthread_mutex_unlock(&w.lock);
		rc = w.status;
	}
	pthread_cond_destroy(&w.cond);
	pthread_mutex_destroy(&w.lock);
	return rc;
}
