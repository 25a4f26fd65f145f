/* Cluster auth (core/auth.h): HMAC-SHA256 proofs over nonces with libsodium, and the per-host
 * token file. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/auth.h"
#include "core/log.h"

#define TOKEN_BYTES 32		/* random bytes of a generated token: 64 hex characters */
#define TOKEN_MAX   4096	/* a token file larger than this is not one */

static void
init_sodium(void)
{
	/* Idempotent and thread-safe; fails only without a usable random source, which the
	 * kernel always has on the systems kvnode runs on. */
	if (sodium_init() < 0)
		kvn_err("auth", "libsodium failed to initialise: no random source");
}

void
kvn_auth_init(struct kvn_auth *a, const char *token)
{
	memset(a, 0, sizeof(*a));
	if (!token || !*token)
		return;
	init_sodium();
	crypto_hash_sha256(a->key, (const unsigned char *)token, strlen(token));
	a->set = true;
}

void
kvn_auth_wipe(struct kvn_auth *a)
{
	sodium_memzero(a, sizeof(*a));
}

void
kvn_auth_nonce(uint8_t out[KVN_AUTH_NONCE])
{
	init_sodium();
	randombytes_buf(out, KVN_AUTH_NONCE);
}

void
kvn_auth_mac(const struct kvn_auth *a, const char *label, const struct kvn_auth_part *parts,
	     size_t nparts, uint8_t out[KVN_AUTH_MAC])
{
	_Static_assert(KVN_AUTH_MAC == crypto_auth_hmacsha256_BYTES, "MAC size");
	if (!a->set) {
		memset(out, 0, KVN_AUTH_MAC);
		return;
	}
	crypto_auth_hmacsha256_state st;
	crypto_auth_hmacsha256_init(&st, a->key, sizeof(a->key));
	/* The label with its NUL: "ab" + "c" and "a" + "bc" never hash alike. */
	crypto_auth_hmacsha256_update(&st, (const unsigned char *)label, strlen(label) + 1);
	for (size_t i = 0; i < nparts; i++)
		crypto_auth_hmacsha256_update(&st, parts[i].p, parts[i].len);
	crypto_auth_hmacsha256_final(&st, out);
	sodium_memzero(&st, sizeof(st));
}

bool
kvn_auth_verify(const struct kvn_auth *a, const char *label, const struct kvn_auth_part *parts,
		size_t nparts, const uint8_t *mac, size_t len)
{
	if (!a->set || len < 16 || len > KVN_AUTH_MAC)
		return false;
	uint8_t want[KVN_AUTH_MAC];
	kvn_auth_mac(a, label, parts, nparts, want);
	bool ok = sodium_memcmp(want, mac, len) == 0;
	sodium_memzero(want, sizeof(want));
	return ok;
}

/* ------------------------------------------------------------------------------------------
 * The token file
 * ------------------------------------------------------------------------------------------ */

