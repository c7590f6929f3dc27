"""MegEngine checkpoint files: written atomically, read without executing code.

A checkpoint file is a pickle (``megengine.save``) of a dict holding numpy arrays; what the dict
holds and how a model is built from it is ``model.checkpoint``'s business. Reading uses an
allow-list unpickler (``common.safe_pickle``): a file cannot run code.
"""
import pickle

import megengine as mge

from errors import CheckpointError

from .atomic import atomic_write
from .limits import Limits
from .safe_pickle import UnsafePickleError, safe_load


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
    """Write ``obj`` (tensors become numpy arrays) to ``path`` atomically (``common.atomic``).

    A reader (or a run killed mid-write) sees either the old file or the complete new one, never
    a half-written file.
    """
    with atomic_write(path) as f:
        mge.save(to_numpy(obj), f, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    return path


def load_checkpoint(path, limits=None):
    """Read a checkpoint file safely; returns what was saved.

    Before anything is unpickled the file's opcodes are scanned (``safe_pickle.scan``): every
    payload must fit in the bytes the file holds, and what the load needs must fit in
    ``limits.max_memory`` (``common.limits``; None: the defaults, 2 GiB)."""
    from .filekind import refuse_non_checkpoint
    refuse_non_checkpoint(path)  # a .pth, .onnx, .mge, .bnn or image: say what it is
    limits = limits or Limits()
    try:
        with open(path, "rb") as f:
            return safe_load(f, max_memory=limits.max_memory)
    except FileNotFoundError:
        raise CheckpointError("checkpoint not found: %s" % path) from None
    except IsADirectoryError:
        raise CheckpointError("checkpoint path is a folder: %s" % path) from None
    except UnsafePickleError as e:
        raise CheckpointError("%s: %s" % (path, e)) from None
    except Exception as e:  # truncated or not a pickle at all
        raise CheckpointError("%s is not a readable MegEngine checkpoint (%s: %s)"
                              % (path, type(e).__name__, e)) from None
