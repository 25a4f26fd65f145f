/* fs://[HOST:PORT]/path[,/path...] — one file per key under one or more directories (a local
 * disk or a shared mount), laid out as LMCache's FSConnector does, so LMCache and kvnode share
 * the files. kvnode's integrity tag and the exact key text ride in extended attributes.
 * Options: fsync, slash, save_chunk_meta (docs/architecture.md §10). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "core/fdio.h"
#include "connectors/registry.h"
#include "core/netaddr.h"
#include "connectors/remote_value.h"

#define XATTR_TAG  "user.kvnode.tag"
#define XATTR_KEY  "user.kvnode.key"
#define SUFFIX	   ".data"
#define MAX_PATHS  64 /* base paths of one URL */
#define SLASH_SEP  "-SEP-"
#define SLASH_DASH "-"

struct kvn_connector {
	const struct kvn_connector_env *env;
	size_t npaths;
	int dirfd[MAX_PATHS];
	char *path[MAX_PATHS];
	bool fsync;
	bool save_meta; /* LMCache's save_chunk_meta: the 28-byte header before the payload */
	const char *slash; /* what '/' of a key becomes in a file name */
	const char *slash_alt; /* the other generation's, tried when a file is not found */
	bool warned_xattr;
	uint64_t value_max; /* max_chunk_size: longer files are refused unread */
};

static _Atomic uint64_t tmp_seq;

/* --------------------------------------------------------------------------------------------
 * File names, as LMCache's FSConnector (lmcache/v1/storage_backend/connector/fs_connector.py,
 * _get_file_name) makes them: the key text with each '/' replaced, then ".data". Current
 * LMCache writes '/' as "-SEP-" (its pull request 2075, November 2025); earlier ones as "-".
 * Both generations map two keys to one name ("a/b" and "a-SEP-b", or "a/b" and "a-b"): the
 * key text in XATTR_KEY tells kvnode's files apart. A name longer than NAME_MAX cannot exist;
 * LMCache's open() then fails, and so does kvnode's put, with a message.
 * -------------------------------------------------------------------------------------------- */

/* 0, or -ENAMETOOLONG when the name would not fit NAME_MAX. */
static int
file_name(char out[NAME_MAX + 1], const struct kvn_key *key, const char *slash)
{
	size_t o = 0, sl = strlen(slash);
	for (size_t i = 0; i < key->len; i++) {
		bool is_slash = key->str[i] == '/';
		size_t need = is_slash ? sl : 1;
		if (o + need + sizeof(SUFFIX) - 1 > NAME_MAX)
			return -ENAMETOOLONG;
		if (is_slash)
			memcpy(out + o, slash, sl);
		else
			out[o] = key->str[i];
		o += need;
	}
	if (o + sizeof(SUFFIX) - 1 > NAME_MAX)
		return -ENAMETOOLONG;
	memcpy(out + o, SUFFIX, sizeof(SUFFIX));
	return 0;
}

/* The base path of key: LMCache's _get_base_path, abs(chunk_hash) % npaths. A key without an
 * LMCache hash (an opaque key, which LMCache never writes) goes by its digest. */
static size_t
shard_of(const struct kvn_connector *c, const struct kvn_key *key)
{
	if (c->npaths == 1)
		return 0;
	int i = kvn_key_hash_mod(key, (uint32_t)c->npaths);
	return i >= 0 ? (size_t)i : (size_t)(key->digest.lo % c->npaths);
}

/* --------------------------------------------------------------------------------------------
 * Connect. LMCache's URL is fs://HOST:PORT/path (parse_remote_url wants both; host and port are
 * ignored) or fs:///path (newer fs_adapter.py: the path alone). The path may be a comma-separated
 * list of base paths, each stripped of blanks (FSConnector.__init__).
 * -------------------------------------------------------------------------------------------- */

static void
free_paths(struct kvn_connector *c)
{
	for (size_t i = 0; i < c->npaths; i++) {
		if (c->dirfd[i] >= 0)
			close(c->dirfd[i]);
		free(c->path[i]);
	}
	c->npaths = 0;
}

