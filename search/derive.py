"""From architecture parameters to an ``arch.json`` (built by ``model.derived``).

``argmax``: the most likely candidate per layer. ``sample``: candidates drawn from
``softmax(theta)`` per layer with a seeded numpy generator (temperature 1), ``n`` architectures
from one seed. The file records the space's name and hash, one op per layer with channels and
strides, stem, head, and the latency table's prediction for the network.
"""
import numpy as np

from common.numeric import softmax
from model.derived import ARCH_FORMAT

MODES = ("argmax", "sample")


def choose(theta, mode="argmax", n=1, seed=0):
    """A list of ``n`` choice vectors (one candidate index per layer)."""
    theta = np.asarray(theta, np.float64)
    if mode == "argmax":
        return [np.argmax(theta, axis=1)] * n
    if mode != "sample":
        raise ValueError("mode must be one of %s, got %r" % (MODES, mode))
    rng, probs = np.random.default_rng(seed), softmax(theta)
    return [np.array([rng.choice(len(p), p=p) for p in probs]) for _ in range(n)]


def arch_from_choices(space, choices, lut=None):
    arch = {
        "format": ARCH_FORMAT, "space": space.name, "space_hash": space.hash,
        "image_size": space.image_size, "num_classes": space.num_classes,
        "stem": space.stem_dict(),
        "layers": [{"op": space.candidates[int(k)], "C_in": l.C_in, "C_out": l.C_out,
                    "stride": l.stride, "input_size": l.input_size}
                   for l, k in zip(space.layers, choices)],
        "head": space.head_dict(),
    }
    if lut is not None:
        arch["predicted_latency"] = float(lut.network_latency(choices))
        arch["latency_unit"] = lut.unit
        arch["lut_device"] = lut.meta.get("device")
    return arch
