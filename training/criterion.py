"""The training loss, with everything model-specific in one place.

- cross-entropy on hard labels with label smoothing, or on soft targets (mixup / CutMix, whose
  targets already carry the smoothing: ``training.losses.soft_target_cross_entropy``);
- RepVGGplus in train mode returns a dict, ``main`` plus auxiliary heads: each auxiliary head's
  loss counts 0.1 (the official ``main.py``: ``loss += 0.1 * criterion(pred, targets)`` for names
  containing ``aux``);
- with ``--custwd``, the official custom L2 of every RepVGG block (``model.custom_l2``, the decay
  of the equivalent fused kernel), added as ``0.5 * weight_decay * custom_l2``.
"""
import megengine.functional as F

from .losses import soft_target_cross_entropy

AUX_WEIGHT = 0.1


class Criterion:
    def __init__(self, label_smoothing=0.0, custom_l2_weight=0.0):
        self.label_smoothing = float(label_smoothing)
        self.custom_l2_weight = float(custom_l2_weight)

    def cross_entropy(self, logits, targets):
        if targets.ndim == 2:  # soft targets
            return soft_target_cross_entropy(logits, targets)
        return F.nn.cross_entropy(logits, targets, label_smooth=self.label_smoothing)

    def __call__(self, model, outputs, targets):
        """``(loss, main logits)`` for the model's ``outputs`` (a tensor, or RepVGGplus's dict)
        against ``targets`` ((N,) labels or (N, C) probabilities)."""
        if isinstance(outputs, dict):
            logits = outputs["main"]
            loss = self.cross_entropy(logits, targets)
            for name, aux in outputs.items():
                if name != "main":
                    loss = loss + AUX_WEIGHT * self.cross_entropy(aux, targets)
        else:
            logits = outputs
            loss = self.cross_entropy(logits, targets)
        if self.custom_l2_weight:
            from model import custom_l2
            loss = loss + self.custom_l2_weight * custom_l2(model)
        return loss, logits
