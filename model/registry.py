"""One registry of named architectures.

Each entry maps a name to a builder ``builder(deploy=False, num_classes=1000, **kwargs)``.
Families register their variants from data tables (see repvgg.py), so ``list_models()`` is the
single place a user or a tool discovers what can be built.
"""
import difflib

from errors import UserKeyError

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


def check_name(name):
    """``name`` if it is registered, else ``UnknownModelError`` listing the known names (no
    model is built: checking "RepVGG-B3" costs nothing)."""
    if name not in _BUILDERS:
        close = difflib.get_close_matches(name, _BUILDERS, n=3)
        hint = " (did you mean %s?)" % ", ".join(close) if close else ""
        raise UnknownModelError(
            "unknown architecture %r%s; known: %s" % (name, hint, ", ".join(list_models())))
    return name


def get_model(name, deploy=False, num_classes=1000, **kwargs):
    """Build the registered architecture ``name`` in train form, or in deploy form if asked."""
    return _BUILDERS[check_name(name)](deploy=deploy, num_classes=num_classes, **kwargs)
