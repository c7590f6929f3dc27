"""Reporting on a search run: history, theta distributions, expected latency per layer, a PNG
chart, and (optionally) the derived network's measured latency next to the table's prediction."""
import logging

import numpy as np

import megengine as mge

from model.derived import build_from_arch, load_arch_file

from .derive import arch_from_choices, softmax
from .latency import LatencyTable, time_modules
from .space import from_dict
from .trainer import load_run

log = logging.getLogger(__name__)


def format_theta(space, probs, lut):
    """One line per layer: shape, top candidate, expected latency, then every probability."""
    names = space.candidates
    width = max(8, max(len(n) for n in names))
    header = "%-5s %-14s %-*s %10s  " % ("layer", "C_in>C_out/s", width, "top", "E[lat]")
    header += " ".join("%*s" % (width, n) for n in names)
    lines = [header]
    for l, (layer, p) in enumerate(zip(space.layers, probs)):
        shape = "%d>%d/%d" % (layer.C_in, layer.C_out, layer.stride)
        lines.append("%-5d %-14s %-*s %10.1f  " % (l, shape, width, names[int(np.argmax(p))],
                                                     float((p * lut.latency[l]).sum()))
                     + " ".join("%*.3f" % (width, v) for v in p))
    return "\n".join(lines)


def plot(space, probs, lut, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 0.45 * len(space.layers) + 2.5),
                               gridspec_kw={"width_ratios": [3, 1]})
    im = a.imshow(probs, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    a.set_xticks(range(len(space.candidates)))
    a.set_xticklabels(space.candidates, rotation=45, ha="right")
    a.set_ylabel("layer")
    if probs.size <= 400:  # small enough to print every probability
        for (l, k), v in np.ndenumerate(probs):
            a.text(k, l, "%.2f" % v, ha="center", va="center", fontsize=7,
                   color="black" if v > 0.5 else "white")
    a.set_title("softmax(theta)")
    fig.colorbar(im, ax=a)
    b.barh(range(len(space.layers)), (probs * lut.latency).sum(axis=1))
    b.invert_yaxis()
    b.set_title("expected latency (%s)" % lut.unit)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def measure_archs(archs, lut, warmup=None, runs=None, seed=0):
    """Median latencies (microseconds) of the deploy-form networks ``archs`` with the table's
    batch and input size, measured like the table's entries (runs interleaved)."""
    m = lut.meta
    x = mge.tensor(np.random.default_rng(seed).standard_normal(
        (m["batch"], 3, m["image_size"], m["image_size"])).astype(np.float32))
    pairs = [(build_from_arch(arch, deploy=True), x) for arch in archs]
    return [s * 1e6 for s in time_modules(pairs, warmup or m["warmup"], runs or m["runs"],
                                          m.get("inner", 1))]


def show(state_path, png, measure=False, arch_path=None):
    state = load_run(state_path)
    space, lut = from_dict(state["space"]), LatencyTable.from_dict(state["lut"])
    probs = softmax(np.asarray(state["supernet"]["theta"], np.float64))
    print("run %s: space %s (hash %s), epoch %d, tau %.4f, best val acc %s"
          % (state_path, space.name, space.hash, state["epoch"], state["tau"],
             "-" if state["best_acc"] is None else "%.4f" % state["best_acc"]))
    print("%-5s %8s %8s %8s %12s %8s %10s %7s" % ("epoch", "w_loss", "w_ce", "th_loss",
                                                   "E[lat]", "val_acc", "argmax_acc", "sec"))
    for r in state["history"]:
        print("%-5d %8.4f %8.4f %8.4f %12.1f %8.4f %10.4f %7.1f" % (
            r["epoch"], r["w_loss"], r["w_ce"], r["theta_loss"], r["expected_latency"],
            r["val_acc"], r["val_acc_argmax"], r["seconds"]))
    print(format_theta(space, probs, lut))
    total = float((probs * lut.latency).sum()) + lut.fixed["stem"] + lut.fixed["head"]
    print("expected latency (softmax(theta), stem %.1f + layers + head %.1f): %.1f %s"
          % (lut.fixed["stem"], lut.fixed["head"], total, lut.unit))
    print("wrote %s" % plot(space, probs, lut, png))
    if measure:
        if lut.unit != "us":
            print("not measured: the table's unit is %s (a cost proxy), not time" % lut.unit)
            return
        arch = (load_arch_file(arch_path) if arch_path
                else arch_from_choices(space, np.argmax(probs, axis=1), lut))
        choices = [space.candidates.index(l["op"]) for l in arch["layers"]]
        predicted = lut.network_latency(choices)
        device = str(mge.get_default_device())
        if device != lut.meta["device"]:
            print("warning: measuring on %s, the table was measured on %s"
                  % (device, lut.meta["device"]))
        measured = measure_archs([arch], lut)[0]
        print(format_measure(" ".join(l["op"] for l in arch["layers"]), predicted, measured))


def format_measure(name, predicted_us, measured_us):
    return ("| network | predicted (LUT) us | measured us | measured / predicted |\n"
            "| --- | ---: | ---: | ---: |\n| %s | %.0f | %.0f | %.3f |"
            % (name, predicted_us, measured_us, measured_us / predicted_us))
