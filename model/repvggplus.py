"""RepVGGplus (the official repvggplus.py design), e.g. RepVGGplus-L2pse.

Differences from RepVGG: SE after the ReLU in every block ("post-SE", reduction 4), stage3 split
in two halves, and three auxiliary classifiers (after stage1, stage2 and the first half of
stage3) that exist only for training and are dropped by ``switch_to_deploy``.

Outputs: in training mode a train-form model returns a dict with the main logits and the
auxiliary logits (``main``, ``stage1_aux``, ``stage2_aux``, ``stage3_first_aux``); in eval mode,
and always in deploy form, it returns the main logits only. (The official model returns the dict
whenever it is in train form, eval included, plus its custom L2 term; here the L2 term comes from
``model.repvgg.custom_l2(model)`` as for RepVGG.)
"""
import functools

import megengine.module as M

from .layers import ConvBn, GlobalAvgPool
from .finetune import Staged
from .registry import register_model
from .repvgg import ClassifierHead, RepVGGBlock, stage_widths


class RepVGGplusBlock(RepVGGBlock):
    """RepVGGplus's block: a RepVGG block whose optional SE follows the ReLU (reduction 4)."""

    def __init__(self, in_channels, out_channels, stride=1, groups=1, deploy=False,
                 use_post_se=False):
        super().__init__(in_channels, out_channels, 3, stride, 1, 1, groups, deploy,
                         use_se=use_post_se, se_after_relu=True, se_reduction=4)


class RepVGGplusStage(M.Module):
    """A run of blocks, the first with ``stride``; kept as ``.blocks`` for the official keys."""

    def __init__(self, in_planes, planes, num_blocks, stride, use_post_se=False, deploy=False):
        super().__init__()
        self.blocks = []
        for s in [stride] + [1] * (num_blocks - 1):
            self.blocks.append(RepVGGplusBlock(in_planes, planes, s, deploy=deploy,
                                               use_post_se=use_post_se))
            in_planes = planes

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def _aux_head(channels, num_classes):
    # Index 3 for the linear layer, as in the official nn.Sequential(conv_bn_relu, pool, flatten, fc).
    return M.Sequential(ConvBn(channels, channels, 3, stride=2, padding=1, relu=True),
                        GlobalAvgPool(), M.Identity(), M.Linear(channels, num_classes))


class RepVGGplus(ClassifierHead, Staged, M.Module):
    """As a staged network (``model.finetune``, ``model.backbone``) stage 3 is both halves, so
    stage ``i`` has stride ``2**(i+1)`` as in RepVGG; the auxiliary heads read the outputs of
    stage 1, stage 2 and ``stage3_first`` (the middle of stage 3) and belong to no stage."""

    AUX_HEADS = ("stage1_aux", "stage2_aux", "stage3_first_aux")
    STAGE_LAYOUT = (("stage0",), ("stage1",), ("stage2",), ("stage3_first", "stage3_second"),
                    ("stage4",))

    def __init__(self, num_blocks, num_classes=1000, width_multiplier=(1, 1, 1, 1), deploy=False,
                 use_post_se=False):
        super().__init__()
        self.deploy = deploy
        w = stage_widths(width_multiplier)
        stage = functools.partial(RepVGGplusStage, use_post_se=use_post_se, deploy=deploy)
        self.stage0 = RepVGGplusBlock(3, w[0], stride=2, deploy=deploy, use_post_se=use_post_se)
        self.stage1 = stage(w[0], w[1], num_blocks[0], stride=2)
        self.stage2 = stage(w[1], w[2], num_blocks[1], stride=2)
        self.stage3_first = stage(w[2], w[3], num_blocks[2] // 2, stride=2)
        self.stage3_second = stage(w[3], w[3], num_blocks[2] // 2, stride=1)
        self.stage4 = stage(w[3], w[4], num_blocks[3], stride=2)
        self.gap = GlobalAvgPool()
        self.num_features = w[4]
        self.linear = self._classifier(num_classes)
        if not deploy:
            self.stage1_aux = _aux_head(w[1], num_classes)
            self.stage2_aux = _aux_head(w[2], num_classes)
            self.stage3_first_aux = _aux_head(w[3], num_classes)

    def reset_classifier(self, num_classes):
        """New main and auxiliary classifiers for ``num_classes`` (0: none)."""
        super().reset_classifier(num_classes)
        for name in self.AUX_HEADS:
            if hasattr(self, name):
                head = getattr(self, name)
                head[3] = M.Linear(head[3].in_features, num_classes) if num_classes > 0 \
                    else M.Identity()

    def forward(self, x):
        with_aux = self.training and not self.deploy
        if not with_aux:
            return self.forward_head(self.forward_features(x))
        self.apply_norm_modes()
        aux = {}
        x = self.stage1(self.stage0(x))
        aux["stage1_aux"] = self.stage1_aux(x)
        x = self.stage2(x)
        aux["stage2_aux"] = self.stage2_aux(x)
        x = self.stage3_first(x)
        aux["stage3_first_aux"] = self.stage3_first_aux(x)
        x = self.stage4(self.stage3_second(x))
        return dict(main=self.forward_head(x), **aux)

    def switch_to_deploy(self):
        """Drop the auxiliary classifiers; the blocks fuse through their own switch_to_deploy."""
        for name in self.AUX_HEADS:
            if hasattr(self, name):
                delattr(self, name)
        self.deploy = True


# name -> (num_blocks, width_multiplier, use_post_se)
REPVGGPLUS_VARIANTS = {
    "RepVGGplus-L2pse": ((8, 14, 24, 1), (2.5, 2.5, 2.5, 5), True),
}


def _build(num_blocks, width_multiplier, use_post_se, deploy=False, num_classes=1000):
    return RepVGGplus(num_blocks, num_classes, width_multiplier, deploy, use_post_se)


for _name, _spec in REPVGGPLUS_VARIANTS.items():
    register_model(_name, functools.partial(_build, *_spec))
