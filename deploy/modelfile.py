"""What a model file of this toolkit carries, whatever its format: the JSON metadata
(preprocessing, classes, architecture, tuning) and the input it accepts. A leaf of ``deploy``:
``runtime`` and every format's runtime (``lite``, ``binary_runtime``) import it.
"""
import json

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
        metadata = json.loads(text)
    except ValueError:
        raise ModelFileError("%s carries metadata that is not JSON" % path) from None
    if not isinstance(metadata, dict) or metadata.get("format") not in (METADATA_FORMAT,
                                                                         *LEGACY_FORMATS):
        return {}  # written by something else: ignored, as if absent
    return metadata


def checked_batch(batch, input_shape):
    """``batch`` as contiguous float32, or ``ValueError`` when it does not fit ``input_shape``."""
    import numpy as np

    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if batch.ndim != 4 or batch.shape[1:] != tuple(input_shape[1:]):
        raise ValueError("input of shape %s does not fit the model's (N, %d, %d, %d)"
                         % ((batch.shape,) + tuple(input_shape[1:])))
    return batch
