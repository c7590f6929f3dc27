#!/usr/bin/env bash
# benchmarks/gpu_check.sh: the checks this project cannot run without a GPU, in one command.
#
#     bash benchmarks/gpu_check.sh            # from the repository root, after `make setup`
#
# On a machine with a usable CUDA GPU (MegEngine sees one):
#   1. train.py: RepVGG-A0 at 224x224, batch 32, 308 optimizer steps (7 epochs x 44 steps of
#      the built-in digits upscaled to 224) on the GPU, once in float32 and once with --amp;
#      images/s per epoch from metrics.csv (the median of epochs 2-7: epoch 1 includes cuDNN's
#      algorithm choice). fastconv's CPU routes are off on a GPU (training/fastconv.py).
#   2. The official model in PyTorch (torch_reference/, .torchvenv) on the same GPU: the same
#      step (SGD momentum 0.9, wd 1e-4, label smoothing 0.1, random images), float32 and
#      autocast; skipped with a line when .torchvenv's torch has no CUDA (the CPU wheel).
#   3. convert (train -> deploy form, on the GPU), export (.mge and .onnx, each checked against
#      the eager model by tools/export.py), eval of both forms and of the .onnx (same top-1),
#      and verify.py's train/deploy parity of A0 and B1g2 on the GPU.
# Prints a summary; exit status 1 when a check fails. Without a GPU it prints one
# "gpu_check: skipped: ..." line and exits 0, having run nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
TORCH=.torchvenv/bin/python

if [ ! -x "$PY" ]; then
    echo "gpu_check: skipped: no .venv here (run 'make setup' first)"
    exit 0
fi
# MegEngine's CUDA probe prints a banner on a machine without CUDA: kept off the screen.
if ! "$PY" -c "import sys; from common.device import cuda_available; \
sys.exit(0 if cuda_available() else 3)" 2>/dev/null; then
    echo "gpu_check: skipped: no usable CUDA GPU on this machine (MegEngine sees none);" \
         "nothing was run"
    exit 0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
SUMMARY="$WORK/summary.txt"
FAILED=0
note() { echo "$*" | tee -a "$SUMMARY"; }
step() { echo; echo "== $*"; }

median_rate() {  # median train images/s of epochs 2.. in a run's metrics.csv
    "$PY" - "$1/metrics.csv" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))[1:]
print("%.1f" % statistics.median(float(r["train_images_per_s"]) for r in rows))
EOF
}

TRAIN=(--arch RepVGG-A0 --image-size 224 --batch-size 32 --epochs 7 --max-steps-per-epoch 44
       --warmup-epochs 0 --device gpu --no-progress --max-val-images 200)
for mode in fp32 amp; do
    step "1. train.py on the GPU, $mode"
    extra=(); [ "$mode" = amp ] && extra=(--amp)
    if "$PY" train.py "${TRAIN[@]}" "${extra[@]}" --output "$WORK/$mode"; then
        note "train.py A0 224 batch 32, $mode: $(median_rate "$WORK/$mode") img/s (median of epochs 2-7)"
    else
        note "train.py A0 224, $mode: FAILED"; FAILED=1
    fi
done

step "2. the official PyTorch model on the same GPU"
if [ -x "$TORCH" ] && "$TORCH" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"; then
    for mode in fp32 amp; do
        rate=$("$TORCH" - "$mode" <<'EOF'
import sys, time, torch, torch.nn.functional as F
sys.path.insert(0, ".")
from torch_reference import repvgg
amp = sys.argv[1] == "amp"
torch.manual_seed(0)
model = repvgg.build("RepVGG-A0", num_classes=10).cuda().train()
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
scaler = torch.amp.GradScaler("cuda", enabled=amp)
x = torch.randn(32, 3, 224, 224, device="cuda")
y = torch.randint(0, 10, (32,), device="cuda")
torch.backends.cudnn.benchmark = True
def steps(n):
    for _ in range(n):
        with torch.autocast("cuda", enabled=amp):
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    torch.cuda.synchronize()
steps(20)
start = time.perf_counter()
steps(300)
print("%.1f" % (300 * 32 / (time.perf_counter() - start)))
EOF
        ) && note "PyTorch official A0 224 batch 32, $mode: $rate img/s (300 steps, random images)" \
          || { note "PyTorch $mode: FAILED"; FAILED=1; }
    done
else
    note "PyTorch: skipped (.torchvenv's torch has no CUDA; install a CUDA build of torch there to compare)"
fi

step "3. convert, export and parity on the GPU"
if [ -f "$WORK/fp32/best.pkl" ]; then
    B="$WORK/fp32"
    if "$PY" tools/convert.py --load "$B/best.pkl" --save "$B/converted.pkl" --device gpu \
       && "$PY" tools/export.py --load "$B/converted.pkl" --output "$B/a0.mge" \
       && "$PY" tools/export.py --load "$B/converted.pkl" --output "$B/a0.onnx"; then
        train_line=$("$PY" tools/eval.py "$B/best.pkl" --device gpu --limit 200 | tail -1)
        deploy_line=$("$PY" tools/eval.py "$B/converted.pkl" --device gpu --limit 200 | tail -1)
        onnx_line=$("$PY" tools/eval.py "$B/converted.pkl" --exported "$B/a0.onnx" --limit 200 | tail -1)
        top1() { sed -n 's/.*top-1 \([0-9.]*\)%.*/\1/p' <<<"$1"; }
        note "top-1 on 200 val images: train form $(top1 "$train_line")%, deploy form" \
             "$(top1 "$deploy_line")%, .onnx $(top1 "$onnx_line")%"
        if [ "$(top1 "$train_line")" != "$(top1 "$deploy_line")" ] \
           || [ "$(top1 "$deploy_line")" != "$(top1 "$onnx_line")" ]; then
            note "convert/export: top-1 differs: FAILED"; FAILED=1
        else
            note "convert, export (.mge, .onnx, each checked by tools/export.py): ok"
        fi
    else
        note "convert/export: FAILED"; FAILED=1
    fi
else
    note "convert/export: skipped (the float32 training run wrote no best.pkl)"; FAILED=1
fi
if "$PY" verify.py --arch RepVGG-A0 --arch RepVGG-B1g2 --device gpu --no-blocks; then
    note "verify.py parity (A0, B1g2, 224) on the GPU: ok"
else
    note "verify.py parity on the GPU: FAILED"; FAILED=1
fi

echo; echo "== gpu_check summary"; cat "$SUMMARY"
exit "$FAILED"
