"""Any traced MegEngine model (a backbone, a user's detector or segmenter) as an ONNX graph.

``deploy/onnx_export.py`` walks the module tree of the registered classifiers; a user's model
has a ``forward`` of its own (upsampling, concatenation, sums of branches) that no module walk
can read. Here the model is traced and dumped as a ``.mge`` graph with MegEngine's inference
optimizations (BatchNorm folded into convs, conv + bias + ReLU fused: ``deploy/dump.py``), and
that graph's operators are translated one by one, from the outputs back to the input along the
data edges only: the shape arithmetic that ``F.nn.interpolate`` computes its output size with is
never visited, since every shape is static at export time and the output size is read from the
traced graph. The translation covers what FPN- and UNet-style heads use:

==========================  ===========================================================
MegEngine operator          ONNX
==========================  ===========================================================
ConvolutionForward,         Conv (dense or grouped, stride, padding, dilation, bias)
ConvBiasForward             [-> Relu | Sigmoid]
Elemwise                    Add, Sub, Mul, Div, Relu, Sigmoid; FUSE_ADD_RELU as Add -> Relu,
                            FUSE_ADD_SIGMOID as Add -> Sigmoid, FUSE_MUL_ADD3 as Mul -> Add
Concat                      Concat
ResizeForward               Resize: nearest (asymmetric, floor: ``F.nn.interpolate``'s
                            "nearest") or linear (half-pixel: "bilinear",
                            ``align_corners=False``), by whole-number-exact scales
Reduce MEAN over W, then H  GlobalAveragePool (an SE block's ``F.mean(x, axis=(2, 3))``)
Identity                    nothing
==========================  ===========================================================

Any other operator is refused with one line naming it (``OnnxExportError``). Every ONNX
operator emitted is on the allow-list of ``deploy/onnx_check.py`` (which the export's own check
runs when it loads the file back). The batch dimension is
dynamic. Never imports ``model``.
"""
import io

import numpy as np

from .onnx_export import OPSET, OnnxExportError

INPUT_NAME = "data"

_ELEMWISE = {"ADD": ["Add"], "MUL": ["Mul"], "RELU": ["Relu"], "SIGMOID": ["Sigmoid"], "FUSE_ADD_RELU": ["Add", "Relu"],
             "FUSE_ADD_SIGMOID": ["Add", "Sigmoid"], "FUSE_MUL_ADD3": ["Mul", "Add"]}
_NONLINEAR = {"IDENTITY": None, "RELU": "Relu", "SIGMOID": "Sigmoid"}
SUPPORTED = ("ConvolutionForward", "ConvBiasForward", "Elemwise (%s)" % ", ".join(_ELEMWISE),
             "Concat", "ResizeForward (nearest, linear)", "Reduce (MEAN over H and W)",
             "Identity")
# a mean over one spatial axis: kept only as the first half of a global mean (pruned then)
_PARTIAL_MEAN = "ReduceMean"


def _data_inputs(op):
    """The inputs whose values flow into ``op``'s output (a resize's target size is shape
    arithmetic, known statically: not followed)."""
    return op.inputs[:1] if type(op).__name__ == "ResizeForward" else op.inputs


def _constant(var):
    """The value of ``var`` if a constant of the graph produces it, else None."""
    if type(var.owner).__name__ in ("ImmutableTensor", "SharedDeviceTensor"):
        return np.asarray(var.owner.numpy(), np.float32)
    return None


def _mode(op, key="mode"):
    return str(op.params.get(key, "")).split(".")[-1].upper()


