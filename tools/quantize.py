"""Quantize a trained RepVGG / QARepVGG checkpoint to int8: a MegEngine .mge or an ONNX file.

    .venv/bin/python tools/quantize.py runs/RepVGG-A0-digits/deploy.pkl -o a0_int8.mge
    .venv/bin/python tools/quantize.py --load best.pkl --calib ./cifar-10-batches-py -o a0_int8.onnx
    .venv/bin/python tools/quantize.py best.pkl --qat -o a0_qat_int8.mge

Post-training quantization (default): the deploy form is calibrated on --calib-images images
(--calib: a CIFAR batch folder, an ImageNet-style folder, or any folder of images; omitted, the
built-in digits, for a checkpoint trained on them only), prepared with the checkpoint's own
preprocessing (one that records no data set, such as an import of the official .pth, is
ImageNet at 224, as in tools/eval.py and tools/predict.py), then
  .mge   MegEngine int8 (megengine.quantization; per-tensor weight scales after cross-layer
         equalization, see quant/equalize.py), dumped and checked with MegEngine Lite;
  .onnx  static QDQ int8 with per-channel weights (onnxruntime.quantization), run by ONNX
         Runtime or OpenVINO: whichever tools/infer.py runs it on here (deploy/route.py), and
         the written file is checked through that route (--runtime: another).
--qat fine-tunes the deploy form with BN re-inserted and fake quantization (the official RepVGG
QAT recipe, quant/qat.py) on the --calib data's train split before converting; --save-float
keeps the fine-tuned float weights as a deploy-form checkpoint.

The report compares the int8 model with the float model on held-out images (the val split):
top-1 agreement, logit SQNR (10 log10 of signal over error power), and top-1 accuracy of both
when labels are known; a logit SQNR below 8 dB adds one warning line (quant/metrics.py). The
output is written only after it loaded and ran (atomically).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import cli  # noqa: E402
from common.cpus import cpu_count, threads_arg  # noqa: E402
from common.device import use_device  # noqa: E402
from errors import UserError  # noqa: E402
from quant import QAT_EPOCHS, QAT_LR  # noqa: E402

FORMATS = (".mge", ".onnx")


def parse_args(argv):
    from quant.ptq import DEFAULT_OBSERVER, OBSERVERS

    p = cli.ArgumentParser(__doc__)
    cli.add_checkpoint_argument(p, "float checkpoint (train or deploy form) of a RepVGG / "
                                "QARepVGG")
    p.add_argument("--arch", help="architecture (default: the one the checkpoint records)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.mge|OUT.onnx",
                   help="int8 model to write; the suffix picks the format")
    p.add_argument("--calib", "--calib-data", metavar="DIR",
                   help="calibration (and with --qat, fine-tuning) data; default: the built-in "
                        "digits for a digits checkpoint; required for any other")
    p.add_argument("--image-size", type=cli.integer(min=1),
                   help="input resolution (default: what the checkpoint records; 224 with "
                        "ImageNet preprocessing for checkpoints that record nothing)")
    p.add_argument("--calib-images", type=cli.integer(min=1), default=512,
                   help="images to calibrate on")
    p.add_argument("--check-images", type=cli.integer(min=1), default=1000,
                   help="held-out images to compare float and int8 on")
    p.add_argument("--observer", choices=sorted(OBSERVERS), default=DEFAULT_OBSERVER,
                   help="activation range observer for the .mge (see quant/ptq.py)")
    p.add_argument("--no-equalize", dest="equalize", action="store_false",
                   help=".mge: skip cross-layer equalization (per-tensor weight scales as is)")
    p.add_argument("--batch-size", type=cli.integer(min=1), default=64,
                   help="images per calibration / fine-tuning batch")
    g = p.add_argument_group("quantization-aware training")
    g.add_argument("--qat", action="store_true", help="fine-tune with fake quantization first")
    g.add_argument("--epochs", type=cli.integer(min=1), default=QAT_EPOCHS, help="QAT epochs")
    g.add_argument("--lr", type=cli.number(above=0), default=QAT_LR, help="QAT peak learning rate "
                   "(cosine to 0)")
    g.add_argument("--max-steps-per-epoch", type=cli.integer(min=0), default=0,
                   help="cap on QAT steps per epoch (0 = the whole train split)")
    g.add_argument("--save-float", metavar="PKL",
                   help="also write the QAT-fine-tuned float weights (deploy form)")
    p.add_argument("--report", metavar="JSON", help="also write the comparison as JSON")
    p.add_argument("--threads", type=threads_arg, default=cpu_count(), help="CPU threads")
    p.add_argument("--runtime", choices=("auto", "onnxruntime", "openvino"), default="auto",
                   help=".onnx: the runtime the written file is checked through (auto: the one "
                        "tools/infer.py picks for it on this CPU)")
    p.add_argument("--seed", type=int, default=0, help="seed for picking images and QAT")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars")
    args = p.parse_args(argv)
    cli.checkpoint_of(p, args)
    if os.path.splitext(args.output)[1].lower() not in FORMATS:
        raise UserError("-o must end in .mge or .onnx (it picks the format), got %s"
                        % args.output)
    if args.save_float and not args.qat:
        raise UserError("--save-float keeps QAT-fine-tuned weights; it needs --qat")
    return args


def data_for(args, source):
    """(CalibrationData, kind, preprocessing transform)"""
    from data.transforms import Preprocess
    from deploy.preprocess import spec_of_checkpoint
    from quant.calibdata import data_kind, load_calibration

    recorded = source.dataset
    spec, note = spec_of_checkpoint(source.checkpoint, args.image_size)
    if args.calib is None and recorded != "digits":
        # Only the built-in digits are at hand; calibrating any other model on them (or on
        # made-up images) would fix its int8 ranges on the wrong inputs, silently.
        if recorded is None:
            raise UserError("%s records no data set, so it is taken as ImageNet at %d (as "
                            "eval.py and predict.py do); pass --calib DIR with images of the "
                            "data it was trained on (an ImageNet-style folder or any folder "
                            "of images)" % (args.checkpoint, spec.size))
        raise UserError("%s was trained on %s; pass --calib DIR with images of that data "
                        "(the built-in digits would calibrate it on the wrong images)"
                        % (args.checkpoint, recorded))
    if note:
        print("note: " + note, file=sys.stderr)
    kind = data_kind(args.calib, recorded)
    data = load_calibration(args.calib, Preprocess(spec), recorded, args.calib_images,
                            args.check_images, args.batch_size, args.seed, spec.size)
    if data.labels is not None and len(data.labels) and data.labels.max() >= \
            source.info["num_classes"]:
        raise UserError("%s has labels up to %d but the model has %d classes"
                        % (args.calib or "the built-in digits", data.labels.max(),
                           source.info["num_classes"]))
    return data, kind, spec


def qat_chain(args, source, data, kind, spec):
    """Fine-tune with fake quantization; returns the trained QAT chain."""
    import numpy as np

    from data.loader import make_loader
    from data.splits import load_splits
    from quant import qat

    if kind == "files":
        raise UserError("--qat needs labelled data: a CIFAR or ImageNet-style folder, or the "
                        "built-in digits (%s is a plain folder of images)" % args.calib)
    import megengine as mge
    np.random.seed(args.seed)
    mge.random.seed(args.seed)
    splits = load_splits(kind, args.calib, spec.size)
    loader = make_loader(splits.train, splits.train_transform, args.batch_size, shuffle=True,
                         seed=args.seed, drop_last=True)
    steps = len(loader[1])
    if args.max_steps_per_epoch:
        steps = min(steps, args.max_steps_per_epoch)
    chain = qat.prepare(source.layers, source.linear, data.calib)
    history = qat.finetune(chain, loader, steps, args.epochs, args.lr,
                           check=(data.check, data.labels), progress=args.progress)
    for epoch, (loss, top1) in enumerate(history, 1):
        print("qat epoch %d/%d: train loss %.4f, fake-quantized top-1 %.2f%%"
              % (epoch, args.epochs, loss, 100 * top1))
    return chain


def file_metadata(source, spec, x, method):
    """What tools/export.py records in a model file (tools/infer.py reads it), plus the int8
    method."""
    classes = source.checkpoint.get("classes")
    classes = [str(c) for c in classes] if classes and len(classes) == \
        source.info["num_classes"] else None
    return {"arch": str(source.info["arch"]), "classes": classes,
            "preprocess": spec.to_dict(), "input_shape": [1] + list(x.shape[1:]),
            "form_in": source.info["form"], "int8": method}


def float_deploy(source, layers, linear):
    """A deploy-form model of the source's architecture holding ``layers`` / ``linear``."""
    from model.checkpoint import build_model, load_weights
    from quant.network import deploy_state_dict

    model = build_model(source.info["arch"], source.info["num_classes"], deploy=True)
    load_weights(model, deploy_state_dict(layers, linear), "fine-tuned weights")
    model.eval()
    return model


