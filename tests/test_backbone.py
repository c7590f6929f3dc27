"""RepVGG as a backbone (issue 26): stage features against the official model's activations,
the classifier helpers, frozen stages and norm_eval, weights into a backbone."""
import os

import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
from megengine.autodiff import GradManager

import model
from ckpt_converter import ConverterError, load_into
from ckpt_fixtures import ROOT, SOURCES, TORCH_REF, _generate, megengine_builder
from errors import UserError
from model.checkpoint import numpy_state_dict

STAGES = os.path.join(ROOT, "tests", ".fixtures", "stages")


@pytest.fixture(scope="module")
def stage_fixtures():
    """(folder, manifest): official models' weights and per-stage activations, written by
    tests/torch_ref/stage_fixtures.py with real PyTorch (forward hooks on stage0 .. stage4)."""
    script = os.path.join(TORCH_REF, "stage_fixtures.py")
    return STAGES, _generate(STAGES, SOURCES + [script], script)


def assert_close(actual, expected, what):
    """Equal to float32 rounding: max |difference| <= 1e-5 x the largest |value|."""
    assert actual.shape == expected.shape, what
    scale = float(np.abs(expected).max())
    diff = float(np.abs(actual - expected).max())
    assert diff <= 1e-5 * scale, "%s: max |d| = %.3g vs largest |value| %.3g" % (what, diff,
                                                                               scale)


def backbone_for(spec, deploy=False, out_indices=None):
    arch = megengine_builder(spec)
    if isinstance(arch, str):
        return model.get_model(arch, deploy=deploy, features_only=True, out_indices=out_indices)
    return model.Backbone(arch(deploy=deploy, num_classes=spec["num_classes"]), out_indices)


@pytest.mark.parametrize("case", ["a0", "g2se", "plus"])
def test_stage_outputs_equal_the_official_models_activations(stage_fixtures, case):
    folder, manifest = stage_fixtures
    entry = manifest["cases"][case]
    x = mge.tensor(np.load(os.path.join(folder, manifest["input"])))
    expected = np.load(os.path.join(folder, entry["stages_train"]))

    net = backbone_for(entry["spec"])
    report = load_into(net, os.path.join(folder, entry["train"]))
    assert report["missing"] == [] and "linear.weight" in report["dropped"]
    assert "dropped" in report["summary"] and "\n" not in report["summary"]
    net.eval()
    feats = net(x)
    assert len(feats) == 5
    for i, f in enumerate(feats):
        assert_close(f.numpy(), expected["stage%d" % i], "%s train stage%d" % (case, i))
    assert net.feature_info.channels() == [int(expected["stage%d" % i].shape[1])
                                           for i in range(5)]
    assert net.feature_info.reduction() == [64 // expected["stage%d" % i].shape[2]
                                            for i in range(5)] == [2, 4, 8, 16, 32]
    # fused here, and the official deploy-form file in a deploy-form backbone
    fused = model.convert_to_deploy(net)
    deployed = backbone_for(entry["spec"], deploy=True, out_indices=(1, 3))
    load_into(deployed, os.path.join(folder, entry["deploy"]))
    deployed.eval()
    official_deploy = np.load(os.path.join(folder, entry["stages_deploy"]))
    for i, f in enumerate(fused(x)):
        assert_close(f.numpy(), expected["stage%d" % i], "%s fused stage%d" % (case, i))
    for i, f in zip((1, 3), deployed(x)):
        assert_close(f.numpy(), official_deploy["stage%d" % i], "%s deploy stage%d" % (case, i))


def test_a_train_form_file_into_a_deploy_form_backbone_is_refused(stage_fixtures):
    folder, manifest = stage_fixtures
    entry = manifest["cases"]["g2se"]
    with pytest.raises(ConverterError, match="convert_to_deploy"):
        load_into(backbone_for(entry["spec"], deploy=True), os.path.join(folder, entry["train"]))
    with pytest.raises(ConverterError, match="deploy=True"):
        load_into(backbone_for(entry["spec"]), os.path.join(folder, entry["deploy"]))


