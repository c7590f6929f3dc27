"""Write the PyTorch side of the backbone tests: the official model's stage activations.

    .torchvenv/bin/python tests/torch_ref/stage_fixtures.py tests/.fixtures/stages

For each architecture (RepVGG-A0 by its official name, a grouped RepVGG with SE, a small
RepVGGplus; torch_reference/repvgg.py, random weights and BatchNorm statistics) it saves the
train-form and deploy-form state dicts (torch.save, official keys) and, from forward hooks on
stage0 .. stage4 (the last block of a RepVGG stage, a ModuleList; RepVGGplus's stage3_second for
stage 3), the eval-mode output of each stage on one fixed input, as .npz. manifest.json lists
the cases.
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import build, randomize  # noqa: E402
from torch_reference import repvgg as ref  # noqa: E402  (on the path through make_fixtures)

SPECS = {
    "a0": {"name": "RepVGG-A0", "num_classes": 1000},
    "g2se": {"family": "RepVGG", "num_blocks": [2, 2, 2, 1], "width": [0.5, 0.5, 0.5, 0.5],
             "groups": 2, "use_se": True, "num_classes": 10},
    "plus": {"family": "RepVGGplus", "num_blocks": [2, 2, 2, 1],
             "width": [0.25, 0.25, 0.25, 0.5], "num_classes": 10},
}


def stage_modules(model):
    """The module whose output is each stage's output, stage 0 first."""
    if isinstance(model, ref.RepVGGplus):
        return [model.stage0, model.stage1, model.stage2, model.stage3_second, model.stage4]
    return [model.stage0] + [getattr(model, "stage%d" % i)[-1] for i in range(1, 5)]


@torch.no_grad()
def stage_outputs(model, x):
    outs = {}
    hooks = [m.register_forward_hook(
        lambda _m, _inp, out, i=i: outs.__setitem__("stage%d" % i, out.numpy().copy()))
        for i, m in enumerate(stage_modules(model))]
    model.eval()(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    return outs


def main(out):
    os.makedirs(out, exist_ok=True)
    x = np.random.default_rng(7).standard_normal((2, 3, 64, 64)).astype(np.float32)
    np.save(os.path.join(out, "input.npy"), x)
    cases = {}
    for seed, (name, spec) in enumerate(SPECS.items(), start=11):
        model = randomize(build(spec), seed)
        deploy = ref.convert_to_deploy(model)
        torch.save(model.state_dict(), os.path.join(out, name + "_train.pth"))
        torch.save(deploy.state_dict(), os.path.join(out, name + "_deploy.pth"))
        np.savez(os.path.join(out, name + "_train.npz"), **stage_outputs(model, x))
        np.savez(os.path.join(out, name + "_deploy.npz"), **stage_outputs(deploy, x))
        cases[name] = {"spec": spec, "train": name + "_train.pth",
                       "deploy": name + "_deploy.pth", "stages_train": name + "_train.npz",
                       "stages_deploy": name + "_deploy.npz"}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"input": "input.npy", "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
