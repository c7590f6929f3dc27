"""The toolkit's side of tools/bench_deploy.py; runs under .venv/bin/python. One command per
process, started fresh by the benchmark:

    prepare --weights w.pth --arch A --folder F --input x_b1.npy [x_b16.npy ...] --threads T
            --variant OPTIONS:CACHE [...]
        import the .pth through ckpt_converter (deploy form), then export it as tools/export.py
        does (deploy/export.py): one .mge per batch size and variant (dump options, with or
        without the fast-run algorithm cache profiled on that batch) and one .onnx; prints
        {"files": {"<batch>/<variant>": path, "onnx": path}}
    run --model FILE --input x.npy --logits out.npy --threads T --warmup W --runs R
        [--weight-preprocess]
        open FILE exactly as tools/infer.py does (deploy.runtime.open_model), run ``x`` once
        (logits written), warm up, time; prints {"seconds": median, "load_s", "first_s"}
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.timing import interleaved_medians  # noqa: E402


def prepare(args):
    from common.device import use_device
    from deploy import dump

    use_device(dump.trace_device(args.threads))
    from ckpt_converter.importer import convert
    from deploy import export, preprocess

    model, _ = convert(args.weights, args.arch, deploy=True)
    model.eval()
    files = {}
    for x_file in args.input:
        x = np.load(x_file)
        source = export.Source(model, None, args.arch, preprocess.imagenet_spec(x.shape[-1]))
        for variant in args.variant:
            options, cache = variant.split(":")
            path = os.path.join(args.folder, "%s_b%d_%s_%s.mge" % (
                args.arch, len(x), options, cache))
            export.write_mge(source, x, path, options, args.threads, cache == "cache")
            files["%d/%s" % (len(x), variant)] = path
        if "onnx" not in files:
            files["onnx"] = os.path.join(args.folder, "%s.onnx" % args.arch)
            export.write_onnx(source, x, files["onnx"])
    return {"files": files}


def run(args):
    from deploy.runtime import open_model

    x = np.load(args.input)
    start = time.perf_counter()
    lite = {"weight_preprocess": True} if args.weight_preprocess else {}
    model = open_model(args.model, threads=args.threads, **lite)
    load = time.perf_counter() - start
    np.save(args.logits, np.asarray(model(x), np.float32))
    first = time.perf_counter() - start - load
    seconds = interleaved_medians({"run": lambda: model(x)}, args.warmup, args.runs)["run"]
    return {"seconds": seconds, "load_s": load, "first_s": first}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("prepare")
    pr.add_argument("--weights", required=True)
    pr.add_argument("--arch", required=True)
    pr.add_argument("--folder", required=True)
    pr.add_argument("--input", nargs="+", required=True)
    pr.add_argument("--threads", type=int, required=True)
    pr.add_argument("--variant", nargs="*", default=[])
    r = sub.add_parser("run")
    r.add_argument("--model", required=True)
    r.add_argument("--input", required=True)
    r.add_argument("--logits", required=True)
    r.add_argument("--threads", type=int, required=True)
    r.add_argument("--warmup", type=int, default=2)
    r.add_argument("--runs", type=int, default=5)
    r.add_argument("--weight-preprocess", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    reply = prepare(args) if args.cmd == "prepare" else run(args)
    print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
