"""ImageNet-style folders: ``ROOT/train/<class>/*.jpg`` and ``ROOT/val/<class>/*.jpg``.

Class names are the sub-folder names, sorted; the train split defines them and the val split
must use the same ones. Files are decoded (``data.images.read_rgb``) when a sample is read (in the
loader's worker processes), so a corrupt or oversized file is found then: the loader marks it
skipped and substitutes the next readable sample; training warns with the file's name and counts
the skips, evaluation leaves the sample out and counts it.
"""
import os

import numpy as np

from .images import read_rgb
from .sources import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class UnknownClasses(DataError):
    """A split's class folder that the train split (or the model) does not have."""


class ImageFolderSource:
    decodes_files = True

    def __init__(self, folder, classes=None, known_as="train split"):
        if not os.path.isdir(folder):
            raise DataError("missing folder %s" % folder)
        found = sorted(d for d in os.listdir(folder)
                       if os.path.isdir(os.path.join(folder, d)) and not d.startswith("."))
        if not found:
            raise DataError("%s has no class sub-folders (expected %s/<class>/<image>)"
                            % (folder, folder))
        if classes is None:
            classes = found
        else:
            unknown = sorted(set(found) - set(classes))
            if unknown:
                raise UnknownClasses("%s has classes the %s does not have: %s"
                                % (folder, known_as, ", ".join(unknown[:5])))
        self.classes = tuple(classes)
        index = {c: i for i, c in enumerate(self.classes)}
        paths, labels = [], []
        for c in found:
            class_dir = os.path.join(folder, c)
            files = sorted(f for f in os.listdir(class_dir)
                           if f.lower().endswith(IMAGE_EXTENSIONS))
            if not files:
                raise DataError("class folder %s holds no images (%s)"
                                % (class_dir, "/".join(IMAGE_EXTENSIONS)))
            paths += [os.path.join(class_dir, f) for f in files]
            labels += [index[c]] * len(files)
        self.paths = paths
        self.labels = np.asarray(labels, np.int32)
        self.name = folder

    def __len__(self):
        return len(self.paths)

    def describe(self, i):
        return self.paths[i]

    def load(self, i):
        return read_rgb(self.paths[i])


def load_image_folder(root, train=True, val=True, classes=None):
    """``(train_source, val_source)`` for ``root/train`` and ``root/val``; a split not asked
    for is None and its folder need not exist (evaluation reads val/ alone). ``classes`` (a
    model's, in its order) label the images; by default train/'s sub-folders do."""
    if not os.path.isdir(root):
        raise DataError("data folder not found: %s" % root)
    train_source = val_source = None
    if train:
        train_source = ImageFolderSource(os.path.join(root, "train"), classes,
                                         known_as="model")
    if val:
        known = train_source.classes if train_source else classes
        val_source = ImageFolderSource(os.path.join(root, "val"), known,
                                       known_as="train split" if train_source else "model")
    return train_source, val_source
