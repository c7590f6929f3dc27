"""PyTorch side of benchmarks/bench_train.py: times training steps of the official RepVGG model.

Runs in the PyTorch venv (.torchvenv), started by benchmarks/bench_train.py, one process per round,
never beside the MegEngine worker. The model is the independent reference the tests compare
against, ``torch_reference/repvgg.py`` (the official repvgg.py's design and parameter names):
one PyTorch RepVGG for both.
Prints one JSON line: parameter count, seconds and loss of each timed step, and with
``--profile`` the per-operator self CPU times of one step.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from torch_reference import repvgg as reference  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--arch", required=True)
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--batch", type=int, required=True)
    p.add_argument("--classes", type=int, required=True)
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = reference.build(args.arch, num_classes=args.classes)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(args.seed)
    x = torch.from_numpy(rng.normal(0, 1, (args.batch, 3, args.size, args.size))
                         .astype(np.float32))
    y = torch.from_numpy(rng.integers(0, args.classes, args.batch).astype(np.int64))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    seconds, losses = [], []
    for _ in range(args.steps):
        start = time.perf_counter()
        losses.append(step())
        seconds.append(time.perf_counter() - start)
    out = {"params": sum(p.numel() for p in model.parameters()), "seconds": seconds,
           "loss": losses}
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        rows = [(e.key, e.self_cpu_time_total / 1000.0, e.count) for e in prof.key_averages()]
        out["profile"] = sorted(rows, key=lambda r: -r[1])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
