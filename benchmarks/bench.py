"""Inference throughput of the train form vs the deploy form, measured side by side.

    python benchmarks/bench.py                              # RepVGG-A0 and B0, batch 1 and 8
    python benchmarks/bench.py --arch RepVGG-B1g2 --batch 16 --size 224

Both forms of the same weights run in eval mode, eager MegEngine, on the same input; timed runs
alternate between the two forms so that machine noise hits both alike. Prints images/s (median
over --runs) and the deploy/train ratio as a Markdown table.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common import cli  # noqa: E402
from common.device import DEVICE_HELP, use_device  # noqa: E402
from common.timing import interleaved_medians  # noqa: E402


def bench_pair(models, x, warmup, runs):
    """Median seconds per forward of each model, measured interleaved."""
    medians = interleaved_medians({i: (lambda m=m: m(x).numpy()) for i, m in enumerate(models)},
                                  warmup, runs)
    return [medians[i] for i in range(len(models))]


def parse_args(argv):
    p = cli.ArgumentParser(__doc__)
    p.add_argument("--arch", nargs="+", default=["RepVGG-A0", "RepVGG-B0"], help="models")
    p.add_argument("--batch", nargs="+", type=cli.integer(min=1), default=[1, 8],
                   help="batch sizes")
    p.add_argument("--size", type=cli.integer(min=32), default=224, help="input resolution")
    p.add_argument("--warmup", type=cli.integer(min=0), default=3,
                   help="untimed runs per form first")
    p.add_argument("--runs", type=cli.integer(min=1), default=10, help="timed runs per form")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = use_device(args.device)
    import megengine as mge
    from model import convert_to_deploy, get_model

    print("device %s, %dx%d input, median of %d runs after %d warm-up runs"
          % (device, args.size, args.size, args.runs, args.warmup))
    print()
    print("| model | batch | train form img/s | deploy form img/s | deploy / train |")
    print("| --- | ---: | ---: | ---: | ---: |")
    rng = np.random.default_rng(0)
    for arch in args.arch:
        train = get_model(arch)
        train.eval()
        deploy = convert_to_deploy(train)
        for batch in args.batch:
            x = mge.tensor(rng.standard_normal((batch, 3, args.size, args.size)).astype("f4"))
            t_train, t_deploy = bench_pair([train, deploy], x, args.warmup, args.runs)
            print("| %s | %d | %.1f | %.1f | %.2fx |" % (
                arch, batch, batch / t_train, batch / t_deploy, t_train / t_deploy), flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
