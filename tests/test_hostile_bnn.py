"""Hostile packed binary models (.bnn): every one is refused by tools/infer.py, run as a user runs
it, in one `error:` line and exit status 1, within 60 s, under 4 GiB of address space, and
nothing is written (in the model's folder, and anywhere in the repository: numba's compiled
kernels included). Then a fuzz run: a few hundred bit flips, zeroed words, truncations and
header edits of a small exported network, all opened by one worker process: each file runs or
is one ModelFileError; nothing dies by a signal or prints a traceback.

The hostile files are built here, byte by byte where the zip itself is the attack
(``zip_archive``): a member listed 300 times, an overlapping-entry zip bomb (Fifield's
construction: each member's deflate stream quotes the next member's local header, so one
kernel is decompressed once per member), encrypted and unknown-compression members, sizes of
4 TiB, and headers that declare 2.4x10^12 MACs, growing padding, a batch of 10^12, deep JSON,
runtime-internal keys, a 0x0 kernel and a dilation of 2^63 (which made numba compile a new
specialization into deploy/__pycache__).
"""
import io
import json
import os
import re
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from deploy import preprocess
from deploy.modelfile import encode_metadata
from helpers import ROOT, one_line_error, run_tool

GIB = 1 << 30
MEMORY_CAP = 4 * GIB
SECONDS = 60
# the tool runs under RLIMIT_AS, as a user's machine with 4 GiB would run it
UNDER_4G = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_AS, (%d, %d))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
""" % (MEMORY_CAP, MEMORY_CAP)
# Python's own bytecode cache is not what is tested: a fresh checkout writes it on first import
QUIET_ENV = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
SIZE, CLASSES = 8, 4


# -- a small valid model, written by hand ------------------------------------------------------
def tiny(rng=None):
    """``(header, arrays)``: conv 3->8 (3x3, ReLU), binary conv 8->8 (3x3), average, linear."""
    rng = rng or np.random.default_rng(0)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    arrays = {"a0": f32(1, 27, 8), "a1": np.ones(8, np.float32), "a2": f32(8),
              "a3": (rng.integers(0, 256, (1, 3, 3, 1, 8))).astype(np.uint64),
              "a4": rng.integers(0, 8, (1, 3, 3, 8)).astype(np.int64),
              "a5": np.full(8, 0.1, np.float32), "a6": f32(8), "a7": f32(8, CLASSES),
              "a8": f32(CLASSES)}
    geometry = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "offset": 0}
    ops = [dict(op="conv", inputs=[0], out=1, weight="a0", kernel=[3, 3], groups=1,
                pad_value=0.0, binarize=False, relu=True, scale="a1", shift="a2", **geometry),
           dict(op="bconv", inputs=[1], out=2, bits="a3", neg="a4", scale="a5", shift="a6",
                channels=8, pad_mode=0, relu=False, **geometry),
           dict(op="gap", inputs=[2], out=3),
           dict(op="linear", inputs=[3], out=4, weight="a7", bias="a8")]
    metadata = encode_metadata({"classes": ["c%d" % i for i in range(CLASSES)],
                                "preprocess": preprocess.small_spec(SIZE).to_dict(),
                                "input_shape": [1, 3, SIZE, SIZE]})
    header = {"format": "repvgg-binary-model/1", "word_bits": 64,
              "input_shape": [1, 3, SIZE, SIZE], "num_classes": CLASSES, "output": 4,
              "metadata": metadata, "ops": ops}
    return header, arrays


def header_bytes(header):
    text = header if isinstance(header, str) else json.dumps(header)
    return np.frombuffer(text.encode(), np.uint8)


def savez(header, arrays):
    """The archive as ``deploy.binary_runtime.write`` writes it (``np.savez``)."""
    buf = io.BytesIO()
    np.savez(buf, header=header_bytes(header), **arrays)
    return buf.getvalue()


def npy(array):
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


# -- zip archives byte by byte -----------------------------------------------------------------
def local_header(name, method, flags, crc, csize, usize):
    name = name.encode()
    big = max(csize, usize) >= 0xFFFFFFFF
    extra = struct.pack("<HHQQ", 1, 16, usize, csize) if big else b""
    sizes = (0xFFFFFFFF, 0xFFFFFFFF) if big else (csize, usize)
    return struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 45 if big else 20, 0, flags, method, 0,
                       0x21, crc, *sizes, len(name), len(extra)) + name + extra


def central_entry(name, method, flags, crc, csize, usize, offset):
    name = name.encode()
    big = max(csize, usize) >= 0xFFFFFFFF
    extra = struct.pack("<HHQQ", 1, 16, usize, csize) if big else b""
    sizes = (0xFFFFFFFF, 0xFFFFFFFF) if big else (csize, usize)
    return struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 45 if big else 20, 3,
                       45 if big else 20, 0, flags, method, 0, 0x21, crc, *sizes, len(name),
                       len(extra), 0, 0, 0, 0, offset) + name + extra


def zip_archive(members, directory=None):
    """A zip of ``members`` (dicts: name, data as stored in the file, method, flags, crc,
    usize: the declared size), one after the other; ``directory``: the central directory's
    entries as indices into ``members`` (default: each once)."""
    body, offsets = b"", []
    for m in members:
        offsets.append(len(body))
        body += local_header(m["name"], m["method"], m["flags"], m["crc"], len(m["data"]),
                             m["usize"]) + m["data"]
    entries = [central_entry(members[i]["name"], members[i]["method"], members[i]["flags"],
                             members[i]["crc"], len(members[i]["data"]), members[i]["usize"],
                             offsets[i])
               for i in (directory if directory is not None else range(len(members)))]
    return body + b"".join(entries) + end_record(len(entries), sum(map(len, entries)),
                                                 len(body))


def end_record(count, size, offset):
    return struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, size, offset, 0)


def member(name, payload, method=0, flags=0, usize=None):
    data = payload
    if method == 8:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        data = c.compress(payload) + c.flush()
    return {"name": name, "data": data, "method": method, "flags": flags,
            "crc": zlib.crc32(payload), "usize": len(payload) if usize is None else usize}


def tiny_members(**override):
    """The small model's members (``override``: member name -> changes to it)."""
    header, arrays = tiny()
    members = [member("header.npy", npy(header_bytes(header)))]
    members += [member(k + ".npy", npy(v)) for k, v in arrays.items()]
    for m in members:
        m.update(override.get(m["name"], {}))
    return members


