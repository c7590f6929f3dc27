"""benchmarks/bench_deploy.py --quick end to end: every path runs in its own process on the same
weights (the logits agree, else the benchmark stops), and the table reports each path; and
tools/infer.py --benchmark times an exported model."""
import re

from helpers import run_tool


def table_rows(stdout):
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[0] == "RepVGG-A0":
            rows[cells[2]] = cells
    return rows


def test_bench_deploy_quick_runs_every_path_on_the_same_network():
    proc = run_tool("benchmarks/bench_deploy.py", "--quick", "--threads", 1)
    assert proc.returncode == 0, proc.stderr
    rows = table_rows(proc.stdout)
    assert list(rows) == ["PyTorch eager", "ONNX Runtime (our .onnx)", "OpenVINO (our .onnx)",
                          "ours: .mge, export defaults (fuse, algo cache)",
                          "ours: .onnx, deploy.runtime (ONNX Runtime, .venv)"]
    for name, cells in rows.items():
        assert not cells[3].startswith("failed"), cells
        assert float(cells[3]) > 0 and float(cells[6]) <= 1e-5, cells
    assert rows["PyTorch eager"][6] == "0.0e+00"  # the reference of the comparison
    best = max(float(rows[n][3]) for n in list(rows)[:3])
    for cells in rows.values():
        assert abs(float(cells[5].rstrip("x")) - float(cells[3]) / best) < 0.01
    assert ".venv/bin/python benchmarks/bench_deploy.py --quick --threads 1" in proc.stdout


def test_infer_benchmark_prints_images_per_second(tmp_path):
    arch = tmp_path / "arch.json"
    arch.write_text('{"stem": {"channels": 8, "stride": 2}, "layers": [{"op": "repvgg", '
                    '"C_in": 8, "C_out": 8, "stride": 1}], "num_classes": 10}')
    for suffix in ("mge", "onnx"):
        out = tmp_path / ("m." + suffix)
        proc = run_tool("tools/export.py", "--arch", arch, "--random-init", "--num-classes", 10,
                        "--output", out, "--size", 32, "--threads", 1)
        assert proc.returncode == 0, proc.stderr
        proc = run_tool("tools/infer.py", out, "--benchmark", "--batch", 3, "--runs", 3,
                        "--threads", 1)
        assert proc.returncode == 0, proc.stderr
        last = proc.stdout.strip().splitlines()[-1]
        assert re.fullmatch(r"\d+\.\d\d img/s", last) and float(last.split()[0]) > 0, last
        assert "batch 3, 1 threads" in proc.stdout
