"""Static int8 ONNX (QDQ format, per-channel weights) for ONNX Runtime, from the same calibration.

The float deploy model is written as ONNX by ``deploy.onnx_export`` and checked against the
MegEngine model with ONNX Runtime; ``onnxruntime.quantization.quantize_static`` then inserts
QuantizeLinear/DequantizeLinear pairs: weights int8, symmetric, one scale per output channel;
activations uint8 (asymmetric: after a ReLU the range starts at 0, so all 256 levels are used)
with MinMax ranges from the calibration images. ORT fuses each DequantizeLinear -> Conv ->
QuantizeLinear into an integer convolution (U8S8, its fast x86 path).
"""
import os
import tempfile

import numpy as np

from errors import UserError


class OnnxCheckError(UserError):
    """The float ONNX graph does not compute what the MegEngine model computes."""


def session(path_or_bytes, threads=None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(path_or_bytes, options, providers=["CPUExecutionProvider"])


def run(sess, batch):
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: np.ascontiguousarray(batch, np.float32)})[0]


class _Reader:
    """``CalibrationDataReader``: one {input name: batch} dict per calibration batch."""

    def __init__(self, batches):
        self._batches = iter(batches)

    def get_next(self):
        batch = next(self._batches, None)
        return None if batch is None else {"data": np.ascontiguousarray(batch, np.float32)}


def write_int8_onnx(deploy_model, path, calib_batches, check_batch, metadata=None,
                    per_channel=True, threads=None):
    """Export ``deploy_model`` to float ONNX, check it against MegEngine on ``check_batch``,
    quantize it statically on ``calib_batches`` and write the int8 model to ``path``
    (atomically). Returns the float check's largest relative difference."""
    import megengine as mge
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, \
        quantize_static

    from common.atomic import atomic_path
    from deploy.onnx_export import to_onnx
    from model.parity import DEFAULT_TOLERANCE

    reader_class = type("Reader", (_Reader, CalibrationDataReader), {})
    proto = to_onnx(deploy_model, (1,) + tuple(check_batch.shape[1:]), metadata)
    expected = deploy_model(mge.tensor(check_batch)).numpy()
    got = run(session(proto.SerializeToString(), threads), check_batch)
    rel = float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-30))
    # ORT's kernels sum in another order than MegEngine's: float32 rounding, as tools/export.py
    if rel > 10 * DEFAULT_TOLERANCE:
        raise OnnxCheckError("the float ONNX graph differs from the MegEngine model (max "
                             "relative difference %.2e)" % rel)
    with tempfile.TemporaryDirectory() as tmpdir, atomic_path(path) as tmp:
        float_path = os.path.join(tmpdir, "float.onnx")
        import onnx

        onnx.save(proto, float_path)
        quantize_static(float_path, tmp, reader_class(calib_batches),
                        quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        run(session(tmp, threads), check_batch[:1])  # it loads and runs
    return rel
