/* The verbs transport when its RDMA device goes away (`rdma link delete`, a NIC unplugged or
 * reset). The kernel unregisters the device only once every process has closed it, and in this
 * process librdmacm owns the context: it closes it when no device list (rdma_get_devices) and no
 * rdma_cm id holds it any more, and only after a later sync of its device list saw it gone. So:
 *   1. the cm thread hears RDMA_CM_EVENT_DEVICE_REMOVAL on any of the instance's ids (the anchor,
 *      bound to the port's address, hears it even on an instance with no connection), marks the
 *      instance removed, destroys its listener, anchor and accepted connections (verbs_cm.c);
 *   2. the progress thread fails every read in flight with -ENODEV, stops polling the CQ and
 *      destroys every QP (kvn_vb_abandon, verbs_post.c);
 *   3. once no connect or registration is using the device, it deregisters every MR (the
 *      callers' kvn_tp_mr stay valid, empty, for their dereg), destroys CQ, channel and PD and
 *      frees its device list: released;
 *   4. every instance of the process, this one included, takes its device list again, so that
 *      none holds the removed device and librdmacm's sync closes it; while the device is still
 *      listed (the kernel not done yet), again every 100 ms, for up to 10 s.
 * A removed instance refuses reads, connects, registrations and listens with -ENODEV from step 1
 * on; a node reopens its transport to use a device that came back. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "core/log.h"
#include "rdma/rdma.h"
#include "rdma/verbs/verbs.h"

#define LOG	      "verbs"
#define SYNC_EVERY_NS 100000000ull
#define SYNC_TRIES    100

/* The process's removals: how many, and the device of the latest, which instances' syncs wait
 * to see gone from the list. */
static atomic_uint removals;
static pthread_mutex_t gone_lock = PTHREAD_MUTEX_INITIALIZER;
static char gone_name[64];

int
kvn_vb_dev_enter(struct kvn_transport *tp, char *err, size_t errlen)
{
	pthread_mutex_lock(&tp->lock);
	bool removed = tp->removed;
	if (!removed)
		tp->dev_users++;
	pthread_mutex_unlock(&tp->lock);
	if (removed) {
		return kvn_seterr(-ENODEV, err, errlen,
				  "RDMA device %s was removed; this transport instance serves "
				  "nothing more (restart the node to use the device again)",
				  tp->devname);
	}
	return 0;
}

void
kvn_vb_dev_leave(struct kvn_transport *tp)
{
	pthread_mutex_lock(&tp->lock);
	bool last = !--tp->dev_users && tp->removed;
	pthread_mutex_unlock(&tp->lock);
	if (last)
		kvn_vb_wake(tp); /* the release may wait for this */
}

void
kvn_vb_free_queues(struct kvn_transport *tp)
{
	if (tp->cq)
		ibv_destroy_cq(tp->cq);
	if (tp->cc)
		ibv_destroy_comp_channel(tp->cc);
	if (tp->pd)
		ibv_dealloc_pd(tp->pd);
	tp->cq = NULL, tp->cc = NULL, tp->pd = NULL;
}

void
kvn_vb_removal_note(struct kvn_transport *tp)
{
	pthread_mutex_lock(&gone_lock);
	snprintf(gone_name, sizeof(gone_name), "%s", tp->devname);
	pthread_mutex_unlock(&gone_lock);
	atomic_fetch_add(&removals, 1);
	kvn_vb_wake(tp);
}

/* With tp->lock held: nothing uses the device any more. */
static bool
releasable(const struct kvn_transport *tp)
{
	if (!tp->abandoned || tp->released || tp->dev_users || tp->srv || tp->dead)
		return false;
	for (const struct kvn_tp_ep *ep = tp->eps; ep; ep = ep->next)
		if (ep->id || ep->state == EP_CONNECTING)
			return false;
	return true;
}

static void
release(struct kvn_transport *tp)
{
	unsigned n = 0;
	pthread_mutex_lock(&tp->lock);
	for (struct kvn_tp_mr *mr = tp->mrs; mr; mr = mr->next) {
		if (mr->mr) {
			ibv_dereg_mr(mr->mr);
			mr->mr = NULL;
			n++;
		}
	}
	pthread_mutex_unlock(&tp->lock);
	/* The progress thread (this one) no longer polls: the CQ and its channel can go. */
	kvn_vb_free_queues(tp);
	if (tp->devs)
		rdma_free_devices(tp->devs);
	tp->devs = NULL;
	pthread_mutex_lock(&tp->lock);
	tp->ctx = NULL;
	tp->released = true;
	pthread_mutex_unlock(&tp->lock);
	tp->sync_left = SYNC_TRIES; /* now let librdmacm see that nobody here holds it */
	tp->next_sync_ns = 0;
	kvn_info(LOG, "let go of removed RDMA device %s: %u registrations, its queues and context",
		 tp->devname, n);
}

/* Takes the device list again: the new one lacks every device gone since, and freeing the old
 * one drops this instance's hold on them. Returns whether the removed device is still listed.
 * An instance whose own device is not in the new list (removed too, its event not in yet) keeps
 * its list: its context must stay open under its PD and CQ. */
static bool
sync_devices(struct kvn_transport *tp)
{
	struct ibv_context **fresh = rdma_get_devices(NULL);
	char gone[sizeof(gone_name)];
	bool listed = false, mine = !tp->ctx;

	pthread_mutex_lock(&gone_lock);
	memcpy(gone, gone_name, sizeof(gone));
	pthread_mutex_unlock(&gone_lock);
	for (int i = 0; fresh && fresh[i]; i++) {
		listed |= !strcmp(ibv_get_device_name(fresh[i]->device), gone);
		mine |= fresh[i] == tp->ctx;
	}
	if (!fresh)
		return true; /* no device at all: nothing left to hold, nothing to retry */
	if (tp->devs && mine) {
		rdma_free_devices(tp->devs);
		tp->devs = fresh;
	} else {
		rdma_free_devices(fresh);
	}
	return listed;
}

void
kvn_vb_removal_tick(struct kvn_transport *tp, uint64_t now)
{
	unsigned gen = atomic_load_explicit(&removals, memory_order_relaxed);

	if (__atomic_load_n(&tp->removed, __ATOMIC_ACQUIRE) && !tp->released) {
		pthread_mutex_lock(&tp->lock);
		bool go = releasable(tp);
		pthread_mutex_unlock(&tp->lock);
		if (go)
			release(tp);
		else
			return; /* its own list must stay until then */
	}
	if (gen != tp->dev_gen) {
		tp->dev_gen = gen;
		tp->sync_left = SYNC_TRIES;
		tp->next_sync_ns = 0;
	}
	if (!tp->sync_left || now < tp->next_sync_ns)
		return;
	if (sync_devices(tp)) {
		tp->sync_left--;
		tp->next_sync_ns = now + SYNC_EVERY_NS;
		if (!tp->sync_left)
			kvn_warn(LOG,
				 "removed RDMA device %s is still listed after %u s; giving up "
				 "waiting for the kernel",
				 tp->devname,
				 (unsigned)(SYNC_TRIES * SYNC_EVERY_NS / 1000000000ull));
	} else {
		tp->sync_left = 0;
	}
}
