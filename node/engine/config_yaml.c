/* Config from a YAML file, read with libyaml's document API: one mapping of keys, a value of
 * the wrong shape or range is an error with file:line and the key. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "node/engine/config_keys.h"
#include "core/log.h"

#define MAX_FILE_BYTES (4u << 20) /* a config is a few KB; more is a wrong path */
#define ARRAY_SIZE(a)  (sizeof(a) / sizeof((a)[0]))

/* Aliases make a document a graph: a few hundred bytes can name one mapping billions of times
 * over, or one long scalar in a long list of aliases. Every value node the walk reaches (each
 * reach of an aliased node again) and every byte of value text it takes count against these,
 * so such a file is an error at once instead of minutes of CPU or gigabytes of memory. */
#define MAX_EXPANDED_NODES 65536
#define MAX_EXPANDED_BYTES (16u << 20)

struct yctx {
	struct kvn_config *cfg;
	yaml_document_t *doc;
	const char *name;
	char *err;
	size_t errlen;
	size_t nodes, bytes; /* spent of the budget above */
};

static int
line_of(const yaml_node_t *n)
{
	return (int)n->start_mark.line + 1;
}

static int
spend(struct yctx *c, const yaml_node_t *n)
{
	c->nodes++;
	if (n->type == YAML_SCALAR_NODE)
		c->bytes += n->data.scalar.length;
	if (c->nodes <= MAX_EXPANDED_NODES && c->bytes <= MAX_EXPANDED_BYTES)
		return 0;
	return kvn_seterr(-EINVAL, c->err, c->errlen,
			  "%s:%d: the file expands to more than %u values or %u MiB of text "
			  "through its aliases (*name); write the values out or reuse fewer",
			  c->name, line_of(n), MAX_EXPANDED_NODES, MAX_EXPANDED_BYTES >> 20);
}

static const char *
kind_of(const yaml_node_t *n)
{
	return n->type == YAML_SEQUENCE_NODE ? "a list" : "a mapping";
}

/* Text of a scalar node, NULL for null (~, null, empty, !!null). *ok false: a NUL inside. */
static const char *
scalar_text(const yaml_node_t *n, bool *ok)
{
	const char *s = (const char *)n->data.scalar.value;
	*ok = strlen(s) == n->data.scalar.length;
	if (n->tag && !strcmp((const char *)n->tag, YAML_NULL_TAG))
		return NULL;
	if (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
	    (!*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") ||
	     !strcmp(s, "NULL")))
		return NULL;
	return s;
}

/* YAML leaves duplicate keys to the application; a repeated key is almost always an edit
 * mistake, so it is an error rather than "last one wins". */
static int
check_duplicates(struct yctx *c, const yaml_node_t *map, const char *prefix)
{
	yaml_node_pair_t *a, *b;
	if (map->data.mapping.pairs.top - map->data.mapping.pairs.start > KVN_CONFIG_MAX_ENTRIES)
		return kvn_seterr(
		    -EINVAL, c->err, c->errlen, "%s:%d: %s: more than %d keys in one mapping",
		    c->name, line_of(map), *prefix ? prefix : "top level", KVN_CONFIG_MAX_ENTRIES);
	for (a = map->data.mapping.pairs.start; a < map->data.mapping.pairs.top; a++) {
		yaml_node_t *ka = yaml_document_get_node(c->doc, a->key);
		if (!ka || ka->type != YAML_SCALAR_NODE)
			continue;
		for (b = map->data.mapping.pairs.start; b < a; b++) {
			yaml_node_t *kb = yaml_document_get_node(c->doc, b->key);
			if (kb && kb->type == YAML_SCALAR_NODE &&
			    !strcmp((char *)ka->data.scalar.value, (char *)kb->data.scalar.value))
				return kvn_seterr(
				    -EINVAL, c->err, c->errlen,
				    "%s:%d: %s%s: duplicate key (first set at line %d); "
				    "keep one",
				    c->name, line_of(ka), prefix, (char *)ka->data.scalar.value,
				    line_of(kb));
		}
	}
	return 0;
}

