"""Checkpoint file -> MegEngine model: read, find the weights, map the layout, check, load
strictly, fuse."""
import functools
import logging

from model.checkpoint import check_shapes, detect_form, expected_shapes

from .layouts import detect_layout, get_layout, to_official
from .loading import expected_arrays, load_arrays, uninitialised
from .errors import ConverterError
from .mapping import check_storage, check_tensors, extract_state_dict, to_megengine
from .safetensors_reader import looks_like_safetensors, read_safetensors
from .torch_reader import ZIP_MAGIC, map_file, read_torch_file

log = logging.getLogger(__name__)


def read_checkpoint(path):
    """Everything in a checkpoint file (``torch.save`` zip or legacy, ``.safetensors``, or a plain
    pickle of arrays as ``megengine.save`` and ``paddle.save`` write).

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
    """``(build(deploy, num_classes), name)``; an unknown registered name raises the registry's
    ``UnknownModelError`` (a ``UserError``) when building."""
    if callable(arch):
        func = getattr(arch, "func", arch)  # functools.partial
        return arch, "custom %s" % getattr(func, "__name__", type(func).__name__)
    from model import get_model

    return functools.partial(get_model, arch), arch


def convert(path, arch, deploy=False, ema=False, layout=None):
    """Build ``arch`` and load the weights of the checkpoint ``path`` into it, strictly.

    ``arch`` is a registered name (``"RepVGG-A0"``) or a builder ``f(deploy=..., num_classes=...)``
    returning a MegEngine model with the official parameter names. The checkpoint's layout
    (official, timm, mmpretrain, basecls, paddleclas; see ``layouts``) is detected from its keys
    unless ``layout`` names one; its form (train or deploy) and number of classes are detected
    from its weights; ``deploy=True`` fuses a train-form model afterwards; ``ema=True`` takes the
    EMA weights of a training checkpoint. Returns ``(model, report)`` with the model in eval mode.
    """
    build, arch_name = _builder(arch)
    obj, info = read_checkpoint(path)
    state_dict, where = extract_state_dict(obj, ema=ema)
    del obj
    layout = detect_layout(state_dict) if layout is None else get_layout(layout)
    state_dict, notes = to_official(state_dict, layout)
    num_classes = check_tensors(state_dict, path)
    form = detect_form(state_dict)
    with uninitialised():
        model = build(deploy=form == "deploy", num_classes=num_classes)
    expected = expected_arrays(model)
    mapped, casts = to_megengine(state_dict, expected)
    del state_dict
    check_shapes({key: array.shape for key, array in expected.items()}, mapped,
                 "%s (%s layout, %s, %s form, weights at %s)"
                 % (path, layout.name, arch_name, form, where))
    load_arrays(model, mapped)
    del mapped
    if deploy and form == "train":
        from model import convert_to_deploy
        convert_to_deploy(model, inplace=True)
    model.eval()
    output_form = "deploy" if deploy or form == "deploy" else "train"
    report = dict(info, arch=arch_name, source=where, layout=layout.name, notes=notes, form=form,
                  num_classes=num_classes, casts=dict(casts), output_form=output_form)
    log.info("converted %s: %s", path, report)
    return model, report


def _keys(keys, limit=6):
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (", ... (%d more)" % (len(keys) - limit)
                                      if len(keys) > limit else "")


def load_into(model, path, layout=None, ema=False):
    """Load the checkpoint ``path`` (any layout ``convert`` reads) into an existing ``model``
    whose keys are a part of the file's: a backbone (``get_model(..., features_only=True)``,
    the classifier's head is dropped), or the backbone inside a user's model
    (``load_into(net.backbone, path)``).

    The file's form must be the model's: train-form weights into a deploy-form model, or the
    other way round, are refused with the way to convert. Mis-shaped tensors are refused; keys
    of the file that the model lacks are dropped, keys of the model that the file lacks keep
    their values; both are listed in ``report["summary"]``, one line (also logged). Returns the
    report dict (layout, form, loaded, dropped, missing, summary)."""

    obj, info = read_checkpoint(path)
    state_dict, where = extract_state_dict(obj, ema=ema)
    del obj
    layout = detect_layout(state_dict) if layout is None else get_layout(layout)
    state_dict, notes = to_official(state_dict, layout)
    check_storage(state_dict, path)
    form, model_form = detect_form(state_dict), detect_form(expected_shapes(model))
    if form != model_form:
        hint = ("build the model in train form (deploy=False), load the file, then fuse it "
                "with model.convert_to_deploy" if form == "train" else
                "fused weights cannot be split into branches: build the model with "
                "deploy=True, or load the train-form checkpoint")
        raise ConverterError("%s holds %s-form weights but %s is in %s form: %s"
                             % (path, form, type(model).__name__, model_form, hint))
    expected = expected_arrays(model)
    mapped, casts = to_megengine(state_dict, expected)
    del state_dict
    common = {k: v for k, v in mapped.items() if k in expected}
    dropped = [k for k in mapped if k not in expected]
    missing = [k for k in expected if k not in mapped]
    if not common:
        raise ConverterError("no tensor of %s (%s layout; keys %s) fits %s (keys %s)"
                             % (path, layout.name, _keys(mapped), type(model).__name__,
                                _keys(expected)))
    check_shapes({k: expected[k].shape for k in common}, common,
                 "%s (%s layout, %s form)" % (path, layout.name, form))
    load_arrays(model, common, partial=True)
    summary = ("loaded %d tensors of %s (%s layout, %s form) into %s; dropped %d%s; "
               "missing %d%s" % (len(common), path, layout.name, form, type(model).__name__,
                                 len(dropped), " (%s)" % _keys(dropped) if dropped else "",
                                 len(missing), " (%s)" % _keys(missing) if missing else ""))
    log.info(summary)
    return dict(info, source=where, layout=layout.name, notes=notes, form=form,
                casts=dict(casts), loaded=len(common), dropped=dropped, missing=missing,
                summary=summary)
