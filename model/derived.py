"""The network a derived ``arch.json`` describes, and the one registry of search candidates.

An architecture file (written by ``search.py derive`` or ``search.py tas``) is JSON::

    {"format": "repvgg-search-arch/1", "space": "digits", "space_hash": "...",
     "image_size": 16, "num_classes": 10,
     "stem": {"channels": 8, "stride": 1},
     "layers": [{"op": "ir_k3_e3", "C_in": 8, "C_out": 16, "stride": 2}, ...],
     "head": {"channels": 32}}

The network is: stem (3x3 conv-BN-ReLU) -> one candidate op per layer -> head (1x1 conv-BN-ReLU
to ``head.channels``, left out when 0) -> global average pool -> ``linear``. Layers whose op is
``repvgg`` are ``RepVGGBlock``\\ s, so ``model.convert_to_deploy`` fuses them.

Candidates (``build_op(name, C_in, C_out, stride)``): the nine FBNet blocks (``model.fbnet``),
``repvgg`` (a RepVGG block, train form), ``conv_k3`` (plain conv-BN-ReLU, the layer type of TAS
width search) and the binary primitives of ``model.binary.primitives``, imported only when one
is asked for.
"""
import megengine.module as M

from common import safe_json
from errors import UserError

from .fbnet import FBNET_BLOCKS, conv_bn_relu
from .layers import GlobalAvgPool
from .reparam import convert_to_deploy
from .repvgg import RepVGGBlock

ARCH_FORMAT = "repvgg-search-arch/1"

# Full-precision candidates: name -> factory(C_in, C_out, stride).
FP_CANDIDATES = dict(FBNET_BLOCKS)
FP_CANDIDATES["conv_k3"] = lambda C_in, C_out, stride: conv_bn_relu(C_in, C_out, 3, stride)
REPVGG_CANDIDATES = {"repvgg": lambda C_in, C_out, stride: RepVGGBlock(C_in, C_out, 3, stride)}


class ArchError(UserError, ValueError):
    """An architecture description that cannot be built (message is one line)."""


def _binary_primitives():
    from .binary import primitives  # lazily: only binary candidates need the binary package

    return primitives


def op_kind(name):
    """'fp', 'repvgg' or 'binary' for a candidate name; ArchError if the name is unknown."""
    if name in FP_CANDIDATES:
        return "fp"
    if name in REPVGG_CANDIDATES:
        return "repvgg"
    try:
        binary_names = _binary_primitives().PRIMITIVE_NAMES
    except ImportError as e:
        raise ArchError("unknown candidate op %r (not a full-precision or RepVGG candidate, and "
                        "the binary primitives cannot be imported: %s)" % (name, e)) from None
    if name in binary_names:
        return "binary"
    raise ArchError("unknown candidate op %r; known: %s" % (name, ", ".join(known_ops())))


def known_ops(include_binary=True):
    names = list(FP_CANDIDATES) + list(REPVGG_CANDIDATES)
    if include_binary:
        try:
            names += list(_binary_primitives().PRIMITIVE_NAMES)
        except ImportError:
            pass
    return names


def build_op(name, C_in, C_out, stride):
    """Build candidate ``name`` for a layer ``C_in -> C_out`` with ``stride`` (train form)."""
    kind = op_kind(name)
    if kind == "fp":
        return FP_CANDIDATES[name](C_in, C_out, stride)
    if kind == "repvgg":
        return REPVGG_CANDIDATES[name](C_in, C_out, stride)
    return _binary_primitives().build_primitive(name, C_in, C_out, stride)


def build_stem(stem):
    """The fixed stem of a searched network: 3x3 conv-BN-ReLU from RGB (``stem`` is the arch's
    ``{"channels", "stride"}``). Shared by ``DerivedNet``, the latency table and TAS."""
    return conv_bn_relu(3, stem["channels"], 3, stem.get("stride", 1))


def build_head(in_channels, head_channels, num_classes):
    """The fixed head: ``(1x1 conv-BN-ReLU or None, global pool, linear)``; the conv exists when
    ``head_channels`` > 0. Shared by ``DerivedNet`` and the latency table."""
    conv = conv_bn_relu(in_channels, head_channels, 1) if head_channels else None
    return conv, GlobalAvgPool(), M.Linear(head_channels or in_channels, num_classes)


class DerivedNet(M.Module):
    """stem -> layers -> [1x1 head] -> global pool -> linear, as an arch dict says."""

    def __init__(self, arch, num_classes):
        super().__init__()
        stem = arch["stem"]
        self.stem = build_stem(stem)
        self.layers = [build_op(l["op"], l["C_in"], l["C_out"], l["stride"])
                       for l in arch["layers"]]
        last = arch["layers"][-1]["C_out"] if arch["layers"] else stem["channels"]
        self.head, self.gap, self.linear = build_head(
            last, arch.get("head", {}).get("channels", 0), num_classes)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        if self.head is not None:
            x = self.head(x)
        return self.linear(self.gap(x))


def check_arch(arch):
    """Raise ArchError (one line) unless ``arch`` is a buildable architecture dict."""
    if not isinstance(arch, dict):
        raise ArchError("an architecture must be a JSON object, got %s" % type(arch).__name__)
    for key in ("stem", "layers"):
        if key not in arch:
            raise ArchError("architecture has no %r entry" % key)
    if not isinstance(arch["stem"], dict) or not isinstance(arch["stem"].get("channels"), int):
        raise ArchError("architecture 'stem' needs an integer 'channels'")
    if not isinstance(arch["layers"], list) or not all(isinstance(l, dict)
                                                       for l in arch["layers"]):
        raise ArchError("architecture 'layers' must be a list of objects")
    prev = arch["stem"]["channels"]
    for i, layer in enumerate(arch["layers"]):
        missing = [k for k in ("op", "C_in", "C_out", "stride") if k not in layer]
        if missing:
            raise ArchError("layer %d lacks %s" % (i, ", ".join(missing)))
        if layer["C_in"] != prev:
            raise ArchError("layer %d takes %d channels but the previous layer gives %d"
                            % (i, layer["C_in"], prev))
        if layer["stride"] not in (1, 2):
            raise ArchError("layer %d: stride must be 1 or 2, got %r" % (i, layer["stride"]))
        op_kind(layer["op"])
        prev = layer["C_out"]


def build_from_arch(arch, num_classes=None, deploy=False):
    """Build the network ``arch`` (a dict) describes; deploy=True fuses its RepVGG layers."""
    check_arch(arch)
    num_classes = num_classes or arch.get("num_classes")
    if not num_classes:
        raise ArchError("the architecture does not record num_classes; pass it")
    model = DerivedNet(arch, int(num_classes))
    return convert_to_deploy(model, inplace=True) if deploy else model


def load_arch_file(path):
    try:
        with open(path, encoding="utf-8") as f:
            return safe_json.loads(f.read(safe_json.MAX_BYTES + 1), path)
    except FileNotFoundError:
        raise ArchError("architecture file not found: %s" % path) from None
    except (OSError, ValueError) as e:
        raise ArchError("%s is not a readable JSON architecture file (%s)" % (path, e)) from None


def arch_image_size(path, default=None):
    """The input size the architecture file ``path`` was searched at (its ``image_size``: the
    stride plan and the latency table were for it), else ``default``."""
    arch = load_arch_file(path)
    size = arch.get("image_size") if isinstance(arch, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else default


def build_from_arch_file(path, num_classes=None, deploy=False):
    """Build the network described by the JSON file ``path`` (see the module docstring)."""
    return build_from_arch(load_arch_file(path), num_classes=num_classes, deploy=deploy)
