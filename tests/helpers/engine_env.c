/* Test helper: engines on a YAML text, pattern values through them (engine_env.h). */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "tests/helpers/engine_env.h"
#include "tests/helpers/pattern.h"
#include "kvnode/kvnode.h"
#include "node/engine/config.h"

void
engine_env_open(const char *yaml, struct kvn_config **cfg, struct kvn_engine **eng)
{
	char err[1024];
	cr_assert_eq(kvn_config_parse(yaml, strlen(yaml), "test.yaml", cfg, err, sizeof(err)), 0,
		     "%s", err);
	cr_assert_eq(kvn_engine_open(*cfg, eng, err, sizeof(err)), 0, "engine: %s", err);
}

void
engine_put_pattern(struct kvn_engine *eng, const char *key, size_t len, uint64_t seed)
{
	struct kvn_key k;
	cr_assert_eq(kvn_key_from_str(&k, key), 0, "key %s", key);
	void *p = malloc(len);
	cr_assert_not_null(p);
	pattern_fill(p, len, seed);
	cr_assert_eq(kvn_engine_put(eng, &k, p, len), 0, "engine put %s", key);
	free(p);
}

int
engine_get_pattern(struct kvn_engine *eng, const char *key, size_t len, uint64_t seed)
{
	struct kvn_key k;
	struct kvn_buf *b;
	cr_assert_eq(kvn_key_from_str(&k, key), 0, "key %s", key);
	int rc = kvn_engine_get(eng, &k, &b);
	if (rc == 0) {
		cr_assert_eq(b->len, len, "%s: %zu bytes, expected %zu", key, b->len, len);
		cr_assert(pattern_check(b->data, len, seed), "value of %s differs", key);
		kvn_buf_unref(b);
	}
	return rc;
}
