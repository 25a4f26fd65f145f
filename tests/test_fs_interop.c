/* fs:// and LMCache's FSConnector share directories: files are "<key, '/' as -SEP->.data" (older
 * LMCache: '/' as '-') holding the 28-byte RemoteMetadata header then the payload, sharded over
 * comma-separated base paths. The other side is LMCache's FSConnector restated in Python from
 * lmcache/v1/storage_backend/connector/fs_connector.py (no xattrs, no kvnode code), or plain
 * file calls. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helpers/engine_env.h"
#include "helpers/pattern.h"
#include "helpers/proc.h"
#include "kvnode/kvnode.h"
#include "node/engine/config.h"
#include "connectors/remote_value.h"

static char dir[512];
static struct kvn_config *cfg;
static struct kvn_engine *eng;

/* A node whose only tier is the fs store in dir/store. */
static void
setup(void)
{
	char yaml[PATH_MAX + 64];
	cr_assert_eq(proc_mkdtemp("kvn-fsinterop", dir, sizeof(dir)), 0);
	snprintf(yaml, sizeof(yaml), "local_cpu: false\nremote_url: \"fs://%s/store\"\n", dir);
	engine_env_open(yaml, &cfg, &eng);
}

static void
teardown(void)
{
	kvn_engine_close(eng);
	kvn_config_free(cfg);
	proc_rm_tree(dir);
}

TestSuite(fs_interop, .init = setup, .fini = teardown, .timeout = 120);

/* Puts a pattern value and waits for the remote tier's asynchronous write. */
static void
put(const char *key, size_t len, uint64_t seed)
{
	engine_put_pattern(eng, key, len, seed);
	kvn_engine_flush(eng);
}

static void
store_path(char *out, size_t len, const char *file)
{
	snprintf(out, len, "%s/store/%s", dir, file);
}

Test(fs_interop, a_value_kvnode_writes_is_where_and_how_lmcache_reads_it)
{
	/* FSConnector._get_file_name: to_string().replace("/", "-SEP-") + ".data". */
	put("meta-llama/Llama-3.1-8B@1@0@1f2e3d@bfloat16", 70000, 7);
	char path[PATH_MAX];
	store_path(path, sizeof(path), "meta-llama-SEP-Llama-3.1-8B@1@0@1f2e3d@bfloat16.data");
	size_t n;
	char *file = proc_read_file(path, &n);
	cr_assert_not_null(file, "no file %s", path);
	cr_assert_eq(n, KVN_REMOTE_META_LEN + 70000);
	struct kvn_remote_meta m;
	cr_assert_eq(kvn_remote_meta_decode(file, KVN_REMOTE_META_LEN, &m), 0);
	cr_assert_eq(m.length, 70000);
	cr_assert(pattern_check(file + KVN_REMOTE_META_LEN, 70000, 7), "payload bytes differ");
	free(file);
}

static void
write_lmcache_file(const char *name, size_t len, uint64_t seed)
{
	/* LMCache's put: header then payload into "<name>.tmp", renamed into place. */
	char path[PATH_MAX], tmp[PATH_MAX + 16];
	store_path(path, sizeof(path), name);
	snprintf(tmp, sizeof(tmp), "%.*s.tmp", (int)(strlen(path) - 5), path);
	struct kvn_remote_meta m;
	cr_assert_eq(kvn_remote_meta_for_bytes(len, &m), 0);
	size_t n = KVN_REMOTE_META_LEN + len;
	uint8_t *file = malloc(n);
	kvn_remote_meta_encode(&m, file);
	pattern_fill(file + KVN_REMOTE_META_LEN, len, seed);
	cr_assert_eq(proc_write_file(tmp, file, n), 0);
	cr_assert_eq(rename(tmp, path), 0);
	free(file);
}

Test(fs_interop, a_value_lmcache_wrote_is_read_on_its_header_alone)
{
	write_lmcache_file("org-SEP-model@2@1@abc9@half.data", 50000, 9);
	cr_assert_eq(engine_get_pattern(eng, "org/model@2@1@abc9@half", 50000, 9), 0);
}

Test(fs_interop, files_of_lmcache_before_its_sep_names_are_read_too)
{
	/* LMCache before its pull request 2075 wrote '/' as '-'. */
	write_lmcache_file("org-model@2@1@abc8@half.data", 40000, 8);
	cr_assert_eq(engine_get_pattern(eng, "org/model@2@1@abc8@half", 40000, 8), 0);
}

