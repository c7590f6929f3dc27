"""PyTorch checkpoints written by real PyTorch, converted without PyTorch: same logits."""
import os

import numpy as np
import pytest

import megengine as mge

from ckpt_converter import ConverterError, convert, load_torch_checkpoint, read_checkpoint
from errors import CheckpointError, UserError
from ckpt_fixtures import assert_logits_close, megengine_builder, torch_fixtures  # noqa: F401
from common.checkpoint import load_checkpoint
from helpers import one_line_error, run_tool

CASES = ["a0_train_zip", "a0_train_legacy_ddp", "a0_deploy_zip", "g2_train_fp16_zip",
         "g2_deploy_legacy", "se_train_views_zip", "se_train_views_legacy", "plus_train_zip",
         "tiny_full_training_zip", "tiny_train_safetensors"]


def megengine_logits(model, folder):
    x = np.load(os.path.join(folder, "input.npy"))
    return model(mge.tensor(x)).numpy()


# Every case as it is, and fused to deploy form after loading (A0's fused path: the CLI test).
RUNS = [(name, False) for name in CASES] + [
    (name, True) for name in CASES if name not in ("a0_train_legacy_ddp", "a0_deploy_zip")]


@pytest.mark.parametrize("name,deploy", RUNS,
                         ids=["%s-%s" % (n, "fused" if d else "as-is") for n, d in RUNS])
def test_converted_logits_equal_pytorch(torch_fixtures, name, deploy):  # noqa: F811
    folder, manifest = torch_fixtures
    case = manifest["cases"][name]
    model, report = convert(os.path.join(folder, case["file"]), megengine_builder(case["spec"]),
                            deploy=deploy)
    assert report["form"] == case["form"]
    assert report["format"] == case["format"]
    assert report["output_form"] == ("deploy" if deploy or case["form"] == "deploy" else "train")
    expected = np.load(os.path.join(folder, case["logits"]))
    assert_logits_close(megengine_logits(model, folder), expected)


def test_case_specific_reports(torch_fixtures):  # noqa: F811
    folder, manifest = torch_fixtures
    path = lambda name: os.path.join(folder, manifest["cases"][name]["file"])  # noqa: E731
    spec = lambda name: megengine_builder(manifest["cases"][name]["spec"])  # noqa: E731
    _, report = convert(path("a0_train_legacy_ddp"), spec("a0_train_legacy_ddp"))
    assert report["source"] == "state_dict"
    _, report = convert(path("g2_train_fp16_zip"), spec("g2_train_fp16_zip"))
    assert report["casts"] == {"float16->float32": report["tensors"] - sum(
        1 for k in load_torch_checkpoint(path("g2_train_fp16_zip")) if "num_batches" in k)}


def test_full_training_checkpoint_ema_and_placeholders(torch_fixtures):  # noqa: F811
    folder, manifest = torch_fixtures
    case = manifest["cases"]["tiny_full_training_zip"]
    path = os.path.join(folder, case["file"])
    model, report = convert(path, megengine_builder(case["spec"]), ema=True)
    assert report["source"] == "ema"
    assert_logits_close(megengine_logits(model, folder),
                        np.load(os.path.join(folder, case["ema_logits"])))
    # The real yacs config (official train/config.py style, frozen) became inert placeholders,
    # reported by name; yacs was never imported. Its bookkeeping set (__builtin__.set at
    # protocol 2) is a real set.
    assert report["placeholders"] == {"yacs.config.CfgNode": 1}
    import sys
    assert "yacs" not in sys.modules
    obj = load_torch_checkpoint(path)
    assert {"model", "optimizer", "lr_scheduler", "max_accuracy", "epoch", "config"} <= set(obj)
    config = obj["config"]
    assert type(config).__name__ == "Placeholder_CfgNode"
    assert config.items["SEED"] == 0 and config.items["MODEL"].items["NUM_CLASSES"] == 10
    assert config.state["__immutable__"] is True
    assert type(config.state["__deprecated_keys__"]) is set
    assert obj["epoch"] == 3 and float(obj["max_accuracy"]) == 12.5
    assert set(obj["optimizer"]) == {"state", "param_groups"}
    assert all(isinstance(s["momentum_buffer"], np.ndarray)
               for s in obj["optimizer"]["state"].values())
    assert obj["lr_scheduler"]["T_max"] == 120


@pytest.mark.parametrize("name", ["dtypes_zip.pth", "dtypes_legacy.pth", "dtypes.safetensors"])
def test_dtypes_offsets_strides_and_shared_storage(torch_fixtures, name):  # noqa: F811
    folder, _ = torch_fixtures
    expected = np.load(os.path.join(folder, "dtypes_expected.npz"))
    tensors, info = read_checkpoint(os.path.join(folder, name))
    assert info["tensors"] == len(tensors)
    for key, value in tensors.items():
        want = expected[key]
        assert value.dtype == want.dtype, key
        assert value.shape == want.shape, key
        np.testing.assert_array_equal(value, want, err_msg=key)
    if "transposed" in tensors:  # views of one storage stay views of the same bytes
        assert np.shares_memory(tensors["transposed"], tensors["row_slice"])
    assert tensors["bf16"][2] == np.float32(expected["bf16"][2])  # 3e38 rounded as torch does


