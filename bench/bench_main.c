/* kvnode-bench: measures kvnode's data paths against a baseline run in the same process
 * (perftest-style table, or --json for machines). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench/bench.h"
#include "core/log.h"

static const char usage[] =
    "NAME\n"
    "    kvnode-bench - measure kvnode data paths against a baseline in the same run\n"
    "\n"
    "SYNOPSIS\n"
    "    kvnode-bench MODE [--baseline] [--json] [--sizes LIST] [--duration SEC]\n"
    "                      [--working-set MIB] [--trials N] [-v] [--log-level LEVEL]\n"
    "    kvnode-bench peer [--transport tcp|verbs|auto] [--inflight N] [--conns N]\n"
    "                      [--rails N [--rail-slice SIZE]] [--rdma-device DEV[,DEV...]]\n"
    "                      [--connect HOST:PORT --remote LINE] [--baseline] [--json] ...\n"
    "    kvnode-bench peer --serve [--transport T] [--listen HOST:PORT] [--sizes LIST]\n"
    "    kvnode-bench remote [--url redis://HOST:PORT] [--baseline] [--peer] [--json] ...\n"
    "    kvnode-bench gpu [--device N] [--baseline] [--json] ...\n"
    "    kvnode-bench --help | --version\n"
    "\n"
    "MODES\n"
    "    local    put and get of the cpu backend (the node's registered chunk pool).\n"
    "             get copies into the caller's buffer, so it compares with memcpy;\n"
    "             get_view is the zero-copy get (a reference into the pool) and is\n"
    "             reported on its own. Baseline: memcpy of the same sizes over a\n"
    "             working set of the same size.\n"
    "    peer     one-sided READs of another process's registered memory over the\n"
    "             transport, N reads in flight, into a registered buffer. The bench\n"
    "             forks the responder on 127.0.0.1 itself, or reads from a running\n"
    "             one (--connect). Default sizes 64K,256K,1M,4M,32M. Baseline (tcp):\n"
    "             iperf3, single stream over loopback, run in the same process tree\n"
    "             (iperf3 -s -1 and iperf3 -c 127.0.0.1 -J -t 2), once per trial.\n"
    "    scheduler\n"
    "             key lookups per second through the real scheduler (epoll thread,\n"
    "             frame codec, directory of 1M entries) over loopback TCP, one client\n"
    "             keeping frames in flight, batches of 1, 16 and 256 keys; then the\n"
    "             directory's memory per entry at --entries N (RSS growth while\n"
    "             filling). Baseline: the same lookups straight into an in-process\n"
    "             directory (no frames, no socket). --connect HOST:PORT measures a\n"
    "             running kvnode scheduler instead of an in-process one;\n"
    "             --connect etcd://HOST:PORT/CLUSTER the leader etcd names (found\n"
    "             once; the lookups go to it directly, never through etcd).\n"
    "    remote   put and get through kvnode's redis connector (LMCache's two-key\n"
    "             layout; integrity tag computed on put and checked on get, as the\n"
    "             remote tier does), one connection, one request at a time, against a\n"
    "             redis-server the bench starts on 127.0.0.1 (or --url). Baseline: raw\n"
    "             SET/GET of the same sizes on its own connection, redis-benchmark style\n"
    "             (each command formatted once per size, the key patched in place,\n"
    "             written straight to the socket; replies read by hiredis). Passes of\n"
    "             the two sides alternate within a trial, which side goes first\n"
    "             alternates between trials, and the trial of median ratio is\n"
    "             reported, so load elsewhere on the machine hits both sides alike.\n"
    "             The working set is capped at 128 MiB per size (the store holds two).\n"
    "             With --peer, also a peer fetch row per size: what the peer tier does\n"
    "             to get a chunk another node holds (a one-sided READ of the slot image\n"
    "             from that node's registered pool over --transport, tcp by default,\n"
    "             then kvn_slot_verify), one fetch at a time, from a\n"
    "             filled kvnode pool served by a second transport instance in the\n"
    "             bench process; its baseline is the same raw redis GET of the same\n"
    "             chunks, measured in the same run.\n"
    "    client   the client library (kvnode/client.h) an inference worker uses,\n"
    "             against a `kvnode serve` child the bench starts (the kvnode program\n"
    "             next to kvnode-bench, else kvnode on $PATH) on a temp socket. Default\n"
    "             working set 512 MiB per size (at least 32 chunks), --depth requests\n"
    "             in flight (kvn_client_submit/wait). Rows and their baselines, each\n"
    "             measured in the same run, same sizes and working set, passes of the\n"
    "             two sides alternating, the trial of median ratio reported; the\n"
    "             baselines' working set is backed as the pool is (a hugetlb memfd,\n"
    "             else a plain one), so ratios compare copies, not page sizes:\n"
    "               put       one copy into a reserved slot (checksummed while it\n"
    "                         copies) vs memcpy of the same sources into a region\n"
    "                         of the working set's size; goal >= 0.70\n"
    "               get_into  one copy out of the pool into depth buffers vs memcpy\n"
    "                         of the same sizes into the same buffers; goal >= 0.80\n"
    "               get_view  a view, every byte of it read, released vs reading\n"
    "                         the same bytes of a region of the working set's size\n"
    "               batch32   kvn_client_batch_get of 32 keys (LMCache's prefix) vs\n"
    "                         the same 32 as kvn_client_get, one round trip each;\n"
    "                         views not read, so its GB/s are bytes referenced: only\n"
    "                         its ratio (round trips saved) means something\n"
    "               cli_put, cli_get  the old socket-copy protocol of the CLI (one\n"
    "                         key per round trip, copies both ways) vs memcpy\n"
    "             With --peer, also a scheduler and a second node b: peer_get is\n"
    "             kvn_client_get through b of keys node a holds (b READs each from a's\n"
    "             pool over tcp, checks it, and does not keep it), one at a time, vs\n"
    "             the raw transport READ of the same slot images into a registered\n"
    "             buffer (no check: what the transport alone costs), one at a time;\n"
    "             goal >= 0.80. Goals are printed per row (pass or MISS); a\n"
    "             missed goal does not change the exit status.\n"
    "    gpu      host <-> device copies on GPU --device (default 0), through the\n"
    "             staging that serves device memory without GPUDirect (gpu/staging.h:\n"
    "             an 8 MiB page-locked bounce area in two halves, one half's copy on\n"
    "             its stream while the other half's bytes move, the host side\n"
    "             pageable as a pool slot is): rows d2h_staged and h2d_staged.\n"
    "             Baseline: one cuMemcpyDtoHAsync / cuMemcpyHtoDAsync of the whole\n"
    "             chunk from or to page-locked host memory, then a sync (what\n"
    "             cuMemcpy of pinned memory costs), passes alternating. Chunks sit\n"
    "             side by side in 64 MiB (or the largest size) on each side; every\n"
    "             size is checked byte for byte both ways before it is timed.\n"
    "             Default sizes 256K,1M,4M,16M,64M; goal >= 0.90 from 4 MiB up.\n"
    "             Needs an NVIDIA driver (libcuda.so.1, loaded at run time) and a\n"
    "             build with the CUDA headers; without them it says which is missing\n"
    "             and exits 2.\n"
    "    disk     not in this build yet; asking for it says so and exits 2.\n"
    "\n"
    "OPTIONS\n"
    "    --baseline         also measure the mode's anchor and print ratio columns\n"
    "    --json             print a JSON array, one object per operation and size, with\n"
    "                       mode, op, bytes, iterations, gbps, peak_gbps and, with\n"
    "                       --baseline, baseline, baseline_gbps and ratio\n"
    "    --sizes LIST       comma-separated chunk sizes; suffixes K, M, G (KiB, MiB, GiB)\n"
    "                       (default 256K,1M,4M,32M)\n"
    "    --duration SEC     measuring time per row and trial (default 0.5); peer rows\n"
    "                       also read at least three rounds of --inflight\n"
    "    --working-set MIB  bytes touched per pass, larger than the CPU caches\n"
    "                       (default 256; client: 512)\n"
    "    --trials N         alternating kvnode/baseline trials per row; the median trial\n"
    "                       is reported (default 3)\n"
    "    --transport T      peer, remote --peer: tcp (default), verbs or auto\n"
    "    --inflight N       peer: reads outstanding at once (default 8)\n"
    "    --conns N          peer, remote --peer, tcp: connections per peer that reads are\n"
    "                       striped over (default: the transport's, 2 for tcp)\n"
    "    --connect HOST:PORT  peer: read from a running responder instead of forking one;\n"
    "                       needs --remote\n"
    "    --remote LINE      peer: the \"serving ...\" line that responder printed\n"
    "    --serve            peer: only be the responder: register a region with a known\n"
    "                       pattern, print \"serving T HOST:PORT addr=0x.. len=N rkey=0x..\"\n"
    "                       and serve until SIGTERM\n"
    "    --listen HOST:PORT peer --serve: where to listen (default 127.0.0.1:0)\n"
    "    --rdma-device DEV  peer, verbs: the RDMA device to open on both sides, and\n"
    "                       ib_read_bw's -d (default: the first with an active port);\n"
    "                       with --rails, one device a rail: DEV0,DEV1,...\n"
    "    --rails N          peer: N rails on both sides (2..16): each READ is sliced over\n"
    "                       all of them; --listen HOST:PORT,HOST:PORT,... gives the\n"
    "                       responder's addresses, one a rail (default 127.0.0.1:0 each).\n"
    "                       Baseline (verbs): N ib_read_bw at once, one per device,\n"
    "                       towards that rail's address; the ratio is to their sum\n"
    "    --rail-slice SIZE  peer --rails: the least slice of a READ on one rail (the\n"
    "                       node's rail_slice_size; default 64K)\n"
    "    --entries N        scheduler: directory entries for the memory row (default\n"
    "                       10000000)\n"
    "    --url URL          remote: the redis:// store to measure (default: start one)\n"
    "    --peer             remote: also peer fetch vs redis GET; client: also peer_get\n"
    "                       vs transport READ (see MODES)\n"
    "    --depth N          client: requests in flight, 1..64 (default 8)\n"
    "    --device N         gpu: the CUDA ordinal to measure (default 0)\n"
    "    -v, --verbose      debug logging\n"
    "    --log-level LEVEL  error, warn, info or debug (default warn)\n"
    "    -h, --help         this text\n"
    "    --version          print the version\n"
    "\n"
    "OUTPUT\n"
    "    One row per operation and size: #bytes, #iterations, BW peak (best pass) and BW\n"
    "    average in GB/s (1e9 bytes/s), and with --baseline the baseline's average and\n"
    "    the ratio kvnode/baseline. Ratios are the numbers to compare across machines.\n"
    "\n"
    "EXIT STATUS\n"
    "    0 measured, 1 a measurement failed, 2 usage error (or gpu: no GPU here).\n"
    "\n"
    "EXAMPLES\n"
    "    kvnode-bench local --baseline\n"
    "    kvnode-bench local --baseline --json --sizes 4M,32M\n"
    "    kvnode-bench peer --transport tcp --inflight 8 --baseline\n"
    "    kvnode-bench scheduler --baseline --json --entries 10000000\n"
    "    kvnode-bench remote --baseline --peer\n"
    "    kvnode-bench client --baseline --peer --depth 8\n";

static int
parse_size(const char *s, size_t *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || v <= 0)
		return -EINVAL;
	switch (*end) {
	case 'k': case 'K': v *= 1024; end++; break;
	case 'm': case 'M': v *= 1024 * 1024; end++; break;
	case 'g': case 'G': v *= 1024.0 * 1024 * 1024; end++; break;
	}
	if (*end == 'i' || *end == 'B')
		end += (*end == 'i' && end[1] == 'B') ? 2 : 1;
	if (*end || v < 1 || v > (double)(1ull << 40))
		return -EINVAL;
	*out = (size_t)v;
	return 0;
}

static int
parse_sizes(struct bench_opts *o, const char *list)
{
	char *copy = strdup(list), *save = NULL;
	o->nsizes = 0;
	for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		if (o->nsizes == sizeof(o->sizes) / sizeof(o->sizes[0]) ||
		    parse_size(t, &o->sizes[o->nsizes]) < 0) {
			fprintf(stderr, "kvnode-bench: --sizes: bad size \"%s\" (e.g. 256K,4M; at most %zu)\n",
				t, sizeof(o->sizes) / sizeof(o->sizes[0]));
			free(copy);
			return -EINVAL;
		}
		o->nsizes++;
	}
	free(copy);
	return o->nsizes ? 0 : -EINVAL;
}

enum {
	O_BASELINE = 256,
	O_JSON,
	O_SIZES,
	O_DURATION,
	O_WSET,
	O_TRIALS,
	O_LEVEL,
	O_VERSION,
	O_TRANSPORT,
	O_CONNECT,
	O_REMOTE,
	O_LISTEN,
	O_INFLIGHT,
	O_CONNS,
	O_SERVE,
	O_ENTRIES,
	O_URL,
	O_PEER,
	O_DEPTH,
	O_DEVICE,
	O_RDMA_DEVICE,
	O_RAILS,
	O_RAIL_SLICE
};

static const struct option longopts[] = {
    {"baseline", no_argument, NULL, O_BASELINE},
    {"json", no_argument, NULL, O_JSON},
    {"sizes", required_argument, NULL, O_SIZES},
    {"duration", required_argument, NULL, O_DURATION},
    {"working-set", required_argument, NULL, O_WSET},
    {"trials", required_argument, NULL, O_TRIALS},
    {"log-level", required_argument, NULL, O_LEVEL},
    {"transport", required_argument, NULL, O_TRANSPORT},
    {"connect", required_argument, NULL, O_CONNECT},
    {"remote", required_argument, NULL, O_REMOTE},
    {"listen", required_argument, NULL, O_LISTEN},
    {"inflight", required_argument, NULL, O_INFLIGHT},
    {"conns", required_argument, NULL, O_CONNS},
    {"serve", no_argument, NULL, O_SERVE},
    {"entries", required_argument, NULL, O_ENTRIES},
    {"url", required_argument, NULL, O_URL},
    {"peer", no_argument, NULL, O_PEER},
    {"depth", required_argument, NULL, O_DEPTH},
    {"device", required_argument, NULL, O_DEVICE},
    {"rdma-device", required_argument, NULL, O_RDMA_DEVICE},
    {"rails", required_argument, NULL, O_RAILS},
    {"rail-slice", required_argument, NULL, O_RAIL_SLICE},
    {"verbose", no_argument, NULL, 'v'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, O_VERSION},
    {0},
};

/* The value of numeric option c (--entries, --inflight, --conns, --duration, --working-set,
 * --trials) into o: 0, or 2 (the usage exit status) once the range is said. */
