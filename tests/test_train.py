"""train.py end to end on the built-in digits: learning, files, deploy parity, kill + resume."""
import csv
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from common.checkpoint import load_checkpoint
from helpers import ROOT, descendants, one_line_error, processes_mentioning, run_tool, still_alive

TINY = ["--image-size", "16", "--batch-size", "16", "--device", "cpu", "--workers", "0",
        "--max-val-images", "32", "--eval-batch-size", "32", "--no-progress"]


def rows(out):
    with open(os.path.join(out, "metrics.csv")) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run") / "out")
    # 32x32 and batch 32 (at 16x16 / batch 16, 18 steps are too few and too noisy to learn)
    proc = run_tool("train.py", "--arch", "RepVGG-A0", "--epochs", "3",
                    "--max-steps-per-epoch", "10", "--lr", "0.02", "--warmup-epochs", "0",
                    "--output", out, *TINY, "--image-size", "32", "--batch-size", "32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_short_run_learns_and_writes_every_output(trained):
    out, proc = trained
    for name in ("latest.pkl", "best.pkl", "deploy.pkl", "metrics.csv", "curves.png",
                 "train.log"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    r = rows(out)
    assert [int(x["epoch"]) for x in r] == [1, 2, 3]
    assert [int(x["step"]) for x in r] == [10, 20, 30]
    # The mean training loss falls from the first epoch to the last.
    assert float(r[-1]["train_loss"]) < float(r[0]["train_loss"])
    with open(os.path.join(out, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    latest = load_checkpoint(os.path.join(out, "latest.pkl"))
    assert latest["step"] == 30 and latest["epoch"] == 3 and latest["form"] == "train"
    assert "momentum_buffer" in next(iter(latest["optimizer"]["state"].values()))


def test_deploy_model_matches_the_best_train_model(trained, rng):
    """Independent of train.py's own parity check: run both checkpoints here."""
    import megengine as mge
    from tests.helpers import model_from_file

    out, proc = trained
    train_model, best, info = model_from_file(os.path.join(out, "best.pkl"))
    deploy_model, dep, dinfo = model_from_file(os.path.join(out, "deploy.pkl"))
    assert (info["form"], dinfo["form"]) == ("train", "deploy")
    assert not any("rbr_dense" in k for k in dep["state_dict"])
    x = mge.tensor(rng.normal(0, 1, (8, 3, 16, 16)).astype(np.float32))
    a, b = train_model(x).numpy(), deploy_model(x).numpy()
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()
    # train.py printed both accuracies and they are equal
    line = [l for l in proc.stdout.splitlines() if l.startswith("val top-1")][-1]
    accs = [float(t.rstrip("%,")) for t in line.split() if t.endswith("%,") or t.endswith("%")]
    assert accs[0] == accs[1], line


def _train_cmd(out, epochs=3, steps=4, extra=()):
    return [sys.executable, "train.py", "--arch", "RepVGG-A0", "--epochs", str(epochs),
            "--max-steps-per-epoch", str(steps), "--output", out, "--seed", "3", *TINY, *extra]


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
    assert subprocess.run(_train_cmd(ref), cwd=ROOT, capture_output=True).returncode == 0

    proc = subprocess.Popen(_train_cmd(killed), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    latest = os.path.join(killed, "latest.pkl")
    deadline = time.time() + 300
    while not os.path.exists(latest) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    # kill while the second epoch's latest.pkl is being written, if the poll catches it
    deadline = time.time() + 60
    while (not glob.glob(os.path.join(killed, ".latest.pkl.*.tmp")) and proc.poll() is None
           and time.time() < deadline):
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    state = load_checkpoint(latest)  # whatever is there is a complete checkpoint
    assert state["epoch"] < 3
    # A kill during a save leaves the writer's temp file; the resumed run's first save of the
    # same file removes it (common/atomic.py). If this kill missed the save, leave one as a
    # killed writer would (its pid is dead).
    if not glob.glob(os.path.join(killed, ".latest.pkl.*.tmp")):
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        with open(os.path.join(killed, ".latest.pkl.%d.tmp" % dead.pid), "wb") as f:
            f.write(b"half a checkpoint")

    resumed = subprocess.run(_train_cmd(killed, extra=["--resume"]), cwd=ROOT,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr
    a = load_checkpoint(os.path.join(ref, "latest.pkl"))
    b = load_checkpoint(latest)
    assert a["step"] == b["step"] == 12
    assert [r["step"] for r in rows(killed)] == ["4", "8", "12"]
    assert not glob.glob(os.path.join(killed, ".*.tmp")), os.listdir(killed)
    # Deterministic on CPU: the same weights, bit for bit.
    for k, v in a["state_dict"].items():
        np.testing.assert_array_equal(v, b["state_dict"][k], err_msg=k)


def test_starting_over_an_existing_run_or_resuming_nothing_is_refused(trained, tmp_path):
    out, _ = trained
    proc = run_tool(*_train_cmd(out)[1:])
    assert "already holds a run" in one_line_error(proc)
    proc = run_tool(*_train_cmd(str(tmp_path / "none"), extra=["--resume"])[1:])
    assert "nothing to resume" in one_line_error(proc)


def test_resume_with_a_different_recipe_is_refused(trained):
    out, _ = trained
    proc = run_tool(*_train_cmd(out, extra=["--resume", "--lr", "0.3"])[1:])
    assert "different settings" in one_line_error(proc)


def test_bad_arguments_get_one_line(tmp_path):
    out = str(tmp_path / "o")
    assert "unknown architecture" in one_line_error(
        run_tool("train.py", "--arch", "RepVGG-Z9", "--output", out, *TINY))
    assert "needs 2 CUDA GPUs" in one_line_error(
        run_tool("train.py", "--ngpus", "2", "--output", out, *TINY))
    assert "--rank must be in 0..1" in one_line_error(
        run_tool("train.py", "--ngpus", "1", "--world-size", "2", "--rank", "5", "--output",
                 out, *TINY))
    assert "data folder not found" in one_line_error(
        run_tool("train.py", "--data", str(tmp_path / "missing"), "--output", out, *TINY))
    assert "--amp needs a GPU" in one_line_error(
        run_tool("train.py", "--amp", "--output", out, *TINY))
    assert not os.path.exists(os.path.join(out, "latest.pkl"))


def test_nonfinite_loss_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path):
    out = str(tmp_path / "o")
    proc = run_tool("train.py", "--epochs", "3", "--max-steps-per-epoch", "3", "--lr", "1e30",
                    "--output", out, *TINY)
    assert proc.returncode == 1
    msg = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert len(msg) == 1 and ("loss is nan" in msg[0] or "loss is inf" in msg[0]), proc.stderr
    assert "latest.pkl" in msg[0] or "no checkpoint was written" in msg[0]
    assert "try a lower --lr" in msg[0]
    assert "Traceback" not in proc.stderr


# -- runs own their folder (M3), --resume picks the newest run (m13) --------------------------

def _popen_in(cwd, *args):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train.py"), *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, seconds=600):
    deadline = time.time() + seconds
    while not os.path.exists(path) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if not os.path.exists(path):
        if proc.poll() is None:
            proc.kill()
        raise AssertionError("%s not written: %s" % (path, proc.communicate()[1][-3000:]))


@pytest.fixture
def reaped():
    """Processes a test started are killed if the test fails half-way."""
    procs = []
    yield procs.append
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_runs_own_their_folder_and_resume_continues_the_newest(tmp_path, reaped):
    cwd = str(tmp_path)
    base = os.path.join(cwd, "runs", "RepVGG-A0-digits")
    args = ["--arch", "RepVGG-A0", "--seed", "3", "--warmup-epochs", "0", *TINY]
    first = _popen_in(cwd, *args, "--epochs", "8", "--max-steps-per-epoch", "3")
    reaped(first)
    _wait_for(os.path.join(base, ".lock"), first)
    # the default folder is in use: a second run goes to -2 ...
    second = _popen_in(cwd, *args, "--epochs", "1", "--max-steps-per-epoch", "1")
    _, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    assert "outputs in runs/RepVGG-A0-digits-2" in err
    assert os.path.exists(base + "-2/deploy.pkl")
    # ... and naming the folder in use is refused with one line
    third = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args, "--epochs",
                            "1", "--output", base], cwd=cwd, capture_output=True, text=True)
    assert "is in use by another run" in one_line_error(third)
    # kill the first run once it saved after the second run: its latest.pkl is the newest,
    # though -2 is the highest-numbered folder; its lock is left behind
    second_saved = os.path.getmtime(base + "-2/latest.pkl")
    deadline = time.time() + 300
    while first.poll() is None and time.time() < deadline and not (
            os.path.exists(base + "/latest.pkl")
            and os.path.getmtime(base + "/latest.pkl") > second_saved):
        time.sleep(0.05)
    assert first.poll() is None, "the first run ended before it could be killed"
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert os.path.exists(os.path.join(base, ".lock"))
    resumed = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *args, "--epochs",
                              "8", "--max-steps-per-epoch", "3", "--resume"], cwd=cwd,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from runs/RepVGG-A0-digits/latest.pkl" in resumed.stderr
    assert not os.path.exists(os.path.join(base, ".lock"))


# -- a failed start writes nothing (m9) ------------------------------------------------------

def test_a_failed_start_leaves_no_output_folder(tmp_path, trained):
    out = str(tmp_path / "o")
    for extra in (["--weights", str(tmp_path / "missing.pkl")],
                  ["--data", str(tmp_path)],  # an empty folder: no train/
                  ["--batch-size", "4000"]):
        proc = run_tool("train.py", "--output", out, *TINY, *extra)
        one_line_error(proc)
        assert not os.path.exists(out), (extra, os.listdir(out))


def test_weights_from_a_deploy_checkpoint_are_refused_with_a_hint(tmp_path, trained):
    run_dir, _ = trained
    proc = run_tool("train.py", "--weights", os.path.join(run_dir, "deploy.pkl"), "--output",
                    str(tmp_path / "o"), *TINY)
    msg = one_line_error(proc)
    assert "deploy-form checkpoint" in msg and "best.pkl" in msg
    assert not os.path.exists(tmp_path / "o")


# -- a diverged run says so (m11) -------------------------------------------------------------

def test_a_diverged_run_stops_and_does_not_blame_the_conversion(tmp_path):
    out = str(tmp_path / "o")
    proc = run_tool("train.py", "--lr", "1000", "--warmup-epochs", "0", "--epochs", "2",
                    "--max-steps-per-epoch", "4", "--output", out, *TINY)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]), proc.stderr
    msg = errors[0]
    assert "loss is" in msg and "diverged" in msg and "try a lower --lr" in msg
    assert "deploy" not in msg
    assert not os.path.exists(os.path.join(out, "deploy.pkl"))