def test_cli_converts_and_project_tools_read_the_output(torch_fixtures, tmp_path):  # noqa: F811
    folder, manifest = torch_fixtures
    src = os.path.join(folder, manifest["cases"]["a0_train_zip"]["file"])
    out = tmp_path / "a0.pkl"
    proc = run_tool("-m", "ckpt_converter", src, "--arch", "RepVGG-A0", "-o", out, "--deploy")
    assert proc.returncode == 0, proc.stderr
    assert "zip format" in proc.stdout and "train form" in proc.stdout
    assert "fused to deploy form" in proc.stdout
    ckpt = load_checkpoint(out)
    assert (ckpt["arch"], ckpt["form"], ckpt["num_classes"]) == ("RepVGG-A0", "deploy", 1000)
    from model.checkpoint import model_from_checkpoint
    model, _ = model_from_checkpoint(ckpt)
    model.eval()
    assert_logits_close(megengine_logits(model, folder),
                        np.load(os.path.join(folder, "a0_deploy_zip.logits.npy")))


def test_cli_full_checkpoint_lists_placeholders(torch_fixtures, tmp_path):  # noqa: F811
    folder, manifest = torch_fixtures
    src = os.path.join(folder, manifest["cases"]["tiny_full_training_zip"]["file"])
    out = tmp_path / "tiny.pkl"
    # The tiny architecture is not registered: a registered one that does not fit is refused
    # with the key lists, and nothing is written.
    proc = run_tool("-m", "ckpt_converter", src, "--arch", "RepVGG-A0", "-o", out)
    line = one_line_error(proc)
    assert "does not fit the model" in line and "missing" in line and "mis-shaped" in line
    assert not out.exists() and not list(tmp_path.iterdir())


def test_strict_mismatch_names_keys(torch_fixtures):  # noqa: F811
    folder, manifest = torch_fixtures
    src = os.path.join(folder, manifest["cases"]["g2_train_fp16_zip"]["file"])
    spec = dict(manifest["cases"]["g2_train_fp16_zip"]["spec"], groups=1)
    with pytest.raises(CheckpointError, match="mis-shaped: .*rbr_dense.conv.weight"):
        convert(src, megengine_builder(spec))
    with pytest.raises(ConverterError, match="no EMA weights"):
        convert(src, megengine_builder(manifest["cases"]["g2_train_fp16_zip"]["spec"]), ema=True)
    with pytest.raises(UserError, match="unknown architecture 'RepVGG-Z9'"):
        convert(src, "RepVGG-Z9")


SMALL_SPECS = {
    "g2_se": {"family": "RepVGG", "num_blocks": [1, 2, 2, 1], "width": [0.5] * 4, "groups": 2,
              "use_se": True},
    "plus": {"family": "RepVGGplus", "num_blocks": [2, 2, 2, 1], "width": [0.25] * 3 + [0.5]},
}


@pytest.mark.parametrize("spec", sorted(SMALL_SPECS))
@pytest.mark.parametrize("deploy", [False, True])
def test_expected_shapes_match_state_dict(spec, deploy):
    """The strict check reads shapes without state_dict(); they must be state_dict()'s."""
    from ckpt_converter.loading import expected_arrays
    from model.checkpoint import expected_shapes, numpy_state_dict
    net = megengine_builder(SMALL_SPECS[spec])(deploy=deploy, num_classes=10)
    reference = net.state_dict()
    ours = {k: (v.shape, v.dtype) for k, v in expected_arrays(net).items()}
    assert ours == {k: (v.shape, v.dtype) for k, v in reference.items()}
    assert expected_shapes(net) == {k: v.shape for k, v in reference.items()}
    fast = numpy_state_dict(net)
    assert set(fast) == set(reference)
    for key, value in reference.items():
        np.testing.assert_array_equal(fast[key], value, err_msg=key)


def test_uninitialised_building_is_local_to_its_context():
    """Models built inside ``uninitialised()`` skip MegEngine's random initialisation; models
    built in another context meanwhile (a task, or a thread where MegEngine allows one), or
    afterwards, are initialised as usual."""
    import contextvars

    import megengine.module as M

    from ckpt_converter.loading import uninitialised

    def weight():
        return M.Conv2d(8, 8, 3).weight.numpy()

    with uninitialised():
        assert not weight().any()  # the zeros MegEngine allocates, never overwritten
        other = contextvars.Context().run(weight)  # a fresh context, as a new thread has
    assert other.std() > 0 and weight().std() > 0
