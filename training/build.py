"""``--arch`` -> model: the one entry point every tool that trains uses."""


def build_model(arch, num_classes, deploy=False):
    """A registered name goes to ``model.get_model``; a path ending in ``.json`` is a derived
    architecture written by the search (``model.derived.build_from_arch_file``)."""
    if str(arch).endswith(".json"):
        from model.derived import build_from_arch_file  # the search branch provides it
        return build_from_arch_file(arch, num_classes=num_classes, deploy=deploy)
    from model import get_model
    return get_model(arch, deploy=deploy, num_classes=num_classes)


def model_from_file(path, arch=None):
    """Load a model checkpoint (train or deploy form; from train.py, tools/convert.py or the
    PyTorch importer) and build its model. Returns ``(model, checkpoint, info)`` with info =
    {"arch", "form", "num_classes"}; the model is in eval mode."""
    from common.checkpoint import (CheckpointError, detect_form, infer_num_classes,
                                   load_checkpoint, load_weights, state_dict_of)
    checkpoint = load_checkpoint(path)
    state_dict = state_dict_of(checkpoint)
    arch = arch or (checkpoint.get("arch") if isinstance(checkpoint, dict) else None)
    if not arch:
        raise CheckpointError("%s does not record its architecture; pass --arch" % path)
    info = {"arch": arch, "form": detect_form(state_dict),
            "num_classes": infer_num_classes(state_dict)}
    model = build_model(arch, info["num_classes"], deploy=info["form"] == "deploy")
    load_weights(model, state_dict, "%s (%s, %s form)" % (path, arch, info["form"]))
    model.eval()
    return model, checkpoint, info
