/* `kvnode doctor` (docs/doctor.md): the checks of what breaks RDMA bring-up, each decided from
 * facts (sysfs, limits, the kernel, the GPU driver) gathered once, so that the tests can decide
 * from fixture trees what a real device cannot give them. */
#ifndef KVN_NODE_CLI_DOCTOR_H
#define KVN_NODE_CLI_DOCTOR_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "rdma/devreg.h"
#include "rdma/sysfs.h"

struct kvn_config;

#define KVN_DOCTOR_PORTS_MAX  32
#define KVN_DOCTOR_CHECKS_MAX 96

enum kvn_doctor_status { KVN_DR_OK = 0, KVN_DR_WARN = 1, KVN_DR_FAIL = 2 };

struct kvn_doctor_facts {
	const char *sysfs; /* the root read ("/sys", or a fixture tree) */
	int nports;	   /* ports found, or -errno reading the class directory */
	struct kvn_sysfs_port ports[KVN_DOCTOR_PORTS_MAX];
	/* From ibv_query_port on a real device (0: not known, as from a fixture tree). */
	int active_mtu[KVN_DOCTOR_PORTS_MAX], max_mtu[KVN_DOCTOR_PORTS_MAX];
	bool verbs_built;
	uint64_t memlock;	 /* RLIMIT_MEMLOCK's soft limit, UINT64_MAX when unlimited */
	bool cap_ipc_lock;	 /* the limit does not apply */
	uint64_t hugepages_free; /* free 2 MiB hugetlb pages */
	char kernel[80];	 /* uname release */
	bool fork_unneeded; /* copy-on-fork: the kernel keeps pinned pages across fork (5.13+) */
	bool fork_safe_env; /* RDMAV_FORK_SAFE or IBV_FORK_SAFE set */
	struct kvn_devreg_sysfs peermem;
	/* gpu != false: kvn_gpu_open's answer and what the driver has */
	int gpu_rc;
	char gpu_why[384];
	int ngpus;
	bool gpu_dmabuf;
	/* How each GPU's memory registers with the transport the node would open (the start
	 * probe of kvn_cluster_gpu_probe); gpu_reg_rc[i] < 0: no way won, or not probed
	 * (gpu_reg_why says why). */
	int ngpu_reg;
	int gpu_reg_rc[8];
	int gpu_reg_method[8];
	char gpu_reg_why[8][400];
	/* each GPU's place in the PCI tree (kvn_sysfs_pci_path of its bus id; "" unknown) */
	char gpu_bdf[8][32];
	char gpu_pci[8][256];
};

struct kvn_doctor_check {
	int status; /* enum kvn_doctor_status */
	char name[96];
	char what[400];
	char fix[400]; /* "" when there is nothing to do */
};

struct kvn_doctor_report {
	size_t n;
	struct kvn_doctor_check c[KVN_DOCTOR_CHECKS_MAX];
	int status; /* the worst */
};

/* Reads the facts for cfg from root (NULL: kvn_sysfs_root's choice), the process and, where
 * there is one, the driver. */
void kvn_doctor_facts(const struct kvn_config *cfg, const char *root, struct kvn_doctor_facts *f);
/* The checks, decided from f alone. */
void kvn_doctor_decide(const struct kvn_config *cfg, const struct kvn_doctor_facts *f,
		       struct kvn_doctor_report *r);
/* `--peers`: one "peer NAME" check per live member of the scheduler (scheduler, else
 * cfg->scheduler_url): a connect and a READ of its pool over the configured transport, timed.
 * cfg->auth_token must be resolved already. */
void kvn_doctor_peers(const struct kvn_config *cfg, const struct kvn_doctor_facts *f,
		      const char *scheduler, struct kvn_doctor_report *r);
/* This host's active MTU on the port the node would use (0: tcp or not known), and the words
 * a peer's line gets when the peer's (peer_mtu, 0: not known) differs: KVN_DR_WARN with why
 * written, else KVN_DR_OK with why "". */
int kvn_doctor_own_mtu(const struct kvn_config *cfg, const struct kvn_doctor_facts *f);
int kvn_doctor_mtu_match(int own, int peer_mtu, char *why, size_t len);
/* A member's pool descriptor from the hex "region" of the scheduler's member list (untrusted:
 * whatever a scheduler sends). 0, or -EPROTO for a bad digit or fewer than 24 bytes. */
struct kvn_mem_desc;
int kvn_doctor_region_hex(const char *hex, struct kvn_mem_desc *d);
/* One line per check (and its fix under it), or one JSON object. */
void kvn_doctor_print(const struct kvn_doctor_report *r, bool json, FILE *out);
const char *kvn_doctor_status_name(int status);

#endif
