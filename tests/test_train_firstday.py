"""Issue 24's training items, as a new user meets them: --resume with the command train.py
prints, loader workers that fit the CPUs, best.pkl on a tie, progress off a terminal, image
folders (their own name, --val-split, eval.py with val/ alone, the data path recorded), the
timm-style knobs and names, fast conv routes only on CPU, benchmarks/gpu_check.sh."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import train
from common import cli
from common.checkpoint import load_checkpoint
from common.evaluation import EvalResult
from data import transforms as T
from helpers import ROOT, one_line_error

TINY = ["--image-size", "16", "--batch-size", "4", "--device", "cpu", "--warmup-epochs", "0",
        "--max-steps-per-epoch", "1", "--eval-batch-size", "8"]
CLASSES = ("cat", "dog", "owl")


def write_images(folder, n, rng):
    """n images per class, JPEG and PNG, of sizes that are not square."""
    for c in CLASSES:
        os.makedirs(os.path.join(folder, c))
        for i in range(n):
            px = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            Image.fromarray(px).save(os.path.join(folder, c, "%d.%s" % (i, "png" if i % 2
                                                                         else "jpg")))


def tool(cwd, script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A run on a folder with train/ only (no val/): --val-split holds out a third."""
    cwd = tmp_path_factory.mktemp("firstday")
    write_images(str(cwd / "pets" / "train"), 6, np.random.default_rng(0))
    proc = tool(str(cwd), "train.py", "--data", "pets", "--val-split", "0.34", "--epochs", "1",
                "--lr-per-256", "0.1", "--crop-scale", "0.5", "1", "--hflip", "0.3",
                "--color-jitter", "0.4", *TINY)  # progress left on: stderr is no terminal
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, proc


def test_a_folder_is_called_by_its_name_and_its_path_and_split_are_recorded(folder_run):
    cwd, proc = folder_run
    run = cwd / "runs" / "RepVGG-A0-pets"  # not RepVGG-A0-imagenet
    assert (run / "deploy.pkl").exists()
    assert "RepVGG-A0 on pets: 12 train / 6 val images" in proc.stderr  # 2 of 6 per class
    assert "imagenet" not in proc.stderr
    best = load_checkpoint(str(run / "best.pkl"))
    assert best["data"] == str(cwd / "pets") and best["val_split"] == 0.34
    assert load_checkpoint(str(run / "deploy.pkl"))["data"] == str(cwd / "pets")
    # the learning rate scaled to the batch, printed: 0.1 x 4 / 256
    assert "learning rate 0.001563 for a global batch of 4: 0.1 per 256 images" in proc.stderr


def test_progress_off_a_terminal_writes_no_carriage_returns(folder_run):
    _, proc = folder_run
    assert "\r" not in proc.stderr and "\r" not in proc.stdout


def test_resume_with_the_command_train_py_prints(folder_run):
    cwd, _ = folder_run
    out = os.path.join("runs", "RepVGG-A0-pets")
    # the run's data set, recipe and sizes come from its latest.pkl (the data set would be
    # "digits" without --data, the epochs 12, the batch 32 ...); --workers may change
    proc = tool(str(cwd), "train.py", "--resume", "--output", out, "--workers", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from %s/latest.pkl" % out in proc.stderr
    # a typed flag that differs is refused, and only that one is named
    message = one_line_error(tool(str(cwd), "train.py", "--resume", "--output", out,
                                  "--epochs", "3", "--batch-size", "4"))
    assert "with different settings: --epochs 1 -> 3 (" in message
    assert "dataset" not in message and "batch" not in message


def test_eval_of_a_held_out_split_and_of_a_folder_with_val_alone(folder_run):
    cwd, _ = folder_run
    best = os.path.join("runs", "RepVGG-A0-pets", "best.pkl")
    # no --data: the recorded folder, the recorded held-out third of its train/
    proc = tool(str(cwd), "tools/eval.py", best)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on pets val (6 images, 16x16)" in proc.stdout
    # a folder with val/ and no train/ (two of the three classes)
    rng = np.random.default_rng(1)
    for c in CLASSES[:2]:
        os.makedirs(str(cwd / "birds" / "val" / c))
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (18, 18, 3), dtype=np.uint8)).save(
                str(cwd / "birds" / "val" / c / ("%d.png" % i)))
    proc = tool(str(cwd), "tools/eval.py", best, "--data", "birds")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on birds val (4 images, 16x16)" in proc.stdout


