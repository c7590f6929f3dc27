"""The README's int8 table: accuracy of PTQ / QAT int8 against float, SQNR on imported weights,
and the speed of every int8 artifact next to its float version.

    python benchmarks/bench_int8.py accuracy --load runs/RepVGG-A0-digits/deploy.pkl
    python benchmarks/bench_int8.py accuracy --load runs/QARepVGG-A0-cifar10/deploy.pkl \\
        --calib ./shapes10
    python benchmarks/bench_int8.py imported --arch RepVGG-A0      # official-layout .pth import
    python benchmarks/bench_int8.py speed --arch RepVGG-A0 --batch 1 16

accuracy  one checkpoint, every route through tools/quantize.py (each in its own process):
          PTQ .mge (with and without cross-layer equalization), PTQ .onnx, QAT .mge and the
          QAT-fine-tuned weights as .onnx. Prints one markdown row per route: top-1 of float and
          int8 on the val split, their difference, top-1 agreement and logit SQNR. (QAT also
          trains: its float reference is the fine-tuned float model, its int8 top-1 is also
          given against the original float.)
imported  a RepVGG with random weights and non-trivial BN statistics, written as an official
          PyTorch .pth by ckpt_converter.export_pth, imported back with ckpt_converter, and
          quantized (.mge, .onnx) at --size, calibrated on generated images: logit SQNR and
          top-1 agreement with float. No real ImageNet weights exist on this machine; the
          numbers say how well the quantizers track these weights, not ImageNet accuracy.
speed     float .mge (MegEngine Lite), int8 .mge (Lite), float .onnx and int8 QDQ .onnx (ONNX
          Runtime) of one architecture at --size, per batch size; the float files are
          tools/export.py's (its best dump options and fast-run algorithm cache). Each
          measurement is a fresh process running one artifact alone, opened as tools/infer.py
          opens it (warm-up, then --runs timed passes, median); --rounds rounds go through the
          artifacts in turn (interleaved) and the median over rounds is reported. Outputs
          are compared first (int8 vs its float version: SQNR).
"""
import json
import os
import statistics
import sys
import tempfile
import time
import warnings

warnings.filterwarnings("ignore", message="The value of the smallest subnormal")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from common import children, cli  # noqa: E402
from errors import UserError  # noqa: E402
from quant import QAT_EPOCHS, QAT_LR  # noqa: E402

TOOL_DEADLINE_S = 4 * 3600  # one tool run: quantization-aware fine-tuning takes the longest


