"""Reading ``torch.save`` files (zip format and the legacy format) into NumPy, without PyTorch.

Both formats are a pickle (see ``torch_pickle``) plus raw storage bytes:

- zip (PyTorch >= 1.6): ``<archive>/data.pkl`` and one uncompressed member
  ``<archive>/data/<key>`` per storage;
- legacy: a run of pickles (magic number, protocol version, system info, the object, the list of
  storage keys) followed by each storage as an int64 element count and its bytes.

The file is memory-mapped and every storage becomes a NumPy view of its bytes in the map, so
reading costs no copy; every offset and size is checked against the file before use.
"""
import mmap
import os
import struct
import zipfile

import numpy as np

from common.safe_pickle import Placeholder

from .errors import ConverterError
from .tensors import element_size, strided_view
from .torch_pickle import TensorRef, plain_load, unpickle

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
ZIP_MAGIC = b"PK\x03\x04"
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... name length, extra length
MAX_INFLATION = 1100  # deflate's best ratio is about 1032:1


def map_file(path):
    """Memory-map ``path`` read-only; returns the map (empty files are an error)."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ConverterError("%s is empty" % path)
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise ConverterError("checkpoint not found: %s" % path) from None
    except IsADirectoryError:
        raise ConverterError("checkpoint path is a folder: %s" % path) from None
    except PermissionError:
        raise ConverterError("cannot read %s: permission denied" % path) from None


def _bytes_at(buf, start, length, what):
    """A zero-copy uint8 view of ``buf[start:start+length]``, bounds-checked."""
    if start < 0 or length < 0 or start + length > len(buf):
        raise ConverterError("%s lies outside the file (bytes %d..%d of %d; truncated or "
                             "corrupt file)" % (what, start, start + length, len(buf)))
    return np.frombuffer(buf, dtype=np.uint8, count=length, offset=start)


class _ByteStream:
    """A read-only file over a memory map (no copy), for the legacy format's pickles."""

    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def read(self, n=-1):
        end = len(self.buf) if n is None or n < 0 else min(len(self.buf), self.pos + n)
        data = self.buf[self.pos:end]
        self.pos = end
        return data

    def readline(self):
        end = self.buf.find(b"\n", self.pos)
        end = len(self.buf) if end < 0 else end + 1
        return self.read(end - self.pos)

    def peek(self, n=1):
        return self.buf[self.pos:self.pos + n]

    def readinto(self, b):
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


def read_zip(buf, path):
    """The object tree and storage bytes of a zip-format checkpoint."""
    try:
        archive = zipfile.ZipFile(_SeekableView(buf))
        members = {info.filename: info for info in archive.infolist()}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as e:
        raise ConverterError("%s is not a readable zip checkpoint (%s)" % (path, e)) from None
    pickles = [name for name in members if name.endswith("data.pkl")
               and name.count("/") == 1]
    if len(pickles) != 1:
        raise ConverterError("%s is a zip file but not a PyTorch checkpoint (no single "
                             "<archive>/data.pkl)" % path)
    prefix = pickles[0][:-len("data.pkl")]
    byteorder = members.get(prefix + "byteorder")
    if byteorder is not None \
            and _member_bytes(buf, byteorder, path, archive).tobytes() != b"little":
        raise ConverterError("%s was saved on a big-endian machine; not supported" % path)
    data = _member_bytes(buf, members[pickles[0]], path, archive).tobytes()
    tree, unpickler = unpickle(data, path)

    def storage_bytes(ref):
        info = members.get(prefix + "data/" + ref.key)
        if info is None:
            raise ConverterError("%s: storage %s is missing from the archive" % (path, ref.key))
        expected = ref.numel * element_size(ref.dtype)
        if info.file_size != expected:  # checked before reading (or inflating) anything
            raise ConverterError("%s: storage %s holds %d bytes, its record says %d"
                                 % (path, ref.key, info.file_size, expected))
        return _member_bytes(buf, info, path, archive)

    return tree, unpickler, storage_bytes


