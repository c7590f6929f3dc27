"""Classify images with a dumped model (.mge from tools/export.py), without the model code.

    python tools/infer.py a0.mge cat.jpg dog.png
    python tools/infer.py a0.mge photos/*.jpg --labels imagenet_classes.txt --top 3

The graph is run by MegEngine Lite; nothing from the project's model/ package is imported, so
the .mge file and this script (with common/) are all a deployment needs. Each image is
preprocessed as in evaluation (resize, centre crop, ImageNet mean/std) to the resolution the
model was exported at, and the top classes are printed with their softmax probabilities.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common import cli  # noqa: E402
from common import numeric  # noqa: E402
from common.device import cpu_count  # noqa: E402
from deploy import lite, preprocess  # noqa: E402
from errors import UserError  # noqa: E402


def read_labels(path, num_classes):
    try:
        with open(path, encoding="utf-8") as f:
            labels = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise UserError("cannot read labels %s (%s)" % (path, e.strerror or e)) from None
    if len(labels) != num_classes:
        raise UserError("%s has %d labels but the model has %d classes"
                        % (path, len(labels), num_classes))
    return labels


def classify(model, paths, batch_size, k):
    """Yields ``(path, [(class, probability), ...])``, batch by batch."""
    size = model.input_shape[-1]
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        x = np.stack([preprocess.preprocess_image(p, size) for p in chunk])
        yield from zip(chunk, numeric.top_k(model(x), k))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=_Formatter)
    p.add_argument("model", metavar="MODEL.mge", help="dumped model from tools/export.py")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line (default: "
                   "class indices)")
    p.add_argument("--top", type=int, default=5, help="how many classes to print per image")
    p.add_argument("--batch", type=int, default=0,
                   help="images per forward pass (0: the batch size the model was exported with)")
    p.add_argument("--threads", type=int, default=cpu_count(), help="CPU threads")
    args = p.parse_args(argv)
    if args.top < 1 or args.threads < 1 or args.batch < 0:
        p.error("--top and --threads must be positive, --batch non-negative")
    return args


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def main(argv=None):
    args = parse_args(argv)
    missing = [p for p in args.images if not os.path.isfile(p)]
    if missing:
        raise UserError("image not found: %s" % ", ".join(missing))
    model = lite.DumpedModel(args.model, threads=args.threads)
    labels = read_labels(args.labels, model.num_classes) if args.labels else None
    for path, top in classify(model, args.images, args.batch or model.input_shape[0],
                              args.top):
        print(path)
        for rank, (index, prob) in enumerate(top, 1):
            name = labels[index] if labels else "class %d" % index
            print("  %d. %-40s %6.2f%%" % (rank, name, 100 * prob))
    return 0


if __name__ == "__main__":
    cli.run(main)
