/* Disk tier: one file per chunk (<digest>.kvc) with a checksummed 4 KiB header, published
 * atomically with rename(2), an in-memory index (digest → size, LRU, key) rebuilt from the
 * directory on start, LRU eviction under capacity_bytes, O_DIRECT where the filesystem allows. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backends/disk_file.h"
#include "core/fdio.h"
#include "core/log.h"
#include "backends/backends.h"
#include "core/xxh.h"

/* ---------------------------------------------------------------------------------------------
 * Instance
 * ------------------------------------------------------------------------------------------- */

struct entry {
	struct entry *hnext;	   /* hash chain */
	struct entry *prev, *next; /* LRU, most recent first */
	struct kvn_digest digest;
	uint64_t len;
	uint32_t pins;
	uint16_t key_len;
	char key[]; /* key text, NUL-terminated */
};

#define NSTRIPE 64

struct kvn_backend {
	const struct kvn_backend_env *env; /* the node's; outlives the instance */
	char *dir;
	int dirfd; /* also holds the flock that keeps a second instance off the directory */
	uint64_t capacity;
	bool direct;	     /* O_DIRECT for chunk files */
	bool direct_refused; /* asked for, but the filesystem refused it */
	bool fsync;	     /* fsync file and directory on publish */
	bool verify;	     /* checksum every payload during the start-up scan */

	/* Guards the index, the LRU and bytes/reserved. Never held across file I/O. */
	pthread_mutex_t lock;
	pthread_cond_t room; /* signalled when reserved space is given back */
	struct entry **bucket;
	size_t nbucket; /* power of two */
	size_t count;
	uint64_t bytes;	   /* payload bytes of indexed chunks */
	uint64_t pinned;   /* payload bytes of indexed chunks that are pinned */
	uint64_t reserved; /* payload bytes of puts being written */

	/* Per-digest order of name operations (rename, unlink) and the index change that goes
	 * with them, so the index always describes the file that holds the name. Taken before
	 * lock, never the other way round. */
	pthread_mutex_t stripe[NSTRIPE];

	_Atomic uint64_t tmpseq;
	_Atomic uint64_t hits, misses, puts, evictions, errors;
	/* Failed puts are logged at most once a second: a full disk fails every one of them. */
	struct kvn_ratelimit put_rl;

	/* LRU sentinel, guarded by lock. Last: struct entry ends in a flexible array (its key). */
	struct entry lru;
};

static void __attribute__((format(printf, 3, 4)))
dlog(const struct kvn_backend_env *env, int level, const char *fmt, ...)
{
	if (level > kvn_log_get_level() && !(env && env->log))
		return;
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (env && env->log)
		env->log(env, level, "%s", line);
	else
		kvn_log(level, "disk", "%s", line);
}

#define DLOG(d, level, ...)                                                                        \
	do {                                                                                       \
		if ((level) < KVN_LOG_DEBUG || kvn_log_get_level() >= KVN_LOG_DEBUG)               \
			dlog((d)->env, level, __VA_ARGS__);                                        \
	} while (0)

/* "; N more failed puts ..." for a rate-limited line that held N back, else "". */
static const char *
held_back(char *buf, size_t len, uint64_t missed)
{
	if (!missed)
		return "";
	snprintf(buf, len, "; %" PRIu64 " more failed puts not logged in the last second",
		 missed);
	return buf;
}

static int
open_chunk(struct kvn_backend *d, const char *name, int flags, bool *direct)
{
	return kvn_disk_open(d->dirfd, name, flags, d->direct, direct);
}

static pthread_mutex_t *
stripe_of(struct kvn_backend *d, struct kvn_digest dg)
{
	return &d->stripe[dg.lo % NSTRIPE];
}

/* ---------------------------------------------------------------------------------------------
 * Index: hash of digests plus an LRU list. Callers hold d->lock.
 * ------------------------------------------------------------------------------------------- */

