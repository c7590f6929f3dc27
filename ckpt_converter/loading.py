"""Putting ~0.5 GB of checked weights into a MegEngine model quickly, with little memory.

MegEngine 1.13's ``state_dict()`` copies everything to NumPy and re-reshapes the BatchNorm
entries at every nesting level, and its ``load_state_dict`` calls that internally (seconds on
RepVGG-B3); a new model computes random initial values that a strict load overwrites anyway.
Here the model is built ``uninitialised()``, its parameters and buffers are walked once, each
replaced by a tensor made from the checkpoint's array, and the pages of the memory-mapped file
behind that array are dropped as soon as it has been copied.
"""
import contextlib
import contextvars
import functools
import mmap
import threading

import numpy as np


def expected_arrays(model):
    """{key: zero-stride array with the shape and dtype of ``model.state_dict()[key]``}: what
    the layout fitting needs, without copying any weights."""
    from model.checkpoint import state_tensors

    return {key: np.broadcast_to(np.zeros((), np.dtype(t.dtype)),
                                 (int(np.prod(t.shape)),) if flat else tuple(t.shape))
            for key, t, flat in state_tensors(model)}


def load_arrays(model, arrays, partial=False):
    """Replace every parameter and buffer of ``model`` by ``arrays[key]`` (already checked:
    every key present, shapes as ``model.state_dict()``; with ``partial``, keys absent from
    ``arrays`` keep their values), copying each once and dropping the file pages behind it
    right after. Each tensor's old storage is released before its new one is allocated, so
    the allocator can hand the same memory back."""
    from model.checkpoint import state_tensors

    for key, tensor, _flat in state_tensors(model):
        if partial and key not in arrays:
            continue
        array = arrays[key]
        shape, dtype, device = tensor.shape, tensor.dtype, tensor.device
        tensor._reset(type(tensor)(np.zeros((), dtype), device=device, no_cache=True))
        tensor._reset(type(tensor)(np.asarray(array).reshape(shape), dtype=dtype, device=device,
                                   no_cache=True))
        release_pages(array)


def release_pages(array):
    """Let the kernel drop the resident pages of the memory-mapped file under ``array``.

    The map is read-only and file-backed, so the data stays valid: pages are read again from
    the page cache if touched later. Used once a tensor has been copied into the model, so that
    resident memory holds about one copy of the weights, not two. No-op for other arrays."""
    base = array
    while not isinstance(base, mmap.mmap):  # views, as_strided's DummyArray, memoryview
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
        if base is None:
            return
    if array.size == 0:
        return
    start = np.frombuffer(base, dtype=np.uint8, count=1).__array_interface__["data"][0]
    low, high = np.byte_bounds(array)
    first = (low - start) // mmap.PAGESIZE * mmap.PAGESIZE
    last = min(len(base), -(-(high - start) // mmap.PAGESIZE) * mmap.PAGESIZE)
    if 0 <= first < last:
        base.madvise(mmap.MADV_DONTNEED, first, last - first)


# Set in the context (thread, task) that builds a model whose values a strict load will replace.
_SKIP_INIT = contextvars.ContextVar("ckpt_converter_skip_init", default=False)
_GATE_LOCK = threading.Lock()


def _gated(initializer):
    @functools.wraps(initializer)
    def gate(*args, **kwargs):
        if _SKIP_INIT.get():
            return None
        return initializer(*args, **kwargs)

    gate.ckpt_converter_gate = True
    return gate


def _install_gates():
    """Put a gate in front of each in-place initializer of ``megengine.module.init`` (the
    functions MegEngine modules call while constructing), once per process. A gate calls the
    initializer unless ``_SKIP_INIT`` is set in the calling context, so models built anywhere
    else, by other threads included, are initialised as usual."""
    from megengine.module import init

    with _GATE_LOCK:
        for name in dir(init):
            func = getattr(init, name)
            if name.endswith("_") and not name.startswith("_") and callable(func) \
                    and not getattr(func, "ckpt_converter_gate", False):
                setattr(init, name, _gated(func))


@contextlib.contextmanager
def uninitialised():
    """Build models without computing their random initial values, in this context only (the
    strict load that follows overwrites every parameter and buffer; for RepVGG-B3 this saves
    seconds). Thread- and task-local: it sets a context variable that the gates read."""
    _install_gates()
    token = _SKIP_INIT.set(True)
    try:
        yield
    finally:
        _SKIP_INIT.reset(token)
