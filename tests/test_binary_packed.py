"""Packed binary inference (deploy/bitops.py, binary_export.py, binary_runtime.py) against the float
emulation (model/binary): a binary conv is the emulation's integer count times its scale, on
every weight mode, groups, stride, dilation, kernel, the shifted half of a factorized reduction
and both pad values, borders included; every primitive and both binary ResNet-18s agree to
float rounding; the .bnn file refuses anything it cannot trust, in one line."""
import io
import json
import os
import zipfile

import numpy as np
import pytest

import megengine as mge

import model
from deploy import binary_export as be
from deploy import binary_runtime as br
from deploy import bitops
from errors import ModelFileError
from model.binary.blocks import SkipConnect
from model.binary.config import BinaryConvConfig
from model.binary.conv import BinaryConv2d
from model.binary.primitives import PRIMITIVE_NAMES, build_primitive
from model.binary.ste import binarize_weight
from model.derived import build_from_arch
from model.parity import compare, randomize_batchnorm, sample_inputs
from helpers import run_tool

C_IN, C_OUT = 136, 24  # 136 = 2 words + 8 bits: a partial last word (68 and 34 per group too)

# (kernel, stride, padding, dilation, groups, shift): 1x1 and 3x3, strides 1 and 2, no / same /
# more-than-same padding (windows wholly in the padding), dilation 2, groups 2 and 4, and the
# shifted half of a factorized reduction, whose last window on an odd size is padding
GEOMETRIES = [
    (3, 1, 1, 1, 1, False), (3, 2, 1, 1, 1, False), (3, 2, 1, 1, 1, True),
    (3, 1, 0, 1, 1, False), (3, 1, 2, 1, 1, False), (3, 1, 2, 2, 1, False),
    (3, 2, 2, 2, 1, True), (3, 1, 1, 1, 2, False), (3, 2, 1, 1, 4, True),
    (1, 1, 0, 1, 1, False), (1, 2, 0, 1, 2, True),
]
SHAPES = [(2, 9, 7), (1, 8, 6)]  # (N, H, W): odd and even sizes


def inputs(rng, n, h, w, c=C_IN):
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    x[0, :5, 0, :] = 0.0  # sign(0) = +1, on a border row
    x[-1, 3, 2, 1] = np.nan  # binarizes to -1 in the emulation ((x >= 0) is False)
    return x


def emulation(conv, x, shift):
    return conv(mge.tensor(x), shift=shift).numpy()


def packed(conv, x, shift, **override):
    """The packed conv op of ``conv`` run on ``x`` (NCHW in and out); ``override`` replaces
    attributes of the op (to check that a test can fail)."""
    p = be.Program()
    out = be.binary_conv(p, conv, 0, shift=shift)
    op = p.ops[-1]
    for key, value in override.items():
        op[key] = p.array(value(p.arrays[op[key]])) if callable(value) else value
    return br.execute(p.ops, p.arrays, out, x).transpose(0, 3, 1, 2), op["op"]


def alphas(conv):
    """The emulation's scale per output channel (|binarized weight| of each filter)."""
    wb = np.abs(binarize_weight(conv.weight, conv.config).numpy())
    return wb.reshape(conv.out_channels, -1).max(axis=1)


def assert_counts_times_alpha(conv, x, shift, out):
    """``out`` is exactly ``count * α`` with ``count`` the integer the emulation computed."""
    ref = emulation(conv, x, shift)
    alpha = alphas(conv).reshape(1, -1, 1, 1).astype(np.float32)
    counts = np.rint(ref / alpha)
    # the emulation itself is an integer times α, up to its own summation rounding
    assert np.abs(ref / alpha - counts).max() < 1e-3
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out, counts.astype(np.float32) * alpha)


def make_conv(weight_mode, act_mode, pad_value, geometry, rng, bias=False):
    k, stride, padding, dilation, groups, shift = geometry
    conv = BinaryConv2d(C_IN, C_OUT, k, stride, padding, dilation, groups, BinaryConvConfig(
        weight_mode=weight_mode, act_mode=act_mode, pad_value=pad_value, bias=bias))
    w = rng.uniform(-1, 1, conv.weight.shape).astype(np.float32)
    w.reshape(-1)[:7] = 0.0  # sign(0) = +1 for weights too
    conv.weight[...] = w
    if bias:
        conv.bias[...] = rng.standard_normal(conv.bias.shape).astype(np.float32)
    conv.eval()
    return conv, shift


BINARY_MODES = [("sign", "sign"), ("xnor_tensor", "sign"), ("xnor_channel", "sign"),
                ("bireal_channel", "approx_sign")]


