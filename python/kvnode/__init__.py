"""kvnode: the host's kvnode (RDMA KV-cache node) from Python (docs/python.md).

    import kvnode
    with kvnode.Client() as c:
        c.put(key, tensor_bytes)            # one copy, into the node's pool
        with c.get(key) as lease:           # a read-only view into the pool
            use(lease.view)
        n = c.get_into(key, numpy_array)    # one copy, into your buffer

kvnode.lmcache holds an LMCache remote connector (remote_url: kvnode:///path/to/socket)."""
from ._client import (Client, Error, Lease, NodeUnavailable, NoSpace, NotFound, ValueTooLarge,
                      default_socket_path)
from ._lib import ABI_MAJOR, ABI_MINOR, BATCH_MAX

__all__ = ["Client", "Lease", "Error", "NotFound", "ValueTooLarge", "NoSpace",
           "NodeUnavailable", "default_socket_path", "ABI_MAJOR", "ABI_MINOR", "BATCH_MAX"]
