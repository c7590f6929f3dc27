"""The checked ops of a ``.bnn`` as the steps the runtime executes, with the glue fused.

Built once when the file is opened, from fresh copies of the checked op dicts (nothing is
written back into them); the prepared arrays (the 3x3 weights in ``bnn_kernels.weights_3x3``
order, the border corrections) live in the steps. Fusions, each computing bitwise what the
ops it replaces compute (the same float32 operations in the same order):

- an ``affine`` (BatchNorm) read only by 3x3 binary convs, as their input and/or residual, is
  not materialised: the convs' packing applies it before the sign, and their output loop
  applies it to the residual it reads;
- an ``add`` of a 3x3 binary conv's output (read nowhere else) and another value is done in
  the conv's output loop, after its ReLU, the conv moved to the add's place;
- a 1x1 float conv without padding runs as one matrix product (NumPy's BLAS) on the NHWC pixels
  instead of the numba direct conv.
- a 3x3 binary conv whose residual (or added value) is read there for the last time writes
  its output into that array (``Step.reuse``, ``_reusable``): each output element is written
  after the elements at its own index are read.

``Step.kind`` names what the step is for the profile (``benchmarks/bench_binary.py
--profile``).
"""
import numpy as np

from . import bnn_kernels as bk


class Step:
    def __init__(self, kind, label, inputs, out, run, parts=None, reuse=None):
        self.kind, self.label, self.inputs, self.out, self.run = kind, label, inputs, out, run
        self.parts = parts  # for a binary conv: (pack(xs) -> packed, kernel(packed, xs) -> y)
        # the input (an index into ``inputs``) whose array ``run(*xs, out=array)`` may write
        # its output into when nothing reads it later: the step reads it at each output
        # element's own index only
        self.reuse = reuse


KINDS = {"conv": "float conv", "affine": "BN / scale-shift", "relu": "ReLU", "add": "add",
         "concat": "concat", "avgpool2": "pool", "maxpool": "pool", "subsample": "subsample",
         "gap": "head", "linear": "head", "bconv": "binary conv (other)"}


def is_3x3(op, arrays):
    return op["op"] == "bconv" and arrays[op["bits"]].shape[1:3] == (3, 3)


def _uses(ops):
    uses = {}
    for op in ops:
        for v in op["inputs"]:
            uses[v] = uses.get(v, 0) + 1
    return uses


def _bconv_step(op, arrays, pre=None, post=None):
    """A 3x3 binary conv (``op``), its input through the affine ``pre`` where given, plus
    ``post`` (an added value) after its ReLU."""
    bits, neg = arrays[op["bits"]], arrays[op["neg"]]
    groups, _, _, _, og = bits.shape
    per_group = op["channels"] // groups
    wflat = bk.weights_3x3(bits)
    corr, pad_bits = bk.border_corrections(neg, per_group, op["pad_mode"])
    scale, shift = arrays[op["scale"]], arrays[op["shift"]]
    stride, padding, dilation = tuple(op["stride"]), tuple(op["padding"]), tuple(op["dilation"])
    x_v = op["inputs"][0] if pre is None else pre["inputs"][0]
    res_v = op["inputs"][1] if len(op["inputs"]) > 1 else None
    res_affine = pre is not None and res_v == op["inputs"][0]
    if res_affine:
        res_v = x_v
    pre_s = arrays[pre["scale"]] if pre is not None else None
    pre_b = arrays[pre["shift"]] if pre is not None else None
    inputs = [x_v] + ([res_v] if res_v is not None else []) + ([post] if post is not None
                                                               else [])

    def split(xs):
        res = xs[1] if res_v is not None else None
        return xs[0], res, xs[-1] if post is not None else None

    def pack(xs):
        x = xs[0]
        n, h, w, _ = x.shape
        geo = bk.bconv_geometry(h, w, stride, padding, dilation, op["offset"])
        oh, ow, hp, wp, top, left, cut_h, cut_w = geo
        if cut_h or cut_w:
            x = x[:, cut_h:, cut_w:]
        packed = bk.pack_padded(x, groups, top, left, hp, wp, pre_s, pre_b)
        return packed, x.shape[1], x.shape[2], geo[:6]

    def kernel(packed, xs, out=None):
        packed, h, w, geo = packed
        _, res, add = split(xs)
        if out is not None and out.shape != (packed.shape[0],) + geo[:2] + (groups * og,):
            out = None
        return bk.run_packed(packed, h, w, groups, wflat, corr, pad_bits, per_group, og, scale,
                             shift, geo, stride, dilation, op["relu"], res,
                             pre_s if res_affine else None, pre_b if res_affine else None, add,
                             out)

    def run(*xs, out=None):
        return kernel(pack(xs), xs, out)

    label = "bconv 3x3 s%d %d->%d%s%s%s" % (stride[0], op["channels"], groups * og,
                                            " shifted" if op["offset"] else "",
                                            " +BN in" if pre is not None else "",
                                            " +add" if post is not None else "")
    # the residual, else the added value, is read at each output pixel's own index
    reuse = 1 if res_v is not None else (len(inputs) - 1 if post is not None else None)
    return Step("binary conv 3x3", label, inputs, op["out"], run, (pack, kernel), reuse)


