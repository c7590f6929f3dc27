"""Reading a ``.bnn``'s zip archive without trusting it: nothing is decompressed or allocated
beyond what the archive declares, and nothing it declares passes unchecked.

``Archive(path, max_bytes)`` reads the zip's directory and refuses (``BadArchive``, one line)

- anything but a zip (a ``.npy`` renamed ``.bnn`` is named as such), more than ``MAX_MEMBERS``
  members or a directory larger than they need;
- member names that repeat or are not ``<name>.npy``; encrypted members or any flag other than
  UTF-8 names and deflate's options; compression other than stored or deflate;
- entries whose bytes (local header and data) overlap another's or the directory, or lie outside
  the file (the overlapping-entry zip bomb: one deflate stream read as many members);
- declared sizes above ``max_bytes`` in all (the weights must fit the memory budget) or a
  stored member whose two sizes differ;
- a member whose ``.npy`` header (read with a bounded read: ``numpy.lib.format``) is not one of
  the dtypes a ``.bnn`` holds, is Fortran-ordered, or whose data is not exactly as long as its
  shape says.

``header`` is the parsed JSON header (``common.safe_json``); ``arrays`` declares each array as
``{name: (dtype string, shape)}``; ``read(name)`` then reads one array's data into a fresh,
aligned, writable C-order array with at most its declared size decompressed (the zip's CRC
checked at the end). Never calls ``np.load`` on the file.
"""
import math
import re
import struct
import zipfile
import zlib

import numpy as np
from numpy.lib import format as npy_format

from common import safe_json

HEADER = "header"
SUFFIX = ".npy"
MAX_MEMBERS = 4096
MAX_NAME = 64
MAX_HEADER_BYTES = safe_json.MAX_BYTES   # the JSON header
MAX_NPY_HEADER = 4096                    # numpy writes 128 bytes for these arrays
DTYPES = ("<f4", "<u8", "<i8")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,%d}\Z" % (MAX_NAME - 1))
_ALLOWED_FLAGS = 0x0806                  # bits 1-2: deflate options; bit 11: UTF-8 names
_ENCRYPTED = 0x0001 | 0x0040 | 0x2000    # encrypted, strong encryption, masked directory
_LOCAL = struct.Struct(zipfile.structFileHeader)
_CHUNK = 4 << 20

# what a malformed archive makes zipfile, zlib and numpy's header reader raise
ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, struct.error,
          zlib.error, NotImplementedError, OverflowError, RecursionError)


class BadArchive(ValueError):
    """An archive that is not a packed binary model's (one line)."""


def _need(cond, message, *args):
    if not cond:
        raise BadArchive(message % args)


