"""What a ``.mge`` graph declares, for the budgets of ``common.limits``: weights, peak
activation bytes and multiply-accumulates per image, and the batch. Runs only in the child
process that first parses a file (``deploy/lite_child.py inspect``): MegEngine's graph loader
is native code, and a crafted file can crash it.

The graph is loaded with ``megengine.utils.network.Network`` (static shape inference gives
every tensor's shape at the dumped input shape; nothing is computed), then walked once:

- **weights**: the bytes of every constant (``ImmutableTensor``, ``SharedDeviceTensor``; any
  operator without inputs other than the graph input);
- **activations**: the peak of the bytes alive while the operators run in the graph's order,
  each tensor freed after its last reader (the graph's outputs are kept to the end);
- **MACs**: exact for convolutions (``ConvolutionForward``, ``ConvBiasForward`` and the other
  convolution operators: output elements x the weight's ``Cin/groups x KH x KW``; for a
  transposed convolution, input elements x ``Cout/groups x KH x KW``), matrix products (output
  elements x the shared dimension) and pooling (output elements x window); every other operator
  is counted as one MAC per element it reads or writes, an upper bound for elementwise work.

Activations and MACs are divided by the dumped batch (per image). Numbers are floats, capped
at ``CAP``, so a crafted shape cannot overflow what reports them.
"""
import io

CONSTANT_OPRS = ("ImmutableTensor", "SharedDeviceTensor", "MultipleDeviceTensorHolder")
INPUT_OPR = "Host2DeviceCopy"
CONV_OPRS = ("ConvolutionForward", "ConvBiasForward", "BatchConvBiasForward",
             "GroupLocalForward", "DeformableConvForward")
DECONV_OPRS = ("ConvolutionBackwardData",)
MATMUL_OPRS = ("MatrixMul", "BatchedMatrixMul")
POOL_OPRS = ("PoolingForward",)
CAP = 1e200  # any count above it is "too many"; products of two stay finite floats


class GraphError(ValueError):
    """A graph whose tensors' shapes or dtypes cannot be known before it runs."""


def _shape(var):
    try:
        shape = var.shape
    except Exception:  # MegEngine raises its own errors for a shape it cannot infer
        shape = None
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise GraphError("the shape of %.60r is not known before it runs" % (var.name,))
    return shape


def _count(*factors):
    """The product of ``factors`` as a float, at most ``CAP``."""
    value = 1.0
    for f in factors:
        value = min(value * float(min(f, CAP)), CAP)
    return value


def _elements(var):
    return _count(*_shape(var))


def _bytes(var):
    try:
        itemsize = int(var.dtype.itemsize)
    except Exception:  # an unknown dtype: assume the widest common one
        itemsize = 8
    return _count(_elements(var), max(itemsize, 1))


def _macs(opr):
    kind, ins, outs = type(opr).__name__, list(opr.inputs), list(opr.outputs)
    if kind in CONV_OPRS and len(ins) >= 2 and len(_shape(ins[1])) >= 3:
        return _count(_elements(outs[0]), *_shape(ins[1])[-3:])
    if kind in DECONV_OPRS and len(ins) >= 2 and len(_shape(ins[0])) >= 3:
        return _count(_elements(ins[1]), *_shape(ins[0])[-3:])
    if kind in MATMUL_OPRS and len(ins) >= 2 and outs:
        rows = max(_count(*_shape(outs[0])[:-1]), 1.0)
        return _count(_elements(outs[0]), _elements(ins[0]) / rows)
    if kind in POOL_OPRS and outs:
        params = opr.params
        window = _count(int(params.get("window_h", 1)), int(params.get("window_w", 1)))
        return _count(_elements(outs[0]), max(window, 1.0))
    return min(sum(_elements(v) for v in ins + outs), CAP)


def inspect(data):
    """What the ``.mge`` bytes ``data`` declare: a dict with ``metadata`` (the loaded graph's
    ``SerializationMetadata``), ``inputs`` / ``outputs`` (``[{"name", "shape", "dtype"}]``)
    and ``weights``, ``activations``, ``macs`` (per image) and ``batch``. MegEngine's errors
    propagate (``RuntimeError``); ``GraphError`` for a shape that is not static."""
    from megengine.utils.network import Network

    net = Network.load(io.BytesIO(data))
    oprs = list(net.all_oprs)  # in topological order
    outputs = {id(v) for v in net.output_vars}
    last_use = {}
    for i, opr in enumerate(oprs):
        for v in opr.inputs:
            last_use[id(v)] = i
    weights = macs = live = peak = 0.0
    inputs = []
    alive = {}
    for i, opr in enumerate(oprs):
        kind = type(opr).__name__
        if kind == INPUT_OPR:
            inputs.extend(opr.outputs)
        elif kind in CONSTANT_OPRS or not list(opr.inputs):
            weights = min(weights + sum(_bytes(v) for v in opr.outputs), CAP)
            continue
        else:
            macs = min(macs + _macs(opr), CAP)
        for v in opr.outputs:
            alive[id(v)] = _bytes(v)
            live = min(live + alive[id(v)], CAP)
        peak = max(peak, live)
        for v in opr.inputs:
            if last_use.get(id(v)) == i and id(v) not in outputs and id(v) in alive:
                live = max(live - alive.pop(id(v)), 0.0)
    batch = _shape(inputs[0])[0] if len(inputs) == 1 and _shape(inputs[0]) else 1
    per = float(max(batch, 1))

    def described(v):
        return {"name": str(v.name)[:200], "shape": list(_shape(v)), "dtype": str(v.dtype)}

    return {"metadata": net._metadata,
            "inputs": [described(v) for v in inputs],
            "outputs": [described(v) for v in net.output_vars],
            "weights": weights, "activations": peak / per, "macs": macs / per,
            "batch": int(batch)}
