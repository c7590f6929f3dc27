"""How well the latency table predicts whole networks, in the runtime they ship in.

    python benchmarks/bench_search.py --space digits --runtime onnx
    python benchmarks/bench_search.py --space binary_resnet18 --runtime bnn

Builds the table (``search.py lut``: every entry a context-network difference of exported files,
timed in one child process), then derives ``--networks`` networks (12): the all-same ones (every
layer the same candidate) and random ones (seeded), exports each to the runtime's format with
the checked export of ``tools/export.py``, and times each whole file alone: ``--rounds`` rounds,
each starting one child process per network (nothing else alive in it), the order rotated per
round; a network's latency is the median over rounds of its process's median. Prints a table of
predicted (``stem + sum(entries) + head``) vs measured, then::

    median |measured/predicted - 1|: X %
    Kendall tau (predicted vs measured): Y

``--runtime eager`` measures the table and the networks in MegEngine eager (this process).
``--epoch`` also times one search epoch. ``search.py show --measure`` does the comparison for a
search's result. Run it on a quiet machine (``flock /tmp/cpu.lock``).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common import cli  # noqa: E402
from common.cpus import cpu_name, simd_level, threads_arg  # noqa: E402
from common.device import DEVICE_HELP, use_device  # noqa: E402

RUNTIMES = ("onnx", "mge", "bnn", "eager")


def parse_args(argv):
    p = cli.ArgumentParser(__doc__)
    p.add_argument("--space", default="digits", help="search-space preset")
    p.add_argument("--runtime", choices=RUNTIMES, default=None,
                   help="onnx (default for float spaces), mge, bnn (default for binary "
                        "spaces), eager")
    p.add_argument("--threads", type=threads_arg, default=None,
                   help="runtime threads (default: the table's: 1 for onnx and mge, all cores "
                        "for bnn)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP + " (eager only)")
    p.add_argument("--warmup", type=cli.integer(min=0), default=10,
                   help="untimed runs per file")
    p.add_argument("--runs", type=cli.integer(min=1), default=30,
                   help="timed rounds per file (median)")
    p.add_argument("--rounds", type=cli.integer(min=1), default=3,
                   help="processes per network (median over them)")
    p.add_argument("--networks", type=cli.integer(min=2), default=12,
                   help="networks to check: the all-same ones, the rest random")
    p.add_argument("--seed", type=cli.integer(min=0), default=0, help="seed of the random ones")
    p.add_argument("--epoch", action=argparse.BooleanOptionalAction, default=False,
                   help="also time one search epoch (digits data)")
    p.add_argument("--batch-size", type=cli.integer(min=1), default=64,
                   help="search batch size of --epoch")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def networks(space, n, seed, exportable=lambda choices: True):
    """``[(label, choices)]``: every all-same network, then random ones up to ``n``; only those
    ``exportable`` accepts (a .bnn needs a binary conv somewhere)."""
    L, K = len(space.layers), len(space.candidates)
    out = [("all " + name, [k] * L) for k, name in enumerate(space.candidates)
           if exportable([k] * L)][:n]
    rng = np.random.default_rng(seed)
    count = 0
    while len(out) < n:
        choices = [int(c) for c in rng.integers(0, K, L)]
        if exportable(choices):
            count += 1
            out.append(("random %d" % count, choices))
    return out


def bnn_exportable(space):
    """Whether the network of these choices has a layer to pack (``tools/export.py`` refuses a
    .bnn of float and skip layers only)."""
    from deploy.binary_export import NotBinaryError, check_binary
    from search.derive import arch_from_choices
    from search.runtime_timing import build_net

    def ok(choices):
        try:
            check_binary(build_net(arch_from_choices(space, choices)))
        except NotBinaryError:
            return False
        return True
    return ok


def time_epoch(space, lut, args):
    from data.digits import load_digits
    from search.trainer import SearchConfig, Searcher

    train, val, _ = load_digits(image_size=space.image_size)
    searcher = Searcher(space, lut, train, val, SearchConfig(
        epochs=1, warmup_epochs=0, batch_size=args.batch_size, seed=args.seed))
    start = time.perf_counter()
    searcher.train_epoch(progress=False)
    return time.perf_counter() - start


def main(argv=None):
    args = parse_args(argv)
    device = use_device(args.device)
    from common.progress import progress
    from search.derive import arch_from_choices
    from search.latency import measure_runtime_table
    from search.runtime_timing import RUNTIME_NAMES, default_runtime
    from search.show import comparison_lines, measure_archs_in_runtime
    from search.space import get_space

    space = get_space(args.space)
    runtime = args.runtime or default_runtime(space)
    show = None if args.no_progress else progress
    start = time.perf_counter()
    lut = measure_runtime_table(space, runtime, args.threads, 1, args.warmup, args.runs,
                                progress=show)
    lut_s = time.perf_counter() - start
    chosen = networks(space, args.networks, args.seed,
                      bnn_exportable(space) if runtime == "bnn" else lambda choices: True)
    archs = [arch_from_choices(space, c, lut) for _, c in chosen]
    start = time.perf_counter()
    measured = measure_archs_in_runtime(archs, lut, args.rounds, progress=show)
    net_s = time.perf_counter() - start
    m = lut.meta
    print("%s, %s; %s (%s), %s; space %s (%d layers x %d candidates), batch 1\n"
          % (cpu_name(), simd_level(), RUNTIME_NAMES[runtime], m["runtime_version"],
             "%s threads" % m["threads"] if runtime != "eager" else "device %s" % device,
             space.name, len(space.layers), len(space.candidates)))
    print("| step | seconds |\n| --- | ---: |")
    print("| latency table (%d entries + stem/head; warm-up %d, median of %d rounds) | %.1f |"
          % (lut.latency.size, args.warmup, args.runs, lut_s))
    print("| %d networks exported and timed (%d rounds, one process each) | %.1f |"
          % (len(archs), args.rounds, net_s))
    if args.epoch:
        print("| one search epoch (batch %d) | %.1f |" % (args.batch_size,
                                                           time_epoch(space, lut, args)))
    print()
    names = ["%s: %s" % (label, " ".join(l["op"] for l in a["layers"]))
             for (label, _), a in zip(chosen, archs)]
    for line in comparison_lines(names, [a["predicted_latency"] for a in archs], measured):
        print(line)
    return 0


if __name__ == "__main__":
    cli.run(main)
