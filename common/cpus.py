"""CPU counts and the thread-count limit every command shares.

MegEngine-free on purpose: a process that runs an ONNX model (``deploy/runtime.py``) must not
start MegEngine's thread pool beside ONNX Runtime's. ``common/device.py`` builds on this.
"""
import argparse
import os

from errors import UserError

MAX_THREADS_PER_CPU = 4  # more only adds contention: 999 threads on 2 cores gave a load of 117


class ThreadCountError(UserError):
    """A thread count below 1 or above ``max_threads()``."""


def cpu_count():
    """CPUs this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def max_threads():
    return MAX_THREADS_PER_CPU * cpu_count()


def _out_of_range(n):
    """Why ``n`` is no thread count, or None when it is one."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= max_threads():
        return ("must be between 1 and %d (%d x the %d usable CPU cores here; more threads than "
                "cores only slow things down), got %r"
                % (max_threads(), MAX_THREADS_PER_CPU, cpu_count(), n))
    return None


def check_threads(n, what="--threads"):
    """``n`` if 1 <= n <= ``max_threads()``, else ``ThreadCountError`` (one line)."""
    reason = _out_of_range(n)
    if reason:
        raise ThreadCountError("%s %s" % (what, reason))
    return n


def threads_arg(text):
    """argparse ``type=`` for a ``--threads`` option (see ``check_threads``)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected an integer, got %r" % text) from None
    reason = _out_of_range(n)
    if reason:  # argparse names the option itself
        raise argparse.ArgumentTypeError(reason)
    return n
