"""The child process that times exported model files for the latency table and its checks
(started by ``search/runtime_timing.py`` through ``common/children.py``).

    python search/timing_worker.py JOB.json

``JOB.json``: ``{"files": [...], "threads", "warmup", "runs", "target_s", "seed", "out"}``. Each
file is opened with the runtime its suffix names (``deploy.runtime.open_model``; a ``.mge``
written by the parent moments ago is opened as trusted, without the inspecting child), given a
fixed random input of its own input shape, called ``warmup`` times, then timed in ``runs``
rounds. A round times every file once, in an order shuffled per round, so that load drifts and
cache neighbours spread evenly; one timing is ``inner`` calls in a row divided by ``inner``,
``inner`` chosen per file so that a timing lasts about ``target_s`` (a 20 µs call is not timed
alone). The result (``out``): the median seconds per call of every file, the ``inner`` counts
and the runtime's version. ``progress DONE TOTAL`` lines on stdout let the parent draw a bar.

Never imports MegEngine for a ``.onnx`` or ``.bnn``: its thread pool must not run beside the
runtime's.
"""
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def runtime_version(suffix):
    """The version string of the runtime that runs files with ``suffix``."""
    if suffix == ".onnx":
        import onnxruntime

        return "onnxruntime %s" % onnxruntime.__version__
    if suffix == ".bnn":
        import numba
        import onnxruntime

        return "deploy.binary_runtime (numba %s, onnxruntime %s for the float stem)" % (
            numba.__version__, onnxruntime.__version__)
    import megengine

    return "megenginelite (MegEngine %s)" % megengine.__version__


def open_file(path, threads):
    if path.endswith(".mge"):
        from deploy.runtime import open_mge

        return open_mge(path, threads, trusted=True)
    from deploy.runtime import open_model

    return open_model(path, threads)


def time_calls(calls, warmup, runs, target_s, rng, report=None):
    """Median seconds per call of every ``calls[i]()`` and the ``inner`` count of each (see the
    module docstring)."""
    for fn in calls:
        for _ in range(warmup):
            fn()
    inner = []
    for fn in calls:
        start = time.perf_counter()
        fn()
        one = max(time.perf_counter() - start, 1e-7)
        inner.append(max(1, min(1000, int(round(target_s / one)))))
    times = [[] for _ in calls]
    for r in range(runs):
        for i in rng.permutation(len(calls)):
            fn, n = calls[i], inner[i]
            fn()  # untimed: the previous file's thread pool settles, this file's data is warm
            start = time.perf_counter()
            for _ in range(n):
                fn()
            times[i].append((time.perf_counter() - start) / n)
        if report:
            report(r + 1, runs)
    return [statistics.median(t) for t in times], inner


def main(argv):
    import numpy as np

    with open(argv[0]) as f:
        job = json.load(f)
    files = job["files"]
    models = [open_file(p, job["threads"]) for p in files]
    rng = np.random.default_rng(job.get("seed", 0))
    inputs = [rng.standard_normal(m.input_shape).astype(np.float32) for m in models]
    calls = [lambda m=m, x=x: m(x) for m, x in zip(models, inputs)]

    def report(done, total):
        sys.stdout.write("progress %d %d\n" % (done, total))
        sys.stdout.flush()

    seconds, inner = time_calls(calls, job["warmup"], job["runs"], job["target_s"], rng, report)
    suffixes = {os.path.splitext(p)[1] for p in files}
    result = {"seconds": seconds, "inner": inner,
              "runtime_version": "; ".join(runtime_version(s) for s in sorted(suffixes))}
    with open(job["out"], "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
