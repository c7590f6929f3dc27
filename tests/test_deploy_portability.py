"""A .mge export runs on every CPU MegEngine runs on, and never hangs.

The failures are injected (``REPVGG_FAULT``, read by ``deploy/lite_child.py``'s children), so the
fallbacks are tested on any CPU, not only on one whose kernels fail. ``REPVGG_FAKE_CPU`` makes
``tools/infer.py`` another CPU than the one that exported."""
import base64
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from deploy import dump, lite, modelfile
from helpers import ROOT, one_line_error, processes_mentioning, run_tool

ARCH = ('{"stem": {"channels": 8, "stride": 2}, "layers": [{"op": "repvgg", "C_in": 8, '
        '"C_out": 16, "stride": 2}, {"op": "repvgg", "C_in": 16, "C_out": 16, "stride": 1}], '
        '"num_classes": 10}')


def export(tmp_path, *extra, fault=None, name="m.mge"):
    arch = tmp_path / "arch.json"
    arch.write_text(ARCH)
    env = dict(os.environ)
    if fault:
        env["REPVGG_FAULT"] = fault
    start = time.monotonic()
    proc = run_tool("tools/export.py", "--arch", arch, "--random-init", "--num-classes", 10,
                    "--size", 32, "--threads", 1, "--output", tmp_path / name, *extra, env=env)
    return proc, time.monotonic() - start


def warnings_of(proc):
    return [l for l in proc.stderr.splitlines() if l.startswith("warning: ")
            and "randomly initialised" not in l]


def metadata_of(path):
    return json.loads(lite.read_user_info(str(path)))


def assert_nothing_left(tmp_path):
    """No process mentions the test's folder, and only the export and its arch are in it."""
    end = time.monotonic() + 10
    while processes_mentioning(str(tmp_path)) and time.monotonic() < end:
        time.sleep(0.1)
    assert processes_mentioning(str(tmp_path)) == []
    leftovers = [f for f in os.listdir(tmp_path) if f.endswith(".tmp") or f.startswith(".")]
    assert leftovers == []


