"""Reporting on a search run: history, theta distributions, expected latency per layer, a PNG
chart, and (optionally) the derived network's measured latency next to the table's prediction:
measured in the table's runtime (exported to its format and timed alone in child processes,
``runtime_timing.network_times``; an ``eager`` table in MegEngine eager, as it was measured).
``report`` returns the lines; printing them is the command line's (search.py show).
``comparison_lines`` is the predicted-vs-measured report shared with benchmarks/bench_search.py."""
import logging

import numpy as np

import megengine as mge

from common.atomic import atomic_path
from common.numeric import softmax
from model.derived import build_from_arch, load_arch_file

from .derive import arch_from_choices
from .latency import LatencyTable, time_modules
from .runtime_timing import RUNTIME_NAMES, network_times
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
    with atomic_path(path) as tmp:  # a folder, device or unwritable path: one line
        fig.savefig(tmp, dpi=100, format="png")
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


def arch_choices(arch, space, what="the architecture"):
    """Candidate index per layer of ``arch`` in ``space``; ``UserError`` when ``arch`` was not
    derived from this space (its table cannot predict it)."""
    from errors import UserError

    layers = arch.get("layers", [])
    ops = [l.get("op") for l in layers]
    if (arch.get("space_hash", space.hash) != space.hash or len(layers) != len(space.layers)
            or any(op not in space.candidates for op in ops)):
        raise UserError("%s was not derived from this run's space %s (hash %s; candidates %s): "
                        "its latency cannot be predicted from this run's table; measure an "
                        "arch.json of this run" % (what, space.name, space.hash,
                                                   ",".join(space.candidates)))
    return [space.candidates.index(op) for op in ops]


def report(state_path, png, measure=False, arch_path=None):
    """The lines of ``search.py show`` (history, softmax(theta) per layer, expected latency;
    with ``measure``, the derived network's measured latency); writes the PNG chart."""
    lines = []
    state = load_run(state_path)
    space, lut = from_dict(state["space"]), LatencyTable.from_dict(state["lut"])
    given = load_arch_file(arch_path) if measure and arch_path else None
    if given is not None:
        arch_choices(given, space, arch_path)  # refused before anything is written
    probs = softmax(np.asarray(state["supernet"]["theta"], np.float64))
    lines.append("run %s: space %s (hash %s), epoch %d, tau %.4f, best val acc %s"
          % (state_path, space.name, space.hash, state["epoch"], state["tau"],
             "-" if state["best_acc"] is None else "%.4f" % state["best_acc"]))
    lines.append("%-5s %8s %8s %8s %12s %8s %10s %7s" % ("epoch", "w_loss", "w_ce", "th_loss",
                                                   "E[lat]", "val_acc", "argmax_acc", "sec"))
    for r in state["history"]:
        theta = r["theta_loss"]  # NaN in a warm-up epoch: theta was not trained
        lines.append("%-5d %8.4f %8.4f %8s %12.1f %8.4f %10.4f %7.1f" % (
            r["epoch"], r["w_loss"], r["w_ce"], "-" if theta != theta else "%.4f" % theta,
            r["expected_latency"], r["val_acc"], r["val_acc_argmax"], r["seconds"]))
    lines.append(format_theta(space, probs, lut))
    total = float((probs * lut.latency).sum()) + lut.fixed["stem"] + lut.fixed["head"]
    lines.append("expected latency (softmax(theta), stem %.1f + layers + head %.1f): %.1f %s"
          % (lut.fixed["stem"], lut.fixed["head"], total, lut.unit))
    lines.append("wrote %s" % plot(space, probs, lut, png))
    if measure:
        if lut.unit != "us":
            lines.append("not measured: the table's unit is %s (a cost proxy), not time" % lut.unit)
            return lines
        arch = given or arch_from_choices(space, np.argmax(probs, axis=1), lut)
        choices = arch_choices(arch, space, arch_path or "the argmax architecture")
        predicted = lut.network_latency(choices)
        lines += measure_lines(lut, [arch], [predicted],
                               [" ".join(l["op"] for l in arch["layers"])])
    return lines


def measure_archs_in_runtime(archs, lut, rounds=3, progress=None):
    """Median latencies (us) of ``archs`` in the runtime ``lut`` was measured in, with its
    thread count, batch, warm-up and runs."""
    m = lut.meta
    if lut.runtime == "eager":
        return measure_archs(archs, lut)
    return network_times(archs, lut.runtime, m.get("threads"), m.get("batch", 1),
                         m.get("warmup", 5), m.get("runs", 30), rounds, progress=progress)[0]


def measure_lines(lut, archs, predicted, names, rounds=3):
    """Measure ``archs`` where ``lut`` was measured and compare them with ``predicted``."""
    from common.cpus import cpu_name

    lines = []
    if lut.runtime == "eager":
        device = str(mge.get_default_device())
        if device != lut.meta.get("device"):
            lines.append("warning: measuring on %s, the table was measured on %s"
                         % (device, lut.meta.get("device")))
    elif lut.meta.get("cpu") not in (None, cpu_name()):
        lines.append("warning: measuring on %s, the table was measured on %s"
                     % (cpu_name(), lut.meta["cpu"]))
    measured = measure_archs_in_runtime(archs, lut, rounds)
    lines.append("measured in %s, %s threads" % (RUNTIME_NAMES.get(lut.runtime, lut.runtime),
                                                 lut.meta.get("threads")))
    return lines + comparison_lines(names, predicted, measured)


def kendall_tau(a, b):
    """Kendall's tau-b of two sequences (ties counted neither way)."""
    concordant = discordant = ties_a = ties_b = 0
    n = len(a)
    for i in range(n):
        for j in range(i + 1, n):
            da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                concordant += 1
            else:
                discordant += 1
    pairs = concordant + discordant
    denom = np.sqrt((pairs + ties_a) * (pairs + ties_b))
    return float((concordant - discordant) / denom) if denom else float("nan")


def comparison_lines(names, predicted, measured):
    """The predicted-vs-measured table, ``median |measured/predicted - 1|: X %`` and, for two
    networks or more, ``Kendall tau (predicted vs measured): Y``."""
    lines = ["| network | predicted us | measured us | measured / predicted |",
             "| --- | ---: | ---: | ---: |"]
    for name, p, m in zip(names, predicted, measured):
        lines.append("| %s | %.1f | %.1f | %.3f |" % (name, p, m, m / p))
    errors = [abs(m / p - 1) for p, m in zip(predicted, measured)]
    lines.append("median |measured/predicted - 1|: %.1f %%" % (100 * float(np.median(errors))))
    if len(predicted) > 1:
        lines.append("Kendall tau (predicted vs measured): %.2f"
                     % kendall_tau(list(predicted), list(measured)))
    return lines


def format_measure(name, predicted_us, measured_us):
    return ("| network | predicted (LUT) us | measured us | measured / predicted |\n"
            "| --- | ---: | ---: | ---: |\n| %s | %.0f | %.0f | %.3f |"
            % (name, predicted_us, measured_us, measured_us / predicted_us))