static int
flatten_extra(struct yctx *c, yaml_node_t *map, const char *prefix, int depth)
{
	char origin[KVN_ORIGIN_MAX];
	if (depth > KVN_CONFIG_MAX_DEPTH)
		return kvn_seterr(-EINVAL, c->err, c->errlen,
				  "%s:%d: extra_config.%s: nested more than %d levels deep (or an "
				  "alias refers to itself)",
				  c->name, line_of(map), prefix, KVN_CONFIG_MAX_DEPTH);
	char *dprefix = NULL;
	if (asprintf(&dprefix, "extra_config.%s%s", prefix, *prefix ? "." : "") < 0)
		return kvn_config_nomem(c->err, c->errlen);
	int rc = check_duplicates(c, map, dprefix);
	free(dprefix);
	for (yaml_node_pair_t *pr = map->data.mapping.pairs.start;
	     !rc && pr < map->data.mapping.pairs.top; pr++) {
		yaml_node_t *k = yaml_document_get_node(c->doc, pr->key);
		yaml_node_t *v = yaml_document_get_node(c->doc, pr->value);
		bool ok = true;
		const char *ks = k && k->type == YAML_SCALAR_NODE ? scalar_text(k, &ok) : NULL;
		if (!k || !v || !ks || !*ks || !ok) {
			rc = kvn_seterr(-EINVAL, c->err, c->errlen,
					"%s:%d: extra_config%s%s: option names must be non-empty "
					"strings",
					c->name, k ? line_of(k) : 0, *prefix ? "." : "", prefix);
			break;
		}
		if ((rc = spend(c, v)))
			break;
		char *full = NULL;
		if (asprintf(&full, "%s%s%s", prefix, *prefix ? "." : "", ks) < 0)
			return kvn_config_nomem(c->err, c->errlen);
		snprintf(origin, sizeof(origin), "%s:%d", c->name, line_of(k));
		if (v->type == YAML_MAPPING_NODE) {
			rc = flatten_extra(c, v, full, depth + 1);
		} else if (v->type == YAML_SCALAR_NODE) {
			const char *text = scalar_text(v, &ok);
			rc =
			    ok ? kvn_config_put_extra(c->cfg, full, text, origin, false, c->err,
						      c->errlen)
			       : kvn_seterr(-EINVAL, c->err, c->errlen,
					    "%s: extra_config.%s: NUL byte in value", origin, full);
		} else {
			/* A list of scalars becomes "a,b,c", the same text an env list would be. */
			char *joined = NULL;
			size_t len = 0;
			FILE *f = open_memstream(&joined, &len);
			yaml_node_item_t *it;
			for (it = v->data.sequence.items.start;
			     f && it < v->data.sequence.items.top; it++) {
				yaml_node_t *e = yaml_document_get_node(c->doc, *it);
				const char *t =
				    e && e->type == YAML_SCALAR_NODE ? scalar_text(e, &ok) : NULL;
				if (!e || e->type != YAML_SCALAR_NODE) {
					rc = kvn_seterr(
					    -EINVAL, c->err, c->errlen,
					    "%s:%d: extra_config.%s: list entries must be "
					    "scalars, got %s",
					    c->name, e ? line_of(e) : 0, full,
					    e ? kind_of(e) : "nothing");
					break;
				}
				if ((rc = spend(c, e)))
					break;
				fprintf(f, "%s%s", it == v->data.sequence.items.start ? "" : ",",
					t ? t : "");
			}
			if (!f || fclose(f))
				rc = rc ? rc : kvn_config_nomem(c->err, c->errlen);
			if (!rc)
				rc = kvn_config_put_extra(c->cfg, full, joined, origin, false,
							  c->err, c->errlen);
			free(joined);
		}
		free(full);
	}
	return rc;
}

