"""Benchmark: reading a RepVGG-B3-sized PyTorch checkpoint with ckpt_converter vs torch.load.

    .venv/bin/python benchmarks/bench_ckpt.py [--rounds 5]     # or: make bench-ckpt

Writes a train-form RepVGG-B3 state dict (official names and shapes, random values, ~0.5 GB)
with real PyTorch in a temporary folder, then measures each operation in a fresh process (one
process alive at a time; the operations interleaved round by round; medians reported): wall
time and CPU time (user + system, all threads; steadier than wall time on a busy machine) of
the operation itself (imports excluded) and the process's peak resident memory (VmHWM
of /proc/self/status, i.e. the peak RSS of that process alone; ru_maxrss would include the
parent's peak, as Linux carries it across exec), also shown as the increase over the process's
peak right after its imports. Before timing, each operation's result is checked against
torch.load's: a checksum of every tensor (sum and sum of squares, in float64) must agree to 1e-9.
Needs the PyTorch venv (.torchvenv, `make setup-torch`).
"""
import json
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from common import children, cli  # noqa: E402

CHILD_DEADLINE_S = 900  # one load, save or conversion of a checkpoint (B3: 500 MB)
TORCH_PY = os.path.join(ROOT, ".torchvenv", "bin", "python")

# Runs in a fresh interpreter: argv = [mode, checkpoint path, output folder].
CHILD = r"""
import json, os, resource, sys, time
mode, path, out, check = sys.argv[1:5]
sys.path.insert(0, os.getcwd())
def peak():  # MB; VmHWM is this process's own high-water mark (ru_maxrss survives exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
if mode == "torch.load":
    import torch
else:
    from common.device import use_device
    use_device("cpu")
    import numpy as np
    import ckpt_converter
    from ckpt_converter.__main__ import main as cli_main
base = peak()
cpu0 = time.process_time()
t0 = time.perf_counter()
if mode == "torch.load":
    obj = torch.load(path)
elif mode == "read":
    obj = ckpt_converter.read_checkpoint(path)[0]
elif mode == "read+copy":
    obj = {k: np.array(v) for k, v in ckpt_converter.read_checkpoint(path)[0].items()}
elif mode == "convert":
    obj = ckpt_converter.convert(path, "RepVGG-B3")
elif mode == "build":
    from ckpt_converter.loading import uninitialised
    from model import get_model
    with uninitialised():
        obj = get_model("RepVGG-B3")
elif mode == "cli":
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()):
        cli_main([path, "--arch", "RepVGG-B3", "-o", os.path.join(out, "b3.pkl")])
wall = time.perf_counter() - t0
cpu = time.process_time() - cpu0
result = {"wall": wall, "cpu": cpu, "peak": peak(), "base": base}
if check == "1":  # checksums of every tensor, in the official (PyTorch) names and layouts
    import numpy as np
    if mode == "torch.load":
        arrays = {k: v.numpy() for k, v in obj.items()}
    elif mode == "cli":
        from common.checkpoint import load_checkpoint
        saved = load_checkpoint(os.path.join(out, "b3.pkl"))
        arrays = ckpt_converter.to_pytorch(saved["state_dict"])
    elif mode == "convert":
        from model.checkpoint import numpy_state_dict
        arrays = ckpt_converter.to_pytorch(numpy_state_dict(obj[0]))
    else:
        arrays = obj
    result["sums"] = {k: [float(np.asarray(v, np.float64).sum()),
                          float((np.asarray(v, np.float64) ** 2).sum())]
                      for k, v in arrays.items() if not k.endswith("num_batches_tracked")}
print(json.dumps(result))
"""

# Runs under the torch venv: writes random tensors of the given shapes with torch.save.
MAKE = r"""
import json, sys, torch
shapes = json.load(open(sys.argv[1]))
g = torch.Generator().manual_seed(0)
sd = {k: (torch.zeros(s, dtype=torch.int64) if k.endswith("num_batches_tracked")
          else torch.randn(s, generator=g)) for k, s in shapes.items()}
torch.save(sd, sys.argv[2])
"""

OPERATIONS = [
    ("torch.load", TORCH_PY, "torch.load(path) (torch 2.13, Python 3.11)"),
    ("read", sys.executable, "ckpt_converter.read_checkpoint (arrays = views of the mapped file)"),
    ("read+copy", sys.executable,
     "read_checkpoint + copy every tensor into RAM (= torch.load's work)"),
    ("build", sys.executable, "building MegEngine's RepVGG-B3 alone, uninitialised (what any "
     "conversion must do besides copying)"),
    ("convert", sys.executable, "ckpt_converter.convert -> MegEngine RepVGG-B3 with the weights"),
    ("cli", sys.executable, "python -m ckpt_converter ... -o b3.pkl (convert + write; the "
     "command also sets glibc's mmap threshold so freed blocks go back to the OS)"),
]


