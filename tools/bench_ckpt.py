"""Benchmark: reading a RepVGG-B3-sized PyTorch checkpoint with ckpt_converter vs torch.load.

    .venv/bin/python tools/bench_ckpt.py            # or: make bench-ckpt

Writes a train-form RepVGG-B3 state dict (official names and shapes, random values, ~0.5 GB)
with real PyTorch in a temporary folder, then measures each operation in a fresh process:
wall time of the operation itself (imports excluded) and the process's peak resident memory
(VmHWM of /proc/self/status, i.e. the peak RSS of that process alone; ru_maxrss would
include the parent's peak, as Linux carries it across exec), also shown as the increase over
the process's peak right after its imports.
Needs the PyTorch venv (.torchvenv, `make setup-torch`).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from common import cli  # noqa: E402

TORCH_PY = os.path.join(ROOT, ".torchvenv", "bin", "python")

# Runs in a fresh interpreter: argv = [mode, checkpoint path, output folder].
CHILD = r"""
import json, os, resource, sys, time
mode, path, out = sys.argv[1:4]
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
t0 = time.perf_counter()
if mode == "torch.load":
    obj = torch.load(path)
elif mode == "read":
    obj = ckpt_converter.read_checkpoint(path)[0]
elif mode == "read+copy":
    obj = {k: np.array(v) for k, v in ckpt_converter.read_checkpoint(path)[0].items()}
elif mode == "convert":
    obj = ckpt_converter.convert(path, "RepVGG-B3")
elif mode == "cli":
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()):
        cli_main([path, "--arch", "RepVGG-B3", "-o", os.path.join(out, "b3.pkl")])
wall = time.perf_counter() - t0
print(json.dumps({"wall": wall, "peak": peak(), "base": base}))
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
    subprocess.run([TORCH_PY, "-c", MAKE, shapes_file, path], check=True)
    return path


def measure(python, mode, path, folder):
    proc = subprocess.run([python, "-c", CHILD, mode, path, folder], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise cli.UserError("%s failed: %s" % (mode, proc.stderr.strip().splitlines()[-1:]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--repeat", type=int, default=1, help="runs per operation (best time kept)")
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
        rows = []
        for mode, python, label in OPERATIONS:
            runs = [measure(python, mode, path, folder) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["wall"])
            best["peak"] = max(r["peak"] for r in runs)
            rows.append((mode, label, best))
        ref = rows[0][2]
        print("| operation | wall s | x torch.load | peak RSS MB | added over imports MB | "
              "added / file size |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for mode, label, r in rows:
            added = r["peak"] - r["base"]
            print("| %s | %.2f | %.2f | %.0f | %.0f | %.2f |" % (
                label, r["wall"], r["wall"] / ref["wall"], r["peak"], added, added / size_mb))
    return 0


if __name__ == "__main__":
    cli.run(main)
