"""Inference speed of the toolkit's deploy paths against the peers, each path alone in a fresh
process, on the same weights.

    python benchmarks/bench_deploy.py --arch RepVGG-A0 RepVGG-B0 --batch 1 16 --rounds 3
    python benchmarks/bench_deploy.py --quick       # seconds: A0 at 32x32, a few paths

Weights: the reference PyTorch model (torch_reference/repvgg.py, official parameter names) in
train form with random weights and BatchNorm statistics, saved once as a .pth. The PyTorch paths
load that .pth and fuse it with the reference code; the toolkit imports it with ckpt_converter,
fuses it with model/ and exports it exactly as tools/export.py does (deploy/export.py): the .mge
files and one .onnx, which ONNX Runtime and OpenVINO also run.

Paths (--paths): peers: PyTorch eager, channels_last, TorchScript (trace + freeze), torch.compile
(inductor), ONNX Runtime and OpenVINO on the exported .onnx (all in .torchvenv); ours: the .mge
as tools/export.py writes it by default (portable graph with fused conv/bias/ReLU, fast-run
algorithm cache recorded at export) opened as tools/infer.py opens it, the same without the
cache, with Lite's weight preprocessing, with the x86 NCHW88 layout (--options nchw88+fuse; the
row says when this CPU cannot run it and the export fell back), the dump without fusion, and
the .onnx through deploy.runtime (ONNX Runtime of .venv, what tools/infer.py runs for a .onnx);
int8: the same weights as a PTQ int8 QDQ .onnx (quant/onnx_int8.py, calibrated on the benchmark's
input) run as tools/infer.py runs it (the runtime deploy/route.py measures and picks at first use;
its line is printed) and through each runtime forced, each also given as a ratio to OpenVINO's
default on the float .onnx ("openvino-default", the peer a user gets without settings).

Timing: every measurement is a fresh process (benchmarks/torch_bench_worker.py or
benchmarks/mge_bench_worker.py) that loads the model, runs --warmup untimed passes and --runs timed
ones, reports its median and exits; only one runs at a time and this process imports neither
MegEngine nor PyTorch, so no other thread pool is alive. Rounds are interleaved: each round runs
every path once, in an order rotated by one per round. Reported: the median over rounds of
images/s, the spread (min-max over rounds, the noise of this machine), and the ratio to the best
peer. The logits of every path on the same input are compared with PyTorch eager's after the
first round; a mismatch stops the benchmark.
"""
import json
import os
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common import children, cli  # noqa: E402
from common.cpus import cpu_count, cpu_name, simd_level, threads_arg  # noqa: E402
from errors import UserError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MGE_PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
TORCH_PYTHON = os.path.join(ROOT, ".torchvenv", "bin", "python")
TORCH_WORKER = os.path.join(ROOT, "benchmarks", "torch_bench_worker.py")
MGE_WORKER = os.path.join(ROOT, "benchmarks", "mge_bench_worker.py")
TOLERANCE = 1e-5  # relative to the largest logit: float32 summation order, nothing more

