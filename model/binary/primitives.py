"""The aw_nas binary primitives by name, each built from one frozen specification.

``build_primitive(name, C_in, C_out, stride)`` is the uniform factory (``C_out`` in
``{C_in, 2*C_in}``, stride 1 or 2). Specifications are immutable data read at build time, so
building one primitive can never change another (aw_nas aliased and mutated shared config dicts
and looked them up through late-binding lambdas: most primitives lost their shortcut, the
"Bi-Real" ones did not binarize activations). Each row below is the documented intent; the
Markdown table in docs/binary.md is generated from it (``python -m model.binary``).
"""
import dataclasses
from dataclasses import dataclass
from typing import Optional

from errors import UserKeyError

from .blocks import (BinaryConvBNReLU, BinaryNIN, BinaryResNetBlock, BinaryVggBlock,
                     SkipConnect)
from .config import BinaryConvConfig, BlockConfig

# aw_nas bi_w_scale 1 / act 0: one scalar alpha, sign activations.
XNOR_CONV = BinaryConvConfig(weight_mode="xnor_tensor", act_mode="sign")
# aw_nas xnor_ResNet_cfgs: bi_w_scale 2 (per-channel alpha, XNOR gradient), act 0.
XNOR_CHANNEL_CONV = BinaryConvConfig(weight_mode="xnor_channel", act_mode="sign")
# aw_nas bireal_binary_cfgs: bi_w_scale 3; act 3 was meant as Bi-Real's approx-sign.
BIREAL_CONV = BinaryConvConfig(weight_mode="bireal_channel", act_mode="approx_sign")

XNOR_RESNET = BlockConfig(conv=XNOR_CHANNEL_CONV, layer_order="bn_conv_relu", shortcut=True,
                          reduction="factorized")
BIREAL = BlockConfig(conv=BIREAL_CONV, layer_order="conv_bn_relu", shortcut=True,
                     reduction="conv")
XNOR_NOSKIP = BlockConfig(conv=XNOR_CONV, layer_order="bn_conv_relu", shortcut=False,
                          reduction="factorized")
XNOR_SKIP = dataclasses.replace(XNOR_NOSKIP, shortcut=True)


@dataclass(frozen=True)
class PrimitiveSpec:
    """``kind``: ``conv`` (one BinaryConvBNReLU), ``resnet``, ``vgg``, ``nin``, ``skip``
    (SkipConnect), ``skip_or_conv`` (SkipConnect at stride 1, a ``conv`` at stride 2).
    ``block`` configures stride 1, ``reduce_block`` stride 2 (default: ``block``)."""

    kind: str
    block: Optional[BlockConfig] = None
    reduce_block: Optional[BlockConfig] = None
    kernel_size: int = 3
    downsample: str = "conv"
    note: str = ""

    def block_for(self, stride):
        return self.reduce_block if stride == 2 and self.reduce_block else self.block


PRIMITIVES = {
    "xnor_resnet_block": PrimitiveSpec(
        "resnet", XNOR_RESNET, note="stride-2 cell skip: FP 1x1 Conv-BN-ReLU"),
    "bireal_resnet_block": PrimitiveSpec(
        "resnet", BIREAL, note="stride-2 cell skip: FP 1x1 Conv-BN-ReLU"),
    "xnor_vgg_block": PrimitiveSpec("vgg", XNOR_NOSKIP, note="stride 2: 2x2 avg pool after"),
    "bireal_vgg_block": PrimitiveSpec(
        "vgg", dataclasses.replace(BIREAL, shortcut=False), note="stride 2: 2x2 avg pool after"),
    "xnor_conv_3x3_noskip": PrimitiveSpec("conv", XNOR_NOSKIP),
    "xnor_conv_1x1_noskip": PrimitiveSpec("conv", XNOR_NOSKIP, kernel_size=1),
    "xnor_conv_3x3_cond_skip_v0": PrimitiveSpec(
        "conv", XNOR_SKIP, reduce_block=XNOR_NOSKIP, note="shortcut at stride 1 only"),
    "xnor_conv_3x3_cond_skip": PrimitiveSpec("conv", XNOR_SKIP),
    "xnor_skip_connect": PrimitiveSpec(
        "skip", note="avg pool at stride 2, channels duplicated for 2C"),
    "xnor_conv_3x3_skip_connect": PrimitiveSpec(
        "skip_or_conv", XNOR_NOSKIP, note="stride 1: SkipConnect; stride 2: the conv"),
    "xnor_nin": PrimitiveSpec("nin", XNOR_NOSKIP, note="3x3 (stride) + 1x1 + 1x1"),
}

