"""RepVGG (Ding et al., CVPR 2021) in MegEngine, with the official PyTorch parameter names.

Train form: each block sums a 3x3 conv-BN, a 1x1 conv-BN and (when shapes allow) an identity BN.
Deploy form: each block is one 3x3 conv with bias, obtained by ``switch_to_deploy``.

QARepVGG (Chu et al. 2022, "Make RepVGG Greater Again: A Quantization-aware Approach") is the
same block with ``qa=True``: the 1x1 branch is a bare bias-free conv, the identity branch has no
BN, and one BN follows the sum ("post-BN"). Its fused kernel has no per-branch BN scales pulling
channel ranges apart, which is what makes the fused weights quantize well. The variants
``QARepVGG-A0`` ... are registered from the same table as ``RepVGG-A0`` ...
"""
import functools

import megengine.functional as F
import megengine.module as M

from . import reparam
from .finetune import Staged
from .layers import ConvBn, GlobalAvgPool, SEBlock
from .registry import register_model


class RepVGGBlock(M.Module):
    """One RepVGG block; fuses itself into a single 3x3 conv with ``switch_to_deploy()``.

    ``use_se`` adds squeeze-and-excitation: before the ReLU with reduction 16 as in RepVGG-D2se
    (attribute ``se``), or after it with ``se_after_relu=True`` as RepVGGplus does (attribute
    ``post_se``, reduction given by ``se_reduction``).

    ``qa=True`` makes it a QARepVGG block: ``rbr_1x1`` is a bias-free ``Conv2d`` (no BN),
    ``rbr_identity`` an ``M.Identity`` (no BN, no parameters), and ``bn`` a BatchNorm after the
    sum of the branches (before SE and ReLU). It fuses into the same single 3x3 conv.
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, dilation=1,
                 groups=1, deploy=False, use_se=False, se_after_relu=False, se_reduction=16,
                 qa=False):
        super().__init__()
        if kernel_size != 3:
            raise ValueError("RepVGGBlock fuses into a 3x3 conv; kernel_size must be 3")
        if padding != dilation:
            raise ValueError("RepVGGBlock keeps the spatial size of its 3x3 branch: padding "
                             "(%d) must equal dilation (%d)" % (padding, dilation))
        if in_channels % groups or out_channels % groups:
            raise ValueError("channels (%d -> %d) must be divisible by groups (%d)"
                             % (in_channels, out_channels, groups))
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.deploy = deploy
        self.se_after_relu = se_after_relu
        self.qa = qa

        se = SEBlock(out_channels, out_channels // se_reduction) if use_se else M.Identity()
        if se_after_relu:
            self.post_se = se
        else:
            self.se = se

        if deploy:
            self.rbr_reparam = self._fused_conv()
        else:
            has_identity = in_channels == out_channels and stride == 1
            self.rbr_dense = ConvBn(in_channels, out_channels, 3, stride, padding, dilation, groups)
            # The 1x1 branch samples the centre tap of every 3x3 window.
            if qa:
                self.rbr_identity = M.Identity() if has_identity else None
                self.rbr_1x1 = M.Conv2d(in_channels, out_channels, 1, stride=stride,
                                        padding=padding - dilation, groups=groups, bias=False)
                self.bn = M.BatchNorm2d(out_channels)
            else:
                self.rbr_identity = M.BatchNorm2d(in_channels) if has_identity else None
                self.rbr_1x1 = ConvBn(in_channels, out_channels, 1, stride, padding - dilation,
                                      groups=groups)

    def _fused_conv(self):
        return M.Conv2d(self.in_channels, self.out_channels, 3, stride=self.stride,
                        padding=self.padding, dilation=self.dilation, groups=self.groups,
                        bias=True)

    def forward(self, x):
        if self.deploy:
            out = self.rbr_reparam(x)
        else:
            out = self.rbr_dense(x) + self.rbr_1x1(x)
            if self.rbr_identity is not None:
                out = out + self.rbr_identity(x)
            if self.qa:
                out = self.bn(out)
        if self.se_after_relu:
            return self.post_se(F.relu(out))
        return F.relu(self.se(out))

    def get_equivalent_kernel_bias(self):
        """The single 3x3 kernel and 1-D bias equal to the three branches (eval-mode BN).

        Differentiable: usable for regularizers or quantization, not only for deployment.
        """
        kernel, bias = reparam.fuse_bn(self.rbr_dense.conv.weight, self.rbr_dense.bn)
        if self.qa:  # bare 1x1 and identity kernels, then the post-BN over the sum
            kernel = kernel + reparam.pad_to(self.rbr_1x1.weight, 3)
            if self.rbr_identity is not None:
                kernel = kernel + reparam.identity_kernel(self.in_channels, self.groups)
            return reparam.fuse_bn(kernel, self.bn, bias)
        k1, b1 = reparam.fuse_bn(self.rbr_1x1.conv.weight, self.rbr_1x1.bn)
        kernel, bias = kernel + reparam.pad_to(k1, 3), bias + b1
        if self.rbr_identity is not None:
            identity = reparam.identity_kernel(self.in_channels, self.groups)
            ki, bi = reparam.fuse_bn(identity, self.rbr_identity)
            kernel, bias = kernel + ki, bias + bi
        return kernel, bias

    def switch_to_deploy(self):
        """Replace the branches by one 3x3 conv with bias, in place. A second call does nothing."""
        if self.deploy:
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        fused = self._fused_conv()
        fused.weight[...] = kernel.detach()
        fused.bias[...] = bias.detach().reshape(fused.bias.shape)
        self.rbr_reparam = fused
        del self.rbr_dense, self.rbr_1x1, self.rbr_identity
        if self.qa:
            del self.bn
        self.deploy = True

    def get_custom_L2(self):
        """The official "custom L2" of a block: weight decay on the equivalent fused kernel.

        The 3x3 kernel's border is decayed as usual; its centre and the 1x1 kernel are decayed
        through their BN-scaled sum, normalised by the BN scales (which are treated as constants).
        A QARepVGG block's 1x1 branch has no BN: its scale is 1 (Chu et al. train without this
        term; it is defined so that ``--custwd`` still runs).
        """
        k3 = self.rbr_dense.conv.weight
        t3, _ = reparam.bn_scale_shift(self.rbr_dense.bn)
        if self.qa:
            k1, t1 = self.rbr_1x1.weight, F.ones_like(t3)
        else:
            k1 = self.rbr_1x1.conv.weight
            t1, _ = reparam.bn_scale_shift(self.rbr_1x1.bn)
        t3 = reparam._per_out_channel(t3.detach(), k3)
        t1 = reparam._per_out_channel(t1.detach(), k1)
        centre = k3[..., 1:2, 1:2]
        l2_border = (k3 ** 2).sum() - (centre ** 2).sum()
        eq_kernel = centre * t3 + k1 * t1
        return l2_border + (eq_kernel ** 2 / (t3 ** 2 + t1 ** 2)).sum()


def stage_widths(width_multiplier):
    """Output channels of stage0 and stages 1-4 for the official width multipliers (a, b)."""
    a = width_multiplier
    return [min(64, int(64 * a[0])), int(64 * a[0]), int(128 * a[1]), int(256 * a[2]),
            int(512 * a[3])]


class ClassifierHead:
    """timm's classifier helpers over ``forward_stages`` (``finetune.Staged``), ``gap`` and
    ``linear``."""

    def forward_features(self, x):
        """The last stage's feature map (N, C, H/32, W/32), before pooling."""
        self.apply_norm_modes()
        for x in self.forward_stages(x):
            pass
        return x

    def forward_head(self, x, pre_logits=False):
        """Global pool and classifier on ``forward_features``' output; ``pre_logits=True``
        stops after the pool (the (N, C) features the classifier reads)."""
        x = self.gap(x)
        return x if pre_logits else self.linear(x)

    def reset_classifier(self, num_classes):
        """A freshly initialised classifier for ``num_classes`` (0: none, ``forward`` returns
        the pooled features)."""
        self.linear = self._classifier(num_classes)

    def _classifier(self, num_classes):
        width = self.num_features
        return M.Linear(width, num_classes) if num_classes > 0 else M.Identity()


