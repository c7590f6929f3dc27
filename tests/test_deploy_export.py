"""tools/export.py and tools/infer.py: a dumped .mge computes what the eager model computes, a
failed check leaves nothing behind, and inference runs without the model code."""
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

import megengine as mge

import model
from deploy import dump, lite, lite_child, modelfile, preprocess
from deploy import export as ex
from common.checkpoint import save_checkpoint
from model.checkpoint import checkpoint_dict, numpy_state_dict
from model.parity import DEFAULT_TOLERANCE, randomize_batchnorm, sample_inputs
from helpers import BLOCK_MODEL, one_line_error, run_tool

SIZE, BATCH, CLASSES = 64, 2, 10


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A train-form RepVGG-A0 checkpoint with non-trivial BN, and its export at 64x64."""
    folder = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(7)
    net = model.get_model("RepVGG-A0", num_classes=CLASSES)
    randomize_batchnorm(net, rng, sample_inputs(rng, (4, 3, SIZE, SIZE)))
    ckpt = folder / "a0.pkl"
    save_checkpoint(checkpoint_dict(numpy_state_dict(net), "RepVGG-A0", "train"), ckpt)
    out = folder / "a0.mge"
    proc = run_tool("tools/export.py", "--load", ckpt, "--output", out, "--size", SIZE,
                    "--batch", BATCH, "--threads", 2)
    assert proc.returncode == 0, proc.stderr
    assert "dumped graph vs eager train" in proc.stdout
    return {"folder": folder, "ckpt": ckpt, "mge": out, "train": net}


def relative_error(expected, actual):
    return float(np.abs(expected - actual).max() / np.abs(expected).max())


def test_dumped_graph_equals_eager_train_and_deploy(exported):
    # Fresh inputs (not the exporter's check batch), another batch size than the dumped one.
    rng = np.random.default_rng(99)
    x = sample_inputs(rng, (3, 3, SIZE, SIZE))
    train = exported["train"]
    train.eval()
    expected_train = train(mge.tensor(x)).numpy()
    expected_deploy = model.convert_to_deploy(train)(mge.tensor(x)).numpy()
    dumped = lite.DumpedModel(str(exported["mge"]), threads=2)
    assert dumped.input_shape == (BATCH, 3, SIZE, SIZE) and dumped.num_classes == CLASSES
    out = dumped(x)
    assert out.shape == (3, CLASSES)
    assert relative_error(expected_deploy, out) <= DEFAULT_TOLERANCE
    assert relative_error(expected_train, out) <= DEFAULT_TOLERANCE
    assert (out.argmax(1) == expected_train.argmax(1)).all()
    # The logits depend on the input (a check on constant outputs would prove nothing).
    assert np.abs(out[0] - out[1]).max() > 100 * np.abs(out - expected_train).max()


EXPORT_EACH = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("export", "tools/export.py")
export = importlib.util.module_from_spec(spec)
spec.loader.exec_module(export)
ckpt, folder = sys.argv[1:3]
for options in sys.argv[3:]:
    export.main(["--load", ckpt, "--output", "%s/a0_%s.mge" % (folder, options), "--size", "32",
                 "--options", options, "--threads", "2", "--no-algo-cache"])
"""


def test_every_dump_option_set_exports_and_checks(exported):
    # One process for all option sets (each export checks its file against eager train and
    # deploy and raises if they differ). The portable ones are used as asked; a CPU-specific
    # layout is used where this CPU runs it, else one warning names it and the fallback.
    others = sorted(set(dump.OPTIONS) - {dump.DEFAULT_OPTIONS})
    proc = run_tool("-c", EXPORT_EACH, exported["ckpt"], exported["folder"], *others)
    assert proc.returncode == 0, proc.stderr
    done = re.findall(r"exported RepVGG-A0 \(train form in, options (\S+?)[,)]", proc.stdout)
    assert len(done) == len(others), proc.stdout
    warnings = [l for l in proc.stderr.splitlines() if l.startswith("warning: --options")]
    for asked, used in zip(others, done):
        graph_options, layout = dump.split_options(asked)
        if layout == dump.PORTABLE_LAYOUT:
            assert used == asked
        elif used != asked:
            assert used == graph_options
            assert sum("--options %s does not run on this CPU" % asked in w
                       and "exported with %s (portable) instead" % used in w
                       for w in warnings) == 1, proc.stderr
        assert (exported["folder"] / ("a0_%s.mge" % asked)).is_file()
    assert len(warnings) == sum(u != a for a, u in zip(others, done))