static int
set_number(struct bench_opts *o, int c, const char *arg)
{
	char *end;
	switch (c) {
	case O_ENTRIES:
		o->entries = strtoull(arg, &end, 10);
		if (*end || o->entries < 1 || o->entries > (1ull << 32)) {
			fprintf(stderr, "kvnode-bench: --entries: want 1..4294967296, got \"%s\"\n", arg);
			return 2;
		}
		break;
	case O_INFLIGHT:
	case O_CONNS:
	case O_DEPTH:
	case O_RAILS: {
		long v = strtol(arg, &end, 10);
		int max = c == O_INFLIGHT ? 4096 : c == O_CONNS || c == O_RAILS ? 16 : 64;
		const char *name = c == O_INFLIGHT ? "inflight"
				   : c == O_CONNS  ? "conns"
				   : c == O_RAILS  ? "rails"
						   : "depth";
		if (*end || v < 1 || v > max) {
			fprintf(stderr, "kvnode-bench: --%s: want 1..%d, got \"%s\"\n", name, max,
				arg);
			return 2;
		}
		*(c == O_INFLIGHT ? &o->inflight
		  : c == O_CONNS  ? &o->conns
		  : c == O_RAILS  ? &o->rails
				  : &o->depth) = (int)v;
		break;
	}
	case O_DEVICE: {
		long v = strtol(arg, &end, 10);
		if (*end || end == arg || v < 0 || v > 1023) {
			fprintf(stderr,
				"kvnode-bench: --device: want a CUDA ordinal 0..1023, got \"%s\"\n",
				arg);
			return 2;
		}
		o->device = (int)v;
		break;
	}
	case O_DURATION:
		o->duration_s = strtod(arg, &end);
		if (*end || !(o->duration_s > 0 && o->duration_s <= 3600)) {
			fprintf(stderr, "kvnode-bench: --duration: want seconds in (0, 3600], got \"%s\"\n", arg);
			return 2;
		}
		break;
	case O_WSET: {
		unsigned long long mib = strtoull(arg, &end, 10);
		if (*end || mib < 1 || mib > (1ull << 20)) {
			fprintf(stderr, "kvnode-bench: --working-set: want MiB >= 1, got \"%s\"\n", arg);
			return 2;
		}
		o->working_set = mib << 20;
		o->wset_given = true;
		break;
	}
	case O_TRIALS:
		o->trials = (int)strtol(arg, &end, 10);
		if (*end || o->trials < 1 || o->trials > 99) {
			fprintf(stderr, "kvnode-bench: --trials: want 1..99, got \"%s\"\n", arg);
			return 2;
		}
		break;
	}
	return 0;
}

