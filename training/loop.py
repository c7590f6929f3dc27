"""The training loop: epochs of SGD steps, evaluation (and of the EMA), checkpoints, records.

``Trainer(config, splits)`` builds the model, optimizer, loss and loaders; ``start()`` puts back
``latest.pkl`` (``--resume``) or loads ``--weights``; ``fit()`` runs the epochs. Turning the best
checkpoint into the deploy form is ``training.deploy.deploy_best``, separate from training.
"""
import logging
import math
import os
import random
import time

import numpy as np

import megengine as mge
import megengine.distributed as dist
from megengine.autodiff import GradManager

from common.checkpoint import save_checkpoint
from common.evaluation import evaluate
from common.progress import progress
from errors import UserError
from data.loader import default_workers, make_loader
from data.splits import data_name
from model.checkpoint import arch_label, build_model, checkpoint_dict, numpy_state_dict
from model.finetune import set_finetuning, trainable_parameters

from . import state as train_state
from .fastconv import on_cpu
from .metrics import MetricsCSV, plot_curves
from .optimizer import build_sgd, set_lr
from .schedule import lr_at
from .step import TrainStep, classification_loss

log = logging.getLogger("train")

OUTPUTS = ("latest.pkl", "best.pkl", "deploy.pkl", "metrics.csv", "curves.png", "train.log")

# A mean training loss this many times the loss of a uniform guess (ln C) means divergence.
EXPLODING = 100.0


class TrainingDiverged(UserError):
    """The loss became NaN, infinite or exploded; the run stops, keeping the last good
    checkpoint."""


def better(acc1, loss, than_acc1, than_loss):
    """Whether a model with val top-1 ``acc1`` and loss ``loss`` beats another: the higher
    top-1, and on a tie the lower loss (an untrained first epoch can tie a trained one on a
    few-class data set, with a loss thousands of times higher)."""
    return acc1 > than_acc1 or (acc1 == than_acc1 and loss < than_loss)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    mge.random.seed(seed)


