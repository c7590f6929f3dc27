"""Choosing MegEngine's compute device.

MegEngine's default device ("xpux") probes for CUDA on first use and, without a CUDA driver
library, prints a five-line banner and "debug: failed to load cuda func" lines. Choosing the
device explicitly, before the first tensor is created, avoids the probe and lets CPU runs use
every core ("multithreadN"), which the default single-threaded CPU device does not. Code that
never chooses (``import model`` in a script, a notebook) gets the probe run once, silently, when
this module is imported (``model`` imports it): see ``probe_cuda_quietly``.
"""
import ctypes.util
import os
import re
import sys

import megengine as mge

from errors import UserError

from . import cpus
from .cpus import check_threads, cpu_count, max_threads, threads_arg  # noqa: F401  (re-exported)


def cuda_available():
    # Without a CUDA driver library there is nothing to probe (and MegEngine's probe would log a
    # banner about it).
    return ctypes.util.find_library("cuda") is not None and mge.is_cuda_available()


def probe_cuda_quietly():
    """Resolve the default device ("xpux") now, with file descriptor 2 on /dev/null, where no
    CUDA driver library exists: MegEngine caches the answer, so later work on the default device
    prints nothing. The banner is a C ``fprintf`` to fd 2 (no log level or environment variable
    turns it off: MEGENGINE_LOGGING_LEVEL, MGB_LOG_LEVEL and RUNTIME_OVERRIDE_LOG_LEVEL were
    tried). Only this probe is silenced: importing MegEngine, and any error, reach the user."""
    if ctypes.util.find_library("cuda") is not None:
        return  # a driver is there: no banner, and what CUDA says may matter
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        return  # no usable stderr: nothing to keep clean
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        try:
            (mge.tensor([0.0], device="xpux") + 0).numpy()
        finally:
            os.dup2(saved, 2)
    finally:
        os.close(saved)


probe_cuda_quietly()


def gpu_count():
    return mge.get_device_count("gpu") if cuda_available() else 0


class DeviceError(UserError):
    """A device name that is unknown, or names hardware this machine does not have."""


DEVICE_HELP = "auto (GPU if usable, else all CPU cores), cpu (one thread), cpuN (N threads), gpu, gpuN"
# MegEngine's own spellings, accepted as they are: cpux, xpux, gpu1, gpu0:1, multithread4:0
_NATIVE = re.compile(r"^(?:(cpu|gpu|xpu)(\d+|x)(?::\d+)?|multithread(\d+):\d+)$")


def _need_gpu(name, index):
    count = gpu_count()
    if index >= count:
        raise DeviceError("--device %s needs %s, but %s usable here; use --device auto or cpu"
                          % (name, "a CUDA GPU" if index == 0 else "CUDA GPU %d" % index,
                             "no CUDA GPU is" if count == 0 else "only %d CUDA GPU%s are"
                             % (count, "" if count == 1 else "s")))


def resolve_device(name="auto"):
    """Map a user-facing device name to a MegEngine device string.

    auto      first GPU when CUDA is usable, else the multi-threaded CPU device on all cores
    cpu       single-threaded CPU
    cpuN      (e.g. cpu2) the multi-threaded CPU device with N threads (N <= max_threads())
    gpu/gpuN  CUDA device (refused when there is no such GPU)
    MegEngine's own names (``cpux``, ``xpux``, ``multithread4:0``, ``gpu0:1``) pass
    unchanged. Anything else raises ``DeviceError`` (one line).
    """
    name = str(name).strip()
    if name == "auto":
        if cuda_available():
            return "gpu0"
        return "multithread%d:0" % cpus.cpu_count() if cpus.cpu_count() > 1 else "cpux"
    if name in ("cpu", "cpu1"):
        return "cpux"
    if name.startswith("cpu") and name[3:].isdigit():
        return "multithread%d:0" % check_threads(int(name[3:]), "--device %s: threads" % name)
    if name == "gpu" or (name.startswith("gpu") and name[3:].isdigit()):
        index = int(name[3:] or 0)
        _need_gpu(name, index)
        return "gpu%d" % index
    native = _NATIVE.match(name)
    if not native:
        raise DeviceError("unknown device %r; use %s" % (name, DEVICE_HELP))
    if native.group(3):
        check_threads(int(native.group(3)), "--device %s: threads" % name)
    if native.group(1) == "gpu":
        _need_gpu(name, 0 if native.group(2) == "x" else int(native.group(2)))
    return name


def use_device(name="auto"):
    """Set the default device for everything created afterwards; returns the device string."""
    device = resolve_device(name)
    mge.set_default_device(device)
    return device