def _matmul_step(op, arrays):
    """A 1x1 float conv, groups 1, no padding: NHWC pixels times the weight (BLAS)."""
    w = arrays[op["weight"]][0]  # (C, O)
    scale, shift, s = arrays[op["scale"]], arrays[op["shift"]], op["stride"]
    relu = op["relu"]

    def run(x):
        x = x[:, ::s[0], ::s[1]]
        n, h, wd, c = x.shape
        if c != w.shape[0]:
            raise ValueError("conv: %d channels for a weight of %d" % (c, w.shape[0]))
        y = np.ascontiguousarray(x).reshape(-1, c) @ w
        y *= scale
        y += shift
        if relu:
            np.maximum(y, 0, out=y)
        return y.reshape(n, h, wd, w.shape[1])

    return Step("float conv", "conv 1x1 s%d %d->%d (BLAS)" % (s[0], w.shape[0], w.shape[1]),
                list(op["inputs"]), op["out"], run)


def _is_matmul(op, arrays):
    return (op["op"] == "conv" and op["kernel"] == [1, 1] and op["groups"] == 1
            and op["padding"] == [0, 0] and not op["binarize"] and not op["offset"])


def build(ops, arrays, output, run_op):
    """The steps of ``ops`` (``run_op(op, arrays, *xs)`` runs an unfused op)."""
    ops = [dict(op, inputs=list(op["inputs"])) for op in ops]
    uses = _uses(ops)
    producer = {op["out"]: op for op in ops}
    pre, post, skip = {}, {}, set()
    for op in ops:  # affines read only by 3x3 binary convs
        if op["op"] != "affine" or op["relu"] or op["out"] == output:
            continue
        readers = [r for r in ops if op["out"] in r["inputs"]]
        if readers and all(is_3x3(r, arrays) and r["inputs"][0] == op["out"]
                           for r in readers):
            for r in readers:
                pre[id(r)] = op
            skip.add(id(op))
    moved = {}
    for op in ops:  # add(bconv3x3(...), y) with the conv's output read only there
        if op["op"] != "add":
            continue
        for a, b in (op["inputs"], op["inputs"][::-1]):
            src = producer.get(a)
            if src is not None and is_3x3(src, arrays) and uses[a] == 1 and a != b \
                    and a != output and id(src) not in moved:
                post[id(src)] = b
                moved[id(src)] = op
                skip.add(id(src))
                break
    steps = []
    for op in ops:
        if op["op"] == "add" and any(m is op for m in moved.values()):
            src = next(s for s in ops if moved.get(id(s)) is op)
            step = _bconv_step(src, arrays, pre.get(id(src)), post[id(src)])
            step.out = op["out"]
            steps.append(step)
        elif id(op) in skip:
            continue
        elif is_3x3(op, arrays):
            steps.append(_bconv_step(op, arrays, pre.get(id(op))))
        elif _is_matmul(op, arrays):
            steps.append(_matmul_step(op, arrays))
        else:
            steps.append(Step(KINDS[op["op"]], op["op"], list(op["inputs"]), op["out"],
                              lambda *xs, op=op: run_op(op, arrays, *xs)))
    return steps


def free_lists(steps):
    """For each step, the values it reads for the last time."""
    last = {}
    for i, s in enumerate(steps):
        for v in s.inputs:
            last[v] = i
    return [sorted({v for v in s.inputs if last[v] == i}) for i, s in enumerate(steps)]


def _reusable(step, done, values, output):
    """The array of ``step``'s reusable input where it may take the step's output: read for
    the last time, ours (never value 0, the caller's input), owning its memory, and sharing it
    with no other live value."""
    if step.reuse is None:
        return None
    v = step.inputs[step.reuse]
    a = values[v]
    if v not in done or v in (0, output) or a.base is not None or not a.flags.writeable \
            or not a.flags.c_contiguous or a.dtype != np.float32:
        return None
    if any(u != v and np.may_share_memory(a, b) for u, b in values.items()):
        return None
    return a


def execute(steps, free, values, output):
    for step, done in zip(steps, free):
        xs = [values[v] for v in step.inputs]
        buf = _reusable(step, done, values, output)
        y = step.run(*xs) if buf is None else step.run(*xs, out=buf)
        for v in done:
            if v != output:
                del values[v]
        values[step.out] = y
    return values[output]
