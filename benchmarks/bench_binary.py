"""Packed binary inference (.bnn) against its float emulation and a float network of the same
shapes, side by side, each path alone in a fresh process.

    .venv/bin/python benchmarks/bench_binary.py  # 224x224 ResNet-18s, batch 1 and 16
    .venv/bin/python benchmarks/bench_binary.py --quick  # 2 minutes: 64x64, batch 1, one round

Networks (random weights; BatchNorm statistics measured on generated images and perturbed,
``model.parity.randomize_batchnorm``, as a trained network's are: an untrained BN leaves
activations at exact ties that only rounding binarizes):

- ``BinaryResNet18-awnas`` and ``BinaryResNet18-bmxnet`` (docs/binary.md, "Binary ResNet-18") at
  --size;
- ``searched``: an architecture file of the ``binary_resnet18`` search space (CIFAR-sized,
  32x32; ``search.derive.arch_from_choices``) mixing the primitives xnor_resnet_block,
  bireal_resnet_block, xnor_conv_3x3_cond_skip, xnor_vgg_block and xnor_skip_connect.

Paths: ``packed``: the .bnn that tools/export.py writes, opened as tools/infer.py opens it
(XNOR-popcount kernels of deploy/bitops.py; the float stem as one ONNX Runtime session, the rest
numba, deploy/binary_runtime.py); ``emulation``: the same checkpoint in MegEngine,
eager (model/binary: binarize, then a float conv); ``emulation-mge``: the emulation traced and
dumped to .mge (tools/export.py --no-algo-cache) under MegEngine Lite; ``float-onnx``: the float
twin under ONNX Runtime: the same network with every binary 3x3 conv replaced by a float 3x3
conv-BN-ReLU of the same shape (``conv_k3`` layers of an arch.json: for the ResNet-18s the
awnas stem's two 3x3 convs and the 16 body convs, i.e. a ResNet-18-shaped plain float network
without its three 1x1 shortcut convs and residual adds; for the searched network each binary
conv likewise and xnor_skip_connect as the FBNet ``skip``), exported with tools/export.py
(deploy/onnx_export.py). The twin has other weights, so its logits are not compared.

Timing: every measurement is a fresh process (this script with --worker) started with a
deadline (common.children), which loads its file, runs --warmup untimed passes and --runs timed
ones and reports the median. Rounds are interleaved (each round runs every path once, the order
rotated by one per round); reported: the median over rounds, in ms per batch and images/s.
Before any timing, each path's logits on one input are compared: packed against the eager
emulation (as tools/export.py checks a .bnn: within 0.2 of the largest logit and the same top-1,
bar near-ties; reported: the largest difference and how many images are off by more than 1e-4,
i.e. met an activation at a tie that the two paths' float rounding binarized differently), and
the .mge emulation against the eager one (the same rule: MegEngine's two paths of the one
emulation round differently and meet such ties too); a mismatch stops the benchmark. The export
itself checks every packed binary conv against the emulation's counts exactly (its check lines
are printed). Sizes: each file on disk, and the binary layers' weights packed (bits +
scales) against their float32 latent weights.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common import children, cli  # noqa: E402
from common.cpus import cpu_count, cpu_name, simd_level, threads_arg  # noqa: E402
from errors import UserError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.abspath(__file__)
EXPORT = os.path.join(ROOT, "tools", "export.py")
MODELS = ("BinaryResNet18-awnas", "BinaryResNet18-bmxnet", "searched")
PATHS = {
    "packed": "packed .bnn, XNOR-popcount (ours)",
    "emulation": "float emulation, MegEngine eager",
    "emulation-mge": "float emulation, .mge under MegEngine Lite",
    "float-onnx": "float twin (same conv shapes), ONNX Runtime",
}
# as tools/export.py checks a .bnn's logits (deploy.export.BNN_TOLERANCE: a sign flip at a tie
# moves them by a few 1e-2; the exact per-conv check is tools/export.py's, printed below)
PACKED_TOLERANCE = 0.2
TIGHT = 1e-4              # a sample within this is free of flips
# the emulation's two MegEngine paths (eager, .mge under Lite) round differently too, and so
# meet the same flips (7e-3 seen at 224x224, batch 16)
MGE_TOLERANCE = PACKED_TOLERANCE
CLASSES = 1000
SEARCHED_SIZE = 32        # the binary_resnet18 search space's input size
# one choice per layer of the binary_resnet18 space (candidates: xnor_resnet_block,
# bireal_resnet_block, xnor_vgg_block, xnor_conv_3x3_cond_skip, xnor_skip_connect); no VGG block
# at a reduction, so every binary conv has a float twin of the same shape
SEARCHED_CHOICES = (0, 3, 1, 2, 4, 0, 1, 3)
AWNAS_CELLS = ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1))


# -- the networks (in a child: MegEngine is never imported by the parent) --------------------
def searched_arch():
    from search.derive import arch_from_choices
    from search.space import get_space

    return arch_from_choices(get_space("binary_resnet18"), SEARCHED_CHOICES)


def twin_arch(name, size):
    """The float twin: an arch.json of plain 3x3 conv-BN-ReLU layers, one per binary conv."""
    if name == "searched":
        arch = searched_arch()
        layers = []
        for layer in arch["layers"]:
            c_in, c_out, s = layer["C_in"], layer["C_out"], layer["stride"]
            op = layer["op"]
            if op == "xnor_skip_connect":
                layers.append(dict(op="skip", C_in=c_in, C_out=c_out, stride=s))
                continue
            layers.append(dict(op="conv_k3", C_in=c_in, C_out=c_out, stride=s))
            if op.endswith("resnet_block"):
                layers.append(dict(op="conv_k3", C_in=c_out, C_out=c_out, stride=1))
        return dict(arch, space="float twin of searched", layers=layers, num_classes=CLASSES)
    layers = [dict(op="conv_k3", C_in=64, C_out=64, stride=2)]  # the awnas stem's second conv
    c_in = 64
    for c_out, s in AWNAS_CELLS:
        layers += [dict(op="conv_k3", C_in=c_in, C_out=c_out, stride=s),
                   dict(op="conv_k3", C_in=c_out, C_out=c_out, stride=1)]
        c_in = c_out
    return {"format": "repvgg-search-arch/1", "space": "ResNet-18-shaped float twin",
            "image_size": size, "num_classes": CLASSES, "stem": {"channels": 64, "stride": 2},
            "layers": layers, "head": {"channels": 0}}


def prepare(name, size, folder, seed=0):
    """Write ``name``'s checkpoint (BN statistics randomized) and its twin's arch.json; returns
    the binary layers' weight bytes, packed and float32."""
    from common.checkpoint import save_checkpoint
    from common.device import use_device
    from deploy import preprocess
    from deploy.binary_export import build_program
    from model.checkpoint import build_model, checkpoint_dict, numpy_state_dict
    from model.parity import calibration_inputs, randomize_batchnorm

    import megengine as mge

    use_device("cpu")
    mge.random.seed(seed)
    rng = np.random.default_rng(seed)
    arch = searched_arch() if name == "searched" else name
    net = build_model(arch, CLASSES)
    randomize_batchnorm(net, rng, calibration_inputs(rng, (2, 3, size, size)))
    save_checkpoint(checkpoint_dict(numpy_state_dict(net), arch, "train",
                                    preprocess=preprocess.imagenet_spec(size).to_dict()),
                    os.path.join(folder, "model.pkl"))
    with open(os.path.join(folder, "twin.json"), "w") as f:
        json.dump(twin_arch(name, size), f)
    program = build_program(net)
    return dict(program.binary_weights, layers=program.binary_layers)


