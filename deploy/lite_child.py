"""Running a dumped ``.mge`` in a child process, where a MegEngine failure cannot take the
caller down: the first look at a file (``inspect``), probing that a layout runs on this CPU, and
profiling fast-run algorithms.

    python -m deploy.lite_child inspect MODEL.mge REPORT.json THREADS MAX_GMACS MAX_MEMORY MAX_BATCH
    python -m deploy.lite_child probe   MODEL.mge INPUT.npy THREADS LAYOUT
    python -m deploy.lite_child profile MODEL.mge INPUT.npy THREADS LAYOUT OUT.cache
    python -m deploy.lite_child replay  MODEL.mge INPUT.npy THREADS LAYOUT CACHE OUT.cache

Why a child: a kernel that fails inside MegEngine (its bundled MKL-DNN's JIT on an AVX-512 CPU
it predates) calls ``exit`` from a worker thread and the process then hangs in its exit
handlers; only a separate process under a deadline (``common/children.py``) turns that into an
answer. Why a fresh process for profiling: MegEngine's algorithm cache is keyed by what the
process that profiled it looked like; a cache profiled inside the exporter (which has traced the
model with MegEngine's Python runtime) misses when ``tools/infer.py`` loads the model. So the
child does what ``deploy.runtime.open_mge`` does (read the metadata, then load with Lite).
``replay`` runs with a given cache and dumps the process's cache afterwards: the same entries
when every algorithm was found in it (``tests/test_deploy_export.py`` checks this).

``inspect`` is what ``deploy.runtime.open_mge`` runs before the caller parses a byte of a
``.mge`` (a crafted file can crash MegEngine's native graph loader: a zeroed word, a stride of
0). The child, under a deadline and an address-space limit (``Limits.child_address_space``),
reads the file, parses the graph (``deploy/mge_budget.py``: the metadata, inputs and outputs,
weights, peak activations and MACs), checks them against the limits, then loads it with Lite and
runs one forward pass of zeros at the dumped input shape. It writes what it found as JSON to
REPORT.json twice: before the forward pass and after it (``"ran": true``), so the caller can
tell a file that crashed the loader from one that loads but does not run here. ``sha256`` names
the bytes it checked: the caller loads those bytes, not the path again.

Deadlines: ``deadlines(seconds)`` scales both to the time one eager forward pass of the model took
in the exporter, so a big model gets the time it needs and a hung child is found in seconds
for a small one.
"""
import gc
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# seconds: start-up (interpreter, MegEngine, loading) + a multiple of one eager forward pass
PROBE_DEADLINE = (20.0, 10.0)
PROFILE_DEADLINE = (120.0, 600.0)


def deadlines(eager_seconds):
    """``(probe, profile)`` deadlines in seconds for a model whose eager forward pass on the
    export batch took ``eager_seconds``."""
    return tuple(base + per * eager_seconds for base, per in (PROBE_DEADLINE, PROFILE_DEADLINE))


def _run(cmd, model, x_file, threads, layout, cache_in=None, cache_out=None):
    from common.children import fault_point
    from megenginelite import LiteGlobal

    from . import lite

    lite.read_user_info(model)  # as open_mge does before loading
    fault_point(cmd)
    if cmd == "probe":
        net = lite.DumpedModel(model, threads=threads, layout=layout)
        net(np.load(x_file) if x_file != "-" else np.zeros(net.input_shape, np.float32))
        return
    if cache_in is None:
        # A file cache must be installed for dump_persistent_cache to write what is profiled;
        # the current (empty) cache dumped is a valid file to start from.
        LiteGlobal.dump_persistent_cache(cache_out)
        cache_in = cache_out
    net = lite.DumpedModel(model, threads=threads, layout=layout, algo_cache=cache_in)
    net(np.load(x_file))
    LiteGlobal.dump_persistent_cache(cache_out)


# The inspect child: at most this many threads for its one forward pass (each thread reserves
# address space, which counts against RLIMIT_AS), and at most this much metadata text.
INSPECT_MAX_THREADS = 4
MAX_METADATA_CHARS = 4 << 20
REPORT_MAX_BYTES = MAX_METADATA_CHARS * 2 + (1 << 20)  # JSON escapes at most double the text
INSPECT_ENV = {"MALLOC_ARENA_MAX": "2"}  # glibc's per-thread arenas: 64 MB of address space each


