"""The register-blocked 3x3 binary conv (deploy/bnn_kernels.py) and the fused steps
(deploy/binary_plan.py) against an independent NumPy reference: bitwise, for every pad rule,
stride, dilation, padding (windows wholly in the padding), groups, the shifted half, with the
BatchNorm folded into the packing, a residual (plain and through that BatchNorm) and the add
after the ReLU, at batch 1 and 3, on 1 and 2 threads; and compiled for an AVX2-only CPU."""
import json
import os

import numpy as np
import pytest

from deploy import binary_plan, bitops
from deploy import bnn_kernels as bk
from helpers import run_tool

# (stride, padding, dilation, groups, offset)
GEOMETRIES = [(1, 1, 1, 1, 0), (2, 1, 1, 1, 0), (2, 1, 1, 1, 1), (1, 0, 1, 1, 0),
              (1, 2, 1, 1, 0), (1, 2, 2, 1, 0), (2, 2, 2, 1, 1), (1, 1, 1, 2, 0),
              (2, 1, 1, 4, 1), (2, 0, 1, 1, 1)]
C, OG = 136, 8  # 136 channels: a partial last word per group


def reference(x, signs, scale, shift, geometry, pad, pre=None, residual=None, res_affine=False,
              relu=True, post=None):
    """Pad with the pad value (0: the tap counts nothing), shift, correlate per group in
    float64 (exact integers), then the epilogue in float32 NumPy."""
    s, p, d, g, off = geometry
    n, h, w, c = x.shape
    v = x if pre is None else x * pre[0] + pre[1]
    xs = np.where(v >= 0, 1.0, -1.0)
    valid = np.ones((n, h, w, 1))
    eh, ew = (h % 2, w % 2) if off else (0, 0)
    widths = ((0, 0), (p, p + eh), (p, p + ew), (0, 0))
    xp = np.pad(xs, widths, constant_values=pad)[:, off:, off:]
    vp = np.pad(valid, widths)[:, off:, off:]
    ws = np.where(signs, -1.0, 1.0)  # (g, og, c/g, 3, 3)
    oh = (xp.shape[1] - 2 * d - 1) // s + 1
    ow = (xp.shape[2] - 2 * d - 1) // s + 1
    cg, og = c // g, signs.shape[1]
    dot = np.zeros((n, oh, ow, g * og))
    bits = np.zeros((n, oh, ow, 1))
    for i in range(3):
        for j in range(3):
            tap = xp[:, i * d:i * d + s * (oh - 1) + 1:s, j * d:j * d + s * (ow - 1) + 1:s]
            inside = vp[:, i * d:i * d + s * (oh - 1) + 1:s, j * d:j * d + s * (ow - 1) + 1:s]
            counts = inside if pad == 0 else np.ones_like(inside)
            bits += counts * cg
            for k in range(g):
                dot[..., k * og:(k + 1) * og] += np.einsum(
                    "nhwc,oc->nhwo", tap[..., k * cg:(k + 1) * cg], ws[k, :, :, i, j])
    out = dot.astype(np.float32) * scale + shift
    if residual is not None:
        out = out + (residual * pre[0] + pre[1] if res_affine else residual)
    if relu:
        out = np.where(out < 0, np.float32(0), out)
    return out if post is None else out + post


