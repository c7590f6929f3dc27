"""The fast kernels of the packed runtime: sign-packing into a zero-bordered buffer (with the
BatchNorm before it folded in) and a register-blocked 3x3 XNOR-popcount convolution with its
glue (scale, shift, residual, ReLU, the add after it) in the output loop.

Same bit convention as ``deploy/bitops.py`` (bit 1 = -1, ``not (x >= 0)``), same numba policy
(``bitops._kernel``: one signature per kernel, compiled at import, cached outside the tree).

``pack_padded`` writes each pixel's words at ``(h + top, w + left)`` of a buffer whose border
words are 0, so the conv reads every tap without a bounds check: a padded tap reads the word 0,
i.e. +1 inputs, and contributes ``popcount(w) = neg(w)`` (the filter's -1 count at that tap).
``border_corrections`` turns that into the pad rule exactly, per tap and output channel:
``PAD_ZERO`` subtracts ``neg(w)`` (and the tap's bits are not counted), ``PAD_MINUS`` adds
``C/g - 2·neg(w)`` (a -1 input differs from every +1 weight), ``PAD_PLUS`` needs nothing. Only
output pixels whose window leaves the input pay for it.

``bconv3x3``: for each output row, each group and each pair of output pixels, the 9 taps of a
word are loaded once as scalars (broadcast) and the loop over the group's output channels,
contiguous in the weight layout ``(groups, words, 9, O/g)``, sums 9 popcounts for each of the two
pixels before touching the accumulators: 18 ``popcount(x ^ w)`` per 9 weight vectors loaded and
two accumulator updates, where ``bitops.binary_conv`` does a load-add-store per popcount. LLVM
vectorizes that loop across output channels (8 per ``vpopcntq zmm`` on AVX-512 VPOPCNTDQ; a
nibble lookup on AVX2; scalar ``popcnt`` otherwise): no horizontal reduction, no im2col.
"""
import numpy as np

from numba import prange

from .bitops import _BOOL, _F32, _I64, _U64, _arg, _c, _kernel, _popcount
from .bnn_format import PAD_MINUS, PAD_ZERO, words_for


@_kernel((_c(_F32, 2), _c(_F32, 1), _c(_F32, 1), _BOOL) + (_I64,) * 8 + (_c(_U64, 1),))
def _pack_padded(x, scale, shift, affine, n_batch, in_h, in_w, groups, per_group, hp, wp,
                 top_left, out):
    # x: (N·H·W, C); out: (N, hp, wp, groups, words) flat, border already 0; pixel (h, w) at
    # (h + top, w + left), top_left = top·wp + left
    words = (per_group + 63) // 64
    row = groups * words
    for p in prange(x.shape[0]):
        n = p // (in_h * in_w)
        hw = p - n * in_h * in_w
        h = hw // in_w
        w = hw - h * in_w
        base = ((n * hp * wp) + h * wp + w + top_left) * row
        for g in range(groups):
            for k in range(words):
                lo = g * per_group + k * 64
                hi = min(lo + 64, (g + 1) * per_group)
                xs = x[p, lo:hi]
                word = np.uint64(0)
                if affine:
                    ss, bs = scale[lo:hi], shift[lo:hi]
                    for j in range(hi - lo):
                        v = xs[j] * ss[j] + bs[j]
                        word |= np.uint64(not v >= 0) << np.uint64(j)
                else:
                    for j in range(hi - lo):
                        word |= np.uint64(not xs[j] >= 0) << np.uint64(j)
                out[base + g * words + k] = word


