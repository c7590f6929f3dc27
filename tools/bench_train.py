"""Training throughput (images/s) on random data: forward, backward and SGD step.

    python tools/bench_train.py                      # RepVGG-A0, 224x224, batch 32, all cores
    python tools/bench_train.py --size 32 --batch 32 --steps 10

Prints one table row per setting, with the conv weight gradient computed by MegEngine's own
kernel and by the matmul route train.py uses (training/fastconv.py), measured interleaved in
the same run. The first --warmup steps (algorithm choice, allocation) are not timed.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common import cli  # noqa: E402
from common.device import use_device  # noqa: E402
from common.timing import interleaved_medians  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", default="RepVGG-A0", help="architecture")
    p.add_argument("--size", type=int, default=224, help="input resolution")
    p.add_argument("--batch", type=int, default=32, help="batch size")
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--classes", type=int, default=1000, help="classifier outputs")
    p.add_argument("--device", default="auto", help="auto, cpu, cpuN, gpu")
    p.add_argument("--wgrad", nargs="+", choices=("megengine", "matmul"),
                   default=["megengine", "matmul"],
                   help="conv weight-gradient routes to time (MegEngine's own kernel is very "
                        "slow at 224x224: 'matmul' alone measures what train.py runs)")
    return p.parse_args(argv)


def make_step(arch, classes, fast):
    import megengine.functional as F
    from megengine.autodiff import GradManager
    from training import fastconv
    from model.checkpoint import build_model
    from training.optimizer import build_sgd

    model = build_model(arch, classes)
    model.train()
    if fast:
        fastconv.enable(model)
    opt = build_sgd(model, 0.01, 0.9, 1e-4)
    gm = GradManager().attach(model.parameters())

    def step(x, y):
        with gm:
            loss = F.nn.cross_entropy(model(x), y, label_smooth=0.1)
            gm.backward(loss)
        opt.step().clear_grad()
        return float(loss.numpy())
    return step


def main(argv=None):
    args = parse_args(argv)
    device = use_device(args.device)
    import megengine as mge
    rng = np.random.default_rng(0)
    x = mge.tensor(rng.normal(0, 1, (args.batch, 3, args.size, args.size)).astype(np.float32))
    y = mge.tensor(rng.integers(0, args.classes, args.batch).astype(np.int32))
    names = {"megengine": "megengine wgrad", "matmul": "matmul wgrad (train.py)"}
    variants = {names[w]: make_step(args.arch, args.classes, w == "matmul") for w in args.wgrad}
    medians = interleaved_medians({name: (lambda s=step: s(x, y))
                                   for name, step in variants.items()}, args.warmup, args.steps)
    print("%s training, %dx%d, batch %d, device %s, median of %d steps"
          % (args.arch, args.size, args.size, args.batch, device, args.steps))
    print("| conv weight gradient | s/step | images/s |")
    print("| --- | ---: | ---: |")
    for name, med in medians.items():
        print("| %s | %.3f | %.1f |" % (name, med, args.batch / med))
    return 0


if __name__ == "__main__":
    cli.run(main)
