"""The latency lookup table (LUT): cost of every candidate at every layer, with metadata.

A table is measured in one runtime (``meta["runtime"]``), the one the derived network ships in:

- ``onnx``, ``mge``, ``bnn``: ``search/runtime_timing.py``. Every entry is the difference of
  two whole exported files (the layer's context network with and without the candidate), timed
  in a child process that runs only that runtime, with a fixed thread count; the stem is timed
  whole (it carries the per-call cost a network pays once). Binary candidates are measured with
  the ``.bnn`` runtime's own ops, packing included.
- ``eager``: MegEngine eager (``measure_table``). Each candidate is built fresh for its layer,
  put in eval mode (RepVGG candidates first converted to their deploy form), run ``warmup``
  times untimed, then timed ``runs`` times (each run ``inner`` calls and one wait for the
  result, divided by ``inner``); the entry is the median in microseconds, the timed runs of
  groups of 8 entries interleaved (``time_modules``).

A whole derived network's latency is predicted as ``stem + sum(chosen entries) + head``.

The cost proxy ``FLOPs + BOPs/64`` (``model.opcount``'s ``ops``, the Bi-Real/ReActNet
convention) stands in for a binary candidate only when asked for (``search.py lut --proxy``):
recorded per entry as ``proxy:ops``, converted to microseconds with the median measured
``us / ops`` (``us_per_op``) in a table that also has measured entries; in a table of proxy
entries only, the unit is "Mops".

File (JSON)::

    {"format": "repvgg-search-lut/2",
     "meta": {"space", "space_hash", "candidates", "input_sizes", "image_size", "batch",
              "runtime", "runtime_version", "cpu", "threads", "warmup", "runs", "unit",
              "us_per_op", ...},
     "latency": [[per candidate] per layer], "source": [["measured" | "proxy:ops"] ...],
     "fixed": {"stem": ..., "head": ...}}

``load_table(path, space)`` checks format, shape and metadata against the space and fails with
one line naming the mismatch. A table of the first format (``repvgg-search-lut/1``, measured in
MegEngine eager, before the runtime was recorded) loads as an ``eager`` table.
"""
import json
import logging
import platform
import statistics
import time

import numpy as np

import megengine as mge
import megengine.module as M

from common.atomic import write_json
from common.timing import interleaved_medians
from model.derived import build_head, build_op, build_stem, op_kind
from model.opcount import count_ops
from model.reparam import convert_to_deploy

from .runtime_timing import RUNTIME_NAMES
from .space import SpaceError, out_size

LUT_FORMAT = "repvgg-search-lut/2"
OLD_FORMATS = ("repvgg-search-lut/1",)  # eager tables from before the runtime was recorded
PROXY = "proxy:ops"
MEASURED = "measured"
log = logging.getLogger(__name__)


class LatencyTable:
    """latency[l][k]: cost of candidate k at layer l, in ``meta['unit']``."""

    def __init__(self, latency, source, fixed, meta):
        self.latency = np.asarray(latency, np.float64)
        self.source = [list(row) for row in source]
        self.fixed = dict(fixed)
        self.meta = dict(meta)

    @property
    def unit(self):
        return self.meta["unit"]

    @property
    def runtime(self):
        return self.meta.get("runtime", "eager")

    def to_dict(self):
        return {"format": LUT_FORMAT, "meta": self.meta, "latency": self.latency.tolist(),
                "source": self.source, "fixed": self.fixed}

    @classmethod
    def from_dict(cls, d, what="latency table"):
        fmt = d.get("format") if isinstance(d, dict) else None
        if fmt not in (LUT_FORMAT,) + OLD_FORMATS:
            raise SpaceError("%s is not a latency table (format %r expected)" % (what, LUT_FORMAT))
        try:
            table = cls(d["latency"], d["source"], d["fixed"], d["meta"])
        except (KeyError, ValueError, TypeError) as e:
            raise SpaceError("%s is malformed (%s)" % (what, e)) from None
        if fmt in OLD_FORMATS:  # measured in MegEngine eager, the only runtime there was
            table.meta.setdefault("runtime", "eager")
        return table

    def check_runtime(self, runtime, what="latency table", hint=""):
        """``SpaceError`` (one line) unless this table was measured in ``runtime``."""
        if self.runtime != runtime:
            raise SpaceError("%s was measured in %s, not %s%s" % (
                what, RUNTIME_NAMES.get(self.runtime, self.runtime),
                RUNTIME_NAMES.get(runtime, runtime), hint))
        return self

    def check(self, space, what="latency table"):
        """Raise SpaceError (one line) unless this table was made for ``space``."""
        m = self.meta
        if m.get("space_hash") != space.hash:
            why = []
            if m.get("space") != space.name:
                why.append("space %r vs %r" % (m.get("space"), space.name))
            if list(m.get("candidates", [])) != list(space.candidates):
                why.append("candidates %s vs %s" % (",".join(m.get("candidates", [])),
                                                    ",".join(space.candidates)))
            if list(m.get("input_sizes", [])) != [l.input_size for l in space.layers]:
                why.append("input sizes %s vs %s" % (m.get("input_sizes"),
                                                     [l.input_size for l in space.layers]))
            if m.get("num_classes", space.num_classes) != space.num_classes:
                why.append("%s classes vs %d (--num-classes)" % (m["num_classes"],
                                                                space.num_classes))
            raise SpaceError("%s was built for another search space (hash %s, this space %s%s%s)"
                             % (what, m.get("space_hash"), space.hash, ": " if why else "",
                                "; ".join(why)))
        shape = (len(space.layers), len(space.candidates))
        if self.latency.shape != shape or np.shape(self.source) != shape:
            raise SpaceError("%s has shape %s, the space needs %s (layers x candidates)"
                             % (what, self.latency.shape, shape))
        # 0 is a cost: an identity skip adds nothing to a network
        if not np.all(np.isfinite(self.latency)) or np.any(self.latency < 0):
            raise SpaceError("%s has negative or non-finite entries" % what)
        return self

    def network_latency(self, choices):
        """Predicted latency of one architecture: stem + chosen entries + head."""
        layers = sum(self.latency[l, k] for l, k in enumerate(choices))
        return self.fixed["stem"] + layers + self.fixed["head"]


