"""The peers' side of benchmarks/bench_deploy.py; runs under .torchvenv/bin/python (torch 2.13 CPU,
ONNX Runtime, OpenVINO). One command per process, started fresh by the benchmark:

    weights --arch RepVGG-A0 --out w.pth --seed 0
        the reference model (torch_reference/repvgg.py, official parameter names) in train
        form with random weights and non-trivial BatchNorm statistics, saved with torch.save:
        the one .pth every path of the benchmark is built from
    run --mode MODE --arch A --weights w.pth --onnx f.onnx --input x.npy --logits out.npy
        --threads T --warmup W --runs R
        load, run ``x`` once (logits written), warm up, time R runs; prints one JSON line
        {"seconds": median, "load_s": ..., "first_s": ...}

Modes: eager (the reference model converted to deploy form), channels_last (eager, NHWC memory
format), script (torch.jit.trace + torch.jit.freeze), compile (torch.compile, inductor),
onnxruntime and openvino (the project's ONNX export of the same weights). Only the library a
mode needs is imported, so an ONNX Runtime process holds no PyTorch thread pool.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from common.timing import add_run_args, time_run  # noqa: E402

TORCH_MODES = ("eager", "channels_last", "script", "compile")
MODES = TORCH_MODES + ("onnxruntime", "openvino", "openvino-default")


def _reference():
    """The reference model's module, imported only by the modes that run PyTorch."""
    from torch_reference import repvgg

    return repvgg


def make_weights(arch, out, seed):
    """A train-form reference model with random BN statistics and affine parameters."""
    import torch

    torch.manual_seed(seed)
    model = _reference().build(arch, deploy=False)
    gen = torch.Generator().manual_seed(seed)
    # Real per-channel statistics first (one train-mode pass on varied input), then perturbed,
    # so the signal survives the depth and every input gives different logits.
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = 1.0
    model.train()
    with torch.no_grad():
        x = torch.randn(4, 3, 64, 64, generator=gen) * torch.rand(4, 1, 1, 1, generator=gen) * 2
        model(x)
        for bn in bns:
            c = bn.num_features
            bn.running_mean += torch.randn(c, generator=gen) * 0.3 * bn.running_var.sqrt()
            bn.running_var *= 0.5 + 1.5 * torch.rand(c, generator=gen)
            bn.weight.copy_(0.3 + 0.9 * torch.rand(c, generator=gen))
            bn.bias.copy_(torch.randn(c, generator=gen) * 0.3)
            bn.momentum = 0.1
    torch.save(model.state_dict(), out)
    return {"weights": out}


def _torch_form(mode, arch, weights, x, threads):
    import torch

    torch.set_num_threads(threads)
    ref = _reference()
    model = ref.build(arch, deploy=False)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model = ref.convert_to_deploy(model.eval()).eval()
    x = torch.from_numpy(x)
    if mode == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    elif mode == "script":
        with torch.inference_mode():
            model = torch.jit.freeze(torch.jit.trace(model, x))
    elif mode == "compile":
        model = torch.compile(model)

    def run():
        with torch.inference_mode():
            return model(x).numpy()
    return run


def _onnxruntime(onnx_file, x, threads):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(onnx_file, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})[0]


def _openvino(onnx_file, x, threads, precision="f32"):
    import openvino as ov

    core = ov.Core()
    # float32 as every other path: on CPUs with bf16 support OpenVINO otherwise computes in bf16
    # (logits 5e-3 off, caught by the benchmark's comparison); precision=None is its default,
    # what a user who does not set it gets.
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(onnx_file, "CPU", config)
    request = compiled.create_infer_request()

    def run():
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()
    return run


def run_mode(args):
    def opened(x):
        if args.mode in TORCH_MODES:
            return _torch_form(args.mode, args.arch, args.weights, x, args.threads)
        if args.mode == "onnxruntime":
            return _onnxruntime(args.onnx, x, args.threads)
        return _openvino(args.onnx, x, args.threads,
                         None if args.mode == "openvino-default" else "f32")
    return time_run(args, opened)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("weights")
    w.add_argument("--arch", required=True)
    w.add_argument("--out", required=True)
    w.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run")
    r.add_argument("--mode", choices=MODES, required=True)
    r.add_argument("--arch", required=True)
    r.add_argument("--weights")
    r.add_argument("--onnx")
    add_run_args(r)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.cmd == "weights":
        reply = make_weights(args.arch, args.out, args.seed)
    else:
        reply = run_mode(args)
    print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
