"""The images a search trains on: the built-in digits, or a ``--data`` folder as train.py reads
it (an image folder with train/ and val/, or CIFAR's python batches: ``data.splits``).

The searchers hold their data in memory as uint8 ``(N, S, S, 3)`` arrays at the space's input
size S (every step indexes random batches of it), so a folder's images are decoded once, each
resized and centre-cropped to S x S; a folder that would not fit in ``MAX_BYTES`` is refused
before anything is decoded.
"""
from data.digits import ArraySplit
from errors import UserError

MAX_BYTES = 2 << 30  # the arrays of both splits


def load_search_data(space, root=None):
    """``(train, val)`` ``ArraySplit`` for ``space`` (its image size and class count)."""
    if not root:
        from data.digits import load_digits

        train, val, names = load_digits(image_size=space.image_size)
        what = "the built-in digits"
    else:
        from data.splits import detect_dataset, load_splits

        splits = load_splits(detect_dataset(root), root, space.image_size)
        names, what = splits.classes, root
        size = space.image_size
        needed = (len(splits.train) + len(splits.val)) * size * size * 3
        if needed > MAX_BYTES:
            raise UserError("%s: %d images at %dx%d need %.1f GB in memory, more than the "
                            "search holds (%.0f GB); give a smaller folder"
                            % (root, len(splits.train) + len(splits.val), size, size,
                               needed / 1e9, MAX_BYTES / 1e9))
        train, val = _arrays(splits.train, size), _arrays(splits.val, size)
    if space.num_classes != len(names):
        raise UserError("space %s has %d classes; %s has %d (pass --num-classes %d to "
                        "'search.py lut' and to this command)"
                        % (space.name, space.num_classes, what, len(names), len(names)))
    return train, val


def _arrays(source, size):
    import numpy as np
    from PIL import Image, ImageOps

    images = np.empty((len(source), size, size, 3), np.uint8)
    for i in range(len(source)):
        images[i] = np.asarray(ImageOps.fit(source.load(i), (size, size), Image.BILINEAR))
    return ArraySplit(images, np.asarray(source.labels, np.int32))
