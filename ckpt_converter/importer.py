"""PyTorch checkpoint -> MegEngine model: read, find the weights, map, load strictly, fuse."""
import logging
import numpy as np

from errors import CheckpointError
from model.checkpoint import check_shapes, detect_form, infer_num_classes

from .errors import ConverterError
from .mapping import extract_state_dict, to_megengine
from .model_io import expected_arrays, skip_random_init
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
    with skip_random_init():
        model = build(deploy=form == "deploy", num_classes=num_classes)
    expected = expected_arrays(model)
    mapped, casts = to_megengine(state_dict, expected)
    del state_dict
    check_shapes({k: a.shape for k, a in expected.items()}, mapped,
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
    output_form = "deploy" if deploy or form == "deploy" else "train"
    report = dict(info, arch=arch_name, source=where, form=form, num_classes=num_classes,
                  casts=dict(casts), output_form=output_form)
    log.info("converted %s: %s", path, report)
    return model, report
