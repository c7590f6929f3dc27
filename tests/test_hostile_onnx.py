"""Untrusted .onnx files (issue 23): every hostile file is refused by tools/infer.py, as a user
runs it, in one ``error:`` line, exit 1, within 60 s, writing nothing; a fuzz run of mutated
copies of a small exported file never kills the process that opens them, never prints a
traceback; and the valid files of every kind still run: ours (A0, SE, a searched FBNet
network), an int8 QDQ file, and timm's torch.onnx export of a RepVGG (made by real timm)."""
import json
import os
import sys
import time

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from ckpt_fixtures import _generate, run_torch  # noqa: F401  (run_torch: the torch venv)
from helpers import ROOT, one_line_error, run_tool

SIZE = 8  # the hand-built graphs' input
SECRET = b"SECRET-MARKER-7f3a"
FORMAT = "repvgg-megengine-model/2"
TIMM_FIXTURES = os.path.join(ROOT, "tests", ".fixtures", "onnx")
TIMM_SOURCES = [os.path.join(ROOT, "tests", "torch_ref", "onnx_fixtures.py"),
                os.path.join(ROOT, "tests", "torch_ref", "make_fixtures.py")]


# -- hand-built graphs ------------------------------------------------------------------------
def tensor(name, array):
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def model_of(nodes, inits, inputs=None, outputs=None, metadata=None, opset=17):
    """A model: by default input ``x`` (batch, 3, SIZE, SIZE), output ``logits`` (batch, 10)."""
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                      ["batch", 3, SIZE, SIZE])]
    outputs = outputs or [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                        ["batch", 10])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    if metadata is not None:
        helper.set_model_props(proto, {"repvgg_megengine": metadata})
    return proto


def classifier_parts(classes=10, conv_weight=None, x="x"):
    """Conv 3->4 -> Relu -> GlobalAveragePool -> Flatten -> Gemm: nodes and initializers."""
    rng = np.random.default_rng(0)
    w = conv_weight if conv_weight is not None else tensor(
        "w", rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    nodes = [helper.make_node("Conv", [x, "w"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["logits"], transB=1)]
    inits = [w, tensor("fc", rng.standard_normal((classes, 4)).astype(np.float32)),
             tensor("fb", np.zeros(classes, np.float32))]
    return nodes, inits


def save(proto, folder, name="m.onnx"):
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())
    return path


def metadata_json(**fields):
    return json.dumps(dict(fields, format=FORMAT))


def external_weight(location):
    """The conv weight stored 'externally' at ``location``."""
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 3, 3, 3])
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * 108))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def secret_file(folder):
    """A file outside the model's folder whose bytes must never be read."""
    outside = os.path.join(os.path.dirname(folder), "outside")
    os.makedirs(outside, exist_ok=True)
    path = os.path.join(outside, "secret.bin")
    with open(path, "wb") as f:
        f.write((SECRET * 64)[:4 * 108])
    return path


def ext_absolute(folder):
    nodes, inits = classifier_parts(conv_weight=external_weight(secret_file(folder)))
    return save(model_of(nodes, inits), folder)


def ext_dotdot(folder):
    secret_file(folder)
    nodes, inits = classifier_parts(conv_weight=external_weight("../outside/secret.bin"))
    return save(model_of(nodes, inits), folder)


def ext_symlink(folder):
    os.symlink(secret_file(folder), os.path.join(folder, "weights.bin"))
    nodes, inits = classifier_parts(conv_weight=external_weight("weights.bin"))
    return save(model_of(nodes, inits), folder)


