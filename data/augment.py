"""AutoAugment and RandAugment on PIL images, every random choice drawn from an explicit generator.

The operations, their magnitude -> argument mappings and the policies are those of timm's
``timm/data/auto_augment.py`` (timm 1.0), which the official RepVGG training reaches through
``timm.data.create_transform(auto_augment=...)``; ``raugN`` is the official repository's own
``AUG.PRESET raugN`` (``train/randaug.py``, used for RepVGGplus-L2pse). Like the rest of
``data/transforms.py`` every transform is a callable ``t(image, rng)`` with ``rng`` a
``numpy.random.Generator``: the same (seed, epoch, index) gives the same image in any worker.

Names for ``augment_from_name`` (the ``--aa`` flag):

- ``autoaug`` / ``original``: the ImageNet policy of the AutoAugment paper (arXiv 1805.09501,
  25 sub-policies; Posterize keeps 4..8 bits as in the paper), timm's ``original``.
  ``originalr`` (research Posterize), ``v0`` / ``v0r`` (the TPU EfficientNet policy) as in timm.
  A ``-mstdX`` suffix adds Gaussian magnitude noise.
- ``rand-m9-mstd0.5``-style RandAugment specs: ``m`` magnitude (0..10), ``n`` ops per image
  (default 2), ``p`` probability of each op (default 0.5, timm's), ``mstd`` magnitude noise std
  (> 100: uniform in [0, m]), ``mmax`` magnitude clip (default 10), ``inc1`` the
  "increasing severity" op set.
- ``raugN``: two ops from the official list (with Cutout), each always applied, magnitude a
  uniform integer in [0, N) and not clipped.
"""
import math
import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from errors import UserError
from data.transforms import IMAGENET_MEAN

LEVEL_DENOM = 10.0  # magnitude 10 is the maximum of the paper's ranges
FILL = (128, 128, 128)  # timm's default fill for pixels a geometric op uncovers
IMAGENET_FILL = tuple(min(255, round(255 * m)) for m in IMAGENET_MEAN)  # (124, 116, 104), create_transform's
CUTOUT_FILL = (125, 122, 113)  # the official train/cutout.py colour
INTERPOLATIONS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
RANDOM_INTERPOLATION = (Image.BILINEAR, Image.BICUBIC)


class AugmentError(UserError):
    """An augmentation name or spec that cannot be parsed."""


# ---- operations: op(image, argument, **geometry) -> image ---------------------------------

def _affine(image, matrix, fill, resample):
    # PIL maps every output pixel centre (x, y) to the input point (a x + b y + c, d x + e y + f).
    return image.transform(image.size, Image.AFFINE, matrix, resample=resample, fillcolor=fill)


def shear_x(image, factor, fill=FILL, resample=Image.BILINEAR):
    return _affine(image, (1, factor, 0, 0, 1, 0), fill, resample)


def shear_y(image, factor, fill=FILL, resample=Image.BILINEAR):
    return _affine(image, (1, 0, 0, factor, 1, 0), fill, resample)


def translate_x(image, pixels, fill=FILL, resample=Image.BILINEAR):
    return _affine(image, (1, 0, pixels, 0, 1, 0), fill, resample)


def translate_y(image, pixels, fill=FILL, resample=Image.BILINEAR):
    return _affine(image, (1, 0, 0, 0, 1, pixels), fill, resample)


def translate_x_rel(image, fraction, fill=FILL, resample=Image.BILINEAR):
    return translate_x(image, fraction * image.size[0], fill, resample)


def translate_y_rel(image, fraction, fill=FILL, resample=Image.BILINEAR):
    return translate_y(image, fraction * image.size[1], fill, resample)


def rotate(image, degrees, fill=FILL, resample=Image.BILINEAR):
    """Counter-clockwise about the image centre, same canvas."""
    return image.rotate(degrees, resample=resample, fillcolor=fill)


def auto_contrast(image):
    return ImageOps.autocontrast(image)


def invert(image):
    return ImageOps.invert(image)


