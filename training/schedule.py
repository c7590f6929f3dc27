"""Learning rate per optimizer step: linear warm-up, then cosine decay to ``min_lr``."""
import math


def lr_at(step, base_lr, total_steps, warmup_steps=0, min_lr=0.0):
    """The learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    Warm-up rises linearly from base_lr/warmup_steps at step 0 to base_lr at step
    warmup_steps-1; the cosine then runs over the remaining steps, reaching ``min_lr`` after the
    last one.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    return cosine(min(1.0, (step - warmup_steps) / span), base_lr, min_lr)


def cosine(progress, start, end):
    """Half a cosine from ``start`` (progress 0) to ``end`` (progress 1)."""
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))
