"""Shapes-10 segmentation: the shapes of ``data/shapes10.py`` with their pixel masks, a small
built-in segmentation set for the backbone example (docs/backbone.md).

Each image is rendered as Shapes-10 renders it (textured background, clutter blobs, one shape
at a random position, size, rotation and colour, 4x supersampling, blur and pixel noise); the
shape is drawn a second time, with the same random draws, into a mask at the same resolution,
which is downsampled by nearest neighbour. Mask values: 0 background, ``1 + class`` on the
shape's pixels (11 classes). The same seed gives the same set.

    images, masks = generate(600, seed=0)      # (600, 32, 32, 3) uint8, (600, 32, 32) int32
"""
import copy

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from . import shapes10

CLASSES = ("background",) + shapes10.CLASSES
SIZE = shapes10.SIZE


def render(label, rng):
    """``(image (32, 32, 3) uint8, mask (32, 32) int32)`` for a shape of class ``label``."""
    n = SIZE * shapes10.SUPER
    bg = shapes10._background(rng, n)
    image = Image.fromarray(bg.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    mean_bg = tuple(int(v) for v in bg.reshape(-1, 3).mean(0))
    for _ in range(int(rng.integers(0, 3))):  # clutter blobs (background in the mask)
        s = rng.uniform(0.03, 0.08) * n
        x, y = rng.uniform(0, n, 2)
        draw.ellipse([x - s, y - s, x + s, y + s], fill=shapes10._colour(rng))
    colour = shapes10._contrasting(rng, mean_bg)
    mask = Image.new("L", (n, n), 0)
    shapes10._draw_shape(ImageDraw.Draw(mask), label, copy.deepcopy(rng), n, 1 + label)
    shapes10._draw_shape(draw, label, rng, n, colour)
    image = image.resize((SIZE, SIZE), Image.BILINEAR)
    mask = mask.resize((SIZE, SIZE), Image.NEAREST)
    if rng.uniform() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    x = np.asarray(image, float)
    x = x + rng.normal(0, rng.choice([3.0, 8.0, 25.0], p=[0.6, 0.35, 0.05]), x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8), np.asarray(mask, np.int32)


def generate(count, seed=0):
    """``(images (N, 32, 32, 3) uint8, masks (N, 32, 32) int32)``, classes balanced."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % len(shapes10.CLASSES))
    pairs = [render(int(label), rng) for label in labels]
    return (np.stack([p[0] for p in pairs]).reshape(count, SIZE, SIZE, 3),
            np.stack([p[1] for p in pairs]).reshape(count, SIZE, SIZE))
