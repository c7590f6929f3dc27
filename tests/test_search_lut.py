"""Reference 7.5 item 11: the latency table's measurement, file round trip and checks."""
import json

import numpy as np
import pytest

import megengine as mge
import megengine.module as M

import search.latency as latency
from model.repvgg import RepVGGBlock
from search.gumbel import gumbel_softmax
from search.latency import load_table, measure_table, save_table, time_module, time_modules
from search.space import SpaceError, get_space
from search.supernet import Supernet
from tests.helpers import one_line_error, run_tool
from tests.search_fixtures import fixed_lut, tiny_space


def test_round_trip_keeps_everything(tmp_path):
    space = tiny_space()
    table = measure_table(space, warmup=1, runs=2, inner=3)
    path = save_table(table, str(tmp_path / "lut.json"))
    back = load_table(path, space)
    assert back.latency.dtype == np.float64
    np.testing.assert_array_equal(back.latency, table.latency)  # identical floats
    assert back.source == table.source and back.fixed == table.fixed
    assert back.meta == table.meta
    m = back.meta
    assert m["candidates"] == list(space.candidates) and m["space_hash"] == space.hash
    assert m["input_sizes"] == [8, 8] and m["batch"] == 1 and m["warmup"] == 1
    assert m["runs"] == 2 and m["inner"] == 3 and m["mode"] == "eval" and m["repvgg_form"] == "deploy"
    assert m["device"] == str(mge.get_default_device()) and m["threads"] == 1
    assert m["megengine"] == mge.__version__ and m["unit"] == "us"
    assert all(s == "measured" for row in back.source for s in row)
    assert back.latency.shape == (2, 3) and (back.latency > 0).all()


def test_mismatched_space_or_candidates_is_refused(tmp_path):
    space = tiny_space()
    path = save_table(measure_table(space, warmup=0, runs=1), str(tmp_path / "lut.json"))
    with pytest.raises(SpaceError, match="candidates ir_k3_e1,skip,repvgg vs ir_k3_e1,skip"):
        load_table(path, tiny_space(("ir_k3_e1", "skip")))
    with pytest.raises(SpaceError, match="input sizes"):
        load_table(path, tiny_space(image_size=16))
    with pytest.raises(SpaceError, match="space 'tiny' vs 'digits'"):
        load_table(path, get_space("digits"))
    d = json.load(open(path))
    d["latency"] = d["latency"][:1]
    (tmp_path / "short.json").write_text(json.dumps(d))
    with pytest.raises(SpaceError, match="shape"):
        load_table(str(tmp_path / "short.json"), space)
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(SpaceError, match="not a readable JSON"):
        load_table(str(tmp_path / "junk.json"), space)


def test_cli_verify_gives_one_line_error(tmp_path):
    space = tiny_space()
    path = save_table(measure_table(space, warmup=0, runs=1), str(tmp_path / "lut.json"))
    proc = run_tool("search.py", "lut", "--device", "cpu", "--space", "digits", "--verify", path)
    assert proc.returncode == 1
    assert "another search space" in one_line_error(proc)


def test_expected_latency_is_the_hand_sum(rng):
    space = tiny_space()
    lut_values = np.array([[100.0, 5.0, 300.0], [250.0, 40.0, 700.0]])
    net = Supernet(space, fixed_lut(space, lut_values, stem=11.0, head=22.0))
    theta = rng.normal(size=(2, 1, 3)).astype(np.float32)
    noise = rng.gumbel(size=(2, 4, 3)).astype(np.float32)
    m = gumbel_softmax(mge.tensor(theta), noise, 1.0, "soft")
    _, lat = net(mge.tensor(rng.normal(size=(4, 3, 8, 8)).astype(np.float32)), m)
    mn = m.numpy()
    hand = np.mean([sum(mn[l, n] @ lut_values[l] for l in range(2)) for n in range(4)]) + 33.0
    assert float(lat.numpy()) == pytest.approx(hand, rel=1e-5)
    assert net.space is space


def test_network_latency_prediction():
    space = tiny_space()
    table = fixed_lut(space, [[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]], stem=100.0, head=1000.0)
    assert table.network_latency([2, 0]) == 1113.0


class Spy(M.Module):
    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x):
        self.calls.append(self.training)
        return x


def test_timing_warms_up_and_runs_in_eval_mode():
    spy = Spy()
    spy.train()
    time_module(spy, mge.tensor(np.zeros((1, 1), np.float32)), warmup=3, runs=5)
    assert spy.calls == [False] * 8


def test_timed_runs_are_interleaved():
    order = []

    class Named(Spy):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def forward(self, x):
            order.append(self.name)
            return x

    x = mge.tensor(np.zeros((1, 1), np.float32))
    medians = time_modules([(Named("a"), x), (Named("b"), x)], warmup=2, runs=3, inner=2)
    # warm-up: 2 runs of 2 calls each, entry by entry; then the timed runs go round-robin
    assert order == ["a"] * 4 + ["b"] * 4 + ["a", "a", "b", "b"] * 3 and len(medians) == 2


def test_repvgg_candidates_are_timed_in_deploy_form(monkeypatch):
    timed = []
    real = latency.time_modules

    def spy(pairs, warmup, runs, inner):
        timed.extend(m for m, _ in pairs)
        return real(pairs, 0, 1)

    monkeypatch.setattr(latency, "time_modules", spy)
    measure_table(tiny_space(), warmup=0, runs=1)
    blocks = [m for m in timed if isinstance(m, RepVGGBlock)]
    assert len(blocks) == 2  # one per layer
    assert all(b.deploy and hasattr(b, "rbr_reparam") and not hasattr(b, "rbr_dense")
               for b in blocks)