def test_feature_info_of_the_named_variants():
    from ckpt_converter.loading import uninitialised

    with uninitialised():  # shapes only: no random initialisation of the large variants
        a0 = model.get_model("RepVGG-A0", features_only=True)
        qa = model.get_model("QARepVGG-A0", features_only=True, out_indices=(2, 4))
        d2se = model.get_model("RepVGG-D2se", features_only=True, deploy=True)
        l2 = model.get_model("RepVGGplus-L2pse", features_only=True, out_indices=(3, 4))
    assert a0.feature_info.channels() == [48, 48, 96, 192, 1280]
    assert a0.feature_info.reduction() == [2, 4, 8, 16, 32]
    assert qa.feature_info.channels() == [96, 1280] and qa.feature_info.reduction() == [8, 32]
    assert d2se.feature_info.channels() == [64, 160, 320, 640, 2560]
    assert l2.feature_info.channels() == [640, 2560]
    # the backbone holds no head: no classifier, no pooling, no auxiliary heads
    for net in (a0, d2se, l2):
        keys = dict(net.named_parameters())
        assert not [k for k in keys if k.startswith(("linear", "stage1_aux", "stage2_aux",
                                                     "stage3_first_aux"))]
    # stages after the last index are not kept
    assert hasattr(qa, "stage0") and hasattr(qa, "stage4")
    assert not hasattr(model.get_model("RepVGG-A0", features_only=True, out_indices=(1,)),
                       "stage2")


def test_bad_requests_are_one_line_user_errors():
    for kwargs in ({"out_indices": (5,)}, {"out_indices": (1, 1)}, {"out_indices": ()}):
        with pytest.raises(UserError):
            model.get_model("RepVGG-A0", features_only=True, **kwargs)
    with pytest.raises(UserError, match="features_only"):
        model.get_model("RepVGG-A0", out_indices=(1,))
    with pytest.raises(UserError, match="frozen_stages"):
        model.get_model("RepVGG-A0", frozen_stages=6)
    with pytest.raises(UserError, match="no stage"):
        model.get_model("BinaryResNet18-awnas", features_only=True)


