"""Tiny search spaces and data for the search tests (kept small: 2 CPU cores, shared)."""
import numpy as np

from data.digits import ArraySplit, load_digits
from search.latency import measure_table
from search.space import make_space

TINY_CANDIDATES = ("ir_k3_e1", "skip", "repvgg")


def tiny_space(candidates=TINY_CANDIDATES, image_size=8):
    return make_space("tiny", image_size, 10, (4, 1), [(4, 1), (8, 2)], candidates, head=0)


def tiny_lut(space):
    return measure_table(space, batch=1, warmup=0, runs=1)


def fit_fixed_batch(net, x, y, steps, lr=0.05):
    """The losses of ``steps`` SGD steps (momentum 0.9) of ``net`` on the one batch ``(x, y)``:
    a network that builds and learns fits it, so the loss falls."""
    import megengine.functional as F
    import megengine.optimizer as optim
    from megengine.autodiff import GradManager

    gm = GradManager().attach(net.parameters())
    opt = optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        with gm:
            loss = F.loss.cross_entropy(net(x), y)
            gm.backward(loss)
        opt.step()
        opt.clear_grad()
        losses.append(float(loss.numpy()))
    return losses


def tiny_data(image_size=8, n_train=64, n_val=32):
    train, val, _ = load_digits(image_size=image_size)
    return (ArraySplit(train.images[:n_train], train.labels[:n_train]),
            ArraySplit(val.images[:n_val], val.labels[:n_val]))


def fixed_lut(space, latency, stem=10.0, head=20.0):
    """A table with given entries (for formula tests), metadata as a measured one has."""
    from search.latency import LatencyTable

    table = measure_table(space, batch=1, warmup=0, runs=1)
    return LatencyTable(np.asarray(latency, np.float64), table.source,
                        {"stem": stem, "head": head}, table.meta)