static struct entry *
entry_new(struct kvn_digest dg, uint64_t len, const char *key, size_t key_len)
{
	struct entry *e = calloc(1, sizeof(*e) + key_len + 1);
	if (!e)
		return NULL;
	e->digest = dg;
	e->len = len;
	e->key_len = (uint16_t)key_len;
	memcpy(e->key, key, key_len);
	return e;
}

static struct entry **
index_slot(struct kvn_backend *d, struct kvn_digest dg)
{
	struct entry **pp = &d->bucket[dg.lo & (d->nbucket - 1)];
	while (*pp && !kvn_digest_eq((*pp)->digest, dg))
		pp = &(*pp)->hnext;
	return pp;
}

static struct entry *
index_find(struct kvn_backend *d, struct kvn_digest dg)
{
	return *index_slot(d, dg);
}

static void
lru_unlink(struct entry *e)
{
	e->prev->next = e->next;
	e->next->prev = e->prev;
}

static void
lru_push_head(struct kvn_backend *d, struct entry *e)
{
	e->next = d->lru.next;
	e->prev = &d->lru;
	d->lru.next->prev = e;
	d->lru.next = e;
}

/* Takes e out of the hash and the LRU and its bytes out of the total; the caller frees it. */
static void
index_unlink(struct kvn_backend *d, struct entry *e)
{
	struct entry **pp = index_slot(d, e->digest);
	*pp = e->hnext;
	lru_unlink(e);
	d->bytes -= e->len;
	if (e->pins)
		d->pinned -= e->len;
	d->count--;
}

/* Adds delta to e's pins (e is indexed), keeping d->pinned in step. */
static void
pins_add(struct kvn_backend *d, struct entry *e, int delta)
{
	bool was = e->pins;
	e->pins = (uint32_t)((int64_t)e->pins + delta);
	if (!was && e->pins)
		d->pinned += e->len;
	else if (was && !e->pins)
		d->pinned -= e->len;
}

static void
index_grow(struct kvn_backend *d)
{
	size_t n = d->nbucket * 2;
	struct entry **b = calloc(n, sizeof(*b));
	if (!b)
		return; /* longer chains, still correct */
	for (size_t i = 0; i < d->nbucket; i++) {
		for (struct entry *e = d->bucket[i], *next; e; e = next) {
			next = e->hnext;
			e->hnext = b[e->digest.lo & (n - 1)];
			b[e->digest.lo & (n - 1)] = e;
		}
	}
	free(d->bucket);
	d->bucket = b;
	d->nbucket = n;
}

/* Inserts e as most recent; a previous entry of the digest is replaced (its pins carry over,
 * since pins are taken by key) and freed. */
static void
index_insert(struct kvn_backend *d, struct entry *e)
{
	struct entry *old = index_find(d, e->digest);
	if (old) {
		e->pins = old->pins;
		index_unlink(d, old);
		free(old);
	}
	if (d->count >= d->nbucket)
		index_grow(d);
	struct entry **head = &d->bucket[e->digest.lo & (d->nbucket - 1)];
	e->hnext = *head;
	*head = e;
	lru_push_head(d, e);
	d->bytes += e->len;
	if (e->pins)
		d->pinned += e->len;
	d->count++;
}

/* Evicts least recently used unpinned chunks until len more bytes fit, and reserves them.
 * Victims leave the index here; their files are unlinked by unlink_victims once the lock is
 * dropped. Waits while other puts hold reservations that may become evictable. */
static int
reserve_room(struct kvn_backend *d, const struct kvn_key *key, uint64_t len,
	     struct entry **victims)
{
	while (d->bytes + d->reserved + len > d->capacity) {
		/* Pinned chunks stay whatever is evicted (the key's own old value goes when the
		 * new one is published): when they leave no room, evicting the rest would only
		 * lose them too. */
		struct entry *own = index_find(d, key->digest);
		uint64_t stuck = d->pinned - (own && own->pins ? own->len : 0);
		if (stuck + len > d->capacity)
			return -ENOSPC;
		struct entry *v = d->lru.prev;
		while (v != &d->lru && v->pins)
			v = v->prev;
		if (v != &d->lru) {
			index_unlink(d, v);
			v->hnext = *victims;
			*victims = v;
			d->evictions++;
			continue;
		}
		if (!d->reserved)
			return -ENOSPC;
		pthread_cond_wait(&d->room, &d->lock);
	}
	d->reserved += len;
	return 0;
}

