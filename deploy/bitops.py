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

Every kernel is compiled for fixed signatures only (``_kernel``: C-order, aligned, writable
arrays of one dtype and rank, int64 sizes, booleans), when this module is imported; a call
that does not fit one is a ``TypeError``, never a new specialization, so no input, however it
was crafted, makes numba compile (and write) anything. The compiled code is cached outside the
source tree: in ``NUMBA_CACHE_DIR`` where the user sets it, else in
``$XDG_CACHE_HOME/repvgg-megengine/numba`` (``~/.cache/...``; created 0700), keyed by the CPU
and numba version; where no such folder can be written the kernels are compiled in memory on
each import (seconds) and nothing is written.
"""
import contextlib
import os

import numpy as np

import numba
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

from .bnn_format import PAD_MINUS, PAD_MODES, PAD_PLUS, PAD_ZERO, WORD_BITS  # noqa: F401
from .bnn_format import out_size, words_for  # noqa: F401  (the geometry the kernels follow)

CACHE_FOLDER = ("repvgg-megengine", "numba")


def _cache_dir():
    """The folder the kernels are cached in, created if need be; None where none is writable
    (then nothing is cached). Never beside the sources."""
    try:
        if numba.config.CACHE_DIR:  # the user's choice (NUMBA_CACHE_DIR)
            path = numba.config.CACHE_DIR
            os.makedirs(path, exist_ok=True)
        else:
            path = os.environ.get("XDG_CACHE_HOME", "")
            if not os.path.isabs(path):
                path = os.path.join(os.path.expanduser("~"), ".cache")
            os.makedirs(path, exist_ok=True)
            for part in CACHE_FOLDER:  # ours: private to the user
                path = os.path.join(path, part)
                os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError:
        return None
    return path if os.access(path, os.W_OK | os.X_OK) else None


@contextlib.contextmanager
def _numba_cache_dir(path):
    """numba's user cache folder (``NUMBA_CACHE_DIR``) while the kernels are decorated: the
    cache locator reads it then, once per kernel."""
    saved = numba.config.CACHE_DIR
    numba.config.CACHE_DIR = path
    try:
        yield
    finally:
        numba.config.CACHE_DIR = saved


def _kernel(*signatures):
    """``njit(parallel=True)`` compiled now for ``signatures`` only, cached in ``_cache_dir``."""
    def compile(fn):
        path = _cache_dir()
        if path is None:
            return njit(list(signatures), parallel=True)(fn)
        with _numba_cache_dir(path):
            return njit(list(signatures), parallel=True, cache=True)(fn)
    return compile


def _c(dtype, ndim):
    """A C-order array type of ``dtype`` and ``ndim``."""
    return types.Array(dtype, ndim, "C")


_F32, _U64, _I64, _BOOL = types.float32, types.uint64, types.int64, types.boolean


def _arg(a, dtype):
    """``a`` as the kernels take it: C-order, aligned, writable, of ``dtype`` (a copy only where
    it is not)."""
    a = np.asarray(a)
    if a.dtype == dtype and a.flags.c_contiguous and a.flags.aligned and a.flags.writeable:
        return a
    return np.array(a, dtype, order="C")


@intrinsic
def _popcount(typingctx, x):
    """LLVM ``ctpop`` on a 64-bit word (vectorized by LLVM inside loops)."""
    if not isinstance(x, types.Integer) or x.bitwidth != 64:
        return None
    sig = types.uint64(types.uint64)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])
    return sig, codegen


@_kernel((_c(_F32, 2), _I64, _I64, _I64, _c(_U64, 3)))
def _pack(x, groups, per_group, words, out):
    # x: (P, C) float32, out: (P, groups, words) uint64
    for p in prange(x.shape[0]):
        for g in range(groups):
            base = g * per_group
            for k in range(words):
                # a view indexed from 0, branch-free: LLVM vectorizes the loop (numba's
                # negative-index fix-up of base + j would keep it scalar)
                lo = base + k * 64
                xs = x[p, lo:base + min(k * 64 + 64, per_group)]
                word = np.uint64(0)
                for j in range(xs.shape[0]):
                    word |= np.uint64(not xs[j] >= 0) << np.uint64(j)
                out[p, g, k] = word


def pack_signs(x, groups=1):
    """NHWC float32 ``x`` -> ``(N, H, W, groups, K)`` uint64, one bit per channel (1 = -1)."""
    n, h, w, c = x.shape
    per_group = c // groups
    words = words_for(per_group)
    flat = _arg(x, np.float32).reshape(n * h * w, c)
    out = np.empty((n * h * w, groups, words), np.uint64)
    _pack(flat, int(groups), int(per_group), int(words), out)
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


@_kernel((_c(_U64, 5), _c(_U64, 5), _c(_I64, 4), _c(_F32, 1), _c(_F32, 1), _c(_F32, 4),
          _c(_F32, 4)) + (_I64,) * 9 + (_BOOL, _BOOL))
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
    res = (_arg(residual, np.float32) if residual is not None
           else np.zeros((1, 1, 1, 1), np.float32))
    sizes = (stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1], offset,
             pad_mode, per_group)
    _binary_conv(_arg(packed, np.uint64), _arg(wbits, np.uint64), _arg(wneg, np.int64),
                 _arg(scale, np.float32), _arg(shift, np.float32), res, out,
                 *[int(v) for v in sizes], bool(relu), residual is not None)
    return out


def set_threads(threads):
    """Threads the kernels use: ``threads`` capped at numba's pool size (the CPU count)."""
    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))


# -- the float parts around the binary convs --------------------------------------------------
@_kernel((_c(_F32, 4), _c(_F32, 5), _c(_F32, 1), _c(_F32, 1), _c(_F32, 4)) + (_I64,) * 4
         + (_BOOL,))
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
    _float_conv(_arg(xp, np.float32), _arg(w, np.float32), _arg(scale, np.float32),
                _arg(shift, np.float32), out, int(stride[0]), int(stride[1]), int(dilation[0]),
                int(dilation[1]), bool(relu))
    return out


@_kernel((_c(_F32, 2), _c(_F32, 1), _c(_F32, 1), _BOOL, _c(_F32, 2)))
def _affine(x, scale, shift, relu, out):
    for p in prange(x.shape[0]):
        for c in range(x.shape[1]):
            v = x[p, c] * scale[c] + shift[c]
            out[p, c] = np.float32(0) if relu and v < 0 else v


def affine(x, scale, shift, relu=False):
    """``x * scale + shift`` per channel (the last axis), ReLU optional; parallel."""
    flat = _arg(x, np.float32).reshape(-1, x.shape[-1])
    out = np.empty_like(flat)
    _affine(flat, _arg(scale, np.float32), _arg(shift, np.float32), bool(relu), out)
    return out.reshape(x.shape)


@_kernel((_c(_F32, 1), _c(_F32, 1), _c(_F32, 1)))
def _add(a, b, out):
    for i in prange(a.shape[0]):
        out[i] = a[i] + b[i]


def add(a, b):
    """``a + b`` of two float32 arrays of one shape; parallel."""
    if np.shape(a) != np.shape(b):
        raise ValueError("add: shapes %s and %s" % (np.shape(a), np.shape(b)))
    a = _arg(a, np.float32)
    out = np.empty_like(a)
    _add(a.reshape(-1), _arg(b, np.float32).reshape(-1), out.reshape(-1))
    return out
