"""Small building blocks shared by the model families."""
import megengine.functional as F
import megengine.module as M

# Imported for its side effect: MegEngine's CUDA probe, run once silently (no banner on stderr
# of a CPU machine when a script uses the models without choosing a device).
from common import device as _device  # noqa: F401


def pair(v):
    """A conv argument (an int, or a pair of them) as a pair: ``3 -> (3, 3)``."""
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class ConvBn(M.Module):
    """Bias-free conv followed by BatchNorm (optionally ReLU): the official ``conv_bn`` branch.

    Attribute names ``conv`` and ``bn`` match the official PyTorch ``nn.Sequential`` children, so
    state-dict keys map one to one.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, relu=False):
        super().__init__()
        self.conv = M.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                             padding=padding, dilation=dilation, groups=groups, bias=False)
        self.bn = M.BatchNorm2d(out_channels)
        self.relu = relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


class SEBlock(M.Module):
    """Squeeze-and-excitation: global average pool, 1x1 conv down, ReLU, 1x1 conv up, sigmoid,
    then rescale the input channel-wise."""

    def __init__(self, input_channels, internal_neurons):
        super().__init__()
        if internal_neurons < 1:
            raise ValueError("SEBlock needs at least one internal neuron (input_channels=%d)"
                             % input_channels)
        self.down = M.Conv2d(input_channels, internal_neurons, 1, bias=True)
        self.up = M.Conv2d(internal_neurons, input_channels, 1, bias=True)

    def forward(self, x):
        w = F.mean(x, axis=(2, 3), keepdims=True)
        w = F.sigmoid(self.up(F.relu(self.down(w))))
        return x * w


class GlobalAvgPool(M.Module):
    """Mean over the spatial axes: (N, C, H, W) -> (N, C)."""

    def forward(self, x):
        return F.mean(x, axis=(2, 3))
