"""Inference speed of every deployment path, MegEngine and PyTorch, side by side in one run.

    python tools/bench_deploy.py                          # A0, A1, B0 at 224, batch 1 and 16
    python tools/bench_deploy.py --arch RepVGG-A0 --batch 1 --runs 5      # a quick look

Paths, all on the same weights (a RepVGG with random weights and non-trivial BN statistics):
- MegEngine eager, train form and deploy form (multi-threaded CPU device);
- MegEngine dumped graph (tools/export.py's trace + dump, run by MegEngine Lite), once per
  option set of common/dump.DUMP_OPTIONS, so each row shows what one option changes, and
  the best set with Lite runtime settings on top (fast-run algorithm profiling, weight
  preprocessing, kernel-sequence record/replay, Lite's global layout transform; --lite);
- PyTorch (.torchvenv, the reference model of tests/torch_ref with the same weights) in deploy
  form: eager, eager with channels_last, TorchScript (trace + freeze), torch.compile.
Every path's logits are compared with MegEngine's eager deploy form first (max relative
difference column): the rows time the same network.

Timing: warm-up runs, then --runs rounds; in each round every path runs one forward pass, in a
rotating order, so that machine noise hits all paths alike; the median is reported. The two
frameworks never run at the same time and both use --threads threads. GFLOP/s counts 2 x the
multiply-accumulates of the form a path runs (common/opcount.py); "peak" is the best GFLOP/s
measured for one large 3x3 convolution (--peak-shape; best of the timed runs) in either
framework on this machine; the header also prints the arithmetic bound of the CPU (cores x 32
FLOP/cycle for AVX2 with two FMA units x the clock /proc/cpuinfo reports).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common import cli  # noqa: E402
from common.device import cpu_count, use_device  # noqa: E402
from deploy import dump  # noqa: E402
from deploy.lite import DumpedModel  # noqa: E402
from errors import UserError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_PYTHON = os.path.join(ROOT, ".torchvenv", "bin", "python")
TORCH_MODES = {"eager": "PyTorch eager", "channels_last": "PyTorch eager, channels_last",
               "script": "PyTorch TorchScript (trace+freeze)", "compile": "PyTorch torch.compile"}
LITE_EXTRAS = {"fastrun": {"fastrun": True},
               "fastrun+weight_preprocess": {"fastrun": True, "weight_preprocess": True},
               "fastrun+record": {"fastrun": True, "record": True},
               "global_layout+fastrun": {"global_layout": True, "fastrun": True}}


def torch_weights_file(model, path):
    """Write ``model``'s deploy-form weights as a PyTorch ``.pth`` (official names) with the
    project's own exporter, so the PyTorch side loads exactly what a user's export gives."""
    from ckpt_converter import export_pth

    return export_pth(model.state_dict(), path)


def fma_bound_gflops(threads):
    """threads x 32 FLOP/cycle (two 8-wide AVX2 FMA units) x the reported clock, or None."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return None
    flags = next((l for l in info.splitlines() if l.startswith("flags")), "").split()
    mhz = [float(l.split(":")[1]) for l in info.splitlines() if l.startswith("cpu MHz")]
    if "avx2" not in flags or "fma" not in flags or not mhz:
        return None
    return threads * 32 * max(mhz) / 1e3


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class TorchWorker:
    """tools/torch_bench_worker.py in the PyTorch venv, one request per line."""

    def __init__(self, threads, log_path):
        if not os.path.exists(TORCH_PYTHON):
            raise UserError("no PyTorch venv at %s (make setup-torch), or pass --no-torch"
                            % TORCH_PYTHON)
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [TORCH_PYTHON, os.path.join(ROOT, "tools", "torch_bench_worker.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.info = self.request("setup", threads=threads)

    def request(self, cmd, **kwargs):
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise UserError("the PyTorch worker died; see %s" % self.log.name)
        return json.loads(line)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write('{"cmd": "quit"}\n')
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.log.close()


class Path:
    """One way to run the network: ``prepare()`` -> logits, ``run()`` -> seconds."""

    def __init__(self, name, macs, prepare, run):
        self.name, self.macs, self._prepare, self._run = name, macs, prepare, run
        self.times, self.logits, self.error = [], None, None

    def prepare(self):
        try:
            self.logits = self._prepare()
        except Exception as e:  # a path that does not work here is reported, not fatal
            self.error = "%s: %s" % (type(e).__name__, str(e).strip().splitlines()[0][:120]
                                     if str(e).strip() else "")

    def run(self):
        return self._run()


def megengine_eager(name, model, x, macs):
    import megengine as mge

    xt = mge.tensor(x)

    def run():
        start = time.perf_counter()
        model(xt).numpy()
        return time.perf_counter() - start

    return Path(name, macs, lambda: model(xt).numpy(), run)


def megengine_dumped(name, mge_file, x, macs, threads, **lite):
    state = {}

    def prepare():
        state["net"] = DumpedModel(mge_file, threads=threads, **lite)
        return state["net"](x)  # the first run profiles (fast-run) and allocates

    def run():
        start = time.perf_counter()
        state["net"](x)
        return time.perf_counter() - start

    return Path(name, macs, prepare, run)


def torch_path(worker, mode, x_file, macs):
    def prepare():
        reply = worker.request("prepare", mode=mode, input=x_file)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return np.load(reply["logits"])

    def run():
        return worker.request("time", mode=mode)["seconds"]

    return Path(TORCH_MODES[mode], macs, prepare, run)


def measure(paths, warmup, runs):
    live = [p for p in paths if p.error is None]
    for _ in range(warmup):
        for p in live:
            p.run()
    for r in range(runs):
        for p in live[r % len(live):] + live[:r % len(live)]:
            p.times.append(p.run())


def peak_gflops(args, folder, worker):
    """GFLOP/s of one large 3x3 conv (stride 1, pad 1): MegEngine dumped (best options,
    fast-run) and PyTorch eager."""
    import megengine.module as M

    n, c, h, w = args.peak_shape
    flops = 2 * n * c * c * 9 * h * w
    conv = M.Conv2d(c, c, 3, padding=1, bias=False)
    conv.eval()
    x = np.random.default_rng(0).standard_normal((n, c, h, w)).astype(np.float32)
    mge_file = os.path.join(folder, "peak_conv.mge")
    dump.dump_model(conv, x, mge_file, dump.BEST_DUMP_OPTIONS)
    net = DumpedModel(mge_file, threads=args.threads, fastrun=True)
    times = []
    for _ in range(args.warmup + max(args.runs, 3)):
        start = time.perf_counter()
        net(x)
        times.append(time.perf_counter() - start)
    result = {"MegEngine dumped": flops / min(times[args.warmup:]) / 1e9}  # a peak: best run
    if worker is not None:
        reply = worker.request("peak_conv", shape=[n, c, h, w], runs=max(args.runs, 3))
        result["PyTorch eager"] = flops / reply["seconds"] / 1e9
    return result


def bench_model(arch, args, folder, worker, rng):
    import megengine as mge  # noqa: F401
    from model.opcount import count_ops
    from model.parity import compare, randomize_batchnorm, sample_inputs
    from model import convert_to_deploy, get_model

    train = get_model(arch)
    randomize_batchnorm(train, rng, sample_inputs(rng, (4, 3, 64, 64)))
    deploy = convert_to_deploy(train)
    deploy.eval()
    shape = (1, 3, args.size, args.size)
    macs = {"train": count_ops(train, shape)["flops"], "deploy": count_ops(deploy, shape)["flops"]}
    if worker is not None:
        weights = torch_weights_file(deploy, os.path.join(folder, "%s.pth" % arch))
        reply = worker.request("load", arch=arch, weights=weights, num_classes=1000)
        if "error" in reply:
            raise UserError("PyTorch could not load the weights: %s" % reply["error"])
    for batch in args.batch:
        x = sample_inputs(rng, (batch, 3, args.size, args.size))
        paths = [megengine_eager("MegEngine eager, train form", train, x, macs["train"]),
                 megengine_eager("MegEngine eager, deploy form", deploy, x, macs["deploy"])]
        best_file = None
        for options in args.options:
            mge_file = os.path.join(folder, "%s_b%d_%s.mge" % (arch, batch, options))
            dump.dump_model(deploy, x, mge_file, options)
            paths.append(megengine_dumped("MegEngine dumped, " + options, mge_file, x,
                                          macs["deploy"], args.threads))
            if options == dump.BEST_DUMP_OPTIONS:
                best_file = mge_file
        if best_file is not None:
            for extra in args.lite:
                paths.append(megengine_dumped(
                    "MegEngine dumped, %s + %s" % (dump.BEST_DUMP_OPTIONS, extra),
                    best_file, x, macs["deploy"], args.threads, **LITE_EXTRAS[extra]))
        if worker is not None:
            x_file = os.path.join(folder, "%s_b%d_x.npy" % (arch, batch))
            np.save(x_file, x)
            paths += [torch_path(worker, mode, x_file, macs["deploy"]) for mode in args.torch]
        for p in paths:
            p.prepare()
        reference = paths[1].logits
        for p in paths:
            if p.error is None:
                p.diff = compare(p.name, reference, p.logits).max_rel
        measure(paths, args.warmup, args.runs)
        yield batch, paths


def format_rows(arch, batch, paths, peak):
    def ips(p):
        return batch / statistics.median(p.times) if p.times else None

    base = {p.name: ips(p) for p in paths}
    torch_eager = base.get(TORCH_MODES["eager"])
    lines = []
    for p in paths:
        if p.error is not None:
            lines.append("| %s | %d | %s | failed: %s | | | | |" % (arch, batch, p.name, p.error))
            continue
        speed = ips(p)
        gflops = 2 * p.macs * speed / 1e9
        lines.append("| %s | %d | %s | %.1f | %.1f | %.0f%% | %s | %.1e |" % (
            arch, batch, p.name, speed, gflops, 100 * gflops / peak,
            "%.2fx" % (speed / torch_eager) if torch_eager else "-", p.diff))
    return lines


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=_Formatter)
    p.add_argument("--arch", nargs="+", default=["RepVGG-A0", "RepVGG-A1", "RepVGG-B0"],
                   help="models")
    p.add_argument("--batch", nargs="+", type=int, default=[1, 16], help="batch sizes")
    p.add_argument("--size", type=int, default=224, help="input resolution")
    p.add_argument("--threads", type=int, default=cpu_count(),
                   help="CPU threads for both frameworks")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per path first")
    p.add_argument("--runs", type=int, default=10, help="timed runs per path")
    p.add_argument("--options", nargs="+", default=list(dump.DUMP_OPTIONS),
                   choices=list(dump.DUMP_OPTIONS), help="dump option sets to measure")
    p.add_argument("--lite", nargs="*", default=list(LITE_EXTRAS), choices=list(LITE_EXTRAS),
                   help="Lite runtime settings measured on top of the best dump options")
    p.add_argument("--torch", nargs="*", default=list(TORCH_MODES), choices=list(TORCH_MODES),
                   help="PyTorch modes (none: MegEngine only)")
    p.add_argument("--peak-shape", nargs=4, type=int, default=[2, 256, 56, 56],
                   metavar=("N", "C", "H", "W"), help="the 3x3 conv that measures peak GFLOP/s")
    args = p.parse_args(argv)
    if min(args.batch) < 1 or args.size < 32 or args.threads < 1 or args.runs < 1 \
            or args.warmup < 0:
        p.error("batch, threads and runs must be positive, size at least 32, warmup >= 0")
    return args


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def main(argv=None):
    args = parse_args(argv)
    use_device(dump.trace_device(args.threads))
    import megengine as mge

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench_deploy.") as folder:
        worker = TorchWorker(args.threads, os.path.join(folder, "torch_worker.log")) \
            if args.torch else None
        try:
            load = os.getloadavg()
            peak = peak_gflops(args, folder, worker)
            print("%s, %d threads, MegEngine %s, %s; load average %.2f at start" % (
                cpu_name(), args.threads, mge.__version__,
                "PyTorch %s" % worker.info["torch"] if worker else "no PyTorch", load[0]))
            print("peak GFLOP/s, 3x3 conv %s: %s" % (
                "x".join(map(str, args.peak_shape)),
                ", ".join("%s %.1f" % kv for kv in peak.items())))
            bound = fma_bound_gflops(args.threads)
            if bound:
                print("arithmetic bound (%d cores x 32 FLOP/cycle, AVX2 FMA, reported clock): "
                      "%.0f GFLOP/s" % (args.threads, bound))
            print("%dx%d input, median of %d rounds after %d warm-up rounds"
                  % (args.size, args.size, args.runs, args.warmup))
            print()
            print("| model | batch | path | img/s | GFLOP/s | % of peak | vs PyTorch eager "
                  "| max rel diff |")
            print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |")
            for arch in args.arch:
                for batch, paths in bench_model(arch, args, folder, worker, rng):
                    print("\n".join(format_rows(arch, batch, paths, max(peak.values()))),
                          flush=True)
            print()
            print("load average %.2f at the end (%d cores)" % (os.getloadavg()[0],
                                                               os.cpu_count()))
        finally:
            if worker is not None:
                worker.close()
    return 0


if __name__ == "__main__":
    cli.run(main)
