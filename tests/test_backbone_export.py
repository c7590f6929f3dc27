"""A whole downstream model (a backbone with a user's FPN-style head): fused, checked, exported
with several outputs and run by ONNX Runtime and MegEngine Lite directly (issue 26)."""
import json
import os

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M

import model
from deploy import dump
from deploy.export import export_module
from deploy.onnx_export import OnnxExportError
from helpers import one_line_error, run_tool
from model.parity import check_parity, randomize_batchnorm, sample_inputs

# what deploy/onnx_check.py (ONNX validation of untrusted files) allows
ALLOWED_OPS = {"Conv", "BatchNormalization", "Relu", "Add", "Concat", "Resize", "Mul", "Sigmoid",
               "GlobalAveragePool", "Flatten", "Gemm", "MatMul", "Reshape", "MaxPool",
               "AveragePool", "Identity", "Transpose", "Slice", "Split", "Pad", "Clip", "Sub",
               "Div"}


class ConvBnRelu(M.Module):
    def __init__(self, cin, cout, k):
        super().__init__()
        self.conv = M.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.bn = M.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class TinySegmenter(M.Module):
    """Backbone (SE blocks included) + FPN head: 1x1 laterals, nearest top-down upsampling and
    sums, a concat, a 3x3 conv-BN-ReLU, a bilinear upsampling to the input size. Returns the
    mask logits and the finest FPN level."""

    def __init__(self, backbone, classes=4, width=16):
        super().__init__()
        self.backbone = backbone
        self.lateral = [ConvBnRelu(c, width, 1) for c in backbone.feature_info.channels()]
        self.fuse = ConvBnRelu(2 * width, width, 3)
        self.classify = M.Conv2d(width, classes, 1)

    def forward(self, x):
        feats = [lat(f) for lat, f in zip(self.lateral, self.backbone(x))]
        y = feats[-1]
        for f in reversed(feats[:-1]):
            y = F.nn.interpolate(y, size=f.shape[2:], mode="nearest") + f
        top = F.nn.interpolate(feats[-1], scale_factor=4, mode="bilinear", align_corners=False)
        y = self.fuse(F.concat([y, top], axis=1))
        logits = F.nn.interpolate(self.classify(y), size=x.shape[2:], mode="bilinear",
                                  align_corners=False)
        return {"mask": logits, "p1": y}


@pytest.fixture
def on_trace_device():
    """Build and trace on the device the export traces on (deploy/dump.py trace_device)."""
    device = mge.get_default_device()
    mge.set_default_device(dump.trace_device(1))
    yield
    mge.set_default_device(device)


def segmenter(rng):
    from model.repvgg import RepVGG

    backbone = model.Backbone(RepVGG((1, 2, 2, 1), 10, (0.5, 0.5, 0.5, 0.5), use_se=True,
                                     override_groups_map={2: 2}), out_indices=(1, 2, 3))
    net = TinySegmenter(backbone)
    return randomize_batchnorm(net, rng, sample_inputs(rng, (16, 3, 32, 32)))


def test_whole_model_fusion_matches_in_eval_mode_and_is_idempotent(rng):
    net = segmenter(rng)
    x = sample_inputs(rng, (4, 3, 32, 32))
    parity, fused = check_parity("segmenter", net, x)
    assert parity.ok and parity.max_rel <= 1e-5, parity
    assert model.is_deploy(fused) and not model.is_deploy(net)  # the user's model untouched
    blocks = [m for _, m in fused.named_modules() if isinstance(m, model.RepVGGBlock)]
    assert blocks and all(b.deploy for b in blocks)
    again = model.convert_to_deploy(fused)
    a, b = fused(mge.tensor(x)), again(mge.tensor(x))
    for key in ("mask", "p1"):
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    # the check can fail: a wrong fused bias is seen
    conv = blocks[0].rbr_reparam
    conv.bias[...] = conv.bias + 0.1
    from model.parity import compare_outputs

    assert not compare_outputs("broken", net(mge.tensor(x)), fused(mge.tensor(x))).ok


