"""Reading ``.safetensors`` files: an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``, then the
tensor bytes. Parsed here directly; every offset is checked against the file, tensors may not
overlap, and each tensor's byte count must match its shape and dtype.
"""
import json

import numpy as np

from .errors import ConverterError
from .tensors import BFLOAT16, strided_view

DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": BFLOAT16,
          "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
          "U16": "uint16", "U32": "uint32", "U64": "uint64",
          "BOOL": "bool"}
MAX_HEADER = 100 * 1024 * 1024


def looks_like_safetensors(buf):
    if len(buf) < 10:
        return False
    return int.from_bytes(buf[:8], "little") >= 2 and buf[8:9] == b"{"


def read_safetensors(buf, path):
    """``(state_dict, info)`` of a safetensors file held in ``buf`` (a memory map)."""
    n = int.from_bytes(buf[:8], "little")
    if n > min(MAX_HEADER, len(buf) - 8):
        raise ConverterError("%s: safetensors header length %d exceeds the file" % (path, n))
    try:
        header = json.loads(bytes(buf[8:8 + n]).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConverterError("%s: corrupt safetensors header (%s)" % (path, e)) from None
    if not isinstance(header, dict):
        raise ConverterError("%s: the safetensors header is not a JSON object" % path)
    header.pop("__metadata__", None)
    data_start, data_len = 8 + n, len(buf) - 8 - n
    raw = np.frombuffer(buf, dtype=np.uint8, count=data_len, offset=data_start)
    state_dict, spans = {}, []
    for name, entry in header.items():
        what = "%s: tensor %s" % (path, name)
        try:
            dtype = DTYPES[entry["dtype"]]
            shape = [int(d) for d in entry["shape"]]
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ConverterError("%s has a malformed or unsupported header entry" % what) from None
        if not 0 <= begin <= end <= data_len:
            raise ConverterError("%s points outside the file (bytes %d..%d of %d)"
                                 % (what, begin, end, data_len))
        itemsize = 2 if dtype == BFLOAT16 else np.dtype(dtype).itemsize
        nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize
        if min(shape, default=0) < 0 or nbytes != end - begin:
            raise ConverterError("%s: shape %s of %s does not match its %d bytes"
                                 % (what, shape, dtype, end - begin))
        stride = [int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape))]
        state_dict[name] = strided_view(raw[begin:end], dtype, 0, shape, stride, what)
        spans.append((begin, end, name))
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise ConverterError("%s: tensors %s and %s overlap" % (path, n0, n1))
    return state_dict, {"format": "safetensors", "tensors": len(state_dict), "placeholders": {}}
