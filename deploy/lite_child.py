"""Running a dumped ``.mge`` in a child process, where a MegEngine failure cannot take the
caller down: probing that a layout runs on this CPU, and profiling fast-run algorithms.

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

Deadlines: ``deadlines(seconds)`` scales both to the time one eager forward pass of the model took
in the exporter, so a big model gets the time it needs and a hung child is found in seconds
for a small one.
"""
import os
import shutil
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