Test(fs_interop, file_names_are_the_key_text_exactly_with_tags_dots_and_long_keys)
{
	/* No escaping: '%' of tag%value parts, a leading '.', and names up to NAME_MAX. */
	char longkey[KVN_KEY_MAX + 1], name[NAME_MAX + 8], path[PATH_MAX];
	const char *keys[] = {"m@1@0@ab@half@lora%adapter@user%42", ".dot@1@0@ab@half", longkey};
	/* A name of NAME_MAX bytes with ".data". */
	memset(longkey, 'x', NAME_MAX - 5 - 12);
	strcpy(longkey + NAME_MAX - 5 - 12, "@1@0@cd@half");
	for (size_t i = 0; i < 3; i++) {
		put(keys[i], 3000, 20 + i);
		snprintf(name, sizeof(name), "%s.data", keys[i]);
		store_path(path, sizeof(path), name);
		cr_assert_eq(access(path, F_OK), 0, "no file %s", path);
	}
	cr_assert_eq(strlen(name), NAME_MAX);
	/* One byte more cannot be a file name: LMCache's open() fails, kvnode stores nothing. */
	char toolong[KVN_KEY_MAX + 2];
	snprintf(toolong, sizeof(toolong), "y%s", longkey);
	put(toolong, 3000, 30);
	DIR *d;
	char sdir[PATH_MAX];
	snprintf(sdir, sizeof(sdir), "%s/store", dir);
	cr_assert_not_null(d = opendir(sdir));
	size_t files = 0;
	for (struct dirent *e; (e = readdir(d));)
		files += e->d_name[0] != '.' || strlen(e->d_name) > 2;
	closedir(d);
	cr_assert_eq(files, 3, "only the three keys' files (%zu)", files);
}

Test(fs_interop, two_keys_with_one_file_name_never_return_each_others_bytes)
{
	put("a/b@1@0@77@half", 4000, 10);
	put("a-SEP-b@1@0@77@half", 4000, 11); /* same file name: replaces the first */
	cr_assert_eq(engine_get_pattern(eng, "a-SEP-b@1@0@77@half", 4000, 11), 0);
	/* Its own bytes (get checks them) or a miss; never the other key's. */
	int rc = engine_get_pattern(eng, "a/b@1@0@77@half", 4000, 10);
	cr_assert(rc == 0 || rc == -ENOENT, "get: %s", kvn_strerror(rc));
}

struct listed {
	char keys[16][KVN_KEY_MAX + 1];
	size_t n;
};

static int
collect(void *ctx, const struct kvn_key *key, size_t len)
{
	struct listed *l = ctx;
	(void)len;
	if (l->n < 16)
		snprintf(l->keys[l->n++], sizeof(l->keys[0]), "%s", key->str);
	return 0;
}

static bool
listed(const struct listed *l, const char *key)
{
	for (size_t i = 0; i < l->n; i++)
		if (!strcmp(l->keys[i], key))
			return true;
	return false;
}

Test(fs_interop, kvnode_ls_lists_every_file_lmcache_wrote)
{
	write_lmcache_file("org-SEP-model@1@0@a1@half.data", 100, 1);
	write_lmcache_file("org-model@1@0@a2@half.data", 100, 2); /* older: '-' stays '-' */
	write_lmcache_file(".dot@1@0@a3@half.data", 100, 3);
	write_lmcache_file("m@1@0@a4@half@lora%x.data", 100, 4);
	put("kv/node@1@0@a5@half", 100, 5);
	struct listed l = {.n = 0};
	cr_assert_eq(kvn_engine_list(eng, collect, &l), 0);
	cr_assert_eq(l.n, 5, "%zu keys listed", l.n);
	cr_assert(listed(&l, "org/model@1@0@a1@half"));
	cr_assert(listed(&l, "org-model@1@0@a2@half"));
	cr_assert(listed(&l, ".dot@1@0@a3@half"));
	cr_assert(listed(&l, "m@1@0@a4@half@lora%x"));
	cr_assert(listed(&l, "kv/node@1@0@a5@half"));
}

/* ------------------------------------------------------------------------------------------
 * URLs, several base paths, save_chunk_meta, against LMCache's FSConnector in Python
 * ------------------------------------------------------------------------------------------ */

/* FSConnector's naming and sharding (__init__: comma-split, stripped base paths;
 * _get_base_path: abs(key.chunk_hash) % len(base_paths); _get_file_name) and its file layout
 * (RemoteMetadata "iiiiiii" then the payload, or the payload alone without save_chunk_meta).
 * argv: write|read BASE_PATHS SEP KEY LEN SEED [nometa]. */