def equalize(image):
    return ImageOps.equalize(image)


def solarize(image, threshold):
    """Invert every value >= threshold."""
    return ImageOps.solarize(image, threshold)


def solarize_add(image, add, threshold=128):
    """Add ``add`` (saturating at 255) to every value < threshold."""
    lut = [min(255, i + add) if i < threshold else i for i in range(256)]
    return image.point(lut * len(image.getbands()))


def posterize(image, bits):
    """Keep the ``bits`` most significant bits of every value."""
    return image if bits >= 8 else ImageOps.posterize(image, bits)


def contrast(image, factor):
    return ImageEnhance.Contrast(image).enhance(factor)


def color(image, factor):
    return ImageEnhance.Color(image).enhance(factor)


def brightness(image, factor):
    return ImageEnhance.Brightness(image).enhance(factor)


def sharpness(image, factor):
    return ImageEnhance.Sharpness(image).enhance(factor)


def cutout(image, size, rng):
    """The official ``train/cutout.py``: a square of side 2*(size//2) centred on a uniform
    random pixel, clipped to the image, painted ``CUTOUT_FILL``."""
    w, h = image.size
    cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
    half = int(size) // 2
    box = (max(0, cx - half), max(0, cy - half), min(w, cx + half), min(h, cy + half))
    out = image.copy()
    out.paste(CUTOUT_FILL[:len(image.getbands())], box)
    return out


# ---- magnitude level -> operation argument: level_fn(level, rng, hp) -> tuple ------------

def _negate(value, rng):
    return -value if rng.uniform() > 0.5 else value


def _signed(scale):
    return lambda level, rng, hp: (_negate(level / LEVEL_DENOM * scale, rng),)


def _translate_abs(level, rng, hp):
    return (_negate(level / LEVEL_DENOM * float(hp["translate_const"]), rng),)


def _translate_rel(level, rng, hp):
    return (_negate(level / LEVEL_DENOM * hp["translate_pct"], rng),)


def _enhance(level, rng, hp):
    return (level / LEVEL_DENOM * 1.8 + 0.1,)


def _enhance_increasing(level, rng, hp):
    return (max(0.1, 1.0 + _negate(level / LEVEL_DENOM * 0.9, rng)),)


def _posterize(level, rng, hp):  # TPU EfficientNet: keep 0..4 bits
    return (int(level / LEVEL_DENOM * 4),)


def _posterize_increasing(level, rng, hp):  # research / UDA: keep 4..0 bits
    return (4 - _posterize(level, rng, hp)[0],)


def _posterize_original(level, rng, hp):  # AutoAugment paper: keep 4..8 bits
    return (int(level / LEVEL_DENOM * 4) + 4,)


def _solarize(level, rng, hp):
    return (min(256, int(level / LEVEL_DENOM * 256)),)


def _solarize_increasing(level, rng, hp):
    return (256 - _solarize(level, rng, hp)[0],)


def _solarize_add(level, rng, hp):
    add = int(level / LEVEL_DENOM * 110)
    return (add if hp["solarize_add_max"] is None else min(hp["solarize_add_max"], add),)


def _cutout(level, rng, hp):
    return (max(2, level / LEVEL_DENOM * 40.0),)


