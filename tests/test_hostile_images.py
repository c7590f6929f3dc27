"""Hostile and broken images (issue 23) and the one decoder of every tool (issue 24 item 3).

Each hostile file is generated here: a 20 KB PNG that declares 169 megapixels, a PNG whose
image data holds 8 of its 256 rows, a PNG and a JPEG cut short. Each goes through
``tools/predict.py`` (a checkpoint) and ``tools/infer.py`` (its ONNX export): exit 1, exactly one
``error:`` line, well under 60 s, nothing written. The same 16-bit PNG (and a JPEG large enough to
decode in draft mode) gives one top-5 through both tools. A small fuzz run (bit flips, zeroed
words, truncations of a PNG and a JPEG) decodes every mutation in one child: no death by a
signal, no traceback, each file decoded or refused in one line.
"""
import io
import os
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from common.checkpoint import save_checkpoint
from deploy import preprocess as P
from helpers import one_line_error, run_tool
from model.checkpoint import build_model, checkpoint_dict, numpy_state_dict
from model.parity import randomize_batchnorm, sample_inputs

SIZE = 32
ARCH = {"stem": {"channels": 8, "stride": 2},
        "layers": [{"op": "repvgg", "C_in": 8, "C_out": 16, "stride": 2},
                   {"op": "repvgg", "C_in": 16, "C_out": 16, "stride": 1}],
        "head": {"channels": 24}}
CLASSES = ["c%d" % i for i in range(10)]


def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_bytes(width, height, raw, colour=2, depth=8):
    """A PNG of ``raw`` filtered rows (each a filter byte and its samples) under this header."""
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def write_bomb(path):
    """13000 x 13000 greyscale (169 MP) declared; about 20 KB of zero rows follow."""
    rows = b"".join(b"\x00" + bytes(13000) for _ in range(1600))
    path.write_bytes(png_bytes(13000, 13000, rows, colour=0))
    assert 10_000 < path.stat().st_size < 40_000


def write_partial_png(path):
    """A complete, valid-looking PNG (CRCs right, IEND present) whose zlib stream holds 8 of the
    256 rows the header declares; Pillow decodes it with the other 248 rows black."""
    rows = b"".join(b"\x00" + bytes([200]) * (256 * 3) for _ in range(8))
    path.write_bytes(png_bytes(256, 256, rows))


def smooth_rgb(h, w, seed=0):
    """A smooth image (JPEG keeps it within a few levels)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = rng.uniform(40, 200, 3)
    return np.clip(base + 50 * np.stack([np.sin(3 * x), np.cos(2 * y), np.sin(2 * (x + y))], -1),
                   0, 255).astype(np.uint8)


def encoded(array, fmt, **options):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def half(data):
    return data[:len(data) // 2]


HOSTILE = {
    "bomb.png": write_bomb,
    "partial.png": write_partial_png,
    "cut.png": lambda p: p.write_bytes(half(encoded(smooth_rgb(64, 64), "PNG"))),
    "cut.jpg": lambda p: p.write_bytes(half(encoded(smooth_rgb(64, 64), "JPEG", quality=95))),
    "not-an-image.jpg": lambda p: p.write_bytes(b"GIF89a" + bytes(40)),
}
EXPECTED_WORDS = {"bomb.png": "too large", "partial.png": "partial", "cut.png": "truncated",
                  "cut.jpg": "truncated", "not-an-image.jpg": "cannot read image"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A small ImageNet-style checkpoint and its ONNX export (tools/export.py)."""
    folder = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(11)
    net = build_model(ARCH, len(CLASSES))
    randomize_batchnorm(net, rng, sample_inputs(rng, (8, 3, SIZE, SIZE)))
    ckpt = folder / "model.pkl"
    save_checkpoint(checkpoint_dict(numpy_state_dict(net), ARCH, "train", classes=CLASSES,
                                    dataset="imagenet", image_size=SIZE,
                                    preprocess=P.imagenet_spec(SIZE).to_dict()), ckpt)
    onnx = folder / "model.onnx"
    proc = run_tool("tools/export.py", "--load", ckpt, "--output", onnx, "--threads", 1)
    assert proc.returncode == 0, proc.stderr
    return ckpt, onnx


def _tool(which, models, image):
    ckpt, onnx = models
    if which == "predict":
        return run_tool("tools/predict.py", "--checkpoint", ckpt, image, "--device", "cpu",
                        timeout=120)
    return run_tool("tools/infer.py", onnx, image, "--threads", 1, timeout=120)


