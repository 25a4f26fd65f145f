/* Disk tier chunk files (private to backends/disk*.c): the on-disk header, file names, the
 * reads and writes that check and produce them, and the directory they live in. */
#ifndef KVN_BACKENDS_DISK_FILE_H
#define KVN_BACKENDS_DISK_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

#include "kvnode/kvnode.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the disk chunk header is little-endian on disk; add byte swapping for this target"
#endif

#define DISK_MAGIC   0x444e564bu /* "KVND" */
#define DISK_VERSION 1
#define DISK_HDR     4096u /* header page: keeps the payload aligned for O_DIRECT */
#define DISK_ALIGN   4096u

struct disk_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t key_len;
	uint64_t len;	    /* payload bytes, starting at offset DISK_HDR */
	uint64_t checksum;  /* xxh3-64 of the payload */
	uint64_t digest_lo; /* must match the file name */
	uint64_t digest_hi;
	/* xxh3-64 of the 40 bytes above, seeding the hash of the key text: a garbled header is
	 * caught before its length or key is trusted. */
	uint64_t hdr_checksum;
	/* key text follows at offset 48, then zeros up to DISK_HDR */
};
_Static_assert(sizeof(struct disk_hdr) == 48, "disk header layout is on-disk format");
_Static_assert(sizeof(struct disk_hdr) + KVN_KEY_MAX <= DISK_HDR, "key fits the header page");

#define DISK_NAME_LEN 36 /* 32 hex digits + ".kvc" */
#define CHUNK_SUFFIX  ".kvc"
#define TEMP_SUFFIX   ".kvt" /* unpublished writes: deleted by the start-up scan */

/* "<digest hi><digest lo>.kvc" in hex. */
void kvn_disk_chunk_name(char out[DISK_NAME_LEN + 1], struct kvn_digest dg);
bool kvn_disk_parse_name(const char *name, struct kvn_digest *dg);

/* openat(dirfd, name, flags | O_CLOEXEC [| O_DIRECT when want_direct], 0644); a filesystem
 * that refuses O_DIRECT for it (EINVAL) gets buffered I/O, *direct says which. fd or -errno. */
int kvn_disk_open(int dirfd, const char *name, int flags, bool want_direct, bool *direct);

/* Fills the DISK_HDR-byte header page of a chunk of key with len payload bytes. */
void kvn_disk_hdr_build(void *page, const struct kvn_key *key, uint64_t len, uint64_t checksum);

/* Writes header page (DISK_ALIGN-aligned) and payload at offset 0 of fd; with direct, any
 * alignment of data works. 0 or -errno. */
int kvn_disk_write(int fd, bool direct, void *hdr, const void *data, size_t len);
int kvn_disk_pwrite_full(int fd, const void *buf, size_t n, off_t off);

/* Reads and checks the chunk file open on fd; a payload longer than max_len is corruption.
 * With payload, *basep gets a DISK_ALIGN-aligned malloc'd buffer holding the header page and
 * the payload; without, only the header is read and checked against the file size. key gets
 * the key text (KVN_KEY_MAX + 1 bytes), st the file's stat. 0, -EBADMSG with why set when the
 * file is corrupt or unreadable, or -ENOMEM. */
int kvn_disk_read(int fd, bool payload, uint64_t max_len, struct disk_hdr *h, char *key,
		  struct stat *st, void **basep, char *why, size_t whylen);

/* Creates and deletes a temp file in dirfd: 0 when the directory is writable, else -errno.
 * *direct says whether O_DIRECT (asked for with want_direct) works there. */
int kvn_disk_probe(int dirfd, bool want_direct, bool *direct);

#endif
