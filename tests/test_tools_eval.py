"""tools/eval.py and tools/predict.py on checkpoints from train.py and tools/convert.py."""
import os

import numpy as np
import pytest
from PIL import Image

from common.checkpoint import load_checkpoint, save_checkpoint
from helpers import assert_top_k, call_tool, one_line_error, run_tool


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
    # M2: tools/convert.py keeps the data set, size and class names, so eval and predict give
    # the original's answers on the converted file without any flag.
    best = os.path.join(run_dir, "best.pkl")
    converted = str(tmp_path / "converted.pkl")
    assert run_tool("tools/convert.py", "--load", best, "--save", converted).returncode == 0
    results = []
    for ckpt in (best, os.path.join(run_dir, "deploy.pkl"), converted):
        proc = run_tool("tools/eval.py", ckpt, "--device", "cpu", "--limit", "40")
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "digits val (40 images, 16x16)" in proc.stdout
        results.append(accuracy_from(proc))
    assert results[0] == results[1] == results[2]
    paths, _ = _digit_pngs(tmp_path, 3)
    answers = [call_tool("tools/predict.py", "--checkpoint", ckpt, *paths, "--device", "cpu")
               for ckpt in (best, converted)]
    assert answers[0].returncode == answers[1].returncode == 0, answers[1].stderr
    assert answers[0].stdout == answers[1].stdout and len(answers[0].stdout.splitlines()) == 3


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
        printed = [(int(e.split()[0]), float(e.split()[1].rstrip("%"))) for e in entries]
        assert_top_k(printed, p, atol=0.006)
        assert printed[0][0] == p.argmax()
    # a missing image: the one message of predict.py and infer.py (common/inputs.py)
    assert "image not found: %s (no such file or folder)" % (tmp_path / "none.png") in \
        one_line_error(run_tool("tools/predict.py", "--checkpoint", ckpt,
                                str(tmp_path / "none.png")))


def _digit_pngs(folder, n, size=16):
    from data.digits import load_digits
    _, val, _ = load_digits(image_size=size)
    paths = []
    for i in range(n):
        p = str(folder / ("digit%d.png" % i))
        Image.fromarray(val.images[i]).save(p)
        paths.append(p)
    return paths, val.labels[:n]


def _digits_folder(root, per_class=2, rename=None):
    """An ImageNet-style folder of digit PNGs (train/ and val/, classes 0..9)."""
    from data.digits import load_digits
    _, val, _ = load_digits(image_size=16)
    for split in ("train", "val"):
        for c in range(10):
            name = rename.get(str(c), str(c)) if rename else str(c)
            d = root / split / name
            d.mkdir(parents=True)
            for k, i in enumerate(np.flatnonzero(val.labels == c)[:per_class]):
                Image.fromarray(val.images[i]).save(d / ("%d.png" % k))
    return root


def _eval_numbers(proc):
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip().splitlines()[-1]
    return line, accuracy_from(proc), float(line.split("loss")[1])


def test_eval_leaves_unreadable_and_oversized_val_images_out_and_counts_them(run_dir, tmp_path):
    # m3 / M6: a text file and a decompression bomb among the val images; the result must be
    # the one on the folder without them, with the two named in warnings and counted.
    from test_data_images import write_bomb_png
    ckpt = os.path.join(run_dir, "best.pkl")
    clean = _digits_folder(tmp_path / "clean")
    dirty = _digits_folder(tmp_path / "dirty")
    (dirty / "val" / "3" / "zz_text.png").write_text("not an image")
    write_bomb_png(dirty / "val" / "5" / "zz_bomb.png")
    ref = call_tool("tools/eval.py", ckpt, "--data", clean, "--image-size", "16", "--device",
                    "cpu")
    got = call_tool("tools/eval.py", ckpt, "--data", dirty, "--image-size", "16", "--device",
                    "cpu", "--batch-size", "7")
    ref_line, ref_acc, ref_loss = _eval_numbers(ref)
    line, acc, loss = _eval_numbers(got)
    assert "(20 images, 16x16)" in ref_line
    assert "(20 images, 16x16; 2 unreadable skipped)" in line
    assert acc == ref_acc and abs(loss - ref_loss) <= 1e-5 * abs(ref_loss)  # float32 sums


def test_eval_refuses_data_whose_class_names_differ(run_dir, tmp_path):
    # m2: same number of classes, one folder renamed: the recorded names must match
    ckpt = os.path.join(run_dir, "best.pkl")
    data = _digits_folder(tmp_path / "renamed", per_class=1, rename={"7": "seven"})
    msg = one_line_error(call_tool("tools/eval.py", ckpt, "--data", data, "--device", "cpu"))
    assert ckpt in msg and "model only: 7" in msg and "data only: seven" in msg


def test_predict_batches_and_gives_the_same_answers_at_any_batch(run_dir, tmp_path, monkeypatch):
    # m4: images go through the model --batch at a time, not all at once
    from helpers import load_tool, model_from_file
    from data.splits import eval_transform
    predict = load_tool("tools/predict.py")
    paths, _ = _digit_pngs(tmp_path, 5)
    model, _, _ = model_from_file(os.path.join(run_dir, "deploy.pkl"))
    sizes = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda x: sizes.append(x.shape[0]) or forward(x))
    transform = eval_transform("digits", 16)
    by2 = dict(predict.predict(model, transform, paths, 2))
    assert sizes == [2, 2, 1]
    whole = dict(predict.predict(model, transform, paths, 5))
    for p in paths:
        np.testing.assert_allclose(by2[p], whole[p], rtol=1e-5, atol=1e-5)
    one = call_tool("tools/predict.py", "--checkpoint", os.path.join(run_dir, "deploy.pkl"),
                    *paths, "--batch", "1", "--device", "cpu")
    many = call_tool("tools/predict.py", "--checkpoint", os.path.join(run_dir, "deploy.pkl"),
                     *paths, "--batch", "4", "--device", "cpu")
    assert one.returncode == 0 and one.stdout == many.stdout


