"""Import RepVGG checkpoints (official PyTorch, timm, mmpretrain, basecls, PaddleClas) into
MegEngine without their frameworks, and export them back to PyTorch.

    model, report = ckpt_converter.convert("RepVGG-A0-train.pth", "RepVGG-A0", deploy=True)
    report["layout"]                                              # "official", "timm", ...
    weights = ckpt_converter.load_torch_checkpoint("any.pth")     # tensors as NumPy arrays
    ckpt_converter.export_pth(model.state_dict(), "out.pth")       # torch.load-able
    report = ckpt_converter.load_into(backbone, "RepVGG-A0-train.pth")  # head dropped
    report["summary"]          # "loaded ... tensors ...; dropped 2 (linear.bias, ...); missing 0"

Command line: ``python -m ckpt_converter --help``.
"""
from .importer import convert, load_into, load_torch_checkpoint, read_checkpoint
from .errors import ConverterError
from .export import export_pth
from .layouts import LAYOUTS, detect_layout, to_official
from .mapping import extract_state_dict, to_megengine, to_pytorch

__all__ = ["convert", "load_into", "load_torch_checkpoint", "read_checkpoint", "export_pth",
           "extract_state_dict", "to_megengine", "to_pytorch", "ConverterError", "LAYOUTS",
           "detect_layout", "to_official"]
