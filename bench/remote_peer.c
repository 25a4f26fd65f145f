/* kvnode-bench remote --peer: what the peer tier does for a fetch (a one-sided READ of the slot
 * image from another node's registered pool over the transport, then kvn_slot_verify), with a
 * responder — a filled kvnode pool behind its own transport instance — in this
 * process, so it is measured beside redis GET of the same chunks in the same run. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "bench/bench.h"
#include "kvnode/transport.h"
#include "core/log.h"
#include "core/pool.h"

#define HDR sizeof(struct kvn_slot_hdr)

struct bench_peer_fetch {
	const struct kvn_transport_ops *ops;
	struct kvn_transport *owner, *reader; /* the node holding the chunks, the one fetching */
	struct kvn_pool *pool;		      /* owner's chunk pool, registered */
	struct kvn_tp_mr *pool_mr, *img_mr;
	struct kvn_mem_desc pool_desc;
	struct kvn_tp_ep *ep;
	uint8_t *img; /* the reader's registered landing area (the peer tier's scratch slot) */
	size_t img_len;
	struct kvn_slot **slots;
	const struct kvn_key *keys;
	size_t nslots;
	char desc[256];
};

static int
fail(const char *what, const char *err, int rc)
{
	fprintf(stderr, "kvnode-bench: peer fetch: %s: %s\n", what, *err ? err : kvn_strerror(rc));
	return rc;
}

int
bench_peer_fetch_open(const struct bench_opts *o, size_t max_size, uint64_t wset,
		      struct bench_peer_fetch **out)
{
	char err[256] = "", bound[128];
	struct bench_peer_fetch *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	const char *name = o->transport ? o->transport : "tcp";
	struct kvn_transport_cfg cfg = {KVN_TRANSPORT_CFG_INIT, .gid_index = -1,
					.conns_per_peer = o->conns};
	int rc = -EINVAL;
	p->ops = kvn_transport_by_name(name, &cfg, err, sizeof(err));
	if (!p->ops)
		goto fail_err;
	if ((rc = p->ops->open(&cfg, &p->owner, err, sizeof(err))) < 0 ||
	    (rc = p->ops->open(&cfg, &p->reader, err, sizeof(err))) < 0)
		goto fail_err;
	/* Room for a working set of the largest chunks, headers and allocator rounding. */
	size_t pool_len = wset + 2 * kvn_pool_slot_footprint(max_size) + (8u << 20);
	if ((rc = kvn_pool_create(pool_len, true, &p->pool, err, sizeof(err))) < 0)
		goto fail_err;
	rc = p->ops->reg_mem(p->owner, kvn_pool_base(p->pool), kvn_pool_size(p->pool), KVN_MEM_HOST,
			     &p->pool_mr, &p->pool_desc, err, sizeof(err));
	if (rc < 0 ||
	    (rc = p->ops->listen(p->owner, "127.0.0.1:0", bound, sizeof(bound), err,
				 sizeof(err))) < 0)
		goto fail_err;
	p->img_len = HDR + max_size;
	p->img = mmap(NULL, p->img_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p->img == MAP_FAILED) {
		p->img = NULL;
		rc = -ENOMEM;
		goto fail_err;
	}
	memset(p->img, 0, p->img_len); /* faulted in now, as a pool is */
	if ((rc = p->ops->reg_mem(p->reader, p->img, p->img_len, KVN_MEM_HOST, &p->img_mr,
				  &(struct kvn_mem_desc){0}, err, sizeof(err))) < 0 ||
	    (rc = p->ops->connect(p->reader, bound, 0, &p->ep, err, sizeof(err))) < 0)
		goto fail_err;
	char conns[16] = "default";
	if (o->conns > 0)
		snprintf(conns, sizeof(conns), "%d", o->conns);
	snprintf(p->desc, sizeof(p->desc), "%s to %.128s, connections per peer: %s",
		 p->ops->name, bound, conns);
	*out = p;
	return 0;
fail_err:
	fail("setting up the responder and the reader", err, rc);
	bench_peer_fetch_close(p);
	return rc;
}

const char *
bench_peer_fetch_desc(const struct bench_peer_fetch *p)
{
	return p->desc;
}

void
bench_peer_fetch_clear(struct bench_peer_fetch *p)
{
	for (size_t i = 0; i < p->nslots; i++)
		if (p->slots[i])
			kvn_pool_unlink(p->pool, p->slots[i]);
	free(p->slots);
	p->slots = NULL;
	p->nslots = 0;
}

int
bench_peer_fetch_fill(struct bench_peer_fetch *p, const struct kvn_key *keys, size_t n,
		      const struct kvn_buf *val)
{
	bench_peer_fetch_clear(p);
	p->slots = calloc(n, sizeof(*p->slots));
	if (!p->slots)
		return -ENOMEM;
	p->keys = keys;
	p->nslots = n;
	for (size_t i = 0; i < n; i++) {
		int rc = kvn_pool_alloc(p->pool, val->len, &keys[i], false, &p->slots[i]);
		if (rc < 0) {
			fprintf(stderr, "kvnode-bench: peer fetch: no room for chunk %zu of %zu "
					"bytes in the responder's pool: %s\n",
				i, val->len, kvn_strerror(rc));
			return rc;
		}
		kvn_pool_fill(p->slots[i], val->data);
		kvn_pool_commit(p->pool, p->slots[i]);
	}
	return 0;
}

int
bench_peer_fetch_one(struct bench_peer_fetch *p, size_t i, size_t size, bool verify)
{
	struct kvn_slot *s = p->slots[i];
	char err[256] = "";
	struct kvn_read rd = {.local = p->img,
			      .local_mr = p->img_mr,
			      .remote_addr = p->pool_desc.addr + kvn_slot_offset(s),
			      .rkey = p->pool_desc.rkey,
			      .len = HDR + size};
	int rc = kvn_transport_read_sync(p->ops, p->ep, &rd, 1, err, sizeof(err));
	if (rc < 0)
		return fail("READ", err, rc);
	if (!verify)
		return 0;
	rc = kvn_slot_verify(p->img, HDR + size, p->keys[i].digest, kvn_slot_generation(s));
	if (rc < 0)
		return fail("the slot image read back", "failed kvn_slot_verify", rc);
	/* The peer tier hands out a view of the payload where the READ put it (no copy): a
	 * caller of kvn_get then copies it once, into its own buffer, as it does a redis GET's. */
	return 0;
}

void
bench_peer_fetch_close(struct bench_peer_fetch *p)
{
	if (!p)
		return;
	bench_peer_fetch_clear(p);
	if (p->ep)
		p->ops->ep_close(p->ep);
	if (p->img_mr)
		p->ops->dereg(p->img_mr);
	if (p->pool_mr)
		p->ops->dereg(p->pool_mr);
	if (p->reader)
		p->ops->close(p->reader);
	if (p->owner)
		p->ops->close(p->owner);
	if (p->pool)
		kvn_pool_destroy(p->pool);
	if (p->img)
		munmap(p->img, p->img_len);
	free(p);
}
