"""Fast-run profiling of a dumped ``.mge`` in a fresh process, as ``tools/infer.py`` opens it.

MegEngine's algorithm cache is keyed by what the process that profiled it looked like: a cache
profiled inside the exporter (which has traced the model with MegEngine's Python runtime on its
multithread device) misses when ``tools/infer.py`` loads the model, and infer profiles again
(seen as a cache that grows when replayed). So the exporter profiles in a fresh process that
does what ``deploy.runtime.open_mge`` does (read the metadata, then load with Lite):

    python -m deploy.algo_profile profile MODEL.mge INPUT.npy THREADS OUT.cache
    python -m deploy.algo_profile replay MODEL.mge INPUT.npy THREADS CACHE OUT.cache

``replay`` runs with the given cache and dumps the process's cache afterwards: the same entries
when every algorithm was found in it (``tests/test_deploy_export.py`` checks this).
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(model, x_file, threads, cache_in, cache_out):
    from megenginelite import LiteGlobal

    from . import lite

    lite.read_user_info(model)  # as open_mge does before loading
    if cache_in is None:
        # A file cache must be installed for dump_persistent_cache to write what is profiled;
        # the current (empty) cache dumped is a valid file to start from.
        LiteGlobal.dump_persistent_cache(cache_out)
        cache_in = cache_out
    net = lite.DumpedModel(model, threads=threads, algo_cache=cache_in)
    net(np.load(x_file))
    LiteGlobal.dump_persistent_cache(cache_out)


def profile_algorithms(path, batch, threads=None):
    """The fast-run algorithm cache (bytes) of the ``.mge`` at ``path`` for ``batch``, profiled
    in a fresh process."""
    from errors import UserError

    with tempfile.TemporaryDirectory(prefix="algo_profile.") as folder:
        x_file, out = os.path.join(folder, "x.npy"), os.path.join(folder, "cache.bin")
        np.save(x_file, np.asarray(batch, np.float32))
        proc = subprocess.run(
            [sys.executable, "-m", "deploy.algo_profile", "profile", os.fspath(path), x_file,
             str(threads or 0), out], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.isfile(out):
            lines = [l for l in proc.stderr.splitlines() if l.strip()]
            raise UserError("profiling the dumped graph failed (%s)"
                            % (lines[-1] if lines else "exit status %d" % proc.returncode))
        with open(out, "rb") as f:
            return f.read()


def main(argv):
    cmd, model, x_file, threads = argv[:4]
    threads = int(threads) or None
    if cmd == "profile":
        _run(model, x_file, threads, None, argv[4])
    elif cmd == "replay":
        _run(model, x_file, threads, argv[4], argv[5])
    else:
        raise SystemExit("unknown command %r" % cmd)


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main(sys.argv[1:])
