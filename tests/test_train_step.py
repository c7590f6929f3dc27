"""training/step.py: the step's loss and update against NumPy, soft targets and auxiliary heads,
and the traced step against the eager one."""
import numpy as np

import megengine as mge
import megengine.module as M
from megengine.optimizer import SGD

from training.step import TrainStep, classification_loss, cross_entropy


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_one_step_equals_numpy_sgd(rng):
    x = rng.normal(0, 1, (6, 5)).astype(np.float32)
    labels = np.array([0, 2, 1, 2, 0, 1], dtype=np.int32)
    lin = M.Linear(5, 3)
    w0, b0 = lin.weight.numpy().copy(), lin.bias.numpy().copy()
    step = TrainStep(lin, SGD(lin.parameters(), lr=0.5, momentum=0.9), classification_loss())
    loss, logits = step(x, labels)

    z = x.astype(np.float64) @ w0.T + b0
    p = _softmax(z)
    np.testing.assert_allclose(logits, z, rtol=1e-5, atol=1e-6)
    assert abs(loss - (-np.log(p[np.arange(6), labels]).mean())) < 1e-5
    dz = (p - np.eye(3)[labels]) / 6
    np.testing.assert_allclose(lin.weight.numpy(), w0 - 0.5 * dz.T @ x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lin.bias.numpy(), b0 - 0.5 * dz.sum(0), rtol=1e-5, atol=1e-6)


def test_soft_targets_and_label_smoothing(rng):
    logits = rng.normal(0, 2, (5, 4)).astype(np.float32)
    labels = np.array([3, 0, 1, 1, 2], dtype=np.int32)
    onehot = np.eye(4, dtype=np.float32)[labels]
    for eps in (0.0, 0.1):
        hard = float(cross_entropy(mge.tensor(logits), mge.tensor(labels), eps).numpy())
        soft = float(cross_entropy(mge.tensor(logits), mge.tensor(onehot), eps).numpy())
        target = onehot * (1 - eps) + eps / 4
        expected = -(target * np.log(_softmax(logits.astype(np.float64)))).sum(1).mean()
        assert abs(hard - expected) < 1e-5 and abs(soft - expected) < 1e-5
    mixed = 0.3 * onehot + 0.7 * onehot[::-1]  # mixup of the batch with its reverse
    value = float(cross_entropy(mge.tensor(logits), mge.tensor(mixed)).numpy())
    expected = -(mixed * np.log(_softmax(logits.astype(np.float64)))).sum(1).mean()
    assert abs(value - expected) < 1e-5


def test_auxiliary_heads_and_extra_term(rng):
    main, aux = (rng.normal(0, 1, (3, 4)).astype(np.float32) for _ in range(2))
    labels = np.array([1, 0, 3], dtype=np.int32)
    loss_fn = classification_loss(0.0, aux_weight=0.1, extra=lambda: mge.tensor(2.5))
    loss, logits = loss_fn({"main": mge.tensor(main), "stage2_aux": mge.tensor(aux)},
                           mge.tensor(labels))

    def ce(z):
        return -np.log(_softmax(z.astype(np.float64))[np.arange(3), labels]).mean()
    assert abs(float(loss.numpy()) - (ce(main) + 0.1 * ce(aux) + 2.5)) < 1e-5
    np.testing.assert_array_equal(logits.numpy(), main)


def test_a_non_finite_loss_leaves_the_weights_untouched(rng):
    lin = M.Linear(3, 2)
    w0 = lin.weight.numpy().copy()
    step = TrainStep(lin, SGD(lin.parameters(), lr=0.1), classification_loss())
    x = np.full((2, 3), np.nan, dtype=np.float32)
    loss, _ = step(x, np.array([0, 1], dtype=np.int32))
    assert not np.isfinite(loss)
    np.testing.assert_array_equal(lin.weight.numpy(), w0)
    assert all(p.grad is None or not np.any(p.grad.numpy()) for p in lin.parameters())


def test_traced_step_equals_eager_step(rng):
    """A small RepVGG (fast conv routes on, train-mode BN, SGD with momentum and weight decay,
    changing learning rate, int then soft targets): same weights and BN statistics after four
    steps, traced or not, to float rounding (relative to how far the step moved them)."""
    from model.repvgg import RepVGG
    from training import fastconv
    from training.optimizer import build_sgd, set_lr

    batches = [(rng.normal(0, 1, (8, 3, 32, 32)).astype(np.float32),
                rng.integers(0, 10, 8).astype(np.int32)) for _ in range(2)]
    batches += [(images, np.eye(10, dtype=np.float32)[labels] * 0.6 + 0.04)
                 for images, labels in batches]
    states, losses = [], []
    for traced in (False, True):
        mge.random.seed(3)
        model = RepVGG((1, 2, 1, 1), 10, (0.25, 0.25, 0.25, 0.25))
        model.train()
        fastconv.enable(model)
        start = {k: np.array(v) for k, v in model.state_dict().items()}
        opt = build_sgd(model, 0.05, 0.9, 1e-4)
        step = TrainStep(model, opt, classification_loss(0.1), traced=traced)
        run = []
        for i, (images, targets) in enumerate(batches):
            set_lr(opt, 0.05 / (i + 1))
            run.append(step(images, targets)[0])
        losses.append(run)
        states.append({k: np.array(v) for k, v in model.state_dict().items()})
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    changed = 0
    for key, eager in states[0].items():
        moved = np.abs(eager - start[key]).max()
        gap = np.abs(states[1][key] - eager).max()
        assert gap <= 1e-4 * moved + 1e-6 * np.abs(eager).max(), (key, gap, moved)
        changed += moved > 1e-6 * np.abs(eager).max()
    assert changed > len(states[0]) // 2
