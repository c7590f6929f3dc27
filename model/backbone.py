"""A classifier's stages as a headless backbone returning multi-scale features (timm's
``features_only``).

``Backbone(net, out_indices)`` takes the stage modules of a staged network (``net.STAGE_LAYOUT``,
see ``model.finetune``) under the same attribute names, so its state-dict keys are the
classifier's minus the head, and drops everything else (pooling, classifier, RepVGGplus's
auxiliary heads). Stage ``i`` has stride ``2**(i+1)``: 2, 4, 8, 16, 32 for stages 0-4.
``forward(x)`` returns a list with the output of each stage in ``out_indices``; stages after
the last requested one are not kept.
"""
import megengine.module as M

from errors import UserError

from .finetune import Staged


class FeatureInfo:
    """Channels, strides and names of a backbone's outputs, in output order (timm's API)."""

    def __init__(self, entries):
        self.entries = [dict(e) for e in entries]

    def channels(self):
        return [e["channels"] for e in self.entries]

    def reduction(self):
        return [e["reduction"] for e in self.entries]

    def names(self):
        return [e["name"] for e in self.entries]

    def __len__(self):
        return len(self.entries)

    def __iter__(self):
        return iter(self.entries)

    def __repr__(self):
        return "FeatureInfo(%s)" % self.entries


def out_channels(module):
    """Output channels of a stage's last module: a block records them, a RepVGGplus stage
    holds its blocks in ``blocks``."""
    if hasattr(module, "out_channels"):
        return module.out_channels
    return out_channels(module.blocks[-1])


def check_indices(out_indices, num_stages):
    """``out_indices`` as a sorted tuple of distinct stage indices; ``UserError`` otherwise."""
    indices = tuple(int(i) for i in out_indices)
    if not indices or any(not 0 <= i < num_stages for i in indices) \
            or len(set(indices)) != len(indices):
        raise UserError("out_indices=%s: give distinct stage indices from 0 to %d"
                        % (list(out_indices), num_stages - 1))
    return tuple(sorted(indices))


class Backbone(Staged, M.Module):
    """The stages of ``net`` up to ``max(out_indices)``, returning one feature map per index."""

    def __init__(self, net, out_indices=None):
        super().__init__()
        if not isinstance(net, Staged):
            raise UserError("%s has no stage layout; features_only works on RepVGG, QARepVGG "
                            "and RepVGGplus networks" % type(net).__name__)
        n = len(net.STAGE_LAYOUT)
        self.out_indices = check_indices(range(n) if out_indices is None else out_indices, n)
        self.STAGE_LAYOUT = tuple(net.STAGE_LAYOUT[:self.out_indices[-1] + 1])
        for names in self.STAGE_LAYOUT:
            for name in names:
                setattr(self, name, getattr(net, name))
        self.frozen_stages = min(net.frozen_stages, len(self.STAGE_LAYOUT))
        self.norm_eval = net.norm_eval
        self.feature_info = FeatureInfo(
            {"name": "stage%d" % i, "index": i, "reduction": 2 ** (i + 1),
             "channels": out_channels(self.stage_modules(i)[-1])} for i in self.out_indices)

    def forward(self, x):
        self.apply_norm_modes()
        return [y for i, y in enumerate(self.forward_stages(x)) if i in self.out_indices]
