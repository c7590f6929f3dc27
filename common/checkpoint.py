"""MegEngine checkpoints: written atomically, read without executing code, matched strictly.

A checkpoint file is a pickle (``megengine.save``) of a dict holding numpy arrays, e.g.
``{"arch": "RepVGG-A0", "form": "train", "num_classes": 1000, "state_dict": {...}}``; files
holding a bare state dict, or one under ``"model"`` / ``"state_dict"``, load too. Reading uses an
allow-list unpickler (``common.safe_pickle``): a file cannot run code.
"""
import os
import pickle
import tempfile

import numpy as np

import megengine as mge

from .errors import UserError
from .safe_pickle import UnsafePickleError, safe_load


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the model."""


def to_numpy(tree):
    """Copy MegEngine tensors in a nested dict/list structure to numpy arrays."""
    if isinstance(tree, mge.Tensor):
        return tree.numpy()
    if isinstance(tree, dict):
        return {k: to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_numpy(v) for v in tree)
    return tree


def save_checkpoint(obj, path):
    """Write ``obj`` to ``path`` atomically: a temp file in the same folder, fsync, rename.

    A reader (or a run killed mid-write) sees either the old file or the complete new one, never
    a half-written file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            mge.save(to_numpy(obj), f, pickle_protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path):
    """Read a checkpoint file safely; returns what was saved."""
    try:
        with open(path, "rb") as f:
            return safe_load(f)
    except FileNotFoundError:
        raise CheckpointError("checkpoint not found: %s" % path) from None
    except IsADirectoryError:
        raise CheckpointError("checkpoint path is a folder: %s" % path) from None
    except UnsafePickleError as e:
        raise CheckpointError("%s: %s" % (path, e)) from None
    except Exception as e:  # truncated or not a pickle at all
        raise CheckpointError("%s is not a readable MegEngine checkpoint (%s: %s)"
                              % (path, type(e).__name__, e)) from None


def state_dict_of(checkpoint):
    """The model weights inside a loaded checkpoint (wrapped or bare)."""
    if isinstance(checkpoint, dict):
        for key in ("state_dict", "model"):
            if isinstance(checkpoint.get(key), dict):
                return checkpoint[key]
        if checkpoint and all(isinstance(v, np.ndarray) for v in checkpoint.values()):
            return checkpoint
    raise CheckpointError("the checkpoint holds no state dict (expected a dict of arrays, or "
                          "one under 'state_dict' or 'model')")


def _list(title, items, limit=8):
    items = sorted(items)
    shown = ", ".join(items[:limit]) + (", ... (%d more)" % (len(items) - limit)
                                        if len(items) > limit else "")
    return "%d %s: %s" % (len(items), title, shown)


def check_state_dict(model, state_dict, what="checkpoint"):
    """Raise ``CheckpointError`` naming missing, unexpected and mis-shaped keys, if any."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = ["%s %s vs model %s" % (k, tuple(np.shape(state_dict[k])), expected[k])
                 for k in expected if k in state_dict
                 and tuple(np.shape(state_dict[k])) != expected[k]]
    problems = [_list(title, keys) for title, keys in (
        ("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
    if problems:
        raise CheckpointError("%s does not fit the model: %s" % (what, "; ".join(problems)))


def load_weights(model, state_dict, what="checkpoint"):
    """Strictly load ``state_dict`` into ``model`` (all keys, exact shapes)."""
    check_state_dict(model, state_dict, what)
    model.load_state_dict({k: np.asarray(v) for k, v in state_dict.items()}, strict=True)
    return model


def detect_form(state_dict):
    """'deploy' when the weights hold fused ``rbr_reparam`` convs, else 'train'."""
    return "deploy" if any(".rbr_reparam." in "." + k for k in state_dict) else "train"


def infer_num_classes(state_dict):
    weight = state_dict.get("linear.weight")
    if weight is None:
        raise CheckpointError("cannot tell the number of classes: no 'linear.weight' in the "
                              "checkpoint")
    return int(np.shape(weight)[0])


def model_from_checkpoint(checkpoint, arch=None, what="checkpoint"):
    """Build the model a loaded checkpoint describes and load its weights strictly.

    ``arch`` overrides the architecture recorded in the checkpoint (needed for bare state
    dicts). The form (train / deploy) and the number of classes come from the weights.
    Returns ``(model, info)`` with info = {"arch", "form", "num_classes"}.
    """
    from model import get_model

    state_dict = state_dict_of(checkpoint)
    recorded = checkpoint.get("arch") if isinstance(checkpoint, dict) else None
    arch = arch or recorded
    if not arch:
        raise CheckpointError("%s does not record its architecture; pass --arch" % what)
    info = {"arch": arch, "form": detect_form(state_dict),
            "num_classes": infer_num_classes(state_dict)}
    model = get_model(arch, deploy=info["form"] == "deploy", num_classes=info["num_classes"])
    load_weights(model, state_dict, "%s (%s, %s form)" % (what, arch, info["form"]))
    return model, info


def model_checkpoint(model, arch, form):
    """The dict this project saves for a model: weights plus what is needed to rebuild it."""
    state_dict = to_numpy(model.state_dict())
    return {"arch": arch, "form": form, "num_classes": infer_num_classes(state_dict),
            "state_dict": state_dict}
