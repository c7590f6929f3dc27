"""The training loop: epochs of SGD steps, evaluation, checkpoints, records, and the finish
(best model -> deploy form, parity check, deploy checkpoint)."""
import logging
import math
import os
import random
import time

import numpy as np
from tqdm import tqdm

import megengine as mge
import megengine.distributed as dist
import megengine.functional as F
from megengine.autodiff import GradManager

from common.checkpoint import load_checkpoint, save_checkpoint
from data.loader import make_loader
from errors import UserError
from model.checkpoint import (arch_label, build_model, checkpoint_dict, load_weights,
                              numpy_state_dict)
from model.parity import check_parity, format_row

from . import state as train_state
from .metrics import MetricsCSV, plot_curves
from .optimizer import build_sgd, set_lr
from .schedule import lr_at
from .step import TrainStep

log = logging.getLogger("train")

OUTPUTS = ("latest.pkl", "best.pkl", "deploy.pkl", "metrics.csv", "curves.png", "train.log")


class LossNotFinite(UserError):
    """The loss became NaN or infinite; the run stops, keeping the last good checkpoint."""


def topk_correct(logits, labels, ks=(1, 5)):
    """How many rows have their label among the top-k scores, for each k."""
    order = np.argsort(-logits, axis=1)
    hits = order == labels[:, None]
    return [int(hits[:, :k].any(axis=1).sum()) for k in ks]


def evaluate(model, loader, label_smoothing=0.0, desc="val", progress=True):
    """(mean loss, top-1 %, top-5 %) of ``model`` in eval mode over ``loader``."""
    model.eval()
    total = loss_sum = c1 = c5 = 0
    for images, labels, _ in tqdm(loader, desc=desc, leave=False, disable=not progress):
        logits = model(mge.tensor(images))
        loss = F.nn.cross_entropy(logits, mge.tensor(labels), label_smooth=label_smoothing)
        n = len(labels)
        loss_sum += float(loss.numpy()) * n
        h1, h5 = topk_correct(logits.numpy(), labels)
        total, c1, c5 = total + n, c1 + h1, c5 + h5
    return loss_sum / total, 100.0 * c1 / total, 100.0 * c5 / total


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    mge.random.seed(seed)


