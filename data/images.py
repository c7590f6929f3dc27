"""Decoding an image file into an 8-bit RGB PIL image: the one place every tool reads images.

``read_rgb(path)`` is used by the image-folder data set (training and evaluation) and by
``tools/predict.py``. Whatever goes wrong while reading becomes ``UnreadableImage`` (a
``DataError``: one line in a command, a skipped and counted sample in a data set):

- missing, a folder, truncated or not an image (Pillow's ``OSError`` / ``ValueError`` /
  ``SyntaxError``);
- larger than Pillow's decompression-bomb limit (``DecompressionBombError`` derives from
  ``Exception`` only, so it used to escape every handler and kill a training run).

Modes ``convert("RGB")`` gets wrong are scaled first: 16-bit greyscale (``I;16``, ``I;16B``,
``I``: 0..65535) would be clipped to white, so it is divided by 257 (65535 -> 255); 32-bit float
(``F``) in [0, 1] is scaled by 255.
"""
import numpy as np
from PIL import Image

from .sources import DataError


class UnreadableImage(DataError):
    """An image file that cannot be decoded (or is too large to decode safely)."""


def to_rgb(image):
    """An 8-bit RGB copy of a PIL image of any mode (16-bit and float greyscale scaled)."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image, dtype=np.float64)
        if mode == "I" and values.max(initial=0) <= 255:  # an 8-bit image stored as int32
            scaled = values
        else:
            scaled = values / 257.0
        image = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    elif mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if values.max(initial=0) <= 1.0:
            values = values * 255.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def read_rgb(path):
    """Decode ``path`` into an 8-bit RGB PIL image; ``UnreadableImage`` if it cannot be."""
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except Image.DecompressionBombError as e:
        raise UnreadableImage("cannot read image %s (too large to decode safely: %s)"
                              % (path, e)) from None
    except IsADirectoryError:
        raise UnreadableImage("cannot read image %s (a folder, not a file)" % path) from None
    except FileNotFoundError:
        raise UnreadableImage("cannot read image %s (no such file)" % path) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise UnreadableImage("cannot read image %s (%s)" % (path, e)) from None