def _short(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Bounded:
    """A member's stream that gives at most ``limit`` bytes (the .npy header's reader)."""

    def __init__(self, stream, limit):
        self.stream, self.left, self.count = stream, limit, 0

    def read(self, n=-1):
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.stream.read(n)
        self.left -= len(data)
        self.count += len(data)
        return data


class Archive:
    """The checked directory of a ``.bnn`` (use as a context manager: the file stays open)."""

    def __init__(self, path, max_bytes):
        self.path = path
        self._file = open(path, "rb")
        try:
            self._zip = self._open(max_bytes)
            self._members = {}  # name -> (ZipInfo, dtype, shape, data offset in the member)
            for info in self._zip.infolist():
                self._declare(info)
            _need(HEADER in self._members, "it has no %s%s member", HEADER, SUFFIX)
            self.header = self._read_header()
            self.arrays = {name: m[1:3] for name, m in self._members.items() if name != HEADER}
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if getattr(self, "_zip", None) is not None:
            self._zip.close()
        self._file.close()

    # -- the directory --------------------------------------------------------------------------
    def _open(self, max_bytes):
        f = self._file
        magic = f.read(6)
        _need(magic != npy_format.MAGIC_PREFIX, "a NumPy .npy file, not a .bnn archive")
        _need(magic[:4] == zipfile.stringFileHeader, "not a zip archive")
        end = zipfile._EndRecData(f)  # what ZipFile reads first; None: no end record
        _need(end is not None, "not a zip archive (no end of central directory)")
        entries, size = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]
        _need(entries <= MAX_MEMBERS and size <= entries * (46 + 2 * MAX_NAME + 64),
              "a zip directory of %d entries in %d bytes (at most %d members)", entries, size,
              MAX_MEMBERS)
        f.seek(0)
        z = zipfile.ZipFile(f)
        infos = z.infolist()
        _need(len(infos) == entries, "a zip directory of %d entries that lists %d", entries,
              len(infos))
        names = [i.orig_filename for i in infos]
        _need(len(set(names)) == len(names) == len({i.filename for i in infos}),
              "member names that repeat")
        for info in infos:
            _need(not info.flag_bits & _ENCRYPTED, "member %r is encrypted", info.filename[:80])
            _need(not info.flag_bits & ~_ALLOWED_FLAGS, "member %r has zip flags %#x",
                  info.filename[:80], info.flag_bits)
            _need(info.compress_type in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED),
                  "member %r uses compression method %d (stored or deflate only)",
                  info.filename[:80], info.compress_type)
            _need(info.compress_type != zipfile.ZIP_STORED
                  or info.compress_size == info.file_size,
                  "stored member %r declares %d bytes in %d", info.filename[:80],
                  info.file_size, info.compress_size)
        self._check_layout(infos, z.start_dir)
        total = sum(info.file_size for info in infos)
        _need(total <= max_bytes, "its members declare %d MiB in all, more than the memory limit "
              "of %d MiB (--max-memory raises it)", total >> 20, max_bytes >> 20)
        return z

    def _check_layout(self, infos, directory):
        """Each member's local header and data lie before the directory and overlap nothing."""
        spans = []
        for info in infos:
            self._file.seek(info.header_offset)
            local = _LOCAL.unpack(self._file.read(_LOCAL.size))
            _need(local[0] == zipfile.stringFileHeader, "member %r has no local header",
                  info.filename[:80])
            start = (info.header_offset + _LOCAL.size + local[zipfile._FH_FILENAME_LENGTH]
                     + local[zipfile._FH_EXTRA_FIELD_LENGTH])
            spans.append((info.header_offset, start + info.compress_size, info.filename))
        spans.sort()
        for (_, end, name), (start, _, other) in zip(spans, spans[1:]):
            _need(end <= start, "members %r and %r overlap", name[:80], other[:80])
        _need(not spans or spans[-1][1] <= directory, "member %r runs into the zip directory",
              spans[-1][2][:80] if spans else "")

    def _declare(self, info):
        """Read one member's .npy header (a bounded read) and record what it declares."""
        name = info.filename
        _need(name.endswith(SUFFIX) and _NAME.match(name[:-len(SUFFIX)]),
              "a member named %r (expected <name>%s)", name[:80], SUFFIX)
        with self._zip.open(info) as stream:
            bounded = _Bounded(stream, MAX_NPY_HEADER)
            version = npy_format.read_magic(bounded)
            _need(version in ((1, 0), (2, 0)), "member %r is .npy version %s", name, version)
            read = (npy_format.read_array_header_1_0 if version == (1, 0)
                    else npy_format.read_array_header_2_0)
            shape, fortran, dtype = read(bounded, max_header_size=MAX_NPY_HEADER)
        name = name[:-len(SUFFIX)]
        allowed = ("|u1",) if name == HEADER else DTYPES
        _need(dtype.str in allowed and dtype.fields is None and dtype.subdtype is None,
              "array %r is %s (expected %s)", name, dtype.str, " or ".join(allowed))
        _need(not fortran, "array %r is in Fortran order", name)
        _need(name != HEADER or len(shape) == 1, "the header has shape %s", shape)
        _need(len(shape) <= 8 and all(d >= 0 for d in shape), "array %r has shape %s", name,
              _short(shape))
        nbytes = math.prod(shape) * dtype.itemsize
        _need(info.file_size - bounded.count == nbytes, "member %r declares %d bytes for an "
              "array of %d (%s %s)", name, info.file_size - bounded.count, nbytes, dtype.str,
              shape)
        self._members[name] = (info, dtype.str, tuple(int(d) for d in shape), bounded.count)

    # -- the data -------------------------------------------------------------------------------
    def _read_header(self):
        info, _, shape, _ = self._members[HEADER]
        _need(shape[0] <= MAX_HEADER_BYTES, "a header of %d bytes (at most %d)", shape[0],
              MAX_HEADER_BYTES)
        text = self.read(HEADER).tobytes()
        try:
            return safe_json.loads(text, "the header")
        except ValueError as e:
            raise BadArchive(str(e)) from None

    def read(self, name):
        """The array ``name``, its data read with at most its declared size decompressed."""
        info, dtype, shape, skip = self._members[name]
        array = np.empty(shape, np.dtype(dtype))
        view = memoryview(array.reshape(-1).view(np.uint8))
        with self._zip.open(info) as stream:
            _need(len(stream.read(skip)) == skip, "member %r ends early", name)
            done = 0
            while done < len(view):
                data = stream.read(min(_CHUNK, len(view) - done))
                _need(data, "member %r ends early", name)
                view[done:done + len(data)] = data
                done += len(data)
            _need(stream.read(1) == b"", "member %r holds more than it declares", name)
        return array
