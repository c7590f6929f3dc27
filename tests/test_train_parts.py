"""Pieces of the training code checked against values computed here another way."""
import math

import numpy as np

import megengine as mge

from data.loader import EpochSampler, TransformedDataset
from data.sources import ArraySource
from training.distributed import shard_indices, world
from training.hooks import after_optimizer_step
from training.optimizer import build_sgd, param_groups
from training.schedule import lr_at


def test_warmup_then_cosine():
    lrs = [lr_at(s, 0.1, 100, warmup_steps=10) for s in range(100)]
    np.testing.assert_allclose(lrs[:10], 0.1 * np.arange(1, 11) / 10)
    np.testing.assert_allclose(lrs[10], 0.1)
    np.testing.assert_allclose(lrs[55], 0.05 * (1 + math.cos(math.pi * 45 / 90)))
    assert lr_at(100, 0.1, 100, 10) == 0.0
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def _settings(net, **kw):
    """name -> (weight decay, lr multiplier) from the groups."""
    name_of = {id(p): n for n, p in net.named_parameters()}
    return {name_of[id(p)]: (g["weight_decay"], g["lr_mult"])
            for g in param_groups(net, 1e-4, **kw) for p in g["params"]}


def test_official_weight_decay_groups():
    from model import get_model
    net = get_model("RepVGG-A0", num_classes=10)
    wd = _settings(net)
    assert len(wd) == len(list(net.parameters()))
    assert wd["stage1.0.rbr_dense.conv.weight"] == (1e-4, 1.0)
    assert wd["stage1.0.rbr_dense.bn.weight"] == (0.0, 1.0)
    assert wd["stage1.0.rbr_dense.bn.bias"] == (0.0, 2.0)
    assert wd["stage1.1.rbr_identity.weight"] == (1e-4, 1.0)  # no "bn" in the name: decayed
    assert wd["stage1.1.rbr_identity.bias"] == (0.0, 2.0)
    assert wd["linear.bias"] == (0.0, 2.0)
    assert wd["linear.weight"] == (1e-4, 1.0)
    custom = _settings(net, custom_l2=True)
    assert custom["stage1.0.rbr_dense.conv.weight"] == (0.0, 1.0)
    assert custom["stage1.0.rbr_1x1.conv.weight"] == (0.0, 1.0)
    assert custom["stage1.1.rbr_identity.weight"] == (1e-4, 1.0)
    assert custom["linear.weight"] == (1e-4, 1.0)


def test_sgd_step_matches_numpy_momentum_and_decay():
    import megengine.module as M
    from megengine.autodiff import GradManager
    lin = M.Linear(3, 2)
    w0, b0 = lin.weight.numpy().copy(), lin.bias.numpy().copy()
    opt = build_sgd(lin, lr=0.1, momentum=0.9, weight_decay=0.01)
    gm = GradManager().attach(lin.parameters())
    x = np.ones((1, 3), np.float32)
    for _ in range(2):
        with gm:
            gm.backward(lin(mge.tensor(x)).sum())
        opt.step().clear_grad()
    # d(sum(Wx+b))/dW = x for each row, /db = 1; decay on W only; bias at 2x lr
    gw = lambda w: np.ones_like(w) + 0.01 * w  # noqa: E731
    v = gw(w0); w1 = w0 - 0.1 * v; v = 0.9 * v + gw(w1); w2 = w1 - 0.1 * v  # noqa: E702
    vb = np.ones_like(b0); b1 = b0 - 0.2 * vb; vb = 0.9 * vb + 1; b2 = b1 - 0.2 * vb  # noqa
    np.testing.assert_allclose(lin.weight.numpy(), w2, rtol=1e-6)
    np.testing.assert_allclose(lin.bias.numpy(), b2, rtol=1e-6)


def test_sampler_is_seeded_per_epoch_and_shards_like_scatter():
    src = ArraySource(np.zeros((10, 4, 4, 3), np.uint8), np.arange(10) % 3, "abc", "t")
    ds = TransformedDataset(src, lambda im, rng: np.zeros((3, 4, 4), np.float32))
    s = EpochSampler(ds, batch_size=2, shuffle=True, seed=5)
    e0 = [i for b in s for i, _ in b]
    assert e0 == [i for b in s for i, _ in b]            # same epoch, same order
    s.set_epoch(1)
    e1 = [i for b in s for i, _ in b]
    assert sorted(e0) == sorted(e1) == list(range(10)) and e0 != e1
    for world_size in (2, 3, 4):
        shards = []
        for rank in range(world_size):
            r = EpochSampler(ds, batch_size=1, shuffle=True, seed=5, world_size=world_size,
                             rank=rank)
            r.set_epoch(1)
            got = [i for b in r for i, _ in b]
            assert got == [e1[j] for j in shard_indices(10, world_size, rank)]
            shards += got
        assert set(shards) == set(range(10))
        assert len(shards) == -(-10 // world_size) * world_size


def test_world_arithmetic():
    assert world(4, 2, 1) == (8, 4)
    assert world(1) == (1, 0)


def test_after_optimizer_step_reaches_every_submodule():
    import megengine.module as M

    class Clamped(M.Module):
        calls = 0

        def after_optimizer_step(self):
            type(self).calls += 1

        def forward(self, x):
            return x

    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.a = Clamped()
            self.blocks = [Clamped(), M.Linear(2, 2), Clamped()]

        def forward(self, x):
            return x

    after_optimizer_step(Net())
    assert Clamped.calls == 3


def test_fast_conv_weight_gradient_equals_megengine_own(rng):
    import megengine.functional as F
    import megengine.module as M
    from megengine.autodiff import GradManager
    from training import fastconv
    for size, k, stride, pad in ((9, 3, 1, 1), (9, 3, 2, 1), (9, 1, 2, 0), (9, 1, 1, 0),
                                 (2, 3, 2, 1), (2, 3, 1, 1), (1, 3, 1, 1), (2, 1, 2, 0)):
        x = mge.tensor(rng.normal(0, 1, (3, 4, size, size)).astype(np.float32))
        grads = []  # the last four cases take the small-output (im2col forward) route
        for fast in (False, True):
            conv = M.Conv2d(4, 5, k, stride=stride, padding=pad, bias=False)
            conv.weight[...] = mge.tensor(np.linspace(-1, 1, 5 * 4 * k * k, dtype=np.float32)
                                          .reshape(conv.weight.shape))
            if fast:
                assert fastconv.enable(conv) == 1
            gm = GradManager().attach([conv.weight, x])
            with gm:
                y = conv(x)
                gm.backward((y * y).sum())
            grads.append((y.numpy(), conv.weight.grad.numpy(), x.grad.numpy()))
            x.grad = None
        for a, b in zip(*grads):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max())
