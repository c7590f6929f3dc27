"""Loss functions beyond MegEngine's own ``F.nn.cross_entropy``."""
import megengine as mge
import megengine.functional as F


def soft_target_cross_entropy(logits, targets):
    """Mean over the batch of -Σ_j t_j · log_softmax(logits)_j (timm's ``SoftTargetCrossEntropy``,
    the official RepVGG loss when mixup is on). ``logits`` (N, C) tensor; ``targets`` (N, C)
    probabilities (tensor or numpy), e.g. ``data.mixing.MixupCutmix`` targets.

    With one-hot targets smoothed by s (off = s/C, on = 1 - s + s/C) this equals
    ``F.nn.cross_entropy(logits, labels, label_smooth=s)``."""
    targets = targets if isinstance(targets, mge.Tensor) else mge.tensor(targets, dtype="float32")
    if logits.ndim != 2 or tuple(targets.shape) != tuple(logits.shape):
        raise ValueError("soft_target_cross_entropy needs logits (N, C) and targets of the same "
                         "shape, got %s and %s" % (tuple(logits.shape), tuple(targets.shape)))
    return -(targets * F.nn.logsoftmax(logits, axis=1)).sum(axis=1).mean()
