"""Faster conv gradients on CPU, for training.

MegEngine 1.13's CPU kernels for a convolution's gradients are much slower than its forward
conv (A0's stage 1 at 224x224, 3x3 48->48 on 56x56, batch 32, 2 threads, on a loaded machine:
forward 51 ms, data gradient 132 ms, weight gradient several seconds), and they dominated a
training step. ``enable`` makes each eligible ``Conv2d`` of a model compute its forward pass with
MegEngine's own conv and its gradients by other routes, in one custom autodiff ``Function``:

* data gradient, stride 1: the forward conv of ``dy`` with the kernel flipped and its in/out
  axes swapped (``dx = conv(dy, flip(W)^T, padding=k-1-p)``), which is MegEngine's fast kernel;
  other strides: MegEngine's own data-gradient kernel.
* weight gradient, "shifted matmuls": for each kernel tap (i, j), ``dW[:, :, i, j] =
  sum_n dy_n (O, L) @ x_n(shifted)^T (L, C)``. With a stride of 2 the input is split into its
  four stride phases first, so that every tap reads one phase shifted by -1, 0 or +1 pixels;
  a shift is a slice of the flattened image (rows and columns flattened into L) and the pixels
  that would wrap around a row are zeroed by a column mask. No im2col matrix is built.
  Small outputs (fewer than ``SHIFTED_MIN_OUTPUT`` pixels, where the many small products cost
  more than they save) and shapes where the phases do not tile the input (odd sizes with
  stride 2): the im2col product
  ``dW = dY (O, N*L) @ im2col(X) (N*L, I*kh*kw)``.

Convs whose output has at most ``SMALL_OUTPUT`` pixels per image (the deep stages of a model
run at 32x32, with 2x2 and 1x1 maps) compute the forward pass as the im2col product instead,
and autodiff differentiates it: MegEngine's CPU conv kernels are 8-17x slower there (measured:
192->1280 channels, 2x2 -> 1x1, batch 32: 0.39 s vs 0.047 s), while on larger maps they win.

All routes equal MegEngine's own gradients to float rounding (tests/test_fastconv.py, also
against finite differences). Eligible: groups == 1, dilation 1, zero padding. Weights, names
and checkpoints are unchanged. ``enable`` changes nothing on a GPU device (cuDNN is used).
"""
import functools

import numpy as np

import megengine as mge
import megengine.functional as F
import megengine.module as M
from megengine.autodiff import Function
from megengine.core._imperative_rt.core2 import apply
from megengine.core.ops import builtin
from megengine.core.tensor.utils import astensor1d
from megengine.functional.debug_param import get_execution_strategy

from model.layers import pair


SMALL_OUTPUT = 4
SHIFTED_MIN_OUTPUT = 64  # below this many output pixels per image, im2col's one product wins


class ConvWithFastGrads(Function):
    """``conv2d(x, weight)`` (no bias, groups 1, dilation 1) with the gradients above."""

    def __init__(self, stride, padding):
        super().__init__()
        self.stride, self.padding = pair(stride), pair(padding)

    def forward(self, x, weight):
        self.saved = x, weight
        return F.conv2d(x, weight, stride=self.stride, padding=self.padding)

    def backward(self, dy):
        x, weight = self.saved
        self.saved = None
        return (data_grad(dy, weight, x.shape, self.stride, self.padding),
                weight_grad(x, dy, weight.shape, self.stride, self.padding))


def data_grad(dy, weight, x_shape, stride, padding):
    """d(loss)/dx of ``conv2d(x, weight, stride, padding)`` given ``dy``."""
    kh, kw = weight.shape[2:]
    if stride == (1, 1):
        flipped = weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
        return F.conv2d(dy, flipped, padding=(kh - 1 - padding[0], kw - 1 - padding[1]))
    # MegEngine's own data-gradient kernel, told the input's shape (F.conv_transpose2d in 1.13
    # ignores a width-only output padding).
    op = builtin.ConvolutionBackwardData(stride_h=stride[0], stride_w=stride[1],
                                         pad_h=padding[0], pad_w=padding[1], dilate_h=1,
                                         dilate_w=1, strategy=get_execution_strategy())
    return apply(op, weight, dy, astensor1d(x_shape, dy))[0]


