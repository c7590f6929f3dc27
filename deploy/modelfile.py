"""What a model file of this toolkit carries, whatever its format: the JSON metadata
(preprocessing, classes, architecture, tuning, the feature maps of a backbone) and the input it
accepts. A leaf of ``deploy``: ``runtime`` and every format's runtime (``lite``,
``binary_runtime``, ``onnx_check``) import it.

Metadata comes from an untrusted file: it is parsed with ``common.safe_json`` (bounded depth and
size, finite numbers), and what a runtime relies on (the class names, the recorded outputs) is
checked against the model's outputs by ``check_outputs`` / ``feature_outputs``, the same for
every format.
"""
import json

from common import safe_json
from errors import ModelFileError

METADATA_KEY = "repvgg_megengine"  # the ONNX metadata_props key holding the JSON metadata
# /2: the .mge graph is portable, its tuning is recorded with the CPU it is valid for;
# /1: written before that (the graph itself may hold a CPU-specific layout)
METADATA_FORMAT = "repvgg-megengine-model/2"
LEGACY_FORMATS = ("repvgg-megengine-model/1",)


def encode_metadata(metadata):
    """The JSON text stored in a model file (``format`` added)."""
    return json.dumps(dict(metadata, format=METADATA_FORMAT), sort_keys=True)


def decode_metadata(text, path):
    """The metadata dict stored as ``text`` in the file at ``path``; ``{}`` when there is none or
    another program wrote it."""
    if text is None:
        return {}
    try:
        metadata = safe_json.loads(text, "its metadata")
    except ValueError as e:
        raise ModelFileError("%s: %s" % (path, e)) from None
    if not isinstance(metadata, dict) or metadata.get("format") not in (METADATA_FORMAT,
                                                                         *LEGACY_FORMATS):
        return {}  # written by something else: ignored, as if absent
    return metadata


MAX_CLASSES = 1 << 20
MAX_FEATURE_OUTPUTS = 16


def check_outputs(path, metadata, num_classes):
    """Refuse a classifier whose ``num_classes`` outputs (``None``: not known before it runs)
    are zero, or do not match the class names its ``metadata`` records."""
    if num_classes is not None and not 0 < num_classes <= MAX_CLASSES:
        raise ModelFileError("%s has %d classes; a classifier has at least one"
                             % (path, num_classes))
    classes = metadata.get("classes")
    if classes is None:
        return
    if not isinstance(classes, list) or not classes \
            or not all(isinstance(c, str) and len(c) <= 1000 for c in classes):
        raise ModelFileError("%s records class names that are not a non-empty list of names"
                             % path)
    if num_classes is not None and len(classes) != num_classes:
        raise ModelFileError("%s records %d class names for its %d outputs"
                             % (path, len(classes), num_classes))


def feature_outputs(path, metadata):
    """The feature maps a backbone export records (``[{"name", "channels", "reduction"}, ...]``,
    checked), or ``None`` for a classifier."""
    outputs = metadata.get("outputs")
    if outputs is None:
        return None
    ok = isinstance(outputs, list) and 0 < len(outputs) <= MAX_FEATURE_OUTPUTS and all(
        isinstance(o, dict) and isinstance(o.get("name"), str)
        and all(type(o.get(k)) is int and 0 < o[k] <= MAX_CLASSES
                for k in ("channels", "reduction")) for o in outputs)
    if not ok:
        raise ModelFileError("%s records outputs that are not a list of feature maps "
                             "({name, channels, reduction})" % path)
    return outputs


def checked_batch(batch, input_shape):
    """``batch`` as contiguous float32, or ``ValueError`` when it does not fit ``input_shape``."""
    import numpy as np

    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if batch.ndim != 4 or batch.shape[1:] != tuple(input_shape[1:]):
        raise ValueError("input of shape %s does not fit the model's (N, %d, %d, %d)"
                         % ((batch.shape,) + tuple(input_shape[1:])))
    return batch
