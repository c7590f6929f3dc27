"""Architecture search: FBNet-style differentiable search over a measured latency table, and
TAS width search. Ends in an arch.json that ``train.py --arch arch.json`` trains.

    python search.py lut    --space digits --out runs/search/lut.json
    python search.py train  --space digits --lut runs/search/lut.json --out runs/search
    python search.py derive --run runs/search --out runs/search/arch.json
    python search.py show   --run runs/search --measure
    python search.py tas    --space tas_digits --flop-ratio 0.5 --out runs/tas
    python train.py --arch runs/search/arch.json --epochs 30 --output runs/found
"""
import argparse
import logging
import os
import sys
import time

from common import cli
from common.device import use_device
from errors import UserError

log = logging.getLogger("search")
DESCRIPTION = __doc__.split("\n\n")[0]


def _formatter(prog):
    return argparse.ArgumentDefaultsHelpFormatter(prog, max_help_position=32, width=100)


def add_space_args(p, default="digits"):
    p.add_argument("--space", default=default,
                   help="search-space preset: digits, fbnet22, binary_resnet18, tas_digits")
    p.add_argument("--candidates", default=None,
                   help="comma-separated candidate ops replacing the preset's (groups: fbnet9, "
                        "binary); e.g. ir_k3_e1,ir_k3_s2,skip,repvgg")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size replacing the preset's (digits 16, fbnet22 224, "
                        "binary_resnet18 32, tas_digits 16)")


def add_device_arg(p):
    p.add_argument("--device", default="auto",
                   help="auto (all CPU cores or GPU), cpu (one thread), cpuN, gpu")


