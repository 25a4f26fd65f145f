/* Cluster auth: the auth_token as a MAC key, and the challenge-response proofs that every join
 * and data connection exchanges (HMAC-SHA256 from libsodium over fresh nonces, so a proof seen
 * on the wire is worth nothing on another connection). Also the per-host token file that one-host
 * setups use when no auth_token is configured (docs/configuration.md "Authentication"). */
#ifndef KVN_CORE_AUTH_H
#define KVN_CORE_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KVN_AUTH_NONCE 16
#define KVN_AUTH_MAC   32 /* HMAC-SHA256; a wire format may send a prefix (at least 16 bytes) */

/* A token kept as its key only (SHA-256 of the text): the string itself is the caller's. */
struct kvn_auth {
	bool set; /* a non-empty token was given */
	uint8_t key[32];
};

struct kvn_auth_part {
	const void *p;
	size_t len;
};

/* token NULL or "": none. */
void kvn_auth_init(struct kvn_auth *a, const char *token);
void kvn_auth_wipe(struct kvn_auth *a);
/* Random bytes from the kernel's CSPRNG (libsodium's randombytes). */
void kvn_auth_nonce(uint8_t out[KVN_AUTH_NONCE]);
/* HMAC-SHA256 under a's key of label (a NUL-terminated context string, so a proof made for one
 * message is never valid for another) followed by the parts. All zero when !a->set. */
void kvn_auth_mac(const struct kvn_auth *a, const char *label, const struct kvn_auth_part *parts,
		  size_t nparts, uint8_t out[KVN_AUTH_MAC]);
/* Whether the first len bytes (16..32) of mac are the MAC of label and parts, compared in
 * constant time. False when !a->set. */
bool kvn_auth_verify(const struct kvn_auth *a, const char *label, const struct kvn_auth_part *parts,
		     size_t nparts, const uint8_t *mac, size_t len);

/* --- the token file ------------------------------------------------------------------------ */

/* Where a host's generated token lives when the config names none: $KVNODE_STATE_DIR, else
 * $STATE_DIRECTORY (systemd's StateDirectory=), else /var/lib/kvnode for root, else
 * $XDG_STATE_HOME/kvnode, else ~/.local/state/kvnode; then "/auth_token". 0 or -ENAMETOOLONG
 * (-ENOENT when no home directory is known). */
int kvn_auth_default_file(char *path, size_t len);
/* Reads the token of the file at path into *token (malloc'd). With create, a missing file (and
 * its directory, mode 0700) is made first with a fresh random token, mode 0600, atomically: of
 * two processes starting together both end up with the same token. A file that others than its
 * owner may read, or that is not a regular file, is refused: the token is a secret. -errno
 * with err naming the path and the fix. */
int kvn_auth_token_file(const char *path, bool create, char **token, char *err, size_t errlen);

#endif
