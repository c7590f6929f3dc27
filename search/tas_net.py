"""The TAS width-search network: width choices, select-two Gumbel sampling, channel-wise
interpolation, the searched-width conv layers (``TASNet``), FLOP accounting and the FLOP loss,
and the arch.json of a chosen set of widths. The search loop is ``search/tas.py``'s.

See ``search/tas.py`` for the method (Dong & Yang, "Network Pruning via Transformable
Architecture Search", 2019) and the rules these functions implement.
"""
import numpy as np

import megengine as mge
import megengine.functional as F
import megengine.module as M

from model.derived import ARCH_FORMAT, build_stem

from .gumbel import gumbel_noise
from .space import out_size

RATIOS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def width_choices(channels, ratios=RATIOS):
    """Sorted distinct widths ``int(channels * r)`` (at least 1)."""
    return sorted({max(1, int(channels * r)) for r in ratios})


def select2(logits, tau, rng):
    """Two distinct choice indices drawn from Gumbel-softmax probabilities, and their weights
    (a tensor of 2 summing to 1, differentiable w.r.t. ``logits``). One choice: (idx, [1])."""
    k = logits.shape[0]
    z = (F.logsoftmax(logits, axis=0) + mge.tensor(gumbel_noise(rng, (k,)))) / tau
    if k == 1:
        return np.array([0]), F.softmax(z, axis=0)
    p = F.softmax(z, axis=0).numpy().astype(np.float64) + 1e-7
    idx = rng.choice(k, size=2, replace=False, p=p / p.sum())
    return idx, F.softmax(z[mge.tensor(idx.astype(np.int32))], axis=0)


def interp_matrix(c_in, c_out):
    """(c_out, c_in) matrix: output channel o averages the inputs from floor(o c_in / c_out)
    up to (excluding) ceil((o + 1) c_in / c_out)."""
    a = np.zeros((c_out, c_in), np.float32)
    for o in range(c_out):
        lo, hi = (o * c_in) // c_out, -((-(o + 1) * c_in) // c_out)
        a[o, lo:hi] = 1.0 / (hi - lo)
    return a


def channel_interp(x, channels):
    """Align (N, C, H, W) to ``channels`` by adaptive average pooling over the channel axis."""
    n, c, h, w = x.shape
    if c == channels:
        return x
    a = mge.tensor(interp_matrix(c, channels))
    y = F.matmul(F.transpose(x, (0, 2, 3, 1)).reshape(-1, c), a, transpose_b=True)
    return F.transpose(y.reshape(n, h, w, channels), (0, 3, 1, 2))


class WidthConv(M.Module):
    """A 3x3 conv searched over its output widths: full conv, one BN per width, mixed output."""

    def __init__(self, C_in, C_out, stride):
        super().__init__()
        self.C_in, self.choices = C_in, width_choices(C_out)
        self.conv = M.Conv2d(C_in, C_out, 3, stride, 1, bias=False)
        self.bns = [M.BatchNorm2d(c) for c in self.choices]

    def forward(self, x, idx, weights):
        if x.shape[1] < self.C_in:  # a narrower input: zero-pad its channels
            n, c, h, w = x.shape
            x = F.concat([x, F.zeros((n, self.C_in - c, h, w))], axis=1)
        y = self.conv(x)
        widths = [self.choices[int(j)] for j in idx]
        outs = [F.relu(self.bns[int(j)](y[:, :c])) for j, c in zip(idx, widths)]
        top = max(widths)
        return sum(weights[i] * channel_interp(o, top) for i, o in enumerate(outs))


class TASNet(M.Module):
    """Fixed stem, searched-width conv layers, global pool, linear on the first C columns."""

    def __init__(self, space, rng):
        super().__init__()
        self.space = space
        self.stem = build_stem(space.stem_dict())
        self.layers = [WidthConv(l.C_in, l.C_out, l.stride) for l in space.layers]
        self.linear = M.Linear(space.layers[-1].C_out, space.num_classes)
        self.attentions = [mge.Parameter(rng.normal(0, 0.01, len(l.choices)).astype(np.float32))
                           for l in self.layers]

    def weight_parameters(self):
        ids = {id(a) for a in self.attentions}
        return [p for p in self.parameters() if id(p) not in ids]

    def classify(self, x):
        c = x.shape[1]
        return F.matmul(F.mean(x, axis=(2, 3)), self.linear.weight[:, :c],
                        transpose_b=True) + self.linear.bias

    def forward(self, x, tau, rng):
        x = self.stem(x)
        for layer, a in zip(self.layers, self.attentions):
            idx, w = select2(a, tau, rng)
            x = layer(x, idx, w)
        return self.classify(x)

    def forward_widths(self, x, indices):
        """The network at fixed width choices (one index per layer)."""
        x = self.stem(x)
        for layer, j in zip(self.layers, indices):
            x = layer(x, [j], [1.0])
        return self.classify(x)

    def argmax(self):
        return [int(np.argmax(a.numpy())) for a in self.attentions]

    def widths(self, indices):
        return [layer.choices[j] for layer, j in zip(self.layers, indices)]


def layer_out_sizes(space):
    return [out_size(l.input_size, l.stride) for l in space.layers]


def stem_macs(space):
    s = out_size(space.image_size, space.stem_stride)
    return 3 * space.stem_channels * 9 * s * s


def flops_of_widths(space, widths):
    """MACs (in millions) of the plain network with these conv widths (floats allowed)."""
    total, c_in = stem_macs(space), space.stem_channels
    for c, s in zip(widths, layer_out_sizes(space)):
        total = total + 9 * s * s * c_in * c
        c_in = c
    return (total + c_in * space.num_classes) / 1e6


def expected_flops(net):
    """E[FLOPs] (MMACs) under softmax(attention) per layer; a differentiable tensor."""
    e_out = [(F.softmax(a, axis=0) * mge.tensor(np.asarray(l.choices, np.float32))).sum()
             for a, l in zip(net.attentions, net.layers)]
    return flops_of_widths(net.space, e_out)


def get_flop(net, mode):
    """'max': all full widths; 'genotype': the argmax widths. MMACs."""
    if mode == "max":
        return flops_of_widths(net.space, [l.choices[-1] for l in net.layers])
    if mode == "genotype":
        return flops_of_widths(net.space, net.widths(net.argmax()))
    raise ValueError("mode must be 'max' or 'genotype', got %r" % mode)


def flop_loss(net, ratio, tolerance=0.05):
    """TAS's FLOP loss (see the module docstring); returns (loss tensor or 0.0, expected)."""
    f_max, f_cur = get_flop(net, "max"), get_flop(net, "genotype")
    target, tol = ratio * f_max, tolerance * f_max
    expected = expected_flops(net)
    if f_cur < target - tol:
        return -F.log(expected), expected
    if f_cur > target:
        return F.log(expected), expected
    return 0.0, expected


def arch_from_widths(space, widths, flops=None):
    """The arch.json dict of the pruned plain network."""
    layers, c_in = [], space.stem_channels
    for l, c in zip(space.layers, widths):
        layers.append({"op": "conv_k3", "C_in": c_in, "C_out": int(c), "stride": l.stride,
                       "input_size": l.input_size})
        c_in = int(c)
    arch = {"format": ARCH_FORMAT, "space": space.name, "space_hash": space.hash,
            "search": "tas", "image_size": space.image_size, "num_classes": space.num_classes,
            "stem": space.stem_dict(), "layers": layers, "head": {"channels": 0}}
    if flops is not None:
        arch["estimated_mmacs"] = float(flops)
    return arch
