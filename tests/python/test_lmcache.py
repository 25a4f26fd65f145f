"""kvnode.lmcache.KvnodeConnector as LMCache drives it (base_connector.py's RemoteConnector):
put -> exists -> get of a 32 MiB KV chunk keeping shape, dtype and fmt, values in the layout
of LMCache's fs connector (28-byte RemoteMetadata, then the payload), batches, prefix
lookups, list, ping, remove and close, against a real `kvnode serve`."""
import asyncio
import errno
import os
import struct
import unittest

import kvnode
from kvnode import lmcache as kl
from lmcache_stub import LocalCPUBackend, MemoryFormat, MemoryObj
from node import Node

MiB = 1 << 20


class Key:
    """LMCache's CacheEngineKey as the connector sees it: to_string()."""

    def __init__(self, h):
        self.h = h

    def to_string(self):
        return "vllm-model@1@0@%x@bfloat16" % self.h


def filled(shape, dtype, fmt, seed):
    obj = MemoryObj(shape, dtype, fmt)
    n = len(obj.raw)
    block = bytes((i * 29 + seed) & 0xFF for i in range(65536))
    obj.raw[:] = (block * (n // len(block) + 1))[:n]
    return obj


class ConnectorTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.node = Node(cpu_gb="0.3")

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()

    def setUp(self):
        self.backend = LocalCPUBackend()
        self.loop = asyncio.new_event_loop()
        self.conn = kl.KvnodeConnector("kvnode://" + self.node.sock, self.loop, self.backend)

    def tearDown(self):
        self.aw(self.conn.close())
        self.loop.close()

    def aw(self, coro):
        return self.loop.run_until_complete(coro)

    def test_put_exists_get_of_a_32_mib_chunk_keeps_shape_dtype_fmt(self):
        shape = (2, 32, 256, 1024)  # KV_2LTD: 2 x layers x tokens x hidden, bfloat16
        obj = filled(shape, "bfloat16", MemoryFormat.KV_2LTD, 5)
        self.assertEqual(len(obj.raw), 32 * MiB)
        k = Key(0x32)
        self.assertFalse(self.aw(self.conn.exists(k)))
        self.aw(self.conn.put(k, obj))
        self.assertTrue(self.aw(self.conn.exists(k)))
        self.assertTrue(self.conn.exists_sync(k))
        got = self.aw(self.conn.get(k))
        self.assertIsNotNone(got)
        self.assertEqual(tuple(got.get_shape()), shape)
        self.assertEqual(got.get_dtype(), "bfloat16")
        self.assertEqual(kl.fmt_of(got.get_memory_format().value), MemoryFormat.KV_2LTD.value)
        self.assertTrue(got.raw == obj.raw, "the payload read back differs")
        self.assertEqual(self.node.wait_leases(0), 0, "get released its lease")

    def test_value_is_lmcache_fs_layout_both_ways(self):
        obj = filled((2, 4, 16, 64), "float16", MemoryFormat.KV_2LTD, 9)
        self.aw(self.conn.put(Key(1), obj))
        with kvnode.Client(self.node.sock) as c:
            raw = c.get_bytes(Key(1).to_string())
            # RemoteMetadata.serialize: struct "iiiiiii" length, fmt, dtype, shape[0..3]
            self.assertEqual(struct.unpack_from("<7i", raw),
                             (len(obj.raw), 1, 2, 2, 4, 16, 64))
            self.assertEqual(raw[28:], bytes(obj.raw))
            # A value as LMCache's FSConnector.put writes a file, stored by another writer.
            payload = bytes(range(256)) * 64
            c.put(Key(2).to_string(),
                  struct.pack("<7i", len(payload), 4, 6, len(payload), 0, 0, 0) + payload)
        got = self.aw(self.conn.get(Key(2)))
        self.assertEqual(tuple(got.get_shape()), (len(payload), 0, 0, 0))
        self.assertEqual(got.get_dtype(), "uint8")
        self.assertEqual(got.get_memory_format(), MemoryFormat.BINARY)
        self.assertEqual(bytes(got.raw), payload)

    def test_put_gives_header_and_payload_as_two_pieces_not_a_joined_copy(self):
        obj = filled((2, 4, 16, 64), "bfloat16", MemoryFormat.KV_2LTD, 11)
        pieces = self.conn._value(obj)
        self.assertEqual(len(pieces), 2)
        self.assertEqual(pieces[0], struct.pack("<7i", len(obj.raw), 1, 3, 2, 4, 16, 64))
        self.assertIs(pieces[1].obj, obj.raw, "the payload is the MemoryObj's own bytes")
        self.aw(self.conn.batched_put([Key(0x200), Key(0x201)], [obj, obj]))
        with kvnode.Client(self.node.sock) as c:
            for k in (Key(0x200), Key(0x201)):
                self.assertEqual(c.get_bytes(k.to_string()), pieces[0] + bytes(obj.raw))
        got = self.aw(self.conn.get(Key(0x201)))
        self.assertEqual(bytes(got.raw), bytes(obj.raw))
        self.conn.save_chunk_meta = False
        try:
            self.assertIs(self.conn._value(obj).obj, obj.raw, "no header: the payload alone")
        finally:
            self.conn.save_chunk_meta = True

    def test_list_uses_the_client_not_the_kvnode_program(self):
        keys = [Key(0x300 + i) for i in range(3)]
        self.aw(self.conn.batched_put(keys, [filled((2, 1, 16, 8), "bfloat16",
                                                    MemoryFormat.KV_2LTD, i) for i in range(3)]))
        saved = os.environ.get("KVNODE_BIN")
        os.environ["KVNODE_BIN"] = "/nonexistent/kvnode"
        try:
            listed = self.aw(self.conn.list())
        finally:
            if saved is None:
                del os.environ["KVNODE_BIN"]
            else:
                os.environ["KVNODE_BIN"] = saved
        self.assertEqual(listed, sorted(listed))
        for k in keys:
            self.assertIn(k.to_string(), listed)

    def test_ping_is_zero_while_the_node_answers_and_an_errno_after(self):
        self.assertTrue(self.conn.support_ping())
        self.assertEqual(self.aw(self.conn.ping()), 0)
        self.aw(self.conn.close())
        self.assertEqual(self.aw(self.conn.ping()), errno.ENOTCONN)
        self.conn = kl.KvnodeConnector("kvnode://" + self.node.sock, self.loop, self.backend)

    def test_missing_or_malformed_value_is_none(self):
        self.assertIsNone(self.aw(self.conn.get(Key(0xdead))))
        with kvnode.Client(self.node.sock) as c:
            c.put(Key(3).to_string(), b"short")
            c.put(Key(4).to_string(), struct.pack("<7i", 99, 4, 6, 99, 0, 0, 0) + b"x" * 10)
        self.assertIsNone(self.aw(self.conn.get(Key(3))))
        self.assertIsNone(self.aw(self.conn.get(Key(4))))
        self.assertEqual(self.node.wait_leases(0), 0)

    def test_batches_prefix_list_remove(self):
        keys = [Key(0x100 + i) for i in range(8)]
        objs = [filled((2, 2, 16, 32), "bfloat16", MemoryFormat.KV_2LTD, i) for i in range(8)]
        self.assertTrue(self.conn.support_batched_put())
        self.aw(self.conn.batched_put(keys[:6], objs[:6]))
        self.assertEqual(self.aw(self.conn.batched_async_contains("l1", keys)), 6)
        self.assertEqual(self.conn.batched_contains(keys), [True] * 6 + [False] * 2)
        self.assertEqual(self.conn.batched_contains(keys[5:] + keys[:1], False),
                         [True, False, False, True])
        got = self.aw(self.conn.batched_get(keys))
        self.assertEqual([g is None for g in got], [False] * 6 + [True] * 2)
        for g, o in zip(got[:6], objs):
            self.assertEqual(bytes(g.raw), bytes(o.raw))
        self.assertEqual(len(self.aw(self.conn.batched_get_non_blocking("l2", keys))), 6)
        listed = self.aw(self.conn.list())
        for k in keys[:6]:
            self.assertIn(k.to_string(), listed)
        self.assertTrue(self.conn.remove_sync(keys[0]))
        self.assertFalse(self.conn.remove_sync(keys[0]))
        self.assertEqual(self.aw(self.conn.batched_async_contains("l3", keys)), 0)
        self.assertEqual(self.node.wait_leases(0), 0)

    def test_close_disconnects(self):
        self.aw(self.conn.close())
        self.assertTrue(self.conn.client.closed)
        with self.assertRaises(ValueError):
            self.conn.exists_sync(Key(1))
        self.conn = kl.KvnodeConnector("kvnode://" + self.node.sock, self.loop, self.backend)

    def test_urls_and_adapter(self):
        self.assertEqual(kl.socket_of("kvnode:///run/kvnode/kvnode.sock"),
                         "/run/kvnode/kvnode.sock")
        self.assertIsNone(kl.socket_of("kvnode://"))
        with self.assertRaises(ValueError):
            kl.socket_of("kvnode://host:1/x")
        with self.assertRaises(ValueError):
            kl.socket_of("redis://localhost:6379")
        a = kl.KvnodeConnectorAdapter()
        self.assertTrue(a.can_parse("kvnode:///x.sock"))
        self.assertFalse(a.can_parse("lm://localhost:65432"))

        class Ctx:
            url = "kvnode://" + self.node.sock
            loop = self.loop
            local_cpu_backend = self.backend
        conn = a.create_connector(Ctx())
        self.assertIsInstance(conn, kl.KvnodeConnector)
        self.aw(conn.close())

    def test_imports_without_lmcache(self):
        self.assertFalse(kl.HAVE_LMCACHE, "these tests restate LMCache; it is installed here")
        self.assertEqual(kl.pack_meta(5, [5], "uint8", 4), struct.pack("<7i", 5, 4, 6, 5, 0, 0, 0))
        with self.assertRaises(ValueError):
            kl.pack_meta(5, [1, 1, 1, 1, 5], "uint8", 4)


if __name__ == "__main__":
    unittest.main()
