"""Binary blocks and the primitive registry (reference section 7.5, items 6, 7 and 8)."""
import dataclasses

import numpy as np
import pytest

import megengine as mge

from binary_ref import np_binarize_weight, np_conv2d, np_sign
from model.binary import blocks, primitives
from model.binary.blocks import (BinaryConvBNReLU, BinaryResNetBlock, ResNetDownSample,
                                 SkipConnect)
from model.binary.config import BinaryConvConfig, BlockConfig
from model.binary.conv import BinaryConv2d
from model.binary.primitives import PRIMITIVE_NAMES, build_primitive

AW_NAS_NAMES = ("xnor_resnet_block", "bireal_resnet_block", "xnor_vgg_block",
                "bireal_vgg_block", "xnor_conv_3x3_noskip", "xnor_conv_1x1_noskip",
                "xnor_conv_3x3_cond_skip", "xnor_conv_3x3_cond_skip_v0", "xnor_skip_connect",
                "xnor_conv_3x3_skip_connect", "xnor_nin")


def modules_of(module, cls):
    return [m for _, m in module.named_modules() if isinstance(m, cls)]


def test_every_aw_nas_name_is_registered():
    assert sorted(PRIMITIVE_NAMES) == sorted(AW_NAS_NAMES)
    with pytest.raises(KeyError, match="unknown binary primitive 'xnor_conv_5x5'.*known"):
        build_primitive("xnor_conv_5x5", 8, 8, 1)


