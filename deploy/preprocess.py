"""The one evaluation preprocessing: a ``PreprocessSpec`` (data) and the function that applies it.

Training-time evaluation (``data/transforms.py``), ``tools/predict.py`` (through it),
``tools/export.py`` and ``tools/infer.py`` all prepare an image with ``prepare(image, spec)``:

1. convert to RGB;
2. resize (bilinear) so the shorter side is ``spec.resize``, the longer side
   ``int(round(long * resize / short))``;
3. centre crop ``spec.size`` x ``spec.size``; the offset is ``round((w - size) / 2)`` with
   Python's ``round`` (half to even), torchvision's ``CenterCrop`` rule;
4. divide by ``spec.value_scale`` (255: values in 0..1), subtract ``mean``, divide by ``std``
   (per channel), in float32; channels first.

The spec is recorded in checkpoints (``preprocess``) and in exported models' metadata, so a
deployed model is fed exactly what it was evaluated on. Never imports ``model``.
"""
import dataclasses
import math

import numpy as np

from errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SMALL_MEAN = SMALL_STD = (0.5, 0.5, 0.5)  # digits / CIFAR: [0, 1] -> [-1, 1]
IMAGENET_RESIZE_RATIO = 0.875  # 224 / 256: resize the shorter side to size / 0.875, crop size

# The one resize policy and crop rule this module implements; a recorded spec naming another is
# refused rather than silently applied differently.
RESIZE_POLICY = "shorter-side-bilinear"
CROP_RULE = "center-round-half-even"
# Largest input size and resize a recorded spec may ask for (a model file is untrusted): 4096 is
# far past any real model, and keeps one prepared image under 200 MB.
MAX_SIZE = 4096
MAX_RESIZE = 2 * MAX_SIZE
# An image so elongated that resizing its shorter side would make more pixels than this is
# refused (a 1 x 50,000,000 image resized to 256 would be 12.8 gigapixels).
MAX_RESIZED_PIXELS = 64 * 10 ** 6


class PreprocessSpecError(UserError):
    """A recorded preprocessing spec that this version cannot apply."""


@dataclasses.dataclass(frozen=True)
class PreprocessSpec:
    size: int                     # the model's input is size x size
    resize: int                   # shorter side resized to this before the centre crop
    mean: tuple = IMAGENET_MEAN   # per channel, after dividing by value_scale
    std: tuple = IMAGENET_STD
    value_scale: float = 255.0
    channel_order: str = "RGB"
    name: str = "imagenet"        # where the numbers come from (for messages)

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d.update(resize_policy=RESIZE_POLICY, crop=CROP_RULE, layout="NCHW")
        return d

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise PreprocessSpecError("the recorded preprocessing is not a dict: %.60r" % (d,))
        expected = {"resize_policy": RESIZE_POLICY, "crop": CROP_RULE, "layout": "NCHW",
                    "channel_order": "RGB"}
        for key, value in expected.items():
            if d.get(key, value) != value:
                raise PreprocessSpecError("the recorded preprocessing has %s %.60r; this version "
                                          "applies only %r" % (key, d[key], value))
        try:
            spec = cls(size=_count(d["size"], "size", MAX_SIZE),
                       resize=_count(d["resize"], "resize", MAX_RESIZE),
                       mean=_triple(d["mean"], "mean"), std=_triple(d["std"], "std"),
                       value_scale=_finite(d.get("value_scale", 255.0), "value_scale"),
                       name=str(d.get("name", ""))[:200])
        except KeyError as e:
            raise PreprocessSpecError("the recorded preprocessing is incomplete (no %s)" % e) \
                from None
        if min(spec.std) <= 0 or spec.resize < spec.size or spec.value_scale <= 0:
            raise PreprocessSpecError("the recorded preprocessing is not valid: size %d, resize "
                                      "%d, std %s, value_scale %g (needs resize >= size, std and "
                                      "value_scale > 0)" % (spec.size, spec.resize, spec.std,
                                                            spec.value_scale))
        return spec


