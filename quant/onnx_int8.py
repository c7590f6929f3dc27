"""Static int8 ONNX (QDQ format, per-channel weights) for ONNX Runtime, from the same calibration.

The float deploy model is written as ONNX by ``deploy.onnx_export`` and checked against the
MegEngine model with ONNX Runtime; ``onnxruntime.quantization.quantize_static`` then inserts
QuantizeLinear/DequantizeLinear pairs: weights int8, symmetric, one scale per output channel;
activations uint8 (asymmetric: after a ReLU the range starts at 0, so all 256 levels are used)
with MinMax ranges from the calibration images. ORT fuses each DequantizeLinear -> Conv ->
QuantizeLinear into an integer convolution (U8S8, its fast x86 path).
"""
import contextlib
import logging
import os
import tempfile

import numpy as np

from errors import UserError


class OnnxCheckError(UserError):
    """The float ONNX graph does not compute what the MegEngine model computes."""


class _Reader:
    """``CalibrationDataReader``: one {input name: batch} dict per calibration batch."""

    def __init__(self, batches):
        self._batches = iter(batches)

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {"data": np.ascontiguousarray(batch, np.float32)}


class _DropPreprocessingAdvice(logging.Filter):
    """ORT's quantizer logs on the root logger, on every call, advice to run its shape-inference
    pre-processing; the graph from deploy.onnx_export has its shapes, so the advice is noise."""

    def filter(self, record):
        return not str(record.msg).startswith(("Please consider to run pre-processing",
                                               "Please consider pre-processing"))


@contextlib.contextmanager
def _quiet_quantizer():
    """That one message dropped, only while the quantizer runs; every other log line kept."""
    root, drop = logging.getLogger(), _DropPreprocessingAdvice()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def write_int8_onnx(deploy_model, path, calib_batches, check_batch, metadata=None,
                    per_channel=True, threads=None):
    """Export ``deploy_model`` to float ONNX, check it against MegEngine on ``check_batch``,
    quantize it statically on ``calib_batches`` and write the int8 model to ``path``
    (atomically), carrying ``metadata`` as tools/export.py's files do. Returns the float check's
    largest relative difference."""
    import megengine as mge
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, \
        quantize_static

    from common.atomic import atomic_path
    from deploy.onnx_export import METADATA_KEY, to_onnx
    from deploy.modelfile import encode_metadata
    from deploy.runtime import OnnxModel
    from model.parity import DEFAULT_TOLERANCE

    reader_class = type("Reader", (_Reader, CalibrationDataReader), {})
    proto = to_onnx(deploy_model, (1,) + tuple(check_batch.shape[1:]))
    expected = deploy_model(mge.tensor(check_batch)).numpy()
    with tempfile.TemporaryDirectory() as tmpdir, atomic_path(path) as tmp:
        float_path = os.path.join(tmpdir, "float.onnx")
        onnx.save(proto, float_path)
        got = OnnxModel(float_path, threads)(check_batch)
        rel = float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30))
        # ORT sums in another order than MegEngine: float32 rounding (deploy/export.py's check)
        if rel > DEFAULT_TOLERANCE:
            raise OnnxCheckError("the float ONNX graph differs from the MegEngine model (max "
                                 "relative difference %.2e)" % rel)
        with _quiet_quantizer():
            quantize_static(float_path, tmp, reader_class(calib_batches),
                            quant_format=QuantFormat.QDQ, per_channel=per_channel,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        if metadata is not None:
            int8 = onnx.load(tmp)
            onnx.helper.set_model_props(int8, {METADATA_KEY: encode_metadata(metadata)})
            onnx.save(int8, tmp)
        OnnxModel(tmp, threads)(check_batch[:1])  # it loads and runs
    return rel
