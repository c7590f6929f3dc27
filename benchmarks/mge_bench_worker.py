"""The toolkit's side of benchmarks/bench_deploy.py; runs under .venv/bin/python. One command per
process, started fresh by the benchmark:

    prepare --weights w.pth --arch A --folder F --input x_b1.npy [x_b16.npy ...] --threads T
            --variant OPTIONS:CACHE [...]
        import the .pth through ckpt_converter (deploy form), then export it as tools/export.py
        does (deploy/export.py): one .mge per batch size and variant (dump options, with or
        without the fast-run algorithm cache profiled on that batch) and one .onnx; prints
        {"files": {"<batch>/<variant>": path, "onnx": path}, "used": {"<batch>/<variant>":
        the options in effect (a CPU-specific layout falls back where this CPU cannot run it)}}
    run --model FILE --input x.npy --logits out.npy --threads T --warmup W --runs R
        [--weight-preprocess] [--precision bf16] [--runtime R | --measure]
        open FILE exactly as tools/infer.py does (deploy.runtime.open_model; a .onnx on the
        runtime deploy/route.py picks, measured at first use with --measure, or R), run ``x``
        once (logits written), warm up, time; prints {"seconds": median, "load_s", "first_s",
        "route": the runtime line of a .onnx}
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.timing import add_run_args, time_run  # noqa: E402


def prepare(args):
    from common.device import use_device
    from deploy import dump

    use_device(dump.trace_device(args.threads))
    from ckpt_converter.importer import convert
    from deploy import export, preprocess

    model, _ = convert(args.weights, args.arch, deploy=True)
    model.eval()
    files, used = {}, {}
    for x_file in args.input:
        x = np.load(x_file)
        source = export.Source(model, None, args.arch, preprocess.imagenet_spec(x.shape[-1]))
        for variant in args.variant:
            options, cache = variant.split(":")
            path = os.path.join(args.folder, "%s_b%d_%s_%s.mge" % (
                args.arch, len(x), options, cache))
            written = export.write_mge(source, x, path, options, args.threads, cache == "cache")
            for note in written.notes:
                print("warning: " + note, file=sys.stderr)
            files["%d/%s" % (len(x), variant)] = path
            used["%d/%s" % (len(x), variant)] = written.options
        if "onnx" not in files:
            files["onnx"] = os.path.join(args.folder, "%s.onnx" % args.arch)
            export.write_onnx(source, x, files["onnx"])
        if args.int8 and "int8" not in files:  # calibrated on the benchmark's own inputs
            from quant.onnx_int8 import write_int8_onnx

            files["int8"] = os.path.join(args.folder, "%s_int8.onnx" % args.arch)
            write_int8_onnx(model, files["int8"], [x[i:i + 1] for i in range(len(x))], x,
                            source.metadata(x.shape), threads=args.threads)
    return {"files": files, "used": used}


def run(args):
    from deploy.runtime import open_model

    lite = {"weight_preprocess": True} if args.weight_preprocess else {}
    if args.runtime or args.measure:
        lite.update(runtime=args.runtime, measure=args.measure)
    route = []

    def opened(x):
        model = open_model(args.model, threads=args.threads, precision=args.precision,
                           batch=len(x), **lite)
        route.extend([model.route.line()] if getattr(model, "route", None) else [])
        return lambda: model(x)
    return dict(time_run(args, opened), route=route[0] if route else None)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("prepare")
    pr.add_argument("--weights", required=True)
    pr.add_argument("--arch", required=True)
    pr.add_argument("--folder", required=True)
    pr.add_argument("--input", nargs="+", required=True)
    pr.add_argument("--threads", type=int, required=True)
    pr.add_argument("--variant", nargs="*", default=[])
    pr.add_argument("--int8", action="store_true", help="also a static int8 QDQ .onnx")
    r = sub.add_parser("run")
    r.add_argument("--model", required=True)
    add_run_args(r)
    r.add_argument("--weight-preprocess", action="store_true")
    r.add_argument("--precision", default="fp32")
    r.add_argument("--runtime", help="force the runtime of a .onnx (onnxruntime, openvino)")
    r.add_argument("--measure", action="store_true",
                   help="a .onnx: measure both runtimes at first use, as tools/infer.py does")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    reply = prepare(args) if args.cmd == "prepare" else run(args)
    print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