int
kvn_auth_default_file(char *path, size_t len)
{
	const char *dir = getenv("KVNODE_STATE_DIR"), *base = NULL, *sub = "";
	if (!dir || !*dir)
		dir = getenv("STATE_DIRECTORY"); /* systemd may list several: the first is ours */
	char first[PATH_MAX];
	if (dir && *dir) {
		snprintf(first, sizeof(first), "%.*s", (int)strcspn(dir, ":"), dir);
		base = first;
	} else if (geteuid() == 0) {
		base = "/var/lib/kvnode";
	} else if ((base = getenv("XDG_STATE_HOME")) && *base == '/') {
		sub = "/kvnode";
	} else {
		const char *home = getenv("HOME");
		struct passwd *pw = (!home || !*home) ? getpwuid(geteuid()) : NULL;
		if (pw)
			home = pw->pw_dir;
		if (!home || !*home)
			return -ENOENT;
		base = home;
		sub = "/.local/state/kvnode";
	}
	int n = snprintf(path, len, "%s%s/auth_token", base, sub);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* mkdir -p of path's directory, new levels mode 0700. */
static int
make_parent(const char *path)
{
	char d[PATH_MAX];
	snprintf(d, sizeof(d), "%s", path);
	char *slash = strrchr(d, '/');
	if (!slash || slash == d)
		return 0;
	*slash = '\0';
	for (char *p = d + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(d, 0700) && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	return mkdir(d, 0700) && errno != EEXIST ? -errno : 0;
}

/* Writes a fresh token to a temporary file beside path and links it to path: link fails with
 * EEXIST when another process won the race, and then its token is the one read back. */
static int
create_file(const char *path, char *err, size_t errlen)
{
	int rc = make_parent(path);
	if (rc) {
		return kvn_seterr(rc, err, errlen,
				  "auth_token_file %s: cannot create its directory: %s", path,
				  strerror(-rc));
	}
	uint8_t raw[TOKEN_BYTES];
	char hex[2 * TOKEN_BYTES + 2];
	init_sodium();
	randombytes_buf(raw, sizeof(raw));
	sodium_bin2hex(hex, sizeof(hex), raw, sizeof(raw));
	sodium_memzero(raw, sizeof(raw));
	strcat(hex, "\n");
	char tmp[PATH_MAX];
	if (snprintf(tmp, sizeof(tmp), "%s.%ld.tmp", path, (long)getpid()) >= (int)sizeof(tmp))
		return kvn_seterr(-EINVAL, err, errlen, "auth_token_file %s: path too long", path);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		rc = -errno;
		return kvn_seterr(rc, err, errlen, "auth_token_file %s: cannot create %s: %s", path,
				  tmp, strerror(-rc));
	}
	size_t n = strlen(hex);
	rc = write(fd, hex, n) == (ssize_t)n && fsync(fd) == 0 ? 0 : -errno;
	sodium_memzero(hex, sizeof(hex));
	if (close(fd) && !rc)
		rc = -errno;
	if (!rc && link(tmp, path) && errno != EEXIST)
		rc = -errno;
	unlink(tmp);
	if (rc) {
		return kvn_seterr(rc, err, errlen, "auth_token_file %s: cannot write it: %s", path,
				  strerror(-rc));
	}
	kvn_info("auth", "generated this host's auth token in %s (mode 0600): processes of this "
			 "user on this host share it",
		 path);
	return 0;
}

int
kvn_auth_token_file(const char *path, bool create, char **token, char *err, size_t errlen)
{
	*token = NULL;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0 && errno == ENOENT && create) {
		int rc = create_file(path, err, errlen);
		if (rc)
			return rc;
		fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	}
	if (fd < 0) {
		int rc = -errno;
		if (rc == -ENOENT)
			kvn_seterr(-EINVAL, err, errlen,
				   "auth_token_file %s does not exist (a node or scheduler of this "
				   "user on this host creates it; or set auth_token)",
				   path);
		else
			kvn_seterr(-EINVAL, err, errlen, "auth_token_file %s: %s", path,
				   strerror(-rc));
		return rc;
	}
	struct stat st;
	if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
		close(fd);
		return kvn_seterr(-EINVAL, err, errlen, "auth_token_file %s is not a regular file",
				  path);
	}
	if (st.st_mode & 077) {
		close(fd);
		return kvn_seterr(
		    -EACCES, err, errlen,
		    "auth_token_file %s may be read by other users (mode %04o): it holds "
		    "the cluster's secret; chmod 600 %s",
		    path, (unsigned)(st.st_mode & 07777), path);
	}
	char buf[TOKEN_MAX + 1];
	ssize_t n = read(fd, buf, TOKEN_MAX + 1);
	int rc = n < 0 ? -errno : 0;
	close(fd);
	if (rc) {
		return kvn_seterr(rc, err, errlen, "auth_token_file %s: %s", path, strerror(-rc));
	}
	if (n > TOKEN_MAX) {
		return kvn_seterr(-EFBIG, err, errlen, "auth_token_file %s is larger than %d bytes",
				  path, TOKEN_MAX);
	}
	buf[n] = '\0';
	/* One line: the token, surrounding white space dropped (an editor's newline). */
	char *s = buf;
	while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
		s++;
	size_t len = strcspn(s, "\r\n");
	while (len && (s[len - 1] == ' ' || s[len - 1] == '\t'))
		len--;
	if (!len) {
		sodium_memzero(buf, sizeof(buf));
		return kvn_seterr(-EINVAL, err, errlen, "auth_token_file %s is empty", path);
	}
	*token = strndup(s, len);
	sodium_memzero(buf, sizeof(buf));
	return *token ? 0 : -ENOMEM;
}