static int
apply_yaml_key(struct yctx *c, size_t ki, yaml_node_t *v, int line)
{
	const struct kvn_keydef *kd = &kvn_config_keys[ki];
	char where[KVN_ORIGIN_MAX + 64];
	bool ok = true;
	int rc;

	snprintf(where, sizeof(where), "%s:%d: %s", c->name, line, kd->name);
	if (v->type == YAML_SCALAR_NODE) {
		const char *text = scalar_text(v, &ok);
		if (!ok)
			return kvn_seterr(-EINVAL, c->err, c->errlen, "%s: NUL byte in value",
					  where);
		if (kd->type == KVN_K_EXTRA) {
			if (text)
				return kvn_config_bad_value(c->err, c->errlen, where, ki, text,
							    NULL);
			return 0;
		}
		return kvn_config_set_scalar(c->cfg, ki, text, c->cfg->dir, where, c->err,
					     c->errlen);
	}
	if (v->type == YAML_MAPPING_NODE) {
		if (kd->type != KVN_K_EXTRA)
			return kvn_config_bad_value(c->err, c->errlen, where, ki, NULL,
						    "a mapping");
		return flatten_extra(c, v, "", 1);
	}
	if (kd->type != KVN_K_LIST)
		return kvn_config_bad_value(c->err, c->errlen, where, ki, NULL, "a list");
	size_t n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
	char **items = calloc(n ? n : 1, sizeof(*items));
	if (!items)
		return kvn_config_nomem(c->err, c->errlen);
	rc = 0;
	for (size_t i = 0; i < n && !rc; i++) {
		yaml_node_t *e = yaml_document_get_node(c->doc, v->data.sequence.items.start[i]);
		if (e && (rc = spend(c, e)))
			break;
		items[i] = e && e->type == YAML_SCALAR_NODE ? (char *)scalar_text(e, &ok) : NULL;
		if (!items[i] || !ok)
			rc = kvn_seterr(-EINVAL, c->err, c->errlen,
					"%s:%d: %s: entry %zu must be a non-empty string, got %s",
					c->name, e ? line_of(e) : line, kd->name, i + 1,
					!e || e->type == YAML_SCALAR_NODE ? "null" : kind_of(e));
	}
	if (!rc)
		rc = kvn_config_set_list(c->cfg, ki, items, n, c->cfg->dir, where, c->err,
					 c->errlen);
	free(items);
	return rc;
}

static int
yaml_error(const yaml_parser_t *p, const char *text, size_t len, const char *name, char *err,
	   size_t errlen)
{
	const yaml_mark_t *m = &p->problem_mark;
	if (p->error == YAML_MEMORY_ERROR)
		return kvn_config_nomem(err, errlen);
	if (m->index < len && text[m->index] == '\t')
		return kvn_seterr(-EINVAL, err, errlen,
				  "%s:%zu: YAML syntax error: a tab; YAML indents with spaces only",
				  name, m->line + 1);
	if (p->context)
		return kvn_seterr(-EINVAL, err, errlen,
				  "%s:%zu: YAML syntax error: %s (%s at line %zu); "
				  "check indentation, colons and quoting",
				  name, m->line + 1, p->problem ? p->problem : "?", p->context,
				  p->context_mark.line + 1);
	return kvn_seterr(-EINVAL, err, errlen,
			  "%s:%zu: YAML syntax error: %s; check indentation, colons "
			  "and quoting",
			  name, m->line + 1, p->problem ? p->problem : "?");
}

