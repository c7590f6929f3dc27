import numpy as np

from data.digits import load_digits


def test_digits_split_is_stratified_disjoint_and_deterministic():
    from sklearn.datasets import load_digits as sk

    train, val, names = load_digits(image_size=16, val_fraction=0.2, seed=3)
    assert names == tuple("0123456789")
    assert train.images.shape[1:] == (16, 16, 3) and train.images.dtype == np.uint8
    assert len(train.labels) + len(val.labels) == len(sk().target) == 1797
    counts = np.bincount(val.labels, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # ~20% of each class (174..183 per class)
    again, _, _ = load_digits(image_size=16, val_fraction=0.2, seed=3)
    assert np.array_equal(again.labels, train.labels)
    # the three channels are the same grey image, and the image is really a digit (not blank)
    assert np.array_equal(train.images[..., 0], train.images[..., 2])
    assert train.images.reshape(len(train.labels), -1).max(1).min() > 100


def test_upscaled_digit_keeps_the_original_pattern():
    from sklearn.datasets import load_digits as sk

    original = sk().images[0]
    train, val, _ = load_digits(image_size=8, val_fraction=0.0, seed=0)
    # at 8x8 the resize is the identity, so the first image is the original scaled to 0..255
    np.testing.assert_allclose(train.images[0, :, :, 0], np.clip(original * 255 / 16, 0, 255).astype(np.uint8))
    assert len(val.labels) == 0
