"""Structural reparameterization: the arithmetic that turns parallel branches into one conv.

Every branch of a RepVGG block is linear up to its BatchNorm, and in eval mode BN is an affine map
per output channel, so each branch ``BN(conv_K(x))`` equals ``conv_{K*t}(x) + (beta - mean*t)``
with ``t = gamma / sqrt(var + eps)``. Kernels of equal size and stride add, a 1x1 kernel is a 3x3
kernel that is zero off-centre, and the identity is a 3x3 kernel with a single 1 at the centre
of each channel's own input. Summing them gives one 3x3 conv with bias.

Kernels here are always in MegEngine's layout: ``(out, in, kh, kw)`` for groups == 1 and
``(groups, out/groups, in/groups, kh, kw)`` for grouped convs (PyTorch keeps the 4-D
``(out, in/groups, kh, kw)`` either way). Output channel ``o`` of a grouped kernel sits at
``[o // (out/groups), o % (out/groups)]``, so a per-channel vector reshaped to the kernel's
leading dims lines up with it.
"""
import copy

import numpy as np

import megengine as mge
import megengine.functional as F


def _per_out_channel(vector, kernel):
    """Reshape a length-``out`` vector so it broadcasts over ``kernel``'s output channels."""
    leading = kernel.shape[:-3]  # (out,) or (groups, out/groups)
    return vector.reshape(*leading, 1, 1, 1)


def bn_scale_shift(bn):
    """Eval-mode BatchNorm as ``y = t*x + s``; returns ``(t, s)`` as 1-D tensors."""
    gamma = bn.weight.reshape(-1)
    beta = bn.bias.reshape(-1)
    mean = bn.running_mean.reshape(-1)
    std = F.sqrt(bn.running_var.reshape(-1) + bn.eps)
    t = gamma / std
    return t, beta - mean * t


def fuse_bn(kernel, bn, bias=None):
    """Fold ``bn`` into the conv ``kernel`` (with 1-D ``bias``, or none): returns
    ``(kernel', bias')``, bias' 1-D. ``BN(conv_K(x) + b) = conv_{K*t}(x) + (t*b + shift)``."""
    t, shift = bn_scale_shift(bn)
    if bias is not None:
        shift = shift + bias * t
    return kernel * _per_out_channel(t, kernel), shift


def pad_to(kernel, size):
    """Zero-pad a centred odd-sized kernel to ``size`` x ``size`` (e.g. 1x1 -> 3x3)."""
    border = (size - kernel.shape[-1]) // 2
    if border == 0:
        return kernel
    no_pad = [(0, 0)] * (kernel.ndim - 2)
    return F.nn.pad(kernel, no_pad + [(border, border), (border, border)])


def identity_kernel(channels, groups=1, size=3):
    """The ``size`` x ``size`` kernel of ``y = x`` for a conv with ``groups`` groups.

    Within group ``g`` output channel ``j`` reads input channel ``j`` of the same group, so the
    kernel is an identity matrix per group at the spatial centre, laid out as MegEngine expects.
    """
    if channels % groups:
        raise ValueError("channels (%d) must be divisible by groups (%d)" % (channels, groups))
    per_group = channels // groups
    kernel = np.zeros((groups, per_group, per_group, size, size), dtype=np.float32)
    centre = size // 2
    kernel[:, np.arange(per_group), np.arange(per_group), centre, centre] = 1.0
    if groups == 1:
        kernel = kernel[0]
    return mge.tensor(kernel)


def convert_to_deploy(model, inplace=False):
    """Switch every reparameterizable part of ``model`` to its deploy form.

    Duck-typed like the official ``repvgg_model_convert``: any module with a ``switch_to_deploy``
    method takes part, so new fusable blocks need no change here. The model is deep-copied unless
    ``inplace``; converting a model that is already in deploy form changes nothing.
    """
    if not inplace:
        model = copy.deepcopy(model)
    for _, module in list(model.named_modules()):
        if hasattr(module, "switch_to_deploy"):
            module.switch_to_deploy()
    return model


def is_deploy(model):
    """True when no module of ``model`` still has train-time branches to fuse."""
    return not any(
        getattr(m, "deploy", True) is False for _, m in model.named_modules()
        if hasattr(m, "switch_to_deploy")
    )