@pytest.mark.parametrize("name", AW_NAS_NAMES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("mult", [1, 2])
def test_shapes(name, stride, mult, rng):
    C = 4
    m = build_primitive(name, C, mult * C, stride)
    for h, w in [(8, 8), (7, 5), (1, 1)]:
        y = m(mge.tensor(rng.standard_normal((2, C, h, w)).astype(np.float32)))
        assert y.shape == (2, mult * C, -(-h // stride), -(-w // stride))
        assert np.isfinite(y.numpy()).all()


def test_primitive_refuses_unsupported_channel_ratios():
    with pytest.raises(ValueError, match="C_out in"):
        build_primitive("xnor_conv_3x3_noskip", 4, 12, 1)


# What each name must be, written out here independently of the registry's table.
INTENT = {  # name: (weight mode, act mode, layer order, shortcut at s1, at s2)
    "xnor_resnet_block": ("xnor_channel", "sign", "bn_conv_relu", True, True),
    "bireal_resnet_block": ("bireal_channel", "approx_sign", "conv_bn_relu", True, True),
    "xnor_vgg_block": ("xnor_tensor", "sign", "bn_conv_relu", False, False),
    "bireal_vgg_block": ("bireal_channel", "approx_sign", "conv_bn_relu", False, False),
    "xnor_conv_3x3_noskip": ("xnor_tensor", "sign", "bn_conv_relu", False, False),
    "xnor_conv_1x1_noskip": ("xnor_tensor", "sign", "bn_conv_relu", False, False),
    "xnor_conv_3x3_cond_skip_v0": ("xnor_tensor", "sign", "bn_conv_relu", True, False),
    "xnor_conv_3x3_cond_skip": ("xnor_tensor", "sign", "bn_conv_relu", True, True),
    "xnor_nin": ("xnor_tensor", "sign", "bn_conv_relu", False, False),
}


def check_intent(name, module, stride):
    weight, act, order, skip1, skip2 = INTENT[name]
    convs = modules_of(module, BinaryConv2d)
    assert convs, name
    for conv in convs:
        assert (conv.config.weight_mode.value, conv.config.act_mode.value) == (weight, act)
    for block in modules_of(module, BinaryConvBNReLU):
        assert block.config.layer_order.value == order
        if block.convs[0].stride == (1, 1) and stride == 2 and name.endswith("resnet_block"):
            continue  # op_2 of a reducing cell runs at stride 1
        assert (block.shortcut is not None) == (skip1 if stride == 1 else skip2), name


@pytest.mark.parametrize("order", [1, -1])
def test_effective_configuration_is_the_intent_in_any_build_order(order):
    """Build every primitive, in both orders, then check each one's effective configuration:
    nothing may leak between primitives (aw_nas's aliased dicts and late-binding lambdas)."""
    built = [(name, stride, build_primitive(name, 8, 8, stride))
             for name in PRIMITIVE_NAMES[::order] for stride in (1, 2)]
    for name, stride, module in built:
        if name in INTENT:
            check_intent(name, module, stride)
    assert {name for name, _, _ in built} >= set(INTENT)


def test_bireal_vgg_then_bireal_resnet_keeps_the_shortcut():
    build_primitive("bireal_vgg_block", 8, 8, 1)
    block = build_primitive("bireal_resnet_block", 8, 8, 1)
    assert block.op_1.shortcut is not None and block.op_2.shortcut is not None
    assert build_primitive("xnor_conv_3x3_cond_skip", 8, 16, 2).shortcut is not None


def test_configs_are_frozen():
    cfg = primitives.PRIMITIVES["xnor_conv_3x3_cond_skip"].block
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.shortcut = False


@pytest.mark.parametrize("name", ["bireal_resnet_block", "bireal_vgg_block"])
def test_bireal_primitives_binarize_activations(name, rng):
    m = build_primitive(name, 4, 4, 1)
    convs = modules_of(m, BinaryConv2d)
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    for conv in convs:  # each conv sees only sign(input): positive rescaling changes nothing
        np.testing.assert_array_equal(conv(mge.tensor(x)).numpy(),
                                      conv(mge.tensor(3.7 * x)).numpy())
        np.testing.assert_array_equal(conv(mge.tensor(x)).numpy(),
                                      conv(mge.tensor(np_sign(x))).numpy())
    if name == "bireal_vgg_block":  # conv -> BN -> ReLU, no shortcut: the block too (eval)
        m.eval()
        np.testing.assert_allclose(m(mge.tensor(x)).numpy(), m(mge.tensor(0.2 * x)).numpy(),
                                   rtol=1e-6)


def test_float_activation_conv_is_not_scale_invariant(rng):
    """The invariance check above can fail: a float-activation conv is linear in its input."""
    conv = BinaryConv2d(4, 4, 3, padding=1, config=BinaryConvConfig(act_mode="float"))
    x = mge.tensor(rng.standard_normal((1, 4, 6, 6)).astype(np.float32))
    assert not np.allclose(conv(x).numpy(), conv(3.7 * x).numpy())


def test_resnet_downsample_true_zeros_and_infinities():
    x = np.arange(2 * 3 * 5 * 5, dtype=np.float32).reshape(2, 3, 5, 5)
    x[0, 0, 0, 0], x[1, 2, 2, 4] = np.inf, -np.inf
    y = ResNetDownSample(3, 6, 2)(mge.tensor(x)).numpy()
    assert y.shape == (2, 6, 3, 3) and not np.isnan(y).any()
    np.testing.assert_array_equal(y[:, :3], x[:, :, ::2, ::2])  # top-left of each window
    assert (y[:, 3:] == 0).all() and not np.signbit(y[:, 3:]).any()
    assert y[0, 0, 0, 0] == np.inf and y[1, 2, 1, 2] == -np.inf
    with pytest.raises(ValueError):
        ResNetDownSample(6, 3)


def test_skip_connect_pools_in_ceil_mode_and_duplicates():
    x = np.arange(1 * 2 * 3 * 3, dtype=np.float32).reshape(1, 2, 3, 3)
    y = SkipConnect(2, 4, 2)(mge.tensor(x)).numpy()
    expected = np.empty((1, 2, 2, 2), np.float32)
    for i in range(2):
        for j in range(2):
            expected[:, :, i, j] = x[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(axis=(2, 3))
    np.testing.assert_allclose(y, np.concatenate([expected, expected], 1), rtol=1e-6)
    with pytest.raises(ValueError):
        SkipConnect(2, 6, 1)


@pytest.mark.parametrize("h,w", [(7, 7), (8, 5)])
@pytest.mark.parametrize("pad_value", [0.0, -1.0])
def test_factorized_reduce_against_numpy(h, w, pad_value, rng):
    conv_cfg = BinaryConvConfig(weight_mode="xnor_tensor", pad_value=pad_value)
    cfg = BlockConfig(conv=conv_cfg, layer_order="conv_bn_relu", relu=False, shortcut=False,
                      reduction="factorized")
    block = BinaryConvBNReLU(3, 4, 3, 2, cfg)
    block.eval()  # a fresh BN in eval mode divides by sqrt(1 + eps)
    assert all(c.config == conv_cfg for c in block.convs)  # the block's own weight mode
    x = rng.standard_normal((2, 3, h, w)).astype(np.float32)
    y = block(mge.tensor(x)).numpy() * np.sqrt(1 + 1e-5)
    xb = np_sign(x)
    w0, w1 = (np_binarize_weight(c.weight.numpy(), "xnor_tensor") for c in block.convs)
    # the two halves are a stride-1 conv (one extra padded row/column at the bottom/right)
    # sampled at even and at odd positions
    padded = np.pad(xb, ((0, 0), (0, 0), (1, 2), (1, 2)), constant_values=pad_value)
    oh, ow = -(-h // 2), -(-w // 2)
    y0 = np_conv2d(padded, w0)[:, :, 0::2, 0::2][:, :, :oh, :ow]
    y1 = np_conv2d(padded, w1)[:, :, 1::2, 1::2][:, :, :oh, :ow]
    assert y.shape == (2, 4, oh, ow) and y1.shape == (2, 2, oh, ow)
    np.testing.assert_allclose(y, np.concatenate([y0, y1], 1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("order", ["bn_conv_relu", "conv_bn_relu"])
def test_block_layer_orders(order, rng):
    cfg = BlockConfig(conv=BinaryConvConfig(weight_mode="sign"), layer_order=order)
    block = BinaryConvBNReLU(2, 2, 1, 1, cfg)
    block.eval()
    wmat = np.array([[0.5, -0.2], [0.3, 0.7]], np.float32)  # sign: [[1, -1], [1, 1]]
    block.convs[0].weight[...] = mge.tensor(wmat.reshape(2, 2, 1, 1))
    x = rng.standard_normal((1, 2, 3, 3)).astype(np.float32)
    y = block(mge.tensor(x)).numpy()
    k = 1 / np.sqrt(1 + 1e-5)  # fresh BN in eval mode

    def conv(v):
        return np.einsum("oc,nchw->nohw", np.sign(wmat), np_sign(v))
    if order == "bn_conv_relu":  # ReLU(conv(BN x) + BN x)
        expected = np.maximum(conv(k * x) + k * x, 0)
    else:  # ReLU(BN(conv x + x))
        expected = np.maximum(k * (conv(x) + x), 0)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_resnet_block_double_shortcut(rng):
    block = BinaryResNetBlock(2, 2, 1, BlockConfig(conv=BinaryConvConfig(weight_mode="sign")))
    block.eval()
    x = mge.tensor(rng.standard_normal((1, 2, 4, 4)).astype(np.float32))
    inner = block.op_1(x) + x
    np.testing.assert_allclose(block(x).numpy(), (block.op_2(inner) + inner).numpy(),
                               rtol=1e-6)
    for skip, cls in [("conv", blocks.ConvBn), ("avgpool", ResNetDownSample),
                      ("binary_conv", BinaryConvBNReLU)]:
        assert isinstance(BinaryResNetBlock(2, 4, 2, downsample=skip).skip_op, cls)


def test_skip_connect_primitives():
    assert isinstance(build_primitive("xnor_skip_connect", 4, 8, 1), SkipConnect)
    assert isinstance(build_primitive("xnor_conv_3x3_skip_connect", 4, 4, 1), SkipConnect)
    conv = build_primitive("xnor_conv_3x3_skip_connect", 4, 8, 2)
    assert isinstance(conv, BinaryConvBNReLU) and conv.shortcut is None
    assert len(modules_of(conv, BinaryConv2d)) == 2  # factorized reduction


def test_the_docs_primitive_table_is_current():
    import os
    page = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "docs", "binary.md")
    with open(page, encoding="utf-8") as f:
        assert primitives.primitive_table() in f.read()
