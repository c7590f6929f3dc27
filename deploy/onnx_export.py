"""A deploy-form model as an ONNX graph, built with the ``onnx`` helper API from the module tree.

``to_onnx(deploy_model, input_shape, metadata=None) -> onnx.ModelProto`` walks the model's modules
and emits, for each one it knows, the ONNX operators that compute its forward pass:

=====================  ====================================================================
module                 ONNX
=====================  ====================================================================
RepVGG / RepVGGplus    stage0, the stages in order, global pool, classifier
RepVGGBlock (deploy)   Conv (3x3, bias, groups) -> Relu, SE before (``se``) or after
                       (``post_se``) the ReLU
SEBlock                GlobalAveragePool -> Conv -> Relu -> Conv -> Sigmoid -> Mul
ConvBn                 Conv with the eval-mode BatchNorm folded into weight and bias [-> Relu]
GlobalAvgPool          GlobalAveragePool -> Flatten
Linear                 Gemm (transB)
DerivedNet (searched)  stem, its layers, optional head, pool, classifier
InvertedResidual       FBNet's block: 1x1 ConvBn ReLU [channel shuffle as a 1x1 permutation
                       Conv] -> depthwise ConvBn ReLU -> 1x1 ConvBn [+ Add input]
Skip                   nothing, or its 1x1 ConvBn ReLU projection
=====================  ====================================================================

MegEngine stores a grouped conv's weight as ``(groups, out/groups, in/groups, kh, kw)``; ONNX as
``(out, in/groups, kh, kw)``: reshaped here. The batch dimension is dynamic (``batch``). A module
type the converter does not know is refused with one line naming it (``OnnxExportError``), never
skipped. Module types are recognised by class name (and base classes), so this package still
never imports ``model``. ``export_onnx`` writes the file; ``tools/export.py`` checks it with ONNX
Runtime before it is renamed into place.
"""
import json

import numpy as np

from errors import UserError

from .dump import INPUT_NAME, OUTPUT_NAME
from .emitters import emitter_for
from .modelfile import METADATA_KEY  # noqa: F401  (metadata_props key holding the JSON metadata)

OPSET = 17


class OnnxExportError(UserError):
    """A model that cannot be written as ONNX (names the module type)."""


def _array(tensor):
    return np.asarray(tensor.numpy() if hasattr(tensor, "numpy") else tensor, np.float32)


class _Graph:
    """Nodes and initializers of the graph being built; values are named ``v0``, ``v1``, ..."""

    def __init__(self):
        self.nodes, self.initializers, self._count = [], [], 0

    def name(self, prefix="v"):
        self._count += 1
        return "%s%d" % (prefix, self._count)

    def const(self, array, hint="w"):
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def op(self, op_type, inputs, **attrs):
        from onnx import helper

        out = self.name()
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out


def _conv_weight(conv, weight=None):
    """A MegEngine conv's weight in ONNX's layout ``(out, in/groups, kh, kw)``."""
    w = _array(conv.weight) if weight is None else weight
    if w.ndim == 5:  # grouped: (groups, out/groups, in/groups, kh, kw)
        w = w.reshape((w.shape[0] * w.shape[1],) + w.shape[2:])
    return w


def _pair(v):
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def _conv(g, conv, x, weight=None, bias=None):
    """Conv2d (MegEngine attributes) -> ONNX Conv; ``weight`` / ``bias`` override the module's."""
    w = _conv_weight(conv, weight)
    if bias is None and conv.bias is not None:
        bias = _array(conv.bias).reshape(-1)
    pad = _pair(conv.padding)
    inputs = [x, g.const(w)] + ([g.const(np.asarray(bias, np.float32))] if bias is not None
                                else [])
    mode = getattr(conv, "conv_mode", "cross_correlation")
    if str(mode).lower().split(".")[-1] not in ("cross_correlation",):
        raise OnnxExportError("Conv2d with conv_mode %s cannot be exported to ONNX" % mode)
    return g.op("Conv", inputs, kernel_shape=list(w.shape[2:]), strides=_pair(conv.stride),
                pads=[pad[0], pad[1], pad[0], pad[1]], dilations=_pair(conv.dilation),
                group=int(conv.groups))


def _bn_fold(bn):
    """(scale, shift) of an eval-mode BatchNorm2d: y = x * scale + shift, per channel."""
    mean = _array(bn.running_mean).reshape(-1)
    var = _array(bn.running_var).reshape(-1)
    scale = 1.0 / np.sqrt(var + np.float32(bn.eps))
    shift = -mean * scale
    if bn.affine:
        gamma, beta = _array(bn.weight).reshape(-1), _array(bn.bias).reshape(-1)
        scale, shift = scale * gamma, shift * gamma + beta
    return scale.astype(np.float32), shift.astype(np.float32)


# -- one emitter per module type -------------------------------------------------------------
def _emit_convbn(g, m, x):
    scale, shift = _bn_fold(m.bn)
    w = _conv_weight(m.conv)
    w = w * scale.reshape(-1, 1, 1, 1)
    y = _conv(g, m.conv, x, weight=w, bias=shift)
    return g.op("Relu", [y]) if m.relu else y


def _emit_conv2d(g, m, x):
    return _conv(g, m, x)


def _emit_se(g, m, x):
    w = g.op("GlobalAveragePool", [x])
    w = g.op("Sigmoid", [_conv(g, m.up, g.op("Relu", [_conv(g, m.down, w)]))])
    return g.op("Mul", [x, w])


