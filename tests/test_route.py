"""deploy/route.py: which runtime runs a .onnx, with fake CPUs and fake timings (so every branch
runs on any CPU), the cache as untrusted input, and both runtimes forced on a real int8 file."""
import json
import os

import numpy as np
import pytest

from deploy import route
from helpers import one_line_error, run_tool

VNNI = {"avx2", "avx512f", "avx512_vnni"}
AMX = {"avx2", "avx512f", "amx_int8", "amx_bf16", "avx512_bf16"}
AVX2 = {"avx", "avx2", "fma"}
KEY = "model-a|batch 1"


def choose(tmp_path, precision, flags, measure=None, model_key=KEY, **kw):
    return route.choose(precision, 2, flags=flags, fingerprint="fake|cpu|" + ",".join(
        sorted(flags)), cache=str(tmp_path / "choice.json"), measure=measure,
        model_key=model_key, **kw)


@pytest.mark.parametrize("flags, expected", [(VNNI, "openvino"), (AMX, "openvino"),
                                             (AVX2, "onnxruntime")])
def test_the_int8_rule_follows_the_cpus_int8_kernels(tmp_path, flags, expected):
    choice = choose(tmp_path, "int8", flags)
    assert (choice.runtime, choice.how) == (expected, "rule")
    assert route.NAMES[expected] in choice.line() and "int8" in choice.line()


def test_float32_follows_onnx_runtime_and_bf16_openvino_only(tmp_path):
    assert choose(tmp_path, "fp32", VNNI).runtime == "onnxruntime"
    bf16 = choose(tmp_path, "bf16", AMX, measure=lambda able: pytest.fail("measured"))
    assert (bf16.runtime, bf16.how) == ("openvino", "only")
    with pytest.raises(route.RuntimeChoiceError, match="bf16 instructions"):
        choose(tmp_path, "bf16", AVX2)
    with pytest.raises(route.RuntimeChoiceError, match="ONNX Runtime cannot run bf16"):
        choose(tmp_path, "bf16", AMX, forced="onnxruntime")
    assert choose(tmp_path, "int8", VNNI, forced="onnxruntime").how == "forced"


def test_a_measurement_decides_once_and_is_cached_per_cpu(tmp_path):
    calls = []

    def measure(able):
        calls.append(tuple(able))
        return {"onnxruntime": 0.004, "openvino": 0.002}

    first = choose(tmp_path, "fp32", AVX2, measure)
    again = choose(tmp_path, "fp32", AVX2, measure)
    assert first.runtime == again.runtime == "openvino" and again.how == "measured"
    assert calls == [("onnxruntime", "openvino")]  # the second came from the cache
    assert "ONNX Runtime 4.00 ms/image" in again.line()
    # another CPU, model or precision is measured anew
    choose(tmp_path, "fp32", VNNI, measure)
    choose(tmp_path, "fp32", AVX2, measure, model_key="model-b|batch 1")
    choose(tmp_path, "int8", AVX2, measure)
    assert len(calls) == 4
    # the library (measure=None) reads what a tool measured, and measures nothing itself
    assert choose(tmp_path, "fp32", AVX2).how == "measured"
    assert choose(tmp_path, "fp32", AVX2, model_key="model-c|batch 1").how == "rule"


def test_a_tie_keeps_the_rule_and_a_failed_measurement_is_not_cached(tmp_path):
    tie = {"onnxruntime": 0.0100, "openvino": 0.0098}  # 2% apart: within MARGIN
    assert choose(tmp_path, "fp32", AVX2, lambda able: tie).runtime == "onnxruntime"
    assert choose(tmp_path / "b", "int8", AVX2, lambda able: {}).how == "rule"
    assert not (tmp_path / "b" / "choice.json").exists()