@pytest.mark.parametrize("suffix", ["onnx", "mge"])
def test_multi_output_export_runs_in_onnx_runtime_and_lite(rng, tmp_path, suffix,
                                                           on_trace_device):
    net = segmenter(rng)
    path = str(tmp_path / ("seg." + suffix))
    exported = export_module(net, (1, 3, 32, 32), path, output_names=["mask", "p1"], threads=1)
    assert [c.name.split(" vs ")[1] for c in exported.checks] == ["eager deploy", "eager train"]
    assert all(c.ok for c in exported.checks)
    x = sample_inputs(np.random.default_rng(5), (3, 3, 32, 32))
    net.eval()
    want = net(mge.tensor(x))
    if suffix == "onnx":
        import onnx
        import onnxruntime as ort

        proto = onnx.load(path)
        assert {n.op_type for n in proto.graph.node} <= ALLOWED_OPS
        meta = json.loads({p.key: p.value for p in proto.metadata_props}["repvgg_megengine"])
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        assert [o.name for o in session.get_outputs()] == ["mask", "p1"]
        got = session.run(None, {session.get_inputs()[0].name: x})
    else:
        from megenginelite import LiteNetwork

        from deploy.lite import read_user_info

        meta = json.loads(read_user_info(path))
        lite = LiteNetwork()
        lite.load(path)
        assert list(lite.get_all_output_name()) == ["mask", "p1"]
        lite.get_io_tensor(lite.get_all_input_name()[0]).set_data_by_copy(x)
        lite.forward()
        lite.wait()
        got = [lite.get_io_tensor(n).to_numpy() for n in ("mask", "p1")]
    assert meta["outputs"] == [{"name": "mask", "channels": 4, "reduction": 1},
                               {"name": "p1", "channels": 16, "reduction": 4}]
    for key, array in zip(("mask", "p1"), got):
        expected = want[key].numpy()
        assert array.shape == expected.shape
        assert np.abs(array - expected).max() <= 1e-5 * np.abs(expected).max(), key


class WithTanh(M.Module):
    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return [F.tanh(self.conv(x)), self.conv(x)]


def test_an_operator_outside_the_onnx_set_is_refused_in_one_line(tmp_path, on_trace_device):
    path = str(tmp_path / "tanh.onnx")
    with pytest.raises(OnnxExportError) as e:
        export_module(WithTanh(), (1, 3, 8, 8), path, threads=1)
    export_module(WithTanh(), (1, 3, 8, 8), str(tmp_path / "tanh.mge"), threads=1)  # any op
    message = str(e.value)
    assert "TANH" in message and "\n" not in message
    assert os.listdir(tmp_path) == ["tanh.mge"]


def test_tools_export_features_and_infer_prints_each_shape(tmp_path):
    from PIL import Image

    image = str(tmp_path / "img.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)).save(image)
    for suffix in ("onnx", "mge"):
        out = str(tmp_path / ("feats." + suffix))
        proc = run_tool("tools/export.py", "--arch", "RepVGG-A0", "--random-init", "--size",
                        "32", "--features", "1", "2", "4", "--output", out, "--no-algo-cache",
                        "--threads", "1")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "output stage4   1280 channels, stride 32" in proc.stdout
        proc = run_tool("tools/infer.py", out, image, "--threads", "1")
        assert proc.returncode == 0, proc.stderr[-3000:]
        lines = proc.stdout.split("\n")
        assert lines[1:4] == ["  stage1     48x8x8 (stride 4)", "  stage2     96x4x4 (stride 8)",
                              "  stage4     1280x1x1 (stride 32)"], proc.stdout
    bad = run_tool("tools/export.py", "--arch", "RepVGG-A0", "--random-init", "--features", "7",
                   "--output", str(tmp_path / "bad.onnx"))
    assert bad.returncode == 1 and "out_indices" in one_line_error(bad)
    assert not os.path.exists(str(tmp_path / "bad.onnx"))