class RepVGG(ClassifierHead, Staged, M.Module):
    """stage0 (one stride-2 block) and four stages of blocks, global pool, linear classifier.

    ``override_groups_map`` maps a block's index (1 = first block after stage0) to its groups;
    ``qa=True`` builds QARepVGG blocks (see ``RepVGGBlock``). Stage ``i`` (``STAGE_LAYOUT``,
    ``model.finetune``) has stride ``2**(i+1)``.
    """

    STAGE_LAYOUT = (("stage0",), ("stage1",), ("stage2",), ("stage3",), ("stage4",))

    def __init__(self, num_blocks, num_classes=1000, width_multiplier=(1, 1, 1, 1),
                 override_groups_map=None, deploy=False, use_se=False, qa=False):
        super().__init__()
        if len(num_blocks) != 4 or len(width_multiplier) != 4:
            raise ValueError("num_blocks and width_multiplier need one entry per stage (4)")
        groups_map = dict(override_groups_map or {})
        if 0 in groups_map:
            raise ValueError("stage0 (block 0) cannot be grouped: its input has 3 channels")
        self.deploy = deploy
        widths = stage_widths(width_multiplier)
        block = functools.partial(RepVGGBlock, deploy=deploy, use_se=use_se, qa=qa)
        self.stage0 = block(3, widths[0], stride=2)
        in_planes, index = widths[0], 1
        for stage, (planes, n) in enumerate(zip(widths[1:], num_blocks), start=1):
            blocks = []
            for stride in [2] + [1] * (n - 1):
                blocks.append(block(in_planes, planes, stride=stride,
                                    groups=groups_map.get(index, 1)))
                in_planes, index = planes, index + 1
            setattr(self, "stage%d" % stage, blocks)
        self.gap = GlobalAvgPool()
        self.num_features = widths[4]
        self.linear = self._classifier(num_classes)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def custom_l2(model):
    """Sum of ``get_custom_L2`` over every train-form block of ``model``."""
    total = 0.0
    for _, m in model.named_modules():
        if isinstance(m, RepVGGBlock) and not m.deploy:
            total = total + m.get_custom_L2()
    return total


