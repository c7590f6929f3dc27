"""Mixup and CutMix on a numpy batch, with soft (label-smoothed) targets.

The definitions are timm's ``timm.data.Mixup`` (``mode="batch"``), which the official RepVGG
training builds from ``AUG.MIXUP`` / ``AUG.CUTMIX`` / ``AUG.MIXUP_PROB`` /
``AUG.MIXUP_SWITCH_PROB`` / ``MODEL.LABEL_SMOOTHING``:

- with probability ``prob`` the batch is mixed, otherwise λ = 1 (targets are still smoothed);
- when both alphas are > 0, CutMix is chosen with probability ``switch_prob``, else mixup;
  λ ~ Beta(α, α) of the chosen method;
- every sample i is mixed with sample N-1-i (the batch reversed);
- mixup: x = λ·x + (1-λ)·x_reversed;
- CutMix: a box of (int(H·√(1-λ)), int(W·√(1-λ))) centred on a uniform pixel and clipped to the
  image takes its pixels from x_reversed; λ becomes 1 - (clipped box area) / (H·W);
- targets: smoothed one-hots y (off = s/C, on = 1 - s + s/C), mixed as λ·y + (1-λ)·y_reversed,
  so every row sums to 1.

Every random draw comes from the ``rng`` passed per call (a ``numpy.random.Generator``), in
timm's order: apply?, cutmix?, λ, box centre (y, x).
"""
import numpy as np

from errors import UserError


class MixingError(UserError):
    """Mixup/CutMix settings that cannot work."""


def smoothed_one_hot(labels, num_classes, smoothing=0.0):
    """(N,) int -> (N, num_classes) float32 with off = s/C and on = 1 - s + s/C."""
    off = smoothing / num_classes
    targets = np.full((len(labels), num_classes), off, np.float32)
    targets[np.arange(len(labels)), labels] = 1.0 - smoothing + off
    return targets


def cutmix_box(height, width, lam, rng):
    """(y0, y1, x0, x1) of the CutMix box for λ, clipped to the image (timm's ``rand_bbox``)."""
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * ratio), int(width * ratio)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    y0, y1 = np.clip([cy - cut_h // 2, cy + (cut_h + 1) // 2], 0, height)
    x0, x1 = np.clip([cx - cut_w // 2, cx + (cut_w + 1) // 2], 0, width)
    return int(y0), int(y1), int(x0), int(x1)


class MixupCutmix:
    """``mix(images, labels, rng) -> (images, targets)``; images (N, C, H, W) float32, labels
    (N,) int; returns a new float32 batch and (N, num_classes) float32 targets."""

    def __init__(self, num_classes, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5,
                 label_smoothing=0.1, mode="batch"):
        if mode != "batch":
            raise MixingError("mixup mode %r is not supported: only 'batch'" % (mode,))
        if int(num_classes) < 1:
            raise MixingError("mixup needs num_classes >= 1, got %r" % (num_classes,))
        if mixup_alpha < 0 or cutmix_alpha < 0 or not (mixup_alpha > 0 or cutmix_alpha > 0):
            raise MixingError("mixup needs mixup_alpha > 0 or cutmix_alpha > 0 (and neither "
                              "negative), got %r and %r" % (mixup_alpha, cutmix_alpha))
        for name, value in (("prob", prob), ("switch_prob", switch_prob)):
            if not 0.0 <= value <= 1.0:
                raise MixingError("mixup %s must be in [0, 1], got %r" % (name, value))
        if not 0.0 <= label_smoothing < 1.0:
            raise MixingError("label smoothing must be in [0, 1), got %r" % (label_smoothing,))
        self.num_classes = int(num_classes)
        self.mixup_alpha, self.cutmix_alpha = float(mixup_alpha), float(cutmix_alpha)
        self.prob, self.switch_prob = float(prob), float(switch_prob)
        self.label_smoothing = float(label_smoothing)

    def params(self, rng):
        """(λ, use_cutmix) for one batch, before the CutMix area correction."""
        if not rng.uniform() < self.prob:
            return 1.0, False
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            use_cutmix = bool(rng.uniform() < self.switch_prob)
        else:
            use_cutmix = self.cutmix_alpha > 0
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(rng.beta(alpha, alpha)), use_cutmix

    def __call__(self, images, labels, rng):
        images = np.asarray(images, np.float32)
        labels = np.asarray(labels)
        if images.ndim != 4 or labels.shape != (len(images),):
            raise MixingError("mixup expects images (N, C, H, W) and labels (N,), got %s and %s"
                              % (images.shape, labels.shape))
        lam, use_cutmix = self.params(rng)
        mixed = images.copy()
        if lam < 1.0:
            reversed_ = images[::-1]
            if use_cutmix:
                height, width = images.shape[2:]
                y0, y1, x0, x1 = cutmix_box(height, width, lam, rng)
                mixed[:, :, y0:y1, x0:x1] = reversed_[:, :, y0:y1, x0:x1]
                lam = 1.0 - (y1 - y0) * (x1 - x0) / float(height * width)
            else:
                mixed = images * np.float32(lam) + reversed_ * np.float32(1.0 - lam)
        one_hot = smoothed_one_hot(labels, self.num_classes, self.label_smoothing)
        targets = one_hot * np.float32(lam) + one_hot[::-1] * np.float32(1.0 - lam)
        return mixed, targets
