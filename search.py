"""Architecture search: FBNet-style differentiable search over a measured latency table, and
TAS width search. Ends in an arch.json that ``train.py --arch arch.json`` trains.

    .venv/bin/python search.py lut    --space digits --out runs/search/lut.json
    .venv/bin/python search.py train  --space digits --lut runs/search/lut.json --out runs/search
    .venv/bin/python search.py derive --run runs/search --out runs/search/arch.json
    .venv/bin/python search.py show   --run runs/search --measure
    .venv/bin/python search.py tas    --space tas_digits --flop-ratio 0.5 --out runs/tas
    .venv/bin/python train.py --arch runs/search/arch.json --epochs 30 --output runs/found
"""
import argparse
import logging
import os
import sys
import time

from common import cli, flags
from common.cpus import threads_arg
from common.atomic import OutputPathError, check_output_path
from common.device import use_device
from common.runlock import RunLock
from errors import UserError

log = logging.getLogger("search")


class _SubFormatter(cli.HelpFormatter):
    _fill_text = argparse.HelpFormatter._fill_text  # sub-command descriptions are one paragraph


def _formatter(prog):
    return _SubFormatter(prog, max_help_position=32, width=100)


POSITIVE, COUNT = cli.integer(min=1), cli.integer(min=0)
RUNTIMES = ("onnx", "mge", "bnn", "eager")  # search/runtime_timing.py (not imported for --help)


def refuse_changes_on_resume(config_class, args, allowed=(), what="the run"):
    """A resumed run keeps its own settings: ``UserError`` naming every config flag the user
    typed, other than ``allowed``."""
    changed = sorted(set(flags.given(config_class, args)) - set(allowed))
    if changed:
        raise UserError("%s cannot change on --resume (%s keeps its own settings%s)"
                        % (", ".join("--" + k.replace("_", "-") for k in changed), what,
                           "; only " + ", ".join("--" + a for a in allowed) + " may extend it"
                           if allowed else ""))


def config_from_args(config_class, args):
    """The settings record: the flags typed, the record's own defaults for the rest."""
    return config_class(**flags.given(config_class, args))


def add_space_args(p, default="digits"):
    p.add_argument("--space", default=default,
                   help="search-space preset: digits, fbnet22, binary_resnet18, tas_digits")
    p.add_argument("--candidates", default=None,
                   help="comma-separated candidate ops replacing the preset's (groups: fbnet9, "
                        "binary); e.g. ir_k3_e1,ir_k3_s2,skip,repvgg")
    p.add_argument("--image-size", type=cli.integer(min=8, max=1024), default=None,
                   help="input size replacing the preset's (digits 16, fbnet22 224, "
                        "binary_resnet18 32, tas_digits 16)")


def add_classes_arg(p):
    p.add_argument("--num-classes", type=cli.integer(min=2), default=None,
                   help="classifier outputs replacing the preset's (10 for the presets but "
                        "fbnet22's 1000); give the same to 'lut' and 'train'")


def add_device_arg(p):
    p.add_argument("--device", default="auto",
                   help="auto (all CPU cores or GPU), cpu (one thread), cpuN, gpu")


