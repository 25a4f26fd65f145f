/* fs:// and LMCache's FSConnector share one directory: files are "<key, '/' as '->.data" holding
 * the 28-byte RemoteMetadata header then the payload. Files are written and read here with
 * plain file calls, as LMCache does (no xattrs), not through kvnode's code. */
#include <criterion/criterion.h>
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
#include "node/config.h"
#include "node/remote_value.h"

static char dir[PATH_MAX - 64];
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
	put("vllm@meta-llama/Llama-3.1-8B@1@0@1f2e3d", 70000, 7);
	char path[PATH_MAX];
	store_path(path, sizeof(path), "vllm@meta-llama-Llama-3.1-8B@1@0@1f2e3d.data");
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

Test(fs_interop, a_value_lmcache_wrote_is_read_on_its_header_alone)
{
	/* LMCache's put: header then payload into a temporary file, renamed into place. */
	char path[PATH_MAX], tmp[PATH_MAX];
	store_path(path, sizeof(path), "vllm@org-model@2@1@abc9.data"); /* the key's '/' as '-' */
	store_path(tmp, sizeof(tmp), "vllm@org-model@2@1@abc9.tmp");
	struct kvn_remote_meta m;
	cr_assert_eq(kvn_remote_meta_for_bytes(50000, &m), 0);
	size_t n = KVN_REMOTE_META_LEN + 50000;
	uint8_t *file = malloc(n);
	kvn_remote_meta_encode(&m, file);
	pattern_fill(file + KVN_REMOTE_META_LEN, 50000, 9);
	cr_assert_eq(proc_write_file(tmp, file, n), 0);
	cr_assert_eq(rename(tmp, path), 0);
	free(file);
	cr_assert_eq(engine_get_pattern(eng, "vllm@org/model@2@1@abc9", 50000, 9), 0);
}

Test(fs_interop, two_keys_with_one_file_name_never_return_each_others_bytes)
{
	put("vllm@a/b@1@0@77", 4000, 10);
	put("vllm@a-b@1@0@77", 4000, 11); /* same file name: replaces the first */
	cr_assert_eq(engine_get_pattern(eng, "vllm@a-b@1@0@77", 4000, 11), 0);
	/* Its own bytes (get checks them) or a miss; never the other key's. */
	int rc = engine_get_pattern(eng, "vllm@a/b@1@0@77", 4000, 10);
	cr_assert(rc == 0 || rc == -ENOENT, "get: %s", kvn_strerror(rc));
}
