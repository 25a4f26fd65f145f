"""A restatement of the parts of LMCache's memory objects the connector uses, for tests
without LMCache (lmcache/v1/memory_management.py: MemoryFormat's values, MemoryObj's
byte_array, metadata shape/dtype/fmt, get_shape/get_dtype/get_memory_format, ref_count_down;
lmcache/v1/storage_backend/local_cpu_backend.py: allocate(shape, dtype, fmt))."""
import enum
from dataclasses import dataclass

DTYPE_SIZE = {"half": 2, "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "uint8": 1,
              "float8_e4m3fn": 1, "float8_e5m2": 1}


class MemoryFormat(enum.Enum):
    UNDEFINED = 0
    KV_2LTD = 1
    KV_T2D = 2
    KV_2TD = 3
    BINARY = 4
    BINARY_BUFFER = 5
    KV_MLA_FMT = 6


@dataclass
class MemoryObjMetadata:
    shape: tuple
    dtype: str
    fmt: MemoryFormat


class MemoryObj:
    def __init__(self, shape, dtype, fmt):
        n = DTYPE_SIZE[dtype]
        dims = list(shape)
        while len(dims) > 1 and dims[-1] == 0:  # [x, 0, 0, 0]: a bytes object (protocol.py)
            dims.pop()
        for d in dims:
            n *= d
        self.meta = MemoryObjMetadata(tuple(shape), dtype, fmt)
        self.raw = bytearray(n)
        self.refs = 1

    @property
    def metadata(self):
        return self.meta

    @property
    def byte_array(self):
        return memoryview(self.raw)

    def get_shape(self):
        return self.meta.shape

    def get_dtype(self):
        return self.meta.dtype

    def get_memory_format(self):
        return self.meta.fmt

    def ref_count_down(self):
        self.refs -= 1


class LocalCPUBackend:
    def __init__(self):
        self.allocated = []

    def allocate(self, shape, dtype, fmt):
        obj = MemoryObj(shape, dtype, MemoryFormat(fmt) if isinstance(fmt, int) else fmt)
        self.allocated.append(obj)
        return obj
