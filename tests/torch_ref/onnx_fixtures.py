"""ONNX files written by timm and torch.onnx, as a PyTorch user exports a RepVGG.

    .torchvenv/bin/python tests/torch_ref/onnx_fixtures.py OUT

Writes timm's ``repvgg_a0`` (10 classes, random weights, 64x64 input, dynamic batch) exported
with ``torch.onnx.export`` (the TorchScript exporter: the dynamo one needs onnxscript) in train
form and after timm's ``reparameterize_model``, the logits timm computes on a fixed input
(``input.npy``) and OUT/manifest.json: {"timm", "torch", "cases": {name: {file, logits}}}.
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # layout_fixtures, make_fixtures

SIZE = 64


def main(out):
    from layout_fixtures import import_torchvision

    import_torchvision()
    import timm
    import torch
    from make_fixtures import randomize
    from timm.utils.model import reparameterize_model

    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    np.save(os.path.join(out, "input.npy"), x)
    train = randomize(timm.create_model("repvgg_a0", pretrained=False, num_classes=10), 0)
    cases = {}
    for name, net in (("timm_repvgg_a0_train", train),
                      ("timm_repvgg_a0_deploy", reparameterize_model(train))):
        path = os.path.join(out, name + ".onnx")
        with torch.no_grad():
            torch.onnx.export(net.eval(), (torch.from_numpy(x[:1]),), path, dynamo=False,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
            logits = net(torch.from_numpy(x)).numpy()
        np.save(os.path.join(out, name + ".logits.npy"), logits)
        cases[name] = {"file": name + ".onnx", "logits": name + ".logits.npy"}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"timm": timm.__version__, "torch": torch.__version__, "cases": cases}, f,
                  indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:])