static void
unreserve(struct kvn_backend *d, uint64_t len)
{
	d->reserved -= len;
	pthread_cond_broadcast(&d->room);
}

/* Unlinks the files of entries already taken out of the index. Under the stripe lock the
 * index tells whether a newer put of the same key has published since: then the name holds
 * the new file and must stay. */
static void
unlink_victims(struct kvn_backend *d, struct entry *v)
{
	while (v) {
		struct entry *next = v->hnext;
		char name[DISK_NAME_LEN + 1];
		kvn_disk_chunk_name(name, v->digest);
		pthread_mutex_lock(stripe_of(d, v->digest));
		pthread_mutex_lock(&d->lock);
		bool republished = index_find(d, v->digest) != NULL;
		pthread_mutex_unlock(&d->lock);
		if (!republished && unlinkat(d->dirfd, name, 0) && errno != ENOENT)
			DLOG(d, KVN_LOG_WARN, "cannot delete evicted chunk %s/%s: %s", d->dir, name,
			     strerror(errno));
		pthread_mutex_unlock(stripe_of(d, v->digest));
		DLOG(d, KVN_LOG_DEBUG, "evicted %s (%" PRIu64 " bytes) from %s", v->key, v->len,
		     d->dir);
		free(v);
		v = next;
	}
}

/* Deletes a corrupt file found on fd — unless the name already holds a newer file — and drops
 * its index entry. */
static void
drop_corrupt(struct kvn_backend *d, int fd, struct kvn_digest dg, const char *why)
{
	char name[DISK_NAME_LEN + 1];
	kvn_disk_chunk_name(name, dg);
	DLOG(d, KVN_LOG_WARN, "dropping corrupt chunk %s/%s: %s", d->dir, name, why);
	d->errors++;
	struct stat a, b;
	pthread_mutex_lock(stripe_of(d, dg));
	if (!fstat(fd, &a) && !fstatat(d->dirfd, name, &b, 0) && a.st_ino == b.st_ino &&
	    a.st_dev == b.st_dev) {
		unlinkat(d->dirfd, name, 0);
		pthread_mutex_lock(&d->lock);
		struct entry *e = index_find(d, dg);
		if (e) {
			index_unlink(d, e);
			free(e);
		}
		pthread_mutex_unlock(&d->lock);
	}
	pthread_mutex_unlock(stripe_of(d, dg));
}

/* ---------------------------------------------------------------------------------------------
 * Start-up: options, directory, scan
 * ------------------------------------------------------------------------------------------- */

static int
opt_bool(const struct kvn_backend_env *env, const char *opt, bool def, bool *out)
{
	const char *v = env->get_opt(env, opt);
	*out = def;
	if (!v)
		return 0;
	if (!strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on") ||
	    !strcmp(v, "1"))
		*out = true;
	else if (!strcasecmp(v, "false") || !strcasecmp(v, "no") || !strcasecmp(v, "off") ||
		 !strcmp(v, "0"))
		*out = false;
	else {
		dlog(env, KVN_LOG_ERROR,
		     "option %s=\"%s\" is not a boolean: set extra_config %s.%s to true or false",
		     opt, v, env->name ? env->name : "disk", opt);
		return -EINVAL;
	}
	return 0;
}

static int
opt_capacity(const struct kvn_backend_env *env, uint64_t *out)
{
	const char *v = env->get_opt(env, "capacity_bytes");
	char *end = NULL;
	errno = 0;
	unsigned long long n = v && *v >= '0' && *v <= '9' ? strtoull(v, &end, 10) : 0;
	if (!v || errno || !end || *end || n == 0) {
		dlog(
		    env, KVN_LOG_ERROR,
		    "capacity_bytes is %s%s%s: set max_local_disk_size (GB) to a value > 0 for the "
		    "disk tier",
		    v ? "\"" : "unset", v ? v : "", v ? "\"" : "");
		return -EINVAL;
	}
	*out = n;
	return 0;
}

