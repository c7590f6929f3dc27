"""An untrusted ``.onnx`` file checked before ONNX Runtime or OpenVINO sees it.

``check_file(path, limits)`` reads the file (its size bounded by the memory budget), scans its
protobuf framing (how many nodes and tensors, how much besides weight bytes: bounded before
the parser builds objects for them), parses it with ``onnx`` (no external data is loaded) and
refuses, in one ``ModelFileError`` line:

- **external data**, altogether: no file of this toolkit, nor timm's export, uses it, and a
  tensor that points at ``/etc/passwd`` or ``../`` would have the runtime read that file as
  weights; tensors whose dims do not match the bytes present; unknown element types;
- **operators** outside ``ALLOWED_OPS`` (what ``deploy/onnx_export.py`` writes for classifiers,
  SE blocks and searched networks, the int8 QDQ files of ``quant/onnx_int8.py``, timm's
  ``torch.onnx`` export of a RepVGG, and the upsampling / concat heads of a backbone); control
  flow and data generators (``Loop``, ``If``, ``ConstantOfShape``, random ops ...) are named as
  such; domains other than the default one, functions, subgraph attributes;
- a **signature** other than one float32 ``(N, 3, H, W)`` input and either one ``(N, classes)``
  output (a classifier, or a foreign file without metadata) or the feature maps its metadata
  records (``modelfile.feature_outputs``);
- **budgets** (``common.limits``) passed: ``onnx.shape_inference`` (on a copy without the
  weight bytes, at batch 1 for a dynamic batch) gives every tensor's shape; weights are the
  initializers and every tensor computed from them alone (a QDQ file's dequantized weights);
  activations are the peak of a liveness pass over the nodes in their (checked) topological
  order: each tensor is counted from the node that makes it to the last node that reads it;
  MACs are those of ``Conv`` and ``Gemm``. A tensor whose shape inference cannot tell is
  refused ("cannot bound").

What passes runs in the runtime from the very bytes that were checked. Nothing here runs the
graph or allocates more than the file's own size.
"""
import dataclasses
import math
import os

from common.limits import MIB, Limits
from errors import ModelFileError

from . import modelfile

# Operators of the networks this toolkit runs, and who emits them.
ALLOWED_OPS = frozenset({
    "Conv", "Relu", "Add", "Gemm", "Flatten", "GlobalAveragePool", "Identity",  # classifiers
    "Sigmoid", "Mul",                                      # SE blocks (deploy/onnx_export.py)
    "QuantizeLinear", "DequantizeLinear",                  # int8 QDQ (quant/onnx_int8.py)
    "BatchNormalization",                                  # timm's train-form export
    "Resize", "Upsample", "Concat",                        # FPN / UNet heads of a backbone
    "Constant",                                            # a literal tensor (torch exports)
})
CONTROL_FLOW = frozenset({"Loop", "If", "Scan", "SequenceMap"})
GENERATORS = frozenset({"ConstantOfShape", "RandomNormal", "RandomNormalLike", "RandomUniform",
                        "RandomUniformLike", "Multinomial", "Bernoulli", "Range", "EyeLike",
                        "Expand", "Tile"})
DOMAINS = ("", "ai.onnx")
MIN_OPSET = 7
RESIZE_MODES = (b"nearest", b"linear")
MAX_RESIZE_SCALE = 64.0

# Framing bounds, checked before the parser builds Python objects (a few bytes of wire format
# can make a much larger object): far above any real network (B3's file has ~60 nodes).
MAX_NODES = 20000
MAX_TENSORS = 20000
MAX_GRAPH_FIELDS = 100000
MAX_STRUCTURE_BYTES = 64 * MIB   # nodes, inputs, outputs, names: all but the weights
MAX_TENSOR_FIELDS = 64           # dims, type, name, one data field ...
METADATA_ALLOWANCE = 16 * MIB    # a file may exceed its weights budget by this much

# element type -> bytes per element (onnx.TensorProto.DataType)
ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}
FLOAT = 1
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