def make_checkpoint(folder, arch):
    from common.device import use_device
    use_device("cpu")
    from ckpt_converter import to_pytorch
    from model import get_model

    shapes = {k: list(v.shape) for k, v in to_pytorch(get_model(arch).state_dict()).items()}
    shapes_file = os.path.join(folder, "shapes.json")
    with open(shapes_file, "w") as f:
        json.dump(shapes, f)
    path = os.path.join(folder, "%s-train.pth" % arch)
    children.run([TORCH_PY, "-c", MAKE, shapes_file, path], CHILD_DEADLINE_S,
                 what="writing the .pth with PyTorch", check=True, capture_output=True,
                 text=True)
    return path


def measure(python, mode, path, folder, check=False):
    proc = children.run([python, "-c", CHILD, mode, path, folder, "1" if check else "0"],
                        CHILD_DEADLINE_S, what=mode, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise cli.UserError("%s failed: %s" % (mode, children.last_line(proc)))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_outputs(operations, path, folder):
    """Every operation's tensors against torch.load's, by checksum, before anything is timed."""
    reference = measure(TORCH_PY, "torch.load", path, folder, check=True)["sums"]
    for mode, python, _label in operations[1:]:
        if mode == "build":  # no weights to compare
            continue
        sums = measure(python, mode, path, folder, check=True)["sums"]
        if sorted(sums) != sorted(reference):
            raise cli.UserError("%s: other tensors than torch.load's" % mode)
        for key, (total, squares) in reference.items():
            # the same float32 values; float64 sums differ only by summation order (the two
            # venvs' NumPy versions)
            tolerance = 1e-9 * (squares + 1.0)
            if abs(sums[key][0] - total) > tolerance or abs(sums[key][1] - squares) > tolerance:
                raise cli.UserError("%s: tensor %s differs from torch.load's" % (mode, key))


def main(argv=None):
    p = cli.ArgumentParser(__doc__)
    p.add_argument("--rounds", type=cli.integer(min=1), default=3,
                   help="rounds; each runs every operation once, in turn (medians reported)")
    p.add_argument("--only", nargs="+", choices=[op[0] for op in OPERATIONS[1:]],
                   help="time only these operations (torch.load always runs)")
    p.add_argument("--keep", metavar="DIR", help="work in DIR and keep the files (default: a "
                   "temporary folder, removed afterwards)")
    args = p.parse_args(argv)
    if not os.path.exists(TORCH_PY):
        raise cli.UserError("the PyTorch venv is missing (%s): run `make setup-torch`" % TORCH_PY)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or tmp
        os.makedirs(folder, exist_ok=True)
        print("writing a RepVGG-B3 train-form checkpoint with PyTorch ...", flush=True)
        path = make_checkpoint(folder, "RepVGG-B3")
        size_mb = os.path.getsize(path) / 2 ** 20
        print("%s: %.0f MB\n" % (os.path.basename(path), size_mb))
        operations = [op for op in OPERATIONS
                      if op[0] == "torch.load" or not args.only or op[0] in args.only]
        print("checking every operation's tensors against torch.load's ...", flush=True)
        check_outputs(operations, path, folder)
        runs = {mode: [] for mode, _, _ in operations}
        for round_ in range(args.rounds):
            print("round %d/%d" % (round_ + 1, args.rounds), flush=True)
            for mode, python, _label in operations:
                runs[mode].append(measure(python, mode, path, folder))
        rows = []
        for mode, _python, label in operations:
            rows.append((mode, label, {key: statistics.median(r[key] for r in runs[mode])
                                       for key in ("wall", "cpu", "peak", "base")}))
        ref = rows[0][2]
        print()
        print("| operation | wall s | x torch.load | CPU s | x torch.load | peak RSS MB | "
              "added over imports MB | added / file size |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for mode, label, r in rows:
            added = r["peak"] - r["base"]
            print("| %s | %.2f | %.2f | %.2f | %.2f | %.0f | %.0f | %.2f |" % (
                label, r["wall"], r["wall"] / ref["wall"], r["cpu"], r["cpu"] / ref["cpu"],
                r["peak"], added, added / size_mb))
    return 0


if __name__ == "__main__":
    cli.run(main)
