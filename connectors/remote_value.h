/* LMCache's 28-byte remote value header (RemoteMetadata) and kvnode's integrity tag: the one
 * implementation every connector, the remote tier and the lm:// server use. The part a
 * connector module may call (header codec, tagger, value bound) is in kvnode/connector.h. */
#ifndef KVN_CONNECTORS_REMOTE_VALUE_H
#define KVN_CONNECTORS_REMOTE_VALUE_H

#include "kvnode/connector.h"

/* Tag layout, version 3: "KVX3", the low 64 bits of the key's digest, an xxh3-64 seeded with
 * that digest over the 28 header bytes, then one seeded with the header's over the payload
 * (all little-endian). What a mismatch means:
 *  - the tag names another key: a value copied from another key, or a connection whose replies
 *    are out of step with its requests: corrupt (a miss, counted);
 *  - the header is not the one the tag was made with: a writer that does not know the tag
 *    (LMCache, whose redis connector rewrites <key>kv_bytes and <key>metadata and leaves
 *    <key>kvnode_tag behind) replaced the value: the tag is stale and ignored, the value is
 *    checked as LMCache checks it (its header's length is the payload's) and counted;
 *  - the same header with other payload bytes: corrupt. (A rewrite with an identical header
 *    and other bytes looks the same: a miss until the next put of the key.)
 * Version 2 ("KVX2", 20 bytes, without the header's hash) is still checked, a mismatch being
 * corrupt; version 1 ("KVX1", 12 bytes, no key) is no longer trusted: such a value is a miss
 * (-ESTALE) until a put rewrites it. */
#define KVN_REMOTE_TAG_LEN 28
/* kvn_remote_value_check's answer for a value whose tag was another writer's leftover. */
#define KVN_REMOTE_TAG_IGNORED 1

/* Computes val->tag / tag_len from key, val->meta and the payload. A NULL key makes a tag
 * that names no key: only kvn_remote_value_check accepts it (tests and tools). */
void kvn_remote_tag_fill(struct kvn_remote_value *val, const struct kvn_key *key);
/* Prepares a value for put: header for plain bytes, payload = buf (not referenced), and a tag
 * that names no key (for tests and tools; the remote tier uses kvn_remote_value_for_put). */
int kvn_remote_value_from_buf(struct kvn_remote_value *val, struct kvn_buf *buf);

/* The value the remote tier hands ops->put for key: header for plain bytes, payload = buf
 * (not referenced), and the tag — or tag_len = KVN_REMOTE_TAG_PENDING when ops computes the
 * tag itself while it sends the payload (KVN_CONNECTOR_F_TAG_ON_SEND). key NULL: as above. */
int kvn_remote_value_for_put(struct kvn_remote_value *val, const struct kvn_key *key,
				     struct kvn_buf *buf, const struct kvn_connector_ops *ops);

/* Checks a value read from a store: a valid header whose length is the payload's, and, when
 * the store gave a tag, a matching one (for the key the tag names). 0; KVN_REMOTE_TAG_IGNORED
 * when the tag was made for another header (see above) and the value passes on its header
 * alone; -EBADMSG with why (may be NULL) saying which check failed; or -ESTALE for a tag of
 * version 1. A value without a tag (written by LMCache) passes on its header alone. */
int kvn_remote_value_check(const struct kvn_remote_value *val, char *why, size_t whylen);
/* The same, and a tag must name key: what the remote tier checks every value it reads with. */
int kvn_remote_value_check_key(const struct kvn_remote_value *val,
				       const struct kvn_key *key, char *why, size_t whylen);

#endif