def build_parser():
    p = cli.ArgumentParser(__doc__, formatter_class=lambda prog: cli.HelpFormatter(
        prog, max_help_position=32, width=100))
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    q = sub.add_parser("lut", formatter_class=_formatter,
                       help="measure the latency lookup table (or --verify one)",
                       description="Measure every candidate at every layer in the runtime the "
                                   "derived network ships in (each entry: the layer's context "
                                   "network with the candidate minus without, both exported "
                                   "files timed in a child process; RepVGG in deploy form; "
                                   "binary candidates in the .bnn runtime) and write JSON.")
    add_space_args(q)
    add_classes_arg(q)
    add_device_arg(q)
    q.add_argument("--runtime", choices=RUNTIMES, default=None,
                   help="where to measure: onnx (ONNX Runtime; the default for float spaces), "
                        "mge (MegEngine Lite), bnn (packed binary runtime; the default for "
                        "spaces with binary candidates), eager (MegEngine eager, --device)")
    q.add_argument("--threads", type=threads_arg, default=None,
                   help="runtime threads (default: 1 for onnx and mge, all CPU cores for bnn); "
                        "recorded in the table: deploy with the same count")
    q.add_argument("--proxy", action="store_true",
                   help="give binary candidates the FLOPs + BOPs/64 cost proxy instead of a "
                        "measurement (onnx, mge, eager)")
    q.add_argument("--batch", type=POSITIVE, default=1, help="batch size of the timed inputs")
    q.add_argument("--warmup", type=COUNT, default=10, help="untimed runs per entry first")
    q.add_argument("--runs", type=POSITIVE, default=30,
                   help="timed runs (rounds) per entry (median taken)")
    q.add_argument("--inner", type=POSITIVE, default=10,
                   help="eager: calls per timed run before one wait for the result (the "
                        "run's time is divided by it)")
    q.add_argument("--out", default="runs/search/lut.json", help="where to write the table")
    q.add_argument("--verify", metavar="LUT", default=None,
                   help="instead of measuring, check that LUT fits --space/--candidates")
    q.add_argument("--no-progress", action="store_true", help="no progress bar")

    q = sub.add_parser("train", formatter_class=_formatter,
                       help="train the supernet (weights by SGD, theta by Adam)",
                       description="Search on the built-in digits or a --data folder: weights "
                                   "on one part of the training split, theta on the disjoint "
                                   "rest; every epoch validates the supernet (softmax mixture, "
                                   "no noise) and the argmax architecture on the validation "
                                   "split.")
    add_space_args(q)
    add_classes_arg(q)
    add_device_arg(q)
    q.add_argument("--data", metavar="DIR", default=None,
                   help="data folder, as train.py's: an image folder with train/<class>/ and "
                        "val/<class>/, or CIFAR's python batches; held in memory at the "
                        "space's --image-size (default: the built-in digits; a resumed run "
                        "keeps its own)")
    q.add_argument("--lut", default=None,
                   help="latency table from 'search.py lut' (needed unless --resume; with "
                        "--resume it must be the run's own table)")
    q.add_argument("--out", default="runs/search", help="run folder (checkpoints, log)")
    q.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its latest.pkl, exactly (its space, "
                        "table and settings; only --epochs may extend it)")
    from search.trainer import SearchConfig
    flags.add_flags(q, SearchConfig, help={"epochs": (
        "total epochs, warm-up included (default: %d for a new search; a resumed run keeps its "
        "own unless given, and a new total reshapes the cosine LR from the resumed epoch on)"
        % SearchConfig.epochs)})
    q.add_argument("--no-progress", action="store_true", help="no progress bars")

    q = sub.add_parser("derive", formatter_class=_formatter,
                       help="write arch.json from a search run",
                       description="Pick one op per layer from softmax(theta) of a run's "
                                   "checkpoint and write the arch.json that model.derived "
                                   "builds and train.py --arch trains.")
    q.add_argument("--run", default="runs/search", help="run folder of 'search.py train'")
    q.add_argument("--which", choices=("best", "latest"), default="best",
                   help="checkpoint: best validation accuracy of an epoch that trained theta "
                        "(ties: the lower theta loss), or the last epoch")
    q.add_argument("--mode", choices=("argmax", "sample"), default="argmax",
                   help="most likely op per layer, or draws from softmax(theta)")
    q.add_argument("--n", type=POSITIVE, default=1, help="number of sampled architectures")
    q.add_argument("--seed", type=COUNT, default=0, help="seed of --mode sample")
    q.add_argument("--out", default="runs/search/arch.json",
                   help="output file; with --n > 1, NAME_i.json for i = 0..n-1")

    q = sub.add_parser("show", formatter_class=_formatter,
                       help="theta distributions, expected latency per layer, chart",
                       description="Print the run's history, softmax(theta) per layer and the "
                                   "expected latency per layer; write a PNG chart. With "
                                   "--measure, time the derived network and compare it with the "
                                   "table's prediction.")
    q.add_argument("--run", default="runs/search", help="run folder of 'search.py train'")
    q.add_argument("--which", choices=("best", "latest"), default="best",
                   help="checkpoint: best validation accuracy (as derive writes it), or the "
                        "last epoch")
    q.add_argument("--png", default=None, help="chart path (default RUN/theta.png)")
    q.add_argument("--measure", action="store_true",
                   help="measure the argmax network (deploy form) and print measured vs "
                        "predicted latency")
    q.add_argument("--arch", default=None,
                   help="with --measure: measure this arch.json instead of the argmax network")
    add_device_arg(q)

    from search.tas import TASConfig

    q = sub.add_parser("tas", formatter_class=_formatter,
                       help="TAS width search with a FLOP target; writes arch.json",
                       description="Transformable Architecture Search (width only): per-layer "
                                   "attention over width ratios 0.3..1.0, select-two Gumbel "
                                   "sampling, channel-wise interpolation, FLOP loss; the argmax "
                                   "widths are written as an arch.json of conv_k3 layers.")
    add_space_args(q, default="tas_digits")
    add_device_arg(q)
    flags.add_flags(q, TASConfig)
    q.add_argument("--out", default="runs/tas", help="run folder: latest.pkl is written there "
                   "after every epoch, arch.json at the end")
    q.add_argument("--resume", action="store_true",
                   help="continue the killed search in --out from its latest.pkl, exactly (its "
                        "space and settings)")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def parse_args(argv):
    return build_parser().parse_args(argv)


