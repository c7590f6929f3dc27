"""Bit-packed binary convolution kernels, compiled by numba (LLVM) for the CPU they run on.

A binary value is one bit: 1 for -1, 0 for +1 (so ``sign(0) = +1`` and NaN, as in
``model.binary.ste._sign``, binarize to -1: the bit is ``not (x >= 0)``). Activations are NHWC
float32; ``pack_signs`` packs each pixel's ``C/groups`` channels of each group into
``K = ceil(C/groups / 64)`` 64-bit words, the unused high bits of the last word left 0 (weights'
likewise, so they XOR to 0 and count nothing).

For a pixel word ``x`` and a weight word ``w`` the dot product of the ±1 vectors they hold is
``bits - 2 * popcount(x ^ w)`` (a differing bit is a product of -1). ``binary_conv`` sums
``popcount(x ^ w)`` over the taps and words of each output (LLVM's ``ctpop``: the POPCNT
instruction, AVX-512 VPOPCNTQ where the CPU has it, a vector nibble lookup on AVX2; numba
compiles for the host CPU, nothing assumes AVX-512), then writes
``(bits - 2*count) * scale[o] + shift[o] [+ residual]`` (ReLU optional): the weight scale
(``α``), bias and a following BatchNorm folded into ``scale``/``shift``, a shortcut added.

Padding follows ``BinaryConvConfig.pad_value`` exactly: ``PAD_ZERO`` (0) skips a padded tap,
which then counts for nothing (neither +1 nor -1); ``PAD_MINUS`` (-1) and ``PAD_PLUS`` (+1) count
it as a binary input of that value, ``C - 2*neg(w)`` ... from the per-tap count of the filter's
-1 bits (``wneg``). The factorized reduction's shifted half (``BinaryConv2d.forward(shift=True)``)
is ``offset=1``: windows start one row and column further, and the taps past the bottom/right
edge are padding.

Every kernel is ``cache=True``: compiled once per CPU model and numba version into numba's cache
(``__pycache__`` beside this file, or the user's cache folder where that is read-only).
"""
import numpy as np

import numba
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

WORD_BITS = 64
PAD_ZERO, PAD_MINUS, PAD_PLUS = 0, -1, 1
PAD_MODES = {0.0: PAD_ZERO, -1.0: PAD_MINUS, 1.0: PAD_PLUS}


@intrinsic
def _popcount(typingctx, x):
    """LLVM ``ctpop`` on a 64-bit word (vectorized by LLVM inside loops)."""
    if not isinstance(x, types.Integer) or x.bitwidth != 64:
        return None
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])
    return sig, codegen


