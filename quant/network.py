"""The deploy-form RepVGG as a chain MegEngine's quantization can work on.

A deploy-form RepVGG (or QARepVGG) is a plain chain: 3x3 conv with bias + ReLU, block after
block, then global average pooling and a linear classifier. ``megengine.quantization`` only
quantizes modules it knows (``ConvRelu2d``, ``ConvBnRelu2d``, ``Linear``, ...) between a
``QuantStub`` and a ``DequantStub``; a functional ``F.relu`` after a plain conv stays float. So
the chain is rebuilt here from those modules:

    QuantStub -> ConvRelu2d x N -> AdaptiveAvgPool2d(1) -> flatten -> Linear -> DequantStub

``with_bn=True`` builds ``ConvBnRelu2d`` layers instead: the fused conv (without bias) followed by
a BatchNorm again, the official RepVGG recipe for quantization-aware training. The BN is set so
that in eval mode it adds the fused bias and nothing else, and in train mode it starts out close
to that (its statistics are the measured statistics of the conv's output, see ``bn_statistics``).

``Layer`` is the float data of one conv (kernel in MegEngine's layout, 1-D bias, stride,
padding, dilation, groups) and the state-dict prefix it came from, so a fine-tuned chain maps
back to a deploy-form checkpoint of the original architecture (``deploy_state_dict``).
"""
import dataclasses

import numpy as np

import megengine as mge
import megengine.functional as F
import megengine.module as M

from errors import UserError
from model.layers import pair


class UnsupportedModelError(UserError):
    """A model whose deploy form is not a plain conv-ReLU chain (SE, RepVGGplus, binary, ...)."""


@dataclasses.dataclass
class Layer:
    name: str            # state-dict prefix in the deploy model, e.g. "stage1.0.rbr_reparam"
    kernel: np.ndarray   # (out, in, 3, 3) or (groups, out/groups, in/groups, 3, 3), float32
    bias: np.ndarray     # (out,)
    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int

    @property
    def in_channels(self):
        return self.kernel.shape[-3] * self.groups

    @property
    def out_channels(self):
        return self.bias.shape[0]



def chain_of(deploy_model, what="the model"):
    """``(layers, (linear_weight, linear_bias))`` of a deploy-form RepVGG / QARepVGG.

    Raises ``UnsupportedModelError`` for anything else (a one-line reason)."""
    from model import RepVGG

    if not isinstance(deploy_model, RepVGG):
        raise UnsupportedModelError(
            "%s is a %s; int8 quantization handles RepVGG and QARepVGG networks (plain "
            "conv-ReLU chains) only" % (what, type(deploy_model).__name__))
    blocks = [deploy_model.stage0] + [b for s in (deploy_model.stage1, deploy_model.stage2,
                                                  deploy_model.stage3, deploy_model.stage4)
                                      for b in s]
    names = ["stage0"] + ["stage%d.%d" % (s, i) for s in range(1, 5)
                          for i in range(len(getattr(deploy_model, "stage%d" % s)))]
    layers = []
    for name, block in zip(names, blocks):
        se = getattr(block, "se", None) if not block.se_after_relu else block.post_se
        if not isinstance(se, M.Identity):
            raise UnsupportedModelError(
                "%s: block %s has a squeeze-and-excitation unit, which int8 quantization does "
                "not support (use a variant without SE)" % (what, name))
        if not block.deploy:
            raise UnsupportedModelError("%s: block %s is not fused; convert to deploy form first"
                                        % (what, name))
        conv = block.rbr_reparam
        layers.append(Layer(name + ".rbr_reparam", conv.weight.numpy().copy(),
                            conv.bias.numpy().reshape(-1).copy(), pair(conv.stride),
                            pair(conv.padding), pair(conv.dilation), conv.groups))
    linear = (deploy_model.linear.weight.numpy().copy(), deploy_model.linear.bias.numpy().copy())
    return layers, linear


class QuantChain(M.Module):
    """QuantStub, conv-ReLU layers, global average pool, Linear, DequantStub (float modules that
    ``megengine.quantization.quantize_qat`` turns into their quantizable versions)."""

    def __init__(self, layers, linear, with_bn=False):
        super().__init__()
        self.names = [layer.name for layer in layers]
        self.quant = M.QuantStub()
        self.convs = [self._conv(layer, with_bn) for layer in layers]
        self.pool = M.AdaptiveAvgPool2d(1)
        weight, bias = linear
        self.linear = M.Linear(weight.shape[1], weight.shape[0])
        self.linear.weight[...] = mge.tensor(weight)
        self.linear.bias[...] = mge.tensor(bias)
        self.dequant = M.DequantStub()

    @staticmethod
    def _conv(layer, with_bn):
        args = (layer.in_channels, layer.out_channels, layer.kernel.shape[-1], layer.stride,
                layer.padding, layer.dilation, layer.groups)
        if with_bn:
            module = M.ConvBnRelu2d(*args, bias=False)
            module.conv.weight[...] = mge.tensor(layer.kernel)
            # eval mode BN(y) = y + bias; chain_with_bn sets statistics measured on data
            set_bn(module.bn, np.zeros_like(layer.bias), np.ones_like(layer.bias), layer.bias)
        else:
            module = M.ConvRelu2d(*args, bias=True)
            module.weight[...] = mge.tensor(layer.kernel)
            module.bias[...] = mge.tensor(layer.bias.reshape(module.bias.shape))
        return module

    def forward(self, x):
        x = self.quant(x)
        for conv in self.convs:
            x = conv(x)
        x = F.flatten(self.pool(x), 1)
        return self.dequant(self.linear(x))


