"""The training recipes and EMA inside the real Trainer, scaled down (digits, 16x16, 2 steps):
every knob reaches the optimizer, the loss and the loader; EMA resumes bit for bit."""
import dataclasses
import os

import numpy as np
import pytest

import megengine as mge

import train
from common.checkpoint import load_checkpoint
from data.augment import AutoAugment, OfficialRandAug
from training.loop import Trainer
from training.recipe import RECIPES
from training.schedule import lr_at

SMALL = ["--image-size", "16", "--eval-image-size", "16", "--batch-size", "8", "--epochs", "2",
         "--max-steps-per-epoch", "2", "--max-val-images", "16", "--eval-batch-size", "16",
         "--workers", "0", "--no-progress", "--device", "cpu"]


def make_trainer(out, *argv):
    config, *_ = train.parse_config(list(argv))
    return Trainer(config, train.load_data(config), str(out))


def transform_steps(trainer):
    return trainer.splits.train_transform.steps


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_recipe_reaches_optimizer_loss_and_loader(tmp_path, name):
    recipe = RECIPES[name]
    full, *_ = train.parse_config(["--recipe", name])
    assert full.test_size == (recipe["eval_image_size"] or recipe["image_size"])
    t = make_trainer(tmp_path, "--recipe", name, *SMALL)
    # optimizer: decay of the decayed group, momentum, lr of the first step (warm-up or not)
    decays = {g["weight_decay"] for g in t.optimizer.param_groups}
    assert decays == {0.0, recipe["weight_decay"]}
    assert {g["momentum"] for g in t.optimizer.param_groups} == {0.9}
    # loss: smoothing in the loss (checked against numpy), or inside the mixing's soft targets
    logits = np.linspace(-2, 2, 30, dtype=np.float32).reshape(3, 10)
    labels = np.array([1, 7, 3], np.int32)
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    smoothing = 0.0 if recipe["mixup"] else recipe["label_smoothing"]
    want = -((1 - smoothing) * logp[np.arange(3), labels] + smoothing * logp.mean(1)).mean()
    got = float(t.loss_fn(mge.tensor(logits), mge.tensor(labels))[0].numpy())
    np.testing.assert_allclose(got, want, rtol=1e-5)
    if recipe["mixup"]:
        assert (t.mixer.mixup_alpha, t.mixer.cutmix_alpha, t.mixer.label_smoothing) == \
            (recipe["mixup"], recipe["cutmix"], recipe["label_smoothing"])
    else:
        assert t.mixer is None
    # loader: the augmentation policy sits in the training transform
    kinds = {type(s) for s in transform_steps(t)}
    want = {"none": None, "autoaug": AutoAugment, "raug15": OfficialRandAug}[recipe["aa"]]
    assert (want in kinds) if want else not ({AutoAugment, OfficialRandAug} & kinds)
    assert t.warmup_steps == int(round(recipe["warmup_epochs"] * t.steps_per_epoch))
    t.fit()
    lrs = {g["lr"] / g["lr_mult"] for g in t.optimizer.param_groups}
    last = lr_at(t.step - 1, recipe["lr"], t.total_steps, t.warmup_steps)
    np.testing.assert_allclose(sorted(lrs), [last], rtol=1e-12)
    state = load_checkpoint(os.path.join(str(tmp_path), "latest.pkl"))
    assert state["config"]["recipe"] == name and state["step"] == 4


def test_mixed_targets_sum_to_one_and_repeat_under_the_seed(tmp_path):
    a = make_trainer(tmp_path / "a", "--mixup", "0.4", "--cutmix", "1.0", "--label-smoothing",
                     "0.1", *SMALL)
    b = make_trainer(tmp_path / "b", "--mixup", "0.4", "--cutmix", "1.0", "--label-smoothing",
                     "0.1", *SMALL)
    images, labels, _ = next(iter(a.train_loader))
    for index in range(6):
        xa, ta = a.targets(images, labels, index)
        xb, tb = b.targets(images, labels, index)
        np.testing.assert_allclose(ta.sum(1), 1.0, rtol=1e-6)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ta, tb)
        assert ta.shape == (len(labels), 10)


class Stop(Exception):
    pass


def test_ema_is_evaluated_saved_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    argv = ["--ema-alpha", "0.02", "--ema-update-period", "1", "--warmup-epochs", "0",
            "--mixup", "0.2", "--aa", "rand-m9-mstd0.5", *SMALL, "--epochs", "3"]
    ref = make_trainer(tmp_path / "ref", *argv)
    ref.fit()
    interrupted = make_trainer(tmp_path / "cut", *argv)
    real = Trainer.train_epoch

    def stop_at_second(self):
        if self.epoch == 1:
            raise Stop()
        return real(self)

    monkeypatch.setattr(Trainer, "train_epoch", stop_at_second)
    with pytest.raises(Stop):
        interrupted.fit()
    monkeypatch.setattr(Trainer, "train_epoch", real)
    resumed = make_trainer(tmp_path / "cut", "--resume", *argv)
    resumed.start()
    assert resumed.epoch == 1
    resumed.fit()
    a = load_checkpoint(str(tmp_path / "ref" / "latest.pkl"))
    b = load_checkpoint(str(tmp_path / "cut" / "latest.pkl"))
    assert a["step"] == b["step"] == 6
    for key in a["state_dict"]:
        np.testing.assert_array_equal(a["state_dict"][key], b["state_dict"][key], err_msg=key)
    assert a["ema"].keys() == b["ema"].keys()
    for key in a["ema"]:
        np.testing.assert_array_equal(a["ema"][key], b["ema"][key], err_msg=key)
    # the EMA differs from the raw weights and was evaluated every epoch
    assert any(not np.array_equal(a["ema"][k], a["state_dict"][k]) for k in a["ema"])
    import csv
    with open(tmp_path / "ref" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["ema_val_acc1"] != "" for r in rows)
    best = load_checkpoint(str(tmp_path / "ref" / "best.pkl"))
    accs = [max(float(r["val_acc1"]), float(r["ema_val_acc1"])) for r in rows]
    assert best["val_acc1"] == max(accs) and best["weights"] in ("raw", "ema")
    row = rows[best["epoch"] - 1]
    assert best["weights"] == ("ema" if float(row["ema_val_acc1"]) > float(row["val_acc1"])
                               else "raw")


def test_ema_weights_go_to_best_when_better(tmp_path, monkeypatch):
    """Force the EMA to be better: best.pkl then holds the EMA's weights, not the model's."""
    from training import loop
    t = make_trainer(tmp_path, "--ema-alpha", "0.5", *SMALL, "--epochs", "1")
    real = loop.evaluate

    def rigged(model, *args, **kwargs):
        result = real(model, *args, **kwargs)
        return dataclasses.replace(result, top1=99.0 if model is t.ema.module else 1.0)

    monkeypatch.setattr(loop, "evaluate", rigged)
    t.fit()
    best = load_checkpoint(str(tmp_path / "best.pkl"))
    assert best["weights"] == "ema" and best["val_acc1"] == 99.0
    ema = t.ema.state_dict()
    for key, value in best["state_dict"].items():
        np.testing.assert_array_equal(value, ema[key], err_msg=key)
