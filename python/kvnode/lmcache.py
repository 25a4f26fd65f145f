"""An LMCache remote connector over the host's kvnode: remote_url kvnode:///path/to/socket
(kvnode:// alone: the default socket). docs/python.md says how LMCache loads it.

The interface is LMCache's RemoteConnector (lmcache/v1/storage_backend/connector/
base_connector.py); the adapter that maps the URL scheme to this class is LMCache's
ConnectorAdapter, loaded through remote_storage_plugins and extra_config
(ConnectorManager._remote_adapters_plugin_launcher in lmcache/v1/storage_backend/connector/
__init__.py). A value is stored as LMCache's fs connector stores a file (FSConnector.put in
lmcache/v1/storage_backend/connector/fs_connector.py): the 28-byte RemoteMetadata header
(lmcache/v1/protocol.py, RemoteMetadata.serialize: struct "iiiiiii" = length, fmt, dtype,
shape[0..3]) then the payload, which is also what kvnode's own remote tier writes
(docs/architecture.md §10.1). Imports without LMCache installed: the base classes are then
stand-ins with the same methods, for tests and tools."""
import errno
import logging
import struct
from urllib.parse import urlparse

from ._client import Client, Error, NotFound

log = logging.getLogger("kvnode.lmcache")

try:  # LMCache present: the real base classes, so LMCache's isinstance checks pass.
    from lmcache.v1.storage_backend.connector import ConnectorAdapter
    from lmcache.v1.storage_backend.connector.base_connector import RemoteConnector
    HAVE_LMCACHE = True
except ImportError:
    HAVE_LMCACHE = False

    class RemoteConnector:  # the methods of LMCache's base this module relies on
        save_chunk_meta = True
        meta_shape = None
        meta_dtype = None
        meta_fmt = None

        def post_init(self):
            pass

    class ConnectorAdapter:
        def __init__(self, schema=""):
            self.schema = schema

        def can_parse(self, url):
            return self.schema != "" and url.startswith(self.schema)

META_LEN = 28  # fs_connector.py METADATA_BYTES_LEN
_META = struct.Struct("<7i")  # "iiiiiii", native order: little-endian on LMCache's hosts
SCHEME = "kvnode://"

# lmcache/v1/protocol.py DTYPE_TO_INT / INT_TO_DTYPE (docs/architecture.md §10.1).
_DTYPE_CODES = {"half": 1, "float16": 2, "bfloat16": 3, "float32": 4, "float": 4,
                "float64": 5, "double": 5, "uint8": 6, "float8_e4m3fn": 7, "float8_e5m2": 8}
_DTYPE_NAMES = {1: "half", 2: "float16", 3: "bfloat16", 4: "float32", 5: "float64",
                6: "uint8", 7: "float8_e4m3fn", 8: "float8_e5m2"}


def dtype_code(dtype):
    """LMCache's int for a torch dtype (or its name); str(torch.half) is torch.float16, and
    LMCache's dict maps it to 2 as well."""
    if dtype is None:
        return 0
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPE_CODES:
        raise ValueError("kvnode.lmcache: dtype %s has no LMCache RemoteMetadata code" % dtype)
    return _DTYPE_CODES[name]


def dtype_of(code):
    """The torch dtype of LMCache's int (its name when torch is not installed)."""
    if code == 0:
        return None
    name = _DTYPE_NAMES.get(code)
    if name is None:
        raise ValueError("kvnode.lmcache: unknown RemoteMetadata dtype %d" % code)
    try:
        import torch
        return getattr(torch, name)
    except ImportError:
        return name


def fmt_of(code):
    try:
        from lmcache.v1.memory_management import MemoryFormat
        return MemoryFormat(code)
    except ImportError:
        return code


