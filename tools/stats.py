"""Parameters and FLOPs of named models, train form and deploy form.

    python tools/stats.py --arch RepVGG-A0
    python tools/stats.py --all --size 224
    python tools/stats.py --arch RepVGG-A0 RepVGG-B0 --json

Counts come from common/opcount.py (one forward pass on zeros, hooks on every conv and linear
layer). FLOPs are multiply-accumulates per image, the RepVGG paper's convention (RepVGG-A0:
1.4 G); BN, ReLU, additions and pooling are not counted. Parameters are learnable weights
(BN running statistics are buffers, not parameters), as in the paper's table.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm import tqdm  # noqa: E402

from common import cli  # noqa: E402
from common.device import use_device  # noqa: E402


def model_stats(arch, size=224, num_classes=1000):
    """{"arch", "size", "train": {"params", "flops"}, "deploy": {...}} for one image."""
    from model.opcount import count_ops
    from model import convert_to_deploy, get_model

    train = get_model(arch, num_classes=num_classes)
    deploy = convert_to_deploy(train)
    result = {"arch": arch, "size": size, "num_classes": num_classes}
    for form, net in (("train", train), ("deploy", deploy)):
        counts = count_ops(net, (1, 3, size, size))
        result[form] = {"params": counts["params"], "flops": counts["flops"]}
        if counts["bops"]:
            result[form]["bops"] = counts["bops"]
    return result


def format_table(rows):
    lines = ["| model | size | train params (M) | deploy params (M) | train FLOPs (G) "
             "| deploy FLOPs (G) |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append("| %s | %d | %.2f | %.2f | %.2f | %.2f |" % (
            r["arch"], r["size"], r["train"]["params"] / 1e6, r["deploy"]["params"] / 1e6,
            r["train"]["flops"] / 1e9, r["deploy"]["flops"] / 1e9))
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=_Formatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", nargs="+", help="registered model names")
    which.add_argument("--all", action="store_true", help="every registered model")
    p.add_argument("--size", type=int, default=224, help="input resolution (square)")
    p.add_argument("--num-classes", type=int, default=1000, help="classifier outputs")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = p.parse_args(argv)
    if args.size < 1 or args.num_classes < 1:
        p.error("--size and --num-classes must be positive")
    return args


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def main(argv=None):
    args = parse_args(argv)
    use_device("cpu")
    from model import get_model, list_models

    names = list_models() if args.all else args.arch
    for name in names:
        if name not in list_models():
            get_model(name)  # raises the registry's error, which lists the known names
    rows = [model_stats(name, args.size, args.num_classes)
            for name in tqdm(names, desc="counting", disable=len(names) < 2, leave=False)]
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    cli.run(main)