def _write_json(path, report):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f)
    os.replace(tmp, path)


def _inspect(model, report_path, threads, limits):
    """The ``inspect`` command (see the module docstring); a refusal is ``"error"`` in the
    report, never an exception."""
    from common.children import fault_point
    from errors import ModelFileError, UserError

    from . import lite, mge_budget

    report = {}
    try:
        with open(model, "rb") as f:
            data = f.read(limits.max_memory + 1)
        if len(data) > limits.max_memory:
            raise ModelFileError("%s is larger than the memory limit (--max-memory raises it)"
                                 % model)
        report["sha256"] = hashlib.sha256(data).hexdigest()
        try:
            with lite._quiet_lite_errors():
                graph = mge_budget.inspect(data)
        except RuntimeError as e:
            raise lite.not_loadable(model, e) from None
        except mge_budget.GraphError as e:
            raise ModelFileError("%s: %s" % (model, e)) from None
        info = lite.user_info_of(graph.pop("metadata"), model)
        gc.collect()  # the parsed graph (a copy of the weights) goes before Lite loads its own
        if info is not None and len(info) > MAX_METADATA_CHARS:
            raise ModelFileError("%s carries %d characters of metadata, more than %d"
                                 % (model, len(info), MAX_METADATA_CHARS))
        report.update(graph, user_info=info)
        _write_json(report_path, report)
        limits.check(model, weights=report["weights"], activations=report["activations"],
                     macs=report["macs"], batch=report["batch"])
        fault_point("inspect")
        _first_run(model, data, info, threads, os.path.dirname(report_path))
        report["ran"] = True
    except UserError as e:
        report["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
    except MemoryError:
        report["error"] = ("%s needs more memory than its checker may use (%.1f GiB of address "
                           "space; --max-memory raises it)"
                           % (model, limits.child_address_space() / (1 << 30)))
    except RuntimeError as e:  # Lite refused the graph, or a kernel failed, on this CPU
        report["error"] = str(lite.not_loadable(model, e))
        report["run_failed"] = True
    _write_json(report_path, report)


def _first_run(model, data, info, threads, folder):
    """Load ``data`` with Lite as ``deploy.runtime.open_mge`` will (its layout; its algorithm
    cache, installed so that MegEngine parses it here first) and run zeros through it once."""
    from megenginelite import LiteGlobal

    from . import lite
    from .modelfile import decode_metadata

    cache, layout, _ = lite.load_plan(model, decode_metadata(info, model))
    if cache:
        cache_file = os.path.join(folder, "algo_cache.bin")
        with open(cache_file, "wb") as f:
            f.write(cache)
        LiteGlobal.set_persistent_cache(cache_file)  # parsed now; the run itself is heuristic
    net = lite.DumpedModel(model, threads=threads, layout=layout, data=data)
    net.run_all(np.zeros(net.input_shape, np.float32))


def _signal_name(number):
    try:
        return signal.Signals(number).name
    except ValueError:
        return "signal %d" % number


def inspect(path, threads, limits, deadline):
    """Look at the ``.mge`` at ``path`` in a child process (see the module docstring): its
    report, a dict with ``sha256``, ``user_info``, ``inputs``, ``outputs``, ``weights``,
    ``activations``, ``macs``, ``batch`` (what the file declares, once it parsed), and ``ran``
    (the forward pass ran), or ``error`` (one line: the child's refusal) with ``run_failed``
    when the file parsed but did not run. One-line ``ModelFileError`` when the child crashed
    (naming the signal), passed ``deadline`` or reported nothing; the caller checks the budgets
    (``limits.check``) on the report and raises its ``error``."""
    from common import children, safe_json
    from common.cpus import cpu_count
    from errors import ModelFileError

    folder = tempfile.mkdtemp(prefix="lite_child.")
    try:
        out = os.path.join(folder, "report.json")
        args = ["inspect", os.fspath(path), out,
                str(min(threads or cpu_count(), INSPECT_MAX_THREADS)),
                repr(float(limits.max_gmacs)), str(int(limits.max_memory)),
                str(int(limits.max_batch))]
        try:
            proc = children.run([sys.executable, "-m", "deploy.lite_child", *args], deadline,
                                what="the MegEngine loader", cwd=ROOT, capture_output=True,
                                scratch=[folder], rlimit_as=limits.child_address_space(),
                                env=dict(os.environ, **INSPECT_ENV))
        except children.ChildTimeout:
            raise ModelFileError("%s did not load and run within %.0f s (the MegEngine loader "
                                 "was stopped); it is not a valid model" % (path, deadline)) \
                from None
        report = None
        if os.path.isfile(out) and os.path.getsize(out) <= REPORT_MAX_BYTES:
            with open(out, "rb") as f:
                try:
                    report = safe_json.loads(f.read(), "the loader's report")
                except ValueError:
                    report = None
        if proc.returncode < 0:
            where = "the MegEngine loader" if report is None else "MegEngine on its first run"
            raise ModelFileError("%s crashed %s (%s); it is not a valid model"
                                 % (path, where, _signal_name(-proc.returncode)))
        if not isinstance(report, dict):
            raise ModelFileError("%s could not be checked: the MegEngine loader failed (%s)"
                                 % (path, children.last_line(proc)))
        if not report.get("ran") and not report.get("error"):  # it ended during the run
            report.update(error=children.last_line(proc), run_failed=True)
        return report
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _child(cmd, path, batch, threads, layout, deadline, *extra):
    """Run one command in a child under ``deadline``: its output file's bytes (or None)."""
    from common import children

    folder = tempfile.mkdtemp(prefix="lite_child.")
    try:
        x_file, out = os.path.join(folder, "x.npy"), os.path.join(folder, "out.bin")
        if batch is None:  # the probe runs zeros of the model's own input shape
            x_file = "-"
        else:
            np.save(x_file, np.asarray(batch, np.float32))
        args = [cmd, os.fspath(path), x_file, str(threads or 0), layout, *extra]
        if cmd != "probe":
            args.append(out)
        # the lifeline removes the folder if this process is killed meanwhile
        proc = children.run([sys.executable, "-m", "deploy.lite_child", *args], deadline,
                            what="the %s child" % cmd, cwd=ROOT, capture_output=True, text=True,
                            scratch=[folder])
        if proc.returncode != 0 or (cmd != "probe" and not os.path.isfile(out)):
            raise children.ChildError("the %s child failed (%s)"
                                      % (cmd, children.last_line(proc)))
        if cmd != "probe":
            with open(out, "rb") as f:
                return f.read()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def probe(path, batch, threads, layout, deadline):
    """Run the ``.mge`` at ``path`` once on ``batch`` (None: zeros of its input shape) with
    ``layout`` in a child process;
    ``common.children.ChildError`` (one line) when it fails or passes ``deadline``."""
    _child("probe", path, batch, threads, layout, deadline)


def profile_algorithms(path, batch, threads, layout, deadline):
    """The fast-run algorithm cache (bytes) of the ``.mge`` at ``path`` for ``batch`` and
    ``layout``, profiled in a child process; ``ChildError`` when that fails."""
    return _child("profile", path, batch, threads, layout, deadline)


def replay(path, batch, threads, layout, cache_file, deadline):
    """Run with the cache file ``cache_file``: the process's cache afterwards (bytes)."""
    return _child("replay", path, batch, threads, layout, deadline, cache_file)


def main(argv):
    if argv[:1] == ["inspect"]:
        from common.limits import Limits

        model, report, threads, gmacs, memory, batch = argv[1:7]
        _inspect(model, report, int(threads) or None,
                 Limits(max_gmacs=float(gmacs), max_memory=int(memory), max_batch=int(batch)))
        return
    cmd, model, x_file, threads, layout = argv[:5]
    threads = int(threads) or None
    if cmd == "probe":
        _run(cmd, model, x_file, threads, layout)
    elif cmd == "profile":
        _run(cmd, model, x_file, threads, layout, None, argv[5])
    elif cmd == "replay":
        _run(cmd, model, x_file, threads, layout, argv[5], argv[6])
    else:
        raise SystemExit("unknown command %r" % cmd)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main(sys.argv[1:])
