"""AutoAugment / RandAugment operations checked against their definitions, computed a second way
(numpy arithmetic, PIL.ImageOps directly, affine coordinate math, the paper's magnitude ranges),
and against timm's own ``auto_augment.py`` (the code the official RepVGG training runs), executed
from the torch venv's timm install with identical arguments."""
import glob
import importlib.util
import math
import os

import numpy as np
import pytest
from PIL import Image, ImageOps

from errors import UserError
from data import augment as A

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def timm_aa():
    """timm's auto_augment.py, loaded by path (it imports only PIL, numpy and the standard
    library), so it runs on this venv's PIL exactly like ours."""
    paths = glob.glob(os.path.join(ROOT, ".torchvenv", "lib", "python*", "site-packages", "timm",
                                   "data", "auto_augment.py"))
    if not paths:
        pytest.fail("timm is not installed in .torchvenv: run `make setup-torch`", pytrace=False)
    spec = importlib.util.spec_from_file_location("timm_auto_augment", paths[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_image(width=48, height=40, seed=0):
    """Gradients plus noise, not spanning the full range (so autocontrast/equalize act)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([30 + 3 * x, 40 + 4 * y, 60 + 2 * (x + y)], axis=-1)
    noise = rng.integers(-20, 21, size=base.shape)
    return Image.fromarray(np.clip(base + noise, 10, 230).astype(np.uint8))


test_image.__test__ = False  # a helper, not a test


def arr(image):
    return np.asarray(image).astype(np.int64)


class FixedRng:
    """Stands in for a Generator where a test fixes the one uniform draw (the sign)."""

    def __init__(self, value):
        self.value = value

    def uniform(self, *args):
        return self.value


# ---- pixel operations: numpy arithmetic -----------------------------------------------------

def test_invert_solarize_posterize_solarize_add_match_numpy():
    image = test_image()
    x = arr(image)
    assert np.array_equal(arr(A.invert(image)), 255 - x)
    for threshold in (0, 77, 128, 200, 256):
        assert np.array_equal(arr(A.solarize(image, threshold)), np.where(x >= threshold, 255 - x, x))
    for bits in range(0, 9):
        assert np.array_equal(arr(A.posterize(image, bits)), (x >> (8 - bits)) << (8 - bits))
    for add in (0, 37, 110, 154):
        assert np.array_equal(arr(A.solarize_add(image, add)), np.where(x < 128, np.minimum(255, x + add), x))


def test_equalize_and_autocontrast_are_imageops():
    image = test_image()
    assert np.array_equal(arr(A.equalize(image)), arr(ImageOps.equalize(image)))
    out = arr(A.auto_contrast(image))
    assert np.array_equal(out, arr(ImageOps.autocontrast(image)))
    # and per channel the darkest value goes to 0, the brightest to 255
    assert (out.reshape(-1, 3).min(0) == 0).all() and (out.reshape(-1, 3).max(0) == 255).all()


def _blend(degenerate, image, factor):
    """PIL's Image.blend: in1 + alpha * (in2 - in1) in float32, truncated, clipped (Blend.c)."""
    alpha = np.float32(factor)
    out = degenerate.astype(np.float32) + alpha * (image - degenerate).astype(np.float32)
    return np.clip(np.where(out <= 0, 0, out), 0, 255).astype(np.int64)


def _luma(x):
    # ITU-R 601-2 luma as PIL's convert("L") computes it (16-bit fixed point, rounded)
    return (x[..., 0] * 19595 + x[..., 1] * 38470 + x[..., 2] * 7471 + 0x8000) >> 16


@pytest.mark.parametrize("factor", [0.1, 0.64, 1.0, 1.46, 1.9])
def test_brightness_color_contrast_blend_with_their_degenerate_image(factor):
    image = test_image()
    x = arr(image)
    assert np.array_equal(arr(A.brightness(image, factor)), _blend(np.zeros_like(x), x, factor))
    grey = np.repeat(_luma(x)[..., None], 3, axis=-1)
    assert np.array_equal(arr(A.color(image, factor)), _blend(grey, x, factor))
    mean = int(_luma(x).mean() + 0.5)
    assert np.array_equal(arr(A.contrast(image, factor)), _blend(np.full_like(x, mean), x, factor))


@pytest.mark.parametrize("factor", [0.1, 1.0, 1.9])
def test_sharpness_blends_with_the_smoothed_image(factor):
    image = test_image()
    x = arr(image)
    # PIL's SMOOTH filter: 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13, rounded, border pixels kept
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float64) / 13
    smooth = x.copy()
    h, w = x.shape[:2]
    acc = sum(kernel[i, j] * x[i:h - 2 + i, j:w - 2 + j] for i in range(3) for j in range(3))
    smooth[1:-1, 1:-1] = np.clip(np.floor(acc + 0.5), 0, 255)
    assert np.array_equal(arr(A.sharpness(image, factor)), _blend(smooth, x, factor))


# ---- geometric operations: affine coordinate math -------------------------------------------

def _expected_affine(x, matrix, fill):
    """Nearest resampling: the output pixel centre (i + .5, j + .5) reads the input pixel at
    floor(matrix applied to it); outside the image it is ``fill``. Also returns the mask of
    pixels whose source point is not within 1e-3 of a pixel edge (PIL accumulates the
    coordinates incrementally, so a point that close to an edge may round either way)."""
    a, b, c, d, e, f = matrix
    h, w = x.shape[:2]
    jj, ii = np.mgrid[0:h, 0:w] + 0.5
    u, v = a * ii + b * jj + c, d * ii + e * jj + f
    xs, ys = np.floor(u).astype(int), np.floor(v).astype(int)
    inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    out = np.empty_like(x)
    out[...] = fill
    out[inside] = x[ys[inside], xs[inside]]
    clear = (np.abs(u - np.round(u)) > 1e-3) & (np.abs(v - np.round(v)) > 1e-3)
    return out, clear


def assert_affine(out, x, matrix, fill):
    expected, clear = _expected_affine(x, matrix, fill)
    assert clear.mean() > 0.99  # nearly every pixel is unambiguous
    assert np.array_equal(out[clear], expected[clear])


FILL = (124, 116, 104)


@pytest.mark.parametrize("name, argument, matrix", [
    ("shear_x", 0.2137, (1, 0.2137, 0, 0, 1, 0)),
    ("shear_x", -0.2911, (1, -0.2911, 0, 0, 1, 0)),
    ("shear_y", 0.1777, (1, 0, 0, 0.1777, 1, 0)),
    ("translate_x", 7.3, (1, 0, 7.3, 0, 1, 0)),
    ("translate_y", -5.6, (1, 0, 0, 0, 1, -5.6)),
    ("translate_x_rel", 0.25, (1, 0, 12.0, 0, 1, 0)),  # 0.25 of the 48-pixel width
    ("translate_y_rel", -0.3, (1, 0, 0, 0, 1, -12.0)),  # 0.3 of the 40-pixel height
])
def test_shear_and_translate_follow_the_affine_map(name, argument, matrix):
    image = test_image()
    out = getattr(A, name)(image, argument, fill=FILL, resample=Image.NEAREST)
    assert_affine(arr(out), arr(image), matrix, FILL)


def _rotation_matrix(degrees, w, h):
    """Counter-clockwise by ``degrees`` (y down) about (w/2, h/2): output p reads input
    c + R(p - c) with R the clockwise rotation [[cos, -sin], [sin, cos]] in y-down coordinates."""
    t = math.radians(degrees)
    cos, sin = round(math.cos(t), 15), round(math.sin(t), 15)
    cx, cy = w / 2, h / 2
    return (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)


def test_rotation_matrix_is_counter_clockwise():
    image = test_image(32, 32)
    expected, clear = _expected_affine(arr(image), _rotation_matrix(90, 32, 32), FILL)
    assert clear.all() and np.array_equal(expected, arr(image.transpose(Image.ROTATE_90)))  # PIL: counter-clockwise


@pytest.mark.parametrize("degrees", [90, 23.7, -17.3])
def test_rotate_follows_the_rotation_map(degrees):
    image = test_image()
    out = A.rotate(image, degrees, fill=FILL, resample=Image.NEAREST)
    assert_affine(arr(out), arr(image), _rotation_matrix(degrees, 48, 40), FILL)


def test_cutout_paints_one_clipped_square():
    image = test_image()
    for seed, size in enumerate((2, 9.7, 20, 40, 40)):
        probe = np.random.default_rng(seed)  # the centre: a uniform pixel, x then y
        cx, cy = int(probe.integers(0, 48)), int(probe.integers(0, 40))
        out = arr(A.cutout(image, size, np.random.default_rng(seed)))
        half = int(size) // 2
        x0, x1, y0, y1 = max(0, cx - half), min(48, cx + half), max(0, cy - half), min(40, cy + half)
        expected = arr(image)
        expected[y0:y1, x0:x1] = A.CUTOUT_FILL
        assert np.array_equal(out, expected)


# ---- magnitude -> argument: the AutoAugment paper's ranges (level 0..10 maps linearly) -------

@pytest.mark.parametrize("name, low, high, signed", [
    ("ShearX", 0.0, 0.3, True), ("ShearY", 0.0, 0.3, True),
    ("Rotate", 0.0, 30.0, True),
    ("TranslateXRel", 0.0, 0.45, True),  # the paper's 150 px of 331 = 0.453
    ("TranslateX", 0.0, 250.0, True),  # timm's translate_const default
    ("Color", 0.1, 1.9, False), ("Contrast", 0.1, 1.9, False),
    ("Brightness", 0.1, 1.9, False), ("Sharpness", 0.1, 1.9, False),
    ("Cutout", 2.0, 40.0, False),  # official train/cutout.py: max(2, 40 * level / 10)
])
def test_continuous_magnitudes_map_linearly_onto_the_paper_range(name, low, high, signed):
    op = A.AugmentOp(name)
    for level in (0, 1, 2.5, 5, 9, 10):
        expected = max(low, high * level / 10) if name == "Cutout" else low + (high - low) * level / 10
        (positive,) = op.level_fn(level, FixedRng(0.2), op.hp)
        (other,) = op.level_fn(level, FixedRng(0.8), op.hp)
        assert positive == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert other == pytest.approx(-expected if signed else expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("name, expected", [
    ("PosterizeOriginal", lambda m: 4 + int(4 * m / 10)),  # paper: 4..8 bits
    ("Posterize", lambda m: int(4 * m / 10)),  # TPU EfficientNet: 0..4 bits
    ("PosterizeIncreasing", lambda m: 4 - int(4 * m / 10)),
    ("Solarize", lambda m: int(256 * m / 10)),  # paper: threshold 0..256
    ("SolarizeIncreasing", lambda m: 256 - int(256 * m / 10)),
    ("SolarizeAdd", lambda m: int(110 * m / 10)),
])
def test_integer_magnitudes_floor_onto_the_range(name, expected):
    op = A.AugmentOp(name)
    for level in range(11):
        assert op.level_fn(level, FixedRng(0.2), op.hp) == (expected(level),)


def test_increasing_enhance_moves_away_from_identity():
    op = A.AugmentOp("ContrastIncreasing")
    for level in (0, 4, 10):
        assert op.level_fn(level, FixedRng(0.2), op.hp)[0] == pytest.approx(1 + 0.09 * level)
        assert op.level_fn(level, FixedRng(0.8), op.hp)[0] == pytest.approx(max(0.1, 1 - 0.09 * level))


# ---- against timm's code, identical arguments ----------------------------------------------

class _Sign:
    def __init__(self, value):
        self.value = value

    def random(self):
        return self.value


@pytest.mark.parametrize("sign", [0.2, 0.8])
def test_every_op_equals_timm_with_identical_arguments(timm_aa, monkeypatch, sign):
    image = test_image()
    hp = dict(translate_const=int(40 * 0.45), img_mean=FILL)
    ours = dict(translate_const=int(40 * 0.45), fill=FILL, interpolation=Image.BILINEAR)
    monkeypatch.setattr(timm_aa, "random", _Sign(sign))
    names = [n for n in A.OPS if n != "Cutout"]
    assert set(names) <= set(timm_aa.NAME_TO_OP)
    for name in names:
        op = A.AugmentOp(name, prob=1.0, hparams=ours)
        for level in (0, 3, 5.5, 9, 10):
            level_fn = timm_aa.LEVEL_TO_ARG[name]
            args = level_fn(level, hp) if level_fn else ()
            assert (op.level_fn(level, FixedRng(sign), op.hp) if op.level_fn else ()) == args, name
            expected = timm_aa.NAME_TO_OP[name](image, *args, fillcolor=FILL, resample=Image.BILINEAR)
            got = op.apply(image, level, FixedRng(sign))
            assert np.array_equal(arr(got), arr(expected)), (name, level)


@pytest.mark.parametrize("policy", ["original", "originalr", "v0", "v0r"])
def test_policies_equal_timms(timm_aa, policy):
    theirs = [[(op.name, op.prob, op.magnitude) for op in sub] for sub in timm_aa.auto_augment_policy(policy)]
    assert A.POLICIES[policy] == theirs


@pytest.mark.parametrize("spec", ["rand-m9-mstd0.5", "rand-m9-mstd0.5-inc1", "rand-m9-n2-mstd0.5-inc1",
                                  "rand-m7-n3", "rand-m15-mmax20-p0.7", "rand-mstd101", "rand"])
def test_rand_specs_parse_like_timm(timm_aa, spec):
    theirs = timm_aa.rand_augment_transform(spec, dict(translate_const=100, img_mean=FILL))
    ours = A.augment_from_name(spec, fill=FILL)
    assert ours.num_layers == theirs.num_layers
    assert [op.name for op in ours.ops] == [op.name for op in theirs.ops]
    for a, b in zip(ours.ops, theirs.ops):
        assert (a.prob, a.magnitude, a.magnitude_std) == (b.prob, b.magnitude, b.magnitude_std)
        assert a.magnitude_max == (b.magnitude_max or timm_aa._LEVEL_DENOM)


def test_autoaug_mstd_reaches_every_op(timm_aa):
    ours = A.augment_from_name("original-mstd0.5")
    theirs = timm_aa.auto_augment_transform("original-mstd0.5")
    assert [[op.magnitude_std for op in sub] for sub in ours.policy] == \
        [[op.magnitude_std for op in sub] for sub in theirs.policy]


# ---- the transforms as a whole --------------------------------------------------------------

NAMES = ["autoaug", "original-mstd0.5", "v0", "rand-m9-mstd0.5", "rand-m9-n2-mstd0.5-inc1", "raug15"]


@pytest.mark.parametrize("name", NAMES)
def test_transforms_are_deterministic_under_the_generator(name):
    t = A.augment_from_name(name, fill=FILL, image_size=40)
    image = test_image()
    first = [arr(t(image, np.random.default_rng(s))) for s in range(12)]
    again = [arr(t(image, np.random.default_rng(s))) for s in range(12)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert len({a.tobytes() for a in first}) > 3  # and the seed matters
    assert all(a.shape == (40, 48, 3) for a in first)


def test_probability_zero_and_one():
    image = test_image()
    never = A.AugmentOp("Invert", prob=0.0)
    always = A.AugmentOp("Invert", prob=1.0)
    rng = np.random.default_rng(0)
    assert all(never(image, rng) is image for _ in range(50))
    assert all(np.array_equal(arr(always(image, rng)), 255 - arr(image)) for _ in range(5))


def test_op_probability_is_binomial():
    # 4000 draws at p = 0.3: the count's std is sqrt(4000 * .3 * .7) = 29; 5 std = 145
    op = A.AugmentOp("Invert", prob=0.3)
    image = Image.new("L", (1, 1), 0)
    rng = np.random.default_rng(11)
    applied = sum(op(image, rng) is not image for _ in range(4000))
    assert abs(applied - 1200) < 145


def test_official_raug_uses_the_unclamped_levels_and_cutout():
    t = A.augment_from_name("raug15")
    assert [op.name for op in t.ops] == A.RAND_OPS + ["Cutout"]
    solarize_add = t.ops[A.RAND_OPS.index("SolarizeAdd")]
    assert solarize_add.level_fn(14, None, solarize_add.hp) == (154,)  # official: int(14 / 10 * 110)
    assert all(op.prob == 1.0 for op in t.ops)


def test_none_and_bad_names():
    assert A.augment_from_name(None) is None
    assert A.augment_from_name("none") is None
    assert A.augment_from_name("") is None
    for bad in ["foo", "rand-x9", "rand-m", "original-m9", "rand-p2", "raug0", "rand-tweights",
                "v1", "rand-m9-"]:
        with pytest.raises(UserError) as info:
            A.augment_from_name(bad)
        assert "\n" not in str(info.value) and bad in str(info.value)
    with pytest.raises(UserError):
        A.augment_from_name("autoaug", interpolation="lanczos")


# ---- random erasing (after normalisation) ---------------------------------------------------

def test_random_erasing_fills_exactly_its_boxes():
    x = np.random.default_rng(0).uniform(5, 6, size=(3, 40, 48)).astype(np.float32)  # never N(0,1)-like
    for mode in ("pixel", "rand", "const"):
        erase = A.RandomErasing(prob=1.0, mode=mode, max_count=3)
        for seed in range(30):
            boxes = erase.boxes(40, 48, np.random.default_rng(seed))
            out = erase(x, np.random.default_rng(seed))
            mask = np.zeros((40, 48), bool)
            for top, left, h, w in boxes:
                assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 48 and h < 40 and w < 48
                mask[top:top + h, left:left + w] = True
            assert np.array_equal(out[:, ~mask], x[:, ~mask])
            assert (np.abs(out[:, mask]) < 5).all()  # replaced by noise (|z| < 5) or zeros
            if mode == "const":
                assert (out[:, mask] == 0).all()
            if mode == "rand" and len(boxes) == 1:
                top, left, h, w = boxes[0]
                patch = out[:, top:top + h, left:left + w]
                assert (patch == patch[:, :1, :1]).all()  # one colour per channel
    assert np.array_equal(A.RandomErasing(prob=0.0)(x, np.random.default_rng(0)), x)


def test_random_erasing_area_and_aspect_follow_their_ranges():
    # one box per call: area fraction in [0.02, 1/3] and aspect h/w in [0.3, 1/0.3], up to the
    # rounding of h and w to whole pixels; the rate of erased calls is binomial(0.25)
    erase = A.RandomErasing(prob=0.25)
    rng = np.random.default_rng(3)
    calls = [erase.boxes(224, 224, rng) for _ in range(4000)]
    erased = [b[0] for b in calls if b]
    assert abs(len(erased) - 1000) < 5 * np.sqrt(4000 * 0.25 * 0.75)
    for top, left, h, w in erased:
        area = h * w / 224 ** 2
        assert 0.02 * 0.9 < area < (1 / 3) * 1.1
        assert 0.3 * 0.9 < h / w < (1 / 0.3) * 1.1
    fractions = np.array([h * w / 224 ** 2 for _, _, h, w in erased])
    assert abs(fractions.mean() - (0.02 + 1 / 3) / 2) < 0.02  # uniform area: mean at mid-range


def test_random_erasing_bad_settings():
    with pytest.raises(UserError):
        A.RandomErasing(mode="noise")
    with pytest.raises(UserError):
        A.RandomErasing(prob=2)