def save_table(table, path):
    """Write atomically (temp file + rename)."""
    return write_json(table.to_dict(), path)


def load_table(path, space=None):
    try:
        with open(path) as f:
            d = json.load(f)
    except FileNotFoundError:
        raise SpaceError("latency table not found: %s" % path) from None
    except (OSError, ValueError) as e:
        raise SpaceError("%s is not a readable JSON latency table (%s)" % (path, e)) from None
    table = LatencyTable.from_dict(d, what=path)
    return table.check(space, what=path) if space is not None else table


def time_modules(pairs, warmup, runs, inner=1):
    """Median seconds per call of ``module(x)`` for every ``(module, x)`` in ``pairs``.

    Eval mode. Each module is warmed up ``warmup`` times, then the timed runs go round-robin over
    all modules (run r of every module, then run r + 1), so that slow drifts of the machine's load
    hit every entry alike. One timed run is ``inner`` calls in a row followed by one wait for the
    result (``.numpy()``), divided by ``inner``: MegEngine executes asynchronously, and waiting
    after every call would add a synchronisation delay to every entry that a whole network pays
    only once.
    """
    def calls(module, x):
        def run():
            for _ in range(inner):
                y = module(x)
            y.numpy()
        return run

    for module, _ in pairs:
        module.eval()
    medians = interleaved_medians({i: calls(m, x) for i, (m, x) in enumerate(pairs)},
                                  warmup, runs)
    return [medians[i] / inner for i in range(len(pairs))]


def time_module(module, x, warmup, runs, inner=1):
    return time_modules([(module, x)], warmup, runs, inner)[0]


def device_threads(device):
    """Thread count of a MegEngine CPU device string ('cpux' = 1, 'multithreadN:0' = N)."""
    if device.startswith("multithread"):
        return int(device[len("multithread"):].split(":")[0])
    return 1


def stem_module(space):
    return build_stem(space.stem_dict())


class Head(M.Module):
    """The fixed head (``model.derived.build_head``) as one module, for timing."""

    def __init__(self, space):
        super().__init__()
        self.conv, self.gap, self.linear = build_head(space.layers[-1].C_out,
                                                      space.head_channels, space.num_classes)

    def forward(self, x):
        if self.conv is not None:
            x = self.conv(x)
        return self.linear(self.gap(x))


def deployable(module):
    return convert_to_deploy(module, inplace=True)


def candidate_ops(space, l, k, batch=1):
    """``model.opcount``'s ops (FLOPs + BOPs/64) of candidate ``k`` at layer ``l`` (deploy
    form)."""
    layer, name = space.layers[l], space.candidates[k]
    module = build_op(name, layer.C_in, layer.C_out, layer.stride)
    if op_kind(name) != "binary":
        module = deployable(module)
    return count_ops(module, (batch, layer.C_in, layer.input_size, layer.input_size))["ops"]


