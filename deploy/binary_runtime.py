"""Running a packed binary model (``.bnn``, written by ``tools/export.py --format bnn``).

The file is a zip of ``.npy`` members (what ``np.savez`` writes): ``header``, the UTF-8 JSON
text below as a uint8 array, and the arrays it names (``a0``, ``a1``, ...; packed weights are
uint64, little-endian as ``.npy`` records)::

    {"format": "repvgg-binary-model/1", "word_bits": 64,
     "input_shape": [N, 3, H, W], "num_classes": 10, "output": 57,
     "metadata": "<the JSON text runtime.encode_metadata writes>",
     "ops": [{"op": "conv", "inputs": [0], "out": 1, "weight": "a0", ...}, ...]}

Value 0 is the input batch (NCHW in, NHWC inside); each op writes the value ``out``; ``output``
is the logits. Ops (attributes in ``bnn_format.OPS``): ``conv`` (float conv, groups, optional
sign of the input, pad value, shifted grid), ``bconv`` (``deploy/bitops.py``: XNOR-popcount over
packed words, ``count·scale + shift``, plus its second input when it has one: a shortcut),
``affine`` (per channel), ``relu``, ``add``, ``concat`` (channels), ``avgpool2`` (2x2 stride 2,
ceil mode by edge replication), ``maxpool``, ``subsample`` (every s-th pixel, zero channels
appended), ``gap``, ``linear``.

The file is untrusted. Opening it (``BinaryModel``) reads the zip's directory and each member's
``.npy`` header without trusting them (``deploy/bnn_container.py``), checks the header against
a strict schema and walks the ops on shapes alone (``deploy/bnn_format.py``), and checks the
weights, peak activations, MACs and batch that walk gives against ``common.limits`` — all before
any array is read or any kernel compiled. Only then are the arrays read and the model run once
on zeros at its input size. Anything refused is one ``ModelFileError`` line. Never imports
``model`` or MegEngine. The float stem may run as one ONNX Runtime session (``_float_prefix``),
checked against the numba ops when the file is opened; the rest runs as the fused steps of
``deploy/binary_plan.py`` (3x3 binary convs in ``deploy/bnn_kernels.py``), checked likewise.
"""
import json
import logging
import os

import numpy as np

from common.limits import Limits
from errors import ModelFileError

from . import bnn_container, bnn_format
from .bnn_format import OPS, last_uses

log = logging.getLogger(__name__)

BINARY_FORMAT = bnn_format.FORMAT
SUFFIX = ".bnn"
HEADER = bnn_container.HEADER
WORD_BITS = bnn_format.WORD_BITS


class _Bad(ValueError):
    """A header or shape that does not fit; becomes a ModelFileError naming the file."""


def write(path, program, metadata_text, input_shape):
    """Write ``program`` (``deploy.binary_export.Program``) to ``path`` (a path or a binary file
    object) with the metadata JSON text."""
    header = {"format": BINARY_FORMAT, "word_bits": WORD_BITS,
              "input_shape": [int(d) for d in input_shape], "num_classes": program.num_classes,
              "output": int(program.output), "metadata": metadata_text, "ops": program.ops}
    text = np.frombuffer(json.dumps(header, sort_keys=True).encode("utf-8"), np.uint8)
    arrays = {HEADER: text, **program.arrays}
    if hasattr(path, "write"):
        np.savez(path, **arrays)
    else:
        with open(path, "wb") as f:
            np.savez(f, **arrays)


# -- ops, NHWC ------------------------------------------------------------------------------
def _need(cond, message, *args):
    if not cond:
        raise _Bad(message % args)


def _pad(x, top, bottom, left, right, value):
    if not (top or bottom or left or right):
        return x
    return np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=value)


def _windows(x, kernel, stride, dilation, out_h, out_w):
    """Yields the ``(N, out_h, out_w, C)`` input slice of each tap, row-major."""
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            h0, w0 = i * dilation[0], j * dilation[1]
            yield x[:, h0:h0 + stride[0] * (out_h - 1) + 1:stride[0],
                    w0:w0 + stride[1] * (out_w - 1) + 1:stride[1]]