def pack_meta(length, shape, dtype, fmt):
    """RemoteMetadata(length, shape, dtype, fmt).serialize(): shape padded to 4 with zeros,
    as LMCache passes [x, 0, 0, 0] for a bytes object."""
    dims = list(shape)
    if len(dims) > 4:
        raise ValueError("kvnode.lmcache: RemoteMetadata holds 4 dimensions, not %d" % len(dims))
    dims += [0] * (4 - len(dims))
    return _META.pack(length, int(getattr(fmt, "value", fmt)), dtype_code(dtype), *dims)


def unpack_meta(buf):
    """(length, shape as 4 ints, dtype, fmt) of RemoteMetadata.deserialize."""
    length, fmt, dtype, s0, s1, s2, s3 = _META.unpack_from(buf)
    return length, (s0, s1, s2, s3), dtype_of(dtype), fmt_of(fmt)


def socket_of(url):
    """kvnode:///run/kvnode.sock -> /run/kvnode.sock; kvnode:// -> None (the default)."""
    if not url.startswith(SCHEME):
        raise ValueError("kvnode.lmcache: %s is not a kvnode:// URL" % url)
    u = urlparse(url)
    if u.netloc:
        raise ValueError("kvnode.lmcache: %s: the node is on this host; write kvnode:///PATH "
                         "(three slashes) or kvnode://" % url)
    return u.path or None


def _key(key):
    return key.to_string() if hasattr(key, "to_string") else str(key)


