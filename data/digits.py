"""The built-in data set: scikit-learn's handwritten digits, as small RGB images.

scikit-learn ships 1,797 real 8x8 grey-level digit images (values 0..16) inside its package, so
this needs no download. They are upscaled (bilinear) to ``image_size`` and repeated over three
channels, giving uint8 HWC images that the normal image pipeline can treat like any photo.
The train/validation split is stratified and fixed by ``seed``.
"""
from dataclasses import dataclass

import numpy as np
from PIL import Image

CLASS_NAMES = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class ArraySplit:
    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int32


def _upscale(images8, size):
    """8x8 grey values 0..16 -> (N, size, size, 3) uint8 by bilinear resize."""
    grey = np.clip(images8 * (255.0 / 16.0), 0, 255).astype(np.uint8)
    out = np.empty((len(grey), size, size, 3), np.uint8)
    for i, img in enumerate(grey):
        big = Image.fromarray(img, mode="L").resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(big)[:, :, None]
    return out


def load_digits(image_size=32, val_fraction=0.2, seed=0):
    """Return ``(train, val, class_names)`` with ``ArraySplit`` images of ``image_size``."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = _upscale(bunch.images, image_size)
    labels = bunch.target.astype(np.int32)
    rng = np.random.default_rng(seed)
    val_idx = []
    for c in np.unique(labels):  # stratified: the same fraction of every class
        idx = rng.permutation(np.flatnonzero(labels == c))
        val_idx.extend(idx[: int(round(len(idx) * val_fraction))])
    val_mask = np.zeros(len(labels), bool)
    val_mask[val_idx] = True
    train = ArraySplit(images[~val_mask], labels[~val_mask])
    val = ArraySplit(images[val_mask], labels[val_mask])
    return train, val, CLASS_NAMES
