"""The latency table measured in the runtime a derived network ships in: ``.onnx`` (ONNX
Runtime), ``.mge`` (MegEngine Lite) or ``.bnn`` (the packed binary runtime).

Every entry is a difference of two whole exported files, each a small ``DerivedNet`` written
exactly as ``tools/export.py`` writes a searched network (same exporter, same writer):

- the *context* of layer ``l``: a stem 3 -> ``C_in`` (3x3 conv-BN-ReLU, stride 1) at the
  layer's input size, global pooling and the classifier;
- the *probe* of candidate ``k`` at layer ``l``: the same with the candidate between the stem
  and the pooling.

``entry[l][k] = t(probe) - t(context)`` (clipped at 0: an identity ``skip`` costs nothing).
What a file pays once per call (the runtime's session run, the input check and copy, layout
changes, pooling and classifier) is in both terms and cancels, so the entries add up. The fixed
part is timed whole: ``stem`` is the space's own stem with pooling and classifier (so it carries
the per-call cost the whole network pays once), ``head`` the 1x1 head conv as a difference like
the entries (0 when the space has none). A network is predicted as ``stem + sum(entries) +
head``. docs/search.md compares this with timing candidates alone minus an identity graph.

All files are timed in one child process (``search/timing_worker.py``: rounds interleaved in a
shuffled order, medians) that runs only the runtime, with a fixed thread count.
"""
import json
import os
import sys
import tempfile

import numpy as np

from common import children, cpus
from model.derived import ARCH_FORMAT, op_kind

from .space import SpaceError, out_size

RUNTIMES = ("onnx", "mge", "bnn", "eager")
SUFFIX = {"onnx": ".onnx", "mge": ".mge", "bnn": ".bnn"}
RUNTIME_NAMES = {"onnx": "ONNX Runtime (.onnx)", "mge": "MegEngine Lite (.mge)",
                 "bnn": "packed binary runtime (.bnn)", "eager": "MegEngine eager"}
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "timing_worker.py")
# one timing: calls in a row for about 2 ms, so that a 20 us call is not timed alone (onnx, mge);
# a .bnn file is timed one call at a time: a binary layer's weights are not warm from its own
# previous call in a network either (docs/search.md)
TARGET_S = {"onnx": 0.002, "mge": 0.002, "bnn": 0.0}


def default_threads(runtime):
    """1 for ``onnx`` and ``mge``: the table's files share one process, and ONNX Runtime pools
    of 2 threads each spin on beside the next file's run (on 2 cores that made the digits
    table's prediction 19 % off instead of 3 %, docs/search.md); all cores for ``bnn``, whose
    kernels share one thread pool."""
    return cpus.cpu_count() if runtime == "bnn" else 1


def default_runtime(space):
    """``bnn`` for a space with binary candidates, ``onnx`` otherwise."""
    return "bnn" if any(op_kind(c) == "binary" for c in space.candidates) else "onnx"


def check_runtime(space, runtime, proxy):
    """``SpaceError`` (one line) when ``runtime`` cannot run ``space``'s candidates."""
    if runtime not in RUNTIMES:
        raise SpaceError("unknown runtime %r; known: %s" % (runtime, ", ".join(RUNTIMES)))
    binary = [c for c in space.candidates if op_kind(c) == "binary"]
    other = [c for c in space.candidates if op_kind(c) != "binary"]
    if runtime == "bnn":
        if other:
            raise SpaceError("--runtime bnn runs binary candidates only; %s %s not binary "
                             "(measure it with --runtime onnx or mge)"
                             % (", ".join(other), "is" if len(other) == 1 else "are"))
        if proxy:
            raise SpaceError("--proxy replaces measured binary candidates by FLOPs + BOPs/64; "
                             "with --runtime bnn every entry is measured: drop one of them")
    elif binary and not proxy:
        raise SpaceError("binary candidates (%s) run only in the .bnn runtime: use --runtime "
                         "bnn, or --proxy for the FLOPs + BOPs/64 cost proxy"
                         % ", ".join(binary))


def _arch(space, image_size, stem, layers, head=0):
    return {"format": ARCH_FORMAT, "space": space.name, "image_size": image_size,
            "num_classes": space.num_classes, "stem": stem, "layers": layers,
            "head": {"channels": head}}


def _layer(op, c_in, c_out, stride, size):
    return {"op": op, "C_in": c_in, "C_out": c_out, "stride": stride, "input_size": size}


def context_arch(space, layer, op=None):
    """Layer ``layer``'s context network, with candidate ``op`` in it when given."""
    stem = {"channels": layer.C_in, "stride": 1}
    layers = [_layer(op, layer.C_in, layer.C_out, layer.stride, layer.input_size)] if op else []
    return _arch(space, layer.input_size, stem, layers)


