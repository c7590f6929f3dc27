"""common/device.py: device names become MegEngine devices or one-line errors (m7, m6)."""
import argparse

import pytest

import common.cpus as cpus
import common.device as device
from errors import UserError


def test_known_names():
    assert device.resolve_device("cpu") == "cpux"
    assert device.resolve_device("cpu1") == "cpux"
    assert device.resolve_device("cpu2") == "multithread2:0"
    for native in ("cpux", "xpux", "multithread2:0"):
        assert device.resolve_device(native) == native


@pytest.mark.parametrize("name", ["banana", "gpux0", "cpu-2", "", "multithread:0"])
def test_unknown_names_are_user_errors(name):
    with pytest.raises(UserError, match="unknown device"):
        device.resolve_device(name)


@pytest.mark.parametrize("name", ["gpu", "gpu0", "gpu1", "gpu0:1"])
def test_gpu_without_a_gpu_is_a_user_error(name, monkeypatch):
    monkeypatch.setattr(device, "cuda_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU is usable here"):
        device.resolve_device(name)


def test_auto_without_a_gpu_uses_the_cores(monkeypatch):
    monkeypatch.setattr(device, "cuda_available", lambda: False)
    monkeypatch.setattr(cpus, "cpu_count", lambda: 3)
    assert device.resolve_device("auto") == "multithread3:0"


def test_thread_counts_are_bounded(monkeypatch):
    monkeypatch.setattr(cpus, "cpu_count", lambda: 2)
    assert device.resolve_device("cpu8") == "multithread8:0"
    for name in ("cpu9", "cpu999", "multithread999:0", "cpu0x"):
        with pytest.raises(UserError):
            device.resolve_device(name)
    assert device.threads_arg("8") == 8
    for text in ("0", "9", "-1", "many"):
        with pytest.raises(argparse.ArgumentTypeError):
            device.threads_arg(text)
