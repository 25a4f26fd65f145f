/* URL redaction (core/url.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/url.h"

char *
kvn_url_redact(const char *s)
{
	const char *sep = strstr(s, "://");
	if (!sep)
		return strdup(s);
	const char *auth = sep + 3;
	size_t alen = strcspn(auth, "/?#");
	const char *at = memrchr(auth, '@', alen);
	const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
	char *out = NULL;
	if (!colon)
		return strdup(s);
	return asprintf(&out, "%.*s***%s", (int)(colon + 1 - s), s, at) < 0 ? NULL : out;
}
