"""Mixup / CutMix checked against their definitions: λ's distribution, the box, the pixels and
the soft targets."""
import numpy as np
import pytest
from scipy import stats

from errors import UserError
from data.mixing import MixupCutmix, cutmix_box, smoothed_one_hot


def batch(n=4, c=3, h=12, w=10, seed=0):
    """Images whose every pixel differs from the reversed batch's, labels 0..n-1."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, size=(n, c, h, w)).astype(np.float32)
    images += np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * 10  # sample k lives in [10k, 10k+1)
    return images, np.arange(n)


def lam_from_targets(targets, labels):
    """With no smoothing and distinct labels, target[i, label_i] = λ for the first half."""
    return float(targets[0, labels[0]])


def test_targets_are_soft_and_sum_to_one():
    images, labels = batch(6)
    rng = np.random.default_rng(3)
    for smoothing in (0.0, 0.1):
        for mix in (MixupCutmix(10, label_smoothing=smoothing),
                    MixupCutmix(10, mixup_alpha=0.2, cutmix_alpha=0.0, label_smoothing=smoothing),
                    MixupCutmix(10, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=smoothing),
                    MixupCutmix(10, prob=0.0, label_smoothing=smoothing)):
            for _ in range(20):
                out, targets = mix(images, labels, rng)
                assert out.dtype == np.float32 and out.shape == images.shape
                assert targets.dtype == np.float32 and targets.shape == (6, 10)
                assert np.allclose(targets.sum(1), 1.0, rtol=0, atol=1e-6)
                assert (targets >= 0).all()


def test_no_mixing_gives_the_smoothed_one_hot():
    images, labels = batch(4)
    out, targets = MixupCutmix(5, prob=0.0, label_smoothing=0.2)(images, labels, np.random.default_rng(0))
    assert np.array_equal(out, images)
    expected = np.full((4, 5), 0.2 / 5, np.float32)
    expected[np.arange(4), labels] = 1 - 0.2 + 0.2 / 5
    assert np.allclose(targets, expected, rtol=0, atol=1e-7)
    assert np.allclose(smoothed_one_hot(labels, 5, 0.2), expected, rtol=0, atol=1e-7)


def test_mixup_pixels_and_targets_follow_the_definition():
    images, labels = batch(4)
    mix = MixupCutmix(4, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1)
    rng = np.random.default_rng(7)
    for _ in range(10):
        state = rng.bit_generator.state
        lam, use_cutmix = mix.params(rng)
        rng.bit_generator.state = state  # replay the same draws through __call__
        out, targets = mix(images, labels, rng)
        assert not use_cutmix
        expected = lam * images.astype(np.float64) + (1 - lam) * images[::-1].astype(np.float64)
        assert np.allclose(out, expected, rtol=1e-6, atol=1e-6)
        on, off = 1 - 0.1 + 0.1 / 4, 0.1 / 4
        for i in range(4):
            row = np.full(4, off * lam + off * (1 - lam))
            row[labels[i]] += (on - off) * lam
            row[labels[3 - i]] += (on - off) * (1 - lam)
            assert np.allclose(targets[i], row, rtol=0, atol=1e-6)


def test_cutmix_box_area_equals_one_minus_corrected_lambda():
    images, labels = batch(4, h=13, w=17)
    mix = MixupCutmix(4, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0)
    rng = np.random.default_rng(11)
    clipped = 0
    for _ in range(200):
        state = rng.bit_generator.state
        raw, use_cutmix = mix.params(rng)
        y0, y1, x0, x1 = cutmix_box(13, 17, raw, rng)
        rng.bit_generator.state = state
        out, targets = mix(images, labels, rng)
        assert use_cutmix
        pasted = (out != images).any(axis=1)  # (N, H, W): where pixels came from the reversed batch
        box = np.zeros((13, 17), bool)
        box[y0:y1, x0:x1] = True
        for i in range(4):
            assert np.array_equal(pasted[i], box)
            assert np.array_equal(out[i][:, box], images[3 - i][:, box])
            assert np.array_equal(out[i][:, ~box], images[i][:, ~box])
        lam = lam_from_targets(targets, labels)
        assert lam == pytest.approx(1 - box.sum() / (13 * 17), abs=1e-6)
        # the unclipped box has sides int(H sqrt(1 - λ)), int(W sqrt(1 - λ))
        cut_h, cut_w = int(13 * np.sqrt(1 - raw)), int(17 * np.sqrt(1 - raw))
        if (y1 - y0, x1 - x0) != (cut_h, cut_w):
            clipped += 1
            assert y1 - y0 <= cut_h and x1 - x0 <= cut_w and (y0 == 0 or y1 == 13 or x0 == 0 or x1 == 17)
    assert 0 < clipped < 200  # both cases were exercised


@pytest.mark.parametrize("alpha", [0.2, 0.8, 1.0])
def test_mixup_lambda_is_beta_distributed(alpha):
    # Kolmogorov-Smirnov against Beta(α, α) on 3000 λ read back from the targets; the critical
    # value at significance 0.001 is 1.95 / sqrt(n) = 0.0356 (a fixed seed makes this
    # deterministic; a wrong α, e.g. 0.8 vs 1.0, gives D > 0.05 at this n).
    images, labels = batch(2, h=2, w=2)
    mix = MixupCutmix(2, mixup_alpha=alpha, cutmix_alpha=0.0, label_smoothing=0.0)
    rng = np.random.default_rng(2024)
    lams = np.array([lam_from_targets(mix(images, labels, rng)[1], labels) for _ in range(3000)])
    d = stats.kstest(lams, stats.beta(alpha, alpha).cdf).statistic
    assert d < 1.95 / np.sqrt(3000)
    wrong = stats.kstest(lams, stats.beta(alpha * 1.5, alpha * 1.5).cdf).statistic
    assert wrong > 1.95 / np.sqrt(3000)  # the test has the power to see a wrong α


def test_switch_and_apply_probabilities_are_binomial():
    # 4000 batches: P(mixed) = 0.6, P(cutmix | mixed) = 0.25; 5-std bounds of the counts
    mix = MixupCutmix(3, prob=0.6, switch_prob=0.25)
    rng = np.random.default_rng(5)
    draws = [mix.params(rng) for _ in range(4000)]
    mixed = [c for lam, c in draws if lam < 1.0]
    assert abs(len(mixed) - 2400) < 5 * np.sqrt(4000 * 0.6 * 0.4)
    assert abs(sum(mixed) - 0.25 * len(mixed)) < 5 * np.sqrt(len(mixed) * 0.25 * 0.75)


def test_deterministic_under_a_seeded_generator():
    images, labels = batch(8)
    mix = MixupCutmix(8)
    a = [mix(images, labels, np.random.default_rng(s)) for s in range(10)]
    b = [mix(images, labels, np.random.default_rng(s)) for s in range(10)]
    for (x1, t1), (x2, t2) in zip(a, b):
        assert np.array_equal(x1, x2) and np.array_equal(t1, t2)
    assert len({t.tobytes() for _, t in a}) == 10


def test_input_is_not_modified():
    images, labels = batch(4)
    copy = images.copy()
    MixupCutmix(4)(images, labels, np.random.default_rng(0))
    assert np.array_equal(images, copy)


@pytest.mark.parametrize("kwargs", [dict(mixup_alpha=0.0, cutmix_alpha=0.0), dict(mixup_alpha=-1.0),
                                    dict(prob=1.5), dict(switch_prob=-0.1), dict(label_smoothing=1.0),
                                    dict(mode="elem"), dict(num_classes=0)])
def test_bad_settings_are_user_errors(kwargs):
    kwargs = dict(dict(num_classes=10), **kwargs)
    with pytest.raises(UserError) as info:
        MixupCutmix(**kwargs)
    assert "\n" not in str(info.value)


def test_bad_shapes_are_user_errors():
    with pytest.raises(UserError):
        MixupCutmix(3)(np.zeros((2, 3, 4), np.float32), np.zeros(2, int), np.random.default_rng(0))
    with pytest.raises(UserError):
        MixupCutmix(3)(np.zeros((2, 3, 4, 4), np.float32), np.zeros(3, int), np.random.default_rng(0))
