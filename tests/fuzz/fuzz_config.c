/* Fuzzes the config loader (node/engine/config*.c). The first input byte picks the mode:
 *   even: the rest is a YAML file (kvn_config_parse, as `kvnode serve -c FILE` reads it);
 *   odd:  the rest is an environment on top of the defaults: lines of "<key byte><value>",
 *         the key byte naming a config key (KVNODE_<KEY>, or LMCACHE_<KEY> when its top bit is
 *         set), as kvn_config_apply_env sees them.
 * Properties: a refusal says why; an accepted config validates, prints as JSON (redacted and
 * not), gives every key's value and origin, redacts its URL, and its JSON (a YAML document too)
 * parses back into a config that, once its paths are resolved, prints the same JSON. */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/url.h"
#include "node/engine/config.h"
#include "node/engine/config_keys.h"
#include "tests/fuzz/fuzz_common.h"

static void
check_config(struct kvn_config *cfg)
{
	char err[1024] = "", buf[4096];
	FZ_ASSERT(kvn_config_validate(cfg, err, sizeof(err)) == 0,
		  "an accepted config does not validate: %s", err);
	for (size_t i = 0; i < KVN_NKEYS; i++) {
		const char *name = kvn_config_keys[i].name;
		int rc = kvn_config_value(cfg, name, buf, sizeof(buf));
		FZ_ASSERT(rc == 0 || rc == -ENOENT || rc == -ENOSPC, "value of %s: %d", name, rc);
		if (rc == 0)
			FZ_ASSERT(strlen(buf) < sizeof(buf), "value of %s not terminated", name);
		FZ_ASSERT(kvn_config_origin(cfg, name), "key %s has no origin", name);
	}
	FZ_ASSERT(!kvn_config_origin(cfg, "no_such_key"), "an unknown key has an origin");
	if (cfg->remote_url) {
		char *r = kvn_url_redact(cfg->remote_url);
		FZ_ASSERT(r, "out of memory");
		free(r);
	}
	char *redacted = kvn_config_to_json(cfg, true);
	char *full = kvn_config_to_json(cfg, false);
	FZ_ASSERT(redacted && full, "out of memory");
	cJSON *j = cJSON_Parse(full);
	FZ_ASSERT(cJSON_IsObject(j), "the config's JSON does not parse: %s", full);
	cJSON_Delete(j);
	if (!cfg->auth_token)
		FZ_ASSERT(!strcmp(redacted, full) || strstr(redacted, "***"),
			  "redaction changed a config that holds no secret");
	free(redacted);

	/* JSON is YAML: the printed config reads back, and from then on as itself (the first
	 * read may still resolve relative paths that came from the environment). Strings are
	 * taken as bytes (the environment's, or YAML escapes such as "\x7f"), and cJSON prints
	 * bytes YAML does not allow unescaped: only printable ASCII output is read back. */
	bool ascii = true;
	for (const char *c = full; *c; c++)
		ascii &= *c >= 0x20 && *c < 0x7f;
	char *text = full;
	for (int round = 0; ascii && round < 2; round++) {
		struct kvn_config *again;
		if (kvn_config_parse(text, strlen(text), "/fuzz/fuzz.yaml", &again, err,
				     sizeof(err)) < 0)
			fz_fail("the printed config does not parse back: %s\n%s", err, text);
		char *next = kvn_config_to_json(again, false);
		FZ_ASSERT(next, "out of memory");
		kvn_config_free(again);
		if (round == 1)
			FZ_ASSERT(!strcmp(text, next),
				  "the printed config reads back as another:\n%s\n%s", text, next);
		if (text != full)
			free(text);
		text = next;
	}
	if (text != full)
		free(text);
	free(full);
}

static void
fuzz_yaml(const uint8_t *p, size_t n)
{
	struct kvn_config *cfg = NULL;
	char err[1024] = "";
	int rc = kvn_config_parse((const char *)p, n, "fuzz.yaml", &cfg, err, sizeof(err));
	if (rc < 0) {
		FZ_ASSERT(err[0], "a refused config without a reason (%d)", rc);
		FZ_ASSERT(!cfg, "a refused config was handed out");
		return;
	}
	check_config(cfg);
	kvn_config_free(cfg);
}

static void
fuzz_env(const uint8_t *p, size_t n)
{
	char *envp[65];
	size_t ne = 0;
	for (size_t i = 0; i < n && ne < 64;) {
		const uint8_t *nl = memchr(p + i, '\n', n - i);
		size_t end = nl ? (size_t)(nl - p) : n;
		if (end > i) {
			uint8_t kb = p[i];
			const char *name = kvn_config_keys[(kb & 0x7f) % KVN_NKEYS].name;
			const char *pre = kb & 0x80 ? "LMCACHE_" : "KVNODE_";
			size_t vl = end - i - 1, pl = strlen(pre), kl = strlen(name);
			char *e = malloc(pl + kl + 1 + vl + 1);
			FZ_ASSERT(e, "out of memory");
			memcpy(e, pre, pl);
			for (size_t k = 0; k < kl; k++)
				e[pl + k] = (char)toupper((unsigned char)name[k]);
			e[pl + kl] = '=';
			memcpy(e + pl + kl + 1, p + i + 1, vl);
			e[pl + kl + 1 + vl] = '\0';
			envp[ne++] = e;
		}
		i = end + 1;
	}
	envp[ne] = NULL;
	struct kvn_config *cfg = kvn_config_new_defaults();
	FZ_ASSERT(cfg, "out of memory");
	char err[1024] = "";
	int rc = kvn_config_apply_env(cfg, envp, err, sizeof(err));
	if (rc < 0)
		FZ_ASSERT(err[0], "a refused environment without a reason (%d)", rc);
	else
		check_config(cfg);
	kvn_config_free(cfg);
	for (size_t i = 0; i < ne; i++)
		free(envp[i]);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	/* Exactly the input's bytes, unterminated: the parser must not read past them. */
	size_t n = size - 1;
	uint8_t *p = malloc(n ? n : 1);
	FZ_ASSERT(p, "out of memory");
	memcpy(p, data + 1, n);
	if (data[0] & 1)
		fuzz_env(p, n);
	else
		fuzz_yaml(p, n);
	free(p);
	return 0;
}