def test_the_default_export_is_portable_and_tuned_for_this_cpu_only(tmp_path):
    proc, _ = export(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert warnings_of(proc) == []
    assert "options fuse, fast-run algorithm cache for this CPU" in proc.stdout
    info = metadata_of(tmp_path / "m.mge")
    assert info["graph_options"] == "fuse" and info["layout"] == dump.PORTABLE_LAYOUT
    assert info["cpu_fingerprint"] and len(base64.b64decode(info["algo_cache"])) > 100
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("kind", ["fail", "hang"])
def test_a_profiling_child_that_fails_or_hangs_falls_back_in_one_line(tmp_path, kind):
    proc, seconds = export(tmp_path, "--timeout", 8, fault="profile:" + kind)
    assert proc.returncode == 0, proc.stderr
    (warning,) = warnings_of(proc)
    assert warning.startswith("warning: profiling the algorithms failed (")
    assert warning.endswith("exported without the algorithm cache (slower)")
    assert ("injected fault at profile" if kind == "fail"
            else "did not finish within 8 s and was stopped") in warning
    assert seconds < 90
    assert "options fuse," in proc.stdout and "algorithm cache" not in proc.stdout
    assert "algo_cache" not in metadata_of(tmp_path / "m.mge")
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("kind", ["fail", "hang"])
def test_a_layout_this_cpu_cannot_run_falls_back_to_the_portable_graph(tmp_path, kind):
    proc, seconds = export(tmp_path, "--options", "nchw88+fuse", "--timeout", 8,
                           fault="probe:" + kind)
    assert proc.returncode == 0, proc.stderr
    (warning,) = warnings_of(proc)
    assert warning.startswith("warning: --options nchw88+fuse does not run on this CPU (")
    assert warning.endswith("exported with fuse (portable) instead")
    assert seconds < 90
    assert "options fuse, fast-run algorithm cache for this CPU" in proc.stdout
    info = metadata_of(tmp_path / "m.mge")
    assert info["layout"] == dump.PORTABLE_LAYOUT and info["graph_options"] == "fuse"
    assert_nothing_left(tmp_path)


def test_sigkill_of_the_exporter_mid_profile_leaves_no_process(tmp_path):
    # A real profile (no fault): MegEngine's fast-run forks helpers of its own.
    out = tmp_path / "a0.mge"
    scratch_at_start = {f for f in os.listdir(tempfile.gettempdir())
                        if f.startswith("lite_child.")}
    exporter = subprocess.Popen(
        [sys.executable, "tools/export.py", "--arch", "RepVGG-A0", "--random-init", "--size",
         "64", "--threads", "2", "--output", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end and exporter.poll() is None:
            if [p for p in processes_mentioning("lite_child profile")
                    if p in processes_mentioning(str(tmp_path))]:
                break
            time.sleep(0.05)
        assert exporter.poll() is None, "the export ended before profiling was seen"
        time.sleep(1.0)  # inside the profile
        scratch_before_kill = {f for f in os.listdir(tempfile.gettempdir())
                               if f.startswith("lite_child.")} - scratch_at_start
        assert scratch_before_kill  # the profile's folder, removed by its lifeline
        os.kill(exporter.pid, signal.SIGKILL)
        exporter.wait()
    finally:
        if exporter.poll() is None:
            exporter.kill()
            exporter.wait()
    end = time.monotonic() + 10
    while processes_mentioning(str(tmp_path)) and time.monotonic() < end:
        time.sleep(0.1)
    assert processes_mentioning(str(tmp_path)) == []
    assert not out.exists()
    assert not [f for f in os.listdir(tempfile.gettempdir()) if f in scratch_before_kill]


def infer(path, *extra, env=None):
    return run_tool("tools/infer.py", path, *extra, "--threads", 1,
                    env=dict(os.environ, **(env or {})))


def printed_probs(stdout):
    return [float(v) for v in re.findall(r"([\d.]+)%$", stdout, re.M)]


def test_a_file_tuned_on_another_cpu_runs_its_portable_graph_with_one_note(tmp_path):
    proc, _ = export(tmp_path)
    assert proc.returncode == 0, proc.stderr
    from PIL import Image
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8)).save(
        tmp_path / "x.png")
    here = infer(tmp_path / "m.mge", tmp_path / "x.png")
    there = infer(tmp_path / "m.mge", tmp_path / "x.png", env={"REPVGG_FAKE_CPU": "Other CPU"})
    assert here.returncode == 0 and there.returncode == 0, there.stderr
    assert here.stderr.strip() == ""
    (note,) = there.stderr.strip().splitlines()
    assert note.startswith("note: ") and "tuned on another CPU" in note and "Other CPU" in note
    np.testing.assert_allclose(printed_probs(there.stdout), printed_probs(here.stdout),
                               atol=0.011)
    assert len(printed_probs(here.stdout)) == 5


def legacy_copy(src, dst):
    """``src`` rewritten as an earlier version wrote it: format /1, an algorithm cache of
    unknown origin, no record of the graph's portability (MegEngine's own graph editor
    re-dumps the graph with the new metadata)."""
    from megengine.utils.network import Network

    info = metadata_of(src)
    for key in ("graph_options", "layout", "cpu", "cpu_fingerprint"):
        info.pop(key, None)
    info["format"] = modelfile.LEGACY_FORMATS[0]
    Network.load(str(src)).dump(str(dst), user_info=json.dumps(info, sort_keys=True),
                                optimize_for_inference=False)


def test_a_file_from_an_earlier_version_is_probed_first(tmp_path):
    proc, _ = export(tmp_path)
    assert proc.returncode == 0, proc.stderr
    legacy = tmp_path / "old.mge"
    legacy_copy(tmp_path / "m.mge", legacy)
    assert metadata_of(legacy)["format"] == modelfile.LEGACY_FORMATS[0]
    ok = infer(legacy, "--benchmark", "--runs", 1)
    assert ok.returncode == 0, ok.stderr
    assert "earlier version" in ok.stderr
    failed = infer(legacy, "--benchmark", "--runs", 1, env={"REPVGG_FAULT": "probe:fail"})
    assert failed.returncode == 1  # a refused file
    message = one_line_error(failed)
    assert "does not run on this CPU" in message and "export the model again" in message
    assert_nothing_left(tmp_path)
