"""The pickle inside a PyTorch checkpoint, read without PyTorch and without running its code.

``torch.save`` pickles the object tree; each tensor becomes a call of
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` whose storage is a
*persistent id* ``("storage", torch.FloatStorage, key, location, numel[, view])`` resolved by the
loader. Here every global the file names is looked up in an allow-list of inert stand-ins written
in this module (they only record data), on top of ``common.safe_pickle.SafeUnpickler``:

- ``torch._utils._rebuild_tensor_v2`` / ``_v3``, ``_rebuild_parameter*``,
  ``torch._tensor._rebuild_from_type_v2`` -> ``TensorRef`` records (no data is read yet);
- storage classes (``torch.FloatStorage``, ..., ``torch.UntypedStorage``) and dtypes
  (``torch.float32``, ...) -> names;
- ``collections.OrderedDict``, ``torch.Size`` (-> tuple), numpy arrays/scalars;
- any other ``torch.*`` global is refused (``torch.hub.load``, ``torch._C...``); globals that can
  act on the system (``os.system``, ``eval``, ``subprocess.Popen`` ...) are refused; every other
  class (``yacs.config.CfgNode``, ``argparse.Namespace`` ...) becomes an inert placeholder.
"""
import collections
import dataclasses
import io

from common.safe_pickle import NUMPY_GLOBALS, SafeUnpickler, UnsafePickleError

from .errors import ConverterError
from .tensors import STORAGE_DTYPES

# storage class name -> dtype name (the ``torch.<X>Storage`` globals of torch.save)
STORAGE_CLASSES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8",
}
# torch dtype globals (``torch.float32`` pickles as the global ``torch float32``)
DTYPE_NAMES = dict({name: name for name in STORAGE_DTYPES},
                   float="float32", double="float64", half="float16", long="int64", int="int32",
                   short="int16", cfloat="complex64", cdouble="complex128")


@dataclasses.dataclass(frozen=True)
class StorageType:
    name: str
    dtype: str


@dataclasses.dataclass(frozen=True)
class DType:
    name: str


@dataclasses.dataclass(eq=False)
class StorageRef:
    """A storage the pickle refers to; its bytes are located by the container format."""
    key: str
    dtype: str
    numel: int
    view: tuple = None  # legacy format: (view_key, element offset, numel) into the root storage


@dataclasses.dataclass(eq=False)
class TensorRef:
    """A tensor recorded while unpickling; becomes a NumPy array once storages are read."""
    storage: StorageRef
    offset: int
    size: tuple
    stride: tuple
    dtype: str


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, StorageRef):
        raise UnsafePickleError("a tensor record does not point to a storage")
    return TensorRef(storage, storage_offset, tuple(size), tuple(stride), storage.dtype)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    tensor = _rebuild_tensor_v2(storage, storage_offset, size, stride)
    if not isinstance(dtype, DType):
        raise UnsafePickleError("a tensor record has no valid dtype")
    tensor.dtype = dtype.name
    return tensor


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    return data


