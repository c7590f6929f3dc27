"""Straight-through estimators and weight binarizers against formulas computed in NumPy and
against finite differences (reference section 7.5, items 1, 2, 4 and 5)."""
import numpy as np
import pytest

import megengine as mge
from megengine.autodiff import GradManager

from binary_ref import np_conv2d_grad_input, np_sign, torch_layout
from model.binary.config import BinaryConvConfig
from model.binary.conv import BinaryConv2d
from model.binary.ste import approx_sign, binarize_weight, sign_ste

CLIP = 1.3


def grid(clip):
    c = np.float32(clip)
    above = np.nextafter(c, np.float32(3))
    below = np.nextafter(c, np.float32(0))
    pts = [-2.0, -above, -c, -below, -1.0, -0.5, -1e-7, 0.0, 1e-7, 0.5, 1.0, below, c, above, 2.0]
    return np.array(pts, np.float32)


def value_and_grad(fn, x, upstream):
    p = mge.Parameter(x)
    gm = GradManager().attach([p])
    with gm:
        y = fn(p)
        gm.backward((y * mge.tensor(upstream)).sum())
    return y.numpy(), p.grad.numpy()


@pytest.mark.parametrize("clip", [CLIP, 1.0])
def test_sign_ste_forward_and_window(clip, rng):
    x = grid(clip)
    g = rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
    y, gx = value_and_grad(lambda t: sign_ste(t, clip), x, g)
    np.testing.assert_array_equal(y, np.where(x >= 0, 1, -1))
    assert y[x == 0].tolist() == [1.0]  # sign(0) := +1
    np.testing.assert_array_equal(gx, g * (np.abs(x) <= np.float32(clip)))
    # the boundary is pinned: |x| == clip passes, the next float above does not
    assert gx[x == np.float32(clip)][0] == g[x == np.float32(clip)][0]
    assert gx[x == np.nextafter(np.float32(clip), np.float32(3))][0] == 0


def test_sign_ste_without_clip_is_identity(rng):
    x = grid(CLIP) * 3
    g = rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
    _, gx = value_and_grad(lambda t: sign_ste(t, None), x, g)
    np.testing.assert_array_equal(gx, g)