def _shifted_pad(x, padding, offset, value):
    """Pad as ``BinaryConv2d`` does (one extra row/column at the end on odd sizes for the
    shifted half), then drop the first ``offset`` rows and columns."""
    n, h, w, c = x.shape
    eh, ew = (h % 2, w % 2) if offset else (0, 0)
    x = _pad(x, padding[0], padding[0] + eh, padding[1], padding[1] + ew, value)
    return x[:, offset:, offset:] if offset else x


def _out_len(size, kernel, stride, dilation):
    n = (size - dilation * (kernel - 1) - 1) // stride + 1
    _need(n >= 1, "a %d-wide input is too small for a %d-tap window", size, kernel)
    return n


def op_conv(op, a, x):
    from . import bitops

    w = a[op["weight"]]
    groups, (kh, kw) = op["groups"], op["kernel"]
    n, h, wd, c = x.shape
    _need(groups >= 1 and c % groups == 0, "conv: %d channels in %d groups", c, groups)
    _need(min(op["kernel"]) >= 1 and min(op["stride"]) >= 1 and min(op["dilation"]) >= 1
          and min(op["padding"]) >= 0 and op["offset"] in (0, 1),
          "conv: bad kernel/stride/padding/dilation/offset")
    cg = c // groups
    _need(w.shape[:2] == (groups, kh * kw * cg), "conv: weight %s for %d channels, %dx%d",
          w.shape, c, kh, kw)
    channels = groups * w.shape[2]
    _need(a[op["scale"]].shape == a[op["shift"]].shape == (channels,), "conv: scale/shift size")
    if op["binarize"]:
        x = np.where(x >= 0, np.float32(1), np.float32(-1))
    x = _shifted_pad(x, op["padding"], op["offset"], op["pad_value"])
    _out_len(x.shape[1], kh, op["stride"][0], op["dilation"][0])
    _out_len(x.shape[2], kw, op["stride"][1], op["dilation"][1])
    # (groups, kh·kw·C/g, O/g) -> the kernel's (groups, kh, kw, C/g, O/g): a view, no copy
    weight = np.ascontiguousarray(w.reshape(groups, kh, kw, cg, w.shape[2]))
    return bitops.float_conv(x, weight, a[op["scale"]], a[op["shift"]], tuple(op["stride"]),
                             tuple(op["dilation"]), op["relu"])


