"""The one timer of the benchmarks: interleaved rounds, median per entry; and the
benchmark workers' ``run`` command built on it."""
import statistics
import time


def interleaved_medians(calls, warmup=1, runs=5):
    """Median seconds of one call of each entry of ``calls`` (``{name: fn}``).

    Every entry is called ``warmup`` times untimed, then the timed rounds go round-robin (round r
    of every entry, then round r + 1), so that slow drifts of the machine's load hit every entry
    alike. ``fn()`` must wait for its own result (MegEngine runs asynchronously: end with
    ``.numpy()``). Returns ``{name: median seconds}``.
    """
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in calls}
    for _ in range(runs):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}



def add_run_args(parser):
    """The flags of a benchmark worker's ``run`` command (benchmarks/*_bench_worker.py, started
    by benchmarks/bench_deploy.py): the input, where its logits go, threads, warm-up and runs."""
    parser.add_argument("--input", required=True)
    parser.add_argument("--logits", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)


def time_run(args, open_model):
    """A worker's ``run`` command: ``run = open_model(x)`` on the ``--input`` array (load_s);
    the first call (first_s: compiling, profiling and allocating happen there), its output saved
    as ``--logits``; then the median of ``--runs`` timed calls after ``--warmup`` (seconds)."""
    import numpy as np

    x = np.load(args.input)
    start = time.perf_counter()
    run = open_model(x)
    load = time.perf_counter() - start
    np.save(args.logits, np.asarray(run(), np.float32))
    first = time.perf_counter() - start - load
    seconds = interleaved_medians({"run": run}, args.warmup, args.runs)["run"]
    return {"seconds": seconds, "load_s": load, "first_s": first}
