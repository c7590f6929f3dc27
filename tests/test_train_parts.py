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


# -- configuration, recipes ----------------------------------------------------------------

def _config(*argv):
    import train
    return train.parse_config(list(argv))


def test_recipe_precedence_dataset_then_recipe_then_flags():
    from training.recipe import DATASET_DEFAULTS, RECIPES
    config, *_ = _config()
    assert (config.dataset, config.epochs, config.lr) == ("digits", 12, 0.02)
    config, *_ = _config("--recipe", "table5")
    for key, value in RECIPES["table5"].items():
        assert getattr(config, key) == value, key
    assert config.hflip == DATASET_DEFAULTS["digits"]["hflip"] == 0  # not a recipe knob
    config, *_ = _config("--recipe", "table5", "--lr", "0.05", "--aa", "none")
    assert (config.lr, config.aa, config.mixup) == (0.05, "none", 0.2)


def test_official_recipe_values():
    """Spot checks against the official sources quoted in training/recipe.py."""
    from training.recipe import RECIPES
    l2 = RECIPES["l2pse"]  # README.md:120 --opts of RepVGGplus-L2pse
    assert (l2["epochs"], l2["lr"], l2["weight_decay"], l2["warmup_epochs"],
            l2["label_smoothing"], l2["aa"], l2["mixup"], l2["image_size"],
            l2["eval_image_size"]) == (300, 0.1, 4e-5, 5, 0.1, "raug15", 0.2, 256, 320)
    t4 = RECIPES["table4"]  # the original train.py: 120 epochs, cosine, no smoothing
    assert (t4["epochs"], t4["warmup_epochs"], t4["label_smoothing"], t4["mixup"]) == \
        (120, 0, 0.0, 0.0)
    assert RECIPES["table5"]["epochs"] == 200 and RECIPES["d2se"]["eval_image_size"] == 320


def test_saved_config_round_trips_and_resume_compares_declared_fields():
    import dataclasses
    from training.config import TrainConfig, resume_fields
    from training.state import changed_settings
    config, *_ = _config("--recipe", "l2pse")
    saved = dataclasses.asdict(config)
    assert TrainConfig(**saved) == config
    assert changed_settings(saved, config) == []
    assert changed_settings(saved, config.replace(mixup=0.4)) == ["mixup 0.2 -> 0.4"]
    assert changed_settings(saved, config.replace(workers=3, device="cpu")) == []
    assert {"lr", "epochs", "aa", "mixup", "ema_alpha", "arch"} <= set(resume_fields())


# -- the loss -------------------------------------------------------------------------------

def test_loss_weights_auxiliary_heads_and_takes_soft_targets(rng):
    from training.step import classification_loss
    logits = {k: rng.normal(0, 1, (4, 6)).astype(np.float32)
              for k in ("main", "stage1_aux", "stage2_aux")}
    labels = np.array([0, 5, 2, 2], np.int32)

    def ce(x, y, s=0.0):  # smoothed cross-entropy computed here in numpy
        z = x - x.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        t = np.full_like(logp, s / x.shape[1])
        t[np.arange(len(y)), y] += 1 - s
        return float(-(t * logp).sum(1).mean())

    loss, main = classification_loss(0.1)({k: mge.tensor(v) for k, v in logits.items()},
                                           mge.tensor(labels))
    want = ce(logits["main"], labels, 0.1) + 0.1 * (ce(logits["stage1_aux"], labels, 0.1)
                                                     + ce(logits["stage2_aux"], labels, 0.1))
    np.testing.assert_allclose(float(loss.numpy()), want, rtol=1e-5)
    np.testing.assert_array_equal(main.numpy(), logits["main"])
    soft = np.full((4, 6), 0.1 / 6, np.float32)
    soft[np.arange(4), labels] += 0.9
    loss, _ = classification_loss(0.0)(mge.tensor(logits["main"]), mge.tensor(soft))
    np.testing.assert_allclose(float(loss.numpy()), ce(logits["main"], labels, 0.1), rtol=1e-5)


# -- curves ---------------------------------------------------------------------------------

def _rows(n, with_ema=False):
    return [dict(epoch=str(e), train_loss=str(2.0 / e), val_loss=str(1e5 / e ** 3),
                 train_acc1="50", val_acc1="40", val_acc5="90",
                 ema_val_acc1="45" if with_ema else "", ema_val_loss="1" if with_ema else "")
            for e in range(1, n + 1)]


def test_curves_log_loss_integer_epochs_top5_only_beyond_5_classes():
    import matplotlib.pyplot as plt
    from training.metrics import curves_figure
    fig = curves_figure(_rows(2), "RepVGG-A0 on digits", num_classes=3)
    loss_ax, acc_ax = fig.axes[:2]
    assert loss_ax.get_yscale() == "log"
    ticks = [t for t in loss_ax.get_xticks() if 1 <= t <= 2]
    assert ticks and all(float(t).is_integer() for t in ticks)
    labels = [line.get_label() for line in acc_ax.get_lines()]
    assert "val top-5" not in labels and "val top-1" in labels
    assert "digits" in fig._suptitle.get_text()
    plt.close(fig)
    fig = curves_figure(_rows(3, with_ema=True), "x", num_classes=10)
    labels = [line.get_label() for line in fig.axes[1].get_lines()]
    assert "val top-5" in labels and "val top-1 (EMA)" in labels
    plt.close(fig)


