"""Tensors as NumPy views of raw storage bytes, with every index bounds-checked.

A PyTorch tensor is (storage, element offset, sizes, strides, dtype). Its elements are read from
the storage's bytes without copying (``as_strided`` on a view) after checking that the furthest
element the tensor can reach lies inside the storage, so a file that lies about a tensor can
never make us read out of bounds. bfloat16 has no NumPy type; it is widened to float32 exactly
(its bits are the upper half of a float32).
"""
import numpy as np

from .errors import ConverterError

BFLOAT16 = "bfloat16"

# dtype name -> NumPy dtype of the element as stored (bfloat16: its raw 16 bits)
STORAGE_DTYPES = {
    "float64": np.float64, "float32": np.float32, "float16": np.float16, BFLOAT16: np.uint16,
    "int64": np.int64, "int32": np.int32, "int16": np.int16, "int8": np.int8,
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
    "bool": np.bool_, "complex64": np.complex64, "complex128": np.complex128,
}


def element_size(dtype):
    return np.dtype(STORAGE_DTYPES[dtype]).itemsize


def _is_int(x):
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def strided_view(raw, dtype, offset, size, stride, what="tensor"):
    """The tensor ``(offset, size, stride)`` of ``dtype`` over the byte buffer ``raw``.

    ``raw`` is a 1-D uint8 array (the storage's bytes); offset and strides count elements.
    Returns a NumPy array sharing memory with ``raw`` (float32 copy for bfloat16).
    """
    if dtype not in STORAGE_DTYPES:
        raise ConverterError("%s has unsupported dtype %s" % (what, dtype))
    sequences = isinstance(size, (tuple, list)) and isinstance(stride, (tuple, list))
    if not (_is_int(offset) and sequences and len(size) == len(stride)
            and all(map(_is_int, size)) and all(map(_is_int, stride))):
        raise ConverterError("%s has a malformed shape/stride record" % what)
    if offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise ConverterError("%s has a negative offset, size or stride" % what)
    np_dtype = np.dtype(STORAGE_DTYPES[dtype])
    itemsize = np_dtype.itemsize
    numel_storage = raw.nbytes // itemsize
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if 0 in size:
        array = np.zeros(size, np_dtype)
    else:
        last = int(offset) + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= numel_storage:
            raise ConverterError(
                "%s reaches element %d but its storage holds only %d %s elements (corrupt or "
                "inconsistent file)" % (what, last, numel_storage, dtype))
        typed = raw[:numel_storage * itemsize].view(np_dtype)
        array = np.lib.stride_tricks.as_strided(
            typed[int(offset):], shape=size, strides=tuple(s * itemsize for s in stride),
            writeable=False)
    if dtype == BFLOAT16:
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array