def fixed_archs(space):
    """``{"stem": arch, "head": (with head, without)}``; ``head`` is None when the space has no
    head conv."""
    last = space.layers[-1]
    size = out_size(last.input_size, last.stride)
    stem = _arch(space, space.image_size, space.stem_dict(), [])
    head = None
    if space.head_channels:
        context = {"channels": last.C_out, "stride": 1}
        head = (_arch(space, size, context, [], space.head_channels),
                _arch(space, size, context, []))
    return {"stem": stem, "head": head}


def table_archs(space, binary_proxy=False):
    """Every file the table needs, as ``(key, arch)``: ``("context", l)``, ``("probe", l, k)``,
    ``("stem",)``, ``("head",)`` and ``("head-context",)``. With ``binary_proxy`` the binary
    candidates are left out (their entries are the ops proxy)."""
    out = []
    for l, layer in enumerate(space.layers):
        out.append((("context", l), context_arch(space, layer)))
        for k, name in enumerate(space.candidates):
            if binary_proxy and op_kind(name) == "binary":
                continue
            out.append((("probe", l, k), context_arch(space, layer, name)))
    fixed = fixed_archs(space)
    out.append((("stem",), fixed["stem"]))
    if fixed["head"] is not None:
        out += [(("head",), fixed["head"][0]), (("head-context",), fixed["head"][1])]
    return out


def entries_from_times(space, keys, seconds):
    """``(latency[l][k] in us or NaN where not timed, fixed, context us per layer)`` from the
    medians of the files ``keys`` (as ``table_archs`` names them)."""
    t = {key: s * 1e6 for key, s in zip(keys, seconds)}
    latency = np.full((len(space.layers), len(space.candidates)), np.nan)
    for key, us in t.items():
        if key[0] == "probe":
            latency[key[1], key[2]] = max(us - t[("context", key[1])], 0.0)
    head = max(t[("head",)] - t[("head-context",)], 0.0) if ("head",) in t else 0.0
    contexts = [t[("context", l)] for l in range(len(space.layers))]
    return latency, {"stem": t[("stem",)], "head": head}, contexts


# -- exporting --------------------------------------------------------------------------------
def randomize_batchnorm(net, rng):
    """Non-trivial BatchNorm statistics: with the initial ones (mean 0, variance 1) a binary
    conv's integer counts reach the next binarization as exact zeros, whose sign the float
    emulation's rounding decides, and the export check fails. Timing does not depend on them."""
    import megengine.module as M

    for m in net.modules():
        if isinstance(m, M.BatchNorm2d):
            shape = tuple(m.running_mean.shape)
            m.running_mean[...] = rng.normal(0.0, 0.3, shape).astype(np.float32)
            m.running_var[...] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    return net


def build_net(arch, seed=0):
    """The deploy-form network ``arch`` describes, in eval mode, BatchNorm statistics set."""
    from model.derived import build_from_arch

    net = build_from_arch(arch)
    net.eval()
    randomize_batchnorm(net, np.random.default_rng(seed))
    from model.reparam import convert_to_deploy

    net = convert_to_deploy(net, inplace=True)
    net.eval()
    return net


def _source(net, arch):
    from deploy.export import Source
    from deploy.preprocess import small_spec

    return Source(net, None, "searched network (%s)" % arch.get("space", "?"),
                  small_spec(arch["image_size"]))


def _input(arch, batch, seed=0):
    from model.parity import sample_inputs

    size = arch["image_size"]
    return sample_inputs(np.random.default_rng(seed), (batch, 3, size, size)).astype(np.float32)


def write_file(arch, runtime, path, batch=1, seed=0):
    """Write ``arch`` as a ``runtime`` file at ``path`` with the writer ``tools/export.py``
    uses, unchecked (a timing probe: its numbers are not used)."""
    from deploy import export

    net = build_net(arch, seed)
    source, x = _source(net, arch), _input(arch, batch, seed)
    if runtime == "onnx":
        export.write_onnx(source, x, path)
    elif runtime == "bnn":
        from deploy.binary_export import build_program

        export.write_bnn(source, x, path, build_program(net, require_binary=False))
    else:
        export.write_mge(source, x, path, algo_cache=False)
    return path


def export_checked(arch, runtime, path, batch=1, seed=0):
    """Export ``arch`` to ``path`` as ``tools/export.py`` does: written, loaded back in its
    runtime and its logits checked against the eager model before it is renamed into place."""
    from deploy import export

    net = build_net(arch, seed)
    export.export(_source(net, arch), path, runtime, _input(arch, max(batch, 2), seed),
                  algo_cache=False)
    return path


