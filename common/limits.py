"""The one policy for opening a file a user hands a tool: budgets checked before anything runs.

Every model file (``.mge``, ``.onnx``, ``.bnn``), checkpoint (and the architecture it records),
``arch.json`` and image is untrusted input. Before a loader allocates or runs anything it derives
from what the file *declares*

- ``weights``      bytes of parameters,
- ``activations``  peak activation bytes for one image (live tensors at the worst point),
- ``macs``         multiply-accumulates for one image,
- ``batch``        images per forward pass,

and calls ``Limits.check``, which refuses the file in one line (``LimitError``, a
``ModelFileError``) when ``weights + batch * activations`` passes ``max_memory``, ``macs``
passes ``max_gmacs`` or ``batch`` passes ``max_batch``. Images are checked against
``max_megapixels`` before they are decoded.

The defaults fit the biggest real models of this toolkit comfortably (RepVGG-B3 and
RepVGGplus-L2pse at 320x320: about 30 GMACs, 0.5 GB of weights and tens of MB of activations per
image) and keep a refused or accepted file well under 4 GB. ``add_arguments`` gives a tool the
flags that raise them on purpose (``--max-gmacs``, ``--max-memory``, ``--max-batch``,
``--max-megapixels``); ``from_args`` reads them back. No global state: a ``Limits`` is passed to
whatever opens a file; ``Limits()`` is the defaults.
"""
import argparse
import dataclasses
import math

from errors import ModelFileError

GIB = 1 << 30
MIB = 1 << 20

DEFAULT_MAX_GMACS = 200.0         # per image; B3 / L2pse at 320x320 are about 30
DEFAULT_MAX_MEMORY = 2 * GIB      # weights + batch x peak activations, bytes
DEFAULT_MAX_BATCH = 1024
DEFAULT_MAX_MEGAPIXELS = 50.0     # decoded image size (a 50 MP RGB image is 150 MB)
# A child process that parses a file with native code (MegEngine, ONNX Runtime) runs under an
# address-space limit (RLIMIT_AS) of this much for the runtime itself plus CHILD_MEMORY_COPIES x
# max_memory. Measured (VmPeak of deploy/lite_child.py inspect, 4 threads, MALLOC_ARENA_MAX=2):
# 2.2 GB for RepVGG-A0 (33 MB of weights), of which 1.9 GB is importing MegEngine; 3.75 GB for
# RepVGG-B3 (444 MB): parsing the graph holds about 3.5 copies of the weights at once.
CHILD_RUNTIME_OVERHEAD = 3 * GIB
CHILD_MEMORY_COPIES = 4


class LimitError(ModelFileError):
    """A file that declares more than the budget allows (one line; a flag raises the limit)."""


def _fmt_bytes(n):
    if n >= GIB:
        return "%.1f GiB" % (n / GIB)
    return "%.1f MiB" % (n / MIB)


@dataclasses.dataclass(frozen=True)
class Limits:
    max_gmacs: float = DEFAULT_MAX_GMACS
    max_memory: int = DEFAULT_MAX_MEMORY
    max_batch: int = DEFAULT_MAX_BATCH
    max_megapixels: float = DEFAULT_MAX_MEGAPIXELS

    @property
    def max_pixels(self):
        return int(self.max_megapixels * 1e6)

    def check(self, path, weights=0, activations=0, macs=0, batch=1):
        """Refuse ``path`` (``LimitError``) when what it declares passes a budget.

        ``weights``/``activations`` in bytes, ``macs`` per image; every number must be a finite,
        non-negative count (a NaN or a negative is refused as malformed)."""
        for name, value in (("weights", weights), ("activations", activations),
                            ("MACs", macs), ("batch", batch)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) \
                    or not math.isfinite(value) or value < 0:
                raise LimitError("%s declares a malformed %s count (%r)" % (path, name, value))
        if batch > self.max_batch:
            raise LimitError("%s declares a batch of %d images, more than the limit of %d "
                             "(--max-batch raises it)" % (path, batch, self.max_batch))
        if macs > self.max_gmacs * 1e9:
            raise LimitError("%s declares %.3g GMACs per image, more than the limit of %g "
                             "(--max-gmacs raises it)" % (path, macs / 1e9, self.max_gmacs))
        total = weights + max(batch, 1) * activations
        if total > self.max_memory:
            raise LimitError("%s needs about %s (weights %s + %d x %s of activations), more "
                             "than the limit of %s (--max-memory raises it)"
                             % (path, _fmt_bytes(total), _fmt_bytes(weights), max(batch, 1),
                                _fmt_bytes(activations), _fmt_bytes(self.max_memory)))

    def check_pixels(self, path, width, height):
        """Refuse an image that would decode to more than ``max_megapixels``."""
        if width * height > self.max_pixels:
            raise LimitError("%s is %dx%d (%.0f megapixels), more than the limit of %g "
                             "megapixels (--max-megapixels raises it)"
                             % (path, width, height, width * height / 1e6, self.max_megapixels))

    def child_address_space(self):
        """Bytes of address space (RLIMIT_AS) for a child that parses a file natively."""
        return CHILD_MEMORY_COPIES * self.max_memory + CHILD_RUNTIME_OVERHEAD


def parse_size(text):
    """``"4G"``, ``"512M"``, ``"2GiB"``, ``"1e9"`` -> bytes (argparse ``type=``)."""
    s = str(text).strip().upper().replace("IB", "").rstrip("B")
    scale = 1
    if s and s[-1] in "KMGT":
        scale = 1 << (10 * ("KMGT".index(s[-1]) + 1))
        s = s[:-1]
    try:
        value = float(s) * scale
    except ValueError:
        raise argparse.ArgumentTypeError("expected a size such as 4G or 512M, got %r" % text) \
            from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError("expected a positive size, got %r" % text)
    return int(value)


def _positive(kind):
    def check(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError("expected a positive number, got %r" % text) \
                from None
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError("expected a positive number, got %r" % text)
        return value
    return check


def add_arguments(parser):
    """The flags that raise the budgets, on ``parser`` (one argument group)."""
    g = parser.add_argument_group(
        "limits", "what a model file or image may declare before it is refused unopened "
        "(docs/deployment.md, 'Untrusted files')")
    g.add_argument("--max-gmacs", type=_positive(float), default=DEFAULT_MAX_GMACS,
                   help="most multiply-accumulates per image, in billions")
    g.add_argument("--max-memory", type=parse_size, default=DEFAULT_MAX_MEMORY,
                   metavar="SIZE", help="most memory for weights plus a batch's activations "
                   "(e.g. 4G, 512M; default 2G)")
    g.add_argument("--max-batch", type=_positive(int), default=DEFAULT_MAX_BATCH,
                   help="most images per forward pass a model may declare or be given")
    g.add_argument("--max-megapixels", type=_positive(float), default=DEFAULT_MAX_MEGAPIXELS,
                   help="largest image to decode, in megapixels")
    return g


def from_args(args):
    """The ``Limits`` the flags of ``add_arguments`` ask for (defaults where absent)."""
    d = Limits()
    return Limits(max_gmacs=getattr(args, "max_gmacs", None) or d.max_gmacs,
                  max_memory=getattr(args, "max_memory", None) or d.max_memory,
                  max_batch=getattr(args, "max_batch", None) or d.max_batch,
                  max_megapixels=getattr(args, "max_megapixels", None) or d.max_megapixels)
