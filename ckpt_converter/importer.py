"""PyTorch checkpoint -> MegEngine model: read, find the weights, map, load strictly, fuse."""
import contextlib
import logging
import types

import numpy as np

from common.checkpoint import (CheckpointError, check_state_dict, detect_form,
                               infer_num_classes)

from .errors import ConverterError
from .mapping import extract_state_dict, to_megengine
from .safetensors_reader import looks_like_safetensors, read_safetensors
from .torch_reader import ZIP_MAGIC, map_file, read_torch_file, release_pages

log = logging.getLogger(__name__)


def read_checkpoint(path):
    """Everything in a PyTorch checkpoint (``torch.save`` zip or legacy, or ``.safetensors``).

    Returns ``(obj, info)``: the saved object with every tensor as a NumPy array (read-only
    views of the memory-mapped file; bfloat16 widened to float32) and info = {"format",
    "tensors", "placeholders": {class name: count}} where placeholders are the inert stand-ins
    for classes outside the allow-list.
    """
    buf = map_file(path)
    if buf[:4] != ZIP_MAGIC and looks_like_safetensors(buf):
        return read_safetensors(buf, path)
    return read_torch_file(buf, path)


def load_torch_checkpoint(path):
    """The object a PyTorch checkpoint holds, tensors as NumPy arrays (see ``read_checkpoint``)."""
    return read_checkpoint(path)[0]


def _builder(arch):
    if callable(arch):
        func = getattr(arch, "func", arch)  # functools.partial
        return arch, "custom %s" % getattr(func, "__name__", type(func).__name__)
    from model import UnknownModelError, get_model

    def build(deploy, num_classes):
        try:
            return get_model(arch, deploy=deploy, num_classes=num_classes)
        except UnknownModelError as e:
            raise ConverterError(str(e)) from None

    return build, arch


def _state_tensors(model):
    """``(key, tensor, flatten)`` for every entry of ``model.state_dict()``, read directly.

    MegEngine 1.13's ``state_dict()`` re-reshapes the BatchNorm entries at every nesting level,
    which costs seconds on RepVGG-B3; this walks parameters and buffers once. BatchNorm tensors
    are 4-D inside MegEngine and 1-D in ``state_dict()`` (``flatten``).
    """
    import megengine.module as M

    modules = dict(model.named_modules())
    for key, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        owner = modules[key.rpartition(".")[0]]
        yield key, tensor, isinstance(owner, (M.BatchNorm1d, M.BatchNorm2d))


def expected_arrays(model):
    """{key: zero-stride array with the shape and dtype of ``model.state_dict()[key]``}: what
    the strict check needs, without copying any weights."""
    return {key: np.broadcast_to(np.zeros((), np.dtype(t.dtype)),
                                 (int(np.prod(t.shape)),) if flat else tuple(t.shape))
            for key, t, flat in _state_tensors(model)}


def numpy_state_dict(model):
    """``model.state_dict()`` (NumPy arrays, same keys and shapes), computed faster."""
    return {key: t.numpy().reshape(-1) if flat else t.numpy()
            for key, t, flat in _state_tensors(model)}


def _no_op(*args, **kwargs):
    return None


@contextlib.contextmanager
def _skip_random_init():
    """Build a model without computing its random initial values (MegEngine modules call the
    in-place initializers of ``megengine.module.init`` while constructing): the strict load that
    follows overwrites every parameter and buffer. For RepVGG-B3 this saves most of the time
    and a copy of the weights. The initializers are restored on exit."""
    from megengine.module import init

    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_")
             and callable(getattr(init, n))]
    saved = {n: getattr(init, n) for n in names}
    try:
        for name in names:
            setattr(init, name, _no_op)
        yield
    finally:
        for name, func in saved.items():
            setattr(init, name, func)


def convert(path, arch, deploy=False, ema=False):
    """Build ``arch`` and load the weights of the PyTorch checkpoint ``path`` into it, strictly.

    ``arch`` is a registered name (``"RepVGG-A0"``) or a builder ``f(deploy=..., num_classes=...)``
    returning a MegEngine model with the official parameter names. The checkpoint's form (train
    or deploy) and number of classes are detected from its weights; ``deploy=True`` fuses a
    train-form model afterwards; ``ema=True`` takes the EMA weights of a training checkpoint.
    Returns ``(model, report)`` with the model in eval mode.
    """
    try:
        return _convert(path, arch, deploy, ema)
    except CheckpointError as e:  # one error type for every problem with the input
        if isinstance(e, ConverterError):
            raise
        raise ConverterError(str(e)) from None


def _convert(path, arch, deploy, ema):
    build, arch_name = _builder(arch)
    obj, info = read_checkpoint(path)
    state_dict, where = extract_state_dict(obj, ema=ema)
    del obj
    form = detect_form(state_dict)
    num_classes = infer_num_classes(state_dict)
    with _skip_random_init():
        model = build(deploy=form == "deploy", num_classes=num_classes)
    expected = expected_arrays(model)
    mapped, casts = to_megengine(state_dict, expected)
    del state_dict
    check_state_dict(types.SimpleNamespace(state_dict=lambda: expected), mapped,
                     "%s (%s, %s form, weights at %s)" % (path, arch_name, form, where))
    previous = []

    def load_one(key, var):  # MegEngine copies the array we return into the model
        for array in previous:
            release_pages(array)
        previous[:] = [mapped[key]]
        return np.asarray(mapped[key])

    model.load_state_dict(load_one, strict=True)  # every key is there: checked above
    for array in previous:
        release_pages(array)
    del mapped, previous
    if deploy and form == "train":
        from model import convert_to_deploy
        convert_to_deploy(model, inplace=True)
    model.eval()
    report = dict(info, arch=arch_name, source=where, form=form, num_classes=num_classes,
                  casts=dict(casts), output_form="deploy" if deploy or form == "deploy" else "train")
    log.info("converted %s: %s", path, report)
    return model, report
