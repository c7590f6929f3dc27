"""``megengine.hub`` entry points: one per registered architecture, generated from the registry.

    import megengine.hub as hub
    net = hub.load("OWNER/REPO", "RepVGG-A0")                                  # random weights
    net = hub.load("OWNER/REPO", "RepVGG-A0", pretrained="https://.../RepVGG-A0-train.pth")
    net = hub.load("OWNER/REPO", "RepVGG-B1g2", pretrained="/data/b1g2.safetensors", deploy=True)

Every name of ``model.list_models()`` is an entry (``hub.list`` shows them); the entries are
made by ``ckpt_converter.hub.entries``. No weights ship with this project: ``pretrained`` names a
weight file, a local path or a ``file://`` / ``http(s)://`` URL (downloaded once into
MegEngine's cache), in any layout the checkpoint converter reads (official PyTorch, timm,
mmpretrain, basecls, PaddleClas; see the README, "Importing PyTorch checkpoints"). The file is
read by ckpt_converter: nothing from it is run.
"""
import os
import sys

dependencies = ["megengine", "numpy"]

# Like megengine.hub, put this repository on sys.path only while importing what the entries use.
_ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _ROOT)
try:
    import ckpt_converter.hub
finally:
    sys.path.remove(_ROOT)

globals().update(ckpt_converter.hub.entries())