/* Proves the directory writable and finds out whether O_DIRECT really works there. */
static int
probe_dir(struct kvn_backend *d)
{
	bool direct;
	int r = kvn_disk_probe(d->dirfd, d->direct, &direct);
	d->direct_refused = d->direct && !direct;
	if (d->direct_refused)
		DLOG(d, KVN_LOG_INFO,
		     "the filesystem of %s refuses O_DIRECT; using buffered I/O (set extra_config "
		     "disk.o_direct: false to say so)",
		     d->dir);
	d->direct = direct;
	return r;
}

struct found {
	struct entry *e;
	struct timespec mtime;
};

static int
cmp_mtime(const void *a, const void *b)
{
	const struct timespec *x = &((const struct found *)a)->mtime;
	const struct timespec *y = &((const struct found *)b)->mtime;
	if (x->tv_sec != y->tv_sec)
		return x->tv_sec < y->tv_sec ? -1 : 1;
	return x->tv_nsec < y->tv_nsec ? -1 : x->tv_nsec > y->tv_nsec;
}

/* Checks one <digest>.kvc file: 0 with f filled, -EBADMSG (why set) when corrupt, another
 * -errno (why set) when it cannot be looked at now. */
static int
scan_one(struct kvn_backend *d, const char *name, struct kvn_digest dg, struct found *f, char *why,
	 size_t whylen)
{
	bool direct;
	int fd = open_chunk(d, name, O_RDONLY, &direct);
	if (fd < 0) {
		snprintf(why, whylen, "cannot open: %s", strerror(-fd));
		return fd == -ENOMEM ? -EIO : fd;
	}
	struct disk_hdr h;
	struct stat st;
	char key[KVN_KEY_MAX + 1];
	void *base = NULL;
	int r = kvn_disk_read(fd, d->verify, d->capacity, &h, key, &st, &base, why, whylen);
	close(fd);
	free(base);
	if (r)
		return r;
	struct kvn_key k;
	if (h.digest_lo != dg.lo || h.digest_hi != dg.hi ||
	    kvn_key_parse(&k, key, h.key_len, NULL, 0) || !kvn_digest_eq(k.digest, dg)) {
		snprintf(why, whylen, "key \"%.160s\" does not hash to the file name", key);
		return -EBADMSG;
	}
	f->e = entry_new(dg, h.len, key, h.key_len);
	f->mtime = st.st_mtim;
	return f->e ? 0 : -ENOMEM;
}

/* Rebuilds the index from the directory: chunks in LRU order of their mtime, temp files of
 * writes that never published deleted, corrupt files deleted with a warning. */