/* The options into o (and the log level): -1 to go on to the mode, else the exit status
 * (0 after --help or --version, 2 for a usage error). */
static int
parse_opts(int argc, char **argv, struct bench_opts *o)
{
	int c;
	while ((c = getopt_long(argc, argv, "hv", longopts, NULL)) != -1) {
		switch (c) {
		case O_BASELINE: o->baseline = true; break;
		case O_JSON: o->json = true; break;
		case O_SIZES:
			if (parse_sizes(o, optarg) < 0)
				return 2;
			o->sizes_given = true;
			break;
		case O_TRANSPORT:
			if (strcmp(optarg, "tcp") && strcmp(optarg, "verbs") && strcmp(optarg, "auto")) {
				fprintf(stderr, "kvnode-bench: --transport: want tcp, verbs or auto, got \"%s\"\n", optarg);
				return 2;
			}
			o->transport = optarg;
			break;
		case O_CONNECT: o->connect = optarg; break;
		case O_REMOTE: o->remote_desc = optarg; break;
		case O_LISTEN: o->listen = optarg; break;
		case O_RDMA_DEVICE:
			o->rdma_device = optarg;
			break;
		case O_RAIL_SLICE:
			if (parse_size(optarg, &o->rail_slice) < 0 || o->rail_slice < 4096) {
				fprintf(stderr,
					"kvnode-bench: --rail-slice: want a size of at least "
					"4K, got \"%s\"\n",
					optarg);
				return 2;
			}
			break;
		case O_SERVE: o->serve = true; break;
		case O_URL: o->url = optarg; break;
		case O_PEER: o->peer = true; break;
		case O_ENTRIES:
		case O_INFLIGHT:
		case O_CONNS:
		case O_DEPTH:
		case O_RAILS:
		case O_DEVICE:
		case O_DURATION:
		case O_WSET:
		case O_TRIALS:
			if (set_number(o, c, optarg))
				return 2;
			break;
		case O_LEVEL: {
			int l = kvn_log_level_parse(optarg);
			if (l < 0) {
				fprintf(stderr, "kvnode-bench: --log-level: want error, warn, info or debug, got \"%s\"\n", optarg);
				return 2;
			}
			kvn_log_set_level(l);
			break;
		}
		case 'v': kvn_log_set_level(KVN_LOG_DEBUG); break;
		case 'h': fputs(usage, stdout); return 0;
		case O_VERSION: printf("kvnode-bench %s\n", KVN_VERSION_STRING); return 0;
		default:
			fprintf(stderr, "kvnode-bench: try --help\n");
			return 2;
		}
	}
	return -1;
}

