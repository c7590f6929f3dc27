"""One registry of named architectures.

Each entry maps a name to a builder ``builder(deploy=False, num_classes=1000, **kwargs)``.
Families register their variants from data tables (see repvgg.py), so ``list_models()`` is the
single place a user or a tool discovers what can be built.
"""
import difflib

from errors import UserError, UserKeyError

from .backbone import Backbone
from .finetune import set_finetuning

_BUILDERS = {}


class UnknownModelError(UserKeyError):
    """Raised for a name that is not registered; the message lists the known names."""


def register_model(name, builder):
    if name in _BUILDERS:
        raise ValueError("model %r is registered twice" % name)
    _BUILDERS[name] = builder
    return builder


def list_models():
    return sorted(_BUILDERS)


def _spelling(name):
    """A name as timm and the case-blind spell it: ``repvgg_b1g2`` (or timm's tagged
    ``repvgg_a0.rvgg_in1k``) -> ``repvggb1g2``, as for ``RepVGG-B1g2``."""
    return str(name).split(".")[0].lower().replace("-", "").replace("_", "")


def check_name(name):
    """The registered name of ``name`` (itself, or what a timm-style alias such as
    ``repvgg_a0`` or ``repvgg_b1g2`` names), else ``UnknownModelError`` listing the known names
    (no model is built: checking "RepVGG-B3" costs nothing)."""
    if name not in _BUILDERS:
        alias = [n for n in _BUILDERS if _spelling(n) == _spelling(name)]
        if len(alias) == 1:
            return alias[0]
        spellings = {_spelling(n): n for n in _BUILDERS}
        close = [spellings[c] for c in
                 difflib.get_close_matches(_spelling(name), spellings, n=3)]
        hint = " (did you mean %s?)" % ", ".join(close) if close else ""
        raise UnknownModelError(
            "unknown architecture %r%s; known: %s" % (name, hint, ", ".join(list_models())))
    return name


def get_model(name, deploy=False, num_classes=1000, features_only=False, out_indices=None,
              frozen_stages=0, norm_eval=False, **kwargs):
    """Build the registered architecture ``name`` in train form, or in deploy form if asked.

    features_only  a headless ``model.backbone.Backbone`` whose forward returns one feature map
                   per stage in ``out_indices`` (default: all five, strides 2 to 32)
    frozen_stages  stages 0 .. k-1 keep their BatchNorms in eval mode and are left out of
                   ``model.trainable_parameters(net)`` (``model.finetune``)
    norm_eval      every BatchNorm stays in eval mode under ``train()``
    """
    if out_indices is not None and not features_only:
        raise UserError("out_indices needs features_only=True")
    net = _BUILDERS[check_name(name)](deploy=deploy, num_classes=num_classes, **kwargs)
    if features_only:
        net = Backbone(net, out_indices)
    return set_finetuning(net, frozen_stages, norm_eval)
