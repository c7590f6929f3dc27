"""A trained binary network as a packed program: what ``tools/export.py --format bnn`` writes.

``build_program(model)`` walks the eval-mode module tree (``BinaryResNet18``, a ``DerivedNet``
of binary primitives, or any tree of the modules below) and emits, for each module, the ops of
``deploy/binary_runtime.py`` that compute its forward pass exactly as the float emulation does:

========================  ===================================================================
module                    ops
========================  ===================================================================
BinaryConv2d              binary weights and activations: ``bconv`` (weights packed to 64-bit
                          words, ``α`` per output channel: 1 for ``sign``, one scalar for
                          ``xnor_tensor``, per filter for ``xnor_channel`` / ``bireal_channel``,
                          read from the emulation's own binarized weight); ``fp`` weights or
                          ``float`` activations: a float ``conv`` (on the signs of the input
                          when activations are binary), with the same pad value
BinaryConvBNReLU          [BN] conv (factorized: ``concat`` of the conv and its shifted half)
                          [+ SkipConnect] [BN] [ReLU], in the block's layer order
SkipConnect               ``avgpool2`` at stride 2, ``concat`` of two copies for 2C
ResNetDownSample          ``subsample`` (every s-th pixel, zero channels appended)
BinaryResNetBlock         op_1 + skip, op_2 + inner
BinaryVggBlock, BinaryNIN their layers [``avgpool2``]
BinaryResNetEBlock        BN(conv) + residual (PoolConvShortcut: ``avgpool2``, 1x1 conv, BN)
Conv2d, ConvBn, BN, ReLU  ``conv``, ``affine`` (eval BatchNorm), ``relu``
MaxPool2d, GlobalAvgPool  ``maxpool``, ``gap``; Linear: ``linear``
========================  ===================================================================

A BatchNorm (or ReLU) whose input is a conv's output used nowhere else is folded into that
conv's per-channel ``scale``/``shift`` (a binary conv's output is ``count·α``, so the fold is
``count·(α·s) + b``); a shortcut added to a binary conv's output becomes the conv's second input
(added in the kernel, before its ReLU). A module type not listed is refused with one line naming it
(``BinaryExportError``); a model without a single binary conv (binary weights *and*
activations) is refused before anything is written (``NotBinaryError``).

Modules are recognised by class name, as ``deploy/onnx_export.py`` does; ``model`` is imported
only for the emulation's weight binarization (this is the export side: the runtime never
imports it).
"""
import numpy as np

from errors import UserError

from . import bitops
from .emitters import emitter_for

FLOAT_WEIGHT_MODES = ("fp",)


class BinaryExportError(UserError):
    """A model that cannot be written as a packed binary model (names the module type)."""


class NotBinaryError(BinaryExportError):
    """A model with no binary layer: nothing to pack."""


def _array(tensor, dtype=np.float32):
    return np.asarray(tensor.numpy() if hasattr(tensor, "numpy") else tensor, dtype)


def _pair(v):
    return [int(i) for i in v] if isinstance(v, (tuple, list)) else [int(v), int(v)]


class Program:
    """Ops (JSON-able dicts) over numbered values (0 = the input, NHWC) and named arrays."""

    def __init__(self):
        self.ops, self.arrays, self._values = [], {}, 0
        self.binary_layers, self.binary_weights = 0, {"packed": 0, "float32": 0}
        self.convs = []  # (BinaryConv2d, its bconv op unfolded, the op's arrays)

    def array(self, a, dtype=None):
        name = "a%d" % len(self.arrays)
        self.arrays[name] = np.ascontiguousarray(a if dtype is None else np.asarray(a, dtype))
        return name

    def op(self, kind, inputs, **attrs):
        self._values += 1
        self.ops.append(dict(op=kind, inputs=list(inputs), out=self._values, **attrs))
        return self._values