class _SeekableView:
    """A seekable read-only file over a memory map, for ``zipfile`` (reads the directory only)."""

    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def seek(self, offset, whence=0):
        self.pos = {0: 0, 1: self.pos, 2: len(self.buf)}[whence] + offset
        if self.pos < 0:
            raise ValueError("negative seek position")
        return self.pos

    def tell(self):
        return self.pos

    def read(self, n=-1):
        end = len(self.buf) if n is None or n < 0 else min(len(self.buf), self.pos + n)
        data = self.buf[self.pos:end] if self.pos < end else b""
        self.pos = max(self.pos, end)
        return data

    def seekable(self):
        return True


def _member_bytes(buf, info, path, archive=None):
    """The stored bytes of one zip member as a view of the map (copied only if compressed)."""
    what = "%s: zip member %s" % (path, info.filename)
    header = _bytes_at(buf, info.header_offset, _LOCAL_HEADER.size, what + " header").tobytes()
    signature, name_len, extra_len = _LOCAL_HEADER.unpack(header)
    if signature != ZIP_MAGIC:
        raise ConverterError("%s has a corrupt local header" % what)
    start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            raise ConverterError("%s has inconsistent sizes" % what)
        return _bytes_at(buf, start, info.file_size, what)
    if archive is None:
        raise ConverterError("%s is compressed" % what)
    if info.file_size > MAX_INFLATION * info.compress_size + 2 ** 20:
        raise ConverterError("%s claims to inflate %d bytes to %d (a zip bomb?)"
                             % (what, info.compress_size, info.file_size))
    try:  # torch never compresses, but a re-zipped checkpoint may be
        return np.frombuffer(archive.read(info), dtype=np.uint8)
    except Exception as e:
        raise ConverterError("%s cannot be decompressed (%s)" % (what, e)) from None


def read_legacy(buf, path):
    """The object tree and storage bytes of a legacy-format (non-zip) checkpoint."""
    stream = _ByteStream(buf)
    if plain_load(stream, path) != LEGACY_MAGIC:
        raise ConverterError("%s is not a PyTorch checkpoint (no zip archive and no legacy "
                             "magic number)" % path)
    if plain_load(stream, path) != LEGACY_PROTOCOL:
        raise ConverterError("%s uses an unknown legacy protocol version" % path)
    sys_info = plain_load(stream, path)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise ConverterError("%s was saved on a big-endian machine; not supported" % path)
    tree, unpickler = unpickle(stream, path)
    keys = plain_load(stream, path)
    if not isinstance(keys, list):
        raise ConverterError("%s: corrupt storage key list" % path)
    roots = {}
    offset = stream.pos
    for key in keys:
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        ref = unpickler.storages.get(key)
        if ref is None or ref.view is not None:
            raise ConverterError("%s: storage %s is listed but never used" % (path, key))
        head = _bytes_at(buf, offset, 8, "%s: storage %s" % (path, key)).view("<i8")[0]
        nbytes = ref.numel * element_size(ref.dtype)
        if int(head) != ref.numel:
            raise ConverterError("%s: storage %s holds %d elements, its tensors expect %d"
                                 % (path, key, head, ref.numel))
        roots[key] = _bytes_at(buf, offset + 8, nbytes, "%s: storage %s" % (path, key))
        offset += 8 + nbytes

    def storage_bytes(ref):
        if ref.view is None:
            if ref.key not in roots:
                raise ConverterError("%s: storage %s has no data" % (path, ref.key))
            return roots[ref.key]
        root_key, start, numel = ref.view
        root = storage_bytes(unpickler.storages.get(root_key) or ref)
        size = element_size(ref.dtype)
        if not (isinstance(start, int) and isinstance(numel, int)) or start < 0 or numel < 0 \
                or (start + numel) * size > root.nbytes:
            raise ConverterError("%s: storage view %s lies outside its storage" % (path, ref.key))
        return root[start * size:(start + numel) * size]

    return tree, unpickler, storage_bytes