def words_for(channels):
    """64-bit words holding ``channels`` bits."""
    return -(-channels // WORD_BITS)


@njit(parallel=True, cache=True)
def _pack(x, groups, per_group, words, out):
    # x: (P, C) float32, out: (P, groups, words) uint64
    for p in prange(x.shape[0]):
        for g in range(groups):
            base = g * per_group
            for k in range(words):
                word = np.uint64(0)
                lo = k * 64
                hi = min(lo + 64, per_group)
                for j in range(lo, hi):
                    if not x[p, base + j] >= 0:
                        word |= np.uint64(1) << np.uint64(j - lo)
                out[p, g, k] = word


def pack_signs(x, groups=1):
    """NHWC float32 ``x`` -> ``(N, H, W, groups, K)`` uint64, one bit per channel (1 = -1)."""
    n, h, w, c = x.shape
    per_group = c // groups
    words = words_for(per_group)
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(n * h * w, c)
    out = np.empty((n * h * w, groups, words), np.uint64)
    _pack(flat, groups, per_group, words, out)
    return out.reshape(n, h, w, groups, words)


def pack_weight(signs):
    """``(groups, O/g, C/g, kh, kw)`` booleans (True = -1) -> ``(groups, kh, kw, K, O/g)``
    uint64 words, the layout ``binary_conv`` reads (output channels innermost)."""
    g, og, cg, kh, kw = signs.shape
    words = words_for(cg)
    padded = np.zeros((g, og, words * WORD_BITS, kh, kw), bool)
    padded[:, :, :cg] = signs
    bits = padded.reshape(g, og, words, WORD_BITS, kh, kw).astype(np.uint64)
    weights = np.uint64(1) << np.arange(WORD_BITS, dtype=np.uint64)
    packed = (bits * weights[None, None, None, :, None, None]).sum(axis=3, dtype=np.uint64)
    return np.ascontiguousarray(packed.transpose(0, 3, 4, 2, 1))  # (g, kh, kw, K, og)


def negatives_per_tap(signs):
    """``(groups, kh, kw, O/g)`` int64: how many of each filter's weights at a tap are -1."""
    return np.ascontiguousarray(signs.sum(axis=2).transpose(0, 2, 3, 1)).astype(np.int64)


def out_size(size, kernel, stride, padding, dilation, offset=0):
    """Output length of a binary conv along one axis; ``offset=1`` is the shifted half of a
    factorized reduction (one row/column of extra padding at the end on odd sizes)."""
    extra = size % 2 if offset else 0
    span = dilation * (kernel - 1) + 1
    return (size + 2 * padding + extra - offset - span) // stride + 1


@njit(parallel=True, cache=True)
def _binary_conv(xp, wbits, wneg, scale, shift, res, out, stride_h, stride_w, pad_h, pad_w,
                 dil_h, dil_w, offset, pad_mode, per_group, relu, has_res):
    n_batch, in_h, in_w, groups, words = xp.shape
    _, k_h, k_w, _, og = wbits.shape
    _, out_h, out_w, _ = out.shape
    # one accumulator row per output row: an np.empty inside the prange body may be hoisted
    # out of it by numba and then shared between threads
    accs = np.empty((n_batch * out_h, og), np.uint64)
    for row in prange(n_batch * out_h):
        n = row // out_h
        oh = row - n * out_h
        acc = accs[row]
        for ow in range(out_w):
            for g in range(groups):
                acc[:] = 0
                taps = 0
                for kh in range(k_h):
                    ih = oh * stride_h - pad_h + offset + kh * dil_h
                    for kw in range(k_w):
                        iw = ow * stride_w - pad_w + offset + kw * dil_w
                        if 0 <= ih < in_h and 0 <= iw < in_w:
                            taps += 1
                            for k in range(words):
                                x = xp[n, ih, iw, g, k]
                                for o in range(og):
                                    acc[o] += _popcount(x ^ wbits[g, kh, kw, k, o])
                        elif pad_mode == -1:
                            # a -1 input differs from every +1 weight
                            taps += 1
                            for o in range(og):
                                acc[o] += np.uint64(per_group - wneg[g, kh, kw, o])
                        elif pad_mode == 1:
                            taps += 1
                            for o in range(og):
                                acc[o] += np.uint64(wneg[g, kh, kw, o])
                bits = taps * per_group
                for o in range(og):
                    c = g * og + o
                    v = np.float32(bits - 2 * np.int64(acc[o])) * scale[c] + shift[c]
                    if has_res:
                        v += res[n, oh, ow, c]
                    if relu and v < 0:
                        v = np.float32(0)
                    out[n, oh, ow, c] = v


def binary_conv(packed, wbits, wneg, scale, shift, per_group, stride=(1, 1), padding=(0, 0),
                dilation=(1, 1), offset=0, pad_mode=PAD_ZERO, relu=False, residual=None):
    """The binary conv of packed NHWC activations (``pack_signs``) with packed weights
    (``pack_weight``): NHWC float32 ``count * scale + shift [+ residual]`` per output channel,
    ReLU optional."""
    n, h, w, groups, words = packed.shape
    _, kh, kw, _, og = wbits.shape
    oh = out_size(h, kh, stride[0], padding[0], dilation[0], offset)
    ow = out_size(w, kw, stride[1], padding[1], dilation[1], offset)
    out = np.empty((n, oh, ow, groups * og), np.float32)
    if residual is not None and residual.shape != out.shape:
        raise ValueError("residual of shape %s for an output of shape %s"
                         % (residual.shape, out.shape))
    res = (np.ascontiguousarray(residual, np.float32) if residual is not None
           else np.zeros((1, 1, 1, 1), np.float32))
    _binary_conv(packed, wbits, wneg, scale, shift, res, out, stride[0], stride[1], padding[0],
                 padding[1], dilation[0], dilation[1], offset, pad_mode, per_group, bool(relu),
                 residual is not None)
    return out


def set_threads(threads):
    """Threads the kernels use: ``threads`` capped at numba's pool size (the CPU count)."""
    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))