@pytest.mark.parametrize("tool, args, words", [
    ("tools/eval.py", ["--batch-size", "0"], "--batch-size: must be at least 1"),
    ("tools/eval.py", ["--batch-size", "-5"], "--batch-size: must be at least 1"),
    ("tools/eval.py", ["--limit", "-3"], "--limit: must be at least 0"),
    ("tools/eval.py", ["--image-size", "-32"], "--image-size: must be at least 16"),
    ("tools/eval.py", ["--image-size", "0"], "--image-size: must be at least 16"),
    ("tools/eval.py", ["--image-size", "2"], "--image-size: must be at least 16"),
    ("tools/eval.py", ["--workers", "-1"], "--workers: must be at least 0"),
    ("tools/predict.py", ["--top", "0"], "--top: must be at least 1"),
    ("tools/predict.py", ["--top", "-2"], "--top: must be at least 1"),
    ("tools/predict.py", ["--image-size", "-4"], "--image-size: must be at least 16"),
    ("tools/predict.py", ["--batch", "0"], "--batch: must be at least 1"),
    ("tools/eval.py", ["--device", "banana"], "unknown device 'banana'"),
    ("tools/predict.py", ["--device", "banana"], "unknown device 'banana'"),
    ("tools/eval.py", ["--device", "cpu9999"], "between 1 and"),
])
def test_bad_numbers_and_devices_are_one_line(run_dir, tool, args, words):
    ckpt = os.path.join(run_dir, "best.pkl")
    where = [ckpt] if tool == "tools/eval.py" else ["--checkpoint", ckpt, "x.png"]
    proc = call_tool(tool, *where, *args)
    # a bad number is argparse's usage error (2); a device this machine lacks is a UserError (1)
    assert proc.returncode == (1 if args[0] == "--device" else 2) and proc.stdout == ""
    assert words in one_line_error(proc)


@pytest.mark.parametrize("tool", ["tools/eval.py", "tools/predict.py", "tools/convert.py",
                                  "verify.py"])
def test_gpu_without_a_gpu_is_one_line(run_dir, tmp_path, tool, monkeypatch):
    # m7: on a machine without CUDA, --device gpu used to end in a C++ assertion backtrace
    import common.device
    monkeypatch.setattr(common.device, "cuda_available", lambda: False)
    ckpt = os.path.join(run_dir, "best.pkl")
    argv = {"tools/eval.py": [ckpt], "tools/predict.py": ["--checkpoint", ckpt, "x.png"],
            "tools/convert.py": ["--load", ckpt, "--save", tmp_path / "o.pkl"],
            "verify.py": ["--no-blocks"]}[tool]
    msg = one_line_error(call_tool(tool, *argv, "--device", "gpu"))
    assert "needs a CUDA GPU" in msg and "no CUDA GPU is usable" in msg
    assert not (tmp_path / "o.pkl").exists()


def test_eval_and_predict_on_a_search_checkpoint_say_what_to_do(tmp_path):
    # m16: a search run's checkpoint is not a model; name the file and the next step
    ckpt = str(tmp_path / "latest.pkl")
    save_checkpoint({"format": "repvgg-search-run/1", "supernet": {"w": np.zeros(2)}}, ckpt)
    image = str(tmp_path / "x.png")  # a real image: predict.py checks its images first
    Image.new("RGB", (8, 8)).save(image)
    for proc in (call_tool("tools/eval.py", ckpt, "--device", "cpu"),
                 call_tool("tools/predict.py", "--checkpoint", ckpt, image, "--device",
                           "cpu")):
        msg = one_line_error(proc)
        assert ckpt in msg and "search.py derive" in msg


def test_a_checkpoint_without_data_set_is_imagenet_224_in_eval_and_predict(run_dir, tmp_path):
    # m17: one rule for both tools (data.splits.checkpoint_data): ImageNet at 224
    from data import transforms as T
    from helpers import model_from_file
    from common.numeric import softmax
    bare = dict(load_checkpoint(os.path.join(run_dir, "deploy.pkl")))
    for key in ("dataset", "image_size", "classes"):
        bare.pop(key, None)
    ckpt = str(tmp_path / "bare.pkl")
    save_checkpoint(bare, ckpt)
    paths, _ = _digit_pngs(tmp_path, 1)
    proc = call_tool("tools/predict.py", "--checkpoint", ckpt, *paths, "--top", "10",
                     "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    model, _, _ = model_from_file(ckpt)
    import megengine as mge
    with Image.open(paths[0]) as im:
        # independently: torchvision-style ImageNet eval (resize 256/224, centre crop 224)
        x = T.ToCHW()(im.convert("RGB").resize((256, 256), Image.BILINEAR).crop(
            (16, 16, 240, 240)))
    probs = softmax(model(mge.tensor(np.ascontiguousarray(x[None]))).numpy())[0]
    got = {e.split()[0]: float(e.split()[1].rstrip("%"))
           for e in proc.stdout.split(": ", 1)[1].split(", ")}
    np.testing.assert_allclose([got[str(i)] for i in range(10)], 100 * probs, atol=0.006)
    folder = _digits_folder(tmp_path / "folder", per_class=1)
    proc = call_tool("tools/eval.py", ckpt, "--data", folder, "--device", "cpu")
    assert "on folder val (10 images, 224x224)" in _eval_numbers(proc)[0]  # the folder's name
    msg = one_line_error(call_tool("tools/eval.py", ckpt, "--device", "cpu"))
    assert "records no data set" in msg and "--data" in msg
