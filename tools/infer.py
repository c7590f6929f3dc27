"""Classify images with an exported model (.mge, .onnx or .bnn from tools/export.py), without
the model code; or time it (--benchmark).

    .venv/bin/python tools/infer.py a0.mge cat.jpg dog.png
    .venv/bin/python tools/infer.py a0.onnx photos/*.jpg --top 3
    .venv/bin/python tools/infer.py a0.mge photos/  # a folder: its images, recursively, sorted
    .venv/bin/python tools/infer.py a0.mge --benchmark --batch 16 --runs 20  # last: "<N> img/s"
    .venv/bin/python tools/infer.py a0.onnx cat.jpg --precision bf16  # bfloat16 (OpenVINO), opt-in
    .venv/bin/python tools/infer.py a0_int8.onnx --benchmark  # int8 (tools/quantize.py), as it is
    .venv/bin/python tools/infer.py a0_int8.onnx cat.jpg --runtime onnxruntime  # force a runtime
    .venv/bin/python tools/infer.py bnn.bnn cat.jpg  # a binary network, XNOR-popcount (numba)

A .mge runs under MegEngine Lite (with the fast-run algorithm cache and layout recorded at export
time when this is the CPU that exported it; on another CPU its portable graph runs untuned, said
in a note), a .onnx under ONNX Runtime or OpenVINO (below), a .bnn (a binary network) with the
bit-packed kernels of deploy/bitops.py; nothing from the project's model/ package is imported. Each image is prepared
with the preprocessing recorded in the model (deploy/preprocess.py: resize the shorter
side, centre crop, the training run's mean/std; ImageNet's, with a note, for a model that records
none), so the answer is tools/predict.py's on the checkpoint it was exported from. Class names
come from the model (recorded at export), else --labels, else class indices are printed.

Images go through the model --batch at a time; the last batch is padded to the same size (padded
rows dropped), so one input shape is prepared, once (a .mge tuned with fast-run profiles its
algorithms for each new shape; a note says so before the first batch when that happens).

A .onnx runs on whichever of ONNX Runtime and OpenVINO is faster for its precision on this CPU
(deploy/route.py): float32, bf16 (--precision bf16: OpenVINO only) or int8 (a QDQ file from
tools/quantize.py, run as int8 as it is). At first use of a model of 0.2 GMACs per image or more,
both runtimes time it (each in its own process, a few seconds), and the choice is cached per CPU,
file, batch and thread count in ~/.cache/repvgg-megengine/runtime-choice.json; otherwise a rule
decides: int8 on OpenVINO where the CPU has VNNI or AMX int8 instructions, else ONNX Runtime;
float32 on ONNX Runtime. --runtime forces one. One line names the runtime and why: with
--benchmark on stdout, before the timings; when classifying, a note on stderr for an int8 or
bf16 model (a float32 model on ONNX Runtime, the default of every export's check, prints none).

--benchmark times the model exactly as classification runs it (same runtime and settings) on
random input of the exported size: the first call timed alone (it prepares the input shape: what
the first batch of a classification waits for), --warmup - 1 more untimed runs, then the median
of --runs. The batch is checked against the limits (--max-memory, --max-batch) before it is
allocated.
"""
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common import cli, cpus, limits  # noqa: E402
from common import numeric  # noqa: E402
from common.inputs import expand_images  # noqa: E402
from common.timing import interleaved_medians  # noqa: E402
from deploy import preprocess, runtime  # noqa: E402
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


def batches(spec, paths, batch_size, limits=None):
    """Yields ``(chunk of paths, batch)``: the images of each chunk prepared with ``spec``, the
    last chunk padded with zero images to ``batch_size`` rows, so that every call runs one input
    shape (a .mge tuned with fast-run profiles its algorithms again for each new shape: a last
    batch of 3 after batches of 4 cost seconds). The caller drops the padded rows."""
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        x = np.stack([preprocess.preprocess_image(p, spec, limits=limits) for p in chunk])
        if len(chunk) < batch_size:
            x = np.concatenate([x, np.zeros((batch_size - len(chunk),) + x.shape[1:], x.dtype)])
        yield chunk, x


def shape_note(args, model, batch):
    """A note when the first call prepares a new input shape (fast-run profiling, which a .mge
    tuned on this CPU does for a batch it was not exported with), or None."""
    if getattr(model, "fastrun", False) and batch != model.input_shape[0]:
        return ("%s was tuned for batch %d; preparing it for batch %d first (MegEngine profiles "
                "its algorithms once per input shape; this can take a while)"
                % (args.model, model.input_shape[0], batch))
    return None


def classify(model, spec, paths, batch_size, k, limits=None, notes=()):
    """Yields ``(path, [(class, probability), ...])``, batch by batch; ``notes`` are printed
    once the first batch is read, before the first call (an unreadable first image stays the
    only line)."""
    for chunk, x in batches(spec, paths, batch_size, limits):
        print_notes(notes)
        notes = ()
        yield from zip(chunk, numeric.top_k(model(x)[:len(chunk)], k))


def print_notes(notes):
    for note in notes:
        print("note: " + note, file=sys.stderr)
    sys.stderr.flush()


def print_features(model, spec, paths, batch_size, notes, limits=None):
    """Each output's shape per image for a model whose metadata records its ``outputs`` (a
    backbone: one feature map per stage)."""
    outputs = model.metadata["outputs"]
    for chunk, x in batches(spec, paths, batch_size, limits):
        print_notes(notes)  # after the first batch was read: an error stays the only line
        notes = []
        arrays = model.run_all(x)
        for i, path in enumerate(chunk):
            print(path)
            for out, array in zip(outputs, arrays):
                print("  %-10s %s (stride %s)" % (out.get("name"), "x".join(
                    map(str, array[i].shape)), out.get("reduction")))


