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


# Instruction-set extensions that decide which kernels a runtime picks (x86 and ARM names as
# /proc/cpuinfo spells them); a tuned model file is valid only for the same name and set.
_ISA_PREFIXES = ("sse", "ssse3", "avx", "fma", "f16c", "amx", "popcnt", "asimd", "sve", "neon",
                 "dotprod", "fp16", "bf16", "i8mm")
FAKE_CPU_ENV = "REPVGG_FAKE_CPU"  # tests: pretend to be another CPU (a name)


def _cpuinfo():
    """``(model name, set of ISA flags)`` from /proc/cpuinfo (empty where there is none)."""
    name, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model", "hardware") and name is None:
                    name = value.strip()
                elif key in ("flags", "features") and not flags:
                    flags = {v for v in value.split() if v.startswith(_ISA_PREFIXES)}
    except OSError:
        pass
    return name, flags


def cpu_name():
    """This CPU's model name, as benchmark tables print it."""
    fake = os.environ.get(FAKE_CPU_ENV)
    if fake:
        return fake
    import platform

    return _cpuinfo()[0] or platform.processor() or platform.machine() or "unknown CPU"


def simd_level():
    """The widest vector extension, in words: 'AVX-512 (avx512f, ... )', 'AVX2', ..."""
    _, flags = _cpuinfo()
    if "avx512f" in flags:
        extra = sorted(f[len("avx512"):].strip("_") for f in flags
                       if f.startswith("avx512") and f != "avx512f")
        return "AVX-512 (f, %s)" % ", ".join(extra) if extra else "AVX-512"
    for flag, label in (("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2"),
                        ("sve", "SVE"), ("asimd", "NEON")):
        if flag in flags:
            return label
    return "unknown"


def has_bf16():
    """Whether this CPU computes in bfloat16 natively (AVX-512 BF16, AMX, ARM BF16)."""
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & _cpuinfo()[1])


def cpu_fingerprint():
    """What a fast-run algorithm cache and a CPU-specific layout are valid for: the machine,
    the model name and its ISA extensions. Another CPU gets the portable path."""
    import platform

    fake = os.environ.get(FAKE_CPU_ENV)
    if fake:
        return "%s|%s|" % (platform.machine(), fake)
    name, flags = _cpuinfo()
    return "%s|%s|%s" % (platform.machine(), name or "?", ",".join(sorted(flags)))
