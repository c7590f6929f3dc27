"""Issue 27: latency tables measured in the deploy runtimes (onnx, bnn), their round trips, the
old eager format, and the refusal of a table from another runtime. Tiny spaces: a few seconds."""
import importlib.util
import json
import os

import numpy as np
import pytest

from common.cpus import cpu_name
from search import runtime_timing as rt
from search.latency import (LUT_FORMAT, MEASURED, PROXY, LatencyTable, load_table,
                            measure_runtime_table, measure_table, save_table)
from search.show import comparison_lines, kendall_tau
from search.space import SpaceError, make_space
from tests.helpers import ROOT, one_line_error, run_tool
from tests.search_fixtures import tiny_space


def binary_space():
    return make_space("tinybin", 8, 10, (8, 1), [(8, 1), (16, 2)],
                      ("xnor_vgg_block", "xnor_skip_connect"))


def round_trip(table, space, tmp_path):
    path = save_table(table, str(tmp_path / "lut.json"))
    assert json.load(open(path))["format"] == LUT_FORMAT
    back = load_table(path, space)
    np.testing.assert_array_equal(back.latency, table.latency)
    assert back.source == table.source and back.fixed == table.fixed and back.meta == table.meta
    return back


@pytest.fixture(scope="module")
def onnx_table():
    return measure_runtime_table(tiny_space(), "onnx", warmup=1, runs=3)


def test_onnx_table_round_trip_records_runtime_version_cpu_threads(onnx_table, tmp_path):
    back = round_trip(onnx_table, tiny_space(), tmp_path)
    m = back.meta
    assert back.runtime == "onnx" and m["runtime_version"].startswith("onnxruntime ")
    assert m["cpu"] == cpu_name() and m["threads"] == 1 and back.unit == "us"
    assert all(s == MEASURED for row in back.source for s in row)
    assert (back.latency >= 0).all() and back.fixed["stem"] > 0
    assert len(m["context_us"]) == 2 and all(c > 0 for c in m["context_us"])


def test_bnn_table_measures_binary_candidates_without_the_proxy(tmp_path):
    space = binary_space()
    table = measure_runtime_table(space, "bnn", warmup=1, runs=3)
    back = round_trip(table, space, tmp_path)
    assert back.runtime == "bnn" and "numba" in back.meta["runtime_version"]
    assert not any(s == PROXY for row in back.source for s in row)
    assert back.unit == "us" and back.meta["us_per_op"] is None
    # a binary 3x3 block at 8x8x8 costs something; 16 channels at stride 2 more than the skip
    assert back.latency[0, 0] > 0 and back.latency[1, 0] > back.latency[1, 1]


def test_a_binary_space_needs_bnn_or_an_explicit_proxy():
    space = binary_space()
    assert rt.default_runtime(space) == "bnn" and rt.default_runtime(tiny_space()) == "onnx"
    with pytest.raises(SpaceError, match="run only in the .bnn runtime: use --runtime bnn, or "
                                         "--proxy"):
        rt.check_runtime(space, "onnx", proxy=False)
    with pytest.raises(SpaceError, match="every entry is measured"):
        rt.check_runtime(space, "bnn", proxy=True)
    with pytest.raises(SpaceError, match="ir_k3_e1, skip, repvgg are not binary"):
        rt.check_runtime(tiny_space(), "bnn", proxy=False)
    rt.check_runtime(space, "eager", proxy=True)


def test_entries_are_context_differences_clipped_at_zero():
    space = tiny_space()
    keys = [key for key, _ in rt.table_archs(space)]
    t = {("context", 0): 10.0, ("context", 1): 20.0, ("stem",): 7.0}
    for k in range(3):
        t[("probe", 0, k)] = 10.0 + 1.0 + k
        t[("probe", 1, k)] = 20.0 + 5.0 * k - 1.0  # k = 0: faster than its context -> 0
    latency, fixed, contexts = rt.entries_from_times(space, keys, [t[k] / 1e6 for k in keys])
    np.testing.assert_allclose(latency, [[1, 2, 3], [0, 4, 9]])
    assert fixed == {"stem": pytest.approx(7.0), "head": 0.0}
    assert contexts == pytest.approx([10.0, 20.0])
    # each probe is the layer's context with the one candidate in it, at the layer's shape
    probe = dict(rt.table_archs(space))[("probe", 1, 2)]
    layer = space.layers[1]
    assert probe["image_size"] == layer.input_size and probe["stem"]["channels"] == layer.C_in
    assert [l["op"] for l in probe["layers"]] == ["repvgg"] and probe["head"]["channels"] == 0


def test_old_eager_tables_load_as_eager_and_other_formats_are_refused(tmp_path):
    space = tiny_space()
    d = measure_table(space, warmup=0, runs=1).to_dict()
    d["format"] = "repvgg-search-lut/1"
    for key in ("runtime", "runtime_version", "cpu"):
        d["meta"].pop(key)
    (tmp_path / "old.json").write_text(json.dumps(d))
    old = load_table(str(tmp_path / "old.json"), space)
    assert old.runtime == "eager"
    d["format"] = "repvgg-search-lut/99"
    (tmp_path / "new.json").write_text(json.dumps(d))
    with pytest.raises(SpaceError, match="not a latency table"):
        load_table(str(tmp_path / "new.json"), space)


def _search_script():
    spec = importlib.util.spec_from_file_location("search_cli", os.path.join(ROOT, "search.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resume_refuses_a_table_from_another_runtime(onnx_table, tmp_path):
    from errors import UserError

    space = tiny_space()
    eager = save_table(measure_table(space, warmup=0, runs=1), str(tmp_path / "eager.json"))
    own = save_table(onnx_table, str(tmp_path / "onnx.json"))
    cli = _search_script()
    latest = str(tmp_path / "run" / "latest.pkl")
    with pytest.raises(UserError, match="was measured in MegEngine eager, not ONNX Runtime"):
        cli.refuse_other_table(eager, onnx_table.to_dict(), space, latest)
    cli.refuse_other_table(own, onnx_table.to_dict(), space, latest)  # its own table: fine
    other = LatencyTable(onnx_table.latency + 1, onnx_table.source, onnx_table.fixed,
                         onnx_table.meta)
    with pytest.raises(UserError, match="not the table the run"):
        cli.refuse_other_table(save_table(other, str(tmp_path / "other.json")),
                               onnx_table.to_dict(), space, latest)


@pytest.mark.parametrize("args,words", [
    (["--space", "binary_resnet18", "--runtime", "onnx"], "--runtime bnn, or --proxy"),
    (["--space", "binary_resnet18", "--proxy"], "every entry is measured"),
])
def test_cli_refusals_are_one_line_and_write_nothing(args, words, tmp_path):
    out = tmp_path / "lut.json"
    proc = run_tool("search.py", "lut", *args, "--out", out, "--no-progress")
    assert proc.returncode == 1 and words in one_line_error(proc)
    assert not out.exists()


def test_verify_refuses_a_table_of_another_runtime(onnx_table, tmp_path):
    path = save_table(onnx_table, str(tmp_path / "lut.json"))
    table = load_table(path, tiny_space())
    with pytest.raises(SpaceError, match="measured in ONNX Runtime .* not packed binary"):
        table.check_runtime("bnn", path)


def test_kendall_tau_and_the_comparison_lines():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [40, 30, 20, 10]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    lines = comparison_lines(["a", "b", "c"], [100.0, 200.0, 300.0], [110.0, 190.0, 330.0])
    assert "median |measured/predicted - 1|: 10.0 %" in lines
    assert "Kendall tau (predicted vs measured): 1.00" in lines
