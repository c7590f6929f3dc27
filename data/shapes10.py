"""Shapes-10: a generated CIFAR-10-sized data set (32x32 RGB, 10 classes), written in CIFAR-10's
python-pickle batch format so that everything reading CIFAR reads it.

    python -m data.shapes10 ./shapes10                 # 10,000 train + 2,000 test images
    python train.py --arch RepVGG-A0 --dataset cifar10 --data ./shapes10

Nothing can be downloaded here, and the built-in digits are too easy to show a quantization
drop, so each image is rendered: one of ten shapes (classes below) at a random position, size,
rotation and colour, over a textured background (colour gradient plus smooth noise), with
clutter blobs, blur and pixel noise of random strength. Shapes are drawn at 4x resolution and
downsampled (anti-aliased). Every class is symmetric under a horizontal flip (CIFAR's training
augmentation flips). A few percent of the images are hard (heavy noise, tiny or low-contrast
shapes), so a small network does well but not perfectly. The same seed gives the same files.
"""
import argparse
import math
import os
import pickle

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("disc", "square", "triangle", "ring", "cross", "hbars", "vbars", "checker",
           "two_discs", "diamond")
SIZE = 32
SUPER = 4  # supersampling factor


def _colour(rng, lo=0, hi=255):
    return tuple(int(v) for v in rng.integers(lo, hi + 1, 3))


def _contrasting(rng, background):
    """A colour at least some distance from ``background`` (random strength: hard cases too)."""
    minimum = rng.choice([60, 150, 220], p=[0.05, 0.25, 0.7])
    for _ in range(50):
        c = _colour(rng)
        if np.abs(np.subtract(c, background)).sum() >= minimum:
            return c
    return tuple(255 - v for v in background)


def _background(rng, n):
    """Gradient between two colours plus smooth noise, (n, n, 3) float."""
    a, b = np.array(_colour(rng), float), np.array(_colour(rng), float)
    angle = rng.uniform(0, 2 * math.pi)
    y, x = np.mgrid[0:n, 0:n] / n
    t = (np.cos(angle) * x + np.sin(angle) * y)
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    img = a + (b - a) * t[..., None]
    coarse = rng.normal(0, rng.uniform(3, 20), (4, 4, 3))
    up = np.stack([np.asarray(Image.fromarray(coarse[..., c].astype(np.float32), mode="F")
                              .resize((n, n), Image.BICUBIC)) for c in range(3)], -1)
    return np.clip(img + up, 0, 255)


def _rotated(points, centre, angle):
    cx, cy = centre
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c)
            for x, y in points]