@pytest.mark.parametrize("which", ["predict", "infer"])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_image_is_refused_in_one_line(tmp_path, models, which, name):
    image = tmp_path / name
    HOSTILE[name](image)
    before = sorted(os.listdir(tmp_path))
    start = time.monotonic()
    proc = _tool(which, models, image)
    seconds = time.monotonic() - start
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    line = one_line_error(proc)
    assert EXPECTED_WORDS[name] in line.lower() and str(image) in line, line
    assert proc.stdout == ""
    assert seconds < 60
    assert sorted(os.listdir(tmp_path)) == before


def _top5(which, stdout):
    if which == "predict":  # "path: c3 41.20%, c1 ..."
        rest = stdout.strip().split(": ", 1)[1]
        return [(name, float(p.rstrip("%"))) for name, p in
                (item.split() for item in rest.split(", "))]
    lines = stdout.strip().splitlines()[1:]  # "  1. c3      41.20%"
    return [(l.split()[1], float(l.split()[2].rstrip("%"))) for l in lines]


def test_predict_and_infer_give_one_answer_for_16_bit_and_draft_decoded_files(tmp_path,
                                                                                models):
    # Issue 24 item 3: infer.py clipped a 16-bit PNG to white where predict.py scaled it.
    # A 16-bit greyscale PNG (Pillow's I;16) written from known 8-bit levels x 257.
    grey = smooth_rgb(40, 52, seed=3)[:, :, 1]
    wide = (grey.astype(">u2") * 257).tobytes()
    rows = b"".join(b"\x00" + wide[r * 52 * 2:(r + 1) * 52 * 2] for r in range(40))
    png16 = tmp_path / "sixteen.png"
    png16.write_bytes(png_bytes(52, 40, rows, colour=0, depth=16))
    with Image.open(png16) as check:
        assert check.mode.startswith("I;16")
    big_jpeg = tmp_path / "big.jpg"  # shorter side 300 >= 4 x 37: decoded at 1/4 in draft mode
    big_jpeg.write_bytes(encoded(smooth_rgb(300, 420, seed=4), "JPEG", quality=90))
    answers = {}
    for image in (png16, big_jpeg):
        for which in ("predict", "infer"):
            proc = _tool(which, models, image)
            assert proc.returncode == 0, proc.stderr
            answers[image.name, which] = _top5(which, proc.stdout)
    for image in (png16, big_jpeg):
        a, b = answers[image.name, "predict"], answers[image.name, "infer"]
        assert a[0][0] == b[0][0], (a, b)
        for (_, pa), (_, pb) in zip(a, b):
            assert abs(pa - pb) <= 0.01 + 1e-9, (a, b)
    # The 16-bit file gives the answer of its 8-bit values (not of a white image).
    png8 = tmp_path / "eight.png"
    Image.fromarray(grey).save(png8)
    proc = _tool("infer", models, png8)
    assert _top5("infer", proc.stdout) == answers["sixteen.png", "infer"]


FUZZ_CHILD = r"""
import os, sys
sys.path.insert(0, os.getcwd())
from data.images import UnreadableImage, read_rgb
folder = sys.argv[1]
decoded = refused = 0
for name in sorted(os.listdir(folder)):
    try:
        image = read_rgb(os.path.join(folder, name), size=16)
        assert image.mode == "RGB" and min(image.size) >= 1
        decoded += 1
    except UnreadableImage as e:
        assert "\n" not in str(e)
        refused += 1
print(decoded, refused)
"""


def mutations(data, rng, count):
    """Bit flips, zeroed 32-bit words and truncations of ``data``, ``count`` in all."""
    out = []
    for i in range(count):
        b = bytearray(data)
        kind = i % 3
        if kind == 0:
            for _ in range(int(rng.integers(1, 4))):
                pos = int(rng.integers(0, len(b)))
                b[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            pos = int(rng.integers(0, len(b) - 4)) & ~3
            b[pos:pos + 4] = bytes(4)
        else:
            b = b[:int(rng.integers(1, len(b)))]
        out.append(bytes(b))
    return out


def test_fuzzed_png_and_jpeg_decode_or_refuse_in_one_child(tmp_path):
    rng = np.random.default_rng(23)
    folder = tmp_path / "fuzz"
    folder.mkdir()
    sources = {"png": encoded(smooth_rgb(24, 30), "PNG"),
               "jpg": encoded(smooth_rgb(24, 30), "JPEG", quality=80)}
    for ext, data in sources.items():
        for i, mutated in enumerate(mutations(data, rng, 150)):
            (folder / ("%03d.%s" % (i, ext))).write_bytes(mutated)
    proc = run_tool("-c", FUZZ_CHILD, folder, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]  # a signal would be a negative code
    assert proc.stderr == ""
    decoded, refused = map(int, proc.stdout.split())
    assert decoded + refused == 300 and refused > 50 and decoded > 20
