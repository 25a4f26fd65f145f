/* Fuzzes what `kvnode stat --scheduler` and `kvnode doctor --peers` do with a scheduler's member
 * list (node/cli/cluster_table.c, node/cli/doctor.c): any bytes are printed as the cluster table,
 * or refused with -EPROTO when they are not a cluster view, without a crash; and every member's
 * hex "region" either decodes to a descriptor that encodes back to the same bytes or is
 * refused. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "kvnode/transport.h"
#include "node/cli/client.h"
#include "node/cli/doctor.h"
#include "tests/fuzz/fuzz_common.h"

static FILE *devnull;

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	fz_init();
	devnull = fopen("/dev/null", "w");
	return 0;
}

static void
check_region(const char *hex)
{
	struct kvn_mem_desc d;
	int rc = kvn_doctor_region_hex(hex, &d);
	FZ_ASSERT(rc == 0 || rc == -EPROTO, "region %s: rc %d", hex ? hex : "(null)", rc);
	if (rc)
		return;
	char back[49];
	uint64_t v[3] = {d.addr, d.len, d.rkey};
	for (int f = 0, k = 0; f < 3; f++)
		for (int i = 0; i < 8; i++, k += 2) {
			if (f == 2 && i == 4)
				break;
			snprintf(back + k, 3, "%02x", (unsigned)(v[f] >> (8 * i)) & 0xff);
		}
	FZ_ASSERT(!strncasecmp(back, hex, 40), "region %s decoded to %s", hex, back);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *text = malloc(size + 1);
	if (!text)
		return 0;
	memcpy(text, data, size);
	text[size] = '\0';
	int rc = kvn_cli_print_cluster(text, devnull);
	cJSON *j = cJSON_Parse(text);
	bool view =
	    cJSON_IsObject(j) && cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(j, "members"));
	FZ_ASSERT((rc == 0) == view && (rc == 0 || rc == -EPROTO),
		  "print_cluster %d for input that %s a cluster view", rc, view ? "is" : "is not");
	const cJSON *m;
	cJSON_ArrayForEach(m, cJSON_GetObjectItem(j, "members"))
	    check_region(cJSON_GetStringValue(cJSON_GetObjectItem(m, "region")));
	cJSON_Delete(j);
	free(text);
	return 0;
}
