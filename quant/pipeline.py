"""From a float checkpoint to the pieces quantization works on, refusing what it cannot quantize.

``load_float(path)`` -> ``Source`` (deploy-form model, its chain, metadata). A file that is
already quantized (an exported ``.mge`` / ONNX graph, or a checkpoint holding quantization
state or integer weights) is refused with one line, as is a model that is not a plain
conv-ReLU chain (``quant.network.UnsupportedModelError``).
"""
import dataclasses

import numpy as np

from errors import CheckpointError

from .network import chain_of


class AlreadyQuantizedError(CheckpointError):
    """The input is a quantized model; quantization starts from the float checkpoint."""


# Keys MegEngine's QAT / quantized modules add to a state dict.
QUANT_KEY_MARKERS = ("_observer.", "_fake_quant.", "zero_point")


@dataclasses.dataclass
class Source:
    path: str
    checkpoint: dict
    info: dict             # arch, form, num_classes
    deploy: object         # deploy-form model, eval mode
    layers: list           # quant.network.Layer
    linear: tuple          # (weight, bias)

    @property
    def dataset(self):
        return self.checkpoint.get("dataset") if isinstance(self.checkpoint, dict) else None

    @property
    def image_size(self):
        size = self.checkpoint.get("image_size") if isinstance(self.checkpoint, dict) else None
        return int(size) if size else None


_EXPORTED = {"mge": "MegEngine graph (.mge)", "onnx": "ONNX model",
             "bnn": "packed binary model (.bnn)"}


def _graph_kind(path):
    """'MegEngine graph (.mge)' / 'ONNX model' / ... when ``path`` holds an exported model."""
    from common.filekind import kind_of

    return _EXPORTED.get(kind_of(path))


def refuse_quantized(path, checkpoint=None):
    kind = _graph_kind(path) if checkpoint is None else None
    if kind:
        raise AlreadyQuantizedError(
            "%s is an exported %s, not a float checkpoint; quantize the .pkl checkpoint it was "
            "exported from" % (path, kind))
    if checkpoint is None:
        return
    if isinstance(checkpoint, dict) and checkpoint.get("quantized"):
        raise AlreadyQuantizedError("%s is already quantized (%s); quantize the float "
                                    "checkpoint it came from" % (path, checkpoint["quantized"]))
    from model.checkpoint import state_dict_of

    state = state_dict_of(checkpoint)
    marked = sorted(k for k in state if any(m in k for m in QUANT_KEY_MARKERS))
    ints = sorted(k for k, v in state.items()
                  if np.asarray(v).dtype.kind in "iu" and np.asarray(v).size > 1)
    if marked or ints:
        example = (marked or ints)[0]
        raise AlreadyQuantizedError(
            "%s is already quantized (%s, e.g. %s); quantize the float checkpoint it came from"
            % (path, "it holds quantization state" if marked else "it holds integer weights",
               example))


def load_float(path, arch=None):
    """The float model of checkpoint ``path`` in deploy form, ready to quantize."""
    from common.checkpoint import load_checkpoint
    from model import convert_to_deploy, is_deploy
    from model.checkpoint import model_from_checkpoint

    refuse_quantized(path)
    checkpoint = load_checkpoint(path)
    refuse_quantized(path, checkpoint)
    model, info = model_from_checkpoint(checkpoint, arch, path)
    deploy = model if is_deploy(model) else convert_to_deploy(model)
    deploy.eval()
    layers, linear = chain_of(deploy, path)
    return Source(path, checkpoint if isinstance(checkpoint, dict) else {}, info, deploy,
                  layers, linear)


def logits(forward, batches):
    """``forward`` (numpy batch -> numpy logits) over ``batches``, concatenated."""
    return np.concatenate([np.asarray(forward(b)) for b in batches])
