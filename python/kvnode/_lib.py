"""ctypes bindings of libkvnode's client API (include/kvnode/client.h, ABI in version.h).

The structs below restate the header's; their sizes and offsets are checked at import against
the numbers the header gives on this platform (LP64), and, when the installed or in-tree header
is found, against its KVN_ABI, so that a mismatch fails here with a message instead of in
memory. kvn_client_open checks the abi and size members again on its side."""
import ctypes
import ctypes.util
import os
import re

# include/kvnode/version.h: KVN_ABI_MAKE(2, 4). These bindings use the client API as of 2.3
# (gather puts, list and ping; 2.2 added the client API); 2.4's device buffers are a member of
# struct kvn_client_req, which the bindings do not use.
ABI_MAJOR = 2
ABI_MINOR = 4
ABI = (ABI_MAJOR << 16) | ABI_MINOR
SONAME = "libkvnode.so.0"  # CMakeLists.txt: SOVERSION 0

# Per-request key limit of the batch calls (client.h, "n at most 4096").
BATCH_MAX = 4096


class KvnClientOpts(ctypes.Structure):
    _fields_ = [
        ("abi", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("socket_path", ctypes.c_char_p),
        ("name", ctypes.c_char_p),
        ("timeout_ms", ctypes.c_int),
    ]


class KvnView(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("len", ctypes.c_size_t),
        ("lease", ctypes.c_uint64),
    ]


class Iovec(ctypes.Structure):  # <sys/uio.h>'s struct iovec, kvn_client_putv's pieces
    _fields_ = [
        ("iov_base", ctypes.c_void_p),
        ("iov_len", ctypes.c_size_t),
    ]


# kvn_client_list_fn: int (*)(void *ctx, const char *key, uint64_t len)
LIST_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint64)


# Sizes and offsets of the header's structs on LP64 (x86-64, arm64): what the C compiler
# lays out for include/kvnode/client.h. tests/python/test_client.py compiles the header and
# compares these with sizeof/offsetof when a C compiler is present.
LAYOUT = {
    "kvn_client_opts": (32, {"abi": 0, "size": 4, "socket_path": 8, "name": 16,
                             "timeout_ms": 24}),
    "kvn_view": (24, {"data": 0, "len": 8, "lease": 16}),
}
_TYPES = {"kvn_client_opts": KvnClientOpts, "kvn_view": KvnView}


def check_layout():
    """Raises ImportError when ctypes lays a struct out other than the header does."""
    if ctypes.sizeof(ctypes.c_void_p) != 8 or ctypes.sizeof(ctypes.c_size_t) != 8:
        raise ImportError("kvnode: the Python bindings know the LP64 layout of "
                          "kvnode/client.h only; this Python has %d-byte pointers"
                          % ctypes.sizeof(ctypes.c_void_p))
    for name, (size, offs) in LAYOUT.items():
        t = _TYPES[name]
        if ctypes.sizeof(t) != size:
            raise ImportError("kvnode: struct %s is %d bytes in ctypes, %d in kvnode/client.h"
                              % (name, ctypes.sizeof(t), size))
        for f, off in offs.items():
            if getattr(t, f).offset != off:
                raise ImportError("kvnode: struct %s.%s at %d in ctypes, %d in the header"
                                  % (name, f, getattr(t, f).offset, off))


def header_abi(include_dir):
    """(major, minor) of include_dir/kvnode/version.h, or None when it is not there."""
    try:
        with open(os.path.join(include_dir, "kvnode", "version.h")) as f:
            text = f.read()
    except OSError:
        return None
    m = re.search(r"#define\s+KVN_ABI_MAJOR\s+(\d+)", text)
    n = re.search(r"#define\s+KVN_ABI_MINOR\s+(\d+)", text)
    return (int(m.group(1)), int(n.group(1))) if m and n else None


def check_header_abi():
    """A header of another ABI major, or an older minor than these bindings need, beside the
    library we load means the library is not the one these bindings were written for."""
    here = os.path.dirname(os.path.abspath(__file__))
    dirs = [os.environ.get("KVNODE_INCLUDE", ""), os.path.join(here, "..", "..", "include"),
            "/usr/include"]
    for d in dirs:
        got = header_abi(d) if d else None
        if got is None:
            continue
        if got[0] != ABI_MAJOR or got[1] < ABI_MINOR:
            raise ImportError("kvnode: %s/kvnode/version.h has ABI %d.%d, these bindings "
                              "are for %d.%d: use the kvnode package of the library's version"
                              % (d, got[0], got[1], ABI_MAJOR, ABI_MINOR))
        return got
    return None


def _candidates():
    env = os.environ.get("KVNODE_LIB")
    if env:
        return [env]
    here = os.path.dirname(os.path.abspath(__file__))
    out = [os.path.join(here, "..", "..", "build", SONAME)]
    found = ctypes.util.find_library("kvnode")
    if found:
        out.append(found)
    out.append(SONAME)
    return out


def load():
    """The library: $KVNODE_LIB, else the source tree's build/, else the system's."""
    errors = []
    for path in _candidates():
        if os.sep in path and not os.path.exists(path):
            errors.append("%s: no such file" % path)
            continue
        try:
            lib = ctypes.CDLL(path)
        except OSError as e:
            errors.append(str(e))
            continue
        _declare(lib)
        return lib
    raise ImportError("kvnode: cannot load libkvnode (set KVNODE_LIB to its path, or install "
                      "the kvnode package): " + "; ".join(errors))


