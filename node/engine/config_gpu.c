/* The gpu keys (docs/configuration.md): gpu, gpu_devices, max_gpu_size, read together. gpu
 * takes true | false | auto, and the older none and N (a device index: gpu: true on device N)
 * still mean what they did. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "node/engine/config_keys.h"

static bool
is_index(const char *s)
{
	return s && *s && strspn(s, "0123456789") == strlen(s);
}

enum kvn_gpu_mode
kvn_config_gpu_mode(const struct kvn_config *cfg)
{
	const char *g = cfg->gpu;
	if (!g || !strcmp(g, "false"))
		return KVN_GPU_OFF;
	if (!strcmp(g, "auto"))
		return KVN_GPU_AUTO;
	return KVN_GPU_ON; /* "true" or an index */
}

size_t
kvn_config_gpu_devices(const struct kvn_config *cfg, int *devs, size_t max)
{
	if (is_index(cfg->gpu)) {
		if (max)
			devs[0] = atoi(cfg->gpu);
		return 1;
	}
	for (size_t i = 0; i < cfg->n_gpu_devices && i < max; i++)
		devs[i] = atoi(cfg->gpu_devices[i]);
	return cfg->n_gpu_devices;
}

static const char *
origin_of(const struct kvn_config *cfg, const char *key)
{
	int ki = kvn_config_key_index(key);
	return cfg->priv && ki >= 0 && cfg->priv->origin[ki] ? cfg->priv->origin[ki] : NULL;
}

int
kvn_config_check_gpu(const struct kvn_config *cfg, char *err, size_t errlen)
{
	const char *dorigin = origin_of(cfg, "gpu_devices");
	const char *gorigin = origin_of(cfg, "gpu");

	/* gpu: 1 names a device itself: gpu_devices saying otherwise is a contradiction. */
	if (is_index(cfg->gpu) && dorigin &&
	    (cfg->n_gpu_devices != 1 || strcmp(cfg->gpu_devices[0], cfg->gpu)))
		return kvn_seterr(-EINVAL, err, errlen,
				  "%s: gpu: %s names GPU %s, but gpu_devices (%s) names other "
				  "devices: write gpu: true and list the devices in gpu_devices",
				  gorigin ? gorigin : "default", cfg->gpu, cfg->gpu, dorigin);
	const char *where = dorigin ? dorigin : "default";
	if (kvn_config_gpu_mode(cfg) != KVN_GPU_OFF && !is_index(cfg->gpu) && !cfg->n_gpu_devices)
		return kvn_seterr(-EINVAL, err, errlen,
				  "%s: gpu_devices: empty, but gpu is %s: list the GPUs to use "
				  "([0]) or set gpu: false",
				  where, cfg->gpu);
	for (size_t i = 0; i < cfg->n_gpu_devices; i++)
		for (size_t j = 0; j < i; j++)
			if (!strcmp(cfg->gpu_devices[i], cfg->gpu_devices[j]))
				return kvn_seterr(-EINVAL, err, errlen,
						  "%s: gpu_devices: GPU %s is listed twice", where,
						  cfg->gpu_devices[i]);
	return 0;
}
