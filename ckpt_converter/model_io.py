"""Reading a MegEngine model's state quickly, and building one without random initial values.

Helpers for loading ~0.5 GB of weights: MegEngine 1.13's ``state_dict()`` copies everything to
NumPy and re-reshapes the BatchNorm entries at every nesting level (seconds on RepVGG-B3), and a
new model computes random initial values that a strict load overwrites anyway.
"""
import contextlib

import numpy as np


def expected_arrays(model):
    """{key: zero-stride array with the shape and dtype of ``model.state_dict()[key]``}: what
    the strict check needs, without copying any weights."""
    from model.checkpoint import state_tensors

    return {key: np.broadcast_to(np.zeros((), np.dtype(t.dtype)),
                                 (int(np.prod(t.shape)),) if flat else tuple(t.shape))
            for key, t, flat in state_tensors(model)}


def _no_op(*args, **kwargs):
    return None


@contextlib.contextmanager
def skip_random_init():
    """Build a model without computing its random initial values (MegEngine modules call the
    in-place initializers of ``megengine.module.init`` while constructing): the strict load that
    follows overwrites every parameter and buffer. For RepVGG-B3 this saves most of the time
    and a copy of the weights. The initializers are restored on exit; models built by other
    threads meanwhile would not be initialised (the converter builds one model at a time)."""
    from megengine.module import init

    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_")
             and callable(getattr(init, n))]
    saved = {n: getattr(init, n) for n in names}
    try:
        for name in names:
            setattr(init, name, _no_op)
        yield
    finally:
        for name, func in saved.items():
            setattr(init, name, func)