# key -> (row name, peer?, how it runs). Peers run benchmarks/torch_bench_worker.py --mode M;
# ours run benchmarks/mge_bench_worker.py on an exported file: ("mge", "options:cache", lite
# flags) or "onnx".
PATHS = {
    "eager": ("PyTorch eager", True, "eager"),
    "channels_last": ("PyTorch eager, channels_last", True, "channels_last"),
    "script": ("PyTorch TorchScript (trace+freeze)", True, "script"),
    "compile": ("PyTorch torch.compile", True, "compile"),
    "onnxruntime": ("ONNX Runtime (our .onnx)", True, "onnxruntime"),
    "openvino": ("OpenVINO (our .onnx)", True, "openvino"),
    "openvino-default": ("OpenVINO, its default precision (bf16 on CPUs that have it)", True,
                         "openvino-default"),
    "mge": ("ours: .mge, export defaults (fuse, algo cache)", False,
            ("mge", "fuse:cache", [])),
    "mge-nocache": ("ours: .mge, fuse, no algo cache", False, ("mge", "fuse:nocache", [])),
    "mge-wp": ("ours: .mge, export defaults + weight_preprocess", False,
               ("mge", "fuse:cache", ["--weight-preprocess"])),
    "mge-nchw88": ("ours: .mge, nchw88+fuse (x86 AVX2 layout), algo cache", False,
                   ("mge", "nchw88+fuse:cache", [])),
    "mge-nchw": ("ours: .mge, no fusion (default options), algo cache", False,
                 ("mge", "default:cache", [])),
    "ours-onnx": ("ours: .onnx, deploy.runtime (ONNX Runtime, .venv)", False, "onnx"),
    "ours-bf16": ("ours: .onnx --precision bf16 (OpenVINO bf16, deploy.runtime)", False,
                  "onnx-bf16"),
    "ours-int8": ("ours: int8 QDQ .onnx, PTQ, tools/infer.py's runtime choice", False,
                  "int8"),
    "ours-int8-ort": ("ours: int8 QDQ .onnx, PTQ, --runtime onnxruntime", False,
                      "int8:onnxruntime"),
    "ours-int8-ov": ("ours: int8 QDQ .onnx, PTQ, --runtime openvino", False, "int8:openvino"),
}
# Reduced precision: not float32 rounding, so their logits are reported, not held to TOLERANCE,
# and they are not "the best peer" the float paths are compared with.
REDUCED = {"openvino-default", "ours-bf16", "ours-int8", "ours-int8-ort", "ours-int8-ov"}
INT8 = {"ours-int8", "ours-int8-ort", "ours-int8-ov"}
QUICK = dict(arch=["RepVGG-A0"], batch=[1], size=32, rounds=1, warmup=0, runs=2,
             paths=["eager", "onnxruntime", "openvino", "mge", "ours-onnx"])


class WorkerError(Exception):
    """A worker process failed; the message is its last error line."""


def call(python, script, args, timeout):
    """Run one worker process to completion (nothing else of ours runs meanwhile)."""
    if not os.path.exists(python):
        raise UserError("no Python at %s (see the README's set-up)" % python)
    try:
        proc = children.run([python, script] + [str(a) for a in args], timeout,
                            what=os.path.basename(script), capture_output=True, text=True,
                            cwd=ROOT)
    except children.ChildTimeout:
        raise WorkerError("timed out after %d s" % timeout) from None
    if proc.returncode != 0:
        raise WorkerError(children.last_line(proc)[:160])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sample_input(rng, shape):
    """Images that differ per sample (offset, contrast, ramps), so logits depend on the input."""
    n, c, h, w = shape
    ramp = (np.linspace(-1, 1, h)[:, None] * rng.normal(0, 1, (n, c, 1, 1))
            + np.linspace(-1, 1, w)[None, :] * rng.normal(0, 1, (n, c, 1, 1)))
    return (rng.normal(0, 1, (n, c, 1, 1)) + ramp + rng.uniform(0.3, 2.0, (n, 1, 1, 1))
            * rng.standard_normal(shape)).astype(np.float32)


class Row:
    def __init__(self, key):
        self.key = key
        self.name, self.peer, self.how = PATHS[key]
        self.ips, self.startup, self.error, self.diff = [], [], None, None
        self.route = None  # the runtime line of an int8 row


