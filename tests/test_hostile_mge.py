"""Issue 23: a crafted or broken ``.mge`` never takes ``tools/infer.py`` down. The main process
parses no byte of a ``.mge`` before a child (``deploy/lite_child.py inspect``, under a deadline
and RLIMIT_AS) has loaded and run it; a crash there is one ``error:`` line naming the signal.
Issue 24 item 4: the last, smaller batch is padded, so one input shape reaches the model.

The regression cases (``ZEROED_WORDS``) each killed ``tools/infer.py`` by SIGSEGV inside
``lite.read_user_info`` before this change (found by zeroing every 4-byte word of this file's
model: 83 of 1296 crashed the old code in the main process)."""
import io
import os
import struct
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from common import children
from common.limits import Limits
from helpers import ROOT, load_tool, one_line_error, run_tool

SIZE = 16
# words of the tiny model below whose zeroing SIGSEGVed the old code in the main process
ZEROED_WORDS = (12, 20, 100)


def tiny_mge(stride=2, size=SIZE):
    """A tiny classifier (conv, ReLU, global mean, linear) dumped as tools/export.py dumps
    (graph options "fuse", metadata of format /2 with its preprocessing): bytes, about 3 KB."""
    import megengine as mge
    import megengine.functional as F
    import megengine.module as M

    from deploy import dump, modelfile, preprocess

    class Tiny(M.Module):
        def __init__(self):
            super().__init__()
            self.c1 = M.Conv2d(3, 4, 3, stride=stride, padding=1)
            self.fc = M.Linear(4, 10)

        def forward(self, x):
            return self.fc(F.mean(F.relu(self.c1(x)), axis=[2, 3]))

    device = mge.get_default_device()
    mge.set_default_device(dump.trace_device(1))
    try:
        mge.random.seed(0)
        net = Tiny()
        net.eval()
        meta = {"arch": "tiny", "classes": None, "input_shape": [1, 3, SIZE, SIZE],
                "preprocess": preprocess.imagenet_spec(SIZE).to_dict()}
        f = io.BytesIO()
        dump.dump_model(net, np.zeros((1, 3, size, size), np.float32), f,
                        user_info=modelfile.encode_metadata(meta))
        return f.getvalue()
    finally:
        mge.set_default_device(device)


def differing_words(a, b):
    """Offsets of the aligned 32-bit words where two dumps of the same graph differ."""
    assert len(a) == len(b)
    return [i for i in range(0, len(a) - 3, 4) if a[i:i + 4] != b[i:i + 4]]


def with_words(data, offsets, value_of):
    out = bytearray(data)
    for i in offsets:
        out[i:i + 4] = struct.pack("<I", value_of(struct.unpack("<I", data[i:i + 4])[0]))
    return bytes(out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model's bytes, its stride-0 and huge-input variants, and an image."""
    folder = tmp_path_factory.mktemp("tiny")
    data = tiny_mge()
    # the conv's stride: the words that change from stride 2 to stride 3 with value 2
    strides = [i for i in differing_words(data, tiny_mge(stride=3))
               if struct.unpack("<I", data[i:i + 4])[0] == 2]
    assert len(strides) == 2, strides  # stride_h, stride_w
    # the input's height and width, and the shapes derived from them: x 4096 (65536 x 65536)
    sizes = differing_words(data, tiny_mge(size=2 * SIZE))
    image = folder / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), np.uint8)).save(image)
    return {"data": data, "image": image,
            "stride0": with_words(data, strides, lambda v: 0),
            "huge": with_words(data, sizes, lambda v: (v * 4096) & 0xffffffff)}