def pack_padded(x, groups, top, left, hp, wp, scale=None, shift=None):
    """NHWC float32 ``x`` -> ``(N, hp, wp, groups, words)`` uint64 with pixel ``(h, w)`` at
    ``(h + top, w + left)`` and 0 words around it; the bits of ``x·scale + shift`` (per channel,
    float32, as ``bitops.affine`` computes it) where ``scale`` is given."""
    n, h, w, c = x.shape
    per_group = c // groups
    words = words_for(per_group)
    if hp < h + top or wp < w + left:
        raise ValueError("a %dx%d buffer for a %dx%d input at (%d, %d)" % (hp, wp, h, w, top,
                                                                           left))
    out = np.zeros(n * hp * wp * groups * words, np.uint64)
    affine = scale is not None
    dummy = np.zeros(1, np.float32)
    _pack_padded(_arg(x, np.float32).reshape(n * h * w, c),
                 _arg(scale, np.float32) if affine else dummy,
                 _arg(shift, np.float32) if affine else dummy, affine, n, h, w, int(groups),
                 int(per_group), int(hp), int(wp), int(top * wp + left), out)
    return out.reshape(n, hp, wp, groups, words)


def weights_3x3(wbits):
    """``(groups, 3, 3, words, O/g)`` packed weights -> ``(groups, words, 9, O/g)`` flat, the
    layout ``bconv3x3`` streams."""
    g, kh, kw, k, og = wbits.shape
    return np.ascontiguousarray(wbits.reshape(g, 9, k, og).transpose(0, 2, 1, 3))


def border_corrections(wneg, per_group, pad_mode):
    """``(groups, taps, O/g)`` int64: what to add to a count for each tap that lies in the
    padding (read as a 0 word), and the bits such a tap counts."""
    g, kh, kw, og = wneg.shape
    neg = wneg.reshape(g, kh * kw, og).astype(np.int64)
    if pad_mode == PAD_ZERO:
        return np.ascontiguousarray(-neg), 0
    if pad_mode == PAD_MINUS:
        return np.ascontiguousarray(per_group - 2 * neg), per_group
    return np.zeros_like(neg), per_group  # PAD_PLUS: the 0 word is +1


_ARRAYS = (_c(_U64, 1), _c(_U64, 4), _c(_I64, 3), _c(_F32, 1), _c(_F32, 1), _c(_F32, 4),
           _c(_F32, 1), _c(_F32, 1), _c(_F32, 4), _c(_F32, 4))


