"""Checkpoint dict <-> model: the one path from saved weights to a built model, and back.

A checkpoint (what ``common.checkpoint.save_checkpoint`` writes) is a dict::

    {"arch": "RepVGG-A0" | {...architecture dict...}, "form": "train" | "deploy",
     "num_classes": 10, "state_dict": {key: numpy array}, ...metadata}

``arch`` is a registered name, or for a searched network the architecture itself (the contents of
its ``arch.json``, never a path), so a checkpoint rebuilds its model from any folder. Metadata
(``classes``, ``dataset``, ``image_size``, ``preprocess``, ``epoch``, ...) travels with the weights:
``checkpoint_dict`` composes the dict, and tools that rewrite weights pass the metadata on.
Files holding a bare state dict, or one under ``"model"`` / ``"state_dict"``, load too (then the
architecture must be given).

No file I/O here: reading and writing files is ``common.checkpoint``'s.
"""
import numpy as np

import megengine.module as M

from common.limits import Limits
from errors import CheckpointError

from . import budget
from .derived import build_from_arch, check_arch, load_arch_file
from .registry import check_name, get_model

# Keys of a checkpoint dict that describe the weights rather than the run.
MODEL_KEYS = ("arch", "form", "num_classes", "state_dict")
# Keys that belong to one training run and do not describe a converted or exported model.
RUN_STATE_KEYS = ("optimizer", "step", "rng", "config", "ema")


def resolve_arch(arch):
    """A registered name stays a name; a path to an ``arch.json`` becomes its contents."""
    if isinstance(arch, str) and arch.endswith(".json"):
        return load_arch_file(arch)
    return arch


def arch_label(arch):
    """A short human name for ``arch`` (a registered name, or an architecture dict)."""
    if isinstance(arch, dict):
        return "searched network (space %s, %d layers)" % (arch.get("space", "?"),
                                                            len(arch.get("layers", ())))
    return str(arch)


def check_budget(arch, num_classes, deploy=False, limits=None, image_size=None, what=None):
    """Refuse (``LimitError``, one line) an architecture whose description declares more
    weights, activation memory or MACs per image than ``limits`` allow (``model.budget``:
    estimated from the description, nothing built). ``image_size``: the input the caller will
    run (default: the dict's recorded size, else 224)."""
    if isinstance(arch, dict):
        check_arch(arch)
        num_classes = num_classes or arch.get("num_classes")
        if not num_classes:
            return None  # build_from_arch says what is missing
    else:
        arch = check_name(arch)
    return budget.check(limits or Limits(), what or arch_label(arch), arch, num_classes,
                        image_size, deploy)


def build_model(arch, num_classes, deploy=False, limits=None, image_size=None, what=None):
    """Build ``arch``: a registered name (``model.get_model``), an architecture dict, or a path
    to an ``arch.json`` written by the search (``model.derived``). Every model a tool builds
    from a name, a checkpoint or an ``arch.json`` comes here, and ``check_budget`` refuses one
    that passes ``limits`` (None: the defaults) before anything is allocated."""
    arch = resolve_arch(arch)
    check_budget(arch, num_classes, deploy, limits, image_size, what)
    if isinstance(arch, dict):
        return build_from_arch(arch, num_classes=num_classes, deploy=deploy)
    return get_model(arch, deploy=deploy, num_classes=num_classes)


def _search_run_hint(checkpoint, what):
    """A search run's checkpoint (``search.py train``/``tas``) holds a supernet, not a model."""
    fmt = checkpoint.get("format") if isinstance(checkpoint, dict) else None
    if isinstance(fmt, str) and fmt.startswith("repvgg-") and "-run/" in fmt:
        raise CheckpointError(
            "%s is a search run's checkpoint (%s), not a model: write its architecture with "
            "'search.py derive' (the TAS run's folder already holds arch.json) and train it "
            "with 'train.py --arch arch.json'" % (what, fmt))


def state_dict_of(checkpoint, what="the checkpoint"):
    """The model weights inside a loaded checkpoint (wrapped or bare)."""
    _search_run_hint(checkpoint, what)
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model"):
            if isinstance(checkpoint.get(key), dict):
                return checkpoint[key]
        if checkpoint and all(isinstance(v, np.ndarray) for v in checkpoint.values()):
            return checkpoint
    raise CheckpointError("%s holds no state dict (expected a dict of arrays, or one under "
                          "'state_dict' or 'model')" % what)


def detect_form(state_dict, recorded=None):
    """'deploy' when the weights hold fused ``rbr_reparam`` convs, 'train' when they hold
    RepVGG branches; for a network without RepVGG blocks both forms are the same weights, and
    the recorded form (else 'train') is kept."""
    keys = ["." + k for k in state_dict]
    if any(".rbr_reparam." in k for k in keys):
        return "deploy"
    if any(".rbr_dense." in k for k in keys):
        return "train"
    return recorded if recorded in ("train", "deploy") else "train"