def test_resuming_nothing_names_the_folder_without_a_stray_star(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        cli.run(train.main, ["--resume", "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --resume: no run to continue in runs/RepVGG-A0-digits ")
    assert "*" not in err


# -- best.pkl on a tie ----------------------------------------------------------------------

def test_a_tie_in_accuracy_goes_to_the_lower_val_loss(tmp_path, monkeypatch):
    from test_train_recipes import SMALL, make_trainer
    from training import loop

    # epoch 1 untrained (the val loss 25926), epoch 2 as accurate with loss 3.5
    results = iter([EvalResult(25926.0, 50.0, 90.0, 16, []), EvalResult(3.5, 50.0, 90.0, 16, []),
                    EvalResult(9.0, 50.0, 90.0, 16, [])])
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: next(results))
    t = make_trainer(tmp_path, *SMALL)
    t.fit()
    assert load_checkpoint(str(tmp_path / "best.pkl"))["epoch"] == 2
    latest = load_checkpoint(str(tmp_path / "latest.pkl"))
    assert (latest["best_epoch"], latest["best_val_loss"]) == (2, 3.5)
    # a resumed run keeps comparing with epoch 2's loss: a third epoch at loss 9 is no better
    t = make_trainer(tmp_path, *SMALL[:SMALL.index("--epochs")], "--epochs", "3",
                     *SMALL[SMALL.index("--epochs") + 2:])
    t.best_acc1, t.best_loss, t.best_epoch = 50.0, latest["best_val_loss"], 2
    t.epoch, t.step = 2, latest["step"]
    t.fit()
    assert load_checkpoint(str(tmp_path / "best.pkl"))["epoch"] == 2


# -- loader workers -------------------------------------------------------------------------

def test_default_workers_follow_the_data_and_the_cpus(tmp_path, monkeypatch):
    from data import loader
    from data.imagefolder import ImageFolderSource
    from data.sources import ArraySource
    from test_train_recipes import make_trainer

    write_images(str(tmp_path / "shapes" / "train"), 4, np.random.default_rng(2))
    write_images(str(tmp_path / "shapes" / "val"), 2, np.random.default_rng(3))
    files = ImageFolderSource(str(tmp_path / "shapes" / "train"))
    arrays = ArraySource(np.zeros((2, 4, 4, 3), np.uint8), [0, 1], ("a", "b"), "arrays")
    assert loader.default_workers(arrays, gpu=True, cpus=64) == 0  # nothing to decode
    assert [loader.default_workers(files, cpus=n) for n in (1, 2, 4, 8, 16, 64)] == \
        [0, 0, 0, 2, 4, 8]
    assert [loader.default_workers(files, gpu=True, cpus=n) for n in (1, 2, 16)] == [0, 1, 8]
    monkeypatch.setattr(loader, "cpu_count", lambda: 2)  # this machine's 2 CPUs
    t = make_trainer(tmp_path / "out", "--data", str(tmp_path / "shapes"), *TINY,
                     "--epochs", "1", "--max-val-images", "4")
    assert t.workers == 0 and t.train_loader.loader.loader.num_workers == 0
    assert t.config.workers is None  # recorded as "default": a resume elsewhere chooses anew


# -- the knobs a timm user expects -----------------------------------------------------------

def test_lr_per_256_scales_with_the_global_batch_and_lr_stays_absolute():
    config, *_ = train.parse_config(["--lr-per-256", "0.1", "--batch-size", "64"])
    assert config.lr == pytest.approx(0.025) and config.lr_per_256 == 0.1
    config, *_ = train.parse_config(["--lr", "0.1", "--batch-size", "64"])
    assert config.lr == 0.1 and config.lr_per_256 is None
    with pytest.raises(cli.UserError, match="not both"):
        train.parse_config(["--lr", "0.1", "--lr-per-256", "0.1"])


def test_augmentation_flags_reach_the_training_transform(folder_run, tmp_path):
    from test_train_recipes import make_trainer

    cwd, _ = folder_run
    t = make_trainer(tmp_path, "--data", str(cwd / "pets"), "--val-split", "0.34", *TINY,
                     "--epochs", "1", "--crop-scale", "0.5", "0.9", "--hflip", "0.3",
                     "--color-jitter", "0.4")
    steps = {type(s).__name__: s for s in t.splits.train_transform.steps}
    assert steps["RandomResizedCrop"].scale == (0.5, 0.9)
    assert steps["RandomHorizontalFlip"].p == 0.3
    assert steps["ColorJitter"].strength == 0.4
    t = make_trainer(tmp_path / "b", "--data", str(cwd / "pets"), "--val-split", "0.34", *TINY,
                     "--epochs", "1", "--hflip", "0")
    names = [type(s).__name__ for s in t.splits.train_transform.steps]
    assert "RandomHorizontalFlip" not in names and "ColorJitter" not in names
    for argv, words in ((["--crop-scale", "0.5", "0.2"], "--crop-scale MIN MAX needs"),
                        (["--crop-scale", "0.5", "1"], "--crop-scale applies to image folders"),
                        (["--hflip", "2"], "--hflip must be a probability"),
                        (["--val-split", "1"], "--val-split must be a fraction")):
        with pytest.raises(cli.UserError, match=words):
            train.parse_config(argv)


def test_color_jitter_scales_a_grey_image_by_a_factor_within_the_strength():
    """On a uniform grey image contrast and saturation change nothing (it is its own mean and
    its own greyscale), so the result is the grey times the brightness factor."""
    grey = Image.new("RGB", (8, 8), (100, 100, 100))
    values = []
    for seed in range(200):
        out = np.asarray(T.ColorJitter(0.4)(grey, np.random.default_rng(seed)))
        assert (out == out[0, 0]).all() and len(set(out[0, 0])) == 1
        values.append(int(out[0, 0, 0]))
    assert 60 <= min(values) < 66 and 134 < max(values) <= 140
    assert np.asarray(T.ColorJitter(0.0)(grey, np.random.default_rng(0)))[0, 0, 0] == 100


def test_timm_names_are_accepted():
    from model.registry import UnknownModelError, check_name, get_model
    assert check_name("repvgg_a0") == "RepVGG-A0"
    assert check_name("repvgg_b1g2") == "RepVGG-B1g2"
    assert check_name("repvgg_a0.rvgg_in1k") == "RepVGG-A0"  # timm's pretrained tag
    assert get_model("repvgg_a0", num_classes=3).linear.out_features == 3
    config, _, name, _ = train.parse_config(["--arch", "repvgg_b1g2"])
    assert (config.arch, name) == ("RepVGG-B1g2", "RepVGG-B1g2")
    with pytest.raises(UnknownModelError, match="did you mean"):
        check_name("repvgg_a9")


# -- data splits ------------------------------------------------------------------------------

def test_stratified_split_is_fixed_disjoint_and_per_class():
    from data.sources import stratified_split
    labels = np.repeat([0, 1, 2], [10, 20, 1])
    kept, held = stratified_split(labels, 0.2, seed=0)
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(31))
    assert np.bincount(labels[held], minlength=3).tolist() == [2, 4, 0]  # a class of one stays
    again = stratified_split(labels, 0.2, seed=0)
    assert held.tolist() == again[1].tolist()
    assert held.tolist() != stratified_split(labels, 0.2, seed=1)[1].tolist()


