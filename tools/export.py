"""Export a RepVGG checkpoint to a MegEngine deploy graph (.mge) and check it.

    python tools/export.py --arch RepVGG-A0 --load train.pkl --output a0.mge
    python tools/export.py --load deploy.pkl --output a0_b16.mge --batch 16 --size 224
    python tools/export.py --arch RepVGG-A0 --random-init --output bench.mge   # random weights

A train-form checkpoint is converted to deploy form first (every block fused into one 3x3 conv).
The deploy model is traced with ``megengine.jit.trace(symbolic=True, capture_as_const=True)`` and
dumped with MegEngine's inference optimizations (--options; the default is the fastest set
measured by tools/bench_deploy.py). The written file is then loaded back with MegEngine Lite and
run on a check batch (--check-image, or generated images); its output must equal the eager
deploy model's, and the eager train model's when the checkpoint is in train form, to float32
rounding (relative). Only then is the file moved into place: a file that fails the check, or an
interrupted export, leaves nothing behind (an existing file at --output is kept).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common import cli  # noqa: E402
from common.atomic import atomic_path  # noqa: E402
from common.device import cpu_count, use_device  # noqa: E402
from deploy import dump, lite, preprocess  # noqa: E402
from errors import UserError  # noqa: E402


class ExportCheckError(UserError):
    """The dumped graph does not compute what the eager model computes."""


def check_dumped(path, x, references, threads=None, tolerance=None):
    """Run the .mge file at ``path`` on ``x`` with Lite and compare with each
    ``(name, expected_output)`` in ``references``; raise ``ExportCheckError`` on a mismatch.
    Returns the list of ``model.parity.Parity`` results."""
    from model.parity import DEFAULT_TOLERANCE, compare

    tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
    out = lite.DumpedModel(path, threads=threads)(x)
    results = [compare("dumped vs " + name, expected, out, tolerance)
               for name, expected in references]
    bad = [r for r in results if not r.ok]
    if bad:
        raise ExportCheckError("the dumped graph does not match the eager model: " + "; ".join(
            "%s: max relative difference %.2e (tolerance %.0e), top-1 agreement %.0f%%"
            % (r.name, r.max_rel, r.tolerance, 100 * r.top1_agree) for r in bad))
    return results


def write_checked(path, write, check):
    """``write(tmp)`` writes a file next to ``path``, ``check(tmp)`` raises if it is wrong; then
    the file is renamed to ``path`` (``common.atomic``). On any failure the temp file is removed
    and ``path`` (if it existed) is left unchanged."""
    with atomic_path(path) as tmp:
        write(tmp)
        return check(tmp)


def check_batch(args, rng):
    """The input the dumped graph is checked on: real images when given, else generated
    images that differ per sample (model.parity.sample_inputs)."""
    if args.check_image:
        images = [preprocess.preprocess_image(p, args.size) for p in args.check_image]
        reps = -(-args.batch // len(images))
        return np.stack((images * reps)[:args.batch])
    from model.parity import sample_inputs

    return sample_inputs(rng, (args.batch, 3, args.size, args.size))


def build_model(args):
    """(train-form model or None, deploy-form model, arch)"""
    from common.checkpoint import load_checkpoint
    from model import convert_to_deploy, get_model, is_deploy
    from model.checkpoint import arch_label, model_from_checkpoint

    if args.load:
        model, info = model_from_checkpoint(load_checkpoint(args.load), args.arch, args.load)
        arch = arch_label(info["arch"])
    else:
        if not args.arch:
            raise UserError("--random-init needs --arch")
        model, arch = get_model(args.arch, num_classes=args.num_classes), args.arch
        print("warning: exporting randomly initialised weights (for benchmarks and tests "
              "only, not for predictions)", file=sys.stderr)
    model.eval()
    train = None if is_deploy(model) else model
    deploy = convert_to_deploy(model) if train is not None else model
    deploy.eval()
    return train, deploy, arch


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=_Formatter)
    p.add_argument("--arch", help="architecture name (default: the one the checkpoint records)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--load", metavar="CKPT", help="checkpoint (train or deploy form)")
    src.add_argument("--random-init", action="store_true",
                     help="no checkpoint: random weights (benchmarks, tests); needs --arch")
    p.add_argument("--num-classes", type=int, default=1000, help="classes with --random-init")
    p.add_argument("--output", required=True, metavar="MGE", help="dumped graph to write")
    p.add_argument("--batch", type=int, default=1,
                   help="batch size of the dumped input (Lite also runs other batch sizes)")
    p.add_argument("--size", type=int, default=224, help="input resolution (square)")
    p.add_argument("--options", default=dump.BEST_DUMP_OPTIONS,
                   choices=sorted(dump.DUMP_OPTIONS),
                   help="graph optimizations to dump with (see deploy/dump.py)")
    p.add_argument("--check-image", nargs="+", metavar="IMAGE",
                   help="images to check the dumped graph on (default: generated images)")
    p.add_argument("--threads", type=int, default=cpu_count(),
                   help="CPU threads for tracing and the check")
    p.add_argument("--seed", type=int, default=0, help="seed for generated check images")
    args = p.parse_args(argv)
    for flag in ("batch", "size", "threads", "num_classes"):
        if getattr(args, flag) < 1:
            p.error("--%s must be positive" % flag.replace("_", "-"))
    return args


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def main(argv=None):
    args = parse_args(argv)
    use_device(dump.trace_device(args.threads))
    import megengine as mge

    train, deploy, arch = build_model(args)
    x = check_batch(args, np.random.default_rng(args.seed))
    references = [("eager deploy", deploy(mge.tensor(x)).numpy())]
    if train is not None:
        references.append(("eager train", train(mge.tensor(x)).numpy()))

    results = write_checked(
        args.output,
        lambda tmp: dump.dump_model(deploy, x, tmp, args.options),
        lambda tmp: check_dumped(tmp, x, references, threads=args.threads))
    for r in results:
        print("check %-22s max relative difference %.2e, top-1 agreement %.0f%%"
              % (r.name, r.max_rel, 100 * r.top1_agree))
    print("exported %s (%s form in, options %s, input %dx3x%dx%d) -> %s (%.1f MB)"
          % (arch, "train" if train is not None else "deploy", args.options, args.batch,
             args.size, args.size, args.output, os.path.getsize(args.output) / 1e6))
    return 0


if __name__ == "__main__":
    cli.run(main)
