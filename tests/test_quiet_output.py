"""Output off a terminal (issue 24 item 6): no library chatter on stderr, and progress as plain
lines (never tqdm's ``\\r`` redraws) when stderr is a pipe or a log file. The int8 tool's quiet
stderr is in tests/test_quantize_cli.py (ONNX Runtime's advice)."""
from helpers import run_tool

USE_MODELS = ("import model; net = model.get_model('RepVGG-A0', num_classes=10); "
              "model.convert_to_deploy(net); import os; os.write(2, b'still here\\n')")


def test_using_the_models_without_choosing_a_device_prints_no_cuda_banner():
    # MegEngine's default device probed CUDA on the first operation and printed a five-line
    # banner and "debug: failed to load cuda func" lines on a machine without a GPU driver
    proc = run_tool("-c", USE_MODELS)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "still here\n"  # only our own line: stderr works after the probe


def test_an_import_error_still_reaches_the_user():
    proc = run_tool("-c", "import common.device; import no_such_module_here")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == \
        "ModuleNotFoundError: No module named 'no_such_module_here'"


def test_stats_prints_no_bar_into_a_pipe():
    proc = run_tool("tools/stats.py", "--arch", "RepVGG-A0", "RepVGG-A1", "--size", "32")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_a_search_with_progress_on_writes_plain_lines_into_a_pipe(tmp_path):
    proc = run_tool("search.py", "tas", "--epochs", "1", "--max-steps", "2", "--batch-size", "8",
                    "--device", "cpu", "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "\r" not in proc.stderr and "\x1b[" not in proc.stderr
    assert "%|" not in proc.stderr  # tqdm's bar


def test_an_unreadable_image_is_named_once_per_validation(tmp_path):
    # it was named by its index ("#3") and printed again by each of the final deploy check's
    # two passes (train form, deploy form)
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / "d" / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(
                    str(tmp_path / "d" / split / c / ("%d.png" % i)))
    bad = tmp_path / "d" / "val" / "b" / "zz_bad.png"
    bad.write_text("not an image")
    proc = run_tool("train.py", "--data", tmp_path / "d", "--epochs", "1",
                    "--max-steps-per-epoch", "1", "--image-size", "16", "--batch-size", "4",
                    "--device", "cpu", "--workers", "0", "--no-progress",
                    "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-2000:]
    named = [l for l in proc.stderr.splitlines() if "unreadable" in l and "skipped" in l]
    assert len(named) == 1 and str(bad) in named[0], proc.stderr