# -- timing -----------------------------------------------------------------------------------
def time_files(paths, threads, warmup, runs, target_s=0.002, seed=0, progress=None,
               folder=None):
    """Median seconds per call of each file in ``paths`` (one child process, see
    ``search/timing_worker.py``) and the runtime's version: ``(seconds, inner, version)``."""
    import subprocess

    with tempfile.TemporaryDirectory(dir=folder, prefix="timing-") as tmp:
        job, out = os.path.join(tmp, "job.json"), os.path.join(tmp, "result.json")
        with open(job, "w") as f:
            json.dump({"files": [os.path.abspath(p) for p in paths], "threads": threads,
                       "warmup": warmup, "runs": runs, "target_s": target_s, "seed": seed,
                       "out": out}, f)
        # loading (a first numba compile can take a minute) + every timing, with a margin
        deadline = 300 + len(paths) * (5 + 3 * (warmup + runs) * max(target_s, 0.01))
        bar = progress(total=runs) if progress else None
        with children.Child([sys.executable, WORKER, job], deadline, what="the timing worker",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as child:
            done = 0
            for line in child.proc.stdout:  # "progress DONE TOTAL" per round
                parts = line.split()
                if bar is not None and len(parts) == 3 and parts[0] == "progress":
                    bar.update(int(parts[1]) - done)
                    done = int(parts[1])
            _, err = child.communicate()
        if bar is not None:
            bar.close()
        proc = subprocess.CompletedProcess(WORKER, child.proc.returncode, None, err)
        if proc.returncode != 0 or not os.path.exists(out):
            raise children.ChildError("timing the exported files failed (%s)"
                                      % children.last_line(proc))
        with open(out) as f:
            result = json.load(f)
    return result["seconds"], result["inner"], result["runtime_version"]


def export_all(archs, runtime, folder, batch=1, progress=None):
    """Write every arch of ``archs`` into ``folder``: the list of paths."""
    paths = []
    items = progress(archs) if progress else archs
    for i, arch in enumerate(items):
        paths.append(write_file(arch, runtime, os.path.join(folder, "f%03d%s"
                                                            % (i, SUFFIX[runtime])), batch))
    return paths


def measure(space, runtime, threads=None, batch=1, warmup=5, runs=30, binary_proxy=False,
            progress=None, target_s=None):
    """Time every file of ``table_archs(space)`` in ``runtime``: ``(latency, fixed, meta)``
    (``latency`` NaN where an entry is left to the proxy)."""
    threads = threads or default_threads(runtime)
    pairs = table_archs(space, binary_proxy)
    keys = [key for key, _ in pairs]
    with tempfile.TemporaryDirectory(prefix="repvgg-lut-") as folder:
        paths = export_all([a for _, a in pairs], runtime, folder, batch,
                           progress=(lambda it: progress(it, desc="exporting", unit="file"))
                           if progress else None)
        seconds, inner, version = time_files(
            paths, threads, warmup, runs, TARGET_S[runtime] if target_s is None else target_s,
            progress=(lambda total: progress(total=total, desc="timing", unit="round"))
            if progress else None)
    latency, fixed, contexts = entries_from_times(space, keys, seconds)
    meta = {"runtime": runtime, "runtime_version": version, "threads": threads,
            "cpu": cpus.cpu_name(), "simd": cpus.simd_level(),
            "method": "context difference: t(stem + candidate + pool + classifier) - t(stem + "
                      "pool + classifier), each a whole exported file; stem timed whole",
            "context_us": contexts, "inner_min": min(inner), "inner_max": max(inner),
            "statistic": "median over rounds (shuffled order, one child process) of (inner "
                         "calls) / inner, each timing about %.0f ms"
                         % (TARGET_S[runtime] * 1e3 if target_s is None else target_s * 1e3)}
    return latency, fixed, meta


def network_times(archs, runtime, threads=None, batch=1, warmup=5, runs=30, rounds=3,
                  folder=None, progress=None, checked=True):
    """Median latency (us) of each whole network ``archs``, exported to ``runtime``'s format
    (checked, as ``tools/export.py`` exports) and timed alone: ``rounds`` rounds, each starting
    one child process per network (order rotated per round), median of the rounds' medians.
    Returns ``(us per network, runtime version, [us per round] per network)``."""
    threads = threads or default_threads(runtime)
    with tempfile.TemporaryDirectory(dir=folder, prefix="repvgg-nets-") as tmp:
        write = export_checked if checked else write_file
        paths = [write(arch, runtime, os.path.join(tmp, "net%02d%s" % (i, SUFFIX[runtime])),
                       batch) for i, arch in enumerate(archs)]
        per_round = [[] for _ in archs]
        version = None
        steps = [(r, (i + r) % len(archs)) for r in range(rounds) for i in range(len(archs))]
        for _, i in (progress(steps, desc="networks", unit="run") if progress else steps):
            seconds, _, version = time_files([paths[i]], threads, warmup, runs,
                                             TARGET_S[runtime], folder=tmp)
            per_round[i].append(seconds[0] * 1e6)
    return [float(np.median(r)) for r in per_round], version, per_round
