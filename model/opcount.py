"""Counting a model's parameters and operations by running it once on a dummy input.

Conventions (those of the RepVGG paper and the binary-network literature):

- ``flops``: multiply-accumulates of full-precision convolutions and linear layers — the paper's
  "FLOPs" (RepVGG-A0 deploy form at 224x224: 1.4 G). BN, ReLU, pooling and additions are not
  counted. Multiply by 2 for arithmetic operations per second.
- ``bops``: multiply-accumulates of binary (1-bit x 1-bit) convolutions.
- ``ops`` = ``flops + bops / 64``: the usual single number for binary networks (Bi-Real Net,
  ReActNet): 64 binary ops fit in one 64-bit XNOR-popcount.

A module may define ``op_counts(inputs, output) -> {"flops": int, "bops": int}`` to report its own
cost (binary convolutions do); such modules must be leaves, or their children would be counted
twice. Otherwise ``M.Conv2d`` and ``M.Linear`` are counted from their shapes.
"""
import numpy as np

import megengine as mge
import megengine.module as M


def conv_macs(conv, output):
    """Multiply-accumulates of a convolution from its weight shape and output size."""
    kh, kw = conv.weight.shape[-2:]
    per_output = (conv.in_channels // conv.groups) * kh * kw
    return int(np.prod(output.shape)) * per_output


def _module_ops(module, inputs, output):
    if hasattr(module, "op_counts"):
        return module.op_counts(inputs, output)
    if isinstance(module, M.Conv2d):
        return {"flops": conv_macs(module, output)}
    if isinstance(module, M.Linear):
        return {"flops": int(np.prod(output.shape)) * module.in_features}
    return {}


def count_params(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


def count_ops(model, input_shape=(1, 3, 224, 224)):
    """Run ``model`` once in eval mode on zeros of ``input_shape``; returns
    ``{"params", "flops", "bops", "ops", "per_module": {name: {...}}}``. Counts are per batch."""
    totals, per_module, handles = {"flops": 0, "bops": 0}, {}, []
    for name, module in model.named_modules():
        def hook(mod, inputs, output, name=name):
            ops = _module_ops(mod, inputs, output)
            if ops:
                per_module[name] = ops
                for key in totals:
                    totals[key] += int(ops.get(key, 0))
        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(mge.tensor(np.zeros(input_shape, np.float32)))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {"params": count_params(model), **totals,
            "ops": totals["flops"] + totals["bops"] / 64, "per_module": per_module}
