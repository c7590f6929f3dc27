"""NumPy references for the binary-network tests, written independently of model/binary.

Kernels here are in PyTorch's layout ``(out, in/groups, kh, kw)``; MegEngine's grouped layout
``(groups, out/groups, in/groups, kh, kw)`` is reshaped to it with ``torch_layout``.
"""
import numpy as np


def torch_layout(w):
    w = np.asarray(w)
    return w.reshape((-1,) + w.shape[-3:]) if w.ndim == 5 else w


def np_sign(x):
    return np.where(x >= 0, 1.0, -1.0).astype(x.dtype)


def _padded(x, pad, value):
    return np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=value)


def np_conv2d(x, w, stride=1, pad=0, dilation=1, groups=1, pad_value=0.0):
    """Direct (loop) cross-correlation, float64."""
    x = _padded(np.asarray(x, np.float64), pad, pad_value)
    w = np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og = o // groups
    oh = (h - dilation * (kh - 1) - 1) // stride + 1
    ow = (wd - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, o, oh, ow))
    for oc in range(o):
        g = oc // og
        xs = x[:, g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dilation: i * dilation + stride * (oh - 1) + 1: stride,
                           j * dilation: j * dilation + stride * (ow - 1) + 1: stride]
                out[:, oc] += np.einsum("nchw,c->nhw", patch, w[oc, :, i, j])
    return out


def np_conv2d_grad_input(x_shape, w, grad_out, stride=1, pad=0, dilation=1, groups=1):
    """Gradient of sum(grad_out * conv(x)) with respect to x (the padding is cut off)."""
    n, c, h, wd = x_shape
    w = np.asarray(w, np.float64)
    o, cg, kh, kw = w.shape
    og = o // groups
    gx = np.zeros((n, c, h + 2 * pad, wd + 2 * pad))
    _, _, oh, ow = grad_out.shape
    for oc in range(o):
        g = oc // og
        for i in range(kh):
            for j in range(kw):
                sl = (slice(None), slice(g * cg, (g + 1) * cg),
                      slice(i * dilation, i * dilation + stride * (oh - 1) + 1, stride),
                      slice(j * dilation, j * dilation + stride * (ow - 1) + 1, stride))
                gx[sl] += grad_out[:, oc][:, None] * w[oc, :, i, j][None, :, None, None]
    return gx[:, :, pad:pad + h, pad:pad + wd]


def np_binarize_weight(w, mode):
    """Forward of each weight mode, float64, PyTorch layout."""
    w = np.asarray(w, np.float64)
    if mode == "fp":
        return w
    s = np_sign(w)
    if mode == "sign":
        return s
    if mode == "xnor_tensor":
        return np.abs(w).mean() * s
    return np.abs(w).mean(axis=(1, 2, 3), keepdims=True) * s  # xnor/bireal per channel