# name -> (operation, level_fn, kind); kind "geometric" takes fill/resample, "random" takes rng
OPS = {
    "AutoContrast": (auto_contrast, None, "pixel"),
    "Equalize": (equalize, None, "pixel"),
    "Invert": (invert, None, "pixel"),
    "Rotate": (rotate, _signed(30.0), "geometric"),
    "Posterize": (posterize, _posterize, "pixel"),
    "PosterizeIncreasing": (posterize, _posterize_increasing, "pixel"),
    "PosterizeOriginal": (posterize, _posterize_original, "pixel"),
    "Solarize": (solarize, _solarize, "pixel"),
    "SolarizeIncreasing": (solarize, _solarize_increasing, "pixel"),
    "SolarizeAdd": (solarize_add, _solarize_add, "pixel"),
    "Color": (color, _enhance, "pixel"),
    "ColorIncreasing": (color, _enhance_increasing, "pixel"),
    "Contrast": (contrast, _enhance, "pixel"),
    "ContrastIncreasing": (contrast, _enhance_increasing, "pixel"),
    "Brightness": (brightness, _enhance, "pixel"),
    "BrightnessIncreasing": (brightness, _enhance_increasing, "pixel"),
    "Sharpness": (sharpness, _enhance, "pixel"),
    "SharpnessIncreasing": (sharpness, _enhance_increasing, "pixel"),
    "ShearX": (shear_x, _signed(0.3), "geometric"),
    "ShearY": (shear_y, _signed(0.3), "geometric"),
    "TranslateX": (translate_x, _translate_abs, "geometric"),
    "TranslateY": (translate_y, _translate_abs, "geometric"),
    "TranslateXRel": (translate_x_rel, _translate_rel, "geometric"),
    "TranslateYRel": (translate_y_rel, _translate_rel, "geometric"),
    "Cutout": (cutout, _cutout, "random"),
}

HPARAMS = dict(translate_const=250, translate_pct=0.45, fill=FILL, interpolation=None,
               solarize_add_max=128)


class AugmentOp:
    """One named operation applied with probability ``prob`` at ``magnitude`` (0..10), the
    magnitude optionally jittered by N(0, magnitude_std) (inf: uniform in [0, magnitude]) and
    clipped to [0, magnitude_max] (timm's ``AugmentOp``). Geometric ops fill uncovered pixels
    with ``hp['fill']`` and resample with ``hp['interpolation']``, or, when None, a random one
    of bilinear/bicubic per call (timm's default)."""

    def __init__(self, name, prob=0.5, magnitude=10, magnitude_std=0.0, magnitude_max=LEVEL_DENOM,
                 hparams=None):
        self.name = name
        self.fn, self.level_fn, self.kind = OPS[name]
        self.prob, self.magnitude = prob, magnitude
        self.magnitude_std, self.magnitude_max = magnitude_std, magnitude_max
        self.hp = dict(HPARAMS, **(hparams or {}))

    def apply(self, image, level, rng):
        """The operation at magnitude ``level`` exactly (no probability, noise or clipping)."""
        args = self.level_fn(level, rng, self.hp) if self.level_fn else ()
        if self.kind == "geometric":
            resample = self.hp["interpolation"]
            if resample is None:
                resample = RANDOM_INTERPOLATION[int(rng.integers(len(RANDOM_INTERPOLATION)))]
            return self.fn(image, *args, fill=self.hp["fill"], resample=resample)
        if self.kind == "random":
            return self.fn(image, *args, rng=rng)
        return self.fn(image, *args)

    def __call__(self, image, rng):
        if self.prob < 1.0 and rng.uniform() > self.prob:
            return image
        level = self.magnitude
        if self.magnitude_std == math.inf:
            level = rng.uniform(0, level)
        elif self.magnitude_std > 0:
            level = rng.normal(level, self.magnitude_std)
        level = max(0.0, min(level, self.magnitude_max))
        return self.apply(image, level, rng)

    def __repr__(self):
        return "AugmentOp(%s, p=%g, m=%g, mstd=%g)" % (self.name, self.prob, self.magnitude,
                                                       self.magnitude_std)


class AutoAugment:
    """A uniformly chosen sub-policy, its ops applied in order."""

    def __init__(self, policy):
        self.policy = policy

    def __call__(self, image, rng):
        for op in self.policy[int(rng.integers(len(self.policy)))]:
            image = op(image, rng)
        return image


class RandAugment:
    """``num_layers`` ops drawn uniformly with replacement, each applied as ``AugmentOp`` does."""

    def __init__(self, ops, num_layers=2):
        self.ops, self.num_layers = ops, num_layers

    def __call__(self, image, rng):
        for i in rng.integers(len(self.ops), size=self.num_layers):
            image = self.ops[i](image, rng)
        return image


