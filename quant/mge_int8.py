"""Writing an int8 network as a MegEngine graph (.mge) that MegEngine Lite runs, checked.

The graph takes the same float32 ``data`` input as the float export (the QuantStub quantizes it
inside the graph) and returns float32 ``logits`` (dequantized). The dump options default to
MegEngine's plain inference passes: on x86 the NCHW88 layout that makes float convs fast has no
int8 kernels and was measured 30x slower for int8 (``benchmarks/bench_int8.py`` times the options).
"""
import numpy as np

from deploy import dump, lite
from errors import UserError

INT8_DUMP_OPTIONS = "default"


class Int8CheckError(UserError):
    """The dumped int8 graph does not compute what the eager int8 network computes."""


def output_step(int8_net):
    """The quantization step of the int8 network's logits (one LSB)."""
    from megengine.core.tensor import dtype

    return float(dtype.get_scale(int8_net.linear.output_dtype))


def check_int8_graph(path, x, expected, step, threads=None):
    """Run ``path`` with Lite on ``x``: the logits must equal ``expected`` (the eager int8
    network's) to one output quantization step, with the same top-1 everywhere."""
    out = lite.DumpedModel(path, threads=threads)(x)
    worst = float(np.abs(out - expected).max())
    same_top1 = bool((out.argmax(1) == expected.argmax(1)).all())
    if worst > step * 1.001 or not same_top1:
        raise Int8CheckError("the dumped int8 graph differs from the eager int8 network: max "
                             "|difference| %.3g (one step is %.3g), top-1 %s"
                             % (worst, step, "equal" if same_top1 else "differs"))
    return worst


def write_int8_mge(int8_net, path, x, options=INT8_DUMP_OPTIONS, threads=None, metadata=None):
    """Trace ``int8_net`` on the batch ``x``, dump it to ``path`` (atomically, only if Lite's
    output checks out) and return the largest difference from the eager network seen.
    ``metadata`` (preprocessing, class names, ...) is stored as tools/export.py stores it, so
    tools/infer.py prepares images for the int8 graph as for the float one."""
    import megengine as mge

    from common.atomic import atomic_path
    from deploy.modelfile import encode_metadata

    expected = int8_net(mge.tensor(x)).numpy()
    step = output_step(int8_net)
    with atomic_path(path) as tmp:
        dump.dump_model(int8_net, x[:1], tmp, options,
                        None if metadata is None else encode_metadata(metadata))
        return check_int8_graph(tmp, x, expected, step, threads)
