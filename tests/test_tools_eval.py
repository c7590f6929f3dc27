"""tools/eval.py and tools/predict.py on checkpoints from train.py and tools/convert.py."""
import os

import numpy as np
import pytest
from PIL import Image

from helpers import one_line_error, run_tool


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("evalrun") / "out")
    proc = run_tool("train.py", "--epochs", "1", "--max-steps-per-epoch", "3", "--image-size",
                    "16", "--batch-size", "16", "--device", "cpu", "--workers", "0",
                    "--max-val-images", "16", "--eval-batch-size", "16", "--no-progress",
                    "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def accuracy_from(proc):
    line = proc.stdout.strip().splitlines()[-1]
    return [float(t.rstrip("%")) for t in line.split() if t.endswith("%")]


def test_eval_train_convert_and_deploy_forms_agree(run_dir, tmp_path):
    best = os.path.join(run_dir, "best.pkl")
    converted = str(tmp_path / "converted.pkl")
    assert run_tool("tools/convert.py", "--load", best, "--save", converted).returncode == 0
    results = []
    for ckpt in (best, os.path.join(run_dir, "deploy.pkl"), converted):
        # tools/convert.py's output does not record the image size; train.py's files do
        size = ["--image-size", "16"] if ckpt == converted else []
        proc = run_tool("tools/eval.py", ckpt, "--device", "cpu", "--limit", "40", *size)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "digits val (40 images, 16x16)" in proc.stdout
        results.append(accuracy_from(proc))
    assert results[0] == results[1] == results[2]


def test_eval_errors(run_dir, tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"garbage")
    assert "not a readable MegEngine checkpoint" in one_line_error(
        run_tool("tools/eval.py", str(bad), "--device", "cpu"))
    assert "data folder not found" in one_line_error(
        run_tool("tools/eval.py", os.path.join(run_dir, "best.pkl"), "--data",
                 str(tmp_path / "nope"), "--device", "cpu"))


def test_predict_prints_top5_probabilities_that_match_the_model(run_dir, tmp_path):
    from data.digits import load_digits
    _, val, _ = load_digits(image_size=16)
    paths = []
    for i in range(2):
        p = str(tmp_path / ("d%d.png" % i))
        Image.fromarray(val.images[i]).save(p)
        paths.append(p)
    ckpt = os.path.join(run_dir, "deploy.pkl")
    proc = run_tool("tools/predict.py", "--checkpoint", ckpt, *paths, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    # independently: the model on the same pixels, normalised as documented ([-1, 1])
    import megengine as mge
    import megengine.functional as F
    from tests.helpers import model_from_file
    model, _, _ = model_from_file(ckpt)
    x = np.stack([(val.images[i].astype(np.float32) / 255 - 0.5) / 0.5 for i in range(2)])
    probs = F.softmax(model(mge.tensor(x.transpose(0, 3, 1, 2))), axis=1).numpy()
    for line, p in zip(lines, probs):
        entries = line.split(": ", 1)[1].split(", ")
        assert len(entries) == 5
        names = [e.split()[0] for e in entries]
        values = [float(e.split()[1].rstrip("%")) for e in entries]
        assert names == [str(i) for i in np.argsort(-p)[:5]]
        np.testing.assert_allclose(values, 100 * np.sort(p)[::-1][:5], atol=0.006)
    assert "cannot read image" in one_line_error(
        run_tool("tools/predict.py", "--checkpoint", ckpt, str(tmp_path / "none.png")))