class OfficialRandAug:
    """The official RepVGG ``RandAugPolicy(magnitude=N)``: two layers, each a uniform op from
    ``OFFICIAL_RAND_OPS`` always applied at a uniform integer magnitude in [0, N), unclipped."""

    def __init__(self, magnitude, layers=2, hparams=None):
        hparams = dict(hparams or {}, solarize_add_max=None)
        self.ops = [AugmentOp(name, prob=1.0, hparams=hparams) for name in OFFICIAL_RAND_OPS]
        self.magnitude, self.layers = magnitude, layers

    def __call__(self, image, rng):
        for _ in range(self.layers):
            op = self.ops[int(rng.integers(len(self.ops)))]
            image = op.apply(image, int(rng.integers(self.magnitude)), rng)
        return image


class RandomErasing:
    """timm's ``RandomErasing`` (Zhong et al., arXiv 1708.04896) on a normalised float32 CHW
    array, the step after ``ToCHW`` in the official recipe (``AUG.REPROB`` 0.25,
    ``AUG.REMODE`` "pixel", ``AUG.RECOUNT`` 1). With probability ``prob``, ``count`` boxes
    (uniform in [min_count, max_count]), each: up to 10 tries of an area fraction uniform in
    [min_area, max_area] / count and a log-uniform aspect ratio in [min_aspect, 1/min_aspect];
    the first box strictly smaller than the image is filled with N(0, 1) noise per pixel
    ("pixel"), one N(0, 1) colour per channel ("rand") or zeros ("const")."""

    MODES = ("pixel", "rand", "const")

    def __init__(self, prob=0.25, mode="pixel", min_area=0.02, max_area=1 / 3, min_aspect=0.3,
                 min_count=1, max_count=None):
        if mode not in self.MODES:
            raise AugmentError("random erasing mode %r: use one of %s" % (mode, ", ".join(self.MODES)))
        if not 0.0 <= prob <= 1.0:
            raise AugmentError("random erasing probability %r is not in [0, 1]" % (prob,))
        self.prob, self.mode = prob, mode
        self.min_area, self.max_area = min_area, max_area
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
        self.min_count, self.max_count = min_count, max_count or min_count

    def boxes(self, height, width, rng):
        """The (top, left, h, w) boxes of one call (possibly none)."""
        if rng.uniform() > self.prob:
            return []
        count = int(rng.integers(self.min_count, self.max_count + 1))
        found = []
        for _ in range(count):
            for _ in range(10):
                area = rng.uniform(self.min_area, self.max_area) * height * width / count
                aspect = math.exp(rng.uniform(*self.log_aspect))
                h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
                if w < width and h < height:
                    found.append((int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w))
                    break
        return found

    def __call__(self, chw, rng):
        chw = np.array(chw, np.float32)
        channels, height, width = chw.shape
        for top, left, h, w in self.boxes(height, width, rng):
            if self.mode == "pixel":
                fill = rng.standard_normal((channels, h, w), dtype=np.float32)
            elif self.mode == "rand":
                fill = rng.standard_normal((channels, 1, 1), dtype=np.float32)
            else:
                fill = np.zeros((channels, 1, 1), np.float32)
            chw[:, top:top + h, left:left + w] = fill
        return chw


# ---- policies (data, transcribed from timm 1.0's auto_augment.py) --------------------------

def _policy(table, **substitute):
    return [[(substitute.get(name, name), p, m) for name, p, m in sub] for sub in table]