@dataclasses.dataclass
class CheckedOnnx:
    """What the runtime needs from a checked file: its bytes and its signature."""
    data: bytes
    input_name: str
    input_shape: tuple      # (N, 3, H, W); N = 1 for a dynamic batch
    dynamic_batch: bool
    output_names: list
    num_classes: object     # None for a features export
    metadata: dict
    weights: int            # bytes
    activations: int        # peak bytes per image
    macs: int               # per image


MAX_MESSAGE = 300  # names and values quoted from the file are the file's: kept short


def refuse(path, message):
    """The one-line ``ModelFileError`` for ``path``."""
    text = " ".join(message.splitlines())
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE - 3] + "..."
    # "a.onnx is not an ONNX model (...)" reads as a sentence; other reasons follow a colon
    raise ModelFileError(("%s %s" if text.startswith("is ") else "%s: %s") % (path, text))


# -- the protobuf framing, before parsing ---------------------------------------------------
def _varint(buf, pos, end):
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated or malformed")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start, end, most):
    """``(field, wire type, value start, value end)`` of the message ``buf[start:end]``; at most
    ``most`` fields (``ValueError`` beyond, or on a malformed framing)."""
    pos, count = start, 0
    while pos < end:
        count += 1
        if count > most:
            raise ValueError("more than %d fields in one message" % most)
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value_end = _varint(buf, pos, end)[1]
        elif wire == 1:
            value_end = pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            value_end = pos + length
        elif wire == 5:
            value_end = pos + 4
        else:
            raise ValueError("wire type %d" % wire)
        if value_end > end:
            raise ValueError("truncated")
        yield field, wire, pos, value_end
        pos = value_end


