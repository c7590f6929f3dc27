"""The ``.bnn`` header's schema, and what a file costs, worked out from the header alone.

``check(header, arrays)`` takes the parsed JSON header and the array *declarations* of the
archive (``{name: (dtype string, shape)}``, read from each member's ``.npy`` header by
``deploy/bnn_container.py``, before any array data is read) and returns a ``Plan``: fresh op
dicts holding only the known keys (the runtime keeps no state in them), each value's shape
for one image, and the budgets ``common.limits`` checks:

- ``weights``: bytes of every array, plus the float stem's conv weights once more (ONNX
  Runtime keeps its own copy, ``binary_runtime._float_prefix``);
- ``activations``: the peak, over the ops, of the bytes alive for one image: the caller's NCHW
  batch, every value not yet read for the last time, the op's temporaries (padded or binarized
  copies, packed words, accumulators) and its output;
- ``macs``: multiply-accumulates for one image. A float conv or linear layer counts one per
  weight use; a binary conv counts one per 64-bit XOR-popcount it executes (``ceil(C/g/64)``
  words per tap and output: a binary MAC is 1/64 of a float one, rounded up per word); an
  elementwise op, pooling or the average counts one per element it reads.

Anything else is refused with ``Invalid`` (a ``ValueError``, one line): an unknown key at the
top or in an op, a value of the wrong type or out of range, a zero-size array, shapes that do
not fit together. Pure Python: no array is allocated, no numba imported.
"""
import dataclasses
import math

FORMAT = "repvgg-binary-model/1"
WORD_BITS = 64
PAD_ZERO, PAD_MINUS, PAD_PLUS = 0, -1, 1
PAD_MODES = {0.0: PAD_ZERO, -1.0: PAD_MINUS, 1.0: PAD_PLUS}

MAX_DIM = 1 << 16        # any one size: channels, pixels, kernel taps, stride, padding
MAX_OPS = 10000
MAX_INPUTS = 256         # of a concat
MAX_VALUE = 1 << 31      # value numbers
MAX_BATCH = 1 << 62      # a bound for the arithmetic only: common.limits judges the batch
FLOAT32, UINT64, INT64 = "<f4", "<u8", "<i8"
ITEMSIZE = {FLOAT32: 4, UINT64: 8, INT64: 8}


class Invalid(ValueError):
    """A header that breaks the schema or whose shapes do not fit (one line)."""


def need(cond, message, *args):
    if not cond:
        raise Invalid(message % args)


def words_for(channels):
    """64-bit words holding ``channels`` bits."""
    return -(-channels // WORD_BITS)


def out_size(size, kernel, stride, padding, dilation, offset=0):
    """Output length of a binary conv along one axis; ``offset=1`` is the shifted half of a
    factorized reduction (one row/column of extra padding at the end on odd sizes)."""
    extra = size % 2 if offset else 0
    span = dilation * (kernel - 1) + 1
    return (size + 2 * padding + extra - offset - span) // stride + 1


# -- the schema ---------------------------------------------------------------------------------
# kinds: ("int", low, high), ("ints", low, high) (two of them), ("float",), ("bool",),
# ("array", dtype, ndim)
_BOOL, _FLOAT = ("bool",), ("float",)
_F32 = {n: ("array", FLOAT32, n) for n in (1, 2, 3)}
_GEOMETRY = {"stride": ("ints", 1, MAX_DIM), "padding": ("ints", 0, MAX_DIM),
             "dilation": ("ints", 1, MAX_DIM), "relu": _BOOL, "scale": _F32[1],
             "shift": _F32[1], "offset": ("int", 0, 1)}
OPS = {
    "conv": dict(_GEOMETRY, weight=_F32[3], kernel=("ints", 1, MAX_DIM),
                 groups=("int", 1, MAX_DIM), pad_value=_FLOAT, binarize=_BOOL),
    "bconv": dict(_GEOMETRY, bits=("array", UINT64, 5), neg=("array", INT64, 4),
                  channels=("int", 1, MAX_DIM), pad_mode=("int", PAD_MINUS, PAD_PLUS)),
    "affine": {"scale": _F32[1], "shift": _F32[1], "relu": _BOOL},
    "relu": {}, "add": {}, "concat": {}, "avgpool2": {}, "gap": {},
    "maxpool": {"kernel": ("ints", 1, MAX_DIM), "stride": ("ints", 1, MAX_DIM),
                "padding": ("ints", 0, MAX_DIM)},
    "subsample": {"stride": ("int", 1, MAX_DIM), "extra": ("int", 0, MAX_DIM)},
    "linear": {"weight": _F32[2], "bias": _F32[1]},
}
# inputs (fewest, most); every other op takes one
ARITY = {"add": (2, 2), "concat": (2, MAX_INPUTS), "bconv": (1, 2)}
TOP_KEYS = {"format", "word_bits", "input_shape", "num_classes", "output", "metadata", "ops"}
OP_KEYS = {"op", "inputs", "out"}


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _attr(op, key, kind, arrays):
    """The checked value of ``op[key]``."""
    value, name = op.get(key), op["op"]
    if kind[0] == "array":
        spec = arrays.get(value) if isinstance(value, str) else None
        need(spec is not None, "op %r: %r names no array of the file", name,
             value if not isinstance(value, str) else value[:40])
        need(spec[0] == kind[1] and len(spec[1]) == kind[2], "op %r: array %r is %s of %d "
             "dimensions, not %s of %d", name, value, spec[0], len(spec[1]), kind[1], kind[2])
        return value
    if kind[0] == "int":
        ok = _is_int(value) and kind[1] <= value <= kind[2]
    elif kind[0] == "ints":
        ok = (isinstance(value, list) and len(value) == 2
              and all(_is_int(v) and kind[1] <= v <= kind[2] for v in value))
        value = list(value) if ok else value
    elif kind[0] == "float":
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value) and abs(value) < 1e30)
    else:
        ok = isinstance(value, bool)
    need(ok, "op %r: %r is %s, not a valid %s%s", name, key, _short(value), kind[0],
         " in [%d, %d]" % kind[1:] if kind[0] in ("int", "ints") else "")
    return value


