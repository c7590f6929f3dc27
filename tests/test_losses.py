"""soft_target_cross_entropy against finite differences, its closed-form gradient and
MegEngine's label-smoothed cross entropy."""
import megengine as mge
import megengine.functional as F
import numpy as np
import pytest
from megengine.autodiff import GradManager

from data.mixing import MixupCutmix, smoothed_one_hot
from training.losses import soft_target_cross_entropy


def problem(n=5, c=7, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, size=(n, c)).astype(np.float32)
    targets = rng.uniform(0.05, 1, size=(n, c))
    return logits, (targets / targets.sum(1, keepdims=True)).astype(np.float32)


def value_and_grad(logits, targets):
    x = mge.Parameter(logits)
    gm = GradManager().attach([x])
    with gm:
        loss = soft_target_cross_entropy(x, targets)
        gm.backward(loss)
    return float(loss.numpy()), x.grad.numpy()


def test_value_is_the_definition():
    logits, targets = problem()
    z = logits.astype(np.float64)
    log_softmax = z - z.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    expected = -(targets * log_softmax).sum(1).mean()
    assert value_and_grad(logits, targets)[0] == pytest.approx(expected, rel=1e-6)


def test_gradient_matches_finite_differences_and_the_closed_form():
    logits, targets = problem()
    loss, grad = value_and_grad(logits, targets)
    # closed form: (softmax(z) - t) / N
    p = np.exp(logits.astype(np.float64) - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert np.allclose(grad, (p - targets) / len(logits), rtol=0, atol=1e-6)
    # central differences in float64 arithmetic on the float32 loss: step 1e-2 keeps float32
    # rounding (~1e-7 / 1e-2) and the O(h^2) truncation (~1e-5) under the 1e-4 bound
    h = 1e-2
    numeric = np.zeros_like(grad, dtype=np.float64)
    for i in range(logits.shape[0]):
        for j in range(logits.shape[1]):
            up, down = logits.copy(), logits.copy()
            up[i, j] += h
            down[i, j] -= h
            numeric[i, j] = (value_and_grad(up, targets)[0] - value_and_grad(down, targets)[0]) / (2 * h)
    assert np.allclose(grad, numeric, rtol=0, atol=1e-4)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_equals_megengine_label_smoothing_on_smoothed_one_hots(smoothing):
    logits, _ = problem(n=6, c=9, seed=1)
    labels = np.array([0, 3, 8, 3, 5, 1])
    targets = smoothed_one_hot(labels, 9, smoothing)
    ours = value_and_grad(logits, targets)
    x = mge.Parameter(logits)
    gm = GradManager().attach([x])
    with gm:
        theirs = F.nn.cross_entropy(x, mge.tensor(labels), label_smooth=smoothing)
        gm.backward(theirs)
    assert ours[0] == pytest.approx(float(theirs.numpy()), rel=1e-6)
    assert np.allclose(ours[1], x.grad.numpy(), rtol=0, atol=1e-7)


def test_takes_mixup_targets_and_rejects_bad_shapes():
    images = np.zeros((4, 3, 4, 4), np.float32)
    _, targets = MixupCutmix(7)(images, np.array([1, 2, 3, 4]), np.random.default_rng(0))
    logits, _ = problem(n=4, c=7)
    assert np.isfinite(value_and_grad(logits, targets)[0])
    with pytest.raises(ValueError):
        soft_target_cross_entropy(mge.tensor(logits), targets[:, :5])