def tool(*args):
    """Run a project tool in its own process; raise with its error line if it fails."""
    what = " ".join(map(str, args[:2]))
    proc = children.run([sys.executable, *map(str, args)], TOOL_DEADLINE_S, what=what, cwd=ROOT,
                        capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError("%s failed: %s" % (what, children.last_line(proc)))
    return proc.stdout


def quantize(load, out, tmp, *extra):
    report = os.path.join(tmp, os.path.basename(out) + ".json")
    tool("tools/quantize.py", "--load", load, "-o", out, "--report", report, "--no-progress",
         *extra)
    with open(report) as f:
        return json.load(f)


def pct(v):
    return "–" if v is None else "%.2f" % (100 * v)


def accuracy(args, tmp):
    calib = ["--calib", args.calib] if args.calib else []
    common = calib + ["--calib-images", args.calib_images, "--check-images", args.check_images]
    qat = ["--qat", "--epochs", args.qat_epochs, "--lr", args.qat_lr,
           "--max-steps-per-epoch", args.max_steps_per_epoch]
    routes = [
        ("PTQ, MegEngine int8 (.mge), equalized", "ptq.mge", []),
        ("PTQ, MegEngine int8 (.mge), not equalized", "ptq_noeq.mge", ["--no-equalize"]),
        ("PTQ, ONNX Runtime QDQ (.onnx), per-channel", "ptq.onnx", []),
        ("QAT %s ep., MegEngine int8 (.mge)" % args.qat_epochs, "qat.mge", qat),
        ("QAT %s ep. weights, ONNX Runtime QDQ (.onnx)" % args.qat_epochs, "qat.onnx", qat),
    ]
    print("%s (%s)\n" % (args.load, args.calib or "built-in digits"))
    print("| route | float top-1 | int8 top-1 | Δ points | top-1 agreement | logit SQNR (dB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = []
    for name, out, extra in routes:
        r = quantize(args.load, os.path.join(tmp, out), tmp, *(common + extra))
        ref = r.get("vs_finetuned_float", r)
        note = "" if ref is r else " (float = fine-tuned; original float %s)" % pct(r["float_top1"])
        delta = (None if r["int8_top1"] is None
                 else "%+.2f" % (100 * (ref["int8_top1"] - ref["float_top1"])))
        print("| %s%s | %s | %s | %s | %.2f%% | %.1f |" % (
            name, note, pct(ref["float_top1"]), pct(ref["int8_top1"]), delta or "–",
            100 * ref["top1_agreement"], ref["sqnr_db"]))
        rows.append(dict(r, route=name))
    return rows


def image_folder(folder, count, size, seed=0):
    """``count`` generated RGB images (data/shapes10.py, upscaled to ``size``) as PNG files."""
    from PIL import Image

    from data.shapes10 import generate

    os.makedirs(folder, exist_ok=True)
    images, _ = generate(count, seed)
    for i, image in enumerate(images):
        Image.fromarray(image).resize((size, size), Image.BILINEAR).save(
            os.path.join(folder, "%04d.png" % i))
    return folder


def official_checkpoint(arch, tmp, seed=0):
    """Random-weight ``arch`` -> official-layout .pth -> imported MegEngine checkpoint path."""
    from ckpt_converter import convert, export_pth
    from common.checkpoint import save_checkpoint
    from common.device import use_device
    from model import get_model
    from model.checkpoint import checkpoint_dict, numpy_state_dict
    from model.parity import randomize_batchnorm, sample_inputs

    use_device("cpu")
    rng = np.random.default_rng(seed)
    net = get_model(arch)
    randomize_batchnorm(net, rng, sample_inputs(rng, (8, 3, 64, 64)))
    pth = os.path.join(tmp, "official.pth")
    export_pth(numpy_state_dict(net), pth)
    imported, report = convert(pth, arch)
    path = os.path.join(tmp, "imported.pkl")
    save_checkpoint(checkpoint_dict(numpy_state_dict(imported), arch, report["form"]), path)
    return path


def imported(args, tmp):
    ckpt = official_checkpoint(args.arch, tmp)
    folder = image_folder(os.path.join(tmp, "images"), args.images, args.size)
    print("%s, random weights through an official-layout .pth, %dx%d, %d generated images\n"
          % (args.arch, args.size, args.size, args.images))
    print("| route | top-1 agreement | logit SQNR (dB) |")
    print("| --- | --- | --- |")
    rows = []
    for name, out, extra in [("PTQ .mge, equalized", "imp.mge", []),
                             ("PTQ .mge, not equalized", "imp_noeq.mge", ["--no-equalize"]),
                             ("PTQ .onnx, per-channel", "imp.onnx", [])]:
        r = quantize(ckpt, os.path.join(tmp, out), tmp, "--calib", folder, "--calib-images",
                     args.images // 2, "--check-images", args.images, "--image-size", args.size,
                     *extra)
        print("| %s | %.2f%% | %.1f |" % (name, 100 * r["top1_agreement"], r["sqnr_db"]))
        rows.append(dict(r, route=name))
    return rows


def time_artifact(path, batch, size, runs, threads):
    """In this process: open ``path`` (.mge with Lite, .onnx with ONNX Runtime), return
    (median seconds per batch, logits of the fixed check input)."""
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    from deploy.runtime import open_model

    forward = open_model(path, threads)  # as tools/infer.py opens it
    out = forward(x)
    forward(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        forward(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def speed(args, tmp):
    from common.cpus import cpu_count

    threads = args.threads or cpu_count()
    ckpt = official_checkpoint(args.arch, tmp)
    folder = image_folder(os.path.join(tmp, "images"), args.images, args.size)
    calib = ["--calib", folder, "--calib-images", args.images, "--check-images", 8,
             "--image-size", args.size]
    arts = {"float .mge (Lite)": os.path.join(tmp, "float.mge"),
            "int8 .mge (Lite)": os.path.join(tmp, "int8.mge"),
            "float .onnx (ORT)": os.path.join(tmp, "float.onnx"),
            "int8 .onnx (ORT)": os.path.join(tmp, "int8.onnx")}
    tool("tools/export.py", "--load", ckpt, "--output", arts["float .mge (Lite)"], "--size",
         args.size)
    quantize(ckpt, arts["int8 .mge (Lite)"], tmp, *calib)
    quantize(ckpt, arts["int8 .onnx (ORT)"], tmp, *calib)
    tool("tools/export.py", "--load", ckpt, "--output", arts["float .onnx (ORT)"], "--size",
         args.size)
    print("%s at %dx%d, %d threads, %d rounds x %d runs (median of round medians)\n"
          % (args.arch, args.size, args.size, threads, args.rounds, args.runs))
    print("| artifact | batch | ms / batch | images / s | vs float | SQNR vs float (dB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    rows = []
    for batch in args.batch:
        medians = {name: [] for name in arts}
        outputs = {}
        for _ in range(args.rounds):
            for name, path in arts.items():
                line = tool(__file__, "_time", path, "--batch", batch, "--size", args.size,
                            "--runs", args.runs, "--threads", threads).strip().splitlines()[-1]
                result = json.loads(line)
                medians[name].append(result["seconds"])
                outputs[name] = np.asarray(result["logits"])
        from quant.metrics import sqnr_db
        for name in arts:
            sec = statistics.median(medians[name])
            fl = name.replace("int8", "float")
            base = statistics.median(medians[fl])
            rel = "" if fl == name else "%.2fx" % (base / sec)
            q = "" if fl == name else "%.1f" % sqnr_db(outputs[fl], outputs[name])
            print("| %s | %d | %.1f | %.1f | %s | %s |" % (name, batch, 1e3 * sec, batch / sec,
                                                           rel, q))
            rows.append({"artifact": name, "batch": batch, "seconds": sec})
    return rows


def parse_args(argv):
    p = cli.ArgumentParser(__doc__)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{accuracy,imported,speed}")
    a = sub.add_parser("accuracy", help="float vs PTQ vs QAT top-1 of one checkpoint",
                       formatter_class=cli.HelpFormatter)
    a.add_argument("--load", required=True, help="float checkpoint (train.py's deploy.pkl)")
    a.add_argument("--calib", help="its data folder (CIFAR batches, ...); default digits")
    a.add_argument("--calib-images", type=cli.integer(min=1), default=512,
                   help="images to calibrate on")
    a.add_argument("--check-images", type=cli.integer(min=1), default=2000,
                   help="held-out (val split) images the rows are measured on")
    a.add_argument("--qat-epochs", type=cli.integer(min=1), default=QAT_EPOCHS,
                   help="QAT fine-tuning epochs")
    a.add_argument("--qat-lr", type=cli.number(above=0), default=QAT_LR,
                   help="QAT peak learning rate (cosine to 0)")
    a.add_argument("--max-steps-per-epoch", type=cli.integer(min=0), default=0,
                   help="cap on QAT steps per epoch (0 = the whole train split)")
    i = sub.add_parser("imported", help="SQNR on an imported official-layout checkpoint",
                       formatter_class=cli.HelpFormatter)
    s = sub.add_parser("speed", help="int8 artifacts next to their float versions",
                       formatter_class=cli.HelpFormatter)
    for q in (i, s):
        q.add_argument("--arch", default="RepVGG-A0", help="registered architecture")
        q.add_argument("--size", type=cli.integer(min=8), default=224,
                       help="input resolution (square)")
        q.add_argument("--images", type=cli.integer(min=1), default=64,
                       help="generated calibration images")
    s.add_argument("--batch", type=cli.integer(min=1), nargs="+", default=[1, 16],
                   help="batch sizes, each measured separately")
    s.add_argument("--rounds", type=cli.integer(min=1), default=5,
                   help="interleaved rounds over the artifacts; the median is reported")
    s.add_argument("--runs", type=cli.integer(min=1), default=10,
                   help="timed passes per artifact per round (after a warm-up)")
    s.add_argument("--threads", type=cli.integer(min=0), default=0, help="0 = all cores")
    for q in (a, i, s):
        q.add_argument("--json", help="also write the rows as JSON")
    w = sub.add_parser("_time")  # internal: one artifact, one process
    w.add_argument("path")
    w.add_argument("--batch", type=int, required=True)
    w.add_argument("--size", type=int, required=True)
    w.add_argument("--runs", type=int, required=True)
    w.add_argument("--threads", type=int, required=True)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.cmd == "_time":
        seconds, logits = time_artifact(args.path, args.batch, args.size, args.runs,
                                        args.threads)
        print(json.dumps({"seconds": seconds, "logits": logits.tolist()}))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        rows = {"accuracy": accuracy, "imported": imported, "speed": speed}[args.cmd](args, tmp)
    if args.json:
        from common.atomic import write_json
        write_json(rows, args.json)
    return 0


if __name__ == "__main__":
    cli.run(main)