def setup_logging(out_dir=None):
    handlers = [logging.StreamHandler(sys.stderr)]
    if out_dir:
        try:
            os.makedirs(out_dir, exist_ok=True)
            handlers.append(logging.FileHandler(os.path.join(out_dir, "search.log")))
        except OSError as e:
            raise OutputPathError("cannot write into --out %s (%s)"
                                  % (out_dir, e.strerror or e)) from None
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=handlers, force=True)


def space_from_args(args):
    from search.space import get_space

    return get_space(args.space, args.candidates, args.image_size,
                     getattr(args, "num_classes", None))


def cmd_lut(args):
    from common.progress import progress as progress_display
    from search.latency import load_table, measure_runtime_table, measure_table, save_table
    from search.runtime_timing import RUNTIME_NAMES, check_runtime, default_runtime

    space = space_from_args(args)
    if args.verify:
        table = load_table(args.verify, space)
        if args.runtime:
            table.check_runtime(args.runtime, args.verify)
        m = table.meta
        print("%s fits space %s (hash %s): %d layers x %d candidates, unit %s, measured in %s"
              "%s on %s" % (args.verify, space.name, space.hash, *table.latency.shape,
                            table.unit, RUNTIME_NAMES.get(table.runtime, table.runtime),
                            " (%s threads)" % m["threads"] if m.get("threads") else "",
                            m.get("cpu") or m.get("device") or "an unrecorded CPU"))
        return 0
    runtime = args.runtime or default_runtime(space)
    check_runtime(space, runtime, args.proxy)  # before anything is written
    check_output_path(args.out)  # before minutes of measuring
    start = time.perf_counter()
    progress = None if args.no_progress else progress_display
    if runtime == "eager":
        table = measure_table(space, args.batch, args.warmup, args.runs, inner=args.inner,
                              progress=progress)
    else:
        table = measure_runtime_table(space, runtime, args.threads, args.batch, args.warmup,
                                      args.runs, proxy=args.proxy, progress=progress)
    table.meta["build_seconds"] = time.perf_counter() - start
    save_table(table, args.out)
    print("wrote %s: %d layers x %d candidates (%s, %s) in %.1f s"
          % (args.out, *table.latency.shape, table.unit, RUNTIME_NAMES[runtime],
             table.meta["build_seconds"]))
    return 0


def load_digits_for(space):
    from search.data import load_search_data

    return load_search_data(space)


def refuse_other_table(path, run_table, space, latest):
    """A resumed run keeps its table: ``UserError`` unless ``--lut`` is that table (measured
    in the same runtime, with the same entries)."""
    from search.latency import LatencyTable, load_table

    given, own = load_table(path, space), LatencyTable.from_dict(run_table, what=latest)
    given.check_runtime(own.runtime, "--lut %s" % path,
                        "; the run in %s searched with a table from the latter, and a resumed "
                        "run keeps its table (start a new search with --lut %s)"
                        % (os.path.dirname(latest) or ".", path))
    if given.to_dict()["latency"] != own.to_dict()["latency"] or given.fixed != own.fixed:
        raise UserError("--lut %s is not the table the run in %s searched with; a resumed run "
                        "keeps its table (start a new search with --lut %s)"
                        % (path, os.path.dirname(latest) or ".", path))


def cmd_train(args):
    with RunLock(args.out):  # a second search into the same folder stops with one line
        return _train(args)


def _train(args):
    from search.data import load_search_data
    from search.latency import load_table
    from search.trainer import SearchConfig, Searcher, resume

    latest = os.path.join(args.out, "latest.pkl")
    if args.resume:
        from search.trainer import load_run
        from search.space import from_dict

        refuse_changes_on_resume(SearchConfig, args, allowed=("epochs",))
        state = load_run(latest)
        space, data = from_dict(state["space"]), state.get("data")
        if args.lut:
            refuse_other_table(args.lut, state["lut"], space, latest)
        if args.data and os.path.abspath(args.data) != os.path.abspath(data or ""):
            raise UserError("--data cannot change on --resume (the run searched on %s)"
                            % (data or "the built-in digits"))
        train, val = load_search_data(space, data)
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
        train, val = load_search_data(space, args.data)  # a class-count mismatch says so first
        lut = load_table(args.lut, space)
        config = config_from_args(SearchConfig, args)
        searcher = Searcher(space, lut, train, val, config, args.out)
        searcher.data = os.path.abspath(args.data) if args.data else None
        setup_logging(args.out)
        log.info("search space %s (hash %s): %d layers x %d candidates; %d images for weights, "
                 "%d for theta, %d for validation", space.name, space.hash, len(space.layers),
                 len(space.candidates), len(searcher.w_idx), len(searcher.t_idx), len(val.labels))
    searcher.run(progress=not args.no_progress)
    print("search done: %s; checkpoints in %s" % (cli.count(searcher.epoch, "epoch"), args.out))
    return 0


