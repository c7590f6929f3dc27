"""Unpickling untrusted files without running code from them.

A pickle names globals (``module.name``) that the loader imports and may call. ``SafeUnpickler``
resolves only globals on an explicit allow-list. Anything else is either refused with an error
that names it, or — where the caller opts in — replaced by an inert ``Placeholder`` that records
what the file asked for and is never called. Globals that could act on the system (``os.system``,
``builtins.eval``, ``subprocess.Popen``, ``torch.hub.load`` ...) are always refused.

Memory is bounded before anything is allocated (``scan``): a pickle declares the length of every
bytes/str payload (``BINBYTES8``, ``FRAME``, ...) and CPython's unpickler allocates that length
*before* reading it, so an 80-byte file could ask for a terabyte. ``scan`` walks the opcodes
without building anything, refuses a payload longer than what the file still holds, and returns
what the load will need (payload bytes plus a per-opcode allowance for the objects built);
``safe_load(max_memory=)`` refuses a file above that. numpy's reconstructors are guarded too:
``numpy.ndarray`` itself (``ndarray((10**10,))`` would allocate on request) is an inert marker
that only ``_reconstruct`` accepts, and ``_reconstruct`` only with the empty shape numpy's own
pickles use; the array's real contents then come from its state, whose size numpy checks against
the bytes present.
"""
import collections
import io
import pickle
import pickletools
import struct

import numpy as np

# Modules whose globals a checkpoint never legitimately needs and that can act on the system.
DENIED_MODULES = {
    "os", "posix", "nt", "sys", "subprocess", "shutil", "socket", "importlib", "runpy",
    "pickle", "_pickle", "marshal", "ctypes", "code", "codeop", "pty", "pdb", "webbrowser",
    "multiprocessing", "signal", "threading", "asyncio", "tempfile", "pathlib", "io", "_io",
    "builtins", "__builtin__", "functools", "operator", "types", "inspect", "gc", "platform",
    "urllib", "http", "ftplib", "smtplib", "telnetlib", "requests", "yaml", "dill", "numpy.f2py",
    "numpy.testing", "numpy.distutils", "setuptools", "distutils", "pip", "site", "sysconfig",
    "timeit", "trace", "cProfile", "profile", "zipimport", "glob", "fileinput", "commands",
}

# numpy arrays, dtypes and scalars as numpy < 2 and >= 2 pickle them.
NUMPY_GLOBALS = {
    (mod + ".multiarray", name)
    for mod in ("numpy.core", "numpy._core")
    for name in ("_reconstruct", "scalar")
} | {
    (mod + ".numeric", "_frombuffer") for mod in ("numpy.core", "numpy._core")
} | {("numpy", "ndarray"), ("numpy", "dtype")}

CONTAINER_GLOBALS = {("collections", "OrderedDict")}

# What one opcode's object may cost beyond its payload (a list, a dict slot, a small int...): the
# allowance ``scan`` adds per opcode, so a file of a million tiny objects is counted too.
OPCODE_ALLOWANCE = 128


class NdarrayType:
    """Stands for ``numpy.ndarray`` in a pickle: only ``_reconstruct`` may take it; calling it
    (which would allocate an array of any shape the file names) is refused."""

    def __new__(cls, *args, **kwargs):
        raise UnsafePickleError("refusing to load: the file calls numpy.ndarray(...) directly, "
                                "which allocates on request; numpy's own pickles never do")


def _reconstruct(subtype, shape, dtype):
    """numpy's ``_reconstruct`` as numpy's pickles call it: ``(ndarray, (0,), dtype)``."""
    if subtype is not NdarrayType or not isinstance(shape, tuple) or shape != (0,):
        raise UnsafePickleError("refusing to load: the file asks numpy to make an array of "
                                "shape %.40r before its data (numpy's pickles use (0,))"
                                % (shape,))
    return np.ndarray.__new__(np.ndarray, (0,), dtype)