def materialize(tree, storage_bytes, path):
    """Replace every ``TensorRef`` in ``tree`` (dicts, lists, tuples, placeholders) by an array.

    Tensors sharing a storage become views of the same bytes. Returns ``(tree, tensors)``.
    """
    cache, memo = {}, {}  # memo: id -> (original, result); keeping the original keeps ids unique
    count = [0]

    def array_of(ref):
        storage = ref.storage
        raw = cache.get(id(storage))
        if raw is None:
            raw = cache[id(storage)] = storage_bytes(storage)
            expected = storage.numel * element_size(storage.dtype)
            if raw.nbytes != expected:
                raise ConverterError("%s: storage %s holds %d bytes, its record says %d"
                                     % (path, storage.key, raw.nbytes, expected))
        count[0] += 1
        return strided_view(raw, ref.dtype, ref.offset, ref.size, ref.stride,
                            "%s: a tensor in storage %s" % (path, storage.key))

    def walk(obj):
        if id(obj) in memo:
            return memo[id(obj)][1]
        if isinstance(obj, TensorRef):
            result = array_of(obj)
        elif type(obj) is tuple:
            result = tuple(walk(v) for v in obj)
        elif isinstance(obj, dict):
            memo[id(obj)] = (obj, obj)
            for key in list(obj):
                obj[key] = walk(obj[key])
            return obj
        elif isinstance(obj, list):
            memo[id(obj)] = (obj, obj)
            obj[:] = [walk(v) for v in obj]
            return obj
        elif isinstance(obj, Placeholder):
            memo[id(obj)] = (obj, obj)
            obj.args, obj.state = walk(obj.args), walk(obj.state)
            obj.kwargs, obj.items, obj.list = walk(obj.kwargs), walk(obj.items), walk(obj.list)
            return obj
        else:
            return obj
        memo[id(obj)] = (obj, result)
        return result

    try:
        tree = walk(tree)
    except RecursionError:
        raise ConverterError("%s: the object tree nests too deeply" % path) from None
    return tree, count[0]


def is_legacy(buf):
    """Whether ``buf`` starts like a legacy ``torch.save`` file (a pickled magic number) rather
    than a plain pickle (``megengine.save``, ``paddle.save``)."""
    return LEGACY_MAGIC.to_bytes(10, "little") in bytes(buf[:32])


def read_plain_pickle(buf, path):
    """``(tree, info)`` of a file that is one pickle of dicts and NumPy arrays, as
    ``megengine.save`` (MegEngine, basecls) and ``paddle.save`` (``.pdparams``) write; read by
    the same allow-list unpickler (arrays are loaded into memory)."""
    tree, unpickler = unpickle(_ByteStream(buf), path)
    count = [0]

    def walk(obj, depth=0):
        if isinstance(obj, np.ndarray):
            count[0] += 1
        elif isinstance(obj, dict) and depth < 8:
            for value in obj.values():
                walk(value, depth + 1)

    walk(tree)
    return tree, {"format": "pickle", "tensors": count[0],
                  "placeholders": dict(unpickler.placeholders)}


def read_torch_file(buf, path):
    """``(tree, info)`` of a ``torch.save`` file held in ``buf`` (a memory map), or of a plain
    pickle (see ``read_plain_pickle``)."""
    if buf[:4] == ZIP_MAGIC:
        fmt, (tree, unpickler, storage_bytes) = "zip", read_zip(buf, path)
    elif buf[:1] == b"\x80" and not is_legacy(buf):
        return read_plain_pickle(buf, path)
    elif buf[:1] == b"\x80":
        fmt, (tree, unpickler, storage_bytes) = "legacy", read_legacy(buf, path)
    else:
        raise ConverterError("%s is not a PyTorch checkpoint (neither a zip archive nor a "
                             "pickle)" % path)
    tree, tensors = materialize(tree, storage_bytes, path)
    return tree, {"format": fmt, "tensors": tensors, "placeholders": dict(unpickler.placeholders)}
