"""Top-5 classes and probabilities for image files.

    .venv/bin/python tools/predict.py --checkpoint runs/RepVGG-A0-digits/deploy.pkl digit.png
    .venv/bin/python tools/predict.py --checkpoint deploy.pkl --classes names.txt cat.jpg dog.jpg
    .venv/bin/python tools/predict.py --load deploy.pkl photos/  # a folder: its images, sorted

Accepts train- or deploy-form checkpoints from train.py, tools/convert.py and the PyTorch
importer. Images get the evaluation transform of the data set the checkpoint records (ImageNet:
resize + centre crop + ImageNet normalisation; digits/CIFAR: resize to the image size,
normalise to [-1, 1]); a checkpoint that records no data set is taken as ImageNet at 224 (the
same rule as tools/eval.py). Images go through the model --batch at a time. Class names come
from --classes (one name per line) when given, else from the checkpoint (train.py records them),
else class indices are printed.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import cli, limits  # noqa: E402
from common.device import DEVICE_HELP, use_device  # noqa: E402


def parse_args(argv):
    p = cli.ArgumentParser(__doc__)
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, or folders (their image files, recursively, sorted)")
    cli.add_checkpoint_argument(p, "model checkpoint (.pkl); --load is the same",
                                positional=False)
    p.add_argument("--arch", help="architecture (default: the one the checkpoint records)")
    p.add_argument("--classes", metavar="FILE", help="class names, one per line (default: "
                   "recorded in the checkpoint, else indices)")
    p.add_argument("--dataset", choices=("digits", "imagenet", "cifar10", "cifar100"),
                   help="which evaluation transform (default: recorded, else imagenet)")
    p.add_argument("--image-size", type=cli.integer(min=16, max=4096),
                   help="input resolution, 16 or more (default: recorded, else 224 for "
                        "imagenet and 32 otherwise)")
    p.add_argument("--top", type=cli.integer(min=1), default=5,
                   help="how many classes to print (at most the model's classes)")
    p.add_argument("--batch", type=cli.integer(min=1, max=4096), default=32,
                   help="images per forward pass (memory grows with it)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    limits.add_arguments(p)
    args = p.parse_args(argv)
    cli.checkpoint_of(p, args)
    return args


def class_names(args, checkpoint, num_classes):
    if args.classes:
        try:
            with open(args.classes) as f:
                names = [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise cli.UserError("cannot read --classes %s: %s"
                                % (args.classes, getattr(e, "strerror", None) or e)) from None
    else:
        names = checkpoint.get("classes") if isinstance(checkpoint, dict) else None
        names = [str(n) for n in names] if names else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise cli.UserError("%d class names for a model with %d classes"
                            % (len(names), num_classes))
    return names


def predict(model, transform, paths, batch, limits=None):
    """Yield ``(path, logits)`` for every image, ``batch`` images per forward pass. Each image
    is decoded and prepared as tools/infer.py does (``deploy.preprocess.preprocess_image``:
    the one decoder, at the spec's resize), so both tools give one answer for one file."""
    import numpy as np

    import megengine as mge
    from deploy.preprocess import preprocess_image

    for start in range(0, len(paths), batch):
        chunk = paths[start:start + batch]
        x = np.stack([preprocess_image(path, transform.spec, limits)
                      for path in chunk]).astype(np.float32)
        yield from zip(chunk, model(mge.tensor(x)).numpy())


def main(argv=None):
    args = parse_args(argv)
    use_device(args.device)
    from common.checkpoint import load_checkpoint
    from common.inputs import expand_images
    from common.numeric import top_k
    from data.splits import checkpoint_data, eval_transform
    from model.checkpoint import model_from_checkpoint

    paths = expand_images(args.images)  # before the model loads: a typo fails at once
    budget = limits.from_args(args)
    checkpoint = load_checkpoint(args.checkpoint, limits=budget)
    try:
        dataset, size = checkpoint_data(checkpoint, args.dataset, None, args.image_size)
    except (OverflowError, TypeError, ValueError):
        raise cli.UserError("%s records a malformed image_size (%.40r)" % (
            args.checkpoint, isinstance(checkpoint, dict) and checkpoint.get("image_size"))) \
            from None
    # The architecture's budget is checked at the size it will run before anything is built.
    model, info = model_from_checkpoint(checkpoint, args.arch, args.checkpoint, limits=budget,
                                        image_size=size)
    names = class_names(args, checkpoint, info["num_classes"])
    transform = eval_transform(dataset, size)
    top = min(args.top, info["num_classes"])
    for path, logits in predict(model, transform, paths, args.batch, budget):
        (row,) = top_k(logits[None], top)
        print(path + ": " + ", ".join("%s %.2f%%" % (names[i], 100 * p) for i, p in row),
              flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