def main(argv=None):
    args = parse_args(argv)
    from deploy.dump import trace_device
    use_device(trace_device(args.threads))
    import megengine as mge

    from quant import equalize, metrics, network, ptq
    from quant.pipeline import load_float, logits

    from quant.calibdata import check_folder
    check_folder(args.calib)  # before the model is loaded: a wrong path fails at once
    source = load_float(args.checkpoint, args.arch)
    data, kind, spec = data_for(args, source)
    print(data.description)
    float_logits = logits(lambda b: source.deploy(mge.tensor(b)).numpy(), data.check)
    fmt = os.path.splitext(args.output)[1].lower()
    layers, linear = source.layers, source.linear
    int8 = None
    if args.qat:
        chain = qat_chain(args, source, data, kind, spec)
        if fmt == ".mge":
            int8 = ptq.to_int8(chain)
        layers, linear = network.folded_layers(chain, layers)
        if args.save_float:
            from common.checkpoint import save_checkpoint
            from model.checkpoint import checkpoint_dict, metadata_of, numpy_state_dict
            fine = float_deploy(source, layers, linear)
            save_checkpoint(checkpoint_dict(numpy_state_dict(fine), source.info["arch"],
                                            "deploy", **dict(metadata_of(source.checkpoint),
                                                             qat_epochs=args.epochs)),
                            args.save_float)
            print("fine-tuned float weights -> %s" % args.save_float)
    elif fmt == ".mge":
        if args.equalize:
            layers, linear = equalize.equalize(layers, linear)
        int8 = ptq.calibrate(network.QuantChain(layers, linear), data.calib, args.observer,
                             progress=args.progress)

    method = "QAT %s" % cli.count(args.epochs, "epoch") if args.qat else "PTQ"
    metadata = file_metadata(source, spec, data.check[0], method)
    if fmt == ".mge":
        from quant.mge_int8 import write_int8_mge
        write_int8_mge(int8, args.output, data.check[0], threads=args.threads,
                       metadata=metadata)
        int8_logits = logits(lambda b: int8(mge.tensor(b)).numpy(), data.check)
        route = "MegEngine Lite"
    else:
        from deploy.route import NAMES
        from deploy.runtime import open_model
        from quant.onnx_int8 import write_int8_onnx
        model = source.deploy if not args.qat else float_deploy(source, layers, linear)
        write_int8_onnx(model, args.output, data.calib, data.check[0], metadata,
                        threads=args.threads)
        forced = {} if args.runtime == "auto" else {"runtime": args.runtime}
        check = open_model(args.output, args.threads, measure=True, **forced)
        route = "%s, %s" % (NAMES[check.route.runtime], check.route.how)
        int8_logits = logits(check, data.check)
    result = metrics.agreement(float_logits, int8_logits, data.labels)
    print(result.describe("int8 (%s, %s, %s)" % (fmt[1:], method, route)))
    report = dict(vars(result), output=args.output, method=method, format=fmt[1:], route=route,
                  arch=str(source.info["arch"]))
    closest = result
    if args.qat:  # the weights moved: compare with the fine-tuned float model as well
        tuned = float_deploy(source, layers, linear)
        tuned_logits = logits(lambda b: tuned(mge.tensor(b)).numpy(), data.check)
        closest = vs_tuned = metrics.agreement(tuned_logits, int8_logits, data.labels)
        print(vs_tuned.describe("int8", "fine-tuned float"))
        report["vs_finetuned_float"] = vars(vs_tuned)
    # QAT moves the logits away from the original float by design (docs/int8.md): its file is
    # judged against the network it trained, the fine-tuned float
    report["warning"] = metrics.low_sqnr_warning(closest)
    if report["warning"]:
        print(report["warning"], file=sys.stderr)
    print("wrote %s (%.2f MB)" % (args.output, os.path.getsize(args.output) / 1e6))
    if args.report:
        from common.atomic import write_json
        write_json(report, args.report)
    return 0


if __name__ == "__main__":
    cli.run(main)
