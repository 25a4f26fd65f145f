"""kvnode.Client against a real `kvnode serve`: round trips up to 32 MiB byte for byte, views
that are read-only and invalid once released, leases the node drops on release, get_into
numpy, batches and contains_prefix, puts of pieces stored joined, listings across pages, ping,
errors with errno and the key, and the ctypes layout against the C header."""
import array
import ctypes
import errno
import os
import shutil
import subprocess
import tempfile
import unittest

import kvnode
from kvnode import _lib
from node import Node

try:
    import numpy as np
except ImportError:
    np = None

MiB = 1 << 20


def pattern(n, seed):
    """n bytes that differ per seed and per position (not a repeated byte)."""
    block = bytes((i * 131 + seed * 7 + (i >> 8)) & 0xFF for i in range(4096))
    return (block * (n // 4096 + 1))[:n]


def key(i, tag="py"):
    return "model@1@0@%08x%s@bfloat16" % (i, tag)


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node = Node()

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()

    def setUp(self):
        self.c = kvnode.Client(self.node.sock, name="unittest")

    def tearDown(self):
        self.c.close()

    def test_put_then_get_round_trips_byte_for_byte_up_to_32_mib(self):
        for i, n in enumerate([1, 4097, 256 << 10, 3 * MiB, 32 * MiB]):
            v = pattern(n, i)
            self.c.put(key(i, "rt"), v)
            with self.c.get(key(i, "rt")) as lease:
                self.assertEqual(len(lease.view), n)
                self.assertTrue(lease.view == v, "the view of %s differs" % key(i, "rt"))
            got = bytearray(n)
            self.assertEqual(self.c.get_into(key(i, "rt"), got), n)
            self.assertEqual(bytes(got), v)

    def test_put_takes_any_buffer(self):
        src = pattern(10000, 3)
        for i, buf in enumerate([src, bytearray(src), memoryview(src),
                                 array.array("B", src), memoryview(bytearray(src))[100:]]):
            self.c.put(key(i, "buf"), buf)
            self.assertEqual(self.c.get_bytes(key(i, "buf")), bytes(memoryview(buf).cast("B")))
        with self.assertRaises(BufferError):
            self.c.put(key(9, "buf"), memoryview(src)[::2])
        with self.assertRaises(TypeError):
            self.c.put(key(9, "buf"), "text is not bytes")

    def test_put_of_pieces_stores_them_joined(self):
        hdr = pattern(28, 1)
        payload = pattern(300000, 2)
        pieces = [hdr, b"", bytearray(payload[:70000]), memoryview(payload)[70000:],
                  array.array("B", b"tail")]
        if np is not None:
            pieces.append(np.arange(100, dtype=np.int32))
        joined = b"".join(bytes(memoryview(p).cast("B")) for p in pieces)
        self.c.put(key(1, "pieces"), pieces)
        self.assertEqual(self.c.get_bytes(key(1, "pieces")), joined)
        self.c.put(key(2, "pieces"), (hdr, payload))
        self.assertEqual(self.c.get_bytes(key(2, "pieces")), hdr + payload)
        self.c.put(key(3, "pieces"), [])
        self.assertEqual(self.c.get_bytes(key(3, "pieces")), b"")
        # A batch mixing values of pieces and plain ones, more than one round trip's keys.
        keys = [key(i, "pmany") for i in range(kvnode.BATCH_MAX + 10)]
        vals = [[pattern(28, i), pattern(100 + i % 50, i + 1)] if i % 3 else pattern(64, i)
                for i in range(len(keys))]
        self.c.put_many(keys, vals)
        for i in (0, 1, 2, kvnode.BATCH_MAX + 9):
            want = b"".join(vals[i]) if isinstance(vals[i], list) else vals[i]
            self.assertEqual(self.c.get_bytes(keys[i]), want, keys[i])
        self.assertEqual(self.c.remove_many(keys), len(keys))
        with self.assertRaises(BufferError):
            self.c.put(key(4, "pieces"), [hdr, memoryview(payload)[::2]])
        with self.assertRaises(TypeError):
            self.c.put(key(4, "pieces"), [hdr, "text is not bytes"])
        with self.assertRaises(kvnode.ValueTooLarge):
            self.c.put(key(4, "pieces"), [hdr, bytearray(self.c.max_value)])
        self.assertNotIn(key(4, "pieces"), self.c)

    def test_keys_lists_exactly_what_was_put_across_pages(self):
        # Opaque keys that sort after every "model@..." key of the other tests.
        mine = ["zz-list-%05d" % i for i in range(kvnode.BATCH_MAX + 200)]
        self.c.put_many(mine, [pattern(1 + i % 9, i) for i in range(len(mine))])
        try:
            listed = list(self.c.keys())
            self.assertEqual(listed, sorted(listed), "in byte order")
            self.assertEqual([k for k in listed if k.startswith("zz-list-")], mine)
            self.assertEqual(list(self.c.keys(after="zz-list-")), mine)
            self.assertEqual(list(self.c.keys(after=mine[-2])), mine[-1:])
            first = self.c.list(after="zz-list-", limit=5)
            self.assertEqual(first, [(mine[i], 1 + i % 9) for i in range(5)])
            self.assertEqual(len(self.c.list(after="zz-list-")), len(mine))
            self.c.remove(mine[7])
            self.assertEqual(list(self.c.keys(after="zz-list-")), mine[:7] + mine[8:])
            pages = self.node.stat()["clients"]["requests"]["LIST"]
            list(self.c.keys(after="zz-list-"))
            self.assertEqual(self.node.stat()["clients"]["requests"]["LIST"] - pages, 2,
                             "%d keys, two round trips" % (len(mine) - 1))
        finally:
            self.c.remove_many(mine)

    def test_ping(self):
        before = self.node.stat()["clients"]["requests"]["PING"]
        self.assertIsNone(self.c.ping())
        self.assertEqual(self.node.stat()["clients"]["requests"]["PING"], before + 1)
        c2 = kvnode.Client(self.node.sock)
        c2.close()
        with self.assertRaises(ValueError):
            c2.ping()

    def test_view_is_read_only_and_invalid_after_release(self):
        self.c.put(key(1, "ro"), b"x" * 5000)
        with self.c.get(key(1, "ro")) as lease:
            view = lease.view
            self.assertTrue(view.readonly)
            with self.assertRaises(TypeError):
                view[0] = 1
        with self.assertRaises(ValueError):
            view[0]
        with self.assertRaises(ValueError):
            lease.view
        self.assertTrue(lease.released)

    def test_lease_is_released_on_context_exit(self):
        self.c.put(key(1, "lease"), pattern(64 << 10, 1))
        self.assertEqual(self.node.wait_leases(0), 0)
        with self.c.get(key(1, "lease")):
            self.assertEqual(self.node.wait_leases(1), 1)
        self.assertEqual(self.node.wait_leases(0), 0)

    def test_close_releases_every_lease(self):
        self.c.put(key(1, "close"), b"abc")
        c2 = kvnode.Client(self.node.sock)
        lease = c2.get(key(1, "close"))
        view = lease.view
        self.assertEqual(self.node.wait_leases(1), 1)
        c2.close()
        self.assertEqual(self.node.wait_leases(0), 0)
        with self.assertRaises(ValueError):
            lease.view
        with self.assertRaises(ValueError):
            bytes(view)  # the pool is unmapped: a read would crash, it raises instead
        with self.assertRaises(ValueError):
            c2.get(key(1, "close"))

    @unittest.skipIf(np is None, "numpy is not installed (python3-numpy)")
    def test_numpy_over_a_view_keeps_the_lease_until_it_is_gone(self):
        a = np.arange(4096, dtype=np.float32)
        self.c.put(key(1, "np"), a)
        lease = self.c.get(key(1, "np"))
        arr = np.frombuffer(lease.view, dtype=np.float32)
        self.assertFalse(arr.flags.writeable)
        lease.release()
        self.assertEqual(self.node.wait_leases(1), 1, "the array still reads the pool")
        self.assertTrue((arr == a).all())
        del arr
        self.c.contains(key(1, "np"))  # the next call releases what is no longer used
        self.assertEqual(self.node.wait_leases(0), 0)

    @unittest.skipIf(np is None, "numpy is not installed (python3-numpy)")
    def test_get_into_numpy(self):
        a = np.random.default_rng(7).standard_normal((64, 1024)).astype(np.float32)
        self.c.put(key(1, "into"), a)
        b = np.zeros_like(a)
        self.assertEqual(self.c.get_into(key(1, "into"), b), a.nbytes)
        self.assertTrue(np.array_equal(a, b))
        short = np.zeros(16, dtype=np.float32)
        with self.assertRaises(kvnode.NoSpace) as cm:
            self.c.get_into(key(1, "into"), short)
        self.assertEqual(cm.exception.errno, errno.ENOSPC)
        self.assertEqual(cm.exception.length, a.nbytes)
        with self.assertRaises(BufferError):
            self.c.get_into(key(1, "into"), np.zeros((64, 1024), np.float32)[:, ::2])

    def test_batches_and_contains_prefix(self):
        keys = [key(i, "batch") for i in range(100)]
        vals = [pattern(1000 + i * 37, i) for i in range(100)]
        self.c.put_many(keys, vals)
        self.assertEqual(self.c.contains_prefix(keys), 100)
        self.assertEqual(self.c.contains_prefix(keys[:10] + [key(0, "absent")] + keys[10:]), 10)
        self.assertEqual(self.c.contains_prefix([]), 0)
        leases = self.c.get_many(keys[:5] + [key(0, "absent")])
        self.assertIsNone(leases[5])
        for lease, v in zip(leases[:5], vals):
            with lease:
                self.assertEqual(bytes(lease.view), v)
        bufs = [bytearray(len(v)) for v in vals[:20]] + [bytearray(10)]
        lens = self.c.get_into_many(keys[:20] + [key(1, "absent")], bufs)
        self.assertEqual(lens[:20], [len(v) for v in vals[:20]])
        self.assertIsNone(lens[20])
        self.assertEqual([bytes(b) for b in bufs[:20]], vals[:20])
        self.assertEqual(self.c.remove_many(keys[50:] + [key(2, "absent")]), 50)
        self.assertEqual(self.c.contains_prefix(keys), 50)
        self.assertEqual(self.node.wait_leases(0), 0)

    def test_missing_key_raises_not_found_with_enoent_and_the_key(self):
        k = key(404, "missing")
        with self.assertRaises(kvnode.NotFound) as cm:
            self.c.get(k)
        e = cm.exception
        self.assertEqual(e.errno, errno.ENOENT)
        self.assertIsInstance(e, KeyError)
        self.assertIsInstance(e, OSError)
        self.assertIn(k, str(e))
        self.assertEqual(e.key, k)
        self.assertFalse(self.c.contains(k))
        self.assertNotIn(k, self.c)
        with self.assertRaises(kvnode.NotFound):
            self.c.remove(k)
        with self.assertRaises(kvnode.NotFound):
            self.c.get_into(k, bytearray(10))
        self.c.put(k, b"now")
        self.assertIn(k, self.c)
        self.c.remove(k)
        with self.assertRaises(kvnode.Error) as cm:
            self.c.get("bad\x01key")
        self.assertEqual(cm.exception.errno, errno.EINVAL)

    def test_value_over_max_value_is_refused(self):
        self.assertEqual(self.c.max_value, self.node.stat()["server"]["max_chunk_size"])
        with self.assertRaises(kvnode.ValueTooLarge) as cm:
            self.c.put(key(1, "big"), bytearray(self.c.max_value + 1))
        self.assertEqual(cm.exception.errno, errno.EMSGSIZE)

    def test_no_node_on_the_socket(self):
        d = tempfile.mkdtemp()
        try:
            with self.assertRaises(kvnode.NodeUnavailable) as cm:
                kvnode.Client(os.path.join(d, "none.sock"))
            self.assertEqual(cm.exception.errno, errno.ENOENT)
            self.assertIn("none.sock", str(cm.exception))
        finally:
            shutil.rmtree(d)

    def test_default_socket_path_is_the_nodes(self):
        saved = {k: os.environ.pop(k, None) for k in
                 ("KVNODE_SOCKET_PATH", "KVNODE_SOCKET", "XDG_RUNTIME_DIR")}
        try:
            self.assertEqual(kvnode.default_socket_path(), "/tmp/kvnode-%d.sock" % os.getuid())
            os.environ["XDG_RUNTIME_DIR"] = "/run/user/7"
            self.assertEqual(kvnode.default_socket_path(), "/run/user/7/kvnode.sock")
            os.environ["KVNODE_SOCKET"] = "/a.sock"
            self.assertEqual(kvnode.default_socket_path(), "/a.sock")
            os.environ["KVNODE_SOCKET_PATH"] = self.node.sock
            with kvnode.Client() as c:
                self.assertEqual(c.socket, self.node.sock)
                c.put(key(1, "dflt"), b"1")
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None)
                if v is not None:
                    os.environ[k] = v


class LayoutTest(unittest.TestCase):
    """The ctypes structs against the header, compiled: sizeof and offsetof of each member."""

    def test_ctypes_layout_matches_the_header(self):
        cc = shutil.which("cc") or shutil.which("gcc")
        inc = os.environ.get("KVNODE_INCLUDE") or os.path.join(
            os.path.dirname(kvnode.__file__), "..", "..", "include")
        if not cc or not os.path.exists(os.path.join(inc, "kvnode", "client.h")):
            self.skipTest("needs a C compiler and include/kvnode/client.h")
        lines = ["printf(\"abi %u\\n\", (unsigned)KVN_ABI);"]
        for name, (_, offs) in _lib.LAYOUT.items():
            lines.append("printf(\"sizeof %s %%zu\\n\", sizeof(struct %s));" % (name, name))
            for f in offs:
                lines.append("printf(\"%s %s %%zu\\n\", offsetof(struct %s, %s));"
                             % (name, f, name, f))
        src = ("#include <stddef.h>\n#include <stdio.h>\n#include \"kvnode/client.h\"\n"
               "#include \"kvnode/version.h\"\nint main(void){%s return 0;}\n" % "".join(lines))
        d = tempfile.mkdtemp()
        try:
            with open(os.path.join(d, "l.c"), "w") as f:
                f.write(src)
            subprocess.run([cc, "-I", inc, "-o", os.path.join(d, "l"), os.path.join(d, "l.c")],
                           check=True)
            out = subprocess.run([os.path.join(d, "l")], check=True, capture_output=True,
                                 text=True).stdout.split("\n")
        finally:
            shutil.rmtree(d)
        got = dict((" ".join(w[:-1]), int(w[-1])) for w in (ln.split() for ln in out) if w)
        self.assertEqual(got["abi"], _lib.ABI)
        for name, (size, offs) in _lib.LAYOUT.items():
            self.assertEqual(got["sizeof " + name], size, name)
            self.assertEqual(ctypes.sizeof(_lib._TYPES[name]), size, name)
            for f, off in offs.items():
                self.assertEqual(got["%s %s" % (name, f)], off, "%s.%s" % (name, f))


if __name__ == "__main__":
    unittest.main()
