/* Test helper for /metrics: a plain-socket HTTP/1.0 client, a strict checker of the Prometheus
 * text exposition format (0.0.4) and a lookup of one series' value. */
#ifndef KVN_TEST_EXPO_H
#define KVN_TEST_EXPO_H

#include <stdbool.h>
#include <stddef.h>

/* METHOD path to 127.0.0.1:port, read to EOF (timeout_ms per read). Returns the HTTP status
 * (or a negative errno) and *body (malloc'd, NUL-terminated; may be NULL). */
int http_request(int port, const char *method, const char *path, char **body, int timeout_ms);

/* Checks text against the exposition grammar: every line a HELP, TYPE or sample line; each
 * family has HELP then TYPE once, before its samples, which are contiguous; sample names
 * belong to the family (histograms: _bucket/_sum/_count; counters end in _total); label
 * names and escaped values are valid; no series appears twice; histogram buckets have
 * ascending le, non-decreasing counts, end with +Inf equal to _count, and have a _sum.
 * Returns true, or false with the first problem (and its line) in why. */
bool expo_check(const char *text, char *why, size_t whylen);

/* Value of the series written exactly as in the text ("kvnode_tier_hits_total{tier=\"cpu\"}");
 * -1 when absent. */
double expo_value(const char *text, const char *series);
/* Whether a family of that name has a TYPE line. */
bool expo_has_family(const char *text, const char *name);

#endif