def run_path(row, arch, batch, files, folder, args, logits):
    x_file = os.path.join(folder, "x_b%d.npy" % batch)
    common = ["--input", x_file, "--logits", logits, "--threads", args.threads,
              "--warmup", args.warmup, "--runs", args.runs]
    if row.peer:
        reply = call(TORCH_PYTHON, TORCH_WORKER, ["run", "--mode", row.how, "--arch", arch,
                                                  "--weights", files["pth"], "--onnx",
                                                  files["onnx"]] + common, args.timeout)
    elif row.key in INT8:
        # the choice as tools/infer.py makes it (measured at first use: the first round's
        # load time includes the measurement), or the runtime forced
        _, _, forced = row.how.partition(":")
        how = ["--runtime", forced] if forced else ["--measure"]
        reply = call(MGE_PYTHON, MGE_WORKER, ["run", "--model", files["int8"]] + common + how,
                     args.timeout)
        row.route = reply.get("route")
    elif row.how in ("onnx", "onnx-bf16"):
        precision = ["--precision", "bf16"] if row.how == "onnx-bf16" else []
        reply = call(MGE_PYTHON, MGE_WORKER, ["run", "--model", files["onnx"]] + common
                     + precision, args.timeout)
    else:
        _, variant, flags = row.how
        reply = call(MGE_PYTHON, MGE_WORKER, ["run", "--model", files["%d/%s" % (batch, variant)]]
                     + common + flags, args.timeout)
    row.ips.append(batch / reply["seconds"])
    row.startup.append(reply["load_s"] + reply["first_s"])


def compare_logits(rows, outputs):
    """Max relative difference of every path's logits from the reference's; UserError on a
    mismatch (the table would compare different networks)."""
    live = [r for r in rows if r.error is None]
    if not live:
        return
    ref = next((r for r in live if r.key == "eager"), live[0])
    expected = np.load(outputs[ref.key]).astype(np.float64)
    bad = []
    for r in live:
        got = np.load(outputs[r.key]).astype(np.float64)
        if got.shape != expected.shape:
            bad.append("%s: shape %s vs %s" % (r.name, got.shape, expected.shape))
            continue
        r.diff = float(np.abs(got - expected).max() / np.abs(expected).max())
        if r.key not in REDUCED and not r.diff <= TOLERANCE:
            bad.append("%s: max relative difference %.1e from %s" % (r.name, r.diff, ref.name))
    if bad:
        raise UserError("the paths do not compute the same logits: " + "; ".join(bad))


def bench_arch(arch, args, folder):
    rng = np.random.default_rng(0)
    files = {"pth": os.path.join(folder, "%s.pth" % arch)}
    call(TORCH_PYTHON, TORCH_WORKER, ["weights", "--arch", arch, "--out", files["pth"]],
         args.timeout)
    x_files = []
    for batch in args.batch:
        x_files.append(os.path.join(folder, "x_b%d.npy" % batch))
        np.save(x_files[-1], sample_input(rng, (batch, 3, args.size, args.size)))
    variants = sorted({PATHS[k][2][1] for k in args.paths
                       if isinstance(PATHS[k][2], tuple)})
    int8 = ["--int8"] if INT8 & set(args.paths) else []
    prepared = call(MGE_PYTHON, MGE_WORKER, [
        "prepare", "--weights", files["pth"], "--arch", arch, "--folder", folder, "--threads",
        args.threads, "--input"] + x_files + int8 + ["--variant"] + variants, args.timeout)
    files.update(prepared["files"])
    for batch in args.batch:
        rows = [Row(k) for k in args.paths]
        for row in rows:
            asked = row.how[1].split(":")[0] if isinstance(row.how, tuple) else None
            used = prepared["used"].get("%d/%s" % (batch, row.how[1])) if asked else None
            if used and used != asked:
                row.name += " (this CPU cannot run %s: fell back to %s)" % (asked, used)
        outputs = {r.key: os.path.join(folder, "out_%s_b%d_%s.npy" % (arch, batch, r.key))
                   for r in rows}
        for round_ in range(args.rounds):
            shift = round_ % len(rows)
            for row in rows[shift:] + rows[:shift]:
                if row.error is not None:
                    continue
                try:
                    run_path(row, arch, batch, files, folder, args, outputs[row.key])
                except WorkerError as e:
                    row.error = str(e)
                print("  %s b%d round %d: %s" % (arch, batch, round_ + 1, row.name) + (
                    " failed: %s" % row.error if row.error else " %.1f img/s" % row.ips[-1]),
                    file=sys.stderr, flush=True)
            if round_ == 0:
                compare_logits(rows, outputs)
        yield batch, rows


