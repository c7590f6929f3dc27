"""The PyTorch side of tools/bench_deploy.py; runs under .torchvenv/bin/python (torch 2.13 CPU).

Started once by the benchmark and driven over stdin/stdout, one JSON object per line, so that
the benchmark can interleave single timed forward passes of PyTorch and MegEngine (the two never
run at the same time; both get all threads). Commands:

    {"cmd": "setup", "threads": 2}
    {"cmd": "load", "arch": "RepVGG-A0", "weights": "w.pth", "num_classes": 1000}
    {"cmd": "prepare", "mode": "eager", "input": "x.npy"}  -> {"logits": "out.npy", "seconds"}
    {"cmd": "time", "mode": "eager"}                       -> {"seconds": ...}
    {"cmd": "peak_conv", "shape": [N, C, H, W], "runs": 5}  -> {"seconds": ...}
    {"cmd": "quit"}

Modes: eager (the reference deploy-form model), channels_last (eager, NHWC memory format),
script (TorchScript: torch.jit.trace + torch.jit.freeze), compile (torch.compile, inductor).
The model is tests/torch_ref/repvgg_ref.py, the independent reference implementation with the
official parameter names. Errors in one mode are answered as {"error": "..."} and the worker
stays up.
"""
import copy
import json
import os
import sys
import time
import traceback

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "torch_ref"))

import repvgg_ref  # noqa: E402


def read_weights(path):
    """The official-name state dict the exporter (``ckpt_converter.export_pth``) wrote."""
    return torch.load(path, map_location="cpu", weights_only=True)


class Worker:
    def __init__(self):
        self.model = None
        self.forms = {}   # mode -> (callable, input tensor)

    def setup(self, threads):
        torch.set_num_threads(int(threads))
        return {"torch": torch.__version__, "threads": torch.get_num_threads()}

    def load(self, arch, weights, num_classes):
        model = repvgg_ref.build(arch, deploy=True, num_classes=num_classes)
        model.load_state_dict(read_weights(weights), strict=True)
        self.model = model.eval()
        self.forms = {}
        return {}

    def _build(self, mode, x):
        model = self.model
        if mode == "eager":
            return model, x
        if mode == "channels_last":
            return (copy.deepcopy(model).to(memory_format=torch.channels_last),
                    x.contiguous(memory_format=torch.channels_last))
        if mode == "script":
            return torch.jit.freeze(torch.jit.trace(model, x)), x
        if mode == "compile":
            return torch.compile(model), x
        raise ValueError("unknown mode %r" % mode)

    def prepare(self, mode, input):
        x = torch.from_numpy(np.load(input))
        start = time.perf_counter()
        with torch.inference_mode():
            fn, x = self._build(mode, x)
            out = fn(x)  # first call: tracing / compilation happens here
        seconds = time.perf_counter() - start
        self.forms[mode] = (fn, x)
        path = input[:-4] + "_%s_out.npy" % mode
        np.save(path, out.numpy())
        return {"logits": path, "seconds": seconds}

    def time(self, mode):
        fn, x = self.forms[mode]
        with torch.inference_mode():
            start = time.perf_counter()
            fn(x)
            return {"seconds": time.perf_counter() - start}

    def peak_conv(self, shape, runs):
        n, c, h, w = shape
        x = torch.randn(n, c, h, w)
        weight = torch.randn(c, c, 3, 3) * 0.01
        times = []
        with torch.inference_mode():
            for _ in range(runs + 1):
                start = time.perf_counter()
                F.conv2d(x, weight, padding=1)
                times.append(time.perf_counter() - start)
        return {"seconds": min(times[1:])}  # a peak: the best run


def main():
    worker = Worker()
    for line in sys.stdin:
        request = json.loads(line)
        cmd = request.pop("cmd")
        if cmd == "quit":
            break
        try:
            reply = getattr(worker, cmd)(**request)
        except Exception as e:  # reported to the benchmark, which prints it in the table
            traceback.print_exc(file=sys.stderr)
            reply = {"error": "%s: %s" % (type(e).__name__, str(e).strip().splitlines()[0]
                                          if str(e).strip() else "")}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