# Official block indices that use grouped convs in the g2/g4 variants.
GROUPWISE_LAYERS = tuple(range(2, 27, 2))

# The official model factory, as data: name -> (num_blocks, width_multiplier, groups, use_se).
REPVGG_VARIANTS = {
    "RepVGG-A0": ((2, 4, 14, 1), (0.75, 0.75, 0.75, 2.5), 1, False),
    "RepVGG-A1": ((2, 4, 14, 1), (1, 1, 1, 2.5), 1, False),
    "RepVGG-A2": ((2, 4, 14, 1), (1.5, 1.5, 1.5, 2.75), 1, False),
    "RepVGG-B0": ((4, 6, 16, 1), (1, 1, 1, 2.5), 1, False),
    "RepVGG-B1": ((4, 6, 16, 1), (2, 2, 2, 4), 1, False),
    "RepVGG-B1g2": ((4, 6, 16, 1), (2, 2, 2, 4), 2, False),
    "RepVGG-B1g4": ((4, 6, 16, 1), (2, 2, 2, 4), 4, False),
    "RepVGG-B2": ((4, 6, 16, 1), (2.5, 2.5, 2.5, 5), 1, False),
    "RepVGG-B2g2": ((4, 6, 16, 1), (2.5, 2.5, 2.5, 5), 2, False),
    "RepVGG-B2g4": ((4, 6, 16, 1), (2.5, 2.5, 2.5, 5), 4, False),
    "RepVGG-B3": ((4, 6, 16, 1), (3, 3, 3, 5), 1, False),
    "RepVGG-B3g2": ((4, 6, 16, 1), (3, 3, 3, 5), 2, False),
    "RepVGG-B3g4": ((4, 6, 16, 1), (3, 3, 3, 5), 4, False),
    "RepVGG-D2se": ((8, 14, 24, 1), (2.5, 2.5, 2.5, 5), 1, True),
}


def _build(num_blocks, width_multiplier, groups, use_se, deploy=False, num_classes=1000,
           qa=False):
    groups_map = {layer: groups for layer in GROUPWISE_LAYERS} if groups > 1 else None
    return RepVGG(num_blocks, num_classes, width_multiplier, groups_map, deploy, use_se, qa)


# Every variant twice: RepVGG-X, and QARepVGG-X with the quantization-friendly block.
for _name, _spec in REPVGG_VARIANTS.items():
    register_model(_name, functools.partial(_build, *_spec))
    register_model("QA" + _name, functools.partial(_build, *_spec, qa=True))