class _Translator:
    def __init__(self):
        self.nodes, self.initializers, self.names, self._count = [], [], {}, 0

    def fresh(self, prefix="v"):
        self._count += 1
        return "%s%d" % (prefix, self._count)

    def const(self, array):
        from onnx import numpy_helper

        name = self.fresh("w")
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op_type, inputs, output=None, **attrs):
        from onnx import helper

        output = output or self.fresh()
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], **attrs))
        return output

    def value(self, var):
        """The ONNX name of MegEngine variable ``var`` (its producer translated already; a
        constant becomes an initializer when first used as a value, not when a conv reads it
        as its weights)."""
        if id(var) not in self.names and _constant(var) is not None:
            self.names[id(var)] = self.const(_constant(var))
        return self.names[id(var)]

    def run(self, network, outputs):
        """Translate the operators ``outputs`` depend on through data edges, in the graph's
        topological order (no recursion: a deep network is thousands of operators)."""
        needed, stack = set(), [v.owner for v in outputs]
        while stack:
            op = stack.pop()
            if id(op) not in needed:
                needed.add(id(op))
                stack.extend(v.owner for v in _data_inputs(op))
        for op in network.all_oprs:
            if id(op) in needed and _constant(op.outputs[0]) is None:
                var = op.outputs[0]
                self.names[id(var)] = self.translate(op, var)

    def translate(self, op, var):
        kind = type(op).__name__
        if kind == "Host2DeviceCopy":
            return INPUT_NAME
        if kind == "Identity":
            return self.value(op.inputs[0])
        handler = getattr(self, "_" + kind, None)
        if handler is None:
            raise OnnxExportError(
                "cannot export the MegEngine operator %s (output %s, shape %s) to ONNX; "
                "supported: %s" % (kind, var.name, tuple(var.shape), "; ".join(SUPPORTED)))
        return handler(op, var)

    def _conv(self, op, with_bias):
        if _mode(op) != "CROSS_CORRELATION" or _mode(op, "format") != "NCHW":
            raise OnnxExportError("cannot export a %s with mode %s, format %s to ONNX"
                                  % (type(op).__name__, _mode(op), _mode(op, "format")))
        weight = _constant(op.inputs[1])
        if weight is None:
            raise OnnxExportError("cannot export a %s whose weights are computed in the graph"
                                  % type(op).__name__)
        groups = 1
        if weight.ndim == 5:  # MegEngine's grouped layout (groups, out/g, in/g, kh, kw)
            groups = weight.shape[0]
            weight = weight.reshape((-1,) + weight.shape[2:])
        inputs, added = [self.value(op.inputs[0]), self.const(weight)], []
        for extra in op.inputs[2:] if with_bias else ():
            # conv_bias(x, w, b[, z]): a per-channel constant b is the conv's bias; any
            # other operand (a tensor the optimizer fused in, such as an FPN's lateral sum)
            # is added after the conv
            bias = _constant(extra)
            if len(inputs) == 2 and bias is not None and bias.size == weight.shape[0]:
                inputs.append(self.const(bias.reshape(-1)))
            else:
                added.append(extra)
        p = op.params
        y = self.node("Conv", inputs, kernel_shape=list(weight.shape[2:]),
                      strides=[p["stride_h"], p["stride_w"]],
                      pads=[p["pad_h"], p["pad_w"], p["pad_h"], p["pad_w"]],
                      dilations=[p["dilate_h"], p["dilate_w"]], group=int(groups))
        for extra in added:
            y = self.node("Add", [y, self.value(extra)])
        return y

    def _ConvolutionForward(self, op, var):
        return self._conv(op, with_bias=False)

    def _ConvBiasForward(self, op, var):
        nonlinear = _mode(op, "nonlineMode")
        if nonlinear not in _NONLINEAR:
            raise OnnxExportError("cannot export a conv with the fused nonlinearity %s to ONNX "
                                  "(supported: %s)" % (nonlinear, ", ".join(_NONLINEAR)))
        y = self._conv(op, with_bias=True)
        return self.node(_NONLINEAR[nonlinear], [y]) if _NONLINEAR[nonlinear] else y

    def _Elemwise(self, op, var):
        mode = _mode(op)
        if mode not in _ELEMWISE:
            raise OnnxExportError("cannot export the elementwise operator %s (output %s) to "
                                  "ONNX; supported: %s" % (mode, var.name, ", ".join(_ELEMWISE)))
        inputs = [self.value(v) for v in op.inputs]
        first, *rest = _ELEMWISE[mode]
        arity = 1 if first in ("Relu", "Sigmoid") else 2
        y = self.node(first, inputs[:arity])
        for op_type in rest:  # the fused second step takes the remaining operand, if any
            y = self.node(op_type, [y] + inputs[arity:arity + 1]) if op_type in ("Add",) \
                else self.node(op_type, [y])
        return y

    def _Concat(self, op, var):
        return self.node("Concat", [self.value(v) for v in op.inputs], axis=int(op.params["axis"]))

    def _ResizeForward(self, op, var):
        src, dst = tuple(op.inputs[0].shape), tuple(var.shape)
        scales = [1.0, 1.0]
        for a, b in zip(src[2:], dst[2:]):
            scale = np.float32(b / a)
            if int(np.floor(np.float64(a) * np.float64(scale))) != b \
                    or int(np.floor(np.float32(a) * scale)) != b:
                raise OnnxExportError("cannot export a resize from %s to %s to ONNX: the scale "
                                      "%d/%d is not exact in float32" % (src, dst, b, a))
            scales.append(float(scale))
        mode = _mode(op, "imode")
        if mode == "NEAREST":
            attrs = dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                         nearest_mode="floor")
        elif mode == "LINEAR":
            attrs = dict(mode="linear", coordinate_transformation_mode="half_pixel")
        else:
            raise OnnxExportError("cannot export a resize with interpolation %s to ONNX "
                                  "(supported: nearest, linear)" % mode)
        return self.node("Resize", [self.value(op.inputs[0]), "", self.const(
            np.asarray(scales, np.float32))], **attrs)

    def _Reduce(self, op, var):
        """A mean over H of a mean over W (MegEngine's ``F.mean(x, axis=(2, 3))``) is a
        GlobalAveragePool; the inner mean alone is a placeholder that ``prune`` removes, or
        refuses when something else reads it."""
        mode, axis, shape = _mode(op), int(op.params["axis"]), tuple(op.inputs[0].shape)
        if mode != "MEAN" or len(shape) != 4 or axis not in (2, 3):
            raise OnnxExportError("cannot export a Reduce %s over axis %d of a %d-D tensor to "
                                  "ONNX (supported: a MEAN over H and W)"
                                  % (mode, axis, len(shape)))
        inner = op.inputs[0].owner
        if axis == 2 and type(inner).__name__ == "Reduce" and _mode(inner) == "MEAN" \
                and int(inner.params["axis"]) == 3:
            return self.node("GlobalAveragePool", [self.value(inner.inputs[0])])
        return self.node(_PARTIAL_MEAN, [self.value(op.inputs[0])], axes=[axis], keepdims=1)

    def prune(self, outputs):
        """Drop the nodes no output depends on; refuse a partial mean something still reads."""
        live, used = [], set(outputs)
        for node in reversed(self.nodes):
            if any(o in used for o in node.output):
                live.append(node)
                used.update(node.input)
        self.nodes = live[::-1]
        partial = [n for n in self.nodes if n.op_type == _PARTIAL_MEAN]
        if partial:
            raise OnnxExportError("cannot export a mean over one spatial axis to ONNX "
                                  "(supported: a mean over H and W, as global pooling)")
        names = {i for n in self.nodes for i in n.input}
        self.initializers = [t for t in self.initializers if t.name in names]