static int
bad_url(const struct kvn_connector_env *env, const char *why)
{
	env->log(env, KVN_LOG_ERROR,
		 "remote_url %s: %s; write fs:///abs/path or fs://localhost:0/abs/path (LMCache's "
		 "forms; several paths: fs:///p1,/p2)",
		 env->url_redacted, why);
	return -EINVAL;
}

static bool
blank(char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\v' || ch == '\f';
}

static int
add_path(struct kvn_connector *c, const char *p, size_t n)
{
	const struct kvn_connector_env *env = c->env;
	while (n && blank(*p))
		p++, n--;
	while (n && blank(p[n - 1]))
		n--;
	if (n == 0)
		return bad_url(env, "an empty base path in the list");
	if (p[0] != '/')
		return bad_url(env, "every base path must be absolute");
	if (c->npaths == MAX_PATHS)
		return bad_url(env, "more than 64 base paths");
	if (n >= PATH_MAX)
		return -ENAMETOOLONG;
	char *dir = strndup(p, n);
	if (!dir)
		return -ENOMEM;
	c->path[c->npaths] = dir;
	c->dirfd[c->npaths++] = -1;
	int rc = kvn_mkdir_p(dir, 0755);
	int fd = rc ? -1 : open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (!rc && fd < 0)
		rc = -errno;
	if (rc < 0) {
		env->log(env, KVN_LOG_ERROR, "remote_url %s: cannot use directory %s: %s",
			 env->url_redacted, dir, strerror(-rc));
		return rc;
	}
	c->dirfd[c->npaths - 1] = fd;
	return 0;
}

static int
parse_url(struct kvn_connector *c)
{
	const struct kvn_connector_env *env = c->env;
	const char *u = env->url;
	if (strncmp(u, "fs://", 5))
		return bad_url(env, "not an fs:// URL");
	u += 5;
	size_t alen = strcspn(u, "/?#");
	if (alen) {
		/* LMCache reads what comes before the first '/' as HOST:PORT and ignores it. Text
		 * that is not one ("fs://cache/x", "fs://relative") would be a host to LMCache and
		 * a directory to a reader of the URL: refused rather than guessed. */
		char hp[KVN_HOST_MAX + 16], host[KVN_HOST_MAX];
		uint16_t port;
		if (alen >= sizeof(hp))
			return bad_url(env, "the part before the path is not HOST:PORT");
		memcpy(hp, u, alen);
		hp[alen] = '\0';
		if (!strchr(hp, ':') || kvn_hostport_parse(hp, host, &port, NULL, 0) < 0)
			return bad_url(env, "the part before the path is not HOST:PORT (LMCache "
					    "would take it for a host and drop it)");
	}
	const char *p = u + alen;
	size_t plen = strcspn(p, "?#");
	if (plen == 0 || p[0] != '/')
		return bad_url(env, "no directory");
	if (plen >= PATH_MAX * 4)
		return -ENAMETOOLONG;
	char list[PATH_MAX * 4];
	memcpy(list, p, plen);
	list[plen] = '\0';
	if (list[plen - 1] == ',')
		return bad_url(env, "an empty base path in the list");
	for (char *e = list;;) {
		size_t n = strcspn(e, ",");
		int rc = add_path(c, e, n);
		if (rc || !e[n])
			return rc;
		e += n + 1;
	}
}

static int
bool_opt(const struct kvn_connector_env *env, const char *name, bool *out)
{
	const char *v = env->get_opt(env, name);
	if (!v)
		return 0;
	if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes"))
		*out = true;
	else if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no"))
		*out = false;
	else {
		env->log(env, KVN_LOG_ERROR, "option %s=%s: write true or false", name, v);
		return -EINVAL;
	}
	return 0;
}

