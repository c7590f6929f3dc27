"""verify.py — check that deploy form equals train form (eval mode) for blocks and models.

Every BatchNorm gets random statistics first (an untrained BN is the identity and hides fusion
bugs). For each case it prints the max absolute difference, the max difference relative to the
output's magnitude and the top-1 agreement; the exit status is 1 if any case exceeds the
tolerance.

    python verify.py                      # blocks + every named model at 224x224
    python verify.py --arch RepVGG-A0 --arch RepVGG-B1g2 --size 64

The BN statistics are measured on a calibration batch large enough that every channel's
variance comes from at least 32 values (at 32x32 the last maps are 1x1), then perturbed: a
variance measured from two values can be near zero and blow float32 rounding up into a false
FAIL (``model.parity.calibration_inputs``). Exit status: 0 all within tolerance, 1 a case
failed, 2 bad arguments.
"""
import itertools
import sys
import time

import numpy as np

from common import cli
from common.device import DEVICE_HELP, use_device
from model.parity import (DEFAULT_TOLERANCE, calibration_inputs, check_parity, format_row,
                          randomize_batchnorm, sample_inputs)


def block_cases():
    """(name, kwargs) for RepVGGBlock: SE off/on, groups 1/2/4, stride 1/2, in==out and in!=out;
    plus RepVGGplus's post-SE block and QARepVGG blocks (qa=True)."""
    for use_se, groups, stride, (cin, cout) in itertools.product(
            (False, True), (1, 2, 4), (1, 2), ((16, 16), (8, 16))):
        name = "block c%d->%d s%d g%d%s" % (cin, cout, stride, groups, " se" if use_se else "")
        yield name, dict(in_channels=cin, out_channels=cout, stride=stride, groups=groups,
                         use_se=use_se)
    for groups, stride, (cin, cout) in itertools.product((1, 2), (1, 2), ((16, 16), (8, 16))):
        yield ("block c%d->%d s%d g%d qa" % (cin, cout, stride, groups),
               dict(in_channels=cin, out_channels=cout, stride=stride, groups=groups, qa=True))
    for stride in (1, 2):
        yield ("block c16->16 s%d g1 post-se" % stride,
               dict(in_channels=16, out_channels=16, stride=stride, use_se=True,
                    se_after_relu=True, se_reduction=4))


def verify_blocks(rng, tolerance, size=14, batch=4):
    from model import RepVGGBlock
    for name, kwargs in block_cases():
        x = sample_inputs(rng, (batch, kwargs["in_channels"], size, size))
        block = randomize_batchnorm(RepVGGBlock(**kwargs), rng, x)
        yield check_parity(name, block, x, tolerance)[0]


def verify_models(names, rng, tolerance, size, batch):
    from model import get_model
    for name in names:
        x = sample_inputs(rng, (batch, 3, size, size))
        net = randomize_batchnorm(get_model(name), rng, calibration_inputs(rng, x.shape))
        yield check_parity(name, net, x, tolerance)[0]


def parse_args(argv):
    from model import list_models
    p = cli.ArgumentParser(__doc__)
    p.add_argument("--arch", action="append", metavar="NAME",
                   help="model to check (repeatable; default: every registered RepVGG and QARepVGG "
                        "model). "
                        "Known: " + ", ".join(list_models()))
    p.add_argument("--size", type=cli.integer(min=32, max=1024), default=224,
                   help="input resolution for whole models, 32 or more (five stride-2 stages)")
    p.add_argument("--batch", type=cli.integer(min=1, max=256), default=2,
                   help="batch size for whole models (BN statistics are calibrated on at least "
                        "32 values per channel whatever the batch)")
    p.add_argument("--tol", type=cli.number(min=0.0), default=DEFAULT_TOLERANCE,
                   help="max allowed |train - deploy| relative to max |train output|")
    p.add_argument("--seed", type=cli.integer(min=0), default=0,
                   help="seed for inputs and BN statistics")
    p.add_argument("--no-blocks", action="store_true", help="skip the single-block cases")
    p.add_argument("--no-models", action="store_true", help="skip the whole-model cases")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    args = p.parse_args(argv)
    if args.no_blocks and args.no_models:
        p.error("--no-blocks with --no-models leaves nothing to check")
    return args


def main(argv=None):
    args = parse_args(argv)
    use_device(args.device)
    from model import list_models
    from model.registry import check_name
    names = [check_name(n) for n in args.arch] if args.arch else [
        n for n in list_models() if n.startswith(("RepVGG", "QARepVGG"))]
    rng = np.random.default_rng(args.seed)
    print("tolerance: max |train - deploy| <= %.1e x max |train|" % args.tol)
    cases = []
    if not args.no_blocks:
        cases.append(verify_blocks(rng, args.tol))
    if not args.no_models:
        cases.append(verify_models(names, rng, args.tol, args.size, args.batch))
    failed, total, start = [], 0, time.time()
    for result in itertools.chain(*cases):
        print(format_row(result), flush=True)
        total += 1
        if not result.ok:
            failed.append(result.name)
    print("%d/%d cases within tolerance (%.1f s)" % (total - len(failed), total,
                                                     time.time() - start))
    if failed:
        print("FAILED: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    cli.run(main)
