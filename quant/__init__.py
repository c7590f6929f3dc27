"""int8 RepVGG: post-training quantization and quantization-aware training with
``megengine.quantization`` (int8 ``.mge`` run by MegEngine Lite), and static QDQ int8 ONNX
for ONNX Runtime. See the README's "Quantization (int8)" section."""

# QAT defaults (tools/quantize.py, tools/bench_int8.py): measured on the CIFAR-sized shapes10
# A0 (float 95.95 %), int8 .mge top-1 after QAT: 2 epochs at 0.002 -> 94.70, 2 at 0.0005 ->
# 95.25, 4 at 0.0005 -> 95.65 (a converged model needs a small step and time to adapt).
QAT_EPOCHS = 4
QAT_LR = 0.0005
