"""tools/bench_deploy.py end to end on a tiny input: every requested path runs, and the PyTorch
reference model, given the MegEngine weights through the benchmark's weight file, computes the
same logits (so the table compares the same network)."""
import re

from helpers import run_tool


def test_bench_deploy_runs_every_path_on_the_same_network():
    proc = run_tool("tools/bench_deploy.py", "--arch", "RepVGG-A0", "--batch", 2, "--size", 32,
                    "--runs", 1, "--warmup", 0, "--options", "default", "nchw88+fuse",
                    "--lite", "fastrun", "--torch", "eager", "--peak-shape", 1, 32, 16, 16)
    assert proc.returncode == 0, proc.stderr
    rows = {}
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 8 and cells[0] == "RepVGG-A0":
            rows[cells[2]] = cells
    assert list(rows) == [
        "MegEngine eager, train form", "MegEngine eager, deploy form",
        "MegEngine dumped, default", "MegEngine dumped, nchw88+fuse",
        "MegEngine dumped, nchw88+fuse + fastrun", "PyTorch eager"]
    for name, cells in rows.items():
        assert not cells[3].startswith("failed"), cells
        assert float(cells[3]) > 0 and float(cells[7]) <= 1e-5, cells
    assert rows["PyTorch eager"][6] == "1.00x"
    assert re.search(r"peak GFLOP/s, 3x3 conv 1x32x16x16: MegEngine dumped [\d.]+, "
                     r"PyTorch eager [\d.]+", proc.stdout)