def op_bconv(op, a, x, residual=None):
    from . import bitops

    bits, neg = a[op["bits"]], a[op["neg"]]
    groups, kh, kw, words, og = bits.shape
    c = op["channels"]
    _need(x.shape[-1] == c and groups >= 1 and c % groups == 0 and og >= 1 and c >= 1,
          "bconv: input of %d channels for %d in %d groups", x.shape[-1], c, groups)
    _need(words == bnn_format.words_for(c // groups),
          "bconv: %d words for %d channels per group", words, c // groups)
    _need(neg.shape == (groups, kh, kw, og), "bconv: counts %s for weights %s", neg.shape,
          bits.shape)
    _need(a[op["scale"]].shape == a[op["shift"]].shape == (groups * og,), "bconv: scale/shift")
    _need(op["pad_mode"] in (bitops.PAD_ZERO, bitops.PAD_MINUS, bitops.PAD_PLUS),
          "bconv: pad mode %r", op["pad_mode"])
    _need(op["offset"] in (0, 1) and min(op["stride"]) >= 1 and min(op["dilation"]) >= 1
          and min(op["padding"]) >= 0, "bconv: bad stride/padding/dilation/offset")
    for axis, k in ((1, kh), (2, kw)):
        size = bnn_format.out_size(x.shape[axis], k, op["stride"][axis - 1],
                                   op["padding"][axis - 1], op["dilation"][axis - 1],
                                   op["offset"])
        _need(size >= 1, "bconv: a %d-wide input is too small", x.shape[axis])
    if kh == kw == 3:  # the register-blocked kernel (deploy/bnn_kernels.py)
        from . import binary_plan

        return binary_plan._bconv_step(op, a).run(x, *([residual] if residual is not None
                                                         else []))
    packed = bitops.pack_signs(x, groups)
    return bitops.binary_conv(packed, bits, neg, a[op["scale"]], a[op["shift"]], c // groups,
                              tuple(op["stride"]), tuple(op["padding"]),
                              tuple(op["dilation"]), op["offset"], op["pad_mode"], op["relu"],
                              residual)


def op_affine(op, a, x):
    scale, shift = a[op["scale"]], a[op["shift"]]
    _need(scale.shape == shift.shape == (x.shape[-1],), "affine: %s for %d channels",
          scale.shape, x.shape[-1])
    from . import bitops

    return bitops.affine(x, scale, shift, op["relu"])


def op_relu(op, a, x):
    return np.maximum(x, 0)


def op_add(op, a, x, y):
    from . import bitops

    _need(x.shape == y.shape, "add: shapes %s and %s", x.shape, y.shape)
    return bitops.add(x, y)


def op_concat(op, a, *xs):
    _need(len({v.shape[:-1] for v in xs}) == 1, "concat: shapes %s", [v.shape for v in xs])
    return np.concatenate(xs, axis=-1)


def op_avgpool2(op, a, x):
    h, w = x.shape[1] % 2, x.shape[2] % 2
    if h or w:
        x = np.pad(x, ((0, 0), (0, h), (0, w), (0, 0)), mode="edge")
    return (x[:, 0::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 0::2] + x[:, 1::2, 1::2]) \
        * np.float32(0.25)


def op_maxpool(op, a, x):
    kernel, stride, padding = op["kernel"], op["stride"], op["padding"]
    _need(min(kernel) >= 1 and min(stride) >= 1 and min(padding) >= 0, "maxpool: bad window")
    x = _pad(x, padding[0], padding[0], padding[1], padding[1], -np.inf)
    oh = _out_len(x.shape[1], kernel[0], stride[0], 1)
    ow = _out_len(x.shape[2], kernel[1], stride[1], 1)
    out = None
    for tap in _windows(x, kernel, stride, (1, 1), oh, ow):
        out = tap.copy() if out is None else np.maximum(out, tap, out=out)
    return out


def op_subsample(op, a, x):
    s, extra = op["stride"], op["extra"]
    _need(s >= 1 and extra >= 0, "subsample: stride %d, %d extra channels", s, extra)
    x = x[:, ::s, ::s]
    if not extra:
        return np.ascontiguousarray(x)
    return np.concatenate([x, np.zeros(x.shape[:3] + (extra,), np.float32)], axis=-1)


def op_gap(op, a, x):
    _need(x.ndim == 4, "gap: input of shape %s", x.shape)
    return x.mean(axis=(1, 2), dtype=np.float32)


def op_linear(op, a, x):
    w, b = a[op["weight"]], a[op["bias"]]
    _need(x.ndim == 2 and w.shape[0] == x.shape[1] and b.shape == (w.shape[1],),
          "linear: input %s, weight %s, bias %s", x.shape, w.shape, b.shape)
    return x @ w + b


RUN = {name: globals()["op_" + name] for name in OPS}


def execute(ops, arrays, output, x, free=None, values=None):
    """Run ``ops`` on the NCHW batch ``x``: the value ``output`` (NHWC, or (N, C) after
    ``gap``). ``values``: values already computed (then ``x`` is not read)."""
    if values is None:
        values = {0: np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 2, 3, 1))}
    for op, done in zip(ops, free or last_uses(ops)):
        y = RUN[op["op"]](op, arrays, *[values[v] for v in op["inputs"]])
        for v in done:
            if v != output:
                del values[v]
        values[op["out"]] = y
    return values[output]


# -- loading ----------------------------------------------------------------------------------
_ERRORS = bnn_container.ERRORS  # bnn_format.Invalid is a ValueError too
_RUN_ERRORS = (_Bad, ValueError, IndexError, TypeError, ZeroDivisionError, OverflowError,
               MemoryError)


def _invalid(path, e):
    return ModelFileError("%s is not a valid packed binary model (%s)" % (path, _one_line(e)))


def _read(path, limits):
    """``(Plan, arrays)`` of the file at ``path``: its directory, header and costs checked
    (``LimitError`` past a budget) before any array is read."""
    try:
        with bnn_container.Archive(path, limits.max_memory) as archive:
            plan = bnn_format.check(archive.header, archive.arrays)
            limits.check(path, batch=plan.input_shape[0], **plan.budget())
            return plan, {name: archive.read(name) for name in archive.arrays}
    except _ERRORS as e:
        raise _invalid(path, e) from None