def test_failed_check_leaves_no_file(exported, tmp_path):
    export = ex
    x = sample_inputs(np.random.default_rng(3), (BATCH, 3, SIZE, SIZE))
    other = model.get_model("RepVGG-A0", num_classes=CLASSES)  # different random weights
    other.eval()
    wrong = [("another model", other(mge.tensor(x)).numpy())]

    def write(tmp):
        shutil.copyfile(exported["mge"], tmp)

    def check(tmp):
        return export.check_dumped(tmp, x, wrong, threads=2)

    target = tmp_path / "out.mge"
    with pytest.raises(export.ExportCheckError, match="does not match"):
        export.write_checked(str(target), write, check)
    assert os.listdir(tmp_path) == []
    target.write_bytes(b"previous export")
    with pytest.raises(export.ExportCheckError):
        export.write_checked(str(target), write, check)
    assert os.listdir(tmp_path) == ["out.mge"] and target.read_bytes() == b"previous export"
    # The same check passes on the right reference.
    train = exported["train"]
    train.eval()
    right = [("train", train(mge.tensor(x)).numpy())]
    export.write_checked(str(target), write, lambda tmp: export.check_dumped(tmp, x, right))
    assert target.stat().st_size == exported["mge"].stat().st_size


def test_preprocess_resizes_crops_and_normalizes():
    # 90x60 image: left third red, rest blue; the shorter side (60) goes to round(32*256/224)=37
    # so the image becomes 56x37 (55.5 rounded) and the 32x32 centre crop starts at column 12.
    a = np.zeros((60, 90, 3), np.uint8)
    a[:, :30] = (255, 0, 0)
    a[:, 30:] = (0, 0, 255)
    x = preprocess.preprocess_image(Image.fromarray(a), preprocess.imagenet_spec(32))
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    blue = (np.array([0, 0, 255], np.float32) - [123.675, 116.28, 103.53]) / [58.395, 57.12,
                                                                             57.375]
    np.testing.assert_allclose(x[:, :, -1], np.repeat(blue[:, None], 32, 1), rtol=1e-5)
    # columns 0..3 of the crop are columns 12..15 of the resized image, left of the red/blue
    # boundary at 30 * 37/60 = 18.5 by more than the bilinear kernel's reach: pure red
    red = (np.array([255, 0, 0], np.float32) - [123.675, 116.28, 103.53]) / [58.395, 57.12,
                                                                            57.375]
    for col in range(4):
        np.testing.assert_allclose(x[:, :, col], np.repeat(red[:, None], 32, 1), rtol=1e-5)
    assert not np.allclose(x[:, :, 8], red[:, None])  # past the boundary


def write_image(path, seed):
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, 96)
    a = np.stack([np.add.outer(ramp[:80] * rng.uniform(0, 1), ramp * rng.uniform(0, 1)) / 2
                  + rng.normal(0, 20, (80, 96)) for _ in range(3)], -1)
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path)


def test_infer_top5_without_model_code(exported, tmp_path):
    images = [tmp_path / "a.png", tmp_path / "b.jpg", tmp_path / "c.png"]
    for seed, path in enumerate(images):
        write_image(path, seed)
    labels = tmp_path / "labels.txt"
    labels.write_text("".join("name%d\n" % i for i in range(CLASSES)))
    proc = run_tool("-c", BLOCK_MODEL, "tools/infer.py", exported["mge"], *images, "--labels",
                    labels, "--threads", 2)
    assert proc.returncode == 0, proc.stderr
    # Expected: the eager train model on the same preprocessed images, softmax in NumPy.
    train = exported["train"]
    train.eval()
    x = np.stack([preprocess.preprocess_image(p, preprocess.imagenet_spec(SIZE)) for p in images])
    logits = train(mge.tensor(x)).numpy().astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    blocks = proc.stdout.strip().split("\n")
    assert len(blocks) == 3 * 6
    for i, path in enumerate(images):
        assert blocks[6 * i] == str(path)
        rows = [re.match(r"\s+(\d)\. (name\d+)\s+([\d.]+)%$", line)
                for line in blocks[6 * i + 1:6 * i + 6]]
        assert all(rows), blocks
        printed = [(int(m.group(2)[4:]), float(m.group(3))) for m in rows]
        assert [int(m.group(1)) for m in rows] == [1, 2, 3, 4, 5]
        for cls, pct in printed:
            assert abs(pct - 100 * probs[i, cls]) < 0.006
        sixth = np.sort(probs[i])[-6]
        assert min(p for _, p in printed) >= 100 * sixth - 0.006
        assert printed[0][0] == probs[i].argmax()