# -- arguments: one line for every bad value (m6), true help (m14) ----------------------------

def _error_of(argv, capsys):
    import pytest
    import train
    from common import cli
    with pytest.raises(SystemExit) as exit_:
        cli.run(train.main, argv)
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert exit_.value.code == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_every_numeric_flag_is_validated_with_one_line(capsys, tmp_path):
    out = ["--output", str(tmp_path / "o")]
    for argv, words in (
            (["--lr", "-0.1"], "--lr must be positive"),
            (["--label-smoothing", "1.5"], "--label-smoothing must be in [0, 1)"),
            (["--weight-decay", "-1"], "--weight-decay cannot be negative"),
            (["--momentum", "5"], "--momentum must be in [0, 1)"),
            (["--warmup-epochs", "-3"], "--warmup-epochs cannot be negative"),
            (["--ngpus", "0"], "--ngpus must be at least 1"),
            (["--rank", "5"], "--rank must be in 0..0 for --world-size 1"),
            (["--mixup", "-1"], "--mixup cannot be negative"),
            (["--ema-alpha", "2"], "--ema-alpha must be in [0, 1]"),
            (["--mixup-prob", "1.5"], "--mixup-prob must be in [0, 1]"),
            (["--eval-image-size", "8"], "--eval-image-size must be 0"),
            (["--aa", "bogus"], "unknown augmentation"),
            (["--reset-classifier"], "--reset-classifier applies to --weights"),
            (["--world-size", "2"], "data-parallel training (--world-size 2 with --ngpus 1) "
                                    "needs 1 CUDA GPU on this machine, but none is usable here"),
            (["--ngpus", "2"], "needs 2 CUDA GPUs on this machine")):
        assert words in _error_of(argv + out, capsys), argv
    assert not (tmp_path / "o").exists()


def test_warmup_longer_than_the_run_is_warned(capsys, tmp_path):
    import pytest
    import train
    from common import cli
    with pytest.raises(SystemExit):  # stops at the missing weights, after the warning
        cli.run(train.main, ["--epochs", "2", "--warmup-epochs", "5", "--weights",
                             str(tmp_path / "none.pkl"), "--output", str(tmp_path / "o")])
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("warning: --warmup-epochs 5 >= --epochs 2: the whole run is "
                               "warm-up")
    assert lines[1].startswith("error: checkpoint not found")


def test_warmup_warning_text():
    _, notes, *_ = _config("--epochs", "2", "--warmup-epochs", "5")
    assert notes == ["--warmup-epochs 5 >= --epochs 2: the whole run is warm-up (the learning "
                     "rate never decays)"]
    assert _config("--epochs", "2", "--warmup-epochs", "1")[1] == []


def test_help_texts_say_what_the_flags_do():
    import train
    text = " ".join(train.build_parser().format_help().split())
    assert "--no-progress hide the progress bars" in text
    assert "(default: True)" not in text and "(default: False)" not in text
    assert "--amp mixed precision; needs a GPU (an error on CPU)" in text
    assert "cifar100 when it holds CIFAR-100" in text
    for name in ("table4", "table5", "d2se", "l2pse", "RepVGG-D2se"):
        assert name in text


def test_cifar100_folder_is_detected(tmp_path):
    from data.splits import detect_dataset
    c100 = tmp_path / "c" / "cifar-100-python"
    c100.mkdir(parents=True)
    (c100 / "train").write_bytes(b"")
    (c100 / "meta").write_bytes(b"")
    assert detect_dataset(str(c100)) == detect_dataset(str(tmp_path / "c")) == "cifar100"
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    (c10 / "data_batch_1").write_bytes(b"")
    assert detect_dataset(str(c10)) == detect_dataset(str(tmp_path)) == "cifar10"
    assert detect_dataset(str(tmp_path / "images")) == "imagenet"
    assert detect_dataset(None) == "digits"


def test_reset_classifier_keeps_the_body_and_starts_the_classifier_afresh(tmp_path):
    from common.checkpoint import save_checkpoint
    from errors import CheckpointError
    from model import get_model
    from model.checkpoint import checkpoint_dict, numpy_state_dict
    from training.state import load_initial_weights
    source = get_model("RepVGG-A0", num_classes=12)
    path = str(tmp_path / "twelve.pkl")
    save_checkpoint(checkpoint_dict(numpy_state_dict(source), "RepVGG-A0", "train"), path)
    mge.random.seed(5)
    target = get_model("RepVGG-A0", num_classes=3)
    before = numpy_state_dict(target)
    try:
        load_initial_weights(target, path, 3)
        raise AssertionError("a 12-class classifier loaded into a 3-class model")
    except CheckpointError as e:
        assert "--reset-classifier" in str(e)
    kept = load_initial_weights(target, path, 3, reset_classifier=True)
    assert sorted(kept) == ["linear.bias", "linear.weight"]
    after, src = numpy_state_dict(target), numpy_state_dict(source)
    for key in after:
        want = before[key] if key.startswith("linear.") else src[key]
        np.testing.assert_array_equal(after[key], want, err_msg=key)


def test_an_output_that_cannot_be_a_run_folder_is_one_line(capsys, tmp_path):
    a_file = tmp_path / "metrics.csv"
    a_file.write_text("x")
    assert "exists and is not a folder" in _error_of(["--output", str(a_file)], capsys)
    msg = _error_of(["--output", str(a_file / "run")], capsys)
    assert "run folder" in msg and str(a_file / "run") in msg
