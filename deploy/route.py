"""Which runtime runs a ``.onnx`` on this CPU: ONNX Runtime or OpenVINO, for each precision.

``choose(precision, threads)`` returns a ``Choice`` (the runtime, how it was decided, one line
for the user). In order:

1. ``forced``: ``tools/infer.py --runtime onnxruntime|openvino``;
2. only one runtime can run the precision here: bf16 is OpenVINO's (ONNX Runtime's CPU kernels
   have no bf16), and needs bf16 instructions (``BF16_FLAGS``);
3. a **measurement** of this model file in both runtimes on this CPU (``measure``: each
   runtime in its own process, ``deploy/route_child.py``, interleaved rounds, medians), cached
   per CPU fingerprint (the machine, the model name and its ISA flags:
   ``common.cpus.cpu_fingerprint``), file content, batch, thread count and runtime versions in
   ``$XDG_CACHE_HOME/repvgg-megengine/runtime-choice.json`` (``~/.cache/...``). The command-line
   tools measure at first use, for a model of at least ``MIN_MEASURE_GMACS`` per image (below
   that, start-up dominates and the rule decides); the library reads the cache only;
4. else the **rule**: int8 on OpenVINO where the CPU has int8 dot-product kernels (VNNI or
   AMX: ``INT8_KERNEL_FLAGS``), ONNX Runtime otherwise; fp32 on ONNX Runtime (the runtime every
   export is checked with).

A measured runtime other than the rule's replaces it only when it is ``MARGIN`` faster (the
two round differently; a tie keeps the rule). The cache file is untrusted input: read with
bounds (``common.safe_json``), a malformed file or entry ignored (and rebuilt at the next
measurement), written atomically.
"""
import dataclasses
import math
import os

from common import cpus, safe_json
from errors import UserError

RUNTIMES = ("onnxruntime", "openvino")
NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
PRECISIONS = ("fp32", "bf16", "int8")
INT8_KERNEL_FLAGS = frozenset({"amx_int8", "avx512_vnni", "avx_vnni"})
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
MARGIN = 1.05
MIN_MEASURE_GMACS = 0.2    # RepVGG-A0 at 224x224 is 1.4; at 32x32, 0.03
ROUNDS = 2
CHILD_DEADLINE_S = (60.0, 0.2)   # seconds, + seconds per MB of file (loading, compiling)
CACHE_FOLDER = ("repvgg-megengine",)
CACHE_NAME = "runtime-choice.json"
CACHE_VERSION = 1
MAX_ENTRIES = 64         # oldest dropped: one per CPU x precision x threads x versions
MAX_CACHE_BYTES = 1 << 20


class RuntimeChoiceError(UserError):
    """A runtime that cannot run the asked precision on this CPU."""


@dataclasses.dataclass(frozen=True)
class Choice:
    runtime: str
    precision: str
    how: str          # "forced", "only", "measured" or "rule"
    detail: str

    def line(self):
        """What ran, in one line, e.g. 'runtime: OpenVINO (int8; measured on this CPU: ...)'."""
        return "runtime: %s (%s; %s)" % (NAMES[self.runtime], self.precision, self.detail)


def cpu_flags():
    """This CPU's ISA flags (``common.cpus``), the input of the rule; tests pass their own."""
    return cpus._cpuinfo()[1]


def candidates(precision, flags):
    """The runtimes that can run ``precision`` on a CPU with ``flags``."""
    if precision == "bf16":
        return ("openvino",) if BF16_FLAGS & set(flags) else ()
    return RUNTIMES


def rule(precision, flags):
    """``(runtime, why)`` without a measurement."""
    if precision == "bf16":
        return "openvino", "bf16 runs on OpenVINO only"
    if precision == "int8":
        found = sorted(INT8_KERNEL_FLAGS & set(flags))
        if found:
            return "openvino", "rule: this CPU has int8 dot-product kernels (%s)" % ", ".join(found)
        return "onnxruntime", "rule: no VNNI/AMX int8 kernels on this CPU"
    return "onnxruntime", "rule: float32 on ONNX Runtime"