def test_infer_without_labels_prints_indices(exported, tmp_path):
    write_image(tmp_path / "a.png", 5)
    proc = run_tool("tools/infer.py", exported["mge"], tmp_path / "a.png", "--top", 3)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().split("\n")
    assert len(lines) == 4 and all("class " in l for l in lines[1:])


def test_cli_errors_are_one_line(exported, tmp_path):
    write_image(tmp_path / "a.png", 1)
    (tmp_path / "bad.mge").write_bytes(b"not a model")
    (tmp_path / "bad.onnx").write_bytes(b"not a model either")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    cases = [
        (("tools/export.py", "--load", tmp_path / "missing.pkl", "--output", tmp_path / "o.mge"),
         "checkpoint not found"),
        (("tools/export.py", "--random-init", "--output", tmp_path / "o.mge"), "needs --arch"),
        (("tools/export.py", "--arch", "RepVGG-A9", "--random-init", "--output",
          tmp_path / "o.mge"), "unknown architecture"),
        (("tools/infer.py", tmp_path / "bad.mge", tmp_path / "a.png"), "not a loadable"),
        (("tools/infer.py", exported["mge"], tmp_path / "nope.png"), "image not found"),
        (("tools/infer.py", exported["mge"], tmp_path / "a.png", "--labels",
          tmp_path / "labels.txt"), "2 labels but the model has 10 classes"),
        (("tools/infer.py", tmp_path / "bad.onnx", tmp_path / "a.png"), "bad.onnx is not an ONNX model"),
        (("tools/infer.py", tmp_path / "a.png", tmp_path / "a.png"), "unknown model format"),
        (("tools/infer.py", exported["mge"], tmp_path / "broken.png"), "cannot read image"),
        (("tools/infer.py", exported["mge"], tmp_path / "a.png", "--threads", 0),
         "--threads must be between 1 and"),
        (("tools/infer.py", exported["mge"], "--benchmark", "--threads", 999),
         "--threads must be between 1 and"),
        (("tools/export.py", "--load", exported["ckpt"], "--output", tmp_path / "o.mge",
          "--format", "onnx"), "--format onnx but the output is named"),
        (("tools/export.py", "--load", exported["ckpt"], "--output", tmp_path / "o.txt"),
         "cannot tell the format"),
    ]
    for args, message in cases:
        proc = run_tool(*args)
        assert proc.returncode == 1, (args, proc.stderr)  # each a UserError (exit 1)
        assert message in one_line_error(proc), args
    assert not (tmp_path / "o.mge").exists()
    assert sorted(os.listdir(tmp_path)) == ["a.png", "bad.mge", "bad.onnx", "broken.png",
                                            "labels.txt"]


def test_the_shipped_algorithm_cache_is_what_infer_needs(exported, tmp_path):
    # The .mge carries the fast-run choices profiled at export. Replayed as tools/infer.py opens
    # the model, fast-run finds every algorithm in it: the process's cache afterwards holds the
    # same entries (a miss would profile and add entries, as a cache profiled inside the
    # exporter's own process did).
    import base64
    import json

    info = json.loads(lite.read_user_info(str(exported["mge"])))
    assert info["format"] == modelfile.METADATA_FORMAT
    assert info["input_shape"] == [BATCH, 3, SIZE, SIZE]
    shipped = base64.b64decode(info["algo_cache"])
    assert len(shipped) > 100  # not the 4-byte empty cache
    (tmp_path / "shipped.cache").write_bytes(shipped)
    x = sample_inputs(np.random.default_rng(1), (BATCH, 3, SIZE, SIZE))
    after = lite_child.replay(str(exported["mge"]), x, 2, info["layout"],
                              str(tmp_path / "shipped.cache"), deadline=300)
    assert len(after) == len(shipped)
