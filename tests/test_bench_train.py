from helpers import one_line_error, run_tool

QUICK = ("--sizes", "16", "--batch", "2", "--steps", "1", "--warmup", "0", "--classes", "10",
         "--rounds", "1")


def _rows(stdout, first_cell):
    return [[c.strip() for c in l.strip().strip("|").split("|")]
            for l in stdout.splitlines() if l.startswith("| " + first_cell)]


def test_bench_train_prints_megengine_and_pytorch_side_by_side():
    proc = run_tool("benchmarks/bench_train.py", *QUICK)
    assert proc.returncode == 0, proc.stderr
    rows = {r[1]: r for r in _rows(proc.stdout, "16x16")}
    assert sorted(rows) == ["megengine", "pytorch"]
    seconds = {}
    for variant, (_, _, s, images, ratio) in rows.items():
        seconds[variant] = float(s)
        assert seconds[variant] > 0
        assert abs(float(images) - 2 / seconds[variant]) <= 0.05 * float(images) + 0.1
    ratio = float(rows["megengine"][4].rstrip("x"))
    expected = seconds["pytorch"] / seconds["megengine"]
    assert abs(ratio - expected) <= 0.01 * expected + 0.01
    assert rows["pytorch"][4] == "1.00x"


def test_bench_train_profile_lists_operators():
    proc = run_tool("benchmarks/bench_train.py", *QUICK, "--variants", "megengine", "--profile",
                    "--top", "40")
    assert proc.returncode == 0, proc.stderr
    assert "| 16x16 | megengine |" in proc.stdout and "pytorch" not in proc.stdout
    ops = {r[0]: r for r in _rows(proc.stdout, "") if r[0] not in ("size", "operator")
           and not r[0].startswith("---") and "x" not in r[0][:3]}
    assert "Convolution" in ops and "BatchNorm" in ops
    shares = [float(r[3].rstrip("%")) for r in ops.values()]
    assert all(s >= 0 for s in shares) and 50 < sum(shares) <= 100.5


def test_bench_train_bad_arguments_get_one_line(tmp_path):
    proc = run_tool("benchmarks/bench_train.py", "--batch", "0")
    assert proc.returncode == 1 and "--batch" in one_line_error(proc)
    proc = run_tool("benchmarks/bench_train.py", *QUICK, "--torch-python", tmp_path / "none")
    assert proc.returncode == 1 and "PyTorch venv" in one_line_error(proc)