def case(rng, n, geometry, h=9, w=7):
    s, p, d, g, off = geometry
    x = rng.standard_normal((n, h, w, C)).astype(np.float32)
    x[0, 0, :, :5] = 0.0  # sign(0) = +1, on a border row
    x[-1, 2, 1, 3] = np.nan  # binarizes to -1
    signs = rng.random((g, OG, C // g, 3, 3)) < 0.5
    scale = rng.standard_normal(g * OG).astype(np.float32)
    shift = rng.standard_normal(g * OG).astype(np.float32)
    return x, signs, scale, shift


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("pad", [0, -1, 1])
def test_the_3x3_kernel_counts_exactly(pad, threads, rng):
    bitops.set_threads(threads)
    try:
        for geometry in GEOMETRIES:
            for n in (1, 3):
                x, signs, scale, shift = case(rng, n, geometry)
                s, p, d, g, off = geometry
                wb, wn = bitops.pack_weight(signs), bitops.negatives_per_tap(signs)
                corr, pad_bits = bk.border_corrections(wn, C // g, pad)
                out = bk.bconv3x3(x, g, bk.weights_3x3(wb), corr, pad_bits, C // g, OG, scale,
                                  shift, (s, s), (p, p), (d, d), off, relu=True)
                np.testing.assert_array_equal(
                    out, reference(x, signs, scale, shift, geometry, pad), err_msg=str(geometry))
    finally:
        bitops.set_threads(2)


@pytest.mark.parametrize("res_affine", [False, True])
def test_the_fused_glue_is_what_the_ops_compute(res_affine, rng):
    geometry = (1, 1, 1, 1, 0)
    x, signs, scale, shift = case(rng, 2, geometry, 6, 8)
    pre = (rng.standard_normal(C).astype(np.float32), rng.standard_normal(C).astype(np.float32))
    residual = x[..., :OG] if res_affine else rng.standard_normal((2, 6, 8, OG)).astype(
        np.float32)
    post = rng.standard_normal((2, 6, 8, OG)).astype(np.float32)
    wb, wn = bitops.pack_weight(signs), bitops.negatives_per_tap(signs)
    corr, pad_bits = bk.border_corrections(wn, C, -1)
    kwargs = dict(res_scale=pre[0][:OG], res_shift=pre[1][:OG]) if res_affine else {}
    out = bk.bconv3x3(x, 1, bk.weights_3x3(wb), corr, pad_bits, C, OG, scale, shift, (1, 1),
                      (1, 1), (1, 1), 0, True, np.ascontiguousarray(residual), post=post,
                      pre_scale=pre[0], pre_shift=pre[1], **kwargs)
    if res_affine:  # the residual read through the BN: x·s + b of its own channels
        ref = reference(x, signs, scale, shift, geometry, -1, pre, relu=False)
        ref = ref + (residual * pre[0][:OG] + pre[1][:OG])
        ref = np.where(ref < 0, np.float32(0), ref) + post
    else:
        ref = reference(x, signs, scale, shift, geometry, -1, pre, residual, post=post)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("res_affine", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_output_may_overwrite_the_residual_it_reads(res_affine, threads, rng):
    # in place: the residual and the added value are the output's own array (a ResNet block's
    # input, read for the last time), against the same conv into a fresh array and the reference
    bitops.set_threads(threads)
    try:
        geometry = (1, 1, 1, 1, 0)
        x, signs, scale, shift = case(rng, 3, geometry, 6, 8)
        signs = rng.random((1, C, C, 3, 3)) < 0.5
        scale = rng.standard_normal(C).astype(np.float32)
        shift = rng.standard_normal(C).astype(np.float32)
        pre = (rng.standard_normal(C).astype(np.float32),
               rng.standard_normal(C).astype(np.float32))
        wb, wn = bitops.pack_weight(signs), bitops.negatives_per_tap(signs)
        corr, pad_bits = bk.border_corrections(wn, C, 0)
        kwargs = dict(res_scale=pre[0], res_shift=pre[1]) if res_affine else {}
        args = (1, bk.weights_3x3(wb), corr, pad_bits, C, C, scale, shift, (1, 1), (1, 1),
                (1, 1), 0, True)
        fresh = bk.bconv3x3(x, *args, x.copy(), post=x.copy(), pre_scale=pre[0],
                            pre_shift=pre[1], **kwargs)
        buf = x.copy()
        got = bk.bconv3x3(buf, *args, buf, post=buf, pre_scale=pre[0], pre_shift=pre[1],
                          out=buf, **kwargs)
        assert got is buf
        np.testing.assert_array_equal(got, fresh)
        ref = reference(x, signs, scale, shift, geometry, 0, pre, relu=False)
        ref = ref + (x * pre[0] + pre[1] if res_affine else x)
        np.testing.assert_array_equal(got, np.where(ref < 0, np.float32(0), ref) + x)
        with pytest.raises(ValueError, match="output buffer"):
            bk.bconv3x3(x, *args, out=np.empty((3, 6, 8, C + 1), np.float32))
    finally:
        bitops.set_threads(2)


def test_padded_packing_is_the_plain_packing_with_a_zero_border(rng):
    x = rng.standard_normal((2, 5, 4, 136)).astype(np.float32)
    x[0, 0, 0, :3] = [0.0, -0.0, np.nan]
    packed = bk.pack_padded(x, 2, 1, 2, 8, 7)
    plain = bitops.pack_signs(x, 2)
    np.testing.assert_array_equal(packed[:, 1:6, 2:6], plain)
    packed[:, 1:6, 2:6] = 0
    assert not packed.any()
    s, b = rng.standard_normal(136).astype(np.float32), rng.standard_normal(136).astype(
        np.float32)
    np.testing.assert_array_equal(bk.pack_padded(x, 1, 0, 0, 5, 4, s, b),
                                  bitops.pack_signs(x * s + b, 1))


def test_the_plan_fuses_bn_and_add_and_keeps_the_values(rng):
    """A bn_conv_relu block as the export writes it: affine -> bconv(x, residual = x) -> add."""
    g, og = 1, C
    signs = rng.random((g, og, C, 3, 3)) < 0.5
    arrays = {"b": bitops.pack_weight(signs), "n": bitops.negatives_per_tap(signs),
              "s": rng.standard_normal(og).astype(np.float32),
              "t": rng.standard_normal(og).astype(np.float32),
              "as": rng.standard_normal(C).astype(np.float32),
              "at": rng.standard_normal(C).astype(np.float32)}
    ops = [{"op": "affine", "inputs": [0], "out": 1, "scale": "as", "shift": "at",
            "relu": False},
           {"op": "bconv", "inputs": [1, 1], "out": 2, "bits": "b", "neg": "n", "scale": "s",
            "shift": "t", "channels": C, "stride": [1, 1], "padding": [1, 1],
            "dilation": [1, 1], "offset": 0, "pad_mode": 0, "relu": True},
           {"op": "add", "inputs": [2, 0], "out": 3}]
    from deploy.binary_runtime import RUN, execute

    # two such blocks: the second writes its output into its input's array (the first
    # block's output, read there for the last time); the caller's input is never written
    ops += [dict(op, inputs=[v + 3 if v else 3 for v in op["inputs"]], out=op["out"] + 3)
            for op in ops]
    steps = binary_plan.build(ops, arrays, 6, lambda op, a, *xs: RUN[op["op"]](op, a, *xs))
    assert [s.label for s in steps] == ["bconv 3x3 s1 136->136 +BN in +add"] * 2
    reused = []

    def spy(*args):
        reused.append(real(*args))
        return reused[-1]

    real, binary_plan._reusable = binary_plan._reusable, spy
    try:
        for n, threads in ((1, 1), (4, 2)):
            bitops.set_threads(threads)
            x = rng.standard_normal((n, 6, 5, C)).astype(np.float32)
            given = x.copy()
            want = execute(ops, arrays, 6, x.transpose(0, 3, 1, 2))
            reused.clear()
            got = binary_plan.execute(steps, binary_plan.free_lists(steps), {0: x}, 6)
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(x, given)
            assert reused[0] is None and reused[1] is got
    finally:
        binary_plan._reusable = real
        bitops.set_threads(2)


AVX2_CHILD = """
import json, numpy as np
from deploy import bitops, bnn_kernels as bk
rng = np.random.default_rng(3)
x = rng.standard_normal((2, 9, 7, 136)).astype(np.float32)
signs = rng.random((2, 12, 68, 3, 3)) < 0.5
wb, wn = bitops.pack_weight(signs), bitops.negatives_per_tap(signs)
out = []
for s, off in ((1, 0), (2, 1)):
    for pad in (0, -1):
        corr, pb = bk.border_corrections(wn, 68, pad)
        out.append(bk.bconv3x3(x, 2, bk.weights_3x3(wb), corr, pb, 68, 12, np.ones(24, np.float32),
                               np.zeros(24, np.float32), (s, s), (1, 1), (1, 1), off).tolist())
print(json.dumps(out))
"""


def test_the_3x3_kernel_compiled_for_an_avx2_only_cpu_counts_the_same(tmp_path):
    """numba compiles for the CPU it runs on; here for Haswell (AVX2: LLVM's nibble-lookup
    popcount instead of VPOPCNTQ), in a fresh cache, run on this CPU."""
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="",
               NUMBA_CACHE_DIR=str(tmp_path))
    proc = run_tool("-c", AVX2_CHILD, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 9, 7, 136)).astype(np.float32)
    signs = rng.random((2, 12, 68, 3, 3)) < 0.5
    got = json.loads(proc.stdout)
    ones, zeros = np.ones(24, np.float32), np.zeros(24, np.float32)
    i = 0
    for s, off in ((1, 0), (2, 1)):
        for pad in (0, -1):
            ref = reference(x, signs, ones, zeros, (s, 1, 1, 2, off), pad, relu=False)
            np.testing.assert_array_equal(np.array(got[i], np.float32), ref)
            i += 1


def test_an_input_array_is_reused_only_when_nothing_else_can_see_it():
    step = binary_plan.Step("binary conv 3x3", "c", [5, 5], 6, None, reuse=1)
    a = np.zeros((1, 2, 2, 3), np.float32)
    assert binary_plan._reusable(step, [5], {5: a}, 9) is a
    assert binary_plan._reusable(step, [], {5: a}, 9) is None  # read again later
    assert binary_plan._reusable(step, [5], {5: a}, 5) is None  # the network's output
    assert binary_plan._reusable(step, [5], {5: a, 7: a[:, :1]}, 9) is None  # a live view
    assert binary_plan._reusable(step, [5], {5: a[:, :1].copy()[:, :]}, 9) is None  # a view
    b = np.zeros((1, 2, 2, 3), np.float64)
    assert binary_plan._reusable(step, [5], {5: b}, 9) is None
    step0 = binary_plan.Step("binary conv 3x3", "c", [0, 0], 6, None, reuse=1)
    assert binary_plan._reusable(step0, [0], {0: a}, 9) is None  # the caller's input