def _finite(value, what):
    """A finite float from a recorded number; PreprocessSpecError for inf, NaN, text, huge."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PreprocessSpecError("the recorded preprocessing has a %s that is not a number: %.60r"
                                  % (what, value))
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise PreprocessSpecError("the recorded preprocessing has a %s that is not finite: %.60r"
                                  % (what, value))
    return number


def _count(value, what, limit):
    """A whole number of pixels in 1..limit."""
    number = _finite(value, what)
    if number != int(number) or not 1 <= number <= limit:
        raise PreprocessSpecError("the recorded preprocessing has %s %.60r; expected a whole "
                                  "number of pixels from 1 to %d" % (what, value, limit))
    return int(number)


def _triple(values, what):
    """Three finite per-channel numbers."""
    if not isinstance(values, (list, tuple)) or len(values) != 3:
        raise PreprocessSpecError("the recorded preprocessing's %s must be 3 numbers (one per "
                                  "channel), got %.60r" % (what, values))
    return tuple(_finite(v, what) for v in values)


def imagenet_spec(size):
    """ImageNet evaluation: shorter side to round(size / 0.875) (256 for 224), centre crop."""
    return PreprocessSpec(size, int(round(size / IMAGENET_RESIZE_RATIO)))


def small_spec(size):
    """Digits / CIFAR: shorter side to ``size``, centre crop, normalise to [-1, 1]."""
    return PreprocessSpec(size, size, SMALL_MEAN, SMALL_STD, name="small")


def spec_for_dataset(dataset, size):
    """The evaluation spec of a data set this project trains on."""
    return imagenet_spec(size) if dataset == "imagenet" else small_spec(size)


def spec_of_checkpoint(checkpoint, size=None):
    """``(spec, note)`` for a loaded checkpoint: its recorded ``preprocess``, else one derived
    from its recorded ``dataset`` / ``image_size``, else ImageNet's (``note`` says so; PyTorch
    imports and old files record nothing). ``size`` (if given) overrides the input size."""
    recorded = checkpoint if isinstance(checkpoint, dict) else {}
    note = None
    if recorded.get("preprocess") is not None:
        spec = PreprocessSpec.from_dict(recorded["preprocess"])
    elif recorded.get("dataset"):
        size_recorded = recorded.get("image_size") or (224 if recorded["dataset"] ==
                                                        "imagenet" else 32)
        spec = spec_for_dataset(recorded["dataset"],
                                _count(size_recorded, "image_size", MAX_SIZE))
    else:
        spec = imagenet_spec(size or 224)
        note = ("the checkpoint records no preprocessing; using ImageNet's (resize %d, crop "
                "%d, ImageNet mean/std)" % (spec.resize, spec.size))
    if size and size != spec.size:
        spec = resized_spec(spec, size)
    return spec, note


def resized_spec(spec, size):
    """The same preprocessing at another input size (the resize keeps its ratio to the crop)."""
    return dataclasses.replace(spec, size=size,
                               resize=max(size, int(round(spec.resize * size / spec.size))))


# -- the geometry and arithmetic, shared with the training-time transforms -----------------------
def resized_shape(width, height, short):
    """(w, h) after resizing the shorter side to ``short``, keeping the aspect ratio."""
    scale = short / min(width, height)
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def center_crop_box(width, height, size):
    """(left, top, right, bottom) of the centre ``size`` x ``size`` crop: offsets rounded with
    Python's ``round`` (half to even), as torchvision's ``CenterCrop``."""
    left, top = int(round((width - size) / 2)), int(round((height - size) / 2))
    return left, top, left + size, top + size


def normalize(pixels, mean, std, value_scale=255.0):
    """HWC RGB pixels -> float32 CHW: ``(pixels / value_scale - mean) / std``."""
    x = np.asarray(pixels, np.float32).transpose(2, 0, 1) / np.float32(value_scale)
    return (x - np.asarray(mean, np.float32).reshape(3, 1, 1)) \
        / np.asarray(std, np.float32).reshape(3, 1, 1)


def prepare(image, spec):
    """A PIL image -> float32 ``(3, spec.size, spec.size)`` (the module docstring's steps)."""
    from PIL import Image

    image = image.convert("RGB")
    new = resized_shape(image.width, image.height, spec.resize)
    if new[0] * new[1] > MAX_RESIZED_PIXELS:
        from data.images import UnreadableImage

        raise UnreadableImage("cannot prepare a %dx%d image: resizing its shorter side to %d "
                              "would make %dx%d pixels (more than %d megapixels)"
                              % (image.width, image.height, spec.resize, new[0], new[1],
                                 MAX_RESIZED_PIXELS // 10 ** 6))
    if new != image.size:
        image = image.resize(new, Image.BILINEAR)
    if image.size != (spec.size, spec.size):
        image = image.crop(center_crop_box(image.width, image.height, spec.size))
    return normalize(image, spec.mean, spec.std, spec.value_scale)


def load_image(path, limits=None, size=None):
    """Open an image file as 8-bit RGB with the one decoder of every tool
    (``data.images.read_rgb``: size cap, truncation, 16-bit, palette, EXIF orientation, draft
    JPEG decoding at ``size``); ``UnreadableImage`` (a ``UserError``, one line) when it cannot
    be read."""
    from data.images import read_rgb

    return read_rgb(path, limits=limits, size=size)


def preprocess_image(image, spec, limits=None):
    """A PIL image or a path -> ``prepare(image, spec)``; a path is decoded with
    ``load_image`` at the spec's resize (so ``tools/predict.py`` and ``tools/infer.py`` decode
    the same file to the same pixels)."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = load_image(image, limits=limits, size=spec.resize)
    return prepare(image, spec)
