"""Reference 7.5 item 15: TAS width choices, select-two sampling, channel interpolation,
expected FLOPs, the FLOP loss, and a pruned configuration that builds and trains."""
import numpy as np
import pytest

import megengine as mge
from megengine.autodiff import GradManager

from model.opcount import count_ops
from model.derived import build_from_arch
from search.space import get_space, make_space
from search.tas import TASConfig, TASSearch
from search.tas_net import (TASNet, arch_from_widths, channel_interp,
                            expected_flops, flop_loss, get_flop, select2, width_choices)
from tests.search_fixtures import fit_fixed_batch, tiny_data


def tas_space(image_size=8):
    return make_space("tas_t", image_size, 10, (4, 1), [(4, 1), (8, 2), (16, 1)], ("conv_k3",))


def test_width_choices_and_attention_lengths_agree(rng):
    assert width_choices(16) == [4, 6, 8, 9, 11, 12, 14, 16]
    assert width_choices(8) == [2, 3, 4, 5, 6, 7, 8]
    assert width_choices(2) == [1, 2]
    net = TASNet(tas_space(), rng)
    for layer, a in zip(net.layers, net.attentions):
        assert a.shape == (len(layer.choices),) == (len(layer.bns),)
        assert layer.choices[-1] == layer.conv.out_channels
    net = TASNet(get_space("tas_digits"), rng)
    assert [len(a) for a in net.attentions] == [len(width_choices(c)) for c in (16, 32, 32, 64)]


def test_select2_gives_two_distinct_choices_with_weights_summing_to_one(rng):
    logits = mge.Parameter(rng.normal(size=8).astype(np.float32))
    for _ in range(50):
        gm = GradManager().attach([logits])
        with gm:
            idx, w = select2(logits, 1.0, rng)
            gm.backward(w[0] * 2.0 + w[1] * 1.0)
        assert len(set(idx.tolist())) == 2 and 0 <= idx.min() and idx.max() < 8
        assert float(w.sum().numpy()) == pytest.approx(1.0, abs=1e-6)
        g = logits.grad.numpy()
        assert np.count_nonzero(g) >= 2  # the gradient reaches the logits
    idx, w = select2(mge.tensor(np.zeros(1, np.float32)), 1.0, rng)
    assert idx.tolist() == [0] and float(w.numpy()[0]) == 1.0


def test_select2_frequency_follows_the_attention(rng):
    logits = mge.tensor(np.array([3.0, 0.0, 0.0, 0.0], np.float32))
    first = [0 in select2(logits, 1.0, rng)[0] for _ in range(300)]
    assert np.mean(first) > 0.9  # choice 0 has 87 % of the mass: nearly always one of the two


def test_channel_interp_identity_mean_and_hand_matrix(rng):
    x = rng.normal(size=(2, 6, 3, 3)).astype(np.float32)
    np.testing.assert_array_equal(channel_interp(mge.tensor(x), 6).numpy(), x)
    for c in (3, 2, 12):  # divisors and a multiple: the channel mean is preserved
        y = channel_interp(mge.tensor(x), c).numpy()
        assert y.shape == (2, c, 3, 3)
        np.testing.assert_allclose(y.mean(1), x.mean(1), rtol=1e-5, atol=1e-6)
    x5 = rng.normal(size=(1, 5, 2, 2)).astype(np.float32)
    y = channel_interp(mge.tensor(x5), 3).numpy()
    hand = np.stack([x5[:, 0:2].mean(1), x5[:, 1:4].mean(1), x5[:, 3:5].mean(1)], axis=1)
    np.testing.assert_allclose(y, hand, rtol=1e-5, atol=1e-6)


def np_softmax(a):
    e = np.exp(a - a.max())
    return e / e.sum()


def test_expected_flops_are_the_hand_formula(rng):
    sp = tas_space()
    net = TASNet(sp, rng)
    for a in net.attentions:
        a[...] = rng.normal(size=a.shape).astype(np.float32)
    e = [float((np_softmax(a.numpy()) * np.array(l.choices)).sum())
         for a, l in zip(net.attentions, net.layers)]
    # sizes: stem 8x8, layer outputs 8, 4, 4; 3x3 kernels; classifier 10 classes
    hand = (27 * 4 * 64 + 9 * 64 * 4 * e[0] + 9 * 16 * e[0] * e[1] + 9 * 16 * e[1] * e[2]
            + e[2] * 10) / 1e6
    assert float(expected_flops(net).numpy()) == pytest.approx(hand, rel=1e-5)


def test_max_and_genotype_flops_match_the_built_networks(rng):
    sp = tas_space()
    net = TASNet(sp, rng)
    full = build_from_arch(arch_from_widths(sp, [4, 8, 16]))
    assert get_flop(net, "max") * 1e6 == pytest.approx(count_ops(full, (1, 3, 8, 8))["flops"])
    for a in net.attentions:
        a[...] = np.eye(len(a.numpy()))[1].astype(np.float32)  # argmax = second-smallest
    widths = net.widths(net.argmax())
    assert widths == [width_choices(c)[1] for c in (4, 8, 16)]
    pruned = build_from_arch(arch_from_widths(sp, widths))
    assert get_flop(net, "genotype") * 1e6 == pytest.approx(
        count_ops(pruned, (1, 3, 8, 8))["flops"])


def test_flop_loss_direction(rng):
    sp = tas_space()
    net = TASNet(sp, rng)
    for a in net.attentions:  # argmax = full width: above any target < 1
        a[...] = np.eye(len(a.numpy()))[-1].astype(np.float32)
    gm = GradManager().attach(net.attentions)
    with gm:
        loss, expected = flop_loss(net, ratio=0.3)
        gm.backward(loss)
    assert float(loss.numpy()) == pytest.approx(np.log(float(expected.numpy())), rel=1e-6)
    g = net.attentions[-1].grad.numpy()
    assert g[-1] > 0 > g[0]  # descent moves mass from the widest to the narrowest choice
    for a in net.attentions:  # argmax = narrowest: below the target -> grow
        a[...] = np.eye(len(a.numpy()))[0].astype(np.float32)
    loss, expected = flop_loss(net, ratio=0.9)
    assert float(loss.numpy()) == pytest.approx(-np.log(float(expected.numpy())), rel=1e-6)
    loss, _ = flop_loss(net, ratio=get_flop(net, "genotype") / get_flop(net, "max"))
    assert loss == 0.0


def test_search_steps_then_pruned_network_builds_and_trains(rng):
    sp = tas_space()
    train, val = tiny_data(n_train=48, n_val=16)
    s = TASSearch(sp, train, val, TASConfig(epochs=1, batch_size=8, max_steps=2, flop_ratio=0.5))
    before = [a.numpy().copy() for a in s.net.attentions]
    s.run(progress=False)
    assert any(not np.array_equal(b, a.numpy()) for b, a in zip(before, s.net.attentions))
    widths = s.net.widths(s.net.argmax())
    arch = arch_from_widths(sp, widths, get_flop(s.net, "genotype"))
    mge.random.seed(0)
    net = build_from_arch(arch)
    assert [l["C_out"] for l in arch["layers"]] == widths
    x = mge.tensor(((train.images[:16].astype(np.float32) / 255 - 0.5) / 0.5)
                   .transpose(0, 3, 1, 2))
    y = mge.tensor(train.labels[:16])
    losses = fit_fixed_batch(net, x, y, 10)
    assert losses[-1] < 0.9 * losses[0], losses  # fits a fixed batch
