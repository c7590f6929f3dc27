"""FBNet's candidate blocks (Wu et al., CVPR 2019), pure MegEngine.

The nine blocks of the FBNet search space, named as in the AnnaAraslanova/FBNet code that the
reference reading follows (``ir_k{3,5}_s2`` is the paper's "k{3,5}_e1_g2"):

=========  =========  ======  ===========================================
name       expansion  kernel  pointwise convs
=========  =========  ======  ===========================================
ir_k3_e1   1          3       dense
ir_k3_s2   1          3       2 groups, channel shuffle after the first
ir_k3_e3   3          3       dense
ir_k3_e6   6          3       dense
ir_k5_e1   1          5       dense
ir_k5_s2   1          5       2 groups, channel shuffle after the first
ir_k5_e3   3          5       dense
ir_k5_e6   6          5       dense
skip       -          -       identity, or a 1x1 conv-BN-ReLU (see ``Skip``)
=========  =========  ======  ===========================================

An inverted-residual block is ``pw 1x1 (C_in -> C_in*e) BN ReLU [shuffle] -> dw kxk stride s BN
ReLU -> pw-linear 1x1 (-> C_out) BN``, plus the input when the shapes allow (stride 1 and
C_in == C_out). Every factory takes ``(C_in, C_out, stride)``.
"""
import functools

import megengine.functional as F
import megengine.module as M

from .layers import ConvBn


def conv_bn_relu(C_in, C_out, kernel_size=3, stride=1, groups=1):
    """conv (no bias, 'same' padding) -> BN -> ReLU; also the stem, head and reduction skip."""
    return ConvBn(C_in, C_out, kernel_size, stride, kernel_size // 2, groups=groups, relu=True)


def channel_shuffle(x, groups):
    """Interleave the channels of ``groups`` groups (ShuffleNet): (g, C/g) -> (C/g, g)."""
    n, c, h, w = x.shape
    x = x.reshape(n, groups, c // groups, h, w)
    return F.transpose(x, (0, 2, 1, 3, 4)).reshape(n, c, h, w)


class InvertedResidual(M.Module):
    """FBNet's IRF block: expand (1x1), depthwise kxk, project (1x1), residual when possible."""

    def __init__(self, C_in, C_out, stride, kernel=3, expansion=1, groups=1):
        super().__init__()
        mid = C_in * expansion
        for what, c in (("C_in", C_in), ("C_out", C_out)):
            if c % groups:
                raise ValueError("%s (%d) must be divisible by the pointwise groups (%d)"
                                 % (what, c, groups))
        self.groups = groups
        self.pw = conv_bn_relu(C_in, mid, 1, 1, groups)
        self.dw = conv_bn_relu(mid, mid, kernel, stride, groups=mid)
        self.pwl = ConvBn(mid, C_out, 1, 1, 0, groups=groups)
        self.use_residual = stride == 1 and C_in == C_out

    def forward(self, x):
        y = self.pw(x)
        if self.groups > 1:
            y = channel_shuffle(y, self.groups)
        y = self.pwl(self.dw(y))
        return y + x if self.use_residual else y


class Skip(M.Module):
    """The 'skip' candidate: the identity where shapes allow, else the cheapest op that fits.

    At a layer that changes the channel count or the resolution an identity cannot be used; as in
    the FBNet code it becomes a 1x1 conv-BN-ReLU with the layer's stride. So "skip" costs real
    time at reduction layers, which the latency table measures like any other candidate.
    """

    def __init__(self, C_in, C_out, stride):
        super().__init__()
        identity = C_in == C_out and stride == 1
        self.proj = None if identity else conv_bn_relu(C_in, C_out, 1, stride)

    def forward(self, x):
        return x if self.proj is None else self.proj(x)


def _ir(kernel, expansion, groups=1):
    return functools.partial(_build_ir, kernel=kernel, expansion=expansion, groups=groups)


def _build_ir(C_in, C_out, stride, kernel, expansion, groups):
    return InvertedResidual(C_in, C_out, stride, kernel, expansion, groups)


# name -> factory(C_in, C_out, stride), in the order of the FBNet code's lookup table.
FBNET_BLOCKS = {
    "ir_k3_e1": _ir(3, 1),
    "ir_k3_s2": _ir(3, 1, groups=2),
    "ir_k3_e3": _ir(3, 3),
    "ir_k3_e6": _ir(3, 6),
    "ir_k5_e1": _ir(5, 1),
    "ir_k5_s2": _ir(5, 1, groups=2),
    "ir_k5_e3": _ir(5, 3),
    "ir_k5_e6": _ir(5, 6),
    "skip": Skip,
}
