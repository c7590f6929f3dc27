"""int8 RepVGG: post-training quantization and quantization-aware training with
``megengine.quantization`` (int8 ``.mge`` run by MegEngine Lite), and static QDQ int8 ONNX
for ONNX Runtime. See the README's "Quantization (int8)" section."""

# QAT defaults (tools/quantize.py, benchmarks/bench_int8.py), chosen on the two trained A0s of the
# README (int8 .mge top-1 vs float): 4 epochs at peak lr 0.001 keep both within 0.5 points
# (digits 97.49 vs 97.49, shapes10 95.80 vs 95.95); 4 at 0.0005 fell short on the digits
# (96.10), 2 at 0.002 on shapes10 (94.70).
QAT_EPOCHS = 4
QAT_LR = 0.001