@pytest.mark.parametrize("pad_value", [0.0, -1.0])
@pytest.mark.parametrize("weight_mode,act_mode", BINARY_MODES)
def test_packed_conv_is_the_emulations_count_times_its_scale(weight_mode, act_mode, pad_value,
                                                             rng):
    for geometry in GEOMETRIES:
        conv, shift = make_conv(weight_mode, act_mode, pad_value, geometry, rng)
        for shape in SHAPES:
            x = inputs(rng, *shape)
            out, kind = packed(conv, x, shift)
            assert kind == "bconv"
            assert_counts_times_alpha(conv, x, shift, out)


@pytest.mark.parametrize("weight_mode,act_mode", [("fp", "sign"), ("fp", "float"),
                                                  ("xnor_channel", "float"), ("sign", "float")])
@pytest.mark.parametrize("pad_value", [0.0, -1.0])
def test_float_weight_or_activation_modes_run_as_float_convs(weight_mode, act_mode, pad_value,
                                                             rng):
    for geometry in GEOMETRIES[:4] + GEOMETRIES[7:9]:
        conv, shift = make_conv(weight_mode, act_mode, pad_value, geometry, rng, bias=True)
        x = inputs(rng, *SHAPES[0])
        x[-1, 3, 2, 1] = 0.5  # a float conv propagates NaN, in both
        out, kind = packed(conv, x, shift)
        assert kind == "conv"
        ref = emulation(conv, x, shift)
        assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


def test_bias_and_pad_plus_one(rng):
    # a bias is the op's shift; +1 is the third pad value the kernel counts (not used by the
    # primitives, but a BinaryConvConfig may say it)
    conv, shift = make_conv("xnor_channel", "sign", 1.0, GEOMETRIES[2], rng, bias=True)
    x = inputs(rng, *SHAPES[0])
    out, _ = packed(conv, x, shift)
    ref = emulation(conv, x, shift)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()
    conv, shift = make_conv("sign", "sign", 0.5, GEOMETRIES[0], rng)
    with pytest.raises(be.BinaryExportError, match="padded with 0.5"):
        packed(conv, x, shift)


@pytest.mark.parametrize("mutation", ["pad zero as -1", "pad -1 as zero", "pad -1 as +1",
                                      "scale", "offset"])
def test_the_equality_check_catches_a_wrong_border_or_scale(mutation, rng):
    """The inputs above exercise what the kernel could get wrong: each mutation of the op makes
    ``assert_counts_times_alpha`` fail."""
    pad_value = 0.0 if mutation == "pad zero as -1" else -1.0
    geometry = GEOMETRIES[2]  # 3x3, stride 2, shifted
    conv, shift = make_conv("xnor_channel", "sign", pad_value, geometry, rng)
    override = {"pad zero as -1": {"pad_mode": bitops.PAD_MINUS},
                "pad -1 as zero": {"pad_mode": bitops.PAD_ZERO},
                "pad -1 as +1": {"pad_mode": bitops.PAD_PLUS},
                "scale": {"scale": lambda s: s * np.float32(1.0001)},
                "offset": {"offset": 0}}[mutation]
    x = inputs(rng, *SHAPES[0])
    out, _ = packed(conv, x, shift, **override)
    with pytest.raises(AssertionError):
        assert_counts_times_alpha(conv, x, shift, out)


def run_part(part, x):
    program = be.build_program(part, require_binary=False)
    out = br.execute(program.ops, program.arrays, program.output, x)
    return out.transpose(0, 3, 1, 2) if out.ndim == 4 else out


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", PRIMITIVE_NAMES)
def test_every_primitive_matches_the_emulation(name, stride, rng):
    C = 8
    for C_out in (C, 2 * C):
        op = build_primitive(name, C, C_out, stride)
        if isinstance(op, SkipConnect) and stride == 1 and C_out == C:
            continue  # the identity: nothing to compute
        randomize_batchnorm(op, rng, sample_inputs(rng, (8, C, 7, 7)))
        op.eval()
        x = sample_inputs(rng, (2, C, 7, 7))
        ref = op(mge.tensor(x)).numpy()
        out = run_part(op, x)
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max(), (name, C_out)


