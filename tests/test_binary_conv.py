"""BinaryConv2d forward against a NumPy convolution for every weight and activation mode,
groups and dilation included (reference section 7.5, item 3), padding values, the latent-weight
clamp and the operation counts."""
import numpy as np
import pytest

import megengine as mge
from megengine.autodiff import GradManager

from binary_ref import np_binarize_weight, np_conv2d, np_sign, torch_layout
from model.binary.config import BinaryConvConfig
from model.binary.conv import BinaryConv2d

WEIGHT_MODES = ["fp", "sign", "xnor_tensor", "xnor_channel", "bireal_channel"]


def np_act(x, act_mode):
    return x if act_mode == "float" else np_sign(x)


@pytest.mark.parametrize("weight_mode", WEIGHT_MODES)
@pytest.mark.parametrize("groups,dilation,stride,pad_value", [
    (1, 1, 1, 0.0), (2, 1, 2, 0.0), (4, 2, 1, -1.0), (2, 1, 2, -1.0)])
def test_forward_matches_numpy(weight_mode, groups, dilation, stride, pad_value, rng):
    act_mode = "float" if weight_mode == "fp" else "sign"
    cfg = BinaryConvConfig(weight_mode=weight_mode, act_mode=act_mode, pad_value=pad_value)
    conv = BinaryConv2d(8, 12, 3, stride=stride, padding=dilation, dilation=dilation,
                        groups=groups, config=cfg)
    w = conv.weight.numpy().copy()
    w.flat[0] = 0.0  # sign(0) of a weight is +1 as well
    conv.weight[...] = mge.tensor(w)
    x = rng.standard_normal((2, 8, 7, 6)).astype(np.float32)
    x[0, 0, 0, :3] = 0.0
    y = conv(mge.tensor(x)).numpy()
    wt = torch_layout(w)  # MegEngine (g, out/g, in/g, k, k) -> (out, in/g, k, k)
    expected = np_conv2d(np_act(x, act_mode), np_binarize_weight(wt, weight_mode), stride,
                         dilation, dilation, groups, pad_value)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("groups", [1, 2])
def test_channel_scale_is_alpha_times_binary_conv(groups, rng):
    """conv(sign x, alpha_o sign W) == alpha_o * conv(sign x, sign W), alpha_o over
    (in/groups, kh, kw) of each output filter."""
    convs = {m: BinaryConv2d(4, 6, 3, padding=1, groups=groups,
                             config=BinaryConvConfig(weight_mode=m)) for m in
             ("xnor_channel", "sign")}
    convs["sign"].weight[...] = convs["xnor_channel"].weight
    x = mge.tensor(rng.standard_normal((1, 4, 5, 5)).astype(np.float32))
    alpha = np.abs(torch_layout(convs["sign"].weight.numpy())).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(convs["xnor_channel"](x).numpy(),
                               alpha[None, :, None, None] * convs["sign"](x).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_pad_value_reaches_the_border(rng):
    cfg = BinaryConvConfig(weight_mode="sign", pad_value=-1.0)
    conv = BinaryConv2d(1, 1, 3, padding=1, config=cfg)
    conv.weight[...] = mge.tensor(np.ones((1, 1, 3, 3), np.float32))
    y = conv(mge.tensor(np.ones((1, 1, 4, 4), np.float32))).numpy()[0, 0]
    assert y[1, 1] == 9 and y[0, 0] == 4 - 5 and y[0, 1] == 6 - 3
    zero = BinaryConv2d(1, 1, 3, padding=1, config=BinaryConvConfig(weight_mode="sign"))
    zero.weight[...] = conv.weight
    assert zero(mge.tensor(np.ones((1, 1, 4, 4), np.float32))).numpy()[0, 0, 0, 0] == 4


@pytest.mark.parametrize("size", [6, 5, 1])
def test_shift_offsets_the_grid_by_one_pixel(size, rng):
    conv = BinaryConv2d(2, 3, 3, stride=2, padding=1, config=BinaryConvConfig(pad_value=-1))
    x = rng.standard_normal((1, 2, size, size)).astype(np.float32)
    p = mge.Parameter(x)
    gm = GradManager().attach([p])
    with gm:  # backward must work on a 1x1 input too (the shifted view is all padding there)
        y = conv(p, shift=True)
        gm.backward(y.sum())
    # a stride-1 conv over the input padded (1, 2), sampled at the odd positions
    xp = np.pad(np_sign(x), ((0, 0), (0, 0), (1, 2), (1, 2)), constant_values=-1)
    out = -(-size // 2)
    full = np_conv2d(xp, np_binarize_weight(conv.weight.numpy(), "xnor_channel"))
    expected = full[:, :, 1::2, 1::2][:, :, :out, :out]
    assert y.shape == (1, 3, out, out) == expected.shape
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert np.isfinite(p.grad.numpy()).all()


@pytest.mark.parametrize("weight_mode", WEIGHT_MODES)
def test_after_optimizer_step_clamps_latent_weights(weight_mode, rng):
    conv = BinaryConv2d(2, 4, 3, groups=2, config=BinaryConvConfig(weight_mode=weight_mode))
    w = rng.uniform(-3, 3, conv.weight.shape).astype(np.float32)
    conv.weight[...] = mge.tensor(w)
    conv(mge.tensor(np.ones((1, 2, 3, 3), np.float32)))
    np.testing.assert_array_equal(conv.weight.numpy(), w)  # forward never mutates
    conv.after_optimizer_step()
    expected = w if weight_mode == "fp" else np.clip(w, -1, 1)
    np.testing.assert_array_equal(conv.weight.numpy(), expected)


def test_bias_and_gradients_flow_to_weight_and_bias(rng):
    conv = BinaryConv2d(3, 4, 1, config=BinaryConvConfig(bias=True, act_mode="float"))
    gm = GradManager().attach(conv.parameters())
    with gm:
        gm.backward(conv(mge.tensor(rng.standard_normal((2, 3, 2, 2)).astype("float32"))).sum())
    np.testing.assert_allclose(conv.bias.grad.numpy().ravel(), np.full(4, 8.0))
    assert np.abs(conv.weight.grad.numpy()).sum() > 0


def test_invalid_configurations_are_refused():
    with pytest.raises(ValueError):
        BinaryConvConfig(weight_mode="xnor")
    with pytest.raises(ValueError):
        BinaryConv2d(3, 4, 3, groups=2)
