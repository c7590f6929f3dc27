"""tools/export.py --format bnn and tools/infer.py on a .bnn: a binary network trained for a few
steps on the digits (BinaryResNet18-bmxnet: sign weights, -1 padding; a searched network of
binary primitives from an architecture dict: xnor/bireal scales, 0 padding, factorized
reductions) exports, checked, and classifies images as its float emulation does, without the
model code; what cannot be packed or read is one line."""
import os
import re

import numpy as np
import pytest
from PIL import Image

import megengine as mge
import megengine.functional as F
import megengine.optimizer as optim
from megengine.autodiff import GradManager

from common.checkpoint import save_checkpoint
from data.digits import load_digits
from deploy import binary_runtime as br
from deploy import bitops
from deploy import preprocess
from model.checkpoint import build_model, checkpoint_dict, numpy_state_dict
from helpers import BLOCK_MODEL, assert_top_k, call_tool, one_line_error, run_tool

SIZE, CLASSES = 16, 10
NAMES = ["digit%d" % i for i in range(CLASSES)]
SEARCHED = {
    "format": "repvgg-search-arch/1", "space": "test", "image_size": SIZE,
    "num_classes": CLASSES, "stem": {"channels": 16, "stride": 1},
    "layers": [{"op": "xnor_resnet_block", "C_in": 16, "C_out": 32, "stride": 2},
               {"op": "bireal_resnet_block", "C_in": 32, "C_out": 32, "stride": 1},
               {"op": "xnor_vgg_block", "C_in": 32, "C_out": 64, "stride": 2},
               {"op": "xnor_conv_3x3_cond_skip", "C_in": 64, "C_out": 64, "stride": 1},
               {"op": "xnor_nin", "C_in": 64, "C_out": 64, "stride": 1},
               {"op": "xnor_skip_connect", "C_in": 64, "C_out": 128, "stride": 2}],
    "head": {"channels": 0}}


def train_a_few_steps(net, steps=6):
    """SGD on 32 digits, the training loop's clamp after each step; BatchNorm statistics move
    off their initial values (a trained network's)."""
    train, _, _ = load_digits(image_size=SIZE)
    x = (train.images[:32].astype(np.float32) / 255 - 0.5) / 0.5
    x, y = mge.tensor(x.transpose(0, 3, 1, 2)), mge.tensor(train.labels[:32])
    opt = optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
    gm = GradManager().attach(net.parameters())
    net.train()
    for _ in range(steps):
        with gm:
            gm.backward(F.loss.cross_entropy(net(x), y))
        opt.step()
        opt.clear_grad()
        for m in net.modules():
            if hasattr(m, "after_optimizer_step"):
                m.after_optimizer_step()
    net.eval()
    return net


_EXPORTS = {}


def export_trained(name, tmp_path_factory):
    """A network trained a few steps and exported to .bnn, once per module run."""
    if name not in _EXPORTS:
        _EXPORTS[name] = _export_trained(name, tmp_path_factory)
    return _EXPORTS[name]