def traced_graph(forward, x, output_names):
    """``megengine.utils.network.Network`` of ``forward`` traced on ``x`` and dumped with
    the inference optimizations (what ``.mge`` files hold)."""
    import megengine as mge
    from megengine.jit import trace
    from megengine.utils.network import Network

    @trace(symbolic=True, capture_as_const=True)
    def graph(data):
        return forward(data)

    graph(mge.tensor(np.asarray(x, np.float32)))
    buf = io.BytesIO()
    graph.dump(buf, arg_names=[INPUT_NAME], output_names=list(output_names),
               optimize_for_inference=True, enable_fuse_conv_bias_nonlinearity=True)
    return Network.load(io.BytesIO(buf.getvalue()))


def graph_to_onnx(network, output_names, metadata=None):
    """The ONNX ``ModelProto`` of a loaded MegEngine ``Network`` with one image input."""
    import json

    import onnx
    from onnx import TensorProto, helper

    from .modelfile import METADATA_KEY

    inputs = [op for op in network.all_oprs if type(op).__name__ == "Host2DeviceCopy"]
    if len(inputs) != 1 or len(inputs[0].outputs[0].shape) != 4:
        raise OnnxExportError("the traced graph has %d inputs; ONNX export takes one (N, C, H, "
                              "W) batch" % len(inputs))
    t = _Translator()
    t.run(network, network.output_vars)
    outputs = []
    for var, name in zip(network.output_vars, output_names):
        t.node("Identity", [t.value(var)], output=name)
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                     ["batch"] + list(var.shape[1:])))
    shape = inputs[0].outputs[0].shape
    inp = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                        ["batch"] + [int(d) for d in shape[1:]])
    t.prune(list(output_names))
    graph = helper.make_graph(t.nodes, "repvgg_features", [inp], outputs, t.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="repvgg-megengine")
    proto.ir_version = min(proto.ir_version, 8)
    if metadata is not None:
        helper.set_model_props(proto, {METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    onnx.checker.check_model(proto)
    return proto


def export_onnx(forward, x, path, output_names, metadata=None):
    """Trace ``forward`` on ``x`` and write its ONNX graph to ``path`` (a path or a binary file
    object); returns the ``ModelProto``."""
    import onnx

    proto = graph_to_onnx(traced_graph(forward, x, output_names), output_names, metadata)
    if hasattr(path, "write"):
        path.write(proto.SerializeToString())
    else:
        onnx.save(proto, path)
    return proto
