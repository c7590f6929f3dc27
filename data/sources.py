"""Where samples come from: in-memory arrays or image files, behind one small interface.

A *source* has ``len()``, ``labels`` (int array), ``classes`` (names), ``describe(i)`` (what to
name in a message), ``load(i) -> PIL RGB image`` (raises ``data.images.UnreadableImage`` for
an unreadable file) and ``decodes_files`` (whether ``load`` decodes an image file: what loader
workers are for, ``data.loader.default_workers``).
"""
import numpy as np
from PIL import Image

from errors import UserError


class DataError(UserError):
    """A data set that cannot be used: missing folder, empty split, unreadable file."""


class ArraySource:
    """Images held in memory as a (N, H, W, 3) uint8 array (digits, CIFAR)."""

    decodes_files = False

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
        self.decodes_files = source.decodes_files

    def __len__(self):
        return self.n

    def describe(self, i):
        return self.source.describe(i)

    def load(self, i):
        return self.source.load(i)


class Indexed:
    """The samples ``indices`` of a source, in that order (a held-out split)."""

    def __init__(self, source, indices, name):
        self.source, self.indices = source, [int(i) for i in indices]
        if not self.indices:
            raise DataError("%s is empty" % name)
        self.labels = source.labels[self.indices]
        self.classes = source.classes
        self.name = name
        self.decodes_files = source.decodes_files

    def __len__(self):
        return len(self.indices)

    def describe(self, i):
        return self.source.describe(self.indices[i])

    def load(self, i):
        return self.source.load(self.indices[i])


def stratified_split(labels, fraction, seed=0):
    """``(kept, held_out)`` index arrays: ``round(fraction * n)`` samples of every class held
    out (at least one of a class with two or more; none of a class of one), chosen by a
    generator of ``seed``. The same labels, fraction and seed give the same split."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n = min(max(int(round(fraction * len(members))), 1), len(members) - 1)
        held += list(rng.permutation(members)[:n])
    held = np.sort(np.asarray(held, np.int64))
    kept = np.setdiff1d(np.arange(len(labels)), held)
    return kept, held
