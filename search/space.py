"""Search spaces as data: stem, searchable layers (C_in, C_out, stride, input size), head,
candidate names. A space's hash ties latency tables, checkpoints and arch files to it.

Presets:

- ``fbnet22``: the FBNet 22-layer ImageNet table (224x224 input, stem 16 channels stride 2),
  nine FBNet candidates. The head is a 1x1 conv-BN-ReLU to 1504 channels (the FBNet code's width;
  it has no BN/ReLU there, which leaves two linear maps back to back) and global pooling (the
  code's AvgPool(7) breaks at other resolutions).
- ``digits``: a small space for the built-in 16x16 digits that searches on this CPU in seconds:
  stem 8 channels, five layers 8-8-16-16-24-24 with two reductions, FBNet candidates plus
  ``repvgg``.
- ``binary_resnet18``: aw_nas's binary ResNet-18 body as 8 searchable cells (channels
  64,64,64,128,128,256,256,512,512, reductions at cells 2, 4, 6; CIFAR stem 3->64 stride 1),
  candidates the binary primitives of ``model.binary.primitives``.
- ``tas_digits``: plain 3x3 conv layers (``conv_k3``) for TAS width search on the digits.
"""
import dataclasses
import hashlib
import json

from errors import UserError

FBNET9 = ("ir_k3_e1", "ir_k3_s2", "ir_k3_e3", "ir_k3_e6", "ir_k5_e1", "ir_k5_s2", "ir_k5_e3",
          "ir_k5_e6", "skip")
BINARY_CANDIDATES = ("xnor_resnet_block", "bireal_resnet_block", "xnor_vgg_block",
                     "xnor_conv_3x3_cond_skip", "xnor_skip_connect")
# Names accepted in --candidates that stand for a group of candidates.
CANDIDATE_GROUPS = {"fbnet9": FBNET9, "binary": BINARY_CANDIDATES}


class SpaceError(UserError, ValueError):
    """A search space, or a file, that does not fit (message is one line)."""


def out_size(size, stride):
    """Spatial size after a 'same'-padded conv with odd kernel and ``stride``."""
    return (size - 1) // stride + 1


@dataclasses.dataclass(frozen=True)
class Layer:
    C_in: int
    C_out: int
    stride: int
    input_size: int


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    name: str
    image_size: int
    num_classes: int
    stem_channels: int
    stem_stride: int
    layers: tuple
    candidates: tuple
    head_channels: int = 0

    def to_dict(self):
        d = dataclasses.asdict(self)
        d["layers"] = [dataclasses.asdict(l) for l in self.layers]
        d["candidates"] = list(self.candidates)
        return d

    @property
    def hash(self):
        """First 16 hex digits of the SHA-256 of the canonical JSON of the space."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def with_candidates(self, candidates):
        return dataclasses.replace(self, candidates=tuple(expand_candidates(candidates)))

    def stem_dict(self):
        return {"channels": self.stem_channels, "stride": self.stem_stride}

    def head_dict(self):
        return {"channels": self.head_channels}


def from_dict(d):
    try:
        layers = tuple(Layer(**l) for l in d["layers"])
        return SearchSpace(**{**d, "layers": layers, "candidates": tuple(d["candidates"])})
    except (KeyError, TypeError) as e:
        raise SpaceError("not a search-space description (%s)" % e) from None


def expand_candidates(names):
    """Expand group names (fbnet9, binary) in a list or comma-separated string of candidates."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out = []
    for n in names:
        for m in CANDIDATE_GROUPS.get(n, (n,)):
            if m not in out:
                out.append(m)
    if not out:
        raise SpaceError("no candidates given")
    return out


def make_space(name, image_size, num_classes, stem, blocks, candidates, head=0):
    """Build a space from ``blocks`` = [(C_out, stride), ...]; input sizes follow the strides."""
    size = out_size(image_size, stem[1])
    layers, c_in = [], stem[0]
    for c_out, stride in blocks:
        layers.append(Layer(c_in, c_out, stride, size))
        c_in, size = c_out, out_size(size, stride)
    return SearchSpace(name, image_size, num_classes, stem[0], stem[1], tuple(layers),
                       tuple(candidates), head)


def _stages(*stages):
    """[(C_out, n, first_stride), ...] -> per-layer [(C_out, stride), ...]."""
    return [(c, s if i == 0 else 1) for c, n, s in stages for i in range(n)]


PRESETS = {
    "fbnet22": lambda size=224: make_space(
        "fbnet22", size, 1000, (16, 2),
        _stages((16, 1, 1), (24, 4, 2), (32, 4, 2), (64, 4, 2), (112, 4, 1), (184, 4, 2),
                (352, 1, 1)), FBNET9, head=1504),
    "digits": lambda size=16: make_space(
        "digits", size, 10, (8, 1), [(8, 1), (16, 2), (16, 1), (24, 2), (24, 1)],
        FBNET9 + ("repvgg",), head=32),
    "binary_resnet18": lambda size=32: make_space(
        "binary_resnet18", size, 10, (64, 1),
        _stages((64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)), BINARY_CANDIDATES),
    "tas_digits": lambda size=16: make_space(
        "tas_digits", size, 10, (16, 1), [(16, 1), (32, 2), (32, 1), (64, 2)], ("conv_k3",)),
}


def get_space(name, candidates=None, image_size=None, num_classes=None):
    """A preset by name, optionally with other candidates, input size or class count (a
    different hash)."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise SpaceError("unknown search space %r; presets: %s"
                         % (name, ", ".join(sorted(PRESETS)))) from None
    if image_size is not None and image_size < 4:
        raise SpaceError("image size must be at least 4, got %d" % image_size)
    space = preset() if image_size is None else preset(image_size)
    if num_classes is not None:
        if num_classes < 2:
            raise SpaceError("a classifier needs at least 2 classes, got %d" % num_classes)
        space = dataclasses.replace(space, num_classes=num_classes)
    return space.with_candidates(candidates) if candidates else space