def set_bn(bn, mean, var, bias):
    """Make ``bn`` compute ``y + bias`` in eval mode while holding the statistics
    ``mean``/``var`` of ``y``: gamma = sqrt(var + eps), beta = bias + mean."""
    shape = bn.running_mean.shape
    bn.running_mean[...] = mge.tensor(mean.reshape(shape).astype(np.float32))
    bn.running_var[...] = mge.tensor(var.reshape(shape).astype(np.float32))
    bn.weight[...] = mge.tensor(np.sqrt(var + bn.eps).reshape(shape).astype(np.float32))
    bn.bias[...] = mge.tensor((bias + mean).reshape(shape).astype(np.float32))


def bn_statistics(layers, linear, batches):
    """Per layer, the mean and variance over ``batches`` (numpy image batches) of each conv's
    output before its bias, averaged over batches as train-mode BN sees them."""
    chain = QuantChain(layers, linear)
    chain.eval()
    sums = [[0.0, 0.0] for _ in layers]
    count = 0
    for batch in batches:
        x = mge.tensor(np.asarray(batch, np.float32))
        for i, conv in enumerate(chain.convs):
            y = F.conv2d(x, conv.weight, None, conv.stride, conv.padding, conv.dilation,
                         conv.groups).numpy().astype(np.float64)
            sums[i][0] = sums[i][0] + y.mean(axis=(0, 2, 3))
            sums[i][1] = sums[i][1] + y.var(axis=(0, 2, 3))
            x = conv(x)
        count += 1
    if not count:
        raise UserError("no batches to measure BN statistics on")
    return [(m / count, v / count) for m, v in sums]


def chain_with_bn(layers, linear, batches):
    """The QAT starting point: ``QuantChain(with_bn=True)`` with BN statistics from data."""
    chain = QuantChain(layers, linear, with_bn=True)
    for module, layer, (mean, var) in zip(chain.convs, layers, bn_statistics(layers, linear,
                                                                            batches)):
        set_bn(module.bn, mean, var, layer.bias)
    return chain


def folded_layers(chain, layers):
    """The float ``Layer``\\ s of a (trained) chain: conv weights with eval-mode BN folded in.

    For a QAT chain these are the weights the fake-quantized network computed with: the folded
    kernel rounded to its per-tensor int8 grid (``fold_weight_bias``, MegEngine's own fold), and
    the Linear weight likewise. QAT trains the network *through* that rounding, so the unrounded
    weights are another network (on the digits A0 after 2 epochs: 34.5% top-1 unrounded, 93.6%
    rounded, against 94.2% fake-quantized); an int8 ``.onnx`` re-quantized from the rounded
    weights keeps the QAT accuracy (93.9% on ONNX Runtime and OpenVINO)."""
    from model.reparam import fuse_bn

    out = []
    for module, layer in zip(chain.convs, layers):
        conv = getattr(module, "conv", module)
        if hasattr(module, "fold_weight_bias"):  # a QAT ConvBn: fold as its forward does
            kernel, bias = module.fold_weight_bias(module.bn.running_mean, module.bn.running_var)
        elif hasattr(module, "bn"):
            kernel, bias = fuse_bn(conv.weight, module.bn)
        else:
            kernel, bias = conv.weight, conv.bias
        out.append(dataclasses.replace(layer, kernel=kernel.numpy().copy(),
                                       bias=bias.numpy().reshape(-1).copy()))
    weight = chain.linear.weight
    if hasattr(chain.linear, "apply_quant_weight"):
        weight = chain.linear.apply_quant_weight(weight)
    linear = (weight.numpy().copy(), chain.linear.bias.numpy().copy())
    return out, linear


def deploy_state_dict(layers, linear):
    """The deploy-form state dict (``stage*.rbr_reparam.*``, ``linear.*``) of a chain."""
    state = {}
    for layer in layers:
        state[layer.name + ".weight"] = layer.kernel.astype(np.float32)
        state[layer.name + ".bias"] = layer.bias.reshape(1, -1, 1, 1).astype(np.float32)
    state["linear.weight"], state["linear.bias"] = (a.astype(np.float32) for a in linear)
    return state