static int
scan_dir(struct kvn_backend *d)
{
	int fd = dup(d->dirfd);
	DIR *dp = fd < 0 ? NULL : fdopendir(fd);
	if (!dp) {
		int r = -errno;
		if (fd >= 0)
			close(fd);
		DLOG(d, KVN_LOG_ERROR, "cannot list %s: %s", d->dir, strerror(-r));
		return r;
	}
	rewinddir(dp);
	struct found *v = NULL;
	size_t n = 0, cap = 0, ntemp = 0, nbad = 0;
	int r = 0;
	struct dirent *de;
	while ((de = readdir(dp))) {
		const char *nm = de->d_name;
		size_t nl = strlen(nm);
		struct kvn_digest dg;
		char why[256];
		if (nl > 4 && !strcmp(nm + nl - 4, TEMP_SUFFIX)) {
			if (!unlinkat(d->dirfd, nm, 0))
				ntemp++;
			continue;
		}
		if (!kvn_disk_parse_name(nm, &dg))
			continue; /* not ours: leave it alone */
		if (n == cap) {
			cap = cap ? cap * 2 : 256;
			struct found *nv = realloc(v, cap * sizeof(*v));
			if (!nv) {
				r = -ENOMEM;
				break;
			}
			v = nv;
		}
		r = scan_one(d, nm, dg, &v[n], why, sizeof(why));
		if (r == -EBADMSG) {
			DLOG(d, KVN_LOG_WARN, "removing corrupt chunk %s/%s: %s", d->dir, nm, why);
			unlinkat(d->dirfd, nm, 0);
			d->errors++;
			nbad++;
		} else if (r && r != -ENOMEM) {
			DLOG(d, KVN_LOG_WARN, "skipping chunk %s/%s: %s", d->dir, nm, why);
			d->errors++;
		} else if (r) {
			break;
		} else {
			n++;
		}
		r = 0;
	}
	closedir(dp);
	if (n)
		qsort(v, n, sizeof(*v), cmp_mtime);
	for (size_t i = 0; i < n; i++)
		index_insert(d, v[i].e); /* oldest first: the newest ends up most recent */
	free(v);
	if (r)
		return r;

	/* capacity_bytes may have shrunk since the files were written. */
	struct entry *victims = NULL;
	while (d->bytes > d->capacity) {
		struct entry *e = d->lru.prev;
		index_unlink(d, e);
		e->hnext = victims;
		victims = e;
		d->evictions++;
	}
	unlink_victims(d, victims);
	DLOG(d, KVN_LOG_INFO,
	     "%s: %zu chunks (%" PRIu64 " of %" PRIu64 " bytes) indexed, %zu unpublished temp "
	     "files and %zu corrupt chunks removed; %s I/O%s%s",
	     d->dir, d->count, d->bytes, d->capacity, ntemp, nbad,
	     d->direct ? "O_DIRECT" : "buffered",
	     d->direct_refused ? " (O_DIRECT refused by the filesystem)" : "",
	     d->fsync ? ", fsync on publish" : "");
	return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Operations
 * ------------------------------------------------------------------------------------------- */

static void
disk_destroy(struct kvn_backend *d)
{
	if (!d)
		return;
	for (struct entry *e = d->lru.next, *next; e != &d->lru; e = next) {
		next = e->next;
		free(e);
	}
	free(d->bucket);
	if (d->dirfd >= 0)
		close(d->dirfd);
	pthread_mutex_destroy(&d->lock);
	pthread_cond_destroy(&d->room);
	for (int i = 0; i < NSTRIPE; i++)
		pthread_mutex_destroy(&d->stripe[i]);
	free(d->dir);
	free(d);
}

static int
disk_create(const struct kvn_backend_env *env, struct kvn_backend **out)
{
	*out = NULL;
	const char *path = env->get_opt(env, "path");
	if (!path || !*path) {
		dlog(env, KVN_LOG_ERROR,
		     "option path is not set: set local_disk to the directory of the disk tier "
		     "(e.g. file:///var/cache/kvnode)");
		return -EINVAL;
	}
	uint64_t capacity;
	bool direct, fsync_on, verify;
	int r = opt_capacity(env, &capacity);
	if (!r)
		r = opt_bool(env, "o_direct", true, &direct);
	if (!r)
		r = opt_bool(env, "fsync", false, &fsync_on);
	if (!r)
		r = opt_bool(env, "verify_on_start", false, &verify);
	if (r)
		return r;

	struct kvn_backend *d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->env = env;
	d->dirfd = -1;
	pthread_mutex_init(&d->lock, NULL);
	pthread_cond_init(&d->room, NULL);
	for (int i = 0; i < NSTRIPE; i++)
		pthread_mutex_init(&d->stripe[i], NULL);
	d->lru.next = d->lru.prev = &d->lru;
	d->nbucket = 1024;
	d->bucket = calloc(d->nbucket, sizeof(*d->bucket));
	d->dir = strdup(path);
	if (!d->bucket || !d->dir) {
		disk_destroy(d);
		return -ENOMEM;
	}
	d->capacity = capacity;
	d->direct = direct;
	d->fsync = fsync_on;
	d->verify = verify;

	r = kvn_mkdir_p(d->dir, 0755);
	if (!r) {
		d->dirfd = open(d->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		r = d->dirfd < 0 ? -errno : 0;
	}
	if (r) {
		DLOG(d, KVN_LOG_ERROR,
		     "cannot create disk tier directory %s (local_disk): %s; point local_disk at a "
		     "writable place",
		     d->dir, strerror(-r));
		goto invalid;
	}
	if (flock(d->dirfd, LOCK_EX | LOCK_NB)) {
		DLOG(d, KVN_LOG_ERROR,
		     "disk tier directory %s (local_disk) is in use by another kvnode: give each "
		     "node its own directory",
		     d->dir);
		disk_destroy(d);
		return -EBUSY;
	}
	r = probe_dir(d);
	if (r) {
		DLOG(d, KVN_LOG_ERROR,
		     "disk tier directory %s (local_disk) is not writable: %s; fix its permissions "
		     "or point local_disk elsewhere",
		     d->dir, strerror(-r));
		goto invalid;
	}
	r = scan_dir(d);
	if (r) {
		disk_destroy(d);
		return r;
	}
	*out = d;
	return 0;
invalid:
	disk_destroy(d);
	return -EINVAL;
}

static int
disk_contains(struct kvn_backend *d, const struct kvn_key *key, bool pin)
{
	pthread_mutex_lock(&d->lock);
	struct entry *e = index_find(d, key->digest);
	if (e && pin)
		pins_add(d, e, 1);
	pthread_mutex_unlock(&d->lock);
	return e != NULL;
}

static int
disk_put(struct kvn_backend *d, const struct kvn_key *key, struct kvn_buf *buf)
{
	uint64_t len = buf->len;
	if (len > d->capacity) {
		DLOG(d, KVN_LOG_DEBUG, "key %s: %" PRIu64 " bytes exceed capacity_bytes %" PRIu64,
		     key->str, len, d->capacity);
		return -ENOSPC;
	}
	_Alignas(DISK_ALIGN) char hdr[DISK_HDR];
	kvn_disk_hdr_build(hdr, key, len, XXH3_64bits(buf->data, len));
	struct entry *e = entry_new(key->digest, len, key->str, key->len);
	if (!e)
		return -ENOMEM;

	struct entry *victims = NULL;
	pthread_mutex_lock(&d->lock);
	int r = reserve_room(d, key, len, &victims);
	uint64_t pinned = d->pinned;
	pthread_mutex_unlock(&d->lock);
	unlink_victims(d, victims);
	uint64_t missed;
	char more[96];
	if (r) {
		free(e);
		if (kvn_ratelimit_ok(&d->put_rl, 1000, &missed))
			DLOG(d, KVN_LOG_WARN,
			     "no room for key %s (%" PRIu64 " bytes) in %s: %" PRIu64
			     " of capacity_bytes %" PRIu64 " are pinned%s",
			     key->str, len, d->dir, pinned, d->capacity,
			     held_back(more, sizeof(more), missed));
		return r;
	}

	/* Written under a temp name and renamed: a reader or a restart sees all or nothing. */
	char name[DISK_NAME_LEN + 1], tmp[DISK_NAME_LEN + 48];
	kvn_disk_chunk_name(name, key->digest);
	snprintf(tmp, sizeof(tmp), "%.32s.%d-%" PRIu64 TEMP_SUFFIX, name, (int)getpid(),
		 atomic_fetch_add(&d->tmpseq, 1));
	const char *what = "create";
	bool direct;
	int fd = open_chunk(d, tmp, O_WRONLY | O_CREAT | O_EXCL, &direct);
	r = fd < 0 ? fd : 0;
	if (fd >= 0) {
		what = "write";
		r = kvn_disk_write(fd, direct, hdr, buf->data, len);
		if (!r && d->fsync && fsync(fd)) {
			r = -errno;
			what = "fsync";
		}
		close(fd);
	}
	pthread_mutex_lock(stripe_of(d, key->digest));
	if (!r && renameat(d->dirfd, tmp, d->dirfd, name)) {
		r = -errno;
		what = "publish (rename)";
	}
	pthread_mutex_lock(&d->lock);
	if (!r)
		index_insert(d, e);
	unreserve(d, len);
	pthread_mutex_unlock(&d->lock);
	pthread_mutex_unlock(stripe_of(d, key->digest));
	if (r) {
		if (fd >= 0)
			unlinkat(d->dirfd, tmp, 0);
		free(e);
		d->errors++;
		if (kvn_ratelimit_ok(&d->put_rl, 1000, &missed))
			DLOG(d, KVN_LOG_ERROR,
			     "cannot %s %s/%s for key %s: %s (check the disk under %s)%s", what,
			     d->dir, tmp, key->str, strerror(-r), d->dir,
			     held_back(more, sizeof(more), missed));
		return r;
	}
	/* Published and readable; durable across a power loss only once the directory is. */
	if (d->fsync && fsync(d->dirfd)) {
		r = -errno;
		d->errors++;
		if (kvn_ratelimit_ok(&d->put_rl, 1000, &missed))
			DLOG(d, KVN_LOG_ERROR,
			     "fsync of directory %s failed after publishing key %s: %s%s", d->dir,
			     key->str, strerror(-r), held_back(more, sizeof(more), missed));
		return r;
	}
	d->puts++;
	return 0;
}

static void
page_release(struct kvn_buf *buf)
{
	free(buf); /* the view sits in the header page of its own allocation */
}

static int
disk_get(struct kvn_backend *d, const struct kvn_key *key, struct kvn_buf **out)
{
	*out = NULL;
	pthread_mutex_lock(&d->lock);
	struct entry *e = index_find(d, key->digest);
	if (e) {
		lru_unlink(e);
		lru_push_head(d, e);
	}
	pthread_mutex_unlock(&d->lock);
	if (!e)
		goto miss;

	/* From here the open fd keeps the bytes readable even if eviction unlinks the name. */
	char name[DISK_NAME_LEN + 1], why[256], text[KVN_KEY_MAX + 1];
	kvn_disk_chunk_name(name, key->digest);
	bool direct;
	int fd = open_chunk(d, name, O_RDONLY, &direct);
	if (fd < 0) {
		if (fd != -ENOENT) { /* ENOENT: evicted or removed since the lookup */
			d->errors++;
			DLOG(d, KVN_LOG_ERROR, "cannot open %s/%s for key %s: %s", d->dir, name,
			     key->str, strerror(-fd));
		}
		goto miss;
	}
	struct disk_hdr h;
	struct stat st;
	void *base = NULL;
	int r = kvn_disk_read(fd, true, d->capacity, &h, text, &st, &base, why, sizeof(why));
	if (!r && (h.digest_lo != key->digest.lo || h.digest_hi != key->digest.hi)) {
		free(base);
		snprintf(why, sizeof(why), "header is for another digest than the file name");
		r = -EBADMSG;
	}
	if (r == -ENOMEM) {
		close(fd);
		return r;
	}
	if (r) {
		drop_corrupt(d, fd, key->digest, why);
		close(fd);
		goto miss;
	}
	close(fd);
	if (h.key_len != key->len || memcmp(text, key->str, key->len)) {
		free(base);
		DLOG(d, KVN_LOG_WARN, "%s/%s holds key %s, not %s (digest collision)", d->dir, name,
		     text, key->str);
		goto miss;
	}
	struct kvn_buf *b = base;
	kvn_buf_init(b, (char *)base + DISK_HDR, h.len, page_release, NULL, 0);
	d->hits++;
	*out = b;
	return 0;
miss:
	d->misses++;
	return -ENOENT;
}

static int
disk_remove(struct kvn_backend *d, const struct kvn_key *key)
{
	char name[DISK_NAME_LEN + 1];
	kvn_disk_chunk_name(name, key->digest);
	pthread_mutex_lock(stripe_of(d, key->digest));
	pthread_mutex_lock(&d->lock);
	struct entry *e = index_find(d, key->digest);
	if (e) {
		index_unlink(d, e);
		pthread_cond_broadcast(&d->room);
	}
	pthread_mutex_unlock(&d->lock);
	/* Readers holding the file open keep their bytes; the space goes with the last close. */
	if (e && unlinkat(d->dirfd, name, 0) && errno != ENOENT)
		DLOG(d, KVN_LOG_WARN, "cannot delete %s/%s (key %s): %s", d->dir, name, key->str,
		     strerror(errno));
	pthread_mutex_unlock(stripe_of(d, key->digest));
	free(e);
	return e ? 0 : -ENOENT;
}

static int
pin_delta(struct kvn_backend *d, const struct kvn_key *key, int delta)
{
	int r = 0;
	pthread_mutex_lock(&d->lock);
	struct entry *e = index_find(d, key->digest);
	if (!e)
		r = -ENOENT;
	else if (delta < 0 && !e->pins)
		r = -EINVAL;
	else
		pins_add(d, e, delta);
	if (delta < 0)
		pthread_cond_broadcast(&d->room);
	pthread_mutex_unlock(&d->lock);
	return r;
}

static int
disk_pin(struct kvn_backend *d, const struct kvn_key *key)
{
	return pin_delta(d, key, 1);
}

static int
disk_unpin(struct kvn_backend *d, const struct kvn_key *key)
{
	return pin_delta(d, key, -1);
}

/* Calls cb outside the lock on a snapshot, so cb may call back into the backend. */
static int
disk_list(struct kvn_backend *d, kvn_list_cb cb, void *ctx)
{
	struct snap {
		uint64_t len;
		size_t off;
		uint16_t key_len;
	} *s = NULL;
	char *text = NULL;
	size_t n = 0, bytes = 0;
	pthread_mutex_lock(&d->lock);
	for (struct entry *e = d->lru.next; e != &d->lru; e = e->next)
		bytes += e->key_len;
	s = malloc((d->count ? d->count : 1) * sizeof(*s));
	text = malloc(bytes ? bytes : 1);
	if (s && text) {
		bytes = 0;
		for (struct entry *e = d->lru.next; e != &d->lru; e = e->next, n++) {
			s[n] = (struct snap){.len = e->len, .off = bytes, .key_len = e->key_len};
			memcpy(text + bytes, e->key, e->key_len);
			bytes += e->key_len;
		}
	}
	pthread_mutex_unlock(&d->lock);
	int r = s && text ? 0 : -ENOMEM;
	for (size_t i = 0; i < n && !r; i++) {
		struct kvn_key k;
		if (!kvn_key_parse(&k, text + s[i].off, s[i].key_len, NULL, 0))
			r = cb(ctx, &k, s[i].len);
	}
	free(s);
	free(text);
	return r;
}

/* What a put without fsync left in the page cache reaches the disk: one syncfs of the
 * directory's file system (the files and the renames that published them). */
static int
disk_sync(struct kvn_backend *d)
{
	if (syncfs(d->dirfd) == 0)
		return 0;
	int rc = -errno;
	d->errors++;
	d->env->log(d->env, KVN_LOG_ERROR,
		    "syncfs of %s failed: %s: chunks put since the last "
		    "flush may not survive a power loss",
		    d->dir, strerror(-rc));
	return rc;
}

static void
disk_stats(struct kvn_backend *d, struct kvn_backend_stats *out)
{
	pthread_mutex_lock(&d->lock);
	out->count = d->count;
	out->bytes = d->bytes;
	pthread_mutex_unlock(&d->lock);
	out->capacity = d->capacity;
	out->hits = d->hits;
	out->misses = d->misses;
	out->puts = d->puts;
	out->evictions = d->evictions;
	out->errors = d->errors;
}

const struct kvn_backend_ops kvn_disk_backend_ops = {
    KVN_BACKEND_OPS_INIT,
    .flags = KVN_BACKEND_F_SLOW,
    .name = "disk",
    .create = disk_create,
    .destroy = disk_destroy,
    .contains = disk_contains,
    .put = disk_put,
    .get = disk_get,
    .remove = disk_remove,
    .pin = disk_pin,
    .unpin = disk_unpin,
    .list = disk_list,
    .stats = disk_stats,
    .sync = disk_sync,
};