def build_parser():
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=_formatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = sub.add_parser("lut", formatter_class=_formatter,
                       help="measure the latency lookup table (or --verify one)",
                       description="Measure every candidate at every layer (eval mode, RepVGG in "
                                   "deploy form, warm-up then median of timed runs; binary "
                                   "candidates get the FLOPs + BOPs/64 proxy) and write JSON.")
    add_space_args(q)
    add_device_arg(q)
    q.add_argument("--batch", type=int, default=1, help="batch size of the timed inputs")
    q.add_argument("--warmup", type=int, default=10, help="untimed runs per entry first")
    q.add_argument("--runs", type=int, default=30, help="timed runs per entry (median taken)")
    q.add_argument("--inner", type=int, default=10,
                   help="calls per timed run before one wait for the result (the run's time "
                        "is divided by it)")
    q.add_argument("--out", default="runs/search/lut.json", help="where to write the table")
    q.add_argument("--verify", metavar="LUT", default=None,
                   help="instead of measuring, check that LUT fits --space/--candidates")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")

    q = sub.add_parser("train", formatter_class=_formatter,
                       help="train the supernet (weights by SGD, theta by Adam)",
                       description="Search on the built-in digits: weights on one part of the "
                                   "training split, theta on the disjoint rest, the argmax "
                                   "architecture validated on the validation split every epoch.")
    add_space_args(q)
    add_device_arg(q)
    q.add_argument("--lut", default=None,
                   help="latency table from 'search.py lut' (needed unless --resume)")
    q.add_argument("--out", default="runs/search", help="run folder (checkpoints, log)")
    q.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest.pkl, exactly (its space, "
                        "table and settings; only --epochs may extend it)")
    q.add_argument("--epochs", type=int, default=None,
                   help="total epochs, warm-up included (10 for a new search; a resumed run "
                        "keeps its own unless given, and a new total reshapes the cosine LR "
                        "from the resumed epoch on)")
    q.add_argument("--warmup-epochs", type=int, default=2, help="first epochs train weights only")
    q.add_argument("--batch-size", type=int, default=64, help="batch size of both phases")
    q.add_argument("--w-fraction", type=float, default=0.8,
                   help="share of the training split for the weights; theta gets the rest")
    q.add_argument("--w-lr", type=float, default=0.1, help="SGD learning rate (cosine decay)")
    q.add_argument("--w-momentum", type=float, default=0.9, help="SGD momentum")
    q.add_argument("--w-wd", type=float, default=1e-4, help="SGD weight decay")
    q.add_argument("--theta-lr", type=float, default=0.01, help="Adam learning rate of theta")
    q.add_argument("--theta-wd", type=float, default=5e-4, help="Adam weight decay of theta")
    q.add_argument("--alpha", type=float, default=0.2, help="loss scale alpha")
    q.add_argument("--beta", type=float, default=0.6, help="latency exponent beta")
    q.add_argument("--loss-form", choices=("paper", "repo"), default="paper",
                   help="paper: alpha*CE*(log LAT)^beta; repo: alpha*beta*CE*log LAT (the "
                        "FBNet code's form)")
    q.add_argument("--tau0", type=float, default=5.0, help="initial Gumbel temperature")
    q.add_argument("--tau-decay", type=float, default=0.956,
                   help="temperature factor after every epoch that trains theta")
    q.add_argument("--noise", choices=("per_sample", "per_batch"), default="per_sample",
                   help="one Gumbel sample per example, or one per batch (FBNet code)")
    q.add_argument("--mode", choices=("soft", "hard_st"), default="soft",
                   help="soft mixing, or one-hot forward with soft (straight-through) gradient")
    q.add_argument("--max-steps", type=int, default=0,
                   help="at most this many steps per phase and epoch (0 = full passes)")
    q.add_argument("--seed", type=int, default=0, help="seed of splits, init, batches, noise")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")

    q = sub.add_parser("derive", formatter_class=_formatter,
                       help="write arch.json from a search run",
                       description="Pick one op per layer from softmax(theta) of a run's "
                                   "checkpoint and write the arch.json that model.derived "
                                   "builds and train.py --arch trains.")
    q.add_argument("--run", default="runs/search", help="run folder of 'search.py train'")
    q.add_argument("--which", choices=("best", "latest"), default="best",
                   help="checkpoint: best validation accuracy, or the last epoch")
    q.add_argument("--mode", choices=("argmax", "sample"), default="argmax",
                   help="most likely op per layer, or draws from softmax(theta)")
    q.add_argument("--n", type=int, default=1, help="number of sampled architectures")
    q.add_argument("--seed", type=int, default=0, help="seed of --mode sample")
    q.add_argument("--out", default="runs/search/arch.json",
                   help="output file; with --n > 1, NAME_i.json for i = 0..n-1")

    q = sub.add_parser("show", formatter_class=_formatter,
                       help="theta distributions, expected latency per layer, chart",
                       description="Print the run's history, softmax(theta) per layer and the "
                                   "expected latency per layer; write a PNG chart. With "
                                   "--measure, time the derived network and compare it with the "
                                   "table's prediction.")
    q.add_argument("--run", default="runs/search", help="run folder of 'search.py train'")
    q.add_argument("--which", choices=("best", "latest"), default="latest",
                   help="which checkpoint to show")
    q.add_argument("--png", default=None, help="chart path (default RUN/theta.png)")
    q.add_argument("--measure", action="store_true",
                   help="measure the argmax network (deploy form) and print measured vs "
                        "predicted latency")
    q.add_argument("--arch", default=None,
                   help="with --measure: measure this arch.json instead of the argmax network")
    add_device_arg(q)

    from search.tas import add_tas_args

    q = sub.add_parser("tas", formatter_class=_formatter,
                       help="TAS width search with a FLOP target; writes arch.json",
                       description="Transformable Architecture Search (width only): per-layer "
                                   "attention over width ratios 0.3..1.0, select-two Gumbel "
                                   "sampling, channel-wise interpolation, FLOP loss; the argmax "
                                   "widths are written as an arch.json of conv_k3 layers.")
    add_space_args(q, default="tas_digits")
    add_device_arg(q)
    add_tas_args(q)
    return p


def parse_args(argv):
    return build_parser().parse_args(argv)


def setup_logging(out_dir=None):
    handlers = [logging.StreamHandler(sys.stderr)]
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(out_dir, "search.log")))
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=handlers, force=True)


def space_from_args(args):
    from search.space import get_space

    return get_space(args.space, args.candidates, args.image_size)


def cmd_lut(args):
    from tqdm import tqdm

    from search.latency import load_table, measure_table, save_table

    space = space_from_args(args)
    if args.verify:
        table = load_table(args.verify, space)
        print("%s fits space %s (hash %s): %d layers x %d candidates, unit %s, device %s"
              % (args.verify, space.name, space.hash, *table.latency.shape, table.unit,
                 table.meta["device"]))
        return 0
    if args.batch < 1 or args.runs < 1 or args.warmup < 0 or args.inner < 1:
        raise UserError("need --batch >= 1, --runs >= 1, --inner >= 1, --warmup >= 0")
    start = time.perf_counter()
    table = measure_table(space, args.batch, args.warmup, args.runs, inner=args.inner,
                          progress=None if args.no_progress
                          else lambda it: tqdm(it, desc="latency table"))
    table.meta["build_seconds"] = time.perf_counter() - start
    save_table(table, args.out)
    print("wrote %s: %d layers x %d candidates (%s) in %.1f s"
          % (args.out, *table.latency.shape, table.unit, table.meta["build_seconds"]))
    return 0