class Trainer:
    """One run. ``config`` is a ``TrainConfig``; ``splits`` the data (``data.splits``);
    ``out`` the run folder."""

    def __init__(self, config, splits, out, rank=0, world_size=1):
        self.config, self.splits, self.out = config, splits, out
        self.rank, self.world_size = rank, world_size
        self.main = rank == 0
        self.num_classes = len(splits.classes)
        seed_everything(config.seed)  # initial weights depend only on --seed
        self.model = build_model(config.arch, self.num_classes)
        set_finetuning(self.model, config.frozen_stages, config.norm_eval)
        if config.fast_conv_grad:
            from . import fastconv
            fastconv.enable(self.model)
        self.optimizer = build_sgd(self.model, config.lr, config.momentum, config.weight_decay,
                                   custom_l2=config.custwd, bias_lr_mult=config.bias_lr_mult)
        self.mixer = None
        if config.mixup > 0 or config.cutmix > 0:
            from data.mixing import MixupCutmix
            self.mixer = MixupCutmix(self.num_classes, config.mixup, config.cutmix,
                                     config.mixup_prob, config.mixup_switch_prob,
                                     config.label_smoothing)
        callbacks = [dist.make_allreduce_cb("mean")] if world_size > 1 else []
        self.gm = GradManager().attach(trainable_parameters(self.model), callbacks=callbacks)
        # With mixup/CutMix the soft targets already carry the label smoothing.
        self.loss_fn = classification_loss(
            0.0 if self.mixer is not None else config.label_smoothing,
            extra=self.custom_l2 if config.custwd else None)
        self.step_fn = TrainStep(self.model, self.optimizer, self.loss_fn, self.gm)
        self.workers = (default_workers(splits.train, gpu=not on_cpu()) if config.workers is None
                        else config.workers)
        self.train_loader, self.train_sampler = make_loader(
            splits.train, splits.train_transform, config.batch_size, shuffle=True,
            seed=config.seed, workers=self.workers, world_size=world_size, rank=rank,
            drop_last=True)
        self.val_loader, _ = make_loader(splits.val, splits.eval_transform,
                                         config.eval_batch_size, shuffle=False,
                                         workers=self.workers)
        full = len(self.train_sampler)
        self.steps_per_epoch = min(full, config.max_steps_per_epoch or full)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.warmup_steps = int(round(config.warmup_epochs * self.steps_per_epoch))
        self.ema = self.ema_schedule = None
        if config.ema_alpha > 0:
            from .ema import ModelEma, OfficialEmaSchedule
            self.ema = ModelEma(self.model)
            self.ema_schedule = OfficialEmaSchedule(
                config.ema_alpha, config.batch_size * world_size, config.epochs,
                config.ema_update_period, config.warmup_epochs)
        self.epoch = self.step = self.best_epoch = 0
        self.best_acc1, self.best_loss = -1.0, math.inf
        self.skip_warned = set()
        self.data_name = data_name(config.dataset, config.data)

    # -- files -------------------------------------------------------------------------------
    def path(self, name):
        return os.path.join(self.out, name)

    def start(self):
        """``--resume``: continue from latest.pkl; ``--weights``: initialise from a model."""
        if self.config.resume:
            latest = self.path("latest.pkl")
            state = train_state.restore(latest, self.model, self.optimizer, self.config,
                                        self.ema)
            self.epoch, self.step = state["epoch"], state["step"]
            self.best_acc1, self.best_epoch = state["best_acc1"], state["best_epoch"]
            self.best_loss = state.get("best_val_loss", math.inf)  # older runs recorded none
            log.info("resumed from %s: %d epochs done, %d optimizer steps, best top-1 %.2f%%",
                     latest, self.epoch, self.step, self.best_acc1)
        elif self.config.weights:
            kept = train_state.load_initial_weights(self.model, self.config.weights,
                                                    self.num_classes,
                                                    self.config.reset_classifier)
            if self.ema is not None:
                self.ema.module.load_state_dict(self.model.state_dict())
            log.info("initialised from %s%s", self.config.weights,
                     " (classifier reset: %s)" % ", ".join(kept) if kept else "")

    def data_info(self):
        """What eval/predict need to prepare inputs like this run did, and where its data
        is: ``data`` (the folder, absolute; None for the built-in digits) and ``val_split``
        (the held-out fraction of its train split, which tools/eval.py holds out again)."""
        data = self.config.data
        return {"classes": list(self.splits.classes), "dataset": self.config.dataset,
                "image_size": self.config.test_size,
                "preprocess": self.splits.eval_transform.spec.to_dict(),
                "data": os.path.abspath(data) if data else None,
                "val_split": self.config.val_split}

    def save(self, best_model=None, best_weights="raw"):
        """latest.pkl every epoch; best.pkl from ``best_model`` when this epoch is the best."""
        if best_model is not None:  # before latest: a kill in between just repeats this epoch
            best = checkpoint_dict(numpy_state_dict(best_model), self.config.arch, "train",
                                   epoch=self.epoch, val_acc1=self.best_acc1,
                                   val_loss=self.best_loss,
                                   weights=best_weights, **self.data_info())
            save_checkpoint(best, self.path("best.pkl"))
        train_state.save(self.path("latest.pkl"), self.model, self.optimizer, self.config,
                         epoch=self.epoch, step=self.step, best_acc1=self.best_acc1,
                         best_epoch=self.best_epoch, best_val_loss=self.best_loss, ema=self.ema,
                         **self.data_info())

    # -- one epoch ---------------------------------------------------------------------------
    def note_skipped(self, skipped):
        bad = [int(i) for i in skipped if i >= 0]
        for i in bad:
            if i not in self.skip_warned:
                self.skip_warned.add(i)
                log.warning("skipped unreadable image %s", self.splits.train.describe(i))
        return len(bad)

    def targets(self, images, labels, index):
        """The batch and its targets: labels, or mixed images with soft targets. Mixing draws
        from a generator of (seed, epoch, batch index), so it repeats exactly after a resume."""
        if self.mixer is None:
            return images, labels
        rng = np.random.default_rng([self.config.seed, self.epoch, index, self.rank])
        return self.mixer(images, labels, rng)

    def custom_l2(self):
        """The official custom L2 term of ``--custwd`` (decay of the equivalent fused kernel)."""
        from model import custom_l2
        return 0.5 * self.config.weight_decay * custom_l2(self.model)

    def train_step(self, images, targets, lr):
        """One SGD step (``training.step.TrainStep``); returns (loss value, main logits)."""
        set_lr(self.optimizer, lr)
        value, logits = self.step_fn(images, targets)  # no update when not finite
        if not math.isfinite(value):
            raise self.diverged("loss is %s at epoch %d, step %d (lr %.4g)"
                                % (value, self.epoch + 1, self.step + 1, lr))
        return value, logits

    def diverged(self, what):
        latest = self.path("latest.pkl")
        kept = ("the last good checkpoint is %s (after epoch %d)" % (latest, self.epoch)
                if self.epoch > 0 or os.path.exists(latest) else "no checkpoint was written")
        return TrainingDiverged("%s; stopped: the training diverged, %s; try a lower --lr"
                                % (what, kept))

    def train_epoch(self):
        config, model = self.config, self.model
        model.train()
        mge.random.seed(config.seed * 100003 + self.epoch)
        self.train_sampler.set_epoch(self.epoch)
        # off a terminal: a plain line now and then; the epoch's log line follows anyway
        bar = progress(total=self.steps_per_epoch, unit="step", leave=False,
                       desc="epoch %d/%d" % (self.epoch + 1, config.epochs),
                       enabled=self.main and config.progress)
        seen = loss_sum = correct = skipped = 0
        start = time.time()
        try:  # closed also on Ctrl-C, so "interrupted" gets its own line
            for i, (images, labels, bad) in enumerate(self.train_loader):
                if i >= self.steps_per_epoch:
                    break
                lr = lr_at(self.step, config.lr, self.total_steps, self.warmup_steps)
                inputs, targets = self.targets(images, labels, i)
                value, logits = self.train_step(inputs, targets, lr)
                self.step += 1
                if self.ema is not None:
                    decay = self.ema_schedule.decay(self.epoch, i)
                    if decay is not None:
                        self.ema.update(model, decay)
                n = len(labels)
                seen += n
                loss_sum += value * n
                correct += int((logits.argmax(1) == labels).sum())
                skipped += self.note_skipped(bad)
                rate = seen * self.world_size / max(time.time() - start, 1e-9)
                bar.set_postfix(loss="%.3f" % (loss_sum / seen),
                                acc="%.1f%%" % (100 * correct / seen), lr="%.4f" % lr,
                                img_s="%.1f" % rate, refresh=False)
                bar.update(1)
        finally:
            bar.close()
        seconds = time.time() - start
        return {"lr": lr, "train_loss": loss_sum / seen, "train_acc1": 100.0 * correct / seen,
                "train_images_per_s": seen * self.world_size / seconds,
                "epoch_seconds": seconds, "skipped_images": skipped}

    def check_divergence(self, row):
        """Stop on a non-finite validation loss, or a training loss far above a uniform
        guess's (ln C): the weights are useless and the deploy check would only report NaN."""
        limit = EXPLODING * max(math.log(self.num_classes), 1.0)
        for name in ("train_loss", "val_loss"):
            value = row[name]
            if not math.isfinite(value) or (name == "train_loss" and value > limit):
                raise self.diverged("loss is %s (%s) at epoch %d" % (
                    "%.3g" % value if math.isfinite(value) else value,
                    name.replace("_", " "), self.epoch + 1))

    # -- the whole run -----------------------------------------------------------------------
    def fit(self):
        config = self.config
        csv = MetricsCSV(self.path("metrics.csv"), self.epoch) if self.main else None
        if self.epoch == 0 and self.main:
            log.info("%s on %s: %d train / %d val images, %d classes, %d steps per epoch, "
                     "%d epochs, %d loader workers", arch_label(config.arch), self.data_name,
                     len(self.splits.train), len(self.splits.val), self.num_classes,
                     self.steps_per_epoch, config.epochs, self.workers)
            batch = config.batch_size * self.world_size
            log.info("learning rate %.4g for a global batch of %d: %.4g per 256 images%s",
                     config.lr, batch, config.lr * 256.0 / batch,
                     " (--lr-per-256)" if config.lr_per_256 is not None else
                     " (--lr is absolute; --lr-per-256 scales it to the batch)")
        while self.epoch < config.epochs:
            row = self.train_epoch()
            if not self.main:
                self.epoch += 1
                continue
            val = evaluate(self.model, self.val_loader, self.splits.val, config.label_smoothing,
                           progress=config.progress)
            row["val_loss"], row["val_acc1"], row["val_acc5"] = val.loss, val.top1, val.top5
            self.check_divergence(row)
            self.epoch += 1
            best_model, best_weights = self.model, "raw"
            acc1, loss = row["val_acc1"], row["val_loss"]
            if self.ema is not None:
                val = evaluate(self.ema.module, self.val_loader, self.splits.val,
                               config.label_smoothing, desc="val (EMA)", progress=config.progress)
                row["ema_val_loss"], row["ema_val_acc1"], row["ema_val_acc5"] = (
                    val.loss, val.top1, val.top5)
                if better(val.top1, val.loss, acc1, loss):
                    best_model, best_weights, acc1, loss = self.ema.module, "ema", val.top1, val.loss
            is_best = better(acc1, loss, self.best_acc1, self.best_loss)
            if is_best:
                self.best_acc1, self.best_loss, self.best_epoch = acc1, loss, self.epoch
            self.save(best_model if is_best else None, best_weights)
            row.update(epoch=self.epoch, step=self.step)
            csv.append(row)
            log.info("epoch %d/%d  step %d  lr %.4f  train loss %.4f acc %.2f%%  val loss %.4f "
                     "top-1 %.2f%% top-5 %.2f%%%s  %.1f img/s%s", self.epoch, config.epochs,
                     self.step, row["lr"], row["train_loss"], row["train_acc1"],
                     row["val_loss"], row["val_acc1"], row["val_acc5"],
                     "  EMA top-1 %.2f%%" % row["ema_val_acc1"] if self.ema is not None else "",
                     row["train_images_per_s"],
                     "  (%d unreadable images skipped)" % row["skipped_images"]
                     if row["skipped_images"] else "")
            plot_curves(self.path("metrics.csv"), self.path("curves.png"),
                        "%s on %s" % (arch_label(config.arch), self.data_name),
                        self.num_classes)
        return self.step