def run_checkpoint(run, which):
    path = os.path.join(run, "%s.pkl" % which)
    if not os.path.exists(path):
        raise UserError("no %s checkpoint in %s (run 'search.py train --out %s' first)"
                        % (which, run, run))
    return path


def paths_of(args):
    """derive's output files: --out, or NAME_i.json for i = 0..n-1 with --n > 1."""
    stem, ext = os.path.splitext(args.out)
    return [args.out] if args.n == 1 else ["%s_%d%s" % (stem, i, ext) for i in range(args.n)]


def cmd_derive(args):
    from search.derive import arch_from_choices, choose
    from common.atomic import write_json
    from search.latency import LatencyTable
    from search.space import from_dict
    from search.trainer import load_run

    for path in paths_of(args):
        check_output_path(path)
    state = load_run(run_checkpoint(args.run, args.which))
    space, lut = from_dict(state["space"]), LatencyTable.from_dict(state["lut"])
    theta = state["supernet"]["theta"]
    archs = [arch_from_choices(space, c, lut) for c in choose(theta, args.mode, args.n,
                                                               args.seed)]
    for arch, path in zip(archs, paths_of(args)):
        write_json(arch, path)
        print("%s: %s  (predicted %.1f %s)" % (path, " ".join(l["op"] for l in arch["layers"]),
                                               arch["predicted_latency"], arch["latency_unit"]))
    return 0


def cmd_show(args):
    from search.show import report

    state_path = run_checkpoint(args.run, args.which)
    png = args.png or os.path.join(args.run, "theta.png")
    for line in report(state_path, png, measure=args.measure, arch_path=args.arch):
        print(line, flush=True)
    return 0


def cmd_tas(args):
    from search.tas import TASConfig, TASSearch, check_tas, load_run, resume, search_widths

    latest = os.path.join(args.out, "latest.pkl")
    if args.resume:
        refuse_changes_on_resume(TASConfig, args, what="the search")
        if not os.path.exists(latest):
            raise UserError("no latest.pkl in %s to resume" % args.out)
        if os.path.exists(os.path.join(args.out, "arch.json")):
            raise UserError("the search in %s is finished (arch.json exists); nothing to resume"
                            % args.out)
    else:
        space, cfg = space_from_args(args), config_from_args(TASConfig, args)
        check_tas(space, cfg)
        held = [f for f in ("arch.json", "latest.pkl")
                if os.path.exists(os.path.join(args.out, f))]
        if held:
            raise UserError("%s already holds a run (%s); choose another --out, or pass --resume "
                            "to continue an unfinished one" % (args.out, ", ".join(held)))
    with RunLock(args.out):
        setup_logging(args.out)
        if args.resume:
            state, space = load_run(latest)
            train, val = load_digits_for(space)
            searcher = resume(state, space, train, val)
            log.info("resumed %s at epoch %d of %d", latest, searcher.epoch, searcher.cfg.epochs)
        else:
            train, val = load_digits_for(space)
            searcher = TASSearch(space, train, val, cfg)
        found = search_widths(searcher, args.out, progress=not args.no_progress)
    print("widths %s: %.2f of %.2f MMACs (target %.2f%s); wrote %s"
          % (found["widths"], found["mmacs"], found["full_mmacs"], found["target_mmacs"],
             ", %+.0f%% off" % (100 * (found["mmacs"] / found["target_mmacs"] - 1))
             if abs(found["mmacs"] / found["target_mmacs"] - 1) > 0.05 else "",
             found["arch_path"]))
    return 0


def main(argv=None):
    args = parse_args(argv)
    use_device(getattr(args, "device", "cpu"))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return {"lut": cmd_lut, "train": cmd_train, "derive": cmd_derive, "show": cmd_show,
            "tas": cmd_tas}[args.command](args)


if __name__ == "__main__":
    cli.run(main)