static const char lmcache_fs_py[] =
    "import os, struct, sys\n"
    "def pattern(n, seed):\n"
    "    return bytes((seed * 151 + i * 13 + (i >> 11)) & 0xff for i in range(n))\n"
    "cmd, paths, sep, key = sys.argv[1:5]\n"
    "n, seed, meta = int(sys.argv[5]), int(sys.argv[6]), len(sys.argv) < 8\n"
    "bases = [p.strip() for p in paths.split(',')] if ',' in paths else [paths]\n"
    "chunk_hash = int(key.split('@')[3], 16)\n"
    "base = bases[0] if len(bases) == 1 else bases[abs(chunk_hash) % len(bases)]\n"
    "path = os.path.join(base, key.replace('/', sep) + '.data')\n"
    "if cmd == 'write':\n"
    "    for b in bases: os.makedirs(b, exist_ok=True)\n"
    "    tmp = path[:-5] + '.tmp'\n"
    "    with open(tmp, 'wb') as f:\n"
    "        if meta: f.write(struct.pack('iiiiiii', n, 4, 6, n, 1, 1, 1))\n"
    "        f.write(pattern(n, seed))\n"
    "    os.replace(tmp, path)\n"
    "else:\n"
    "    data = open(path, 'rb').read()\n"
    "    if meta:\n"
    "        length = struct.unpack_from('iiiiiii', data)[0]\n"
    "        data = data[28:]\n"
    "        assert length == len(data), f'header length {length}, payload {len(data)}'\n"
    "    assert data == pattern(n, seed), f'{path}: payload differs'\n"
    "    print('ok')\n";

static char pyfile[PATH_MAX];
static char pyout[4096]; /* what the last run printed, for assertion messages */

static void
need_python(void)
{
	if (proc_run((const char *const[]){"/bin/sh", "-c", "command -v python3", NULL}, NULL,
		     60000) != 0)
		cr_skip_test("python3 is not installed");
	snprintf(pyfile, sizeof(pyfile), "%s/lmcache_fs.py", dir);
	cr_assert_eq(proc_write_file(pyfile, lmcache_fs_py, strlen(lmcache_fs_py)), 0);
}

/* Runs the Python FSConnector; returns its exit code (its output in dir/py.out). */
static int
lmcache_fs(const char *cmd, const char *paths, const char *key, size_t len, uint64_t seed,
	   bool meta)
{
	char n[32], s[32], out[PATH_MAX];
	snprintf(n, sizeof(n), "%zu", len);
	snprintf(s, sizeof(s), "%llu", (unsigned long long)seed);
	snprintf(out, sizeof(out), "%s/py.out", dir);
	const char *argv[] = {"/usr/bin/env", "python3", pyfile, cmd, paths, "-SEP-", key, n, s,
			      meta ? NULL : "nometa", NULL};
	struct proc_opts po = {.stdout_path = out, .stderr_path = out};
	int rc = proc_run(argv, &po, 60000);
	char *text = proc_read_file(out, NULL);
	snprintf(pyout, sizeof(pyout), "%s", text ? text : "");
	free(text);
	return rc;
}

/* Reopens the node on yaml (a remote_url of its own). */
static void
reopen(const char *yaml)
{
	kvn_engine_close(eng);
	kvn_config_free(cfg);
	engine_env_open(yaml, &cfg, &eng);
}

Test(fs_interop, lmcaches_url_with_host_and_port_names_the_absolute_path)
{
	char yaml[PATH_MAX + 128], path[PATH_MAX];
	snprintf(yaml, sizeof(yaml), "local_cpu: false\nremote_url: \"fs://localhost:0%s/lm\"\n",
		 dir);
	reopen(yaml);
	put("m@1@0@1234@half", 5000, 3);
	snprintf(path, sizeof(path), "%s/lm/m@1@0@1234@half.data", dir);
	cr_assert_eq(access(path, F_OK), 0, "LMCache's path %s holds the value", path);
	snprintf(path, sizeof(path), "./localhost:0%s", dir);
	cr_assert_neq(access(path, F_OK), 0, "nothing under a directory named localhost:0");
}

