"""The full training state in one checkpoint, and putting it back.

A training checkpoint is a ``model.checkpoint.checkpoint_dict`` (``arch``, ``form``, ``num_classes``,
``state_dict``) plus ``optimizer`` (MegEngine's optimizer state: momentum buffers and param
groups), ``epoch`` (epochs completed), ``step`` (optimizer steps taken), ``best_acc1``,
``best_epoch``, ``rng`` (numpy's and Python's global generator states) and ``config`` (the
run's settings, used to refuse resuming with a different recipe). The data order and
augmentation are functions of (seed, epoch, index) and MegEngine's generator is re-seeded from
(seed, epoch) at every epoch start, so these suffice to continue exactly.
"""
import random

import numpy as np

from common.checkpoint import load_checkpoint, save_checkpoint
from errors import CheckpointError
from model.checkpoint import checkpoint_dict, load_weights, numpy_state_dict

# Settings that change the optimisation itself: resuming with other values is refused.
RECIPE_KEYS = ("arch", "dataset", "image_size", "batch_size", "epochs", "lr", "momentum",
               "weight_decay", "custwd", "warmup_epochs", "label_smoothing", "seed",
               "max_steps_per_epoch", "world_size")


def capture(model, optimizer, arch, epoch, step, best_acc1, best_epoch, config):
    state = checkpoint_dict(numpy_state_dict(model), arch, "train")
    np_state = np.random.get_state()
    state.update(
        optimizer=optimizer.state_dict(), epoch=int(epoch), step=int(step),
        best_acc1=float(best_acc1), best_epoch=int(best_epoch),
        rng={"numpy": list(np_state), "python": list(random.getstate())},
        config={k: config[k] for k in RECIPE_KEYS if k in config})
    return state


def save(path, *args, **kwargs):
    return save_checkpoint(capture(*args, **kwargs), path)


def _tuple(x):
    return tuple(_tuple(v) for v in x) if isinstance(x, list) else x


def restore(path, model, optimizer, config):
    """Load ``path`` into model and optimizer; returns (epoch, step, best_acc1, best_epoch)."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "optimizer" not in state or "epoch" not in state:
        raise CheckpointError("%s is not a training checkpoint from train.py (no optimizer "
                              "state); to fine-tune from weights use --weights" % path)
    saved = state.get("config", {})
    changed = ["%s %r -> %r" % (k, saved[k], config[k]) for k in RECIPE_KEYS
               if k in saved and k in config and saved[k] != config[k]]
    if changed:
        raise CheckpointError("cannot resume %s with different settings: %s (resume with the "
                              "original ones or start a new --output)" % (path, "; ".join(changed)))
    load_weights(model, state["state_dict"], path)
    optimizer.load_state_dict(state["optimizer"])
    rng = state.get("rng", {})
    if "numpy" in rng:
        np.random.set_state(tuple(rng["numpy"]))
    if "python" in rng:
        random.setstate(_tuple(rng["python"]))
    return state["epoch"], state["step"], state["best_acc1"], state["best_epoch"]