@_kernel(_ARRAYS + (_I64,) * 13 + (_BOOL, _I64, _BOOL))
def _bconv3x3(xp, w, corr, scale, shift, res, rs, rb, post, out, in_h, in_w, hp, wp, groups,
              sh, sw, dh, dw, top, left, per_group, pad_bits, relu, res_mode, has_post):
    # every inner loop indexes a view with the loop variable alone: numba's fix-up of negative
    # indices would otherwise keep LLVM from vectorizing it
    n_batch, out_h, out_w, cout = out.shape
    words, og = w.shape[1], w.shape[3]
    s_w = groups * words
    s_h = wp * s_w
    s_n = hp * s_h
    full = 9 * per_group
    accs = np.empty((n_batch * out_h, 2, og), np.int64)
    tmps = np.empty((n_batch * out_h, og), np.float32)
    for task in prange(n_batch * out_h):
        n = task // out_h
        oh = task - n * out_h
        acc0, acc1, tmp = accs[task, 0], accs[task, 1], tmps[task]
        r0 = oh * sh  # stored row of tap 0 (the buffer's top border is the conv's padding)
        rows_ok = ((top <= r0 < top + in_h), (top <= r0 + dh < top + in_h),
                   (top <= r0 + 2 * dh < top + in_h))
        row_in = rows_ok[0] and rows_ok[1] and rows_ok[2]
        for g in range(groups):
            lo = g * og
            sc, sf = scale[lo:lo + og], shift[lo:lo + og]
            rsg, rbg = rs[lo:lo + og], rb[lo:lo + og]
            for ow0 in range(0, out_w, 2):
                pair = ow0 + 1 < out_w
                c0 = ow0 * sw
                c1 = c0 + sw if pair else c0
                acc0[:] = 0
                acc1[:] = 0
                for k in range(words):
                    wk = w[g, k]
                    w0, w1, w2, w3, w4, w5, w6, w7, w8 = wk[0], wk[1], wk[2], wk[3], wk[4], \
                        wk[5], wk[6], wk[7], wk[8]
                    xb = n * s_n + g * words + k
                    a0 = xb + r0 * s_h
                    a1 = a0 + dh * s_h
                    a2 = a1 + dh * s_h
                    p0, p1, p2 = c0 * s_w, (c0 + dw) * s_w, (c0 + 2 * dw) * s_w
                    q0, q1, q2 = c1 * s_w, (c1 + dw) * s_w, (c1 + 2 * dw) * s_w
                    x00, x01, x02 = xp[a0 + p0], xp[a0 + p1], xp[a0 + p2]
                    x10, x11, x12 = xp[a1 + p0], xp[a1 + p1], xp[a1 + p2]
                    x20, x21, x22 = xp[a2 + p0], xp[a2 + p1], xp[a2 + p2]
                    y00, y01, y02 = xp[a0 + q0], xp[a0 + q1], xp[a0 + q2]
                    y10, y11, y12 = xp[a1 + q0], xp[a1 + q1], xp[a1 + q2]
                    y20, y21, y22 = xp[a2 + q0], xp[a2 + q1], xp[a2 + q2]
                    for o in range(og):
                        v0, v1, v2, v3, v4 = w0[o], w1[o], w2[o], w3[o], w4[o]
                        v5, v6, v7, v8 = w5[o], w6[o], w7[o], w8[o]
                        acc0[o] += np.int64(
                            _popcount(x00 ^ v0) + _popcount(x01 ^ v1) + _popcount(x02 ^ v2)
                            + _popcount(x10 ^ v3) + _popcount(x11 ^ v4) + _popcount(x12 ^ v5)
                            + _popcount(x20 ^ v6) + _popcount(x21 ^ v7) + _popcount(x22 ^ v8))
                        acc1[o] += np.int64(
                            _popcount(y00 ^ v0) + _popcount(y01 ^ v1) + _popcount(y02 ^ v2)
                            + _popcount(y10 ^ v3) + _popcount(y11 ^ v4) + _popcount(y12 ^ v5)
                            + _popcount(y20 ^ v6) + _popcount(y21 ^ v7) + _popcount(y22 ^ v8))
                for b in range(2 if pair else 1):
                    acc = acc1 if b else acc0
                    ow = ow0 + b
                    cb = c0 + b * sw
                    bits = full
                    if not (row_in and left <= cb and cb + 2 * dw < left + in_w):
                        for i in range(3):
                            for j in range(3):
                                col = cb + j * dw
                                if not (rows_ok[i] and left <= col < left + in_w):
                                    bits += pad_bits - per_group
                                    ct = corr[g, 3 * i + j]
                                    for o in range(og):
                                        acc[o] += ct[o]
                    # the glue in branch-free passes over the pixel's channels (each one
                    # vectorized; one loop with the branches inside stays scalar), in the
                    # order of the float32 operations the unfused ops do, on a scratch row:
                    # ``out`` may be the residual's or the added value's own array (in place),
                    # read at this pixel only, before the one write at the end
                    for o in range(og):
                        tmp[o] = np.float32(bits - 2 * acc[o]) * sc[o] + sf[o]
                    if res_mode == 1:
                        r = res[n, oh, ow, lo:lo + og]
                        for o in range(og):
                            tmp[o] += r[o]
                    elif res_mode == 2:
                        r = res[n, oh, ow, lo:lo + og]
                        for o in range(og):
                            tmp[o] += r[o] * rsg[o] + rbg[o]
                    if relu:
                        for o in range(og):
                            v = tmp[o]
                            tmp[o] = np.float32(0) if v < 0 else v
                    if has_post:
                        pst = post[n, oh, ow, lo:lo + og]
                        for o in range(og):
                            tmp[o] += pst[o]
                    dst = out[n, oh, ow, lo:lo + og]
                    for o in range(og):
                        dst[o] = tmp[o]