def test_classifier_helpers_have_timms_meaning(rng):
    net = model.get_model("RepVGG-A0", num_classes=7)
    net.eval()
    x = mge.tensor(rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
    feats = net.forward_features(x)
    assert feats.shape == (2, 1280, 1, 1)
    np.testing.assert_array_equal(net.forward_head(feats).numpy(), net(x).numpy())
    pooled = net.forward_head(feats, pre_logits=True)
    np.testing.assert_allclose(pooled.numpy(), feats.numpy().mean(axis=(2, 3)), rtol=1e-6)
    net.reset_classifier(3)
    assert net(x).shape == (2, 3)
    net.reset_classifier(0)
    np.testing.assert_allclose(net(x).numpy(), pooled.numpy(), rtol=1e-6)
    plus = model.RepVGGplus((2, 2, 2, 1), 10, (0.25, 0.25, 0.25, 0.5), use_post_se=True)
    plus.reset_classifier(4)
    plus.train()
    out = plus(x)
    assert {k: v.shape for k, v in out.items()} == {
        k: (2, 4) for k in ("main", "stage1_aux", "stage2_aux", "stage3_first_aux")}


class UserModel(M.Module):
    """A user's model around a backbone: its train() reaches the backbone only through
    MegEngine's non-recursive walk."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = M.Conv2d(backbone.feature_info.channels()[-1], 3, 1)

    def forward(self, x):
        return F.mean(self.head(self.backbone(x)[-1]), axis=(2, 3))


def batchnorms(net):
    return [(n, m) for n, m in net.named_modules() if isinstance(m, M.BatchNorm2d)]


def sgd_steps(net, params, rng, steps=3):
    from megengine.optimizer import SGD

    gm = GradManager().attach(params)
    opt = SGD(params, lr=0.5, momentum=0.9, weight_decay=1e-3)
    for _ in range(steps):
        x = mge.tensor(rng.standard_normal((4, 3, 32, 32)).astype(np.float32))
        with gm:
            loss = (net(x) ** 2).mean()
            gm.backward(loss)
        opt.step().clear_grad()


def test_frozen_stages_stay_bit_identical_and_their_bn_in_eval_mode(rng):
    backbone = model.get_model("RepVGG-A0", features_only=True, out_indices=(2, 3),
                               frozen_stages=2)
    net = UserModel(backbone)
    net.train()
    frozen = [id(p) for i in (0, 1) for m in backbone.stage_modules(i) for p in m.parameters()]
    params = model.trainable_parameters(net)
    assert len(params) == len(list(net.parameters())) - len(frozen)
    assert not set(map(id, params)) & set(frozen)
    before = numpy_state_dict(net)
    sgd_steps(net, params, rng)
    after = numpy_state_dict(net)
    for key in before:
        if key.startswith(("backbone.stage0.", "backbone.stage1.")):
            np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    changed = [k for k in before if k.startswith("backbone.stage2.")
               and not np.array_equal(after[k], before[k])]
    assert any(k.endswith("running_mean") for k in changed)  # stage 2 trains, BN included
    assert any(k.endswith("rbr_dense.conv.weight") for k in changed)
    for name, bn in batchnorms(net):
        assert bn.training == (not name.startswith(("backbone.stage0", "backbone.stage1"))), name


def test_norm_eval_keeps_every_bn_statistic_while_the_weights_train(rng):
    def run(norm_eval):
        mge.random.seed(3)
        net = UserModel(model.get_model("RepVGG-A0", features_only=True, out_indices=(1,),
                                        norm_eval=norm_eval))
        net.train()
        before = numpy_state_dict(net)
        sgd_steps(net, model.trainable_parameters(net), np.random.default_rng(0), steps=2)
        return before, numpy_state_dict(net)

    before, after = run(norm_eval=True)
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats
    for key in stats:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    assert not np.array_equal(after["backbone.stage1.0.rbr_dense.bn.weight"],
                              before["backbone.stage1.0.rbr_dense.bn.weight"])
    before, after = run(norm_eval=False)  # the same steps without it do move the statistics
    assert not all(np.array_equal(after[k], before[k]) for k in stats)


def test_classifier_frozen_stages_keep_their_bn_in_eval_mode_after_train():
    net = model.get_model("RepVGG-A0", num_classes=10, frozen_stages=3)
    net.train()
    frozen = {id(m) for i in range(3) for part in net.stage_modules(i)
              for _, m in part.named_modules()}
    for _, bn in batchnorms(net):
        assert bn.training == (id(bn) not in frozen)


def test_train_py_frozen_stages_and_norm_eval(tmp_path, rng):
    from common.checkpoint import load_checkpoint, save_checkpoint
    from helpers import run_tool
    from model.checkpoint import checkpoint_dict
    from model.parity import calibration_inputs, randomize_batchnorm

    # fine-tuning starts from trained weights: BN statistics measured on data (norm_eval keeps
    # them, so a fresh model's identity statistics would blow the activations up)
    source = model.get_model("RepVGG-A0", num_classes=10)
    randomize_batchnorm(source, rng, calibration_inputs(rng, (2, 3, 16, 16)))
    initial = numpy_state_dict(source)
    weights = str(tmp_path / "init.pkl")
    save_checkpoint(checkpoint_dict(initial, "RepVGG-A0", "train"), weights)
    out = str(tmp_path / "run")
    proc = run_tool("train.py", "--arch", "RepVGG-A0", "--weights", weights, "--epochs", "1",
                    "--max-steps-per-epoch", "3", "--lr", "0.01", "--warmup-epochs", "0",
                    "--frozen-stages", "2", "--norm-eval", "--output", out,
                    "--image-size", "16", "--batch-size", "16", "--device", "cpu",
                    "--workers", "0", "--max-val-images", "16", "--eval-batch-size", "16",
                    "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trained = load_checkpoint(os.path.join(out, "latest.pkl"))["state_dict"]
    for key, value in initial.items():
        if key.startswith(("stage0.", "stage1.")) or "running_" in key:
            np.testing.assert_array_equal(trained[key], value, err_msg=key)
    for key in ("stage2.0.rbr_dense.conv.weight", "stage3.0.rbr_dense.bn.weight"):
        assert not np.array_equal(trained[key], initial[key]), key
    bad = run_tool("train.py", "--frozen-stages", "6", "--output", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "--frozen-stages" in bad.stderr