PRIMITIVE_NAMES = tuple(PRIMITIVES)


class UnknownPrimitiveError(UserKeyError):
    """A primitive name that is not registered; the message lists the known ones."""


def primitive_spec(name):
    try:
        return PRIMITIVES[name]
    except KeyError:
        raise UnknownPrimitiveError("unknown binary primitive %r; known: %s"
                                    % (name, ", ".join(PRIMITIVE_NAMES))) from None


def build_primitive(name, C_in, C_out, stride):
    """A new module for primitive ``name`` mapping ``(N, C_in, H, W)`` to
    ``(N, C_out, ceil(H/stride), ceil(W/stride))``."""
    spec = primitive_spec(name)
    if C_out not in (C_in, 2 * C_in) or stride not in (1, 2):
        raise ValueError("%s: needs C_out in {C_in, 2*C_in} and stride 1 or 2, got %d -> %d, "
                         "stride %r" % (name, C_in, C_out, stride))
    block = spec.block_for(stride)
    kind = spec.kind
    if kind == "skip" or (kind == "skip_or_conv" and stride == 1):
        return SkipConnect(C_in, C_out, stride)
    if kind in ("conv", "skip_or_conv"):
        return BinaryConvBNReLU(C_in, C_out, spec.kernel_size, stride, block)
    if kind == "resnet":
        return BinaryResNetBlock(C_in, C_out, stride, block, spec.kernel_size, spec.downsample)
    if kind == "vgg":
        return BinaryVggBlock(C_in, C_out, stride, block, spec.kernel_size)
    if kind == "nin":
        return BinaryNIN(C_in, C_out, stride, block)
    raise AssertionError("unhandled primitive kind %r" % kind)


_KIND_MODULE = {"conv": "BinaryConvBNReLU", "resnet": "BinaryResNetBlock",
                "vgg": "BinaryVggBlock", "nin": "BinaryNIN", "skip": "SkipConnect",
                "skip_or_conv": "SkipConnect / BinaryConvBNReLU"}


def _yes_no(flag):
    return "yes" if flag else "no"


def primitive_table():
    """One Markdown table row per primitive, from the specifications above."""
    head = ("| primitive | module | kernel | weights | activations | layer order | "
            "shortcut s1 / s2 | stride-2 conv | notes |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = [head]
    for name, spec in PRIMITIVES.items():
        if spec.block is None:
            rows.append("| %s | %s | - | - | - | - | parameter-free | - | %s |"
                        % (name, _KIND_MODULE[spec.kind], spec.note))
            continue
        b1, b2 = spec.block_for(1), spec.block_for(2)
        kernel = "3x3, 1x1, 1x1" if spec.kind == "nin" else "%dx%d" % ((spec.kernel_size,) * 2)
        s1 = "skip" if spec.kind == "skip_or_conv" else _yes_no(b1.shortcut)
        reduction = "avg pool after" if spec.kind == "vgg" else b2.reduction.value
        rows.append("| %s | %s | %s | %s | %s | %s | %s / %s | %s | %s |" % (
            name, _KIND_MODULE[spec.kind], kernel, b1.conv.weight_mode.value,
            b1.conv.act_mode.value, b1.layer_order.value, s1, _yes_no(b2.shortcut),
            reduction, spec.note))
    return "\n".join(rows)

