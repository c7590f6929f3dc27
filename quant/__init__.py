"""int8 RepVGG: post-training quantization and quantization-aware training with
``megengine.quantization`` (int8 ``.mge`` run by MegEngine Lite), and static QDQ int8 ONNX
for ONNX Runtime. See the README's "Quantization (int8)" section."""