def format_rows(arch, batch, rows):
    def median(r):
        return statistics.median(r.ips)

    peers = [median(r) for r in rows if r.peer and r.error is None and r.key not in REDUCED]
    best = max(peers) if peers else None
    lines = []
    for r in rows:
        if r.error is not None:
            lines.append("| %s | %d | %s | failed: %s | | | | |" % (arch, batch, r.name,
                                                                   r.error.replace("|", "/")))
            continue
        lines.append("| %s | %d | %s | %.1f | %.1f-%.1f | %s | %.1e | %.1f |" % (
            arch, batch, r.name, median(r), min(r.ips), max(r.ips),
            "%.2fx" % (median(r) / best) if best else "-", r.diff,
            statistics.median(r.startup)))
    default = next((r for r in rows if r.key == "openvino-default" and r.error is None), None)
    for r in rows:
        if r.key in INT8 and r.error is None:
            lines.append("| %s | %d | %s vs OpenVINO's default | %.2fx |%s| | | |" % (
                arch, batch, r.name, median(r) / median(default) if default else float("nan"),
                " %s " % r.route.replace("|", "/") if r.route and r.key == "ours-int8" else " "))
    return lines


def parse_args(argv):
    p = cli.ArgumentParser(__doc__)
    p.add_argument("--arch", nargs="+", default=["RepVGG-A0", "RepVGG-B0"], help="models")
    p.add_argument("--batch", nargs="+", type=int, default=[1, 16], help="batch sizes")
    p.add_argument("--size", type=int, default=224, help="input resolution")
    p.add_argument("--threads", type=threads_arg, default=cpu_count(),
                   help="CPU threads, every path")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (processes per path)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs in each process")
    p.add_argument("--runs", type=int, default=10, help="timed runs in each process (median)")
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS),
                   help="which paths to run (see above)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per worker process")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run in seconds: %s" % ", ".join(
                       "--%s %s" % (k, " ".join(map(str, v)) if isinstance(v, list) else v)
                       for k, v in QUICK.items()))
    args = p.parse_args(argv)
    if args.quick:
        for k, v in QUICK.items():
            if getattr(args, k) == p.get_default(k):
                setattr(args, k, v)
    if (min(args.batch) < 1 or args.size < 32 or args.runs < 1
            or args.rounds < 1 or args.warmup < 0):
        p.error("batch, runs and rounds must be positive, size at least 32, warmup >= 0")
    return args


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # the temp folder is removed and the running worker is killed


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    start = time.time()
    load = os.getloadavg()[0]
    # The table is printed as it is measured (a long run that fails later keeps what it has);
    # the command and the conditions follow it.
    print("| model | batch | path | img/s (median) | min-max over rounds | vs best peer "
          "| max rel diff | load + first run (s) |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_deploy.") as folder:
        for arch in args.arch:
            for batch, rows in bench_arch(arch, args, folder):
                print("\n".join(format_rows(arch, batch, rows)), flush=True)
    print()
    print("```")
    print(".venv/bin/python benchmarks/bench_deploy.py " + " ".join(argv if argv is not None
                                                                else sys.argv[1:]))
    print("%s, %s; %d threads per path; %dx%d input; %d rounds x (%d warm-up + %d timed runs) "
          "per path; load average %.2f at start, %.2f at the end; %.0f s"
          % (cpu_name(), simd_level(), args.threads, args.size, args.size, args.rounds,
             args.warmup, args.runs, load, os.getloadavg()[0], time.time() - start))
    print("```")
    return 0


if __name__ == "__main__":
    cli.run(main)
