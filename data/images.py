"""Decoding an image file into an 8-bit RGB PIL image: the one decoder of every tool.

``read_rgb(path, limits=None, size=None)`` is used by the image-folder data set (training and
evaluation), by ``tools/predict.py`` and, through ``deploy.preprocess.load_image``, by
``tools/infer.py`` and ``tools/export.py``: a file gives the same pixels whichever tool reads it.
Every image is untrusted input. Whatever goes wrong becomes ``UnreadableImage`` (a ``DataError``:
one line in a command, a skipped and counted sample in a data set), and nothing reaches stderr
(Pillow's warnings are silenced while decoding; each case is handled here):

- **Size cap, before decoding.** ``width * height`` from the header is checked against
  ``limits.max_megapixels`` (``common.limits``, default 50; ``--max-megapixels`` raises it)
  before any pixel is decoded. Pillow's own ``DecompressionBombWarning`` (above
  ``Image.MAX_IMAGE_PIXELS``) is replaced by that check; its ``DecompressionBombError`` (above
  twice that, 179 MP) still refuses, as the limit when ``--max-megapixels`` is set higher.
- **Truncated or partial files are refused**, never padded: a file cut short (Pillow's "image
  file is truncated"; ``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay False and nothing in the
  project sets it) and a PNG whose image data ends early (a complete zlib stream holding fewer
  rows than the header declares, which Pillow decodes with the missing rows black; checked by
  counting the inflated bytes when the bottom row came out black). Not detected: a JPEG cut
  short and re-terminated with an end-of-image marker, which libjpeg fills in grey without an
  error Pillow reports.
- **Orientation**: an EXIF orientation (cameras store portrait photos rotated) is applied
  (``ImageOps.exif_transpose``), so the pixels are the upright image.
- **Multi-frame files** (GIF, APNG, multi-page TIFF): the first frame, as ``convert("RGB")`` and
  torchvision's loader take it.
- **Modes** ``convert("RGB")`` gets wrong are scaled first: 16-bit greyscale (``I;16``,
  ``I;16B``, ``I;16L``) and 32-bit ``I`` above 255 are divided by 257 (65535 -> 255, rounded),
  an ``I`` image within 0..255 is taken as 8-bit; 32-bit float (``F``) within [0, 1] is scaled by
  255 (NaN -> 0, out of range clipped). Palette (``P``), 1-bit, CMYK, YCbCr, LAB and HSV go
  through Pillow's conversion.
- **Alpha is dropped** (``LA``, ``La``, ``PA``, ``RGBA``, ``RGBa``, a palette's transparency):
  the colour stored under each pixel is kept, as torchvision's ``convert("RGB")`` loader does,
  so training and deployment see what a PyTorch pipeline would. Premultiplied modes (``La``,
  ``RGBa``) are un-premultiplied first.
- **Draft decoding** (``size``: the shorter side the caller will resize to): a JPEG is decoded
  with libjpeg's DCT scaling at 1/2, 1/4 or 1/8 of its size, the largest reduction whose shorter
  side stays >= ``size``. That is much faster for photos larger than the model's input, and
  changes pixel values slightly against a full decode followed by the same resize (the DCT
  scaling averages where the bilinear resize samples; the shorter side may round by a pixel).
  ``tools/predict.py`` and ``tools/infer.py`` pass the same ``size`` (the spec's resize), so
  they decode identically; the data sets decode at full size (their random crops need it).
"""
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, ImageFile, ImageOps

from common.limits import Limits, LimitError

from .sources import DataError

DRAFT_FORMATS = ("JPEG", "MPO")   # formats whose decoder can scale by 1/2, 1/4, 1/8
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # IHDR colour type -> samples per pixel
# Adam7 passes: (first column, first row, column step, row step).
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))
INFLATE_CHUNK = 1 << 20
EXIF_ORIENTATION = 0x0112


class UnreadableImage(DataError):
    """An image file that cannot be decoded (or is too large to decode safely)."""


