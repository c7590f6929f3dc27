"""Opening an exported model for inference, whichever format: ``.mge`` (MegEngine Lite) or
``.onnx`` (ONNX Runtime), with the metadata ``tools/export.py`` recorded in it.

``open_model(path, threads)`` returns an object with ``model(batch) -> logits`` (numpy),
``input_shape`` (the exported ``(N, 3, H, W)``), ``num_classes`` and ``metadata`` (a dict:
``preprocess`` (a ``PreprocessSpec`` dict), ``classes``, ``arch``, ...; ``{}`` for files written
elsewhere). A ``.mge`` that carries a fast-run algorithm cache (``algo_cache``, written at export
time by profiling on the exporting machine) runs with it. Never imports ``model``.
"""
import base64
import contextlib
import json
import logging
import os
import tempfile

from common.cpus import cpu_count
from errors import UserError

from .preprocess import PreprocessSpec, imagenet_spec

log = logging.getLogger(__name__)


class ModelFileError(UserError):
    """A model file (.mge, .onnx) that cannot be loaded."""


METADATA_KEY = "repvgg_megengine"  # the ONNX metadata_props key holding the JSON metadata
METADATA_FORMAT = "repvgg-megengine-model/1"


def encode_metadata(metadata):
    """The JSON text stored in a model file (``format`` added)."""
    return json.dumps(dict(metadata, format=METADATA_FORMAT), sort_keys=True)


def decode_metadata(text, path):
    if text is None:
        return {}
    try:
        metadata = json.loads(text)
    except ValueError:
        raise ModelFileError("%s carries metadata that is not JSON" % path) from None
    if not isinstance(metadata, dict) or metadata.get("format") != METADATA_FORMAT:
        return {}  # written by something else: ignored, as if absent
    return metadata


def spec_of(model):
    """``(PreprocessSpec, note)`` recorded in an opened model's metadata; ImageNet's at the
    model's input size (with a note) when the model records none."""
    if model.metadata.get("preprocess"):
        return (PreprocessSpec.from_dict(model.metadata["preprocess"]),
                model.metadata.get("preprocess_note"))
    spec = imagenet_spec(model.input_shape[-1])
    return spec, ("the model records no preprocessing; using ImageNet's (resize %d, crop %d)"
                  % (spec.resize, spec.size))


class OnnxModel:
    """A ``.onnx`` file run by ONNX Runtime (CPU): ``model(batch) -> logits``."""

    def __init__(self, path, threads=None):
        import onnxruntime as ort

        if not os.path.isfile(path):
            raise ModelFileError("model file not found: %s" % path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cpu_count()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(path, options,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for every load failure
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFileError("%s is not a loadable ONNX model (%s)" % (path, first[:200])) \
                from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ModelFileError("%s takes %d input(s) %s; expected one (N, 3, H, W) batch"
                                 % (path, len(inputs), [i.shape for i in inputs]))
        self._input, self._output = inputs[0].name, outputs[0].name
        self.input_shape = tuple(d if isinstance(d, int) else 1 for d in inputs[0].shape)
        last = outputs[0].shape[-1] if outputs[0].shape else None
        self.num_classes = last if isinstance(last, int) else None
        props = self.session.get_modelmeta().custom_metadata_map
        self.metadata = decode_metadata(props.get(METADATA_KEY), path)

    def __call__(self, batch):
        import numpy as np

        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != self.input_shape[1:]:
            raise ValueError("input of shape %s does not fit the model's (N, %d, %d, %d)"
                             % ((batch.shape,) + tuple(self.input_shape[1:])))
        out = self.session.run([self._output], {self._input: batch})[0]
        if self.num_classes is None:
            self.num_classes = out.shape[-1]
        return out


@contextlib.contextmanager
def _cache_file(data):
    """A temp file holding ``data`` (the algorithm cache), removed afterwards."""
    fd, path = tempfile.mkstemp(prefix="algo_cache.", suffix=".bin")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def open_mge(path, threads=None, **lite_options):
    """A ``.mge``: its metadata read first, then loaded by Lite with its algorithm cache."""
    from . import lite

    if not os.path.isfile(path):
        raise ModelFileError("model file not found: %s" % path)
    metadata = decode_metadata(lite.read_user_info(path), path)
    cache = metadata.pop("algo_cache", None)
    if cache and "algo_cache" not in lite_options:
        with _cache_file(base64.b64decode(cache)) as cache_path:
            model = lite.DumpedModel(path, threads=threads, algo_cache=cache_path,
                                     **lite_options)
    else:
        model = lite.DumpedModel(path, threads=threads, **lite_options)
    model.metadata = metadata
    return model


def open_model(path, threads=None, **lite_options):
    """An exported model by its suffix: ``.mge`` (Lite) or ``.onnx`` (ONNX Runtime)."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".onnx":
        return OnnxModel(path, threads)
    if suffix == ".mge":
        return open_mge(path, threads, **lite_options)
    raise ModelFileError("%s: unknown model format %r (expected .mge or .onnx)"
                         % (path, suffix or "no suffix"))