def _draw_shape(draw, label, rng, n, colour):
    r = rng.uniform(0.22, 0.38) * n  # half-size
    cx, cy = rng.uniform(r + 1, n - r - 1, 2)
    tilt = math.radians(rng.uniform(-15, 15))
    if label == 0:  # disc
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif label == 1:  # square (tilted a little)
        pts = [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
        draw.polygon(_rotated(pts, (cx, cy), tilt), fill=colour)
    elif label == 2:  # triangle pointing up
        pts = [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
        draw.polygon(_rotated(pts, (cx, cy), tilt), fill=colour)
    elif label == 3:  # ring
        w = max(SUPER, r * rng.uniform(0.25, 0.45))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=int(w))
    elif label == 4:  # cross
        w = r * rng.uniform(0.25, 0.4)
        for pts in ([(cx - r, cy - w), (cx + r, cy - w), (cx + r, cy + w), (cx - r, cy + w)],
                    [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy + r), (cx - w, cy + r)]):
            draw.polygon(_rotated(pts, (cx, cy), tilt), fill=colour)
    elif label in (5, 6):  # horizontal / vertical bars over the whole image
        period = rng.uniform(0.15, 0.3) * n
        width = period * rng.uniform(0.35, 0.6)
        start = rng.uniform(0, period)
        k = start
        while k < n:
            box = [0, k, n, k + width] if label == 5 else [k, 0, k + width, n]
            draw.rectangle(box, fill=colour)
            k += period
    elif label == 7:  # checkerboard patch
        cells = int(rng.integers(3, 6))
        step = 2 * r / cells
        for i in range(cells):
            for j in range(cells):
                if (i + j) % 2 == 0:
                    x0, y0 = cx - r + i * step, cy - r + j * step
                    draw.rectangle([x0, y0, x0 + step, y0 + step], fill=colour)
    elif label == 8:  # two discs side by side
        d = r * 0.5
        for sx in (-1, 1):
            x = cx + sx * r * 0.55
            draw.ellipse([x - d, cy - d, x + d, cy + d], fill=colour)
    elif label == 9:  # diamond (square at 45 degrees)
        pts = [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
        draw.polygon(_rotated(pts, (cx, cy), tilt), fill=colour)


def render(label, rng):
    """One (32, 32, 3) uint8 image of class ``label``."""
    n = SIZE * SUPER
    bg = _background(rng, n)
    image = Image.fromarray(bg.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    mean_bg = tuple(int(v) for v in bg.reshape(-1, 3).mean(0))
    for _ in range(int(rng.integers(0, 3))):  # clutter blobs
        s = rng.uniform(0.03, 0.08) * n
        x, y = rng.uniform(0, n, 2)
        draw.ellipse([x - s, y - s, x + s, y + s], fill=_colour(rng))
    _draw_shape(draw, label, rng, n, _contrasting(rng, mean_bg))
    image = image.resize((SIZE, SIZE), Image.BILINEAR)
    if rng.uniform() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    x = np.asarray(image, float)
    sigma = rng.choice([3.0, 8.0, 25.0], p=[0.6, 0.35, 0.05])
    x = x + rng.normal(0, sigma, x.shape)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def generate(count, seed=0):
    """``(images (N, 32, 32, 3) uint8, labels (N,) int)``, classes balanced, order shuffled."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % len(CLASSES))
    images = np.stack([render(int(label), rng) for label in labels]) if count else \
        np.zeros((0, SIZE, SIZE, 3), np.uint8)
    return images, labels


def _batch_dict(images, labels, name):
    """CIFAR's batch layout: bytes keys (what the original Python 2 pickles give when loaded
    with encoding="bytes"),
    ``data`` (N, 3072) uint8 with the R, G, B planes in turn."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    return {b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
            b"data": np.ascontiguousarray(data, np.uint8),
            b"filenames": [("%s_%05d.png" % (name, i)).encode() for i in range(len(images))]}


def write_cifar10(folder, train=10000, test=2000, seed=0):
    """Write ``data_batch_1..5``, ``test_batch`` and ``batches.meta`` into ``folder``."""
    from common.atomic import atomic_write

    images, labels = generate(train + test, seed)
    splits = np.array_split(np.arange(train), 5)
    files = [("data_batch_%d" % (i + 1), idx) for i, idx in enumerate(splits)]
    files.append(("test_batch", np.arange(train, train + test)))
    os.makedirs(folder, exist_ok=True)
    for name, idx in files:
        with atomic_write(os.path.join(folder, name)) as f:
            pickle.dump(_batch_dict(images[idx], labels[idx], name), f, protocol=4)
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_vis": SIZE * SIZE * 3,
            b"num_cases_per_batch": len(splits[0])}
    with atomic_write(os.path.join(folder, "batches.meta")) as f:
        pickle.dump(meta, f, protocol=4)
    return folder


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m data.shapes10", allow_abbrev=False,
                                description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="folder to write the CIFAR-10-format batch files into")
    p.add_argument("--train", type=int, default=10000, help="training images (default 10000)")
    p.add_argument("--test", type=int, default=2000, help="test images (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    args = p.parse_args(argv)
    if args.train < 5 or args.test < 1:
        from errors import UserError
        raise UserError("--train must be at least 5 (five batch files) and --test at least 1")
    write_cifar10(args.folder, args.train, args.test, args.seed)
    print("wrote %d train and %d test images to %s" % (args.train, args.test, args.folder))
    return 0


if __name__ == "__main__":
    from common import cli

    cli.run(main)
