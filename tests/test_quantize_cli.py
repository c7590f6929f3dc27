"""tools/quantize.py as a user runs it: the int8 .mge runs in MegEngine Lite, the QDQ ONNX in
ONNX Runtime (per-channel weight scales), QAT runs, and bad input is one line."""
import json
import os

import numpy as np
import pytest

import megengine as mge

import model
from common.checkpoint import save_checkpoint
from helpers import one_line_error, run_tool
from model.checkpoint import checkpoint_dict, numpy_state_dict
from model.parity import randomize_batchnorm, sample_inputs
from quant import metrics

FAST = ("--calib-images", 64, "--check-images", 64, "--threads", 1, "--no-progress")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A train-form RepVGG-A0 for the 10 digit classes with non-trivial BN statistics."""
    rng = np.random.default_rng(0)
    net = model.get_model("RepVGG-A0", num_classes=10)
    randomize_batchnorm(net, rng, sample_inputs(rng, (16, 3, 32, 32)))
    path = tmp_path_factory.mktemp("quant") / "a0.pkl"
    save_checkpoint(checkpoint_dict(numpy_state_dict(net), "RepVGG-A0", "train",
                                    dataset="digits", image_size=32), path)
    return path


@pytest.fixture(scope="module")
def mge_run(ckpt):
    """tools/quantize.py -> int8 .mge, once: (output path, report dict, stdout)."""
    folder = ckpt.parent
    out, report = folder / "a0.mge", folder / "r.json"
    proc = run_tool("tools/quantize.py", "--load", ckpt, "-o", out, "--report", report, *FAST)
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(report.read_text()), proc.stdout


def check_images():
    """The held-out images the tool compares on (same seed and preprocessing)."""
    from data.transforms import Preprocess
    from deploy.preprocess import spec_for_dataset
    from quant.calibdata import load_calibration

    data = load_calibration(None, Preprocess(spec_for_dataset("digits", 32)), None, 64, 64)
    return np.concatenate(data.check)


def float_logits(ckpt_path, x):
    from common.checkpoint import load_checkpoint
    from model.checkpoint import model_from_checkpoint

    net, _ = model_from_checkpoint(load_checkpoint(ckpt_path))
    return net(mge.tensor(x)).numpy()


def test_int8_mge_runs_in_lite(ckpt, mge_run):
    from deploy.runtime import open_model

    out, reported, stdout = mge_run
    assert "top-1 agreement" in stdout
    x = check_images()
    lite_logits = open_model(str(out), 1)(x)  # Lite, as tools/infer.py opens it
    # Lite runs the int8 graph: its logits are the eager int8 network's (what the tool
    # reported on), not the float model's
    ref = float_logits(ckpt, x)
    mine = metrics.agreement(ref, lite_logits)
    assert abs(mine.sqnr_db - reported["sqnr_db"]) < 0.1
    assert mine.top1_agreement == pytest.approx(reported["top1_agreement"], abs=1 / 64)
    assert 0 < mine.sqnr_db < 60  # quantized: close to float, not equal to it
    assert reported["float_top1"] is not None  # digits have labels


def test_qdq_onnx_runs_in_onnxruntime(ckpt, tmp_path):
    import onnx
    from onnx import numpy_helper

    from deploy.runtime import open_model

    out, report = tmp_path / "a0.onnx", tmp_path / "r.json"
    proc = run_tool("tools/quantize.py", "--load", ckpt, "-o", out, "--report", report, *FAST)
    assert proc.returncode == 0, proc.stderr
    # nothing on stderr: no ONNX Runtime pre-processing advice, no bars, no MegEngine banner
    assert proc.stderr == "" and json.loads(report.read_text())["warning"] is None
    proto = onnx.load(str(out))
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and "Conv" in ops
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    conv_weights = [n.input[1] for n in proto.graph.node if n.op_type == "Conv"]
    producers = {n.output[0]: n for n in proto.graph.node}
    for name in conv_weights:  # weight -> DequantizeLinear with one scale per output channel
        dq = producers[name]
        assert dq.op_type == "DequantizeLinear"
        weight, scale = inits[dq.input[0]], inits[dq.input[1]]
        assert weight.dtype == np.int8 and scale.shape == (weight.shape[0],)
    x = check_images()
    int8_logits = open_model(str(out), 1)(x)
    mine = metrics.agreement(float_logits(ckpt, x), int8_logits)
    assert abs(mine.sqnr_db - json.loads(report.read_text())["sqnr_db"]) < 0.1
    from deploy import route  # checked through the route tools/infer.py takes for it
    picked = route.NAMES[route.rule("int8", route.cpu_flags())[0]]
    assert json.loads(report.read_text())["route"] == picked + ", rule"
    assert 0 < mine.sqnr_db < 60


def test_qat_writes_int8_and_fine_tuned_float(ckpt, tmp_path):
    out, tuned = tmp_path / "qat.mge", tmp_path / "tuned.pkl"
    proc = run_tool("tools/quantize.py", "--load", ckpt, "-o", out, "--qat", "--epochs", 1,
                    "--max-steps-per-epoch", 2, "--batch-size", 16, "--save-float", tuned,
                    *FAST)
    assert proc.returncode == 0, proc.stderr
    assert "qat epoch 1/1" in proc.stdout and "fine-tuned float" in proc.stdout
    assert out.is_file()
    from common.checkpoint import load_checkpoint
    saved = load_checkpoint(tuned)
    assert saved["form"] == "deploy" and saved["arch"] == "RepVGG-A0"
    assert saved["dataset"] == "digits"  # metadata travels with the weights


def test_bad_input_is_one_line(ckpt, mge_run, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "x.mge"

    def fails(*args):
        proc = run_tool("tools/quantize.py", *args, *FAST)
        assert proc.returncode == 1, proc.stderr  # every case here is a UserError
        assert not out.exists() and not any(tmp_path.glob("*.tmp"))
        return one_line_error(proc)

    assert "not found" in fails("--load", ckpt, "--calib", tmp_path / "nope", "-o", out)
    assert "holds no images" in fails("--load", ckpt, "--calib", empty, "-o", out)
    # an exported int8 graph given as the checkpoint
    msg = fails("--load", mge_run[0], "-o", out)
    assert "exported MegEngine graph" in msg and "not a float checkpoint" in msg
    # a checkpoint holding quantization state
    bad = tmp_path / "observed.pkl"
    save_checkpoint({"arch": "RepVGG-A0", "state_dict": {
        "convs.0.act_observer.min_val": np.zeros(1, np.float32),
        "linear.weight": np.zeros((10, 4), np.float32)}}, bad)
    assert "already quantized" in fails("--load", bad, "-o", out)
    # an unsupported block: a searched network (not a RepVGG chain)
    from model.derived import build_from_arch
    arch = {"format": "repvgg-search-arch/1", "space": "t", "image_size": 32,
            "num_classes": 10, "stem": {"channels": 8, "stride": 1},
            "layers": [{"op": "repvgg", "C_in": 8, "C_out": 8, "stride": 1}],
            "head": {"channels": 0}}
    searched = tmp_path / "searched.pkl"
    save_checkpoint(checkpoint_dict(numpy_state_dict(build_from_arch(arch)), arch, "train"),
                    searched)
    assert "RepVGG and QARepVGG" in fails("--load", searched, "-o", out)
    assert "-o must end in .mge or .onnx" in fails("--load", ckpt, "-o", tmp_path / "x.bin")
    assert os.listdir(empty) == []


@pytest.fixture(scope="module")
def imagenet_ckpt(tmp_path_factory):
    """An A0 as the PyTorch importer writes it: 1000 classes, no data set or size recorded."""
    net = model.get_model("RepVGG-A0", num_classes=1000)
    path = tmp_path_factory.mktemp("imported") / "a0_imported.pkl"
    save_checkpoint(checkpoint_dict(numpy_state_dict(net), "RepVGG-A0", "train"), path)
    return path


def test_a_checkpoint_recording_no_data_is_imagenet_and_needs_calibration_images(
        imagenet_ckpt, tmp_path):
    # it used to be calibrated on the built-in digits and written as a 32x32 digits model
    out = tmp_path / "a0_int8.onnx"
    proc = run_tool("tools/quantize.py", imagenet_ckpt, "-o", out, *FAST)
    assert proc.returncode == 1
    assert ("records no data set, so it is taken as ImageNet at 224 (as eval.py and predict.py "
            "do); pass --calib DIR") in one_line_error(proc)
    assert not out.exists()
    from PIL import Image
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (300, 260, 3), dtype=np.uint8)).save(
            str(photos / ("%d.jpg" % i)))
    proc = run_tool("tools/quantize.py", imagenet_ckpt, "-o", out, "--calib-data", photos,
                    "--calib-images", 2, "--check-images", 2, "--threads", 1, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    from deploy.preprocess import imagenet_spec
    from deploy.runtime import open_model
    written = open_model(str(out), 1)
    assert written.input_shape[1:] == (3, 224, 224)
    assert written.metadata["preprocess"] == imagenet_spec(224).to_dict()


def test_a_low_sqnr_is_one_warning_line(ckpt, tmp_path, monkeypatch):
    from helpers import call_tool

    out = tmp_path / "a0.onnx"
    monkeypatch.setattr(metrics, "LOW_SQNR_DB", 1000.0)  # every real int8 model is below
    proc = call_tool("tools/quantize.py", ckpt, "-o", out, *FAST)
    assert proc.returncode == 0, proc.stderr
    sqnr = float(proc.stdout.split("logit SQNR ")[1].split(" dB")[0])
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert lines == ["warning: the int8 logits are far from the float model's (SQNR %.1f dB, "
                     "below 1000 dB): expect lost accuracy; try --qat, the .onnx format "
                     "(per-channel weights), or more --calib-images of the model's own data"
                     % sqnr]
    assert out.is_file()  # a warning, not a refusal


def test_eval_labels_an_int8_file_int8(ckpt, tmp_path):
    out = tmp_path / "a0.onnx"
    assert run_tool("tools/quantize.py", ckpt, "-o", out, *FAST).returncode == 0
    proc = run_tool("tools/eval.py", ckpt, "--exported", out, "--limit", 20, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    # the route is named: the rule's runtime for this small model, on any CPU
    from deploy import route

    picked = route.NAMES[route.rule("int8", route.cpu_flags())[0]]
    assert "%s (RepVGG-A0, int8, PTQ, %s (rule))" % (out, picked) in proc.stdout
    assert "fp32" not in proc.stdout
    for runtime in route.RUNTIMES:  # each route forced, each scored through itself
        proc = run_tool("tools/eval.py", ckpt, "--exported", out, "--limit", 20, "--device",
                        "cpu", "--runtime", runtime)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr  # no OpenVINO banner
        assert "(RepVGG-A0, int8, PTQ, %s (forced))" % route.NAMES[runtime] in proc.stdout
