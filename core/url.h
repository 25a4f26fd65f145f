/* URLs in messages: credentials never reach a log line or `kvnode stat`. */
#ifndef KVN_CORE_URL_H
#define KVN_CORE_URL_H

/* "scheme://user:pw@host/…" → "scheme://user:***@host/…" (also "redis://:pw@host"); text
 * without a password comes back unchanged. malloc'd, NULL when out of memory. */
char *kvn_url_redact(const char *url);

#endif
