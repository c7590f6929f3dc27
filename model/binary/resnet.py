"""Binary ResNet-18 in the two styles that seed 000 compares, first and last layers in full
precision.

- stem ``awnas``: two 3x3 convs, Conv-BN-ReLU-Conv-BN (the stem seed 000 describes; the
  strides, 2 and 2, are our choice so the body starts at 1/4 resolution as in ResNet-18: the
  aw_nas configs with this stem are not public).
- stem ``bmxnet``: BMXNet-v2's ImageNet stem, BN(no affine)-Conv7x7/2-BN-ReLU-MaxPool3/2-BN.
- body ``awnas``: 8 ``xnor_resnet_block`` cells (2 binary 3x3 convs each; channels
  64, 64, 128, 128, 256, 256, 512, 512; stride 2 in cells 3, 5, 7). At stride 2 a cell's first
  conv is the factorized pair of binary convs next to the average-pool shortcut, and the cell
  skip is a full-precision 1x1 Conv-BN-ReLU.
- body ``bmxnet``: ResNetE-18, 16 single-conv blocks ``BN(binary_conv3x3(x)) + residual``,
  the residual at a shape change being AvgPool2 -> FP 1x1 conv -> BN (BMXNet's
  ``--pool-downsample-sc --fp-downsample-sc``, used by all its best runs); sign weights without
  scale, sign activations with gradient window 1.3, binarized input padded with -1; no ReLU in
  the blocks, ReLU before the global pool.
- head: global average pool and a full-precision linear layer.
"""
import megengine.functional as F
import megengine.module as M

from ..layers import GlobalAvgPool
from ..registry import register_model
from .blocks import BinaryResNetEBlock
from .config import BinaryConvConfig
from .primitives import build_primitive

# (C_out, stride) per cell / block; the input of the first is the stem's 64 channels.
AWNAS_CELLS = ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1))
BMXNET_BLOCKS = tuple((c, 2 if i == 0 and c != 64 else 1)
                      for c in (64, 128, 256, 512) for i in range(4))
BMXNET_CONV = BinaryConvConfig(weight_mode="sign", act_mode="sign", act_clip=1.3,
                               pad_value=-1.0)
STEM_CHANNELS = 64


def awnas_stem(width=STEM_CHANNELS):
    return M.Sequential(
        M.Conv2d(3, width, 3, stride=2, padding=1, bias=False), M.BatchNorm2d(width), M.ReLU(),
        M.Conv2d(width, width, 3, stride=2, padding=1, bias=False), M.BatchNorm2d(width))


def bmxnet_stem(width=STEM_CHANNELS):
    return M.Sequential(
        M.BatchNorm2d(3, affine=False),
        M.Conv2d(3, width, 7, stride=2, padding=3, bias=False), M.BatchNorm2d(width), M.ReLU(),
        M.MaxPool2d(3, stride=2, padding=1), M.BatchNorm2d(width))


STEMS = {"awnas": awnas_stem, "bmxnet": bmxnet_stem}


def awnas_body(C_in):
    layers = []
    for C_out, stride in AWNAS_CELLS:
        layers.append(build_primitive("xnor_resnet_block", C_in, C_out, stride))
        C_in = C_out
    return layers


def bmxnet_body(C_in):
    layers = []
    for C_out, stride in BMXNET_BLOCKS:
        layers.append(BinaryResNetEBlock(C_in, C_out, stride, BMXNET_CONV))
        C_in = C_out
    return layers


BODIES = {"awnas": awnas_body, "bmxnet": bmxnet_body}


class BinaryResNet18(M.Module):
    def __init__(self, num_classes=1000, stem="awnas", body="awnas"):
        super().__init__()
        if stem not in STEMS or body not in BODIES:
            raise ValueError("stem and body must be one of %s, got %r and %r"
                             % (sorted(STEMS), stem, body))
        self.stem = STEMS[stem]()
        self.body = BODIES[body](STEM_CHANNELS)
        self.relu_before_pool = body == "bmxnet"
        self.gap = GlobalAvgPool()
        self.linear = M.Linear(512, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.body:
            x = layer(x)
        if self.relu_before_pool:
            x = F.relu(x)
        return self.linear(self.gap(x))


def _builder(style):
    def build(deploy=False, num_classes=1000, **kwargs):  # no deploy form: deploy is ignored
        kwargs = {"stem": style, "body": style, **kwargs}
        return BinaryResNet18(num_classes=num_classes, **kwargs)
    return build


for _style in ("awnas", "bmxnet"):
    register_model("BinaryResNet18-" + _style, _builder(_style))
