"""deploy/onnx_export.py: the ONNX graph of a deploy-form model, run by ONNX Runtime (the real
library), computes what MegEngine's eager deploy model computes: plain, grouped, SE before and
after the ReLU (RepVGG-D2se style, RepVGGplus), searched networks (RepVGG and FBNet layers); dynamic batch; metadata; one-
line refusal of module types it does not know (binary blocks)."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import megengine as mge

import model
from deploy import modelfile, runtime
from deploy.onnx_export import OnnxExportError, export_onnx, to_onnx
from model.checkpoint import build_model
from model.parity import DEFAULT_TOLERANCE, randomize_batchnorm, sample_inputs
from model.repvgg import RepVGG
from model.repvggplus import RepVGGplus

SIZE = 32
TINY_ARCH = {"stem": {"channels": 8, "stride": 2},
             "layers": [{"op": "repvgg", "C_in": 8, "C_out": 16, "stride": 2},
                        {"op": "conv_k3", "C_in": 16, "C_out": 16, "stride": 1},
                        {"op": "repvgg", "C_in": 16, "C_out": 16, "stride": 1}],
             "head": {"channels": 24}}

NETWORKS = {
    "repvgg-groups": lambda: RepVGG((2, 2, 2, 1), 10, (0.5, 0.5, 0.5, 1),
                                    override_groups_map={2: 2, 4: 4}),
    "repvgg-se": lambda: RepVGG((2, 2, 2, 1), 10, (0.5, 0.5, 0.5, 1), use_se=True),
    "repvggplus-post-se": lambda: RepVGGplus((2, 2, 2, 1), 10, (0.5, 0.5, 0.5, 1),
                                             use_post_se=True),
    "searched": lambda: build_model(TINY_ARCH, 10),
    "searched-fbnet": lambda: build_model(dict(TINY_ARCH, layers=[
        {"op": "ir_k3_s2", "C_in": 8, "C_out": 16, "stride": 2},    # grouped, channel shuffle
        {"op": "ir_k5_e3", "C_in": 16, "C_out": 16, "stride": 1},   # residual
        {"op": "skip", "C_in": 16, "C_out": 16, "stride": 1},       # identity
        {"op": "skip", "C_in": 16, "C_out": 24, "stride": 2},       # 1x1 projection
        {"op": "ir_k3_s2", "C_in": 24, "C_out": 24, "stride": 1}]), 10),
}


def ort_run(proto, x):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_onnx_equals_eager_deploy(name):
    rng = np.random.default_rng(3)
    net = NETWORKS[name]()
    randomize_batchnorm(net, rng, sample_inputs(rng, (8, 3, SIZE, SIZE)))
    deploy = model.convert_to_deploy(net)
    deploy.eval()
    proto = to_onnx(deploy, (1, 3, SIZE, SIZE))
    for batch in (1, 3):  # dynamic batch: exported at 1, run at 3 too
        x = sample_inputs(rng, (batch, 3, SIZE, SIZE))
        expected = deploy(mge.tensor(x)).numpy()
        out = ort_run(proto, x)
        assert out.shape == expected.shape == (batch, 10)
        assert np.abs(out - expected).max() <= DEFAULT_TOLERANCE * np.abs(expected).max()
    if batch > 1:  # the logits depend on the input
        assert np.abs(out[0] - out[1]).max() > 1e3 * np.abs(out - expected).max()
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops and {"Conv", "Relu", "Gemm"} <= ops
    if name in ("repvgg-se", "repvggplus-post-se"):
        assert {"GlobalAveragePool", "Sigmoid", "Mul"} <= ops


def test_grouped_conv_is_exported_with_groups():
    net = NETWORKS["repvgg-groups"]()
    deploy = model.convert_to_deploy(net)
    proto = to_onnx(deploy, (1, 3, SIZE, SIZE))
    groups = sorted({a.i for n in proto.graph.node if n.op_type == "Conv"
                     for a in n.attribute if a.name == "group"})
    assert groups == [1, 2, 4]


def test_metadata_and_file(tmp_path):
    deploy = model.convert_to_deploy(NETWORKS["searched"]())
    classes = list("abcdefghij")  # one name per output: a shorter list is refused
    meta = modelfile.encode_metadata({"classes": classes, "arch": "tiny"})
    path = tmp_path / "m.onnx"
    export_onnx(deploy, str(path), (1, 3, SIZE, SIZE), json.loads(meta))
    loaded = onnx.load(str(path))
    onnx.checker.check_model(loaded)
    props = {p.key: p.value for p in loaded.metadata_props}
    assert json.loads(props[modelfile.METADATA_KEY])["classes"] == classes
    opened = runtime.open_model(path, threads=1)
    assert opened.metadata["arch"] == "tiny" and opened.input_shape == (1, 3, SIZE, SIZE)


def test_train_form_and_unknown_modules_are_refused():
    with pytest.raises(OnnxExportError, match="train form"):
        to_onnx(NETWORKS["searched"](), (1, 3, SIZE, SIZE))
    binary = model.get_model("BinaryResNet18-awnas", num_classes=10)
    with pytest.raises(OnnxExportError,
                       match="^cannot export a module of type BinaryResNet18 to ONNX"):
        to_onnx(binary, (1, 3, SIZE, SIZE))


def test_infer_refuses_a_model_whose_input_differs_from_its_preprocessing(tmp_path):
    from deploy.preprocess import small_spec
    from helpers import one_line_error, run_tool
    from PIL import Image

    deploy = model.convert_to_deploy(NETWORKS["searched"]())
    path = tmp_path / "m.onnx"
    export_onnx(deploy, str(path), (1, 3, SIZE, SIZE), json.loads(modelfile.encode_metadata(
        {"preprocess": small_spec(16).to_dict()})))
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    proc = run_tool("tools/infer.py", path, tmp_path / "a.png")
    assert proc.returncode == 1  # a refused input (common.cli)
    assert "takes 32x32 input but its recorded preprocessing gives 16x16 images" \
        in one_line_error(proc)