def _short(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _op(raw, arrays, defined):
    """A fresh op dict of the known keys of ``raw``, checked."""
    need(isinstance(raw, dict), "an op that is not a JSON object")
    kind = raw.get("op")
    need(isinstance(kind, str) and kind in OPS, "unknown op %s", _short(kind))
    unknown = sorted(set(raw) - OP_KEYS - set(OPS[kind]))
    need(not unknown, "op %r: unknown key %s", kind, _short(unknown[0] if unknown else None))
    missing = sorted(set(OPS[kind]) - set(raw))
    need(not missing, "op %r lacks %r", kind, missing[0] if missing else None)
    inputs, out = raw.get("inputs"), raw.get("out")
    low, high = ARITY.get(kind, (1, 1))
    need(isinstance(inputs, list) and low <= len(inputs) <= high,
         "op %r takes %d to %d inputs, got %s", kind, low, high, _short(inputs))
    need(all(_is_int(v) and v in defined for v in inputs), "op %r reads an undefined value",
         kind)
    need(_is_int(out) and 0 < out < MAX_VALUE and out not in defined,
         "op %r: bad output value %s", kind, _short(out))
    op = {"op": kind, "inputs": list(inputs), "out": out}
    for key, attr_kind in OPS[kind].items():
        op[key] = _attr(raw, key, attr_kind, arrays)
    return op


# -- shapes and costs, per image ------------------------------------------------------------------
def _bytes(shape, itemsize=4):
    return math.prod(shape) * itemsize


def _spatial(name, x):
    need(len(x) == 3, "op %r: input of shape %s, not (H, W, C)", name, x)
    return x


def _conv(op, arrays, x):
    h, w, c = _spatial("conv", x)
    g, (kh, kw) = op["groups"], op["kernel"]
    need(c % g == 0, "conv: %d channels in %d groups", c, g)
    cg = c // g
    wshape = arrays[op["weight"]][1]
    need(wshape[:2] == (g, kh * kw * cg), "conv: weight %s for %d channels, %dx%d", wshape, c,
         kh, kw)
    channels = g * wshape[2]
    _vector(op, arrays, channels)
    off, (ph, pw) = op["offset"], op["padding"]
    hp = h + 2 * ph + (h % 2 if off else 0)  # as _shifted_pad, before the offset is dropped
    wp = w + 2 * pw + (w % 2 if off else 0)
    oh = _out_len("conv", hp - off, kh, op["stride"][0], op["dilation"][0])
    ow = _out_len("conv", wp - off, kw, op["stride"][1], op["dilation"][1])
    y = (oh, ow, channels)
    temps = ((_bytes(x) if op["binarize"] else 0) + (_bytes((hp, wp, c)) if ph or pw or off
                                                      else 0)
             + (_bytes((hp - off, wp - off, c)) if off else 0) + _bytes((oh, 4, wshape[2])))
    return y, temps, oh * ow * channels * kh * kw * cg


def _out_len(name, size, kernel, stride, dilation):
    n = (size - dilation * (kernel - 1) - 1) // stride + 1
    need(n >= 1, "%s: a %d-wide input is too small for a %d-tap window", name, size, kernel)
    return n


def _vector(op, arrays, channels):
    for key in ("scale", "shift"):
        shape = arrays[op[key]][1]
        need(shape == (channels,), "op %r: %s of shape %s for %d channels", op["op"], key,
             shape, channels)


def _bconv(op, arrays, x, residual=None):
    h, w, c = _spatial("bconv", x)
    g, kh, kw, words, og = arrays[op["bits"]][1]
    need(c == op["channels"] and c % g == 0, "bconv: input of %d channels for %d in %d "
         "groups", c, op["channels"], g)
    need(words == words_for(c // g), "bconv: %d words for %d channels per group", words, c // g)
    need(arrays[op["neg"]][1] == (g, kh, kw, og), "bconv: counts %s for weights %s",
         arrays[op["neg"]][1], (g, kh, kw, words, og))
    _vector(op, arrays, g * og)
    size = [out_size(n, k, op["stride"][i], op["padding"][i], op["dilation"][i], op["offset"])
            for i, (n, k) in enumerate(((h, kh), (w, kw)))]
    need(min(size) >= 1, "bconv: a %dx%d input is too small for a %dx%d kernel", h, w, kh, kw)
    y = (size[0], size[1], g * og)
    need(residual is None or residual == y, "bconv: a residual of shape %s for an output of "
         "shape %s", residual, y)
    temps = _bytes((h, w, g, words), 8) + _bytes((size[0], og), 8)
    return y, temps, size[0] * size[1] * g * og * kh * kw * words


def _affine(op, arrays, x):
    _vector(op, arrays, x[-1])
    return x, 0, math.prod(x)


def _elementwise(op, arrays, x, *more):
    for y in more:
        need(y == x, "%s: shapes %s and %s", op["op"], x, y)
    return x, 0, math.prod(x) * (1 + len(more))


def _concat(op, arrays, *xs):
    need(len({v[:-1] for v in xs}) == 1, "concat: shapes %s", list(xs))
    y = xs[0][:-1] + (sum(v[-1] for v in xs),)
    need(y[-1] <= MAX_DIM, "concat: %d channels", y[-1])
    return y, 0, math.prod(y)


def _avgpool2(op, arrays, x):
    h, w, c = _spatial("avgpool2", x)
    y = (-(-h // 2), -(-w // 2), c)
    padded = _bytes((h + h % 2, w + w % 2, c)) if h % 2 or w % 2 else 0
    return y, padded + 3 * _bytes(y), 4 * math.prod(y)


def _maxpool(op, arrays, x):
    h, w, c = _spatial("maxpool", x)
    (kh, kw), (ph, pw), (sh, sw) = op["kernel"], op["padding"], op["stride"]
    y = (_out_len("maxpool", h + 2 * ph, kh, sh, 1), _out_len("maxpool", w + 2 * pw, kw, sw, 1),
         c)
    padded = _bytes((h + 2 * ph, w + 2 * pw, c)) if ph or pw else 0
    return y, padded, math.prod(y) * kh * kw


def _subsample(op, arrays, x):
    h, w, c = _spatial("subsample", x)
    s = op["stride"]
    y = (-(-h // s), -(-w // s), c + op["extra"])
    need(y[-1] <= MAX_DIM, "subsample: %d channels", y[-1])
    return y, _bytes(y), math.prod(y)


def _gap(op, arrays, x):
    h, w, c = _spatial("gap", x)
    return (c,), 0, h * w * c


def _linear(op, arrays, x):
    wshape, bshape = arrays[op["weight"]][1], arrays[op["bias"]][1]
    need(len(x) == 1 and wshape[0] == x[0] and bshape == (wshape[1],),
         "linear: input %s, weight %s, bias %s", x, wshape, bshape)
    return (wshape[1],), 0, wshape[0] * wshape[1]


SHAPES = {"conv": _conv, "bconv": _bconv, "affine": _affine, "relu": _elementwise,
          "add": _elementwise, "concat": _concat, "avgpool2": _avgpool2, "maxpool": _maxpool,
          "subsample": _subsample, "gap": _gap, "linear": _linear}


@dataclasses.dataclass
class Plan:
    """A checked header: what the runtime runs, and what it costs per image."""
    ops: list
    output: int
    input_shape: tuple
    num_classes: int
    metadata: object
    shapes: dict        # value -> its shape for one image: (H, W, C), or (C,) after gap
    weights: int        # bytes
    activations: int    # peak bytes for one image
    macs: int           # per image

    def budget(self):
        return {"weights": self.weights, "activations": self.activations, "macs": self.macs}


def last_uses(ops):
    """For each op, the values it reads for the last time (freed after it runs)."""
    last = {}
    for i, op in enumerate(ops):
        for v in op["inputs"]:
            last[v] = i
    return [sorted({v for v in op["inputs"] if last[v] == i}) for i, op in enumerate(ops)]


def _top(header):
    need(isinstance(header, dict), "the header is not a JSON object")
    unknown = sorted(set(header) - TOP_KEYS)
    need(not unknown, "unknown header key %s", _short(unknown[0] if unknown else None))
    need(header.get("format") == FORMAT, "unknown format %s (expected %s)",
         _short(header.get("format")), FORMAT)
    need(header.get("word_bits") == WORD_BITS and _is_int(header.get("word_bits")),
         "word size %s", _short(header.get("word_bits")))
    shape = header.get("input_shape")  # the batch is common.limits' to judge
    need(isinstance(shape, list) and len(shape) == 4
         and all(_is_int(d) and 1 <= d <= (MAX_BATCH if i == 0 else MAX_DIM)
                 for i, d in enumerate(shape)),
         "input shape %s, not [N, C, H, W] of sizes 1 to %d", _short(shape), MAX_DIM)
    classes = header.get("num_classes")
    need(classes is None or (_is_int(classes) and 1 <= classes <= MAX_DIM), "%s classes",
         _short(classes))
    need(header.get("metadata") is None or isinstance(header["metadata"], str),
         "metadata that is not JSON text")
    ops = header.get("ops")
    need(isinstance(ops, list) and 1 <= len(ops) <= MAX_OPS, "%s ops (1 to %d)",
         len(ops) if isinstance(ops, list) else "no", MAX_OPS)
    return tuple(shape), classes, ops


def check(header, arrays):
    """The ``Plan`` of ``header``, whose arrays are declared as ``{name: (dtype, shape)}``;
    ``Invalid`` for anything the schema or the shapes refuse."""
    input_shape, classes, raw_ops = _top(header)
    for name, (dtype, shape) in arrays.items():
        need(dtype in ITEMSIZE, "array %r is %s, not float32, uint64 or int64", name, dtype)
        need(shape and min(shape) >= 1, "array %r has zero size %s", name, shape)
    n, c, h, w = input_shape
    shapes = {0: (h, w, c)}
    ops = []
    for raw in raw_ops:
        op = _op(raw, arrays, shapes)
        y, temps, macs = SHAPES[op["op"]](op, arrays, *[shapes[v] for v in op["inputs"]])
        shapes[op["out"]] = y
        ops.append((op, temps, macs))
    output = header.get("output")
    need(_is_int(output) and output in shapes and output != 0, "output value %s",
         _short(output))
    need(len(shapes[output]) == 1, "the output has shape %s per image, not (classes,)",
         shapes[output])
    need(classes in (None, shapes[output][0]), "%r classes recorded, %d computed", classes,
         shapes[output][0])
    plain = [op for op, _, _ in ops]
    activations, macs = _costs(ops, shapes, output)
    weights = sum(_bytes(shape, ITEMSIZE[dtype]) for dtype, shape in arrays.values())
    weights += sum(_bytes(arrays[op["weight"]][1]) for op in plain if op["op"] == "conv")
    return Plan(plain, output, input_shape, shapes[output][0], header.get("metadata"), shapes,
                weights, activations, macs)


def _costs(ops, shapes, output):
    """(peak live activation bytes, MACs), both per image."""
    free = last_uses([op for op, _, _ in ops])
    live = {0: _bytes(shapes[0])}
    base = _bytes(shapes[0])  # the caller's NCHW batch, beside its NHWC copy
    peak = total_macs = 0
    for (op, temps, macs), done in zip(ops, free):
        y = _bytes(shapes[op["out"]])
        peak = max(peak, base + sum(live.values()) + temps + y)
        total_macs += macs
        for v in done:
            if v != output:
                del live[v]
        live[op["out"]] = y
    return peak, total_macs