class KvnodeConnector(RemoteConnector):
    """LMCache's RemoteConnector over kvnode.Client. get copies the value once, from the
    node's pool into the MemoryObj that local_cpu_backend.allocate gives; put copies it once,
    header and payload as two pieces, into the pool slot."""

    def __init__(self, url, loop, local_cpu_backend, name="lmcache"):
        self.url = url
        self.loop = loop
        self.local_cpu_backend = local_cpu_backend
        self.client = Client(socket_of(url), name=name)

    # -- store --------------------------------------------------------------------------------
    def _value(self, memory_obj):
        """The value's pieces, header then payload (fs_connector writes the header, then the
        payload): Client.put copies them back to back into the pool slot (kvn_client_putv), so
        the stored bytes are the fs layout and the payload is copied once, from the
        MemoryObj itself."""
        payload = memoryview(memory_obj.byte_array).cast("B")
        if not self.save_chunk_meta:
            return payload
        hdr = pack_meta(len(payload), memory_obj.get_shape(), memory_obj.get_dtype(),
                        memory_obj.get_memory_format())
        return [hdr, payload]

    def put_sync(self, key, memory_obj):
        self.client.put(_key(key), self._value(memory_obj))

    async def put(self, key, memory_obj):
        # As FSConnector.put: the caller (RemoteBackend) drops its reference afterwards.
        self.put_sync(key, memory_obj)

    def support_batched_put(self):
        return True

    async def batched_put(self, keys, memory_objs):
        self.client.put_many([_key(k) for k in keys], [self._value(m) for m in memory_objs])

    # -- load ---------------------------------------------------------------------------------
    def _memory_obj(self, key, view):
        key = _key(key)
        if self.save_chunk_meta:
            if len(view) < META_LEN:
                log.error("kvnode: value of %s is %d bytes, shorter than RemoteMetadata",
                          key, len(view))
                return None
            length, shape, dtype, fmt = unpack_meta(view)
            if length != len(view) - META_LEN:
                log.error("kvnode: value of %s says %d payload bytes, holds %d", key, length,
                          len(view) - META_LEN)
                return None
            obj = self.local_cpu_backend.allocate(shape, dtype, fmt)
            payload = view[META_LEN:]
        else:
            obj = self.local_cpu_backend.allocate(self.meta_shape, self.meta_dtype,
                                                  self.meta_fmt)
            payload = view
        if obj is None:
            log.debug("kvnode: no memory for %s", key)
            return None
        dst = memoryview(obj.byte_array).cast("B")
        if len(payload) > len(dst):
            log.error("kvnode: value of %s is %d bytes, its MemoryObj %d", key, len(payload),
                      len(dst))
            obj.ref_count_down()
            return None
        dst[:len(payload)] = payload
        if not self.save_chunk_meta:
            obj = self.reshape_partial_chunk(obj, len(payload))
        elif len(payload) != len(dst):
            log.error("kvnode: value of %s is %d bytes, its MemoryObj %d", key, len(payload),
                      len(dst))
            obj.ref_count_down()
            return None
        return obj

    def get_sync(self, key):
        try:
            with self.client.get(_key(key)) as lease:
                return self._memory_obj(key, lease.view)
        except NotFound:
            return None

    async def get(self, key):
        return self.get_sync(key)

    def support_batched_get(self):
        return True

    async def batched_get(self, keys):
        leases = self.client.get_many([_key(k) for k in keys])
        out = []
        try:
            for k, lease in zip(keys, leases):
                out.append(None if lease is None else self._memory_obj(k, lease.view))
        finally:
            for lease in leases:
                if lease is not None:
                    lease.release()
        return out

    def support_batched_get_non_blocking(self):
        return True

    async def batched_get_non_blocking(self, lookup_id, keys):
        # As FSConnector: the objects found, Nones left out.
        return [m for m in await self.batched_get(keys) if m is not None]

    # -- lookups ------------------------------------------------------------------------------
    async def exists(self, key):
        return self.exists_sync(key)

    def exists_sync(self, key):
        return self.client.contains(_key(key))

    def support_batched_async_contains(self):
        return True

    async def batched_async_contains(self, lookup_id, keys, pin=False):
        # pin: a lease is per client connection and LMCache's lookup does not hand it over.
        return self.client.contains_prefix([_key(k) for k in keys])

    def support_batched_contains(self):
        return True

    def batched_contains(self, keys, stop_after_first_not_exits=True):
        if stop_after_first_not_exits:
            n = self.client.contains_prefix([_key(k) for k in keys])
            return [True] * n + [False] * (len(keys) - n)
        return [self.client.contains(_key(k)) for k in keys]

    def remove_sync(self, key):
        try:
            self.client.remove(_key(key))
            return True
        except NotFound:
            return False
        except OSError as e:
            log.error("kvnode: removing %s: %s", key, e)
            return False

    async def list(self):
        """The keys the node holds (its own tiers, what `kvnode ls` shows), in byte order:
        Client.keys, one round trip per 4096 keys."""
        return [k for k in self.client.keys()]

    # -- health -------------------------------------------------------------------------------
    # LMCache's RemoteConnector (lmcache/v1/storage_backend/connector/base_connector.py):
    # support_ping() -> bool, async ping() -> int, "the error code, 0 means success". Its
    # health check (lmcache/v1/health_monitor/checks/remote_backend_check.py) calls ping when
    # support_ping() says so, records the code and counts any non-zero one as unhealthy; its
    # own codes for a timeout and an exception are -1 and -2 (health_monitor/constants.py), so
    # this returns the failure's errno, positive, never one of those.
    def support_ping(self):
        return True

    async def ping(self):
        """0 when the node answers one round trip, else the errno of why not (ENOTCONN once
        the connection broke or the connector was closed)."""
        try:
            self.client.ping()
            return 0
        except Error as e:
            log.warning("kvnode: ping of %s failed: %s", self.url, e)
            return e.errno or errno.EIO
        except ValueError:  # closed
            return errno.ENOTCONN

    async def close(self):
        self.client.close()

    def __repr__(self):
        return "<KvnodeConnector %s>" % self.url


class KvnodeConnectorAdapter(ConnectorAdapter):
    """Maps remote_url kvnode://... to KvnodeConnector (LMCache's ConnectorAdapter)."""

    def __init__(self):
        super().__init__(SCHEME)

    def create_connector(self, context):
        return KvnodeConnector(context.url, context.loop, context.local_cpu_backend)
