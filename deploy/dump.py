"""Tracing a deploy-form model and dumping it as a MegEngine graph (``.mge``).

What a ``.mge`` is written with is split in two, because only one half is portable:

- **graph options** (``GRAPH_OPTIONS``), applied when the graph is dumped: MegEngine's inference
  passes (BN and constant folding, elementwise fusion) and fusing conv + bias + ReLU into one
  operator. They rewrite the graph with operators every MegEngine build runs on every CPU, so
  the file is portable.
- **a tensor layout** (``LAYOUTS``), applied by Lite when it *loads* the file, on the CPU that
  runs it (``LiteOptions.enable_nchw88``). NCHW88 (channels in blocks of 8) exists for x86 AVX2
  kernels only, and on some x86 CPUs it does not run at all: MegEngine 1.13's NCHW88 convolution
  comes from its bundled MKL-DNN 1.x, whose JIT fails on AVX-512 CPUs it predates ("bad err=45 in
  Xbyak::Error" on an AMD EPYC, then the process hangs in its exit handlers). Dumped into the
  graph, that layout would make the file itself CPU-specific; recorded as a load-time choice, it
  is used only on the CPU it was probed on (``deploy/runtime.py``) and any other CPU runs the
  portable graph.

``--options`` of ``tools/export.py`` names a pair (``OPTIONS``): ``fuse`` (the default) is the
portable graph, ``nchw88+fuse`` the same graph plus the NCHW88 layout where this CPU runs it.
Never imports ``model``.
"""
import numpy as np

from errors import UserError

INPUT_NAME = "data"
OUTPUT_NAME = "logits"

# Keyword arguments of ``trace.dump`` (``optimize_for_inference`` is on unless "none"), by name.
GRAPH_OPTIONS = {
    "none": {"optimize_for_inference": False},
    "default": {},
    "fuse": {"enable_fuse_conv_bias_nonlinearity": True},
}
# Load-time layouts: the ``LiteOptions`` flag that turns each on (None: the graph as dumped).
LAYOUTS = {"nchw": None, "nchw88": "enable_nchw88"}
PORTABLE_LAYOUT = "nchw"
# --options name -> (graph options, layout)
OPTIONS = {
    "none": ("none", "nchw"),
    "default": ("default", "nchw"),
    "fuse": ("fuse", "nchw"),
    "nchw88": ("default", "nchw88"),
    "nchw88+fuse": ("fuse", "nchw88"),
}
DEFAULT_OPTIONS = "fuse"


def split_options(name):
    """``(graph options, layout)`` of an ``--options`` name."""
    try:
        return OPTIONS[name]
    except KeyError:
        raise UserError("unknown dump options %r; known: %s"
                        % (name, ", ".join(OPTIONS))) from None


def options_name(graph_options, layout):
    """The ``--options`` name of a pair (the inverse of ``split_options``)."""
    return next(k for k, v in OPTIONS.items() if v == (graph_options, layout))


def trace_device(threads=None):
    """The device to build and trace a model on before dumping it.

    MegEngine's multi-threaded CPU device. On the plain single-threaded CPU device ("cpux")
    ``trace.dump`` fails (it places the graph input on "xpux" and the captured weights on
    "cpux"); the dumped file does not record the thread count, Lite chooses it at load time.
    """
    from common.cpus import cpu_count

    return "multithread%d:0" % (threads or cpu_count())


def trace_model(forward, example_input):
    """Trace ``forward`` (a deploy-form model in eval mode, or any function of one image batch)
    on ``example_input``: ``(traced graph, its output as numpy)``. ``write_graph`` dumps the
    traced graph (as often as needed: the export dumps it again with its algorithm cache)."""
    import megengine as mge
    from megengine.jit import trace

    @trace(symbolic=True, capture_as_const=True)
    def graph(data):
        return forward(data)

    out = graph(mge.tensor(np.asarray(example_input, np.float32)))
    if isinstance(out, (list, tuple)):  # a features model: one tensor per output
        return graph, [o.numpy() for o in out]
    return graph, out.numpy()


def write_graph(graph, file, graph_options=DEFAULT_OPTIONS, user_info=None,
                output_names=(OUTPUT_NAME,)):
    """Dump a traced graph to ``file`` (a path or a binary file object) with the named graph
    options (``GRAPH_OPTIONS``); ``user_info`` (a string) is stored in the file's metadata;
    ``output_names``: one per output of the traced function (a features model has several)."""
    try:
        kwargs = dict(GRAPH_OPTIONS[graph_options])
    except KeyError:
        raise UserError("unknown graph options %r; known: %s"
                        % (graph_options, ", ".join(GRAPH_OPTIONS))) from None
    optimize = kwargs.pop("optimize_for_inference", True)
    graph.dump(file, arg_names=[INPUT_NAME], output_names=list(output_names),
               optimize_for_inference=optimize, user_info=user_info, **kwargs)


def dump_model(forward, example_input, file, graph_options=DEFAULT_OPTIONS, user_info=None):
    """Trace ``forward`` on ``example_input`` and write the graph to ``file``.

    The batch size and resolution of ``example_input`` become the dumped input shape (Lite
    accepts other batch sizes at run time). Returns the traced function's output on
    ``example_input`` as numpy.
    """
    graph, out = trace_model(forward, example_input)
    write_graph(graph, file, graph_options, user_info)
    return out
