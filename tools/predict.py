"""Top-5 classes and probabilities for image files.

    python tools/predict.py --checkpoint runs/RepVGG-A0-digits/deploy.pkl digit.png
    python tools/predict.py --checkpoint deploy.pkl --classes names.txt cat.jpg dog.jpg

Accepts train- or deploy-form checkpoints from train.py, tools/convert.py and the PyTorch
importer. Images get the evaluation transform of the data set the checkpoint records (ImageNet:
resize + centre crop + ImageNet normalisation; digits/CIFAR: resize to the image size,
normalise to [-1, 1]). Class names come from the checkpoint (train.py records them), else from
--classes (one name per line), else class indices are printed.
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
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--checkpoint", required=True, help="model checkpoint (.pkl)")
    p.add_argument("--arch", help="architecture (default: the one the checkpoint records)")
    p.add_argument("--classes", metavar="FILE", help="class names, one per line (default: "
                   "recorded in the checkpoint, else indices)")
    p.add_argument("--dataset", choices=("digits", "imagenet", "cifar10", "cifar100"),
                   help="which evaluation transform (default: recorded, else imagenet)")
    p.add_argument("--image-size", type=int, help="input resolution (default: recorded, else "
                   "224 for imagenet and 32 otherwise)")
    p.add_argument("--top", type=int, default=5, help="how many classes to print (default 5)")
    p.add_argument("--device", default="auto", help="auto, cpu, cpuN, gpu (default auto)")
    return p.parse_args(argv)


def class_names(args, checkpoint, num_classes):
    if args.classes:
        try:
            with open(args.classes) as f:
                names = [line.strip() for line in f if line.strip()]
        except OSError as e:
            raise cli.UserError("cannot read --classes %s: %s" % (args.classes, e.strerror))
    else:
        names = checkpoint.get("classes") if isinstance(checkpoint, dict) else None
        names = list(names) if names else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise cli.UserError("%d class names for a model with %d classes"
                            % (len(names), num_classes))
    return names


def main(argv=None):
    args = parse_args(argv)
    use_device(args.device)
    import numpy as np
    from PIL import Image

    import megengine as mge
    import megengine.functional as F
    from data.splits import eval_transform
    from common.checkpoint import load_checkpoint
    from model.checkpoint import model_from_checkpoint

    checkpoint = load_checkpoint(args.checkpoint)
    model, info = model_from_checkpoint(checkpoint, args.arch, args.checkpoint)
    names = class_names(args, checkpoint, info["num_classes"])
    recorded = checkpoint if isinstance(checkpoint, dict) else {}
    dataset = args.dataset or recorded.get("dataset") or "imagenet"
    size = args.image_size or recorded.get("image_size") or (224 if dataset == "imagenet"
                                                              else 32)
    transform = eval_transform(dataset, int(size))
    batch = []
    for path in args.images:
        try:
            with Image.open(path) as image:
                batch.append(transform(image.convert("RGB"), None))
        except (OSError, ValueError, SyntaxError) as e:
            raise cli.UserError("cannot read image %s (%s)" % (path, e))
    probs = F.softmax(model(mge.tensor(np.stack(batch))), axis=1).numpy()
    top = min(args.top, info["num_classes"])
    for path, p in zip(args.images, probs):
        order = np.argsort(-p)[:top]
        print(path + ": " + ", ".join("%s %.2f%%" % (names[i], 100 * p[i]) for i in order))
    return 0


if __name__ == "__main__":
    cli.run(main)
