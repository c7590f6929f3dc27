"""Parameters and FLOPs of named models, train form and deploy form.

    .venv/bin/python tools/stats.py --arch RepVGG-A0
    .venv/bin/python tools/stats.py --all --size 224
    .venv/bin/python tools/stats.py --arch RepVGG-A0 RepVGG-B0 --json

Counts come from model/opcount.py (one forward pass on zeros, hooks on every conv and linear
layer). FLOPs are multiply-accumulates per image, the RepVGG paper's convention (RepVGG-A0:
1.4 G); BN, ReLU, additions and pooling are not counted. Binary convolutions (BinaryResNet18-*)
are counted as BOPs (binary operations), in their own column, not as FLOPs. Each column's unit
(G, M, K) is chosen so the largest value shows 1-4 digits. Parameters are learnable weights
(BN running statistics are buffers, not parameters), as in the paper's table.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


from common import cli  # noqa: E402
from common.device import use_device  # noqa: E402
from common.progress import progress  # noqa: E402


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


def _unit(values):
    """(divisor, prefix) that shows the largest of ``values`` with 1-4 integer digits."""
    top = max(values, default=0)
    for div, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if top >= div:
            return div, prefix
    return 1.0, ""


def format_table(rows):
    """A Markdown table; FLOPs (MACs) and BOPs in one unit per column, chosen so the largest
    value has 1-4 digits (G at 224, M at 32x32); a BOPs column when a model has binary convs."""
    flops_div, flops_unit = _unit([r[f]["flops"] for r in rows for f in ("train", "deploy")])
    params_div, params_unit = _unit([r[f]["params"] for r in rows for f in ("train", "deploy")])
    binary = any("bops" in r[f] for r in rows for f in ("train", "deploy"))
    bops_div, bops_unit = _unit([r[f].get("bops", 0) for r in rows for f in ("train", "deploy")])
    head = ["model", "size", "train params (%s)" % params_unit, "deploy params (%s)" % params_unit,
            "train FLOPs (%s)" % flops_unit, "deploy FLOPs (%s)" % flops_unit]
    if binary:
        head += ["train BOPs (%s)" % bops_unit, "deploy BOPs (%s)" % bops_unit]
    lines = ["| " + " | ".join(head) + " |", "| --- |" + " ---: |" * (len(head) - 1)]
    for r in rows:
        cells = [r["arch"], "%d" % r["size"]]
        cells += ["%.2f" % (r[f]["params"] / params_div) for f in ("train", "deploy")]
        cells += ["%.2f" % (r[f]["flops"] / flops_div) for f in ("train", "deploy")]
        if binary:
            cells += ["%.2f" % (r[f].get("bops", 0) / bops_div) for f in ("train", "deploy")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv):
    p = cli.ArgumentParser(__doc__)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", nargs="+", help="registered model names")
    which.add_argument("--all", action="store_true", help="every registered model")
    p.add_argument("--size", type=cli.integer(min=32, max=1024), default=224,
                   help="input resolution (square), 32 or more (five stride-2 stages)")
    p.add_argument("--num-classes", type=cli.integer(min=1), default=1000,
                   help="classifier outputs")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    use_device("cpu")
    from model import list_models
    from model.registry import check_name

    names = list_models() if args.all else [check_name(n) for n in args.arch]
    rows = [model_stats(name, args.size, args.num_classes)
            for name in progress(names, desc="counting", unit="model", leave=False,
                                 enabled=len(names) > 1)]
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 0


if __name__ == "__main__":
    cli.run(main)
