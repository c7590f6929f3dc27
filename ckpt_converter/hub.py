"""The entries of ``hubconf.py`` (``megengine.hub``): one per registered architecture.

``entries()`` returns {registered name: entry}; each entry builds the model, and with
``pretrained`` (a path or URL of a weight file in any layout ``convert`` reads) loads its weights.
"""
import functools
import os

from model import get_model, list_models

from .errors import ConverterError
from .fetch import weight_file
from .importer import convert


def _entry(name, pretrained=False, weights=None, layout=None, deploy=False, num_classes=None,
           **kwargs):
    """Build {name}; with ``pretrained`` (a path, ``file://`` or ``http(s)://`` URL, or True
    with ``weights=``) load that file's weights, which set the form and number of classes.

    layout       whose names the file uses (default: detected from its keys)
    deploy       the fused deploy form (a train-form file is fused after loading)
    num_classes  classes of a model without weights (default 1000); with weights, must match
    """
    source = pretrained if isinstance(pretrained, (str, os.PathLike)) else weights
    if not pretrained:
        return get_model(name, deploy=deploy, num_classes=num_classes or 1000, **kwargs)
    if source is None:
        raise ConverterError("%s(pretrained=True) needs weights=PATH_OR_URL: no weights ship "
                             "with this project" % name)
    if kwargs:
        raise ConverterError("%s: %s cannot be set when loading weights"
                             % (name, ", ".join(sorted(kwargs))))
    model, report = convert(weight_file(source), name, deploy=deploy, layout=layout)
    if num_classes is not None and num_classes != report["num_classes"]:
        raise ConverterError("%s holds %d classes, not %d"
                             % (source, report["num_classes"], num_classes))
    return model


def entries():
    """{name: entry} for every registered architecture (generated, never written per name)."""
    out = {}
    for name in list_models():
        entry = functools.partial(_entry, name)
        entry.__doc__ = _entry.__doc__.format(name=name)
        out[name] = entry
    return out
