/* Fuzzes remote values (connectors/remote_value.c): LMCache's 28-byte header, kvnode's integrity tag
 * and the checks the node applies to what a store returns, and the fs:// connector
 * (connectors/fs.c) reading files someone else wrote. The first input byte picks the mode:
 *   0  a header of any length: decode, and re-encode what decodes;
 *   1  a value (header, tag, payload from the input): check it, tag it, tag it in pieces;
 *   2  a file of the fs:// store: a key from the input is put, then its file is overwritten
 *      with the input's bytes and extended attributes, then read back, listed and removed;
 *   3  a file name in the fs:// store (from the input), listed.
 * Properties: decode refuses exactly the out-of-range headers and round-trips the others; a
 * value passes the check exactly when its header describes its payload and its tag (if any)
 * is the one kvnode computes, in one piece or in any pieces; the fs connector returns what the
 * file holds (and the check refuses a header that does not describe it), and keys of at most
 * KVN_KEY_MAX bytes. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "connectors/registry.h"
#include "kvnode/connector.h"
#include "core/log.h"
#include "connectors/remote_value.h"
#include "tests/fuzz/fuzz_common.h"

static const char *dir;
static char url[400];
static struct kvn_connector *fs;
static const struct kvn_connector_ops *ops = &kvn_fs_connector_ops;
static struct kvn_remote_tagger *tagger;

static struct kvn_connector_env env;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fz_init();
	dir = fz_tmpdir("remote-value");
	snprintf(url, sizeof(url), "fs://%s", dir);
	kvn_connector_env_plain(&env, url, NULL, 5000);
	if (ops->connect(&env, &fs) < 0)
		fz_fail("fs connector on %s does not open", url);
	tagger = kvn_remote_tagger_new();
	if (!tagger)
		fz_fail("out of memory");
	return 0;
}

static bool
in_range(const struct kvn_remote_meta *m)
{
	if (m->length < 0 || m->fmt < KVN_FMT_UNDEFINED || m->fmt > KVN_FMT_KV_MLA_FMT ||
	    m->dtype < KVN_DTYPE_NONE || m->dtype > KVN_DTYPE_FP8_E5M2)
		return false;
	for (int i = 0; i < 4; i++)
		if (m->shape[i] < 0)
			return false;
	return true;
}

static void
fuzz_header(const uint8_t *p, size_t n)
{
	struct kvn_remote_meta m;
	uint8_t back[KVN_REMOTE_META_LEN];
	int rc = kvn_remote_meta_decode(p, n, &m);
	if (n != KVN_REMOTE_META_LEN) {
		FZ_ASSERT(rc == -EPROTO, "a %zu-byte header decoded", n);
		return;
	}
	FZ_ASSERT(rc == 0 || rc == -EPROTO, "decode returned %d", rc);
	FZ_ASSERT((rc == 0) == in_range(&m), "decode %s a header %s range", rc ? "refused" : "took",
		  rc ? "in" : "out of");
	kvn_remote_meta_encode(&m, back);
	FZ_ASSERT(!memcmp(back, p, n), "header does not round-trip");
}

static int32_t
le32(const uint8_t *p)
{
	return (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
			 (uint32_t)p[3] << 24);
}

static void
fuzz_value(const uint8_t *p, size_t n)
{
	struct fz_in in = {p, n};
	uint8_t hdr[KVN_REMOTE_META_LEN] = {0};
	const uint8_t *h, *tag, *payload;
	size_t hl = fz_take(&in, sizeof(hdr), &h);
	memcpy(hdr, h, hl);
	uint8_t tag_len = fz_u8(&in);
	size_t tl = fz_take(&in, tag_len % (KVN_REMOTE_TAG_MAX + 1), &tag);
	size_t cut1 = fz_u8(&in), cut2 = fz_u8(&in);
	size_t pl = fz_take(&in, SIZE_MAX, &payload);

	struct kvn_buf *b = kvn_buf_new(pl);
	FZ_ASSERT(b, "out of memory");
	memcpy(b->data, payload, pl);
	struct kvn_remote_value v = {.payload = b};
	bool decoded = kvn_remote_meta_decode(hdr, sizeof(hdr), &v.meta) == 0;
	if (!decoded) { /* the raw fields, as a store might hand them over */
		v.meta.length = le32(hdr);
		v.meta.fmt = le32(hdr + 4);
		v.meta.dtype = le32(hdr + 8);
		for (int i = 0; i < 4; i++)
			v.meta.shape[i] = le32(hdr + 12 + 4 * i);
	}
	memcpy(v.tag, tag, tl);
	v.tag_len = (uint32_t)tl;
	char why[128] = "";
	int rc = kvn_remote_value_check(&v, why, sizeof(why));
	bool shape_ok = in_range(&v.meta) && (size_t)v.meta.length == pl;
	FZ_ASSERT(rc == 0 || rc == KVN_REMOTE_TAG_IGNORED || rc == -EBADMSG || rc == -ESTALE,
		  "check returned %d", rc);
	if (rc < 0)
		FZ_ASSERT(why[0], "a refused value without a reason");
	if (!shape_ok)
		FZ_ASSERT(rc < 0, "a value whose header does not describe it passed");

	/* The tag kvnode computes, in one piece and in three, makes a good value pass. */
	struct kvn_remote_value good = v;
	kvn_remote_tag_fill(&good, NULL); /* a tag naming no key: what check alone accepts */
	FZ_ASSERT(good.tag_len == KVN_REMOTE_TAG_LEN, "tag of %u bytes", good.tag_len);
	if (shape_ok) {
		FZ_ASSERT(kvn_remote_value_check(&good, why, sizeof(why)) == 0,
			  "a freshly tagged value fails its check: %s", why);
		if (tl == KVN_REMOTE_TAG_LEN && memcmp(v.tag, good.tag, tl) == 0)
			FZ_ASSERT(rc == 0, "the right tag was refused");
		else if (tl) /* another tag: refused, or ignored as another writer's leftover */
			FZ_ASSERT(rc != 0, "a wrong tag passed as this value's");
		else
			FZ_ASSERT(rc == 0, "an untagged value with a good header was refused");
	}
	uint8_t t2[KVN_REMOTE_TAG_MAX];
	cut1 = pl ? cut1 % (pl + 1) : 0;
	cut2 = cut1 + (pl - cut1 ? cut2 % (pl - cut1 + 1) : 0);
	kvn_remote_tagger_begin(tagger, NULL, &v.meta);
	kvn_remote_tagger_update(tagger, payload, cut1);
	kvn_remote_tagger_update(tagger, payload + cut1, cut2 - cut1);
	kvn_remote_tagger_update(tagger, payload + cut2, pl - cut2);
	FZ_ASSERT(kvn_remote_tagger_end(tagger, t2) == KVN_REMOTE_TAG_LEN &&
		      !memcmp(t2, good.tag, KVN_REMOTE_TAG_LEN),
		  "the tag in pieces (%zu, %zu of %zu) differs from the tag in one", cut1, cut2,
		  pl);

	/* A value made from plain bytes carries a header and tag that pass. */
	struct kvn_remote_value mine;
	if (kvn_remote_value_from_buf(&mine, b) == 0)
		FZ_ASSERT(kvn_remote_value_check(&mine, why, sizeof(why)) == 0,
			  "a value from plain bytes fails its check: %s", why);
	kvn_buf_unref(b);
}

