"""Named variants: registry, official key names, parameter counts, train/deploy parity."""
import numpy as np
import pytest

import megengine as mge

import model
from model.parity import check_parity, randomize_batchnorm, sample_inputs


def official_param_count(num_blocks, width_multiplier, groups=1, use_se=False, deploy=False,
                         num_classes=1000):
    """Parameter count of the official PyTorch RepVGG, derived from its definition (repvgg.py):
    stage0 = block(3 -> min(64, 64a)), stages of widths 64a, 128a, 256a, 512b with a stride-2
    first block, groups on even block indices 2..26, SE(out, out // 16), Linear head.
    Counts nn.Parameters (conv weights, BN gamma/beta, biases), not BN running statistics."""
    a = width_multiplier
    widths = [int(64 * a[0]), int(128 * a[1]), int(256 * a[2]), int(512 * a[3])]
    blocks = [(3, min(64, int(64 * a[0])), 2, 1)]
    cin, index = blocks[0][1], 1
    for width, n in zip(widths, num_blocks):
        for stride in [2] + [1] * (n - 1):
            g = groups if (groups > 1 and index % 2 == 0 and index <= 26) else 1
            blocks.append((cin, width, stride, g))
            cin, index = width, index + 1
    total = 0
    for cin, cout, stride, g in blocks:
        if deploy:
            total += cout * (cin // g) * 9 + cout
        else:
            total += cout * (cin // g) * 9 + 2 * cout      # 3x3 conv + BN
            total += cout * (cin // g) + 2 * cout          # 1x1 conv + BN
            if cin == cout and stride == 1:
                total += 2 * cin                           # identity BN
        if use_se:
            r = cout // 16
            total += cout * r + r + r * cout + cout
    return total + widths[3] * num_classes + num_classes


# Deploy-form parameters in millions from the RepVGG paper (Ding et al. 2021, Table 3/4; the
# paper truncates to two decimals), and RepVGG-D2se's train-form count from the official README.
PAPER_DEPLOY_MILLIONS = {
    "RepVGG-A0": 8.30, "RepVGG-A1": 12.78, "RepVGG-A2": 25.49, "RepVGG-B0": 14.33,
    "RepVGG-B1": 51.82, "RepVGG-B1g2": 41.36, "RepVGG-B1g4": 36.12, "RepVGG-B2": 80.31,
    "RepVGG-B2g4": 55.77, "RepVGG-B3": 110.96, "RepVGG-B3g4": 75.62,
}
README_TRAIN_MILLIONS = {"RepVGG-D2se": 133.33}


def n_params(net):
    # Parameters only: MegEngine keeps BN running statistics as buffers, as PyTorch does.
    return sum(int(np.prod(p.shape)) for p in net.parameters())


def test_registry_lists_every_official_variant():
    names = model.list_models()
    for v in ["A0", "A1", "A2", "B0", "B1", "B1g2", "B1g4", "B2", "B2g2", "B2g4", "B3", "B3g2",
              "B3g4", "D2se"]:
        assert "RepVGG-" + v in names
    assert "RepVGGplus-L2pse" in names


def test_unknown_name_lists_known_ones():
    with pytest.raises(model.UnknownModelError) as e:
        model.get_model("RepVGG-A9")
    msg = str(e.value)
    assert "RepVGG-A9" in msg and "RepVGG-A0" in msg and "RepVGG-B3g4" in msg


@pytest.mark.parametrize("name", sorted(model.REPVGG_VARIANTS))
def test_param_counts_match_official(name):
    num_blocks, width, groups, use_se = model.REPVGG_VARIANTS[name]
    train, deploy = model.get_model(name), model.get_model(name, deploy=True)
    assert n_params(train) == official_param_count(num_blocks, width, groups, use_se)
    assert n_params(deploy) == official_param_count(num_blocks, width, groups, use_se, True)
    if name in PAPER_DEPLOY_MILLIONS:
        assert int(n_params(deploy) / 1e4) / 100 == PAPER_DEPLOY_MILLIONS[name]
    if name in README_TRAIN_MILLIONS:
        assert round(n_params(train) / 1e6, 2) == README_TRAIN_MILLIONS[name]


def test_grouped_variants_use_official_block_indices():
    net = model.get_model("RepVGG-B1g4", num_classes=10)
    blocks = [b for s in (net.stage1, net.stage2, net.stage3, net.stage4) for b in s]
    assert [b.groups for b in blocks] == [4 if i % 2 == 0 and i <= 26 else 1
                                         for i in range(1, 28)]
    assert net.stage0.groups == 1


def test_custom_groups_map():
    net = model.RepVGG([1, 2, 1, 1], num_classes=5, width_multiplier=[0.5, 0.5, 0.5, 0.5],
                       override_groups_map={3: 8, 5: 2})
    blocks = [b for s in (net.stage1, net.stage2, net.stage3, net.stage4) for b in s]
    assert [b.groups for b in blocks] == [1, 1, 8, 1, 2]
    assert net.stage2[1].rbr_dense.conv.weight.shape == (8, 8, 8, 3, 3)


def keys(net):
    # The state-dict keys, without copying every tensor to numpy as state_dict() does.
    return {n for n, _ in net.named_parameters()} | {n for n, _ in net.named_buffers()}


def test_official_key_names():
    train = keys(model.get_model("RepVGG-A0"))
    assert train == set(model.get_model("RepVGG-A0").state_dict())
    for key in ["stage0.rbr_dense.conv.weight", "stage0.rbr_1x1.bn.running_var",
                "stage1.0.rbr_1x1.bn.running_var", "stage1.1.rbr_identity.weight",
                "stage4.0.rbr_dense.bn.bias", "linear.weight", "linear.bias"]:
        assert key in train
    deploy = keys(model.get_model("RepVGG-A0", deploy=True))
    assert "stage3.13.rbr_reparam.weight" in deploy and "stage0.rbr_reparam.bias" in deploy
    se = keys(model.get_model("RepVGG-D2se"))
    assert "stage2.3.se.down.weight" in se
    plus = keys(model.get_model("RepVGGplus-L2pse"))
    for key in ["stage0.post_se.up.bias", "stage3_first.blocks.0.rbr_dense.conv.weight",
                "stage3_second.blocks.11.rbr_identity.running_mean", "stage1_aux.0.conv.weight",
                "stage1_aux.0.bn.running_var", "stage3_first_aux.3.weight"]:
        assert key in plus


@pytest.mark.parametrize("name", model.list_models())
def test_every_variant_deploy_equals_train(rng, name):
    net = model.get_model(name, num_classes=100)
    x = sample_inputs(rng, (2, 3, 64, 64))
    randomize_batchnorm(net, rng, x)
    result, deployed = check_parity(name, net, x)
    assert result.max_rel <= 1e-5, result
    assert result.top1_agree == 1.0
    assert model.is_deploy(deployed)


def test_repvggplus_aux_heads_train_only(rng):
    net = model.RepVGGplus([1, 2, 2, 1], num_classes=7, width_multiplier=[0.25] * 4,
                           use_post_se=True)
    x = mge.tensor(sample_inputs(rng, (2, 3, 32, 32)))
    net.train()
    out = net(x)
    assert sorted(out) == ["main", "stage1_aux", "stage2_aux", "stage3_first_aux"]
    assert all(v.shape == (2, 7) for v in out.values())
    net.eval()
    assert net(x).shape == (2, 7)
    deployed = model.convert_to_deploy(net)
    assert not any("aux" in k for k in deployed.state_dict())
    deployed.train()
    assert deployed(x).shape == (2, 7)  # deploy form never returns aux outputs
    n_deploy = model.get_model("RepVGGplus-L2pse", deploy=True)
    assert keys(n_deploy) == keys(model.convert_to_deploy(model.get_model("RepVGGplus-L2pse")))
