"""Binary blocks: the aw_nas building blocks (``BinaryConvBNReLU``, ``SkipConnect``,
``ResNetDownSample``, ``BinaryResNetBlock``, ``BinaryVggBlock``, a NIN block) and BMXNet's
single-conv ResNetE block.

Every stride-2 path here gives ``ceil(H/2) x ceil(W/2)``, odd sizes included, so all primitives
built for the same ``(C_in, C_out, stride)`` give outputs of one shape (a search mixes them).
Deliberate differences from aw_nas are listed in ``model/binary/__init__.py``.
"""
import dataclasses

import megengine.functional as F
import megengine.module as M

from ..layers import ConvBn
from .config import BlockConfig, LayerOrder, Reduction
from .conv import BinaryConv2d


def avg_pool_2x2(x):
    """2x2 average pooling with stride 2 in ceil mode: on an odd size the last window averages
    only the pixels that exist (edge replication makes its mean exactly theirs)."""
    h, w = x.shape[2] % 2, x.shape[3] % 2
    if h or w:
        x = F.nn.pad(x, ((0, 0), (0, 0), (0, h), (0, w)), mode="replicate")
    return F.avg_pool2d(x, 2, 2)


def _check_channels(C_in, C_out, stride, what):
    if stride not in (1, 2):
        raise ValueError("%s: stride must be 1 or 2, got %r" % (what, stride))
    if C_out not in (C_in, 2 * C_in):
        raise ValueError("%s: C_out must be C_in or 2*C_in, got %d -> %d" % (what, C_in, C_out))


class SkipConnect(M.Module):
    """Parameter-free shortcut: 2x2 average pooling at stride 2, and the channels duplicated
    when ``C_out = 2*C_in`` (at stride 1 too; aw_nas returned the input unchanged there)."""

    def __init__(self, C_in, C_out, stride):
        super().__init__()
        _check_channels(C_in, C_out, stride, "SkipConnect")
        self.stride, self.duplicate = stride, C_out == 2 * C_in

    def forward(self, x):
        if self.stride == 2:
            x = avg_pool_2x2(x)
        return F.concat([x, x], axis=1) if self.duplicate else x


class ResNetDownSample(M.Module):
    """Option-A shortcut: keep every ``stride``-th pixel (the top-left one of each window, as
    aw_nas), then append ``C_out - C_in`` channels of true zeros (aw_nas multiplied the input by
    0, which turns ±inf into NaN)."""

    def __init__(self, C_in, C_out, stride=2):
        super().__init__()
        if C_out < C_in:
            raise ValueError("ResNetDownSample cannot reduce channels (%d -> %d)" % (C_in, C_out))
        self.stride, self.extra = stride, C_out - C_in

    def forward(self, x):
        s = self.stride
        if s > 1:
            x = x[:, :, ::s, ::s]
        if not self.extra:
            return x
        n, _, h, w = x.shape
        zeros = F.zeros((n, self.extra, h, w), dtype=x.dtype, device=x.device)
        return F.concat([x, zeros], axis=1)


class BinaryConvBNReLU(M.Module):
    """The basic binary block.

    - ``bn_conv_relu``: ``ReLU(conv(BN x) + S(BN x))`` (the shortcut carries the normalized
      input, as in aw_nas);
    - ``conv_bn_relu``: ``ReLU(BN(conv(x) + S(x)))``.

    ``S`` is the parameter-free ``SkipConnect`` when ``config.shortcut``, else nothing; ReLU only
    when ``config.relu``. At stride 2 with ``Reduction.FACTORIZED`` the conv is two convs of
    ``C_out/2`` channels, one on the input and one on the input shifted by one pixel (its last
    window on an odd size reaches into the padding), concatenated; both use the block's own conv
    configuration (aw_nas built them with the defaults, whatever the block's configuration).
    """

    def __init__(self, C_in, C_out, kernel_size, stride, config=BlockConfig(), groups=1,
                 dilation=1):
        super().__init__()
        self.config = config
        padding = dilation * (kernel_size - 1) // 2
        bn_channels = C_in if config.layer_order is LayerOrder.BN_CONV_RELU else C_out
        self.bn = M.BatchNorm2d(bn_channels, eps=config.bn_eps, momentum=config.bn_momentum,
                                affine=config.affine)
        self.factorized = stride == 2 and config.reduction is Reduction.FACTORIZED
        if self.factorized and C_out % 2:
            raise ValueError("factorized reduction needs an even C_out, got %d" % C_out)
        parts = 2 if self.factorized else 1
        self.convs = [BinaryConv2d(C_in, C_out // parts, kernel_size, stride, padding, dilation,
                                   groups, config.conv) for _ in range(parts)]
        self.shortcut = SkipConnect(C_in, C_out, stride) if config.shortcut else None

    def forward(self, x):
        pre_bn = self.config.layer_order is LayerOrder.BN_CONV_RELU
        if pre_bn:
            x = self.bn(x)
        if self.factorized:
            y = F.concat([self.convs[0](x), self.convs[1](x, shift=True)], axis=1)
        else:
            y = self.convs[0](x)
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        if not pre_bn:
            y = self.bn(y)
        return F.relu(y) if self.config.relu else y