def crc32_combine(crc1, crc2, len2):
    """zlib's crc32_combine: the CRC of A+B from crc(A), crc(B) and len(B)."""
    def times(matrix, vector):
        total, i = 0, 0
        while vector:
            if vector & 1:
                total ^= matrix[i]
            vector >>= 1
            i += 1
        return total

    def square(matrix):
        return [times(matrix, matrix[n]) for n in range(32)]

    odd = [0xEDB88320] + [1 << n for n in range(31)]
    even = square(odd)
    odd = square(even)
    while len2:
        even = square(odd)
        if len2 & 1:
            crc1 = times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = square(even)
        if len2 & 1:
            crc1 = times(odd, crc1)
        len2 >>= 1
    return crc1 ^ crc2


@pytest.fixture(scope="module")
def zeros_kernel():
    """``(raw deflate of 1 GiB of zeros (about 1 MB), its CRC, 1 GiB)``: one 16 MiB chunk
    compressed up to a full flush (which makes the next chunk's blocks independent of it) is
    repeated, the last one finishes the stream; the CRC by doubling."""
    chunk = bytes(16 << 20)
    copies = GIB // len(chunk)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)
    last = c.compress(chunk) + c.flush()
    crc, length = zlib.crc32(chunk), len(chunk)
    while length < GIB:
        crc, length = crc32_combine(crc, crc, length), 2 * length
    return block * (copies - 1) + last, crc, GIB


def one_member_300_times(kernel):
    data, crc, size = kernel
    members = tiny_members()[:1] + [{"name": "a0.npy", "data": data, "method": 8, "flags": 0,
                                     "crc": crc, "usize": size}]
    return zip_archive(members, [0] + [1] * 300)


