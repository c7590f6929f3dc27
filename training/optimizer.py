"""SGD with the official RepVGG training script's parameter groups.

The official ``train.py`` (``sgd_optimizer``) gives every parameter weight decay except
  * biases and anything with ``bn`` in its name (BatchNorm weights and biases of the conv
    branches; the identity branch's BN is named ``rbr_identity`` and keeps its decay), and
  * with ``--custwd``, everything in ``rbr_dense`` and ``rbr_1x1``: those kernels are instead
    regularised through the loss by the block's custom L2 (``model.custom_l2``), added as
    ``0.5 * weight_decay * custom_l2``;
and trains biases at twice the learning rate (a Caffe habit; "made no difference", per its
comment; ``bias_lr_mult`` sets it).
"""
from megengine.optimizer import SGD


def decay_and_lr_mult(name, custom_l2, bias_lr_mult):
    no_decay = ("bias" in name or "bn" in name
                or (custom_l2 and ("rbr_dense" in name or "rbr_1x1" in name)))
    return (not no_decay), (bias_lr_mult if "bias" in name else 1.0)


def param_groups(model, weight_decay, custom_l2=False, bias_lr_mult=2.0):
    """Parameters grouped by (weight decay, lr multiplier), in model order; the frozen stages'
    parameters (``--frozen-stages``) are in none."""
    from model.finetune import trainable_named_parameters

    groups = {}
    for name, param in trainable_named_parameters(model):
        decay, lr_mult = decay_and_lr_mult(name, custom_l2, bias_lr_mult)
        key = (weight_decay if decay else 0.0, lr_mult)
        groups.setdefault(key, {"params": [], "names": []})
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return [{"params": g["params"], "weight_decay": wd, "lr_mult": mult}
            for (wd, mult), g in groups.items()]


def build_sgd(model, lr, momentum, weight_decay, custom_l2=False, bias_lr_mult=2.0,
              nesterov=False):
    groups = param_groups(model, weight_decay, custom_l2, bias_lr_mult)
    for g in groups:
        g["lr"] = lr * g["lr_mult"]
    return SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
