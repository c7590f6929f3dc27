"""Tracing a deploy-form model and dumping it as a MegEngine graph (``.mge``).

The graph optimizations a dumped model is written with are named option sets for
``megengine.jit.trace.dump``; the exporter uses ``BEST_DUMP_OPTIONS`` (``tools/bench_deploy.py``
times it against the plain NCHW dump, ``--paths mge mge-nchw``). Never imports ``model``.
"""
import numpy as np

from errors import UserError

INPUT_NAME = "data"
OUTPUT_NAME = "logits"

# Keyword arguments of ``trace.dump`` (``optimize_for_inference`` is on unless "none"), by name.
# "default" is MegEngine's inference pass list alone (BN/const folding, elemwise fusion, ...);
# the others add one option each, so the benchmark shows what each one changes.
DUMP_OPTIONS = {
    "none": {"optimize_for_inference": False},
    "default": {},
    "fuse": {"enable_fuse_conv_bias_nonlinearity": True},
    "nchw88": {"enable_nchw88": True},
    "nchw88+fuse": {"enable_nchw88": True, "enable_fuse_conv_bias_nonlinearity": True},
}
# NCHW88 (channels in blocks of 8, the AVX2 register width) is what makes MegEngine's x86 conv
# kernels fast; fusing conv + bias + ReLU into one operator saves a pass over every activation.
# See the README's table ("Deployment and inference speed").
BEST_DUMP_OPTIONS = "nchw88+fuse"


def trace_device(threads=None):
    """The device to build and trace a model on before dumping it.

    MegEngine's multi-threaded CPU device. On the plain single-threaded CPU device ("cpux")
    ``trace.dump`` fails (it places the graph input on "xpux" and the captured weights on
    "cpux"); the dumped file does not record the thread count, Lite chooses it at load time.
    """
    from common.cpus import cpu_count

    return "multithread%d:0" % (threads or cpu_count())


def dump_options(name):
    try:
        return dict(DUMP_OPTIONS[name])
    except KeyError:
        raise UserError("unknown dump options %r; known: %s"
                        % (name, ", ".join(DUMP_OPTIONS))) from None


def trace_model(forward, example_input):
    """Trace ``forward`` (a deploy-form model in eval mode, or any function of one image batch)
    on ``example_input``: ``(traced graph, its output as numpy)``. ``write_graph`` dumps the
    traced graph (as often as needed: the export dumps it again with its algorithm cache)."""
    import megengine as mge
    from megengine.jit import trace

    @trace(symbolic=True, capture_as_const=True)
    def graph(data):
        return forward(data)

    out = graph(mge.tensor(np.asarray(example_input, np.float32))).numpy()
    return graph, out


def write_graph(graph, file, options=BEST_DUMP_OPTIONS, user_info=None):
    """Dump a traced graph to ``file`` (a path or a binary file object) with the named dump
    options; ``user_info`` (a string) is stored in the file's metadata."""
    kwargs = dump_options(options) if isinstance(options, str) else dict(options)
    optimize = kwargs.pop("optimize_for_inference", True)
    graph.dump(file, arg_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
               optimize_for_inference=optimize, user_info=user_info, **kwargs)


def dump_model(forward, example_input, file, options=BEST_DUMP_OPTIONS, user_info=None):
    """Trace ``forward`` on ``example_input`` and write the graph to ``file``.

    The batch size and resolution of ``example_input`` become the dumped input shape (Lite
    accepts other batch sizes at run time). Returns the traced function's output on
    ``example_input`` as numpy.
    """
    graph, out = trace_model(forward, example_input)
    write_graph(graph, file, options, user_info)
    return out