/* The one data file in the store (the connector names files itself). */
static bool
data_file(char *name, size_t len)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	bool found = false;
	while (d && (e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		snprintf(name, len, "%s/%s", dir, e->d_name);
		found = true;
	}
	if (d)
		closedir(d);
	return found;
}

static void
clear_store(void)
{
	char path[1024];
	while (data_file(path, sizeof(path)))
		if (unlink(path) < 0)
			fz_fail("cannot remove %s: %s", path, strerror(errno));
}

struct listed {
	size_t n;
};

static int
on_key(void *ctx, const char *key, size_t len)
{
	FZ_ASSERT(len >= 1 && len <= KVN_KEY_MAX, "listed a key of %zu bytes", len);
	FZ_ASSERT(key[len] == '\0', "listed key not terminated");
	((struct listed *)ctx)->n++;
	return 0;
}

static void
fuzz_fs_file(const uint8_t *p, size_t n)
{
	struct fz_in in = {p, n};
	const uint8_t *kt, *tag, *xkey, *content;
	size_t kl = fz_take(&in, fz_u8(&in), &kt);
	size_t tl = fz_take(&in, fz_u8(&in) % 40, &tag);
	uint8_t xk = fz_u8(&in);
	size_t xkl = fz_take(&in, xk & 0x7f, &xkey);
	size_t cl = fz_take(&in, SIZE_MAX, &content);
	struct kvn_key key;
	if (kvn_key_parse(&key, (const char *)kt, kl, NULL, 0) < 0)
		kvn_key_from_str(&key, "vllm@model@1@0@abc123@bfloat16");

	static char one = 'x';
	struct kvn_buf *b = kvn_buf_wrap(&one, 1);
	struct kvn_remote_value v;
	FZ_ASSERT(b && kvn_remote_value_from_buf(&v, b) == 0, "out of memory");
	int rc = ops->put(fs, &key, &v);
	kvn_buf_unref(b);
	if (rc == -ENAMETOOLONG) {
		/* The key's file name (each '/' written as "-SEP-", then ".data") is longer than
		 * NAME_MAX: refused up front, and nothing of it is stored. */
		FZ_ASSERT(ops->exists(fs, &key) == 0, "a refused key exists: %s", key.str);
		return;
	}
	FZ_ASSERT(rc == 0, "fs put of %s failed: %s", key.str, kvn_strerror(rc));
	char path[1024];
	FZ_ASSERT(data_file(path, sizeof(path)), "fs put left no file for %s", key.str);
	FZ_ASSERT(ops->exists(fs, &key) == 1, "fs exists misses the key just put");

	int fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
	FZ_ASSERT(fd >= 0, "cannot rewrite %s", path);
	FZ_ASSERT(write(fd, content, cl) == (ssize_t)cl, "cannot rewrite %s", path);
	if (tl)
		fsetxattr(fd, "user.kvnode.tag", tag, tl, 0);
	else
		fremovexattr(fd, "user.kvnode.tag");
	if (xk & 0x80)
		fsetxattr(fd, "user.kvnode.key", xkey, xkl, 0);
	close(fd);

	struct kvn_remote_value got = {0};
	rc = ops->get(fs, &key, &got);
	if (rc == 0) {
		/* The connector hands over what the file holds; the node's check (which the
		 * remote tier runs on every get) is what refuses a header that lies. */
		FZ_ASSERT(got.payload && got.payload->len + KVN_REMOTE_META_LEN == cl,
			  "fs get: a payload of %zu bytes from a %zu-byte file",
			  got.payload ? got.payload->len : 0, cl);
		FZ_ASSERT(got.tag_len <= KVN_REMOTE_TAG_MAX + 1, "tag of %u bytes", got.tag_len);
		char why[128];
		int ck = kvn_remote_value_check(&got, why, sizeof(why));
		FZ_ASSERT(ck == -EBADMSG || (size_t)got.meta.length == got.payload->len,
			  "a value whose header says %d bytes for %zu passed the check",
			  got.meta.length, got.payload->len);
	} else {
		FZ_ASSERT(rc == -ENOENT || rc == -EBADMSG, "fs get returned %d", rc);
		FZ_ASSERT(!got.payload, "a failed get left a payload");
	}
	kvn_remote_value_release(&got);
	struct listed l = {0};
	FZ_ASSERT(ops->list(fs, on_key, &l) == 0 && l.n <= 1, "fs list of one file: %zu keys", l.n);
	rc = ops->remove(fs, &key);
	FZ_ASSERT(rc == 0 || rc == -ENOENT, "fs remove returned %d", rc);
	clear_store();
}

static void
fuzz_fs_name(const uint8_t *p, size_t n)
{
	char name[256];
	size_t o = 0;
	for (size_t i = 0; i < n && o < 250; i++)
		if (p[i] != '/' && p[i] != '\0')
			name[o++] = (char)p[i];
	memcpy(name + o, ".data", 6);
	if (!strcmp(name, ".data"))
		return;
	char path[1024];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return;
	close(fd);
	struct listed l = {0};
	FZ_ASSERT(ops->list(fs, on_key, &l) == 0 && l.n <= 1, "fs list of one file: %zu keys", l.n);
	unlink(path);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t n = size - 1;
	uint8_t *p = malloc(n ? n : 1); /* exactly the input: ASan sees any overread */
	FZ_ASSERT(p, "out of memory");
	memcpy(p, data + 1, n);
	switch (data[0] % 4) {
	case 0:
		fuzz_header(p, n);
		break;
	case 1:
		fuzz_value(p, n);
		break;
	case 2:
		fuzz_fs_file(p, n);
		break;
	default:
		fuzz_fs_name(p, n);
		break;
	}
	free(p);
	return 0;
}
