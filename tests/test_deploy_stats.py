"""tools/stats.py against the RepVGG paper's table (Ding et al. 2021, Table 4: deploy-form
parameters in millions, truncated to two decimals, and FLOPs in G multiply-accumulates at
224x224, one decimal)."""
import json

from helpers import one_line_error, run_tool

PAPER = {  # name: (params M, GFLOPs)
    "RepVGG-A0": (8.30, 1.4),
    "RepVGG-A1": (12.78, 2.4),
    "RepVGG-B0": (14.33, 3.1),
}
LINEAR_MACS = 1280 * 1000  # the 1000-way head after 512 * 2.5 channels (A0, A1, B0 alike)


def test_stats_match_paper_table():
    proc = run_tool("tools/stats.py", "--arch", *PAPER, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["arch"]: r for r in json.loads(proc.stdout)}
    assert set(rows) == set(PAPER)
    for name, (params_m, gflops) in PAPER.items():
        deploy, train = rows[name]["deploy"], rows[name]["train"]
        assert int(deploy["params"] / 1e4) / 100 == params_m, name
        assert round(deploy["flops"] / 1e9, 1) == gflops, name
        # Train form: every block adds a 1x1 conv on the same input and output grid, which
        # costs exactly 1/9 of its 3x3 conv; the identity branch (BN) costs no MACs.
        conv = deploy["flops"] - LINEAR_MACS
        assert train["flops"] - LINEAR_MACS == conv + conv // 9, name
        assert train["params"] > deploy["params"]


def test_stats_table_and_errors():
    proc = run_tool("tools/stats.py", "--arch", "RepVGG-A0", "--size", "64")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[2].startswith("| RepVGG-A0 | 64 | 9.11 | 8.31 |")
    proc = run_tool("tools/stats.py", "--arch", "RepVGG-Z0")
    assert proc.returncode == 1 and "unknown architecture" in one_line_error(proc)