def scan_framing(path, data):
    """Refuse a file whose node / tensor counts or non-weight bytes pass the framing bounds;
    returns each initializer's ``raw_data`` length, in order (read here, where it costs
    nothing: the parsed message would copy the bytes to tell)."""
    try:
        graphs = [(s, e) for f, w, s, e in _fields(data, 0, len(data), MAX_GRAPH_FIELDS)
                  if f == 7 and w == 2]  # ModelProto.graph
        if len(graphs) != 1:
            refuse(path, "is not an ONNX model (%s graph)"
                   % ("no" if not graphs else "more than one"))
        nodes = structure = 0
        raw_lengths = []
        for f, w, s, e in _fields(data, *graphs[0], MAX_GRAPH_FIELDS):
            if f == 5 and w == 2:  # GraphProto.initializer: only its data fields may be large
                raw_lengths.append(0)
                for tf, tw, ts, te in _fields(data, s, e, MAX_TENSOR_FIELDS):
                    if tf == 9:
                        raw_lengths[-1] = te - ts
                    # raw bytes and packed floats parse to their own size; everything else
                    # (packed varints: 8 bytes in memory per wire byte) is structure
                    if tf not in (4, 9, 10):  # float_data, raw_data, double_data
                        structure += te - ts
            else:
                nodes += f == 1
                structure += e - s
    except ValueError as e:
        refuse(path, "is not an ONNX model (its protobuf framing is %s)" % e)
    tensors = len(raw_lengths)
    if nodes > MAX_NODES or tensors > MAX_TENSORS or structure > MAX_STRUCTURE_BYTES:
        refuse(path, "declares %d nodes, %d weight tensors and %.0f MiB of structure; the most "
                     "a model may have is %d, %d and %d MiB"
               % (nodes, tensors, structure / MIB, MAX_NODES, MAX_TENSORS,
                  MAX_STRUCTURE_BYTES // MIB))
    return raw_lengths


# -- structure ------------------------------------------------------------------------------
def _tensor_bytes(path, tensor, what, raw_length=None):
    """Bytes of a literal tensor after checking that its data is inline and fits its dims
    (``raw_length``: its ``raw_data`` length, when known from the framing)."""
    name = tensor.name or what
    if tensor.data_location == EXTERNAL or len(tensor.external_data):
        refuse(path, "tensor %r keeps its data in an external file; external data is refused "
                     "(no model of this toolkit needs it)" % name)
    if tensor.data_type not in ITEMSIZE:
        refuse(path, "tensor %r has element type %d, which no supported network uses"
               % (name, tensor.data_type))
    if tensor.HasField("segment") or any(d < 0 for d in tensor.dims) or len(tensor.dims) > 8:
        refuse(path, "tensor %r has malformed dims %s" % (name, list(tensor.dims)[:9]))
    count = math.prod(tensor.dims)
    size = count * ITEMSIZE[tensor.data_type]
    if raw_length is None:
        raw_length = len(tensor.raw_data)
    present = {"raw_data": raw_length, "float_data": len(tensor.float_data),
               "int32_data": len(tensor.int32_data), "int64_data": len(tensor.int64_data),
               "double_data": len(tensor.double_data), "uint64_data": len(tensor.uint64_data)}
    fields = [k for k, n in present.items() if n]
    if len(fields) > 1 or (count and not fields):
        refuse(path, "tensor %r declares %s but holds %s" % (name, list(tensor.dims),
                                                            " and ".join(fields) or "no data"))
    held = present[fields[0]] if fields else 0
    expected = size if fields == ["raw_data"] else count
    if held != expected:
        refuse(path, "tensor %r declares %s (%d bytes) but holds %d %s"
               % (name, list(tensor.dims), size, held,
                  "bytes" if fields == ["raw_data"] else "values"))
    return size


def _check_model_fields(path, proto):
    import onnx

    if not proto.HasField("graph"):
        refuse(path, "is not an ONNX model (no graph)")
    if not 3 <= proto.ir_version <= onnx.IR_VERSION:
        refuse(path, "has ONNX IR version %d; this onnx package reads 3 to %d"
               % (proto.ir_version, onnx.IR_VERSION))
    if len(proto.functions) or len(proto.training_info):
        refuse(path, "defines model-local functions or training steps, which are refused")
    domains = [o.domain for o in proto.opset_import]
    if len(domains) != 1 or domains[0] not in DOMAINS:
        refuse(path, "imports operator sets %s; only the default ONNX domain is accepted"
               % (domains[:4] or "none"))
    version = proto.opset_import[0].version
    if not MIN_OPSET <= version <= onnx.defs.onnx_opset_version():
        refuse(path, "uses ONNX opset %d; supported: %d to %d"
               % (version, MIN_OPSET, onnx.defs.onnx_opset_version()))
    if len(proto.graph.sparse_initializer):
        refuse(path, "has sparse initializers, which no supported network uses")


def _check_node(path, node, consts):
    """Refuse a node outside the allow-list or with attributes the runtime must not see."""
    op = node.op_type
    if node.domain not in DOMAINS:
        refuse(path, "node %r is op %s of domain %r; only the default ONNX domain is accepted"
               % (node.name, op, node.domain))
    if op not in ALLOWED_OPS:
        kind = ("control flow" if op in CONTROL_FLOW else
                "a data generator" if op in GENERATORS else
                "not an operator of the networks this toolkit runs")
        refuse(path, "op %s is refused (%s)" % (op[:60], kind))
    from onnx import AttributeProto as A

    for attr in node.attribute:
        if attr.ref_attr_name or attr.type not in (A.FLOAT, A.INT, A.STRING, A.TENSOR,
                                                   A.FLOATS, A.INTS, A.STRINGS):
            refuse(path, "op %s has attribute %r of a refused kind (subgraphs, function "
                         "references and sparse tensors are refused)" % (op, attr.name))
    if op == "Constant":
        if [a.name for a in node.attribute] != ["value"] or node.attribute[0].type != A.TENSOR:
            refuse(path, "op Constant is accepted with a 'value' tensor only")
        consts[node.output[0]] = node.attribute[0].t
    if op == "Resize":
        mode = next((a.s for a in node.attribute if a.name == "mode"), b"nearest")
        if mode not in RESIZE_MODES:
            refuse(path, "op Resize with mode %r is refused (nearest and linear are accepted)"
                   % mode.decode("utf-8", "replace")[:20])
        _check_resize_sizes(path, node, consts)


def _check_resize_sizes(path, node, consts):
    """Resize's scales / sizes must be literal, finite and moderate: they set tensor sizes."""
    from onnx import numpy_helper

    import numpy as np

    inputs = list(node.input[2:4]) if len(node.input) > 2 else []
    for index, name in enumerate(node.input[1:] if node.op_type == "Upsample" else inputs):
        if not name:
            continue
        if name not in consts:
            refuse(path, "op %s takes its %s from a computed tensor; only literal ones are "
                         "accepted" % (node.op_type, "scales" if index == 0 else "sizes"))
        values = np.asarray(numpy_helper.to_array(consts[name]), np.float64).ravel()
        bound = MAX_RESIZE_SCALE if index == 0 else 1 << 16
        if values.size > 8 or not np.all(np.isfinite(values)) or np.any(values < 0) \
                or np.any(values > bound):
            refuse(path, "op %s has scales or sizes %s out of range"
                   % (node.op_type, values[:8].tolist()))


def _check_graph(path, graph, raw_lengths):
    """Node-by-node checks; returns ``(weight bytes, {name: literal tensor})``."""
    consts, weights = {}, 0
    for tensor, raw_length in zip(graph.initializer, raw_lengths):
        weights += _tensor_bytes(path, tensor, "initializer", raw_length)
        consts[tensor.name] = tensor
    if len(consts) != len(graph.initializer):
        refuse(path, "has initializers of the same name")
    inputs = [i.name for i in graph.input if i.name not in consts]
    defined = set(consts) | set(inputs)
    for node in graph.node:
        _check_node(path, node, consts)
        for attr in node.attribute:
            if attr.type == attr.TENSOR:
                weights += _tensor_bytes(path, attr.t, "%s.%s" % (node.op_type, attr.name))
        missing = [n for n in node.input if n and n not in defined]
        if missing:
            refuse(path, "op %s reads %r before any node computes it (the nodes are not in "
                         "topological order, or the tensor is missing)" % (node.op_type,
                                                                        missing[0][:80]))
        if not len(node.output) or any(not n or n in defined for n in node.output):
            refuse(path, "op %s writes an unnamed tensor or one already defined" % node.op_type)
        defined.update(node.output)
    return weights, consts


# -- signature and shapes -------------------------------------------------------------------
def _dims(value_info):
    """A tensor's dims as ints (``None`` for an unknown one), or ``None`` without a shape."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def _check_input(path, graph, initializers, limits):
    """``(input ValueInfo, (N, 3, H, W), dynamic batch)``; refuses anything else (graph inputs
    named in ``initializers`` are weights, as IR < 4 lists them)."""
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        refuse(path, "takes %d inputs; expected one (N, 3, H, W) image batch" % len(inputs))
    inp = inputs[0]
    elem, dims = inp.type.tensor_type.elem_type, _dims(inp)
    if not inp.type.HasField("tensor_type") or elem != FLOAT:
        refuse(path, "takes input %r of element type %d; expected float32 images"
               % (inp.name[:80], elem))
    if dims is None or len(dims) != 4 or dims[1] not in (None, 3) \
            or any(d is not None and d < 1 for d in dims):
        refuse(path, "takes input %r of shape %s; expected (N, 3, H, W)"
               % (inp.name[:80], dims if dims is None else dims[:8]))
    if dims[2] is None or dims[3] is None:
        refuse(path, "takes input of shape %s without a fixed image size; cannot bound its "
                     "memory" % (dims,))
    batch = dims[0] or 1
    # the input itself, before shape inference handles its size
    limits.check(path, activations=4 * 3 * dims[2] * dims[3], batch=batch)
    return inp, (batch, 3, dims[2], dims[3]), dims[0] is None


def _infer_shapes(path, proto, inp, shape, consts):
    """``{tensor name: (element type, dims)}`` of every tensor, inferred by onnx on a copy of
    the graph without the weight bytes (big literals become typed inputs)."""
    import onnx
    from onnx import helper

    copy = onnx.ModelProto(ir_version=max(proto.ir_version, 4))
    copy.opset_import.extend(proto.opset_import)
    graph = copy.graph
    graph.name = proto.graph.name or "graph"
    graph.node.extend(proto.graph.node)
    graph.input.append(helper.make_tensor_value_info(inp.name, FLOAT, list(shape)))
    for tensor in proto.graph.initializer:
        if tensor.data_type in ITEMSIZE and math.prod(tensor.dims) > 64:
            graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type,
                                                             list(tensor.dims)))
        else:  # small: shape arithmetic may read its values
            graph.initializer.append(tensor)
    graph.output.extend(proto.graph.output)  # as declared: inference must agree
    try:
        onnx.checker.check_model(copy)
        inferred = onnx.shape_inference.infer_shapes(copy, check_type=True, strict_mode=True,
                                                     data_prop=True)
    except Exception as e:  # onnx raises its own ValidationError / InferenceError types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        refuse(path, "is not a valid ONNX graph (%s)" % first[:200])
    shapes = {name: (t.data_type, list(t.dims)) for name, t in consts.items()}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) \
            + list(inferred.graph.output):
        shapes[vi.name] = (vi.type.tensor_type.elem_type, _dims(vi))
    return shapes


def _bytes_of(path, shapes, name):
    elem, dims = shapes.get(name, (0, None))
    if dims is None or any(d is None for d in dims) or elem not in ITEMSIZE:
        refuse(path, "cannot bound tensor %r: its shape is unknown after shape inference"
               % name[:80])
    return math.prod(dims) * ITEMSIZE[elem]


def _budget(path, graph, shapes, consts, batch):
    """``(weight bytes of computed constants, peak activation bytes, MACs)`` for ``batch``
    images (the liveness pass of the module docstring)."""
    const_names = set(consts)
    last_use, outputs = {}, {o.name for o in graph.output}
    for i, node in enumerate(graph.node):
        for name in list(node.input) + list(node.output):
            last_use[name] = i
    inp = next(i.name for i in graph.input if i.name not in consts)
    live = peak = _bytes_of(path, shapes, inp)
    derived = macs = 0
    for i, node in enumerate(graph.node):
        sizes = [_bytes_of(path, shapes, o) for o in node.output]
        if all(n in const_names for n in node.input if n):  # computed from weights alone
            const_names.update(node.output)
            derived += sum(sizes) if node.op_type != "Constant" else 0
            continue
        live += sum(sizes)
        peak = max(peak, live)
        macs += _macs(path, node, shapes)
        for name in set(node.input) | set(node.output):
            if name and last_use.get(name) == i and name not in outputs \
                    and name not in const_names:
                live -= _bytes_of(path, shapes, name)
    return derived, peak, macs


def _dims_of(path, shapes, name):
    _bytes_of(path, shapes, name)  # refuses an unknown shape
    return shapes[name][1]


def _macs(path, node, shapes):
    if node.op_type == "Conv":
        out, x, w = (_dims_of(path, shapes, n) for n in (node.output[0], *node.input[:2]))
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), w[2:])
        if len(w) != len(x) or group < 1 or x[1] != w[1] * group or w[0] % group \
                or kernel != w[2:]:
            refuse(path, "op Conv has a weight of shape %s (kernel_shape %s) for input %s in "
                         "%d groups" % (w, kernel[:4], x, group))
        return math.prod(out) * math.prod(w[1:])
    if node.op_type == "Gemm":
        out, a = (_dims_of(path, shapes, n) for n in (node.output[0], node.input[0]))
        trans = next((x.i for x in node.attribute if x.name == "transA"), 0)
        return math.prod(out) * (a[0] if trans else a[-1])
    return 0


def _check_declared_outputs(path, graph, features):
    """Before shape inference: the number and ranks of the outputs the graph declares."""
    declared = [_dims(o) for o in graph.output]
    rank = 4 if features else 2
    if len(declared) != (len(features) if features else 1) \
            or any(d is not None and len(d) != rank for d in declared):
        refuse(path, "declares outputs of shapes %s; %s"
               % (declared[:4],
                  "a classifier has one float32 (N, classes) output" if not features else
                  "its metadata records %d (N, C, H, W) feature maps" % len(features)))


def _check_outputs(path, graph, shapes, metadata, batch):
    """``(output names, num_classes)``: one ``(N, classes)`` output, or the recorded features;
    N is the input's ``batch`` (an output that broadcasts to more images is refused)."""
    features = modelfile.feature_outputs(path, metadata)
    names = [o.name for o in graph.output]
    dims = [shapes.get(n, (0, None)) for n in names]
    if any(d and d[0] != batch for _, d in dims):
        refuse(path, "has outputs of shapes %s for a batch of %d images"
               % ([d for _, d in dims][:4], batch))
    if features is None:
        if len(names) != 1 or dims[0][0] != FLOAT or dims[0][1] is None \
                or len(dims[0][1]) != 2:
            refuse(path, "has %d outputs of shapes %s; a classifier has one float32 (N, "
                         "classes) output" % (len(names), [d for _, d in dims][:4]))
        num_classes = dims[0][1][1]
        modelfile.check_outputs(path, metadata, num_classes)
        return names, num_classes
    if len(names) != len(features) or any(
            e != FLOAT or d is None or len(d) != 4 or d[1] != f["channels"]
            for (e, d), f in zip(dims, features)):
        refuse(path, "has outputs of shapes %s but its metadata records feature maps of %s "
                     "channels" % ([d for _, d in dims][:8], [f["channels"] for f in features]))
    return names, None


def check_file(path, limits=None):
    """Check the ``.onnx`` at ``path`` as the module docstring says; a ``CheckedOnnx``."""
    limits = limits or Limits()
    if not os.path.isfile(path):
        raise ModelFileError("model file not found: %s" % path)
    size = os.path.getsize(path)
    if size > limits.max_memory + METADATA_ALLOWANCE:
        refuse(path, "is %.1f MiB, more than its weights may be under --max-memory (%.0f MiB)"
               % (size / MIB, limits.max_memory / MIB))
    with open(path, "rb") as f:
        data = f.read(size + 1)
    raw_lengths = scan_framing(path, data)
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.ModelProto.FromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        refuse(path, "is not an ONNX model (%s)" % (str(e).splitlines() or ["unreadable"])[0][:120])
    _check_model_fields(path, proto)
    graph = proto.graph
    if len(raw_lengths) != len(graph.initializer):  # the framing scan and the parser disagree
        refuse(path, "is not an ONNX model (malformed initializers)")
    props = [p.value for p in proto.metadata_props if p.key == modelfile.METADATA_KEY]
    metadata = modelfile.decode_metadata(props[-1] if props else None, path)
    # the signature first: a wrong input or output is named as such, whatever the ops
    inp, shape, dynamic = _check_input(path, graph, {t.name for t in graph.initializer},
                                       limits)
    _check_declared_outputs(path, graph, modelfile.feature_outputs(path, metadata))
    weights, consts = _check_graph(path, graph, raw_lengths)
    shapes = _infer_shapes(path, proto, inp, shape, consts)
    names, num_classes = _check_outputs(path, graph, shapes, metadata, shape[0])
    derived, peak, macs = _budget(path, graph, shapes, consts, shape[0])
    per_image = -(-peak // shape[0])
    limits.check(path, weights=weights + derived, activations=per_image,
                 macs=macs // shape[0], batch=shape[0])
    return CheckedOnnx(data, inp.name, shape, dynamic, names, num_classes, metadata,
                       weights + derived, per_image, macs // shape[0])