# -- one measurement (a child) ----------------------------------------------------------------
def open_path(path, files, threads):
    """``fn(x) -> logits`` for one path."""
    if path == "emulation":
        from common.device import use_device
        from common.checkpoint import load_checkpoint
        from model.checkpoint import model_from_checkpoint

        import megengine as mge

        use_device("cpu%d" % threads if threads > 1 else "cpu")
        net, _ = model_from_checkpoint(load_checkpoint(files["ckpt"]))
        net.eval()
        return lambda x: net(mge.tensor(x)).numpy()
    from deploy import runtime

    key = {"packed": "bnn", "emulation-mge": "mge", "float-onnx": "onnx"}[path]
    return runtime.open_model(files[key], threads=threads)


def worker(args):
    from common.timing import interleaved_medians

    files = json.loads(args.files)
    run = open_path(args.worker, files, args.threads)
    x = np.random.default_rng(args.seed).standard_normal(
        (args.batch[0], 3, args.size, args.size)).astype(np.float32)
    if args.logits:
        np.save(args.logits, run(x))
    seconds = interleaved_medians({"m": lambda: run(x)}, args.warmup, args.runs)["m"]
    print(json.dumps({"median_s": seconds}))
    return 0


# -- the profile (--profile; children) -------------------------------------------------------
def _median_ms(fn, warmup, runs):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def profile_packed(args):
    """Per step of the opened .bnn: median ms (a binary conv's packing and kernel apart), and
    the shapes of its 3x3 binary convs for the float comparison."""
    from deploy.binary_runtime import BinaryModel

    files = json.loads(args.files)
    model = BinaryModel(files["bnn"], threads=args.threads)
    if model._steps is None or model._prefix is None:
        raise UserError("the packed model runs without its fused steps or ONNX Runtime stem")
    x = np.random.default_rng(args.seed).standard_normal(
        (args.batch[0], 3, args.size, args.size)).astype(np.float32)
    rows = [("float conv (stem, ONNX Runtime)", "stem", _median_ms(
        lambda: model._start(x), args.warmup, args.runs))]
    values, _ = model._start(x)
    shapes = []
    for step, done in zip(model._steps, model._step_free):
        xs = [values[v] for v in step.inputs]
        if step.parts:
            pack, kernel = step.parts
            packed = pack(xs)
            rows.append(("packing (+ BN in)", step.label, _median_ms(
                lambda: pack(xs), args.warmup, args.runs)))
            rows.append(("binary conv 3x3", step.label, _median_ms(
                lambda: kernel(packed, xs), args.warmup, args.runs)))
            shapes.append([step.label, list(xs[0].shape), int(step.run(*xs).shape[-1]),
                           int(step.label.split(" s")[1].split()[0]), rows[-1][2]])
        else:
            rows.append((step.kind, step.label, _median_ms(lambda: step.run(*xs), args.warmup,
                                                           args.runs)))
        values[step.out] = step.run(*xs)
        for v in done:
            if v != model.output:
                del values[v]
    total = _median_ms(lambda: model(x), args.warmup, args.runs)
    print(json.dumps({"rows": rows, "convs": shapes, "total": total}))
    return 0


