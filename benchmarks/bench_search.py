"""Search benchmark on the small preset: latency-table build time, one search epoch, and how
well the table predicts whole networks (measured / predicted latency).

    python benchmarks/bench_search.py                  # digits preset, all CPU cores
    python benchmarks/bench_search.py --device cpu --archs 4

Prints Markdown tables. The networks checked are three uniform ones (every layer the same op) and
``--archs`` random ones, timed right after the table is built (so that load drift stays small):
each is built in deploy form, timed like the table's entries (eval mode, warm-up, median of
``--runs``, runs of all networks interleaved) and compared with ``stem + sum(chosen entries) +
head`` from the table. ``search.py show --measure`` does the same for a search's result.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common import cli  # noqa: E402
from common.device import DEVICE_HELP, use_device  # noqa: E402


def parse_args(argv):
    p = cli.ArgumentParser(__doc__)
    p.add_argument("--space", default="digits", help="search-space preset")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--warmup", type=cli.integer(min=0), default=10,
                   help="untimed runs per measurement")
    p.add_argument("--runs", type=cli.integer(min=1), default=30,
                   help="timed runs per measurement (median)")
    p.add_argument("--inner", type=cli.integer(min=1), default=10,
                   help="calls per timed run before one wait for the result")
    p.add_argument("--epoch", action=argparse.BooleanOptionalAction, default=True,
                   help="also time one search epoch")
    p.add_argument("--batch-size", type=cli.integer(min=1), default=64,
                   help="search batch size")
    p.add_argument("--archs", type=cli.integer(min=1), default=3,
                   help="random architectures to check")
    p.add_argument("--seed", type=cli.integer(min=0), default=0,
                   help="seed of search and random archs")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = use_device(args.device)
    from data.digits import load_digits
    from search.derive import arch_from_choices
    from search.latency import measure_table
    from search.show import measure_archs
    from search.space import get_space
    from search.trainer import SearchConfig, Searcher

    space = get_space(args.space)
    start = time.perf_counter()
    lut = measure_table(space, 1, args.warmup, args.runs, inner=args.inner)
    lut_s = time.perf_counter() - start
    print("device %s, space %s (%d layers x %d candidates), MegEngine eager, batch 1 for "
          "latency\n" % (device, space.name, len(space.layers), len(space.candidates)))
    print("| step | seconds |\n| --- | ---: |")
    print("| latency table (%d entries + stem/head, warm-up %d, median of %d runs x %d calls) "
          "| %.1f |" % (lut.latency.size, args.warmup, args.runs, args.inner, lut_s))
    # networks first, right after the table, so that load drift between the two stays small
    rng = np.random.default_rng(args.seed)
    L, K = lut.latency.shape
    archs = []
    for name in ("ir_k3_e1", "ir_k5_e6", "repvgg"):
        if name in space.candidates:
            archs.append(("all " + name, [space.candidates.index(name)] * L))
    archs += [("random %d" % i, rng.integers(0, K, L)) for i in range(args.archs)]
    built = [arch_from_choices(space, choices, lut) for _, choices in archs]
    measured = measure_archs(built, lut, args.warmup, args.runs)
    if args.epoch:
        train, val, _ = load_digits(image_size=space.image_size)
        searcher = Searcher(space, lut, train, val, SearchConfig(
            epochs=1, warmup_epochs=0, batch_size=args.batch_size, seed=args.seed))
        start = time.perf_counter()
        searcher.train_epoch(progress=False)
        print("| one search epoch (%d weight + %d theta steps of %d, validation) | %.1f |"
              % (-(-len(searcher.w_idx) // args.batch_size),
                 -(-len(searcher.t_idx) // args.batch_size), args.batch_size,
                 time.perf_counter() - start))
    print("\n| network | predicted us | measured us | measured / predicted |")
    print("| --- | ---: | ---: | ---: |")
    ratios = []
    for (label, _), arch, m in zip(archs, built, measured):
        predicted = arch["predicted_latency"]
        ratios.append(m / predicted)
        print("| %s: %s | %.0f | %.0f | %.3f |" % (
            label, " ".join(l["op"] for l in arch["layers"]), predicted, m, ratios[-1]))
    print("\nmedian measured / predicted: %.3f" % float(np.median(ratios)))
    return 0


if __name__ == "__main__":
    cli.run(main)
