/* Test helper: an engine opened from a YAML text, and puts/gets of pattern values through it
 * (tests of the remote tier and its connectors). Failures are Criterion assertions. */
#ifndef KVN_TESTS_ENGINE_ENV_H
#define KVN_TESTS_ENGINE_ENV_H

#include <stddef.h>
#include <stdint.h>

struct kvn_config;
struct kvn_engine;

/* Parses yaml (named "test.yaml" in errors) and opens an engine on it. */
void engine_env_open(const char *yaml, struct kvn_config **cfg, struct kvn_engine **eng);
/* Puts len bytes of pattern seed under key. */
void engine_put_pattern(struct kvn_engine *eng, const char *key, size_t len, uint64_t seed);
/* 0 when key holds exactly len bytes of pattern seed (asserted), else the get's error
 * (-ENOENT: a miss). */
int engine_get_pattern(struct kvn_engine *eng, const char *key, size_t len, uint64_t seed);

#endif