class BinaryModel:
    """A ``.bnn`` file: ``model(batch) -> logits`` (numpy), as ``runtime.open_model``'s other
    formats (``input_shape``, ``num_classes``, ``metadata``, ``notes``). ``limits``: the budgets
    (``common.limits.Limits``; None: the defaults) the file, and every batch it is given, must
    fit."""

    def __init__(self, path, threads=None, limits=None):
        from common.cpus import cpu_count

        from .modelfile import check_outputs, decode_metadata

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise ModelFileError("model file not found: %s" % path)
        self.limits = limits or Limits()
        plan, arrays = _read(path, self.limits)
        self.path, self.ops, self.arrays, self.output = path, plan.ops, arrays, plan.output
        self.input_shape, self.num_classes = plan.input_shape, plan.num_classes
        self.budget = plan.budget()
        self.metadata = decode_metadata(plan.metadata, path)  # common.safe_json, bounded
        check_outputs(path, self.metadata, self.num_classes)
        self.notes = []
        self.binary_layers = sum(op["op"] == "bconv" for op in self.ops)
        self._free = last_uses(self.ops)
        _set_threads(threads or cpu_count())
        _keep_freed_memory()
        try:  # the kernels' own checks, once, at the file's own input size
            out = self._run(np.zeros((1,) + self.input_shape[1:], np.float32))
            _need(out.shape == (1, self.num_classes), "the output has shape %s, not (1, %d)",
                  out.shape, self.num_classes)
        except _RUN_ERRORS as e:
            raise _invalid(path, e) from None
        self._prefix = _float_prefix(self.ops, self.arrays, self.output, threads or cpu_count(),
                                     self._run, self.input_shape)
        from . import binary_plan

        count = self._prefix[1] if self._prefix is not None else 0
        self._steps = binary_plan.build(self.ops[count:], self.arrays, self.output,
                                        lambda op, a, *xs: RUN[op["op"]](op, a, *xs))
        self._step_free = binary_plan.free_lists(self._steps)
        # the fused steps against the ops they replace on a random input (the BLAS 1x1 convs
        # round otherwise than the direct conv): any disagreement keeps the plain ops
        x = np.random.default_rng(1).standard_normal((1,) + self.input_shape[1:])
        want = self._run(x.astype(np.float32), fused=False)
        try:
            got = self._run(x.astype(np.float32))
        except _RUN_ERRORS as e:
            got = e
        if not isinstance(got, np.ndarray) or got.shape != want.shape or \
                np.abs(got - want).max() > 1e-4 * max(np.abs(want).max(), 1e-30):
            log.debug("fused steps disagree: running the plain ops")
            self._steps = None

    _prefix = _steps = None

    def _start(self, x):
        """``(values, ops done)`` after the float stem."""
        if self._prefix is None:
            return {0: np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 2, 3, 1))}, 0
        session, count, end, needs_input = self._prefix
        x = np.ascontiguousarray(x, np.float32)
        y = None
        # a few images per run: ONNX Runtime's convs are slower per image on a whole batch of
        # 16 (their im2col buffers leave the cache), ~3.1 against ~2.6 ms at 224x224
        for i in range(0, x.shape[0], STEM_IMAGES):
            part = session.run(None, {"x": x[i:i + STEM_IMAGES]})[0]
            if y is None:
                n, c, h, w = part.shape
                y = np.empty((x.shape[0], h, w, c), np.float32)
            y[i:i + len(part)] = part.transpose(0, 2, 3, 1)
        values = {end: y}
        if needs_input:
            values[0] = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        return values, count

    def _run(self, x, fused=True):
        from . import binary_plan

        values, count = self._start(x)
        if self._steps is None or not fused:
            return execute(self.ops[count:], self.arrays, self.output, None,
                           self._free[count:], values)
        return binary_plan.execute(self._steps, self._step_free, values, self.output)

    def __call__(self, batch):
        from .modelfile import checked_batch as _checked_batch

        batch = _checked_batch(batch, self.input_shape)
        self.limits.check(self.path, batch=batch.shape[0], **self.budget)
        return self._run(batch)


STEM_IMAGES = 2  # images per ONNX Runtime run of the float stem