@pytest.mark.parametrize("name", ["BinaryResNet18-awnas", "BinaryResNet18-bmxnet"])
def test_binary_resnet18_logits_match(name, rng, tmp_path):
    mge.random.seed(0)
    net = model.get_model(name, num_classes=10)
    randomize_batchnorm(net, rng, sample_inputs(rng, (8, 3, 32, 32)))
    net.eval()
    x = sample_inputs(rng, (3, 3, 32, 32))
    ref = net(mge.tensor(x)).numpy()
    program = be.build_program(net)
    assert program.binary_layers == (19 if name.endswith("awnas") else 16)
    # the packed body: >= 20x smaller than its float32 latent weights
    assert program.binary_weights["float32"] >= 20 * program.binary_weights["packed"]
    path = tmp_path / "net.bnn"
    br.write(path, program, json.dumps({"format": "none"}), x.shape)
    loaded = br.BinaryModel(path, threads=2)
    assert loaded.input_shape == x.shape and loaded.num_classes == 10
    assert loaded.binary_layers == program.binary_layers
    given = x.copy()
    out = loaded(x)  # the stem runs two images at a time; outputs reuse their inputs' arrays
    np.testing.assert_array_equal(x, given)
    parity = compare(name, ref, out, 1e-5)
    assert parity.ok, parity
    # the float stem runs as one ONNX Runtime session; the numba ops compute the same
    assert loaded._prefix is not None and loaded._prefix[1] >= 2
    ours = br.execute(program.ops, program.arrays, program.output, x)
    assert compare(name + " numba stem", ref, ours, 1e-5).ok
    assert np.abs(out[1:] - out[:1]).max() > 1e-2 * np.abs(ref).max()  # input-dependent
    # the export's exact check: each packed conv on the emulation's own input counts what the
    # emulation counts; one flipped weight bit in one filter is found
    count, worst, problems = be.check_layers(net, program, x)
    assert count == program.binary_layers and problems == [] and worst < 1e-5
    _, op, arrays = program.convs[-1]
    arrays[op["bits"]][0, 1, 1, 0, 3] ^= np.uint64(1 << 5)
    _, _, problems = be.check_layers(net, program, x)
    assert len(problems) == 1 and "counts differ (by up to 2)" in problems[0], problems


def test_a_model_without_binary_layers_is_refused():
    with pytest.raises(be.NotBinaryError, match="no binary layer"):
        be.build_program(model.get_model("RepVGG-A0", num_classes=10))
    fp_only = BinaryConv2d(8, 8, 3, 1, 1, config=BinaryConvConfig(weight_mode="fp"))
    with pytest.raises(be.NotBinaryError):
        be.build_program(fp_only)


# -- the file ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    """A small packed network (two binary primitives) as a .bnn, and its emulation."""
    rng = np.random.default_rng(5)
    net = build_from_arch({
        "stem": {"channels": 8, "stride": 1}, "num_classes": 4,
        "layers": [{"op": "xnor_conv_3x3_cond_skip", "C_in": 8, "C_out": 16, "stride": 2},
                   {"op": "bireal_resnet_block", "C_in": 16, "C_out": 16, "stride": 1}]})
    randomize_batchnorm(net, rng, sample_inputs(rng, (8, 3, 12, 12)))
    net.eval()
    path = tmp_path_factory.mktemp("bnn") / "small.bnn"
    br.write(path, be.build_program(net), "{}", (2, 3, 12, 12))
    return path, net


