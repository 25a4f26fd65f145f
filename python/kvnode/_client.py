"""kvnode.Client: the host's kvnode from Python, over libkvnode's client API (docs/python.md).

A get is a read-only memoryview straight into the node's pool under a lease; a put copies the
caller's buffer (or its pieces, back to back) once, into the slot the node reserved. Every
failure raises a kvnode.Error
(an OSError) with the errno and kvn_client_error()'s message, which names the key."""
import ctypes
import errno as _errno
import os
import threading
import warnings
import weakref

from . import _lib

_L = _lib.load()
_lib.check_header_abi()


class Error(OSError):
    """A kvnode call failed: .errno, .strerror (the library's message, naming the key), .key."""

    def __init__(self, code, message, key=None):
        super().__init__(code, message)
        self.key = key


class NotFound(Error, KeyError):
    """No node of the cluster holds the key (ENOENT)."""


class ValueTooLarge(Error):
    """The value is over the node's max_chunk_size (EMSGSIZE)."""


class NoSpace(Error):
    """The pool cannot take the value now (ENOMEM) or ever (ENOSPC), or a buffer is short."""


class NodeUnavailable(Error):
    """No node answers on the socket, or the connection to it broke."""


_BY_ERRNO = {
    _errno.ENOENT: NotFound,
    _errno.EMSGSIZE: ValueTooLarge,
    _errno.ENOSPC: NoSpace,
    _errno.ENOMEM: NoSpace,
    _errno.ENOTCONN: NodeUnavailable,
    _errno.ECONNREFUSED: NodeUnavailable,
    _errno.ECONNRESET: NodeUnavailable,
    _errno.EPIPE: NodeUnavailable,
}


def _error(rc, message, key=None, cls=None):
    code = -rc if rc < 0 else rc
    return (cls or _BY_ERRNO.get(code, Error))(code, message, key)


def _key(k):
    if isinstance(k, str):  # surrogateescape: the keys keys() decoded go back as they came
        return k.encode("utf-8", "surrogateescape")
    if isinstance(k, (bytes, bytearray)):
        return bytes(k)
    if hasattr(k, "to_string"):  # LMCache's CacheEngineKey
        return k.to_string().encode("utf-8")
    raise TypeError("a kvnode key is a str (LMCache's key text), not %s" % type(k).__name__)


def _keys(keys):
    enc = [_key(k) for k in keys]
    return enc, (ctypes.c_char_p * max(len(enc), 1))(*enc)


def _pieces(value):
    """A put's value as pieces: a list or tuple of buffers is stored joined, anything else is
    one buffer."""
    return list(value) if isinstance(value, (list, tuple)) else None


class _Gather:
    """The pieces of one value, pinned, as the struct iovec array kvn_client_putv takes."""

    __slots__ = ("pins", "iov")

    def __init__(self, pieces):
        self.pins = []
        try:
            for p in pieces:
                self.pins.append(_lib.Pinned(p))
        except BaseException:
            self.close()
            raise
        self.iov = (_lib.Iovec * max(len(self.pins), 1))(
            *[_lib.Iovec(p.addr, p.nbytes) for p in self.pins])

    @property
    def count(self):
        return len(self.pins)

    def close(self):
        for p in self.pins:
            p.close()
        self.pins = []


def _chunks(n):
    for i in range(0, n, _lib.BATCH_MAX):
        yield i, min(n, i + _lib.BATCH_MAX)


class Lease:
    """A value in the node's pool, read-only, held from eviction until released.

    .view is a read-only memoryview of the value. Leaving the with block (or release(), or the
    client's close) releases the view: using it afterwards raises ValueError. Objects made from
    the view that this class cannot invalidate (slices, numpy arrays over it) keep the lease
    (and so the bytes they see) until they are gone; the node's lease is released then."""

    __slots__ = ("_client", "key", "_cview", "_view", "_alive", "__weakref__")

    def __init__(self, client, key, cview):
        self._client = client
        self.key = key
        self._cview = cview
        n = cview.len
        arr = (ctypes.c_ubyte * n).from_address(cview.data) if n else (ctypes.c_ubyte * 0)()
        self._alive = weakref.ref(arr)
        base = memoryview(arr)
        self._view = base.cast("B").toreadonly()
        base.release()

    @property
    def view(self):
        if self._cview is None:
            raise ValueError("the lease of %r was released: its view is no longer valid"
                             % self.key)
        return self._view

    def __len__(self):
        return self._cview.len if self._cview is not None else 0

    def __bytes__(self):
        return bytes(self.view)

    @property
    def released(self):
        return self._cview is None

    def release(self):
        if self._cview is None:
            return
        cview, self._cview = self._cview, None
        try:
            self._view.release()
        except BufferError:
            pass  # exported (a numpy array over it): released when that is gone
        self._view = None
        self._client._drop(self._alive, cview)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __repr__(self):
        state = "released" if self._cview is None else "%d bytes" % self._cview.len
        return "<kvnode.Lease %r %s>" % (self.key, state)


