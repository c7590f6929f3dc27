"""Gumbel-softmax sampling of architecture choices (Jang et al. / Maddison et al.).

``y = softmax((logits + g) / tau)`` with ``g = -log(-log U)``, ``U ~ Uniform(0, 1)``. The noise
is drawn with a numpy ``Generator`` that the caller owns (so a checkpoint can store and restore
its state and a resumed search draws the same samples), with one row per sample by default
(``per_sample``: every example in the batch gets its own architecture sample — the FBNet code
shares one sample across the batch, issue #15 there) or one row per batch (to reproduce it).

Modes: ``soft`` returns ``y``; ``hard_st`` returns the one-hot of ``argmax y`` in the forward
pass and ``y``'s gradient in the backward pass (straight-through: ``hard - y.detach() + y``).
"""
import numpy as np

import megengine as mge
import megengine.functional as F

MODES = ("soft", "hard_st")
NOISE = ("per_sample", "per_batch")
_TINY = 1e-30  # U in [1e-30, 1): noise finite


def gumbel_noise(rng, shape):
    """Standard Gumbel samples ``-log(-log U)`` as float32, ``U`` kept inside (0, 1)."""
    u = rng.uniform(_TINY, 1.0, size=shape)
    return (-np.log(-np.log(u))).astype(np.float32)


def noise_for_batch(rng, n, num_layers, num_choices, noise="per_sample"):
    """Noise of shape (layers, n, choices): independent rows, or one row repeated (per_batch)."""
    if noise not in NOISE:
        raise ValueError("noise must be one of %s, got %r" % (NOISE, noise))
    rows = n if noise == "per_sample" else 1
    g = gumbel_noise(rng, (num_layers, rows, num_choices))
    return np.broadcast_to(g, (num_layers, n, num_choices)).copy()


def gumbel_softmax(logits, noise, tau, mode="soft"):
    """Relaxed (or straight-through hard) samples over the last axis of ``logits + noise``.

    ``logits`` (..., K) broadcast against ``noise`` (..., N, K) or have its shape.
    """
    if mode not in MODES:
        raise ValueError("mode must be one of %s, got %r" % (MODES, mode))
    y = F.softmax((logits + mge.tensor(noise)) / tau, axis=-1)
    if mode == "soft":
        return y
    hard = F.one_hot(F.argmax(y, axis=-1), y.shape[-1]).astype("float32")
    return hard - y.detach() + y
