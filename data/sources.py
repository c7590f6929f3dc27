"""Where samples come from: in-memory arrays or image files, behind one small interface.

A *source* has ``len()``, ``labels`` (int array), ``classes`` (names), ``describe(i)`` (what to
name in a message) and ``load(i) -> PIL RGB image`` (raises ``data.images.UnreadableImage`` for
an unreadable file).
"""
import numpy as np
from PIL import Image

from errors import UserError


class DataError(UserError):
    """A data set that cannot be used: missing folder, empty split, unreadable file."""


class ArraySource:
    """Images held in memory as a (N, H, W, 3) uint8 array (digits, CIFAR)."""

    def __init__(self, images, labels, classes, name):
        if len(images) == 0:
            raise DataError("%s is empty" % name)
        self.images = images
        self.labels = np.asarray(labels, np.int32)
        self.classes = tuple(classes)
        self.name = name

    def __len__(self):
        return len(self.labels)

    def describe(self, i):
        return "%s[%d]" % (self.name, i)

    def load(self, i):
        return Image.fromarray(self.images[i], mode="RGB")


class Subset:
    """The first ``n`` samples of a source (quick runs and tests)."""

    def __init__(self, source, n):
        self.source, self.n = source, min(n, len(source))
        self.labels = source.labels[:self.n]
        self.classes = source.classes
        self.name = source.name

    def __len__(self):
        return self.n

    def describe(self, i):
        return self.source.describe(i)

    def load(self, i):
        return self.source.load(i)
