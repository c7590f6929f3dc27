"""Preparing an image for a deployed model: the ImageNet evaluation preprocessing."""
import numpy as np

from errors import UserError

# ImageNet statistics on the 0..255 scale (torchvision's 0..1 values times 255).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
RESIZE_RATIO = 256 / 224  # resize 256 -> centre crop 224, at any input size


def preprocess_image(image, size=224):
    """A PIL image or a path -> float32 ``(3, size, size)``: RGB, shorter side resized to
    ``round(size * 256 / 224)`` (bilinear), centre crop, ImageNet mean/std."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        try:
            with Image.open(image) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError) as e:
            raise UserError("cannot read image %s (%s)" % (image, e)) from None
    image = image.convert("RGB")
    short = round(size * RESIZE_RATIO)
    w, h = image.size
    scale = short / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                         Image.BILINEAR)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    x = (np.asarray(image, np.float32) - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))