def fill_proxy(space, latency, batch=1):
    """Put the ops proxy into the entries of binary candidates left unmeasured (NaN in
    ``latency``, which holds the measured ones): ``(source, unit, us_per_op)``. With measured entries the proxy is
    converted to microseconds by their median ``us / ops``; without, the unit is Mops."""
    shape = latency.shape
    source = [[MEASURED] * shape[1] for _ in range(shape[0])]
    proxied = [(l, k) for l in range(shape[0]) for k in range(shape[1])
               if op_kind(space.candidates[k]) == "binary" and np.isnan(latency[l, k])]
    if not proxied:
        return source, "us", None
    measured = [(l, k) for l in range(shape[0]) for k in range(shape[1]) if (l, k) not in proxied]
    us_per_op = statistics.median(latency[key] / candidate_ops(space, *key, batch=batch)
                                  for key in measured) if measured else None
    for l, k in proxied:
        source[l][k] = PROXY
        ops = candidate_ops(space, l, k, batch)
        latency[l, k] = ops * us_per_op if us_per_op is not None else ops / 1e6
    return source, ("us" if measured else "Mops"), us_per_op


def _base_meta(space, batch, warmup, runs):
    from common import cpus

    return {
        "space": space.name, "space_hash": space.hash, "candidates": list(space.candidates),
        "input_sizes": [l.input_size for l in space.layers], "image_size": space.image_size,
        "num_classes": space.num_classes, "batch": batch, "cpu": cpus.cpu_name(),
        "machine": platform.machine(), "warmup": warmup, "runs": runs, "mode": "eval",
        "repvgg_form": "deploy",
        "binary_cost": "proxy FLOPs + BOPs/64 (model.opcount ops), per entry source 'proxy:ops'",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def measure_runtime_table(space, runtime, threads=None, batch=1, warmup=10, runs=30,
                          proxy=False, progress=None):
    """The table of ``space`` measured in ``runtime`` (``onnx``, ``mge``, ``bnn``; ``eager``:
    ``measure_table``). ``proxy``: binary candidates get the ops proxy instead of a
    measurement. ``SpaceError`` first when the runtime cannot run the candidates."""
    from . import runtime_timing

    runtime_timing.check_runtime(space, runtime, proxy)
    if runtime == "eager":
        table = measure_table(space, batch, warmup, runs, progress=progress)
        return table
    latency, fixed, timing_meta = runtime_timing.measure(
        space, runtime, threads, batch, warmup, runs, binary_proxy=proxy, progress=progress)
    source, unit, us_per_op = fill_proxy(space, latency, batch)
    meta = dict(_base_meta(space, batch, warmup, runs), **timing_meta, unit=unit,
                us_per_op=us_per_op)
    return LatencyTable(latency, source, fixed, meta)


def measure_table(space, batch=1, warmup=10, runs=30, seed=0, progress=None, inner=10):
    """The ``eager`` table: every entry measured in MegEngine eager (binary candidates, which
    MegEngine runs as float convolutions, get the ops proxy)."""
    rng = np.random.default_rng(seed)
    device = str(mge.get_default_device())

    def rand(c, size):
        return mge.tensor(rng.standard_normal((batch, c, size, size)).astype(np.float32))

    shape = (len(space.layers), len(space.candidates))
    latency = np.full(shape, np.nan)
    timed = []  # ((l, k) or "stem"/"head", module, input)
    for l in range(shape[0]):
        layer = space.layers[l]
        for k, name in enumerate(space.candidates):
            if op_kind(name) == "binary":
                continue
            module = deployable(build_op(name, layer.C_in, layer.C_out, layer.stride))
            timed.append(((l, k), module, rand(layer.C_in, layer.input_size)))
    last = space.layers[-1]
    head_size = out_size(last.input_size, last.stride)
    fixed_parts = [("stem", stem_module(space), (3, space.image_size)),
                   ("head", Head(space), (last.C_out, head_size))]
    fixed = {}
    if timed:
        timed += [(name, module, rand(*shp)) for name, module, shp in fixed_parts]
        chunks = [timed[i:i + 8] for i in range(0, len(timed), 8)]
        medians = []
        for chunk in (progress(chunks, desc="latency table", unit="entry") if progress
                      else chunks):
            medians += time_modules([(m, x) for _, m, x in chunk], warmup, runs, inner)
        for (key, _, _), sec in zip(timed, medians):
            if isinstance(key, tuple):
                latency[key] = sec * 1e6
            else:
                fixed[key] = sec * 1e6
    else:  # binary candidates only: everything in the proxy's unit
        for name, module, (c, size) in fixed_parts:
            fixed[name] = count_ops(module, (batch, c, size, size))["ops"] / 1e6
    source, unit, us_per_op = fill_proxy(space, latency, batch)
    meta = dict(_base_meta(space, batch, warmup, runs), runtime="eager",
                runtime_version="MegEngine %s" % mge.__version__, device=device,
                threads=device_threads(device), megengine=mge.__version__, inner=inner,
                statistic="median over runs of (inner calls, one sync) / inner; runs "
                          "interleaved in groups of 8", unit=unit, us_per_op=us_per_op)
    return LatencyTable(latency, source, fixed, meta)