@pytest.mark.parametrize("content", [
    b"", b"not json", b"[" * 100000, b'{"version": 1, "entries": []}',
    b'{"version": 2, "entries": {}}', b'{"version": 1, "entries": {"k": {"runtime": "tvm"}}}',
    b'{"version": 1, "entries": {"k": {"runtime": "openvino", "seconds": {"openvino": -1}}}}',
    b'{"version": 1, "entries": {"k": {"runtime": "openvino", "seconds": {"openvino": 1e999}}}}',
    b"\xff\xfe" + os.urandom(64),
])
def test_a_bad_cache_is_ignored_and_rebuilt(tmp_path, content):
    (tmp_path / "choice.json").write_bytes(content)
    assert route.read_cache(str(tmp_path / "choice.json")) == {}
    choice = choose(tmp_path, "fp32", AVX2, lambda able: {"onnxruntime": 1.0, "openvino": 0.5})
    assert choice.how == "measured"
    data = json.loads((tmp_path / "choice.json").read_text())
    assert data["version"] == route.CACHE_VERSION and len(data["entries"]) == 1
    assert [f for f in os.listdir(tmp_path) if f != "choice.json"] == []  # no temp left


def test_the_cache_keeps_the_newest_entries_only(tmp_path):
    for i in range(route.MAX_ENTRIES + 5):
        choose(tmp_path, "fp32", AVX2, lambda able: {"onnxruntime": 1.0, "openvino": 2.0},
               model_key="m%d" % i)
    entries = route.read_cache(str(tmp_path / "choice.json"))
    assert len(entries) == route.MAX_ENTRIES and any(k.endswith("|m%d" % (route.MAX_ENTRIES + 4))
                                                     for k in entries)


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory):
    import megengine as mge

    import model
    from model.parity import randomize_batchnorm, sample_inputs
    from model.repvgg import RepVGG
    from quant.onnx_int8 import write_int8_onnx

    folder = tmp_path_factory.mktemp("int8")
    rng = np.random.default_rng(4)
    mge.random.seed(4)
    net = RepVGG((1, 1, 1, 1), 10, (0.25, 0.25, 0.25, 0.125))
    randomize_batchnorm(net, rng, sample_inputs(rng, (8, 3, 16, 16)))
    deploy = model.convert_to_deploy(net)
    deploy.eval()
    calib = [sample_inputs(rng, (8, 3, 16, 16)) for _ in range(2)]
    write_int8_onnx(deploy, str(folder / "q.onnx"), calib, calib[0],
                    {"int8": "PTQ", "input_shape": [1, 3, 16, 16]}, threads=1)
    x = sample_inputs(rng, (4, 3, 16, 16))
    return str(folder / "q.onnx"), x, deploy(mge.tensor(x)).numpy()


def test_both_runtimes_run_the_int8_file_as_int8(int8_file):
    from deploy.runtime import open_model

    path, x, expected = int8_file
    outputs = {}
    for runtime in route.RUNTIMES:
        model = open_model(path, threads=1, runtime=runtime)
        assert (model.runtime, model.precision, model.route.how) == (runtime, "int8", "forced")
        outputs[runtime] = model(x)
        assert np.corrcoef(outputs[runtime].ravel(), expected.ravel())[0, 1] > 0.98
    # the same integer arithmetic, rounded differently: close, and not float32-equal
    a, b = outputs["onnxruntime"], outputs["openvino"]
    assert np.abs(a - b).max() <= 0.1 * np.abs(a).max()


def test_precisions_that_do_not_fit_the_file_are_one_line(int8_file, tmp_path):
    path, _, _ = int8_file
    proc = run_tool("tools/infer.py", path, "--benchmark", "--precision", "bf16", "--threads", 1)
    assert proc.returncode == 1
    assert one_line_error(proc).endswith(("is an int8 model; --precision bf16 is for a float "
                                          ".onnx", "has none"))
    proc = run_tool("tools/infer.py", path.replace("q.onnx", "nope.mge"), "--benchmark",
                    "--runtime", "openvino")
    assert proc.returncode == 1 and "--runtime picks the runtime of a .onnx" in one_line_error(proc)


@pytest.mark.parametrize("runtime", route.RUNTIMES)
def test_infer_names_the_runtime_that_ran(int8_file, runtime):
    path, _, _ = int8_file
    proc = run_tool("tools/infer.py", path, "--benchmark", "--runs", 2, "--warmup", 0,
                    "--threads", 1, "--runtime", runtime, "--precision", "int8")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "runtime: %s (int8; forced with --runtime)" % route.NAMES[runtime] \
        in proc.stdout.splitlines()