def test_approx_sign_gradient_formula(rng):
    x = np.concatenate([grid(1.0), np.linspace(-1.5, 1.5, 31, dtype=np.float32)])
    g = rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
    y, gx = value_and_grad(approx_sign, x, g)
    np.testing.assert_array_equal(y, np.where(x >= 0, 1, -1))
    np.testing.assert_allclose(gx, g * np.maximum(0, 2 - 2 * np.abs(x)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("groups", [1, 2])
def test_approx_sign_gradient_reaches_the_tape_through_a_conv(groups, rng):
    """aw_nas lost this gradient (nested Function); here dL/dx must be the conv's input
    gradient times max(0, 2 - 2|x|), computed in NumPy."""
    cfg = BinaryConvConfig(weight_mode="fp", act_mode="approx_sign")
    conv = BinaryConv2d(4, 6, 3, stride=1, padding=1, groups=groups, config=cfg)
    x = rng.uniform(-1.5, 1.5, (2, 4, 5, 5)).astype(np.float32)
    r = rng.standard_normal((2, 6, 5, 5)).astype(np.float32)
    _, gx = value_and_grad(conv, x, r)
    w = torch_layout(conv.weight.numpy())
    expected = np_conv2d_grad_input(x.shape, w, r, pad=1, groups=groups) \
        * np.maximum(0, 2 - 2 * np.abs(x))
    np.testing.assert_allclose(gx, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(gx).max() > 0 and np.any((np.abs(x) < 1) & (np.abs(x) > 0.6))


def test_activation_window_is_not_scaled_by_the_weight_scale(rng):
    cfg = BinaryConvConfig(weight_mode="xnor_tensor", act_mode="sign", act_clip=CLIP)
    conv = BinaryConv2d(3, 4, 1, config=cfg)
    conv.weight[...] = mge.tensor(rng.uniform(0.01, 0.05, (4, 3, 1, 1)).astype(np.float32))
    x = np.tile(grid(CLIP), (1, 3, 1, 1)).reshape(1, 3, 1, -1)
    r = rng.uniform(0.5, 1.5, (1, 4, 1, x.shape[-1])).astype(np.float32)
    _, gx = value_and_grad(conv, x, r)
    wb = np.abs(conv.weight.numpy()).mean() * np.sign(conv.weight.numpy())[:, :, 0, 0]
    expected = np.einsum("nohw,oc->nchw", r, wb) * (np.abs(x) <= np.float32(CLIP))
    np.testing.assert_allclose(gx, expected, rtol=1e-5, atol=1e-7)


def weight_grad(w, cfg, upstream):
    return value_and_grad(lambda t: binarize_weight(t, cfg), w, upstream)


def test_xnor_tensor_mask_is_clip_times_alpha(rng):
    # 24 weights: 20 random ones (sum of magnitudes S) and 4 at t·(1 ± 1e-3), where t solves
    # t = 1.3·alpha = 1.3·(S + 4t)/24, so the four straddle the threshold by construction
    w = rng.uniform(0.1, 0.3, 24) * rng.choice([-1, 1], 24)
    s = np.abs(w[4:]).sum()
    t = CLIP * s / (24 - 4 * CLIP)
    w[:4] = t * np.array([0.999, -1.001, -0.999, 1.001])
    w = w.astype(np.float32).reshape(2, 3, 2, 2)
    alpha = np.abs(w.astype(np.float64)).mean()
    assert abs(w.flat[0]) < CLIP * alpha < abs(w.flat[1])
    g = rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
    y, gw = weight_grad(w, BinaryConvConfig(weight_mode="xnor_tensor"), g)
    np.testing.assert_allclose(y, alpha * np_sign(w), rtol=1e-6)
    mask = np.abs(w) <= CLIP * alpha
    np.testing.assert_array_equal(gw, g * mask)
    assert mask.flat[0] and mask.flat[2] and not mask.flat[1] and not mask.flat[3]


@pytest.mark.parametrize("mode", ["sign", "bireal_channel"])
def test_absolute_weight_window_keeps_the_boundary(mode, rng):
    w = np.array([-1.001, -1.0, -0.999, -0.3, 0.0, 0.3, 0.999, 1.0, 1.001], np.float32)
    w = np.tile(w, (2, 1)).reshape(2, 1, 3, 3)
    g = rng.uniform(0.5, 1.5, w.shape).astype(np.float32)
    _, gw = weight_grad(w, BinaryConvConfig(weight_mode=mode), g)
    np.testing.assert_array_equal(gw, g * (np.abs(w) <= 1.0))
    assert gw.reshape(2, 9)[0, 1] != 0 and gw.reshape(2, 9)[0, 7] != 0  # weights at ±1 move


def xnor_surrogate(w, g, alpha0):
    """float64: sum(g * alpha(W) * sign(W)) + alpha0 * sum(g * hardtanh(W)). Its exact derivative
    (with sign locally constant) is the XNOR gradient: the alpha path plus the STE term."""
    axes = tuple(range(w.ndim - 3, w.ndim))
    alpha = np.abs(w).mean(axis=axes, keepdims=True)
    return (g * alpha * np.sign(w)).sum() + (alpha0 * g * np.clip(w, -1, 1)).sum()


def finite_difference(f, w, eps=1e-6):
    out = np.zeros_like(w)
    for i in range(w.size):
        d = np.zeros_like(w)
        d.flat[i] = eps
        out.flat[i] = (f(w + d) - f(w - d)) / (2 * eps)
    return out


@pytest.mark.parametrize("shape", [(3, 2, 3, 3), (2, 2, 3, 1, 3)])  # plain, grouped layout
@pytest.mark.parametrize("mode,flags", [("xnor_channel", {}),
                                        ("bireal_channel", {"magnitude_aware": True})])
def test_channel_gradient_matches_finite_differences(shape, mode, flags, rng):
    mag = rng.uniform(0.05, 1.4, shape)
    mag[np.abs(mag - 1.0) < 1e-3] = 0.5  # keep away from the kink at |W| = 1
    w = (mag * rng.choice([-1, 1], shape)).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    _, gw = weight_grad(w, BinaryConvConfig(weight_mode=mode, **flags), g)
    w64, g64 = w.astype(np.float64), g.astype(np.float64)
    axes = tuple(range(w.ndim - 3, w.ndim))
    alpha0 = np.abs(w64).mean(axis=axes, keepdims=True)
    fd = finite_difference(lambda v: xnor_surrogate(v, g64, alpha0), w64)
    np.testing.assert_allclose(gw, fd, rtol=1e-4, atol=1e-5)
    assert np.any(np.abs(w) > 1)  # the window is exercised


def test_legacy_xnor_factor_only_when_flagged(rng):
    shape = (4, 3, 3, 3)
    w = rng.uniform(-1, 1, shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    _, plain = weight_grad(w, BinaryConvConfig(weight_mode="xnor_channel"), g)
    _, legacy = weight_grad(w, BinaryConvConfig(weight_mode="xnor_channel",
                                                legacy_xnor_grad_scale=True), g)
    n, c = 3 * 3 * 3, 3
    np.testing.assert_allclose(legacy, plain * n * (1 - 1 / c), rtol=1e-5, atol=1e-6)
    _, bireal = weight_grad(w, BinaryConvConfig(weight_mode="bireal_channel",
                                                legacy_xnor_grad_scale=True), g)
    np.testing.assert_array_equal(bireal, g * (np.abs(w) <= 1))


def test_fp_weight_gradient_is_identity(rng):
    w = rng.uniform(-2, 2, (2, 2, 3, 3)).astype(np.float32)
    g = rng.standard_normal(w.shape).astype(np.float32)
    y, gw = weight_grad(w, BinaryConvConfig(weight_mode="fp"), g)
    np.testing.assert_array_equal(y, w)
    np.testing.assert_array_equal(gw, g)
