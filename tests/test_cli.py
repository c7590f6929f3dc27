"""verify.py and tools/convert.py run as a user runs them, error paths included."""
import numpy as np

import megengine as mge

import model
from common.checkpoint import load_checkpoint, save_checkpoint
from model.checkpoint import checkpoint_dict, numpy_state_dict
from model.parity import randomize_batchnorm, sample_inputs
from helpers import one_line_error, run_tool


def test_verify_passes_blocks_and_a_model():
    proc = run_tool("verify.py", "--arch", "RepVGG-A0", "--arch", "RepVGG-B1g2", "--size", "64")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [l for l in proc.stdout.splitlines() if "max|d|" in l]
    # 24 RepVGG blocks + 2 post-SE blocks + 8 QARepVGG blocks, and the two models
    assert len(rows) == 34 + 2 and all(r.endswith("ok") for r in rows)
    assert "g4 se" in proc.stdout and "g2 qa" in proc.stdout and "RepVGG-B1g2" in proc.stdout
    assert "36/36 cases within tolerance" in proc.stdout


def test_verify_fails_when_tolerance_is_exceeded():
    # Float32 rounding is never exactly zero, so a zero tolerance must fail: the exit code works.
    proc = run_tool("verify.py", "--arch", "RepVGG-A0", "--size", "32", "--no-blocks", "--tol", "0")
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout and "RepVGG-A0" in proc.stderr


def test_verify_unknown_arch():
    proc = run_tool("verify.py", "--arch", "RepVGG-Z9")
    assert proc.returncode == 1  # a UserError (unknown name), not a usage error
    assert "RepVGG-Z9" in one_line_error(proc)


def _train_checkpoint(path, rng, arch="RepVGG-A0", num_classes=10):
    net = model.get_model(arch, num_classes=num_classes)
    x = sample_inputs(rng, (2, 3, 32, 32))
    randomize_batchnorm(net, rng, x)
    save_checkpoint(checkpoint_dict(numpy_state_dict(net), arch, "train"), path)
    return net, x


def test_convert_train_to_deploy(tmp_path, rng):
    src, dst = tmp_path / "train.pkl", tmp_path / "deploy.pkl"
    net, x = _train_checkpoint(src, rng)
    proc = run_tool("tools/convert.py", "--arch", "RepVGG-A0", "--load", src, "--save", dst)
    assert proc.returncode == 0, proc.stderr
    ckpt = load_checkpoint(dst)
    assert ckpt["form"] == "deploy" and ckpt["arch"] == "RepVGG-A0"
    deployed = model.get_model("RepVGG-A0", deploy=True, num_classes=10)
    deployed.load_state_dict(ckpt["state_dict"])
    deployed.eval()
    net.eval()
    a, b = net(mge.tensor(x)).numpy(), deployed(mge.tensor(x)).numpy()
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy.pkl", "train.pkl"]


def test_convert_mismatched_checkpoint_writes_nothing(tmp_path, rng):
    src, dst = tmp_path / "train.pkl", tmp_path / "deploy.pkl"
    _train_checkpoint(src, rng)
    proc = run_tool("tools/convert.py", "--arch", "RepVGG-B0", "--load", src, "--save", dst)
    assert proc.returncode == 1
    line = one_line_error(proc)
    assert "missing" in line and "mis-shaped" in line and "stage1.2.rbr_dense" in line
    assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["train.pkl"]


def test_convert_unknown_arch_and_bad_files(tmp_path, rng):
    src, dst = tmp_path / "train.pkl", tmp_path / "deploy.pkl"
    _train_checkpoint(src, rng)
    proc = run_tool("tools/convert.py", "--arch", "Nope", "--load", src, "--save", dst)
    assert proc.returncode == 1 and "unknown architecture 'Nope'" in one_line_error(proc)
    proc = run_tool("tools/convert.py", "--load", tmp_path / "missing.pkl", "--save", dst)
    assert proc.returncode == 1 and "not found" in one_line_error(proc)
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(src.read_bytes()[:5000])
    proc = run_tool("tools/convert.py", "--load", truncated, "--save", dst)
    assert proc.returncode == 1 and "not a readable" in one_line_error(proc)
    assert not dst.exists()


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    payload = (b"\x80\x04cos\nsystem\n(Vtouch " + str(marker).encode() + b"\ntR.")
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(payload)
    proc = run_tool("tools/convert.py", "--arch", "RepVGG-A0", "--load", evil,
                    "--save", tmp_path / "out.pkl")
    assert proc.returncode == 1 and "os.system" in one_line_error(proc)
    assert not marker.exists()
