"""Checkpoints in the layouts of other RepVGG implementations, written by those libraries.

    .torchvenv/bin/python tests/torch_ref/layout_fixtures.py OUT LIBRARY INPUT.npy

LIBRARY is one of:
- ``timm``: timm's own ByobNet (``repvgg_a0``, and a small grouped + SE configuration built
  with timm's ``_rep_vgg_bcfg``), saved as timm's hub does (``.safetensors``) and after timm's
  ``reparameterize_model`` (deploy form, ``torch.save``);
- ``mmpretrain``: mmpretrain's ``ImageClassifier`` with its ``RepVGG`` backbone, saved with
  mmengine's ``save_checkpoint`` as ``{'meta', 'state_dict'}``, train form and after the
  backbone's ``switch_to_deploy``;
- ``paddleclas``: PaddleClas's own RepVGG model code (``ppcls/arch/backbone/model_zoo/
  repvgg.py`` from the paddleclas package, imported without the package's heavy ``__init__``),
  saved with ``paddle.save`` as ``.pdparams``, train form and after its ``re_parameterize``;
- ``basecls``: basecls cannot be installed (PyPI's ``basecls`` is an empty placeholder), so its
  files are built from the published layout (megvii-research/basecls ``models/repvgg.py``:
  official block names, ``head.fc``, ``se.f_ex.0/2``, MegEngine shapes, ``megengine.save``
  pickle) from the weights of the reference model in torch_reference/repvgg.py; the expected
  logits are that official-layout model's on the BGR image, as basecls models are trained on
  BGR input.

Writes OUT/manifest.json: {"library", "version", "cases": {name: {file, layout, spec, form,
logits}}} with logits computed by the library's own model (float32) on INPUT.npy (RGB).
"""
import importlib
import importlib.util
import json
import os
import pickle
import sys
import types

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(os.path.dirname(HERE))]  # make_fixtures, torch_reference

# The small configuration every library builds: grouped blocks and SE in one model.
G2SE = {"family": "RepVGG", "num_blocks": [2, 2, 2, 1], "width": [0.5, 0.5, 0.5, 0.5],
        "groups": 2, "use_se": True, "num_classes": 10}
GROUPWISE = [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26]  # the official global block indices


def import_torchvision():
    """torchvision (imported by timm and mmpretrain), made importable: installed without its
    dependencies, it registers fake kernels for ops its wheel lacks here ("operator
    torchvision::nms does not exist"); those registrations are skipped."""
    import torch
    import torch.library

    original = torch.library.register_fake

    def tolerant(op, fn=None, /, *args, **kwargs):
        def apply(func):
            try:
                return original(op, func, *args, **kwargs)
            except RuntimeError:  # "operator torchvision::nms does not exist"
                return func
        return apply if fn is None else apply(fn)

    torch.library.register_fake = tolerant
    try:
        import torchvision
    finally:
        torch.library.register_fake = original
    return torchvision