@pytest.fixture(scope="module", params=["BinaryResNet18-bmxnet", "searched"])
def exported(request, tmp_path_factory):
    return export_trained(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def bmxnet(tmp_path_factory):
    """The network the command-line behaviour is tested on."""
    return export_trained("BinaryResNet18-bmxnet", tmp_path_factory)


def _export_trained(name, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bnn")
    arch = SEARCHED if name == "searched" else name
    mge.random.seed(1)
    net = train_a_few_steps(build_model(arch, CLASSES))
    spec = preprocess.small_spec(SIZE)
    ckpt = folder / "net.pkl"
    save_checkpoint(checkpoint_dict(numpy_state_dict(net), arch, "train", classes=NAMES,
                                    preprocess=spec.to_dict()), ckpt)
    out = folder / "net.bnn"
    proc = run_tool("tools/export.py", "--load", ckpt, "--output", out, "--batch", 2,
                    "--threads", 2, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "packed binary model vs eager deploy" in proc.stdout, proc.stdout
    assert "packed binary layers" in proc.stdout
    assert re.search(r"check \d+ binary convs, exact counts", proc.stdout), proc.stdout
    _, val, _ = load_digits(image_size=SIZE)
    images = []
    for i in range(4):
        images.append(folder / ("digit%d.png" % i))
        Image.fromarray(val.images[i]).save(images[-1])
    return {"name": name, "folder": folder, "ckpt": ckpt, "bnn": out, "net": net,
            "spec": spec, "images": images}


def test_the_file_records_what_the_other_formats_record(exported):
    loaded = br.BinaryModel(exported["bnn"], threads=1)
    meta = loaded.metadata
    assert meta["classes"] == NAMES and meta["input_shape"] == [2, 3, SIZE, SIZE]
    assert preprocess.PreprocessSpec.from_dict(meta["preprocess"]) == exported["spec"]
    assert meta["binary_layers"] == loaded.binary_layers > 0
    assert loaded.input_shape == (2, 3, SIZE, SIZE) and loaded.num_classes == CLASSES


def test_infer_prints_the_emulations_top5_without_model_code(exported):
    images = exported["images"]
    proc = run_tool("-c", BLOCK_MODEL, "tools/infer.py", exported["bnn"], *images,
                    "--threads", 2, timeout=300)
    assert proc.returncode == 0, proc.stderr
    x = np.stack([preprocess.preprocess_image(p, exported["spec"]) for p in images])
    logits = exported["net"](mge.tensor(x)).numpy().astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    lines = proc.stdout.strip().split("\n")
    assert len(lines) == 6 * len(images), proc.stdout
    for i, path in enumerate(images):
        assert lines[6 * i] == str(path)
        rows = [re.match(r"\s+(\d)\. digit(\d)\s+([\d.]+)%$", line)
                for line in lines[6 * i + 1:6 * i + 6]]
        assert all(rows), lines
        printed = [(int(m.group(2)), float(m.group(3))) for m in rows]
        assert_top_k(printed, probs[i], atol=0.006)
        assert printed[0][0] == probs[i].argmax()


def test_infer_benchmark_runs_the_packed_model(bmxnet):
    proc = run_tool("tools/infer.py", bmxnet["bnn"], "--benchmark", "--runs", 2, "--warmup",
                    1, "--threads", 1, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert re.match(r"[\d.]+ img/s$", proc.stdout.strip().split("\n")[-1])


def test_a_failed_check_leaves_no_file(bmxnet, tmp_path, monkeypatch):
    """A packed model that counts differently from the emulation (here: one weight bit of the
    first binary conv flipped, a change the logits may hardly show) fails the exact per-conv
    check inside tools/export.py, and nothing is written."""
    real, calls = bitops.pack_weight, []

    def one_bit_off(signs):
        bits = real(signs)
        if not calls:
            bits[0, 0, 0, 0, 0] ^= np.uint64(1)
        calls.append(1)
        return bits

    monkeypatch.setattr(bitops, "pack_weight", one_bit_off)
    out = tmp_path / "wrong.bnn"
    proc = call_tool("tools/export.py", "--load", bmxnet["ckpt"], "--output", out,
                     "--threads", 2)
    assert proc.returncode == 1  # a refusal (common.cli: exit 1)
    assert "do not count what the emulation counts: binary conv 0: " in one_line_error(proc)
    assert os.listdir(tmp_path) == []


def test_cli_errors_are_one_line(bmxnet, tmp_path):
    (tmp_path / "bad.bnn").write_bytes(b"not a model")
    cases = [
        (("tools/export.py", "--arch", "RepVGG-A0", "--random-init", "--num-classes", 10,
          "--size", 32, "--output", tmp_path / "o.bnn"), "has no binary layer"),
        (("tools/export.py", "--load", bmxnet["ckpt"], "--output", tmp_path / "o.mge",
          "--format", "bnn"), "--format bnn but the output is named"),
        (("tools/infer.py", tmp_path / "bad.bnn", bmxnet["images"][0]),
         "not a valid packed binary model"),
        (("tools/infer.py", bmxnet["bnn"], bmxnet["images"][0], "--precision", "bf16"),
         "runs a .onnx"),
    ]
    for args, message in cases:  # in this process: the messages, without start-up costs
        proc = call_tool(*args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert message in one_line_error(proc), args
    assert sorted(os.listdir(tmp_path)) == ["bad.bnn"]


def test_the_benchmark_runs_and_compares_first():
    """benchmarks/bench_binary.py, a smoke run: the packed model and its emulation, each in a
    process of its own, logits compared before any timing (not its speed)."""
    proc = run_tool("benchmarks/bench_binary.py", "--quick", "--models", "searched", "--paths",
                    "packed", "emulation", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "CPU: " in out and "31.6x smaller" in out, out
    assert "check 11 binary convs, exact counts" in out
    assert re.search(r"packed vs eager emulation: max relative difference [\d.e-]+, top-1 "
                     r"agreement 100%", out), out
    assert re.search(r"\| packed \.bnn, XNOR-popcount \(ours\) \| 1 \| [\d.]+ \|", out), out
    assert re.search(r"\| float emulation, MegEngine eager \| 1 \| .* \| [\d.]+ \|$", out, re.M)