def load_digits_for(space):
    from data.digits import load_digits

    train, val, _ = load_digits(image_size=space.image_size)
    if space.num_classes != 10:
        raise UserError("space %s has %d classes; the built-in digits have 10"
                        % (space.name, space.num_classes))
    return train, val


def cmd_train(args):
    from search.latency import load_table
    from search.trainer import SearchConfig, Searcher, resume

    latest = os.path.join(args.out, "latest.pkl")
    if args.resume:
        from search.trainer import load_run
        from search.space import from_dict

        space = from_dict(load_run(latest)["space"])
        train, val = load_digits_for(space)
        searcher = resume(latest, train, val, args.out, epochs=args.epochs)
        setup_logging(args.out)
        log.info("resumed %s at epoch %d (tau %.4f)", latest, searcher.epoch, searcher.tau)
    else:
        if os.path.exists(latest):
            raise UserError("%s already holds a run; pass --resume to continue it or choose "
                            "another --out" % args.out)
        if not args.lut:
            raise UserError("--lut is required for a new search (make one with 'search.py lut')")
        space = space_from_args(args)
        lut = load_table(args.lut, space)
        config = SearchConfig(
            epochs=args.epochs or 10, warmup_epochs=args.warmup_epochs, batch_size=args.batch_size,
            w_fraction=args.w_fraction, w_lr=args.w_lr, w_momentum=args.w_momentum,
            w_wd=args.w_wd, theta_lr=args.theta_lr, theta_wd=args.theta_wd, alpha=args.alpha,
            beta=args.beta, loss_form=args.loss_form, tau0=args.tau0, tau_decay=args.tau_decay,
            noise=args.noise, mode=args.mode, seed=args.seed, max_steps=args.max_steps)
        train, val = load_digits_for(space)
        searcher = Searcher(space, lut, train, val, config, args.out)
        setup_logging(args.out)
        log.info("search space %s (hash %s): %d layers x %d candidates; %d images for weights, "
                 "%d for theta, %d for validation", space.name, space.hash, len(space.layers),
                 len(space.candidates), len(searcher.w_idx), len(searcher.t_idx), len(val.labels))
    searcher.run(progress=not args.no_progress)
    print("search done: %d epochs; checkpoints in %s" % (searcher.epoch, args.out))
    return 0


def run_checkpoint(run, which):
    path = os.path.join(run, "%s.pkl" % which)
    if not os.path.exists(path):
        raise UserError("no %s checkpoint in %s (run 'search.py train --out %s' first)"
                        % (which, run, run))
    return path


def cmd_derive(args):
    from search.derive import arch_from_choices, choose
    from search.jsonio import write_json
    from search.latency import LatencyTable
    from search.space import from_dict
    from search.trainer import load_run

    if args.n < 1:
        raise UserError("--n must be at least 1")
    state = load_run(run_checkpoint(args.run, args.which))
    space, lut = from_dict(state["space"]), LatencyTable.from_dict(state["lut"])
    theta = state["supernet"]["theta"]
    archs = [arch_from_choices(space, c, lut) for c in choose(theta, args.mode, args.n,
                                                               args.seed)]
    stem, ext = os.path.splitext(args.out)
    paths = [args.out] if args.n == 1 else ["%s_%d%s" % (stem, i, ext) for i in range(args.n)]
    for arch, path in zip(archs, paths):
        write_json(arch, path)
        print("%s: %s  (predicted %.1f %s)" % (path, " ".join(l["op"] for l in arch["layers"]),
                                               arch["predicted_latency"], arch["latency_unit"]))
    return 0


def cmd_show(args):
    from search.show import show

    state_path = run_checkpoint(args.run, args.which)
    png = args.png or os.path.join(args.run, "theta.png")
    show(state_path, png, measure=args.measure, arch_path=args.arch)
    return 0


def cmd_tas(args):
    from search.tas import check_tas_args, run_tas

    space = space_from_args(args)
    check_tas_args(args, space)
    setup_logging(args.out)
    run_tas(args, space, load_digits_for)
    return 0


def main(argv=None):
    args = parse_args(argv)
    use_device(args.device) if hasattr(args, "device") else use_device("cpu")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return {"lut": cmd_lut, "train": cmd_train, "derive": cmd_derive, "show": cmd_show,
            "tas": cmd_tas}[args.command](args)


if __name__ == "__main__":
    cli.run(main)
