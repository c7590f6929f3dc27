"""Export a RepVGG checkpoint for deployment: a MegEngine graph (.mge), ONNX (.onnx) or, for a
binary network, a bit-packed binary model (.bnn), checked.

    .venv/bin/python tools/export.py runs/RepVGG-A0-digits/deploy.pkl --output a0.mge
    .venv/bin/python tools/export.py --load train.pkl --output a0.onnx  # or --format onnx
    .venv/bin/python tools/export.py deploy.pkl --output a0_b16.mge --batch 16
    .venv/bin/python tools/export.py --arch RepVGG-A0 --random-init --output bench.mge  # random
    .venv/bin/python tools/export.py runs/bnn/best.pkl --output bnn.bnn  # binary: XNOR-popcount
    .venv/bin/python tools/export.py train.pkl --output feats.onnx --features 1 2 3  # backbone

A train-form checkpoint is converted to deploy form first (every block fused into one 3x3 conv).
.mge: traced with megengine.jit.trace(symbolic=True, capture_as_const=True) and dumped with
MegEngine's portable inference optimizations (--options; the file runs wherever MegEngine
runs), then profiled once with Lite's fast-run on this machine and dumped again carrying the
algorithm choices, so tools/infer.py starts fast and runs the fastest kernels here
(--no-algo-cache skips this). The choices, and a CPU-specific layout (--options nchw88+fuse,
probed first and dropped with a warning where this CPU cannot run it), are used only on this
CPU; another CPU runs the portable graph. Probing and profiling run in child processes with a
deadline (--timeout). .onnx: written with the onnx package from the deploy-form module tree
(deploy/onnx_export.py), dynamic batch. .bnn (a network with binary convs: BinaryResNet18-*,
an arch.json of binary primitives): weights packed 64 per word, run with XNOR + popcount
(deploy/binary_runtime.py, docs/binary-inference.md); a model without binary layers is refused.

All carry metadata: the preprocessing the checkpoint records (input size, resize, crop,
mean/std: deploy/preprocess.py; ImageNet's, with a note, when it records none), the class names
and the architecture, so tools/infer.py needs no flags. The written file is loaded back with the
runtime that will run it (Lite, ONNX Runtime, the packed kernels) and run on a check batch
(--check-image, or generated images); its output must equal the eager deploy model's, and the
eager train model's for a train-form checkpoint, to float32 rounding (relative difference
<= 1e-5). A .bnn's binary convs must count exactly what the emulation's count (each run on the
input the emulation gave it), its logits agree to 0.2 with the same top-1 (an activation at a
tie, exactly 0 or within rounding of it, may binarize either way: deploy/export.py BNN_TOLERANCE).
Only then is the file moved into place: a failed check or an interrupted export leaves nothing
behind.

--features [I ...] exports the backbone instead (docs/backbone.md): one output per stage index
(none given: 0-4, strides 2 to 32), named stage<i>, each checked; the metadata records each
output's name, channels and stride ("outputs"), and tools/infer.py prints their shapes. Its
.onnx is translated from the traced graph (deploy/onnx_graph.py).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import cli, cpus  # noqa: E402
from errors import UserError  # noqa: E402
from common.device import use_device  # noqa: E402
from deploy import dump  # noqa: E402
from deploy import export as ex  # noqa: E402


def parse_args(argv):
    p = cli.ArgumentParser(__doc__)
    p.add_argument("--arch", help="architecture name (default: the one the checkpoint records)")
    cli.add_checkpoint_argument(p, "checkpoint (train or deploy form)")
    p.add_argument("--random-init", action="store_true",
                   help="no checkpoint: random weights (benchmarks, tests); needs --arch")
    p.add_argument("--num-classes", type=int, default=1000, help="classes with --random-init")
    p.add_argument("--output", required=True, metavar="FILE",
                   help="file to write: .mge (MegEngine), .onnx or .bnn (packed binary)")
    p.add_argument("--format", choices=ex.FORMATS,
                   help="mge, onnx or bnn (default: from the --output suffix)")
    p.add_argument("--batch", type=int, default=1,
                   help="batch size of the exported input and of the fast-run profiling (both "
                        "runtimes also run other batch sizes)")
    p.add_argument("--size", type=int,
                   help="input resolution (default: the one the checkpoint records, else 224)")
    p.add_argument("--options", default=dump.DEFAULT_OPTIONS, choices=list(dump.OPTIONS),
                   help=".mge: none, default and fuse are graph optimizations, portable to "
                        "every CPU; nchw88 and nchw88+fuse add the x86 AVX2 NCHW88 layout, "
                        "used on this CPU only and only if it runs here (deploy/dump.py)")
    p.add_argument("--no-algo-cache", action="store_true",
                   help=".mge: do not profile the algorithms (fast-run) at export time")
    p.add_argument("--timeout", type=cli.number(above=0), metavar="SECONDS",
                   help=".mge: deadline of each child process (layout probe, fast-run "
                        "profiling); default: scaled to the model's forward time")
    p.add_argument("--check-image", nargs="+", metavar="IMAGE",
                   help="images to check the exported graph on (default: generated images)")
    p.add_argument("--threads", type=int, default=cpus.cpu_count(),
                   help="CPU threads for tracing, profiling and the check")
    p.add_argument("--seed", type=int, default=0, help="seed for generated check images")
    p.add_argument("--features", type=int, nargs="*", metavar="I",
                   help="export the backbone: one output per stage index I (none given: all "
                        "five, 0-4)")
    args = p.parse_args(argv)
    if args.random_init and (args.checkpoint or args.checkpoint_arg):
        p.error("--random-init exports random weights; it takes no checkpoint")
    cli.checkpoint_of(p, args, required=not args.random_init)
    for flag in ("batch", "size", "num_classes"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error("--%s must be positive" % flag.replace("_", "-"))
    return args


def main(argv=None):
    args = parse_args(argv)
    cpus.check_threads(args.threads)
    fmt = ex.format_of(args.output, args.format)
    use_device(dump.trace_device(args.threads))
    source = ex.build_model(args.checkpoint, args.arch, args.num_classes, args.size)
    if args.features is not None:
        if fmt == "bnn":
            raise UserError("--features exports a backbone as .mge or .onnx, not .bnn")
        source = ex.features_source(source, args.features or None)
    if fmt == "bnn":  # nothing to pack: refused before anything else is said or done
        from deploy.binary_export import check_binary

        check_binary(source.deploy)
    if not args.checkpoint:
        print("warning: exporting randomly initialised weights (for benchmarks and tests "
              "only, not for predictions)", file=sys.stderr)
    if source.spec_note:
        print("note: " + source.spec_note, file=sys.stderr)
    x = ex.check_batch(source.spec, args.batch, args.check_image, args.seed)
    exported = ex.export(source, args.output, fmt, x, args.options, args.threads,
                         algo_cache=not args.no_algo_cache, deadline=args.timeout)
    written = exported.written
    for note in written.notes if fmt == "mge" else []:
        print("warning: " + note, file=sys.stderr)
    for r in exported.checks:
        print("check %-32s max relative difference %.2e, top-1 agreement %.0f%%"
              % (r.name, r.max_rel, 100 * r.top1_agree))
    for out in source.outputs or ():
        print("output %-8s %4d channels, stride %d" % (out["name"], out["channels"],
                                                       out["reduction"]))
    if fmt == "bnn":
        how = "%d packed binary layers, 64-bit words" % written.binary_layers
    elif fmt == "mge":
        how = "options %s%s" % (written.options, ", fast-run algorithm cache for this CPU"
                                if written.algo_cache else "")
    else:
        how = "ONNX opset %d" % _opset()
    print("exported %s (%s form in, %s, input %dx3x%dx%d, preprocessing %s) -> %s (%.1f MB)"
          % (source.arch, "train" if source.train is not None else "deploy", how, args.batch,
             source.spec.size, source.spec.size, source.spec.name, args.output,
             os.path.getsize(args.output) / 1e6))
    return 0


def _opset():
    from deploy.onnx_export import OPSET

    return OPSET


if __name__ == "__main__":
    cli.run(main)
