"""The FBNet supernet: stem, one mixed operation per searchable layer, head.

Layer ``l`` computes ``y = sum_k m[l, n, k] * op_k(x)`` for each sample ``n``, with ``m`` a
Gumbel-softmax sample of the architecture parameters ``theta[l]`` (``search.gumbel``). The
expected latency of a sample is ``stem + sum_l sum_k m[l, n, k] * LAT[l, k] + head`` (the LUT's
units); the batch's value is its mean over samples. The fixed stem/head costs are included so that
the number is the whole network's predicted latency, the one ``show --measure`` checks.
"""
import numpy as np

import megengine as mge
import megengine.functional as F
import megengine.module as M

from model.derived import build_op

from .latency import Head, stem_module


class MixedOp(M.Module):
    """All candidates of one layer, mixed per sample by weights of shape (N, K)."""

    def __init__(self, layer, candidates):
        super().__init__()
        self.ops = [build_op(name, layer.C_in, layer.C_out, layer.stride) for name in candidates]

    def forward(self, x, weights):
        out = 0
        for k, op in enumerate(self.ops):
            out = out + weights[:, k].reshape(-1, 1, 1, 1) * op(x)
        return out


class Supernet(M.Module):
    def __init__(self, space, lut):
        super().__init__()
        self.space = space
        self.stem = stem_module(space)
        self.mixed = [MixedOp(layer, space.candidates) for layer in space.layers]
        self.head = Head(space)
        # theta = 0: every candidate equally likely (the FBNet code's constant 1/9 is the same).
        self.theta = mge.Parameter(np.zeros((len(space.layers), len(space.candidates)),
                                            np.float32))
        self.lut = np.asarray(lut.latency, np.float32)
        self.fixed_latency = float(lut.fixed["stem"] + lut.fixed["head"])

    def weight_parameters(self):
        return [p for name, p in self.named_parameters() if name != "theta"]

    def forward(self, x, weights):
        """``weights`` (L, N, K): mixing weights per layer and sample. Returns
        ``(logits, expected_latency)``; the latency is the batch mean of the per-sample one."""
        x = self.stem(x)
        for l, op in enumerate(self.mixed):
            x = op(x, weights[l])
        per_sample = (weights * mge.tensor(self.lut)[:, None, :]).sum(axis=2).sum(axis=0)
        return self.head(x), per_sample.mean() + self.fixed_latency

    def forward_choice(self, x, choices):
        """Run one architecture (a candidate index per layer) alone: validation, derive."""
        x = self.stem(x)
        for op, k in zip(self.mixed, choices):
            x = op.ops[int(k)](x)
        return self.head(x)

    def probabilities(self):
        return F.softmax(self.theta, axis=-1).numpy()

    def expected_latency_per_layer(self):
        """softmax(theta)-weighted latency of every layer (no noise)."""
        return (self.probabilities() * self.lut).sum(axis=1)