def _fn(lib, name, restype, *argtypes):
    try:
        f = getattr(lib, name)
    except AttributeError:
        raise ImportError("kvnode: %s has no %s: it is older than these bindings (ABI %d.%d); "
                          "use the kvnode package of the library's version"
                          % (lib._name, name, ABI_MAJOR, ABI_MINOR)) from None
    f.restype = restype
    f.argtypes = list(argtypes)


def _declare(lib):
    P = ctypes.c_void_p
    keys = ctypes.POINTER(ctypes.c_char_p)
    sizes = ctypes.POINTER(ctypes.c_size_t)
    ints = ctypes.POINTER(ctypes.c_int)
    views = ctypes.POINTER(KvnView)
    ptrs = ctypes.POINTER(ctypes.c_void_p)
    _fn(lib, "kvn_client_open", ctypes.c_int, ctypes.POINTER(KvnClientOpts),
        ctypes.POINTER(P), ctypes.c_char_p, ctypes.c_size_t)
    _fn(lib, "kvn_client_close", None, P)
    _fn(lib, "kvn_client_error", ctypes.c_char_p, P)
    _fn(lib, "kvn_client_max_value", ctypes.c_uint64, P)
    _fn(lib, "kvn_client_get", ctypes.c_int, P, ctypes.c_char_p, views)
    _fn(lib, "kvn_client_release", None, P, views, ctypes.c_size_t)
    _fn(lib, "kvn_client_get_into", ctypes.c_int, P, ctypes.c_char_p, P, ctypes.c_size_t,
        sizes)
    _fn(lib, "kvn_client_put", ctypes.c_int, P, ctypes.c_char_p, P, ctypes.c_size_t)
    _fn(lib, "kvn_client_remove", ctypes.c_int, P, ctypes.c_char_p)
    _fn(lib, "kvn_client_contains", ctypes.c_int, P, ctypes.c_char_p)
    _fn(lib, "kvn_client_batch_get", ctypes.c_int, P, keys, ctypes.c_size_t, views, ints)
    _fn(lib, "kvn_client_batch_get_into", ctypes.c_int, P, keys, ctypes.c_size_t, ptrs, sizes,
        sizes, ints)
    _fn(lib, "kvn_client_batch_put", ctypes.c_int, P, keys, ctypes.c_size_t, ptrs, sizes, ints)
    _fn(lib, "kvn_client_batch_remove", ctypes.c_int, P, keys, ctypes.c_size_t, ints)
    _fn(lib, "kvn_client_contains_prefix", ctypes.c_int, P, keys, ctypes.c_size_t, sizes)
    iovs = ctypes.POINTER(Iovec)
    _fn(lib, "kvn_client_putv", ctypes.c_int, P, ctypes.c_char_p, iovs, ctypes.c_int)
    _fn(lib, "kvn_client_batch_putv", ctypes.c_int, P, keys, ctypes.c_size_t,
        ctypes.POINTER(iovs), ints, ints)
    _fn(lib, "kvn_client_ping", ctypes.c_int, P)
    _fn(lib, "kvn_client_list", ctypes.c_int, P, ctypes.c_char_p, ctypes.c_size_t, LIST_FN,
        P)


# ---------------------------------------------------------------------------------------------
# The address of any bytes-like object, without copying it: PyObject_GetBuffer through the
# C API (ctypes' from_buffer takes writable buffers only, and bytes are not).
# ---------------------------------------------------------------------------------------------
class PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


_get_buffer = ctypes.pythonapi.PyObject_GetBuffer
_get_buffer.restype = ctypes.c_int
_get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(PyBuffer), ctypes.c_int]
_release_buffer = ctypes.pythonapi.PyBuffer_Release
_release_buffer.restype = None
_release_buffer.argtypes = [ctypes.POINTER(PyBuffer)]
PYBUF_SIMPLE = 0
PYBUF_WRITABLE = 1


class Pinned:
    """The bytes of obj, held (the exporter cannot resize or free them) until close(): a
    C-contiguous buffer, as PyBUF_SIMPLE asks, else the exporter's BufferError."""

    __slots__ = ("b", "held")

    def __init__(self, obj, writable=False):
        self.b = PyBuffer()
        self.held = False
        try:
            _get_buffer(obj, ctypes.byref(self.b), PYBUF_WRITABLE if writable else PYBUF_SIMPLE)
        except (BufferError, TypeError, ValueError) as e:
            # numpy says ValueError for a non-contiguous array; one type for every exporter
            what = "a writable, C-contiguous buffer" if writable else "a C-contiguous buffer"
            raise (TypeError if isinstance(e, TypeError) else BufferError)("kvnode needs %s (bytes, bytearray, memoryview, numpy array), not "
                          "%s: %s" % (what, type(obj).__name__, e)) from None
        self.held = True

    @property
    def addr(self):
        return self.b.buf

    @property
    def nbytes(self):
        return self.b.len

    def close(self):
        if self.held:
            self.held = False
            _release_buffer(ctypes.byref(self.b))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


check_layout()
