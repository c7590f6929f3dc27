"""MegEngine -> .pth (written without PyTorch) -> torch.load(weights_only=True) -> same logits."""
import json
import os

import numpy as np

import megengine as mge

from ckpt_converter import convert, export_pth
from ckpt_fixtures import (TORCH_REF, assert_logits_close, megengine_builder, run_torch,
                           torch_fixtures)  # noqa: F401
from common.checkpoint import save_checkpoint
from model.checkpoint import checkpoint_dict, numpy_state_dict
from helpers import run_tool


def test_export_round_trip_through_pytorch(torch_fixtures, tmp_path):  # noqa: F811
    folder, manifest = torch_fixtures
    x = np.load(os.path.join(folder, "input.npy"))
    jobs, expected = [], {}
    # grouped (5-D kernels back to 4-D) in both forms, SE, RepVGGplus with its aux heads
    for name, deploy in [("g2_train_fp16_zip", False), ("g2_train_fp16_zip", True),
                         ("se_train_views_zip", False), ("plus_train_zip", True),
                         ("tiny_full_training_zip", False)]:
        case = manifest["cases"][name]
        model, _ = convert(os.path.join(folder, case["file"]), megengine_builder(case["spec"]),
                           deploy=deploy)
        key = "%s_%s" % (name, "deploy" if deploy else "train")
        pth = tmp_path / (key + ".pth")
        if name == "tiny_full_training_zip":  # through the command line
            pkl = tmp_path / (key + ".pkl")
            save_checkpoint(checkpoint_dict(numpy_state_dict(model), "tiny", "train"), pkl)
            proc = run_tool("-m", "ckpt_converter", "export", pkl, "-o", pth)
            assert proc.returncode == 0, proc.stderr
            assert "wrote" in proc.stdout
        else:
            export_pth(model.state_dict(), str(pth))
        expected[key] = model(mge.tensor(x)).numpy()
        jobs.append({"pth": str(pth), "spec": case["spec"], "deploy": deploy,
                     "out": str(tmp_path / (key + ".npy"))})
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text(json.dumps(jobs))
    run_torch(os.path.join(TORCH_REF, "torch_logits.py"), os.path.join(folder, "input.npy"),
              jobs_file)
    for job, (key, ours) in zip(jobs, expected.items()):
        assert_logits_close(np.load(job["out"]), ours)


def test_exported_file_reads_back_without_torch(tmp_path):
    from ckpt_converter import load_torch_checkpoint
    arrays = {"conv.weight": np.arange(2 * 3 * 4 * 3 * 3, dtype=np.float32).reshape(2, 3, 4, 3, 3),
              "conv.bias": np.ones((1, 6, 1, 1), np.float32),
              "bn.running_var": np.ones(6, np.float32),
              "h": np.arange(3, dtype=np.float16), "i": np.array([1, 2 ** 40], np.int64)}
    path = str(tmp_path / "x.pth")
    export_pth(arrays, path)
    back = load_torch_checkpoint(path)
    assert list(back) == ["conv.weight", "conv.bias", "bn.running_var", "bn.num_batches_tracked",
                          "h", "i"]
    np.testing.assert_array_equal(back["conv.weight"], arrays["conv.weight"].reshape(6, 4, 3, 3))
    np.testing.assert_array_equal(back["conv.bias"], np.ones(6, np.float32))
    assert back["bn.num_batches_tracked"].shape == () and back["h"].dtype == np.float16
    np.testing.assert_array_equal(back["i"], arrays["i"])