# The guarded stand-ins for numpy globals (every other NUMPY_GLOBALS name resolves to numpy's).
NUMPY_GUARDS = {("numpy", "ndarray"): NdarrayType}
NUMPY_GUARDS.update({(mod + ".multiarray", "_reconstruct"): _reconstruct
                     for mod in ("numpy.core", "numpy._core")})


def _bytearray(source=b"", encoding=None, errors="strict"):
    """``bytearray`` of bytes or text only: ``bytearray(n)`` would allocate n bytes on request."""
    if isinstance(source, str) and encoding is not None:
        return bytearray(source, encoding, errors)
    if isinstance(source, (bytes, bytearray)):
        return bytearray(source)
    raise UnsafePickleError("refusing to load: the file asks for bytearray(%s), which allocates "
                            "on request; only bytes or text are accepted" % type(source).__name__)


# Builtin types that only hold data; protocol 0-2 pickles name them under __builtin__, later ones
# under builtins (e.g. the set in a yacs CfgNode of an official training checkpoint). Everything
# else in builtins (eval, exec, getattr, open, __import__ ...) stays refused.
HARMLESS_BUILTINS = {
    (module, name): target
    for module in ("builtins", "__builtin__")
    for name, target in (("set", set), ("frozenset", frozenset), ("slice", slice),
                         ("complex", complex), ("bytearray", _bytearray))
}


class UnsafePickleError(Exception):
    """The file asked for a global that is not allowed; the message names it."""


class Placeholder:
    """Stands in for an object of a class that is not allowed. Stores, never executes."""

    def __new__(cls, *args, **kwargs):
        # Set up in __new__: pickle protocol 2+ creates objects with cls.__new__ (NEWOBJ) and
        # never calls __init__.
        self = super().__new__(cls)
        self.args = args
        self.kwargs = kwargs
        self.state = None
        self.items = {}  # filled when the class was a dict subclass (e.g. yacs CfgNode)
        self.list = []  # filled when the class was a list subclass
        return self

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        self.list.append(value)

    def extend(self, values):
        self.list.extend(values)

    def __repr__(self):
        return "<placeholder for %s>" % self.qualname


def _placeholder_class(module, name):
    # One inert subclass per foreign global, so the placeholder reports what it replaces.
    return type("Placeholder_" + name, (Placeholder,), {"qualname": "%s.%s" % (module, name)})


def _root(module):
    return module.split(".")[0]


def is_denied(module, name):
    return (module in DENIED_MODULES or _root(module) in DENIED_MODULES
            or any(module.startswith(d + ".") for d in DENIED_MODULES if "." in d)
            or name in {"eval", "exec", "compile", "__import__", "getattr", "setattr", "open",
                        "system", "popen", "apply", "execfile", "input", "globals", "locals",
                        "vars", "breakpoint", "delattr", "__reduce__", "__reduce_ex__"})


class SafeUnpickler(pickle.Unpickler):
    """Unpickler with an allow-list of globals.

    allowed:      {(module, name): object} — what each allowed global resolves to. Pass ``None``
                  as the object to import the real global (only for known-safe names). The
                  data-only builtins of ``HARMLESS_BUILTINS`` are always allowed.
    placeholders: when true, globals that are neither allowed nor denied become inert
                  ``Placeholder`` classes and are listed in ``self.placeholders``; when false
                  they are refused.
    refuse:       an extra predicate ``(module, name) -> bool`` for globals to refuse outright.
    """

    def __init__(self, file, allowed, placeholders=False, refuse=None, encoding="ASCII"):
        super().__init__(file, encoding=encoding)
        self._allowed = dict(HARMLESS_BUILTINS)
        self._allowed.update(allowed)
        for key, guard in NUMPY_GUARDS.items():  # numpy's raw constructors are never handed out
            if key in self._allowed and self._allowed[key] is None:
                self._allowed[key] = guard
        self._use_placeholders = placeholders
        self._refuse = refuse
        self.placeholders = collections.Counter()

    def find_class(self, module, name):
        key = (module, name)
        if key in self._allowed:
            target = self._allowed[key]
            return super().find_class(module, name) if target is None else target
        if is_denied(module, name) or (self._refuse is not None and self._refuse(module, name)):
            raise UnsafePickleError(
                "refusing to load: the file asks for %s.%s, which could run code" % key)
        if self._use_placeholders:
            self.placeholders["%s.%s" % key] += 1
            return _placeholder_class(module, name)
        raise UnsafePickleError("refusing to load: the file asks for %s.%s, which is not "
                                "allowed in a checkpoint" % key)


