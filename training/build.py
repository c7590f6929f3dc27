"""``--arch`` -> model: the one entry point every tool that trains uses."""


def build_model(arch, num_classes, deploy=False):
    """A registered name goes to ``model.get_model``; a path ending in ``.json`` is a derived
    architecture written by the search (``model.derived.build_from_arch_file``)."""
    if str(arch).endswith(".json"):
        from model.derived import build_from_arch_file  # the search branch provides it
        return build_from_arch_file(arch, num_classes=num_classes, deploy=deploy)
    from model import get_model
    return get_model(arch, deploy=deploy, num_classes=num_classes)