def benchmark(model, batch, warmup, runs, seed=0):
    """``(seconds of the first call, images per second)`` of ``model`` on random input: the
    first call (where a new input shape is prepared: what classifying the first batch waits
    for) timed alone, as one of the ``warmup`` calls; then the median of ``runs`` timed calls."""
    x = np.random.default_rng(seed).standard_normal(
        (batch,) + tuple(model.input_shape[1:])).astype(np.float32)
    start = time.perf_counter()
    model(x)
    first = time.perf_counter() - start
    seconds = interleaved_medians({"model": lambda: model(x)}, max(warmup - 1, 0),
                                  runs)["model"]
    return first, batch / seconds


def check_batch(path, model, batch, limits):
    """Refuse a batch that passes the budgets before any of it is allocated: with what the
    file declares per image where its loader recorded it (``model.budget``), else the batch
    and its input alone."""
    budget = getattr(model, "budget", None)
    if budget:
        limits.check(path, batch=batch, **budget)
    else:
        limits.check(path, batch=batch, activations=4 * math.prod(model.input_shape[1:]))


def route_options(args):
    """``open_model``'s ``runtime`` for --runtime (auto: none; a .mge or .bnn takes none)."""
    return {} if args.runtime == "auto" else {"runtime": args.runtime}


def parse_args(argv):
    p = cli.ArgumentParser(__doc__)
    p.add_argument("model", metavar="MODEL", help="exported model (.mge, .onnx or .bnn)")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files, or folders (their image files, recursively, "
                   "sorted)")
    p.add_argument("--labels", metavar="FILE", help="class names, one per line (default: the "
                   "names recorded in the model, else class indices)")
    p.add_argument("--top", type=int, default=5, help="how many classes to print per image")
    p.add_argument("--batch", type=int, default=0,
                   help="images per forward pass (0: the batch size the model was exported with)")
    p.add_argument("--threads", type=int, default=cpus.cpu_count(),
                   help="CPU threads (at most %d x the CPU count)" % cpus.MAX_THREADS_PER_CPU)
    p.add_argument("--precision", choices=runtime.PRECISIONS, default="fp32",
                   help="bf16: run a .onnx in bfloat16 through OpenVINO, on CPUs with bf16 "
                        "instructions (avx512_bf16, amx_bf16): faster, logits about 1e-2 off "
                        "float32 (opt-in; the README has its accuracy). int8: insist that the "
                        ".onnx is an int8 file (one runs as int8 without it)")
    p.add_argument("--runtime", choices=("auto",) + runtime.RUNTIMES, default="auto",
                   help="the runtime of a .onnx (auto: the faster one here, see above)")
    p.add_argument("--benchmark", action="store_true",
                   help="time the model on random input instead of classifying images")
    p.add_argument("--runs", type=int, default=20, help="timed runs with --benchmark")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs first with --benchmark "
                   "(the first is timed alone and printed: it prepares the input shape)")
    limits.add_arguments(p)
    args = p.parse_args(argv)
    if args.top < 1 or args.batch < 0 or args.runs < 1 or args.warmup < 0:
        p.error("--top and --runs must be positive, --batch and --warmup non-negative")
    if not args.benchmark and not args.images:
        p.error("give image files, or --benchmark")
    if args.benchmark and args.images:
        p.error("--benchmark takes no images")
    return args


def main(argv=None):
    args = parse_args(argv)
    cpus.check_threads(args.threads)
    args.images = expand_images(args.images)  # before the model loads: a typo fails at once
    budgets = limits.from_args(args)
    model = runtime.open_model(args.model, threads=args.threads, precision=args.precision,
                               limits=budgets, measure=True, batch=args.batch or None,
                               **route_options(args))
    batch = args.batch or model.input_shape[0]
    check_batch(args.model, model, batch, budgets)
    route = getattr(model, "route", None)
    if args.benchmark:
        print_notes(model.notes + [n for n in [shape_note(args, model, batch)] if n])
        print("%s: batch %d, %d threads, median of %d runs" % (args.model, batch, args.threads,
                                                             args.runs))
        if route:
            print(route.line())
        first, speed = benchmark(model, batch, max(args.warmup, 1), args.runs)
        print("first call %.3f s (prepares batch %d)" % (first, batch))
        print("%.2f img/s" % speed)
        return 0
    spec, note = runtime.spec_of(model)
    if spec.size != model.input_shape[-1] or model.input_shape[-2] != model.input_shape[-1]:
        raise UserError("%s takes %dx%d input but its recorded preprocessing gives %dx%d images"
                        % (args.model, model.input_shape[-2], model.input_shape[-1], spec.size,
                           spec.size))
    if not getattr(model, "fastrun", False):  # else padding is cheaper than a new shape
        batch = min(batch, len(args.images))
    notes = model.notes + [n for n in (note, shape_note(args, model, batch)) if n]
    if route and (route.precision != "fp32" or route.runtime != "onnxruntime"):
        notes.append(route.line())
    if model.metadata.get("outputs"):  # a features model (tools/export.py --features)
        print_features(model, spec, args.images, batch, notes, budgets)
        return 0
    if args.labels:
        labels = read_labels(args.labels, model.num_classes)
    else:
        labels = model.metadata.get("classes")
    for path, top in classify(model, spec, args.images, batch, args.top, budgets, notes):
        print(path)
        for rank, (index, prob) in enumerate(top, 1):
            name = labels[index] if labels else "class %d" % index
            print("  %d. %-40s %6.2f%%" % (rank, name, 100 * prob))
    return 0


if __name__ == "__main__":
    cli.run(main)