def overlapping_bomb(kernel, files=7):
    """Fifield's overlapping-entry zip bomb: ``files`` members of 1 GiB each from one kernel
    (member i's data: a stored block quoting member i+1's local header, then member i+1's
    data)."""
    data, crc, size = kernel
    names = ["a%d.npy" % i for i in range(files)]
    headers = [None] * files
    sizes = [None] * files  # (compressed, uncompressed, crc)
    sizes[-1] = (len(data), size, crc)
    headers[-1] = local_header(names[-1], 8, 0, crc, len(data), size)
    for i in range(files - 2, -1, -1):
        nxt = headers[i + 1]
        quote = b"\x00" + struct.pack("<HH", len(nxt), len(nxt) ^ 0xFFFF)
        csize = len(quote) + len(nxt) + sizes[i + 1][0]
        usize = len(nxt) + sizes[i + 1][1]
        crc_i = crc32_combine(zlib.crc32(nxt), sizes[i + 1][2], sizes[i + 1][1])
        sizes[i] = (csize, usize, crc_i)
        headers[i] = local_header(names[i], 8, 0, crc_i, csize, usize)
    body, offsets = b"", []
    for i in range(files):
        offsets.append(len(body))
        body += headers[i]
        if i < files - 1:
            body += b"\x00" + struct.pack("<HH", len(headers[i + 1]),
                                          len(headers[i + 1]) ^ 0xFFFF)
    body += data
    head = tiny_members()[0]
    offsets.append(len(body))
    body += local_header(head["name"], 0, 0, head["crc"], len(head["data"]), head["usize"])
    body += head["data"]
    entries = [central_entry(names[i], 8, 0, sizes[i][2], sizes[i][0], sizes[i][1], offsets[i])
               for i in range(files)]
    entries.append(central_entry(head["name"], 0, 0, head["crc"], len(head["data"]),
                                 head["usize"], offsets[-1]))
    return body + b"".join(entries) + end_record(len(entries), sum(map(len, entries)),
                                                 len(body))


