"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight
Equalization and Bias Correction"), the stand-in for per-channel weight scales.

MegEngine 1.13's quantized dtypes carry one scale per tensor, so an int8 conv has one weight
scale for all its output channels. Fused RepVGG kernels have output channels whose ranges differ
by orders of magnitude (each channel is a sum of BN-scaled branches), and a per-tensor scale
wipes out the small ones: the main reason plain PTQ of RepVGG fails. Because ReLU is positively
homogeneous (``relu(x / s) = relu(x) / s`` for ``s > 0``), dividing output channel ``c`` of one
conv (kernel and bias) by ``s_c`` and multiplying input channel ``c`` of the next layer by
``s_c`` leaves the network's function unchanged. Choosing ``s_c = sqrt(r1_c / r2_c)``, with
``r1_c`` the range of output channel c of the first layer and ``r2_c`` that of input channel c
of the second, gives both the same range ``sqrt(r1_c * r2_c)``; sweeping over all neighbouring
pairs until nothing changes equalizes the whole chain. Global average pooling is linear, so the
last conv pairs with the classifier.
"""
import dataclasses

import numpy as np


def _channel_matrix(weight, groups=1):
    """``|w|`` maximised over the kernel window: (out, in) for a conv kernel (MegEngine layout,
    grouped kernels block-diagonal) or a Linear weight. Ranges only ever get multiplied by the
    scales below, so the sweeps run on this small matrix and the kernels are scaled once."""
    a = np.abs(weight.astype(np.float64))
    if a.ndim == 2:
        return a
    if groups == 1:
        return a.max(axis=(2, 3))
    g, og, ig = a.shape[:3]
    full = np.zeros((g * og, g * ig))
    for i in range(g):
        full[i * og:(i + 1) * og, i * ig:(i + 1) * ig] = a[i].max(axis=(2, 3))
    return full


def scale_inputs(weight, scale, groups=1):
    """``weight`` with input channel c multiplied by ``scale[c]``."""
    if weight.ndim == 2:
        return weight * scale[None, :]
    if groups == 1:
        return weight * scale[None, :, None, None]
    g, _, in_g = weight.shape[:3]
    return weight * scale.reshape(g, 1, in_g, 1, 1)


def equalize(layers, linear, sweeps=500, tolerance=1e-4):
    """Equalized copies ``(layers, linear)`` of a conv-ReLU chain (``quant.network.Layer``) and
    its classifier ``(weight, bias)``; the network computes the same function. Sweeps stop when
    no scale moves by more than ``tolerance`` (relative), i.e. ranges agree to ~2x that."""
    mats = [_channel_matrix(l.kernel, l.groups) for l in layers] + [_channel_matrix(linear[0])]
    totals = [np.ones(l.out_channels) for l in layers]  # output channel c of layer i divided by
    for _ in range(sweeps):
        largest = 0.0
        for i in range(len(layers)):
            r1, r2 = mats[i].max(axis=1), mats[i + 1].max(axis=0)
            s = np.ones_like(r1)
            ok = (r1 > 0) & (r2 > 0)
            s[ok] = np.sqrt(r1[ok] / r2[ok])
            mats[i] /= s[:, None]
            mats[i + 1] *= s[None, :]
            totals[i] *= s
            largest = max(largest, float(np.abs(np.log(s)).max()))
        if largest < tolerance:
            break
    out = []
    for i, layer in enumerate(layers):
        kernel = layer.kernel.astype(np.float64)
        if i > 0:
            kernel = scale_inputs(kernel, totals[i - 1], layer.groups)
        kernel = kernel / totals[i].reshape(kernel.shape[:-3] + (1, 1, 1))
        out.append(dataclasses.replace(layer, kernel=kernel.astype(np.float32),
                                       bias=(layer.bias / totals[i]).astype(np.float32)))
    weight = scale_inputs(linear[0].astype(np.float64), totals[-1])
    return out, (weight.astype(np.float32), linear[1].copy())