def loop(folder):
    """The logits pass through a Loop of 10^15 iterations that adds zero each time."""
    nodes, inits = classifier_parts()
    nodes[-1].output[0] = "g"
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "zero"], ["v_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [1]),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, ["batch", 10])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [1]),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["batch", 10])])
    nodes.append(helper.make_node("Loop", ["trips", "cond", "g"], ["logits"], body=body))
    inits += [tensor("trips", np.array(10 ** 15, np.int64)), tensor("cond", np.array([True])),
              tensor("zero", np.zeros(1, np.float32))]
    return save(model_of(nodes, inits), folder)


def constant_of_shape(folder):
    """A (40000, 40000) tensor made from nothing, summed away into the logits."""
    nodes, inits = classifier_parts()
    nodes[-1].output[0] = "g"
    nodes += [helper.make_node("ConstantOfShape", ["shape"], ["big"]),
              helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
              helper.make_node("Add", ["g", "s"], ["logits"])]
    inits.append(tensor("shape", np.array([40000, 40000], np.int64)))
    return save(model_of(nodes, inits), folder)


def int64_input(folder):
    nodes, inits = classifier_parts(x="xf")
    nodes.insert(0, helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT))
    inp = helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", 3, SIZE, SIZE])
    return save(model_of(nodes, inits, inputs=[inp]), folder)


def output_1d(folder):
    nodes, inits = classifier_parts()
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch"])
    return save(model_of(nodes, inits, outputs=[out]), folder)


def output_4d(folder):
    nodes, inits = classifier_parts()
    nodes[2].output[0] = "logits"
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4, 1, 1])
    return save(model_of(nodes[:3], inits[:1], outputs=[out]), folder)


def nested_json(folder):
    nodes, inits = classifier_parts()
    return save(model_of(nodes, inits, metadata="[" * 100000 + "]" * 100000), folder)


def nan_metadata(folder):
    nodes, inits = classifier_parts()
    text = ('{"format": "%s", "preprocess": {"resize": NaN, "size": 1e999, "mean": [0, 0, 0], '
            '"std": [1, 1, 1]}}' % FORMAT)
    return save(model_of(nodes, inits, metadata=text), folder)


def short_class_list(folder):
    nodes, inits = classifier_parts()
    return save(model_of(nodes, inits, metadata=metadata_json(classes=["cat", "dog"])), folder)


def zero_classes(folder):
    nodes, inits = classifier_parts(classes=0)
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 0])
    return save(model_of(nodes, inits, outputs=[out]), folder)


def huge_declared_conv(folder):
    """A conv weight that declares 10^11 values and holds 432 bytes."""
    w = tensor("w", np.zeros((4, 3, 3, 3), np.float32))
    del w.dims[:]
    w.dims.extend([100000, 100000, 3, 3])
    nodes, inits = classifier_parts(conv_weight=w)
    return save(model_of(nodes, inits), folder)


def huge_input(folder):
    """A consistent graph at 20000x20000: 100 GB of activations."""
    nodes, inits = classifier_parts()
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 20000, 20000])
    return save(model_of(nodes, inits, inputs=[inp]), folder)


def huge_batch(folder):
    """A static batch of 10^12 images (``--benchmark`` would allocate it)."""
    nodes, inits = classifier_parts()
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [10 ** 12, 3, SIZE, SIZE])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [10 ** 12, 10])
    return save(model_of(nodes, inits, inputs=[inp], outputs=[out]), folder)