def _float_prefix(ops, arrays, output, threads, run, input_shape):
    """The float layers the network starts with (its stem: convs with zero padding, BatchNorm,
    ReLU, max pooling) as one ONNX Runtime session on the NCHW input, whose float convs are
    several times faster than ours: ``(session, ops replaced, value computed, whether a later op
    reads the input)``, or None (no such stem, no ONNX Runtime, or it does not compute what the
    numba ops compute on a test input)."""
    uses = {}
    for op in ops:
        for v in op["inputs"]:
            uses[v] = uses.get(v, 0) + 1
    chain, v = [], 0
    for op in ops:
        plain = op["op"] != "conv" or (op["pad_value"] == 0 and not op["binarize"]
                                       and not op["offset"])
        if op["inputs"] != [v] or op["op"] not in ("conv", "affine", "relu", "maxpool") \
                or not plain or op["out"] == output:
            break
        chain.append(op)
        v = op["out"]
        if uses.get(v) != 1:
            break
    if not any(op["op"] == "conv" for op in chain):
        return None
    try:
        session = _onnx_session(chain, arrays, threads)
        x = np.random.default_rng(0).standard_normal((1,) + tuple(input_shape[1:]))
        x = x.astype(np.float32)
        expected = execute(chain, arrays, chain[-1]["out"], x)
        got = session.run(None, {"x": x})[0].transpose(0, 2, 3, 1)
    except Exception as e:  # noqa: BLE001  (an accelerator only: any failure keeps ours)
        log.debug("float stem left to the numba kernels: %s", e)
        return None
    if got.shape != expected.shape or \
            np.abs(got - expected).max() > 1e-4 * max(np.abs(expected).max(), 1e-30):
        return None
    needs_input = any(0 in op["inputs"] for op in ops[len(chain):])
    return session, len(chain), chain[-1]["out"], needs_input


def _onnx_session(chain, arrays, threads):
    """One ONNX Runtime session computing ``chain`` (NCHW in and out)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(array):
        name = "c%d" % len(inits)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def node(kind, inputs, **attrs):
        out = "v%d" % len(nodes)
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    v = "x"
    for op in chain:
        if op["op"] == "conv":
            g, (kh, kw) = op["groups"], op["kernel"]
            w = arrays[op["weight"]]
            cg, og = w.shape[1] // (kh * kw), w.shape[2]
            w = w.reshape(g, kh, kw, cg, og).transpose(0, 4, 3, 1, 2).reshape(g * og, cg, kh, kw)
            w = w * arrays[op["scale"]].reshape(-1, 1, 1, 1)
            v = node("Conv", [v, const(w), const(arrays[op["shift"]])], kernel_shape=[kh, kw],
                     strides=op["stride"], pads=op["padding"] * 2, dilations=op["dilation"],
                     group=g)
        elif op["op"] == "affine":
            v = node("Add", [node("Mul", [v, const(arrays[op["scale"]].reshape(1, -1, 1, 1))]),
                             const(arrays[op["shift"]].reshape(1, -1, 1, 1))])
        elif op["op"] == "maxpool":
            v = node("MaxPool", [v], kernel_shape=op["kernel"], strides=op["stride"],
                     pads=op["padding"] * 2)
        if op["op"] == "relu" or op.get("relu"):
            v = node("Relu", [v])
    nodes.append(helper.make_node("Identity", [v], ["y"]))
    graph = helper.make_graph(
        nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # its threads must not spin on after the stem, on the cores the binary kernels then use
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _keep_freed_memory():
    """Ask glibc's malloc to keep freed memory for reuse instead of returning it to the system:
    every op allocates its output, and a buffer of a few MB that is unmapped and mapped again
    page-faults on every call (about a third of a ResNet-18's time at 224x224). Process-wide;
    nothing happens where the C library has no ``mallopt`` (not glibc)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest: bigger blocks are still mapped
    mallopt(M_TRIM_THRESHOLD, 1 << 30)
    mallopt(M_TOP_PAD, 64 << 20)


def _set_threads(threads):
    """The kernels' threads, and the BLAS pool's (the float convs' matmuls) where threadpoolctl
    (a scikit-learn dependency) is installed; else BLAS keeps its own count."""
    from . import bitops

    bitops.set_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1, user_api="blas")


def _one_line(e):
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def open_binary(path, threads=None, limits=None):
    return BinaryModel(path, threads, limits)