def declares_4_tib():
    """A deflated member whose zip entry and .npy header both declare 4 TiB of float32."""
    big = 4 << 40
    buf = io.BytesIO()
    d = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
    np.lib.format.write_array_header_1_0(buf, dict(d, shape=(big // 4,)))
    payload = buf.getvalue() + bytes(4)
    return zip_archive(tiny_members(**{"a0.npy": member("a0.npy", payload, 8, usize=big)}))


# -- headers that declare too much, or what the runtime should never trust ---------------------
def with_ops(change):
    header, arrays = tiny()
    change(header, arrays)
    return savez(header, arrays)


def shared_weight_convs(header, arrays):
    """1,000 convolutions sharing one 16->16 3x3 weight, at 1024x1024: 2.4x10^12 MACs."""
    header["input_shape"] = [1, 3, 1024, 1024]
    arrays.update(w16=np.zeros((1, 144, 16), np.float32), s16=np.ones(16, np.float32),
                  b16=np.zeros(16, np.float32), a0=np.zeros((1, 27, 16), np.float32),
                  a7=np.zeros((16, CLASSES), np.float32))
    for k in ("a1", "a2", "a3", "a4", "a5", "a6"):
        del arrays[k]
    conv = dict(header["ops"][0], scale="s16", shift="b16")
    ops = [conv]
    for i in range(1000):
        ops.append(dict(conv, inputs=[i + 1], out=i + 2, weight="w16"))
    ops += [dict(op="gap", inputs=[1001], out=1002),
            dict(op="linear", inputs=[1002], out=1003, weight="a7", bias="a8")]
    header.update(ops=ops, output=1003)


def growing_padding(header, arrays):
    """Three 1x1 convolutions that each pad by 4096: 8, 8200, 16392, 24584 pixels a side (7 GB
    at the last, 8.5 GMACs in all)."""
    arrays.update(w3=np.ones((1, 3, 3), np.float32), s3=np.ones(3, np.float32),
                  b3=np.zeros(3, np.float32), a7=np.zeros((3, CLASSES), np.float32))
    for k in ("a0", "a1", "a2", "a3", "a4", "a5", "a6"):
        del arrays[k]
    conv = dict(header["ops"][0], weight="w3", kernel=[1, 1], padding=[4096, 4096],
                scale="s3", shift="b3")
    ops = [dict(conv, inputs=[i], out=i + 1) for i in range(3)]
    ops += [dict(op="gap", inputs=[3], out=4),
            dict(op="linear", inputs=[4], out=5, weight="a7", bias="a8")]
    header.update(ops=ops, output=5)


def huge_batch(header, arrays):
    """10^12 images of 8x8: 768 TB of input for --benchmark."""
    header["input_shape"] = [10 ** 12, 3, SIZE, SIZE]


def deep_json():
    return savez("[" * 100000 + "]" * 100000, tiny()[1])


def deep_metadata(header, arrays):
    header["metadata"] = '{"a": ' + "[" * 100000 + "]" * 100000 + "}"


def internal_key(header, arrays):
    """``_kernel_weight`` was the runtime's cache of a conv's weight, kept in the op dict."""
    header["ops"][0]["_kernel_weight"] = [[1.0]]


def short_class_list(header, arrays):
    metadata = json.loads(header["metadata"])
    header["metadata"] = json.dumps(dict(metadata, classes=["only one"]))


def unknown_top_key(header, arrays):
    header["comment"] = "not a key of the format"


def zero_kernel(header, arrays):
    """A 0x0 packed kernel: its output was one pixel larger than its input."""
    arrays["a3"] = np.zeros((1, 0, 0, 1, 8), np.uint64)
    arrays["a4"] = np.zeros((1, 0, 0, 8), np.int64)


def new_specialization(header, arrays):
    """A 1x1 binary conv dilated by 2^63 (any dilation is harmless for 1x1): numba typed it
    uint64 and compiled, and cached, a new specialization of the kernel."""
    arrays["a3"] = arrays["a3"][:, :1, :1].copy()
    arrays["a4"] = arrays["a4"][:, :1, :1].copy()
    header["ops"][1].update(dilation=[1 << 63, 1 << 63], padding=[0, 0])


# case -> (bytes of the file, words the error line must hold, infer's arguments after the model)
CASES = {
    "10^12 MACs of shared-weight convolutions": (lambda k: with_ops(shared_weight_convs),
                                                 "--max-gmacs", None),
    "one 1 GiB member listed 300 times": (one_member_300_times, "repeat", None),
    "overlapping-entry zip bomb": (overlapping_bomb, "overlap", None),
    "encrypted member": (lambda k: zip_archive(tiny_members(**{"a0.npy": {"flags": 1}})),
                         "encrypted", None),
    "unknown compression": (lambda k: zip_archive(tiny_members(**{"a0.npy": {"method": 99}})),
                            "compression method 99", None),
    "a member declaring 4 TiB": (lambda k: declares_4_tib(), "--max-memory", None),
    "padding that grows layer by layer": (lambda k: with_ops(growing_padding), "--max-memory",
                                          None),
    "--benchmark at the recorded batch of 10^12": (lambda k: with_ops(huge_batch),
                                                    "--max-batch", ["--benchmark"]),
    "deeply nested JSON header": (lambda k: deep_json(), "nests deeper", None),
    "deeply nested JSON metadata": (lambda k: with_ops(deep_metadata), "nests deeper", None),
    "a plain .npy renamed .bnn": (lambda k: npy(np.zeros((3, 3), np.float32)), ".npy file",
                                  None),
    "a runtime-internal key in an op": (lambda k: with_ops(internal_key),
                                        "unknown key '_kernel_weight'", None),
    "fewer class names than outputs": (lambda k: with_ops(short_class_list), "class names",
                                       None),
    "an unknown header key": (lambda k: with_ops(unknown_top_key), "unknown header key",
                              None),
    "a 0x0 packed kernel": (lambda k: with_ops(zero_kernel), "zero size", None),
    "a dilation of 2^63 (a new numba specialization)": (lambda k: with_ops(new_specialization),
                                                        "'dilation'", None),
}
NEED_KERNEL = ("one 1 GiB member listed 300 times", "overlapping-entry zip bomb")


def repo_files():
    """Every file under the repository (caches included), but the venvs and .git."""
    found = set()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in (".git", ".venv", ".torchvenv")]
        found.update(os.path.join(folder, f) for f in files)
    return found


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "digit.png"
    Image.fromarray(np.full((SIZE, SIZE, 3), 128, np.uint8)).save(path)
    return path


def infer(model, *args, timeout=SECONDS + 30):
    start = time.monotonic()
    proc = run_tool("-c", UNDER_4G, "tools/infer.py", model, *args, "--threads", 1,
                    timeout=timeout, env=QUIET_ENV)
    return proc, time.monotonic() - start


def test_the_small_model_runs(tmp_path, image):
    """The control: the model the hostile files are made from classifies an image (the first
    run after a change to deploy/bitops.py compiles the kernels: a minute on a busy machine)."""
    path = tmp_path / "tiny.bnn"
    path.write_bytes(savez(*tiny()))
    proc, _ = infer(path, image, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == str(image) and re.match(r"\s+1\. c\d ", lines[1]), proc.stdout
    assert proc.stderr == ""


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_file_is_one_error_line(case, request, tmp_path, image):
    build, words, args = CASES[case]
    kernel = request.getfixturevalue("zeros_kernel") if case in NEED_KERNEL else None
    path = tmp_path / "model.bnn"
    path.write_bytes(build(kernel))
    before = repo_files()
    proc, seconds = infer(path, *(args or [image]))
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    line = one_line_error(proc)
    assert words in line, line
    assert str(path) in line
    assert seconds < SECONDS
    assert os.listdir(tmp_path) == ["model.bnn"]
    assert repo_files() - before == set()


# -- the fuzz run --------------------------------------------------------------------------------
FUZZ_WORKER = UNDER_4G.split("sys.argv")[0] + """
import os, sys, traceback
import numpy as np
from deploy import runtime
from errors import ModelFileError
folder = sys.argv[1]
for name in sorted(os.listdir(folder)):
    try:
        model = runtime.open_model(os.path.join(folder, name), threads=1)
        model(np.zeros((1,) + tuple(model.input_shape[1:]), np.float32))
        print("ran", name, flush=True)
    except ModelFileError as e:
        print("refused", name, "multi-line" if "\\n" in str(e) else "", flush=True)
    except BaseException as e:
        print("CRASH", name, type(e).__name__, str(e)[:200].replace("\\n", " "), flush=True)
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small searched network of binary primitives (factorized reduction, shortcut, 0 and
    -1 padding) as tools/export.py packs it."""
    import megengine  # noqa: F401  (the exporter's side)

    from deploy import binary_export as be
    from deploy import binary_runtime as br
    from model.derived import build_from_arch
    from model.parity import randomize_batchnorm, sample_inputs

    rng = np.random.default_rng(5)
    net = build_from_arch({
        "stem": {"channels": 8, "stride": 1}, "num_classes": CLASSES,
        "layers": [{"op": "xnor_conv_3x3_cond_skip", "C_in": 8, "C_out": 16, "stride": 2},
                   {"op": "bireal_resnet_block", "C_in": 16, "C_out": 16, "stride": 1}]})
    randomize_batchnorm(net, rng, sample_inputs(rng, (8, 3, 12, 12)))
    net.eval()
    buf = io.BytesIO()
    br.write(buf, be.build_program(net), encode_metadata({}), (2, 3, 12, 12))
    return buf.getvalue()


def structure(data):
    """Byte ranges of the zip's structure and the .npy headers (where a flip is most likely to
    reach a parser rather than fail a CRC)."""
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        ranges = [(i.header_offset, i.header_offset + 30 + len(i.filename) + 20 + 128)
                  for i in z.infolist()]
        ranges.append((z.start_dir, len(data)))
    return [p for lo, hi in ranges for p in range(lo, min(hi, len(data)))]


NASTY = [0, -1, 1, 3, 2 ** 31, 2 ** 63, 2 ** 64, 1e308, -1e-300, 0.5, None, True, "a0", "",
         [], [0, 0], [1, 2 ** 63], [-1, 1], {}, [[1]], "x" * 100]


def header_edits(data, rng, count):
    """``count`` archives whose header JSON is edited (a value, a key, an op dropped or
    repeated), written with valid CRCs: the schema, not the zip, has to catch them."""
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        members = {n[:-4]: np.lib.format.read_array(io.BytesIO(z.read(n))) for n in z.namelist()}
    header = json.loads(members.pop("header").tobytes())
    for _ in range(count):
        h = json.loads(json.dumps(header))
        arrays = dict(members)
        kind = rng.integers(5)
        op = h["ops"][rng.integers(len(h["ops"]))]
        if kind == 0:  # an attribute of an op
            key = sorted(op)[rng.integers(len(op))]
            op[key] = NASTY[rng.integers(len(NASTY))]
        elif kind == 1:  # a top-level value
            key = sorted(h)[rng.integers(len(h))]
            h[key] = NASTY[rng.integers(len(NASTY))]
        elif kind == 2:  # an op dropped or repeated
            i = rng.integers(len(h["ops"]))
            h["ops"][i:i + 1] = [] if rng.integers(2) else [h["ops"][i]] * 2
        elif kind == 3:  # an array of another shape
            name = sorted(arrays)[rng.integers(len(arrays))]
            a = arrays[name]
            arrays[name] = np.resize(a, tuple(max(0, d + rng.integers(-1, 2)) for d in a.shape))
        else:  # a shape attribute off by one
            ints = [k for k, v in op.items() if isinstance(v, list) and len(v) == 2
                    and all(isinstance(x, int) for x in v)]
            if ints:
                key = ints[rng.integers(len(ints))]
                op[key] = [v + int(rng.integers(-1, 2)) for v in op[key]]
        yield savez(h, arrays)


def mutations(data, seed=0):
    """A few hundred broken copies of ``data``."""
    rng = np.random.default_rng(seed)
    hot = structure(data)
    for i in range(120):
        b = bytearray(data)
        pos = int(rng.integers(len(b))) if i % 2 else hot[rng.integers(len(hot))]
        b[pos] ^= 1 << int(rng.integers(8))
        yield bytes(b)
    for i in range(60):
        b = bytearray(data)
        pos = (int(rng.integers(len(b))) if i % 2 else hot[rng.integers(len(hot))]) // 4 * 4
        b[pos:pos + 4] = bytes(len(b[pos:pos + 4]))
        yield bytes(b)
    for n in [0, 1, 4, 21, 22, len(data) - 22, len(data) - 1]:
        yield data[:n]
    for n in rng.integers(0, len(data), 33):
        yield data[:int(n)]
    yield from header_edits(data, rng, 150)


def test_fuzzed_files_run_or_are_one_error(exported, tmp_path):
    folder = tmp_path / "fuzz"
    folder.mkdir()
    for i, data in enumerate(mutations(exported)):
        (folder / ("m%03d.bnn" % i)).write_bytes(data)
    (folder / "valid.bnn").write_bytes(exported)
    count = len(os.listdir(folder))
    before = repo_files()
    # about 15 s here; the deadline leaves room for compiling the kernels in a fresh cache
    proc = run_tool("-c", FUZZ_WORKER, folder, timeout=300, env=QUIET_ENV)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert len(lines) == count, proc.stdout[-3000:]
    crashes = [line for line in lines if not line.startswith(("ran ", "refused "))]
    assert crashes == [], crashes[:20]
    assert not [line for line in lines if line.endswith("multi-line")]
    assert "ran valid.bnn" in lines
    ran = sum(line.startswith("ran ") for line in lines)
    assert 1 < ran < count  # both outcomes occur
    assert repo_files() - before == set()
    assert len(os.listdir(folder)) == count


# -- numba writes nothing beside the sources, and compiles nothing new ---------------------------
def test_the_kernels_cache_outside_the_source_tree(tmp_path, monkeypatch):
    import numba

    from deploy import bitops

    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = bitops._cache_dir()
    assert path == str(tmp_path / "cache" / "repvgg-megengine" / "numba")
    assert os.stat(path).st_mode & 0o777 == 0o700
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert bitops._cache_dir() == str(tmp_path / "home" / ".cache" / "repvgg-megengine" / "numba")
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path / "user"))
    assert bitops._cache_dir() == str(tmp_path / "user")


def test_a_call_of_another_type_compiles_nothing():
    from deploy import bitops

    kernels = [bitops._pack, bitops._binary_conv, bitops._float_conv, bitops._affine,
               bitops._add]
    assert all(len(k.signatures) == 1 for k in kernels)
    x = np.zeros(3)  # float64
    with pytest.raises(TypeError):
        bitops._add(x, x, x)
    y = np.zeros(3, np.float32)
    y.flags.writeable = False
    out = bitops.add(y, y)  # the wrapper copies what the kernel's signature does not take
    assert out.dtype == np.float32
    assert all(len(k.signatures) == 1 for k in kernels)
