"""The checkpoint layouts of the RepVGG implementations in the wild, as data.

Every layout is a ``Layout`` record: how to recognise it from the keys, and how to turn its keys
and arrays into the official ones (``stage0``, ``stage{s}.{i}``, ``rbr_dense`` / ``rbr_1x1`` /
``rbr_identity`` / ``rbr_reparam``, ``se.down`` / ``se.up``, ``linear``) that this project's
models use. One function, ``to_official``, applies any of them; the mappings were read from the
projects' code (see the README, "Importing PyTorch checkpoints") and are tested against files
written by the real libraries.

- ``official``: DingXiaoH/RepVGG (``torch.save`` of the model's state dict or of ``main.py``'s
  training checkpoint); nothing to change.
- ``timm``: ``timm.models.byobnet`` (``repvgg_a0`` ... ``repvgg_d2se``, on the hub as
  ``.safetensors``): ``stem.*``, ``stages.{s-1}.{i}.{conv_kxk,conv_1x1,identity,reparam_conv,
  attn.fc1,attn.fc2}``, ``head.fc``.
- ``mmpretrain``: OpenMMLab (``{'meta', 'state_dict'}``): ``backbone.stem``,
  ``backbone.stage_{s}.{i}.{branch_3x3,branch_1x1,branch_norm,branch_reparam}``, ``norm`` for
  ``bn``, ``se_layer.conv1.conv`` / ``conv2.conv``, ``head.fc``.
- ``basecls``: megvii-research/basecls (MegEngine, ``megengine.save``): official branch names,
  ``head.fc``, ``se.f_ex.0`` / ``se.f_ex.2``; MegEngine shapes (grouped kernels 5-D, biases and
  BatchNorm ``(1, C, 1, 1)``, which ``mapping.to_megengine`` fits); trained on **BGR** input,
  so the stem's input channels are reversed here and the imported model takes RGB.
- ``paddleclas``: PaddleClas (``paddle.save``, ``.pdparams``): official names, BatchNorm
  statistics ``_mean`` / ``_variance``, ``linear.weight`` stored ``(in, out)``; its
  ``re_parameterize`` keeps the branches beside ``rbr_reparam``, so a block that has
  ``rbr_reparam`` loses its branch tensors here.
"""
import collections
import dataclasses
import re

import numpy as np

from .errors import ConverterError

# The stem kernels whose input channels are the image's colour channels (official names).
STEM_KERNELS = ("stage0.rbr_dense.conv.weight", "stage0.rbr_1x1.conv.weight",
                "stage0.rbr_reparam.weight")
_BRANCH = re.compile(r"^(.*)\.rbr_(dense|1x1|identity)\.")


@dataclasses.dataclass(frozen=True)
class Layout:
    name: str
    written_by: str
    # regexes that each match some key of this layout; together no other layout's keys
    # (``official``'s are also matched by basecls and PaddleClas keys: it is chosen only when no
    # other layout matches)
    markers: tuple
    renames: tuple = ()  # (regex, replacement), applied in order to every key
    transposed: tuple = ()  # official keys stored transposed (Paddle's Linear is (in, out))
    bgr: bool = False  # trained on BGR input: reverse the stem's input channels
    fused_keeps_branches: bool = False  # rbr_reparam may sit beside the branches it replaces

    def matches(self, keys):
        return all(any(re.search(marker, key) for key in keys) for marker in self.markers)


