"""Writing a state dict as a PyTorch ``.pth`` file (zip format) without PyTorch.

The file is what ``torch.save(state_dict)`` writes: a zip archive (stored, not compressed) with
``archive/data.pkl``, one member ``archive/data/<i>`` per tensor (raw little-endian bytes,
64-byte aligned), and the ``version`` / ``byteorder`` records. The pickle is emitted opcode by
opcode here; it names only ``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` and
the ``torch.<X>Storage`` classes, all of which ``torch.load(..., weights_only=True)`` accepts.
"""
import collections
import pickle
import struct
import zipfile

import numpy as np

from common.atomic import atomic_write

from .errors import ConverterError
from .mapping import to_pytorch

ARCHIVE = "archive"
ALIGNMENT = 64
STORAGE_CLASSES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                   np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
                   np.dtype(np.int32): "IntStorage", np.dtype(np.int16): "ShortStorage",
                   np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage",
                   np.dtype(np.bool_): "BoolStorage"}


class _PickleWriter:
    """Protocol-2 opcodes for the few objects a state dict needs."""

    def __init__(self):
        self.out = bytearray(pickle.PROTO + bytes([2]))

    def op(self, code, payload=b""):
        self.out += code + payload

    def global_(self, module, name):
        self.op(pickle.GLOBAL, ("%s\n%s\n" % (module, name)).encode("ascii"))

    def str_(self, text):
        data = text.encode("utf-8")
        self.op(pickle.BINUNICODE, struct.pack("<I", len(data)) + data)

    def int_(self, value):
        value = int(value)
        if 0 <= value < 256:
            self.op(pickle.BININT1, bytes([value]))
        elif -2 ** 31 <= value < 2 ** 31:
            self.op(pickle.BININT, struct.pack("<i", value))
        else:
            data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
            self.op(pickle.LONG1, bytes([len(data)]) + data)

    def tuple_(self, items, emit):
        self.op(pickle.MARK)
        for item in items:
            emit(item)
        self.op(pickle.TUPLE)

    def empty_ordered_dict(self):
        self.global_("collections", "OrderedDict")
        self.op(pickle.EMPTY_TUPLE)
        self.op(pickle.REDUCE)

    def tensor(self, key, array):
        """``_rebuild_tensor_v2(storage(key), 0, shape, contiguous strides, False, {})``."""
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.op(pickle.MARK)
        self.op(pickle.MARK)  # the persistent id ('storage', <class>, key, 'cpu', numel)
        self.str_("storage")
        self.global_("torch", STORAGE_CLASSES[array.dtype])
        self.str_(key)
        self.str_("cpu")
        self.int_(array.size)
        self.op(pickle.TUPLE)
        self.op(pickle.BINPERSID)
        self.int_(0)
        self.tuple_(array.shape, self.int_)
        strides = [int(np.prod(array.shape[i + 1:], dtype=np.int64)) for i in range(array.ndim)]
        self.tuple_(strides, self.int_)
        self.op(pickle.NEWFALSE)
        self.empty_ordered_dict()
        self.op(pickle.TUPLE)
        self.op(pickle.REDUCE)

    def state_dict(self, arrays):
        """An OrderedDict of tensors; ``arrays`` is [(name, array)], storage keys 0, 1, ..."""
        self.empty_ordered_dict()
        self.op(pickle.MARK)
        for i, (name, array) in enumerate(arrays):
            self.str_(name)
            self.tensor(str(i), array)
        self.op(pickle.SETITEMS)
        self.op(pickle.STOP)
        return bytes(self.out)


def _aligned_info(archive, name):
    """A ZipInfo whose data starts on an ALIGNMENT boundary (padding in the extra field)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    start = archive.fp.tell() + 30 + len(name.encode("utf-8"))
    pad = (-(start + 4)) % ALIGNMENT
    info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # "FB": the id torch uses
    return info


def write_pth(state_dict, path):
    """Write ``{name: array}`` (already in PyTorch layouts) to ``path`` atomically."""
    arrays = []
    for name, array in state_dict.items():
        array = np.array(array, order="C", copy=False)  # (ascontiguousarray makes 0-d 1-d)
        if array.dtype not in STORAGE_CLASSES:
            raise ConverterError("cannot export %s: dtype %s has no PyTorch storage type"
                                 % (name, array.dtype))
        arrays.append((name, array.astype(array.dtype.newbyteorder("<"), copy=False)))
    data_pkl = _PickleWriter().state_dict(arrays)
    with atomic_write(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED,
                                                  allowZip64=True) as archive:
        records = [("data.pkl", data_pkl), ("byteorder", b"little")]
        records += [("data/%d" % i, array) for i, (_, array) in enumerate(arrays)]
        records += [("version", b"3\n")]
        for name, payload in records:
            data = memoryview(payload).cast("B")
            info = _aligned_info(archive, "%s/%s" % (ARCHIVE, name))
            info.file_size = len(data)  # lets zipfile choose zip64 for huge members
            with archive.open(info, "w") as member:
                member.write(data)
    return path


def export_pth(state_dict, path):
    """Write a MegEngine state dict (official names) as a PyTorch ``.pth`` file.

    Grouped kernels and conv biases are reshaped to PyTorch's layouts and BatchNorm layers get
    their ``num_batches_tracked`` counter, so the official model loads it with ``strict=True``.
    """
    return write_pth(to_pytorch(collections.OrderedDict(state_dict)), path)