def versions():
    """The two runtimes' versions (without importing them): a new version is measured again."""
    from importlib import metadata

    found = []
    for package in RUNTIMES:
        try:
            found.append("%s %s" % (package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            found.append("%s none" % package)
    return ", ".join(found)


def cache_key(precision, threads, fingerprint, runtime_versions, model_key):
    return "%s|%s|%d threads|%s|%s" % (fingerprint, precision, threads, runtime_versions,
                                       model_key)


def cache_path():
    """``$XDG_CACHE_HOME/repvgg-megengine/runtime-choice.json`` (``~/.cache`` by default)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, *CACHE_FOLDER, CACHE_NAME)


def _valid_entry(entry):
    if not isinstance(entry, dict) or entry.get("runtime") not in RUNTIMES:
        return False
    seconds = entry.get("seconds")
    return isinstance(seconds, dict) and bool(seconds) and all(
        k in RUNTIMES and isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
        and math.isfinite(v) for k, v in seconds.items())


def read_cache(path):
    """``{key: entry}`` of the cache file; ``{}`` for a missing, unreadable or malformed file,
    and without any malformed entry."""
    try:
        with open(path, "rb") as f:
            text = f.read(MAX_CACHE_BYTES + 1)
        data = safe_json.loads(text, path, max_bytes=MAX_CACHE_BYTES)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION \
            or not isinstance(data.get("entries"), dict):
        return {}
    return {k: v for k, v in data["entries"].items() if isinstance(k, str) and _valid_entry(v)}


def write_cache(path, entries):
    """The entries (the newest ``MAX_ENTRIES``), atomically; a cache that cannot be written is
    no error (the next run measures again)."""
    from common.atomic import OutputPathError, write_json

    kept = dict(list(entries.items())[-MAX_ENTRIES:])
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_json({"version": CACHE_VERSION, "entries": kept}, path)
    except (OSError, OutputPathError):
        pass


def _measured_choice(precision, seconds, flags):
    """The runtime a measurement ``{runtime: seconds per image}`` picks, with its line."""
    preferred, _ = rule(precision, flags)
    fastest = min(seconds, key=seconds.get)
    pick = preferred
    if fastest != preferred and (preferred not in seconds
                                 or seconds[preferred] > MARGIN * seconds[fastest]):
        pick = fastest
    detail = "measured on this CPU: %s" % ", ".join(
        "%s %.2f ms/image" % (NAMES[k], 1e3 * v) for k, v in sorted(seconds.items()))
    return Choice(pick, precision, "measured", detail)


def choose(precision, threads, forced=None, flags=None, fingerprint=None, cache=None,
           measure=None, model_key=None):
    """The ``Choice`` for running ``precision`` with ``threads`` (see the module docstring).

    ``flags``/``fingerprint``: this CPU's (tests inject others); ``cache``: the cache file's
    path (None: ``cache_path()``; False: none); ``model_key``: what identifies the model and
    batch in the cache (None: no cache, the rule); ``measure``: None to read the cache only,
    else ``measure(runtimes) -> {runtime: seconds per image}`` (``{}``: failed), called on a
    cache miss (its result stored)."""
    if precision not in PRECISIONS:
        raise RuntimeChoiceError("unknown precision %r; known: %s"
                                 % (precision, ", ".join(PRECISIONS)))
    flags = cpu_flags() if flags is None else set(flags)
    able = candidates(precision, flags)
    if forced is not None:
        if forced not in RUNTIMES:
            raise RuntimeChoiceError("unknown runtime %r; known: %s"
                                     % (forced, ", ".join(RUNTIMES)))
        if forced not in able:
            raise RuntimeChoiceError("%s cannot run %s on this CPU (%s)"
                                     % (NAMES[forced], precision, cpus.cpu_name()))
        return Choice(forced, precision, "forced", "forced with --runtime")
    if not able:
        raise RuntimeChoiceError("--precision bf16 needs a CPU with bf16 instructions "
                                 "(avx512_bf16 or amx_bf16); this one (%s) has none"
                                 % cpus.cpu_name())
    if len(able) == 1:
        return Choice(able[0], precision, "only", rule(precision, flags)[1])
    if cache is not False and model_key is not None:
        path = cache or cache_path()
        key = cache_key(precision, threads, fingerprint or cpus.cpu_fingerprint(), versions(),
                        model_key)
        entries = read_cache(path)
        if key in entries:
            return _measured_choice(precision, entries[key]["seconds"], flags)
        if measure is not None:
            seconds = measure(able)
            if seconds:
                choice = _measured_choice(precision, seconds, flags)
                entries.pop(key, None)
                entries[key] = {"runtime": choice.runtime, "seconds": seconds}
                write_cache(path, entries)
                return choice
    runtime, why = rule(precision, flags)
    return Choice(runtime, precision, "rule", why)


def measure(path, runtimes, threads, batch, limits, rounds=ROUNDS):
    """``{runtime: median seconds per image}`` of the ``.onnx`` at ``path`` (checked again in
    each child, against ``limits``) at ``batch``, each runtime in its own process
    (``deploy/route_child.py``), ``rounds`` interleaved rounds; ``{}`` when a child fails (the
    caller keeps its rule and caches nothing)."""
    import json
    import statistics
    import sys

    from common import children

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    base, per_mb = CHILD_DEADLINE_S
    deadline = base + per_mb * os.path.getsize(path) / 1e6
    times = {r: [] for r in runtimes}
    for round_ in range(rounds):
        shift = round_ % len(runtimes)
        for runtime in list(runtimes)[shift:] + list(runtimes)[:shift]:
            cmd = [sys.executable, "-m", "deploy.route_child", path, runtime, threads, batch,
                   limits.max_gmacs, limits.max_memory, limits.max_batch]
            try:
                proc = children.run([str(c) for c in cmd], deadline, what="the runtime "
                                    "measurement", cwd=root, capture_output=True, text=True,
                                    rlimit_as=limits.child_address_space())
                if proc.returncode != 0:
                    return {}
                times[runtime].append(float(json.loads(
                    proc.stdout.strip().splitlines()[-1])["seconds"]))
            except (children.ChildError, ValueError, KeyError, IndexError, TypeError):
                return {}
    return {r: statistics.median(t) for r, t in times.items()}
