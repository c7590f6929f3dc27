"""training/fastconv.py: every gradient route equals MegEngine's own conv gradients and finite
differences of an independent float64 NumPy conv."""
import numpy as np
import pytest

import megengine as mge
import megengine.module as M
from megengine.autodiff import GradManager

from training import fastconv

# (input size, kernel, stride, padding): the route each case takes is checked in the test.
CASES = [
    (9, 3, 1, 1, "shifted"),     # 81 output pixels, stride 1: shifted weight gradient
    (8, 1, 1, 0, "shifted"),     # 1x1
    (16, 3, 2, 1, "shifted"),    # stride 2 over the four stride phases
    (16, 1, 2, 0, "shifted"),
    (17, 3, 2, 1, "im2col"),     # odd size: the phases do not tile the input
    (6, 3, 1, 1, "im2col"),      # 36 output pixels: below SHIFTED_MIN_OUTPUT
    (2, 3, 1, 1, "small"),       # at most SMALL_OUTPUT pixels: im2col forward, autodiff
]


def _route(size, k, stride, pad):
    out = (size + 2 * pad - k) // stride + 1
    if out * out <= fastconv.SMALL_OUTPUT:
        return "small"
    taps = fastconv._taps((k, k), (stride, stride), (pad, pad), (size, size), (out, out))
    return "shifted" if taps and out * out >= fastconv.SHIFTED_MIN_OUTPUT else "im2col"


def _conv_grads(x_np, w_np, r_np, stride, pad, fast):
    """Output, dW and dx of sum(conv(x, W) * R)."""
    conv = M.Conv2d(w_np.shape[1], w_np.shape[0], w_np.shape[2], stride=stride, padding=pad,
                    bias=False)
    conv.weight[...] = mge.tensor(w_np)
    if fast:
        assert fastconv.enable(conv) == 1
    x = mge.Parameter(x_np)
    gm = GradManager().attach([conv.weight, x])
    with gm:
        y = conv(x)
        gm.backward((y * mge.tensor(r_np)).sum())
    return y.numpy(), conv.weight.grad.numpy(), x.grad.numpy()


def _numpy_conv(x, w, stride, pad):
    """Direct float64 cross-correlation, NCHW."""
    n, c, h, _ = x.shape
    o, _, k, _ = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = (h + 2 * pad - k) // stride + 1
    y = np.zeros((n, o, out, out))
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i:i + stride * out:stride, j:j + stride * out:stride]
            y += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return y


def _finite_difference(f, arr, index, eps=1e-3):
    plus, minus = arr.copy(), arr.copy()
    plus[index] += eps
    minus[index] -= eps
    return (f(plus) - f(minus)) / (2 * eps)


@pytest.mark.parametrize("size,k,stride,pad,route", CASES)
def test_gradients_equal_megengine_own_and_finite_differences(size, k, stride, pad, route, rng):
    assert _route(size, k, stride, pad) == route
    x = rng.normal(0, 1, (2, 4, size, size)).astype(np.float32)
    w = rng.normal(0, 1, (5, 4, k, k)).astype(np.float32)
    out = (size + 2 * pad - k) // stride + 1
    r = rng.normal(0, 1, (2, 5, out, out)).astype(np.float32)
    own = _conv_grads(x, w, r, stride, pad, fast=False)
    fast = _conv_grads(x, w, r, stride, pad, fast=True)
    for name, a, b in zip(("output", "dW", "dx"), own, fast):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * np.abs(a).max(), err_msg=name)

    # Finite differences of the float64 NumPy loss, at a few entries of W and of x.
    x64, w64, r64 = x.astype(np.float64), w.astype(np.float64), r.astype(np.float64)
    _, dw, dx = fast
    for _ in range(6):
        wi = tuple(int(rng.integers(0, s)) for s in w.shape)
        xi = tuple(int(rng.integers(0, s)) for s in x.shape)
        fd_w = _finite_difference(lambda v: (_numpy_conv(x64, v, stride, pad) * r64).sum(),
                                  w64, wi)
        fd_x = _finite_difference(lambda v: (_numpy_conv(v, w64, stride, pad) * r64).sum(),
                                  x64, xi)
        assert abs(dw[wi] - fd_w) <= 1e-4 * max(1.0, abs(fd_w)), (wi, dw[wi], fd_w)
        assert abs(dx[xi] - fd_x) <= 1e-4 * max(1.0, abs(fd_x)), (xi, dx[xi], fd_x)


def test_a_whole_model_has_megengine_own_gradients(rng):
    """RepVGG-A0 at 64x64, train-mode BN as in training (every route occurs: shifted in stages
    0-2, im2col on stage 3's 4x4 maps, the im2col forward on stage 4's 2x2): same loss and
    parameter gradients with and without the fast routes. At 32x32 stage 4's 1x1 maps would
    normalise over 4 values, which amplifies rounding differences past any fair tolerance."""
    import megengine.functional as F
    from model.checkpoint import build_model

    x = mge.tensor(rng.normal(0, 1, (4, 3, 64, 64)).astype(np.float32))
    y = mge.tensor(np.array([1, 7, 0, 3], dtype=np.int32))
    results = []
    for fast in (False, True):
        mge.random.seed(5)
        model = build_model("RepVGG-A0", 10)
        model.train()
        if fast:
            assert fastconv.enable(model) > 0
        gm = GradManager().attach(model.parameters())
        with gm:
            loss = F.nn.cross_entropy(model(x), y)
            gm.backward(loss)
        results.append((float(loss.numpy()),
                        {n: p.grad.numpy() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert abs(loss_a - loss_b) <= 1e-5 * abs(loss_a)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        a, b = grads_a[name], grads_b[name]
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max(), err_msg=name)
