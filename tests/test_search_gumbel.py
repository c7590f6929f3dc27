"""Reference 7.5 item 9: Gumbel-softmax forward, gradient and sampling frequencies."""
import numpy as np

import megengine as mge
from megengine.autodiff import GradManager

from search.gumbel import gumbel_noise, gumbel_softmax, noise_for_batch


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def grad_wrt_logits(logits_np, noise, tau, mode, upstream):
    logits = mge.Parameter(logits_np)
    gm = GradManager().attach([logits])
    with gm:
        y = gumbel_softmax(logits, noise, tau, mode)
        gm.backward((y * mge.tensor(upstream)).sum())
    return y.numpy(), logits.grad.numpy()


def test_soft_sample_is_the_formula(rng):
    logits = rng.normal(size=(5,)).astype(np.float32)
    noise = gumbel_noise(rng, (3, 5))
    y, _ = grad_wrt_logits(logits, noise, 0.7, "soft", np.zeros((3, 5), np.float32))
    np.testing.assert_allclose(y, np_softmax((logits + noise) / 0.7), rtol=1e-5, atol=1e-6)


def test_hard_forward_is_one_hot_and_gradient_is_the_soft_one(rng):
    logits = rng.normal(size=(4,)).astype(np.float32)
    noise = gumbel_noise(rng, (6, 4))
    tau = 0.5
    g = rng.normal(size=(6, 4)).astype(np.float32)
    y_hard, grad_hard = grad_wrt_logits(logits, noise, tau, "hard_st", g)
    soft = np_softmax((logits + noise) / tau)
    expected_onehot = np.eye(4)[soft.argmax(1)]
    np.testing.assert_array_equal(y_hard, expected_onehot)
    # d y_i / d logit_j = y_i (delta_ij - y_j) / tau, summed over rows (logits are shared).
    analytic = sum((np.diag(s) - np.outer(s, s)).T @ gi / tau for s, gi in zip(soft, g))
    np.testing.assert_allclose(grad_hard, analytic, rtol=1e-4, atol=1e-6)
    _, grad_soft = grad_wrt_logits(logits, noise, tau, "soft", g)
    np.testing.assert_allclose(grad_hard, grad_soft, rtol=1e-5, atol=1e-7)


def test_per_sample_rows_are_independent_per_batch_rows_equal(rng):
    per_sample = noise_for_batch(rng, 8, 3, 5, "per_sample")
    assert per_sample.shape == (3, 8, 5)
    for l in range(3):
        assert len({tuple(r) for r in per_sample[l]}) == 8
    per_batch = noise_for_batch(rng, 8, 3, 5, "per_batch")
    assert all((per_batch[:, i] == per_batch[:, 0]).all() for i in range(8))
    assert not (per_batch[0, 0] == per_batch[1, 0]).all()  # layers still differ


def test_argmax_frequencies_follow_softmax(rng):
    logits = np.array([1.0, 0.0, -1.0, 0.5], np.float32)
    n = 20000
    noise = gumbel_noise(rng, (n, 4))
    y = gumbel_softmax(mge.tensor(logits), noise, 1.0, "hard_st").numpy()
    freq = y.mean(0)
    # binomial standard error <= 0.0036 at n = 20000; 5 sigma
    np.testing.assert_allclose(freq, np_softmax(logits), atol=0.018)
    assert np.allclose(y.sum(1), 1.0)


def test_noise_is_standard_gumbel(rng):
    g = gumbel_noise(rng, (200000,))
    # mean = Euler-Mascheroni constant, variance = pi^2 / 6
    assert abs(g.mean() - 0.5772) < 0.01
    assert abs(g.var() - np.pi ** 2 / 6) < 0.03
    assert np.isfinite(g).all()