class Trainer:
    """One run. ``cfg`` is a dict of the settings (see train.py); ``splits`` the data."""

    def __init__(self, cfg, splits, rank=0, world_size=1):
        self.cfg, self.splits = cfg, splits
        self.rank, self.world_size = rank, world_size
        self.main = rank == 0
        self.out = cfg["output"]
        self.num_classes = len(splits.classes)
        seed_everything(cfg["seed"])  # initial weights depend only on --seed
        self.model = build_model(cfg["arch"], self.num_classes)
        if cfg.get("fast_conv_grad", True):
            from . import fastconv
            fastconv.enable(self.model)
        self.optimizer = build_sgd(self.model, cfg["lr"], cfg["momentum"], cfg["weight_decay"],
                                   custom_l2=cfg["custwd"], bias_lr_mult=cfg["bias_lr_mult"])
        callbacks = [dist.make_allreduce_cb("mean")] if world_size > 1 else []
        self.gm = GradManager().attach(self.model.parameters(), callbacks=callbacks)
        self.train_step = TrainStep(self.model, self.optimizer, self.loss_of, self.gm)
        self.train_loader, self.train_sampler = make_loader(
            splits.train, splits.train_transform, cfg["batch_size"], shuffle=True,
            seed=cfg["seed"], workers=cfg["workers"], world_size=world_size, rank=rank,
            drop_last=True)
        self.val_loader, _ = make_loader(splits.val, splits.eval_transform,
                                         cfg["eval_batch_size"], shuffle=False,
                                         workers=cfg["workers"])
        full = len(self.train_sampler)
        cap = cfg.get("max_steps_per_epoch") or full
        self.steps_per_epoch = min(full, cap)
        self.total_steps = self.steps_per_epoch * cfg["epochs"]
        self.warmup_steps = int(round(cfg["warmup_epochs"] * self.steps_per_epoch))
        self.epoch = self.step = self.best_epoch = 0
        self.best_acc1 = -1.0
        self.skip_warned = set()

    # -- files -------------------------------------------------------------------------------
    def path(self, name):
        return os.path.join(self.out, name)

    def resume(self):
        latest = self.path("latest.pkl")
        if not os.path.exists(latest):
            raise UserError("--resume: no checkpoint at %s (nothing to resume; run without "
                            "--resume to start)" % latest)
        self.epoch, self.step, self.best_acc1, self.best_epoch = train_state.restore(
            latest, self.model, self.optimizer, self.cfg)
        log.info("resumed from %s: %d epochs done, %d optimizer steps, best top-1 %.2f%%",
                 latest, self.epoch, self.step, self.best_acc1)

    def save(self, is_best):
        if not self.main:
            return
        if is_best:  # before latest: a kill in between just repeats this epoch
            best = checkpoint_dict(numpy_state_dict(self.model), self.cfg["arch"], "train",
                                   epoch=self.epoch, val_acc1=self.best_acc1, **self.data_info())
            save_checkpoint(best, self.path("best.pkl"))
        train_state.save(self.path("latest.pkl"), self.model, self.optimizer, self.cfg["arch"],
                         self.epoch, self.step, self.best_acc1, self.best_epoch, self.cfg)

    def data_info(self):
        """What eval/predict need to prepare inputs like this run did."""
        return {"classes": list(self.splits.classes), "dataset": self.cfg["dataset"],
                "image_size": self.cfg["image_size"],
                "preprocess": self.splits.eval_transform.spec.to_dict()}

    # -- one epoch ---------------------------------------------------------------------------
    def loss_of(self, logits, labels):
        """Cross-entropy (+ 0.1 x each auxiliary head's for RepVGGplus, as the official code
        does) (+ the custom L2 with --custwd); returns (loss, main logits)."""
        def ce(out):
            return F.nn.cross_entropy(out, labels, label_smooth=self.cfg["label_smoothing"])
        if isinstance(logits, dict):  # RepVGGplus in train mode: main + auxiliary heads
            loss = ce(logits["main"]) + 0.1 * sum(ce(v) for k, v in logits.items()
                                                  if k != "main")
            logits = logits["main"]
        else:
            loss = ce(logits)
        if self.cfg["custwd"]:
            from model import custom_l2
            loss = loss + 0.5 * self.cfg["weight_decay"] * custom_l2(self.model)
        return loss, logits

    def note_skipped(self, skipped):
        bad = [int(i) for i in skipped if i >= 0]
        for i in bad:
            if i not in self.skip_warned:
                self.skip_warned.add(i)
                log.warning("skipped unreadable image %s", self.splits.train.describe(i))
        return len(bad)

    def train_epoch(self):
        cfg, model = self.cfg, self.model
        model.train()
        mge.random.seed(cfg["seed"] * 100003 + self.epoch)
        self.train_sampler.set_epoch(self.epoch)
        bar = tqdm(total=self.steps_per_epoch, desc="epoch %d/%d" % (self.epoch + 1,
                                                                   cfg["epochs"]),
                   disable=not (self.main and cfg["progress"]), dynamic_ncols=True)
        seen = loss_sum = correct = skipped = 0
        start = time.time()
        for i, (images, labels, bad) in enumerate(self.train_loader):
            if i >= self.steps_per_epoch:
                break
            lr = lr_at(self.step, cfg["lr"], self.total_steps, self.warmup_steps)
            set_lr(self.optimizer, lr)
            value, logits = self.train_step(images, labels)  # no update when not finite
            if not math.isfinite(value):
                raise LossNotFinite(
                    "loss is %s at epoch %d, step %d (lr %.4g); stopped. The last good "
                    "checkpoint is %s (after epoch %d); try a lower --lr"
                    % (value, self.epoch + 1, self.step + 1, lr, self.path("latest.pkl"),
                       self.epoch))
            self.step += 1
            n = len(labels)
            seen += n
            loss_sum += value * n
            correct += int((logits.argmax(1) == labels).sum())
            skipped += self.note_skipped(bad)
            rate = seen * self.world_size / max(time.time() - start, 1e-9)
            bar.set_postfix(loss="%.3f" % (loss_sum / seen), acc="%.1f%%" % (100 * correct / seen),
                            lr="%.4f" % lr, img_s="%.1f" % rate, refresh=False)
            bar.update(1)
        bar.close()
        seconds = time.time() - start
        return {"lr": lr, "train_loss": loss_sum / seen, "train_acc1": 100.0 * correct / seen,
                "train_images_per_s": seen * self.world_size / seconds,
                "epoch_seconds": seconds, "skipped_images": skipped}

    # -- the whole run -----------------------------------------------------------------------
    def fit(self):
        cfg = self.cfg
        csv = MetricsCSV(self.path("metrics.csv"), self.epoch) if self.main else None
        if self.epoch == 0 and self.main:
            log.info("%s on %s: %d train / %d val images, %d classes, %d steps per epoch, "
                     "%d epochs", arch_label(cfg["arch"]), cfg["dataset"], len(self.splits.train),
                     len(self.splits.val), self.num_classes, self.steps_per_epoch,
                     cfg["epochs"])
        while self.epoch < cfg["epochs"]:
            row = self.train_epoch()
            self.epoch += 1
            if not self.main:
                continue
            val_loss, acc1, acc5 = evaluate(self.model, self.val_loader,
                                            cfg["label_smoothing"], progress=cfg["progress"])
            is_best = acc1 > self.best_acc1
            if is_best:
                self.best_acc1, self.best_epoch = acc1, self.epoch
            self.save(is_best)
            row.update(epoch=self.epoch, step=self.step, val_loss=val_loss, val_acc1=acc1,
                       val_acc5=acc5)
            csv.append(row)
            log.info("epoch %d/%d  step %d  lr %.4f  train loss %.4f acc %.2f%%  val loss %.4f "
                     "top-1 %.2f%% top-5 %.2f%%  %.1f img/s%s", self.epoch, cfg["epochs"],
                     self.step, row["lr"], row["train_loss"], row["train_acc1"], val_loss,
                     acc1, acc5, row["train_images_per_s"],
                     "  (%d unreadable images skipped)" % row["skipped_images"]
                     if row["skipped_images"] else "")
        if self.main:
            plot_curves(self.path("metrics.csv"), self.path("curves.png"),
                        arch_label(cfg["arch"]))
        return self.step

    def finish(self):
        """Best model: top-1/top-5, deploy conversion, parity on a val batch, deploy.pkl."""
        cfg = self.cfg
        best = load_checkpoint(self.path("best.pkl"))
        model = build_model(cfg["arch"], self.num_classes)
        load_weights(model, best["state_dict"], self.path("best.pkl"))
        model.eval()
        images = next(iter(self.val_loader))[0]
        parity, deploy = check_parity("best model (epoch %d), val batch of %d"
                                      % (best.get("epoch", 0), len(images)), model, images)
        log.info(format_row(parity))  # MegEngine's own convs on both sides
        if not parity.ok:
            raise UserError("deploy form differs from train form beyond tolerance (%s); "
                            "deploy.pkl not written" % format_row(parity))
        if cfg.get("fast_conv_grad", True):  # the faster small-map forward route for both
            from . import fastconv
            fastconv.enable(model)
            fastconv.enable(deploy)
        _, train_acc1, train_acc5 = evaluate(model, self.val_loader, desc="val (train form)",
                                             progress=cfg["progress"])
        _, dep_acc1, dep_acc5 = evaluate(deploy, self.val_loader, desc="val (deploy form)",
                                         progress=cfg["progress"])
        ckpt = checkpoint_dict(numpy_state_dict(deploy), cfg["arch"], "deploy",
                               **self.data_info())
        save_checkpoint(ckpt, self.path("deploy.pkl"))
        log.info("best epoch %d  val top-1 / top-5: train form %.2f%% / %.2f%%, deploy form "
                 "%.2f%% / %.2f%%  -> %s", best.get("epoch", 0), train_acc1, train_acc5,
                 dep_acc1, dep_acc5, self.path("deploy.pkl"))
        if (train_acc1, train_acc5) != (dep_acc1, dep_acc5):
            raise UserError("train-form and deploy-form accuracies differ (%.2f%% vs %.2f%%)"
                            % (train_acc1, dep_acc1))
        return {"acc1": train_acc1, "acc5": train_acc5, "deploy_acc1": dep_acc1,
                "deploy_acc5": dep_acc5, "parity": parity}