# -- worker processes are quiet, Ctrl-C is clean and logged (m10) ------------------------------

def test_loader_workers_print_nothing_and_ctrl_c_is_clean(tmp_path, reaped):
    out = str(tmp_path / "o")
    proc = run_tool("train.py", "--epochs", "1", "--max-steps-per-epoch", "2", "--output", out,
                    *TINY, "--workers", "2", "--warmup-epochs", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    noise = [l for l in proc.stderr.splitlines()
             if not l[:4].isdigit()]  # every line is a dated log line
    assert not noise, "\n".join(noise)

    out2 = str(tmp_path / "i")
    run = subprocess.Popen(_train_cmd(out2, epochs=50, steps=20, extra=["--workers", "2"]),
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    reaped(run)
    _wait_for(os.path.join(out2, "train.log"), run)
    time.sleep(2.0)
    os.killpg(run.pid, signal.SIGINT)  # what a terminal sends: the whole process group
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "exited unexpectedly" not in err, err
    assert err.rstrip().endswith("interrupted")
    with open(os.path.join(out2, "train.log")) as f:
        assert "interrupted in epoch 1" in f.read()


def test_loader_workers_die_with_a_run_killed_by_sigkill(tmp_path, reaped):
    out = str(tmp_path / "k")
    run = subprocess.Popen(_train_cmd(out, epochs=50, steps=20, extra=["--workers", "2"]),
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    reaped(run)
    _wait_for(os.path.join(out, "train.log"), run)
    end = time.time() + 60  # the workers are forked copies of the run: same command line
    while len(processes_mentioning(out)) < 3 and time.time() < end:
        time.sleep(0.1)
    assert len(processes_mentioning(out)) >= 3, processes_mentioning(out)
    # MegEngine's plasma store, which carries the workers' batches, is a child too
    below = descendants(run.pid)
    assert any("plasma-store-server" in cmd for cmd in below.values()), below
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    end = time.time() + 10
    while (processes_mentioning(out) or still_alive(below)) and time.time() < end:
        time.sleep(0.1)
    assert processes_mentioning(out) == []
    assert {p: below[p] for p in still_alive(below)} == {}
