"""Walking a module tree into another format (ONNX, the packed binary program): the emitter of a
module is looked up by the names of its class and its base classes, in MRO order, so a subclass
exports like its base unless it has an emitter of its own."""


def emitter_for(emitters, module):
    """The entry of ``emitters`` (class name -> emitter) for ``module``, or None."""
    for cls in type(module).__mro__:
        emitter = emitters.get(cls.__name__)
        if emitter is not None:
            return emitter
    return None