class PickleTooLarge(UnsafePickleError):
    """A pickle that declares more memory than the caller allows (one line)."""


class MalformedPickle(ValueError):
    """A pickle that is truncated, or declares payloads longer than the file (one line)."""


_LENGTH_PREFIX = {pickletools.TAKEN_FROM_ARGUMENT1: "<B", pickletools.TAKEN_FROM_ARGUMENT4: "<i",
                  pickletools.TAKEN_FROM_ARGUMENT4U: "<I", pickletools.TAKEN_FROM_ARGUMENT8U: "<Q"}


def scan(file):
    """Walk the pickle in ``file`` (seekable; from its current position) without building it:
    ``MalformedPickle`` for a payload or frame that declares more bytes than the file still
    holds, an unknown opcode or a missing STOP; else the bytes the load may need (payloads plus
    ``OPCODE_ALLOWANCE`` per opcode). The file is left where it was."""
    start = file.tell()
    end = file.seek(0, io.SEEK_END)
    file.seek(start)
    need = 0
    try:
        while True:
            code = file.read(1)
            if not code:
                raise MalformedPickle("the pickle ends without its STOP opcode (truncated)")
            op = pickletools.code2op.get(code.decode("latin-1"))
            if op is None:
                raise MalformedPickle("the pickle holds an unknown opcode %r" % code)
            need += OPCODE_ALLOWANCE
            arg = op.arg
            if arg is not None and arg.n in _LENGTH_PREFIX:
                fmt = _LENGTH_PREFIX[arg.n]
                raw = file.read(struct.calcsize(fmt))
                if len(raw) < struct.calcsize(fmt):
                    raise MalformedPickle("the pickle is truncated inside %s" % op.name)
                (length,) = struct.unpack(fmt, raw)
                _check_length(op.name, length, end - file.tell())
                file.seek(length, io.SEEK_CUR)
                need += length
            elif arg is not None:
                value = arg.reader(file)  # a fixed-size number, or one text line
                if op.name == "FRAME":
                    _check_length("FRAME", value, end - file.tell())
            if op.name == "STOP":
                return need
    except (ValueError, struct.error) as e:  # pickletools' readers on a short or bad argument
        raise MalformedPickle("the pickle is malformed (%s)" % e) from None
    finally:
        file.seek(start)


def _check_length(what, length, remaining):
    if length < 0 or length > remaining:
        raise MalformedPickle("the pickle declares a %s of %d bytes but only %d remain "
                                "(truncated or crafted)" % (what, length, remaining))


def safe_load(file, allowed=(), placeholders=False, encoding="ASCII", max_memory=None):
    """Load a pickle of plain containers and numpy arrays (plus the extra ``allowed`` globals,
    given as (module, name) pairs that resolve to the real objects). ``encoding`` is passed to
    the unpickler ("bytes" reads Python 2 pickles such as CIFAR's). The file goes through
    ``scan`` first; ``max_memory`` (bytes) refuses one that needs more (``PickleTooLarge``)."""
    table = {key: None for key in NUMPY_GLOBALS | CONTAINER_GLOBALS | set(allowed)}
    if isinstance(file, (bytes, bytearray)):
        file = io.BytesIO(file)
    need = scan(file)
    if max_memory is not None and need > max_memory:
        raise PickleTooLarge("the pickle needs about %.1f MiB to load, more than the limit of "
                             "%.1f MiB (--max-memory raises it)"
                             % (need / 2 ** 20, max_memory / 2 ** 20))
    return SafeUnpickler(file, table, placeholders=placeholders, encoding=encoding).load()
