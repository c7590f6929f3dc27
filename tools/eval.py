"""Top-1 / top-5 accuracy of a model checkpoint on a validation split.

    .venv/bin/python tools/eval.py runs/RepVGG-A0-digits/deploy.pkl  # the data set it records
    .venv/bin/python tools/eval.py best.pkl --data /imagenet  # DIR/val, ImageNet folder
    .venv/bin/python tools/eval.py model.pkl --dataset cifar10 --data ./cifar-10-batches-py
    .venv/bin/python tools/eval.py --load model.pkl  # --checkpoint / --load: the same

Accepts train- or deploy-form checkpoints from train.py, tools/convert.py and the PyTorch
importer (bare state dicts need --arch). The data set and image size default to what the
checkpoint records (train.py records them, tools/convert.py keeps them); a checkpoint that records
nothing is taken as ImageNet at 224 (the same rule as tools/predict.py), or as the data set of
the --data folder. The class names the checkpoint records must be the data's. Unreadable
validation images are named in a warning, left out and counted.

--exported FILE scores an exported model (tools/export.py's .mge or .onnx, tools/quantize.py's
int8 files, run as tools/infer.py runs it: a .onnx on the runtime deploy/route.py picks for its
precision on this CPU, or --runtime's; --precision bf16 for a .onnx in bfloat16 through
OpenVINO) on the same split, prepared as for the checkpoint it was exported from. The result
line names the route (the two runtimes round int8 differently, so each route has its own
accuracy):

    .venv/bin/python tools/eval.py deploy.pkl --exported a0.onnx --precision bf16
    .venv/bin/python tools/eval.py deploy.pkl --exported a0_int8.onnx --runtime openvino
"""
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import cli  # noqa: E402
from common.device import DEVICE_HELP, use_device  # noqa: E402

DATASETS = ("digits", "imagenet", "cifar10", "cifar100")


def parse_args(argv):
    p = cli.ArgumentParser(__doc__)
    cli.add_checkpoint_argument(p)
    p.add_argument("--arch", help="architecture (default: the one the checkpoint records)")
    p.add_argument("--data", metavar="DIR", help="data folder (default: none; the built-in "
                   "digits when the checkpoint records digits)")
    p.add_argument("--dataset", choices=DATASETS,
                   help="data format (default: recorded in the checkpoint, else the --data "
                        "folder's, else imagenet)")
    p.add_argument("--image-size", type=cli.integer(min=16, max=4096),
                   help="input resolution, 16 or more (default: recorded in the checkpoint, "
                        "else 224 for ImageNet and 32 for digits/CIFAR)")
    p.add_argument("--batch-size", type=cli.integer(min=1), default=100,
                   help="images per batch")
    p.add_argument("--limit", type=cli.integer(min=0), default=0,
                   help="evaluate the first N images of the split only (0 = all)")
    p.add_argument("--workers", type=cli.integer(min=0, max=64), default=0,
                   help="loader worker processes")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--exported", metavar="FILE",
                   help="score this exported model (.mge or .onnx) instead of the checkpoint")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="with --exported: bf16 runs a .onnx in bfloat16 (OpenVINO)")
    p.add_argument("--runtime", choices=("auto", "onnxruntime", "openvino"), default="auto",
                   help="with --exported .onnx: the runtime (auto: as tools/infer.py picks it)")
    args = p.parse_args(argv)
    cli.checkpoint_of(p, args)
    return args


def check_classes(path, recorded, num_classes, dataset, classes):
    """The model's classes must be the data's: same count, and the same names where the
    checkpoint records them (a renamed class folder would silently score 0%)."""
    if len(classes) != num_classes:
        raise cli.UserError("%s has %d classes but the %s data has %d"
                            % (path, num_classes, dataset, len(classes)))
    if recorded and tuple(map(str, recorded)) != tuple(map(str, classes)):
        names, data = tuple(map(str, recorded)), tuple(map(str, classes))
        only_model = [c for c in names if c not in data]
        only_data = [c for c in data if c not in names]
        detail = ("model only: %s; data only: %s" % (", ".join(only_model[:5]) or "-",
                                                      ", ".join(only_data[:5]) or "-")
                  if only_model or only_data else "same names in another order")
        raise cli.UserError("%s was trained on other classes than the %s data has (%s)"
                            % (path, dataset, detail))


def exported_model(path, precision, num_classes, runtime="auto", batch=None):
    """An exported file as the evaluation loop calls a model (MegEngine tensors in and out),
    and its label: the method of an int8 file and, for a .onnx, the runtime that ran it."""
    import megengine as mge

    from deploy.route import NAMES
    from deploy.runtime import open_model

    forced = {} if runtime == "auto" else {"runtime": runtime}
    run = open_model(path, precision=precision, measure=True, batch=batch, **forced)
    int8 = run.metadata.get("int8")  # tools/quantize.py records its method
    label = "int8, %s" % int8 if int8 else precision
    route = getattr(run, "route", None)
    if route:
        label += ", %s (%s)" % (NAMES[route.runtime], route.how)
    for note in run.notes:
        print("note: " + note, file=sys.stderr)
    if run.num_classes not in (None, num_classes):
        raise cli.UserError("%s has %d classes, the checkpoint %d: export it from this "
                            "checkpoint" % (path, run.num_classes, num_classes))

    class Exported:
        def eval(self):
            pass

        def __call__(self, images):
            return mge.tensor(run(images.numpy()))
    return Exported(), label


def main(argv=None):
    args = parse_args(argv)
    use_device(args.device)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    from common.checkpoint import load_checkpoint
    from common.evaluation import evaluate
    from data.loader import make_loader
    from data.sources import Subset
    from data.splits import checkpoint_data, eval_splits
    from model.checkpoint import arch_label, model_from_checkpoint
    from training import fastconv

    checkpoint = load_checkpoint(args.checkpoint)
    model, info = model_from_checkpoint(checkpoint, args.arch, args.checkpoint)
    fastconv.enable(model)  # MegEngine's CPU convs are slow on tiny maps; same outputs
    dataset, size = checkpoint_data(checkpoint, args.dataset, args.data, args.image_size)
    recorded = checkpoint if isinstance(checkpoint, dict) else {}
    if not (args.data or args.dataset or recorded.get("dataset")):
        raise cli.UserError("%s records no data set it was trained on; evaluating it as %s "
                            "needs --data DIR (or name the data with --dataset)"
                            % (args.checkpoint, dataset))
    splits = eval_splits(checkpoint, dataset, args.data, size)  # val/ only; recorded folder
    check_classes(args.checkpoint, recorded.get("classes"), info["num_classes"], dataset,
                  splits.classes)
    if args.exported:
        model, label = exported_model(args.exported, args.precision, info["num_classes"],
                                      args.runtime, args.batch_size)
    val = Subset(splits.val, args.limit) if args.limit else splits.val
    loader, _ = make_loader(val, splits.eval_transform, args.batch_size, shuffle=False,
                            workers=args.workers)
    result = evaluate(model, loader, source=val)
    skipped = ("; %d unreadable skipped" % len(result.skipped)) if result.skipped else ""
    what = ("%s (%s, %s)" % (args.exported, arch_label(info["arch"]), label)
            if args.exported else "%s (%s, %s form)" % (args.checkpoint, arch_label(info["arch"]),
                                                        info["form"]))
    print("%s on %s val (%s, %dx%d%s): top-1 %.2f%%  top-5 %.2f%%  "
          "loss %.4f" % (what, splits.name, cli.count(result.images, "image"), size, size,
                         skipped, result.top1, result.top5, result.loss))
    return 0


if __name__ == "__main__":
    cli.run(main)