def bconv_geometry(h, w, stride, padding, dilation, offset):
    """``(out_h, out_w, buffer_h, buffer_w, top, left, cut_h, cut_w)`` of a 3x3 binary conv on an
    ``h x w`` input: the windows of output ``(r, c)`` start at stored ``(r·s_h, c·s_w)``; the
    buffer's top/left border is the padding less the shifted half's offset, its bottom/right
    border what the last window needs; ``cut``: input rows/columns no window reads (the shifted
    half of an unpadded conv), dropped before packing."""
    from .bnn_format import out_size

    oh = out_size(h, 3, stride[0], padding[0], dilation[0], offset)
    ow = out_size(w, 3, stride[1], padding[1], dilation[1], offset)
    top, left = padding[0] - offset, padding[1] - offset
    cut_h, cut_w = max(-top, 0), max(-left, 0)
    top, left = max(top, 0), max(left, 0)
    hp = max(h - cut_h + top, (oh - 1) * stride[0] + 2 * dilation[0] + 1)
    wp = max(w - cut_w + left, (ow - 1) * stride[1] + 2 * dilation[1] + 1)
    return oh, ow, hp, wp, top, left, cut_h, cut_w


def bconv3x3(x, groups, wflat, corr, pad_bits, per_group, og, scale, shift, stride, padding,
             dilation, offset, relu=False, residual=None, res_scale=None, res_shift=None,
             post=None, pre_scale=None, pre_shift=None, out=None):
    """A 3x3 binary conv of the NHWC float32 ``x`` (signs of ``x·pre_scale + pre_shift`` where
    given): NHWC ``count·scale + shift [+ residual (·res_scale + res_shift)]``, ReLU, ``+ post``,
    into ``out`` where given (see ``run_packed``).
    ``wflat``: ``weights_3x3``; ``corr``, ``pad_bits``: ``border_corrections``."""
    n, h, w, c = x.shape
    oh, ow, hp, wp, top, left, cut_h, cut_w = bconv_geometry(h, w, stride, padding, dilation,
                                                             offset)
    if cut_h or cut_w:
        x = x[:, cut_h:, cut_w:]
    packed = pack_padded(x, groups, top, left, hp, wp, pre_scale, pre_shift)
    return run_packed(packed, x.shape[1], x.shape[2], groups, wflat, corr, pad_bits, per_group,
                      og, scale, shift, (oh, ow, hp, wp, top, left), stride, dilation, relu,
                      residual, res_scale, res_shift, post, out)


def run_packed(packed, h, w, groups, wflat, corr, pad_bits, per_group, og, scale, shift, geo,
               stride, dilation, relu=False, residual=None, res_scale=None, res_shift=None,
               post=None, out=None):
    """``bconv3x3`` on an input already packed by ``pack_padded`` at geometry ``geo``, into
    ``out`` where given (a C-order float32 array of the output's shape, which may be
    ``residual`` or ``post`` itself: each output element is written after the residual and added
    elements at its own index are read, and nothing else reads them)."""
    n = packed.shape[0]
    oh, ow, hp, wp, top, left = geo
    shape = (n, oh, ow, groups * og)
    if out is None:
        out = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous \
            or not out.flags.writeable:
        raise ValueError("an output buffer of shape %s for an output of shape %s"
                         % (out.shape, shape))
    dummy = np.zeros((1, 1, 1, og), np.float32)
    for name, a in (("residual", residual), ("add", post)):
        if a is not None and a.shape != out.shape:
            raise ValueError("%s of shape %s for an output of shape %s" % (name, a.shape,
                                                                           out.shape))
    res_mode = 0 if residual is None else (2 if res_scale is not None else 1)
    ones = np.zeros(groups * og, np.float32)
    _bconv3x3(packed.reshape(-1), wflat, corr, _arg(scale, np.float32), _arg(shift, np.float32),
              _arg(residual, np.float32) if residual is not None else dummy,
              _arg(res_scale, np.float32) if res_mode == 2 else ones,
              _arg(res_shift, np.float32) if res_mode == 2 else ones,
              _arg(post, np.float32) if post is not None else dummy, out, h, w, hp, wp,
              int(groups), int(stride[0]), int(stride[1]), int(dilation[0]), int(dilation[1]),
              top, left, int(per_group), int(pad_bits), bool(relu), res_mode, post is not None)
    return out
