"""The end of a run: the best checkpoint turned into the deploy form, checked, and saved.

``deploy_best`` reloads ``best.pkl``, fuses it (``model.parity.check_parity`` converts with
``model.convert_to_deploy`` and compares both forms on a validation batch), evaluates both forms
on the validation split, and writes ``deploy.pkl`` only when they agree. A model whose outputs
are not finite is reported as a diverged training, not as a conversion failure.
"""
import logging

import numpy as np

from common.checkpoint import load_checkpoint, save_checkpoint
from errors import UserError
from model.checkpoint import (build_model, checkpoint_dict, load_weights, metadata_of,
                              numpy_state_dict)
from model.parity import check_parity, format_row

from common.evaluation import evaluate

log = logging.getLogger("train")


class DeployCheckError(UserError):
    """The deploy form of the best model does not reproduce its train form."""


def deploy_best(best_path, deploy_path, arch, val_loader, fast_conv=True, progress=True):
    """best.pkl -> deploy.pkl with a parity check and both forms' accuracy.

    Returns {"acc1", "acc5", "deploy_acc1", "deploy_acc5", "parity", "epoch", "weights"}.
    """
    best = load_checkpoint(best_path)
    state_dict = best["state_dict"]
    model = build_model(arch, best["num_classes"])
    load_weights(model, state_dict, best_path)
    model.eval()
    images = next(iter(val_loader))[0]
    parity, deploy = check_parity("best model (epoch %d), val batch of %d"
                                  % (best.get("epoch", 0), len(images)), model, images)
    log.info(format_row(parity))  # MegEngine's own convs on both sides
    if not parity.ok:
        if not np.isfinite(parity.max_abs) or not all(
                np.isfinite(v).all() for v in state_dict.values()):
            raise UserError("the best model's outputs are not finite (loss is nan): the "
                            "training diverged; try a lower --lr. deploy.pkl not written")
        raise DeployCheckError("deploy form differs from train form beyond tolerance (%s); "
                               "deploy.pkl not written" % format_row(parity))
    if fast_conv:  # the faster small-map forward route, for both forms alike
        from . import fastconv
        fastconv.enable(model)
        fastconv.enable(deploy)
    # the epochs' validation named every unreadable image already: these passes only count
    train_val = evaluate(model, val_loader, desc="val (train form)", progress=progress,
                         warn=False)
    deploy_val = evaluate(deploy, val_loader, desc="val (deploy form)", progress=progress,
                          warn=False)
    acc1, acc5 = train_val.top1, train_val.top5
    dep_acc1, dep_acc5 = deploy_val.top1, deploy_val.top5
    save_checkpoint(checkpoint_dict(numpy_state_dict(deploy), arch, "deploy",
                                    **metadata_of(best)), deploy_path)
    log.info("best epoch %d%s  val top-1 / top-5: train form %.2f%% / %.2f%%, deploy form "
             "%.2f%% / %.2f%%  -> %s", best.get("epoch", 0),
             " (EMA weights)" if best.get("weights") == "ema" else "", acc1, acc5, dep_acc1,
             dep_acc5, deploy_path)
    if (acc1, acc5) != (dep_acc1, dep_acc5):
        raise DeployCheckError("train-form and deploy-form accuracies differ (%.2f%% vs %.2f%%)"
                               % (acc1, dep_acc1))
    return {"acc1": acc1, "acc5": acc5, "deploy_acc1": dep_acc1, "deploy_acc5": dep_acc5,
            "parity": parity, "epoch": best.get("epoch", 0), "weights": best.get("weights")}