class BinaryResNetBlock(M.Module):
    """Two ``BinaryConvBNReLU`` and a cell-level skip:
    ``inner = op_1(x) + skip(x)``, ``out = op_2(inner) + inner``.

    With ``config.shortcut`` each op also has its own inner shortcut, so the identity is added
    twice per op (aw_nas's and BMXNet's "double shortcut"). ``skip`` is the identity when the
    shape is kept, else by ``downsample``: ``"conv"`` a full-precision 1x1 Conv-BN-ReLU,
    ``"avgpool"`` ``ResNetDownSample``, ``"binary_conv"`` a 3x3 ``BinaryConvBNReLU``.
    """

    DOWNSAMPLES = ("conv", "avgpool", "binary_conv")

    def __init__(self, C_in, C_out, stride, config=BlockConfig(), kernel_size=3,
                 downsample="conv"):
        super().__init__()
        if downsample not in self.DOWNSAMPLES:
            raise ValueError("downsample must be one of %s, got %r" % (self.DOWNSAMPLES,
                                                                       downsample))
        self.op_1 = BinaryConvBNReLU(C_in, C_out, kernel_size, stride, config)
        self.op_2 = BinaryConvBNReLU(C_out, C_out, kernel_size, 1, config)
        if stride == 1 and C_in == C_out:
            self.skip_op = None
        elif downsample == "conv":
            self.skip_op = ConvBn(C_in, C_out, 1, stride=stride, relu=True)
        elif downsample == "avgpool":
            self.skip_op = ResNetDownSample(C_in, C_out, stride)
        else:
            self.skip_op = BinaryConvBNReLU(C_in, C_out, 3, stride, config)

    def forward(self, x):
        inner = self.op_1(x) + (x if self.skip_op is None else self.skip_op(x))
        return self.op_2(inner) + inner


class BinaryVggBlock(M.Module):
    """``pool(op(x))``: one stride-1 ``BinaryConvBNReLU`` without shortcut (a VGG block has none;
    the configuration is copied with ``shortcut=False``, never edited), then 2x2 average pooling
    at stride 2."""

    def __init__(self, C_in, C_out, stride, config=BlockConfig(), kernel_size=3):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError("BinaryVggBlock: stride must be 1 or 2, got %r" % stride)
        self.op = BinaryConvBNReLU(C_in, C_out, kernel_size, 1,
                                   dataclasses.replace(config, shortcut=False))
        self.stride = stride

    def forward(self, x):
        x = self.op(x)
        return avg_pool_2x2(x) if self.stride == 2 else x


class BinaryNIN(M.Module):
    """Network-in-network "mlpconv" block: a 3x3 binary conv (with the stride) followed by two
    1x1 binary convs, each a ``BinaryConvBNReLU`` without shortcut. (aw_nas's ``NIN`` never
    worked: undefined names, no ``super().__init__``, a hard-coded CIFAR-10 network ignoring its
    arguments; this is the block its layers repeat, with the primitive signature.)"""

    def __init__(self, C_in, C_out, stride, config=BlockConfig()):
        super().__init__()
        config = dataclasses.replace(config, shortcut=False)
        self.layers = [BinaryConvBNReLU(C_in, C_out, 3, stride, config),
                       BinaryConvBNReLU(C_out, C_out, 1, 1, config),
                       BinaryConvBNReLU(C_out, C_out, 1, 1, config)]

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class PoolConvShortcut(M.Module):
    """BMXNet's downsampling shortcut: 2x2 average pooling (at stride 2), then a full-precision
    1x1 conv and BN."""

    def __init__(self, C_in, C_out, stride, bn_momentum=0.9):
        super().__init__()
        self.stride = stride
        self.conv = M.Conv2d(C_in, C_out, 1, bias=False)
        self.bn = M.BatchNorm2d(C_out, momentum=bn_momentum)

    def forward(self, x):
        if self.stride == 2:
            x = avg_pool_2x2(x)
        return self.bn(self.conv(x))


class BinaryResNetEBlock(M.Module):
    """BMXNet's ResNetE ``BasicBlockE1``: ``BN(binary_conv3x3(x)) + residual(x)`` with
    ``residual`` the identity, or ``PoolConvShortcut`` when the shape changes. One binary conv
    per block and no ReLU."""

    def __init__(self, C_in, C_out, stride, conv_config, bn_momentum=0.9):
        super().__init__()
        self.conv = BinaryConv2d(C_in, C_out, 3, stride, 1, config=conv_config)
        self.bn = M.BatchNorm2d(C_out, momentum=bn_momentum)
        same = stride == 1 and C_in == C_out
        self.downsample = None if same else PoolConvShortcut(C_in, C_out, stride, bn_momentum)

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        return self.bn(self.conv(x)) + residual
