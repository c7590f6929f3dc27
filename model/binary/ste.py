"""Straight-through estimators as ``megengine.autodiff.Function`` subclasses.

MegEngine's ``Function`` is single-use (state is kept on the instance between forward and
backward) and takes only tensors in ``forward``, so every call builds a new instance and modes
and thresholds go through the constructor. The thin functions below (``sign_ste``,
``approx_sign``, ``binarize_weight``) do that.

Activation and weight binarization are two separate Functions, applied one after the other by
``BinaryConv2d``: each one's backward is recorded on the tape. (aw_nas fused both into one
autograd Function and called Bi-Real's approx-sign *inside* its forward, where nothing is
recorded, so its polynomial gradient was never used.)

Conventions (deliberate, pinned by the tests):

- ``sign(0) = +1`` (BMXNet's ``det_sign``; PyTorch's ``sign`` and so aw_nas give 0, which
  is not a binary value).
- Windows keep their boundary: the gradient passes where ``|v| <= threshold`` (BMXNet's
  ``gradcancel``; aw_nas zeroes ``|x| = 1.3`` itself and, in mode 3, the weights sitting at
  exactly ±1, which then could never move back inside).

With ``n`` elements per output filter, ``α_o = mean(|W_o|)`` and ``g`` the gradient of the
binarized weight, the weight gradients are:

====================  ====================================================================
``fp``                ``g``
``sign``              ``g·1{|W| <= weight_clip}``
``xnor_tensor``       ``g·1{|W| <= tensor_clip·α}`` (α is one scalar; no gradient through α)
``xnor_channel``      ``α_o·g·1{|W| <= weight_clip} + sign(W)·mean_o(sign(W)·g)``, times
                      ``n·(1 - 1/C)`` only with ``legacy_xnor_grad_scale``
``bireal_channel``    ``g·1{|W| <= weight_clip}``; with ``magnitude_aware`` the ``xnor_channel``
                      formula (without the legacy factor)
====================  ====================================================================

The second ``xnor_channel`` term is the exact derivative through ``α_o`` (its derivative with
respect to ``W_j`` is ``sign(W_j)/n``); the first is the straight-through estimate of the sign.
"""
import numpy as np

import megengine.functional as F
from megengine.autodiff import Function

from .config import WeightMode


def _sign(x):
    """+1 where x >= 0, else -1 (so sign(0) = +1)."""
    return (x >= 0).astype(x.dtype) * 2 - 1


def _window(v, threshold):
    """1 where |v| <= threshold (boundary kept), else 0, in v's dtype."""
    return (F.abs(v) <= threshold).astype(v.dtype)


def filter_axes(weight):
    """Axes of one output filter: the last three (in/groups, kh, kw), for MegEngine's 4-D
    ``(out, in, kh, kw)`` and grouped 5-D ``(groups, out/g, in/g, kh, kw)`` layouts alike."""
    return tuple(range(weight.ndim - 3, weight.ndim))


class SignSTE(Function):
    """Forward ``sign(x)``; backward ``g·1{|x| <= clip}`` (``clip=None``: ``g``)."""

    def __init__(self, clip=1.0):
        super().__init__()
        self.clip = clip

    def forward(self, x):
        self.x = x
        return _sign(x)

    def backward(self, grad):
        if grad is None or self.clip is None:
            return grad
        return grad * _window(self.x, self.clip)


class ApproxSign(Function):
    """Bi-Real Net's ApproxSign: forward ``sign(x)``; backward ``g·max(0, 2 - 2|x|)``, the
    derivative of the piecewise polynomial (-1; x²+2x; -x²+2x; 1). Clamped at 0 outside
    ``|x| < 1`` (BMXNet's raw ``2 ± 2x`` turns negative there)."""

    def forward(self, x):
        self.x = x
        return _sign(x)

    def backward(self, grad):
        if grad is None:
            return None
        return grad * F.relu(2 - 2 * F.abs(self.x))


class BinarizeWeight(Function):
    """Latent weight -> binarized weight for one ``BinaryConvConfig`` (see the module docstring
    for the forward and backward of each mode)."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def forward(self, weight):
        mode = self.config.weight_mode
        self.weight = weight
        if mode is WeightMode.FP:
            return weight
        sign = _sign(weight)
        if mode is WeightMode.SIGN:
            return sign
        if mode is WeightMode.XNOR_TENSOR:
            self.alpha = F.mean(F.abs(weight))
        else:  # per output filter
            self.alpha = F.mean(F.abs(weight), axis=filter_axes(weight), keepdims=True)
        return self.alpha * sign

    def backward(self, grad):
        cfg, w = self.config, self.weight
        mode = cfg.weight_mode
        if grad is None or mode is WeightMode.FP:
            return grad
        if mode is WeightMode.XNOR_TENSOR:
            return grad * _window(w, cfg.tensor_clip * self.alpha)
        straight = grad * _window(w, cfg.weight_clip)
        if mode is WeightMode.SIGN or (mode is WeightMode.BIREAL_CHANNEL
                                       and not cfg.magnitude_aware):
            return straight
        sign = _sign(w)
        through_alpha = sign * F.mean(sign * grad, axis=filter_axes(w), keepdims=True)
        result = self.alpha * straight + through_alpha
        if mode is WeightMode.XNOR_CHANNEL and cfg.legacy_xnor_grad_scale:
            per_filter = int(np.prod(w.shape[-3:]))
            result = result * (per_filter * (1.0 - 1.0 / w.shape[-3]))
        return result


def sign_ste(x, clip=1.0):
    return SignSTE(clip)(x)


def approx_sign(x):
    return ApproxSign()(x)


def binarize_weight(weight, config):
    return BinarizeWeight(config)(weight)