def infer_num_classes(state_dict):
    weight = state_dict.get("linear.weight")
    if weight is None:
        raise CheckpointError("cannot tell the number of classes: no 'linear.weight' in the "
                              "checkpoint")
    if np.ndim(weight) != 2:
        raise CheckpointError("'linear.weight' has shape %s; a classifier weight is 2-D "
                              "(classes, features)" % (tuple(np.shape(weight)),))
    return int(np.shape(weight)[0])


def state_tensors(model):
    """``(key, tensor, flatten)`` for every entry of ``model.state_dict()``, read directly.

    MegEngine 1.13's ``state_dict()`` re-reshapes the BatchNorm entries at every nesting level,
    which costs seconds on RepVGG-B3; this walks parameters and buffers once. BatchNorm tensors
    are 4-D inside MegEngine and 1-D in ``state_dict()`` (``flatten``).
    """
    modules = dict(model.named_modules())
    for key, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        owner = modules[key.rpartition(".")[0]]
        yield key, tensor, isinstance(owner, (M.BatchNorm1d, M.BatchNorm2d))


def expected_shapes(model):
    """{key: shape} of ``model.state_dict()``, without copying any weights."""
    return {key: (int(np.prod(t.shape)),) if flat else tuple(t.shape)
            for key, t, flat in state_tensors(model)}


def numpy_state_dict(model):
    """``model.state_dict()`` as numpy arrays (same keys and shapes), computed faster."""
    return {key: t.numpy().reshape(-1) if flat else t.numpy()
            for key, t, flat in state_tensors(model)}


def _list(title, items, limit=8):
    items = sorted(items)
    shown = ", ".join(items[:limit]) + (", ... (%d more)" % (len(items) - limit)
                                        if len(items) > limit else "")
    return "%d %s: %s" % (len(items), title, shown)


def check_shapes(expected, state_dict, what="checkpoint"):
    """Raise ``CheckpointError`` naming missing, unexpected and mis-shaped keys, if any.
    ``expected`` is ``{key: shape}`` (``expected_shapes(model)``)."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = ["%s %s vs model %s" % (k, tuple(np.shape(state_dict[k])), tuple(expected[k]))
                 for k in expected if k in state_dict
                 and tuple(np.shape(state_dict[k])) != tuple(expected[k])]
    problems = [_list(title, keys) for title, keys in (
        ("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
    if problems:
        raise CheckpointError("%s does not fit the model: %s" % (what, "; ".join(problems)))


def load_weights(model, state_dict, what="checkpoint"):
    """Strictly load ``state_dict`` into ``model`` (all keys, exact shapes)."""
    check_shapes(expected_shapes(model), state_dict, what)
    model.load_state_dict({k: np.asarray(v) for k, v in state_dict.items()}, strict=True)
    return model


def model_from_checkpoint(checkpoint, arch=None, what="checkpoint", limits=None,
                          image_size=None):
    """Build the model a loaded checkpoint describes and load its weights strictly.

    ``arch`` overrides the architecture recorded in the checkpoint (needed for bare state
    dicts). The form (train / deploy) and the number of classes come from the weights.
    Before building, the architecture's budget is checked (``check_budget``) with ``limits``
    at ``image_size`` (default: the recorded ``image_size``, else 224): a crafted checkpoint
    that records a giant layer or a (10^9, 0) classifier weight is refused in one line.
    Returns ``(model, info)`` with info = {"arch", "form", "num_classes"}; the model is in
    eval mode.
    """
    state_dict = state_dict_of(checkpoint, what)
    recorded = checkpoint if isinstance(checkpoint, dict) else {}
    arch = resolve_arch(arch or recorded.get("arch"))
    if not arch:
        raise CheckpointError("%s does not record its architecture; pass --arch" % what)
    info = {"arch": arch, "form": detect_form(state_dict, recorded.get("form")),
            "num_classes": infer_num_classes(state_dict)}
    model = build_model(arch, info["num_classes"], deploy=info["form"] == "deploy",
                        limits=limits, image_size=image_size or _recorded_size(recorded),
                        what=what)
    load_weights(model, state_dict, "%s (%s, %s form)" % (what, arch_label(arch), info["form"]))
    model.eval()
    return model, info


def _recorded_size(recorded):
    size = recorded.get("image_size")
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None


def metadata_of(checkpoint):
    """The keys of a checkpoint that describe the model's data and provenance (classes, data
    set, image size, preprocessing, epoch, ...): everything but the weights and run state."""
    if not isinstance(checkpoint, dict):
        return {}
    return {k: v for k, v in checkpoint.items()
            if k not in MODEL_KEYS and k not in RUN_STATE_KEYS and k != "model"}


def checkpoint_dict(state_dict, arch, form, **metadata):
    """The dict this project saves for a model: weights, what rebuilds it, and metadata."""
    arch = resolve_arch(arch)
    checkpoint = {"arch": arch, "form": form, "num_classes": infer_num_classes(state_dict),
                  "state_dict": state_dict}
    checkpoint.update(metadata)
    return checkpoint
