"""The one timer of the benchmarks: interleaved rounds, median per entry."""
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
