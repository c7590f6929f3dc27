"""Convert a RepVGG checkpoint (official PyTorch, timm, mmpretrain, basecls or PaddleClas) to a
MegEngine checkpoint, or export one back to PyTorch.

    python -m ckpt_converter RepVGG-A0-train.pth --arch RepVGG-A0 -o a0.pkl [--deploy] [--ema]
    python -m ckpt_converter repvgg_a0.safetensors --arch RepVGG-A0 -o a0.pkl   # timm
    python -m ckpt_converter export a0.pkl -o a0.pth

Reads torch.save files (zip and legacy formats), .safetensors and plain pickles of arrays
(megengine.save, paddle.save) without PyTorch and without running anything from the file. The
layout is detected from the keys (or forced with --layout). The output is a MegEngine checkpoint
({"arch", "form", "num_classes", "state_dict"}) that tools/convert.py, tools/eval.py etc. read.
"""
import ctypes
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import cli  # noqa: E402
from common.device import use_device  # noqa: E402

from .layouts import LAYOUTS  # noqa: E402

EPILOG = "To write a MegEngine checkpoint back as a PyTorch .pth: %(prog)s export --help"


def parse_import_args(argv):
    p = cli.ArgumentParser(prog="python -m ckpt_converter", description=__doc__.split("\n\n")[0],
                           epilog=EPILOG)
    p.add_argument("input", metavar="INPUT",
                   help="checkpoint: torch.save file (.pth/.pt, zip or legacy format), "
                        ".safetensors, or a pickle of arrays (megengine.save .pkl, paddle.save "
                        ".pdparams); a bare state dict, a {'state_dict'|'model': ...} wrapper or "
                        "a full training checkpoint")
    p.add_argument("--arch", required=True,
                   help="architecture the weights belong to, e.g. RepVGG-A0 (a registered name; "
                        "train or deploy form is detected from the weights)")
    p.add_argument("--layout", choices=list(LAYOUTS), default=None,
                   help="whose names the weights use (default: detected from the keys): "
                        + "; ".join("%s = %s" % (name, layout.written_by)
                                    for name, layout in LAYOUTS.items()))
    p.add_argument("-o", "--output", required=True, metavar="OUT.pkl",
                   help="MegEngine checkpoint to write (atomically; nothing is written on error)")
    p.add_argument("--deploy", action="store_true",
                   help="fuse a train-form checkpoint into the deploy form before writing")
    p.add_argument("--ema", action="store_true",
                   help="take the EMA weights of a training checkpoint instead of the model's")
    p.add_argument("--device", default="cpu", help="MegEngine device for the conversion")
    return p.parse_args(argv)


def parse_export_args(argv):
    p = cli.ArgumentParser(
        prog="python -m ckpt_converter export",
        description="Write a MegEngine RepVGG checkpoint as a PyTorch .pth (zip format) that "
                    "torch.load(path, weights_only=True) reads and the official PyTorch model "
                    "loads with strict=True.")
    p.add_argument("input", metavar="INPUT.pkl", help="MegEngine checkpoint (this project's format "
                                                      "or a bare state dict)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.pth", help=".pth file to write")
    return p.parse_args(argv)


def return_freed_memory_to_os():
    """Ask glibc to serve allocations >= 1 MiB by mmap, always (M_MMAP_THRESHOLD, fixed).

    Loading weights replaces each of the model's tensors by a new one; with glibc's default
    sliding threshold the freed blocks stay in the heap, so the process would keep the model's
    first allocation on top of the loaded weights (about 1x the checkpoint size for RepVGG-B3).
    A process-wide setting, so it is made here, in the command, not in the library. No-op where
    mallopt does not exist (non-glibc).
    """
    try:
        ctypes.CDLL(None).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = -3
    except (OSError, AttributeError):
        pass


def _same_file(a, b):
    return os.path.abspath(a) == os.path.abspath(b)


def run_import(args):
    return_freed_memory_to_os()
    use_device(args.device)
    from common.checkpoint import save_checkpoint
    from model.checkpoint import checkpoint_dict, numpy_state_dict

    from . import convert

    if _same_file(args.input, args.output):
        raise cli.UserError("--output would overwrite the input; choose another path")
    model, report = convert(args.input, args.arch, deploy=args.deploy, ema=args.ema,
                            layout=args.layout)
    print("read %s: %s format, %d tensors, weights at %s, %s layout%s, %s form, %d classes"
          % (args.input, report["format"], report["tensors"], report["source"],
             report["layout"], "" if args.layout is None else " (--layout)", report["form"],
             report["num_classes"]))
    for note in report["notes"]:
        print("  " + note)
    for name in sorted(report["placeholders"]):
        print("  object of a class outside the allow-list, kept as an inert placeholder (never "
              "called): %s" % name)
    for cast, count in sorted(report["casts"].items()):
        print("  cast %s: %d tensors" % (cast, count))
    if report["output_form"] != report["form"]:
        print("fused to deploy form")
    save_checkpoint(checkpoint_dict(numpy_state_dict(model), report["arch"],
                                    report["output_form"]), args.output)
    print("wrote %s (%s, %s form)" % (args.output, report["arch"], report["output_form"]))
    return 0


def run_export(args):
    from common.checkpoint import load_checkpoint
    from model.checkpoint import state_dict_of

    from . import export_pth

    if _same_file(args.input, args.output):
        raise cli.UserError("--output would overwrite the input; choose another path")
    checkpoint = load_checkpoint(args.input)
    state_dict = state_dict_of(checkpoint)
    export_pth(state_dict, args.output)
    print("wrote %s: %d tensors from %s (PyTorch zip format)"
          % (args.output, len(state_dict), args.input))
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "export":
        return run_export(parse_export_args(argv[1:]))
    return run_import(parse_import_args(argv))


if __name__ == "__main__":
    cli.run(main)
