"""Fine-tuning controls of a staged network (mmpretrain's ``frozen_stages`` and ``norm_eval``).

A network takes part by naming its stages: ``STAGE_LAYOUT`` is a tuple with, for stage index
``i``, the attribute names whose modules make up stage ``i`` in order (RepVGG:
``("stage0",), ("stage1",), ...``; RepVGGplus's stage 3 is ``("stage3_first",
"stage3_second")``). Mixing in ``Staged`` gives it:

- ``frozen_stages = k``: the BatchNorms of stages ``0 .. k-1`` stay in eval mode whatever
  ``train()`` is called with, and ``trainable_parameters(net)`` leaves their parameters out, so a
  training step (GradManager and optimizer fed from it) leaves them bit-identical;
- ``norm_eval = True``: every BatchNorm of the network stays in eval mode (its running
  statistics stay put; its affine parameters still train unless frozen).

MegEngine's ``Module.train`` visits every submodule with ``recursive=False``, so when this
network sits inside a user's model, the user's ``model.train()`` never calls this network's
``train`` recursively. The modes are therefore also re-applied at the start of every forward
pass (``apply_norm_modes``): that holds wherever the network is nested.
"""
import megengine.module as M

from errors import UserError


def _parts(part):
    """A stage attribute as a list of modules (RepVGG keeps its stages as Python lists)."""
    return list(part) if isinstance(part, (list, tuple)) else [part]


class Staged:
    """Mixin for a ``M.Module`` with ``STAGE_LAYOUT`` (see the module docstring)."""

    STAGE_LAYOUT = ()
    frozen_stages = 0
    norm_eval = False

    def stage_modules(self, index):
        """The modules of stage ``index``, in forward order."""
        return [m for name in self.STAGE_LAYOUT[index] for m in _parts(getattr(self, name))]

    def num_stages(self):
        return len(self.STAGE_LAYOUT)

    def forward_stages(self, x):
        """Yields the output of each stage in turn (stage 0 first)."""
        for i in range(self.num_stages()):
            for m in self.stage_modules(i):
                x = m(x)
            yield x

    def set_finetuning(self, frozen_stages=0, norm_eval=False):
        """Set both controls (see the module docstring); returns ``self``."""
        frozen_stages = int(frozen_stages)
        if not 0 <= frozen_stages <= self.num_stages():
            raise UserError("frozen_stages=%d: %s has stages 0..%d (give 0 to %d)"
                            % (frozen_stages, type(self).__name__, self.num_stages() - 1,
                               self.num_stages()))
        self.frozen_stages, self.norm_eval = frozen_stages, bool(norm_eval)
        self.apply_norm_modes()
        return self

    def frozen_modules(self):
        return [m for i in range(self.frozen_stages) for m in self.stage_modules(i)]

    def apply_norm_modes(self):
        """Put the BatchNorms that must stay in eval mode into eval mode."""
        roots = [self] if self.norm_eval else self.frozen_modules()
        for root in roots:
            for _, m in root.named_modules():
                if isinstance(m, M.BatchNorm2d):
                    m.training = False

    def train(self, mode=True, recursive=True):
        super().train(mode, recursive)
        if recursive:
            self.apply_norm_modes()


def trainable_parameters(net):
    """The parameters of ``net`` a fine-tuning run trains: all of them but those of the frozen
    stages of every ``Staged`` network inside ``net`` (``net`` itself, or a backbone in a user's
    model). Feed the GradManager and the optimizer from this."""
    frozen = set()
    for _, m in net.named_modules():
        if isinstance(m, Staged):
            frozen.update(id(p) for part in m.frozen_modules() for p in part.parameters())
    return [p for p in net.parameters() if id(p) not in frozen]


def trainable_named_parameters(net):
    """``(name, parameter)`` for ``trainable_parameters(net)``, in ``named_parameters`` order."""
    keep = {id(p) for p in trainable_parameters(net)}
    return [(name, p) for name, p in net.named_parameters() if id(p) in keep]


def set_finetuning(net, frozen_stages=0, norm_eval=False):
    """``net.set_finetuning(...)`` for a staged network; a one-line ``UserError`` for another
    (a searched or binary network has no stage layout to freeze)."""
    if not isinstance(net, Staged):
        if frozen_stages or norm_eval:
            raise UserError("%s has no stages to freeze (frozen_stages and norm_eval work on "
                            "RepVGG, QARepVGG and RepVGGplus networks and their backbones)"
                            % type(net).__name__)
        return net
    return net.set_finetuning(frozen_stages, norm_eval)
