"""Image transforms with an explicit random generator.

Every random transform takes ``(image, rng)`` where ``rng`` is a ``numpy.random.Generator``
derived from (seed, epoch, sample index) by the sampler, so an augmented sample is the same in
any worker process, with any number of workers, and again after a resume. (MegEngine's own
``megengine.data.transform`` draws from the global numpy RNG in whichever worker runs it, which
is not reproducible across worker counts; these are small PIL-based equivalents.)

Images are PIL images until ``ToCHW`` turns them into normalised float32 CHW arrays. The
evaluation transforms are ``deploy.preprocess`` specs (the one preprocessing, shared with the
exported models); the resize, crop and normalisation arithmetic below is that module's too.
"""
import math

from PIL import Image, ImageEnhance

from deploy import preprocess as P
from deploy.preprocess import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (re-exported)


class Compose:
    def __init__(self, steps):
        self.steps = list(steps)

    def __call__(self, image, rng):
        for step in self.steps:
            image = step(image, rng)
        return image


class RandomResizedCrop:
    """Crop a random area fraction in ``scale`` with aspect ratio in ``ratio``, resize to
    ``size``; falls back to a centre crop after 10 failed draws (as torchvision does)."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = size, scale, ratio

    def box(self, width, height, rng):
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                x = int(rng.integers(0, width - w + 1))
                y = int(rng.integers(0, height - h + 1))
                return x, y, w, h
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            w, h = int(round(height * self.ratio[1])), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def __call__(self, image, rng):
        x, y, w, h = self.box(image.width, image.height, rng)
        return image.resize((self.size, self.size), Image.BILINEAR, box=(x, y, x + w, y + h))


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, image, rng):
        return image.transpose(Image.FLIP_LEFT_RIGHT) if rng.uniform() < self.p else image


class ColorJitter:
    """timm's / torchvision's ``ColorJitter(s, s, s)`` (``--color-jitter S``): brightness,
    contrast and saturation each scaled by a factor drawn from [max(0, 1 - S), 1 + S], in a
    random order, with PIL's enhance operations (hue unchanged, as timm's default)."""

    OPS = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)

    def __init__(self, strength):
        self.strength = strength

    def __call__(self, image, rng):
        low, high = max(0.0, 1.0 - self.strength), 1.0 + self.strength
        for k in rng.permutation(len(self.OPS)):
            image = self.OPS[k](image).enhance(rng.uniform(low, high))
        return image


class RandomShift:
    """Translate by up to ``pad`` pixels in each direction (zero padding, then a random crop
    back to the original size). Used for the digits, where flips would change the class."""

    def __init__(self, pad):
        self.pad = pad

    def __call__(self, image, rng):
        w, h = image.size
        canvas = Image.new(image.mode, (w + 2 * self.pad, h + 2 * self.pad))
        canvas.paste(image, (self.pad, self.pad))
        x, y = (int(v) for v in rng.integers(0, 2 * self.pad + 1, size=2))
        return canvas.crop((x, y, x + w, y + h))


class Resize:
    """Resize so the shorter side is ``size`` (keeping the aspect ratio)."""

    def __init__(self, size):
        self.size = size

    def __call__(self, image, rng=None):
        new = P.resized_shape(image.width, image.height, self.size)
        return image if new == image.size else image.resize(new, Image.BILINEAR)


class CenterCrop:
    def __init__(self, size):
        self.size = size

    def __call__(self, image, rng=None):
        if image.size == (self.size, self.size):
            return image
        return image.crop(P.center_crop_box(image.width, image.height, self.size))


class ToCHW:
    """PIL RGB image -> float32 (3, H, W), scaled to [0, 1] then normalised per channel."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.mean, self.std = mean, std

    def __call__(self, image, rng=None):
        return P.normalize(image.convert("RGB"), self.mean, self.std)


class Preprocess:
    """The evaluation transform: ``deploy.preprocess.prepare`` with a ``PreprocessSpec``."""

    def __init__(self, spec):
        self.spec = spec

    def __call__(self, image, rng=None):
        return P.prepare(image, self.spec)


def _optional(flip, color_jitter, augment):
    """The optional steps, in timm's order: flip, colour jitter, the ``augment`` policy."""
    return (([RandomHorizontalFlip(flip)] if flip else [])
            + ([ColorJitter(color_jitter)] if color_jitter else [])
            + ([augment] if augment else []))


def imagenet_train(size, augment=None, scale=None, flip=0.5, color_jitter=0.0):
    """The official recipe's training augmentation: random resized crop (area ``scale``,
    default (0.08, 1)), flip with probability ``flip``, then the optional colour jitter and
    ``augment`` (AutoAugment / RandAugment, ``data.augment``), normalise."""
    crop = RandomResizedCrop(size, scale=tuple(scale) if scale else (0.08, 1.0))
    return Compose([crop] + _optional(flip, color_jitter, augment) + [ToCHW()])


def imagenet_eval(size):
    """Resize the shorter side to size/0.875 (256 for 224), centre crop ``size``, normalise."""
    return Preprocess(P.imagenet_spec(size))


def small_train(size, flip=0.5, pad=None, augment=None, color_jitter=0.0):
    """For small low-resolution images (CIFAR, digits): shift by up to size/8 pixels, a flip
    with probability ``flip`` (0: none), the optional colour jitter and ``augment`` policy,
    normalise to [-1, 1]. Images not already ``size`` x ``size`` are resized (shorter side)
    and centre-cropped first."""
    steps = [Resize(size), CenterCrop(size), RandomShift(pad if pad is not None else max(1, size // 8))]
    return Compose(steps + _optional(flip, color_jitter, augment)
                   + [ToCHW((0.5,) * 3, (0.5,) * 3)])


def small_eval(size):
    """Resize the shorter side to ``size``, centre crop, normalise to [-1, 1]."""
    return Preprocess(P.small_spec(size))