int
kvn_config_apply_yaml(struct kvn_config *cfg, const char *text, size_t len, const char *name,
		      char *err, size_t errlen)
{
	yaml_parser_t parser;
	yaml_document_t doc, next;
	struct yctx c = {.cfg = cfg, .doc = &doc, .name = name, .err = err, .errlen = errlen};
	char where[KVN_ORIGIN_MAX];
	int rc = 0, seen[KVN_NKEYS] = {0};
	const char *seen_name[KVN_NKEYS] = {0};

	if (!yaml_parser_initialize(&parser))
		return kvn_config_nomem(err, errlen);
	yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
	if (!yaml_parser_load(&parser, &doc)) {
		rc = yaml_error(&parser, text, len, name, err, errlen);
		yaml_parser_delete(&parser);
		return rc;
	}
	yaml_node_t *root = yaml_document_get_root_node(&doc);
	if (root) {
		/* A second document would be silently dropped: say so instead. */
		if (!yaml_parser_load(&parser, &next)) {
			rc = yaml_error(&parser, text, len, name, err, errlen);
		} else {
			if (yaml_document_get_root_node(&next))
				rc = kvn_seterr(-EINVAL, err, errlen,
						"%s:%zu: a second YAML document; put every key in "
						"one document",
						name, next.start_mark.line + 1);
			yaml_document_delete(&next);
		}
	}
	bool ok;
	if (rc || !root || (root->type == YAML_SCALAR_NODE && !scalar_text(root, &ok)))
		goto out; /* empty file or a lone "~": defaults */
	if (root->type != YAML_MAPPING_NODE) {
		rc = kvn_seterr(-EINVAL, err, errlen,
				"%s:%d: the file must be a mapping of keys (key: value), got %s",
				name, line_of(root),
				root->type == YAML_SCALAR_NODE ? "a scalar" : "a list");
		goto out;
	}
	if ((rc = check_duplicates(&c, root, "")))
		goto out;
	for (yaml_node_pair_t *pr = root->data.mapping.pairs.start;
	     !rc && pr < root->data.mapping.pairs.top; pr++) {
		yaml_node_t *k = yaml_document_get_node(&doc, pr->key);
		yaml_node_t *v = yaml_document_get_node(&doc, pr->value);
		if (!k || !v || k->type != YAML_SCALAR_NODE) {
			rc = kvn_seterr(-EINVAL, err, errlen,
					"%s:%d: keys must be plain names, got %s", name,
					k ? line_of(k) : 0, k ? kind_of(k) : "nothing");
			break;
		}
		const char *key = (const char *)k->data.scalar.value;
		snprintf(where, sizeof(where), "%s:%d", name, line_of(k));
		int ki = kvn_config_key_index(key);
		if (ki < 0)
			ki = kvn_config_alias_index(key);
		if (ki < 0) {
			kvn_config_note_unread(where, key);
			continue;
		}
		if (seen[ki]) {
			/* Both of LMCache's names of a key (storage_plugins, external_backends). */
			rc = kvn_seterr(-EINVAL, err, errlen,
					"%s: %s: the same key as \"%s\" on line %d (LMCache's "
					"other name for it); keep one of them",
					where, key, seen_name[ki], seen[ki]);
			break;
		}
		seen[ki] = line_of(k);
		seen_name[ki] = key;
		rc = apply_yaml_key(&c, (size_t)ki, v, line_of(k));
		if (!rc && kvn_config_set_origin(cfg, (size_t)ki, where))
			rc = kvn_config_nomem(err, errlen);
	}
out:
	yaml_document_delete(&doc);
	yaml_parser_delete(&parser);
	return rc;
}

/* ------------------------------------------------------------------------------------------
 * Files
 * ------------------------------------------------------------------------------------------ */

/* Absolute directory of path when it exists, so relative paths survive a later chdir. */
static char *
dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');
	char *d = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
	char *real = d ? realpath(d, NULL) : NULL;
	if (real) {
		free(d);
		return real;
	}
	return d;
}

static struct kvn_config *
new_for_file(const char *name)
{
	struct kvn_config *cfg = kvn_config_new_defaults();
	if (!cfg)
		return NULL;
	free(cfg->dir);
	cfg->dir = dir_of(name);
	cfg->path = strdup(name);
	if (!cfg->dir || !cfg->path) {
		kvn_config_free(cfg);
		return NULL;
	}
	return cfg;
}

