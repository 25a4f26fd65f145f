/* fs:///path — one file per key under a directory (a local disk or a shared mount), laid out as
 * LMCache's FSConnector does: "<key with '/' as '->.data" holding the 28-byte header then the
 * payload, published by atomic rename, so LMCache and kvnode share one directory. kvnode's
 * integrity tag and the exact key text ride in extended attributes. Options: fsync. */
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

#include "backends/disk_file.h"
#include "connectors/registry.h"
#include "node/remote_value.h"

#define XATTR_TAG    "user.kvnode.tag"
#define XATTR_KEY    "user.kvnode.key"
#define SUFFIX	     ".data"
#define NAME_MAX_ENC 200 /* longer encodings are replaced by the key's digest */

struct kvn_connector {
	const struct kvn_connector_env *env;
	int dirfd;
	char path[PATH_MAX];
	bool fsync;
	bool warned_xattr;
};

static _Atomic uint64_t tmp_seq;

/* --------------------------------------------------------------------------------------------
 * File names: LMCache's (the key text, '/' written as '-'), so either reads what the other
 * wrote. '%' and a leading '.' are percent-encoded (LMCache keys have neither; it keeps such
 * names out of dot-files), over-long names become "%H<digest>". '/' -> '-' can map two keys to
 * one name: the key text in XATTR_KEY tells them apart, and list() gives it back.
 * -------------------------------------------------------------------------------------------- */

static void
file_name(char out[NAME_MAX + 1], const struct kvn_key *key)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;
	for (size_t i = 0; i < key->len && o <= NAME_MAX_ENC; i++) {
		unsigned char ch = (unsigned char)key->str[i];
		if (ch == '/') {
			out[o++] = '-';
		} else if (ch == '%' || (i == 0 && ch == '.')) {
			out[o++] = '%';
			out[o++] = hex[ch >> 4];
			out[o++] = hex[ch & 15];
		} else {
			out[o++] = (char)ch;
		}
	}
	if (o > NAME_MAX_ENC)
		o = (size_t)snprintf(out, NAME_MAX + 1, "%%H%016llx%016llx",
				     (unsigned long long)key->digest.hi,
				     (unsigned long long)key->digest.lo);
	memcpy(out + o, SUFFIX, sizeof(SUFFIX));
}

static int
hexval(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Key text of a file name (without SUFFIX); -1 for names this connector did not write. */
static int
decode_name(const char *name, size_t n, char *out, size_t *outlen)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		if (name[i] != '%') {
			out[o++] = name[i];
			continue;
		}
		if (i + 2 >= n || hexval(name[i + 1]) < 0 || hexval(name[i + 2]) < 0)
			return -1;
		out[o++] = (char)(hexval(name[i + 1]) << 4 | hexval(name[i + 2]));
		i += 2;
	}
	*outlen = o;
	return o > 0 && o <= KVN_KEY_MAX ? 0 : -1;
}

/* --------------------------------------------------------------------------------------------
 * Connect
 * -------------------------------------------------------------------------------------------- */

static int
fs_connect(const struct kvn_connector_env *env, struct kvn_connector **out)
{
	const char *p = strstr(env->url, "://");
	char dir[PATH_MAX];
	size_t n = p ? strcspn(p + 3, "?#") : 0;
	if (!p || n == 0) {
		env->log(env, KVN_LOG_ERROR, "remote_url %s: no directory; write fs:///abs/path",
			 env->url_redacted);
		return -EINVAL;
	}
	p += 3;
	int len = p[0] == '/' ? snprintf(dir, sizeof(dir), "%.*s", (int)n, p)
			      : snprintf(dir, sizeof(dir), "%s/%.*s", env->config_dir, (int)n, p);
	if (len < 0 || (size_t)len >= sizeof(dir))
		return -ENAMETOOLONG;

	struct kvn_connector *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->env = env;
	snprintf(c->path, sizeof(c->path), "%s", dir);
	const char *fs = env->get_opt(env, "fsync");
	if (fs) {
		if (!strcmp(fs, "true") || !strcmp(fs, "1") || !strcmp(fs, "yes"))
			c->fsync = true;
		else if (strcmp(fs, "false") && strcmp(fs, "0") && strcmp(fs, "no")) {
			env->log(env, KVN_LOG_ERROR, "option fsync=%s: write true or false", fs);
			free(c);
			return -EINVAL;
		}
	}
	int rc = kvn_disk_mkdir_p(dir);
	if (rc == 0) {
		c->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		rc = c->dirfd < 0 ? -errno : 0;
	}
	if (rc < 0) {
		env->log(env, KVN_LOG_ERROR, "remote_url %s: cannot use directory %s: %s",
			 env->url_redacted, dir, strerror(-rc));
		free(c);
		return rc;
	}
	*out = c;
	return 0;
}

static void
fs_close(struct kvn_connector *c)
{
	close(c->dirfd);
	free(c);
}

/* --------------------------------------------------------------------------------------------
 * Operations
 * -------------------------------------------------------------------------------------------- */

