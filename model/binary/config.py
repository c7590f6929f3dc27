"""Frozen configurations of binary convolutions and binary blocks.

A configuration is plain immutable data: building a module reads it and never changes it, so two
modules built from one configuration can never influence each other (aw_nas shared mutable dicts
between its primitives, which switched shortcuts off behind the caller's back). Derive a variant
with ``dataclasses.replace``.

Weight modes (``W`` the latent weight, ``α`` a mean of ``|W|``; aw_nas's ``bi_w_scale`` number in
brackets):

- ``fp`` [-1]: the latent weight itself (full-precision conv).
- ``sign`` [0]: BinaryConnect, ``sign(W)``.
- ``xnor_tensor`` [1]: ``α·sign(W)`` with one scalar ``α = mean|W|`` over the whole tensor.
- ``xnor_channel`` [2]: ``α_o·sign(W_o)`` with ``α_o`` the mean of ``|W|`` over each output
  filter (``C_in/groups·kh·kw`` elements), with the XNOR-Net gradient through ``α_o``.
- ``bireal_channel`` [3]: the same forward; the gradient is the masked straight-through one
  unless ``magnitude_aware`` also lets it flow through ``α_o`` (Bi-Real / BMXNet "binet").

Activation modes: ``float`` (no binarization), ``sign`` (clipped straight-through estimator),
``approx_sign`` (Bi-Real's piecewise-polynomial gradient). ``sign(0)`` is +1 everywhere.

BatchNorm momentum is in MegEngine's convention, the weight of the *old* running value:
``running = momentum·running + (1 - momentum)·batch``. We use 0.9 (PyTorch's usual 0.1). aw_nas
passes PyTorch ``momentum=0.9``, which keeps only 10 % of the history; that reads like a
Keras/MXNet-convention slip, makes the evaluation statistics those of the last few batches, and
nothing in aw_nas depends on it, so we keep the standard behaviour (set ``bn_momentum=0.1`` to
reproduce aw_nas exactly).
"""
import enum
from dataclasses import dataclass, field
from typing import Optional


class WeightMode(str, enum.Enum):
    FP = "fp"
    SIGN = "sign"
    XNOR_TENSOR = "xnor_tensor"
    XNOR_CHANNEL = "xnor_channel"
    BIREAL_CHANNEL = "bireal_channel"


class ActMode(str, enum.Enum):
    FLOAT = "float"
    SIGN = "sign"
    APPROX_SIGN = "approx_sign"


@dataclass(frozen=True)
class BinaryConvConfig:
    """How one ``BinaryConv2d`` binarizes its input and its weight.

    - ``act_clip``: the sign STE passes the gradient where ``|x| <= act_clip`` (boundary kept);
      ``None`` passes it everywhere. aw_nas uses 1.3 (and zeroes the boundary itself).
    - ``weight_clip``: window of the weight STE in the ``sign``, ``xnor_channel`` and
      ``bireal_channel`` modes: the gradient passes where ``|W| <= weight_clip``.
    - ``tensor_clip``: in ``xnor_tensor`` mode the window is ``|W| <= tensor_clip·α`` (aw_nas's
      only "threshold times scale" rule).
    - ``legacy_xnor_grad_scale``: multiply the ``xnor_channel`` weight gradient by
      ``n·(1 - 1/C)`` (n = elements per filter, C = input channels per group), as aw_nas and
      XNOR-Net's Torch code do. Off by default: it is a huge effective learning rate with SGD.
    - ``magnitude_aware``: in ``bireal_channel`` mode, also pass the gradient through ``α_o``.
    - ``pad_value``: value of the border taps of the binarized input (0 as aw_nas, -1 as BMXNet).
    """

    weight_mode: WeightMode = WeightMode.XNOR_CHANNEL
    act_mode: ActMode = ActMode.SIGN
    act_clip: Optional[float] = 1.3
    weight_clip: float = 1.0
    tensor_clip: float = 1.3
    legacy_xnor_grad_scale: bool = False
    magnitude_aware: bool = False
    pad_value: float = 0.0
    bias: bool = False

    def __post_init__(self):
        # Accept the plain strings too, and fail on unknown names at construction time.
        object.__setattr__(self, "weight_mode", WeightMode(self.weight_mode))
        object.__setattr__(self, "act_mode", ActMode(self.act_mode))

    @property
    def binary_weights(self):
        return self.weight_mode is not WeightMode.FP

    @property
    def binary_acts(self):
        return self.act_mode is not ActMode.FLOAT


class LayerOrder(str, enum.Enum):
    CONV_BN_RELU = "conv_bn_relu"  # ReLU(BN(conv(x) + S(x)))
    BN_CONV_RELU = "bn_conv_relu"  # ReLU(conv(BN x) + S(BN x))


class Reduction(str, enum.Enum):
    CONV = "conv"  # one strided binary conv
    FACTORIZED = "factorized"  # two strided binary convs, C_out/2 each, on grids offset by one


@dataclass(frozen=True)
class BlockConfig:
    """Configuration of a ``BinaryConvBNReLU`` (and of the blocks made of it)."""

    conv: BinaryConvConfig = field(default_factory=BinaryConvConfig)
    layer_order: LayerOrder = LayerOrder.BN_CONV_RELU
    relu: bool = True
    shortcut: bool = True
    reduction: Reduction = Reduction.CONV
    affine: bool = True
    bn_momentum: float = 0.9  # MegEngine convention (= PyTorch 0.1), see the module docstring
    bn_eps: float = 1e-5

    def __post_init__(self):
        object.__setattr__(self, "layer_order", LayerOrder(self.layer_order))
        object.__setattr__(self, "reduction", Reduction(self.reduction))