def weight_grad(x, dy, weight_shape, stride, padding):
    """d(loss)/dW of ``conv2d(x, W, stride, padding)`` given ``dy``: shifted matmuls, or the
    im2col product where the stride phases do not tile ``x``."""
    taps = _taps(weight_shape[2:], stride, padding, x.shape[2:], dy.shape[2:])
    if taps is None or dy.shape[2] * dy.shape[3] < SHIFTED_MIN_OUTPUT:
        return im2col_weight_grad(x, dy, weight_shape, stride, padding)
    n, o, oh, ow = dy.shape
    length = oh * ow
    d = dy.reshape(n, o, length)
    sources = {}
    grads = []
    for (phase_h, shift_h), (phase_w, shift_w) in taps:
        key = (phase_h, phase_w, shift_w)
        if key not in sources:
            sources[key] = _phase(x, stride, phase_h, phase_w, shift_w, oh, ow)
        src = sources[key]
        delta = shift_h * ow + shift_w
        lo, hi = max(0, -delta), length - max(0, delta)
        if hi <= lo:  # the tap never lands inside the image
            grads.append(F.zeros((o, x.shape[1]), dtype=dy.dtype))
            continue
        grads.append(F.matmul(d[:, :, lo:hi], src[:, :, lo + delta:hi + delta],
                              transpose_b=True).sum(0))
    return F.stack(grads, 2).reshape(weight_shape)


def _taps(kernel, stride, padding, in_size, out_size):
    """For each tap (i, j), row-major: ((phase_h, shift_h), (phase_w, shift_w)) such that the
    tap reads phase ``x[phase_h::s, phase_w::s]`` at output position + shift; None when the
    phases do not all have the output's size (then the shifted route does not apply)."""
    per_axis = []
    for k, s, p, size, out in zip(kernel, stride, padding, in_size, out_size):
        axis = []
        for i in range(k):
            phase, shift = (i - p) % s, (i - p) // s
            if len(range(phase, size, s)) != out or abs(shift) >= max(out, 2):
                return None
            axis.append((phase, shift))
        per_axis.append(axis)
    return [(a, b) for a in per_axis[0] for b in per_axis[1]]


def _phase(x, stride, phase_h, phase_w, shift_w, oh, ow):
    """``x[:, :, phase_h::sh, phase_w::sw]`` flattened to (N, C, oh*ow), with the columns that a
    row shift of ``shift_w`` would wrap onto zeroed."""
    n, c = x.shape[:2]
    if stride != (1, 1):
        x = x[:, :, phase_h::stride[0], phase_w::stride[1]]
    if shift_w:
        mask = np.ones((1, 1, 1, ow), dtype=np.float32)
        if shift_w < 0:
            mask[..., ow + shift_w:] = 0
        else:
            mask[..., :shift_w] = 0
        x = x * mge.tensor(mask, device=x.device)
    return x.reshape(n, c, oh * ow)


def im2col_weight_grad(x, dy, weight_shape, stride, padding):
    cols, _ = _im2col(x, weight_shape[2:], padding, stride)
    dy = dy.transpose(1, 0, 2, 3).reshape(dy.shape[1], -1)
    return F.matmul(dy, cols).reshape(weight_shape)


def _im2col(x, kernel, padding, stride):
    """(N*OH*OW, C*kh*kw) patches and the output's (N, OH, OW)."""
    cols = F.sliding_window(x, kernel, padding=padding, stride=stride)
    n, c, oh, ow, kh, kw = cols.shape
    return cols.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw), (n, oh, ow)


def _output_pixels(conv, inp):
    size = 1
    for dim, k, s, p in zip(inp.shape[2:], pair(conv.kernel_size), pair(conv.stride),
                            pair(conv.padding)):
        size *= (dim + 2 * p - k) // s + 1
    return size



def _calc_conv(conv, inp, weight, bias):
    if _output_pixels(conv, inp) <= SMALL_OUTPUT:
        # One 2-D product for the whole batch (a batched W @ patches_n would broadcast W to
        # every image: 3.9x slower for A0 at 32x32, batch 64, measured side by side).
        cols, (n, oh, ow) = _im2col(inp, conv.kernel_size, conv.padding, conv.stride)
        out = F.matmul(cols, weight.reshape(weight.shape[0], -1), transpose_b=True)
        out = out.reshape(n, oh, ow, -1).transpose(0, 3, 1, 2)
    else:
        out = ConvWithFastGrads(conv.stride, conv.padding)(inp, weight)
    return out if bias is None else out + bias


def eligible(module):
    return (type(module) is M.Conv2d and module.groups == 1
            and tuple(pair(module.dilation)) == (1, 1) and module.padding_mode == "zeros")


def on_cpu(device=None):
    """Whether ``device`` (default: MegEngine's default device) computes on the CPU; MegEngine's
    ``xpux`` is the GPU when CUDA is usable."""
    from common.device import cuda_available

    device = mge.get_default_device() if device is None else device
    if device.startswith("xpu"):
        return not cuda_available()
    return not device.startswith("gpu")


def enable(model, device=None):
    """Route the gradients of ``model``'s eligible convs as above, on a CPU ``device`` only
    (default: MegEngine's default device): the routes work around MegEngine's CPU kernels, and
    on a GPU cuDNN's own convolutions are the fast ones. Returns the number of convs changed
    (0 on a GPU)."""
    if not on_cpu(device):
        return 0
    count = 0
    for _, module in model.named_modules():
        if eligible(module):
            module.calc_conv = functools.partial(_calc_conv, module)
            count += 1
    return count
