"""search.py as a new user meets it (issue 24 item 10): derive and show pick the same
checkpoint by default, "best" never goes to the earliest of tied epochs without reason, the
warm-up prints no "nan", ``train --data`` searches a folder, and ``train.py --arch arch.json``
trains at the size the architecture was searched at."""
import json
import os
import types

import numpy as np
import pytest
from PIL import Image

from helpers import call_tool, load_tool, one_line_error, run_tool

LUT = ["lut", "--space", "digits", "--warmup", "0", "--runs", "1", "--inner", "1",
       "--device", "cpu", "--no-progress"]
TRAIN = ["train", "--space", "digits", "--epochs", "3", "--warmup-epochs", "1", "--max-steps",
         "2", "--batch-size", "16", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("searchrun")
    lut = root / "lut.json"
    proc = run_tool("search.py", *LUT, "--out", lut)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = root / "run"
    proc = run_tool("search.py", *TRAIN, "--lut", lut, "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root, out, proc


def test_the_warm_up_prints_no_nan(run):
    _, out, proc = run
    assert "nan" not in proc.stderr.lower()
    assert "epoch 0: " in proc.stderr and "theta loss - (warm-up)" in proc.stderr
    show = call_tool("search.py", "show", "--run", out, "--png", out / "t.png", "--which",
                     "latest")
    assert show.returncode == 0, show.stderr
    assert "nan" not in show.stdout.lower()
    epoch0 = next(l for l in show.stdout.splitlines() if l.startswith("0 "))
    assert epoch0.split()[3] == "-"  # the th_loss column


def test_derive_and_show_pick_the_same_network_by_default(run):
    _, out, _ = run
    show = call_tool("search.py", "show", "--run", out, "--png", out / "t.png")
    assert show.returncode == 0, show.stderr
    assert show.stdout.startswith("run %s:" % os.path.join(str(out), "best.pkl"))
    lines = show.stdout.splitlines()
    head = next(i for i, l in enumerate(lines) if l.startswith("layer "))
    shown = [l.split()[2] for l in lines[head + 1:head + 6]]  # the "top" op of the 5 layers
    derive = call_tool("search.py", "derive", "--run", out, "--out", out / "a.json")
    assert derive.returncode == 0, derive.stderr
    derived = [l["op"] for l in json.loads((out / "a.json").read_text())["layers"]]
    assert derived == shown


def test_a_tie_in_accuracy_goes_to_the_lower_theta_loss():
    from search.trainer import Searcher

    state = types.SimpleNamespace(best_acc=0.5, best_loss=1.0)
    beats = lambda acc, loss: Searcher._beats_best(state, acc, loss)  # noqa: E731
    assert beats(0.5, 0.8) and not beats(0.5, 1.2) and beats(0.6, 9.0) and not beats(0.4, 0.1)
    assert Searcher._beats_best(types.SimpleNamespace(best_acc=None, best_loss=None), 0.0, 1.0)


def _folder(root, classes=2, train=8, val=4, size=20):
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            d = root / split / ("class%d" % c)
            d.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)
                pixels[..., c] = 255  # the class is in the colour
                Image.fromarray(pixels).save(str(d / ("%d.png" % i)))
    return root


def test_train_searches_a_data_folder(tmp_path):
    data = _folder(tmp_path / "shapes")
    lut = tmp_path / "lut2.json"
    proc = run_tool("search.py", *LUT, "--num-classes", "2", "--out", lut)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "run"
    proc = call_tool("search.py", *TRAIN, "--lut", lut, "--data", data, "--out", out,
                     "--num-classes", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # 16 train images: 13 for the weights, 3 for theta (--w-fraction 0.8); 8 to validate
    assert "13 images for weights, 3 for theta, 8 for validation" in proc.stderr
    from search.trainer import load_run
    assert load_run(str(out / "latest.pkl"))["data"] == str(data)
    # the space's class count must be the data's: one line saying what to pass
    proc = call_tool("search.py", *TRAIN, "--lut", lut, "--data", data, "--out",
                     tmp_path / "run2")
    assert proc.returncode == 1
    assert "space digits has 10 classes; %s has 2 (pass --num-classes 2" % data \
        in one_line_error(proc)


def test_train_py_trains_an_arch_json_at_its_recorded_size(tmp_path):
    from common import cli
    from training.config import add_arguments, from_args

    arch = {"format": "repvgg-search-arch/1", "space": "digits", "image_size": 16,
            "num_classes": 10, "stem": {"channels": 8, "stride": 1},
            "layers": [{"op": "repvgg", "C_in": 8, "C_out": 8, "stride": 1}],
            "head": {"channels": 0}}
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(arch))

    def size(*argv):
        return from_args(add_arguments(cli.ArgumentParser("t")).parse_args(
            ["--arch", str(path), *argv])).image_size
    assert size() == 16  # it trained at the digits' default 32
    assert size("--image-size", "24") == 24
    assert load_tool("train.py")  # the script still imports
