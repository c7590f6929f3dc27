"""Faster conv weight gradients on CPU, for training.

MegEngine 1.13's CPU kernel for a convolution's weight gradient is several times slower than
the forward conv (measured: 3x3, 48->48 channels, 8x8, batch 64: 0.25 s vs 0.013 s), and it
dominates a training step. The weight gradient is a plain matrix product,
``dW = dY (O, N*L) @ im2col(X) (N*L, I*kh*kw)``, which MegEngine computes quickly. ``enable``
makes each eligible ``Conv2d`` of a model compute

    y = conv2d(x, W.detach()) + WeightGrad(x.detach(), W)

where ``WeightGrad`` returns zeros in the forward pass and that matrix product in the backward
pass: outputs and input gradients are MegEngine's own, only dW takes the faster route.
Convs whose output has at most ``SMALL_OUTPUT`` pixels per image (the deep stages of a model
run at 32x32, with 2x2 and 1x1 maps) compute the forward pass as the im2col product too, and
autodiff differentiates it: MegEngine's CPU conv kernels are 8-17x slower there (measured:
192->1280 channels, 2x2 -> 1x1, batch 32: 0.39 s vs 0.047 s), while on larger maps they win.

Eligible: groups == 1, dilation 1, zero padding. Weights, names and checkpoints are unchanged.
"""
import functools

import megengine.functional as F
import megengine.module as M
from megengine.autodiff import Function


SMALL_OUTPUT = 4


class _WeightGrad(Function):
    def __init__(self, stride, padding, kernel):
        super().__init__()
        self.stride, self.padding, self.kernel = stride, padding, kernel

    def forward(self, x, weight):
        self.x = x
        self.weight_shape = weight.shape
        out = F.conv2d(x[:1], weight, stride=self.stride, padding=self.padding)
        return F.zeros((x.shape[0],) + tuple(out.shape[1:]), dtype=x.dtype)

    def backward(self, dy):
        cols, _ = _im2col(self.x, self.kernel, self.padding, self.stride)
        dy = dy.transpose(1, 0, 2, 3).reshape(dy.shape[1], -1)
        dw = F.matmul(dy, cols).reshape(self.weight_shape)
        self.x = None
        return None, dw


def _im2col(x, kernel, padding, stride):
    """(N*OH*OW, C*kh*kw) patches and the output's (N, OH, OW)."""
    cols = F.sliding_window(x, kernel, padding=padding, stride=stride)
    n, c, oh, ow, kh, kw = cols.shape
    return cols.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw), (n, oh, ow)


def _output_pixels(conv, inp):
    size = 1
    for dim, k, s, p in zip(inp.shape[2:], _pair(conv.kernel_size), _pair(conv.stride),
                            _pair(conv.padding)):
        size *= (dim + 2 * p - k) // s + 1
    return size


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _calc_conv(conv, inp, weight, bias):
    if _output_pixels(conv, inp) <= SMALL_OUTPUT:
        cols, (n, oh, ow) = _im2col(inp, conv.kernel_size, conv.padding, conv.stride)
        out = F.matmul(cols, weight.reshape(weight.shape[0], -1), transpose_b=True)
        out = out.reshape(n, oh, ow, -1).transpose(0, 3, 1, 2)
        return out if bias is None else out + bias
    out = F.conv2d(inp, weight.detach(), bias, conv.stride, conv.padding, conv.dilation,
                   conv.groups, conv.conv_mode, conv.compute_mode)
    return out + _WeightGrad(conv.stride, conv.padding, conv.kernel_size)(inp.detach(), weight)


def eligible(module):
    return (type(module) is M.Conv2d and module.groups == 1
            and tuple(module.dilation) == (1, 1) and module.padding_mode == "zeros")


def enable(model):
    """Route the weight gradients of ``model``'s eligible convs through the matmul; returns the
    number of convs changed."""
    count = 0
    for _, module in model.named_modules():
        if eligible(module):
            module.calc_conv = functools.partial(_calc_conv, module)
            count += 1
    return count