def rewrite(src, dst, change):
    """Copy the archive ``src`` to ``dst`` with ``change(header, arrays)`` applied."""
    with np.load(src, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    header = json.loads(bytes(arrays.pop(br.HEADER)).decode())
    change(header, arrays)
    text = np.frombuffer(json.dumps(header).encode(), np.uint8)
    with open(dst, "wb") as f:
        np.savez(f, **{br.HEADER: text, **arrays})


def first(header, kind):
    return next(op for op in header["ops"] if op["op"] == kind)


def test_the_file_runs_what_the_emulation_computes(small_file, rng):
    path, net = small_file
    loaded = br.BinaryModel(path, threads=1)
    x = sample_inputs(rng, (5, 3, 12, 12))  # another batch size than the file's
    ref = net(mge.tensor(x)).numpy()
    assert compare("small", ref, loaded(x), 1e-5).ok
    with pytest.raises(ValueError, match="does not fit"):
        loaded(x[:, :, :10, :10])


def _set(op_kind, key, value):
    def change(header, arrays):
        op = first(header, op_kind)
        op[key] = value(arrays, op) if callable(value) else value
    return change


BAD_FILES = {
    "not a zip": "special",
    "no header": "special",
    "wrong format": lambda h, a: h.update(format="something/1"),
    "unknown op": _set("relu", "op", "gelu"),
    "undefined value": _set("add", "inputs", [0, 999]),
    "missing array": _set("bconv", "bits", "nope"),
    "wrong dtype": lambda h, a: a.update({first(h, "bconv")["bits"]: a[first(
        h, "bconv")["bits"]].astype(np.int64)}),
    "words do not fit the channels": lambda h, a: a.update({first(h, "bconv")["bits"]: np.zeros(
        a[first(h, "bconv")["bits"]].shape[:3] + (3,) + a[first(h, "bconv")["bits"]].shape[4:],
        np.uint64)}),
    "channel count": _set("bconv", "channels", 12),
    "counts shape": lambda h, a: a.update({first(h, "bconv")["neg"]: a[first(
        h, "bconv")["neg"]][:, :, :1]}),
    "a bool where an int goes": _set("bconv", "pad_mode", True),
    "pad mode": _set("bconv", "pad_mode", 7),
    "scale size": lambda h, a: a.update({first(h, "bconv")["scale"]: np.ones(3, np.float32)}),
    "classes": lambda h, a: h.update(num_classes=99),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_file_that_is_not_a_valid_packed_model_is_one_error(case, small_file, tmp_path):
    path, _ = small_file
    bad = tmp_path / "bad.bnn"
    if case == "not a zip":
        bad.write_bytes(b"PK\x03\x04 not really a zip archive")
    elif case == "no header":
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files if k != br.HEADER}
        with open(bad, "wb") as f:
            np.savez(f, **arrays)
    else:
        rewrite(path, bad, BAD_FILES[case])
    with pytest.raises(ModelFileError, match="not a valid packed binary model") as e:
        br.BinaryModel(bad, threads=1)
    assert "\n" not in str(e.value)


def test_pickled_arrays_are_never_loaded(small_file, tmp_path):
    path, _ = small_file
    bad = tmp_path / "pickle.bnn"
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["a0"] = np.array([{"evil": 1}], dtype=object)  # would need pickle to read
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    bad.write_bytes(buf.getvalue())
    with zipfile.ZipFile(bad) as z:
        assert "a0.npy" in z.namelist()
    with pytest.raises(ModelFileError, match="not a valid packed binary model"):
        br.BinaryModel(bad, threads=1)


def test_weights_pack_to_words_as_documented():
    signs = np.zeros((1, 2, 70, 1, 1), bool)
    signs[0, 0, [0, 63, 64, 69]] = True
    bits = bitops.pack_weight(signs)
    assert bits.shape == (1, 1, 1, 2, 2) and bits.dtype == np.uint64
    assert bits[0, 0, 0, :, 0].tolist() == [1 | 1 << 63, 1 | 1 << 5]
    assert bits[0, 0, 0, :, 1].tolist() == [0, 0]
    x = np.zeros((1, 1, 1, 70), np.float32)
    x[..., [1, 64]] = -1.0
    x[..., 2] = -0.0  # -0.0 >= 0: +1
    assert bitops.pack_signs(x).reshape(-1).tolist() == [2, 1]


AVX2_CHILD = """
import json, numpy as np
from deploy import bitops
rng = np.random.default_rng(3)
x = rng.standard_normal((2, 9, 7, 136)).astype(np.float32)
signs = rng.random((2, 12, 68, 3, 3)) < 0.5
out = [bitops.binary_conv(bitops.pack_signs(x, 2), bitops.pack_weight(signs),
                          bitops.negatives_per_tap(signs), np.ones(24, np.float32),
                          np.zeros(24, np.float32), 68, (s, s), (1, 1), (1, 1), off, pad).tolist()
       for s, off in ((1, 0), (2, 1)) for pad in (0, -1)]
print(json.dumps(out))
"""


def test_the_kernels_compiled_for_an_avx2_only_cpu_give_the_same_counts(tmp_path):
    """numba compiles for the CPU it runs on; here for Haswell (AVX2, no AVX-512: LLVM's
    vector popcount by nibble lookup instead of VPOPCNTQ), in a fresh cache, run on this CPU."""
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="",
               NUMBA_CACHE_DIR=str(tmp_path))
    proc = run_tool("-c", AVX2_CHILD, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 9, 7, 136)).astype(np.float32)
    signs = rng.random((2, 12, 68, 3, 3)) < 0.5
    xs, ws = np.where(x >= 0, 1.0, -1.0), np.where(signs, -1.0, 1.0)
    expected = []
    for s, off in ((1, 0), (2, 1)):
        for pad in (0, -1):  # a NumPy reference: pad, shift, correlate per group
            xp = np.pad(xs, ((0, 0), (1, 1 + off * (9 % 2)), (1, 1 + off * (7 % 2)), (0, 0)),
                        constant_values=pad)[:, off:, off:]
            oh, ow = (xp.shape[1] - 3) // s + 1, (xp.shape[2] - 3) // s + 1
            ref = np.zeros((2, oh, ow, 24))
            for i in range(oh):
                for j in range(ow):
                    patch = xp[:, i * s:i * s + 3, j * s:j * s + 3]
                    for g in range(2):
                        ref[:, i, j, 12 * g:12 * g + 12] = np.einsum(
                            "nhwc,ochw->no", patch[..., 68 * g:68 * g + 68], ws[g])
            expected.append(ref)
    got = json.loads(proc.stdout)
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(np.array(g), e)
