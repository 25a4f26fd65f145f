/* Test module: a slow (asynchronously written) in-memory tier whose puts block while a gate is
 * closed, so storage-manager tests can hold writes "in flight" deterministically. It also hands
 * out the env it was created with and counts removes, for tests of what the manager does. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kvnode/backend.h"

#define EXPORT __attribute__((visibility("default")))

struct entry {
	struct kvn_key key;
	struct kvn_buf *buf;
	struct entry *next;
};

struct kvn_backend {
	struct entry *head;
	struct kvn_backend_stats st;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int closed;
static int waiting;
static int removes;
static const struct kvn_backend_env *created_env;

/* The env of the last instance created (the node's, valid until that instance is destroyed). */
EXPORT const struct kvn_backend_env *
kvn_test_gate_env(void)
{
	return created_env;
}

/* Removes that found the key, since the module was loaded. */
EXPORT int
kvn_test_gate_removes(void)
{
	pthread_mutex_lock(&lock);
	int n = removes;
	pthread_mutex_unlock(&lock);
	return n;
}

EXPORT void
kvn_test_gate_set_closed(int c)
{
	pthread_mutex_lock(&lock);
	closed = c;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
}

EXPORT int
kvn_test_gate_waiting(void)
{
	pthread_mutex_lock(&lock);
	int w = waiting;
	pthread_mutex_unlock(&lock);
	return w;
}

static struct entry **
find(struct kvn_backend *be, const struct kvn_key *key)
{
	struct entry **pp = &be->head;
	while (*pp && !kvn_digest_eq((*pp)->key.digest, key->digest))
		pp = &(*pp)->next;
	return pp;
}

static int
gate_create(const struct kvn_backend_env *env, struct kvn_backend **out)
{
	created_env = env;
	*out = calloc(1, sizeof(**out));
	return *out ? 0 : -ENOMEM;
}

static void
gate_destroy(struct kvn_backend *be)
{
	while (be->head) {
		struct entry *e = be->head;
		be->head = e->next;
		kvn_buf_unref(e->buf);
		free(e);
	}
	free(be);
}

static int
gate_put(struct kvn_backend *be, const struct kvn_key *key, struct kvn_buf *buf)
{
	struct kvn_buf *copy = malloc(sizeof(*copy) + buf->len);
	if (!copy)
		return -ENOMEM;
	pthread_mutex_lock(&lock);
	waiting++;
	while (closed)
		pthread_cond_wait(&cond, &lock);
	waiting--;
	kvn_buf_init(copy, copy + 1, buf->len, (void (*)(struct kvn_buf *))free, NULL, 0);
	memcpy(copy->data, buf->data, buf->len);
	struct entry **pp = find(be, key);
	if (*pp) {
		kvn_buf_unref((*pp)->buf);
		(*pp)->buf = copy;
	} else {
		struct entry *e = calloc(1, sizeof(*e));
		e->key = *key;
		e->buf = copy;
		*pp = e;
		be->st.count++;
	}
	be->st.puts++;
	pthread_mutex_unlock(&lock);
	return 0;
}

static int
gate_get(struct kvn_backend *be, const struct kvn_key *key, struct kvn_buf **out)
{
	pthread_mutex_lock(&lock);
	struct entry **pp = find(be, key);
	int rc = *pp ? 0 : -ENOENT;
	if (*pp) {
		*out = kvn_buf_ref((*pp)->buf);
		be->st.hits++;
	} else {
		be->st.misses++;
	}
	pthread_mutex_unlock(&lock);
	return rc;
}

static int
gate_contains(struct kvn_backend *be, const struct kvn_key *key, bool pin)
{
	(void)pin;
	pthread_mutex_lock(&lock);
	int rc = *find(be, key) != NULL;
	pthread_mutex_unlock(&lock);
	return rc;
}

static int
gate_remove(struct kvn_backend *be, const struct kvn_key *key)
{
	pthread_mutex_lock(&lock);
	struct entry **pp = find(be, key), *e = *pp;
	if (e) {
		*pp = e->next;
		kvn_buf_unref(e->buf);
		free(e);
		be->st.count--;
		removes++;
	}
	pthread_mutex_unlock(&lock);
	return e ? 0 : -ENOENT;
}

static int
gate_list(struct kvn_backend *be, kvn_list_cb cb, void *ctx)
{
	pthread_mutex_lock(&lock);
	int rc = 0;
	for (struct entry *e = be->head; e && !rc; e = e->next)
		rc = cb(ctx, &e->key, e->buf->len);
	pthread_mutex_unlock(&lock);
	return rc;
}

static void
gate_stats(struct kvn_backend *be, struct kvn_backend_stats *out)
{
	pthread_mutex_lock(&lock);
	*out = be->st;
	pthread_mutex_unlock(&lock);
}

EXPORT const struct kvn_backend_ops kvn_gate_backend_ops = {
    KVN_BACKEND_OPS_INIT,
    .flags = KVN_BACKEND_F_SLOW,
    .name = "gate",
    .create = gate_create,
    .destroy = gate_destroy,
    .contains = gate_contains,
    .put = gate_put,
    .get = gate_get,
    .remove = gate_remove,
    .list = gate_list,
    .stats = gate_stats,
};
