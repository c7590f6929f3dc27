"""Choosing MegEngine's compute device.

MegEngine's default device ("xpux") probes for CUDA on first use and logs a banner when there is
none. Choosing the device explicitly, before the first tensor is created, avoids the probe and
lets CPU runs use every core ("multithreadN"), which the default single-threaded CPU device does
not.
"""
import ctypes.util
import os

import megengine as mge


def cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def cuda_available():
    # Without a CUDA driver library there is nothing to probe (and MegEngine's probe would log a
    # banner about it).
    return ctypes.util.find_library("cuda") is not None and mge.is_cuda_available()


def resolve_device(name="auto"):
    """Map a user-facing device name to a MegEngine device string.

    auto      first GPU when CUDA is usable, else the multi-threaded CPU device on all cores
    cpu       single-threaded CPU
    cpuN      (e.g. cpu2) the multi-threaded CPU device with N threads
    gpu/gpuN  CUDA device
    anything else is passed to MegEngine unchanged (e.g. "multithread4:0", "cpu0").
    """
    if name == "auto":
        if cuda_available():
            return "gpu0"
        name = "cpu%d" % cpu_count()
    if name == "cpu" or name == "cpu1":
        return "cpux"
    if name.startswith("cpu") and name[3:].isdigit():
        return "multithread%d:0" % int(name[3:])
    if name == "gpu":
        return "gpu0"
    return name


def use_device(name="auto"):
    """Set the default device for everything created afterwards; returns the device string."""
    device = resolve_device(name)
    mge.set_default_device(device)
    return device