def torch_cases(out, x, library):
    import torch
    from make_fixtures import randomize

    cases = {}

    def save_case(name, model, obj, save, spec, form, layout):
        path = os.path.join(out, name)
        save(obj, path)
        with torch.no_grad():
            logits = forward(model.eval(), torch.from_numpy(x)).numpy()
        np.save(path + ".logits.npy", logits)
        cases[name] = {"file": name, "layout": layout, "spec": spec, "form": form,
                       "logits": name + ".logits.npy"}

    import_torchvision()
    if library == "timm":
        import timm
        import timm.utils
        from safetensors.torch import save_file
        from timm.models import byobnet

        forward = lambda m, t: m(t)  # noqa: E731
        st_save = lambda sd, p: save_file({k: v.contiguous() for k, v in sd.items()}, p)  # noqa
        a0 = randomize(timm.create_model("repvgg_a0", num_classes=10), 11)
        save_case("timm_a0_train.safetensors", a0, a0.state_dict(), st_save,
                  {"name": "RepVGG-A0", "num_classes": 10}, "train", "timm")
        cfg = byobnet.ByoModelCfg(
            blocks=byobnet._rep_vgg_bcfg(d=tuple(G2SE["num_blocks"]), wf=tuple(G2SE["width"]),
                                         groups=G2SE["groups"]),
            stem_type="rep", stem_chs=min(64, int(64 * G2SE["width"][0])), attn_layer="se",
            attn_kwargs=dict(rd_ratio=0.0625, rd_divisor=1))
        g2se = randomize(byobnet.ByobNet(cfg, num_classes=G2SE["num_classes"]), 12)
        save_case("timm_g2se_train.safetensors", g2se, g2se.state_dict(), st_save, G2SE,
                  "train", "timm")
        deploy = timm.utils.reparameterize_model(g2se)
        save_case("timm_g2se_deploy.pth", deploy, deploy.state_dict(), torch.save, G2SE,
                  "deploy", "timm")
        return cases, timm.__version__

    if library == "mmpretrain":
        # Like PaddleClas, mmpretrain's deploy-form block skips its SE layer (``if self.deploy:
        # return self.branch_reparam(inputs)``): for the SE model the deploy file's reference is
        # the train form's logits; a grouped model without SE checks mmpretrain's deploy output.
        import mmpretrain
        from mmengine.registry import init_default_scope
        from mmengine.runner.checkpoint import save_checkpoint, weights_to_cpu
        from mmpretrain.registry import MODELS

        init_default_scope("mmpretrain")
        forward = lambda m, t: m(t, mode="tensor")  # noqa: E731

        def mm_save(state_dict, path):
            meta = {"mmpretrain_version": mmpretrain.__version__, "epoch": 100, "iter": 12500,
                    "experiment_name": "repvgg-g2se_in1k", "dataset_meta": {"classes": list(
                        "abcdefghij")}}
            save_checkpoint({"meta": meta, "state_dict": weights_to_cpu(state_dict)}, path)

        for tag, spec, seed in (("g2se", G2SE, 13), ("g2", dict(G2SE, use_se=False), 17)):
            arch = dict(num_blocks=spec["num_blocks"], width_factor=spec["width"],
                        group_layer_map={layer: spec["groups"] for layer in GROUPWISE
                                         if layer <= sum(spec["num_blocks"])},
                        se_cfg=dict(ratio=16, divisor=1) if spec["use_se"] else None)
            model = MODELS.build(dict(
                type="ImageClassifier", backbone=dict(type="RepVGG", arch=arch),
                neck=dict(type="GlobalAveragePooling"),
                head=dict(type="LinearClsHead", num_classes=spec["num_classes"],
                          in_channels=int(512 * spec["width"][3]))))
            model.init_weights()
            model = randomize(model, seed)
            train = "mmpre_%s_train.pth" % tag
            save_case(train, model, model.state_dict(), mm_save, spec, "train", "mmpretrain")
            model.backbone.switch_to_deploy()
            deploy = "mmpre_%s_deploy.pth" % tag
            save_case(deploy, model, model.state_dict(), mm_save, spec, "deploy", "mmpretrain")
            if spec["use_se"]:
                cases[deploy]["logits"] = train + ".logits.npy"
        return cases, mmpretrain.__version__

    if library == "basecls":
        from torch_reference import repvgg as ref

        model = randomize(ref.RepVGG(G2SE["num_blocks"], G2SE["num_classes"], G2SE["width"],
                                     G2SE["groups"], use_se=True), 14)
        forward = lambda m, t: m(t.flip(1))  # noqa: E731  (basecls: BGR input)
        save_case("basecls_g2se_train.pkl", model, model, basecls_save, G2SE, "train", "basecls")
        deploy = ref.convert_to_deploy(model)
        save_case("basecls_g2se_deploy.pkl", deploy, deploy, basecls_save, G2SE, "deploy",
                  "basecls")
        return cases, "not installable: built from the published layout"
    raise SystemExit("unknown library %s" % library)


def basecls_save(model, path):
    """The state dict basecls's MegEngine RepVGG holds for the same weights, as megengine.save
    writes it (a pickle of NumPy arrays): official block names, ``head.fc``, ``se.f_ex.0/2``,
    grouped kernels (g, out/g, in/g, kh, kw), conv biases and BatchNorm (1, C, 1, 1)."""
    import torch

    state = {}
    for module_name, module in model.named_modules():
        prefix = module_name + "." if module_name else ""
        for name, tensor in list(module.named_parameters(recurse=False)) + \
                list(module.named_buffers(recurse=False)):
            if name == "num_batches_tracked":
                continue
            array = tensor.detach().numpy().copy()
            if isinstance(module, torch.nn.Conv2d) and name == "weight" and module.groups > 1:
                g = module.groups
                array = array.reshape((g, array.shape[0] // g) + array.shape[1:])
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.BatchNorm2d)):
                array = array.reshape(1, -1, 1, 1) if array.ndim == 1 else array
            key = (prefix + name).replace("linear.", "head.fc.")
            key = key.replace(".se.down.", ".se.f_ex.0.").replace(".se.up.", ".se.f_ex.2.")
            state[key] = array
    with open(path, "wb") as f:
        pickle.dump(state, f, protocol=pickle.DEFAULT_PROTOCOL)


