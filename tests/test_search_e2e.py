"""End to end on the small preset: the four commands a user types, on the built-in digits.

``test_train_py_trains_the_found_arch`` runs ``train.py --arch arch.json`` (the train branch's
CLI, flags as in CONTRACTS.md); it can pass only once that branch is merged.
"""
import importlib.util
import json
import os

import numpy as np
import pytest

import megengine as mge

from errors import UserError
from model.derived import build_from_arch_file
from search.trainer import normalize
from tests.helpers import ROOT, run_tool
from tests.search_fixtures import fit_fixed_batch, tiny_data

CANDIDATES = "ir_k3_e1,skip,repvgg"


def ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("search")
    common = ["--space", "digits", "--candidates", CANDIDATES, "--device", "cpu"]
    ok(run_tool("search.py", "lut", *common, "--warmup", "1", "--runs", "2", "--out",
                d / "lut.json", "--no-progress"))
    ok(run_tool("search.py", "train", *common, "--lut", d / "lut.json", "--out", d / "run",
                "--epochs", "2", "--warmup-epochs", "1", "--batch-size", "16", "--max-steps",
                "2", "--no-progress"))
    ok(run_tool("search.py", "derive", "--run", d / "run", "--out", d / "arch.json"))
    return d


def test_lut_train_derive_show(run_dir):
    lut = json.load(open(run_dir / "lut.json"))
    assert lut["meta"]["candidates"] == CANDIDATES.split(",")
    assert {"latest.pkl", "best.pkl", "search.log"} <= set(os.listdir(run_dir / "run"))
    arch = json.load(open(run_dir / "arch.json"))
    assert arch["space"] == "digits" and len(arch["layers"]) == 5
    assert all(l["op"] in CANDIDATES.split(",") for l in arch["layers"])
    assert arch["predicted_latency"] > 0 and arch["latency_unit"] == "us"
    proc = ok(run_tool("search.py", "show", "--run", run_dir / "run", "--measure", "--device",
                       "cpu", "--arch", run_dir / "arch.json"))
    assert "measured / predicted" in proc.stdout and "E[lat]" in proc.stdout
    assert (run_dir / "run" / "theta.png").stat().st_size > 1000


def test_found_arch_builds_and_trains_without_train_py(run_dir):
    net = build_from_arch_file(str(run_dir / "arch.json"))
    train, _ = tiny_data(image_size=16, n_train=32)
    x, y = mge.tensor(normalize(train.images)), mge.tensor(train.labels)
    losses = fit_fixed_batch(net, x, y, 8)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def load_cli():
    spec = importlib.util.spec_from_file_location("search_cli", os.path.join(ROOT, "search.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def test_second_train_into_the_same_folder_needs_resume(run_dir):
    before = sorted(os.listdir(run_dir / "run"))
    with pytest.raises(UserError, match="--resume"):
        load_cli().main(["train", "--space", "digits", "--candidates", CANDIDATES, "--device",
                         "cpu", "--lut", str(run_dir / "lut.json"), "--out",
                         str(run_dir / "run")])
    assert sorted(os.listdir(run_dir / "run")) == before


def test_resume_from_the_cli_extends_the_run(run_dir, tmp_path):
    import shutil

    shutil.copytree(run_dir / "run", tmp_path / "run")
    ok(run_tool("search.py", "train", "--out", tmp_path / "run", "--resume",
                "--epochs", "3", "--no-progress", "--device", "cpu"))
    from search.trainer import load_run
    state = load_run(str(tmp_path / "run" / "latest.pkl"))
    assert state["epoch"] == 3 and [r["epoch"] for r in state["history"]] == [0, 1, 2]


def test_every_flag_is_documented():
    parser = load_cli().build_parser()
    subparsers = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"][0]
    assert set(subparsers.choices) == {"lut", "train", "derive", "show", "tas"}
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, (name, action.dest)
    proc = ok(run_tool("search.py", "train", "--help"))
    assert "--theta-lr" in proc.stdout and "(default: 0.01)" in proc.stdout


def test_train_py_trains_the_found_arch(run_dir):
    out = run_dir / "trained"
    proc = run_tool("train.py", "--arch", run_dir / "arch.json", "--epochs", "1",
                    "--batch-size", "16", "--output", out, "--seed", "0", "--device", "cpu",
                    "--workers", "0", "--image-size", "16", "--max-steps-per-epoch", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for f in ("latest.pkl", "best.pkl", "deploy.pkl", "metrics.csv"):
        assert (out / f).exists(), f


def test_searched_network_converts_exports_and_evaluates_after_arch_json_is_gone(run_dir,
                                                                                  tmp_path):
    # M4: train.py --arch arch.json (a relative path) records the architecture itself, so the
    # checkpoints rebuild it from another folder once arch.json is deleted.
    import shutil
    import sys

    from common import children

    def tool(cwd, script, *args):
        proc = children.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], 600,
                            cwd=cwd, capture_output=True, text=True)
        assert proc.returncode == 0, (script, proc.stderr[-3000:])
        return proc

    searched, elsewhere = tmp_path / "searched", tmp_path / "elsewhere"
    searched.mkdir()
    elsewhere.mkdir()
    shutil.copy(run_dir / "arch.json", searched / "arch.json")
    out = tmp_path / "trained"
    tool(searched, "train.py", "--arch", "arch.json", "--epochs", "1", "--batch-size", "16",
         "--output", out, "--device", "cpu", "--workers", "0", "--image-size", "16",
         "--max-steps-per-epoch", "2", "--max-val-images", "32", "--no-progress")
    os.remove(searched / "arch.json")
    tool(elsewhere, "tools/convert.py", "--load", out / "best.pkl", "--save", "converted.pkl")
    tool(elsewhere, "tools/export.py", "--load", "converted.pkl", "--output", "net.mge",
         "--size", "16")
    assert (elsewhere / "net.mge").stat().st_size > 1000
    results = [tool(elsewhere, "tools/eval.py", ckpt, "--device", "cpu", "--limit", "32")
               for ckpt in (out / "deploy.pkl", "converted.pkl")]
    lines = [r.stdout.strip().splitlines()[-1] for r in results]
    assert all("searched network" in l and "deploy form" in l and "digits val (32 images, 16x16)"
               in l for l in lines), lines
    assert lines[0].split("):")[1] == lines[1].split("):")[1]  # same accuracy and loss


def test_show_measure_of_an_arch_from_another_space_is_one_line(run_dir, tmp_path):
    # was: ValueError: tuple.index(x): x not in tuple
    from helpers import call_tool, one_line_error
    from common.atomic import write_json
    from search.space import get_space
    from search.tas_net import arch_from_widths
    space = get_space("tas_digits")
    other = write_json(arch_from_widths(space, [l.C_out for l in space.layers]),
                       str(tmp_path / "tas_arch.json"))
    png = tmp_path / "theta.png"
    msg = one_line_error(call_tool("search.py", "show", "--run", run_dir / "run", "--measure",
                                   "--arch", other, "--png", png, "--device", "cpu"))
    assert other in msg and "not derived from this run's space digits" in msg
    assert not png.exists()


def test_show_png_onto_a_folder_is_one_line(run_dir, tmp_path):
    # m8: the chart goes through the atomic writer; a folder as --png is refused
    from helpers import call_tool, one_line_error
    (tmp_path / "chart.png").mkdir()
    msg = one_line_error(call_tool("search.py", "show", "--run", run_dir / "run", "--png",
                                   tmp_path / "chart.png", "--device", "cpu"))
    assert "is a folder" in msg
