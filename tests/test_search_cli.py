"""search.py as a user runs it: TAS runs own their folder (M8), bounded arguments (m6), no
numpy noise (m10), one-line errors for odd outputs (m8), flags generated from the configs."""
import dataclasses
import os
import re
import socket

import pytest

from helpers import ROOT, call_tool, load_tool, one_line_error, run_tool

TAS = ["tas", "--epochs", "1", "--max-steps", "1", "--batch-size", "8", "--device", "cpu",
       "--no-progress"]


@pytest.fixture(scope="module")
def tas_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tas") / "run"
    proc = run_tool("search.py", *TAS, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_tas_writes_its_run_without_numpy_noise(tas_run):
    out, proc = tas_run
    assert {"arch.json", "latest.pkl", "search.log"} <= set(os.listdir(out))
    assert "smallest subnormal" not in proc.stderr  # m10
    assert "wrote %s" % (out / "arch.json") in proc.stdout
    assert not (out / ".lock").exists()  # released
    # m16: a result away from the FLOP target says by how much
    found, target = re.search(r": ([\d.]+) of [\d.]+ MMACs \(target ([\d.]+)", proc.stdout).groups()
    off = float(found) / float(target) - 1
    if abs(off) > 0.05:
        assert "%+.0f%% off" % (100 * off) in proc.stdout, proc.stdout


def test_tas_into_a_folder_holding_a_run_is_refused_and_changes_nothing(tas_run):
    out, _ = tas_run
    before = {f: (out / f).read_bytes() for f in ("arch.json", "latest.pkl")}
    proc = call_tool("search.py", *TAS, "--out", out, "--seed", "3")
    assert proc.returncode == 1
    msg = one_line_error(proc)
    assert str(out) in msg and "already holds a run" in msg
    assert {f: (out / f).read_bytes() for f in before} == before


@pytest.mark.parametrize("command", ["tas", "train"])
def test_a_folder_in_use_by_a_live_run_is_refused(tmp_path, command):
    out = tmp_path / "busy"
    out.mkdir()
    (out / ".lock").write_text("%d %s\n" % (os.getppid(), socket.gethostname()))  # alive
    argv = TAS if command == "tas" else ["train", "--lut", tmp_path / "none.json",
                                         "--device", "cpu"]
    msg = one_line_error(call_tool("search.py", *argv, "--out", out))
    assert "in use by another run" in msg and str(out) in msg


@pytest.mark.parametrize("args, words", [
    (["train", "--epochs", "0"], "--epochs: must be at least 1, got 0"),
    (["train", "--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    (["train", "--max-steps", "-1"], "--max-steps: must be at least 0, got -1"),
    (["train", "--w-fraction", "1.5"], "--w-fraction: must be at most 1"),
    (["tas", "--epochs", "0"], "--epochs: must be at least 1, got 0"),
    (["tas", "--flop-ratio", "0"], "--flop-ratio: must be above 0"),
    (["lut", "--runs", "0"], "--runs: must be at least 1, got 0"),
    (["derive", "--n", "0"], "--n: must be at least 1, got 0"),
    (["train", "--device", "banana"], "unknown device 'banana'"),
])
def test_bad_numbers_are_one_line(args, words, tmp_path):
    proc = call_tool("search.py", *args, "--out", tmp_path / "o") if args[0] != "derive" else \
        call_tool("search.py", *args, "--run", tmp_path, "--out", tmp_path / "a.json")
    # a bad number is argparse's usage error (2); an unknown device is a UserError (1)
    assert proc.returncode == (1 if "--device" in args else 2) and words in one_line_error(proc)
    assert not (tmp_path / "o").exists()


def test_odd_output_paths_are_one_line(tmp_path, tas_run):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    out, _ = tas_run
    # a folder as the TAS run folder's parent is a file; lut/derive outputs that are folders
    assert "cannot create the run folder" in one_line_error(call_tool("search.py", *TAS, "--out",
                                                                     tmp_path / "file" / "run"))
    for target in (tmp_path / "folder", str(tmp_path / "new") + "/"):
        msg = one_line_error(call_tool("search.py", "lut", "--space", "tas_digits", "--device",
                                       "cpu", "--runs", "1", "--warmup", "0", "--out", target,
                                       "--no-progress"))
        assert "folder" in msg
    assert not (tmp_path / "new").exists()


def test_train_flags_are_the_search_config_fields_with_its_defaults():
    from search.tas import TASConfig
    from search.trainer import SearchConfig
    search = load_tool("search.py")
    subparsers = [a for a in search.build_parser()._actions
                  if a.__class__.__name__ == "_SubParsersAction"][0].choices
    # train's flags stay None unless typed (so --resume can refuse changed settings); the
    # config then takes its own defaults
    args = subparsers["train"].parse_args([])
    assert search.config_from_args(SearchConfig, args) == SearchConfig()
    args = subparsers["train"].parse_args(["--w-lr", "0.5", "--noise", "per_batch"])
    assert search.config_from_args(SearchConfig, args) == SearchConfig(w_lr=0.5,
                                                                      noise="per_batch")
    args = subparsers["tas"].parse_args([])
    assert search.config_from_args(TASConfig, args) == TASConfig()
    tas_help = " ".join(subparsers["tas"].format_help().split())
    for field in dataclasses.fields(TASConfig):
        flag = "--" + field.name.replace("_", "-")
        assert re.search(re.escape(flag) + r" \S+ .*?\(default: %s\)" % re.escape(str(field.default)),
                         tas_help), field.name
    assert "(default: 0.01)" in " ".join(subparsers["train"].format_help().split())


def test_resume_refuses_settings_it_would_ignore(tmp_path):
    msg = one_line_error(call_tool("search.py", "train", "--resume", "--out", tmp_path,
                                   "--w-lr", "0.5", "--device", "cpu"))
    assert "--w-lr cannot change on --resume" in msg


def test_a_killed_tas_search_resumes_to_the_uninterrupted_result(tmp_path):
    """An uninterrupted 2-epoch search by the CLI, and one stopped after epoch 1 (what its
    latest.pkl holds when it is killed in epoch 2) then resumed by the CLI: the same arch.json
    and the same final state, bit for bit."""
    import numpy as np

    from common.checkpoint import load_checkpoint
    from common.device import use_device

    search = load_tool("search.py")
    two = TAS + ["--epochs", "2"]
    whole = tmp_path / "whole"
    proc = run_tool("search.py", *two, "--out", whole)
    assert proc.returncode == 0, proc.stderr[-3000:]

    from search.tas import TASConfig, TASSearch

    args = search.parse_args([str(a) for a in two])
    space, cfg = search.space_from_args(args), search.config_from_args(TASConfig, args)
    use_device("cpu")
    killed = tmp_path / "killed"
    killed.mkdir()
    searcher = TASSearch(space, *search.load_digits_for(space), cfg)
    searcher.run(str(killed), until_epoch=1, progress=False)
    assert not (killed / "arch.json").exists()
    proc = run_tool("search.py", "tas", "--resume", "--out", killed, "--device", "cpu",
                    "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed" in proc.stderr and "at epoch 1 of 2" in proc.stderr
    assert (killed / "arch.json").read_text() == (whole / "arch.json").read_text()
    a, b = (load_checkpoint(str(d / "latest.pkl")) for d in (whole, killed))
    assert a["epoch"] == b["epoch"] == 2 and a["history"] == b["history"]
    for key, value in a["state_dict"].items():
        np.testing.assert_array_equal(b["state_dict"][key], value, err_msg=key)
    # a finished search is not resumed, and resuming keeps the run's own settings
    for extra, words in (([], "is finished"), (["--w-lr", "0.5"], "--w-lr cannot change")):
        msg = one_line_error(call_tool("search.py", "tas", "--resume", "--out", killed,
                                       "--device", "cpu", *extra))
        assert words in msg


def test_search_package_has_no_argparse_or_print():
    folder = os.path.join(ROOT, "search")
    for name in os.listdir(folder):
        if name.endswith(".py"):
            text = open(os.path.join(folder, name)).read()
            assert "argparse" not in text, name
            assert not re.search(r"(^|[^\w.])print\(", text), name