def profile_float(args):
    """ONNX Runtime's time for a float 3x3 conv (pad 1) of each shape given."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    out = []
    rng = np.random.default_rng(0)
    for label, (n, h, w, c), o, stride, _ in json.loads(args.files):
        weight = numpy_helper.from_array(rng.standard_normal((o, c, 3, 3)).astype(np.float32),
                                         "w")
        bias = numpy_helper.from_array(np.zeros(o, np.float32), "b")
        graph = helper.make_graph(
            [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3],
                              pads=[1, 1, 1, 1], strides=[stride, stride])], "conv",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, c, h, w])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight, bias])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        out.append(_median_ms(lambda: session.run(None, {"x": x}), args.warmup, args.runs))
    print(json.dumps(out))
    return 0


def run_profile(name, args, scratch):
    """Where a packed network's time goes, per op kind and per layer, and each 3x3 binary conv
    against the same-shape float conv under ONNX Runtime (its own process)."""
    files, _ = prepare_model(name, args.size, os.path.join(scratch, name),
                             dict_args(args, paths=["packed"]))
    for batch in args.batch:
        cmd = [HERE, "--profile-worker", "packed", "--files", json.dumps(files), "--size",
               args.size, "--batch", batch, "--threads", args.threads, "--runs", args.runs,
               "--warmup", args.warmup]
        said = json.loads(child(cmd, args.deadline, "profile (batch %d)" % batch)
                          .strip().splitlines()[-1])
        cmd[2], cmd[4] = "float", json.dumps(said["convs"])
        floats = json.loads(child(cmd, args.deadline, "float convs (batch %d)" % batch)
                            .strip().splitlines()[-1])
        rows, total = said["rows"], said["total"]
        summed = sum(r[2] for r in rows)
        print("\n### %s (%dx%d), batch %d, %d threads: %.2f ms per batch (the steps timed "
              "one by one sum to %.2f ms)" % (name, args.size, args.size, batch, args.threads,
                                              total, summed))
        kinds = {}
        for kind, _, ms in rows:
            kinds[kind] = kinds.get(kind, 0.0) + ms
        print("\n| op kind | ms | share |\n| --- | ---: | ---: |")
        for kind, ms in sorted(kinds.items(), key=lambda kv: -kv[1]):
            print("| %s | %.3f | %.0f %% |" % (kind, ms, 100 * ms / summed))
        binary = kinds.get("binary conv 3x3", 0.0) + kinds.get("binary conv (other)", 0.0)
        floaty = kinds.get("float conv (stem, ONNX Runtime)", 0.0) + kinds.get("float conv", 0.0)
        print("\nshares: binary convs %.0f %%, float layers (stem, shortcuts) %.0f %%, glue "
              "(packing, BN, adds, pools, concat, head) %.0f %%" % (
                  100 * binary / summed, 100 * floaty / summed,
                  100 * (summed - binary - floaty) / summed))
        print("\n| layer | kind | ms |\n| --- | --- | ---: |")
        for kind, label, ms in rows:
            print("| %s | %s | %.3f |" % (label, kind, ms))
        print("\n| binary 3x3 conv (input NHWC) | packed kernel ms | float 3x3 conv, ONNX "
              "Runtime ms | float / binary |\n| --- | ---: | ---: | ---: |")
        for (label, shape, o, stride, ms), fms in zip(said["convs"], floats):
            print("| %s %s | %.3f | %.3f | %.1fx |" % (label, "x".join(map(str, shape)), ms,
                                                       fms, fms / ms))


# -- the parent -------------------------------------------------------------------------------
def child(cmd, deadline, what):
    proc = children.run([sys.executable, *map(str, cmd)], deadline, what, check=True,
                        capture_output=True, text=True, cwd=ROOT)
    return proc.stdout


def export(ckpt_or_arch, out, size, extra, deadline, random_init=False):
    """tools/export.py; returns its "check ..." lines."""
    source = (["--arch", ckpt_or_arch, "--random-init", "--num-classes", CLASSES] if random_init
              else ["--load", ckpt_or_arch])
    said = child([EXPORT, *source, "--output", out, "--size", size, "--threads", 2, *extra],
                 deadline, "tools/export.py %s" % os.path.basename(out))
    return [line for line in said.splitlines() if line.startswith("check ")]


def prepare_model(name, size, folder, args):
    os.makedirs(folder, exist_ok=True)
    weights = json.loads(child([HERE, "--prepare", name, "--size", size, "--dir", folder],
                               args.deadline, "preparing %s" % name).strip().splitlines()[-1])
    files = {k: os.path.join(folder, v) for k, v in (
        ("ckpt", "model.pkl"), ("bnn", "model.bnn"), ("mge", "model.mge"),
        ("onnx", "twin.onnx"), ("twin", "twin.json"))}
    weights["checks"] = export(files["ckpt"], files["bnn"], size, ["--batch", 4],
                               args.deadline)
    if "emulation-mge" in args.paths:
        export(files["ckpt"], files["mge"], size, ["--no-algo-cache"], args.deadline)
    if "float-onnx" in args.paths:
        export(files["twin"], files["onnx"], size, [], args.deadline, random_init=True)
    return files, weights


def measure(path, files, size, batch, args, logits=None):
    cmd = [HERE, "--worker", path, "--files", json.dumps(files), "--size", size, "--batch",
           batch, "--threads", args.threads, "--runs", args.runs, "--warmup", args.warmup]
    if logits:
        cmd += ["--logits", logits]
    out = child(cmd, args.deadline, "%s worker (batch %d)" % (path, batch))
    return json.loads(out.strip().splitlines()[-1])["median_s"]


def compare_logits(ref, out, tolerance, what):
    """``(max relative difference, samples off by more than TIGHT)``; ``UserError`` beyond
    ``tolerance`` or on a top-1 disagreement that is no near-tie."""
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    scale = max(np.abs(ref).max(), 1e-30)
    per_sample = np.abs(ref - out).max(axis=1) / scale
    rel = float(per_sample.max())
    agree = ref.argmax(1) == out.argmax(1)
    top2 = np.sort(ref, axis=1)[:, -2:]
    ties = (top2[:, 1] - top2[:, 0]) <= 2 * np.abs(ref - out).max()
    if rel > tolerance or not (agree | ties).all():
        raise UserError("%s: logits differ from the eager emulation's (max relative difference "
                        "%.2e > %.0e, top-1 agreement %.0f%%)" % (what, rel, tolerance,
                                                                  100 * agree.mean()))
    return rel, int((per_sample > TIGHT).sum()), float(agree.mean())


def mb(path):
    return os.path.getsize(path) / 1e6 if os.path.exists(path) else float("nan")


def run_model(name, args, scratch):
    size = SEARCHED_SIZE if name == "searched" else args.size
    files, weights = prepare_model(name, size, os.path.join(scratch, name), args)
    label = "%s (%dx%d)" % (name, size, size)
    print("\n## %s" % label)
    print("binary layers: %d; their weights packed (bits + scales) %.2f MB vs float32 %.2f MB: "
          "%.1fx smaller" % (weights["layers"], weights["packed"] / 1e6,
                             weights["float32"] / 1e6, weights["float32"] / weights["packed"]))
    for line in weights["checks"]:
        print("tools/export.py (4 images): " + line)
    print("files: checkpoint %.1f MB, .bnn %.1f MB%s%s" % (
        mb(files["ckpt"]), mb(files["bnn"]),
        ", emulation .mge %.1f MB" % mb(files["mge"]) if "emulation-mge" in args.paths else "",
        ", float twin .onnx %.1f MB" % mb(files["onnx"]) if "float-onnx" in args.paths else ""))
    rows = []
    for batch in args.batch:
        logits = {}
        for path in [p for p in args.paths if p != "float-onnx"]:
            out = os.path.join(scratch, "%s-%s-%d.npy" % (name, path, batch))
            measure(path, files, size, batch, dict_args(args, runs=1, warmup=0), out)
            logits[path] = np.load(out)
        checks = []
        if "packed" in logits and "emulation" in logits:
            rel, off, agree = compare_logits(logits["emulation"], logits["packed"],
                                             PACKED_TOLERANCE, "%s packed, batch %d"
                                             % (name, batch))
            checks.append("packed vs eager emulation: max relative difference %.1e, top-1 "
                          "agreement %.0f%%, %d of %d images beyond %.0e (a sign flip at a tie)"
                          % (rel, 100 * agree, off, batch, TIGHT))
        if "emulation-mge" in logits and "emulation" in logits:
            rel, off, agree = compare_logits(logits["emulation"], logits["emulation-mge"],
                                             MGE_TOLERANCE, "%s .mge emulation, batch %d"
                                             % (name, batch))
            checks.append(".mge vs eager emulation: %.1e, top-1 agreement %.0f%%, %d of %d "
                          "images beyond %.0e" % (rel, 100 * agree, off, batch, TIGHT))
        print("batch %d logits: %s" % (batch, "; ".join(checks) or "-"))
        times = {p: [] for p in args.paths}
        for r in range(args.rounds):
            order = args.paths[r % len(args.paths):] + args.paths[:r % len(args.paths)]
            for path in order:
                times[path].append(measure(path, files, size, batch, args))
        rows.append((batch, {p: statistics.median(t) for p, t in times.items()},
                     {p: (min(t), max(t)) for p, t in times.items()}))
    return label, rows


class dict_args:
    """``args`` with some values replaced."""

    def __init__(self, args, **override):
        self.__dict__.update(vars(args), **override)


def print_table(label, rows, paths):
    print("\n| %s | batch | ms / batch (median) | img/s | spread (ms) | packed is ... x faster |"
          % label)
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for batch, med, spread in rows:
        for p in paths:
            ratio = ("" if p == "packed" or "packed" not in med
                     else "%.1f" % (med[p] / med["packed"]))
            print("| %s | %d | %.2f | %.1f | %.2f-%.2f | %s |" % (
                PATHS[p], batch, 1e3 * med[p], batch / med[p], 1e3 * spread[p][0],
                1e3 * spread[p][1], ratio))


def parse_args(argv):
    p = cli.ArgumentParser(__doc__)
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                   help="networks to benchmark (the two ResNet-18s and the searched one)")
    p.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS),
                   help="inference paths: " + "; ".join("%s = %s" % kv for kv in PATHS.items()))
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16],
                   help="batch sizes, one table row each")
    p.add_argument("--size", type=int, default=224, help="input size of the ResNet-18s")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds over the paths (the median is reported)")
    p.add_argument("--runs", type=int, default=5, help="timed passes per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed passes before the timed ones")
    p.add_argument("--threads", type=threads_arg, default=cpu_count(),
                   help="CPU threads of every path")
    p.add_argument("--deadline", type=float, default=900.0,
                   help="seconds each child process may take")
    p.add_argument("--quick", action="store_true",
                   help="64x64, batch 1, one round of 3 runs: a smoke run")
    p.add_argument("--keep", metavar="DIR", help="write the files here and keep them")
    p.add_argument("--profile", action="store_true",
                   help="instead of the table: where the packed path's time goes, per op kind "
                   "and layer, and each 3x3 binary conv against the same-shape float conv "
                   "under ONNX Runtime")
    p.add_argument("--profile-worker", choices=["packed", "float"], help=argparse.SUPPRESS)
    # internal: the child processes
    p.add_argument("--worker", choices=list(PATHS), help=argparse.SUPPRESS)
    p.add_argument("--prepare", choices=MODELS, help=argparse.SUPPRESS)
    p.add_argument("--files", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    p.add_argument("--logits", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.rounds, args.runs, args.warmup = 64, [1], 1, 3, 1
    if min(args.batch) < 1 or args.size < 32 or args.rounds < 1 or args.runs < 1:
        p.error("--batch and --rounds/--runs must be positive, --size at least 32")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.profile_worker:
        return (profile_packed if args.profile_worker == "packed" else profile_float)(args)
    if args.prepare:
        print(json.dumps(prepare(args.prepare, args.size, args.dir)))
        return 0
    import numba

    print("# Packed binary inference vs float emulation vs a float twin")
    print("CPU: %s, %s; %d threads; numba %s" % (cpu_name(), simd_level(), args.threads,
                                                 numba.__version__))
    print("command: python benchmarks/bench_binary.py %s" % " ".join(argv or sys.argv[1:]))
    print("rounds %d, %d timed runs (+%d warm-up) per measurement, each in a fresh process"
          % (args.rounds, args.runs, args.warmup))
    start = time.time()
    scratch = args.keep or tempfile.mkdtemp(prefix="bench_binary.")
    try:
        if args.profile:
            for name in [m for m in args.models if m != "searched"]:
                run_profile(name, args, scratch)
            return 0
        results = [run_model(name, args, scratch) for name in args.models]
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    for label, rows in results:
        print_table(label, rows, args.paths)
    print("\n(%.0f s)" % (time.time() - start))
    return 0


if __name__ == "__main__":
    cli.run(main)