_REBUILDERS = (_rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in _REBUILDERS:
        raise UnsafePickleError("a tensor subclass record asks to call %r" % (func,))
    return func(*args)


def _size(dims=()):
    return tuple(dims)


def _device(*args):
    return "device(%s)" % ", ".join(map(str, args))


def _codecs_encode(text, encoding="utf-8"):
    # Protocol-2 pickles spell bytes objects as _codecs.encode(str, "latin1").
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnsafePickleError("_codecs.encode is allowed only for latin1 text")
    return text.encode("latin1")


def allowed_globals():
    """{(module, name): stand-in} for every global a PyTorch state dict may name."""
    table = {key: None for key in NUMPY_GLOBALS}  # real numpy reconstructors (already vetted)
    table[("collections", "OrderedDict")] = collections.OrderedDict
    table[("_codecs", "encode")] = _codecs_encode
    table[("torch._utils", "_rebuild_tensor_v2")] = _rebuild_tensor_v2
    table[("torch._utils", "_rebuild_tensor_v3")] = _rebuild_tensor_v3
    table[("torch._utils", "_rebuild_parameter")] = _rebuild_parameter
    table[("torch._utils", "_rebuild_parameter_with_state")] = _rebuild_parameter
    table[("torch._tensor", "_rebuild_from_type_v2")] = _rebuild_from_type_v2
    table[("torch", "Tensor")] = DType("Tensor")  # only ever an argument, never called
    table[("torch.nn.parameter", "Parameter")] = DType("Parameter")
    table[("torch", "Size")] = _size
    table[("torch", "device")] = _device
    for name, dtype in STORAGE_CLASSES.items():
        table[("torch", name)] = StorageType(name, dtype)
    table[("torch.storage", "UntypedStorage")] = StorageType("UntypedStorage", "uint8")
    for name, dtype in DTYPE_NAMES.items():
        table[("torch", name)] = DType(dtype)
    return table


# torch globals that load code, run programs or reach the system (always refused; other torch
# globals outside the allow-list are refused as "not on the allow-list").
DANGEROUS_TORCH = tuple("torch." + m for m in (
    "hub", "_C", "ops", "jit", "package", "utils", "distributed", "multiprocessing", "load", "save",
    "compile", "_dynamo", "_inductor", "library", "backends", "cuda", "_ops", "fx", "export",
    "serialization", "_classes", "classes", "testing", "autograd"))


def _is_torch(module, name):
    return module == "torch" or module.startswith("torch.")


class TorchUnpickler(SafeUnpickler):
    """Allow-list unpickler that resolves PyTorch storage ids into ``StorageRef`` records."""

    def __init__(self, file):
        super().__init__(file, allowed_globals(), placeholders=True, refuse=_is_torch)
        self.storages = {}

    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except UnsafePickleError:
            qualname = "%s.%s" % (module, name)
            if _is_torch(module, name) and not qualname.startswith(DANGEROUS_TORCH):
                raise UnsafePickleError(
                    "refusing to load: the file asks for %s, which is not on the allow-list "
                    "of globals a PyTorch state dict needs" % qualname) from None
            raise

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) in (5, 6)
                and pid[0] in ("storage", b"storage")):
            raise UnsafePickleError("unknown persistent id in the pickle: %.80r" % (pid,))
        storage_type, key, _location, numel = pid[1:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, StorageType):
            raise UnsafePickleError("a storage record names no known storage type")
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        if not isinstance(numel, int) or numel < 0:
            raise UnsafePickleError("storage %s has an invalid size %r" % (key, numel))
        root = self.storages.get(key)
        if root is None:
            root = self.storages[key] = StorageRef(key, storage_type.dtype, numel)
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3):
            raise UnsafePickleError("storage %s has a malformed view record" % key)
        view_key, offset, view_numel = view
        view_key = view_key.decode("ascii") if isinstance(view_key, bytes) else str(view_key)
        ref = self.storages.get(view_key)
        if ref is None:
            ref = self.storages[view_key] = StorageRef(view_key, root.dtype, view_numel,
                                                       (key, offset, view_numel))
        return ref


def unpickle(data, what):
    """Unpickle ``data`` (bytes or a binary file); returns ``(object, unpickler)``.

    The unpickler's ``storages`` lists the storages referenced and ``placeholders`` the
    foreign classes replaced by inert placeholders.
    """
    file = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    unpickler = TorchUnpickler(file)
    try:
        return unpickler.load(), unpickler
    except UnsafePickleError as e:
        raise ConverterError("%s: %s" % (what, e)) from None
    except RecursionError:
        raise ConverterError("%s: the pickle nests too deeply" % what) from None
    except Exception as e:  # truncated or corrupt pickle: any error type is possible
        raise ConverterError("%s: corrupt pickle (%s: %s)"
                             % (what, type(e).__name__, str(e)[:200])) from None


def plain_load(file, what):
    """One small pickle of plain data (the legacy format's header records)."""
    try:
        return SafeUnpickler(file, {}).load()
    except UnsafePickleError as e:
        raise ConverterError("%s: %s" % (what, e)) from None
    except Exception as e:
        raise ConverterError("%s: corrupt header (%s: %s)"
                             % (what, type(e).__name__, str(e)[:200])) from None