static int
read_file(const char *path, const char *from, char **text, size_t *len, char *err, size_t errlen)
{
	struct stat st;
	size_t cap = 4096, n = 0;
	char *buf = NULL;
	int rc = 0, fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		rc = -errno;
		if (rc == -ENOENT)
			kvn_seterr(-EINVAL, err, errlen, "%s: no such config file (%s)", path,
				   from ? from : "check the path given");
		else
			kvn_seterr(-EINVAL, err, errlen, "%s: cannot open config file: %s", path,
				   strerror(-rc));
		return rc;
	}
	if (!fstat(fd, &st) && S_ISDIR(st.st_mode)) {
		close(fd);
		return kvn_seterr(-EISDIR, err, errlen,
				  "%s: is a directory; give the path of the YAML file", path);
	}
	if (!(buf = malloc(cap))) {
		close(fd);
		return kvn_config_nomem(err, errlen);
	}
	for (;;) {
		if (n + 1 >= cap) {
			char *nb = realloc(buf, cap *= 2);
			if (!nb) {
				rc = kvn_config_nomem(err, errlen);
				break;
			}
			buf = nb;
		}
		ssize_t r = read(fd, buf + n, cap - n - 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = -errno;
			kvn_seterr(rc, err, errlen, "%s: cannot read config file: %s", path,
				   strerror(-rc));
			break;
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (n > MAX_FILE_BYTES) {
			rc = -EFBIG;
			kvn_seterr(rc, err, errlen,
				   "%s: larger than %u MiB; is this the config file?", path,
				   MAX_FILE_BYTES >> 20);
			break;
		}
	}
	close(fd);
	if (rc) {
		free(buf);
		return rc;
	}
	buf[n] = '\0';
	*text = buf;
	*len = n;
	return 0;
}

int
kvn_config_parse(const char *text, size_t len, const char *name, struct kvn_config **out, char *err,
		 size_t errlen)
{
	*out = NULL;
	if (!name)
		name = "<config>";
	struct kvn_config *cfg = new_for_file(name);
	if (!cfg)
		return kvn_config_nomem(err, errlen);
	int rc = kvn_config_apply_yaml(cfg, text ? text : "", text ? len : 0, name, err, errlen);
	if (!rc)
		rc = kvn_config_resolve(cfg, err, errlen);
	if (!rc)
		rc = kvn_config_validate(cfg, err, errlen);
	if (rc) {
		kvn_config_free(cfg);
		return rc;
	}
	*out = cfg;
	return 0;
}

KVN_API int
kvn_config_load(const char *path, struct kvn_config **out, char *err, size_t errlen)
{
	const char *from = NULL;
	struct kvn_config *cfg;
	int rc = 0;

	*out = NULL;
	if (!path) {
		static const char *const vars[] = {"KVNODE_CONFIG_FILE", "LMCACHE_CONFIG_FILE"};
		for (size_t i = 0; i < ARRAY_SIZE(vars) && !path; i++) {
			const char *v = getenv(vars[i]);
			if (v && *v) {
				path = v;
				from =
				    i ? "set by LMCACHE_CONFIG_FILE" : "set by KVNODE_CONFIG_FILE";
			}
		}
	}
	if (path) {
		char *text = NULL;
		size_t len = 0;
		if ((rc = read_file(path, from, &text, &len, err, errlen)))
			return rc;
		cfg = new_for_file(path);
		rc = cfg ? kvn_config_apply_yaml(cfg, text, len, path, err, errlen)
			 : kvn_config_nomem(err, errlen);
		free(text);
	} else {
		cfg = kvn_config_new_defaults();
		rc = cfg ? 0 : kvn_config_nomem(err, errlen);
	}
	if (!rc)
		rc = kvn_config_apply_env_only(cfg, NULL, err, errlen);
	if (!rc)
		rc = kvn_config_resolve(cfg, err, errlen);
	if (!rc)
		rc = kvn_config_validate(cfg, err, errlen);
	if (rc) {
		kvn_config_free(cfg);
		return rc;
	}
	*out = cfg;
	return 0;
}