# ImageNet policy of the AutoAugment paper, Table 9 of arXiv 1805.09501.
POLICY_ORIGINAL = [
    [("PosterizeOriginal", 0.4, 8), ("Rotate", 0.6, 9)],
    [("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)],
    [("Equalize", 0.8, 8), ("Equalize", 0.6, 3)],
    [("PosterizeOriginal", 0.6, 7), ("PosterizeOriginal", 0.6, 6)],
    [("Equalize", 0.4, 7), ("Solarize", 0.2, 4)],
    [("Equalize", 0.4, 4), ("Rotate", 0.8, 8)],
    [("Solarize", 0.6, 3), ("Equalize", 0.6, 7)],
    [("PosterizeOriginal", 0.8, 5), ("Equalize", 1.0, 2)],
    [("Rotate", 0.2, 3), ("Solarize", 0.6, 8)],
    [("Equalize", 0.6, 8), ("PosterizeOriginal", 0.4, 6)],
    [("Rotate", 0.8, 8), ("Color", 0.4, 0)],
    [("Rotate", 0.4, 9), ("Equalize", 0.6, 2)],
    [("Equalize", 0.0, 7), ("Equalize", 0.8, 8)],
    [("Invert", 0.6, 4), ("Equalize", 1.0, 8)],
    [("Color", 0.6, 4), ("Contrast", 1.0, 8)],
    [("Rotate", 0.8, 8), ("Color", 1.0, 2)],
    [("Color", 0.8, 8), ("Solarize", 0.8, 7)],
    [("Sharpness", 0.4, 7), ("Invert", 0.6, 8)],
    [("ShearX", 0.6, 5), ("Equalize", 1.0, 9)],
    [("Color", 0.4, 0), ("Equalize", 0.6, 3)],
    [("Equalize", 0.4, 7), ("Solarize", 0.2, 4)],
    [("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)],
    [("Invert", 0.6, 4), ("Equalize", 1.0, 8)],
    [("Color", 0.6, 4), ("Contrast", 1.0, 8)],
    [("Equalize", 0.8, 8), ("Equalize", 0.6, 3)],
]

# ImageNet "v0" policy of the TPU EfficientNet implementation (no paper reference).
POLICY_V0 = [
    [("Equalize", 0.8, 1), ("ShearY", 0.8, 4)],
    [("Color", 0.4, 9), ("Equalize", 0.6, 3)],
    [("Color", 0.4, 1), ("Rotate", 0.6, 8)],
    [("Solarize", 0.8, 3), ("Equalize", 0.4, 7)],
    [("Solarize", 0.4, 2), ("Solarize", 0.6, 2)],
    [("Color", 0.2, 0), ("Equalize", 0.8, 8)],
    [("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)],
    [("ShearX", 0.2, 9), ("Rotate", 0.6, 8)],
    [("Color", 0.6, 1), ("Equalize", 1.0, 2)],
    [("Invert", 0.4, 9), ("Rotate", 0.6, 0)],
    [("Equalize", 1.0, 9), ("ShearY", 0.6, 3)],
    [("Color", 0.4, 7), ("Equalize", 0.6, 0)],
    [("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)],
    [("Solarize", 0.6, 8), ("Color", 0.6, 9)],
    [("Solarize", 0.2, 4), ("Rotate", 0.8, 9)],
    [("Rotate", 1.0, 7), ("TranslateYRel", 0.8, 9)],
    [("ShearX", 0.0, 0), ("Solarize", 0.8, 4)],
    [("ShearY", 0.8, 0), ("Color", 0.6, 4)],
    [("Color", 1.0, 0), ("Rotate", 0.6, 2)],
    [("Equalize", 0.8, 4), ("Equalize", 0.0, 8)],
    [("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)],
    [("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)],
    [("Posterize", 0.8, 2), ("Solarize", 0.6, 10)],
    [("Solarize", 0.6, 8), ("Equalize", 0.6, 1)],
    [("Color", 0.8, 6), ("Rotate", 0.4, 5)],
]

POLICIES = {
    "original": POLICY_ORIGINAL,
    "originalr": _policy(POLICY_ORIGINAL, PosterizeOriginal="PosterizeIncreasing"),
    "v0": POLICY_V0,
    "v0r": _policy(POLICY_V0, Posterize="PosterizeIncreasing"),
}
POLICY_ALIASES = {"autoaug": "original", "autoaugment": "original", "aa": "original"}

RAND_OPS = ["AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
            "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
            "TranslateYRel"]
RAND_INCREASING_OPS = ["AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
                       "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
                       "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
                       "TranslateXRel", "TranslateYRel"]
OFFICIAL_RAND_OPS = RAND_OPS + ["Cutout"]  # the official train/randaug.py list

NAMES_HELP = ("none, autoaug (= original), originalr, v0, v0r (optionally -mstdX), "
              "rand-m9-mstd0.5-style RandAugment (keys m, n, p, mstd, mmax, inc) or raugN")


# ---- names ---------------------------------------------------------------------------------

def _sections(name, allowed):
    """'m9', 'mstd0.5', ... -> {key: value string}; anything else is an AugmentError."""
    values = {}
    for section in name.split("-")[1:]:
        match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d*)?)", section)
        if not match or match.group(1) not in allowed:
            raise AugmentError("bad section %r in augmentation %r: expected %s followed by a number"
                               % (section, name, "/".join(allowed)))
        values[match.group(1)] = match.group(2)
    return values


def auto_augment(name, hparams=None):
    """``original[-mstdX]``, ``originalr``, ``v0``, ``v0r`` (or an alias of ``original``)."""
    policy_name = name.split("-")[0]
    policy_name = POLICY_ALIASES.get(policy_name, policy_name)
    if policy_name not in POLICIES:
        raise AugmentError("unknown augmentation %r: use %s" % (name, NAMES_HELP))
    std = float(_sections(name, ("mstd",)).get("mstd", 0.0))
    return AutoAugment([[AugmentOp(op, p, m, magnitude_std=std, hparams=hparams) for op, p, m in sub]
                        for sub in POLICIES[policy_name]])


def rand_augment(spec, hparams=None):
    """A timm RandAugment spec: ``rand-m9-n2-mstd0.5-inc1`` (sections in any order)."""
    values = _sections(spec, ("m", "n", "p", "mstd", "mmax", "inc"))
    std = float(values.get("mstd", 0.0))
    prob = float(values.get("p", 0.5))
    if not 0.0 <= prob <= 1.0:
        raise AugmentError("RandAugment probability p%s in %r is not in [0, 1]" % (values["p"], spec))
    names = RAND_INCREASING_OPS if int(float(values.get("inc", 0))) else RAND_OPS
    ops = [AugmentOp(op, prob, float(values.get("m", LEVEL_DENOM)),
                     magnitude_std=math.inf if std > 100 else std,
                     magnitude_max=float(values.get("mmax", LEVEL_DENOM)), hparams=hparams)
           for op in names]
    return RandAugment(ops, int(float(values.get("n", 2))))


def augment_from_name(name, fill=FILL, image_size=None, interpolation=None):
    """The ``--aa`` value -> a transform ``t(image, rng)``, or None for ``none``/empty.

    ``fill``: colour of pixels uncovered by geometric ops (official recipes through timm's
    ``create_transform`` use ``IMAGENET_FILL``); ``image_size``: when given, absolute
    translations use 0.45 * size pixels as ``create_transform`` does (else timm's 250);
    ``interpolation``: "bilinear"/"bicubic"/"nearest", or None for a random one of
    bilinear/bicubic per op (timm's default when the recipe's interpolation is "random").
    """
    if name is None or name.strip().lower() in ("", "none"):
        return None
    name = name.strip()
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise AugmentError("unknown interpolation %r: use one of %s"
                           % (interpolation, ", ".join(INTERPOLATIONS)))
    hparams = dict(fill=tuple(fill),
                   interpolation=INTERPOLATIONS.get(interpolation),
                   translate_const=250 if image_size is None else int(image_size * 0.45))
    if name == "rand" or name.startswith("rand-"):
        return rand_augment(name, hparams)
    match = re.fullmatch(r"raug(\d+)", name)
    if match:
        if int(match.group(1)) < 1:
            raise AugmentError("raugN needs N >= 1, got %r" % name)
        return OfficialRandAug(int(match.group(1)), hparams=hparams)
    return auto_augment(name, hparams)