def default_socket_path():
    """Where Client() connects: $KVNODE_SOCKET_PATH, else the node's default (core/netaddr.c,
    kvn_default_socket_path): $KVNODE_SOCKET, $XDG_RUNTIME_DIR/kvnode.sock,
    /tmp/kvnode-<uid>.sock."""
    for var in ("KVNODE_SOCKET_PATH", "KVNODE_SOCKET"):
        if os.environ.get(var):
            return os.environ[var]
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "kvnode.sock")
    return "/tmp/kvnode-%d.sock" % os.getuid()


class Client:
    """One connection to the host's node, with its pool mapped read-only.

    Calls are serialized by a lock (the C client is used by one thread at a time); open one
    Client per thread for parallel requests. Not fork-safe: open a new one in the child."""

    def __init__(self, socket=None, name=None, timeout_ms=0):
        self._lock = threading.RLock()
        self._c = None
        self._leases = weakref.WeakSet()
        self._deferred = []  # (weakref to the view's memory, struct kvn_view) still exported
        self._closing = False
        self.socket = socket if socket else default_socket_path()
        opts = _lib.KvnClientOpts(abi=_lib.ABI, size=ctypes.sizeof(_lib.KvnClientOpts),
                                  socket_path=self.socket.encode(),
                                  name=name.encode() if name else None,
                                  timeout_ms=int(timeout_ms))
        handle = ctypes.c_void_p()
        err = ctypes.create_string_buffer(512)
        rc = _L.kvn_client_open(ctypes.byref(opts), ctypes.byref(handle), err, len(err))
        if rc < 0:
            cls = NodeUnavailable if -rc in (_errno.ENOENT, _errno.ECONNREFUSED) else None
            raise _error(rc, err.value.decode(errors="replace"), cls=cls)
        self._c = handle

    # -- lifetime ---------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def close(self):
        """Releases every lease and disconnects. Views not invalidated (numpy arrays over a
        view) keep the pool mapped until they are gone: the library unmaps it then."""
        with self._lock:
            if self._c is None or self._closing:
                return
            self._closing = True
            for lease in list(self._leases):
                lease.release()
            self._reap()
            if not self._deferred:
                self._final_close()
                return
            warnings.warn("kvnode.Client.close: %d views of the pool are still referenced; "
                          "the connection closes when they are gone" % len(self._deferred),
                          ResourceWarning, stacklevel=2)
            for ref, _ in self._deferred:
                obj = ref()
                if obj is not None:
                    f = weakref.finalize(obj, self._after_close)
                    f.atexit = False

    def _after_close(self):
        with self._lock:
            self._reap()
            if not self._deferred and self._c is not None:
                self._final_close()

    def _final_close(self):
        _L.kvn_client_close(self._c)
        self._c = None

    @property
    def closed(self):
        return self._c is None or self._closing

    def _handle(self):
        if self._c is None or self._closing:
            raise ValueError("kvnode.Client is closed")
        self._reap()
        return self._c

    def _err(self, rc, key=None):
        msg = _L.kvn_client_error(self._c).decode(errors="replace")
        return _error(rc, msg, key)

    # -- leases -------------------------------------------------------------------------------
    def _drop(self, alive, cview):
        with self._lock:
            if alive() is None:
                self._release_now(cview)
            else:
                self._deferred.append((alive, cview))

    def _release_now(self, cview):
        if self._c is not None:
            _L.kvn_client_release(self._c, ctypes.byref(cview), 1)

    def _reap(self):
        if not self._deferred:
            return
        keep = []
        for ref, cview in self._deferred:
            if ref() is None:
                self._release_now(cview)
            else:
                keep.append((ref, cview))
        self._deferred = keep

    def _lease(self, key, cview):
        lease = Lease(self, key, cview)
        self._leases.add(lease)
        return lease

    # -- one key ------------------------------------------------------------------------------
    @property
    def max_value(self):
        """The largest value the node takes (its max_chunk_size), in bytes."""
        with self._lock:
            return int(_L.kvn_client_max_value(self._handle()))

    def get(self, key):
        """A Lease whose .view is the value of key in the pool; NotFound when no node has it."""
        k = _key(key)
        with self._lock:
            c = self._handle()
            v = _lib.KvnView()
            rc = _L.kvn_client_get(c, k, ctypes.byref(v))
            if rc < 0:
                raise self._err(rc, key)
            return self._lease(key, v)

    def get_bytes(self, key):
        """The value of key as bytes (a copy)."""
        with self.get(key) as lease:
            return bytes(lease.view)

    def get_into(self, key, buf):
        """Copies key's value into the writable buffer buf; returns its length. NoSpace (with
        .length the value's length) when buf is short."""
        k = _key(key)
        with _lib.Pinned(buf, writable=True) as p, self._lock:
            c = self._handle()
            n = ctypes.c_size_t(0)
            rc = _L.kvn_client_get_into(c, k, p.addr, p.nbytes, ctypes.byref(n))
            if rc < 0:
                e = self._err(rc, key)
                e.length = n.value
                raise e
            return n.value

    def put(self, key, data):
        """Stores the bytes of data (any C-contiguous buffer) under key, copied once. A list or
        tuple of buffers (a header and a payload, say) is stored as their concatenation,
        copied once piece by piece: nothing joins them first (kvn_client_putv)."""
        k = _key(key)
        pieces = _pieces(data)
        if pieces is not None:
            g = _Gather(pieces)
            try:
                with self._lock:
                    rc = _L.kvn_client_putv(self._handle(), k, g.iov, g.count)
                    if rc < 0:
                        raise self._err(rc, key)
            finally:
                g.close()
            return
        with _lib.Pinned(data) as p, self._lock:
            c = self._handle()
            rc = _L.kvn_client_put(c, k, p.addr, p.nbytes)
            if rc < 0:
                raise self._err(rc, key)

    def remove(self, key):
        """Removes key; NotFound when the node held no value of it."""
        k = _key(key)
        with self._lock:
            rc = _L.kvn_client_remove(self._handle(), k)
            if rc < 0:
                raise self._err(rc, key)

    def contains(self, key):
        """Whether this node or a peer holds key."""
        k = _key(key)
        with self._lock:
            rc = _L.kvn_client_contains(self._handle(), k)
            if rc < 0:
                raise self._err(rc, key)
            return rc > 0

    __contains__ = contains

    # -- batches: one round trip per 4096 keys -----------------------------------------------
    def contains_prefix(self, keys):
        """How many leading keys are held by this node or a peer (LMCache's prefix lookup)."""
        keys = list(keys)
        total = 0
        with self._lock:
            c = self._handle()
            for lo, hi in _chunks(len(keys)):
                _, arr = _keys(keys[lo:hi])
                found = ctypes.c_size_t(0)
                rc = _L.kvn_client_contains_prefix(c, arr, hi - lo, ctypes.byref(found))
                if rc < 0:
                    raise self._err(rc)
                total += found.value
                if found.value < hi - lo:
                    break
        return total

    def _batch_raise(self, rc, rcs, keys, lo, n, ok_missing):
        """The first failed key's error (missing keys excepted when ok_missing)."""
        for i in range(n):
            if rcs[i] < 0 and not (ok_missing and rcs[i] == -_errno.ENOENT):
                return self._err(rcs[i], keys[lo + i])
        return self._err(rc) if rc < 0 and not ok_missing else None

    def get_many(self, keys):
        """A list of Leases, None where no node holds the key; other errors raise (and the
        leases already taken are released)."""
        keys = list(keys)
        out = []
        try:
            with self._lock:
                c = self._handle()
                for lo, hi in _chunks(len(keys)):
                    n = hi - lo
                    _, arr = _keys(keys[lo:hi])
                    views = (_lib.KvnView * n)()
                    rcs = (ctypes.c_int * n)()
                    rc = _L.kvn_client_batch_get(c, arr, n, views, rcs)
                    for i in range(n):
                        out.append(self._lease(keys[lo + i], views[i]) if rcs[i] == 0
                                   else None)
                    e = self._batch_raise(rc, rcs, keys, lo, n, True)
                    if e:
                        raise e
        except BaseException:
            for lease in out:
                if lease is not None:
                    lease.release()
            raise
        return out

    def get_into_many(self, keys, bufs):
        """Copies each key's value into the matching writable buffer: a list of lengths, None
        where no node holds the key."""
        keys, bufs = list(keys), list(bufs)
        if len(keys) != len(bufs):
            raise ValueError("get_into_many: %d keys, %d buffers" % (len(keys), len(bufs)))
        pins = []
        out = []
        try:
            pins = [_lib.Pinned(b, writable=True) for b in bufs]
            with self._lock:
                c = self._handle()
                for lo, hi in _chunks(len(keys)):
                    n = hi - lo
                    _, arr = _keys(keys[lo:hi])
                    dst = (ctypes.c_void_p * n)(*[p.addr for p in pins[lo:hi]])
                    caps = (ctypes.c_size_t * n)(*[p.nbytes for p in pins[lo:hi]])
                    lens = (ctypes.c_size_t * n)()
                    rcs = (ctypes.c_int * n)()
                    rc = _L.kvn_client_batch_get_into(c, arr, n, dst, caps, lens, rcs)
                    e = self._batch_raise(rc, rcs, keys, lo, n, True)
                    if e:
                        raise e
                    out += [lens[i] if rcs[i] == 0 else None for i in range(n)]
        finally:
            for p in pins:
                p.close()
        return out

    def put_many(self, keys, values):
        """Stores values[i] under keys[i], one round trip per 4096; the first failed key's
        error raises (the others were stored). A value that is a list or tuple of buffers is
        stored joined, as put does."""
        keys, values = list(keys), list(values)
        if len(keys) != len(values):
            raise ValueError("put_many: %d keys, %d values" % (len(keys), len(values)))
        if any(isinstance(v, (list, tuple)) for v in values):
            return self._putv_many(keys, values)
        pins = []
        try:
            pins = [_lib.Pinned(v) for v in values]
            with self._lock:
                c = self._handle()
                for lo, hi in _chunks(len(keys)):
                    n = hi - lo
                    _, arr = _keys(keys[lo:hi])
                    data = (ctypes.c_void_p * n)(*[p.addr for p in pins[lo:hi]])
                    lens = (ctypes.c_size_t * n)(*[p.nbytes for p in pins[lo:hi]])
                    rcs = (ctypes.c_int * n)()
                    rc = _L.kvn_client_batch_put(c, arr, n, data, lens, rcs)
                    e = self._batch_raise(rc, rcs, keys, lo, n, False)
                    if e:
                        raise e
        finally:
            for p in pins:
                p.close()

    def _putv_many(self, keys, values):
        gathers = []
        try:
            for v in values:
                pieces = _pieces(v)
                gathers.append(_Gather(pieces if pieces is not None else [v]))
            with self._lock:
                c = self._handle()
                for lo, hi in _chunks(len(keys)):
                    n = hi - lo
                    _, arr = _keys(keys[lo:hi])
                    iovs = (ctypes.POINTER(_lib.Iovec) * n)(
                        *[ctypes.cast(g.iov, ctypes.POINTER(_lib.Iovec))
                          for g in gathers[lo:hi]])
                    cnts = (ctypes.c_int * n)(*[g.count for g in gathers[lo:hi]])
                    rcs = (ctypes.c_int * n)()
                    rc = _L.kvn_client_batch_putv(c, arr, n, iovs, cnts, rcs)
                    e = self._batch_raise(rc, rcs, keys, lo, n, False)
                    if e:
                        raise e
        finally:
            for g in gathers:
                g.close()

    def remove_many(self, keys):
        """Removes the keys: how many the node held."""
        keys = list(keys)
        removed = 0
        with self._lock:
            c = self._handle()
            for lo, hi in _chunks(len(keys)):
                n = hi - lo
                _, arr = _keys(keys[lo:hi])
                rcs = (ctypes.c_int * n)()
                rc = _L.kvn_client_batch_remove(c, arr, n, rcs)
                e = self._batch_raise(rc, rcs, keys, lo, n, True)
                if e:
                    raise e
                removed += sum(1 for i in range(n) if rcs[i] == 0)
        return removed

    # -- the node -----------------------------------------------------------------------------
    def ping(self):
        """One round trip to the node; raises (NodeUnavailable when the connection broke)
        when it does not answer."""
        with self._lock:
            rc = _L.kvn_client_ping(self._handle())
            if rc < 0:
                raise self._err(rc)

    def _list(self, after, limit):
        """[(key, value length)] of one kvn_client_list call, and whether keys follow."""
        got = []

        def one(ctx, key, length):
            got.append((key.decode("utf-8", "surrogateescape"), length))
            return 0

        fn = _lib.LIST_FN(one)
        a = _key(after) if after else None
        with self._lock:
            rc = _L.kvn_client_list(self._handle(), a, limit, fn, None)
            if rc < 0:
                raise self._err(rc)
        return got, rc == 1

    def keys(self, after=None):
        """The keys the node holds (its own tiers, as `kvnode ls`), in byte order, after
        `after` when given: an iterator, one round trip per 4096 keys. A key held throughout
        is listed once; one put or removed meanwhile may or may not be."""
        while True:
            page, more = self._list(after, _lib.BATCH_MAX)
            for k, _ in page:
                yield k
            if not more or not page:
                return
            after = page[-1][0]

    def list(self, after=None, limit=None):
        """[(key, value length)] of the node's keys in byte order, after `after`, at most
        limit of them (None: all)."""
        return self._list(after, int(limit) if limit else 0)[0]

    def __repr__(self):
        return "<kvnode.Client %s%s>" % (self.socket, " closed" if self.closed else "")
