"""A file of another kind given where a MegEngine checkpoint is expected (issue 24 item 7): one
line saying what it is and what to do, from every tool that reads checkpoints.

Every file here is written by the real writer of its kind: PyTorch (tests/torch_ref, zip and
legacy formats) and safetensors, the onnx package, MegEngine's graph dump, the .bnn writer, PIL.
"""
import os
import types

import numpy as np
import pytest

from ckpt_fixtures import torch_fixtures  # noqa: F401  (fixture)
from common.checkpoint import load_checkpoint, save_checkpoint
from common.filekind import kind_of
from errors import CheckpointError
from helpers import call_tool, one_line_error


def _onnx(path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph), str(path))


def _mge(path):
    import megengine as mge

    from deploy import dump

    device = mge.get_default_device()
    mge.set_default_device(dump.trace_device(1))  # where the export traces (deploy/dump.py)
    try:
        graph, _ = dump.trace_model(lambda x: x * 2, np.zeros((1, 3), np.float32))
        dump.write_graph(graph, str(path))
    finally:
        mge.set_default_device(device)


def _bnn(path):
    from deploy.binary_runtime import write

    program = types.SimpleNamespace(num_classes=2, output=0, ops=[],
                                    arrays={"w0": np.zeros(4, np.float32)})
    write(str(path), program, "{}", (1, 3, 8, 8))


def _image(fmt):
    def make(path):
        from PIL import Image

        Image.new("RGB", (8, 8), (10, 200, 30)).save(str(path), fmt)
    return make


WRITERS = {"a.onnx": (_onnx, "is an ONNX model, not a checkpoint"),
           "a.mge": (_mge, "is an exported MegEngine graph (.mge), not a checkpoint"),
           "a.bnn": (_bnn, "is a packed binary model (.bnn), not a checkpoint"),
           "a.png": (_image("PNG"), "is a PNG image, not a checkpoint"),
           "a.jpg": (_image("JPEG"), "is a JPEG image, not a checkpoint")}


@pytest.fixture(scope="module")
def wrong_files(tmp_path_factory, torch_fixtures):  # noqa: F811
    """{path: words of its one-line refusal} for one real file of every kind."""
    folder = tmp_path_factory.mktemp("kinds")
    files = {}
    for name, (write, words) in WRITERS.items():
        write(folder / name)
        files[str(folder / name)] = words
    torch_dir = torch_fixtures[0]
    for name in ("a0_train_zip.pth", "a0_train_legacy_ddp.pth"):
        path = os.path.join(torch_dir, name)
        files[path] = ("is a PyTorch checkpoint: import it with python -m ckpt_converter %s "
                       "--arch ARCH -o %s" % (path, path[:-4] + ".pkl"))
    path = os.path.join(torch_dir, "tiny_train_safetensors.safetensors")
    files[path] = "is a safetensors weight file: import it with python -m ckpt_converter"
    return files


def test_each_kind_is_named_and_a_checkpoint_is_not(wrong_files, tmp_path):
    for path, words in wrong_files.items():
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path)
        assert str(e.value) == "%s %s" % (path, words) or words in str(e.value), str(e.value)
        assert str(e.value).startswith(path + " ")
    real = save_checkpoint({"arch": "RepVGG-A0", "state_dict": {}}, str(tmp_path / "c.pkl"))
    assert kind_of(real) is None and load_checkpoint(real)["arch"] == "RepVGG-A0"
    # a plain .npz (no header.npy) and a text file are not mistaken for a kind
    np.savez(str(tmp_path / "x.npz"), a=np.zeros(2))
    (tmp_path / "t.txt").write_text("hello")
    assert kind_of(str(tmp_path / "x.npz")) is None and kind_of(str(tmp_path / "t.txt")) is None


@pytest.mark.parametrize("tool", ["tools/eval.py", "tools/predict.py", "tools/convert.py",
                                  "tools/export.py", "tools/quantize.py", "train.py"])
def test_every_tool_gives_the_one_line(wrong_files, tool, tmp_path):
    out = tmp_path / "out"
    for path, words in wrong_files.items():
        args = {"tools/eval.py": [path, "--device", "cpu"],
                "tools/predict.py": ["--checkpoint", path, path, "--device", "cpu"],
                "tools/convert.py": [path, "--save", out],
                "tools/export.py": [path, "--output", str(out) + ".onnx"],
                "tools/quantize.py": [path, "-o", str(out) + ".onnx"],
                "train.py": ["--weights", path, "--epochs", "3", "--device", "cpu",
                             "--output", out]}[tool]
        proc = call_tool(tool, *args)
        if tool == "tools/quantize.py" and path.endswith((".onnx", ".mge", ".bnn")):
            words = "not a float checkpoint"  # quantize's own words for an exported model
        assert proc.returncode == 1, (tool, path, proc.stderr)
        assert words in one_line_error(proc), (tool, path)
        assert not os.listdir(tmp_path), (tool, path)