Test(fs_interop, fs_urls_that_could_mean_two_things_are_refused_with_a_message)
{
	const char *bad[] = {
	    "fs://cache/x",	    /* a host to LMCache, a directory to a reader */
	    "fs://relative",	    /* no path at all to LMCache */
	    "fs://localhost:0",	    /* no path */
	    "fs://",		    /* nothing */
	    "fs:///a,,/b",	    /* an empty base path */
	    "fs:///a,relative",	    /* a relative one */
	    "fs:///a,",		    /* a trailing comma */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char yaml[256], err[1024];
		struct kvn_config *c;
		struct kvn_engine *e = NULL;
		snprintf(yaml, sizeof(yaml), "local_cpu: false\nremote_url: \"%s\"\n", bad[i]);
		cr_assert_eq(kvn_config_parse(yaml, strlen(yaml), "t.yaml", &c, err, sizeof(err)),
			     0, "%s", err);
		int rc = kvn_engine_open(c, &e, err, sizeof(err));
		cr_assert_lt(rc, 0, "%s was accepted", bad[i]);
		kvn_config_free(c);
	}
}

Test(fs_interop, several_base_paths_are_sharded_as_lmcache_shards_them)
{
	need_python();
	char yaml[4 * PATH_MAX], paths[3 * PATH_MAX + 8];
	snprintf(paths, sizeof(paths), "%s/p0, %s/p1,%s/p2", dir, dir, dir);
	snprintf(yaml, sizeof(yaml), "local_cpu: false\nremote_url: \"fs://%s\"\n", paths);
	reopen(yaml);
	/* Hashes with abs(h) % 3 = 0, 1, 2, a negative one, and one wider than 64 bits. */
	const char *keys[] = {"org/m@1@0@3@half", "org/m@1@0@4@half", "org/m@1@0@5@half",
			      "org/m@1@0@-7@half", "org/m@1@0@ffffffffffffffffffff1@bfloat16"};
	for (size_t i = 0; i < 5; i++) {
		put(keys[i], 2000 + i, 40 + i);
		cr_assert_eq(lmcache_fs("read", paths, keys[i], 2000 + i, 40 + i, true), 0,
			     "LMCache finds %s where kvnode put it: %s", keys[i], pyout);
		char other[64];
		snprintf(other, sizeof(other), "org/m@1@0@%zx@half", 16 + i);
		cr_assert_eq(lmcache_fs("write", paths, other, 3000 + i, 50 + i, true), 0, "%s",
			     pyout);
		cr_assert_eq(engine_get_pattern(eng, other, 3000 + i, 50 + i), 0,
			     "kvnode finds %s where LMCache put it", other);
	}
	char one[PATH_MAX + 8];
	snprintf(one, sizeof(one), "%s/p0,", dir);
	cr_assert_neq(access(one, F_OK), 0, "no directory named after the whole list");
}

Test(fs_interop, save_chunk_meta_false_files_hold_the_payload_alone)
{
	need_python();
	char yaml[2 * PATH_MAX], store[PATH_MAX];
	snprintf(store, sizeof(store), "%s/raw", dir);
	snprintf(yaml, sizeof(yaml),
		 "local_cpu: false\nremote_url: \"fs://%s\"\nextra_config:\n"
		 "  save_chunk_meta: false\n",
		 store);
	reopen(yaml);
	put("org/m@1@0@77@half", 6000, 60);
	cr_assert_eq(lmcache_fs("read", store, "org/m@1@0@77@half", 6000, 60, false), 0, "%s",
		     pyout);
	cr_assert_eq(lmcache_fs("write", store, "org/m@1@0@78@half", 7000, 61, false), 0, "%s",
		     pyout);
	cr_assert_eq(engine_get_pattern(eng, "org/m@1@0@78@half", 7000, 61), 0);
}

Test(fs_interop, lmcaches_remote_storage_plugin_fs_is_the_remote_tier)
{
	/* LMCache's recommended form (docs: remote_storage_plugins: ["fs"] with extra_config
	 * remote_storage_plugin.fs.base_path), the node's only tier. */
	char yaml[2 * PATH_MAX], path[PATH_MAX];
	snprintf(yaml, sizeof(yaml),
		 "local_cpu: false\nremote_storage_plugins: [\"fs\"]\nextra_config:\n"
		 "  remote_storage_plugin.fs.base_path: \"%s/plugin\"\n",
		 dir);
	reopen(yaml);
	put("m@1@0@99@half", 1000, 70);
	snprintf(path, sizeof(path), "%s/plugin/m@1@0@99@half.data", dir);
	cr_assert_eq(access(path, F_OK), 0, "no file %s", path);
}