def import_paddleclas_repvgg():
    """PaddleClas's RepVGG module from the installed paddleclas package. The package's
    ``__init__`` imports the whole PaddleClas application (OpenCV, faiss, ...); its parent
    packages are registered here as bare namespaces instead, and the one helper the module
    imports for downloading pretrained weights is replaced by one that refuses."""
    root = os.path.dirname(importlib.util.find_spec("paddleclas").origin)
    for name, sub in [("paddleclas", ""), ("paddleclas.ppcls", "ppcls"),
                      ("paddleclas.ppcls.arch", "ppcls/arch"),
                      ("paddleclas.ppcls.arch.backbone", "ppcls/arch/backbone"),
                      ("paddleclas.ppcls.arch.backbone.model_zoo", "ppcls/arch/backbone/model_zoo"),
                      ("paddleclas.ppcls.utils", "ppcls/utils")]:
        package = types.ModuleType(name)
        package.__path__ = [os.path.join(root, sub)]
        sys.modules[name] = package
    save_load = types.ModuleType("paddleclas.ppcls.utils.save_load")

    def load_dygraph_pretrain(*args, **kwargs):
        raise RuntimeError("the fixtures never download weights")

    save_load.load_dygraph_pretrain = load_dygraph_pretrain
    sys.modules[save_load.__name__] = save_load
    return importlib.import_module("paddleclas.ppcls.arch.backbone.model_zoo.repvgg")


def paddle_cases(out, x):
    """PaddleClas's RepVGG, grouped with SE and grouped without, each in train form and after its
    ``re_parameterize``. PaddleClas's re-parameterized forward skips the SE block (``if
    self.is_repped: return self.nonlinearity(self.rbr_reparam(inputs))``), so its deploy-form SE
    model does not compute what its train form does; for that case the reference is the train
    form's logits (what the weights mean), recorded as such in the manifest."""
    import paddle
    from importlib.metadata import version

    repvgg = import_paddleclas_repvgg()
    cases = {}
    for tag, spec, seed in (("g2se", G2SE, 15), ("g2", dict(G2SE, use_se=False), 16)):
        groups = {layer: spec["groups"] for layer in GROUPWISE
                  if layer <= sum(spec["num_blocks"])}
        model = repvgg.RepVGG(num_blocks=spec["num_blocks"], width_multiplier=spec["width"],
                              override_groups_map=groups, class_num=spec["num_classes"],
                              use_se=spec["use_se"])
        rng = np.random.default_rng(seed)
        for layer in model.sublayers():
            if isinstance(layer, paddle.nn.BatchNorm2D):
                n = layer.weight.shape[0]
                layer._mean.set_value(rng.normal(0, 0.1, n).astype(np.float32))
                layer._variance.set_value(rng.uniform(0.5, 1.5, n).astype(np.float32))
                layer.weight.set_value(rng.uniform(0.5, 1.5, n).astype(np.float32))
                layer.bias.set_value(rng.normal(0, 0.1, n).astype(np.float32))
        model.eval()
        for form in ("train", "deploy"):
            if form == "deploy":
                for layer in model.sublayers():
                    if hasattr(layer, "re_parameterize"):
                        layer.re_parameterize()
            name = "paddle_%s_%s.pdparams" % (tag, form)
            path = os.path.join(out, name)
            paddle.save(model.state_dict(), path)
            np.save(path + ".logits.npy", model(paddle.to_tensor(x)).numpy())
            reference = name
            if form == "deploy" and spec["use_se"]:
                reference = "paddle_%s_train.pdparams" % tag
            cases[name] = {"file": name, "layout": "paddleclas", "spec": spec, "form": form,
                           "logits": reference + ".logits.npy"}
    return cases, "paddlepaddle %s, paddleclas %s" % (paddle.__version__, version("paddleclas"))


def main(out, library, input_path):
    os.makedirs(out, exist_ok=True)
    x = np.load(input_path)
    if library == "paddleclas":
        cases, lib_version = paddle_cases(out, x)
    else:
        cases, lib_version = torch_cases(out, x, library)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump({"library": library, "version": lib_version, "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:4])