static int
fs_exists(struct kvn_connector *c, const struct kvn_key *key)
{
	char name[NAME_MAX + 1];
	struct stat st;
	file_name(name, key);
	if (fstatat(c->dirfd, name, &st, 0) == 0)
		return 1;
	return errno == ENOENT ? 0 : -errno;
}

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
	memset(out, 0, sizeof(*out));
	file_name(name, key);
	int fd = openat(c->dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? -ENOENT : -errno;
	int rc = fstat(fd, &st) < 0 ? -errno : 0;
	if (rc == 0 && !same_key(fd, key))
		rc = -ENOENT; /* another key whose name maps to the same file */
	if (rc == 0 && st.st_size < KVN_REMOTE_META_LEN)
		rc = -EBADMSG;
	if (rc == 0)
		rc = pread_full(fd, hdr, sizeof(hdr), 0);
	if (rc == 0 && kvn_remote_meta_decode(hdr, sizeof(hdr), &out->meta) < 0)
		rc = -EBADMSG;
	struct kvn_buf *b = NULL;
	if (rc == 0 && !(b = kvn_buf_new((size_t)st.st_size - KVN_REMOTE_META_LEN)))
		rc = -ENOMEM;
	if (rc == 0)
		rc = pread_full(fd, b->data, b->len, KVN_REMOTE_META_LEN);
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
			    "key %s: file %s/%s is truncated or its header "
			    "is not LMCache's",
			    key->str, c->path, name);
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
				    c->path);
		c->warned_xattr = true;
	}
	return 0;
}

static int
fs_put(struct kvn_connector *c, const struct kvn_key *key, const struct kvn_remote_value *v)
{
	char name[NAME_MAX + 1], tmp[64];
	uint8_t hdr[KVN_REMOTE_META_LEN];
	file_name(name, key);
	/* A dot name: list() skips it, and a crash leaves only such leftovers behind. */
	snprintf(tmp, sizeof(tmp), ".tmp-%d-%llu", (int)getpid(),
		 (unsigned long long)atomic_fetch_add(&tmp_seq, 1));
	int fd = openat(c->dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	kvn_remote_meta_encode(&v->meta, hdr);
	int rc = kvn_disk_pwrite_full(fd, hdr, sizeof(hdr), 0);
	if (rc == 0)
		rc = kvn_disk_pwrite_full(fd, v->payload->data, v->payload->len, sizeof(hdr));
	if (rc == 0)
		rc = set_attrs(c, fd, key, v);
	if (rc == 0 && c->fsync && fsync(fd) < 0)
		rc = -errno;
	close(fd);
	if (rc == 0 && renameat(c->dirfd, tmp, c->dirfd, name) < 0)
		rc = -errno;
	if (rc < 0) {
		unlinkat(c->dirfd, tmp, 0);
		c->env->log(c->env, KVN_LOG_WARN, "key %s: cannot write %s/%s: %s", key->str,
			    c->path, name, strerror(-rc));
		return rc;
	}
	if (c->fsync && fsync(c->dirfd) < 0)
		return -errno;
	return 0;
}

static int
fs_remove(struct kvn_connector *c, const struct kvn_key *key)
{
	char name[NAME_MAX + 1];
	file_name(name, key);
	int fd = openat(c->dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? -ENOENT : -errno;
	bool mine = same_key(fd, key);
	close(fd);
	if (!mine)
		return -ENOENT; /* the file of another key with the same name */
	if (unlinkat(c->dirfd, name, 0) == 0)
		return 0;
	return errno == ENOENT ? -ENOENT : -errno;
}

static int
fs_list(struct kvn_connector *c, kvn_connector_list_cb cb, void *ctx)
{
	int fd = openat(c->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
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
	while (rc == 0 && (e = readdir(d))) {
		size_t n = strlen(e->d_name), klen;
		if (e->d_name[0] == '.' || n <= sl || strcmp(e->d_name + n - sl, SUFFIX))
			continue;
		/* The exact key from XATTR_KEY; else (LMCache wrote it) the name, as LMCache's own
		 * list gives it ('/' stays '-'). */
		int f = openat(c->dirfd, e->d_name, O_RDONLY | O_CLOEXEC);
		ssize_t k = f >= 0 ? fgetxattr(f, XATTR_KEY, key, KVN_KEY_MAX) : -1;
		if (f >= 0)
			close(f);
		if (k > 0)
			klen = (size_t)k;
		else if (!strncmp(e->d_name, "%H", 2) ||
			 decode_name(e->d_name, n - sl, key, &klen) < 0)
			continue;
		key[klen] = '\0';
		rc = cb(ctx, key, klen);
	}
	closedir(d);
	return rc;
}

static int
fs_ping(struct kvn_connector *c)
{
	struct stat st;
	if (fstat(c->dirfd, &st) < 0)
		return -errno;
	/* The directory was deleted under us: nothing written now would be found again. */
	return st.st_nlink == 0 ? -ENOTCONN : 0;
}

const struct kvn_connector_ops kvn_fs_connector_ops = {
    .abi = KVN_CONNECTOR_ABI,
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