def shared_weight_convs(folder):
    """400 convolutions 64->64 at 128x128 sharing one 147 KB weight: 2.4 x 10^11 MACs."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["h0"], kernel_shape=[3, 3], pads=[1] * 4)]
    for i in range(400):
        nodes.append(helper.make_node("Conv", ["h%d" % i, "w"], ["h%d" % (i + 1)],
                                      kernel_shape=[3, 3], pads=[1] * 4))
    nodes += [helper.make_node("GlobalAveragePool", ["h400"], ["p"]),
              helper.make_node("Flatten", ["p"], ["f"], axis=1),
              helper.make_node("Gemm", ["f", "fc"], ["logits"], transB=1)]
    inits = [tensor("w0", rng.standard_normal((64, 3, 3, 3)).astype(np.float32)),
             tensor("w", rng.standard_normal((64, 64, 3, 3)).astype(np.float32) * 0.01),
             tensor("fc", rng.standard_normal((10, 64)).astype(np.float32))]
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 128, 128])
    return save(model_of(nodes, inits, inputs=[inp]), folder)


def conv_kernel_mismatch(folder):
    """kernel_shape 5x5 on a 3x3 weight: shape inference alone accepts it."""
    nodes, inits = classifier_parts()
    nodes[0] = helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[5, 5], pads=[2] * 4)
    return save(model_of(nodes, inits), folder)


def broadcast_batch(folder):
    """Logits broadcast to 5 rows whatever the batch."""
    nodes, inits = classifier_parts()
    nodes[1] = helper.make_node("Mul", ["c", "five"], ["r"])
    inits.append(tensor("five", np.ones((5, 1, 1, 1), np.float32)))
    return save(model_of(nodes, inits), folder)


def custom_domain(folder):
    nodes, inits = classifier_parts()
    nodes[1] = helper.make_node("FusedRelu", ["c"], ["r"], domain="com.example")
    proto = model_of(nodes, inits)
    proto.opset_import.append(helper.make_opsetid("com.example", 1))
    return save(proto, folder)


def runtime_failure(folder):
    """Valid, with a static batch of 2: one image fails inside ONNX Runtime's run. (Its
    preprocessing is recorded: a foreign file's note about ImageNet's would come first.)"""
    from deploy.preprocess import small_spec

    nodes, inits = classifier_parts()
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, SIZE, SIZE])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 10])
    meta = metadata_json(preprocess=small_spec(SIZE).to_dict())
    return save(model_of(nodes, inits, inputs=[inp], outputs=[out], metadata=meta), folder)


def truncated(folder):
    data = model_of(*classifier_parts()).SerializeToString()
    return save_bytes(folder, data[:len(data) // 2])


def random_bytes(folder):
    return save_bytes(folder, np.random.default_rng(5).bytes(20000))


def empty(folder):
    return save_bytes(folder, b"")


def save_bytes(folder, data):
    path = os.path.join(folder, "m.onnx")
    with open(path, "wb") as f:
        f.write(data)
    return path


# case -> (builder, a fragment of the one error line)
HOSTILE = {
    "external-absolute": (ext_absolute, "external"),
    "external-dotdot": (ext_dotdot, "external"),
    "external-symlink": (ext_symlink, "external"),
    "loop": (loop, "op Loop is refused (control flow)"),
    "constant-of-shape": (constant_of_shape, "op ConstantOfShape is refused (a data generator)"),
    "int64-input": (int64_input, "element type 7; expected float32"),
    "output-1d": (output_1d, "a classifier has one float32 (N, classes) output"),
    "output-4d": (output_4d, "a classifier has one float32 (N, classes) output"),
    "nested-json": (nested_json, "nests deeper"),
    "nan-metadata": (nan_metadata, "non-finite"),
    "short-class-list": (short_class_list, "records 2 class names for its 10 outputs"),
    "zero-classes": (zero_classes, "has 0 classes"),
    "huge-declared-conv": (huge_declared_conv, "declares [100000, 100000, 3, 3]"),
    "huge-input": (huge_input, "--max-memory raises it"),
    "huge-batch": (huge_batch, "--max-batch raises it"),
    "shared-weight-convs": (shared_weight_convs, "--max-gmacs raises it"),
    "custom-domain": (custom_domain, "domain"),
    "conv-kernel-mismatch": (conv_kernel_mismatch, "(kernel_shape [5, 5])"),
    "broadcast-batch": (broadcast_batch, "for a batch of 1 images"),
    "runtime-failure": (runtime_failure, "failed to run in ONNX Runtime"),
    "truncated": (truncated, "is not an ONNX model"),
    "random-bytes": (random_bytes, "is not an ONNX model"),
    "empty": (empty, "is not an ONNX model"),
}


def listing(folder):
    """Every path under ``folder`` with its size and mtime."""
    out = {}
    for base, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = os.path.join(base, name)
            st = os.lstat(p)
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


def write_image(path, size=SIZE):
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 255, (size, size, 3), np.uint8)
                    ).save(path)
    return path


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_onnx_is_refused_in_one_line(case, tmp_path):
    build, expected = HOSTILE[case]
    folder = tmp_path / "model"
    folder.mkdir()
    path = build(str(folder))
    image = write_image(tmp_path / "image.png")
    before = listing(tmp_path)
    start = time.monotonic()
    proc = run_tool("tools/infer.py", path, image, "--threads", 1, timeout=60)
    assert time.monotonic() - start < 60
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    line = one_line_error(proc)
    assert expected in line
    assert SECRET.decode() not in proc.stdout + proc.stderr
    assert listing(tmp_path) == before


@pytest.mark.parametrize("case", ["external-absolute", "loop"])
def test_the_bf16_route_checks_the_file_too(case, tmp_path):
    """--precision bf16 (OpenVINO) opens the file through the same check; on a CPU without
    bf16 instructions it is refused for that first."""
    from common import cpus
    from deploy.runtime import open_model
    from errors import ModelFileError

    build, expected = HOSTILE[case]
    path = build(str(tmp_path))
    with pytest.raises(ModelFileError) as refused:
        open_model(path, threads=1, precision="bf16")
    assert (expected if cpus.has_bf16() else "bf16 instructions") in str(refused.value)


def test_benchmark_of_a_refused_file_is_refused_too(tmp_path):
    """--benchmark allocates the batch the file records: it must not get that far."""
    path = huge_batch(str(tmp_path))
    proc = run_tool("tools/infer.py", path, "--benchmark", timeout=60)
    assert proc.returncode == 1
    assert "--max-batch raises it" in one_line_error(proc)


def test_the_refusal_names_what_a_flag_raises_and_the_flag_accepts_it(tmp_path):
    """The MAC budget is a default, not a wall: the open-time check uses the limits it is
    given (deploy.runtime.OnnxModel), and the same file opens under a raised limit."""
    from common.limits import LimitError, Limits
    from deploy.runtime import OnnxModel

    path = shared_weight_convs(str(tmp_path))
    with pytest.raises(LimitError, match="GMACs per image"):
        OnnxModel(path, threads=1)
    model = OnnxModel(path, threads=1, limits=Limits(max_gmacs=300))
    assert model.budget["macs"] == 64 * 3 * 9 * 128 * 128 + 400 * 64 * 64 * 9 * 128 * 128 \
        + 64 * 10
    assert model.num_classes == 10


def test_a_batch_past_the_memory_budget_is_refused_before_it_runs(tmp_path):
    from common.limits import LimitError, Limits
    from deploy.runtime import OnnxModel

    nodes, inits = classifier_parts()
    model = OnnxModel(save(model_of(nodes, inits), str(tmp_path)), threads=1,
                      limits=Limits(max_memory=1 << 20))
    assert model(np.zeros((2, 3, SIZE, SIZE), np.float32)).shape == (2, 10)
    with pytest.raises(LimitError, match="--max-memory"):
        model(np.zeros((512, 3, SIZE, SIZE), np.float32))


# -- the fuzz run -----------------------------------------------------------------------------
WORKER = r"""
import os, sys
import numpy as np
sys.path.insert(0, os.getcwd())
from deploy.runtime import open_model
from errors import ModelFileError
for name in sorted(os.listdir(sys.argv[1])):
    try:
        model = open_model(os.path.join(sys.argv[1], name), threads=1)
        out = model(np.ones((1,) + tuple(model.input_shape[1:]), np.float32))
        print(name, "ran", np.shape(out), flush=True)
    except ModelFileError as e:
        print(name, "refused", str(e).splitlines()[0][:100], flush=True)
