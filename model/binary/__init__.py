"""Binary search blocks: straight-through estimators, binary convolutions with every aw_nas
scale mode, the aw_nas primitive registry, binary ResNet-18 (registered as
``BinaryResNet18-awnas`` and ``BinaryResNet18-bmxnet``).

Modules: ``config`` (frozen configurations), ``ste`` (autodiff Functions), ``conv``
(``BinaryConv2d``), ``blocks``, ``primitives`` (``PRIMITIVE_NAMES``, ``build_primitive``),
``resnet``.

Deliberate differences from aw_nas (``aw_nas/ops/bnn_ops.py``):

1. ``sign(0) = +1`` for activations and weights (aw_nas: PyTorch's sign, 0).
2. Gradient windows keep their boundary (``|v| <= t`` passes); aw_nas zeroed ``|x| = 1.3`` and,
   in mode 3, the weights at exactly ±1, which then could not move back inside.
3. Activation and weight binarization are two autodiff Functions, so Bi-Real's approx-sign
   gradient reaches the tape (aw_nas computed it inside another Function's forward: lost).
4. The Bi-Real primitives binarize activations (approx-sign); aw_nas's ``bi_act_method=3``
   fell through to "no binarization".
5. Weight modes have names (``fp``, ``sign``, ``xnor_tensor``, ``xnor_channel``,
   ``bireal_channel``); the ``xnor_channel`` gradient drops the ``n·(1-1/C)`` factor unless
   ``legacy_xnor_grad_scale=True``; ``bireal_channel`` may pass the gradient through the scale
   (``magnitude_aware=True``, off by default as in aw_nas).
6. Latent weights are clamped to [-1, 1] after the optimizer step (``after_optimizer_step``),
   not inside every forward (which also ran in eval and would be baked into a traced graph).
7. Groups and dilation work (aw_nas asserted them to 1); the pad value of the binarized input
   is configurable (0 as aw_nas, -1 as BMXNet).
8. Frozen configurations instead of shared mutable dicts: every primitive has the shortcut its
   name promises (aw_nas: most had none), ``cond_skip_v0`` has it at stride 1 only.
9. The factorized stride-2 convs use the block's own configuration (aw_nas: the defaults).
   The second half is the same conv on the grid shifted by one pixel: its windows see the
   real first row/column (aw_nas sliced ``x[:, :, 1:, 1:]`` and padded again, replacing it by
   padding) and, on odd sizes, one extra row/column of padding at the bottom/right (aw_nas
   padded zeros at the top/left of the float input, which moved the *first* half's grid).
10. ``SkipConnect`` at stride 1 with ``C_out = 2·C_in`` duplicates channels (aw_nas returned
    the input unchanged: wrong shape); every stride-2 path is ceil mode, so all primitives
    agree on the output size for odd inputs.
11. ``ResNetDownSample`` appends true zeros (aw_nas: ``x·0``, NaN for ±inf) and checks
    channels.
12. ``xnor_nin`` is a working network-in-network block with the primitive signature (aw_nas's
    NIN class could not be constructed).
13. BatchNorm momentum 0.9 in MegEngine's convention = PyTorch 0.1, the usual value; aw_nas's
    PyTorch 0.9 (MegEngine 0.1) reads like a convention slip (``BlockConfig.bn_momentum``).
14. ``affine`` is honoured (aw_nas always built affine BN); no bias on binary convs by default,
    no hard-coded ``.cuda()``.
"""
from .blocks import (BinaryConvBNReLU, BinaryNIN, BinaryResNetBlock, BinaryResNetEBlock,
                     BinaryVggBlock, ResNetDownSample, SkipConnect)
from .config import ActMode, BinaryConvConfig, BlockConfig, LayerOrder, Reduction, WeightMode
from .conv import BinaryConv2d
from .primitives import PRIMITIVE_NAMES, PRIMITIVES, build_primitive, primitive_table
from .resnet import BinaryResNet18

__all__ = [
    "ActMode", "BinaryConvConfig", "BlockConfig", "LayerOrder", "Reduction", "WeightMode",
    "BinaryConv2d", "BinaryConvBNReLU", "BinaryNIN", "BinaryResNetBlock", "BinaryResNetEBlock",
    "BinaryVggBlock", "ResNetDownSample", "SkipConnect", "PRIMITIVE_NAMES", "PRIMITIVES",
    "build_primitive", "primitive_table", "BinaryResNet18",
]
