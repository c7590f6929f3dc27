"""The full training state in one checkpoint, putting it back, and initial weights.

A training checkpoint (``latest.pkl``) is a ``model.checkpoint.checkpoint_dict`` (``arch``,
``form``, ``num_classes``, ``state_dict``) plus ``optimizer`` (MegEngine's optimizer state:
momentum buffers and param groups), ``epoch`` (epochs completed), ``step`` (optimizer steps
taken), ``best_acc1``, ``best_epoch``, ``best_val_loss`` (best.pkl's, the tie-break), ``rng``
(numpy's and Python's global generator states), ``ema`` (the weight average's state, when EMA is on) and ``config`` (``TrainConfig`` as a dict:
``--resume`` continues with it, ``resumed_config``). The data order, augmentation and mixing are
functions of (seed, epoch, index) and MegEngine's generator is re-seeded from (seed, epoch) at
every epoch start, so these suffice to continue exactly.
"""
import random
from dataclasses import fields

import numpy as np

import megengine.module as M

from common.checkpoint import load_checkpoint, save_checkpoint
from errors import CheckpointError
from model.checkpoint import (check_shapes, checkpoint_dict, detect_form, expected_shapes,
                              load_weights, numpy_state_dict, state_dict_of)

from .config import TrainConfig, resume_fields
from .recipe import dataset_defaults


def capture(model, optimizer, config, *, epoch, step, best_acc1, best_epoch,
            best_val_loss=float("inf"), ema=None, **metadata):
    state = checkpoint_dict(numpy_state_dict(model), config.arch, "train", **metadata)
    np_state = np.random.get_state()
    state.update(
        optimizer=optimizer.state_dict(), epoch=int(epoch), step=int(step),
        best_acc1=float(best_acc1), best_epoch=int(best_epoch),
        best_val_loss=float(best_val_loss),
        rng={"numpy": list(np_state), "python": list(random.getstate())},
        config=config.as_dict())
    if ema is not None:
        state["ema"] = ema.state_dict()
    return state


def save(path, *args, **kwargs):
    return save_checkpoint(capture(*args, **kwargs), path)


def _tuple(x):
    return tuple(_tuple(v) for v in x) if isinstance(x, list) else x


def changed_settings(saved, config):
    """'name old -> new' for every resume-checked field that differs from the saved config."""
    current = config.as_dict()
    return ["%s %r -> %r" % (k, saved[k], current[k]) for k in resume_fields()
            if k in saved and saved[k] != current[k]]


def _training_state(path):
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "optimizer" not in state or "epoch" not in state:
        raise CheckpointError("%s is not a training checkpoint from train.py (no optimizer "
                              "state); to fine-tune from weights use --weights" % path)
    return state


def resumed_config(path, typed, output):
    """``--resume``: the settings recorded in ``path`` (a latest.pkl), with the flags typed
    now (``typed``: ``common.flags.given``) on top. A typed flag of a field the run must keep
    (``resume_fields``) has to equal the recorded value, else one ``CheckpointError`` names
    every such flag; the others (``--workers``, ``--device``, ``--no-progress`` ...) apply.
    So ``--resume --output DIR`` alone continues any run, whatever data set and recipe it
    used. A recorded field that an older train.py did not have takes its default."""
    saved = _training_state(path).get("config")
    if not isinstance(saved, dict):
        raise CheckpointError("%s records no settings to resume with" % path)
    known = {f.name for f in fields(TrainConfig)}
    values = dict(dataset_defaults(saved.get("dataset", "digits")))
    values.update((k, _tuple(v)) for k, v in saved.items() if k in known)
    changed = ["--%s %r -> %r" % (k.replace("_", "-"), values.get(k), typed[k])
               for k in resume_fields() if k in typed and typed[k] != values.get(k)]
    if changed:
        raise CheckpointError("cannot resume %s with different settings: %s (leave them out to "
                              "keep the run's own, or start a new --output)"
                              % (path, "; ".join(changed)))
    values.update(typed, resume=True, output=output)
    return TrainConfig(**values)


def restore(path, model, optimizer, config, ema=None):
    """Load ``path`` into model, optimizer (and EMA); returns the checkpoint dict."""
    state = _training_state(path)
    changed = changed_settings(state.get("config", {}), config)
    if changed:
        raise CheckpointError("cannot resume %s with different settings: %s (resume with the "
                              "original ones or start a new --output)" % (path, "; ".join(changed)))
    load_weights(model, state["state_dict"], path)
    optimizer.load_state_dict(state["optimizer"])
    if ema is not None:
        if "ema" not in state:
            raise CheckpointError("%s holds no EMA state" % path)
        ema.load_state_dict(state["ema"])
    rng = state.get("rng", {})
    if "numpy" in rng:
        np.random.set_state(tuple(rng["numpy"]))
    if "python" in rng:
        random.setstate(_tuple(rng["python"]))
    return state


def classifier_keys(model, num_classes):
    """State-dict keys of the model's classifiers: every Linear layer with ``num_classes``
    outputs (the final one and, for RepVGGplus, the auxiliary heads')."""
    keys = []
    for name, module in model.named_modules():
        if isinstance(module, M.Linear) and module.out_features == num_classes:
            keys += ["%s.%s" % (name, p) if name else p for p, _ in module.named_parameters()]
    return keys


def load_initial_weights(model, path, num_classes, reset_classifier=False):
    """``--weights``: load a train-form model checkpoint strictly; with ``reset_classifier``,
    classifier weights of another shape are left as the new model initialised them.
    Returns the keys that were kept from the model's own initialisation."""
    state_dict = dict(state_dict_of(load_checkpoint(path)))
    if detect_form(state_dict) == "deploy" and detect_form(expected_shapes(model)) == "train":
        raise CheckpointError("%s is a deploy-form checkpoint (fused weights); fine-tune from "
                              "the train form: best.pkl or latest.pkl of its run" % path)
    kept = []
    if reset_classifier:
        expected = expected_shapes(model)
        for key in classifier_keys(model, num_classes):
            if key in state_dict and tuple(np.shape(state_dict[key])) != tuple(expected[key]):
                del state_dict[key]
                kept.append(key)
        current = numpy_state_dict(model)
        state_dict.update({k: current[k] for k in kept})
    else:
        try:
            check_shapes(expected_shapes(model), state_dict, path)
        except CheckpointError as e:
            if any(k in str(e) for k in classifier_keys(model, num_classes)):
                raise CheckpointError("%s (the classifier was trained for another number of "
                                      "classes: pass --reset-classifier to start it afresh)"
                                      % e) from None
            raise
    load_weights(model, state_dict, path)
    return kept