def test_evaluation_reads_the_val_folder_alone(tmp_path):
    from data.splits import data_name, load_splits
    write_images(str(tmp_path / "only" / "val"), 2, np.random.default_rng(4))
    splits = load_splits("imagenet", str(tmp_path / "only"), 16, train=False,
                         classes=("ant",) + CLASSES)  # the model's classes label the images
    assert splits.train is None and len(splits.val) == 6
    assert sorted(set(splits.val.labels.tolist())) == [1, 2, 3]
    assert splits.name == "only" == data_name("imagenet", str(tmp_path / "only") + "/")
    assert data_name("imagenet", "/") == "folder" and data_name("cifar10", "/x") == "cifar10"


# -- fast conv routes only on CPU --------------------------------------------------------------

def test_fast_conv_routes_only_on_a_cpu_device(monkeypatch):
    import megengine as mge
    import megengine.module as M

    from common import device
    from training import fastconv

    def conv():
        return M.Conv2d(4, 4, 3, padding=1, bias=False)

    for name, cuda, changed in (("gpu0", False, 0), ("xpux", True, 0), ("xpux", False, 1),
                                ("cpux", False, 1), ("multithread2:0", False, 1)):
        monkeypatch.setattr(mge, "get_default_device", lambda name=name: name)
        monkeypatch.setattr(device, "cuda_available", lambda cuda=cuda: cuda)
        c = conv()
        assert fastconv.enable(c) == changed, name
        assert ("calc_conv" in vars(c)) == bool(changed), name


# -- benchmarks/gpu_check.sh ------------------------------------------------------------------

def test_gpu_check_script_parses_and_skips_cleanly_without_a_gpu(tmp_path):
    script = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    proc = subprocess.run(["bash", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, TMPDIR=str(tmp_path)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith(
        "gpu_check: skipped: no usable CUDA GPU on this machine"), proc.stdout
    assert proc.stderr == ""
