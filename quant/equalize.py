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


def _out_view(kernel):
    """(out, rest) view of a conv kernel in MegEngine's layout."""
    return kernel.reshape(-1, int(np.prod(kernel.shape[-3:])))


def output_ranges(kernel):
    return np.abs(_out_view(kernel)).max(axis=1)


def input_ranges(weight, groups=1):
    """Per input channel, max |w| of a conv kernel (MegEngine layout) or a Linear weight."""
    if weight.ndim == 2:  # Linear (out, in)
        return np.abs(weight).max(axis=0)
    if groups == 1:
        return np.abs(weight).max(axis=(0, 2, 3))
    g, _, in_g = weight.shape[:3]
    return np.abs(weight).max(axis=(1, 3, 4)).reshape(g * in_g)


def scale_inputs(weight, scale, groups=1):
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
    kernels = [layer.kernel.astype(np.float64) for layer in layers]
    biases = [layer.bias.astype(np.float64) for layer in layers]
    weight = linear[0].astype(np.float64)
    for _ in range(sweeps):
        largest = 0.0
        for i in range(len(layers)):
            last = i + 1 == len(layers)
            nxt = weight if last else kernels[i + 1]
            groups = 1 if last else layers[i + 1].groups
            r1, r2 = output_ranges(kernels[i]), input_ranges(nxt, groups)
            s = np.ones_like(r1)
            ok = (r1 > 0) & (r2 > 0)
            s[ok] = np.sqrt(r1[ok] / r2[ok])
            kernels[i] = kernels[i] / s.reshape(kernels[i].shape[:-3] + (1, 1, 1))
            biases[i] = biases[i] / s
            if last:
                weight = scale_inputs(weight, s)
            else:
                kernels[i + 1] = scale_inputs(nxt, s, groups)
            largest = max(largest, float(np.abs(np.log(s)).max()))
        if largest < tolerance:
            break
    out = [dataclasses.replace(layer, kernel=k.astype(np.float32), bias=b.astype(np.float32))
           for layer, k, b in zip(layers, kernels, biases)]
    return out, (weight.astype(np.float32), linear[1].copy())