def test_the_tiny_model_classifies(tiny, tmp_path):
    (tmp_path / "m.mge").write_bytes(tiny["data"])
    proc = run_tool("tools/infer.py", tmp_path / "m.mge", tiny["image"], "--top", 2, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("class ") == 2 and proc.stderr == ""


HOSTILE = {
    **{"zeroed word at %d" % off: lambda t, off=off: with_words(t["data"], [off], lambda v: 0)
       for off in ZEROED_WORDS},
    "stride 0": lambda t: t["stride0"],
    "truncated to half": lambda t: t["data"][:len(t["data"]) // 2],
    "truncated to 16 bytes": lambda t: t["data"][:16],
    "random bytes": lambda t: np.random.default_rng(5).bytes(len(t["data"])),
    "a 65536x65536 input": lambda t: t["huge"],
}
EXPECTED = {"zeroed word at 12": "crashed the MegEngine loader (SIGSEGV)",
            "a 65536x65536 input": "--max-memory raises it"}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_mge_is_one_line_and_writes_nothing(tiny, tmp_path, case):
    path = tmp_path / "m.mge"
    path.write_bytes(HOSTILE[case](tiny))
    before = sorted(os.listdir(tmp_path)), set(os.listdir("/tmp"))
    start = time.monotonic()
    proc = run_tool("tools/infer.py", path, tiny["image"], timeout=120)
    assert time.monotonic() - start < 60
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    line = one_line_error(proc)
    assert str(path) in line
    assert EXPECTED.get(case, "") in line
    assert proc.stdout == ""
    assert sorted(os.listdir(tmp_path)) == before[0]
    assert not {f for f in set(os.listdir("/tmp")) - before[1] if f.startswith("lite_child.")}


def test_the_benchmark_batch_is_checked_before_it_is_allocated(tiny, tmp_path):
    path = tmp_path / "m.mge"
    path.write_bytes(tiny["data"])
    proc = run_tool("tools/infer.py", path, "--benchmark", "--batch", 1000, "--max-memory", "1M",
                    timeout=120)
    assert proc.returncode == 1
    assert "1000 x" in one_line_error(proc) and "--max-memory" in proc.stderr


def test_the_child_runs_under_its_address_space_limit():
    grab = "import sys; bytearray(int(sys.argv[1])); print('ok')"
    small = children.run([sys.executable, "-c", grab, str(1 << 30)], 60, capture_output=True,
                         text=True, rlimit_as=512 << 20)
    assert small.returncode == 1 and "MemoryError" in small.stderr
    free = children.run([sys.executable, "-c", grab, str(1 << 30)], 60, capture_output=True,
                        text=True)
    assert free.returncode == 0 and free.stdout.strip() == "ok"
    # MegEngine itself starts under the limit a default inspect child gets
    imports = children.run([sys.executable, "-c", "import megengine, megenginelite"], 120,
                           capture_output=True, rlimit_as=Limits().child_address_space())
    assert imports.returncode == 0, imports.stderr


# One worker opens every file as tools/infer.py does and runs it once: a line per file.
WORKER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    from deploy import runtime
    from errors import UserError
    for path in sys.argv[2:]:
        try:
            model = runtime.open_model(path, threads=1)
            model(np.zeros((1,) + tuple(model.input_shape[1:]), np.float32))
            print("ran", path, flush=True)
        except UserError as e:
            print("refused", path, str(e).replace("\\n", " "), flush=True)
""")


def mutations(data, seed=23):
    """48 single mutations of ``data``: each of the first 24 words zeroed (the graph's header and
    first operator: where the old code crashed most), 16 bit flips and 8 truncations. Each open
    costs a child start (about 2.5 s of CPU), hence so few."""
    rng = np.random.default_rng(seed)
    out = [with_words(data, [off], lambda v: 0) for off in range(0, 96, 4)]
    for bit in rng.choice(len(data) * 8, 16, replace=False):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        out.append(bytes(flipped))
    out += [data[:n] for n in rng.choice(len(data), 8, replace=False)]
    return out


def test_fuzzed_mge_files_never_kill_the_process_that_opens_them(tiny, tmp_path):
    files = []
    for i, data in enumerate(mutations(tiny["data"])):
        files.append(tmp_path / ("f%03d.mge" % i))
        files[-1].write_bytes(data)
    halves = [files[0::2], files[1::2]]  # two workers side by side
    workers = [children.Child([sys.executable, "-c", WORKER, ROOT, *map(str, half)], 280,
                              stdout=children.subprocess.PIPE, stderr=children.subprocess.PIPE,
                              text=True) for half in halves]
    results = []
    for worker in workers:
        with worker:
            out, err = worker.communicate()
        assert worker.proc.returncode == 0, (worker.proc.returncode, err[-2000:])
        assert "Traceback" not in err and "Traceback" not in out
        results += [l for l in out.splitlines() if l.startswith(("ran ", "refused "))]
    assert sorted(l.split()[1] for l in results) == sorted(map(str, files))
    crashes = [l for l in results if "crashed" in l]
    assert crashes, "no mutation crashed the loader: the fuzz tests nothing"
    assert all("(SIG" in l for l in crashes)


class ShapeRecorder:
    """A model that records the input shapes it is called with."""
    input_shape = (1, 3, SIZE, SIZE)
    fastrun = True

    def __init__(self):
        self.shapes = []

    def __call__(self, x):
        self.shapes.append(x.shape)
        return np.tile(np.arange(10, dtype=np.float32), (x.shape[0], 1))


def test_the_last_batch_is_padded_to_one_shape(tmp_path):
    from deploy import preprocess

    infer = load_tool("tools/infer.py")
    paths = []
    for i in range(15):
        paths.append(str(tmp_path / ("%02d.png" % i)))
        Image.fromarray(np.full((20, 20, 3), i * 10, np.uint8)).save(paths[-1])
    model = ShapeRecorder()
    results = list(infer.classify(model, preprocess.imagenet_spec(SIZE), paths, 4, 3))
    assert [p for p, _ in results] == paths
    assert set(model.shapes) == {(4, 3, SIZE, SIZE)} and len(model.shapes) == 4
    assert all(top[0][0] == 9 for _, top in results)


def test_a_new_shape_is_announced_before_the_first_call():
    infer = load_tool("tools/infer.py")
    args = infer.parse_args(["m.mge", "--benchmark"])
    assert infer.shape_note(args, ShapeRecorder(), 1) is None  # the shape it was tuned for
    assert "preparing it for batch 4" in infer.shape_note(args, ShapeRecorder(), 4)
    untuned = ShapeRecorder()
    untuned.fastrun = False
    assert infer.shape_note(args, untuned, 4) is None
