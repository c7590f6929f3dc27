"""QARepVGG (Chu et al. 2022): the block's structure, and its fusion checked against a NumPy
computation of the train-form block written here from the paper's definition."""
import numpy as np
import pytest

import megengine as mge

import model
from model.parity import check_parity, randomize_batchnorm, sample_inputs
from model import RepVGGBlock


def np_conv(x, kernel, stride, padding, groups):
    """Direct grouped convolution in float64; ``kernel`` in PyTorch layout (o, i/g, k, k)."""
    n, c, h, w = x.shape
    o, cg, k, _ = kernel.shape
    xp = np.pad(x, [(0, 0), (0, 0), (padding, padding), (padding, padding)])
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))
    win = win[:, :, ::stride, ::stride]  # (n, c, oh, ow, k, k)
    og = o // groups
    outs = [np.einsum("nchwij,ocij->nohw", win[:, g * cg:(g + 1) * cg],
                      kernel[g * og:(g + 1) * og]) for g in range(groups)]
    return np.concatenate(outs, axis=1)


def np_bn(x, bn):
    gamma, beta = bn.weight.numpy().ravel(), bn.bias.numpy().ravel()
    mean, var = bn.running_mean.numpy().ravel(), bn.running_var.numpy().ravel()
    shape = (1, -1, 1, 1)
    return ((x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + bn.eps)
            * gamma.reshape(shape) + beta.reshape(shape))


def torch_layout(kernel):
    return kernel.reshape(-1, *kernel.shape[-3:]).astype(np.float64)


def np_qarepvgg_block(block, x):
    """relu(postBN(BN(conv3x3(x)) + conv1x1(x) + x)), eval-mode BN, as in the paper's Fig. 4."""
    g, s = block.groups, block.stride
    out = np_bn(np_conv(x, torch_layout(block.rbr_dense.conv.weight.numpy()), s, 1, g),
                block.rbr_dense.bn)
    out = out + np_conv(x, torch_layout(block.rbr_1x1.weight.numpy()), s, 0, g)
    if block.in_channels == block.out_channels and s == 1:
        out = out + x
    return np.maximum(np_bn(out, block.bn), 0)


def randomize_plain_conv(block, rng):
    # The 1x1 conv has no BN to randomize; give it weights of the 3x3 branch's magnitude.
    w = block.rbr_1x1.weight
    w[...] = mge.tensor(rng.normal(0, 0.3, w.shape).astype(np.float32))


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("cin,cout,stride", [(16, 16, 1), (8, 16, 1), (16, 16, 2)])
def test_fused_block_matches_numpy_train_form(rng, groups, cin, cout, stride):
    block = RepVGGBlock(cin, cout, stride=stride, groups=groups, qa=True)
    x = sample_inputs(rng, (3, cin, 9, 9))
    randomize_plain_conv(block, rng)
    randomize_batchnorm(block, rng, x)
    expected = np_qarepvgg_block(block, x.astype(np.float64))
    train_out = block(mge.tensor(x)).numpy()
    np.testing.assert_allclose(train_out, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    block.switch_to_deploy()
    deploy_out = block(mge.tensor(x)).numpy()
    # float32 rounding of the fused sum: relative to the output's scale
    assert np.abs(deploy_out - expected).max() <= 1e-5 * np.abs(expected).max()


def test_block_structure_and_keys():
    block = RepVGGBlock(8, 8, qa=True)
    keys = set(block.state_dict())
    assert "rbr_1x1.weight" in keys and not any(k.startswith("rbr_1x1.bn") for k in keys)
    assert not any(k.startswith("rbr_identity") for k in keys)  # identity has no BN
    assert {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"} <= keys
    assert isinstance(block.rbr_identity, model.layers.M.Identity)
    assert RepVGGBlock(8, 16, qa=True).rbr_identity is None
    block.switch_to_deploy()
    assert sorted(block.state_dict()) == ["rbr_reparam.bias", "rbr_reparam.weight"]


def test_variants_registered_from_the_same_table():
    names = model.list_models()
    for name in model.REPVGG_VARIANTS:
        assert "QA" + name in names
    qa, plain = model.get_model("QARepVGG-A0", num_classes=10), model.get_model("RepVGG-A0",
                                                                               num_classes=10)
    assert all(b.qa for b in qa.stage2) and not any(b.qa for b in plain.stage2)
    # the deploy forms are the same network
    assert (set(model.get_model("QARepVGG-A0", deploy=True).state_dict())
            == set(model.get_model("RepVGG-A0", deploy=True).state_dict()))


def test_whole_model_parity(rng):
    net = model.RepVGG([1, 2, 1, 1], num_classes=7, width_multiplier=[0.25] * 4,
                       override_groups_map={2: 2}, qa=True)
    x = sample_inputs(rng, (2, 3, 32, 32))
    for _, m in net.named_modules():
        if isinstance(m, RepVGGBlock):
            randomize_plain_conv(m, rng)
    randomize_batchnorm(net, rng, x)
    result, deployed = check_parity("QARepVGG", net, x)
    assert result.max_rel <= 1e-5 and result.top1_agree == 1.0
    assert model.is_deploy(deployed)


def test_custom_l2_without_branch_bn(rng):
    block = RepVGGBlock(8, 8, qa=True)
    randomize_batchnorm(block, rng, sample_inputs(rng, (2, 8, 6, 6)))
    k3 = block.rbr_dense.conv.weight.numpy().astype(np.float64)
    k1 = block.rbr_1x1.weight.numpy().astype(np.float64)
    bn = block.rbr_dense.bn
    t3 = (bn.weight.numpy().ravel() / np.sqrt(bn.running_var.numpy().ravel() + bn.eps))
    t3 = t3[:, None, None, None]
    centre = k3[:, :, 1:2, 1:2]
    expected = (k3 ** 2).sum() - (centre ** 2).sum() + (
        (centre * t3 + k1) ** 2 / (t3 ** 2 + 1)).sum()
    np.testing.assert_allclose(float(block.get_custom_L2().numpy()), expected, rtol=1e-5)