"""
FUZZ_SEED = 23


def tiny_exported_onnx(path):
    """A small RepVGG (SE blocks) at 16x16, digits size, written by deploy.onnx_export with
    the metadata tools/export.py records."""
    import model
    from deploy.modelfile import encode_metadata
    from deploy.onnx_export import export_onnx
    from deploy.preprocess import small_spec
    from model.parity import randomize_batchnorm, sample_inputs
    from model.repvgg import RepVGG

    rng = np.random.default_rng(0)
    net = RepVGG((1, 1, 1, 1), 10, (0.25, 0.25, 0.25, 0.125), use_se=True)
    randomize_batchnorm(net, rng, sample_inputs(rng, (4, 3, 16, 16)))
    deploy = model.convert_to_deploy(net)
    deploy.eval()
    meta = json.loads(encode_metadata({"preprocess": small_spec(16).to_dict(),
                                       "classes": [str(i) for i in range(10)]}))
    return export_onnx(deploy, str(path), (1, 3, 16, 16), meta), deploy


def mutants(data, weights, rng):
    """Bit flips, zeroed 4-byte words and truncations of ``data``; most of them outside the
    weight bytes (``weights``: their (start, end) spans), where the structure is."""
    def position():
        for _ in range(100):
            p = int(rng.integers(0, len(data)))
            if rng.random() < 0.15 or not any(s <= p < e for s, e in weights):
                return p
        return p

    for i in range(150):
        b = bytearray(data)
        p = position()
        b[p] ^= 1 << int(rng.integers(0, 8))
        yield "flip%03d" % i, bytes(b)
    for i in range(100):
        b = bytearray(data)
        p = min(position(), len(data) - 4)
        b[p:p + 4] = b"\0\0\0\0"
        yield "zero%03d" % i, bytes(b)
    for i in range(50):
        yield "trunc%03d" % i, data[:int(rng.integers(0, len(data)))]


def test_fuzzed_copies_of_an_exported_onnx_never_crash_the_process(tmp_path):
    from common import children

    base, _ = tiny_exported_onnx(tmp_path / "base.onnx")
    data = (tmp_path / "base.onnx").read_bytes()
    spans = []
    for init in base.graph.initializer:
        start = data.find(init.raw_data)
        spans.append((start, start + len(init.raw_data)))
    folder = tmp_path / "mutants"
    folder.mkdir()
    names = []
    for name, mutant in mutants(data, spans, np.random.default_rng(FUZZ_SEED)):
        (folder / (name + ".onnx")).write_bytes(mutant)
        names.append(name + ".onnx")
    proc = children.run([sys.executable, "-c", WORKER, folder], 120, cwd=ROOT,
                        capture_output=True, text=True)
    assert proc.returncode == 0, "worker died (%s): %s" % (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr == ""  # no traceback, no runtime's own log line
    results = [line.split(" ", 2) for line in proc.stdout.splitlines()]
    assert [r[0] for r in results] == sorted(names)  # one line per file, none skipped
    assert {r[1] for r in results} <= {"ran", "refused"}
    counts = {k: sum(r[1] == k for r in results) for k in ("ran", "refused")}
    assert counts["refused"] >= 50 and counts["ran"] >= 20, counts  # both paths exercised


# -- valid files still run --------------------------------------------------------------------
def test_our_exported_files_run_and_compute_the_model(tmp_path):
    import megengine as mge

    from deploy.runtime import open_model

    _, deploy = tiny_exported_onnx(tmp_path / "tiny.onnx")
    x = np.random.default_rng(2).standard_normal((3, 3, 16, 16)).astype(np.float32)
    model = open_model(tmp_path / "tiny.onnx", threads=1)
    expected = deploy(mge.tensor(x)).numpy()
    assert np.abs(model(x) - expected).max() <= 1e-5 * np.abs(expected).max()
    image = write_image(tmp_path / "a.png", 20)
    proc = run_tool("tools/infer.py", tmp_path / "tiny.onnx", image, "--threads", 1,
                    timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.splitlines()[0] == str(image)


def test_a_searched_network_runs(tmp_path):
    import megengine as mge

    import model as models
    from deploy.onnx_export import export_onnx
    from deploy.runtime import open_model
    from model.checkpoint import build_model

    arch = {"stem": {"channels": 8, "stride": 2},
            "layers": [{"op": "ir_k3_s2", "C_in": 8, "C_out": 16, "stride": 2},
                       {"op": "ir_k5_e3", "C_in": 16, "C_out": 16, "stride": 1},
                       {"op": "skip", "C_in": 16, "C_out": 24, "stride": 2},
                       {"op": "repvgg", "C_in": 24, "C_out": 24, "stride": 1}],
            "head": {"channels": 32}}
    deploy = models.convert_to_deploy(build_model(arch, 10))
    deploy.eval()
    export_onnx(deploy, str(tmp_path / "s.onnx"), (1, 3, 32, 32))
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32)
    expected = deploy(mge.tensor(x)).numpy()
    got = open_model(tmp_path / "s.onnx", threads=1)(x)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_an_int8_qdq_file_runs(tmp_path):
    import megengine as mge

    import model
    from deploy.runtime import open_model
    from model.parity import randomize_batchnorm, sample_inputs
    from model.repvgg import RepVGG
    from quant.onnx_int8 import write_int8_onnx

    rng = np.random.default_rng(4)
    mge.random.seed(4)  # the conv weights' initialization
    net = RepVGG((1, 1, 1, 1), 10, (0.25, 0.25, 0.25, 0.125))
    randomize_batchnorm(net, rng, sample_inputs(rng, (8, 3, 16, 16)))
    deploy = model.convert_to_deploy(net)
    deploy.eval()
    calib = [sample_inputs(rng, (8, 3, 16, 16)) for _ in range(2)]
    write_int8_onnx(deploy, str(tmp_path / "q.onnx"), calib, calib[0], threads=1)
    int8 = open_model(tmp_path / "q.onnx", threads=1)
    x = sample_inputs(rng, (8, 3, 16, 16))
    got, expected = int8(x), deploy(mge.tensor(x)).numpy()
    assert got.shape == (8, 10)
    # quantized: close to the float model (logits correlated), not equal to it
    assert np.abs(got - expected).max() > 0
    assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.98


@pytest.fixture(scope="module")
def timm_exports():
    """(folder, manifest) of timm's repvgg_a0 exported by torch.onnx (train and deploy form),
    generated by tests/torch_ref/onnx_fixtures.py under the torch venv when missing or stale."""
    script = os.path.join(ROOT, "tests", "torch_ref", "onnx_fixtures.py")
    return TIMM_FIXTURES, _generate(TIMM_FIXTURES, TIMM_SOURCES, script)


@pytest.mark.parametrize("case", ["timm_repvgg_a0_train", "timm_repvgg_a0_deploy"])
def test_timms_export_of_a_repvgg_runs_and_computes_timms_logits(timm_exports, case):
    from deploy.runtime import open_model

    folder, manifest = timm_exports
    entry = manifest["cases"][case]
    x = np.load(os.path.join(folder, "input.npy"))
    expected = np.load(os.path.join(folder, entry["logits"]))
    model = open_model(os.path.join(folder, entry["file"]), threads=1)
    assert model.metadata == {} and model.num_classes == 10
    got = model(x)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_an_a0_exported_by_the_tool_benchmarks(tmp_path):
    out = tmp_path / "a0.onnx"
    proc = run_tool("tools/export.py", "--arch", "RepVGG-A0", "--random-init", "--num-classes",
                    10, "--size", 32, "--output", out, "--threads", 1, timeout=300)
    assert proc.returncode == 0, proc.stderr
    proc = run_tool("tools/infer.py", out, "--benchmark", "--runs", 2, "--warmup", 0,
                    "--threads", 1, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.splitlines()[-1].endswith(" img/s")
