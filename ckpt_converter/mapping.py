"""From a loaded PyTorch checkpoint to a state dict in this project's names and layouts.

Pure functions on dicts of NumPy arrays (no model code):

- ``extract_state_dict`` finds the weights: a bare state dict, or one under ``state_dict`` /
  ``model`` (nested wrappers too), or the EMA copy of a training checkpoint on request; strips
  ``module.`` (DataParallel / DDP) and drops ``num_batches_tracked`` and Paddle's
  ``StructuredToParameterName@@`` table;
- ``check_tensors`` refuses, before anything is built, weights no real checkpoint holds: a
  classifier that is not 2-D, tensors whose elements are not all stored (zero strides);
- ``to_megengine`` reshapes each array to the layout the target model expects: PyTorch grouped
  kernels ``(out, in/g, kh, kw)`` -> MegEngine ``(g, out/g, in/g, kh, kw)``, vectors between
  ``(C,)`` and ``(1, C, 1, 1)`` (conv biases, MegEngine BatchNorm); floating arrays become the
  model's dtype (float32);
- ``to_pytorch`` is the inverse, used by the export.
Anything that fits no rule is left alone so that the strict check names it.
"""
import collections

import numpy as np

from .errors import ConverterError

WRAPPER_KEYS = ("state_dict", "model", "module", "net")
EMA_KEYS = ("ema", "model_ema", "state_dict_ema", "ema_state_dict")
DROPPED_SUFFIXES = (".num_batches_tracked",)
METADATA_KEYS = ("StructuredToParameterName@@",)  # paddle.save's {key: parameter name} table


def _without_metadata(obj):
    if isinstance(obj, dict) and any(key in obj for key in METADATA_KEYS):
        return {k: v for k, v in obj.items() if k not in METADATA_KEYS}
    return obj


def _is_state_dict(obj):
    return (isinstance(obj, dict) and obj
            and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, np.ndarray) for v in obj.values()))


def _describe(obj):
    if isinstance(obj, dict):
        return "a dict with keys %s" % ", ".join(map(str, list(obj)[:10]))
    return "a %s" % type(obj).__name__


def extract_state_dict(obj, ema=False):
    """``(state_dict, where)``: the model weights in a loaded checkpoint and where they were."""
    path = []
    if ema:
        found = [k for k in EMA_KEYS if isinstance(obj, dict) and isinstance(obj.get(k), dict)]
        if not found:
            raise ConverterError("--ema: the checkpoint has no EMA weights (looked for %s; it is "
                                 "%s)" % ("/".join(EMA_KEYS), _describe(obj)))
        path.append(found[0])
        obj = obj[found[0]]
    for _ in range(4):  # unwrap {'state_dict': {'model': ...}} and the like
        obj = _without_metadata(obj)
        if _is_state_dict(obj):
            break
        inner = [k for k in WRAPPER_KEYS if isinstance(obj, dict) and isinstance(obj.get(k), dict)]
        if not inner:
            break
        path.append(inner[0])
        obj = obj[inner[0]]
    if not _is_state_dict(obj):
        raise ConverterError("the checkpoint holds no state dict of tensors (expected a dict of "
                             "tensors, or one under %s; it is %s)"
                             % ("/".join(WRAPPER_KEYS), _describe(obj)))
    state_dict = collections.OrderedDict()
    for key, value in obj.items():
        while key.startswith("module."):
            key = key[len("module."):]
        if key.endswith(DROPPED_SUFFIXES):
            continue
        if key in state_dict:
            raise ConverterError("key %s appears twice once 'module.' prefixes are stripped"
                                 % key)
        state_dict[key] = value
    return state_dict, "/".join(path) or "(top level)"


def _vector_length(shape):
    """C for a shape ``(C,)`` or ``(1, C, 1, 1)`` (biases, BatchNorm), else None."""
    if len(shape) == 1:
        return shape[0]
    if len(shape) == 4 and shape[0] == shape[2] == shape[3] == 1:
        return shape[1]
    return None


def _fit(array, shape):
    """``array`` reshaped to ``shape`` if the two differ only by a known layout change."""
    src = tuple(array.shape)
    if src == shape:
        return array
    grouped = (len(src) == 4 and len(shape) == 5 and shape[0] * shape[1] == src[0]
               and shape[2:] == src[1:])
    vector = _vector_length(src) is not None and _vector_length(src) == _vector_length(shape)
    return array.reshape(shape) if grouped or vector else array


def _stored_elements(array):
    """How many elements of ``array`` are distinct stored values (its byte extent / itemsize)."""
    if array.size == 0:
        return 0
    low, high = np.byte_bounds(array)
    return (high - low) // array.itemsize


def check_storage(state_dict, what="checkpoint"):
    """Refuse tensors that repeat their storage (zero or overlapping strides)."""
    for key, array in state_dict.items():
        if array.size > 1 and _stored_elements(array) < array.size:
            raise ConverterError(
                "%s: tensor %s of shape %s has %d elements but stores only %d (a broadcast or "
                "overlapping view); weights must be stored in full"
                % (what, key, tuple(array.shape), array.size, _stored_elements(array)))


def check_tensors(state_dict, what="checkpoint"):
    """Refuse, before building anything, weights that no real checkpoint holds: a classifier
    ``linear.weight`` that is not 2-D (or a bias that does not match it), and tensors that
    repeat their storage (zero or overlapping strides: a broadcast tensor claims any number of
    elements, e.g. 2^40 classes, while the file holds a handful)."""
    check_storage(state_dict, what)
    weight, bias = state_dict.get("linear.weight"), state_dict.get("linear.bias")
    if weight is None:
        raise ConverterError("%s: cannot tell the number of classes: no classifier weight "
                             "(linear.weight, or head.fc.weight in the timm, mmpretrain and "
                             "basecls layouts)" % what)
    if weight.ndim != 2:
        raise ConverterError("%s: the classifier weight linear.weight has shape %s; a Linear "
                             "layer's weight is 2-D (classes, features)"
                             % (what, tuple(weight.shape)))
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ConverterError("%s: linear.bias has shape %s, linear.weight %s (classes, features)"
                             % (what, tuple(bias.shape), tuple(weight.shape)))
    return int(weight.shape[0])


def to_megengine(state_dict, expected):
    """Arrays of ``state_dict`` in the layouts and dtypes of ``expected`` ({key: array}).

    Returns ``(mapped, casts)``; casts counts dtype conversions like ``float16->float32``.
    """
    mapped, casts = collections.OrderedDict(), collections.Counter()
    for key, array in state_dict.items():
        target = expected.get(key)
        if target is not None:
            array = _fit(array, tuple(target.shape))
            if array.dtype != target.dtype:
                casts["%s->%s" % (array.dtype, target.dtype)] += 1
                array = array.astype(target.dtype)
        mapped[key] = array
    return mapped, casts


def to_pytorch(state_dict):
    """MegEngine layouts back to PyTorch's: 5-D grouped kernels to 4-D, ``(1, C, 1, 1)`` biases
    to ``(C,)``; adds the ``num_batches_tracked`` counter PyTorch BatchNorm expects."""
    out = collections.OrderedDict()
    for key, array in state_dict.items():
        array = np.asarray(array)
        if array.ndim == 5:
            array = array.reshape((array.shape[0] * array.shape[1],) + array.shape[2:])
        elif key.endswith(".bias") and array.ndim == 4 and array.shape[0] == 1 \
                and array.shape[2:] == (1, 1):
            array = array.reshape(-1)
        out[key] = array
        if key.endswith(".running_var"):
            out[key[:-len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return out