def bn_fold(bn):
    """(scale, shift) of an eval-mode BatchNorm2d: y = x * scale + shift, per channel."""
    mean = _array(bn.running_mean, np.float64).reshape(-1)
    var = _array(bn.running_var, np.float64).reshape(-1)
    scale = 1.0 / np.sqrt(var + float(bn.eps))
    shift = -mean * scale
    if getattr(bn, "affine", True) and bn.weight is not None:
        gamma = _array(bn.weight, np.float64).reshape(-1)
        beta = _array(bn.bias, np.float64).reshape(-1)
        scale, shift = scale * gamma, shift * gamma + beta
    return scale.astype(np.float32), shift.astype(np.float32)


def _grouped(weight, groups):
    """A conv weight as ``(groups, O/g, C/g, kh, kw)`` (MegEngine keeps 4-D for groups=1)."""
    w = np.asarray(weight)
    return w if w.ndim == 5 else w.reshape((groups, w.shape[0] // groups) + w.shape[1:])


def _float_conv(p, x, weight, bias, conv, groups, pad_value=0.0, binarize=False, offset=0):
    """A float conv op: ``weight`` ``(groups, O/g, C/g, kh, kw)`` stored as
    ``(groups, kh·kw·C/g, O/g)`` (rows in (kh, kw, C/g) order)."""
    g, og, cg, kh, kw = weight.shape
    w = np.ascontiguousarray(weight.transpose(0, 3, 4, 2, 1).reshape(g, kh * kw * cg, og),
                             np.float32)
    shift = np.zeros(g * og, np.float32) if bias is None else np.asarray(bias, np.float32)
    return p.op("conv", [x], weight=p.array(w), kernel=[kh, kw],
                scale=p.array(np.ones(g * og, np.float32)), shift=p.array(shift.reshape(-1)),
                stride=_pair(conv.stride), padding=_pair(conv.padding),
                dilation=_pair(conv.dilation), groups=int(groups), pad_value=float(pad_value),
                binarize=bool(binarize), offset=int(offset), relu=False)


# -- one emitter per module type -------------------------------------------------------------
def _emit_conv2d(p, m, x):
    mode = str(getattr(m, "conv_mode", "cross_correlation")).lower().split(".")[-1]
    if mode != "cross_correlation" or str(getattr(m, "padding_mode", "zeros")) != "zeros":
        raise BinaryExportError("Conv2d with conv_mode %s / padding_mode %s cannot be packed"
                                % (mode, getattr(m, "padding_mode", "zeros")))
    bias = None if m.bias is None else _array(m.bias).reshape(-1)
    return _float_conv(p, x, _grouped(_array(m.weight), m.groups), bias, m, m.groups)


def binary_conv(p, m, x, shift=False):
    """``BinaryConv2d.forward(x, shift)``: the emulation's binarized weight, bit-packed when the
    activations are binary too."""
    cfg = m.config
    weight_mode = getattr(cfg.weight_mode, "value", cfg.weight_mode)
    act_mode = getattr(cfg.act_mode, "value", cfg.act_mode)
    groups, offset = int(m.groups), 1 if shift else 0
    bias = None if m.bias is None else _array(m.bias).reshape(-1)
    latent = _grouped(_array(m.weight), groups)
    binary_acts = act_mode != "float"
    if weight_mode in FLOAT_WEIGHT_MODES:
        return _float_conv(p, x, latent, bias, m, groups, cfg.pad_value, binary_acts, offset)
    # the emulation's own binarized weight: its α to the last bit
    wb = _grouped(_binarized_weight(m), groups)
    if not binary_acts:
        return _float_conv(p, x, wb, bias, m, groups, cfg.pad_value, False, offset)
    pad_mode = bitops.PAD_MODES.get(float(cfg.pad_value))
    if pad_mode is None:
        raise BinaryExportError("a binary conv padded with %r cannot be packed (pad values "
                                "0, -1 and +1 can)" % cfg.pad_value)
    signs = ~(latent >= 0)  # True = -1, as model.binary.ste._sign (sign(0) = +1)
    g, og, cg, kh, kw = signs.shape
    alpha = np.abs(wb).reshape(g * og, -1).max(axis=1).astype(np.float32)
    scale = np.ones(g * og, np.float32) if weight_mode == "sign" else alpha
    bits = bitops.pack_weight(signs)
    p.binary_layers += 1
    p.binary_weights["packed"] += bits.nbytes + (0 if weight_mode == "sign" else scale.nbytes)
    p.binary_weights["float32"] += latent.size * 4
    out = p.op("bconv", [x], bits=p.array(bits), neg=p.array(bitops.negatives_per_tap(signs)),
               scale=p.array(scale),
               shift=p.array(np.zeros(g * og, np.float32) if bias is None else bias),
               channels=int(g * cg), stride=_pair(m.stride), padding=_pair(m.padding),
               dilation=_pair(m.dilation), offset=offset, pad_mode=int(pad_mode), relu=False)
    op = dict(p.ops[-1], inputs=[0])  # as emitted, before any folding: count * α + bias
    p.convs.append((m, op, {op[k]: p.arrays[op[k]] for k in ("bits", "neg", "scale", "shift")}))
    return out


def _binarized_weight(m):
    """``binarize_weight(m.weight, m.config)``: the emulation's own forward, so α is its α."""
    from model.binary.ste import binarize_weight

    return _array(binarize_weight(m.weight, m.config))


def _emit_binary_conv(p, m, x):
    return binary_conv(p, m, x)


def _emit_bn(p, m, x):
    scale, shift = bn_fold(m)
    return p.op("affine", [x], scale=p.array(scale), shift=p.array(shift), relu=False)


def _emit_relu(p, m, x):
    return p.op("relu", [x])


def _emit_maxpool(p, m, x):
    return p.op("maxpool", [x], kernel=_pair(m.kernel_size),
                stride=_pair(m.stride if m.stride is not None else m.kernel_size),
                padding=_pair(m.padding))


def _emit_convbn(p, m, x):
    y = _emit_bn(p, m.bn, _emit_conv2d(p, m.conv, x))
    return p.op("relu", [y]) if m.relu else y


def _emit_conv_bn_relu(p, m, x):
    pre_bn = str(getattr(m.config.layer_order, "value", m.config.layer_order)) == "bn_conv_relu"
    if pre_bn:
        x = _emit_bn(p, m.bn, x)
    if m.factorized:
        y = p.op("concat", [binary_conv(p, m.convs[0], x),
                            binary_conv(p, m.convs[1], x, shift=True)])
    else:
        y = binary_conv(p, m.convs[0], x)
    if m.shortcut is not None:
        y = p.op("add", [y, _emit(p, m.shortcut, x)])
    if not pre_bn:
        y = _emit_bn(p, m.bn, y)
    return p.op("relu", [y]) if m.config.relu else y


def _emit_skip_connect(p, m, x):
    if m.stride == 2:
        x = p.op("avgpool2", [x])
    return p.op("concat", [x, x]) if m.duplicate else x


def _emit_downsample(p, m, x):
    return p.op("subsample", [x], stride=int(m.stride), extra=int(m.extra))


def _emit_resnet_block(p, m, x):
    skip = x if m.skip_op is None else _emit(p, m.skip_op, x)
    inner = p.op("add", [_emit(p, m.op_1, x), skip])
    return p.op("add", [_emit(p, m.op_2, inner), inner])


def _emit_vgg_block(p, m, x):
    x = _emit(p, m.op, x)
    return p.op("avgpool2", [x]) if m.stride == 2 else x


def _emit_nin(p, m, x):
    for layer in m.layers:
        x = _emit(p, layer, x)
    return x


def _emit_pool_conv(p, m, x):
    if m.stride == 2:
        x = p.op("avgpool2", [x])
    return _emit_bn(p, m.bn, _emit_conv2d(p, m.conv, x))


def _emit_resnet_e_block(p, m, x):
    residual = x if m.downsample is None else _emit(p, m.downsample, x)
    return p.op("add", [_emit_bn(p, m.bn, binary_conv(p, m.conv, x)), residual])


def _emit_gap(p, m, x):
    return p.op("gap", [x])


def _emit_linear(p, m, x):
    bias = np.zeros(m.weight.shape[0], np.float32) if m.bias is None \
        else _array(m.bias).reshape(-1)
    return p.op("linear", [x], weight=p.array(_array(m.weight).T), bias=p.array(bias))


def _emit_identity(p, m, x):
    return x


def _emit_sequential(p, m, x):
    for key in m.layer_keys:
        x = _emit(p, getattr(m, key), x)
    return x


def _emit_binary_resnet18(p, m, x):
    x = _emit(p, m.stem, x)
    for layer in m.body:
        x = _emit(p, layer, x)
    if m.relu_before_pool:
        x = p.op("relu", [x])
    return _emit(p, m.linear, _emit(p, m.gap, x))


def _emit_derived(p, m, x):
    x = _emit(p, m.stem, x)
    for layer in m.layers:
        x = _emit(p, layer, x)
    if m.head is not None:
        x = _emit(p, m.head, x)
    return _emit(p, m.linear, _emit(p, m.gap, x))


# Class name -> emitter (looked up through the class and its bases: deploy/emitters.py).
EMITTERS = {
    "BinaryResNet18": _emit_binary_resnet18, "DerivedNet": _emit_derived,
    "BinaryConv2d": _emit_binary_conv, "BinaryConvBNReLU": _emit_conv_bn_relu,
    "SkipConnect": _emit_skip_connect, "ResNetDownSample": _emit_downsample,
    "BinaryResNetBlock": _emit_resnet_block, "BinaryVggBlock": _emit_vgg_block,
    "BinaryNIN": _emit_nin, "PoolConvShortcut": _emit_pool_conv,
    "BinaryResNetEBlock": _emit_resnet_e_block, "ConvBn": _emit_convbn,
    "Conv2d": _emit_conv2d, "BatchNorm2d": _emit_bn, "ReLU": _emit_relu,
    "MaxPool2d": _emit_maxpool, "GlobalAvgPool": _emit_gap, "Linear": _emit_linear,
    "Identity": _emit_identity, "Sequential": _emit_sequential,
}


def _emit(p, module, x):
    emitter = emitter_for(EMITTERS, module)
    if emitter is not None:
        return emitter(p, module, x)
    raise BinaryExportError("cannot export a module of type %s as a packed binary model "
                            "(supported: %s)" % (type(module).__name__,
                                                 ", ".join(sorted(EMITTERS))))


def _packable(m):
    cfg = getattr(m, "config", None)
    return (type(m).__name__ == "BinaryConv2d" and cfg is not None
            and str(getattr(cfg.weight_mode, "value", cfg.weight_mode)) != "fp"
            and str(getattr(cfg.act_mode, "value", cfg.act_mode)) != "float")


def check_binary(model):
    """``NotBinaryError`` (one line) unless ``model`` has a conv to pack."""
    if not any(_packable(m) for m in model.modules()):
        raise NotBinaryError("%s has no binary layer (a BinaryConv2d with binary weights and "
                             "activations); export it as .mge or .onnx instead"
                             % type(model).__name__)


def _fold_residual(ops, i, producer, uses):
    """``add(bconv(x), r)`` -> ``bconv(x, r)`` (the kernel adds ``r`` before its ReLU), the
    bconv moved to the add's place, where ``r`` exists."""
    add = ops[i]
    for conv_v, res_v in (add["inputs"], add["inputs"][::-1]):
        src = producer.get(conv_v)
        if (src is not None and src["op"] == "bconv" and len(src["inputs"]) == 1
                and not src["relu"] and uses[conv_v] == 1 and conv_v != res_v):
            src["inputs"].append(res_v)
            src["out"] = add["out"]
            ops[i] = src
            ops.remove(src)  # the first occurrence: its old place, before the add
            return True
    return False


def _fold(p):
    """Fold an ``affine`` (and then a ``relu``) into the conv before it when that conv's output
    is used nowhere else, and an ``add`` of such a binary conv's output into the conv."""
    ops = p.ops
    changed = True
    while changed:
        changed = False
        uses = {}
        for op in ops:
            for v in op["inputs"]:
                uses[v] = uses.get(v, 0) + 1
        producer = {op["out"]: op for op in ops}
        for i, op in enumerate(ops):
            if op["op"] == "add" and _fold_residual(ops, i, producer, uses):
                changed = True
                break
            if op["op"] not in ("affine", "relu"):
                continue
            src = producer.get(op["inputs"][0])
            if src is None or src["op"] not in ("conv", "bconv", "affine") or src["relu"] \
                    or uses[op["inputs"][0]] != 1:
                continue
            if op["op"] == "affine":
                if src["op"] == "affine" or len(src["inputs"]) > 1:  # not through a residual
                    continue
                s, b = p.arrays[op["scale"]], p.arrays[op["shift"]]
                src["scale"] = p.array(p.arrays[src["scale"]] * s)
                src["shift"] = p.array(p.arrays[src["shift"]] * s + b)
                src["relu"] = op["relu"]
            else:
                src["relu"] = True
            src["out"] = op["out"]
            del ops[i]
            changed = True
            break
    used = {name for op in ops for key, name in op.items()
            if key in ("weight", "bias", "scale", "shift", "bits", "neg")}
    p.arrays = {k: v for k, v in p.arrays.items() if k in used}


def build_program(model, require_binary=True):
    """The packed ``Program`` of an eval-mode binary ``model`` (its output value
    ``program.output``; ``require_binary=False`` also takes a part without binary convs)."""
    if require_binary:
        check_binary(model)
    p = Program()
    out = _emit(p, model, 0)
    if out == 0:
        raise BinaryExportError("%s computes nothing" % type(model).__name__)
    _fold(p)
    p.output = out
    p.initial_batchnorm = any(
        type(m).__name__ == "BatchNorm2d" and not _array(m.running_mean).any()
        and (_array(m.running_var) == 1).all() for m in model.modules())
    last = [op for op in p.ops if op["out"] == out]
    p.num_classes = (int(p.arrays[last[0]["weight"]].shape[1])
                     if last and last[0]["op"] == "linear" else None)
    return p


def check_layers(model, program, x):
    """Run every packed binary conv of ``program`` on the input its ``BinaryConv2d`` received
    in the eager ``model`` on ``x`` (NCHW), and compare with that conv's output: the counts must
    be the emulation's exactly (``out == float32(count)·α + bias`` bitwise, ``count`` the integer
    the emulation computed), whatever the float rounding before them. Returns ``(convs checked,
    max relative difference, [problem, ...])``."""
    import megengine as mge

    from .binary_runtime import RUN

    captured, handles = {}, []
    for m, _, _ in program.convs:
        def hook(module, inputs, output, key=id(m)):
            captured[key] = (inputs[0].numpy(), output.numpy())
        handles.append(m.register_forward_hook(hook))
    try:
        model(mge.tensor(x))
    finally:
        for h in handles:
            h.remove()
    worst, problems = 0.0, []
    for i, (m, op, arrays) in enumerate(program.convs):
        x_in, ref = captured[id(m)]
        out = RUN["bconv"](op, arrays, np.ascontiguousarray(x_in.transpose(0, 2, 3, 1)))
        out = out.transpose(0, 3, 1, 2)
        alpha = arrays[op["scale"]].reshape(1, -1, 1, 1)
        bias = arrays[op["shift"]].reshape(1, -1, 1, 1)
        counts = np.rint((ref - bias) / np.where(alpha == 0, 1, alpha))
        counts[np.broadcast_to(alpha == 0, counts.shape)] = 0
        expected = counts.astype(np.float32) * alpha + bias
        worst = max(worst, float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30)))
        off = np.abs(ref - expected) > 1e-3 * np.abs(alpha) + 1e-6 * np.abs(bias)
        if out.shape != ref.shape or off.any():
            problems.append("binary conv %d (%s): the emulation's output is no integer count "
                            "times its scale" % (i, type(m).__name__))
        elif not np.array_equal(out, expected):
            diff = np.abs(np.rint((out - bias) / np.where(alpha == 0, 1, alpha)) - counts)
            problems.append("binary conv %d: %d of %d counts differ (by up to %d)"
                            % (i, int((diff > 0).sum()), diff.size, int(diff.max())))
    return len(program.convs), worst, problems