def _scale_16_bit(values):
    """Integer values of a 16-bit range -> round(v / 257), clipped to 0..255."""
    v = np.clip(values.astype(np.int64), 0, 65535)
    return ((v + 128) // 257).astype(np.uint8)


def to_rgb(image):
    """An 8-bit RGB copy of a PIL image of any mode (see the module docstring)."""
    mode = image.mode
    if mode.startswith("I"):
        values = np.asarray(image)
        if mode == "I" and 0 <= values.min(initial=0) and values.max(initial=0) <= 255:
            pixels = values.astype(np.uint8)  # an 8-bit image stored as int32
        else:
            pixels = _scale_16_bit(values)
        image = Image.fromarray(pixels, mode="L")
    elif mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if values[np.isfinite(values)].max(initial=0) <= 1.0:
            values = values * np.float32(255)
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    elif mode == "La":
        image = image.convert("LA")
    return image.convert("RGB")


def _png_image_bytes(width, height, bit_depth, channels, interlaced):
    """Bytes of filtered image data a PNG with this header holds (a filter byte per row)."""
    def rows(w, h):
        return 0 if w == 0 or h == 0 else h * (1 + (w * channels * bit_depth + 7) // 8)
    if not interlaced:
        return rows(width, height)
    return sum(rows((width - x0 + dx - 1) // dx if width > x0 else 0,
                    (height - y0 + dy - 1) // dy if height > y0 else 0)
               for x0, y0, dx, dy in ADAM7)


def check_png_complete(f, what):
    """Refuse a PNG whose image data (IDAT) inflates to fewer bytes than its header declares.

    Pillow's zlib decoder stops at the end of the compressed stream and leaves the rows it did
    not get black; this walks the chunks again and counts what the stream holds (inflated in
    bounded pieces and thrown away, so it costs one more inflate and no memory)."""
    f.seek(0)
    if f.read(8) != PNG_SIGNATURE:
        return
    length, kind = struct.unpack(">I4s", f.read(8))
    if kind != b"IHDR" or length < 13:
        return
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", f.read(13))
    expected = _png_image_bytes(width, height, depth, PNG_CHANNELS.get(colour, 4), interlace)
    f.seek(length - 13 + 4, 1)  # rest of IHDR, CRC
    inflater, got = zlib.decompressobj(), 0
    while got < expected:
        header = f.read(8)
        if len(header) < 8:
            break
        length, kind = struct.unpack(">I4s", header)
        if kind == b"IEND":
            break
        if kind != b"IDAT":
            f.seek(length + 4, 1)
            continue
        data = f.read(length)
        f.seek(4, 1)
        while data and got < expected and not inflater.eof:
            got += len(inflater.decompress(data, INFLATE_CHUNK))
            data = inflater.unconsumed_tail
        if inflater.eof:
            break
    if got < expected:
        raise UnreadableImage("cannot read image %s (partial: its image data holds %d of the "
                              "%d bytes its %dx%d header declares)"
                              % (what, got, expected, width, height))


def _last_row_decoded(image):
    """True when a non-interlaced PNG's bottom row holds a non-zero byte: Pillow decodes rows in
    order into zeroed memory, so the stream reached the end. Otherwise (a black bottom row, or
    Adam7 interlacing, whose last pass fills every other row) ``check_png_complete`` decides;
    this spares nearly every real file its second inflate."""
    if image.info.get("interlace"):
        return False
    width, height = image.size
    return bool(image.crop((0, height - 1, width, height)).tobytes().strip(b"\x00"))


def _too_large(path, declared, limits):
    pillow_cap = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    if pillow_cap and limits.max_pixels >= pillow_cap:
        limit = "Pillow's own limit of %d megapixels (2 x PIL.Image.MAX_IMAGE_PIXELS)" \
            % (pillow_cap // 10 ** 6)
    else:
        limit = "the limit of %g megapixels; --max-megapixels raises it" % limits.max_megapixels
    return UnreadableImage("cannot read image %s (too large to decode: %s, more than %s)"
                           % (path, declared, limit))


def _open_checked(path, limits):
    """``Image.open`` and the size check (from the header, before decoding)."""
    try:
        image = Image.open(path)
    except Image.DecompressionBombError:
        # Above twice Pillow's MAX_IMAGE_PIXELS (179 MP): past our default cap too.
        raise _too_large(path, "more than %d megapixels"
                         % (2 * Image.MAX_IMAGE_PIXELS // 10 ** 6), limits) from None
    width, height = image.size
    try:
        limits.check_pixels(path, width, height)
    except LimitError:
        image.close()
        raise _too_large(path, "%dx%d, %.0f megapixels" % (width, height, width * height / 1e6),
                         limits) from None
    return image


def _decode(path, limits, size):
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise UnreadableImage("cannot read image %s: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set "
                              "in this process, so truncated files would be padded" % path)
    with _open_checked(path, limits) as image:
        if size and image.format in DRAFT_FORMATS:
            # Pillow picks the largest 1/2, 1/4, 1/8 reduction whose sides stay >= (size, size):
            # the shorter side stays >= size, so the resize after it still shrinks (or keeps).
            image.draft("RGB", (size, size))
        image.load()
        if image.format == "PNG" and not _last_row_decoded(image):
            with open(path, "rb") as f:
                check_png_complete(f, path)
        if image.getexif().get(EXIF_ORIENTATION, 1) not in (0, 1):
            image = ImageOps.exif_transpose(image)  # a transposed copy, EXIF orientation reset
        return to_rgb(image)


def read_rgb(path, limits=None, size=None):
    """Decode ``path`` into an 8-bit RGB PIL image; ``UnreadableImage`` if it cannot be.

    ``limits``: a ``common.limits.Limits`` (None: the defaults) whose ``max_megapixels`` caps the
    declared size; ``size``: the shorter side the caller resizes to (a JPEG then decodes in
    draft mode; None: full size)."""
    limits = limits or Limits()
    try:
        with warnings.catch_warnings():
            # Pillow warns (on stderr) about oversized, palette-transparency and odd EXIF data;
            # each is handled here, and a refusal must stay one line.
            warnings.simplefilter("ignore")
            image = _decode(path, limits, size)
    except UnreadableImage:
        raise
    except IsADirectoryError:
        raise UnreadableImage("cannot read image %s (a folder, not a file)" % path) from None
    except FileNotFoundError:
        raise UnreadableImage("cannot read image %s (no such file)" % path) from None
    except Exception as e:  # noqa: BLE001  any failure of Pillow on untrusted bytes
        raise UnreadableImage("cannot read image %s (%s)" % (path, _first_line(e))) from None
    return image


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