static int
fs_connect(const struct kvn_connector_env *env, struct kvn_connector **out)
{
	struct kvn_connector *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->env = env;
	c->value_max = kvn_remote_value_max(env);
	c->save_meta = true;
	c->slash = SLASH_SEP;
	c->slash_alt = SLASH_DASH;
	int rc = bool_opt(env, "fsync", &c->fsync);
	if (!rc)
		rc = bool_opt(env, "save_chunk_meta", &c->save_meta);
	const char *sl = env->get_opt(env, "slash");
	if (!rc && sl && !strcmp(sl, "dash")) {
		c->slash = SLASH_DASH;
		c->slash_alt = SLASH_SEP;
	} else if (!rc && sl && strcmp(sl, "sep")) {
		env->log(env, KVN_LOG_ERROR,
			 "option slash=%s: write sep (a key's '/' is \"-SEP-\" in file names, as "
			 "LMCache writes them since November 2025) or dash (\"-\", earlier "
			 "LMCache)",
			 sl);
		rc = -EINVAL;
	}
	if (!rc)
		rc = parse_url(c);
	if (rc) {
		free_paths(c);
		free(c);
		return rc;
	}
	*out = c;
	return 0;
}

static void
fs_close(struct kvn_connector *c)
{
	free_paths(c);
	free(c);
}

/* --------------------------------------------------------------------------------------------
 * Operations
 * -------------------------------------------------------------------------------------------- */

/* Whether the file at fd holds key: its XATTR_KEY says so, or it has none (LMCache wrote it,
 * or a file system without user xattrs) and its name is the key's. */
static bool
same_key(int fd, const struct kvn_key *key)
{
	char k[KVN_KEY_MAX + 1];
	ssize_t n = fgetxattr(fd, XATTR_KEY, k, sizeof(k));
	if (n < 0)
		return errno != ERANGE;
	return (size_t)n == key->len && !memcmp(k, key->str, key->len);
}

/* Opens key's file: under the configured name, else under the other generation's. -ENOENT
 * when neither is there (or only another key's file is); name gets the one opened. */
static int
open_key(struct kvn_connector *c, const struct kvn_key *key, int dirfd, char name[NAME_MAX + 1])
{
	const char *style[2] = {c->slash, c->slash_alt};
	int first = -ENOENT;
	for (int i = 0; i < (memchr(key->str, '/', key->len) ? 2 : 1); i++) {
		if (file_name(name, key, style[i]) < 0)
			continue; /* a file that long cannot exist */
		int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			if (errno != ENOENT && first == -ENOENT)
				first = -errno;
			continue;
		}
		if (same_key(fd, key))
			return fd;
		close(fd); /* another key whose name maps to the same file */
	}
	return first;
}

static int
fs_exists(struct kvn_connector *c, const struct kvn_key *key)
{
	char name[NAME_MAX + 1];
	int fd = open_key(c, key, c->dirfd[shard_of(c, key)], name);
	if (fd >= 0) {
		close(fd);
		return 1;
	}
	return fd == -ENOENT ? 0 : fd;
}

