"""Training throughput (images/s) of this project vs the official PyTorch model, side by side.

    python benchmarks/bench_train.py            # RepVGG-A0 at 32x32 and 224x224,
                                                # batch 32, 2 threads
    python benchmarks/bench_train.py --sizes 224 --rounds 5
    python benchmarks/bench_train.py --profile  # plus the per-operator breakdown of one step

A step is what training does: forward, label-smoothed cross-entropy, backward, SGD with
momentum 0.9 and weight decay. Random images and labels; the first --warmup steps of each
process (algorithm choice, allocation, graph compilation) are not timed.

Method: every variant runs in its own process, one process at a time (MegEngine never beside
PyTorch), the same number of threads in both (MegEngine's multithreadN device,
torch.set_num_threads(N)); --rounds rounds go round-robin over the variants, each round a fresh
process timing --steps steps; a variant's time is the median over all its timed steps. Both
models must have the same number of parameters (same architecture) before anything is timed.
PyTorch runs benchmarks/bench_train_torch.py in the PyTorch venv with the official model's
design (torch_reference/repvgg.py).

Variants: 'megengine' is the step train.py runs (training/step.py, training/fastconv.py);
'megengine-traced' the same step as one traced graph; 'megengine-own-conv' MegEngine's own conv
gradient kernels (very slow at 224x224); 'pytorch' the official model in PyTorch.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm import tqdm  # noqa: E402

from common import children, cli  # noqa: E402
from errors import UserError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER_DEADLINE_S = 1800  # one worker: warm-up and timed steps of one variant at one size
VARIANTS = ("megengine", "megengine-traced", "megengine-own-conv", "pytorch")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split(
        "\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--arch", default="RepVGG-A0", help="architecture (default RepVGG-A0)")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 224],
                   help="input resolutions (default 32 224)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of each framework "
                   "(default 2)")
    p.add_argument("--rounds", type=int, default=3, help="processes per variant and size, "
                   "interleaved (default 3)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per process (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    p.add_argument("--classes", type=int, default=1000, help="classifier outputs (default 1000)")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=["megengine", "pytorch"],
                   help="what to time (default megengine pytorch; see below)")
    p.add_argument("--profile", action="store_true",
                   help="also profile one step per size of the first MegEngine variant and of "
                        "PyTorch, and print the time per operator")
    p.add_argument("--top", type=int, default=15, help="operators listed by --profile "
                   "(default 15)")
    p.add_argument("--torch-python", default=os.path.join(ROOT, ".torchvenv", "bin", "python"),
                   help="Python of the PyTorch venv (default .torchvenv/bin/python)")
    p.add_argument("--worker", choices=VARIANTS[:3], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("batch", "threads", "rounds", "steps", "classes", "top"):
        if getattr(args, name) < 1:
            raise UserError("--%s must be at least 1" % name)
    if args.warmup < 0 or min(args.sizes) < 1:
        raise UserError("--warmup must be >= 0 and --sizes at least 1")
    return args


# -- the MegEngine worker (one process) -------------------------------------------------------
def megengine_worker(args):
    from common.device import use_device
    use_device("cpu%d" % args.threads)
    import numpy as np
    import megengine as mge
    from model.checkpoint import build_model
    from training import fastconv
    from training.optimizer import build_sgd
    from training.step import TrainStep, classification_loss

    mge.random.seed(0)
    model = build_model(args.arch, args.classes)
    model.train()
    if args.worker != "megengine-own-conv":
        fastconv.enable(model)
    step = TrainStep(model, build_sgd(model, 0.01, 0.9, 1e-4), classification_loss(0.1),
                     traced=args.worker == "megengine-traced")
    rng = np.random.default_rng(0)
    size = args.sizes[0]
    x = rng.normal(0, 1, (args.batch, 3, size, size)).astype(np.float32)
    y = rng.integers(0, args.classes, args.batch).astype(np.int32)
    for _ in range(args.warmup):
        step(x, y)
    seconds, losses = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        losses.append(step(x, y)[0])
        seconds.append(time.perf_counter() - start)
    out = {"params": int(sum(p.size for p in model.parameters())), "seconds": seconds,
           "loss": losses}
    if args.profile:
        out["profile"] = megengine_profile(lambda: step(x, y))
    print(json.dumps(out))
    return 0


def megengine_profile(fn):
    """[(operator, ms, calls)] of one call of ``fn``: kernel time per MegEngine operator."""
    import glob
    import tempfile
    from megengine.utils.profiler import Profiler

    with tempfile.TemporaryDirectory() as folder:
        with Profiler(path=folder, formats=["chrome_timeline.json"]):
            fn()
        with open(glob.glob(os.path.join(folder, "*.json"))[0]) as f:
            events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    totals, open_events = {}, {}
    for e in (e for e in events if e.get("cat") == "Kernel"):  # file order pairs B with E
        if e["ph"] == "B":
            open_events.setdefault(e["tid"], []).append(e)
        elif e["ph"] == "E":
            begin = open_events[e["tid"]].pop()
            ms, calls = totals.get(begin["name"], (0.0, 0))
            totals[begin["name"]] = (ms + (e["ts"] - begin["ts"]) / 1000.0, calls + 1)
    return sorted(((name, ms, calls) for name, (ms, calls) in totals.items()),
                  key=lambda r: -r[1])


# -- the parent: processes, rounds, table --------------------------------------------------------
def worker_command(args, variant, size, profile):
    common = ["--arch", args.arch, "--batch", args.batch, "--classes", args.classes,
              "--threads", args.threads, "--steps", args.steps, "--warmup", args.warmup]
    if variant == "pytorch":
        cmd = [args.torch_python, os.path.join(ROOT, "benchmarks", "bench_train_torch.py"),
               "--size", size] + common
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", variant,
               "--sizes", size] + common
    return [str(c) for c in cmd] + (["--profile"] if profile else [])


def run_worker(args, variant, size, profile=False):
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = children.run(worker_command(args, variant, size, profile), WORKER_DEADLINE_S,
                        what="the %s worker at %dx%d" % (variant, size, size), cwd=ROOT,
                        env=env, capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise UserError("the %s worker failed at %dx%d: %s"
                        % (variant, size, size, children.last_line(proc)))
    return json.loads(lines[-1])


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return megengine_worker(args)
    if "pytorch" in args.variants and not os.path.isfile(args.torch_python):
        raise UserError("no PyTorch venv at %s (needed for the 'pytorch' variant; build it "
                        "with scripts/bootstrap.sh or pass --torch-python)" % args.torch_python)
    runs = [(size, r, v) for size in args.sizes for r in range(args.rounds)
            for v in args.variants]
    results = {}
    for size, _, variant in tqdm(runs, desc="processes", leave=False):
        out = run_worker(args, variant, size)
        entry = results.setdefault((size, variant), {"seconds": [], "params": out["params"]})
        entry["seconds"] += out["seconds"]
    for size in args.sizes:
        counts = {v: results[(size, v)]["params"] for v in args.variants}
        if len(set(counts.values())) > 1:
            raise UserError("the variants' models differ (parameters: %s)" % counts)

    print("%s training step (forward, backward, SGD), batch %d, %d thread%s each, median of %d "
          "steps (%d processes x %d)" % (args.arch, args.batch, args.threads,
                                         "s" if args.threads > 1 else "",
                                         args.rounds * args.steps, args.rounds, args.steps))
    print()
    print("| size | variant | s/step | images/s | vs PyTorch |")
    print("| --- | --- | ---: | ---: | ---: |")
    for size in args.sizes:
        reference = (statistics.median(results[(size, "pytorch")]["seconds"])
                     if "pytorch" in args.variants else None)
        for variant in args.variants:
            med = statistics.median(results[(size, variant)]["seconds"])
            ratio = "%.2fx" % (reference / med) if reference else "-"
            print("| %dx%d | %s | %.3f | %.1f | %s |" % (size, size, variant, med,
                                                      args.batch / med, ratio))
    if args.profile:
        print_profiles(args)
    return 0


def print_profiles(args):
    variants = [v for v in args.variants if v != "pytorch"][:1] + (
        ["pytorch"] if "pytorch" in args.variants else [])
    for size in args.sizes:
        for variant in variants:
            rows = run_worker(args, variant, size, profile=True)["profile"]
            total = sum(r[1] for r in rows)
            what = ("kernel time per operator" if variant != "pytorch"
                    else "self CPU time per operator")
            print()
            print("%s, %dx%d, one step, %s (total %.0f ms)" % (variant, size, size, what, total))
            print()
            print("| operator | ms | calls | share |")
            print("| --- | ---: | ---: | ---: |")
            for name, ms, calls in rows[:args.top]:
                print("| %s | %.1f | %d | %.1f%% |" % (name, ms, calls, 100 * ms / total))


if __name__ == "__main__":
    cli.run(main)
