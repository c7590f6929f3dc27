"""Top-1 / top-5 accuracy of a model checkpoint on a validation split.

    python tools/eval.py runs/RepVGG-A0-digits/deploy.pkl           # built-in digits val split
    python tools/eval.py best.pkl --data /imagenet                    # DIR/val, ImageNet folder
    python tools/eval.py model.pkl --dataset cifar10 --data ./cifar-10-batches-py

Accepts train- or deploy-form checkpoints from train.py, tools/convert.py and the PyTorch
importer (bare state dicts need --arch). The data set and image size default to what the
checkpoint records (train.py records them), else digits at 32 without --data.
"""
import argparse
import os
import sys
import warnings

# numpy's harmless note about this CPU's float subnormals (printed when scikit-learn loads)
warnings.filterwarnings("ignore", message="The value of the smallest subnormal")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import cli  # noqa: E402
from common.device import use_device  # noqa: E402


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="model checkpoint (.pkl), train or deploy form")
    p.add_argument("--arch", help="architecture (default: the one the checkpoint records)")
    p.add_argument("--data", metavar="DIR", help="data folder (default: built-in digits)")
    p.add_argument("--dataset", choices=("digits", "imagenet", "cifar10", "cifar100"),
                   help="data format (default: recorded in the checkpoint, else digits "
                        "without --data, imagenet with it)")
    p.add_argument("--image-size", type=int,
                   help="input resolution (default: recorded in the checkpoint, else 32 for "
                        "digits/CIFAR and 224 for ImageNet)")
    p.add_argument("--batch-size", type=int, default=100, help="images per batch (default 100)")
    p.add_argument("--limit", type=int, default=0,
                   help="evaluate the first N images of the split only (default 0 = all)")
    p.add_argument("--workers", type=int, default=0, help="loader worker processes (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cpuN, gpu (default auto)")
    return p.parse_args(argv)


def data_settings(args, checkpoint):
    recorded = checkpoint if isinstance(checkpoint, dict) else {}
    dataset = args.dataset or (None if args.data and recorded.get("dataset") == "digits"
                               else recorded.get("dataset"))
    if dataset is None:
        dataset = "imagenet" if args.data else "digits"
    size = args.image_size or recorded.get("image_size") or (224 if dataset == "imagenet"
                                                              else 32)
    return dataset, int(size)


def main(argv=None):
    args = parse_args(argv)
    use_device(args.device)
    from data.loader import make_loader
    from data.splits import load_splits
    from training import fastconv
    from common.checkpoint import load_checkpoint
    from model.checkpoint import arch_label, model_from_checkpoint
    from training.loop import evaluate

    checkpoint = load_checkpoint(args.checkpoint)
    model, info = model_from_checkpoint(checkpoint, args.arch, args.checkpoint)
    fastconv.enable(model)  # MegEngine's CPU convs are slow on tiny maps; same outputs
    dataset, size = data_settings(args, checkpoint)
    splits = load_splits(dataset, args.data, size)
    if len(splits.classes) != info["num_classes"]:
        raise cli.UserError("%s has %d classes but the %s data has %d" % (
            args.checkpoint, info["num_classes"], dataset, len(splits.classes)))
    if args.limit:
        from data.sources import Subset
        splits.val = Subset(splits.val, args.limit)
    loader, _ = make_loader(splits.val, splits.eval_transform, args.batch_size, shuffle=False,
                            workers=args.workers)
    loss, acc1, acc5 = evaluate(model, loader)
    print("%s (%s, %s form) on %s val (%d images, %dx%d): top-1 %.2f%%  top-5 %.2f%%  loss %.4f"
          % (args.checkpoint, arch_label(info["arch"]), info["form"], dataset, len(splits.val), size, size,
             acc1, acc5, loss))
    return 0


if __name__ == "__main__":
    cli.run(main)