LAYOUTS = collections.OrderedDict((layout.name, layout) for layout in [
    Layout("official", "DingXiaoH/RepVGG (torch.save)",
           markers=(r"^stage0\.",)),
    Layout("timm", "timm (repvgg_*; safetensors or torch.save)",
           markers=(r"^stem\.(conv_kxk|reparam_conv)\.",),
           renames=((r"^stem\.", "stage0."),
                    (r"^stages\.(\d+)\.", lambda m: "stage%d." % (int(m.group(1)) + 1)),
                    (r"\.conv_kxk\.", ".rbr_dense."), (r"\.conv_1x1\.", ".rbr_1x1."),
                    (r"\.identity\.", ".rbr_identity."), (r"\.reparam_conv\.", ".rbr_reparam."),
                    (r"\.attn\.fc1\.", ".se.down."), (r"\.attn\.fc2\.", ".se.up."),
                    (r"^head\.fc\.", "linear."))),
    Layout("mmpretrain", "OpenMMLab mmpretrain / mmcls (torch.save)",
           markers=(r"^(backbone\.)?stem\.branch_(3x3|reparam)\.",),
           renames=((r"^backbone\.", ""), (r"^stem\.", "stage0."), (r"^stage_(\d)\.", r"stage\1."),
                    (r"\.branch_3x3\.", ".rbr_dense."), (r"\.branch_1x1\.", ".rbr_1x1."),
                    (r"\.branch_norm\.", ".rbr_identity."),
                    (r"\.branch_reparam\.", ".rbr_reparam."), (r"\.norm\.", ".bn."),
                    (r"\.se_layer\.conv1\.conv\.", ".se.down."),
                    (r"\.se_layer\.conv2\.conv\.", ".se.up."), (r"^head\.fc\.", "linear."))),
    Layout("basecls", "megvii-research/basecls (megengine.save)",
           markers=(r"^stage0\.", r"^head\.fc\.weight$"),
           renames=((r"\.se\.f_ex\.0\.", ".se.down."), (r"\.se\.f_ex\.2\.", ".se.up."),
                    (r"^head\.fc\.", "linear.")),
           bgr=True),
    Layout("paddleclas", "PaddleClas (paddle.save, .pdparams)",
           markers=(r"^stage0\.", r"\._(mean|variance)$"),
           renames=((r"\._mean$", ".running_mean"), (r"\._variance$", ".running_var")),
           transposed=("linear.weight",), fused_keeps_branches=True),
])


def detect_layout(keys):
    """The ``Layout`` whose marker the keys match; a ``ConverterError`` naming the candidates if
    none or several do (``--layout`` then chooses)."""
    keys = list(keys)
    found = [layout for layout in LAYOUTS.values()
             if layout.name != "official" and layout.matches(keys)]
    if not found and LAYOUTS["official"].matches(keys):
        return LAYOUTS["official"]
    if len(found) == 1:
        return found[0]
    shown = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
    if not found:
        raise ConverterError("the weights are in no known layout (keys: %s); known layouts: %s "
                             "(choose one with --layout)" % (shown, ", ".join(LAYOUTS)))
    raise ConverterError("the keys fit several layouts (%s); choose one with --layout"
                         % ", ".join(layout.name for layout in found))


def get_layout(name):
    try:
        return LAYOUTS[name]
    except KeyError:
        raise ConverterError("unknown layout %r; known: %s" % (name, ", ".join(LAYOUTS))) from None


def _rename(key, rules):
    for pattern, replacement in rules:
        key = pattern.sub(replacement, key)
    return key


def to_official(state_dict, layout):
    """``(state_dict, notes)``: ``state_dict`` (a layout's keys) in the official names and
    PyTorch layouts. ``notes`` lists what was changed beyond renaming, for the report."""
    rules = [(re.compile(pattern), replacement) for pattern, replacement in layout.renames]
    out, notes = collections.OrderedDict(), []
    for key, array in state_dict.items():
        new = _rename(key, rules)
        if new in out:
            raise ConverterError("%s layout: keys %s and another both map to %s"
                                 % (layout.name, key, new))
        out[new] = array
    for key in layout.transposed:
        if key in out and np.ndim(out[key]) == 2:
            out[key] = out[key].T
            notes.append("transposed %s (stored (in, out))" % key)
    if layout.fused_keeps_branches:
        fused = {key[:-len(".rbr_reparam.weight")] for key in out
                 if key.endswith(".rbr_reparam.weight")}
        dropped = [key for key in out if _BRANCH.match(key) and _BRANCH.match(key).group(1) in fused]
        for key in dropped:
            del out[key]
        if dropped:
            notes.append("dropped %d train-form branch tensors kept beside rbr_reparam"
                         % len(dropped))
    if layout.bgr:
        flipped = [key for key in STEM_KERNELS if key in out and np.ndim(out[key]) == 4]
        for key in flipped:
            out[key] = out[key][:, ::-1]
        if flipped:
            notes.append("reversed the stem's input channels (BGR-trained weights; the model "
                         "takes RGB)")
    return out, notes
