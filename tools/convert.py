"""Convert a train-form RepVGG checkpoint to deploy form (every block fused into one 3x3 conv).

    .venv/bin/python tools/convert.py train.pkl --save deploy.pkl
    .venv/bin/python tools/convert.py --arch RepVGG-A0 --load train.pkl --save deploy.pkl

The input is a MegEngine checkpoint from train.py, from the PyTorch importer, or a bare state
dict (then --arch is required). The output keeps every metadata field of the input (classes,
data set, image size, ...), so eval and predict treat it as the original. A checkpoint that does
not fit the architecture is reported with its missing, unexpected and mis-shaped keys, and
nothing is written.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import cli  # noqa: E402
from common.atomic import check_output_path  # noqa: E402
from common.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from common.device import DEVICE_HELP, use_device  # noqa: E402


def parse_args(argv):
    p = cli.ArgumentParser(__doc__)
    p.add_argument("--arch", help="architecture name or arch.json (default: the one the "
                   "checkpoint records)")
    cli.add_checkpoint_argument(p, "train-form checkpoint to read")
    p.add_argument("--save", required=True, metavar="CKPT", help="deploy-form checkpoint to "
                   "write (a regular file; its metadata is the input's)")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    args = p.parse_args(argv)
    cli.checkpoint_of(p, args)
    return args


def main(argv=None):
    args = parse_args(argv)
    use_device(args.device)
    from model import convert_to_deploy
    from model.checkpoint import (arch_label, checkpoint_dict, metadata_of,
                                  model_from_checkpoint, numpy_state_dict)

    if os.path.abspath(args.checkpoint) == os.path.abspath(args.save):
        raise cli.UserError("--save would overwrite the checkpoint it reads; choose another "
                            "output path")
    check_output_path(args.save)  # before the work: a folder, device or pipe is refused
    checkpoint = load_checkpoint(args.checkpoint)
    model, info = model_from_checkpoint(checkpoint, args.arch, args.checkpoint)
    if info["form"] == "deploy":
        print("%s is already in deploy form; copying its weights and metadata"
              % args.checkpoint)
    model = convert_to_deploy(model, inplace=True)
    save_checkpoint(checkpoint_dict(numpy_state_dict(model), info["arch"], "deploy",
                                    **metadata_of(checkpoint)), args.save)
    print("converted %s (%s, %d classes): %s -> %s"
          % (arch_label(info["arch"]), info["form"], info["num_classes"], args.checkpoint,
             args.save))
    return 0


if __name__ == "__main__":
    cli.run(main)