def _emit_repvgg_block(g, m, x):
    if not m.deploy:
        raise OnnxExportError("%s is in train form; convert it to deploy form first"
                              % type(m).__name__)
    y = _conv(g, m.rbr_reparam, x)
    if m.se_after_relu:
        return _emit(g, m.post_se, g.op("Relu", [y]))
    return g.op("Relu", [_emit(g, m.se, y)])


def _channel_shuffle(g, x, channels, groups):
    """``model.fbnet.channel_shuffle`` ((g, C/g) -> (C/g, g)) as a 1x1 conv with a permutation
    kernel: exact (each output is one input times 1.0), and needs no shape arithmetic."""
    per = channels // groups
    kernel = np.zeros((channels, channels, 1, 1), np.float32)
    for j in range(per):
        for i in range(groups):
            kernel[j * groups + i, i * per + j] = 1.0
    return g.op("Conv", [x, g.const(kernel)], kernel_shape=[1, 1])


def _emit_inverted_residual(g, m, x):
    y = _emit(g, m.pw, x)
    if m.groups > 1:
        y = _channel_shuffle(g, y, m.pw.conv.out_channels, m.groups)
    y = _emit(g, m.pwl, _emit(g, m.dw, y))
    return g.op("Add", [y, x]) if m.use_residual else y


def _emit_skip(g, m, x):
    return x if m.proj is None else _emit(g, m.proj, x)


def _emit_gap(g, m, x):
    return g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)


def _emit_linear(g, m, x):
    inputs = [x, g.const(_array(m.weight))]
    if m.bias is not None:
        inputs.append(g.const(_array(m.bias).reshape(-1)))
    return g.op("Gemm", inputs, transB=1)


def _emit_identity(g, m, x):
    return x


def _emit_relu(g, m, x):
    return g.op("Relu", [x])


def _emit_sequential(g, m, x):
    for key in m.layer_keys:
        x = _emit(g, getattr(m, key), x)
    return x


def _emit_seq_list(g, blocks, x):
    for block in blocks:
        x = _emit(g, block, x)
    return x


def _emit_repvgg(g, m, x):
    x = _emit(g, m.stage0, x)
    for name in ("stage1", "stage2", "stage3", "stage4"):
        x = _emit_seq_list(g, getattr(m, name), x)
    return _emit(g, m.linear, _emit(g, m.gap, x))


def _emit_repvggplus(g, m, x):
    if not m.deploy:
        raise OnnxExportError("RepVGGplus is in train form; convert it to deploy form first")
    for name in ("stage0", "stage1", "stage2", "stage3_first", "stage3_second", "stage4"):
        x = _emit(g, getattr(m, name), x)
    return _emit(g, m.linear, _emit(g, m.gap, x))


def _emit_repvggplus_stage(g, m, x):
    return _emit_seq_list(g, m.blocks, x)


def _emit_derived(g, m, x):
    x = _emit_seq_list(g, [m.stem] + list(m.layers), x)
    if m.head is not None:
        x = _emit(g, m.head, x)
    return _emit(g, m.linear, _emit(g, m.gap, x))


# Class name -> emitter (looked up through the class and its bases: deploy/emitters.py).
EMITTERS = {
    "RepVGG": _emit_repvgg, "RepVGGplus": _emit_repvggplus,
    "RepVGGplusStage": _emit_repvggplus_stage, "RepVGGBlock": _emit_repvgg_block,
    "SEBlock": _emit_se, "ConvBn": _emit_convbn, "GlobalAvgPool": _emit_gap,
    "DerivedNet": _emit_derived, "Linear": _emit_linear, "Conv2d": _emit_conv2d,
    "Identity": _emit_identity, "ReLU": _emit_relu, "Sequential": _emit_sequential,
    "InvertedResidual": _emit_inverted_residual, "Skip": _emit_skip,
}


def _emit(g, module, x):
    emitter = emitter_for(EMITTERS, module)
    if emitter is not None:
        return emitter(g, module, x)
    raise OnnxExportError("cannot export a module of type %s to ONNX (supported: %s)"
                          % (type(module).__name__, ", ".join(sorted(EMITTERS))))


def to_onnx(deploy_model, input_shape, metadata=None):
    """The ONNX ``ModelProto`` of ``deploy_model`` (eval mode, deploy form) for input
    ``(N, C, H, W)`` = ``input_shape``; N becomes the dynamic dimension ``batch``.
    ``metadata`` (JSON-serialisable) is stored under ``metadata_props[METADATA_KEY]``."""
    import onnx
    from onnx import TensorProto, helper

    if len(input_shape) != 4:
        raise OnnxExportError("input shape must be (N, C, H, W), got %s" % (input_shape,))
    g = _Graph()
    out = _emit(g, deploy_model, INPUT_NAME)
    g.nodes.append(helper.make_node("Identity", [out], [OUTPUT_NAME]))
    inp = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                        ["batch"] + [int(d) for d in input_shape[1:]])
    outp = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", None])
    graph = helper.make_graph(g.nodes, "repvgg_deploy", [inp], [outp], g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="repvgg-megengine")
    proto.ir_version = min(proto.ir_version, 8)  # readable by older runtimes too
    if metadata is not None:
        helper.set_model_props(proto, {METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    onnx.checker.check_model(proto)
    return proto


def export_onnx(deploy_model, path, input_shape, metadata=None):
    """Write ``to_onnx(...)`` to ``path`` (a path or a binary file object)."""
    import onnx

    proto = to_onnx(deploy_model, input_shape, metadata)
    if hasattr(path, "write"):
        path.write(proto.SerializeToString())
    else:
        onnx.save(proto, path)
    return proto