/* Runs the named mode; returns the exit status. */
static int
run_mode(struct bench_opts *o, const char *mode)
{
	if (!strcmp(mode, "local"))
		return bench_local(o) < 0 ? 1 : 0;
	if (!strcmp(mode, "peer")) {
		if (!o->sizes_given) {
			const size_t peer_sizes[] = { 64 << 10, 256 << 10, 1 << 20, 4 << 20, 32 << 20 };
			memcpy(o->sizes, peer_sizes, sizeof(peer_sizes));
			o->nsizes = 5;
		}
		return bench_peer(o) < 0 ? 1 : 0;
	}
	if (!strcmp(mode, "scheduler"))
		return bench_scheduler(o) < 0 ? 1 : 0;
	if (!strcmp(mode, "remote"))
		return bench_remote(o) < 0 ? 1 : 0;
	if (!strcmp(mode, "client")) {
		if (!o->wset_given)
			o->working_set = 512ull << 20; /* well past any CPU's last-level cache */
		return bench_client(o) < 0 ? 1 : 0;
	}
	if (!strcmp(mode, "gpu")) {
		if (!o->sizes_given) {
			const size_t gpu_sizes[] = {256 << 10, 1 << 20, 4 << 20, 16 << 20,
						    64 << 20};
			memcpy(o->sizes, gpu_sizes, sizeof(gpu_sizes));
			o->nsizes = 5;
		}
		int rc = bench_gpu(o);
		return rc == -ENODEV ? 2 : rc < 0 ? 1 : 0;
	}
	if (!strcmp(mode, "disk")) {
		fprintf(stderr,
			"kvnode-bench: mode \"%s\" is not in this build yet (only \"local\", "
			"\"peer\", \"scheduler\", \"remote\", \"client\" and \"gpu\")\n",
			mode);
		return 2;
	}
	fprintf(stderr, "kvnode-bench: unknown mode \"%s\" (local, peer, scheduler, remote, client, disk, gpu)\n", mode);
	return 2;
}

int
main(int argc, char **argv)
{
	struct bench_opts o = {
		.duration_s = 0.5,
		.working_set = 256ull << 20,
		.sizes = { 256 << 10, 1 << 20, 4 << 20, 32 << 20 },
		.nsizes = 4,
		.trials = 3,
		.transport = "tcp",
		.inflight = 8,
		.depth = 8,
		.entries = 10000000,
	};
	kvn_log_set_level(KVN_LOG_WARN);
	int rc = parse_opts(argc, argv, &o);
	if (rc >= 0)
		return rc;
	if (optind >= argc) {
		fprintf(stderr, "kvnode-bench: missing MODE (local); try --help\n");
		return 2;
	}
	const char *mode = argv[optind];
	if (optind + 1 < argc) {
		fprintf(stderr, "kvnode-bench: unexpected argument \"%s\"; try --help\n", argv[optind + 1]);
		return 2;
	}
	return run_mode(&o, mode);
}
