"""Per-step hooks that modules may define (e.g. binary convs clamp their latent weights)."""


def after_optimizer_step(model):
    """Call ``m.after_optimizer_step()`` on every sub-module (and the model) that defines it."""
    for _, module in model.named_modules():
        hook = getattr(module, "after_optimizer_step", None)
        if callable(hook):
            hook()
