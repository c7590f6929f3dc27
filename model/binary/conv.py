"""``BinaryConv2d``: binarize the input, binarize the latent weight, then a float convolution.

The latent (full-precision) weight is the parameter ``weight``, in MegEngine's layout:
``(out, in, kh, kw)``, or ``(groups, out/groups, in/groups, kh, kw)`` when ``groups > 1`` — the
same as ``megengine.module.Conv2d``. Groups and dilation are real (aw_nas asserted both to 1).

Padding: the binarized input is padded with ``config.pad_value`` (0 as aw_nas: border taps
contribute nothing; -1 as BMXNet: border taps are binary too). A non-zero value is padded
explicitly with ``F.nn.pad`` and the conv itself then runs without padding.

Latent weights are clamped to [-1, 1] by ``after_optimizer_step()``, which the training loop
calls after every optimizer step (``training.hooks.after_optimizer_step``); aw_nas instead
clamped the parameter in place inside every forward, eval included.
"""
import math

import megengine.functional as F
import megengine.module as M
from megengine import Parameter

import numpy as np

from ..layers import pair
from .config import ActMode, BinaryConvConfig
from .ste import approx_sign, binarize_weight, sign_ste



def binarize_activation(x, config):
    if config.act_mode is ActMode.SIGN:
        return sign_ste(x, config.act_clip)
    if config.act_mode is ActMode.APPROX_SIGN:
        return approx_sign(x)
    return x


class BinaryConv2d(M.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, config=BinaryConvConfig()):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError("channels (%d in, %d out) must be divisible by groups=%d"
                             % (in_channels, out_channels, groups))
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = pair(kernel_size), pair(stride)
        self.padding, self.dilation = pair(padding), pair(dilation)
        self.config = config
        kh, kw = self.kernel_size
        if groups == 1:
            shape = (out_channels, in_channels, kh, kw)
        else:
            shape = (groups, out_channels // groups, in_channels // groups, kh, kw)
        # Xavier-normal, as aw_nas, with PyTorch's fans for an (out, in/groups, kh, kw) kernel.
        fan_in, fan_out = in_channels // groups * kh * kw, out_channels * kh * kw
        self.weight = Parameter(np.zeros(shape, np.float32))
        M.init.normal_(self.weight, 0.0, math.sqrt(2.0 / (fan_in + fan_out)))
        self.bias = Parameter(np.zeros((1, out_channels, 1, 1), np.float32)) \
            if config.bias else None

    def forward(self, x, shift=False):
        """``shift=True`` samples the grid offset by one pixel down and right (the second half
        of a factorized stride-2 reduction); on an odd size, its last window reaches one row
        (column) further into the padding, so both halves give ``ceil(H/2)`` rows."""
        cfg = self.config
        xb = binarize_activation(x, cfg)
        wb = binarize_weight(self.weight, cfg)
        padding = self.padding
        if cfg.pad_value != 0 or shift:
            (ph, pw) = self.padding
            eh, ew = (x.shape[2] % 2, x.shape[3] % 2) if shift else (0, 0)
            xb = F.nn.pad(xb, ((0, 0), (0, 0), (ph, ph + eh), (pw, pw + ew)),
                          constant_value=cfg.pad_value)
            if shift:  # pad first, then drop the first row/column: never an empty tensor
                xb = xb[:, :, 1:, 1:]
            padding = 0
        return F.conv2d(xb, wb, self.bias, self.stride, padding, self.dilation, self.groups)

    def after_optimizer_step(self):
        """Clamp the latent weight to [-1, 1] in place (not in ``fp`` weight mode)."""
        if self.config.binary_weights:
            self.weight[...] = F.clip(self.weight, -1.0, 1.0)

    def op_counts(self, inputs, output):
        """Multiply-accumulates: BOPs when both operands are binary, FLOPs otherwise."""
        kh, kw = self.kernel_size
        macs = int(np.prod(output.shape)) * (self.in_channels // self.groups) * kh * kw
        binary = self.config.binary_weights and self.config.binary_acts
        return {"bops": macs} if binary else {"flops": macs}

    def _module_info_string(self):
        c = self.config
        return "%d, %d, kernel_size=%s, stride=%s, padding=%s, groups=%d, weight=%s, act=%s" % (
            self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
            self.groups, c.weight_mode.value, c.act_mode.value)
