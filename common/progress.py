"""The one progress display of every tool: a tqdm bar on a terminal, plain lines off one.

tqdm redraws its bar with ``\\r``; written to a log file (``make run > log``, a CI job) each
redraw is kept, tens of KB of them per run. Off a terminal this prints instead one plain line at
most every ``interval`` seconds (nothing for a loop that ends sooner) and, with ``leave=True``,
one line when the loop ends:

    epoch 1/3: 40/100, 12 s (3.3 step/s), loss=2.113 acc=31.2%

Usage, as with tqdm::

    for batch in progress(loader, desc="val", unit="batch"): ...
    bar = progress(total=steps, desc="epoch 1/3", leave=False)
    bar.set_postfix(loss="%.3f" % loss); bar.update(1); bar.close()   # or ``with bar:``
"""
import sys
import time


def progress(iterable=None, total=None, desc="", unit="it", leave=True, enabled=True,
             stream=None, interval=10.0):
    """A progress display over ``iterable`` (or counted by ``update``): a tqdm bar when
    ``stream`` (stderr by default) is a terminal, plain lines every ``interval`` s otherwise,
    nothing when ``enabled`` is False. Has ``update(n)``, ``set_postfix(**values)``, ``close()``
    and iterates over ``iterable``."""
    stream = sys.stderr if stream is None else stream
    if total is None and iterable is not None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if enabled and _is_terminal(stream):
        from tqdm import tqdm
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream,
                    dynamic_ncols=True)
    return PlainProgress(iterable, total, desc, unit, leave, enabled, stream, interval)


def _is_terminal(stream):
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-like stream without a tty
        return False


class PlainProgress:
    """tqdm's small interface (iterate, update, set_postfix, close) as occasional plain lines."""

    def __init__(self, iterable, total, desc, unit, leave, enabled, stream, interval,
                 clock=time.monotonic):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.leave, self.enabled, self.stream, self.interval = leave, enabled, stream, interval
        self.clock = clock
        self.n, self.postfix, self.closed = 0, "", False
        self.start = self.last = clock()

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self):
        return self.total if self.total is not None else len(self.iterable)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def set_postfix(self, refresh=True, **values):
        self.postfix = " ".join("%s=%s" % kv for kv in values.items())

    def update(self, n=1):
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self.write(now)

    def close(self):
        if self.closed:
            return
        self.closed = True
        if self.leave:
            self.write(self.clock(), done=True)

    def line(self, now, done=False):
        count = "%d/%d" % (self.n, self.total) if self.total is not None else "%d" % self.n
        seconds = now - self.start
        return "%s: %s, %.0f s (%.1f %s/s)%s%s" % (
            self.desc or "progress", count, seconds, self.n / max(seconds, 1e-9), self.unit,
            ", done" if done else "", ", " + self.postfix if self.postfix else "")

    def write(self, now, done=False):
        if self.enabled:
            self.stream.write(self.line(now, done) + "\n")
            self.stream.flush()