static int
pread_full(int fd, void *buf, size_t n, off_t off)
{
	for (size_t done = 0; done < n;) {
		ssize_t r = pread(fd, (char *)buf + done, n - done, off + (off_t)done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return r < 0 ? -errno : -EBADMSG; /* shorter than it said: corrupt */
		done += (size_t)r;
	}
	return 0;
}

static int
fs_get(struct kvn_connector *c, const struct kvn_key *key, struct kvn_remote_value *out)
{
	char name[NAME_MAX + 1];
	uint8_t hdr[KVN_REMOTE_META_LEN];
	struct stat st;
	size_t s = shard_of(c, key);
	memset(out, 0, sizeof(*out));
	int fd = open_key(c, key, c->dirfd[s], name);
	if (fd < 0)
		return fd;
	int rc = fstat(fd, &st) < 0 ? -errno : 0;
	size_t hlen = c->save_meta ? KVN_REMOTE_META_LEN : 0;
	if (rc == 0 && (size_t)st.st_size < hlen)
		rc = -EBADMSG;
	if (rc == 0 && c->save_meta) {
		rc = pread_full(fd, hdr, sizeof(hdr), 0);
		if (rc == 0 && kvn_remote_meta_decode(hdr, sizeof(hdr), &out->meta) < 0)
			rc = -EBADMSG;
	} else if (rc == 0 && kvn_remote_meta_for_bytes((size_t)st.st_size, &out->meta) < 0) {
		rc = -EBADMSG; /* save_chunk_meta: false: the whole file is the payload */
	}
	struct kvn_buf *b = NULL;
	if (rc == 0 && (uint64_t)st.st_size - hlen > c->value_max) {
		c->env->log(c->env, KVN_LOG_WARN,
			    "fs %s: %s holds %llu bytes, more than max_chunk_size (%llu): refused",
			    c->path[s], name, (unsigned long long)(st.st_size - (off_t)hlen),
			    (unsigned long long)c->value_max);
		rc = -EMSGSIZE;
	}
	if (rc == 0 && !(b = kvn_buf_new((size_t)st.st_size - hlen)))
		rc = -ENOMEM;
	if (rc == 0)
		rc = pread_full(fd, b->data, b->len, (off_t)hlen);
	if (rc == 0) {
		ssize_t t = fgetxattr(fd, XATTR_TAG, out->tag, sizeof(out->tag));
		/* A tag too long for the buffer is not ours: its length fails the check. */
		out->tag_len = t > 0			  ? (uint32_t)t
			       : t < 0 && errno == ERANGE ? KVN_REMOTE_TAG_MAX + 1
							  : 0;
		out->payload = b;
		b = NULL;
	}
	if (rc == -EBADMSG)
		c->env->log(c->env, KVN_LOG_WARN,
			    "key %s: file %s/%s is truncated or its header is not LMCache's",
			    key->str, c->path[s], name);
	kvn_buf_unref(b);
	close(fd);
	return rc;
}

static int
set_attrs(struct kvn_connector *c, int fd, const struct kvn_key *key,
	  const struct kvn_remote_value *v)
{
	if ((v->tag_len && fsetxattr(fd, XATTR_TAG, v->tag, v->tag_len, 0) < 0) ||
	    fsetxattr(fd, XATTR_KEY, key->str, key->len, 0) < 0) {
		if (errno != ENOTSUP)
			return -errno;
		/* Values stay readable; only the checksum is lost on such a filesystem. */
		if (!c->warned_xattr)
			c->env->log(c->env, KVN_LOG_WARN,
				    "%s does not support user xattrs: values "
				    "are checked by their header only",
				    c->path[0]);
		c->warned_xattr = true;
	}
	return 0;
}

static int
fs_put(struct kvn_connector *c, const struct kvn_key *key, const struct kvn_remote_value *v)
{
	char name[NAME_MAX + 1], tmp[64];
	uint8_t hdr[KVN_REMOTE_META_LEN];
	size_t s = shard_of(c, key);
	int dirfd = c->dirfd[s];
	if (file_name(name, key, c->slash) < 0) {
		c->env->log(c->env, KVN_LOG_WARN,
			    "key %s: its file name would be longer than %d bytes, which %s cannot "
			    "hold (nor can LMCache write it): not stored",
			    key->str, NAME_MAX, c->path[s]);
		return -ENAMETOOLONG;
	}
	/* A dot name that does not end in SUFFIX: list() skips it, and a crash leaves only such
	 * leftovers behind. */
	snprintf(tmp, sizeof(tmp), ".tmp-%d-%llu", (int)getpid(),
		 (unsigned long long)atomic_fetch_add(&tmp_seq, 1));
	int fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	size_t hlen = c->save_meta ? sizeof(hdr) : 0;
	kvn_remote_meta_encode(&v->meta, hdr);
	int rc = hlen ? kvn_pwrite_full(fd, hdr, hlen, 0) : 0;
	if (rc == 0)
		rc = kvn_pwrite_full(fd, v->payload->data, v->payload->len, (off_t)hlen);
	if (rc == 0)
		rc = set_attrs(c, fd, key, v);
	if (rc == 0 && c->fsync && fsync(fd) < 0)
		rc = -errno;
	close(fd);
	if (rc == 0 && renameat(dirfd, tmp, dirfd, name) < 0)
		rc = -errno;
	if (rc < 0) {
		unlinkat(dirfd, tmp, 0);
		c->env->log(c->env, KVN_LOG_WARN, "key %s: cannot write %s/%s: %s", key->str,
			    c->path[s], name, strerror(-rc));
		return rc;
	}
	/* The other generation's file of this key would be found by a reader of that name
	 * with the old bytes. */
	char old[NAME_MAX + 1];
	if (memchr(key->str, '/', key->len) && file_name(old, key, c->slash_alt) == 0) {
		int ofd = openat(dirfd, old, O_RDONLY | O_CLOEXEC);
		if (ofd >= 0) {
			if (same_key(ofd, key))
				unlinkat(dirfd, old, 0);
			close(ofd);
		}
	}
	if (c->fsync && fsync(dirfd) < 0)
		return -errno;
	return 0;
}

static int
fs_remove(struct kvn_connector *c, const struct kvn_key *key)
{
	char name[NAME_MAX + 1];
	int dirfd = c->dirfd[shard_of(c, key)];
	int rc = -ENOENT;
	/* Both generations' names of the key, so that no reader finds it afterwards. */
	for (;;) {
		int fd = open_key(c, key, dirfd, name);
		if (fd < 0)
			return rc == 0 ? 0 : fd;
		close(fd);
		if (unlinkat(dirfd, name, 0) < 0)
			return errno == ENOENT ? rc : -errno;
		rc = 0;
	}
}

/* Key text of an LMCache file name: the stem, "-SEP-" read back as '/' (what its pull request
 * 2075 made the separator for). A "-" of the older generation cannot be told from a '-' of
 * the key: such a name is listed as it is, as LMCache's own list() does (f.stem). */
static size_t
name_to_key(const char *name, size_t n, char *out)
{
	size_t o = 0, sl = strlen(SLASH_SEP);
	for (size_t i = 0; i < n && o < KVN_KEY_MAX;) {
		if (n - i >= sl && !memcmp(name + i, SLASH_SEP, sl)) {
			out[o++] = '/';
			i += sl;
		} else {
			out[o++] = name[i++];
		}
	}
	return o;
}

static int
list_dir(struct kvn_connector *c, int dirfd, kvn_connector_list_cb cb, void *ctx)
{
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d) {
		int rc = -errno;
		if (fd >= 0)
			close(fd);
		return rc;
	}
	const size_t sl = strlen(SUFFIX);
	char key[KVN_KEY_MAX + 1];
	int rc = 0;
	struct dirent *e;
	(void)c;
	while (rc == 0 && (e = readdir(d))) {
		size_t n = strlen(e->d_name), klen;
		/* Every "*.data" (LMCache's glob, dot names included); kvnode's temporary files
		 * and LMCache's ("<name>.tmp") do not end in SUFFIX. */
		if (n <= sl || strcmp(e->d_name + n - sl, SUFFIX) ||
		    (e->d_type != DT_REG && e->d_type != DT_UNKNOWN))
			continue;
		/* The exact key from XATTR_KEY; else (LMCache wrote it) from the name. */
		int f = openat(dirfd, e->d_name, O_RDONLY | O_CLOEXEC);
		ssize_t k = f >= 0 ? fgetxattr(f, XATTR_KEY, key, KVN_KEY_MAX) : -1;
		if (f >= 0)
			close(f);
		klen = k > 0 ? (size_t)k : name_to_key(e->d_name, n - sl, key);
		key[klen] = '\0';
		rc = cb(ctx, key, klen);
	}
	closedir(d);
	return rc;
}

static int
fs_list(struct kvn_connector *c, kvn_connector_list_cb cb, void *ctx)
{
	int rc = 0;
	for (size_t i = 0; i < c->npaths && !rc; i++)
		rc = list_dir(c, c->dirfd[i], cb, ctx);
	return rc;
}

static int
fs_ping(struct kvn_connector *c)
{
	for (size_t i = 0; i < c->npaths; i++) {
		struct stat st;
		if (fstat(c->dirfd[i], &st) < 0)
			return -errno;
		/* A directory deleted under us: nothing written now would be found again. */
		if (st.st_nlink == 0)
			return -ENOTCONN;
	}
	return 0;
}

const struct kvn_connector_ops kvn_fs_connector_ops = {
    KVN_CONNECTOR_OPS_INIT,
    .scheme = "fs",
    .connect = fs_connect,
    .close = fs_close,
    .exists = fs_exists,
    .get = fs_get,
    .put = fs_put,
    .remove = fs_remove,
    .list = fs_list,
    .ping = fs_ping,
};
