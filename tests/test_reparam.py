"""The fusion arithmetic, checked against NumPy computations written independently here."""
import numpy as np
import pytest

import megengine as mge
import megengine.functional as F

from model.parity import randomize_batchnorm, sample_inputs
from model import RepVGGBlock, convert_to_deploy, is_deploy
from model.reparam import identity_kernel, pad_to


def np_bn_scale(bn):
    gamma, beta = bn.weight.numpy().ravel(), bn.bias.numpy().ravel()
    mean, var = bn.running_mean.numpy().ravel(), bn.running_var.numpy().ravel()
    t = gamma / np.sqrt(var + bn.eps)
    return t, beta - mean * t


def torch_layout(kernel, groups):
    """MegEngine (g, o/g, i/g, k, k) -> PyTorch-style (o, i/g, k, k)."""
    return kernel.reshape(-1, *kernel.shape[-3:]) if groups > 1 else kernel


def np_fused_kernel(block):
    """The fused 3x3 kernel in PyTorch's (out, in/groups, 3, 3) layout, built in NumPy the way
    the official code does: per-branch BN scaling, 1x1 placed at the centre, identity as
    kernel[i, i % (in/groups), 1, 1] = 1."""
    g, cin, cout = block.groups, block.in_channels, block.out_channels
    k3 = torch_layout(block.rbr_dense.conv.weight.numpy(), g)
    k1 = torch_layout(block.rbr_1x1.conv.weight.numpy(), g)
    t3, s3 = np_bn_scale(block.rbr_dense.bn)
    t1, s1 = np_bn_scale(block.rbr_1x1.bn)
    kernel = k3 * t3[:, None, None, None]
    kernel[:, :, 1, 1] += k1[:, :, 0, 0] * t1[:, None]
    bias = s3 + s1
    if block.rbr_identity is not None:
        ti, si = np_bn_scale(block.rbr_identity)
        per_group = cin // g
        for i in range(cout):
            kernel[i, i % per_group, 1, 1] += ti[i]
        bias = bias + si
    return kernel, bias


@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("cin,cout,stride", [(16, 16, 1), (8, 16, 1), (16, 16, 2)])
def test_fused_kernel_matches_numpy(rng, groups, cin, cout, stride):
    block = RepVGGBlock(cin, cout, stride=stride, groups=groups)
    randomize_batchnorm(block, rng, sample_inputs(rng, (4, cin, 10, 10)))
    kernel, bias = block.get_equivalent_kernel_bias()
    kernel = kernel.numpy()
    expected_shape = (groups, cout // groups, cin // groups, 3, 3) if groups > 1 else (cout, cin, 3, 3)
    assert kernel.shape == expected_shape
    ref_kernel, ref_bias = np_fused_kernel(block)
    np.testing.assert_allclose(torch_layout(kernel, groups), ref_kernel, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(bias.numpy(), ref_bias, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channels,groups", [(8, 1), (8, 2), (12, 4), (6, 6)])
def test_identity_kernel_per_group(channels, groups):
    kernel = identity_kernel(channels, groups).numpy()
    per_group = channels // groups
    if groups == 1:
        assert kernel.shape == (channels, channels, 3, 3)
        kernel = kernel[None]
    assert kernel.shape == (groups, per_group, per_group, 3, 3)
    for g in range(groups):
        np.testing.assert_array_equal(kernel[g, :, :, 1, 1], np.eye(per_group))
    off_centre = kernel.copy()
    off_centre[..., 1, 1] = 0
    assert not off_centre.any()


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_identity_kernel_convolves_to_input(rng, groups):
    x = rng.standard_normal((2, 8, 5, 7)).astype(np.float32)
    y = F.conv2d(mge.tensor(x), identity_kernel(8, groups), padding=1, groups=groups)
    np.testing.assert_array_equal(y.numpy(), x)


def test_pad_1x1_to_3x3(rng):
    k = rng.standard_normal((2, 3, 4, 1, 1)).astype(np.float32)
    padded = np.array(pad_to(mge.tensor(k), 3).numpy())
    assert padded.shape == (2, 3, 4, 3, 3)
    np.testing.assert_array_equal(padded[..., 1, 1], k[..., 0, 0])
    padded[..., 1, 1] = 0
    assert not padded.any()


def test_switch_to_deploy_in_place_and_idempotent(rng):
    block = RepVGGBlock(32, 32, groups=2, use_se=True)
    x = sample_inputs(rng, (2, 32, 9, 9))
    randomize_batchnorm(block, rng, x)
    before = block(mge.tensor(x)).numpy()
    same = block
    block.switch_to_deploy()
    assert block is same and block.deploy
    for branch in ("rbr_dense", "rbr_1x1", "rbr_identity"):
        assert not hasattr(block, branch)
    keys = sorted(block.state_dict())
    assert keys == ["rbr_reparam.bias", "rbr_reparam.weight", "se.down.bias", "se.down.weight",
                    "se.up.bias", "se.up.weight"]
    weights = {k: v.copy() for k, v in block.state_dict().items()}
    block.switch_to_deploy()  # harmless second call
    for k, v in block.state_dict().items():
        np.testing.assert_array_equal(v, weights[k])
    after = block(mge.tensor(x)).numpy()
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5 * np.abs(before).max())


def test_convert_copies_unless_in_place(rng):
    block = RepVGGBlock(4, 4)
    deployed = convert_to_deploy(block)
    assert deployed is not block and not block.deploy and deployed.deploy
    assert hasattr(block, "rbr_dense")
    assert is_deploy(deployed) and not is_deploy(block)
    again = convert_to_deploy(deployed, inplace=True)
    assert again is deployed and is_deploy(again)


def test_custom_l2_matches_numpy(rng):
    block = RepVGGBlock(8, 8, groups=2)
    randomize_batchnorm(block, rng, sample_inputs(rng, (2, 8, 6, 6)))
    k3 = torch_layout(block.rbr_dense.conv.weight.numpy(), 2).astype(np.float64)
    k1 = torch_layout(block.rbr_1x1.conv.weight.numpy(), 2).astype(np.float64)
    t3 = np_bn_scale(block.rbr_dense.bn)[0][:, None, None, None]
    t1 = np_bn_scale(block.rbr_1x1.bn)[0][:, None, None, None]
    centre = k3[:, :, 1:2, 1:2]
    expected = (k3 ** 2).sum() - (centre ** 2).sum() + (
        (centre * t3 + k1 * t1) ** 2 / (t3 ** 2 + t1 ** 2)).sum()
    np.testing.assert_allclose(float(block.get_custom_L2().numpy()), expected, rtol=1e-5)