# -- the float parts around the binary convs --------------------------------------------------
@njit(parallel=True, cache=True)
def _float_conv(xp, w, scale, shift, out, stride_h, stride_w, dil_h, dil_w, relu):
    # xp: padded NHWC input; w: (groups, kh, kw, C/g, O/g); 4 output columns share each weight
    # load (the innermost loop, over output channels, is vectorized)
    n_batch = xp.shape[0]
    groups, k_h, k_w, cg, og = w.shape
    _, out_h, out_w, _ = out.shape
    accs = np.empty((n_batch * out_h, 4, og), np.float32)
    for row in prange(n_batch * out_h):
        n = row // out_h
        oh = row - n * out_h
        acc = accs[row]
        for g in range(groups):
            for ow0 in range(0, out_w, 4):
                block = min(4, out_w - ow0)
                acc[:, :] = 0
                for kh in range(k_h):
                    ih = oh * stride_h + kh * dil_h
                    for kw in range(k_w):
                        iw = ow0 * stride_w + kw * dil_w
                        for c in range(cg):
                            ci = g * cg + c
                            if block == 4:
                                x0 = xp[n, ih, iw, ci]
                                x1 = xp[n, ih, iw + stride_w, ci]
                                x2 = xp[n, ih, iw + 2 * stride_w, ci]
                                x3 = xp[n, ih, iw + 3 * stride_w, ci]
                                for o in range(og):
                                    wv = w[g, kh, kw, c, o]
                                    acc[0, o] += x0 * wv
                                    acc[1, o] += x1 * wv
                                    acc[2, o] += x2 * wv
                                    acc[3, o] += x3 * wv
                            else:
                                for b in range(block):
                                    xb = xp[n, ih, iw + b * stride_w, ci]
                                    for o in range(og):
                                        acc[b, o] += xb * w[g, kh, kw, c, o]
                for b in range(block):
                    for o in range(og):
                        c = g * og + o
                        v = acc[b, o] * scale[c] + shift[c]
                        if relu and v < 0:
                            v = np.float32(0)
                        out[n, oh, ow0 + b, c] = v


def float_conv(xp, w, scale, shift, stride=(1, 1), dilation=(1, 1), relu=False):
    """A float conv of the already padded NHWC ``xp`` with ``w`` ``(groups, kh, kw, C/g, O/g)``:
    NHWC ``conv * scale + shift`` (ReLU optional), parallel over output rows."""
    n, h, wd, c = xp.shape
    groups, kh, kw, cg, og = w.shape
    if groups * cg != c:
        raise ValueError("a conv for %d input channels got %d" % (groups * cg, c))
    oh = (h - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if oh < 1 or ow < 1:
        raise ValueError("a %dx%d input is too small for a %dx%d kernel" % (h, wd, kh, kw))
    out = np.empty((n, oh, ow, groups * og), np.float32)
    _float_conv(np.ascontiguousarray(xp, np.float32), w, scale, shift, out, stride[0],
                stride[1], dilation[0], dilation[1], bool(relu))
    return out


@njit(parallel=True, cache=True)
def _affine(x, scale, shift, relu, out):
    for p in prange(x.shape[0]):
        for c in range(x.shape[1]):
            v = x[p, c] * scale[c] + shift[c]
            out[p, c] = np.float32(0) if relu and v < 0 else v


def affine(x, scale, shift, relu=False):
    """``x * scale + shift`` per channel (the last axis), ReLU optional; parallel."""
    flat = np.ascontiguousarray(x, np.float32).reshape(-1, x.shape[-1])
    out = np.empty_like(flat)
    _affine(flat, scale, shift, bool(relu), out)
    return out.reshape(x.shape)


@njit(parallel=True, cache=True)
def _add(a, b, out):
    for i in prange(a.shape[0]):
        out[i] = a[i] + b[i]


def add(a, b):
    """``a + b`` of two float32 arrays of one shape; parallel."""
    a = np.ascontiguousarray(a, np.float32)
    out = np.empty_like(a)
    _add(a.reshape(-1), np.ascontiguousarray(b, np.float32).reshape(-1), out.reshape(-1))
    return out
